// Just enough of the IPv4 and IPv6 headers for the data path: version, addresses, and the
// conversion between textual addresses and the byte forms the tunnel table keys on.

import { isIPv4, isIPv6 } from 'node:net';

export const IPV4_HEADER_MIN = 20;
export const IPV6_HEADER_SIZE = 40;
export const IPV4_SRC_OFFSET = 12;
export const IPV4_DST_OFFSET = 16;
export const IPV6_SRC_OFFSET = 8;
export const IPV6_DST_OFFSET = 24;
/** The version nibble of an IPv4 header (anything else that passes nextHeaderFor is IPv6). */
export const IP_VERSION_4 = 4;

export class AddressError extends Error {
  override name = 'AddressError';
}

/** An IPv4 address as an unsigned 32-bit number. */
export function ipv4ToNumber(address: string): number {
  if (!isIPv4(address)) throw new AddressError(`"${address}" is not an IPv4 address`);
  return address.split('.').reduce((n, part) => n * 256 + Number(part), 0);
}

/** The dotted form of an unsigned 32-bit IPv4 address. */
export function numberToIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** RFC 5952 text form of the 16 address bytes at buf[offset]. */
export function ipv6BytesToText(buf: Buffer, offset = 0): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(buf.readUInt16BE(offset + 2 * i));
  let bestStart = -1;
  let bestLen = 1; // a single zero group is not compressed
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

/** An IPv6 address as 16 bytes (accepts every textual form node:net accepts, including ::ffff:a.b.c.d). */
export function ipv6ToBytes(address: string): Buffer {
  if (!isIPv6(address)) throw new AddressError(`"${address}" is not an IPv6 address`);
  let text = address.split('%')[0]!;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const v4 = ipv4ToNumber(dotted[1]!);
    text = `${text.slice(0, -dotted[1]!.length)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const zeros = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(zeros).fill('0'), ...tailGroups];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** 32-bit FNV-1a of 16 address bytes: the key of the IPv6 tunnel map (collisions are checked). */
export function hashIpv6(buf: Buffer, start: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < 16; i++) {
    h ^= buf[start + i]!;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A range an address was found in by reservedRange. */
export interface ReservedRange {
  /** The range, e.g. "10.0.0.0/8", "fc00::/7". */
  range: string;
  /** What it is, e.g. "private (RFC 1918)", "loopback". */
  what: string;
  /**
   * A private network that a deployment may legitimately route (RFC 1918, shared address space,
   * ULA), as opposed to one no host on any network can be reached at (loopback, link-local,
   * multicast, unspecified, reserved).
   */
  private: boolean;
}

type Range4 = readonly [base: number, prefix: number, range: string, what: string, isPrivate: boolean];

/** IPv4 ranges that are not on the public Internet. 198.18.0.0/15 (benchmarking) is deliberately not one: the testbed's Internet uses it. */
const RESERVED4: readonly Range4[] = [
  [0x00000000, 8, '0.0.0.0/8', '"this network" (unspecified)', false],
  [0x0a000000, 8, '10.0.0.0/8', 'private (RFC 1918)', true],
  [0x64400000, 10, '100.64.0.0/10', 'shared address space (carrier-grade NAT, RFC 6598)', true],
  [0x7f000000, 8, '127.0.0.0/8', 'loopback', false],
  [0xa9fe0000, 16, '169.254.0.0/16', 'link-local', false],
  [0xac100000, 12, '172.16.0.0/12', 'private (RFC 1918)', true],
  [0xc0a80000, 16, '192.168.0.0/16', 'private (RFC 1918)', true],
  [0xe0000000, 4, '224.0.0.0/4', 'multicast', false],
  [0xf0000000, 4, '240.0.0.0/4', 'reserved (incl. broadcast 255.255.255.255)', false],
];

function reservedRange4(n: number): ReservedRange | null {
  for (const [base, prefix, range, what, isPrivate] of RESERVED4) {
    // An unsigned compare of the top `prefix` bits (>>> keeps it unsigned; prefix ≥ 4 here).
    if (n >>> (32 - prefix) === base >>> (32 - prefix)) return { range, what, private: isPrivate };
  }
  return null;
}

/**
 * The non-public range an address lies in, or null for an address that may be on the Internet.
 * IPv4: 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, 224/4, 240/4. IPv6: ::,
 * ::1, fc00::/7, fe80::/10, ff00::/8; an IPv4-mapped (::ffff:0:0/96) or NAT64 (64:ff9b::/96)
 * address is judged by the IPv4 address it carries. Anything that is not an IP address is
 * reported as such (never treated as public). Pure: no DNS, no interfaces.
 */
export function reservedRange(address: string): ReservedRange | null {
  if (isIPv4(address)) return reservedRange4(ipv4ToNumber(address));
  if (!isIPv6(address)) return { range: '(not an IP address)', what: 'not an IP address', private: false };
  const b = ipv6ToBytes(address);
  let zeros = 0;
  while (zeros < 16 && b[zeros] === 0) zeros++;
  if (zeros === 16) return { range: '::/128', what: 'unspecified', private: false };
  if (zeros === 15 && b[15] === 1) return { range: '::1/128', what: 'loopback', private: false };
  if (b[0] === 0xff) return { range: 'ff00::/8', what: 'multicast', private: false };
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return { range: 'fe80::/10', what: 'link-local', private: false };
  if ((b[0]! & 0xfe) === 0xfc) return { range: 'fc00::/7', what: 'unique local (ULA)', private: true };
  const v4 = b.readUInt32BE(12);
  if (zeros >= 10 && b[10] === 0xff && b[11] === 0xff) {
    const r = reservedRange4(v4);
    return r === null ? null : { ...r, range: `::ffff:${r.range}`, what: `IPv4-mapped ${r.what}` };
  }
  // 64:ff9b::/96: 0064:ff9b:0000:0000:0000:0000 then the IPv4 address.
  if (b.readUInt32BE(0) === 0x0064ff9b && b.readUInt32BE(4) === 0 && b.readUInt32BE(8) === 0) {
    const r = reservedRange4(v4);
    return r === null ? null : { ...r, range: `64:ff9b::${r.range}`, what: `NAT64 of ${r.what}` };
  }
  return null;
}

/** Whether an address is private or reserved (reservedRange names which range): never a general host's. */
export function isPrivateOrReserved(address: string): boolean {
  return reservedRange(address) !== null;
}

/** An address prefix ("10.77.0.0/16", "fd4e:544d:1::/64") as bytes (4 or 16) and a length. */
export interface Prefix {
  bytes: Buffer;
  length: number;
}

/** Parses "address/length" (null if it is not one). */
export function parsePrefix(text: string): Prefix | null {
  const slash = text.indexOf('/');
  if (slash < 0) return null;
  const addr = text.slice(0, slash);
  const lenText = text.slice(slash + 1);
  const length = Number(lenText);
  if (!/^\d{1,3}$/.test(lenText)) return null;
  if (isIPv4(addr) && length <= 32) {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32BE(ipv4ToNumber(addr));
    return { bytes, length };
  }
  if (isIPv6(addr) && length <= 128) return { bytes: ipv6ToBytes(addr), length };
  return null;
}

/** Whether `address` lies in `prefix` (an address of the other family never does; IPv4-mapped IPv6 is not IPv4 here). */
export function prefixContains(prefix: Prefix, address: string): boolean {
  let bytes: Buffer;
  if (isIPv4(address)) {
    bytes = Buffer.alloc(4);
    bytes.writeUInt32BE(ipv4ToNumber(address));
  } else if (isIPv6(address)) bytes = ipv6ToBytes(address);
  else return false;
  if (bytes.length !== prefix.bytes.length) return false;
  const full = prefix.length >> 3;
  for (let i = 0; i < full; i++) if (bytes[i] !== prefix.bytes[i]) return false;
  const rest = prefix.length & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (bytes[full]! & mask) === (prefix.bytes[full]! & mask);
}

/** Whether two textual addresses name the same address (IPv6 in any of its forms; IPv4-mapped equals its IPv4). */
export function sameAddress(a: string, b: string): boolean {
  const bytes = (x: string): Buffer | null => {
    if (isIPv4(x)) return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), Buffer.from(x.split('.').map(Number))]);
    return isIPv6(x) ? ipv6ToBytes(x) : null;
  };
  const x = bytes(a);
  const y = bytes(b);
  return x !== null && y !== null && x.equals(y);
}
