// Uplink preference (config `uplinks`, docs/mobility.md "Uplink preference"): the operator lists the
// devices NTMobile may use, best first; the daemon's own UDP traffic (control and ESP, its one
// socket) leaves through the first of them that is usable, whatever the kernel's metrics prefer,
// and never through a device that is not listed. Forwarded LAN traffic and other programs keep the
// kernel's routing.
//
// How: policy routing owned by the daemon. For each address family two rules match only datagrams
// this host sends from our UDP port (`iif lo ipproto udp sport PORT`): the first looks up the main
// table without its default routes (so a peer on a directly connected network, the LAN, a more
// specific route keep working), the second looks up a table of our own holding one default route
// via the chosen device and the gateway of its default route in the main table, and behind it an
// unreachable default, so that nothing of ours falls through to an unlisted device while no listed
// one is usable. Kept up to date from rtnetlink events (debounced) and on every probe of the
// uplink monitor, which asks through `source()`: the kernel's lookup for our port, answered after
// the table is brought up to date, so that a switch of device is one change of address, noticed
// once. Every rule and route is tagged with our own protocol number: what a crashed run left is
// found and removed at start, and stop() removes what this run made.

import {
  IPPROTO_UDP,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  RTMGRP_IPV4_IFADDR,
  RTMGRP_IPV4_ROUTE,
  RTMGRP_IPV6_IFADDR,
  RTMGRP_IPV6_ROUTE,
  RTMGRP_LINK,
  RTN_UNICAST,
  RTN_UNREACHABLE,
  IFF_LOWER_UP,
  IFF_UP,
  IFA_F_TENTATIVE,
  addRule,
  addUnreachableRoute,
  delRoute,
  delRule,
  getRoute,
  listAddresses,
  listLinks,
  listRoutes,
  listRules,
  replaceRoute,
  subscribe,
  type AddressInfo,
  type LinkInfo,
  type RouteInfo,
  type RtEvent,
  type RuleInfo,
} from '../netlink/rtnetlink.js';

/** Our mark on rules and routes (rtm_protocol / FRA_PROTOCOL): not one of iproute2's rt_protos. */
export const RTPROT_NTMOBILE = 78;
/** The chosen device's default route in our table; the unreachable one behind it. */
const CHOSEN_METRIC = 1;
const FALLBACK_METRIC = 0xffffffff;
const IFA_F_DADFAILED = 0x08;
const FAMILIES = [4, 6] as const;
type Family = (typeof FAMILIES)[number];
const ANY: Record<Family, string> = { 4: '0.0.0.0/0', 6: '::/0' };

export type LinkState = 'up' | 'no-carrier' | 'down' | 'absent';

/** What the kernel says about one listed device, for one address family. */
export interface FamilyUplink {
  /** Its first usable global address (null: none). */
  address: string | null;
  /** The main table's default route over it, lowest metric first (null: none); via null: on-link (PPP, LTE raw IP). */
  defaultRoute: { via: string | null; metric: number } | null;
}

export interface UplinkCandidate {
  device: string;
  link: LinkState;
  ipv4: FamilyUplink;
  ipv6: FamilyUplink;
}

/** The kernel's links, addresses and routes (all tables) at one moment. */
export interface KernelState {
  links: LinkInfo[];
  addresses: AddressInfo[];
  routes: RouteInfo[];
}

const familyOf = (c: UplinkCandidate, f: Family): FamilyUplink => (f === 4 ? c.ipv4 : c.ipv6);

/** The listed devices, in the operator's order, as the kernel sees them. */
export function candidatesOf(devices: string[], k: KernelState): UplinkCandidate[] {
  return devices.map((device) => {
    const link = k.links.find((l) => l.name === device);
    const state: LinkState = link === undefined ? 'absent' : !(link.flags & IFF_UP) ? 'down' : !(link.flags & IFF_LOWER_UP) ? 'no-carrier' : 'up';
    const fam = (f: Family): FamilyUplink => {
      if (link === undefined) return { address: null, defaultRoute: null };
      const address = k.addresses.find((a) => a.index === link.index && a.family === f && a.scope === RT_SCOPE_UNIVERSE && !(a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)));
      const route = k.routes
        .filter((r) => r.table === RT_TABLE_MAIN && r.family === f && r.dst === ANY[f] && r.routeType === RTN_UNICAST && r.index === link.index)
        .sort((a, b) => (a.metric ?? 0) - (b.metric ?? 0))[0];
      return { address: address?.address ?? null, defaultRoute: route === undefined ? null : { via: route.via ?? null, metric: route.metric ?? 0 } };
    };
    return { device, link: state, ipv4: fam(4), ipv6: fam(6) };
  });
}

/** Usable for a family: up with carrier, an address of the family, a default route over it. */
export function usable(c: UplinkCandidate, family: Family): boolean {
  const f = familyOf(c, family);
  return c.link === 'up' && f.address !== null && f.defaultRoute !== null;
}

/** The most preferred usable candidate for a family, or null. */
export function chooseUplink(candidates: UplinkCandidate[], family: Family): UplinkCandidate | null {
  return candidates.find((c) => usable(c, family)) ?? null;
}

/** One listed device in the status API (`uplink.candidates`). */
export interface CandidateStatus {
  device: string;
  link: LinkState;
  ipv4: { address: string | null; gateway: string | null; usable: boolean; chosen: boolean };
  ipv6: { address: string | null; gateway: string | null; usable: boolean; chosen: boolean };
}

export interface UplinkPolicyOptions {
  /** Device names, most preferred first; empty: the kernel's routing decides, nothing is set up. */
  devices: string[];
  /** Our routing table; the rules get this number and the next as priorities. */
  table: number;
  /** Our TUN device: its events are not uplink changes. */
  ownDevice: string;
  debounceMs?: number;
  log?: (line: string) => void;
}

export class UplinkPolicy {
  private port = 0;
  private sub: { close(): void } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** The apply running or last run, and the one queued behind it (later callers share it). */
  private tail: Promise<void> = Promise.resolve();
  private queued: Promise<void> | null = null;
  private candidates: UplinkCandidate[] = [];
  private readonly chosen: Record<Family, string | null> = { 4: null, 6: null };

  constructor(private readonly o: UplinkPolicyOptions) {}

  get active(): boolean {
    return this.o.devices.length > 0;
  }

  /** Removes what an earlier run left; with devices listed, sets up the rules and the table for our port. */
  async start(port: number): Promise<void> {
    this.port = port;
    const stale = await removeOwn();
    if (stale > 0) this.log(`uplinks: removed ${stale} rule(s) and route(s) an earlier run left`);
    if (!this.active) return;
    // The first apply's errors stop the start (a kernel that cannot match ports); later ones are logged.
    const first = this.apply();
    this.tail = first.catch(() => undefined);
    await first;
    this.sub = subscribe(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE, (e) => this.onEvent(e));
  }

  /** Removes our rules and routes; an apply under way finishes first. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.sub?.close();
    this.sub = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.tail;
    if (!this.active) return;
    await removeOwn().catch((e: Error) => this.log(`uplinks: removing rules and routes: ${e.message}`));
  }

  /** Brings rules and table up to date with the kernel's state now; concurrent calls share one run after the current one. */
  refresh(): Promise<void> {
    if (this.stopped || !this.active) return Promise.resolve();
    if (this.queued === null) {
      this.queued = this.tail
        .then(() => {
          this.queued = null;
          return this.apply();
        })
        .catch((e: Error) => this.log(`uplinks: ${e.message}`));
      this.tail = this.queued;
    }
    return this.queued;
  }

  /**
   * The source address of our datagrams to dst now (null: no route, or no usable listed device):
   * the kernel's lookup for our port, the rules included, after bringing our table up to date.
   */
  async source(dst: string, dport: number): Promise<string | null> {
    await this.refresh();
    try {
      return (await getRoute(dst, { ipProto: IPPROTO_UDP, sport: this.port, dport })).prefsrc ?? null;
    } catch {
      return null; // ENETUNREACH, EHOSTUNREACH (our unreachable default)
    }
  }

  status(): CandidateStatus[] {
    return this.candidates.map((c) => {
      const view = (f: Family): CandidateStatus['ipv4'] => {
        const x = familyOf(c, f);
        return { address: x.address, gateway: x.defaultRoute?.via ?? null, usable: usable(c, f), chosen: this.chosen[f] === c.device };
      };
      return { device: c.device, link: c.link, ipv4: view(4), ipv6: view(6) };
    });
  }

  private log(line: string): void {
    this.o.log?.(line);
  }

  private onEvent(e: RtEvent): void {
    if (e.type !== 'overrun') {
      if ('dev' in e && e.dev === this.o.ownDevice) return;
      if ((e.type === 'RTM_NEWLINK' || e.type === 'RTM_DELLINK') && e.name === this.o.ownDevice) return;
      if ((e.type === 'RTM_NEWROUTE' || e.type === 'RTM_DELROUTE') && e.table === this.o.table) return; // our own changes
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.refresh();
    }, this.o.debounceMs ?? 30);
    this.timer.unref();
  }

  private async apply(): Promise<void> {
    if (this.stopped) return;
    const links = await listLinks();
    const addresses = await listAddresses();
    const routes = await listRoutes({ table: 'all' });
    const rules = await listRules();
    const candidates = candidatesOf(this.o.devices, { links, addresses, routes });
    for (const f of FAMILIES) {
      const chosen = chooseUplink(candidates, f);
      await this.ensureTable(f, chosen, routes.filter((r) => r.family === f && r.table === this.o.table));
      const was = this.chosen[f];
      const now = chosen?.device ?? null;
      if (now !== was) {
        const why = was === null ? '' : `; ${was}: ${whyNot(candidates.find((c) => c.device === was)!, f)}`;
        this.log(now === null ? `uplinks: IPv${f}: none of ${this.o.devices.join(', ')} is usable${why}` : `uplinks: IPv${f} through ${now}${why}`);
        this.chosen[f] = now;
      }
    }
    await this.ensureRules(rules);
    this.candidates = candidates;
  }

  /** Our table for one family: the chosen device's default route (if any) and the unreachable one; nothing else. */
  private async ensureTable(f: Family, chosen: UplinkCandidate | null, current: RouteInfo[]): Promise<void> {
    const table = this.o.table;
    const want = chosen === null ? null : { dev: chosen.device, via: familyOf(chosen, f).defaultRoute!.via };
    const isFallback = (r: RouteInfo): boolean => r.routeType === RTN_UNREACHABLE && r.dst === ANY[f] && r.metric === FALLBACK_METRIC;
    const isWanted = (r: RouteInfo): boolean => want !== null && r.routeType === RTN_UNICAST && r.dst === ANY[f] && r.metric === CHOSEN_METRIC && r.dev === want.dev && (r.via ?? null) === want.via;
    for (const r of current) {
      if (isFallback(r) || isWanted(r)) continue;
      // replaceRoute below takes the place of our previous choice; anything else has no business here.
      if (want !== null && r.routeType === RTN_UNICAST && r.dst === ANY[f] && r.metric === CHOSEN_METRIC) continue;
      await delRoute(r.dst, { table, ...(r.metric !== undefined ? { metric: r.metric } : {}) }).catch(ignore('ESRCH'));
    }
    // EAFNOSUPPORT: a kernel without IPv6; the IPv4 half still works.
    if (!current.some(isFallback)) await addUnreachableRoute(ANY[f], { table, metric: FALLBACK_METRIC, protocol: RTPROT_NTMOBILE }).catch(ignore('EEXIST', 'EAFNOSUPPORT'));
    if (want !== null && !current.some(isWanted)) {
      await replaceRoute(ANY[f], { dev: want.dev, ...(want.via !== null ? { via: want.via } : {}), metric: CHOSEN_METRIC, table, protocol: RTPROT_NTMOBILE });
    }
  }

  /** Per family: main without its default routes, then our table, both only for our port's datagrams. */
  private async ensureRules(current: RuleInfo[]): Promise<void> {
    const match = { iifname: 'lo', ipProto: IPPROTO_UDP, sport: [this.port, this.port] as [number, number], protocol: RTPROT_NTMOBILE };
    const want: RuleInfo[] = FAMILIES.flatMap((family) => [
      { family, priority: this.o.table, table: RT_TABLE_MAIN, suppressPrefixLength: 0, ...match },
      { family, priority: this.o.table + 1, table: this.o.table, ...match },
    ]);
    const ours = current.filter((r) => r.protocol === RTPROT_NTMOBILE);
    for (const r of ours) if (!want.some((w) => sameRule(w, r))) await delRule(r).catch(ignore('ENOENT'));
    const missing = want.filter((w) => !ours.some((r) => sameRule(w, r)));
    for (const w of missing) await addRule(w).catch(ignore('EEXIST', 'EAFNOSUPPORT'));
    if (missing.length === 0) return;
    // A kernel before 4.17 ignores the port, protocol and owner attributes it does not know: the
    // rule would then send every program's traffic through our table. Take it out and say so.
    const crude = (await listRules()).filter((r) => (r.priority === this.o.table || r.priority === this.o.table + 1) && r.iifname === 'lo' && (r.sport === undefined || r.protocol !== RTPROT_NTMOBILE));
    if (crude.length === 0) return;
    for (const r of crude) await delRule(r).catch(ignore('ENOENT'));
    throw new Error(`uplinks: the kernel ignores a rule's ipproto, sport or protocol (Linux 4.17 or later needed): ${crude.length} rule(s) taken out again`);
  }
}

function sameRule(a: RuleInfo, b: RuleInfo): boolean {
  return (
    a.family === b.family &&
    a.priority === b.priority &&
    a.table === b.table &&
    a.iifname === b.iifname &&
    a.ipProto === b.ipProto &&
    a.sport?.[0] === b.sport?.[0] &&
    a.sport?.[1] === b.sport?.[1] &&
    a.suppressPrefixLength === b.suppressPrefixLength &&
    a.protocol === b.protocol
  );
}

/** Why a device is not (any more) the one for a family, for the log. */
function whyNot(c: UplinkCandidate, f: Family): string {
  if (c.link !== 'up') return c.link === 'absent' ? 'gone' : c.link === 'down' ? 'link down' : 'no carrier';
  const x = familyOf(c, f);
  if (x.address === null) return `no IPv${f} address`;
  if (x.defaultRoute === null) return `no IPv${f} default route`;
  return 'a more preferred device is usable';
}

/** Removes every rule and route tagged as ours (any table, either family); returns how many. */
async function removeOwn(): Promise<number> {
  let n = 0;
  for (const r of await listRules()) {
    if (r.protocol !== RTPROT_NTMOBILE) continue;
    await delRule(r).catch(ignore('ENOENT'));
    n++;
  }
  for (const r of await listRoutes({ table: 'all' })) {
    if (r.protocol !== RTPROT_NTMOBILE) continue;
    await delRoute(r.dst, { table: r.table, protocol: RTPROT_NTMOBILE, ...(r.metric !== undefined ? { metric: r.metric } : {}) }).catch(ignore('ESRCH'));
    n++;
  }
  return n;
}

/** A catch handler that lets these errnos through (the state is already as wanted) and rethrows the rest. */
function ignore(...codes: string[]): (e: Error & { code?: string }) => void {
  return (e) => {
    if (e.code === undefined || !codes.includes(e.code)) throw e;
  };
}
