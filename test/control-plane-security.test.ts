// End to end, in namespaces (issue: control plane): what must fail, change nothing, and be
// counted — a replayed Tunnel Request, a forged Route Direction, a wrong password at the AS, a
// Registration for another node's name — and what must survive: a DC restart loses no
// registration, and routers re-register on their own after their DC was away.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { Lab } from '../lab/lab.js';
import { buildFleet, NAMES } from '../lab/fleet.js';

const ATTACKER = fileURLToPath(new URL('../lab/tools/attacker.js', import.meta.url));
const AS_CLI = fileURLToPath(new URL('../servers/as/cli.js', import.meta.url));

interface Status {
  state: string;
  keyId: number;
  registered: { name: string; vip4: string }[];
  counters: { daemon: Record<string, number>; channel: Record<string, number>; tunnels: Record<string, number> };
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}

t.test('control plane refuses forged, replayed and foreign messages; survives DC restarts', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'no-nat' });
      t.teardown(() => fleet.dispose());
      const attacker = await fleet.addInternetHost('attacker');
      const run = async (...args: string[]): Promise<Record<string, unknown>> => JSON.parse((await attacker.host.exec(process.execPath, [ATTACKER, ...args], { timeoutMs: 20_000 })).stdout) as Record<string, unknown>;
      const ra = async (): Promise<Status> => (await fleet.ra.api('status')) as Status;
      const rb = async (): Promise<Status> => (await fleet.rb.api('status')) as Status;

      // A tunnel ra → rb (b2), with rb's uplink captured to get a real Tunnel Request.
      const pcap = path.join(fleet.dir, 'rb.pcap');
      const cap = fleet.rb.host.spawn('tshark', ['-i', 'eth0', '-f', 'udp port 4500', '-w', pcap], { log: 'tshark' });
      await until('tshark capturing', async () => readFileSync(path.join(lab.logDir, 'rb-tshark.log'), 'utf8').includes('Capturing'), 15_000);
      const ping = (await fleet.ra.api('ping', { name: NAMES.b2, count: 2 })) as { received: number };
      t.equal(ping.received, 2, 'router A pings b2 by name through the tunnel');
      cap.kill('SIGINT');
      await new Promise((r) => cap.once('exit', r));
      const fields = await fleet.rb.host.exec('tshark', ['-r', pcap, '-T', 'fields', '-e', 'udp.payload', '-Y', 'udp.dstport == 4500']);
      const requests = fields.stdout.split('\n').map((l) => l.replace(/:/g, '').trim()).filter((h) => h.startsWith('00000000010b'));
      t.ok(requests.length >= 1, `captured the Tunnel Request (${requests.length})`);
      const req = requests[0]!;

      // Replayed Tunnel Request: answered at most to its original sender with the cached answer, no state change.
      const before = await rb();
      const replay = await run('replay', fleet.uplinks.rb, '4500', req);
      t.equal(replay.answers, 0, 'the replayer gets no answer');
      const flipped = req.slice(0, -2) + ((parseInt(req.slice(-2), 16) ^ 1) & 0xff).toString(16).padStart(2, '0');
      await run('replay', fleet.uplinks.rb, '4500', flipped);
      const after = await rb();
      t.equal(after.counters.channel.duplicatesAnswered, before.counters.channel.duplicatesAnswered + 1, 'the replay is counted as a duplicate');
      t.equal(after.counters.channel.dropAuth, before.counters.channel.dropAuth + 1, 'the altered copy fails authentication and is counted');
      t.equal(after.counters.tunnels.established, before.counters.tunnels.established, 'no tunnel was made');
      t.equal(after.counters.tunnels.rekeys, before.counters.tunnels.rekeys, 'the tunnel was not rekeyed');

      // Forged Route Direction to router A: one under its real key ID with a wrong key, one under an unknown ID.
      const raBefore = await ra();
      const peersBefore = JSON.stringify(((await fleet.ra.api('peers')) as { node: string }[]).map((p) => p.node));
      const forged = await run('forge', fleet.uplinks.ra, '4500', String(raBefore.keyId));
      t.equal(forged.answers, 0, 'no answer to a forged Route Direction');
      const raAfter = await ra();
      t.equal(raAfter.counters.channel.dropAuth, raBefore.counters.channel.dropAuth + 1, 'forged under the real key ID: authentication failure counted');
      t.equal(raAfter.counters.channel.dropUnknownKey, raBefore.counters.channel.dropUnknownKey + 1, 'forged under another key ID: unknown key counted');
      t.equal(raAfter.counters.daemon.routeDirections, raBefore.counters.daemon.routeDirections, 'no Route Direction was taken');
      t.equal(JSON.stringify(((await fleet.ra.api('peers')) as { node: string }[]).map((p) => p.node)), peersBefore, 'the tunnel table is unchanged');

      // Wrong password at the AS: 401, counted, and router A's session is untouched.
      const caFile = path.join(fleet.dir, 'pki', 'ca.crt');
      const url = `https://${fleet.as.address}:8443`;
      const bad = await run('login', url, caFile, 'ra@fleet1.test', 'not-the-password');
      t.equal(bad.status, 401, 'wrong password: 401');
      fleet.as.program.process.kill('SIGUSR1');
      await until('AS counters printed', async () => /badCredentials/.test(fleet.as.program.log()), 5000);
      t.match(fleet.as.program.log(), /"badCredentials":\s*1/, 'the AS counted one bad login');
      t.equal((await ra()).keyId, raBefore.keyId, 'router A keeps its key');

      // Registration for another node's name, under a valid key of another account.
      const pw = path.join(fleet.dir, 'mallory.password');
      await fleet.as.host.exec('sh', ['-c', `umask 077; echo mallory-password > ${pw}`]);
      await fleet.as.host.exec(process.execPath, [AS_CLI, 'account', 'add', '--store', fleet.as.storePath, '--email', 'mallory@fleet1.test', '--password-file', pw]);
      await fleet.as.host.exec(process.execPath, [AS_CLI, 'account', 'bind', '--store', fleet.as.storePath, '--email', 'mallory@fleet1.test', '--name', 'm.fleet1.test']);
      const dcBefore = await fleet.dcStatus('dc1');
      const reg = (await run('register', url, caFile, 'mallory@fleet1.test', 'mallory-password', fleet.dc1.address, NAMES.ra)) as { answers: { status: string }[] };
      t.same(reg.answers.map((a) => a.status), ['notAuthorized'], "the DC refuses to register router A's name for mallory");
      await until('DC1 status written', async () => (await fleet.dcStatus('dc1')).counters.registrationForeignName === dcBefore.counters.registrationForeignName! + 1, 5000);
      const raReg = (await fleet.dcStatus('dc1')).registrations.find((r) => r.name === NAMES.ra);
      t.same(raReg?.observed, dcBefore.registrations.find((r) => r.name === NAMES.ra)?.observed, "router A's registration is unchanged");

      // DNS hook: an unknown name is NXDOMAIN at once; with the DC away, SERVFAIL within its deadline.
      const resolveTime = async (name: string): Promise<{ ms: number; err: string }> => {
        const py = `import socket,time\nt=time.time()\ntry:\n  socket.getaddrinfo('${name}',80)\n  e='ok'\nexcept socket.gaierror as x:\n  e=str(x)\nprint(int((time.time()-t)*1000), e)`;
        const r = await fleet.a1.exec('python3', ['-c', py], { timeoutMs: 30_000 });
        const [ms, ...rest] = r.stdout.trim().split(' ');
        return { ms: Number(ms), err: rest.join(' ') };
      };
      const unknown = await resolveTime('nobody.fleet2.test');
      t.match(unknown.err, /not known|No address/i, `unknown name: ${unknown.err}`);
      t.ok(unknown.ms < 1000, `answered in ${unknown.ms} ms`);
      await fleet.dc1.program.stop();
      const silent = await resolveTime('rb.fleet2.test');
      t.match(silent.err, /failure|again/i, `DC away: ${silent.err}`);
      t.ok(silent.ms < 4500, `SERVFAIL within the DNS hook's 3 s deadline (+ dnsmasq): ${silent.ms} ms`);
      await fleet.restartDc('dc1');

      // DC restart: registrations survive; a new direction across both DCs works (Kdcdc renewed).
      const regsBefore = (await fleet.dcStatus('dc2')).registrations.map((r) => `${r.name}=${r.vip4}`).sort();
      await fleet.restartDc('dc2');
      const regsAfter = (await fleet.dcStatus('dc2')).registrations.map((r) => `${r.name}=${r.vip4}`).sort();
      t.same(regsAfter, regsBefore, `DC2 restarted with the same registrations (${regsAfter.join(', ')})`);
      // The first direction after both DCs restarted makes first contact again (DNS, mutual TLS).
      let attempts = 0;
      let lastFailure = '';
      await until('router A reaches rb.fleet2.test by name', async () => {
        attempts++;
        const p = (await fleet.ra.api('ping', { name: NAMES.rb, count: 2 }).catch((e: Error) => ({ received: 0, error: e.message }))) as { received: number; error?: string };
        lastFailure = p.error ?? `${p.received}/2 replies`;
        return p.received === 2;
      }, 15_000).catch((e: Error) => {
        throw new Error(`${e.message} (last attempt: ${lastFailure})`);
      });
      t.pass(`after the restart, router A reaches rb.fleet2.test by name (attempts: ${attempts})`);

      // DC1 away for longer than the keepalive retries: router A registers again on its own.
      const reRegBefore = (await ra()).counters.daemon.reRegistrations!;
      await fleet.restartDc('dc1', 9000);
      await until('router A registered again', async () => {
        const s = await ra();
        return s.state === 'ready' && s.counters.daemon.reRegistrations! > reRegBefore;
      }, 40_000);
      t.pass('router A noticed and registered again');
      await until('DC1 lists router A', async () => (await fleet.dcStatus('dc1')).registrations.some((r) => r.name === NAMES.ra), 5000);
      t.pass('DC1 has router A registered');
    },
    { label: 'cp-security' },
  );
});
