// `npm run bench:handover`: what a switch of uplink costs a session, per scenario of
// lab/handover.ts, in the fleet of lab/fleet.ts with the extra sites c, e (EIM NATs), d (global)
// and f (symmetric NAT). For each scenario and each tunnel (ntmobile; wireguard-go and nebula
// on the same two routers, in a fleet of their own) the moving router switches N times, back
// and forth, while a paced TCP transfer (2 MB/s) and two UDP probe streams (1000 packets/s,
// one each way) run; per switch: the gap (last probe before, first after), the probes lost and
// the TCP retransmissions of the sender's namespace (/proc/net/snmp TcpRetransSegs, as nstat
// reads it). Medians over the switches in a table, then one JSON line.
//
//   node dist/bench/handover.js [--switches N] [--only key,key] [--peers ntmobile,wireguard-go,nebula]

import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildFleet, HANDOVER_SITES, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { doSwitch, pickScenarios, SCENARIOS, waitHandover, type HandoverScenario, type HandoverStep } from '../lab/handover.js';
import { Lab, type Host } from '../lab/lab.js';
import { gapOfSwitch, startSession, tcpBytesAcked, tcpRetransSegs, type SessionOptions } from '../lab/traffic.js';
import { run, which } from './measure.js';
import { nebulaRelayAt, type PeerTunnel } from './peers.js';

const PEERS = ['ntmobile', 'wireguard-go', 'nebula'] as const;
type Peer = (typeof PEERS)[number];

const { values } = parseArgs({
  options: {
    switches: { type: 'string', default: '10' },
    only: { type: 'string' },
    peers: { type: 'string', default: PEERS.join(',') },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/bench/handover.js [--switches N] [--only key,key] [--peers ${PEERS.join(',')}]
The cost of an uplink switch, per scenario (lab/handover.ts):
${SCENARIOS.map((s) => `  ${s.key.padEnd(16)} ${s.title}`).join('\n')}
Each scenario and tunnel gets a fleet of its own (lab/fleet.ts plus sites c, e: EIM NATs, d: global,
f: symmetric NAT). The moving router switches N times (default 10), to the scenario's site and back,
during a TCP transfer paced at 2 MB/s and two UDP streams of 1000 probes/s, one each way.
  ntmobile       a1 → b2 by name (TCP), a1 → b2's VIP and b2 → router A's VIP (UDP)
  wireguard-go   on the two routers, roaming: each end follows authenticated packets; an end is
                 told the other's endpoint when the other is global; router to router
  nebula         on the two routers with a lighthouse (also its relay) on an Internet host,
                 router to router
Per switch: the gap in ms (last probe before the switch, first after), the probes lost, the TCP
retransmissions of the sender's namespace. The table shows medians over the switches; the last
line is JSON: {"switches","rate","tcp_bytes_per_second","scenarios":{KEY:{PEER:{"gap_ms","gap_back_ms",
"gap_max_ms","lost","lost_back","retransmits","tcp_resume_ms","failed","tcp_survived"} or
{"skipped":REASON}}}}. After each switch the next waits until a ping crosses the tunnel again and
the TCP transfer has 256 kB more acknowledged (each at most 30 s), then 1.5 s.
Progress goes to stderr, a line per switch. A full run takes about 50 minutes on 2 cores, most
of it wireguard-go (about 30 s per switch); --peers ntmobile alone about 15.
Needs root; wireguard-go, wg, nebula, nebula-cert for their rows.
`);
  process.exit(0);
}
const switches = Number(values.switches);
if (!Number.isInteger(switches) || switches < 1 || switches > 90) {
  process.stderr.write(`bench:handover: --switches ${values.switches}: want an integer 1..90\n`);
  process.exit(2);
}
let scenarios: HandoverScenario[];
try {
  scenarios = pickScenarios(values.only);
} catch (e) {
  process.stderr.write(`bench:handover: --only: ${(e as Error).message}\n`);
  process.exit(2);
}
const peers = values.peers.split(',').map((p) => p.trim()).filter(Boolean) as Peer[];
for (const p of peers) {
  if (!PEERS.includes(p)) {
    process.stderr.write(`bench:handover: --peers ${p}: want some of ${PEERS.join(', ')}\n`);
    process.exit(2);
  }
}
const say = (l: string): void => void process.stderr.write(`bench:handover: ${l}\n`);

const RATE = 1000;
const TCP_RATE = 2_000_000;
const HOLD_MS = 1500;
/** How long a switch may take to come back before it counts as failed (wireguard-go needs 15 s in some). */
const RECOVER_MS = 30_000;

interface SwitchRow {
  step: string;
  /** a ping crossed the tunnel again within RECOVER_MS */
  recovered: boolean;
  recoverMs: number | null;
  /** the TCP transfer had 256 kB more acknowledged, this long after the switch began */
  tcpMs: number | null;
  gap: number | null;
  gapBack: number | null;
  lost: number;
  lostBack: number;
  retransmits: number | null;
  /** ntmobile: what the router reported */
  handover?: string;
}
interface Outcome {
  rows: SwitchRow[];
  tcpSurvived: boolean;
  tcpNote: string;
  note: string;
}
type Result = Outcome | { skipped: string };
const results: Record<string, Partial<Record<Peer, Result>>> = {};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const stepText = (s: HandoverStep): string => `${s.router}→${s.site}${s.mbb ? ' (mbb)' : ''}`;

/** Waits until the TCP sender has 256 kB more acknowledged (at most RECOVER_MS); ms since `since`, or null. */
async function tcpResumed(host: Host, port: number, since: number): Promise<number | null> {
  const first = await tcpBytesAcked(host, port);
  if (first === null) return null;
  const deadline = Date.now() + RECOVER_MS;
  while (Date.now() < deadline) {
    const now = await tcpBytesAcked(host, port);
    if (now === null) return null;
    if (now >= first + 256 * 1024) return Date.now() - since;
    await sleep(50);
  }
  return null;
}

/** Waits until one ping from `from` to `to` is answered (every 100 ms, at most RECOVER_MS). */
async function recovered(from: Host, to: string): Promise<boolean> {
  const r = await from.exec('ping', ['-n', '-q', '-c', '1', '-i', '0.1', '-w', String(RECOVER_MS / 1000), to], { allowFail: true, timeoutMs: RECOVER_MS + 5000 });
  return r.code === 0;
}

interface Traffic {
  session: Omit<SessionOptions, 'rate' | 'seconds'>;
  /** the sender's host and where a ping checks the path */
  pingFrom: Host;
  pingTo: string;
}

/** The switches of one series: the scenario's steps and the way back, again and again. */
async function series(fleet: Fleet, s: HandoverScenario, traffic: Traffic, peer: Peer): Promise<Outcome> {
  const cycle = [...s.steps, ...s.back];
  const session = await startSession({ ...traffic.session, rate: RATE, seconds: 0 });
  const marks: { t0: number; row: SwitchRow }[] = [];
  try {
    await sleep(1500);
    for (let i = 0; i < switches; i++) {
      const step = cycle[i % cycle.length]!;
      const r0 = await tcpRetransSegs(traffic.session.tcp.from);
      const alive = session.tcpAlive();
      const sw = await doSwitch(fleet, step, peer === 'ntmobile' ? {} : { settle: () => sleep(1000) });
      const ok = await recovered(traffic.pingFrom, traffic.pingTo);
      const recoverMs = ok ? Date.now() - sw.t0 : null;
      // TCP may still sit in its retransmission backoff after a long gap: wait until it moves on.
      const tcpMs = ok ? await tcpResumed(traffic.session.tcp.from, traffic.session.tcp.port, sw.t0) : null;
      let handover: string | undefined;
      if (peer === 'ntmobile') {
        const h = sw.dropped?.handover ?? (await waitHandover(fleet, step.router, sw.t0, sw.uplink.address, 5000));
        const last = h.status.lastHandover;
        handover = last && last.at >= sw.t0 ? `${last.ms} ms ${last.tunnels.map((x) => x.result).join(',')}${h.done ? '' : ' (not complete)'}` : 'none reported';
      }
      await sleep(HOLD_MS);
      const r1 = await tcpRetransSegs(traffic.session.tcp.from);
      const row: SwitchRow = { step: stepText(step), recovered: ok, recoverMs, tcpMs, gap: null, gapBack: null, lost: 0, lostBack: 0, retransmits: alive && session.tcpAlive() ? r1 - r0 : null, ...(handover !== undefined ? { handover } : {}) };
      marks.push({ t0: sw.t0, row });
      say(`  ${peer} ${s.key} switch ${i + 1}/${switches} ${row.step}: ${ok ? `ping again after ${recoverMs} ms, TCP moving after ${tcpMs ?? '-'} ms` : `no ping for ${RECOVER_MS / 1000} s`}${handover ? `; handover ${handover}` : ''}; ${row.retransmits ?? '-'} TCP retransmissions`);
    }
  } catch (e) {
    session.abort();
    throw e;
  }
  const r = await session.finish();
  const [fwdLabel, backLabel] = traffic.session.udp.map((u) => u.label) as [string, string];
  const fwd = r.udp[fwdLabel]!;
  const back = r.udp[backLabel]!;
  for (const [i, m] of marks.entries()) {
    const until = marks[i + 1]?.t0 ?? Date.now();
    const g = gapOfSwitch(fwd, m.t0, until);
    const gb = gapOfSwitch(back, m.t0, until);
    Object.assign(m.row, { gap: g.resumed ? g.ms : null, gapBack: gb.resumed ? gb.ms : null, lost: g.lost, lostBack: gb.lost });
  }
  say(`  ${peer} ${s.key}: gaps → ${marks.map((m) => m.row.gap ?? 'none').join(' ')} ms; ← ${marks.map((m) => m.row.gapBack ?? 'none').join(' ')} ms; TCP ${r.tcp.code === 0 ? `${(r.tcp.bytes / 1e6).toFixed(1)} MB` : r.tcp.error}`);
  return {
    rows: marks.map((m) => m.row),
    tcpSurvived: r.tcp.code === 0 && r.tcp.intact,
    tcpNote: r.tcp.code === 0 ? `${(r.tcp.bytes / 1e6).toFixed(0)} MB, SHA-256 ${r.tcp.intact ? 'equal' : 'DIFFERENT'}` : `TCP ended: ${r.tcp.error}`,
    note: '',
  };
}

async function vipOf(fleet: Fleet): Promise<{ b2: string; ra: string }> {
  const g = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 20_000 });
  const b2 = g.stdout.split(/\s+/)[0];
  if (g.code !== 0 || !b2) throw new Error(`a1 cannot resolve ${NAMES.b2}`);
  const st = (await fleet.ra.api('status')) as { registered: { name: string; vip4: string }[] };
  const ra = st.registered.find((r) => r.name === NAMES.ra)?.vip4;
  if (!ra) throw new Error('router A has no VIP');
  return { b2, ra };
}

async function ntmobile(fleet: Fleet, s: HandoverScenario): Promise<Outcome> {
  const vip = await vipOf(fleet);
  return series(
    fleet,
    s,
    {
      session: {
        tcp: { from: fleet.a1, target: NAMES.b2, to: fleet.b2, bind: LAN.b2, port: 5001, bytes: Infinity, bytesPerSecond: TCP_RATE },
        udp: [
          { label: 'fwd', from: fleet.a1, target: vip.b2, to: fleet.b2, bind: LAN.b2, port: 5002 },
          { label: 'back', from: fleet.b2, target: vip.ra, to: fleet.ra.host, bind: vip.ra, port: 5003 },
        ],
      },
      pingFrom: fleet.a1,
      pingTo: vip.b2,
    },
    'ntmobile',
  );
}

/** Router to router traffic over another tunnel's inner addresses. */
function innerTraffic(fleet: Fleet, innerA: string, innerB: string): Traffic {
  return {
    session: {
      tcp: { from: fleet.ra.host, target: innerB, to: fleet.rb.host, bind: innerB, port: 5001, bytes: Infinity, bytesPerSecond: TCP_RATE },
      udp: [
        { label: 'fwd', from: fleet.ra.host, target: innerB, to: fleet.rb.host, bind: innerB, port: 5002 },
        { label: 'back', from: fleet.rb.host, target: innerA, to: fleet.ra.host, bind: innerA, port: 5003 },
      ],
    },
    pingFrom: fleet.ra.host,
    pingTo: innerB,
  };
}

const WG_PORT = 51820;
const WG_INNER = { a: '10.200.0.1', b: '10.200.0.2' };

/**
 * wireguard-go on both routers. An end behind a NAT is told the other's endpoint (and keeps its
 * mapping with a persistent keepalive); a global end learns the other from its handshake. Both
 * roam: each sends to wherever the last authenticated packet came from.
 */
async function wireguardUp(fleet: Fleet): Promise<PeerTunnel> {
  const dir = path.join(fleet.dir, 'wg');
  mkdirSync(dir, { recursive: true });
  const tag = Math.random().toString(16).slice(2, 8);
  const env: NodeJS.ProcessEnv = { ...process.env, WG_PROCESS_FOREGROUND: '1', WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'verbose' };
  delete env.NODE_OPTIONS;
  const side = [
    { key: 'a' as const, host: fleet.ra.host, dev: `wg${tag}a`, inner: WG_INNER.a },
    { key: 'b' as const, host: fleet.rb.host, dev: `wg${tag}b`, inner: WG_INNER.b },
  ];
  const behindNat = (w: 'ra' | 'rb'): boolean => fleet.publicAddrs[w] !== fleet.uplinks[w];
  if (behindNat('ra') && behindNat('rb')) throw new Error('both ends behind NATs: wireguard-go has no way through');
  const keys: Record<string, { file: string; pub: string }> = {};
  for (const x of side) {
    const priv = (await run('wg', ['genkey'])).stdout.trim();
    const pub = (await run('wg', ['pubkey'], { input: `${priv}\n` })).stdout.trim();
    const file = path.join(dir, `${x.key}.key`);
    writeFileSync(file, `${priv}\n`, { mode: 0o600 });
    keys[x.key] = { file, pub };
  }
  const children = side.map((x) => x.host.spawn('wireguard-go', ['-f', x.dev], { log: `wireguard-go-${tag}`, env }));
  const stop = async (): Promise<void> => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await sleep(300);
    for (const x of side) await x.host.exec('ip', ['link', 'del', x.dev], { allowFail: true });
  };
  try {
    for (const x of side) {
      const deadline = Date.now() + 5000;
      while (!existsSync(`/var/run/wireguard/${x.dev}.sock`)) {
        if (Date.now() > deadline) throw new Error(`wireguard-go: ${x.dev} did not come up`);
        await sleep(20);
      }
    }
    for (const [me, other, mine, theirs] of [
      [side[0]!, side[1]!, 'ra', 'rb'],
      [side[1]!, side[0]!, 'rb', 'ra'],
    ] as const) {
      const args = ['set', me.dev, 'private-key', keys[me.key]!.file, 'listen-port', String(WG_PORT), 'peer', keys[other.key]!.pub, 'allowed-ips', `${other.inner}/32`];
      // Only a global end's endpoint can be configured; the other end is learned from its handshake.
      if (!behindNat(theirs)) args.push('endpoint', `${fleet.publicAddrs[theirs]}:${WG_PORT}`);
      if (behindNat(mine)) args.push('persistent-keepalive', '25');
      await me.host.exec('wg', args);
      await me.host.exec('ip', ['addr', 'add', `${me.inner}/24`, 'dev', me.dev]);
      await me.host.exec('ip', ['link', 'set', me.dev, 'mtu', '1420', 'up']);
    }
    const deadline = Date.now() + 20_000;
    // The end that knows an endpoint speaks first.
    const first = behindNat('ra') || !behindNat('rb') ? fleet.ra.host : fleet.rb.host;
    const target = first === fleet.ra.host ? WG_INNER.b : WG_INNER.a;
    while (!(await first.ping(target))) if (Date.now() > deadline) throw new Error('wireguard-go: no inner ping');
    return { name: 'wireguard-go', innerA: WG_INNER.a, innerB: WG_INNER.b, pids: children.map((c) => c.pid ?? 0), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** nebula on both routers, its lighthouse (am_relay too) on an Internet host beside the DCs. */
async function nebulaUp(fleet: Fleet): Promise<PeerTunnel> {
  const lh = await fleet.addInternetHost('nblh');
  return nebulaRelayAt(
    {
      a: { ns: fleet.ra.host.ns, listen: '0.0.0.0', relay: lh.addr },
      b: { ns: fleet.rb.host.ns, listen: '0.0.0.0', relay: lh.addr },
      relay: { ns: lh.host.ns },
      hideLocalAddresses: true,
    },
    fleet.dir,
  );
}

async function other(fleet: Fleet, s: HandoverScenario, peer: 'wireguard-go' | 'nebula'): Promise<Result> {
  const bins = peer === 'wireguard-go' ? ['wireguard-go', 'wg'] : ['nebula', 'nebula-cert'];
  const missing = bins.filter((b) => !which(b));
  if (missing.length) return { skipped: `not installed: ${missing.join(', ')}` };
  // Our daemons leave the routers: nothing but the other tunnel runs there.
  await fleet.ra.program.stop();
  await fleet.rb.program.stop();
  let tunnel: PeerTunnel;
  try {
    tunnel = peer === 'wireguard-go' ? await wireguardUp(fleet) : await nebulaUp(fleet);
  } catch (e) {
    const m = (e as Error).message.split('\n')[0]!;
    return { skipped: /both ends behind NATs/.test(m) ? 'both routers behind symmetric NATs: wireguard-go has no relay and no NAT traversal' : `setup failed: ${m}` };
  }
  try {
    return await series(fleet, s, innerTraffic(fleet, tunnel.innerA, tunnel.innerB), peer);
  } finally {
    await tunnel.stop().catch(() => undefined);
  }
}

for (const s of scenarios) {
  results[s.key] = {};
  for (const peer of peers) {
    say(`${s.key} (${s.title}), ${peer}: building the fleet (${s.case})`);
    try {
      const r = await Lab.withLab(
        async (lab) => {
          const fleet = await buildFleet(lab, { case: s.case, extraSites: HANDOVER_SITES, verbose: peer === 'ntmobile' });
          try {
            return peer === 'ntmobile' ? await ntmobile(fleet, s) : await other(fleet, s, peer);
          } finally {
            fleet.dispose();
          }
        },
        { label: `bench-ho-${s.key}-${peer}`, dumpLogsOnError: false },
      );
      results[s.key]![peer] = r;
      if ('skipped' in r) say(`  ${peer} ${s.key}: skipped: ${r.skipped}`);
    } catch (e) {
      results[s.key]![peer] = { skipped: `failed: ${(e as Error).message.split('\n')[0]}` };
      say(`  ${peer} ${s.key}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
}

// ---- report ------------------------------------------------------------------------------------

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const v = [...xs].sort((a, b) => a - b);
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : Math.round((v[m - 1]! + v[m]!) / 2);
}
const nums = (xs: (number | null)[]): number[] => xs.filter((x): x is number => x !== null);

interface Summary {
  gap_ms: number | null;
  gap_back_ms: number | null;
  gap_max_ms: number | null;
  lost: number | null;
  lost_back: number | null;
  retransmits: number | null;
  tcp_resume_ms: number | null;
  failed: number;
  tcp_survived: boolean;
}
function summarize(o: Outcome): Summary {
  const gaps = nums(o.rows.map((r) => r.gap));
  return {
    gap_ms: median(gaps),
    gap_back_ms: median(nums(o.rows.map((r) => r.gapBack))),
    gap_max_ms: gaps.length ? Math.max(...gaps) : null,
    lost: median(o.rows.map((r) => r.lost)),
    lost_back: median(o.rows.map((r) => r.lostBack)),
    retransmits: median(nums(o.rows.map((r) => r.retransmits))),
    tcp_resume_ms: median(nums(o.rows.map((r) => r.tcpMs))),
    failed: o.rows.filter((r) => !r.recovered || r.gap === null).length,
    tcp_survived: o.tcpSurvived,
  };
}

const cell = (v: number | null | undefined, w: number): string => (v === null || v === undefined ? '-' : String(v)).padStart(w);
process.stdout.write(`\nUplink switches, ${switches} per scenario and tunnel (back and forth); medians; UDP 1000 probes/s each way, TCP paced at 2 MB/s\n`);
process.stdout.write(`gap: last probe before the switch to the first after it (0: no silence above 5 ms); →: mover's side to the other (a1 → b2 / router A → router B), ←: back\n`);
process.stdout.write(`retrans: TCP retransmissions of the sender per switch; TCP ms: from the switch until 256 kB more were acknowledged; failed: switches with no ping back within ${RECOVER_MS / 1000} s\n\n`);
process.stdout.write(`${'scenario'.padEnd(16)} ${'tunnel'.padEnd(13)} ${'gap→ ms'.padStart(8)} ${'max'.padStart(6)} ${'gap← ms'.padStart(8)} ${'lost→'.padStart(6)} ${'lost←'.padStart(6)} ${'retrans'.padStart(8)} ${'TCP ms'.padStart(7)} ${'failed'.padStart(7)}  TCP\n`);
const json: Record<string, Record<string, Summary | { skipped: string }>> = {};
for (const s of scenarios) {
  json[s.key] = {};
  for (const peer of peers) {
    const r = results[s.key]![peer];
    if (r === undefined) continue;
    if ('skipped' in r) {
      json[s.key]![peer] = { skipped: r.skipped };
      process.stdout.write(`${s.key.padEnd(16)} ${peer.padEnd(13)} not measured: ${r.skipped}\n`);
      continue;
    }
    const m = summarize(r);
    json[s.key]![peer] = m;
    process.stdout.write(
      `${s.key.padEnd(16)} ${peer.padEnd(13)} ${cell(m.gap_ms, 8)} ${cell(m.gap_max_ms, 6)} ${cell(m.gap_back_ms, 8)} ${cell(m.lost, 6)} ${cell(m.lost_back, 6)} ${cell(m.retransmits, 8)} ${cell(m.tcp_resume_ms, 7)} ${cell(m.failed, 7)}  ${r.tcpNote}\n`,
    );
  }
}
process.stdout.write(`${JSON.stringify({ switches, rate: RATE, tcp_bytes_per_second: TCP_RATE, scenarios: json })}\n`);
