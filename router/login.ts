// The router's side of Login (ARCHITECTURE §3): POST the account's credentials to the AS over
// TLS, trusting only the operator's CA, and check the answer field by field before anything uses
// it. The AS's clock comes back too (serverTime): a router without an RTC boots in 1970 and would
// otherwise think every key already expired.
//
// One request a day needs no HTTP client: the request is written and the answer read over
// node:tls directly (HTTP/1.1, `connection: close`); node:https would load node's HTTP client and
// parser for it (docs/benchmarks.md, "Memory on a router"). The certificate is checked as https
// checks it: against the CA file only, for the URL's host.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';

// Through require: an import of node:tls builds its module namespace, whose rootCertificates
// getter parses node's bundled root certificates (0.8 MB of RSS), which the login never trusts.
const { connect } = createRequire(import.meta.url)('node:tls') as typeof import('node:tls');

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
    const host = endpoint.hostname.replace(/^\[(.*)\]$/, '$1');
    const socket = connect({
      host,
      port: Number(endpoint.port || 443),
      // SNI and the identity check name the URL's host; an address gets no SNI, as with https
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ca,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    });
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(err instanceof LoginError ? err : new LoginError(`${where}: ${err.message}`));
      socket.destroy();
    };
    const timer = setTimeout(() => fail(new LoginError(`${where}: no answer in ${timeoutMs} ms`)), timeoutMs);
    const chunks: Buffer[] = [];
    let size = 0;
    const answered = (answer: HttpAnswer) => {
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const receivedAt = Date.now();
      const text = answer.body.toString('utf8');
      if (answer.status !== 200) {
        const retry = Number(answer.headers.get('retry-after'));
        const retryAfter = answer.status === 429 && Number.isFinite(retry) && retry >= 0 ? retry : null;
        reject(new LoginError(`${where}: ${answer.status} ${errorText(text)}`, answer.status, retryAfter));
        return;
      }
      try {
        resolve(parseResult(text, where, receivedAt));
      } catch (err) {
        reject(err);
      }
    };
    const read = (ended: boolean) => {
      try {
        const answer = parseAnswer(Buffer.concat(chunks), ended);
        if (answer !== null) answered(answer);
        else if (ended) fail(new LoginError(`${where}: the AS closed the connection before its answer was complete`));
      } catch (err) {
        fail(new LoginError(`${where}: ${(err as Error).message}`));
      }
    };
    socket.on('error', fail);
    socket.on('data', (chunk: Buffer) => {
      if (settled) return;
      size += chunk.length;
      if (size > MAX_RESPONSE_BYTES) return fail(new LoginError(`${where}: answer over ${MAX_RESPONSE_BYTES} bytes`));
      chunks.push(chunk);
      read(false);
    });
    socket.on('end', () => settled || read(true));
    socket.on('close', () => fail(new LoginError(`${where}: connection closed without an answer`)));
    socket.write(
      `POST ${endpoint.pathname} HTTP/1.1\r\nhost: ${endpoint.host}\r\ncontent-type: application/json\r\n`
      + `content-length: ${Buffer.byteLength(body)}\r\naccept: application/json\r\nconnection: close\r\n\r\n${body}`,
    );
  });
}

interface HttpAnswer {
  status: number;
  /** lower-case names */
  headers: Map<string, string>;
  body: Buffer;
}

/**
 * An HTTP/1.1 answer from what has arrived: null while it is incomplete. The body ends by its
 * content-length, its last chunk (chunked transfer coding) or, with neither, the end of the
 * connection (`ended`). A malformed answer throws.
 */
export function parseAnswer(raw: Buffer, ended: boolean): HttpAnswer | null {
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd < 0) return null;
  const [statusLine, ...lines] = raw.subarray(0, headEnd).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(statusLine!);
  if (status === null) throw new Error(`not an HTTP/1.1 answer: ${JSON.stringify(statusLine!.slice(0, 40))}`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`malformed header line ${JSON.stringify(line.slice(0, 40))}`);
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  const rest = raw.subarray(headEnd + 4);
  const answer = (body: Buffer): HttpAnswer => ({ status: Number(status[1]), headers, body });
  if (/(^|,)\s*chunked\s*$/i.test(headers.get('transfer-encoding') ?? '')) {
    const parts: Buffer[] = [];
    for (let at = 0; ; ) {
      const lineEnd = rest.indexOf('\r\n', at);
      if (lineEnd < 0) return null;
      const size = Number.parseInt(rest.subarray(at, lineEnd).toString('latin1'), 16);
      if (!Number.isInteger(size) || size < 0) throw new Error('malformed chunked body');
      if (size === 0) return answer(Buffer.concat(parts));
      if (rest.length < lineEnd + 2 + size + 2) return null;
      parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
  }
  const lengthHeader = headers.get('content-length');
  if (lengthHeader !== undefined) {
    const length = /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : NaN;
    if (!Number.isSafeInteger(length)) throw new Error(`malformed content-length ${JSON.stringify(lengthHeader)}`);
    return rest.length >= length ? answer(rest.subarray(0, length)) : null;
  }
  return ended ? answer(rest) : null;
}
