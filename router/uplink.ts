// The uplink monitor (issue: mobility): a vehicle router's uplink changes under it (LTE ↔ Wi-Fi ↔
// another carrier, a second uplink with a better metric, an address that comes and goes). The
// kernel tells us through rtnetlink events on links, addresses and routes; what matters to us is
// one thing: the source address the kernel now picks towards our DC. When it changes, the daemon
// re-registers and moves its tunnels (router/daemon.ts `handover`). Events arrive in bursts (a
// move is an address, a route, a link event or three), so they are debounced; a slow periodic
// check covers events the kernel dropped.

import {
  RTMGRP_IPV4_IFADDR,
  RTMGRP_IPV4_ROUTE,
  RTMGRP_IPV6_IFADDR,
  RTMGRP_IPV6_ROUTE,
  RTMGRP_LINK,
  subscribe,
  type RtEvent,
} from '../netlink/rtnetlink.js';

export interface UplinkMonitorOptions {
  /** The source address the kernel picks towards the DC now (null: no route). */
  probe: () => Promise<string | null>;
  onChange: (from: string | null, to: string | null) => void;
  /** Our own TUN device: its addresses and routes are ours, not an uplink change. */
  ownDevice: string;
  debounceMs?: number;
  /** Safety-net check period (ms); 0 disables it. */
  periodMs?: number;
  log?: (line: string) => void;
}

export class UplinkMonitor {
  address: string | null = null;
  events = 0;
  checks = 0;
  changes = 0;
  private sub: { close(): void } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private periodic: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private again = false;

  constructor(private readonly o: UplinkMonitorOptions) {}

  /** Starts watching from the given current address (the one we registered from). */
  start(current: string | null): void {
    this.address = current;
    this.sub = subscribe(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE, (e) => this.onEvent(e));
    const period = this.o.periodMs ?? 5000;
    if (period > 0) {
      this.periodic = setInterval(() => this.check(), period);
      this.periodic.unref();
    }
  }

  stop(): void {
    this.sub?.close();
    this.sub = null;
    if (this.timer) clearTimeout(this.timer);
    if (this.periodic) clearInterval(this.periodic);
  }

  private onEvent(e: RtEvent): void {
    if (e.type !== 'overrun' && 'dev' in e && e.dev === this.o.ownDevice) return;
    if ((e.type === 'RTM_NEWLINK' || e.type === 'RTM_DELLINK') && e.name === this.o.ownDevice) return;
    this.events++;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.check();
    }, this.o.debounceMs ?? 30);
    this.timer.unref();
  }

  /** Probes now; concurrent calls coalesce into one more probe after the running one. */
  check(): void {
    if (this.checking) {
      this.again = true;
      return;
    }
    this.checking = (async () => {
      do {
        this.again = false;
        this.checks++;
        const now = await this.o.probe().catch(() => null);
        if (now !== this.address) {
          const from = this.address;
          this.address = now;
          this.changes++;
          this.o.onChange(from, now);
        }
      } while (this.again);
    })().finally(() => (this.checking = null));
  }
}
