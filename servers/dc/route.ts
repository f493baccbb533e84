// Route Direction (seed 003, ARCHITECTURE §3): once DCmn knows both ends, which end sends the
// Tunnel Request, and to which address. The NAT side always initiates, so that its own NAT
// opens the mapping the answer and the data come back through.

import { type WireEndpoint } from '../../protocol/control.js';
import { isIP } from 'node:net';

export interface EndView {
  /** The real address the DC saw the registration come from. */
  observed: WireEndpoint;
  /** The address the node reported (its own interface address and port). */
  local: WireEndpoint | null;
}

export type RouteCase = 'no-nat' | 'mn-behind-nat' | 'cn-behind-nat' | 'same-nat';

export type RouteDecision =
  | {
      kind: 'direct';
      case: RouteCase;
      initiator: 'mn' | 'cn';
      /** Where MN sends (MN initiates) or expects CN from (CN initiates). */
      mnPeer: WireEndpoint;
      cnPeer: WireEndpoint;
    }
  | { kind: 'relay'; reason: string };

export function behindNat(e: EndView): boolean {
  return e.local === null || e.local.address !== e.observed.address || e.local.port !== e.observed.port;
}

export function decideRoute(mn: EndView, cn: EndView): RouteDecision {
  const mnNat = behindNat(mn);
  const cnNat = behindNat(cn);
  if (isIP(mn.observed.address) !== isIP(cn.observed.address)) {
    return { kind: 'relay', reason: `IPv${isIP(mn.observed.address)} ↔ IPv${isIP(cn.observed.address)}` };
  }
  if (!mnNat && !cnNat) return { kind: 'direct', case: 'no-nat', initiator: 'mn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (mnNat && !cnNat) return { kind: 'direct', case: 'mn-behind-nat', initiator: 'mn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (!mnNat && cnNat) return { kind: 'direct', case: 'cn-behind-nat', initiator: 'cn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (mn.observed.address === cn.observed.address && mn.local !== null && cn.local !== null) {
    return { kind: 'direct', case: 'same-nat', initiator: 'mn', mnPeer: cn.local, cnPeer: mn.local };
  }
  if (mn.observed.address === cn.observed.address) return { kind: 'relay', reason: 'both behind one NAT, private addresses not reported' };
  return { kind: 'relay', reason: 'both behind different NATs' };
}

/** What each end of a relayed route is told: where the RS is for it, and a direct candidate. */
export interface RelayPlan {
  mnPeer: WireEndpoint;
  cnPeer: WireEndpoint;
  /** The other end's observed endpoint, to try a direct path once the relayed tunnel is up. */
  mnCandidate: WireEndpoint | null;
  cnCandidate: WireEndpoint | null;
}

/**
 * A relayed route (MN initiates; each end talks to the RS in its own address family). Only ends of
 * one family get a candidate: an IPv4 end cannot reach an IPv6 one directly.
 */
export function relayPlan(mnObserved: WireEndpoint, cnObserved: WireEndpoint, rsEndpoint: (family: 4 | 6) => WireEndpoint | null): RelayPlan | null {
  const mnFamily = isIP(mnObserved.address);
  const cnFamily = isIP(cnObserved.address);
  if ((mnFamily !== 4 && mnFamily !== 6) || (cnFamily !== 4 && cnFamily !== 6)) return null;
  const mnPeer = rsEndpoint(mnFamily);
  const cnPeer = rsEndpoint(cnFamily);
  if (mnPeer === null || cnPeer === null) return null;
  const same = mnFamily === cnFamily;
  return { mnPeer, cnPeer, mnCandidate: same ? cnObserved : null, cnCandidate: same ? mnObserved : null };
}
