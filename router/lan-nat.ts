// The nftables rules that let LAN hosts, which run nothing, use the tunnel: LAN → TUN traffic leaves
// from a VIP (a published host's own, else the router's), traffic from the TUN to a published VIP is
// forwarded to that host, nothing else from the TUN reaches the LAN unless it answers the LAN, and a
// peer VIP that collides with a local network is shown to the LAN under a free local ("mapped") address.
//
// One table (family inet, default `ntmobile`) holds all of it and is replaced in one transaction, so
// the daemon can re-apply the whole spec whenever publications, VIPs or mappings change.
// The routes to peer VIPs (into the TUN) are not made here.
// On OpenWrt the fw4 zones must also let TUN ↔ LAN through: an accept here cannot undo a drop in
// another table.

import { isIPv4, isIPv6 } from 'node:net';
import { ipv6ToBytes } from '../protocol/ip.js';
import { applyRuleset, checkTable, deleteTable, tableReplacement, type NftOptions } from '../netlink/nftables.js';

export const DEFAULT_TABLE = 'ntmobile';

/** Named counters of the table (read them with netlink/nftables.ts readCounters). */
export const COUNTERS = {
  /** from the TUN to the LAN, neither a reply nor addressed to a published VIP */
  tunToLanDrop: 'tun_to_lan_drop',
  /** from the TUN to anywhere but the LAN (uplinks, back into the TUN): the router is no relay */
  tunForwardDrop: 'tun_forward_drop',
  /** from the LAN to the TUN in a family the sender has no VIP of (no own VIP, not published) */
  lanToTunDrop: 'lan_to_tun_drop',
} as const;

export interface PublishedHost {
  /** the name the host is published under (shows as the comment of its rules) */
  name: string;
  /** its address on the LAN */
  lan4?: string;
  lan6?: string;
  /** its own VIPs */
  vip4?: string;
  vip6?: string;
}

export interface MappedAddress {
  /** the free local address the LAN uses for the peer */
  local: string;
  /** the peer's real VIP, which collides with a local network */
  real: string;
}

export interface LanSpec {
  /** nftables table name (family inet), default 'ntmobile' */
  table?: string;
  /** the TUN device */
  tun: string;
  /** the interfaces LAN hosts are on (e.g. ['br-lan']) */
  lanInterfaces: string[];
  /** the router's own VIPs; null: the router has none of that family */
  ownVip4: string | null;
  ownVip6: string | null;
  published: PublishedHost[];
  mapped: MappedAddress[];
}

export class LanSpecError extends Error {
  override name = 'LanSpecError';
  constructor(
    /** where in the spec, e.g. 'published[1].lan4' */
    readonly field: string,
    problem: string,
  ) {
    super(`${field}: ${problem}`);
  }
}

const IFNAME_FORBIDDEN = /[\s/:"'\\*]/;
const HOST_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

type Family = 4 | 6;

function checkIfName(field: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > 15 || name === '.' || name === '..' || IFNAME_FORBIDDEN.test(name)) {
    throw new LanSpecError(field, `${JSON.stringify(name)} is not an interface name (1-15 characters, no space, quote, '/', ':', '\\' or '*')`);
  }
  return name;
}

function checkAddr(field: string, value: unknown, family: Family): string {
  const ok = typeof value === 'string' && (family === 4 ? isIPv4(value) : isIPv6(value) && !value.includes('%'));
  if (!ok) throw new LanSpecError(field, `${JSON.stringify(value)} is not an IPv${family} address`);
  return value as string;
}

function familyOf(field: string, value: unknown): Family {
  if (typeof value === 'string' && isIPv4(value)) return 4;
  if (typeof value === 'string' && isIPv6(value) && !value.includes('%')) return 6;
  throw new LanSpecError(field, `${JSON.stringify(value)} is not an IPv4 or IPv6 address`);
}

/** One textual form per address, so that '::1' and '0::1' collide. */
function addrKey(addr: string): string {
  return isIPv4(addr) ? addr : ipv6ToBytes(addr).toString('hex');
}

/** Remembers which field first used an address, to name both fields when another one repeats it. */
class AddressRegistry {
  private readonly owners = new Map<string, string>();
  claim(field: string, addr: string, what: string): void {
    const key = `${what} ${addrKey(addr)}`;
    const owner = this.owners.get(key);
    if (owner !== undefined) throw new LanSpecError(field, `${addr} is already used by ${owner}`);
    this.owners.set(key, field);
  }
}

/** Check a spec; returns it with the table name filled in. Throws LanSpecError naming the field. */
export function validateLanSpec(spec: LanSpec): Required<LanSpec> {
  const table = spec.table ?? DEFAULT_TABLE;
  try {
    checkTable('inet', table);
  } catch (e) {
    throw new LanSpecError('table', (e as Error).message);
  }
  const tun = checkIfName('tun', spec.tun);
  if (!Array.isArray(spec.lanInterfaces) || spec.lanInterfaces.length === 0) {
    throw new LanSpecError('lanInterfaces', 'want at least one interface');
  }
  const seenIfs = new Set<string>([tun]);
  spec.lanInterfaces.forEach((name, i) => {
    checkIfName(`lanInterfaces[${i}]`, name);
    if (seenIfs.has(name)) throw new LanSpecError(`lanInterfaces[${i}]`, `"${name}" is listed twice or is the TUN`);
    seenIfs.add(name);
  });
  // VIPs (router's, published, mapped local addresses) must all differ; so must LAN addresses of published hosts
  const vips = new AddressRegistry();
  const lans = new AddressRegistry();
  if (spec.ownVip4 !== null) vips.claim('ownVip4', checkAddr('ownVip4', spec.ownVip4, 4), 'vip');
  if (spec.ownVip6 !== null) vips.claim('ownVip6', checkAddr('ownVip6', spec.ownVip6, 6), 'vip');
  if (!Array.isArray(spec.published)) throw new LanSpecError('published', 'want an array');
  const names = new Set<string>();
  spec.published.forEach((p, i) => {
    const at = `published[${i}]`;
    if (typeof p.name !== 'string' || !HOST_NAME_RE.test(p.name)) {
      throw new LanSpecError(`${at}.name`, `${JSON.stringify(p.name)}: want letters, digits, '_', '.', '-' (at most 63, starting with a letter or digit)`);
    }
    if (names.has(p.name)) throw new LanSpecError(`${at}.name`, `"${p.name}" is published twice`);
    names.add(p.name);
    for (const family of [4, 6] as const) {
      const lanKey = family === 4 ? 'lan4' : 'lan6';
      const vipKey = family === 4 ? 'vip4' : 'vip6';
      if (p[lanKey] !== undefined) lans.claim(`${at}.${lanKey}`, checkAddr(`${at}.${lanKey}`, p[lanKey], family), 'lan');
      if (p[vipKey] !== undefined) {
        vips.claim(`${at}.${vipKey}`, checkAddr(`${at}.${vipKey}`, p[vipKey], family), 'vip');
        if (p[lanKey] === undefined) throw new LanSpecError(`${at}.${vipKey}`, `${p[vipKey]} has no ${lanKey} to forward to`);
      }
    }
    if (p.vip4 === undefined && p.vip6 === undefined) throw new LanSpecError(at, `"${p.name}" has neither vip4 nor vip6`);
  });
  if (!Array.isArray(spec.mapped)) throw new LanSpecError('mapped', 'want an array');
  const reals = new AddressRegistry();
  spec.mapped.forEach((m, i) => {
    const at = `mapped[${i}]`;
    const family = familyOf(`${at}.local`, m.local);
    checkAddr(`${at}.real`, m.real, family);
    vips.claim(`${at}.local`, m.local, 'vip');
    reals.claim(`${at}.real`, m.real, 'real');
  });
  return { ...spec, table };
}

// --- rule text -------------------------------------------------------------------------------------

const q = (s: string): string => JSON.stringify(s);
const ipOf = (family: Family): string => (family === 4 ? 'ip' : 'ip6');
const nfproto = (family: Family): string => (family === 4 ? 'ipv4' : 'ipv6');
const addrSet = (addrs: string[]): string => `{ ${addrs.join(', ')} }`;

function lanOf(p: PublishedHost, family: Family): string | undefined {
  return family === 4 ? p.lan4 : p.lan6;
}

function vipOf(p: PublishedHost, family: Family): string | undefined {
  return family === 4 ? p.vip4 : p.vip6;
}

/**
 * The whole table as nft -f text that replaces the previous one in one transaction
 * (see netlink/nftables.ts tableReplacement). Validates the spec first.
 */
export function buildLanRuleset(input: LanSpec): string {
  const spec = validateLanSpec(input);
  const tun = q(spec.tun);
  const lan = `{ ${spec.lanInterfaces.map(q).join(', ')} }`;
  const families = [4, 6] as const;
  const ownVip = (family: Family): string | null => (family === 4 ? spec.ownVip4 : spec.ownVip6);
  const mappedOf = (family: Family): MappedAddress[] => spec.mapped.filter((m) => (isIPv4(m.local) ? 4 : 6) === family);

  const prerouting: string[] = [];
  const postrouting: string[] = [];
  for (const family of families) {
    const ip = ipOf(family);
    for (const p of spec.published) {
      const vip = vipOf(p, family);
      const addr = lanOf(p, family);
      if (vip !== undefined) prerouting.push(`iifname ${tun} ${ip} daddr ${vip} dnat ${ip} to ${addr} comment ${q(p.name)}`);
      if (vip !== undefined) postrouting.push(`iifname ${lan} oifname ${tun} ${ip} saddr ${addr} snat ${ip} to ${vip} comment ${q(p.name)}`);
    }
    const own = ownVip(family);
    if (own !== null) postrouting.push(`iifname ${lan} oifname ${tun} meta nfproto ${nfproto(family)} snat ${ip} to ${own} comment "router"`);
    for (const m of mappedOf(family)) {
      // the LAN talks to the mapped address; conntrack turns the replies back
      prerouting.push(`iifname ${lan} ${ip} daddr ${m.local} dnat ${ip} to ${m.real} comment "mapped"`);
      // the peer opens a connection to a published host: the host must not see a source on its own network
      postrouting.push(`iifname ${tun} oifname ${lan} ${ip} saddr ${m.real} snat ${ip} to ${m.local} comment "mapped"`);
    }
  }

  const forward = [
    `iifname ${tun} oifname ${lan} ct state established,related accept`,
    `iifname ${tun} oifname ${lan} ct status dnat accept comment "published"`,
    `iifname ${tun} oifname ${lan} counter name ${COUNTERS.tunToLanDrop} drop`,
    `iifname ${tun} counter name ${COUNTERS.tunForwardDrop} drop`,
  ];
  for (const family of families) {
    if (ownVip(family) !== null) continue;
    const ip = ipOf(family);
    const senders = spec.published.filter((p) => vipOf(p, family) !== undefined).map((p) => lanOf(p, family)!);
    const others = senders.length ? `${ip} saddr != ${addrSet(senders)}` : `meta nfproto ${nfproto(family)}`;
    forward.push(`iifname ${lan} oifname ${tun} ${others} counter name ${COUNTERS.lanToTunDrop} drop`);
  }
  forward.push(`iifname ${lan} oifname ${tun} accept`);

  const chain = (name: string, head: string, rules: string[]): string =>
    `  chain ${name} {\n    ${head}\n${rules.map((r) => `    ${r}\n`).join('')}  }\n`;
  const body =
    Object.values(COUNTERS).map((c) => `  counter ${c} {}\n`).join('') +
    chain('prerouting', 'type nat hook prerouting priority dstnat; policy accept;', prerouting) +
    chain('postrouting', 'type nat hook postrouting priority srcnat; policy accept;', postrouting) +
    chain('forward', 'type filter hook forward priority filter; policy accept;', forward);
  return tableReplacement('inet', spec.table, body);
}

/** The LAN translation of one router: apply a spec (again and again), remove it. */
export class LanTranslation {
  private table: string = DEFAULT_TABLE;

  constructor(private readonly nft: NftOptions = {}) {}

  /** Replace the table with the rules for spec (all or nothing; a previous table of another name is deleted after). */
  async apply(spec: LanSpec): Promise<void> {
    const text = buildLanRuleset(spec);
    await applyRuleset(text, this.nft);
    const previous = this.table;
    this.table = spec.table ?? DEFAULT_TABLE;
    if (previous !== this.table) await deleteTable('inet', previous, this.nft);
  }

  /** Delete the table (the last applied one, else the default, so a crashed run's table goes too). Idempotent. */
  async remove(): Promise<void> {
    await deleteTable('inet', this.table, this.nft);
  }
}
