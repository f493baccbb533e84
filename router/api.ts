// The daemon's local control API: a unix socket (mode 0600, root only) speaking one JSON object
// per line each way: {"cmd":"status"} → {"ok":true,"result":{...}} or {"ok":false,"error":"..."}.
// `ntmobile status|peers|ping` are its clients; LuCI/ubus can be another. Requests are bounded
// in size and count; a malformed request gets an error line, never a crash.

import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';

const MAX_LINE = 4096;
const MAX_CLIENTS = 16;

export type ApiHandler = (args: Record<string, unknown>) => Promise<unknown>;

export class ApiServer {
  private server: Server | null = null;
  private clients = 0;

  constructor(
    private readonly path: string,
    private readonly handlers: Record<string, ApiHandler>,
  ) {}

  async start(): Promise<void> {
    if (existsSync(this.path)) {
      // A socket left by a daemon that died: only remove it if nobody answers on it.
      if (await answers(this.path)) throw new Error(`${this.path}: another daemon is running`);
      unlinkSync(this.path);
    }
    this.server = createServer((s) => this.serve(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.path, () => resolve());
    });
    chmodSync(this.path, 0o600);
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = null;
    if (existsSync(this.path)) unlinkSync(this.path);
  }

  private serve(s: Socket): void {
    if (this.clients >= MAX_CLIENTS) {
      s.end(`${JSON.stringify({ ok: false, error: 'too many clients' })}\n`);
      return;
    }
    this.clients++;
    s.on('close', () => this.clients--);
    s.on('error', () => undefined);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_LINE && !buf.includes('\n')) {
        s.end(`${JSON.stringify({ ok: false, error: `request longer than ${MAX_LINE} bytes` })}\n`);
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void this.answer(line).then((out) => s.writable && s.write(`${JSON.stringify(out)}\n`));
      }
    });
  }

  private async answer(line: string): Promise<object> {
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch {
      return { ok: false, error: 'request is not JSON' };
    }
    if (typeof req !== 'object' || req === null || typeof (req as { cmd?: unknown }).cmd !== 'string') return { ok: false, error: 'request needs a "cmd" string' };
    const { cmd, ...args } = req as { cmd: string } & Record<string, unknown>;
    const h = Object.hasOwn(this.handlers, cmd) ? this.handlers[cmd] : undefined;
    if (h === undefined) return { ok: false, error: `unknown command "${cmd}" (known: ${Object.keys(this.handlers).join(', ')})` };
    try {
      return { ok: true, result: await h(args) };
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** One request to a running daemon. */
export function apiCall(path: string, cmd: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    const timer = setTimeout(() => {
      c.destroy();
      reject(new Error(`${path}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    let buf = '';
    c.setEncoding('utf8');
    c.on('connect', () => c.write(`${JSON.stringify({ cmd, ...args })}\n`));
    c.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      c.end();
      const res = JSON.parse(buf.slice(0, nl)) as { ok: boolean; result?: unknown; error?: string };
      if (res.ok) resolve(res.result);
      else reject(new Error(res.error ?? 'error'));
    });
    c.on('error', (e) => {
      clearTimeout(timer);
      const code = (e as NodeJS.ErrnoException).code;
      // The socket is root's (mode 0600): a user who is not gets EACCES from a running daemon.
      const hint = code === 'EACCES' || code === 'EPERM' ? 'the API socket is root-only: run this as root (e.g. with sudo)' : code === 'ENOENT' || code === 'ECONNREFUSED' ? 'is the router daemon running?' : null;
      reject(new Error(`${path}: ${e.message}${hint ? ` (${hint})` : ''}`));
    });
  });
}
