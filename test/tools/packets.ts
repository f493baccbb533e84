// Raw IP packets for the tests: the Internet checksum (RFC 1071) and builders of IPv4/IPv6
// headers, UDP datagrams and ICMPv4 echo requests, all with correct checksums. The family is
// taken from the address syntax; addresses are parsed by protocol/ip.ts.
import { ipv4ToNumber, ipv6ToBytes } from '../../protocol/ip.js';

/** The Internet checksum of the concatenated parts (each but the last of even length). */
export function checksum(...parts: Buffer[]): number {
  let s = 0;
  for (const buf of parts) {
    for (let i = 0; i + 1 < buf.length; i += 2) s += buf.readUInt16BE(i);
    if (buf.length & 1) s += buf[buf.length - 1]! << 8;
  }
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

const isV6 = (a: string) => a.includes(':');

function addrBytes(a: string): Buffer {
  if (isV6(a)) return ipv6ToBytes(a);
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ipv4ToNumber(a));
  return b;
}

/** IPv4 (with a correct header checksum) or IPv6 header + payload; TTL / hop limit 64. */
export function ipPacket(src: string, dst: string, proto: number, payload: Buffer): Buffer {
  if (isV6(src)) {
    const h = Buffer.alloc(40);
    h[0] = 0x60;
    h.writeUInt16BE(payload.length, 4);
    h[6] = proto;
    h[7] = 64;
    addrBytes(src).copy(h, 8);
    addrBytes(dst).copy(h, 24);
    return Buffer.concat([h, payload]);
  }
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(0x1234, 4);
  h[8] = 64;
  h[9] = proto;
  addrBytes(src).copy(h, 12);
  addrBytes(dst).copy(h, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, payload]);
}

/** UDP datagram with a correct checksum (pseudo-header included), inside IPv4 or IPv6. */
export function udpPacket(src: string, dst: string, sport: number, dport: number, data: Buffer): Buffer {
  const u = Buffer.alloc(8 + data.length);
  u.writeUInt16BE(sport, 0);
  u.writeUInt16BE(dport, 2);
  u.writeUInt16BE(u.length, 4);
  data.copy(u, 8);
  const pseudo = Buffer.concat([addrBytes(src), addrBytes(dst), Buffer.from([0, 17, u.length >> 8, u.length & 0xff])]);
  u.writeUInt16BE(checksum(pseudo, u) || 0xffff, 6);
  return ipPacket(src, dst, 17, u);
}

/** ICMPv4 echo request with a correct checksum; `data` defaults to 24 bytes of 0x5a. */
export function icmpEcho(src: string, dst: string, id: number, seq: number, data = Buffer.alloc(24, 0x5a)): Buffer {
  if (isV6(src)) throw new Error('icmpEcho builds ICMPv4 only');
  const m = Buffer.alloc(8 + data.length);
  m[0] = 8;
  m.writeUInt16BE(id, 4);
  m.writeUInt16BE(seq, 6);
  data.copy(m, 8);
  m.writeUInt16BE(checksum(m), 2);
  return ipPacket(src, dst, 1, m);
}
