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
