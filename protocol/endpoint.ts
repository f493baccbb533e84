// UDP endpoints as they cross the JS/kernel boundary (tunnel/io.ts PacketBatch.addrs, the native
// addon's recvBatch/sendBatch): 28 bytes in sockaddr_in6 layout, written byte by byte so that it is
// the same on every router whatever its endianness:
//   0..1 family AF_INET6 (10) little-endian, 2..3 port big-endian, 4..7 flowinfo (raw),
//   8..23 address (IPv4 as v4-mapped ::ffff:a.b.c.d), 24..27 scope id little-endian.
// Pure TypeScript, no native dependency.
import { isIP } from 'node:net';
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

