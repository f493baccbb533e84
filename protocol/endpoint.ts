// UDP endpoints as they cross the JS/kernel boundary (tunnel/io.ts PacketBatch.addrs, the native
// addon's recvBatch/sendBatch): 28 bytes in sockaddr_in6 layout, written byte by byte so that it is
// the same on every router whatever its endianness:
//   0..1 family AF_INET6 (10) little-endian, 2..3 port big-endian, 4..7 flowinfo (raw),
//   8..23 address (IPv4 as v4-mapped ::ffff:a.b.c.d), 24..27 scope id little-endian.
// Pure TypeScript, no native dependency.
import { isIP } from 'node:net';
import type { WireEndpoint } from './control.js';
import { ipv6BytesToText } from './ip.js';

export const SOCKADDR_SIZE = 28;
/** Linux AF_INET6; the only family the 28-byte form carries. */
export const AF_INET6 = 10;

export class EndpointError extends Error {
  override readonly name = 'EndpointError';
}

export interface Endpoint {
  address: string;
  port: number;
  family: 4 | 6;
}

/** Writes `address`:`port` in the 28-byte form into out at offset (a new Buffer if out is omitted). */
export function encodeSockaddr(address: string, port: number, out?: Buffer, offset = 0): Buffer {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new EndpointError(`port ${String(port)} is not in 0..65535`);
  }
  const buf = out ?? Buffer.alloc(SOCKADDR_SIZE);
  if (!Number.isInteger(offset) || offset < 0 || offset + SOCKADDR_SIZE > buf.length) {
    throw new EndpointError(`offset ${offset} leaves no room for a ${SOCKADDR_SIZE}-byte sockaddr in ${buf.length} bytes`);
  }
  buf.fill(0, offset, offset + SOCKADDR_SIZE);
  buf[offset] = AF_INET6;
  buf.writeUInt16BE(port, offset + 2);
  const kind = isIP(address);
  if (kind === 4) {
    buf[offset + 18] = 0xff;
    buf[offset + 19] = 0xff;
    const parts = address.split('.');
    for (let i = 0; i < 4; i++) buf[offset + 20 + i] = Number(parts[i]);
  } else if (kind === 6) {
    const pct = address.indexOf('%');
    if (pct >= 0) {
      const zone = address.slice(pct + 1);
      if (!/^\d+$/.test(zone) || Number(zone) > 0xffffffff) {
        throw new EndpointError(`"${address}": zone must be a numeric interface index`);
      }
      buf.writeUInt32LE(Number(zone), offset + 24);
      address = address.slice(0, pct);
    }
    parseIPv6(address, buf, offset + 8);
  } else {
    throw new EndpointError(`"${address}" is not an IP address`);
  }
  return buf;
}

/** Reads the 28-byte form; a v4-mapped address comes back as dotted IPv4 with family 4. */
export function decodeSockaddr(buf: Buffer, offset = 0): Endpoint {
  if (!Number.isInteger(offset) || offset < 0 || offset + SOCKADDR_SIZE > buf.length) {
    throw new EndpointError(`offset ${offset} leaves no room for a ${SOCKADDR_SIZE}-byte sockaddr in ${buf.length} bytes`);
  }
  const family = buf.readUInt16LE(offset);
  if (family !== AF_INET6) throw new EndpointError(`sockaddr family ${family} is not AF_INET6 (${AF_INET6})`);
  const port = buf.readUInt16BE(offset + 2);
  const a = offset + 8;
  let mapped = buf[a + 10] === 0xff && buf[a + 11] === 0xff;
  for (let i = 0; i < 10 && mapped; i++) if (buf[a + i] !== 0) mapped = false;
  if (mapped) {
    return { address: `${buf[a + 12]}.${buf[a + 13]}.${buf[a + 14]}.${buf[a + 15]}`, port, family: 4 };
  }
  const scope = buf.readUInt32LE(offset + 24);
  const address = ipv6BytesToText(buf, a) + (scope !== 0 ? `%${scope}` : '');
  return { address, port, family: 6 };
}

/** The (address, port) a control message carries, from the 28-byte sockaddr at buf[offset] (e.g. where a datagram came from). */
export function wireEndpoint(sockaddr: Buffer, offset = 0): WireEndpoint {
  const e = decodeSockaddr(sockaddr, offset);
  return { address: e.address, port: e.port };
}

/**
 * 30-bit FNV-1a of the 28-byte sockaddr at buf[at]: a small integer (no boxing as a Map key), so a
 * lookup by a datagram's source allocates nothing. Equal sockaddrs hash equally; collisions are
 * resolved by comparing the bytes (EndpointMap).
 */
export function sockaddrHash(buf: Buffer, at = 0): number {
  let h = 0x811c9dc5;
  for (let i = at; i < at + SOCKADDR_SIZE; i++) {
    h ^= buf[i]!;
    h = Math.imul(h, 0x01000193);
  }
  return h & 0x3fffffff;
}

/** A map keyed by 28-byte sockaddrs, looked up straight from a receive batch's address array without allocating. */
export class EndpointMap<T> {
  private readonly buckets = new Map<number, { endpoint: Buffer; value: T }[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** The value for the sockaddr at buf[at]. */
  get(buf: Buffer, at = 0): T | undefined {
    const list = this.buckets.get(sockaddrHash(buf, at));
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!;
      if (buf.compare(e.endpoint, 0, SOCKADDR_SIZE, at, at + SOCKADDR_SIZE) === 0) return e.value;
    }
    return undefined;
  }

  /** Sets the value for `endpoint` (its first 28 bytes are copied). */
  set(endpoint: Buffer, value: T): void {
    const h = sockaddrHash(endpoint, 0);
    let list = this.buckets.get(h);
    if (list === undefined) this.buckets.set(h, (list = []));
    for (const e of list) {
      if (endpoint.compare(e.endpoint, 0, SOCKADDR_SIZE, 0, SOCKADDR_SIZE) === 0) {
        e.value = value;
        return;
      }
    }
    list.push({ endpoint: Buffer.from(endpoint.subarray(0, SOCKADDR_SIZE)), value });
    this.count++;
  }

  delete(endpoint: Buffer): boolean {
    const h = sockaddrHash(endpoint, 0);
    const list = this.buckets.get(h);
    if (list === undefined) return false;
    const i = list.findIndex((e) => endpoint.compare(e.endpoint, 0, SOCKADDR_SIZE, 0, SOCKADDR_SIZE) === 0);
    if (i < 0) return false;
    list.splice(i, 1);
    if (list.length === 0) this.buckets.delete(h);
    this.count--;
    return true;
  }

  clear(): void {
    this.buckets.clear();
    this.count = 0;
  }
}

/** "1.2.3.4:5" or "[::1]:5", from (address, port), an Endpoint, or a 28-byte sockaddr at offset. */
export function formatEndpoint(address: string, port: number): string;
export function formatEndpoint(endpoint: { address: string; port: number }): string;
export function formatEndpoint(sockaddr: Buffer, offset?: number): string;
export function formatEndpoint(a: string | Buffer | { address: string; port: number }, b?: number): string {
  let address: string;
  let port: number;
  if (typeof a === 'string') {
    address = a;
    port = b ?? 0;
  } else if (Buffer.isBuffer(a)) {
    ({ address, port } = decodeSockaddr(a, b ?? 0));
  } else {
    ({ address, port } = a);
  }
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Parses a (zone-less) IPv6 text address into 16 bytes at out[offset]. */
function parseIPv6(text: string, out: Buffer, offset: number): void {
  const groups: number[] = [];
  const halves = text.split('::');
  const toGroups = (s: string): number[] => {
    if (s === '') return [];
    const r: number[] = [];
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const [p0, p1, p2, p3] = part.split('.').map(Number) as [number, number, number, number];
        r.push((p0 << 8) | p1, (p2 << 8) | p3);
      } else {
        r.push(parseInt(part, 16));
      }
    }
    return r;
  };
  const head = toGroups(halves[0] ?? '');
  const tail = halves.length > 1 ? toGroups(halves[1] ?? '') : [];
  groups.push(...head);
  if (halves.length > 1) for (let i = head.length + tail.length; i < 8; i++) groups.push(0);
  groups.push(...tail);
  if (groups.length !== 8) throw new EndpointError(`"${text}" is not an IP address`);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(groups[i] ?? 0, offset + 2 * i);
}

