// `npm run bench:setup`: how long NTMobile takes to open a session by name. In the fleet of
// lab/fleet.ts (router A behind a NAT by default), LAN host a1 runs curl for b2.rb.fleet2.test;
// curl's own timers give the DNS answer (= tunnel ready: the DNS hook answers only then) and the
// first byte of the HTTP reply. Router A is restarted before every run, so each is a cold start
// for the router (new login, no tunnel, empty caches); the servers stay up, as they would.
// Round trips: control messages each party sent during the DNS step (each request and each answer
// counted once, halved), and the HTTP step in RTTs of a ping over the tunnel.
//
//   node dist/bench/setup.js [--runs 20] [--case a-nat] [--json-only]

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildFleet, FLEET_CASES, LAN, NAMES, type Fleet, type FleetCase } from '../lab/fleet.js';
import { Lab } from '../lab/lab.js';

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '20' }, case: { type: 'string', default: 'a-nat' }, 'json-only': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/bench/setup.js [--runs N] [--case ${FLEET_CASES.join('|')}] [--json-only]\n`);
  process.exit(0);
}
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1 || runs > 200) {
  process.stderr.write('bench:setup: --runs must be 1..200\n');
  process.exit(2);
}
if (!FLEET_CASES.includes(values.case as FleetCase)) {
  process.stderr.write(`bench:setup: --case ${values.case}: want one of ${FLEET_CASES.join(', ')}\n`);
  process.exit(2);
}
const log = (l: string): void => {
  if (!values['json-only']) process.stderr.write(`${l}\n`);
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

type Counters = Record<string, number>;
async function controlMessages(fleet: Fleet): Promise<number> {
  const ra = (await fleet.ra.api('status')) as { counters: { channel: Counters } };
  const rb = (await fleet.rb.api('status')) as { counters: { channel: Counters } };
  const dc1 = await fleet.dcStatus('dc1');
  const dc2 = await fleet.dcStatus('dc2');
  return [ra.counters.channel, rb.counters.channel, dc1.channel, dc2.channel].reduce((n, c) => n + (c.sent ?? 0) - (c.retransmits ?? 0), 0);
}

await Lab.withLab(
  async (lab) => {
    log(`bench:setup: building the fleet (${values.case})`);
    const fleet = await buildFleet(lab, { case: values.case as FleetCase, verbose: false });
    try {
      const root = path.join(fleet.dir, 'www');
      mkdirSync(root, { recursive: true });
      writeFileSync(path.join(root, 'hello'), 'hello\n');
      fleet.b2.spawn('python3', ['-m', 'http.server', '--bind', LAN.b2, '8080', '--directory', root], { log: 'http' });
      for (let i = 0; i < 50 && (await fleet.b2.exec('curl', ['-s', '-o', '/dev/null', `http://${LAN.b2}:8080/hello`], { allowFail: true })).code !== 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const dns: number[] = [];
      const first: number[] = [];
      const dnsTrips: number[] = [];
      const httpTrips: number[] = [];
      for (let i = 0; i < runs; i++) {
        await fleet.restartRouter('ra');
        // The DC status files are written once a second: wait for a fresh pair before counting.
        await new Promise((r) => setTimeout(r, 1100));
        const before = await controlMessages(fleet);
        const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{time_namelookup} %{time_starttransfer}', `http://${NAMES.b2}:8080/hello`], { allowFail: true });
        if (r.code !== 0) throw new Error(`run ${i + 1}: curl failed: ${r.stderr.trim()}`);
        const [lookup, start] = r.stdout.split(' ').map((x) => Number(x) * 1000) as [number, number];
        await new Promise((r) => setTimeout(r, 1100));
        const messages = (await controlMessages(fleet)) - before;
        const p = await fleet.a1.exec('ping', ['-n', '-q', '-c', '5', '-i', '0.05', NAMES.b2], { allowFail: true });
        const rtt = Number(/= [\d.]+\/([\d.]+)\//.exec(p.stdout)?.[1] ?? NaN);
        dns.push(lookup);
        first.push(start);
        dnsTrips.push(messages / 2);
        httpTrips.push((start - lookup) / rtt);
        log(`  run ${String(i + 1).padStart(2)}: DNS answer ${lookup.toFixed(1)} ms (${messages} control messages), first byte ${start.toFixed(1)} ms, RTT ${rtt.toFixed(2)} ms`);
      }
      const result = {
        case: values.case,
        runs,
        dns_answer_ms: Number(median(dns).toFixed(1)),
        first_byte_ms: Number(median(first).toFixed(1)),
        dns_round_trips: median(dnsTrips),
        http_round_trips: Number(median(httpTrips).toFixed(1)),
        first_run: { dns_answer_ms: Number(dns[0]!.toFixed(1)), first_byte_ms: Number(first[0]!.toFixed(1)) },
      };
      log(`median of ${runs}: DNS answer (tunnel ready) ${result.dns_answer_ms} ms after ${result.dns_round_trips} round trips of control messages; first HTTP byte ${result.first_byte_ms} ms (${result.http_round_trips} RTTs after the answer)`);
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } finally {
      fleet.dispose();
    }
  },
  { label: 'bench-setup' },
);
