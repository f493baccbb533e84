// The handover scenarios of issue 5 (mobility) on the fleet of lab/fleet.ts with the extra sites
// HANDOVER_SITES (c, e: endpoint-independent NATs of other carriers; d: global; f: a symmetric
// NAT): which routers move where, break-before-make (the uplink moves) or make-before-break (a
// second uplink first, the old one dropped once the router has moved its tunnels). Used by
// test/handover-e2e.test.ts and bench/handover.ts.

import { type Fleet, type FleetCase, type RouterUplink } from './fleet.js';

export type Which = 'ra' | 'rb';

/** One switch: a router's uplink moves to a site (break-before-make), or a new uplink there is added first (make-before-break). */
export interface HandoverStep {
  router: Which;
  site: string;
  mbb?: true;
}

export interface HandoverScenario {
  key: string;
  title: string;
  case: FleetCase;
  /** the switches of the scenario, in order (the test does them once, during one transfer) */
  steps: HandoverStep[];
  /** the switches back to where the routers started (the benchmark alternates steps and back) */
  back: HandoverStep[];
}

export const SCENARIOS: HandoverScenario[] = [
  {
    key: 'global-to-nat',
    title: 'router A moves from a global address to behind an EIM NAT (no-nat, a → c)',
    case: 'no-nat',
    steps: [{ router: 'ra', site: 'c' }],
    back: [{ router: 'ra', site: 'a' }],
  },
  {
    key: 'nat-to-nat',
    title: "router A moves from its NAT to another carrier's NAT (a-nat, a → e)",
    case: 'a-nat',
    steps: [{ router: 'ra', site: 'e' }],
    back: [{ router: 'ra', site: 'a' }],
  },
  {
    key: 'nat-to-global',
    title: 'router A moves from behind a NAT to a global address (a-nat, a → d)',
    case: 'a-nat',
    steps: [{ router: 'ra', site: 'd' }],
    back: [{ router: 'ra', site: 'a' }],
  },
  {
    key: 'peer-behind-nat',
    title: 'router A moves to another global network while router B sits behind a NAT (b-nat, a → d)',
    case: 'b-nat',
    steps: [{ router: 'ra', site: 'd' }],
    back: [{ router: 'ra', site: 'a' }],
  },
  {
    key: 'both-move',
    title: 'both routers move, one after the other (a-nat: A a → c, then B b → d)',
    case: 'a-nat',
    steps: [
      { router: 'ra', site: 'c' },
      { router: 'rb', site: 'd' },
    ],
    back: [
      { router: 'ra', site: 'a' },
      { router: 'rb', site: 'b' },
    ],
  },
  {
    key: 'relayed',
    title: 'a relayed path moves: router A to another symmetric NAT (both-sym, a → f)',
    case: 'both-sym',
    steps: [{ router: 'ra', site: 'f' }],
    back: [{ router: 'ra', site: 'a' }],
  },
  {
    key: 'two-uplinks',
    title: 'two uplinks, make-before-break: router A adds an uplink behind another NAT, then drops the old one (a-nat, a → c)',
    case: 'a-nat',
    steps: [{ router: 'ra', site: 'c', mbb: true }],
    back: [{ router: 'ra', site: 'a', mbb: true }],
  },
];

/** Scenarios named in a filter ("a,b" or undefined for all); unknown names are an error. */
export function pickScenarios(filter: string | undefined): HandoverScenario[] {
  if (filter === undefined || filter.trim() === '') return SCENARIOS;
  const keys = filter.split(',').map((k) => k.trim()).filter(Boolean);
  const unknown = keys.filter((k) => !SCENARIOS.some((s) => s.key === k));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}: want ${SCENARIOS.map((s) => s.key).join(', ')}`);
  return SCENARIOS.filter((s) => keys.includes(s.key));
}

/** The router's status API, the part a handover fills in. */
export interface UplinkStatus {
  address: string | null;
  handovers: number;
  lastHandover: { at: number; ms: number; reason?: string; from?: string | null; to?: string | null; tunnels: { node: string; result: string }[] } | null;
}

export async function uplinkStatus(fleet: Fleet, which: Which): Promise<UplinkStatus> {
  const s = (await fleet[which].api('status')) as { uplink?: UplinkStatus };
  return s.uplink ?? { address: null, handovers: 0, lastHandover: null };
}

/**
 * Waits until the router reports a handover that began at or after `since` from `address` with
 * no failed tunnel; returns it, or the last status seen when `timeoutMs` passes.
 */
export async function waitHandover(fleet: Fleet, which: Which, since: number, address: string, timeoutMs = 10_000): Promise<{ done: boolean; status: UplinkStatus }> {
  const deadline = Date.now() + timeoutMs;
  let status = await uplinkStatus(fleet, which);
  for (;;) {
    const h = status.lastHandover;
    // The handover to this address (not an earlier one, e.g. to no address while the carrier was down).
    if (status.address === address && h !== null && h.at >= since && h.to === address && h.tunnels.every((x) => x.result !== 'failed')) return { done: true, status };
    if (Date.now() > deadline) return { done: false, status };
    await sleep(50);
    status = await uplinkStatus(fleet, which);
  }
}

/** What one switch did. */
export interface SwitchDone {
  step: HandoverStep;
  /** Date.now() when the switch began and when the lab's part of it (the move, or the new uplink) was done */
  t0: number;
  t1: number;
  /** the router's new preferred uplink */
  uplink: RouterUplink;
  /** make-before-break: when the old uplink was dropped, and the handover the router reported before that */
  dropped?: { at: number; ifname: string; handover: { done: boolean; status: UplinkStatus } | null };
}

/**
 * Does one switch. Break-before-make: the router's preferred uplink moves to the site. Make-before-break:
 * a new uplink in the site with a metric below the current one; once the router's status shows
 * the handover to it with no failed tunnel (at most `mbbWaitMs`), or once `settle` resolves
 * (another tunnel than ours, with no status to ask), and `holdMs` later, the old uplink is dropped.
 */
export async function doSwitch(fleet: Fleet, step: HandoverStep, o: { mbbWaitMs?: number; holdMs?: number; settle?: () => Promise<void> } = {}): Promise<SwitchDone> {
  if (!step.mbb) {
    const t0 = Date.now();
    const uplink = await fleet.moveRouter(step.router, step.site);
    return { step, t0, t1: Date.now(), uplink };
  }
  const old = fleet.routerUplinks[step.router][0]!;
  // Each new uplink one below the last (100, 99, …): preferred at once, and room for many switches.
  if (old.metric <= 1) throw new Error(`${step.router}: uplink metric ${old.metric}: no lower one left for another make-before-break switch`);
  const t0 = Date.now();
  const uplink = await fleet.addUplink(step.router, step.site, { metric: old.metric - 1 });
  const t1 = Date.now();
  let handover: { done: boolean; status: UplinkStatus } | null = null;
  if (o.settle) await o.settle();
  else handover = await waitHandover(fleet, step.router, t0, uplink.address, o.mbbWaitMs ?? 10_000);
  await sleep(o.holdMs ?? 500);
  await fleet.dropUplink(step.router, old.ifname);
  return { step, t0, t1, uplink, dropped: { at: Date.now(), ifname: old.ifname, handover } };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
