// Published LAN hosts given by MAC address (OpenWrt: "publish the laptop", whatever address DHCP
// gave it): their IPv4 address comes from dnsmasq's lease file
// (`<expiry> <mac> <ip> <hostname> <client-id>` per line, /tmp/dhcp.leases) and follows it. The
// file is checked every few seconds (one stat; read only when it changed), and a change of any
// watched host's address calls back so that the LAN translation is applied again.

import { readFileSync, statSync } from 'node:fs';
import { isIPv4 } from 'node:net';

const CHECK_MS = 3000;

export class DhcpLeases {
  private addresses = new Map<string, string>();
  private mtimeMs = -1;
  private timer: NodeJS.Timeout | null = null;
  /** Lines of the file that were not a lease (counted, not fatal: the file is dnsmasq's). */
  badLines = 0;

  constructor(
    private path: string,
    private readonly onChange: () => void,
  ) {}

  /** The host's current IPv4 address, or null without a lease. */
  addressOf(mac: string): string | null {
    return this.addresses.get(mac) ?? null;
  }

  /** Reads the file now and checks it periodically while any host is given by MAC. */
  start(path = this.path): void {
    this.path = path;
    this.mtimeMs = -1;
    this.read();
    if (this.timer === null) {
      this.timer = setInterval(() => {
        if (this.read()) this.onChange();
      }, CHECK_MS);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Re-reads the file if it changed; true when some MAC's address changed. */
  read(): boolean {
    let mtimeMs: number;
    try {
      mtimeMs = statSync(this.path).mtimeMs;
    } catch {
      mtimeMs = 0; // no file (no DHCP server yet): no leases
    }
    if (mtimeMs === this.mtimeMs) return false;
    this.mtimeMs = mtimeMs;
    const next = new Map<string, string>();
    if (mtimeMs !== 0) {
      let text = '';
      try {
        text = readFileSync(this.path, 'utf8');
      } catch {
        text = '';
      }
      for (const line of text.split('\n')) {
        if (line.trim() === '') continue;
        const [, mac, ip] = line.trim().split(/\s+/);
        if (mac === undefined || ip === undefined || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) {
          this.badLines++;
          continue;
        }
        if (isIPv4(ip)) next.set(mac.toLowerCase(), ip);
      }
    }
    const changed = next.size !== this.addresses.size || [...next].some(([m, a]) => this.addresses.get(m) !== a);
    this.addresses = next;
    return changed;
  }
}
