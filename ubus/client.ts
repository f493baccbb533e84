// A ubus client in TypeScript: the protocol of libubus spoken directly over ubusd's unix socket
// (an 8-byte header — version, type, sequence, peer — followed by one blob container of
// UBUS_ATTR_* attributes). It looks objects up, invokes methods with a timeout, publishes
// objects (methods with their blobmsg policies) and answers the calls ubusd forwards to them,
// sends events and listens for them. When ubusd goes away it reconnects with backoff and
// publishes its objects and event registrations again. A frame that breaks the framing closes
// the connection (counted); a well-framed message that cannot be decoded is dropped (counted).

import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import {
  blobmsg,
  BlobWriter,
  decodeBlobmsgFields,
  fieldsToObject,
  readBlobAttrs,
  UbusDecodeError,
  writeBlobmsgTable,
  type BlobAttr,
  type BlobmsgEncodeOptions,
  type BlobmsgField,
  type BlobmsgTypeCode,
  type BlobmsgValue,
} from './blob.js';

/** Message types (ubusmsg.h enum ubus_msg_type). */
export const UbusMsg = {
  HELLO: 0,
  STATUS: 1,
  DATA: 2,
  PING: 3,
  LOOKUP: 4,
  INVOKE: 5,
  ADD_OBJECT: 6,
  REMOVE_OBJECT: 7,
  SUBSCRIBE: 8,
  UNSUBSCRIBE: 9,
  NOTIFY: 10,
  MONITOR: 11,
} as const;

/** Message attributes (ubusmsg.h enum ubus_msg_attr). */
export const UbusAttr = {
  STATUS: 1,
  OBJPATH: 2,
  OBJID: 3,
  METHOD: 4,
  OBJTYPE: 5,
  SIGNATURE: 6,
  DATA: 7,
  TARGET: 8,
  ACTIVE: 9,
  NO_REPLY: 10,
  SUBSCRIBERS: 11,
  USER: 12,
  GROUP: 13,
} as const;

/** Status codes (ubusmsg.h enum ubus_msg_status). */
export const UbusStatus = {
  OK: 0,
  INVALID_COMMAND: 1,
  INVALID_ARGUMENT: 2,
  METHOD_NOT_FOUND: 3,
  NOT_FOUND: 4,
  NO_DATA: 5,
  PERMISSION_DENIED: 6,
  TIMEOUT: 7,
  NOT_SUPPORTED: 8,
  UNKNOWN_ERROR: 9,
  CONNECTION_FAILED: 10,
  NO_MEMORY: 11,
  PARSE_ERROR: 12,
  SYSTEM_ERROR: 13,
} as const;
export type UbusStatusCode = (typeof UbusStatus)[keyof typeof UbusStatus];

/** The texts of libubus's ubus_strerror(), which the `ubus` CLI prints after "Command failed: ". */
const STATUS_TEXT = [
  'Success', 'Invalid command', 'Invalid argument', 'Method not found', 'Not found', 'No response',
  'Permission denied', 'Request timed out', 'Operation not supported', 'Unknown error',
  'Connection failed', 'Out of memory', 'Parsing message data failed', 'System error',
];
const STATUS_NAMES = Object.fromEntries(Object.entries(UbusStatus).map(([k, v]) => [v, `UBUS_STATUS_${k}`])) as Record<number, string>;

export function ubusStatusName(status: number): string {
  return STATUS_NAMES[status] ?? `UBUS_STATUS_${status}`;
}

/** A ubus operation ended with a status other than OK (from ubusd, the object, or locally: timeout, connection). */
export class UbusError extends Error {
  override name = 'UbusError';
  constructor(
    readonly status: number,
    context: string,
    options?: { cause?: unknown },
  ) {
    super(`${context}: ${ubusStatusName(status)} (${STATUS_TEXT[status] ?? 'unknown status'})`, options);
  }

  get statusName(): string {
    return ubusStatusName(this.status);
  }
}

/** ubusd's and libubus's limit on a message (UBUS_MAX_MSGLEN of the ubus build). */
export const UBUS_MAX_MSGLEN = 1048576;
const MSG_HEADER = 8;
const FRAME_MIN = MSG_HEADER + 4;
const UBUS_SYSTEM_OBJECT_EVENT = 1;

// ---------------------------------------------------------------------------------------------
// Framing

/**
 * Cuts the byte stream from ubusd into whole messages, whatever the reads look like (a message
 * split over several reads, several messages in one). Throws UbusDecodeError on a header that
 * breaks the framing (version other than 0, length below the blob header or above the limit):
 * the stream cannot be resynchronised after that.
 */
export class UbusFrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private frameLen: number | null = null;
  private streamOffset = 0;

  constructor(private readonly maxMessageBytes = UBUS_MAX_MSGLEN) {}

  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      const want = this.frameLen ?? FRAME_MIN;
      if (this.buffered < want) break;
      // merged only once enough has arrived, so a large message costs one copy, not one per read
      const buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      this.chunks = [buf];
      if (this.frameLen === null) {
        if (buf[0] !== 0) throw new UbusDecodeError(`ubus: message version ${buf[0]}, want 0, at stream offset ${this.streamOffset}`);
        const rawLen = buf.readUInt32BE(MSG_HEADER) & 0x00ffffff;
        if (rawLen < 4) throw new UbusDecodeError(`ubus: message length ${rawLen} is shorter than its blob header at stream offset ${this.streamOffset}`);
        if (((rawLen + 3) & ~3) > this.maxMessageBytes) {
          throw new UbusDecodeError(`ubus: message of ${rawLen} bytes exceeds the limit of ${this.maxMessageBytes} at stream offset ${this.streamOffset}`);
        }
        this.frameLen = MSG_HEADER + rawLen;
        continue;
      }
      frames.push(buf.subarray(0, this.frameLen));
      const rest = buf.subarray(this.frameLen);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      this.streamOffset += this.frameLen;
      this.frameLen = null;
    }
    return frames;
  }
}

/** A decoded message: header fields and its attributes by id (validated for their types). */
export interface UbusMessage {
  type: number;
  seq: number;
  peer: number;
  attrs: Map<number, BlobAttr>;
}

const ATTR_KIND: Partial<Record<number, 'u32' | 'u8' | 'string'>> = {
  [UbusAttr.STATUS]: 'u32',
  [UbusAttr.OBJID]: 'u32',
  [UbusAttr.OBJTYPE]: 'u32',
  [UbusAttr.TARGET]: 'u32',
  [UbusAttr.OBJPATH]: 'string',
  [UbusAttr.METHOD]: 'string',
  [UbusAttr.USER]: 'string',
  [UbusAttr.GROUP]: 'string',
  [UbusAttr.ACTIVE]: 'u8',
  [UbusAttr.NO_REPLY]: 'u8',
};

/** Decodes one whole frame (as cut by UbusFrameReader). */
export function decodeUbusMessage(frame: Buffer): UbusMessage {
  const rawLen = frame.readUInt32BE(MSG_HEADER) & 0x00ffffff;
  const attrs = new Map<number, BlobAttr>();
  for (const a of readBlobAttrs(frame.subarray(FRAME_MIN, MSG_HEADER + rawLen), FRAME_MIN, 'ubus')) {
    const kind = ATTR_KIND[a.id];
    if (kind === 'u32' && a.payload.length !== 4) throw new UbusDecodeError(`ubus: attribute ${a.id} has ${a.payload.length} bytes, want 4 at offset ${a.offset}`);
    if (kind === 'u8' && a.payload.length !== 1) throw new UbusDecodeError(`ubus: attribute ${a.id} has ${a.payload.length} bytes, want 1 at offset ${a.offset}`);
    if (kind === 'string' && (a.payload.length === 0 || a.payload[a.payload.length - 1] !== 0)) {
      throw new UbusDecodeError(`ubus: string attribute ${a.id} is not NUL-terminated at offset ${a.offset}`);
    }
    if (!attrs.has(a.id)) attrs.set(a.id, a);
  }
  return { type: frame[1], seq: frame.readUInt16BE(2), peer: frame.readUInt32BE(4), attrs };
}

/** Encodes one message: header, then the attributes fill() writes into the top container. */
export function encodeUbusMessage(type: number, seq: number, peer: number, fill: (w: BlobWriter) => void): Buffer {
  const w = new BlobWriter();
  const top = w.open(0);
  fill(w);
  w.close(top);
  const body = w.finish();
  if (((body.length + 3) & ~3) > UBUS_MAX_MSGLEN) throw new UbusError(UbusStatus.INVALID_ARGUMENT, `ubus: message of ${body.length} bytes exceeds the limit of ${UBUS_MAX_MSGLEN}`);
  const hdr = Buffer.alloc(MSG_HEADER);
  hdr.writeUInt8(0, 0);
  hdr.writeUInt8(type, 1);
  hdr.writeUInt16BE(seq & 0xffff, 2);
  hdr.writeUInt32BE(peer >>> 0, 4);
  return Buffer.concat([hdr, body]);
}

function u32(m: UbusMessage, id: number): number | undefined {
  return m.attrs.get(id)?.payload.readUInt32BE(0);
}

function str(m: UbusMessage, id: number): string | undefined {
  const a = m.attrs.get(id);
  return a === undefined ? undefined : a.payload.toString('utf8', 0, a.payload.indexOf(0));
}

// ---------------------------------------------------------------------------------------------
// The client

/** An incoming call of a method of an object this client published. */
export interface UbusRequest {
  object: string;
  method: string;
  /** The arguments as sent, with their wire types (for policy checks). */
  fields: BlobmsgField[];
  /** The same as an object (a repeated name keeps its first value). */
  args: { [key: string]: BlobmsgValue };
  /** ubusd's id of the calling client. */
  peer: number;
}

/** What a method answers: a status (default OK) and optionally a table of data. */
export interface UbusReply {
  status?: number;
  data?: Record<string, unknown>;
  /** How null members of data are encoded (default: unspec, printed as null). */
  nulls?: BlobmsgEncodeOptions['nulls'];
}

export type UbusMethodHandler = (request: UbusRequest) => Promise<UbusReply | void> | UbusReply | void;

export interface UbusMethod {
  /** Argument name → blobmsg type, published in the object's signature (`ubus -v list`). */
  policy?: Record<string, BlobmsgTypeCode>;
  handler: UbusMethodHandler;
}

export interface UbusObjectInfo {
  path: string;
  id: number;
  typeId: number;
  /** Method → argument → blobmsg type code. */
  signature: Record<string, Record<string, number>>;
}

export interface UbusInvokeResult {
  status: number;
  /** The first data reply (most methods send one). */
  data?: { [key: string]: BlobmsgValue };
  /** All data replies, in order. */
  replies: { [key: string]: BlobmsgValue }[];
}

export type UbusEventHandler = (type: string, data: { [key: string]: BlobmsgValue }) => unknown;

export interface UbusClientOptions {
  /** Default timeout of a request, ms (30 s, as the `ubus` CLI). */
  timeoutMs?: number;
  /** Reconnect after a lost connection (default true). start() always keeps trying. */
  reconnect?: boolean;
  /** Reconnection backoff: first wait, doubled per failed attempt up to the maximum (ms). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  maxMessageBytes?: number;
  log?: (line: string) => void;
}

export interface UbusClientStats {
  connects: number;
  /** Connection attempts that failed (ubusd absent, no HELLO ...). */
  failedConnects: number;
  disconnects: number;
  /** Frames that broke the framing: the connection was closed. */
  malformedFrames: number;
  /** Well-framed messages that could not be decoded or matched nothing. */
  droppedMessages: number;
}

interface Pending {
  resolve: (r: { status: number; data: UbusMessage[] }) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  data: UbusMessage[];
}

interface PublishedObject {
  path: string;
  methods: Record<string, UbusMethod>;
}

interface Subscription {
  pattern: string;
  handler: UbusEventHandler;
}

type IdOwner = { kind: 'object'; obj: PublishedObject } | { kind: 'events'; sub: Subscription };

/**
 * Events: 'ready' (connected, objects and event registrations published), 'disconnected'
 * (Error: why).
 */
export class UbusClient extends EventEmitter {
  readonly stats: UbusClientStats = { connects: 0, failedConnects: 0, disconnects: 0, malformedFrames: 0, droppedMessages: 0 };
  /** ubusd's id of this client in the current connection. */
  localId: number | null = null;

  private readonly timeoutMs: number;
  private readonly reconnect: boolean;
  private readonly backoffMinMs: number;
  private readonly backoffMaxMs: number;
  private readonly maxMessageBytes: number;
  private readonly log: (line: string) => void;

  private socket: Socket | null = null;
  /** The socket of a connection attempt still waiting for HELLO (close() ends it too). */
  private opening: Socket | null = null;
  private isReady = false;
  private connecting: Promise<void> | null = null;
  private keepTrying = false;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private failedAttempts = 0;
  private seq = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly objects = new Map<string, PublishedObject>();
  private readonly subscriptions: Subscription[] = [];
  private byId = new Map<number, IdOwner>();

  constructor(
    readonly socketPath: string,
    options: UbusClientOptions = {},
  ) {
    super();
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.reconnect = options.reconnect ?? true;
    this.backoffMinMs = options.backoffMinMs ?? 200;
    this.backoffMaxMs = options.backoffMaxMs ?? 5_000;
    this.maxMessageBytes = options.maxMessageBytes ?? UBUS_MAX_MSGLEN;
    this.log = options.log ?? (() => undefined);
  }

  /** Connected, and the registered objects and event registrations published (a refusal is logged). */
  get ready(): boolean {
    return this.isReady;
  }

  /**
   * Connects once: resolves when ubusd has said hello and the registered objects are published;
   * rejects with a UbusError (UBUS_STATUS_CONNECTION_FAILED) if ubusd cannot be reached.
   */
  async connect(): Promise<void> {
    if (this.closed) throw new UbusError(UbusStatus.CONNECTION_FAILED, 'ubus: client closed');
    if (this.isReady) return;
    await (this.connecting ?? this.attempt());
    if (this.reconnect) this.keepTrying = true;
  }

  /**
   * Connects in the background and keeps trying with backoff until close(): never throws.
   * The first failure of an outage is logged, the following ones are not.
   */
  start(): void {
    if (this.closed) return;
    this.keepTrying = true;
    if (this.socket === null && this.connecting === null && this.retryTimer === null) void this.attempt().catch(() => undefined);
  }

  /** Disconnects for good: pending requests fail, no reconnection. */
  async close(): Promise<void> {
    this.closed = true;
    this.keepTrying = false;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.opening?.destroy();
    const s = this.socket;
    if (s !== null) {
      await new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.destroy();
      });
    }
    this.failPending(new UbusError(UbusStatus.CONNECTION_FAILED, 'ubus: client closed'));
  }

  private attempt(): Promise<void> {
    const p = this.establish().then(
      () => {
        if (this.failedAttempts > 0) this.log(`ubus: connected to ${this.socketPath} after ${this.failedAttempts} failed attempt(s)`);
        this.failedAttempts = 0;
      },
      (e: Error) => {
        if (this.closed) throw new UbusError(UbusStatus.CONNECTION_FAILED, 'ubus: client closed', { cause: e });
        this.stats.failedConnects++;
        if (this.failedAttempts++ === 0) this.log(`ubus: cannot connect to ${this.socketPath} (${e.message})${this.keepTrying ? ': retrying in the background' : ''}`);
        if (this.keepTrying) this.scheduleRetry();
        throw new UbusError(UbusStatus.CONNECTION_FAILED, `ubus: connect ${this.socketPath}`, { cause: e });
      },
    );
    this.connecting = p.finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer !== null) return;
    const wait = Math.min(this.backoffMaxMs, this.backoffMinMs * 2 ** Math.min(this.failedAttempts, 16));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.closed && this.socket === null && this.connecting === null) void this.attempt().catch(() => undefined);
    }, wait);
    this.retryTimer.unref();
  }

  /** Opens the socket, waits for HELLO, publishes what is registered. */
  private async establish(): Promise<void> {
    const sock = createConnection(this.socketPath);
    this.opening = sock;
    const reader = new UbusFrameReader(this.maxMessageBytes);
    let greeted = false;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error('no HELLO from ubusd within 5 s'));
        sock.destroy();
      }, 5_000);
      sock.on('error', (e: Error) => {
        if (!greeted) reject(e);
        else this.log(`ubus: socket: ${e.message}`);
      });
      sock.on('close', () => {
        clearTimeout(timer);
        if (greeted) this.onClose(sock);
        else reject(new Error('connection closed before HELLO'));
      });
      sock.on('data', (chunk: Buffer) => {
        let frames: Buffer[];
        try {
          frames = reader.push(chunk);
        } catch (e) {
          this.stats.malformedFrames++;
          this.log(`ubus: ${(e as Error).message}: closing the connection`);
          sock.destroy();
          return;
        }
        for (const f of frames) {
          if (greeted) {
            this.onFrame(sock, f);
            continue;
          }
          // the first message of a connection must be ubusd's HELLO, which carries our id
          if (f[1] !== UbusMsg.HELLO) {
            this.stats.malformedFrames++;
            reject(new Error(`first message has type ${f[1]}, want HELLO`));
            sock.destroy();
            return;
          }
          if (this.closed) {
            reject(new Error('client closed'));
            sock.destroy();
            return;
          }
          greeted = true;
          clearTimeout(timer);
          this.localId = f.readUInt32BE(4);
          this.socket = sock;
          this.byId = new Map();
          this.stats.connects++;
          resolve();
        }
      });
    }).finally(() => {
      this.opening = null;
    });
    for (const obj of this.objects.values()) {
      await this.publishObject(obj).catch((e: Error) => this.log(`ubus: publishing ${obj.path}: ${e.message}`));
    }
    for (const sub of this.subscriptions) {
      await this.publishSubscription(sub).catch((e: Error) => this.log(`ubus: listening for ${sub.pattern}: ${e.message}`));
    }
    if (this.socket !== sock) throw new Error('connection lost while publishing');
    this.isReady = true;
    this.emit('ready');
  }

  private onClose(sock: Socket): void {
    if (this.socket !== sock) return;
    this.socket = null;
    this.localId = null;
    this.isReady = false;
    this.byId = new Map();
    this.stats.disconnects++;
    const why = new UbusError(UbusStatus.CONNECTION_FAILED, `ubus: connection to ${this.socketPath} lost`);
    this.failPending(why);
    this.emit('disconnected', why);
    if (this.keepTrying && !this.closed) {
      this.log(`ubus: connection to ${this.socketPath} lost: reconnecting`);
      this.scheduleRetry();
    }
  }

  private failPending(e: Error): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.pending.clear();
  }

  // ---- requests

  private send(sock: Socket, frame: Buffer): void {
    if (!sock.destroyed) sock.write(frame);
  }

  /** Sends a request and collects the DATA messages until its STATUS. */
  private request(type: number, peer: number, fill: (w: BlobWriter) => void, what: string, timeoutMs = this.timeoutMs): Promise<{ status: number; data: UbusMessage[] }> {
    const sock = this.socket;
    if (sock === null) return Promise.reject(new UbusError(UbusStatus.CONNECTION_FAILED, `${what}: not connected to ubusd`));
    let seq: number;
    do {
      this.seq = (this.seq + 1) & 0xffff;
      seq = this.seq;
    } while (this.pending.has(`${seq}:${peer >>> 0}`));
    const frame = encodeUbusMessage(type, seq, peer, fill);
    return new Promise((resolve, reject) => {
      const key = `${seq}:${peer >>> 0}`;
      const timer = setTimeout(() => {
        this.pending.delete(key);
        reject(new UbusError(UbusStatus.TIMEOUT, `${what}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(key, { resolve, reject, timer, data: [] });
      this.send(sock, frame);
    });
  }

  /** Objects whose path is `path` (a trailing * matches a prefix; no path: all objects). */
  async lookup(path?: string): Promise<UbusObjectInfo[]> {
    const what = `ubus lookup ${path ?? '*'}`;
    const r = await this.request(UbusMsg.LOOKUP, 0, (w) => path !== undefined && w.putString(UbusAttr.OBJPATH, path), what);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, what);
    return r.data.map((m) => {
      const signature: Record<string, Record<string, number>> = {};
      const sig = m.attrs.get(UbusAttr.SIGNATURE);
      if (sig !== undefined) {
        for (const f of decodeBlobmsgFields(sig.payload, 'table', sig.offset + 4)) {
          signature[f.name] = f.value as Record<string, number>;
        }
      }
      return { path: str(m, UbusAttr.OBJPATH) ?? '', id: u32(m, UbusAttr.OBJID) ?? 0, typeId: u32(m, UbusAttr.OBJTYPE) ?? 0, signature };
    });
  }

  /** The id of the object at `path` (UbusError UBUS_STATUS_NOT_FOUND if there is none). */
  async lookupId(path: string): Promise<number> {
    const found = (await this.lookup(path)).find((o) => o.path === path);
    if (found === undefined) throw new UbusError(UbusStatus.NOT_FOUND, `ubus lookup ${path}`);
    return found.id;
  }

  /**
   * Calls a method. Resolves with whatever status the object (or ubusd) answered; rejects with a
   * UbusError only for what happens here: timeout, lost connection, object not found by path.
   */
  async invoke(target: string | number, method: string, args: Record<string, unknown> = {}, options: { timeoutMs?: number } = {}): Promise<UbusInvokeResult> {
    const id = typeof target === 'number' ? target : await this.lookupId(target);
    const what = `ubus call ${typeof target === 'number' ? `#${target.toString(16)}` : target} ${method}`;
    const r = await this.request(UbusMsg.INVOKE, id, (w) => {
      w.putU32(UbusAttr.OBJID, id);
      w.putString(UbusAttr.METHOD, method);
      const d = w.open(UbusAttr.DATA);
      writeBlobmsgTable(w, args);
      w.close(d);
    }, what, options.timeoutMs);
    const replies = r.data.flatMap((m) => {
      const d = m.attrs.get(UbusAttr.DATA);
      return d === undefined ? [] : [fieldsToObject(decodeBlobmsgFields(d.payload, 'table', d.offset + 4))];
    });
    return { status: r.status, data: replies[0], replies };
  }

  /** invoke() by path that throws a UbusError for any status but OK, and returns the data. */
  async call(path: string, method: string, args: Record<string, unknown> = {}, options: { timeoutMs?: number } = {}): Promise<{ [key: string]: BlobmsgValue } | undefined> {
    const r = await this.invoke(path, method, args, options);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, `ubus call ${path} ${method}`);
    return r.data;
  }

  /** Sends an event, as `ubus send TYPE DATA` does (method "send" of ubusd's event object). */
  async sendEvent(type: string, data: Record<string, unknown> = {}, options: BlobmsgEncodeOptions = {}): Promise<void> {
    const what = `ubus send ${type}`;
    const r = await this.request(UbusMsg.INVOKE, UBUS_SYSTEM_OBJECT_EVENT, (w) => {
      w.putU32(UbusAttr.OBJID, UBUS_SYSTEM_OBJECT_EVENT);
      w.putString(UbusAttr.METHOD, 'send');
      const d = w.open(UbusAttr.DATA);
      writeBlobmsgTable(w, { id: type, data: blobmsg.table(data) }, options);
      w.close(d);
    }, what);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, what);
  }

  // ---- published objects and event handlers

  /**
   * Publishes an object (now if connected, and again after every reconnection). Rejects with
   * ubusd's status if it refuses (e.g. UBUS_STATUS_INVALID_ARGUMENT: the path is taken); the
   * object is then forgotten.
   */
  async addObject(path: string, methods: Record<string, UbusMethod>): Promise<void> {
    if (this.objects.has(path)) throw new UbusError(UbusStatus.INVALID_ARGUMENT, `ubus add ${path}: already published by this client`);
    const obj: PublishedObject = { path, methods };
    this.objects.set(path, obj);
    if (this.socket === null) return;
    try {
      await this.publishObject(obj);
    } catch (e) {
      this.objects.delete(path);
      throw e;
    }
  }

  /** Withdraws an object published by addObject(). */
  async removeObject(path: string): Promise<void> {
    const obj = this.objects.get(path);
    if (obj === undefined) return;
    this.objects.delete(path);
    const id = this.idOf(obj);
    if (id === undefined || this.socket === null) return;
    const what = `ubus remove ${path}`;
    const r = await this.request(UbusMsg.REMOVE_OBJECT, 0, (w) => w.putU32(UbusAttr.OBJID, id), what);
    this.byId.delete(id);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, what);
  }

  /**
   * Calls handler for every event whose type matches pattern (a trailing * matches a prefix),
   * as `ubus listen` does. ubusd does not deliver a client's own events back to it.
   */
  async listen(pattern: string, handler: UbusEventHandler): Promise<void> {
    const sub: Subscription = { pattern, handler };
    this.subscriptions.push(sub);
    if (this.socket === null) return;
    try {
      await this.publishSubscription(sub);
    } catch (e) {
      this.subscriptions.splice(this.subscriptions.indexOf(sub), 1);
      throw e;
    }
  }

  private idOf(obj: PublishedObject): number | undefined {
    for (const [id, owner] of this.byId) if (owner.kind === 'object' && owner.obj === obj) return id;
    return undefined;
  }

  /** ADD_OBJECT with the signature (method → argument → type), as ubus_add_object() sends it. */
  private async publishObject(obj: PublishedObject): Promise<void> {
    const what = `ubus add ${obj.path}`;
    const r = await this.request(UbusMsg.ADD_OBJECT, 0, (w) => {
      w.putString(UbusAttr.OBJPATH, obj.path);
      const sig = w.open(UbusAttr.SIGNATURE);
      for (const [name, m] of Object.entries(obj.methods)) {
        writeBlobmsgTable(w, { [name]: blobmsg.table(Object.fromEntries(Object.entries(m.policy ?? {}).map(([arg, type]) => [arg, blobmsg.int32(type)]))) });
      }
      w.close(sig);
    }, what);
    const id = r.data.map((m) => u32(m, UbusAttr.OBJID)).find((v) => v !== undefined);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, what);
    if (id === undefined) throw new UbusError(UbusStatus.NO_DATA, what);
    this.byId.set(id, { kind: 'object', obj });
  }

  /** An object without a name or type that receives the events, then "register" on the event object. */
  private async publishSubscription(sub: Subscription): Promise<void> {
    const what = `ubus listen ${sub.pattern}`;
    const r = await this.request(UbusMsg.ADD_OBJECT, 0, () => undefined, what);
    const id = r.data.map((m) => u32(m, UbusAttr.OBJID)).find((v) => v !== undefined);
    if (r.status !== UbusStatus.OK) throw new UbusError(r.status, what);
    if (id === undefined) throw new UbusError(UbusStatus.NO_DATA, what);
    this.byId.set(id, { kind: 'events', sub });
    const reg = await this.invoke(UBUS_SYSTEM_OBJECT_EVENT, 'register', { object: blobmsg.int32(id), pattern: sub.pattern });
    if (reg.status !== UbusStatus.OK) throw new UbusError(reg.status, what);
  }

  // ---- incoming messages

  private onFrame(sock: Socket, frame: Buffer): void {
    let m: UbusMessage;
    try {
      m = decodeUbusMessage(frame);
    } catch (e) {
      this.drop((e as Error).message);
      // a reply we cannot read still ends its request, now rather than at its timeout
      const key = `${frame.readUInt16BE(2)}:${frame.readUInt32BE(4)}`;
      const p = this.pending.get(key);
      if (p !== undefined && (frame[1] === UbusMsg.STATUS || frame[1] === UbusMsg.DATA)) this.settle(key, p, e as Error);
      return;
    }
    switch (m.type) {
      case UbusMsg.STATUS:
      case UbusMsg.DATA: {
        const key = `${m.seq}:${m.peer}`;
        const p = this.pending.get(key);
        if (p === undefined) return this.drop(`reply to no pending request (seq ${m.seq}, peer ${m.peer})`);
        if (m.type === UbusMsg.DATA) {
          p.data.push(m);
          return;
        }
        const status = u32(m, UbusAttr.STATUS);
        if (status === undefined) return this.settle(key, p, new UbusDecodeError('ubus: STATUS message without a status'));
        return this.settle(key, p, null, status);
      }
      case UbusMsg.INVOKE:
        this.onInvoke(sock, m).catch((e: Error) => this.log(`ubus: answering a call: ${e.message}`));
        return;
      case UbusMsg.NOTIFY:
      case UbusMsg.UNSUBSCRIBE:
        // subscriber bookkeeping of objects: nothing of it is used here
        return;
      default:
        return this.drop(`unexpected message type ${m.type}`);
    }
  }

  private settle(key: string, p: Pending, error: Error | null, status = 0): void {
    clearTimeout(p.timer);
    this.pending.delete(key);
    if (error !== null) p.reject(error);
    else p.resolve({ status, data: p.data });
  }

  private drop(why: string): void {
    this.stats.droppedMessages++;
    this.log(`ubus: dropped a message: ${why}`);
  }

  private async onInvoke(sock: Socket, m: UbusMessage): Promise<void> {
    const objId = u32(m, UbusAttr.OBJID) ?? 0;
    const noReply = m.attrs.get(UbusAttr.NO_REPLY)?.payload[0] === 1;
    const method = str(m, UbusAttr.METHOD);
    const reply = (status: number, data?: Buffer): void => {
      if (noReply || this.socket !== sock) return;
      if (data !== undefined) {
        let frame: Buffer;
        try {
          frame = encodeUbusMessage(UbusMsg.DATA, m.seq, m.peer, (w) => {
            w.putU32(UbusAttr.OBJID, objId);
            w.put(UbusAttr.DATA, data);
          });
        } catch (e) {
          // e.g. a reply beyond UBUS_MAX_MSGLEN: the caller gets an error status instead
          this.log(`ubus: ${method ?? '?'}: reply: ${(e as Error).message}`);
          status = UbusStatus.UNKNOWN_ERROR;
          frame = Buffer.alloc(0);
        }
        if (frame.length > 0) this.send(sock, frame);
      }
      this.send(sock, encodeUbusMessage(UbusMsg.STATUS, m.seq, m.peer, (w) => {
        w.putU32(UbusAttr.STATUS, status);
        w.putU32(UbusAttr.OBJID, objId);
      }));
    };
    const owner = this.byId.get(objId);
    const data = m.attrs.get(UbusAttr.DATA);
    if (owner === undefined) return reply(UbusStatus.NOT_FOUND);
    if (method === undefined || data === undefined) return reply(UbusStatus.INVALID_ARGUMENT);
    let fields: BlobmsgField[];
    try {
      fields = decodeBlobmsgFields(data.payload, 'table', data.offset + 4);
    } catch (e) {
      this.log(`ubus: ${method}: arguments: ${(e as Error).message}`);
      return reply(UbusStatus.INVALID_ARGUMENT);
    }
    if (owner.kind === 'events') {
      const failed = (e: unknown): void => this.log(`ubus: event ${method}: handler failed: ${(e as Error)?.message ?? String(e)}`);
      try {
        // a handler may be async: its rejection is logged like a throw
        void Promise.resolve(owner.sub.handler(method, fieldsToObject(fields))).catch(failed);
      } catch (e) {
        failed(e);
      }
      return reply(UbusStatus.OK);
    }
    const def = Object.hasOwn(owner.obj.methods, method) ? owner.obj.methods[method] : undefined;
    if (def === undefined) return reply(UbusStatus.METHOD_NOT_FOUND);
    let out: UbusReply | void;
    try {
      out = await def.handler({ object: owner.obj.path, method, fields, args: fieldsToObject(fields), peer: m.peer });
    } catch (e) {
      this.log(`ubus: ${owner.obj.path}.${method}: ${(e as Error).message ?? String(e)}`);
      return reply(UbusStatus.UNKNOWN_ERROR);
    }
    let body: Buffer | undefined;
    if (out?.data !== undefined) {
      try {
        const w = new BlobWriter();
        writeBlobmsgTable(w, out.data, { nulls: out.nulls });
        body = w.finish();
      } catch (e) {
        this.log(`ubus: ${owner.obj.path}.${method}: reply: ${(e as Error).message}`);
        return reply(UbusStatus.UNKNOWN_ERROR);
      }
    }
    reply(out?.status ?? UbusStatus.OK, body);
  }
}
