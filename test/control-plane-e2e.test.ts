// End to end, in namespaces (issue: control plane): the fleet of lab/fleet.ts, once per route
// case. a1 fetches a 20 MB file by HTTP from b2 by name (curl through the LAN's dnsmasq, the
// router's DNS hook, the DCs' direction and the tunnel), checksum matching; b1 is unreachable
// from A's side; b2 sees a1 only as router A's VIP.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { Lab } from '../lab/lab.js';
import { buildFleet, FLEET_CASES, LAN, NAMES, type Fleet } from '../lab/fleet.js';

const SIZE = 20 * 1024 * 1024;

async function serveFile(fleet: Fleet, lab: Lab): Promise<string> {
  const root = path.join(fleet.dir, 'www');
  mkdirSync(root, { recursive: true });
  const data = randomBytes(SIZE);
  writeFileSync(path.join(root, 'f'), data);
  const server = fleet.b2.spawn('python3', ['-m', 'http.server', '--bind', LAN.b2, '8080', '--directory', root], { log: 'http' });
  for (let i = 0; i < 50; i++) {
    const r = await fleet.b2.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://${LAN.b2}:8080/f`], { allowFail: true });
    if (r.stdout === '200') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  void server;
  void lab;
  return createHash('sha256').update(data).digest('hex');
}

const only = process.env.NTM_CASE;
for (const c of FLEET_CASES.filter((x) => !only || x === only)) {
  t.test(`a1 fetches 20 MB from b2 by name (${c})`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: c });
        t.teardown(() => fleet.dispose());
        const want = await serveFile(fleet, lab);
        const out = path.join(fleet.dir, 'got');
        const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code} %{time_namelookup} %{time_starttransfer}', `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 90_000 });
        t.equal(r.code, 0, `curl exit 0 (${r.stderr.trim()})`);
        t.match(r.stdout, /^200 /, 'HTTP 200');
        const got = createHash('sha256').update(readFileSync(out)).digest('hex');
        t.equal(got, want, 'SHA-256 of the 20 MB matches');
        const log = readFileSync(path.join(lab.logDir, 'b2-http.log'), 'utf8');
        t.match(log, /^10\.77\.\d+\.\d+ - - .*"GET \/f HTTP/m, 'b2 saw the request from a VIP of fleet1.test (router A), not from a1');
        t.notMatch(log, new RegExp(LAN.a1.replace(/\./g, '\\.')), 'b2 never saw a1\'s LAN address');
      },
      { label: `cp-${c}` },
    );
  });
}
