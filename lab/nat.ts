// nftables rule sets for the testbed's NAT boxes (RFC 4787 behaviours).
//
// Both kinds live in two tables of their own inside the NAT box's namespace:
//   table ip   ntm_nat     - the address/port translation (IPv4 only: sites behind a NAT are IPv4 sites)
//   table inet ntm_filter  - what may enter the inside network from the outside (forward hook)
// docs/lab.md explains each rule and what it guarantees.

export type NatType = 'eim' | 'symmetric';

export interface NatRulesOptions {
  /** inside (private) interface of the NAT box */
  inside: string;
  /** outside (public) interface of the NAT box */
  outside: string;
  /** lifetime of an idle endpoint-independent UDP mapping, seconds (eim only; default 120, as RFC 4787 REQ-5) */
  mappingTimeout?: number;
}

export const NAT_TABLE = 'ntm_nat';
export const FILTER_TABLE = 'ntm_filter';

const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function checkIf(name: string, what: string): string {
  if (!IFNAME_RE.test(name)) throw new Error(`invalid ${what} interface name '${name}'`);
  return JSON.stringify(name);
}

/** Filtering shared by both kinds: from the outside only replies (and, for eim, DNATed packets) reach the inside. */
function filterTable(inside: string, outside: string, allowDnat: boolean): string {
  return `table inet ${FILTER_TABLE} {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname ${outside} oifname ${inside} ct state established,related accept
${allowDnat ? `    iifname ${outside} oifname ${inside} ct status dnat accept\n` : ''}    iifname ${outside} oifname ${inside} counter drop
  }
}
`;
}

/**
 * Endpoint-independent mapping and filtering ("full cone") for UDP:
 *  - eim_out: internal addr.port -> external addr.port, learned after the first translation
 *  - eim_in:  external port      -> internal addr.port (the same mapping, reverse direction)
 * Outbound UDP from an internal endpoint that already has a mapping is SNATed to exactly that mapping,
 * whatever the destination (EIM). Inbound UDP to a mapped external port is DNATed to the internal
 * endpoint, whoever sends it (EIF). New mappings come from masquerade, which keeps the source port when
 * it can; when another internal endpoint already owns that external port it picks a random one.
 * Every outbound packet refreshes the mapping (RFC 4787 REQ-6), also the answers of a flow that
 * was opened from the outside through it.
 * TCP and ICMP are plainly masqueraded (port-preserving, replies only).
 */
export function eimRuleset(o: NatRulesOptions): string {
  const inside = checkIf(o.inside, 'inside');
  const outside = checkIf(o.outside, 'outside');
  const timeout = Math.max(1, Math.floor(o.mappingTimeout ?? 120));
  return `table ip ${NAT_TABLE} {
  map eim_out {
    type ipv4_addr . inet_service : ipv4_addr . inet_service
    flags dynamic,timeout
    timeout ${timeout}s
  }
  map eim_in {
    type inet_service : ipv4_addr . inet_service
    flags dynamic,timeout
    timeout ${timeout}s
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname ${outside} udp dport @eim_in dnat ip to udp dport map @eim_in
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname ${inside} oifname ${outside} ip saddr . udp sport @eim_out snat ip to ip saddr . udp sport map @eim_out
    iifname ${inside} oifname ${outside} udp sport @eim_in masquerade random
    oifname ${outside} masquerade
  }
  chain learn {
    type filter hook postrouting priority 300; policy accept;
    iifname ${inside} oifname ${outside} ct direction original ct status snat meta l4proto udp update @eim_out { ct original ip saddr . ct original proto-src : ip saddr . udp sport } update @eim_in { udp sport : ct original ip saddr . ct original proto-src }
    iifname ${inside} oifname ${outside} ct direction reply ct status dnat meta l4proto udp update @eim_out { ct reply ip saddr . ct reply proto-src : ip saddr . udp sport } update @eim_in { udp sport : ct reply ip saddr . ct reply proto-src }
  }
}
${filterTable(inside, outside, true)}`;
}

/**
 * Endpoint-dependent ("symmetric") mapping and address-and-port-dependent filtering:
 * every new flow (new destination address or port) gets a fresh random external port
 * (masquerade fully-random), and only replies on an existing conntrack entry come back in.
 */
export function symmetricRuleset(o: NatRulesOptions): string {
  const inside = checkIf(o.inside, 'inside');
  const outside = checkIf(o.outside, 'outside');
  return `table ip ${NAT_TABLE} {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname ${outside} masquerade fully-random
  }
}
${filterTable(inside, outside, false)}`;
}

export function natRuleset(type: NatType, o: NatRulesOptions): string {
  switch (type) {
    case 'eim': return eimRuleset(o);
    case 'symmetric': return symmetricRuleset(o);
    default: throw new Error(`unknown NAT type '${String(type)}' (expected 'eim' or 'symmetric')`);
  }
}
