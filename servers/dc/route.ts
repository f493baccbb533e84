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
    return { kind: 'relay', reason: `IPv${isIP(mn.observed.address)} ↔ IPv${isIP(cn.observed.address)}: needs a Relay Server` };
  }
  if (!mnNat && !cnNat) return { kind: 'direct', case: 'no-nat', initiator: 'mn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (mnNat && !cnNat) return { kind: 'direct', case: 'mn-behind-nat', initiator: 'mn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (!mnNat && cnNat) return { kind: 'direct', case: 'cn-behind-nat', initiator: 'cn', mnPeer: cn.observed, cnPeer: mn.observed };
  if (mn.observed.address === cn.observed.address && mn.local !== null && cn.local !== null) {
    return { kind: 'direct', case: 'same-nat', initiator: 'mn', mnPeer: cn.local, cnPeer: mn.local };
  }
  return { kind: 'relay', reason: 'both ends are behind different NATs: needs a Relay Server' };
}
