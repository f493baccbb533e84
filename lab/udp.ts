// UdpAgent: a small UDP endpoint running inside a lab host (node -e, one socket), driven from the test
// process over stdin/stdout JSON lines. Used to observe NAT mappings (which source address/port a
// receiver sees) and filtering (whether an unsolicited datagram is delivered).

import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Host } from './lab.js';

export interface Datagram {
  /** source address and port as the receiver saw them */
  from: string;
  port: number;
  data: string;
}

export interface UdpAgentOptions {
  /** local port (default 0: any) */
  port?: number;
  /** local address (default: any of the family) */
  bind?: string;
  family?: 4 | 6;
  /** ms to wait for the socket to be bound (default 5000) */
  startTimeoutMs?: number;
}

const AGENT_SRC = `
const dgram = require('node:dgram');
const readline = require('node:readline');
const [fam, port, bind] = [process.argv[1], Number(process.argv[2]), process.argv[3] || undefined];
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const s = dgram.createSocket(fam === '6' ? 'udp6' : 'udp4');
s.on('message', (m, r) => out({ ev: 'msg', from: r.address, port: r.port, data: m.toString() }));
s.on('error', (e) => { out({ ev: 'error', message: e.message }); process.exit(1); });
s.bind(port, bind, () => out({ ev: 'ready', port: s.address().port, addr: s.address().address }));
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  let c; try { c = JSON.parse(l); } catch { return; }
  s.send(c.data, c.port, c.addr, (e) => out({ ev: 'sent', id: c.id, error: e ? e.message : undefined }));
});
process.stdin.on('end', () => process.exit(0));
`;

export class UdpAgent {
  /** every datagram received so far */
  readonly received: Datagram[] = [];
  private waiters: { pred: (d: Datagram) => boolean; resolve: (d: Datagram) => void }[] = [];
  private sendWaiters = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private seq = 0;
  private exited = false;

  private constructor(
    readonly host: Host,
    private readonly child: ChildProcess,
    /** the bound local port */
    readonly port: number,
  ) {}

  /** Start an agent in a host and wait until its socket is bound. */
  static start(host: Host, opts: UdpAgentOptions = {}): Promise<UdpAgent> {
    const child = host.spawn(
      process.execPath,
      ['-e', AGENT_SRC, String(opts.family ?? 4), String(opts.port ?? 0), opts.bind ?? ''],
      { log: 'pipe' },
    );
    const lines = createInterface({ input: child.stdout! });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve, reject) => {
      let agent: UdpAgent | undefined;
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`host ${host.name}: UDP agent did not start within ${opts.startTimeoutMs ?? 5000} ms ${stderr}`));
      }, opts.startTimeoutMs ?? 5000);
      lines.on('line', (line) => {
        let ev: { ev: string; port?: number; from?: string; data?: string; id?: number; error?: string; message?: string };
        try {
          ev = JSON.parse(line);
        } catch {
          return;
        }
        if (ev.ev === 'ready' && !agent) {
          clearTimeout(timer);
          agent = new UdpAgent(host, child, ev.port!);
          resolve(agent);
        } else if (ev.ev === 'error' && !agent) {
          clearTimeout(timer);
          reject(new Error(`host ${host.name}: UDP agent: ${ev.message}`));
        } else if (ev.ev === 'msg' && agent) {
          agent.onMessage({ from: ev.from!, port: ev.port!, data: ev.data! });
        } else if (ev.ev === 'sent' && agent) {
          const w = agent.sendWaiters.get(ev.id!);
          agent.sendWaiters.delete(ev.id!);
          if (ev.error) w?.reject(new Error(`host ${host.name}: UDP send failed: ${ev.error}`));
          else w?.resolve();
        }
      });
      child.on('exit', (code) => {
        if (agent) {
          agent.exited = true;
          for (const w of agent.sendWaiters.values()) w.reject(new Error(`host ${host.name}: UDP agent exited`));
          agent.sendWaiters.clear();
        } else {
          clearTimeout(timer);
          reject(new Error(`host ${host.name}: UDP agent exited with code ${code}: ${stderr.trim()}`));
        }
      });
    });
  }

  private onMessage(d: Datagram): void {
    this.received.push(d);
    const i = this.waiters.findIndex((w) => w.pred(d));
    if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(d);
  }

  /** Send a datagram to addr:port from the agent's socket. Resolves once the kernel took it. */
  send(addr: string, port: number, data: string): Promise<void> {
    if (this.exited) return Promise.reject(new Error(`host ${this.host.name}: UDP agent has exited`));
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.sendWaiters.set(id, { resolve, reject });
      this.child.stdin!.write(JSON.stringify({ id, addr, port, data }) + '\n');
    });
  }

  /**
   * The first datagram (already received or arriving within timeoutMs) that matches pred (default: any).
   * Resolves undefined on timeout.
   */
  next(timeoutMs = 2000, pred: (d: Datagram) => boolean = () => true): Promise<Datagram | undefined> {
    const have = this.received.find(pred);
    if (have) return Promise.resolve(have);
    return new Promise((resolve) => {
      const w = {
        pred,
        resolve: (d: Datagram | undefined) => {
          clearTimeout(timer);
          resolve(d);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(undefined);
      }, timeoutMs);
      this.waiters.push(w as { pred: (d: Datagram) => boolean; resolve: (d: Datagram) => void });
    });
  }

  /** Wait for a datagram whose payload equals data. */
  waitFor(data: string, timeoutMs = 2000): Promise<Datagram | undefined> {
    return this.next(timeoutMs, (d) => d.data === data);
  }

  /** Stop the agent (the lab would kill it on destroy anyway). */
  stop(): void {
    this.child.stdin?.end();
    this.child.kill('SIGTERM');
  }
}
