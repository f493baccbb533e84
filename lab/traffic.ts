// Traffic across a handover, for test/handover-e2e.test.ts and bench/handover.ts: a TCP transfer
// with SHA-256 at both ends (lab/tools/transfer.ts) and UDP probe streams (lab/tools/probe.ts)
// between lab hosts, started together, with the sender's TCP retransmissions counted; and the
// gap a switch caused, read off a stream's list of silences.

import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { type Host } from './lab.js';

export const TRANSFER = fileURLToPath(new URL('./tools/transfer.js', import.meta.url));
export const PROBE = fileURLToPath(new URL('./tools/probe.js', import.meta.url));

/** What a probe receiver saw (lab/tools/probe.ts). */
export interface ProbeSummary {
  received: number;
  /** highest sequence number received − packets received */
  lost: number;
  maxGapMs: number;
  /** Date.now() of the first and the last arrival (0: none) */
  first: number;
  last: number;
  /** every silence longer than 5 ms: last probe before (after), first probe after (next) */
  gaps: { after: number; next: number; ms: number; at: number }[];
}

export interface TcpOutcome {
  /** the sender's exit code (1 on a reset or any socket error) */
  code: number;
  /** the sender's error output (e.g. "transfer: read ECONNRESET") */
  error: string;
  bytes: number;
  receivedBytes: number;
  /** SHA-256 of what was sent equals SHA-256 of what the server read */
  intact: boolean;
  seconds: number;
  /** TcpRetransSegs of the sender's namespace during the transfer */
  retransmits: number;
}

export interface StreamSpec {
  /** the sending host and where it sends (an address: probes are not resolved per packet) */
  from: Host;
  target: string;
  /** the receiving host and the address its receiver binds */
  to: Host;
  bind: string;
  port: number;
}

export interface SessionOptions {
  /**
   * TCP: from `tcp.from` to `tcp.target` (a name or an address), the server binds `tcp.bind` on
   * `tcp.to`; `bytes` paced at `bytesPerSecond` (Infinity: until finish())
   */
  tcp: StreamSpec & { bytes: number; bytesPerSecond: number };
  /** UDP probe streams, each `rate` packets/s for `seconds` (0: until finish()) */
  udp: (StreamSpec & { label: string })[];
  rate: number;
  seconds: number;
}

export interface SessionResult {
  tcp: TcpOutcome;
  udp: Record<string, ProbeSummary>;
}

export interface Session {
  /** when the streams started (Date.now()) */
  startedAt: number;
  /**
   * Waits for the sender and the probe streams to end (open-ended ones are told to stop now),
   * stops the receivers, returns what they saw.
   */
  finish(): Promise<SessionResult>;
  /** The TCP sender is still running (not ended by an error such as a reset). */
  tcpAlive(): boolean;
  /** Kills everything of the session (on a failure). */
  abort(): void;
}

/** Starts a listener tool in a host and waits for its "listening" line. */
export async function startListener(host: Host, tool: string, args: string[]): Promise<ChildProcess> {
  const child = host.spawn(process.execPath, [tool, ...args], { log: 'pipe' });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (out.includes('listening')) {
        child.stdout!.off('data', onData);
        child.off('exit', onExit);
        resolve();
      }
    };
    const onExit = (code: number | null): void => reject(new Error(`${tool} ${args.join(' ')} in ${host.name} exited with ${code} before listening`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
  return child;
}

/** TcpRetransSegs of a host's namespace (/proc/net/snmp is per network namespace). */
export async function tcpRetransSegs(host: Host): Promise<number> {
  const r = await host.exec('cat', ['/proc/net/snmp']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const i = names.indexOf('RetransSegs');
  return i < 0 ? 0 : Number(values[i]);
}

/** A tool run in a host, its output collected. */
function run(host: Host, args: string[]): { child: ChildProcess; done: Promise<{ code: number; stdout: string; stderr: string }> } {
  const child = host.spawn(process.execPath, args, { log: 'pipe' });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr })),
  );
  return { child, done };
}

/** Bytes the peer has acknowledged on a host's TCP connections to `port` (ss -ti bytes_acked), null without one. */
export async function tcpBytesAcked(host: Host, port: number): Promise<number | null> {
  const r = await host.exec('ss', ['-tinH', 'state', 'established', `( dport = :${port} )`], { allowFail: true });
  const acked = [...r.stdout.matchAll(/bytes_acked:(\d+)/g)].map((m) => Number(m[1]));
  return acked.length ? acked.reduce((a, b) => a + b, 0) : null;
}

/** Starts the receivers, then the TCP sender and the probe senders at once. */
export async function startSession(o: SessionOptions): Promise<Session> {
  const children: ChildProcess[] = [];
  const abort = (): void => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  try {
    const server = await startListener(o.tcp.to, TRANSFER, ['serve', o.tcp.bind, String(o.tcp.port)]);
    children.push(server);
    const receivers: { label: string; child: ChildProcess; out: () => string }[] = [];
    for (const u of o.udp) {
      const child = await startListener(u.to, PROBE, ['recv', u.bind, String(u.port)]);
      children.push(child);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      receivers.push({ label: u.label, child, out: () => out });
    }
    const retransBefore = await tcpRetransSegs(o.tcp.from);
    const startedAt = Date.now();
    const sender = run(o.tcp.from, [TRANSFER, 'send', o.tcp.target, String(o.tcp.port), String(o.tcp.bytes), String(o.tcp.bytesPerSecond)]);
    children.push(sender.child);
    const probes = o.udp.map((u) => run(u.from, [PROBE, 'send', u.target, String(u.port), String(o.rate), String(o.seconds)]));
    children.push(...probes.map((p) => p.child));
    const openEnded = o.seconds === 0 || o.tcp.bytes === Infinity;
    return {
      startedAt,
      abort,
      tcpAlive: () => sender.child.exitCode === null && sender.child.signalCode === null,
      async finish() {
        try {
          return await finishSession();
        } finally {
          abort(); // the TCP server exits by itself; anything left (also after an error) is killed
        }
      },
    };
    async function finishSession(): Promise<SessionResult> {
      if (o.tcp.bytes === Infinity) sender.child.kill('SIGTERM');
      if (o.seconds === 0) for (const p of probes) p.child.kill('SIGTERM');
      // A sender that cannot finish (a dead path) is killed after a while: the report says so.
      const senders = [sender.child, ...probes.map((p) => p.child)];
      const limit = setTimeout(
        () => senders.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL')),
        openEnded ? 60_000 : Math.max(o.seconds, o.tcp.bytes / o.tcp.bytesPerSecond) * 1000 + 90_000,
      );
      const [s, ...ps] = await Promise.all([sender.done, ...probes.map((p) => p.done)]);
      clearTimeout(limit);
      const retransmits = (await tcpRetransSegs(o.tcp.from)) - retransBefore;
      for (const [i, p] of ps.entries()) if (p.code !== 0 && p.code !== 128) throw new Error(`probe sender ${o.udp[i]!.label}: exit ${p.code}: ${p.stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 300)); // the last probes in flight
      const udp: Record<string, ProbeSummary> = {};
      for (const r of receivers) {
        if (r.child.exitCode !== null || r.child.signalCode !== null) throw new Error(`probe receiver ${r.label} ended early`);
        const exited = once(r.child, 'exit');
        r.child.kill('SIGTERM');
        await exited;
        const line = r.out().split('\n').find((l) => l.startsWith('{'));
        if (line === undefined) throw new Error(`probe receiver ${r.label} printed no summary`);
        udp[r.label] = JSON.parse(line) as ProbeSummary;
      }
      let tcp: TcpOutcome;
      const line = s.stdout.split('\n').find((l) => l.startsWith('{'));
      if (s.code === 0 && line !== undefined) {
        const j = JSON.parse(line) as { bytes: number; sent: string; receivedBytes: number; received: string; seconds: number };
        tcp = { code: 0, error: '', bytes: j.bytes, receivedBytes: j.receivedBytes, intact: j.sent === j.received && j.bytes === j.receivedBytes, seconds: j.seconds, retransmits };
      } else {
        tcp = { code: s.code || 1, error: s.stderr.trim() || (s.code === 128 ? 'killed: no answer from the server' : 'no result'), bytes: 0, receivedBytes: 0, intact: false, seconds: (Date.now() - startedAt) / 1000, retransmits };
      }
      return { tcp, udp };
    }
  } catch (e) {
    abort();
    throw e;
  }
}

/** The gap a switch caused in a probe stream. */
export interface SwitchGap {
  /** packets arrived after the switch (the path came back) */
  resumed: boolean;
  /** the silence around the switch: last probe before it to the first after it, ms (0: none above 5 ms) */
  ms: number;
  /** probes lost in that silence */
  lost: number;
  /** Date.now() when the silence began (0: none) */
  at: number;
}

/**
 * The longest silence of a stream that overlaps a switch begun at `from` whose effects may last
 * until `until` (Date.now() values): it ends after `from` and begins before `until`.
 */
export function gapOfSwitch(p: ProbeSummary, from: number, until: number): SwitchGap {
  let best: ProbeSummary['gaps'][number] | undefined;
  for (const g of p.gaps) {
    if (g.at + g.ms >= from && g.at <= until && (best === undefined || g.ms > best.ms)) best = g;
  }
  // A listed silence ended with a probe; with none, probes kept arriving through the switch.
  if (best === undefined) return { resumed: p.last > from + 50, ms: 0, lost: 0, at: 0 };
  return { resumed: true, ms: Math.round(best.ms), lost: Math.max(0, best.next - best.after - 1), at: best.at };
}
