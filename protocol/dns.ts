// DNS on the wire for the DC's authoritative server (servers/dc/dns-server.ts) and the router's DNS
// hook (router/dns-hook.ts), over the dns-packet codec: a query decoder that never throws and says
// why it refused, response builders (flags, EDNS, truncation), DNS-over-TCP framing (RFC 1035
// §4.2.2, RFC 7766), name comparison, and the UDP + TCP listener both servers run. Input from the
// network never throws here and is never logged: it is answered, or dropped and counted.

import dgram from 'node:dgram';
import net, { isIP, isIPv4, isIPv6 } from 'node:net';
import { createRequire } from 'node:module';
import type { Answer, DecodedPacket, OptAnswer, Packet, Question } from 'dns-packet';

// dns-packet is CommonJS. Imported from ESM, Node would first run its WebAssembly CJS export
// lexer over it, which costs a router daemon about 11 MB of RSS for the rest of its life
// (docs/benchmarks.md, "Memory on a router"); require() needs no lexer.
const { decode, encode, encodingLength } = createRequire(import.meta.url)('dns-packet') as typeof import('dns-packet');

const HEADER_SIZE = 12;
const FLAG_QR = 0x8000;
const OPCODE_MASK = 0x7800;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;
const RCODE_MASK = 0x000f;

/** RFC 1035 §4.2.1: the most a UDP response may carry for a client without EDNS. */
export const UDP_CLASSIC_SIZE = 512;
/** The most we put in one UDP response whatever the client offers (DNS Flag Day 2020): no IP fragments. */
export const UDP_MAX_SIZE = 1232;
/** A DNS message over TCP: its length must fit the 2-byte prefix. */
export const TCP_MAX_SIZE = 65535;
/** The longest query a listener reads from TCP: one question and an OPT record need far less. */
const MAX_QUERY_SIZE = 4096;

export const Rcode = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export type RcodeName = keyof typeof Rcode;
/** RFC 6891 §9: BADVERS is extended RCODE 16, carried as 1 in the OPT record's upper bits. */
const BADVERS_UPPER = 1;

export class DnsConfigError extends Error {
  override readonly name = 'DnsConfigError';
}

/** A query that decodeQuery accepted: opcode QUERY, class IN, one question, EDNS version 0 if any. */
export interface QueryPacket extends DecodedPacket {
  id: number;
  flags: number;
  questions: [Question];
  additionals: Answer[];
}

export type QueryDecode =
  | { ok: true; packet: QueryPacket }
  /** reply: the error response to send (FORMERR, NOTIMP, REFUSED, BADVERS); none: drop. */
  | { ok: false; reason: string; reply?: Packet };

/** The IPv4 and IPv6 addresses of one name. */
export interface AddressSet {
  a: readonly string[];
  aaaa: readonly string[];
}

/**
 * Decodes a message that should be a query; never throws. Garbage and responses are dropped (no
 * reply, so two servers can never answer each other forever); a decodable message we do not serve
 * comes back with the error response it deserves.
 */
export function decodeQuery(buf: Buffer): QueryDecode {
  if (buf.length < HEADER_SIZE) return { ok: false, reason: `${buf.length} bytes, shorter than the ${HEADER_SIZE}-byte header` };
  if (buf.readUInt16BE(2) & FLAG_QR) return { ok: false, reason: 'QR is set: a response, not a query' };
  let packet: DecodedPacket;
  try {
    packet = decode(buf);
  } catch (err) {
    return { ok: false, reason: `undecodable: ${err instanceof Error ? err.message : String(err)}` };
  }
  const reject = (rcode: RcodeName | 'BADVERS', reason: string, echoQuestion = false): QueryDecode =>
    ({ ok: false, reason, reply: errorReply(packet, rcode, echoQuestion) });
  const opcode = ((packet.flags ?? 0) & OPCODE_MASK) >> 11;
  if (opcode !== 0) return reject('NOTIMP', `opcode ${opcode}, only QUERY (0) is served`);
  const questions = packet.questions ?? [];
  if (questions.length !== 1) return reject('FORMERR', `${questions.length} questions, want exactly 1`);
  const opts = (packet.additionals ?? []).filter((r) => r.type === 'OPT');
  if (opts.length > 1) return reject('FORMERR', `${opts.length} OPT records, want at most 1 (RFC 6891 §6.1.1)`);
  const version = (opts[0] as OptAnswer | undefined)?.ednsVersion ?? 0;
  if (version !== 0) return reject('BADVERS', `EDNS version ${version}, only 0 is served`);
  const nameProblem = questionNameProblem(buf);
  if (nameProblem) return reject('FORMERR', nameProblem);
  const klass = questions[0]!.class ?? 'IN';
  if (klass !== 'IN') return reject('REFUSED', `class ${klass}, only IN is served`, !klass.startsWith('UNKNOWN_'));
  return { ok: true, packet: packet as QueryPacket };
}

/**
 * Why the question name cannot be answered as dns-packet decoded it, or null. dns-packet turns each
 * label into text and joins them with '.', so a label holding '.', a byte outside printable ASCII or
 * a compression pointer (nothing precedes the question that it could point to) would be answered
 * under another name.
 */
function questionNameProblem(buf: Buffer): string | null {
  for (let at = HEADER_SIZE; ; ) {
    const length = buf[at] ?? 0;
    if (length === 0) return null;
    if (length > 63) return `label type 0x${length.toString(16)} at byte ${at} of the question name, want a plain label`;
    for (let i = at + 1; i <= at + length; i++) {
      const c = buf[i]!;
      if (c <= 0x20 || c >= 0x7f || c === 0x2e) return `byte 0x${c.toString(16)} at offset ${i} inside a label of the question name`;
    }
    at += length + 1;
  }
}

function ourOpt(extendedRcode = 0): OptAnswer {
  return { type: 'OPT', name: '.', udpPayloadSize: UDP_MAX_SIZE, extendedRcode, ednsVersion: 0, flags: 0, flag_do: false, options: [] };
}

function hasOpt(packet: DecodedPacket): boolean {
  return (packet.additionals ?? []).some((r) => r.type === 'OPT');
}

function errorReply(query: DecodedPacket, rcode: RcodeName | 'BADVERS', echoQuestion: boolean): Packet {
  const badvers = rcode === 'BADVERS';
  return {
    type: 'response',
    id: query.id ?? 0,
    flags: ((query.flags ?? 0) & (OPCODE_MASK | FLAG_RD)) | (badvers ? 0 : Rcode[rcode]),
    questions: echoQuestion ? query.questions ?? [] : [],
    additionals: badvers || hasOpt(query) ? [ourOpt(badvers ? BADVERS_UPPER : 0)] : [],
  };
}

export interface ResponseOptions {
  rcode?: RcodeName;
  authoritative?: boolean;
  recursionAvailable?: boolean;
  answers?: Answer[];
  authorities?: Answer[];
  additionals?: Answer[];
}

/** The response to query: its id, question, opcode and RD flag, plus an OPT record if it had one. */
export function buildResponse(query: QueryPacket, options: ResponseOptions = {}): Packet {
  let flags = (query.flags & (OPCODE_MASK | FLAG_RD)) | Rcode[options.rcode ?? 'NOERROR'];
  if (options.authoritative) flags |= FLAG_AA;
  if (options.recursionAvailable) flags |= FLAG_RA;
  return {
    type: 'response',
    id: query.id,
    flags,
    questions: query.questions,
    answers: options.answers ?? [],
    authorities: options.authorities ?? [],
    additionals: [...(options.additionals ?? []), ...(hasOpt(query) ? [ourOpt()] : [])],
  };
}

/** The most a UDP response to query may hold: 512 bytes, or what its EDNS record offers up to UDP_MAX_SIZE. */
export function maxUdpSize(query: QueryPacket): number {
  const opt = query.additionals.find((r): r is OptAnswer => r.type === 'OPT');
  return opt ? Math.min(Math.max(opt.udpPayloadSize, UDP_CLASSIC_SIZE), UDP_MAX_SIZE) : UDP_CLASSIC_SIZE;
}

/**
 * Encodes response in at most maxSize bytes. One that does not fit goes out as its header, question
 * and OPT record with TC set (RFC 2181 §9), and the client asks again over TCP. Throws if a record
 * does not encode.
 */
export function encodeResponse(response: Packet, maxSize: number): { message: Buffer; truncated: boolean } {
  if (encodingLength(response) <= maxSize) return { message: encode(response), truncated: false };
  const cut: Packet = {
    ...response,
    flags: (response.flags ?? 0) | FLAG_TC,
    answers: [],
    authorities: [],
    additionals: (response.additionals ?? []).filter((r) => r.type === 'OPT'),
  };
  return { message: encode(cut), truncated: true };
}

/** A and AAAA records for owner; throws if an address is not of the record's family. */
export function addressRecords(owner: string, type: 'A' | 'AAAA', addresses: readonly string[], ttl: number): Answer[] {
  const valid = type === 'A' ? isIPv4 : isIPv6;
  return addresses.map((data) => {
    if (!valid(data)) throw new TypeError(`${type} record for ${owner}: "${data}" is not an IPv${type === 'A' ? 4 : 6} address`);
    return { type, name: owner, ttl, data };
  });
}

/** Lower case (ASCII only, as DNS compares names: RFC 4343), without the trailing dot; the root is ''. */
export function normalizeName(name: string): string {
  const lower = name.replace(/[A-Z]+/g, (s) => s.toLowerCase());
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Whether name is zone or below it: inZone('b2.rb.fleet2.test', 'fleet2.test'). */
export function inZone(name: string, zone: string): boolean {
  const n = normalizeName(name);
  const z = normalizeName(zone);
  return z === '' || n === z || n.endsWith(`.${z}`);
}

/** message with its 2-byte length prefix, for TCP. */
export function frameMessage(message: Buffer): Buffer {
  if (message.length > TCP_MAX_SIZE) throw new RangeError(`DNS message of ${message.length} bytes, more than ${TCP_MAX_SIZE} fit a TCP frame`);
  const framed = Buffer.allocUnsafe(2 + message.length);
  framed.writeUInt16BE(message.length, 0);
  message.copy(framed, 2);
  return framed;
}

export type FrameRead = { ok: true; messages: Buffer[] } | { ok: false; reason: string };

/**
 * Cuts a TCP byte stream into DNS messages (2-byte length prefix). Refuses a zero-length frame and
 * one longer than maxMessageSize; after a refusal the stream is out of step and must be closed.
 */
export class DnsStreamReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Length of the message being read; 0 while the length prefix is. */
  private expected = 0;

  constructor(private readonly maxMessageSize = TCP_MAX_SIZE) {}

  push(chunk: Buffer): FrameRead {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const messages: Buffer[] = [];
    for (;;) {
      if (this.expected === 0) {
        if (this.buffered < 2) break;
        const length = this.take(2).readUInt16BE(0);
        if (length === 0 || length > this.maxMessageSize) {
          return { ok: false, reason: `TCP frame of ${length} bytes, want 1..${this.maxMessageSize}` };
        }
        this.expected = length;
      }
      if (this.buffered < this.expected) break;
      messages.push(this.take(this.expected));
      this.expected = 0;
    }
    return { ok: true, messages };
  }

  /** The first n buffered bytes (n <= buffered), joining chunks only when a message is complete. */
  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return all.subarray(0, n);
  }
}

/** What a DNS listener received and sent: one field per event. */
export class DnsCounters {
  /** Messages received over UDP and TCP, whatever they held. */
  queries = 0;
  /** Responses sent, of every rcode. */
  answered = 0;
  nxdomain = 0;
  servfail = 0;
  refused = 0;
  formerr = 0;
  notimp = 0;
  badvers = 0;
  /** UDP responses cut to their question with TC set. */
  truncated = 0;
  /** Dropped unanswered: shorter than a header, a response (QR set), or not decodable. */
  malformed = 0;
  /** The server's answer threw or held records that do not encode: answered SERVFAIL. */
  answerErrors = 0;
  /** UDP answers the socket failed to send. */
  udpSendErrors = 0;
  tcpConnections = 0;
  /** TCP connections closed at once because maxTcpConnections were open. */
  tcpRejected = 0;
  /** TCP connections closed for a zero-length or over-long frame. */
  tcpBadFrames = 0;

  snapshot(): Record<string, number> {
    return Object.fromEntries(Object.entries(this)) as Record<string, number>;
  }
}

const RCODE_COUNTERS = [undefined, 'formerr', 'servfail', 'nxdomain', 'notimp', 'refused'] as const;
/** TCP queries read from one connection and not yet answered before we stop reading from it. */
const MAX_PIPELINED = 16;

export interface DnsListenerOptions {
  /** Names the listener in errors ('dns-server', 'dns-hook'). */
  label: string;
  /** An IP address. */
  address: string;
  /** 0: any free port, the same for UDP and TCP (read `port` after start). */
  port: number;
  /** Answers a query that decodeQuery accepted; a throw becomes SERVFAIL. */
  answer: (query: QueryPacket) => Packet | Promise<Packet>;
  counters: DnsCounters;
  /** Told why an answer failed (a bug in answer or in the data it serves). */
  onError?: ((error: unknown) => void) | undefined;
  /** A TCP connection with no query outstanding is closed after this long quiet (default 10 s). */
  tcpIdleMs?: number | undefined;
  /** Default 64. */
  maxTcpConnections?: number | undefined;
}

/** One DNS service on UDP and TCP at one address and port. */
export class DnsListener {
  private udp: dgram.Socket | undefined;
  private tcp: net.Server | undefined;
  private readonly connections = new Set<net.Socket>();
  private readonly tcpIdleMs: number;

  constructor(private readonly options: DnsListenerOptions) {
    const { label, address, port } = options;
    if (isIP(address) === 0) throw new DnsConfigError(`${label}: address "${address}" is not an IP address`);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new DnsConfigError(`${label}: port ${port} is not in 0..65535`);
    this.tcpIdleMs = options.tcpIdleMs ?? 10_000;
  }

  /** The bound port once started, the configured one before. */
  get port(): number {
    return this.udp?.address().port ?? this.options.port;
  }

  async start(): Promise<void> {
    const { label, address, port } = this.options;
    if (this.udp) throw new Error(`${label}: already started`);
    // With port 0 the UDP port is picked first; TCP may find it taken, so try a few.
    for (let attempt = 1; ; attempt++) {
      const udp = await this.bindUdp();
      const bound = udp.address().port;
      try {
        this.tcp = await this.listenTcp(bound);
        this.udp = udp;
        return;
      } catch (err) {
        udp.close();
        const taken = (err as NodeJS.ErrnoException).code === 'EADDRINUSE';
        if (port !== 0 || !taken || attempt === 5) {
          throw new Error(`${label}: cannot listen on tcp ${address}:${bound}: ${(err as Error).message}`);
        }
      }
    }
  }

  async stop(): Promise<void> {
    const { udp, tcp } = this;
    this.udp = undefined;
    this.tcp = undefined;
    for (const socket of this.connections) socket.destroy();
    await Promise.all([
      udp && new Promise<void>((done) => udp.close(() => done())),
      tcp && new Promise<void>((done) => tcp.close(() => done())),
    ]);
  }

  private bindUdp(): Promise<dgram.Socket> {
    const { label, address, port, counters } = this.options;
    const udp = dgram.createSocket(isIPv6(address) ? 'udp6' : 'udp4');
    return new Promise((resolve, reject) => {
      udp.once('error', (err) => {
        udp.close();
        reject(new Error(`${label}: cannot listen on udp ${address}:${port}: ${err.message}`));
      });
      udp.bind(port, address, () => {
        udp.removeAllListeners('error');
        udp.on('error', () => counters.udpSendErrors++);
        udp.on('message', (message, from) => {
          void this.respond(message, 'udp').then((reply) => {
            if (reply === null || this.udp !== udp) return;
            udp.send(reply, from.port, from.address, (err) => err && counters.udpSendErrors++);
          });
        });
        resolve(udp);
      });
    });
  }

  private listenTcp(port: number): Promise<net.Server> {
    const { address, counters } = this.options;
    const tcp = net.createServer({ allowHalfOpen: true }, (socket) => this.serveTcp(socket));
    tcp.maxConnections = this.options.maxTcpConnections ?? 64;
    tcp.on('drop', () => counters.tcpRejected++);
    return new Promise((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ host: address, port }, () => {
        tcp.off('error', reject);
        resolve(tcp);
      });
    });
  }

  private serveTcp(socket: net.Socket): void {
    const { counters } = this.options;
    counters.tcpConnections++;
    this.connections.add(socket);
    socket.on('close', () => this.connections.delete(socket));
    // A reset or a write after the client left: the socket closes, and there is no one to answer.
    socket.on('error', () => {});
    const reader = new DnsStreamReader(MAX_QUERY_SIZE);
    let outstanding = 0;
    let clientEnded = false;
    const done = () => {
      if (outstanding-- === MAX_PIPELINED) socket.resume();
      if (clientEnded && outstanding === 0) socket.end();
    };
    // A client may send its queries and half-close: answer them all, then close our side.
    socket.on('end', () => {
      clientEnded = true;
      if (outstanding === 0) socket.end();
    });
    socket.setTimeout(this.tcpIdleMs);
    socket.on('timeout', () => {
      if (outstanding === 0) socket.destroy();
      else socket.setTimeout(this.tcpIdleMs);
    });
    socket.on('data', (chunk: Buffer) => {
      const read = reader.push(chunk);
      if (!read.ok) {
        counters.tcpBadFrames++;
        socket.destroy();
        return;
      }
      for (const message of read.messages) {
        if (++outstanding === MAX_PIPELINED) socket.pause();
        void this.respond(message, 'tcp').then((reply) => {
          if (reply === null || !socket.writable) return done();
          socket.write(frameMessage(reply), done);
        });
      }
    });
  }

  /** The encoded response to one message, or null to drop it. Never rejects. */
  private async respond(message: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | null> {
    const { counters } = this.options;
    counters.queries++;
    const decoded = decodeQuery(message);
    if (!decoded.ok) {
      if (!decoded.reply) {
        counters.malformed++;
        return null;
      }
      return this.finish(decoded.reply, UDP_CLASSIC_SIZE);
    }
    const limit = transport === 'udp' ? maxUdpSize(decoded.packet) : TCP_MAX_SIZE;
    try {
      return this.finish(await this.options.answer(decoded.packet), limit);
    } catch (err) {
      counters.answerErrors++;
      this.options.onError?.(err);
      return this.finish(buildResponse(decoded.packet, { rcode: 'SERVFAIL' }), limit);
    }
  }

  /** Encodes response within limit bytes and counts it. */
  private finish(response: Packet, limit: number): Buffer {
    const { message, truncated } = encodeResponse(response, limit);
    const { counters } = this.options;
    counters.answered++;
    if (truncated) counters.truncated++;
    const counter = RCODE_COUNTERS[(response.flags ?? 0) & RCODE_MASK];
    if (counter) counters[counter]++;
    if (response.additionals?.some((r) => r.type === 'OPT' && r.extendedRcode === BADVERS_UPPER)) counters.badvers++;
    return message;
  }
}
