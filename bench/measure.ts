// Measurement helpers for benchmarks run between network namespaces.
//
// Everything here runs commands through `ip netns exec <ns> ...`, so traffic
// stays inside namespaces created by the caller. Nothing here creates or
// deletes namespaces.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export interface ExecResult {
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Kill the command after this many milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Data written to the command's stdin. */
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Run a command to completion; rejects with stderr in the message on failure. */
export function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        timeout: opts.timeoutMs ?? 30_000,
        maxBuffer: 16 * 1024 * 1024,
        env: opts.env ?? process.env,
        cwd: opts.cwd,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (err) {
          const e = new Error(
            `${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}` +
              (stderr ? `\n${stderr.trim()}` : ''),
          ) as Error & { stdout?: string; stderr?: string };
          e.stdout = stdout;
          e.stderr = stderr;
          reject(e);
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Run a command inside a network namespace. */
export function nsRun(ns: string, cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return run('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** Absolute path of an executable found on PATH (plus sbin dirs), or undefined. */
export function which(bin: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const extra of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    if (!dirs.includes(extra)) dirs.push(extra);
  }
  for (const d of dirs) {
    const p = join(d, bin);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return undefined;
}

/** The ping command to use: iputils `ping` if present, else `busybox ping`. */
export function pingCommand(): [string, ...string[]] | undefined {
  const ping = which('ping');
  if (ping) return [ping];
  const bb = which('busybox');
  if (bb) return [bb, 'ping'];
  return undefined;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface PingOptions {
  /** Echo requests to send (default 1); success if any is answered. */
  count?: number;
  /** Seconds to wait for a reply (default 1). */
  waitSec?: number;
}

/** True if `addr` answers ICMP echo from inside namespace `ns`. */
export async function pingOk(ns: string, addr: string, opts: PingOptions = {}): Promise<boolean> {
  const cmd = pingCommand();
  if (!cmd) throw new Error('pingOk: neither `ping` nor `busybox` is installed');
  const count = opts.count ?? 1;
  const wait = opts.waitSec ?? 1;
  const [bin, ...pre] = cmd;
  // -W is the per-reply timeout in both iputils and busybox; -w bounds the total run.
  const args = [...pre, '-c', String(count), '-W', String(wait), '-w', String(count * wait + 1), addr];
  try {
    await nsRun(ns, bin, args, { timeoutMs: (count * wait + 3) * 1000 });
    return true;
  } catch {
    return false;
  }
}

export interface MemoryKb {
  /** Current resident set size (VmRSS), KiB. */
  rssKb: number;
  /** Peak resident set size (VmHWM), KiB. */
  hwmKb: number;
  /** The anonymous part of VmRSS (RssAnon: heaps, stacks), KiB; the rest is pages of files (the binary, libraries). */
  anonKb: number;
}

/** VmRSS, VmHWM and RssAnon of a process, from /proc/<pid>/status. */
export function rssKb(pid: number): MemoryKb {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(status);
    if (!m) throw new Error(`rssKb: no ${name} in /proc/${pid}/status (kernel thread or zombie?)`);
    return Number(m[1]);
  };
  return { rssKb: field('VmRSS'), hwmKb: field('VmHWM'), anonKb: field('RssAnon') };
}

export interface Iperf3Options {
  /** TCP/UDP port (default 5201). */
  port?: number;
  /** Parallel client streams (-P). */
  parallel?: number;
  /** Server sends, client receives (-R). */
  reverse?: boolean;
  /** UDP instead of TCP; set `bitrate` too, iperf3's UDP default is 1 Mbit/s. */
  udp?: boolean;
  /** Target bitrate, iperf3 syntax, e.g. '0' (unlimited) or '500M'. */
  bitrate?: string;
  /** Bytes per write (-l). */
  length?: string;
  /** Seconds to omit from the start of the measurement (-O). */
  omit?: number;
  /** Extra time allowed beyond `seconds` before giving up (default 20 s). */
  graceMs?: number;
  /** The address the server binds when the client reaches it at another one (behind a NAT, a VIP). */
  serverBind?: string;
}

export interface Iperf3Result {
  /** Throughput measured at the receiver, Mbit/s (for UDP: the received rate). */
  mbps: number;
  /** Throughput measured at the sender, Mbit/s. */
  senderMbps: number;
  /** TCP retransmits reported by the sender (0 for UDP). */
  retransmits: number;
  /** UDP only: lost datagrams percentage. */
  lostPercent?: number;
  /** The full iperf3 -J document, for anyone wanting more. */
  raw: unknown;
}

function waitForOutput(child: ChildProcess, needle: RegExp, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const done = (err?: Error): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    const onData = (d: Buffer): void => {
      buf += d.toString();
      if (needle.test(buf)) done();
    };
    const onExit = (code: number | null, sig: string | null): void =>
      done(new Error(`${what} exited early (code ${code}, signal ${sig}): ${buf.trim()}`));
    const timer = setTimeout(() => done(new Error(`${what}: not ready after ${timeoutMs} ms: ${buf.trim()}`)), timeoutMs);
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.on('exit', onExit);
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function killAndWait(child: ChildProcess, ms = 2000): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), ms);
  await gone;
  clearTimeout(t);
}

/**
 * One iperf3 run: server (`iperf3 -s -1`) in `nsServer` bound to `serverAddr`
 * (or `opts.serverBind`), client in `nsClient` connecting to `serverAddr`, JSON
 * output parsed from the client.
 */
export async function iperf3(
  nsServer: string,
  nsClient: string,
  serverAddr: string,
  seconds: number,
  opts: Iperf3Options = {},
): Promise<Iperf3Result> {
  const port = String(opts.port ?? 5201);
  const server = spawn('ip', ['netns', 'exec', nsServer, 'iperf3', '-s', '-1', '--forceflush', '-B', opts.serverBind ?? serverAddr, '-p', port], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let serverOut = '';
  server.stdout.on('data', (d: Buffer) => (serverOut += d.toString()));
  server.stderr.on('data', (d: Buffer) => (serverOut += d.toString()));
  try {
    await waitForOutput(server, /Server listening/, 10_000, `iperf3 server in ${nsServer}`);
    const args = ['-c', serverAddr, '-p', port, '-t', String(seconds), '-J'];
    if (opts.parallel) args.push('-P', String(opts.parallel));
    if (opts.reverse) args.push('-R');
    if (opts.udp) args.push('-u');
    if (opts.bitrate !== undefined) args.push('-b', opts.bitrate);
    if (opts.length !== undefined) args.push('-l', opts.length);
    if (opts.omit) args.push('-O', String(opts.omit));
    // Bound the control connection so a dead tunnel fails instead of hanging.
    args.push('--connect-timeout', '5000');
    let stdout: string;
    try {
      ({ stdout } = await nsRun(nsClient, 'iperf3', args, {
        timeoutMs: seconds * 1000 + (opts.omit ?? 0) * 1000 + (opts.graceMs ?? 20_000),
      }));
    } catch (e) {
      // iperf3 -J reports errors as JSON on stdout with a non-zero exit.
      const out = (e as { stdout?: string }).stdout;
      let detail = '';
      try {
        detail = (JSON.parse(out ?? '') as { error?: string }).error ?? '';
      } catch {
        /* not JSON */
      }
      throw new Error(
        `iperf3 ${nsClient} -> ${serverAddr}: ${detail || (e as Error).message}` +
          (serverOut.trim() ? `\nserver: ${serverOut.trim()}` : ''),
      );
    }
    return parseIperf3(stdout, !!opts.udp);
  } finally {
    // With -1 the server exits by itself after the test; give it a moment.
    const t = setTimeout(() => server.kill('SIGTERM'), 2000);
    await killAndWait(server, 4000);
    clearTimeout(t);
  }
}

interface IperfJson {
  error?: string;
  end?: {
    sum_sent?: { bits_per_second?: number; retransmits?: number };
    sum_received?: { bits_per_second?: number };
    sum?: { bits_per_second?: number; lost_percent?: number };
  };
}

export function parseIperf3(json: string, udp: boolean): Iperf3Result {
  const doc = JSON.parse(json) as IperfJson;
  if (doc.error) throw new Error(`iperf3: ${doc.error}`);
  const end = doc.end;
  if (!end) throw new Error('iperf3: JSON has no "end" section');
  const mb = (bps: number | undefined): number => (bps ?? 0) / 1e6;
  if (udp) {
    // For UDP, end.sum is the receiver-side view (datagrams that arrived).
    const recv = end.sum_received?.bits_per_second ?? end.sum?.bits_per_second;
    const res: Iperf3Result = {
      mbps: mb(recv),
      senderMbps: mb(end.sum_sent?.bits_per_second ?? end.sum?.bits_per_second),
      retransmits: 0,
      raw: doc,
    };
    if (end.sum?.lost_percent !== undefined) res.lostPercent = end.sum.lost_percent;
    return res;
  }
  return {
    mbps: mb(end.sum_received?.bits_per_second),
    senderMbps: mb(end.sum_sent?.bits_per_second),
    retransmits: end.sum_sent?.retransmits ?? 0,
    raw: doc,
  };
}
