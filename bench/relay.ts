// `npm run bench:relay`: what the Relay Server costs, in the fleet of lab/fleet.ts. TCP throughput
// a1 → b2 (iperf3, one stream) over NTMobile's direct path (router A behind a NAT, 'a-nat') and
// through rs1.relay.test (both routers behind symmetric NATs, 'both-sym'), and nebula through a
// nebula relay placed the same way: nebula on the two routers of the 'both-sym' fleet and its
// relay (lighthouse, am_relay) on an Internet host beside rs1. Both fleets are up at once and the
// three paths are measured in turn, round after round, so that whatever else the machine does
// falls on all of them alike; the figures are the medians of the rounds. Prints a table with the
// ratios, then one JSON line.
//
//   node dist/bench/relay.js [--seconds N] [--rounds N]

import { readFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { buildFleet, LAN, NAMES, type Fleet, type FleetCase } from '../lab/fleet.js';
import { Lab, type Host } from '../lab/lab.js';
import { iperf3, rssKb, type Iperf3Result } from './measure.js';
import { missingPeers, nebulaRelayAt, type PeerTunnel } from './peers.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/bench/relay.js [--seconds N] [--rounds N]
TCP throughput a1 → b2 (iperf3, one stream, N seconds, default 10, plus one omitted first second)
in the fleet of lab/fleet.ts:
  ntmobile direct   router A behind an EIM NAT, router B global ('a-nat'): the direct path
  ntmobile relay    both routers behind symmetric NATs ('both-sym'): through rs1.relay.test
  nebula relay      nebula on the same two routers, its relay on an Internet host beside rs1
                    (router to router: nebula has no LAN routing here, the LAN hop is not in it)
Both fleets are up at once; each round measures the three paths one after the other (default 3
rounds, the order rotating), and the figures are the medians, so that load from elsewhere on the
machine falls on all three alike. Before each measurement it checks router A's route (peers API:
'direct…' / 'relay via …'), and after it that the relayed bytes reached the relay host.
Progress goes to stderr. Stdout: a table (median Mbit/s with the rounds' range, retransmits, the
CPU of each daemon during the run in % of one core and the machine's busy share of all cores),
the ratios ntmobile relay/direct and ntmobile relay/nebula relay (of the medians, and the range
of the per-round ratios), the relays' CPU per 100 Mbit/s and peak RSS, then one JSON line with
the keys seconds, rounds, ntmobile_direct, ntmobile_relay, nebula_relay (median Mbit/s),
relay_over_direct, ntmobile_over_nebula_relay, rs_rss_kb, nebula_relay_rss_kb, rs_cpu_pct,
nebula_relay_cpu_pct, rs_cpu_pct_per_100mbit, nebula_relay_cpu_pct_per_100mbit (a relay's CPU
per 100 Mbit/s carried, steadier than Mbit/s on a busy machine), rs_drops (the RS's drop
counters that are not 0: quota, send failures …), machine_busy_pct, runs (each round's Mbit/s
per key).
Takes about 20 s + rounds × 3 × (N + 2) s: 2 minutes by default.
Needs root, iperf3, and nebula for its row (scripts/setup.sh installs them).
`);
  process.exit(0);
}
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
if (!Number.isFinite(seconds) || seconds < 1) {
  process.stderr.write(`bench:relay: --seconds ${values.seconds}: want a number ≥ 1\n`);
  process.exit(2);
}
if (!Number.isInteger(rounds) || rounds < 1) {
  process.stderr.write(`bench:relay: --rounds ${values.rounds}: want a whole number ≥ 1\n`);
  process.exit(2);
}
const say = (l: string): void => void process.stderr.write(`bench:relay: ${l}\n`);

/** CPU time (user + system, all threads) a process has used so far, in seconds; null if it is gone. */
function cpuSeconds(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After "pid (comm) ": field 3 (state) is f[0], utime (14) f[11], stime (15) f[12], in clock ticks.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return null;
  }
}
/** USER_HZ: 100 on every Linux architecture Node runs on (`getconf CLK_TCK`). */
const CLK_TCK = 100;

/** Busy and total time of the whole machine (all cores) from /proc/stat, in clock ticks. */
function machineTicks(): { busy: number; total: number } {
  const [, ...v] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/);
  const n = v.slice(0, 8).map(Number); // user nice system idle iowait irq softirq steal
  const total = n.reduce((a, b) => a + b, 0);
  return { busy: total - n[3]! - n[4]!, total };
}

/** CPU use while body runs: each named process in % of one core, the machine in % of all its cores. */
interface CpuUse {
  procs: Record<string, number | null>;
  machine: number;
}
async function measureCpu<T>(pids: Record<string, number | undefined>, body: () => Promise<T>): Promise<{ value: T; cpu: CpuUse }> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
  const m0 = machineTicks();
  const t0 = process.hrtime.bigint();
  const value = await body();
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const m1 = machineTicks();
  const procs: Record<string, number | null> = {};
  for (const [k, pid] of Object.entries(pids)) {
    const a = before[k];
    const b = cpuSeconds(pid);
    procs[k] = a !== null && a !== undefined && b !== null ? Math.round(((b - a) / wall) * 100) : null;
  }
  const machine = m1.total > m0.total ? Math.round(((m1.busy - m0.busy) / (m1.total - m0.total)) * 100) : 0;
  return { value, cpu: { procs, machine } };
}

const cpuText = (c: CpuUse): string =>
  `${Object.entries(c.procs)
    .map(([k, v]) => `${k} ${v ?? '-'} %`)
    .join(', ')}; machine ${c.machine} % of ${os.cpus().length} cores`;

/** Bytes received on a host's interface so far. */
async function rxBytes(host: Host, dev: string): Promise<number> {
  const r = await host.exec('ip', ['-j', '-s', 'link', 'show', 'dev', dev]);
  const [link] = JSON.parse(r.stdout) as { stats64?: { rx: { bytes: number } } }[];
  return link?.stats64?.rx.bytes ?? 0;
}

/** a1 resolves b2 by name (the DNS hook answers once the tunnel is up); b2's VIP as a1 sees it. */
async function tunnelToB2(fleet: Fleet): Promise<string> {
  const r = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 20_000 });
  const vip = r.stdout.split(/\s+/)[0];
  if (r.code !== 0 || !vip) throw new Error(`a1 cannot resolve ${NAMES.b2}: ${r.stderr.trim() || `getent exit ${r.code}`}`);
  return vip;
}

/** Router A's route to router B as its `peers` API tells it. */
async function routeToRb(fleet: Fleet): Promise<string> {
  const peers = (await fleet.ra.api('peers')) as { node: string; route: string }[];
  return peers.find((p) => p.node === NAMES.rb)?.route ?? '(none)';
}

/** What iperf3 carried (the omitted first second not counted), bytes. */
const carried = (r: Iperf3Result): number => (r.mbps * 1e6 * seconds) / 8;

/** One measurement of one path. */
interface Sample {
  result: Iperf3Result;
  cpu: CpuUse;
  /** Bytes that reached the relay host while it ran (null: direct). */
  throughRelay: number | null;
}

/** A path to measure: its key, its text, how to run it once. */
interface Path {
  key: 'ntmobile_direct' | 'ntmobile_relay' | 'nebula_relay';
  what: string;
  note: string;
  run(): Promise<Sample>;
  samples: Sample[];
}

/** iperf3 a1 → b2 by VIP (the server binds b2's LAN address), after checking router A's route. */
function ntmobilePath(key: Path['key'], what: string, fleet: Fleet, want: RegExp, relayHost: Host | null): Path {
  const pids = { ra: fleet.ra.program.process.pid, ...(relayHost ? { rs1: fleet.rs1.program.process.pid } : {}), rb: fleet.rb.program.process.pid };
  const path: Path = {
    key,
    what,
    note: '',
    samples: [],
    async run() {
      const vip = await tunnelToB2(fleet);
      const route = await routeToRb(fleet);
      if (!want.test(route)) throw new Error(`router A's route to router B is "${route}", want ${want}: the figure would measure another path`);
      path.note = route;
      const before = relayHost ? await rxBytes(relayHost, 'eth0') : 0;
      const { value: result, cpu } = await measureCpu(pids, () => iperf3(fleet.b2.ns, fleet.a1.ns, vip, seconds, { omit: 1, serverBind: LAN.b2 }));
      const through = relayHost ? (await rxBytes(relayHost, 'eth0')) - before : null;
      if (through !== null && through < carried(result) * 0.9) {
        throw new Error(`${what}: only ${(through / 1e6).toFixed(0)} MB of ${(carried(result) / 1e6).toFixed(0)} MB reached the RS`);
      }
      return { result, cpu, throughRelay: through };
    },
  };
  return path;
}

/** iperf3 router A → router B over nebula's inner addresses, through its relay. */
function nebulaPath(fleet: Fleet, tunnel: PeerTunnel, relayHost: Host): Path {
  const [a, b, relay] = tunnel.pids;
  return {
    key: 'nebula_relay',
    what: 'nebula relay (both-sym)',
    note: 'router to router',
    samples: [],
    async run() {
      const before = await rxBytes(relayHost, 'eth0');
      const { value: result, cpu } = await measureCpu({ a, relay, b }, () => iperf3(fleet.rb.host.ns, fleet.ra.host.ns, tunnel.innerB, seconds, { omit: 1 }));
      const through = (await rxBytes(relayHost, 'eth0')) - before;
      // Nebula would take a direct path if the NATs let one through; symmetric NATs do not.
      if (through < carried(result) * 0.9) throw new Error(`nebula: only ${(through / 1e6).toFixed(0)} MB of ${(carried(result) / 1e6).toFixed(0)} MB went through its relay`);
      return { result, cpu, throughRelay: through };
    },
  };
}

async function inFleet<T>(c: FleetCase, body: (fleet: Fleet) => Promise<T>): Promise<T> {
  return Lab.withLab(
    async (lab) => {
      say(`building the fleet (${c})`);
      const fleet = await buildFleet(lab, { case: c, verbose: false, progress: (l) => say(`  ${l}`) });
      try {
        return await body(fleet);
      } finally {
        fleet.dispose();
      }
    },
    { label: `bench-relay-${c}` },
  );
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

let rsRss: number | null = null;
let nebulaRelayRss: number | null = null;
let nebulaNote: string | null = null;
/** The RS's drop counters that are not 0 at the end (quota, send failures, unknown SPI or source …). */
let rsDrops: Record<string, number> | null = null;
const paths: Path[] = [];

await inFleet('a-nat', (directFleet) =>
  inFleet('both-sym', async (relayFleet) => {
    paths.push(ntmobilePath('ntmobile_direct', 'ntmobile direct (a-nat)', directFleet, /^direct/, null));
    paths.push(ntmobilePath('ntmobile_relay', 'ntmobile relay (both-sym)', relayFleet, /^relay via /, relayFleet.rs1.host));
    let tunnel: PeerTunnel | null = null;
    if (missingPeers().some((m) => m.startsWith('nebula'))) {
      say('nebula is not installed: its row is skipped (scripts/setup.sh installs it)');
      nebulaNote = 'not installed';
    } else {
      say('nebula: on both routers of the both-sym fleet, its relay on another Internet host');
      const relay = await relayFleet.addInternetHost('nbrelay');
      tunnel = await nebulaRelayAt(
        {
          a: { ns: relayFleet.ra.host.ns, listen: '0.0.0.0', relay: relay.addr },
          b: { ns: relayFleet.rb.host.ns, listen: '0.0.0.0', relay: relay.addr },
          relay: { ns: relay.host.ns },
          hideLocalAddresses: true,
        },
        relayFleet.dir,
      );
      paths.push(nebulaPath(relayFleet, tunnel, relay.host));
    }
    try {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < paths.length; i++) {
          const p = paths[(r + i) % paths.length]!;
          say(`round ${r + 1}/${rounds}: ${p.what}, iperf3 for ${seconds + 1} s`);
          const s = await p.run();
          p.samples.push(s);
          const relayText = s.throughRelay === null ? '' : `; ${(s.throughRelay / 1e6).toFixed(0)} MB reached the relay`;
          say(`  ${Math.round(s.result.mbps)} Mbit/s, ${s.result.retransmits} retransmits${relayText}; CPU ${cpuText(s.cpu)}`);
        }
      }
      await new Promise((r) => setTimeout(r, 1200)); // the RS rewrites its status file every second
      const counters = (await relayFleet.rsStatus()).counters.relay;
      rsDrops = Object.fromEntries(Object.entries(counters).filter(([k, v]) => /drop/i.test(k) && v > 0));
      const rsPid = relayFleet.rs1.program.process.pid;
      rsRss = rsPid ? rssKb(rsPid).hwmKb : null;
      const nbPid = tunnel?.pids[2];
      nebulaRelayRss = nbPid ? rssKb(nbPid).hwmKb : null;
    } finally {
      await tunnel?.stop();
    }
  }),
);

const pathOf = (key: Path['key']): Path | undefined => paths.find((p) => p.key === key && p.samples.length > 0);
const mbps = (key: Path['key']): number | null => {
  const p = pathOf(key);
  return p ? Math.round(median(p.samples.map((s) => s.result.mbps))) : null;
};
const ratio = (a: number | null, b: number | null): number | null => (a !== null && b ? Number((a / b).toFixed(2)) : null);
/** The range of the per-round ratios a/b (each round's two figures were measured minutes apart at most). */
const roundRatios = (a: Path['key'], b: Path['key']): string => {
  const pa = pathOf(a);
  const pb = pathOf(b);
  if (!pa || !pb) return '';
  const rs = pa.samples.map((s, i) => s.result.mbps / (pb.samples[i]?.result.mbps ?? NaN)).filter(Number.isFinite);
  return rs.length > 1 ? ` (per round ${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)})` : '';
};
const cpuMedian = (p: Path): CpuUse => {
  const procs: Record<string, number | null> = {};
  for (const k of Object.keys(p.samples[0]!.cpu.procs)) {
    const v = p.samples.map((s) => s.cpu.procs[k]).filter((x): x is number => x !== null && x !== undefined);
    procs[k] = v.length ? Math.round(median(v)) : null;
  }
  return { procs, machine: Math.round(median(p.samples.map((s) => s.cpu.machine))) };
};
/** A daemon's CPU (% of one core) per 100 Mbit/s carried, median of the rounds: less sensitive to load than Mbit/s. */
const cpuPer100 = (key: Path['key'], proc: string): number | null => {
  const v = (pathOf(key)?.samples ?? []).map((s) => s.cpu.procs[proc]).map((c, i) => (c !== null && c !== undefined ? (c / pathOf(key)!.samples[i]!.result.mbps) * 100 : null));
  const ok = v.filter((x): x is number => x !== null && Number.isFinite(x));
  return ok.length ? Number(median(ok).toFixed(1)) : null;
};
const direct = mbps('ntmobile_direct');
const relayed = mbps('ntmobile_relay');
const nebula = mbps('nebula_relay');

const out = (l: string): void => void process.stdout.write(`${l}\n`);
out(`\nTCP throughput a1 → b2, one stream, ${seconds} s (first second omitted), fleet of lab/fleet.ts; median of ${rounds} round(s)`);
out(`${'path'.padEnd(26)} ${'Mbit/s'.padStart(7)} ${'range'.padStart(10)} ${'retrans'.padStart(8)}  note`);
for (const key of ['ntmobile_direct', 'ntmobile_relay', 'nebula_relay'] as const) {
  const p = pathOf(key);
  if (!p) {
    if (key === 'nebula_relay' && nebulaNote) out(`${'nebula relay (both-sym)'.padEnd(26)} ${'-'.padStart(7)} ${''.padStart(10)} ${'-'.padStart(8)}  ${nebulaNote}`);
    continue;
  }
  const m = p.samples.map((s) => s.result.mbps);
  const through = p.samples.map((s) => s.throughRelay).filter((x): x is number => x !== null);
  const note = `${p.note}${through.length ? `; ${(median(through) / 1e6).toFixed(0)} MB per run reached the relay host` : ''}`;
  out(
    `${p.what.padEnd(26)} ${String(mbps(key)).padStart(7)} ${`${Math.round(Math.min(...m))}–${Math.round(Math.max(...m))}`.padStart(10)} ${String(Math.round(median(p.samples.map((s) => s.result.retransmits)))).padStart(8)}  ${note}`,
  );
}
out(`\nCPU during the runs, median (% of one core; the machine's busy share of all its cores)`);
for (const p of paths) if (p.samples.length) out(`${p.what.padEnd(26)} ${cpuText(cpuMedian(p))}`);
out(`\nntmobile relay / direct: ${ratio(relayed, direct) ?? '-'}×${roundRatios('ntmobile_relay', 'ntmobile_direct')}`);
out(`ntmobile relay / nebula relay: ${ratio(relayed, nebula) ?? '-'}×${roundRatios('ntmobile_relay', 'nebula_relay')}`);
const rsPer100 = cpuPer100('ntmobile_relay', 'rs1');
const nbPer100 = cpuPer100('nebula_relay', 'relay');
out(`CPU of the relays per 100 Mbit/s carried: rs1 ${rsPer100 ?? '-'} %, nebula relay ${nbPer100 ?? '-'} % of one core (${ratio(nbPer100, rsPer100) ?? '-'}×)`);
out(`peak RSS of the relays: rs1 ${rsRss ?? '-'} kB, nebula relay ${nebulaRelayRss ?? '-'} kB`);
out(`rs1 dropped: ${rsDrops === null ? '-' : Object.keys(rsDrops).length === 0 ? 'nothing (every drop counter of the relay is 0)' : Object.entries(rsDrops).map(([k, v]) => `${k} ${v}`).join(', ')}`);
const cpuOf = (key: Path['key'], proc: string): number | null => {
  const p = pathOf(key);
  return p ? cpuMedian(p).procs[proc] ?? null : null;
};
const busy = (key: Path['key']): number | null => {
  const p = pathOf(key);
  return p ? cpuMedian(p).machine : null;
};
out(
  JSON.stringify({
    seconds,
    rounds,
    ntmobile_direct: direct,
    ntmobile_relay: relayed,
    nebula_relay: nebula,
    relay_over_direct: ratio(relayed, direct),
    ntmobile_over_nebula_relay: ratio(relayed, nebula),
    rs_rss_kb: rsRss,
    nebula_relay_rss_kb: nebulaRelayRss,
    rs_cpu_pct: cpuOf('ntmobile_relay', 'rs1'),
    nebula_relay_cpu_pct: cpuOf('nebula_relay', 'relay'),
    rs_cpu_pct_per_100mbit: rsPer100,
    nebula_relay_cpu_pct_per_100mbit: nbPer100,
    rs_drops: rsDrops,
    machine_busy_pct: { ntmobile_direct: busy('ntmobile_direct'), ntmobile_relay: busy('ntmobile_relay'), nebula_relay: busy('nebula_relay') },
    runs: Object.fromEntries(paths.filter((p) => p.samples.length).map((p) => [p.key, p.samples.map((s) => Math.round(s.result.mbps))])),
  }),
);
