// npm run bench:throughput — TCP throughput through each tunnel between two namespaces over one
// veth link, measured in one run: plain veth (the ceiling), our engine with each suite,
// wireguard-go, nebula and openvpn. Prints a table, then one JSON line.
//
//   node dist/bench/throughput.js [--seconds N] [--only name,name] [--profile] [--node-flags="…"]

import path from 'node:path';
import { parseArgs } from 'node:util';
import { Lab } from '../lab/lab.js';
import { twoHosts } from '../lab/topology.js';
import { iperf3, rssKb } from './measure.js';
import { missingPeers, nebula, openvpn, plainVeth, wireguardGo, type PeerSetup } from './peers.js';
import { ntmobile } from './ntmobile-peer.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    only: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'node-flags': { type: 'string', default: '' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/bench/throughput.js [--seconds N] [--only veth,ntmobile_chacha,...] [--profile] [--node-flags="…"]
Runs iperf3 (TCP, one stream, N seconds, default 10) through each tunnel between two namespaces.
--node-flags runs our daemons with these node flags (e.g. a router's NODE_FLAGS, bench/memory.ts).
--profile writes V8 CPU profiles of our daemons (*.cpuprofile) into ./bench-profiles/
  (read them with: node dist/bench/profile-summary.js FILE).
Keys of the JSON line: veth, ntmobile_chacha, ntmobile_aesgcm, wireguard_go, nebula, openvpn (Mbit/s),
ntmobile_rss_kb, wireguard_go_rss_kb (peak RSS of the sending side's daemon).
`);
  process.exit(0);
}
const seconds = Number(values.seconds);
if (!Number.isFinite(seconds) || seconds < 1) {
  process.stderr.write(`throughput: --seconds ${values.seconds}: want a number ≥ 1\n`);
  process.exit(2);
}
const profileDir = path.resolve('bench-profiles');
const daemonArgs = [...(values.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), ...values['node-flags'].split(/\s+/).filter(Boolean)];

const runs: [string, PeerSetup, string][] = [
  ['veth', plainVeth, ''],
  ['ntmobile_chacha', ntmobile('chacha20-poly1305', daemonArgs), ''],
  ['ntmobile_aesgcm', ntmobile('aes-gcm', daemonArgs), ''],
  ['wireguard_go', wireguardGo, 'wireguard-go'],
  ['nebula', nebula, 'nebula'],
  ['openvpn', openvpn, 'openvpn'],
];
const only = values.only?.split(',');
const missing = missingPeers();
if (missing.length) process.stderr.write(`throughput: not installed, their runs are skipped: ${missing.join(', ')} (scripts/setup.sh installs them)\n`);

const result: Record<string, number | null> = {};
const rows: string[] = [];
await Lab.withLab(
  async (lab) => {
    const net = await twoHosts(lab, { names: ['bench-a', 'bench-b'] });
    const ns = { a: net.a.ns, b: net.b.ns, underlayA: net.aAddr, underlayB: net.bAddr, workDir: lab.logDir };
    for (const [key, setup, binary] of runs) {
      if (only && !only.includes(key)) continue;
      if (binary && missing.some((m) => m.startsWith(binary))) {
        result[key] = null;
        rows.push(`${key.padEnd(18)} ${'not installed'.padStart(10)}`);
        continue;
      }
      process.stderr.write(`throughput: ${key} …\n`);
      const tunnel = await setup(ns);
      try {
        const r = await iperf3(ns.b, ns.a, tunnel.innerB, seconds, { omit: 1 });
        result[key] = Math.round(r.mbps);
        const rss = tunnel.pids[0] ? rssKb(tunnel.pids[0]).hwmKb : null;
        if (key === 'ntmobile_chacha' || key === 'ntmobile_aesgcm') result.ntmobile_rss_kb = Math.max(result.ntmobile_rss_kb ?? 0, rss ?? 0);
        if (key === 'wireguard_go') result.wireguard_go_rss_kb = rss;
        rows.push(`${key.padEnd(18)} ${String(Math.round(r.mbps)).padStart(10)} ${String(r.retransmits).padStart(8)} ${rss === null ? '' : String(rss).padStart(10)}`);
      } finally {
        await tunnel.stop();
      }
    }
  },
  { label: 'bench-throughput' },
);

const veth = result.veth ?? null;
const wg = result.wireguard_go ?? null;
process.stdout.write(`\nTCP throughput, one stream, ${seconds} s, two namespaces over one veth link\n`);
process.stdout.write(`${'tunnel'.padEnd(18)} ${'Mbit/s'.padStart(10)} ${'retrans'.padStart(8)} ${'peak RSS kB'.padStart(10)}\n`);
for (const r of rows) process.stdout.write(`${r}\n`);
const best = Math.max(result.ntmobile_chacha ?? 0, result.ntmobile_aesgcm ?? 0);
if (wg) process.stdout.write(`\nntmobile best / wireguard-go: ${(best / wg).toFixed(2)}×`);
if (veth) process.stdout.write(`   ntmobile best / veth: ${(best / veth).toFixed(3)}×`);
process.stdout.write('\n');
if (values.profile) process.stdout.write(`CPU profiles of the daemons: ${profileDir}\n`);
process.stdout.write(
  `${JSON.stringify({
    veth,
    ntmobile_chacha: result.ntmobile_chacha ?? null,
    ntmobile_aesgcm: result.ntmobile_aesgcm ?? null,
    wireguard_go: wg,
    nebula: result.nebula ?? null,
    openvpn: result.openvpn ?? null,
    ntmobile_rss_kb: result.ntmobile_rss_kb ?? null,
    wireguard_go_rss_kb: result.wireguard_go_rss_kb ?? null,
  })}\n`,
);
