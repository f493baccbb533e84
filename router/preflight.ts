// Checks before the router daemon sets anything up, each failure saying what to do instead of a
// raw errno later (`TUNSETIFF ntm0: EPERM`) or a LAN that silently gets no translation: the
// privileges for TUN, addresses, routes and nftables; the LAN interfaces exist; IP forwarding is
// on where a LAN is to be translated.

import { existsSync, readFileSync } from 'node:fs';
import { type RouterConfig } from './config.js';

/** Linux's capability number for network administration (include/uapi/linux/capability.h). */
const CAP_NET_ADMIN = 12;

export class PreflightError extends Error {
  override readonly name = 'PreflightError';
}

/** What the checks read; the tests give their own. */
export interface System {
  uid: () => number;
  readFile: (path: string) => string | null;
  exists: (path: string) => boolean;
}

const host: System = {
  uid: () => process.getuid?.() ?? 0,
  readFile: (path) => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return null;
    }
  },
  exists: existsSync,
};

/** Throws a PreflightError naming the first problem and its fix. */
export function preflight(c: RouterConfig, sys: System = host): void {
  if (sys.uid() !== 0) {
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(sys.readFile('/proc/self/status') ?? '')?.[1];
    const hasNetAdmin = capEff !== undefined && (BigInt(`0x${capEff}`) >> BigInt(CAP_NET_ADMIN)) & 1n;
    if (!hasNetAdmin) throw new PreflightError('the router daemon needs root, or the capability CAP_NET_ADMIN, for its TUN device, addresses, routes and nftables table: run it as root');
  }
  c.lan.interfaces.forEach((d, i) => {
    if (!sys.exists(`/sys/class/net/${d}`)) throw new PreflightError(`lan.interfaces[${i}]: no network device "${d}" here (\`ip link\` lists them; on OpenWrt the LAN is usually br-lan): the LAN would get no translation`);
  });
  if (c.lan.interfaces.length === 0) return;
  for (const [key, file] of [
    ['net.ipv4.ip_forward', '/proc/sys/net/ipv4/ip_forward'],
    ['net.ipv6.conf.all.forwarding', '/proc/sys/net/ipv6/conf/all/forwarding'],
  ] as const) {
    const value = sys.readFile(file)?.trim();
    // No IPv6 in the kernel: nothing to forward there.
    if (value === undefined && key.startsWith('net.ipv6')) continue;
    if (value !== '1') {
      throw new PreflightError(`${key} is ${value ?? 'unreadable'}: the LAN's packets would not reach the tunnels; enable it with \`sysctl -w ${key}=1\` (and for good in /etc/sysctl.conf; OpenWrt has it on)`);
    }
  }
}
