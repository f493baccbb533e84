// `npm run bench:relay`: what the Relay Server costs, in the fleet of lab/fleet.ts. TCP throughput
// a1 → b2 (iperf3, one stream) over NTMobile's direct path (router A behind a NAT, 'a-nat') and
// through rs1.relay.test (both routers behind symmetric NATs, 'both-sym'), and nebula through a
// nebula relay placed the same way: nebula on the two routers of the 'both-sym' fleet and its
// relay (lighthouse, am_relay) on an Internet host beside rs1. Prints a table with the ratios, then
// one JSON line.
//
//   node dist/bench/relay.js [--seconds N]

import { parseArgs } from 'node:util';
import { buildFleet, LAN, NAMES, type Fleet, type FleetCase } from '../lab/fleet.js';
import { Lab, type Host } from '../lab/lab.js';
import { iperf3, rssKb, type Iperf3Result } from './measure.js';
import { missingPeers, nebulaRelayAt } from './peers.js';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '10' }, help: { type: 'boolean', short: 'h', default: false } },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/bench/relay.js [--seconds N]
TCP throughput a1 → b2 (iperf3, one stream, N seconds, default 10, first second omitted) in the
fleet of lab/fleet.ts, in one run:
  ntmobile direct   router A behind an EIM NAT, router B global ('a-nat'): the direct path
  ntmobile relay    both routers behind symmetric NATs ('both-sym'): through rs1.relay.test
  nebula relay      nebula on the same two routers, its relay on an Internet host beside rs1
                    (router to router: nebula has no LAN routing here, the LAN hop is not in it)
Prints a table with relay/direct and ntmobile relay/nebula relay, then one JSON line with the keys
ntmobile_direct, ntmobile_relay, nebula_relay (Mbit/s), relay_over_direct, ntmobile_over_nebula_relay,
rs_rss_kb, nebula_relay_rss_kb (peak RSS of the relay daemons), seconds.
Needs root, iperf3, and nebula for its row (scripts/setup.sh installs them).
`);
  process.exit(0);
}
const seconds = Number(values.seconds);
if (!Number.isFinite(seconds) || seconds < 1) {
  process.stderr.write(`bench:relay: --seconds ${values.seconds}: want a number ≥ 1\n`);
  process.exit(2);
}
const say = (l: string): void => void process.stderr.write(`bench:relay: ${l}\n`);

interface Row {
  key: string;
  what: string;
  result: Iperf3Result | null;
  note: string;
}
const rows: Row[] = [];
let rsRss: number | null = null;
let nebulaRelayRss: number | null = null;

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

/** iperf3 a1 → b2 by VIP (the server binds b2's LAN address); checks the route first. */
async function ntmobileRun(fleet: Fleet, want: RegExp): Promise<{ result: Iperf3Result; route: string }> {
  const vip = await tunnelToB2(fleet);
  const route = await routeToRb(fleet);
  if (!want.test(route)) throw new Error(`router A's route to router B is "${route}", want ${want}: the figure would measure another path`);
  const result = await iperf3(fleet.b2.ns, fleet.a1.ns, vip, seconds, { omit: 1, serverBind: LAN.b2 });
  return { result, route };
}

async function inFleet(c: FleetCase, body: (fleet: Fleet) => Promise<void>): Promise<void> {
  await Lab.withLab(
    async (lab) => {
      say(`building the fleet (${c})`);
      const fleet = await buildFleet(lab, { case: c, verbose: false, progress: (l) => say(`  ${l}`) });
      try {
        await body(fleet);
      } finally {
        fleet.dispose();
      }
    },
    { label: `bench-relay-${c}` },
  );
}

await inFleet('a-nat', async (fleet) => {
  say('ntmobile direct: iperf3 a1 → b2');
  const { result, route } = await ntmobileRun(fleet, /^direct/);
  rows.push({ key: 'ntmobile_direct', what: 'ntmobile direct (a-nat)', result, note: route });
});

await inFleet('both-sym', async (fleet) => {
  say('ntmobile relay: iperf3 a1 → b2');
  const before = await rxBytes(fleet.rs1.host, 'eth0');
  const { result, route } = await ntmobileRun(fleet, /^relay via /);
  const through = (await rxBytes(fleet.rs1.host, 'eth0')) - before;
  rsRss = fleet.rs1.program.process.pid ? rssKb(fleet.rs1.program.process.pid).hwmKb : null;
  rows.push({ key: 'ntmobile_relay', what: 'ntmobile relay (both-sym)', result, note: `${route}; ${(through / 1e6).toFixed(0)} MB reached the RS` });

  if (missingPeers().some((m) => m.startsWith('nebula'))) {
    say('nebula is not installed: its row is skipped (scripts/setup.sh installs it)');
    rows.push({ key: 'nebula_relay', what: 'nebula relay (both-sym)', result: null, note: 'not installed' });
    return;
  }
  say('nebula relay: nebula on both routers, its relay on an Internet host; iperf3 router A → router B');
  const relay = await fleet.addInternetHost('nbrelay');
  const tunnel = await nebulaRelayAt(
    {
      a: { ns: fleet.ra.host.ns, listen: '0.0.0.0', relay: relay.addr },
      b: { ns: fleet.rb.host.ns, listen: '0.0.0.0', relay: relay.addr },
      relay: { ns: relay.host.ns },
      hideLocalAddresses: true,
    },
    fleet.dir,
  );
  try {
    const nbBefore = await rxBytes(relay.host, 'eth0');
    const result = await iperf3(fleet.rb.host.ns, fleet.ra.host.ns, tunnel.innerB, seconds, { omit: 1 });
    const nbThrough = (await rxBytes(relay.host, 'eth0')) - nbBefore;
    // Nebula would take a direct path if the NATs let one through; symmetric NATs do not.
    const carried = (result.mbps * 1e6 * seconds) / 8;
    if (nbThrough < carried * 0.9) throw new Error(`nebula: only ${(nbThrough / 1e6).toFixed(0)} MB of ${(carried / 1e6).toFixed(0)} MB went through its relay`);
    nebulaRelayRss = tunnel.pids[2] ? rssKb(tunnel.pids[2]).hwmKb : null;
    rows.push({ key: 'nebula_relay', what: 'nebula relay (both-sym)', result, note: `router to router; ${(nbThrough / 1e6).toFixed(0)} MB reached the relay` });
  } finally {
    await tunnel.stop();
  }
});

const mbps = (key: string): number | null => {
  const r = rows.find((x) => x.key === key)?.result;
  return r ? Math.round(r.mbps) : null;
};
const ratio = (a: number | null, b: number | null): number | null => (a !== null && b ? Number((a / b).toFixed(2)) : null);
const direct = mbps('ntmobile_direct');
const relayed = mbps('ntmobile_relay');
const nebula = mbps('nebula_relay');

process.stdout.write(`\nTCP throughput a1 → b2, one stream, ${seconds} s (first second omitted), fleet of lab/fleet.ts\n`);
process.stdout.write(`${'path'.padEnd(26)} ${'Mbit/s'.padStart(8)} ${'retrans'.padStart(8)}  note\n`);
for (const r of rows) {
  process.stdout.write(`${r.what.padEnd(26)} ${(r.result ? String(Math.round(r.result.mbps)) : '-').padStart(8)} ${(r.result ? String(r.result.retransmits) : '-').padStart(8)}  ${r.note}\n`);
}
process.stdout.write(`\nntmobile relay / direct: ${ratio(relayed, direct) ?? '-'}×   ntmobile relay / nebula relay: ${ratio(relayed, nebula) ?? '-'}×\n`);
process.stdout.write(`peak RSS of the relays: rs1 ${rsRss ?? '-'} kB, nebula relay ${nebulaRelayRss ?? '-'} kB\n`);
process.stdout.write(
  `${JSON.stringify({
    seconds,
    ntmobile_direct: direct,
    ntmobile_relay: relayed,
    nebula_relay: nebula,
    relay_over_direct: ratio(relayed, direct),
    ntmobile_over_nebula_relay: ratio(relayed, nebula),
    rs_rss_kb: rsRss,
    nebula_relay_rss_kb: nebulaRelayRss,
  })}\n`,
);
