// End to end, in namespaces (docs/relay.md): the fleet of lab/fleet.ts with the routers where a
// direct path cannot be made. For each relay case a1 fetches 20 MB from b2 by name and uploads
// 20 MB to b2, checksums matching both ways; DC1 directed the route through rs1.relay.test;
// behind two endpoint-independent NATs the tunnel leaves the relay for a direct path, behind
// symmetric NATs and between IPv4 and IPv6 it stays relayed and the RS counts what it forwarded.
// A general host (www.general.test, no NTMobile) is reached through the RS, and sees the RS as
// its client. An attacker who knows the RS's address and a live SPI gets nothing back, cannot
// make the RS send to a third address, and the tunnel keeps working.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RS_PORT } from '../protocol/discovery.js';
import { serveRandomFile, waitHttp } from '../lab/http.js';
import { Lab } from '../lab/lab.js';
import { buildFleet, LAN, NAMES, RELAY_CASES, type Fleet, type RsStatus } from '../lab/fleet.js';
import { countPackets, spoofSource } from '../lab/spoof.js';

const ATTACKER = fileURLToPath(new URL('../lab/tools/attacker.js', import.meta.url));
const SIZE = 20 * 1024 * 1024;
const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** How DC1 (servers/dc, --verbose) logs a route it directed through the RS, and a gateway route. */
const DC_RELAY_LOG = new RegExp(`relay via ${re(NAMES.rs1)}`);
const DC_GATEWAY_LOG = new RegExp(`gateway via ${re(NAMES.rs1)}`);
/** Router A's `peers` API, field `route` (router/daemon.ts routeText), per case. */
const ROUTE: Record<string, RegExp> = {
  'both-eim': new RegExp(`^direct \\(upgraded from relay via ${re(NAMES.rs1)}\\)$`),
  'both-sym': new RegExp(`^relay via ${re(NAMES.rs1)}$`),
  'v4-v6': new RegExp(`^relay via ${re(NAMES.rs1)}$`),
  gateway: new RegExp(`^gateway via ${re(NAMES.rs1)}$`),
};

interface Peer {
  node: string;
  path: string | null;
  route: string;
  rxBytes: number;
}

interface Sent {
  sent: number;
  bytesSent: number;
  answers: number;
  bytesReceived: number;
}

/** Whether check() held within timeoutMs (an error in check() is thrown, not waited out). */
async function poll(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  if (!(await poll(check, timeoutMs))) throw new Error(`${what}: not within ${timeoutMs} ms`);
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Counters of the RS's status file (servers/rs/rs.ts RsStatus). */
const espBytes = (s: RsStatus): number => s.counters.relay['espBytes'] ?? 0;
const espDropUnknownSource = (s: RsStatus): number => s.counters.relay['espDropUnknownSource'] ?? 0;
const dropAuth = (s: RsStatus): number => s.counters.channel['dropAuth'] ?? 0;
/** Hole punches the RS's channel took for replays: answered to the original sender, dropped, or too old. */
const replaysSeen = (s: RsStatus): number => ['duplicatesAnswered', 'dropDuplicate', 'dropStale'].reduce((n, k) => n + (s.counters.channel[k] ?? 0), 0);

/** The RS's relayed routes with the SPIs it forwards by. */
function rsRoutes(s: RsStatus): { routeId: number; spis: number[] }[] {
  return s.routes.map((r) => ({ routeId: r.routeId, spis: [...r.a.spis, ...r.b.spis] }));
}

/** A 20 MB file served on b2:8080 as /f; its SHA-256. */
async function serveFile(fleet: Fleet): Promise<string> {
  return sha256(await serveRandomFile(fleet.b2, { dir: fleet.dir, bind: LAN.b2, size: SIZE }));
}

/** An upload server on b2:8081: answers a PUT with the SHA-256 of the body it read (and logs it). */
const UPLOAD_SERVER = `
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers['Content-Length'])
        h = hashlib.sha256()
        while left > 0:
            b = self.rfile.read(min(left, 65536))
            if not b:
                break
            h.update(b)
            left -= len(b)
        body = h.hexdigest().encode()
        print(self.client_address[0], body.decode(), flush=True)
        self.send_response(200 if left == 0 else 400)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
`;

async function serveUpload(fleet: Fleet): Promise<void> {
  fleet.b2.spawn('python3', ['-c', UPLOAD_SERVER, LAN.b2, '8081'], { log: 'upload' });
  await waitHttp(fleet.b2, `http://${LAN.b2}:8081/`);
}

/** a1 GETs url into a file; curl's exit code and the SHA-256 of what arrived. */
async function download(fleet: Fleet, url: string): Promise<{ code: number; status: string; sha: string; stderr: string }> {
  const out = path.join(fleet.dir, `got-${randomBytes(4).toString('hex')}`);
  const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code}', url], { allowFail: true, timeoutMs: 90_000 });
  let sha = '';
  try {
    sha = sha256(readFileSync(out));
  } catch {
    // nothing arrived
  }
  return { code: r.code, status: r.stdout, sha, stderr: r.stderr.trim() };
}

/** a1 PUTs 20 MB of fresh random data to b2's upload server by name; both checksums. */
async function upload(fleet: Fleet): Promise<{ code: number; want: string; got: string; stderr: string }> {
  const file = path.join(fleet.dir, 'up');
  const data = randomBytes(SIZE);
  writeFileSync(file, data);
  // 'Expect:' off: python's HTTP/1.0 server never sends 100 Continue, curl would wait a second.
  const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '60', '-H', 'Expect:', '-T', file, `http://${NAMES.b2}:8081/up`], { allowFail: true, timeoutMs: 90_000 });
  return { code: r.code, want: sha256(data), got: r.stdout.trim(), stderr: r.stderr.trim() };
}

async function peerRb(fleet: Fleet): Promise<Peer | undefined> {
  return ((await fleet.ra.api('peers')) as Peer[]).find((p) => p.node === NAMES.rb);
}

const only = process.env.NTM_CASE;
for (const c of RELAY_CASES.filter((x) => !only || x === only)) {
  t.test(`a1 and b2 exchange 20 MB each way through the RS (${c})`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: c });
        t.teardown(() => fleet.dispose());
        const want = await serveFile(fleet);
        await serveUpload(fleet);

        const down = await download(fleet, `http://${NAMES.b2}:8080/f`);
        t.equal(down.code, 0, `download: curl exit 0 (${down.stderr})`);
        t.equal(down.status, '200', 'download: HTTP 200');
        t.equal(down.sha, want, 'download: SHA-256 of the 20 MB matches');
        const up = await upload(fleet);
        t.equal(up.code, 0, `upload: curl exit 0 (${up.stderr})`);
        t.equal(up.got, up.want, 'upload: b2 read 20 MB with the same SHA-256');

        const log = readFileSync(path.join(lab.logDir, 'b2-http.log'), 'utf8');
        t.match(log, /^10\.77\.\d+\.\d+ - - .*"GET \/f HTTP/m, 'b2 saw the request from a VIP of fleet1.test (router A), not from a1');
        t.notMatch(log, new RegExp(re(LAN.a1)), "b2 never saw a1's LAN address");

        const dcLog = fleet.dc1.program.log();
        t.match(dcLog, DC_RELAY_LOG, `DC1 directed the route through the RS (${/route \d+ [^\n]*/.exec(dcLog)?.[0]})`);

        // Behind endpoint-independent NATs the path probes succeed a few seconds after the relayed
        // tunnel is up; elsewhere the tunnel must stay on the relay.
        let rb: Peer | undefined;
        if (c === 'both-eim') {
          await poll(async () => ROUTE[c]!.test((rb = await peerRb(fleet))?.route ?? ''), 10_000);
        } else rb = await peerRb(fleet);
        t.match(rb?.route ?? '', ROUTE[c]!, `router A's route to router B: ${rb?.route} (at ${rb?.path})`);
        t.ok(rb !== undefined && rb.rxBytes >= SIZE, 'router A counted the 20 MB in its peer list');

        if (c === 'both-eim') {
          t.ok(rb?.path?.startsWith(`${fleet.publicAddrs.rb}:`), `router A sends to router B's NAT (${fleet.publicAddrs.rb}), not to the RS (${rb?.path})`);
          // Packets still in flight through the RS when the path moved must not pull it back.
          const before = await fleet.rsStatus();
          const ping = (await fleet.ra.api('ping', { name: NAMES.b2, count: 20 })) as { received: number };
          await new Promise((r) => setTimeout(r, 1200)); // the RS writes its status every second
          const through = (await fleet.rsStatus()).counters.relay['espForwarded']! - before.counters.relay['espForwarded']!;
          t.equal(ping.received, 20, 'router A pings b2 after the upgrade');
          t.equal(through, 0, `after the upgrade no ESP goes through the RS (${through} datagrams did)`);
        } else {
          t.ok(rb?.path?.startsWith(`${fleet.rs1.address}:`), `router A sends to the RS (${rb?.path})`);
          // The status file is rewritten every second: wait for one that holds both transfers.
          let forwarded = 0;
          await poll(async () => (forwarded = espBytes(await fleet.rsStatus())) >= 2 * SIZE, 5000);
          t.ok(forwarded >= 2 * SIZE, `the RS forwarded both transfers (${forwarded} bytes of ESP)`);
        }
      },
      { label: `relay-${c}` },
    );
  });
}

t.test('a1 fetches 20 MB from a general host through the RS, which the host sees as its client', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'a-nat' });
      t.teardown(() => fleet.dispose());
      // Only a1's request is logged as GET /f (the server's readiness check asks for /).
      const data = await serveRandomFile(fleet.web.host, { dir: fleet.dir, bind: fleet.web.addr, size: SIZE });

      const r = await download(fleet, `http://${NAMES.web}:8080/f`);
      t.equal(r.code, 0, `curl exit 0 (${r.stderr})`);
      t.equal(r.status, '200', 'HTTP 200');
      t.equal(r.sha, sha256(data), 'SHA-256 of the 20 MB matches');

      // Every request the web server logged came from the RS: never from router A's NAT, router A or a1.
      const clients = [...readFileSync(path.join(lab.logDir, 'web-http.log'), 'utf8').matchAll(/^(\S+) - - .*"GET \/f HTTP/gm)].map((m) => m[1]);
      t.ok(clients.length >= 1, `the web server logged the request (${clients.length})`);
      t.same([...new Set(clients)], [fleet.rs1.address], `the web server saw only the RS (${fleet.rs1.address}) as its client: ${[...new Set(clients)].join(', ')}`);

      t.match(fleet.dc1.program.log(), DC_GATEWAY_LOG, 'DC1 directed a gateway route through the RS');
      const peers = (await fleet.ra.api('peers')) as Peer[];
      const gw = peers.find((p) => ROUTE['gateway']!.test(p.route));
      t.ok(gw, `router A has a gateway route via the RS (${peers.map((p) => `${p.node}: ${p.route}`).join('; ')})`);
      t.ok(gw !== undefined && gw.rxBytes >= SIZE, 'router A counted the 20 MB on it');
    },
    { label: 'relay-general' },
  );
});

t.test('an attacker gets nothing from the RS and cannot steer it to a third address (both-sym)', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'both-sym' });
      t.teardown(() => fleet.dispose());
      const rs = fleet.rs1.address;

      // Capture what reaches the RS while the relayed tunnel is made: the routers' hole punches.
      const pcap = path.join(fleet.dir, 'rs.pcap');
      const cap = fleet.rs1.host.spawn('tshark', ['-i', 'eth0', '-f', `udp dst port ${RS_PORT}`, '-w', pcap], { log: 'tshark' });
      await until('tshark capturing', async () => readFileSync(path.join(lab.logDir, 'rs1-tshark.log'), 'utf8').includes('Capturing'), 15_000);
      const ping = (await fleet.ra.api('ping', { name: NAMES.b2, count: 2 })) as { received: number };
      t.equal(ping.received, 2, 'router A pings b2 by name through the relayed tunnel');
      cap.kill('SIGINT');
      await new Promise((r) => cap.once('exit', r));
      const fields = await fleet.rs1.host.exec('tshark', ['-r', pcap, '-T', 'fields', '-e', 'udp.payload']);
      // non-ESP marker, version 1, type 13 (holePunching)
      const punches = fields.stdout.split('\n').map((l) => l.replace(/:/g, '').trim()).filter((h) => h.startsWith('00000000010d'));
      t.ok(punches.length >= 2, `captured the hole punches of both routers (${punches.length})`);

      // A live route and SPI, as the RS shows them.
      let routes: { routeId: number; spis: number[] }[] = [];
      await until('RS status lists the route with its SPIs', async () => (routes = rsRoutes(await fleet.rsStatus())).some((r) => r.spis.length > 0), 5000);
      const live = routes.find((r) => r.spis.length > 0)!;
      const spi = live.spis[0]!;
      t.pass(`live route ${live.routeId}, SPIs ${live.spis.join(', ')}`);

      const attacker = await fleet.addInternetHost('attacker');
      const victim = await fleet.addInternetHost('victim');
      const run = async (...args: string[]): Promise<Sent> => JSON.parse((await attacker.host.exec(process.execPath, [ATTACKER, ...args], { timeoutMs: 20_000 })).stdout) as Sent;
      const attempts: { what: string; r: Sent; victimBytes?: number }[] = [];
      // time for anything the RS might send the victim to arrive
      const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 1000));

      // ESP under the live SPI from the attacker's own address: dropped and counted, nothing back.
      const COUNT = 50;
      let before = await fleet.rsStatus();
      const esp = await run('esp', rs, String(RS_PORT), String(spi), String(COUNT));
      attempts.push({ what: 'ESP with a live SPI', r: esp });
      t.equal(esp.answers, 0, 'ESP with a live SPI: nothing comes back');
      await poll(async () => espDropUnknownSource(await fleet.rsStatus()) >= espDropUnknownSource(before) + COUNT, 5000);
      t.equal(espDropUnknownSource(await fleet.rsStatus()), espDropUnknownSource(before) + COUNT, `the RS counted all ${COUNT} datagrams from an unknown source`);
      const esp6 = await run('esp', fleet.rs1.address6, String(RS_PORT), String(spi), '5');
      attempts.push({ what: 'ESP with a live SPI over IPv6', r: esp6 });
      t.equal(esp6.answers, 0, 'the same over IPv6: nothing comes back');

      // A hole punch for the live route under a made-up Ktun: fails authentication, no answer.
      before = await fleet.rsStatus();
      const punch = await run('punch', rs, String(RS_PORT), String(live.routeId), NAMES.ra);
      attempts.push({ what: 'forged hole punch', r: punch });
      t.equal(punch.answers, 0, 'forged hole punch: no answer');
      await poll(async () => dropAuth(await fleet.rsStatus()) > dropAuth(before), 5000);
      t.equal(dropAuth(await fleet.rsStatus()), dropAuth(before) + 1, 'the RS counted one authentication failure');

      // A legitimate hole punch replayed from the attacker's address: a duplicate, answered (if at
      // all) to its original sender only.
      before = await fleet.rsStatus();
      const replay = await run('replay', rs, String(RS_PORT), ...punches);
      attempts.push({ what: 'replayed hole punches', r: replay });
      t.equal(replay.answers, 0, `replayed hole punches (${punches.length}): no answer`);
      await poll(async () => replaysSeen(await fleet.rsStatus()) >= replaysSeen(before) + punches.length, 5000);
      t.equal(replaysSeen(await fleet.rsStatus()) - replaysSeen(before), punches.length, 'the RS recognised every replay as a duplicate (or stale)');

      // The same three with the victim's address as their source: the victim receives nothing.
      const seen = await countPackets(victim.host, { from: rs });
      const spoof = await spoofSource(attacker.host, rs, victim.addr, { port: RS_PORT });
      for (const [what, args] of [
        ['ESP with a live SPI, source = victim', ['esp', rs, String(RS_PORT), String(spi), String(COUNT)]],
        ['forged hole punch, source = victim', ['punch', rs, String(RS_PORT), String(live.routeId), NAMES.ra]],
        ['replayed hole punches, source = victim', ['replay', rs, String(RS_PORT), ...punches]],
      ] as const) {
        const seenBefore = (await seen.read()).bytes;
        const r = await run(...args);
        await settle();
        attempts.push({ what, r, victimBytes: (await seen.read()).bytes - seenBefore });
      }
      await spoof.remove();
      const v = await seen.read();
      t.equal(v.packets, 0, `the victim received nothing from the RS (${v.packets} packets, ${v.bytes} bytes)`);

      // Amplification: what came back (to the attacker, or to the victim) per byte sent.
      for (const a of attempts) {
        const ratio = (a.r.bytesReceived + (a.victimBytes ?? 0)) / a.r.bytesSent;
        t.equal(ratio, 0, `${a.what}: ${a.r.sent} datagrams, ${a.r.bytesSent} bytes sent, ratio ${ratio}`);
      }

      // The tunnel is untouched: 20 MB from b2 through it.
      const want = await serveFile(fleet);
      const r = await download(fleet, `http://${NAMES.b2}:8080/f`);
      t.equal(r.code, 0, `afterwards: curl exit 0 (${r.stderr})`);
      t.equal(r.sha, want, 'afterwards: SHA-256 of the 20 MB matches');
      const rb = await peerRb(fleet);
      t.match(rb?.route ?? '', ROUTE['both-sym']!, `still relayed (${rb?.route})`);
    },
    { label: 'relay-attack' },
  );
});

t.test('a direct path that fails falls back to the RS within the DNS deadline (a-nat, UDP between the sites blocked)', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'a-nat' });
      t.teardown(() => fleet.dispose());
      // A firewall on the Internet between router A's NAT and router B: the DC still decides
      // "MN behind NAT, MN initiates", but the Tunnel Request never arrives. The DCs and the RS
      // stay reachable from both.
      const core = lab.hosts.get('core')!;
      const a = fleet.publicAddrs.ra;
      const b = fleet.uplinks.rb;
      await core.nft(`table inet ntmblock {
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip saddr ${a} ip daddr ${b} meta l4proto udp counter drop
    ip saddr ${b} ip daddr ${a} meta l4proto udp counter drop
  }
}`);
      const want = await serveFile(fleet);
      const t0 = Date.now();
      const resolved = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 10_000 });
      const resolveMs = Date.now() - t0;
      t.equal(resolved.code, 0, `a1 resolves ${NAMES.b2} on the first query (${resolved.stdout.split('\n')[0] ?? ''})`);
      t.ok(resolveMs < 3000, `the answer came within the DNS hook's 3 s deadline (${resolveMs} ms)`);
      const down = await download(fleet, `http://${NAMES.b2}:8080/f`);
      t.equal(down.code, 0, `curl exit 0 (${down.stderr})`);
      t.equal(down.sha, want, 'SHA-256 of the 20 MB matches');

      const dcLog = fleet.dc1.program.log();
      t.match(dcLog, /: mn-behind-nat, mn initiates/, 'DC1 first directed the direct route');
      t.match(dcLog, /relay via rs1\.relay\.test \(direct mn-behind-nat attempt failed\)/, 'then, asked again, a relayed one');
      const rb = await peerRb(fleet);
      t.match(rb?.route ?? '', ROUTE['both-sym']!, `router A's route to router B: ${rb?.route} (at ${rb?.path})`);
      const status = (await fleet.ra.api('status')) as { counters: { daemon: { relayFallbacks: number } } };
      t.equal(status.counters.daemon.relayFallbacks, 1, 'router A counted one fallback');
      const blocked = await core.exec('nft', ['list', 'table', 'inet', 'ntmblock']);
      t.match(blocked.stdout, /counter packets [1-9]\d* bytes \d+ drop/, 'the firewall did drop the direct attempt');
    },
    { label: 'relay-fallback' },
  );
});
