// End to end, in namespaces (issue: control plane): the fleet of lab/fleet.ts, once per route
// case. a1 fetches a 20 MB file by HTTP from b2 by name (curl through the LAN's dnsmasq, the
// router's DNS hook, the DCs' direction and the tunnel), checksum matching; b1 is unreachable
// from A's side; b2 sees a1 only as router A's VIP.
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { serveRandomFile } from '../lab/http.js';
import { Lab } from '../lab/lab.js';
import { buildFleet, FLEET_CASES, LAN, NAMES, type Fleet } from '../lab/fleet.js';

const SIZE = 20 * 1024 * 1024;

/** A 20 MB file served on b2:8080 as /f; its SHA-256. */
async function serveFile(fleet: Fleet): Promise<string> {
  return createHash('sha256').update(await serveRandomFile(fleet.b2, { dir: fleet.dir, bind: LAN.b2, size: SIZE })).digest('hex');
}

/** How DC1 (DCmn) must direct each case, and where router A must find router B. */
const EXPECT: Record<string, { route: RegExp; path: (f: Fleet) => string }> = {
  'no-nat': { route: /: no-nat, mn initiates/, path: (f) => f.uplinks.rb },
  'a-nat': { route: /: mn-behind-nat, mn initiates/, path: (f) => f.uplinks.rb },
  'b-nat': { route: /: cn-behind-nat, cn initiates/, path: () => '198.18.2.2' },
  'same-nat': { route: /: same-nat, mn initiates/, path: (f) => f.uplinks.rb },
};

const only = process.env.NTM_CASE;
for (const c of FLEET_CASES.filter((x) => !only || x === only)) {
  t.test(`a1 fetches 20 MB from b2 by name (${c})`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: c });
        t.teardown(() => fleet.dispose());
        const want = await serveFile(fleet);
        const out = path.join(fleet.dir, 'got');
        const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code} %{time_namelookup} %{time_starttransfer}', `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 90_000 });
        t.equal(r.code, 0, `curl exit 0 (${r.stderr.trim()})`);
        t.match(r.stdout, /^200 /, 'HTTP 200');
        const got = createHash('sha256').update(readFileSync(out)).digest('hex');
        t.equal(got, want, 'SHA-256 of the 20 MB matches');
        const log = readFileSync(path.join(lab.logDir, 'b2-http.log'), 'utf8');
        t.match(log, /^10\.77\.\d+\.\d+ - - .*"GET \/f HTTP/m, 'b2 saw the request from a VIP of fleet1.test (router A), not from a1');
        t.notMatch(log, new RegExp(LAN.a1.replace(/\./g, '\\.')), 'b2 never saw a1\'s LAN address');

        const dcLog = fleet.dc1.program.log();
        t.match(dcLog, EXPECT[c]!.route, `DC1 directed the route as ${c} (${/route \d+ [^\n]*/.exec(dcLog)?.[0]})`);
        const peers = (await fleet.ra.api('peers')) as { node: string; path: string; rxBytes: number }[];
        const rb = peers.find((p) => p.node === NAMES.rb);
        t.equal(rb?.path.split(':')[0], EXPECT[c]!.path(fleet), `router A reaches router B at ${rb?.path}`);
        t.ok(rb !== undefined && rb.rxBytes >= SIZE, 'router A counted the 20 MB in its peer list');

        // b1 is not published: no name, no address from A's side, and router B's own VIP is not b1.
        fleet.b1.spawn('python3', ['-m', 'http.server', '--bind', LAN.b1, '8080'], { log: 'http' });
        const byName = await fleet.a1.exec('curl', ['-sS', '--max-time', '5', `http://b1.rb.fleet2.test:8080/`], { allowFail: true });
        t.equal(byName.code, 6, `b1 has no NTMobile name (curl: ${byName.stderr.trim()})`);
        const byLan = await fleet.a1.exec('curl', ['-sS', '--max-time', '3', `http://${LAN.b1}:8080/`], { allowFail: true });
        t.not(byLan.code, 0, "b1's LAN address is not reachable from A's LAN");
        const byRouterVip = await fleet.a1.exec('curl', ['-sS', '--max-time', '3', `http://${NAMES.rb}:8080/`], { allowFail: true });
        t.not(byRouterVip.code, 0, "router B's own VIP does not lead to b1");
        t.notMatch(readFileSync(path.join(lab.logDir, 'b1-http.log'), 'utf8'), /GET/, 'b1 saw no request');
      },
      { label: `cp-${c}` },
    );
  });
}

t.test('rekeying every 3 s loses no packet', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'a-nat', rekeyAfterSeconds: 3, suite: 'chacha20-poly1305' });
      t.teardown(() => fleet.dispose());
      // 1000 pings at 100/s, a1 → b2 by name: about three rekeys of the tunnel during the run.
      const r = await fleet.a1.exec('ping', ['-n', '-q', '-i', '0.01', '-c', '1000', '-W', '2', NAMES.b2], { allowFail: true, timeoutMs: 60_000 });
      const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
      t.ok(m, `ping summary: ${r.stdout.trim().split('\n').pop()}`);
      t.equal(Number(m?.[2]), Number(m?.[1]), `every echo answered (${m?.[2]}/${m?.[1]})`);
      const peers = (await fleet.ra.api('peers')) as { node: string; rekeys: number }[];
      const rekeys = peers.find((p) => p.node === NAMES.rb)?.rekeys ?? 0;
      t.ok(rekeys >= 2, `the tunnel was rekeyed during the run (${rekeys} times)`);

      // Idle: router A (the initiator) rekeys with no data flowing. Its dummy packets show
      // router B the new keys, so B switches too: what B sends first after the idle time is on
      // keys A still holds (A forgets each SA two rekeys later).
      await new Promise((r) => setTimeout(r, 10_000));
      const idle = ((await fleet.ra.api('peers')) as { node: string; rekeys: number }[]).find((p) => p.node === NAMES.rb)?.rekeys ?? 0;
      t.ok(idle >= rekeys + 2, `rekeyed ${idle - rekeys} times while idle`);
      const vipOf = async (w: 'ra' | 'rb') => ((await fleet[w].api('status')) as { registered: { name: string; vip4: string }[] }).registered.find((x) => x.name === fleet[w].name)!.vip4;
      const [vipA, vipB] = [await vipOf('ra'), await vipOf('rb')];
      const back = await fleet.rb.host.exec('ping', ['-n', '-q', '-c', '3', '-i', '0.2', '-W', '2', '-I', vipB, vipA], { allowFail: true, timeoutMs: 15_000 });
      const mb = /(\d+) packets transmitted, (\d+) received/.exec(back.stdout);
      t.equal(Number(mb?.[2] ?? 0), 3, `router B → router A's VIP after the idle rekeys: ${mb?.[2] ?? 0}/3 answered`);
    },
    { label: 'cp-rekey' },
  );
});

t.test("a peer VIP inside router A's LAN is shown to the LAN as a free local address", async (t) => {
  await Lab.withLab(
    async (lab) => {
      // DC2 hands out VIPs from 192.168.1.64/26, inside router A's LAN 192.168.1.0/24.
      const fleet = await buildFleet(lab, { case: 'no-nat', dc2Pool4: '192.168.1.64/26' });
      t.teardown(() => fleet.dispose());
      const want = await serveFile(fleet);
      const out = path.join(fleet.dir, 'got');
      const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code} %{remote_ip}', `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 90_000 });
      const [code, remote] = r.stdout.split(' ');
      t.equal(code, '200', `HTTP 200 (${r.stderr.trim()})`);
      t.match(remote ?? '', /^10\.255\.255\.\d+$/, `a1 reached b2 at the mapped address ${remote}`);
      t.equal(createHash('sha256').update(readFileSync(out)).digest('hex'), want, 'SHA-256 of the 20 MB matches');
      const peers = (await fleet.ra.api('peers')) as { node: string; mapped: { vip: string; shownAs: string }[] }[];
      const m = peers.find((p) => p.node === NAMES.rb)?.mapped ?? [];
      t.ok(m.some((x) => x.shownAs === remote && x.vip.startsWith('192.168.1.')), `router A maps ${JSON.stringify(m)}`);
    },
    { label: 'cp-mapped' },
  );
});
