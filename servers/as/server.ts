// The Account Server's HTTPS front (ARCHITECTURE §3 "Login"): a node posts its credentials to
// /v1/login; the AS makes Kntmdc, has it delivered to the node's DC (Key Distribution, acked with
// an NTM ACK — `distributeKey`, injected), and only then answers the node with its FQDN and the key.
// Failed logins are rate limited per account and every request per source address, in tables of
// bounded size; every outcome is counted.

import { randomBytes, randomInt } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIPv4 } from 'node:net';
import { ipv6ToBytes } from '../../protocol/ip.js';
import { type AccountStore } from './store.js';

/** What the DC of the node must learn before the node gets its key. */
export interface KeyDistributionRecord {
  /** The account's first name: the node's FQDN, whose domain names its DC. */
  fqdn: string;
  names: string[];
  keyId: number;
  /** Kntmdc, 32 bytes. */
  key: Buffer;
  /** ms since the epoch */
  expiresAt: number;
  /** The node's static X25519 public key, 32 bytes, if registered. */
  publicKey: Buffer | null;
}

export type DistributeKey = (record: KeyDistributionRecord) => Promise<void>;

export interface LoginLimits {
  /** Failed logins per account within accountWindowSeconds before 429. */
  accountFailures: number;
  accountWindowSeconds: number;
  /** Login requests per source (IPv4 address or IPv6 /64) within sourceWindowSeconds before 429. */
  sourceRequests: number;
  sourceWindowSeconds: number;
  /** Entries per table; the least recently seen are dropped first. */
  maxTracked: number;
}

export const DEFAULT_LIMITS: LoginLimits = {
  accountFailures: 5,
  accountWindowSeconds: 15 * 60,
  sourceRequests: 20,
  sourceWindowSeconds: 60,
  maxTracked: 50_000,
};

export const DEFAULT_KEY_LIFETIME_SECONDS = 24 * 60 * 60;
export const KNTMDC_BYTES = 32;
export const MAX_BODY_BYTES = 4096;
/** A DC that never acks must not hold the node's request open for ever. */
export const DEFAULT_DISTRIBUTION_TIMEOUT_MS = 15_000;
/** Whole request (headers and body) from a client, against slow-loris connections. */
const REQUEST_TIMEOUT_MS = 10_000;

export interface AsServerOptions {
  /** Default '::' (all addresses, IPv4 and IPv6). */
  host?: string;
  /** 0 picks a free port. */
  port: number;
  /** PEM */
  cert: string | Buffer;
  key: string | Buffer;
  store: AccountStore;
  distributeKey: DistributeKey;
  limits?: Partial<LoginLimits>;
  keyLifetimeSeconds?: number;
  distributionTimeoutMs?: number;
  /** ms since the epoch; tests move time. */
  now?: () => number;
  /** Structured events (one object per login outcome); quiet if absent. */
  log?: (event: Record<string, unknown>) => void;
}

export class AsCounters {
  loginsOk = 0;
  badCredentials = 0;
  rateLimited = 0;
  badRequests = 0;
  /** Authenticated, but the account has no name bound, so there is no DC to give the key to. */
  noName = 0;
  distributionFailed = 0;
  internalErrors = 0;

  snapshot(): Record<string, number> {
    return Object.fromEntries(Object.entries(this)) as Record<string, number>;
  }
}

/**
 * Event times per key within a sliding window. Keys live in a Map in least-recently-touched order,
 * so expired keys collect at the front and are swept from there, and when the table is full the
 * front key is the one to drop.
 */
class SlidingWindow {
  private readonly events = new Map<string, number[]>();

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
    private readonly maxKeys: number,
  ) {}

  /** ms until `key` may act again, 0 if it is under the limit now. */
  retryAfterMs(key: string, now: number): number {
    const times = this.current(key, now);
    return times.length < this.limit ? 0 : times[times.length - this.limit]! + this.windowMs - now;
  }

  record(key: string, now: number): void {
    const times = this.current(key, now);
    times.push(now);
    if (times.length > this.limit) times.splice(0, times.length - this.limit);
    this.events.delete(key);
    this.events.set(key, times);
    while (this.events.size > this.maxKeys) this.events.delete(this.events.keys().next().value!);
  }

  clear(key: string): void {
    this.events.delete(key);
  }

  /** Forgets `key`'s events before `t`. */
  forgetBefore(key: string, t: number): void {
    const times = this.events.get(key);
    if (times === undefined) return;
    while (times.length > 0 && times[0]! < t) times.shift();
    if (times.length === 0) this.events.delete(key);
  }

  private current(key: string, now: number): number[] {
    for (const [k, t] of this.events) {
      if (t[t.length - 1]! + this.windowMs > now) break;
      this.events.delete(k);
    }
    const times = this.events.get(key) ?? [];
    while (times.length > 0 && times[0]! + this.windowMs <= now) times.shift();
    return times;
  }
}

/** Rate-limit key of a client: its IPv4 address, or its IPv6 /64 (one subscriber's prefix). */
function sourceKey(address: string | undefined): string {
  if (address === undefined) return '?';
  const mapped = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (isIPv4(mapped)) return mapped;
  try {
    return `${ipv6ToBytes(address).subarray(0, 8).toString('hex')}/64`;
  } catch {
    return address;
  }
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > MAX_BODY_BYTES) return Promise.reject(new HttpError(413, `body of ${length} bytes, at most ${MAX_BODY_BYTES}`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, `body over ${MAX_BODY_BYTES} bytes`));
        req.removeAllListeners('data');
        req.resume();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseLoginBody(body: Buffer): { email: string; password: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new HttpError(400, 'body: want a JSON object {"email", "password"}');
  const d = doc as Record<string, unknown>;
  const unknown = Object.keys(d).find((k) => k !== 'email' && k !== 'password');
  if (unknown !== undefined) throw new HttpError(400, `${unknown}: unknown field`);
  for (const f of ['email', 'password']) {
    if (d[f] === undefined) throw new HttpError(400, `${f}: missing`);
    if (typeof d[f] !== 'string' || d[f] === '') throw new HttpError(400, `${f}: want a non-empty string`);
  }
  return { email: d.email as string, password: d.password as string };
}

function send(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class AsServer {
  readonly counters = new AsCounters();
  private readonly server: Server;
  private readonly limits: LoginLimits;
  private readonly perAccount: SlidingWindow;
  private readonly perSource: SlidingWindow;
  private readonly keyLifetimeMs: number;
  private readonly distributionTimeoutMs: number;
  private readonly now: () => number;
  private readonly log: (event: Record<string, unknown>) => void;

  constructor(private readonly options: AsServerOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    for (const [k, v] of Object.entries(this.limits)) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`AS limits.${k}: ${v}, want a positive integer`);
    }
    const lifetime = options.keyLifetimeSeconds ?? DEFAULT_KEY_LIFETIME_SECONDS;
    if (!Number.isInteger(lifetime) || lifetime < 60) throw new RangeError(`AS keyLifetimeSeconds: ${lifetime}, want an integer of at least 60`);
    this.keyLifetimeMs = lifetime * 1000;
    this.distributionTimeoutMs = options.distributionTimeoutMs ?? DEFAULT_DISTRIBUTION_TIMEOUT_MS;
    this.now = options.now ?? Date.now;
    this.log = options.log ?? (() => {});
    const l = this.limits;
    this.perAccount = new SlidingWindow(l.accountFailures, l.accountWindowSeconds * 1000, l.maxTracked);
    this.perSource = new SlidingWindow(l.sourceRequests, l.sourceWindowSeconds * 1000, l.maxTracked);
    this.server = createServer({ cert: options.cert, key: options.key, minVersion: 'TLSv1.2' }, (req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.counters.internalErrors++;
        this.log({ event: 'internal-error', error: err.message });
        if (!res.headersSent) send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    });
    this.server.requestTimeout = REQUEST_TIMEOUT_MS;
    this.server.headersTimeout = REQUEST_TIMEOUT_MS;
  }

  start(): Promise<{ port: number }> {
    const host = this.options.host ?? '::';
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`AS: cannot listen on [${host}]:${this.options.port}: ${err.message}`));
      this.server.once('error', onError);
      this.server.listen(this.options.port, host, () => {
        this.server.off('error', onError);
        const address = this.server.address();
        resolve({ port: typeof address === 'object' && address !== null ? address.port : this.options.port });
      });
    });
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/v1/health') {
      if (req.method !== 'GET') return send(res, 405, { error: `${req.method} /v1/health: want GET` }, { allow: 'GET' });
      return send(res, 200, { status: 'ok' });
    }
    if (path !== '/v1/login') return send(res, 404, { error: `${path}: no such resource (POST /v1/login, GET /v1/health)` });
    if (req.method !== 'POST') return send(res, 405, { error: `${req.method} /v1/login: want POST` }, { allow: 'POST' });
    try {
      await this.login(req, res);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      if (err.status === 429) this.counters.rateLimited++;
      else if (err.status === 401) this.counters.badCredentials++;
      else this.counters.badRequests++;
      send(res, err.status, { error: err.message }, err.headers);
      // An oversized body is still arriving: close instead of draining it.
      if (err.status === 413) req.socket.end();
    }
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const source = sourceKey(req.socket.remoteAddress);
    const sourceWait = this.perSource.retryAfterMs(source, this.now());
    if (sourceWait > 0) {
      this.log({ event: 'login-rate-limited', source: req.socket.remoteAddress, by: 'source' });
      throw tooMany(sourceWait);
    }
    this.perSource.record(source, this.now());

    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') throw new HttpError(415, `content-type "${req.headers['content-type'] ?? ''}": want application/json`);
    const { email, password } = parseLoginBody(await readBody(req));
    const accountKey = email.trim().toLowerCase();

    // `account unlock` (the store is re-read when the file changed) lifts the lockout at once.
    const unlockedAt = this.options.store.get(accountKey)?.unlockedAt;
    if (unlockedAt !== undefined) this.perAccount.forgetBefore(accountKey, Date.parse(unlockedAt));
    const accountWait = this.perAccount.retryAfterMs(accountKey, this.now());
    if (accountWait > 0) {
      this.log({ event: 'login-rate-limited', email: accountKey, source: req.socket.remoteAddress, by: 'account' });
      throw tooMany(accountWait);
    }
    const account = await this.options.store.verify(email, password);
    if (!account) {
      this.perAccount.record(accountKey, this.now());
      this.log({ event: 'login-failed', email: accountKey, source: req.socket.remoteAddress });
      throw new HttpError(401, 'invalid credentials');
    }
    this.perAccount.clear(accountKey);
    if (account.names.length === 0) {
      this.counters.noName++;
      this.log({ event: 'login-no-name', email: account.email });
      return send(res, 403, { error: `account ${account.email} has no name bound; the operator binds one with \`account bind\`` });
    }

    const record: KeyDistributionRecord = {
      fqdn: account.names[0]!,
      names: account.names,
      keyId: randomInt(1, 2 ** 32),
      key: randomBytes(KNTMDC_BYTES),
      expiresAt: this.now() + this.keyLifetimeMs,
      publicKey: account.publicKey === null ? null : Buffer.from(account.publicKey, 'base64url'),
    };
    try {
      await withTimeout(this.options.distributeKey(record), this.distributionTimeoutMs, 'key distribution');
    } catch (err) {
      this.counters.distributionFailed++;
      this.log({ event: 'key-distribution-failed', fqdn: record.fqdn, keyId: record.keyId, error: (err as Error).message });
      return send(res, 502, { error: `key distribution to the DC of ${record.fqdn} failed; try again later` });
    }
    this.counters.loginsOk++;
    this.log({ event: 'login', email: account.email, fqdn: record.fqdn, keyId: record.keyId, expiresAt: record.expiresAt });
    send(res, 200, {
      fqdn: record.fqdn,
      names: record.names,
      keyId: record.keyId,
      key: record.key.toString('base64'),
      expiresAt: record.expiresAt,
      serverTime: this.now(),
    });
  }
}

function tooMany(waitMs: number): HttpError {
  const seconds = Math.max(1, Math.ceil(waitMs / 1000));
  return new HttpError(429, `too many login attempts; retry in ${seconds} s`, { 'retry-after': String(seconds) });
}
