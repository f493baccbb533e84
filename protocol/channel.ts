// One authenticated control-message endpoint, shared by the router and the servers: opens
// datagrams with the key their header names, drops replays (a message ID seen before, or a
// timestamp outside the window), answers a duplicate request with the very bytes of its first
// answer (idempotent), and retransmits requests with backoff until the answer or NTM ACK comes.
// The socket is hidden behind `send`; time is passed in, so tests drive it with a fake clock.

import { randomBytes } from 'node:crypto';
import { NON_ESP_MARKER_SIZE } from './demux.js';
import {
  AuthError,
  DecodeError,
  KeyClass,
  openMessage,
  readHeader,
  sealMessage,
  type Body,
  type ControlMessage,
  type Envelope,
  type MessageName,
} from './control.js';

/** How far a message's timestamp may be from our clock (either way) and still be accepted. */
export const REPLAY_WINDOW_MS = 30_000;
/** Seen message IDs are kept this long: beyond it the timestamp check alone refuses them. */
const SEEN_KEEP_MS = 2 * REPLAY_WINDOW_MS;
const MAX_SEEN = 200_000;

export interface SendKey {
  keyClass: number;
  keyId: number;
  key: Buffer;
}

export interface Incoming {
  envelope: Envelope;
  message: ControlMessage;
  /** The sender's 28-byte sockaddr (protocol/endpoint.ts). */
  from: Buffer;
  key: SendKey;
}

export interface RetransmitPolicy {
  /** First wait for an answer, in ms; doubled after each try up to maxMs. */
  initialMs: number;
  maxMs: number;
  tries: number;
}

export const DEFAULT_RETRANSMIT: RetransmitPolicy = { initialMs: 300, maxMs: 2000, tries: 6 };

export class ChannelCounters {
  received = 0;
  accepted = 0;
  dropMalformed = 0;
  dropUnknownKey = 0;
  dropAuth = 0;
  dropStale = 0;
  dropDuplicate = 0;
  duplicatesAnswered = 0;
  dropUnexpectedReply = 0;
  dropOverload = 0;
  sent = 0;
  retransmits = 0;
  timeouts = 0;
}

/** Given to request(): lets its caller send the request again at once, to its current destination. */
export class RequestHandle {
  /** Set by request(); does nothing once the request is answered or given up. */
  resendNow: () => void = () => undefined;
}

export class RequestTimeout extends Error {
  override readonly name = 'RequestTimeout';
}

export interface ChannelOptions {
  send: (datagram: Buffer, to: Buffer) => void;
  keys: (keyClass: number, keyId: number) => Buffer | undefined;
  onMessage: (m: Incoming) => void;
  now?: () => number;
  windowMs?: number;
  /** Called with a short line per protocol event (`--verbose`). */
  trace?: (line: string) => void;
}

interface Pending {
  resolve: (m: Incoming) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

interface Seen {
  expires: number;
  /** The datagram we answered it with, resent for a duplicate (idempotence). */
  answer: { datagram: Buffer; to: Buffer } | null;
}

export function newMessageId(): bigint {
  return randomBytes(8).readBigUInt64BE(0);
}

export class ControlChannel {
  readonly counters = new ChannelCounters();
  private readonly seen = new Map<string, Seen>();
  private readonly pending = new Map<string, Pending>();
  private readonly now: () => number;
  private readonly windowMs: number;
  private closed = false;

  constructor(private readonly opts: ChannelOptions) {
    this.now = opts.now ?? Date.now;
    this.windowMs = opts.windowMs ?? REPLAY_WINDOW_MS;
  }

  /** A whole datagram as the demultiplexer classified it: non-ESP marker ‖ message. */
  receive(datagram: Buffer, from: Buffer): void {
    const c = this.counters;
    c.received++;
    const buf = datagram.subarray(NON_ESP_MARKER_SIZE);
    let envelope: Envelope;
    try {
      envelope = readHeader(buf);
    } catch {
      c.dropMalformed++;
      return;
    }
    if (envelope.keyClass === KeyClass.tls) {
      c.dropMalformed++;
      return;
    }
    const key = this.opts.keys(envelope.keyClass, envelope.keyId);
    if (key === undefined) {
      c.dropUnknownKey++;
      return;
    }
    let message: ControlMessage;
    try {
      message = openMessage(buf, envelope, key);
    } catch (e) {
      if (e instanceof AuthError) c.dropAuth++;
      else if (e instanceof DecodeError) c.dropMalformed++;
      else throw e;
      return;
    }
    const now = this.now();
    if (Math.abs(now - envelope.timestamp) > this.windowMs) {
      c.dropStale++;
      this.trace(`drop stale ${message.type} (${now - envelope.timestamp} ms off)`);
      return;
    }
    const id = seenKey(envelope.keyClass, envelope.keyId, envelope.messageId);
    const prior = this.seen.get(id);
    if (prior !== undefined) {
      if (prior.answer !== null) {
        c.duplicatesAnswered++;
        this.opts.send(prior.answer.datagram, prior.answer.to);
      } else c.dropDuplicate++;
      return;
    }
    if (!this.remember(id, now)) {
      c.dropOverload++;
      return;
    }
    const incoming: Incoming = { envelope, message, from: Buffer.from(from), key: { keyClass: envelope.keyClass, keyId: envelope.keyId, key } };
    const inReplyTo = (message.body as { inReplyTo?: bigint }).inReplyTo;
    if (inReplyTo !== undefined && inReplyTo !== 0n) {
      const p = this.pending.get(seenKey(envelope.keyClass, envelope.keyId, inReplyTo));
      if (p !== undefined) {
        this.pending.delete(seenKey(envelope.keyClass, envelope.keyId, inReplyTo));
        if (p.timer) clearTimeout(p.timer);
        c.accepted++;
        this.trace(`recv ${message.type} (answer) from key ${envelope.keyId}`);
        p.resolve(incoming);
        return;
      }
      // An answer nobody waits for: a late duplicate of an answer already taken, or a route
      // direction that answers a direction request (handled as a new message below).
      if (message.type !== 'routeDirection') {
        c.dropUnexpectedReply++;
        return;
      }
    }
    c.accepted++;
    this.trace(`recv ${message.type} from key ${envelope.keyId}`);
    this.opts.onMessage(incoming);
  }

  /** Sends one message (no answer awaited); returns its message ID. */
  send<N extends MessageName>(type: N, body: Body<N>, key: SendKey, to: Buffer): bigint {
    const messageId = newMessageId();
    this.transmit(this.seal(type, body, key, messageId), to);
    this.trace(`send ${type}`);
    return messageId;
  }

  /** Answers a message under the key it came with; a duplicate of it gets these same bytes again. */
  reply<N extends MessageName>(to: Incoming, type: N, body: Body<N>, dest: Buffer = to.from): void {
    const datagram = this.seal(type, body, to.key, newMessageId());
    const s = this.seen.get(seenKey(to.envelope.keyClass, to.envelope.keyId, to.envelope.messageId));
    if (s !== undefined) s.answer = { datagram, to: Buffer.from(dest) };
    this.transmit(datagram, dest);
    this.trace(`send ${type} (answer)`);
  }

  /**
   * Sends a request and resolves with the first authenticated message under the same key whose
   * inReplyTo names it; retransmits the same bytes with backoff, rejects with RequestTimeout.
   * `to` may be a function, asked again before every transmission: a receiver whose address
   * changes while we wait (a node woken behind a NAT that gave it a new mapping) gets the
   * retransmissions where it is now. With `handle`, the caller can also send again at once.
   */
  request<N extends MessageName>(type: N, body: Body<N>, key: SendKey, to: Buffer | (() => Buffer), policy: RetransmitPolicy = DEFAULT_RETRANSMIT, handle?: RequestHandle): Promise<Incoming> {
    if (this.closed) return Promise.reject(new Error('control channel is closed'));
    const messageId = newMessageId();
    const datagram = this.seal(type, body, key, messageId);
    const id = seenKey(key.keyClass, key.keyId, messageId);
    this.trace(`send ${type} (request)`);
    return new Promise<Incoming>((resolve, reject) => {
      const p: Pending = { resolve, reject, timer: null };
      this.pending.set(id, p);
      let tries = 0;
      let wait = policy.initialMs;
      const dest = (): Buffer => (typeof to === 'function' ? to() : to);
      const attempt = (): void => {
        if (!this.pending.has(id)) return;
        if (tries >= policy.tries) {
          this.pending.delete(id);
          this.counters.timeouts++;
          reject(new RequestTimeout(`${type}: no answer after ${tries} tries`));
          return;
        }
        if (tries > 0) this.counters.retransmits++;
        tries++;
        this.transmit(datagram, dest());
        p.timer = setTimeout(attempt, wait);
        wait = Math.min(wait * 2, policy.maxMs);
      };
      if (handle !== undefined) {
        // The same bytes again, outside the backoff schedule (which goes on as it was).
        handle.resendNow = () => {
          if (!this.pending.has(id)) return;
          this.counters.retransmits++;
          this.transmit(datagram, dest());
        };
      }
      attempt();
    });
  }

  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new Error('control channel closed'));
    }
    this.pending.clear();
  }

  private seal<N extends MessageName>(type: N, body: Body<N>, key: SendKey, messageId: bigint): Buffer {
    const sealed = sealMessage(type, body, { keyClass: key.keyClass, keyId: key.keyId, messageId, timestamp: this.now() }, key.key);
    const datagram = Buffer.alloc(NON_ESP_MARKER_SIZE + sealed.length);
    sealed.copy(datagram, NON_ESP_MARKER_SIZE);
    return datagram;
  }

  private transmit(datagram: Buffer, to: Buffer): void {
    this.counters.sent++;
    this.opts.send(datagram, to);
  }

  private remember(id: string, now: number): boolean {
    if (this.seen.size >= MAX_SEEN) {
      for (const [k, v] of this.seen) if (v.expires < now) this.seen.delete(k);
      if (this.seen.size >= MAX_SEEN) return false;
    } else if (this.seen.size % 1024 === 0) {
      for (const [k, v] of this.seen) if (v.expires < now) this.seen.delete(k);
    }
    this.seen.set(id, { expires: now + SEEN_KEEP_MS, answer: null });
    return true;
  }

  private trace(line: string): void {
    this.opts.trace?.(line);
  }
}

function seenKey(keyClass: number, keyId: number, messageId: bigint): string {
  return `${keyClass}:${keyId}:${messageId}`;
}
