// NTMobile control messages (ARCHITECTURE §3, seed 003): the catalogue, the byte layout of every
// body, and the AEAD envelope. One schema per message drives both the encoder and the typed
// decoder, so the two cannot disagree; docs/protocol.md tables the same schemas by hand.
//
// Envelope (after the 4-byte non-ESP marker of protocol/demux.ts):
//   0  version (1)   1  type (1)   2  key class (1)   3  flags (0)
//   4  key id (4)    8  message id (8)   16  timestamp, ms since the epoch (8)
//   24 body, encrypted with ChaCha20-Poly1305 under the key that (key class, key id) names;
//      nonce = bytes 4..15 (key id ‖ message id), associated data = bytes 0..23
//   .. tag (16)
// Key class 0 ("tls") is only accepted inside a mutually authenticated TLS stream (servers/tls.ts):
// there the body is not encrypted again and there is no tag.

import { createCipheriv, createDecipheriv } from 'node:crypto';
import { isIP } from 'node:net';
import { ipv4ToNumber, ipv6BytesToText, ipv6ToBytes, numberToIpv4 } from './ip.js';

export const CONTROL_VERSION = 1;
export const HEADER_SIZE = 24;
export const TAG_SIZE = 16;
export const CONTROL_KEY_SIZE = 32;
/** Bodies are small; anything longer is refused before decryption. */
export const MAX_BODY = 1200;

export const KeyClass = {
  /** Inside mutual TLS (Key Distribution, first contact between servers); never over UDP. */
  tls: 0,
  ntmdc: 1,
  dcdc: 2,
  tun: 3,
  dcrs: 4,
  /** A tunnel's own key (derived from Kmncn, key ID = the receiver's inbound SPI): path probes and updates. */
  path: 5,
  /** Made by the DC for one node, held by the node and the NS: notifications NS → node (over MQTT). */
  ntmns: 6,
  /** DC ↔ NS, from the TLS exporter at first contact (like Kdcrs). */
  dcns: 7,
} as const;
export type KeyClassCode = (typeof KeyClass)[keyof typeof KeyClass];
const KEY_CLASS_NAMES = ['tls', 'Kntmdc', 'Kdcdc', 'Ktun', 'Kdcrs', 'Kpath', 'Kntmns', 'Kdcns'];

export const Status = {
  ok: 0,
  unknownName: 1,
  relayRequired: 2,
  peerUnreachable: 3,
  notAuthorized: 4,
  badRequest: 5,
  notRegistered: 6,
  internal: 7,
  keyMismatch: 8,
  overQuota: 9,
  /** A service the request needs is not configured here or does not answer (e.g. no Notification Server). */
  unavailable: 10,
} as const;
export type StatusCode = (typeof Status)[keyof typeof Status];
export function statusName(code: number): string {
  for (const [k, v] of Object.entries(Status)) if (v === code) return k;
  return `status ${code}`;
}

/** Field kinds: writeField/readField give the wire form of each (tabled in docs/protocol.md). */
type FieldKind = 'u8' | 'u16' | 'u32' | 'id' | 'time' | 'key' | 'name' | 'names' | 'text' | 'endpoint' | 'vip4' | 'vip6' | 'vip4s' | 'vip6s';

export interface WireEndpoint {
  address: string;
  port: number;
}

type ValueOf<K extends FieldKind> = K extends 'u8' | 'u16' | 'u32' | 'time'
  ? number
  : K extends 'id'
    ? bigint
    : K extends 'key'
      ? Buffer
      : K extends 'name' | 'text'
        ? string
        : K extends 'names' | 'vip4s' | 'vip6s'
          ? string[]
          : K extends 'endpoint'
            ? WireEndpoint | null
            : string | null;

type Schema = readonly (readonly [string, FieldKind])[];
type BodyOf<S extends Schema> = { -readonly [E in S[number] as E[0]]: ValueOf<E[1]> };

/** The catalogue: type code, name, the key class it travels under, and its body. */
export const MESSAGES = {
  registrationRequest: {
    code: 1,
    keys: 'Kntmdc',
    fields: [
      ['name', 'name'],
      ['local', 'endpoint'],
      ['publicKey', 'key'],
    ],
  },
  registrationResponse: {
    code: 2,
    keys: 'Kntmdc',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      ['name', 'name'],
      ['vip4', 'vip4'],
      ['vip6', 'vip6'],
      ['observed', 'endpoint'],
      ['keepaliveSeconds', 'u16'],
      ['serverTime', 'time'],
    ],
  },
  keepalive: { code: 3, keys: 'Kntmdc', fields: [['local', 'endpoint']] },
  keepaliveAck: {
    code: 4,
    keys: 'Kntmdc',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      ['observed', 'endpoint'],
      ['serverTime', 'time'],
    ],
  },
  directionRequest: {
    code: 5,
    keys: 'Kntmdc',
    fields: [
      ['source', 'name'],
      ['target', 'name'],
      /** DirectionFlags: relay (a direct attempt failed), general (the router's policy: a non-NTMobile host). */
      ['flags', 'u8'],
    ],
  },
  nodeInformationRequest: {
    code: 6,
    keys: 'Kdcdc',
    fields: [
      ['target', 'name'],
      ['requester', 'name'],
    ],
  },
  nodeInformationResponse: {
    code: 7,
    keys: 'Kdcdc',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      ['target', 'name'],
      ['node', 'name'],
      ['vip4', 'vip4'],
      ['vip6', 'vip6'],
      ['nodeVips4', 'vip4s'],
      ['nodeVips6', 'vip6s'],
      ['observed', 'endpoint'],
      ['local', 'endpoint'],
      ['publicKey', 'key'],
    ],
  },
  routeDirection: {
    code: 8,
    keys: 'Kntmdc (DC → node), Kdcdc (DCmn → DCcn)',
    fields: [
      ['inReplyTo', 'id'],
      ['routeId', 'u32'],
      ['role', 'u8'],
      ['ktun', 'key'],
      ['ktmp', 'key'],
      ['expiresAt', 'time'],
      ['localName', 'name'],
      ['peerNode', 'name'],
      ['peerName', 'name'],
      ['peerVip4', 'vip4'],
      ['peerVip6', 'vip6'],
      ['peerVips4', 'vip4s'],
      ['peerVips6', 'vip6s'],
      ['peerEndpoint', 'endpoint'],
      ['peerPublicKey', 'key'],
      /** PathKind: direct, relay (peerEndpoint is the RS: hole-punch first), gateway (the RS is the far end). */
      ['path', 'u8'],
      /** On a relayed route: the peer's endpoint as its DC saw it, to try a direct path (null: do not try). */
      ['peerCandidate', 'endpoint'],
      /** The RS's name on relay and gateway paths ('' on a direct path), for the operator. */
      ['via', 'text'],
    ],
  },
  relayDirection: {
    code: 9,
    keys: 'Kdcrs',
    fields: [
      ['routeId', 'u32'],
      ['ktun', 'key'],
      ['expiresAt', 'time'],
      ['nodeA', 'name'],
      ['nodeB', 'name'],
    ],
  },
  ntmAck: {
    code: 10,
    keys: 'any',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      ['reason', 'text'],
    ],
  },
  tunnelRequest: {
    code: 11,
    keys: 'Ktun',
    fields: [
      ['routeId', 'u32'],
      ['node', 'name'],
      ['suite', 'u8'],
      ['spi', 'u32'],
      ['ephemeral', 'key'],
      ['nonce', 'key'],
    ],
  },
  tunnelResponse: {
    code: 12,
    keys: 'Ktun',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      ['routeId', 'u32'],
      ['spi', 'u32'],
      ['ephemeral', 'key'],
      ['nonce', 'key'],
      ['confirm', 'key'],
    ],
  },
  holePunching: {
    code: 13,
    keys: 'Ktun',
    fields: [
      ['routeId', 'u32'],
      ['node', 'name'],
      /** Makes the request at least as long as the RS's answer (HOLE_PUNCH_PAD): no amplification. */
      ['pad', 'text'],
    ],
  },
  holePunchingAck: {
    code: 14,
    keys: 'Ktun',
    fields: [
      ['inReplyTo', 'id'],
      ['routeId', 'u32'],
      ['observed', 'endpoint'],
    ],
  },
  deregistration: { code: 15, keys: 'Kntmdc', fields: [['name', 'name']] },
  keyDistribution: {
    code: 16,
    keys: 'tls (AS → DC)',
    fields: [
      ['keyId', 'u32'],
      ['key', 'key'],
      ['expiresAt', 'time'],
      ['fqdn', 'name'],
      ['names', 'names'],
      ['publicKey', 'key'],
    ],
  },
  gatewayDirection: {
    code: 17,
    keys: 'Kdcrs',
    fields: [
      ['routeId', 'u32'],
      ['ktun', 'key'],
      ['ktmp', 'key'],
      ['expiresAt', 'time'],
      /** The NTMobile node whose tunnel ends at the RS, its name, VIPs and static public key. */
      ['node', 'name'],
      ['nodeName', 'name'],
      ['nodeVips4', 'vip4s'],
      ['nodeVips6', 'vip6s'],
      ['nodePublicKey', 'key'],
      /** The general host: its name and the addresses the node may reach through the RS. */
      ['target', 'name'],
      ['targets4', 'vip4s'],
      ['targets6', 'vip6s'],
    ],
  },
  relayHello: {
    code: 18,
    keys: 'tls (RS → DC, first contact)',
    fields: [
      ['name', 'name'],
      ['publicKey', 'key'],
    ],
  },
  pathProbe: {
    code: 19,
    keys: 'Kpath',
    fields: [
      /** 0: a probe (answer it); 1: commit (move the tunnel's path to where this came from, then answer). */
      ['commit', 'u8'],
      ['pad', 'text'],
    ],
  },
  pathProbeAck: {
    code: 20,
    keys: 'Kpath',
    fields: [
      ['inReplyTo', 'id'],
      ['observed', 'endpoint'],
    ],
  },
  // ---- the Notification Server (docs/ns.md) ----
  notifyRequest: {
    code: 21,
    keys: 'Kntmdc',
    fields: [
      /** A registered name of the asking node (the grant covers the node: every name under its Kntmdc). */
      ['name', 'name'],
      /** The MQTT keepalive the node will use: the DC grants a UDP keepalive interval of about as long. */
      ['keepaliveSeconds', 'u16'],
    ],
  },
  notifyResponse: {
    code: 22,
    keys: 'Kntmdc',
    fields: [
      ['inReplyTo', 'id'],
      ['status', 'u16'],
      /** The NS's name (its certificate's), and the broker URL it announced ('' if none). */
      ['ns', 'text'],
      ['broker', 'text'],
      /** Kntmns and its key ID (the MQTT user name and topic derive from the ID, the password from the key). */
      ['keyId', 'u32'],
      ['key', 'key'],
      ['expiresAt', 'time'],
      /** The UDP keepalive interval the DC now expects from this node; it expires the node after 3 of them. */
      ['keepaliveSeconds', 'u16'],
    ],
  },
  nsKeyDistribution: {
    code: 23,
    keys: 'Kdcns',
    fields: [
      ['keyId', 'u32'],
      ['key', 'key'],
      ['expiresAt', 'time'],
      /** The node (its Kntmdc's FQDN): notifications from this DC for it go out under this key. */
      ['node', 'name'],
    ],
  },
  notification: {
    code: 24,
    keys: 'Kdcns (DC → NS), Kntmns (NS → node, over MQTT)',
    fields: [
      ['node', 'name'],
      /** NotifyReason: why the node is woken. */
      ['reason', 'u8'],
      /** The route that waits for the node (0: none). */
      ['routeId', 'u32'],
    ],
  },
  nsHello: {
    code: 25,
    keys: 'tls (NS → DC, first contact)',
    fields: [
      ['name', 'name'],
      /** The MQTT URL nodes connect to, as the NS announces it ('' if it does not say). */
      ['broker', 'text'],
    ],
  },
} as const satisfies Record<string, { code: number; keys: string; fields: Schema }>;

export type MessageName = keyof typeof MESSAGES;
export type Body<N extends MessageName> = BodyOf<(typeof MESSAGES)[N]['fields']>;

/** A decoded message: its name narrows the body. */
export type ControlMessage = { [N in MessageName]: { type: N; body: Body<N> } }[MessageName];

export interface Envelope {
  version: number;
  type: number;
  keyClass: number;
  keyId: number;
  messageId: bigint;
  timestamp: number;
}

export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

const BY_CODE = new Map<number, MessageName>(Object.entries(MESSAGES).map(([n, m]) => [m.code, n as MessageName]));

export function messageName(code: number): MessageName | undefined {
  return BY_CODE.get(code);
}

// ---- body codec -------------------------------------------------------------------------------

const MAX_NAME = 253;
const MAX_TEXT = 512;
const MAX_LIST = 32;
const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

export function isDnsName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME) return false;
  return name.split('.').every((l) => LABEL.test(l));
}

class Writer {
  private readonly parts: Buffer[] = [];
  u8(v: number): void {
    this.parts.push(Buffer.from([v]));
  }
  u16(v: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.parts.push(b);
  }
  u64(v: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
  }
  bytes(b: Buffer): void {
    this.parts.push(b);
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

class Reader {
  at = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly where: string,
  ) {}
  need(n: number, field: string): void {
    if (this.at + n > this.buf.length) throw new DecodeError(`${this.where}: ${field}: truncated at byte ${this.at}, want ${n} more`);
  }
  u8(f: string): number {
    this.need(1, f);
    return this.buf[this.at++]!;
  }
  u16(f: string): number {
    this.need(2, f);
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(f: string): number {
    this.need(4, f);
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(f: string): bigint {
    this.need(8, f);
    const v = this.buf.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  bytes(n: number, f: string): Buffer {
    this.need(n, f);
    const v = Buffer.from(this.buf.subarray(this.at, this.at + n));
    this.at += n;
    return v;
  }
}



/** 18 bytes: address (16, IPv4 v4-mapped) ‖ port (2); all zero = no endpoint. */
function writeEndpoint(w: Writer, e: WireEndpoint | null, field: string, where: string): void {
  const b = Buffer.alloc(18);
  if (e !== null) {
    const fam = isIP(e.address);
    if (fam === 4) {
      b[10] = 0xff;
      b[11] = 0xff;
      b.writeUInt32BE(ipv4ToNumber(e.address), 12);
    } else if (fam === 6) ipv6ToBytes(e.address).copy(b, 0);
    else throw new DecodeError(`${where}: ${field}: "${e.address}" is not an IP address`);
    if (!Number.isInteger(e.port) || e.port < 1 || e.port > 65535) throw new DecodeError(`${where}: ${field}: port ${e.port} is not in 1..65535`);
    b.writeUInt16BE(e.port, 16);
  }
  w.bytes(b);
}

function readEndpoint(r: Reader, field: string, where: string): WireEndpoint | null {
  const b = r.bytes(18, field);
  const port = b.readUInt16BE(16);
  if (b.every((x) => x === 0)) return null;
  if (port === 0) throw new DecodeError(`${where}: ${field}: port 0`);
  const mapped = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  const address = mapped ? numberToIpv4(b.readUInt32BE(12)) : ipv6BytesToText(b);
  return { address, port };
}

function writeField(w: Writer, kind: FieldKind, v: unknown, field: string, where: string): void {
  const bad = (what: string): never => {
    throw new DecodeError(`${where}: ${field}: ${what}`);
  };
  switch (kind) {
    case 'u8':
    case 'u16':
    case 'u32': {
      const max = kind === 'u8' ? 0xff : kind === 'u16' ? 0xffff : 0xffffffff;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) bad(`${String(v)} is not a ${kind}`);
      if (kind === 'u8') w.u8(v as number);
      else if (kind === 'u16') w.u16(v as number);
      else w.u32(v as number);
      return;
    }
    case 'id':
      if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) bad('not a 64-bit id');
      w.u64(v as bigint);
      return;
    case 'time':
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(`${String(v)} is not a time`);
      w.u64(BigInt(v as number));
      return;
    case 'key':
      if (!Buffer.isBuffer(v) || v.length !== CONTROL_KEY_SIZE) bad(`want ${CONTROL_KEY_SIZE} bytes`);
      w.bytes(v as Buffer);
      return;
    case 'name': {
      const s = v as string;
      if (typeof s !== 'string' || !isDnsName(s)) bad(`"${String(v)}" is not a lower-case DNS name`);
      w.u8(s.length);
      w.bytes(Buffer.from(s, 'ascii'));
      return;
    }
    case 'names': {
      const list = v as string[];
      if (!Array.isArray(list) || list.length > MAX_LIST) bad(`want a list of at most ${MAX_LIST} names`);
      w.u8(list.length);
      list.forEach((n, i) => writeField(w, 'name', n, `${field}[${i}]`, where));
      return;
    }
    case 'text': {
      const b = Buffer.from(String(v), 'utf8');
      if (typeof v !== 'string' || b.length > MAX_TEXT) bad(`want text of at most ${MAX_TEXT} bytes`);
      w.u16(b.length);
      w.bytes(b);
      return;
    }
    case 'endpoint':
      writeEndpoint(w, v as WireEndpoint | null, field, where);
      return;
    case 'vip4':
      if (v === null) w.bytes(Buffer.alloc(4));
      else if (typeof v === 'string' && isIP(v) === 4) w.u32(ipv4ToNumber(v));
      else bad(`"${String(v)}" is not an IPv4 address`);
      return;
    case 'vip6':
      if (v === null) w.bytes(Buffer.alloc(16));
      else if (typeof v === 'string' && isIP(v) === 6) w.bytes(ipv6ToBytes(v));
      else bad(`"${String(v)}" is not an IPv6 address`);
      return;
    case 'vip4s':
    case 'vip6s': {
      const list = v as string[];
      if (!Array.isArray(list) || list.length > MAX_LIST) bad(`want a list of at most ${MAX_LIST} addresses`);
      w.u8(list.length);
      list.forEach((a, i) => writeField(w, kind === 'vip4s' ? 'vip4' : 'vip6', a, `${field}[${i}]`, where));
      return;
    }
  }
}

function readField(r: Reader, kind: FieldKind, field: string, where: string): unknown {
  switch (kind) {
    case 'u8':
      return r.u8(field);
    case 'u16':
      return r.u16(field);
    case 'u32':
      return r.u32(field);
    case 'id':
      return r.u64(field);
    case 'time': {
      const t = r.u64(field);
      if (t > BigInt(Number.MAX_SAFE_INTEGER)) throw new DecodeError(`${where}: ${field}: time ${t} out of range`);
      return Number(t);
    }
    case 'key':
      return r.bytes(CONTROL_KEY_SIZE, field);
    case 'name': {
      const n = r.u8(field);
      const s = r.bytes(n, field).toString('latin1');
      if (!isDnsName(s)) throw new DecodeError(`${where}: ${field}: ${JSON.stringify(s)} is not a lower-case DNS name`);
      return s;
    }
    case 'names': {
      const n = r.u8(field);
      if (n > MAX_LIST) throw new DecodeError(`${where}: ${field}: ${n} names, at most ${MAX_LIST}`);
      return Array.from({ length: n }, (_, i) => readField(r, 'name', `${field}[${i}]`, where));
    }
    case 'text': {
      const n = r.u16(field);
      if (n > MAX_TEXT) throw new DecodeError(`${where}: ${field}: ${n} bytes, at most ${MAX_TEXT}`);
      return r.bytes(n, field).toString('utf8');
    }
    case 'endpoint':
      return readEndpoint(r, field, where);
    case 'vip4': {
      const n = r.u32(field);
      return n === 0 ? null : numberToIpv4(n);
    }
    case 'vip6': {
      const b = r.bytes(16, field);
      return b.every((x) => x === 0) ? null : ipv6BytesToText(b);
    }
    case 'vip4s':
    case 'vip6s': {
      const n = r.u8(field);
      if (n > MAX_LIST) throw new DecodeError(`${where}: ${field}: ${n} addresses, at most ${MAX_LIST}`);
      const out: string[] = [];
      for (let i = 0; i < n; i++) {
        const a = readField(r, kind === 'vip4s' ? 'vip4' : 'vip6', `${field}[${i}]`, where);
        if (a === null) throw new DecodeError(`${where}: ${field}[${i}]: unspecified address`);
        out.push(a as string);
      }
      return out;
    }
  }
}

export function encodeBody<N extends MessageName>(type: N, body: Body<N>): Buffer {
  const w = new Writer();
  const values = body as Record<string, unknown>;
  for (const [field, kind] of MESSAGES[type].fields) writeField(w, kind, values[field], field, type);
  const out = w.done();
  if (out.length > MAX_BODY) throw new DecodeError(`${type}: body of ${out.length} bytes, at most ${MAX_BODY}`);
  return out;
}

export function decodeBody(code: number, buf: Buffer): ControlMessage {
  const type = BY_CODE.get(code);
  if (type === undefined) throw new DecodeError(`message type ${code} is unknown`);
  const r = new Reader(buf, type);
  const body: Record<string, unknown> = {};
  for (const [field, kind] of MESSAGES[type].fields) body[field] = readField(r, kind, field, type);
  if (r.at !== buf.length) throw new DecodeError(`${type}: ${buf.length - r.at} trailing bytes`);
  return { type, body } as ControlMessage;
}

// ---- envelope ---------------------------------------------------------------------------------

export function writeHeader(e: Envelope): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h[0] = e.version;
  h[1] = e.type;
  h[2] = e.keyClass;
  h.writeUInt32BE(e.keyId >>> 0, 4);
  h.writeBigUInt64BE(e.messageId, 8);
  h.writeBigUInt64BE(BigInt(e.timestamp), 16);
  return h;
}

/** Reads the cleartext header (everything needed to find the key); checks version and type. */
export function readHeader(buf: Buffer): Envelope {
  if (buf.length < HEADER_SIZE) throw new DecodeError(`control header: ${buf.length} bytes, want ${HEADER_SIZE}`);
  const version = buf[0]!;
  if (version !== CONTROL_VERSION) throw new DecodeError(`control header: version ${version}, want ${CONTROL_VERSION}`);
  const type = buf[1]!;
  if (!BY_CODE.has(type)) throw new DecodeError(`control header: message type ${type} is unknown`);
  const keyClass = buf[2]!;
  if (keyClass >= KEY_CLASS_NAMES.length) throw new DecodeError(`control header: key class ${keyClass} is unknown`);
  if (buf[3] !== 0) throw new DecodeError(`control header: flags ${buf[3]}, want 0`);
  const ts = buf.readBigUInt64BE(16);
  if (ts > BigInt(Number.MAX_SAFE_INTEGER)) throw new DecodeError(`control header: timestamp out of range`);
  return { version, type, keyClass, keyId: buf.readUInt32BE(4), messageId: buf.readBigUInt64BE(8), timestamp: Number(ts) };
}

export function keyClassName(c: number): string {
  return KEY_CLASS_NAMES[c] ?? `key class ${c}`;
}

/** Seals a message: header ‖ ChaCha20-Poly1305(body) ‖ tag. */
export function sealMessage<N extends MessageName>(type: N, body: Body<N>, e: Omit<Envelope, 'version' | 'type'>, key: Buffer): Buffer {
  if (e.keyClass === KeyClass.tls) throw new DecodeError(`${type}: key class tls is not sealed (use encodeTlsMessage)`);
  const header = writeHeader({ ...e, version: CONTROL_VERSION, type: MESSAGES[type].code });
  const plain = encodeBody(type, body);
  const c = createCipheriv('chacha20-poly1305', key, header.subarray(4, 16), { authTagLength: TAG_SIZE });
  c.setAAD(header, { plaintextLength: plain.length });
  const ct = c.update(plain);
  c.final();
  return Buffer.concat([header, ct, c.getAuthTag()]);
}

export class AuthError extends Error {
  override readonly name = 'AuthError';
}

/** Opens a sealed message whose header was read with readHeader; throws AuthError or DecodeError. */
export function openMessage(buf: Buffer, e: Envelope, key: Buffer): ControlMessage {
  const bodyLength = buf.length - HEADER_SIZE - TAG_SIZE;
  if (bodyLength < 0) throw new DecodeError(`${messageName(e.type)}: ${buf.length} bytes, shorter than header and tag`);
  if (bodyLength > MAX_BODY) throw new DecodeError(`${messageName(e.type)}: body of ${bodyLength} bytes, at most ${MAX_BODY}`);
  const d = createDecipheriv('chacha20-poly1305', key, buf.subarray(4, 16), { authTagLength: TAG_SIZE });
  d.setAAD(buf.subarray(0, HEADER_SIZE), { plaintextLength: bodyLength });
  d.setAuthTag(buf.subarray(buf.length - TAG_SIZE));
  const plain = d.update(buf.subarray(HEADER_SIZE, HEADER_SIZE + bodyLength));
  try {
    d.final();
  } catch {
    throw new AuthError(`${messageName(e.type)}: authentication failed under ${keyClassName(e.keyClass)} key ${e.keyId}`);
  }
  return decodeBody(e.type, plain);
}

/** Inside mutual TLS: header (key class tls) ‖ body, no encryption of its own. */
export function encodeTlsMessage<N extends MessageName>(type: N, body: Body<N>, messageId: bigint, timestamp: number): Buffer {
  const header = writeHeader({ version: CONTROL_VERSION, type: MESSAGES[type].code, keyClass: KeyClass.tls, keyId: 0, messageId, timestamp });
  return Buffer.concat([header, encodeBody(type, body)]);
}

export function decodeTlsMessage(buf: Buffer): { envelope: Envelope; message: ControlMessage } {
  const envelope = readHeader(buf);
  if (envelope.keyClass !== KeyClass.tls) throw new DecodeError(`TLS stream: key class ${keyClassName(envelope.keyClass)}, want tls`);
  return { envelope, message: decodeBody(envelope.type, buf.subarray(HEADER_SIZE)) };
}

/** Route Direction roles. */
export const Role = { initiator: 1, responder: 2 } as const;

/** Route Direction path kinds. */
export const PathKind = { direct: 0, relay: 1, gateway: 2 } as const;

/** Direction Request flags. */
export const DirectionFlags = { relay: 1, general: 2 } as const;

/** Why a notification wakes a node. */
export const NotifyReason = { direction: 1 } as const;

/** Pad of a Hole Punching request: with it the request is never shorter than the RS's answer. */
export const HOLE_PUNCH_PAD = '-'.repeat(24);

export const ZERO_KEY: Readonly<Buffer> = Buffer.alloc(CONTROL_KEY_SIZE);
