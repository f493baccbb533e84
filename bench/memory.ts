// `npm run bench:memory`: what the router daemon costs in memory on a router, where it has 128 to
// 256 MB. Peak RSS (VmHWM) of the real daemon (`ntmobile router`, router A of lab/fleet.ts) in
// three states, against a bare node process started with the same node flags, all in one run:
//   baseline  `node <flags> -e '<keep alive>'`
//   idle      the daemon logged in and registered, no tunnel
//   tunnels   the daemon with N tunnels to N distinct peers (default 100): router B and a swarm of
//             N - 1 nodes (lab/swarm.ts: real protocol peers with their own accounts, keys and
//             ports, registered at DC2); LAN host a1 resolves each peer's name through the
//             router's DNS, so every tunnel is set up by the real protocol (Direction Request,
//             Route Direction, Tunnel Request)
//   load      the same N tunnels and iperf3 from a1 to b2 (behind router B) through one of them
// The daemon is the router's: the OpenWrt package's app tree, staged here as openwrt/build-ipk.ts
// stages it (the bundle, with the addon built for this host), and the node flags are the NODE_FLAGS="…"
// line of the procd init script, so that the benchmark measures what the router runs.
// `--from dist` runs dist/router/cli.js (the modules tsc wrote) instead.
//
//   node dist/bench/memory.js [--peers 100] [--seconds 15] [--node-flags="…"] [--from package|dist]

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildFleet, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { Lab } from '../lab/lab.js';
import { startSwarm } from '../lab/swarm.js';
import { iperf3, rssKb, sleep } from './measure.js';
import { stageApp } from '../openwrt/build-ipk.js';
import { ADDON_PATH } from '../netlink/native.js';

/** The procd init script whose NODE_FLAGS line the router daemon runs with. */
export const INIT_SCRIPT = fileURLToPath(new URL('../../openwrt/net/ntmobile/files/ntmobile.init', import.meta.url));

/** Seconds a state is left to settle (timers, GC) before its peak is read. */
const SETTLE_MS = 3000;

const USAGE = `Usage: node dist/bench/memory.js [--peers N] [--seconds S] [--node-flags="FLAGS"] [--from package|dist]

Peak RSS (VmHWM) of the router daemon in one run, in network namespaces it creates and removes:
a bare node with the same flags (baseline), the daemon logged in and registered (idle), with N
tunnels to N distinct peers (tunnels), and with iperf3 through one of them for S seconds (load).
The node flags come from the NODE_FLAGS="…" line of openwrt/net/ntmobile/files/ntmobile.init,
the router's procd init script, and the daemon is the one the OpenWrt package installs (the
bundle openwrt/build-ipk.ts stages, with this host's addon), so that the benchmark measures what
the router runs.

  --peers N           tunnels (default 100: router B and a swarm of N - 1 nodes)
  --seconds S         iperf3 under load (default 15)
  --node-flags="F"    run with these flags instead (experiments; the JSON says which were used)
  --from package|dist the package's bundle (default), or dist/router/cli.js as tsc wrote it

Takes about 2 minutes with the defaults (fleet 30 s, swarm logins 15 s, tunnels 10 s, load S s).
Progress on stderr, the table and one JSON line on stdout.
`;

const { values } = parseArgs({
  options: {
    peers: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '15' },
    'node-flags': { type: 'string' },
    from: { type: 'string', default: 'package' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const peers = Number(values.peers);
const seconds = Number(values.seconds);
if (!Number.isInteger(peers) || peers < 1 || peers > 1000) {
  process.stderr.write(`bench:memory: --peers ${values.peers}: want 1..1000\n`);
  process.exit(2);
}
if (!Number.isInteger(seconds) || seconds < 2 || seconds > 600) {
  process.stderr.write(`bench:memory: --seconds ${values.seconds}: want 2..600\n`);
  process.exit(2);
}
const from = values.from;
if (from !== 'package' && from !== 'dist') {
  process.stderr.write(`bench:memory: --from ${from}: want package or dist\n`);
  process.exit(2);
}

/** The router's node flags and where they came from. */
function routerNodeFlags(): { flags: string[]; source: string } {
  if (values['node-flags'] !== undefined) return { flags: splitFlags(values['node-flags']), source: '--node-flags' };
  const m = /^\s*NODE_FLAGS="([^"]*)"/m.exec(readFileSync(INIT_SCRIPT, 'utf8'));
  if (m === null) throw new Error(`${INIT_SCRIPT}: no NODE_FLAGS="…" line`);
  return { flags: splitFlags(m[1]!), source: 'openwrt/net/ntmobile/files/ntmobile.init' };
}

function splitFlags(s: string): string[] {
  return s.split(/\s+/).filter(Boolean);
}

const say = (line: string): void => void process.stderr.write(`bench:memory: ${line}\n`);

/** a1 resolves every name through router A's DNS (the DNS hook sets up each tunnel); the names that failed. */
async function resolveAll(fleet: Fleet, names: string[]): Promise<string[]> {
  // Four at a time: a router's LAN asks for names in parallel too, and 100 one by one take long.
  const script = 'for n in "$@"; do echo "$n"; done | xargs -P 4 -n 1 sh -c \'getent ahostsv4 "$0" >/dev/null || echo "FAILED $0"\'';
  const r = await fleet.a1.exec('sh', ['-c', script, 'resolve', ...names], { allowFail: true, timeoutMs: 30_000 + names.length * 1000 });
  return [...r.stdout.matchAll(/^FAILED (\S+)$/gm)].map((m) => m[1]!);
}

async function tunnelCount(fleet: Fleet): Promise<number> {
  return ((await fleet.ra.api('peers')) as unknown[]).length;
}

interface State {
  key: 'baseline' | 'idle' | 'tunnels' | 'load';
  what: string;
  hwmKb: number;
  rssKb: number;
  anonKb: number;
}

const { flags, source } = routerNodeFlags();
say(`node flags: ${flags.join(' ') || '(none)'} (from ${source})`);

/** The package's app tree, staged as the .ipk's (with the host's addon): its entry point. */
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const stageDir = from === 'package' ? mkdtempSync(path.join(os.tmpdir(), 'ntm-bench-memory-')) : null;
let cli: string | undefined;
if (stageDir !== null) {
  const stage = await stageApp(REPO, stageDir, ADDON_PATH);
  cli = path.join(stageDir, stage.bundle[0]!);
  say(`daemon: the package's bundle (${stage.bundle.join(', ')}) staged in ${stageDir}`);
} else {
  say('daemon: dist/router/cli.js');
}

/** Builds the fleet (kept in `built`, whose files go after the lab), then measures each state. */
async function measure(lab: Lab): Promise<void> {
  say('building the fleet (AS, two DCs, RS, routers A and B with their LANs; no NAT)');
  const fleet = await buildFleet(lab, {
    case: 'no-nat',
    verbose: false,
    raNodeFlags: flags,
    ...(cli !== undefined ? { raCli: cli } : {}),
    // The swarm's nodes all log in from one address.
    asLimits: { sourceRequests: 10 * peers },
  });
  built = fleet;
  const states: State[] = [];
  const daemon = fleet.ra.program.process.pid!;
  const read = (key: State['key'], what: string, pid: number): State => {
    const m = rssKb(pid);
    const s = { key, what, hwmKb: m.hwmKb, rssKb: m.rssKb, anonKb: m.anonKb };
    states.push(s);
    say(`${key}: peak RSS ${m.hwmKb} kB (now ${m.rssKb} kB, ${m.anonKb} kB of it anonymous)`);
    return s;
  };

  const bare = fleet.ra.host.spawn(process.execPath, [...flags, '-e', 'setInterval(() => {}, 1 << 30)'], { log: 'baseline' });
  await sleep(SETTLE_MS);
  read('baseline', 'bare node, same flags', bare.pid!);

  say('idle: router A logged in and registered, no tunnel');
  await sleep(SETTLE_MS);
  if ((await tunnelCount(fleet)) !== 0) throw new Error('idle: router A already has tunnels');
  read('idle', 'registered, no tunnel', daemon);

  say(`tunnels: a swarm of ${peers - 1} nodes on the Internet (accounts, logins, registrations at DC2)`);
  const swarm = peers > 1 ? await startSwarm(lab, fleet, { count: peers - 1 }) : null;
  const names = [NAMES.b2, ...(swarm?.names ?? [])];
  say(`tunnels: a1 resolves ${names.length} names through router A (one tunnel each)`);
  const t0 = Date.now();
  let failed = await resolveAll(fleet, names);
  // A name whose answer missed the DNS hook's deadline (a busy machine) is asked again, as a LAN host would.
  if (failed.length > 0) failed = await resolveAll(fleet, failed);
  if (failed.length > 0) throw new Error(`tunnels: a1 could not resolve ${failed.length} names: ${failed.slice(0, 5).join(', ')}…`);
  const count = await tunnelCount(fleet);
  if (count !== peers) throw new Error(`tunnels: router A has ${count} tunnels, want ${peers}`);
  say(`tunnels: ${count} up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await sleep(SETTLE_MS);
  read('tunnels', `${peers} tunnels, idle`, daemon);

  say(`load: iperf3 a1 → b2 through router A's tunnel to router B, ${seconds} s`);
  const vip = (await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2])).stdout.split(/\s+/)[0]!;
  const result = await iperf3(fleet.b2.ns, fleet.a1.ns, vip, seconds, { omit: 1, serverBind: LAN.b2 });
  if ((await tunnelCount(fleet)) !== peers) throw new Error(`load: router A no longer has ${peers} tunnels`);
  read('load', `${peers} tunnels, iperf3 ${result.mbps.toFixed(0)} Mbit/s`, daemon);

  const base = states[0]!.hwmKb;
  process.stdout.write(`\nRouter daemon (${from === 'package' ? "the package's bundle" : 'dist/'}) peak RSS (VmHWM), node ${process.version}, flags: ${flags.join(' ') || '(none)'}\n`);
  process.stdout.write(`${'state'.padEnd(10)}${'what'.padEnd(34)}${'peak kB'.padStart(9)}${'over baseline kB'.padStart(18)}${'now kB'.padStart(9)}${'anon kB'.padStart(9)}\n`);
  for (const s of states) {
    process.stdout.write(`${s.key.padEnd(10)}${s.what.padEnd(34)}${String(s.hwmKb).padStart(9)}${(s.key === 'baseline' ? '' : String(s.hwmKb - base)).padStart(18)}${String(s.rssKb).padStart(9)}${String(s.anonKb).padStart(9)}\n`);
  }
  const json: Record<string, unknown> = { from, peers, seconds, node_flags: flags.join(' '), node_flags_source: source, node: process.version };
  for (const s of states) json[`${s.key}_rss_kb`] = s.hwmKb;
  for (const s of states.slice(1)) json[`${s.key}_over_baseline_kb`] = s.hwmKb - base;
  // What the daemon holds when the state is read (VmRSS), beside its peak.
  for (const s of states) json[`${s.key}_now_kb`] = s.rssKb;
  // Of that, the anonymous pages (heaps, stacks): the rest are pages of node's binary and libraries,
  // clean, which the kernel can drop under pressure and read again.
  for (const s of states) json[`${s.key}_anon_kb`] = s.anonKb;
  json['load_mbps'] = Number(result.mbps.toFixed(0));
  process.stdout.write(`${JSON.stringify(json)}\n`);
}

// The fleet's files go once the lab has stopped its programs: the DCs write theirs up to the end.
let built = null as Fleet | null;
try {
  await Lab.withLab(measure, { label: 'bench-memory' });
} finally {
  built?.dispose();
  if (stageDir !== null) rmSync(stageDir, { recursive: true, force: true });
}
