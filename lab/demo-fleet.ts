// The README's main command, part 1: NTMobile's control plane in network namespaces. An AS, two
// DCs (fleet1.test, fleet2.test), router A behind a NAT with LAN host a1, router B with LAN hosts
// b1 and b2 (b2 published as b2.rb.fleet2.test). a1 runs nothing but curl: it asks its LAN's DNS
// for b2's name, router A's DNS hook has the DCs direct a tunnel, and the file comes through it.
//
//   node dist/lab/demo-fleet.js [--case no-nat|a-nat|b-nat|same-nat] [--keep] [--help]

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildFleet, FLEET_CASES, LAN, NAMES, type FleetCase } from './fleet.js';
import { Lab } from './lab.js';

const { values } = parseArgs({
  options: { case: { type: 'string', default: 'a-nat' }, keep: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/lab/demo-fleet.js [--case ${FLEET_CASES.join('|')}] [--keep]
Builds AS, two DCs, a resolver and two routers with LANs in network namespaces; a LAN host behind
router A fetches a file by name from a published host behind router B; prints a report.
`);
  process.exit(0);
}
if (!FLEET_CASES.includes(values.case as FleetCase)) {
  process.stderr.write(`demo-fleet: --case ${values.case}: want one of ${FLEET_CASES.join(', ')}\n`);
  process.exit(2);
}

const report: string[] = [];
let failures = 0;
const say = (l: string): void => void process.stdout.write(`${l}\n`);
const check = (ok: boolean, what: string): void => {
  if (!ok) failures++;
  say(`      ${ok ? 'ok  ' : 'FAIL'} ${what}`);
  report.push(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
};

await Lab.withLab(
  async (lab) => {
    say(`\nNTMobile control plane (${values.case}): lab ${lab.id}`);
    const t0 = Date.now();
    const fleet = await buildFleet(lab, { case: values.case as FleetCase, progress: (l) => say(`  ${l}`) });
    try {
      const st = async (r: typeof fleet.ra): Promise<{ registered: { name: string; vip4: string; vip6: string; observed: { address: string; port: number } }[] }> =>
        (await r.api('status')) as { registered: { name: string; vip4: string; vip6: string; observed: { address: string; port: number } }[] };
      for (const r of [fleet.ra, fleet.rb]) {
        for (const g of (await st(r)).registered) say(`  registered ${g.name}: VIP ${g.vip4}, ${g.vip6}; the DC sees it at ${g.observed.address}:${g.observed.port}`);
      }
      say(`  set up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

      const root = path.join(fleet.dir, 'www');
      mkdirSync(root, { recursive: true });
      const data = randomBytes(20 * 1024 * 1024);
      writeFileSync(path.join(root, 'f'), data);
      fleet.b2.spawn('python3', ['-m', 'http.server', '--bind', LAN.b2, '8080', '--directory', root], { log: 'http' });
      for (let i = 0; i < 50; i++) {
        if ((await fleet.b2.exec('curl', ['-s', '-o', '/dev/null', `http://${LAN.b2}:8080/`], { allowFail: true })).code === 0) break;
        await new Promise((r) => setTimeout(r, 100));
      }

      say(`\n  a1$ curl http://${NAMES.b2}:8080/f   (20 MB; a1 runs nothing else)`);
      const out = path.join(fleet.dir, 'got');
      const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code} %{time_namelookup} %{time_starttransfer} %{time_total} %{speed_download}', `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 90_000 });
      const [code, lookup, first, total, speed] = r.stdout.split(' ');
      check(r.code === 0 && code === '200', `HTTP ${code ?? '-'}${r.stderr ? ` (${r.stderr.trim()})` : ''}`);
      check(
        createHash('sha256').update(readFileSync(out)).digest('hex') === createHash('sha256').update(data).digest('hex'),
        `20 MB arrived with a matching SHA-256 in ${Number(total).toFixed(2)} s (${((Number(speed) * 8) / 1e6).toFixed(0)} Mbit/s)`,
      );
      say(`      name resolved (tunnel ready) after ${(Number(lookup) * 1000).toFixed(0)} ms, first byte after ${(Number(first) * 1000).toFixed(0)} ms`);
      const httpLog = readFileSync(path.join(lab.logDir, 'b2-http.log'), 'utf8');
      const seen = /^(\S+) - - .*GET \/f/m.exec(httpLog)?.[1];
      const raVip = (await st(fleet.ra)).registered[0]!.vip4;
      check(seen === raVip, `b2 saw the request from router A's VIP ${seen ?? '-'} (a1 is ${LAN.a1} on its LAN)`);
      const dcLine = /route \d+ [^\n]*/.exec(fleet.dc1.program.log())?.[0];
      say(`      DC1: ${dcLine ?? '-'}`);

      say('\n  ra$ ntmobile peers');
      const peers = await fleet.ra.host.exec(process.execPath, [path.join(path.dirname(new URL(import.meta.url).pathname), '../router/cli.js'), 'peers', '--socket', fleet.ra.socket]);
      say(peers.stdout.replace(/^/gm, '      ').trimEnd());

      say(`\n  a1$ curl http://b1.${NAMES.rb}:8080/   (b1 is not published)`);
      const b1 = await fleet.a1.exec('curl', ['-sS', '--max-time', '5', `http://b1.${NAMES.rb}:8080/`], { allowFail: true });
      check(b1.code !== 0, `b1 is not reachable from A's side (${b1.stderr.trim()})`);
      if (values.keep) {
        lab.keepAfterExit();
        say(`\nThe namespaces stay up (--keep): node dist/lab/cli.js down ${lab.id}; files in ${fleet.dir}`);
      }
    } finally {
      if (!values.keep) fleet.dispose();
    }
  },
  { label: 'demo-fleet' },
);

say(`\nReport (control plane)\n${report.map((l) => `  ${l}`).join('\n')}`);
say(failures === 0 ? '\nAll checks passed.' : `\n${failures} check(s) FAILED.`);
process.exitCode = failures === 0 ? 0 : 1;
