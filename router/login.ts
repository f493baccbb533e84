// The router's side of Login (ARCHITECTURE §3): POST the account's credentials to the AS over
// TLS, trusting only the operator's CA, and check the answer field by field before anything uses
// it. The AS's clock comes back too (serverTime): a router without an RTC boots in 1970 and would
// otherwise think every key already expired.

import { readFileSync } from 'node:fs';
import { request } from 'node:https';

export interface LoginOptions {
  /** The AS, e.g. https://as.example.net:8443 (the request goes to /v1/login on it). */
  url: string;
  /** PEM file of the operator's CA that signed the AS's certificate. */
  caFile: string;
  email: string;
  password: string;
  /** Whole exchange: connect, TLS, request, key distribution at the AS, response. Default 30 s. */
  timeoutMs?: number;
}

export interface LoginResult {
  /** The node's own name; its domain's NS record names the node's DC. */
  fqdn: string;
  names: string[];
  keyId: number;
  /** Kntmdc, 32 bytes, shared with the DC. */
  key: Buffer;
  /** ms since the epoch, in the AS's clock: compare with Date.now() + clockOffsetMs. */
  expiresAt: number;
  /** serverTime − local time when the answer arrived. */
  clockOffsetMs: number;
}

export class LoginError extends Error {
  override name = 'LoginError';
  constructor(
    message: string,
    /** The HTTP status (401 bad credentials, 429 rate limited, 5xx AS or DC trouble), or null. */
    readonly status: number | null = null,
    /** From Retry-After on a 429. */
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
  }
}

export const DEFAULT_LOGIN_TIMEOUT_MS = 30_000;
export const KEY_BYTES = 32;
const MAX_RESPONSE_BYTES = 64 * 1024;
const DNS_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Checks every field of the AS's 200 answer; `where` prefixes the error. */
function parseResult(text: string, where: string, receivedAt: number): LoginResult {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new LoginError(`${where}: answer is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new LoginError(`${where}: answer: want a JSON object`);
  const d = doc as Record<string, unknown>;
  const bad = (field: string, want: string): LoginError =>
    new LoginError(`${where}: answer field ${field}: ${JSON.stringify(d[field]) ?? 'missing'}, want ${want}`);
  const isName = (v: unknown): v is string => typeof v === 'string' && DNS_NAME.test(v);
  const isTime = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

  if (!isName(d.fqdn)) throw bad('fqdn', 'a lower-case DNS name');
  if (!Array.isArray(d.names) || !d.names.every(isName)) throw bad('names', 'a list of lower-case DNS names');
  if (d.names[0] !== d.fqdn) throw bad('names', `a list starting with fqdn "${d.fqdn}"`);
  if (!Number.isInteger(d.keyId) || (d.keyId as number) < 1 || (d.keyId as number) > 0xffffffff) throw bad('keyId', 'an integer 1..4294967295');
  if (typeof d.key !== 'string' || !BASE64.test(d.key)) throw bad('key', 'base64');
  const key = Buffer.from(d.key, 'base64');
  if (key.length !== KEY_BYTES) throw new LoginError(`${where}: answer field key: ${key.length} bytes, want ${KEY_BYTES}`);
  if (!isTime(d.serverTime)) throw bad('serverTime', 'ms since the epoch');
  if (!isTime(d.expiresAt) || d.expiresAt <= d.serverTime) throw bad('expiresAt', `ms since the epoch after serverTime ${d.serverTime}`);
  return {
    fqdn: d.fqdn,
    names: d.names as string[],
    keyId: d.keyId as number,
    key,
    expiresAt: d.expiresAt,
    clockOffsetMs: d.serverTime - receivedAt,
  };
}

/** The error message of a non-200 answer: the AS's `{error}` if it sent one. */
function errorText(text: string): string {
  try {
    const d = JSON.parse(text) as { error?: unknown };
    if (typeof d.error === 'string') return d.error;
  } catch {
    // not JSON: a proxy's page, say; show its start
  }
  return text.slice(0, 200).trim() || '(empty answer)';
}

export function login(options: LoginOptions): Promise<LoginResult> {
  let endpoint: URL;
  try {
    endpoint = new URL('/v1/login', options.url);
  } catch {
    return Promise.reject(new LoginError(`AS url "${options.url}": not a URL`));
  }
  if (endpoint.protocol !== 'https:') return Promise.reject(new LoginError(`AS url "${options.url}": want https://`));
  let ca: Buffer;
  try {
    ca = readFileSync(options.caFile);
  } catch (err) {
    return Promise.reject(new LoginError(`CA file ${options.caFile}: ${(err as Error).message}`));
  }
  const where = `login at ${endpoint.href}`;
  const timeoutMs = options.timeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS;
  const body = JSON.stringify({ email: options.email, password: options.password });

  return new Promise((resolve, reject) => {
    const req = request(endpoint, {
      method: 'POST',
      ca,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), accept: 'application/json' },
    });
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err instanceof LoginError ? err : new LoginError(`${where}: ${err.message}`));
      req.destroy();
    };
    const timer = setTimeout(() => fail(new LoginError(`${where}: no answer in ${timeoutMs} ms`)), timeoutMs);
    req.on('error', fail);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) fail(new LoginError(`${where}: answer over ${MAX_RESPONSE_BYTES} bytes`));
        else chunks.push(chunk);
      });
      res.on('error', fail);
      res.on('end', () => {
        clearTimeout(timer);
        const receivedAt = Date.now();
        const text = Buffer.concat(chunks).toString('utf8');
        const status = res.statusCode ?? 0;
        if (status !== 200) {
          const retry = Number(res.headers['retry-after']);
          const retryAfter = status === 429 && Number.isFinite(retry) && retry >= 0 ? retry : null;
          reject(new LoginError(`${where}: ${status} ${errorText(text)}`, status, retryAfter));
          return;
        }
        try {
          resolve(parseResult(text, where, receivedAt));
        } catch (err) {
          reject(err);
        }
      });
    });
    req.end(body);
  });
}
