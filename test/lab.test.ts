// Tests of the namespace testbed (lab/): isolation of parallel runs, links, NAT behaviours (RFC 4787),
// moving uplinks, teardown. Needs root (network namespaces, nftables).

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, LabExecError, cleanup, removeLab, listLabs, listNamespaces, REGISTRY_DIR } from '../lab/lab.js';
import { natRuleset } from '../lab/nat.js';
import { internetWithNats, twoHosts } from '../lab/topology.js';
import { UdpAgent } from '../lab/udp.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const labModule = path.join(here, '..', 'lab', 'lab.js');
const cliPath = path.join(here, '..', 'lab', 'cli.js');

const isRoot = process.getuid?.() === 0;
const haveIp = spawnSync('ip', ['netns', 'list']).status === 0;
const skip = !isRoot || !haveIp ? 'needs root and iproute2' : false;

const ours = new Set<string>(); // lab ids made by this file
const nsOf = (id: string): string[] => listNamespaces().filter((n) => n.startsWith(`ntm-${id}-`));
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Live (non-zombie) processes of a process group, after giving the kernel up to 1 s to finish them. */
async function groupMembers(pgid: number): Promise<number[]> {
  let members: number[] = [];
  for (let i = 0; i < 50; i++) {
    members = [];
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if (Number(f[2]) === pgid && f[0] !== 'Z') members.push(Number(d));
      } catch {
        /* gone */
      }
    }
    if (!members.length) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return members;
}

/** Run a child node script that uses the lab; resolves with its first stdout line (the lab id) and the child. */
function childLab(script: string): Promise<{ id: string; child: ReturnType<typeof spawn>; done: Promise<number | null> }> {
  const code = `import(${JSON.stringify(labModule)}).then(async ({ Lab }) => { ${script} });`;
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        const id = out.slice(0, nl).trim();
        ours.add(id);
        resolve({ id, child, done });
      }
    });
    child.on('exit', (c) => {
      if (!out.includes('\n')) reject(new Error(`child exited ${c} before printing its lab id: ${err}`));
    });
  });
}

t.test('lab', { skip }, async (t) => {
  t.setTimeout(90_000);
  t.test('two labs in parallel get different ids and do not collide; hosts ping over a link', async (t) => {
    const [l1, l2] = await Promise.all([Lab.create('t-par-1'), Lab.create('t-par-2')]);
    ours.add(l1.id).add(l2.id);
    try {
      t.not(l1.id, l2.id, 'different run ids');
      t.match(l1.id, /^[0-9a-f]{6}$/);
      // the same topology, same host and interface names, built at the same time
      const [n1, n2] = await Promise.all([twoHosts(l1), twoHosts(l2)]);
      t.equal(n1.a.ns, `ntm-${l1.id}-a`);
      const s1 = new Set(nsOf(l1.id));
      const s2 = new Set(nsOf(l2.id));
      t.equal(s1.size, 2);
      t.equal(s2.size, 2);
      t.notOk([...s1].some((n) => s2.has(n)), 'namespaces are disjoint');
      t.ok(fs.existsSync(path.join(REGISTRY_DIR, `${l1.id}.json`)), 'registry record written');
      t.ok(await n1.a.ping(n1.bAddr), 'lab 1: a pings b over IPv4');
      t.ok(await n1.b.ping(n1.aAddr6), 'lab 1: b pings a over IPv6 (no DAD wait)');
      t.ok(await n2.a.ping(n2.bAddr), 'lab 2: a pings b');
      t.notOk(await n1.a.ping('10.0.0.3', { timeoutS: 0.3 }), 'no reply from an address nobody has');
      // links in two labs with the same names are independent: take lab 1's down, lab 2 still works
      await n1.a.linkDown('eth0');
      t.notOk(await n1.a.ping(n1.bAddr, { timeoutS: 0.3 }), 'lab 1 link down');
      t.ok(await n2.a.ping(n2.bAddr), 'lab 2 unaffected');
      await n1.a.linkUp('eth0');
      t.ok(await n1.a.ping(n1.bAddr), 'lab 1 link up again');
    } finally {
      await Promise.all([l1.destroy(), l2.destroy()]);
    }
    t.same(nsOf(l1.id), [], 'lab 1 namespaces removed');
    t.same(nsOf(l2.id), [], 'lab 2 namespaces removed');
    t.notOk(fs.existsSync(l1.recordPath), 'record removed');
    t.notOk(fs.existsSync(l1.logDir), 'log dir removed');
  });

  t.test('exec errors name the host, the command and its stderr', async (t) => {
    await Lab.withLab(async (lab) => {
      ours.add(lab.id);
      const h = await lab.host('errhost');
      const e = await h.exec('ip', ['link', 'set', 'nosuchdev', 'up']).catch((x: unknown) => x);
      t.type(e, LabExecError);
      t.match((e as Error).message, /host errhost: 'ip link set nosuchdev up' failed with exit code \d+: .*nosuchdev/);
      const r = await h.exec('sh', ['-c', 'echo out; echo err >&2; exit 3'], { allowFail: true });
      t.same(r, { stdout: 'out\n', stderr: 'err\n', code: 3 }, 'allowFail returns the result');
      await t.rejects(lab.host('errhost'), /already exists/);
      await t.rejects(lab.link(h, h, { aName: 'this-name-is-too-long' }), /interface name/);
      t.throws(() => natRuleset('eim', { inside: 'lan; drop', outside: 'wan' }), /inside interface name/);
      // spawned processes log to the per-run directory
      const p = h.spawn('sh', ['-c', 'echo hello-log'], { log: 'greeter' });
      await new Promise((r) => p.on('exit', r));
      t.equal(fs.readFileSync(path.join(lab.logDir, 'errhost-greeter.log'), 'utf8'), 'hello-log\n');
    }, { dumpLogsOnError: true });
  });

  t.test("'eim' NAT: endpoint-independent mapping and filtering", async (t) => {
    await Lab.withLab(async (lab) => {
      ours.add(lab.id);
      const net = await internetWithNats(lab, { aNat: 'eim', bNat: 'none' });
      const pubA = net.addrs.nodeAPublic;
      t.equal(pubA, '198.18.1.2', 'NAT a public address');
      const x = await net.addInternetHost('x');
      const y = await net.addInternetHost('y');
      const z = await net.addInternetHost('z');
      const inside = await UdpAgent.start(net.nodeA, { port: 40000 });
      const [ax, ay, az] = await Promise.all([x, y, z].map((h) => UdpAgent.start(h.host, { port: 5000 })));
      await inside.send(x.addr, 5000, 'to-x');
      await inside.send(y.addr, 5000, 'to-y');
      const gx = await ax.waitFor('to-x');
      const gy = await ay.waitFor('to-y');
      t.ok(gx && gy, 'both outside hosts got the datagram');
      t.equal(gx!.from, pubA, 'x sees the NAT public address');
      t.equal(gy!.from, pubA);
      t.equal(gx!.port, gy!.port, `same mapped port for both destinations (${gx!.port})`);
      const mapped = gx!.port;
      // endpoint-independent filtering: z never was contacted, yet reaches the mapping
      await az.send(pubA, mapped, 'from-z');
      const got = await inside.waitFor('from-z');
      t.ok(got, 'an uncontacted outside host reaches the mapped port');
      t.equal(got?.from, z.addr);
      // and the reply goes back through the same mapping
      await inside.send(z.addr, 5000, 'back-to-z');
      t.equal((await az.waitFor('back-to-z'))?.port, mapped, 'reply to z leaves from the same mapping');
      const maps = await lab.natMappings(net.sites['a']!.natBox!);
      t.ok(maps.some((m) => m.externalPort === mapped && m.internalAddr === net.addrs.nodeA && m.internalPort === 40000), 'mapping listed');

      // a second inside endpoint with the same port gets its own mapping, and does not steal the first one
      const node2 = await lab.host('nodeA2');
      await lab.attach(node2, net.sites['a']!.segment, net.sites['a']!.allocate());
      const inside2 = await UdpAgent.start(node2, { port: 40000 });
      await inside2.send(x.addr, 5000, 'to-x-2');
      const g2 = await ax.waitFor('to-x-2');
      t.ok(g2, 'second inside host reaches x');
      t.not(g2!.port, mapped, 'second inside endpoint gets a different external port');
      await az.send(pubA, mapped, 'from-z-again');
      t.ok(await inside.waitFor('from-z-again'), 'the first mapping still goes to the first endpoint');
      await az.send(pubA, g2!.port, 'from-z-to-2');
      t.ok(await inside2.waitFor('from-z-to-2'), 'the second mapping goes to the second endpoint');
      t.notOk(inside.received.some((d) => d.data === 'from-z-to-2'), 'and not to the first');
    });
  });

  t.test("'symmetric' NAT: endpoint-dependent mapping, replies only", async (t) => {
    await Lab.withLab(async (lab) => {
      ours.add(lab.id);
      const net = await internetWithNats(lab, { aNat: 'symmetric', bNat: 'none' });
      const pubA = net.addrs.nodeAPublic;
      const x = await net.addInternetHost('x');
      const y = await net.addInternetHost('y');
      const z = await net.addInternetHost('z');
      const inside = await UdpAgent.start(net.nodeA, { port: 40000 });
      const [ax, ay, az] = await Promise.all([x, y, z].map((h) => UdpAgent.start(h.host, { port: 5000 })));
      await inside.send(x.addr, 5000, 'to-x');
      await inside.send(y.addr, 5000, 'to-y');
      const gx = await ax.waitFor('to-x');
      const gy = await ay.waitFor('to-y');
      t.ok(gx && gy, 'both outside hosts got the datagram');
      t.equal(gx!.from, pubA);
      t.not(gx!.port, gy!.port, `different mapped ports per destination (${gx!.port}, ${gy!.port})`);
      // replies from the contacted host come back in
      await ax.send(pubA, gx!.port, 'reply-x');
      t.ok(await inside.waitFor('reply-x'), 'a reply from x is delivered');
      // an uncontacted host is filtered, and so is y on x's mapping
      await az.send(pubA, gx!.port, 'from-z');
      await ay.send(pubA, gx!.port, 'y-on-x-mapping');
      t.equal(await inside.next(600, (d) => d.data === 'from-z' || d.data === 'y-on-x-mapping'), undefined, 'unsolicited datagrams are not delivered');
    });
  });

  t.test('moving an uplink changes the outside-visible address; two uplinks with metrics', async (t) => {
    await Lab.withLab(async (lab) => {
      ours.add(lab.id);
      const net = await internetWithNats(lab, { aNat: 'eim', bNat: 'symmetric', extraSites: { c: 'none' } });
      const pubA = net.addrs.nodeAPublic;
      const x = await net.addInternetHost('x');
      const ax = await UdpAgent.start(x.host, { port: 5000 });
      const inside = await UdpAgent.start(net.nodeA, { port: 40000 });
      const seen = async (tag: string): Promise<string | undefined> => {
        await inside.send(x.addr, 5000, tag);
        return (await ax.waitFor(tag))?.from;
      };
      t.equal(await seen('at-a'), pubA, 'behind NAT a');

      const b = net.sites['b']!.allocate();
      await lab.moveUplink(net.nodeA, 'eth0', net.sites['b']!.segment, b);
      t.same(await net.nodeA.addrs('eth0'), [b.address], 'new address on eth0');
      t.equal(await seen('at-b'), net.sites['b']!.natBox!.publicAddrs[0], 'behind NAT b after the move');

      const c = net.sites['c']!.allocate();
      await lab.moveUplink(net.nodeA, 'eth0', net.sites['c']!.segment, c);
      t.equal(await seen('at-c'), c.address, 'own global address after moving to the internet');
      t.ok(await net.nodeA.ping(x.addr6), 'IPv6 works in the global site');

      await lab.moveUplink(net.nodeA, 'eth0', net.sites['a']!.segment, net.sites['a']!.allocate());
      t.equal(await seen('back-at-a'), pubA, 'back behind NAT a');
      t.notOk(await net.nodeA.ping(x.addr6, { timeoutS: 0.3 }), 'no IPv6 route left from the global site');

      // a second uplink (global, metric 100) next to eth0 (behind NAT a, metric 0)
      const c2 = net.sites['c']!.allocate();
      await lab.attach(net.nodeA, net.sites['c']!.segment, { name: 'wwan0', addr: c2.addr, gateway: c2.gateway, metric: 100 });
      t.equal(await seen('two-uplinks'), pubA, 'the preferred uplink is used');
      await lab.carrier(net.nodeA, 'eth0', false);
      t.equal(await seen('eth0-no-carrier'), c2.address, 'eth0 lost its carrier: traffic leaves by wwan0');
      await lab.carrier(net.nodeA, 'eth0', true);
      t.equal(await seen('eth0-carrier-back'), pubA, 'carrier back: eth0 again');
      await net.nodeA.linkDown('eth0');
      t.equal(await seen('eth0-down'), c2.address, 'eth0 down: wwan0');
      await net.nodeA.linkUp('eth0');
      t.equal(await seen('eth0-up'), pubA, 'eth0 up: its default route is restored');
    });
  });

  t.test('destroy() removes namespaces and processes even when the body throws; idempotent', async (t) => {
    let lab: Lab | undefined;
    let pid = 0;
    const err = await Lab.withLab(
      async (l) => {
        lab = l;
        ours.add(l.id);
        const h = await l.host('victim');
        const seg = await l.segment('seg');
        await l.attach(h, seg, { addr: '10.9.0.1/24' });
        const p = h.spawn('sh', ['-c', 'sleep 300 & sleep 300; wait']);
        pid = p.pid!;
        await new Promise((r) => setTimeout(r, 100));
        t.equal(nsOf(l.id).length, 2);
        throw new Error('body failed');
      },
      { dumpLogsOnError: false },
    ).catch((e: unknown) => e);
    t.match((err as Error).message, 'body failed', 'the error propagates');
    t.same(nsOf(lab!.id), [], 'namespaces gone');
    t.notOk(alive(pid), 'spawned process gone');
    t.same(await groupMembers(pid), [], 'its process group is gone (the background sleep too)');
    t.notOk(lab!.alive);
    await lab!.destroy();
    lab!.destroySync();
    await t.rejects(lab!.host('late'), /destroyed/, 'a destroyed lab refuses new work');
  });

  t.test('an uncaught exception or SIGTERM in the owner process tears the lab down', async (t) => {
    const crash = await childLab(
      `const lab = await Lab.create('t-crash'); await lab.host('h'); await lab.segment('s'); console.log(lab.id); setTimeout(() => { throw new Error('boom'); }, 50);`,
    );
    t.not(await crash.done, 0, 'child crashed');
    t.same(nsOf(crash.id), [], 'crash: namespaces removed');
    t.notOk(fs.existsSync(path.join(REGISTRY_DIR, `${crash.id}.json`)), 'crash: record removed');

    const term = await childLab(
      `const lab = await Lab.create('t-term'); const h = await lab.host('h'); h.spawn('sleep', ['300']); console.log(lab.id); setInterval(() => {}, 1000);`,
    );
    t.equal(nsOf(term.id).length, 1, 'namespace exists while the owner runs');
    term.child.kill('SIGTERM');
    await term.done;
    t.same(nsOf(term.id), [], 'SIGTERM: namespaces removed');
  });

  t.test('cleanup() removes labs of dead owners only', async (t) => {
    const killed = await childLab(`const lab = await Lab.create('t-killed'); await lab.host('h'); console.log(lab.id); setInterval(() => {}, 1000);`);
    killed.child.kill('SIGKILL'); // no handler runs
    await killed.done;
    t.equal(nsOf(killed.id).length, 1, 'SIGKILL leaves the namespace behind');
    t.equal(listLabs().find((l) => l.id === killed.id)?.state, 'stale');
    await Lab.withLab(async (live) => {
      ours.add(live.id);
      await live.host('h');
      t.equal(listLabs().find((l) => l.id === live.id)?.state, 'running');
      const r = cleanup({ ids: [killed.id, live.id] });
      t.ok(r.labs.includes(killed.id), 'stale lab removed');
      t.notOk(r.labs.includes(live.id), 'live lab untouched');
      t.same(nsOf(killed.id), []);
      t.equal(nsOf(live.id).length, 1);
    });
  });

  t.test('cli: --help, up --keep, list, down', async (t) => {
    const help = spawnSync(process.execPath, [cliPath, '--help'], { encoding: 'utf8' });
    t.equal(help.status, 0);
    t.match(help.stdout, /up <topology> \[--keep\]/);
    const up = spawnSync(process.execPath, [cliPath, 'up', 'two-hosts', '--keep'], { encoding: 'utf8' });
    t.equal(up.status, 0, up.stderr);
    const info = JSON.parse(up.stdout) as { id: string; hosts: { a: string } };
    ours.add(info.id);
    t.match(up.stderr, /\[lab [0-9a-f]{6}\] host a/, 'progress on stderr');
    t.equal(nsOf(info.id).length, 2, 'kept after the CLI exited');
    t.equal(spawnSync('ip', ['netns', 'exec', info.hosts.a, 'ping', '-c1', '-W1', '10.0.0.2']).status, 0, 'usable from the shell');
    const list = spawnSync(process.execPath, [cliPath, 'list'], { encoding: 'utf8' });
    t.match(list.stdout, new RegExp(`${info.id}\\s+kept`));
    t.notOk(cleanup({ ids: [info.id] }).labs.includes(info.id), 'cleanup leaves kept labs alone');
    const down = spawnSync(process.execPath, [cliPath, 'down', info.id], { encoding: 'utf8' });
    t.equal(down.status, 0, down.stderr);
    t.same(nsOf(info.id), [], 'down removed it');
    const bad = spawnSync(process.execPath, [cliPath, 'up', 'nope'], { encoding: 'utf8' });
    t.equal(bad.status, 1);
    t.match(bad.stderr, /unknown topology 'nope'/);
  });

  t.teardown(() => {
    const left = listNamespaces().filter((n) => [...ours].some((id) => n.startsWith(`ntm-${id}-`)));
    if (left.length) {
      for (const id of ours) removeLab(id);
      throw new Error(`namespaces left behind: ${left.join(' ')}`);
    }
  });
});
