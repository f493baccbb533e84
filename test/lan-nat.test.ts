// End-to-end tests of the LAN translation (router/lan-nat.ts over netlink/nftables.ts) with real
// traffic between namespaces, and of the lab's dnsmasq (lab/dnsmasq.ts). Needs root.
//
//   b1 192.168.2.11 (not published)  ┐
//   b2 192.168.2.20 (VIP 10.77.0.3)  ├─ segment lan ─ br-lan 192.168.2.1 router ntm0 ── eth0 peer
//      fd6e:746d:0:2::11 / ::20      ┘                fd6e:746d:0:2::1   (veth standing in for the TUN)
//
// router VIPs 10.77.0.1, fd4e:544d::1 on ntm0; peer VIPs 10.77.1.5, fd4e:544d:1::5 and 192.168.2.7, a
// VIP that collides with the LAN, shown to it as 10.255.0.2. The router routes the peer VIPs into
// ntm0 with /32 and /128 routes, as the daemon's route code would; the peer routes the router's VIPs
// and the LAN back over the link.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Lab, type Host } from '../lab/lab.js';
import { UdpAgent } from '../lab/udp.js';
import { startDnsmasq } from '../lab/dnsmasq.js';
import { applyRuleset, hasTable, listTable, readCounters, tableReplacement, NftError, type NftOptions } from '../netlink/nftables.js';
import { COUNTERS, LanTranslation, buildLanRuleset, type LanSpec } from '../router/lan-nat.js';

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces, nftables)' : false;
const require = createRequire(import.meta.url);

const SPEC: LanSpec = {
  tun: 'ntm0',
  lanInterfaces: ['br-lan'],
  ownVip4: '10.77.0.1',
  ownVip6: 'fd4e:544d::1',
  published: [{ name: 'b2', lan4: '192.168.2.20', vip4: '10.77.0.3', lan6: 'fd6e:746d:0:2::20', vip6: 'fd4e:544d::3' }],
  mapped: [{ local: '10.255.0.2', real: '192.168.2.7' }],
};

/** nft run inside a lab host. */
function nftIn(host: Host): NftOptions {
  return { exec: (args, input) => host.exec('nft', args, { allowFail: true, input }) };
}

/** The number of rules in a table. */
async function ruleCount(nft: NftOptions, table = 'ntmobile'): Promise<number> {
  return (await listTable('inet', table, nft)).nftables.filter((o) => 'rule' in o).length;
}

/** Spawn a node script in a host that prints one line when ready; resolves with the process. */
function spawnReady(host: Host, script: string, args: string[]): Promise<ChildProcess> {
  const child = host.spawn(process.execPath, ['-e', script, ...args], { log: 'pipe' });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`host ${host.name}: ${script.slice(0, 40)}… exited with ${code}: ${stderr}`)));
  });
}

/** An HTTP server that answers every request with the address it came from. */
const WHO_SRC = `
const s = require('node:http').createServer((q, a) => a.end(q.socket.remoteAddress));
s.listen(Number(process.argv[1]), '0.0.0.0', () => console.log('ready'));
`;

const NFTABLES_MODULE = fileURLToPath(new URL('../netlink/nftables.js', import.meta.url));
/** Lists the counter names of table inet ntmobile with the module's default exec. */
const DIRECT_SRC = `
import(process.argv[1]).then(async (m) => console.log(JSON.stringify([...(await m.readCounters('inet', 'ntmobile')).keys()])));
`;

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('spec validation', async (t) => {
  const bad = (patch: Partial<LanSpec>, message: string | RegExp): void => {
    t.throws(() => buildLanRuleset({ ...SPEC, ...patch }), { name: 'LanSpecError', message }, String(message));
  };
  const b3 = { name: 'b3', lan4: '192.168.2.300', vip4: '10.77.0.4' };
  bad({ published: [SPEC.published[0]!, b3] }, 'published[1].lan4: "192.168.2.300" is not an IPv4 address');
  bad({ published: [{ name: 'b2', lan4: '192.168.2.20', vip4: 'fd4e:544d::3' }] }, 'published[0].vip4: "fd4e:544d::3" is not an IPv4 address');
  bad({ published: [{ name: 'b2', vip6: 'fd4e:544d::3' }] }, 'published[0].vip6: fd4e:544d::3 has no lan6 to forward to');
  bad({ published: [{ name: 'b2', lan4: '192.168.2.20', vip4: '10.77.0.1' }] }, 'published[0].vip4: 10.77.0.1 is already used by ownVip4');
  bad({ published: [{ name: 'b"2', lan4: '192.168.2.20', vip4: '10.77.0.3' }] }, /^published\[0\]\.name: "b\\"2": want letters/);
  bad({ tun: 'ntm0-this-is-too-long' }, /^tun: "ntm0-this-is-too-long" is not an interface name/);
  bad({ lanInterfaces: ['br-lan', 'ntm0'] }, 'lanInterfaces[1]: "ntm0" is listed twice or is the TUN');
  bad({ ownVip6: '10.77.0.1' }, 'ownVip6: "10.77.0.1" is not an IPv6 address');
  bad({ mapped: [{ local: '10.255.0.2', real: 'fd00::7' }] }, 'mapped[0].real: "fd00::7" is not an IPv4 address');
  bad({ mapped: [{ local: '10.255.0.2', real: '192.168.2.7' }, { local: '10.255.0.2', real: '192.168.2.8' }] },
    'mapped[1].local: 10.255.0.2 is already used by mapped[0].local');
  bad({ table: 'bad table' }, /^table: nftables table name "bad table"/);
  const text = buildLanRuleset(SPEC);
  t.match(text, /^table inet ntmobile \{\}\ndelete table inet ntmobile\ntable inet ntmobile \{\n/, 'replaces the table in one file');
  t.match(text, /counter tun_to_lan_drop \{\}/, 'declares the named drop counter');
});

t.test('LAN translation end to end', { skip }, async (t) => {
  t.setTimeout(120_000);
  await Lab.withLab(async (lab) => {
    const lan = await lab.segment('lan');
    const router = await lab.host('router', { forwarding: true });
    const peer = await lab.host('peer');
    const b1 = await lab.host('b1');
    const b2 = await lab.host('b2');
    await lab.attach(router, lan, { name: 'br-lan', addr: ['192.168.2.1/24', 'fd6e:746d:0:2::1/64'] });
    for (const [h, n] of [[b1, 11], [b2, 20]] as const) {
      await lab.attach(h, lan, { addr: [`192.168.2.${n}/24`, `fd6e:746d:0:2::${n}/64`], gateway: ['192.168.2.1', 'fd6e:746d:0:2::1'] });
    }
    await lab.link(router, peer, {
      aName: 'ntm0', aAddr: ['10.77.0.1/32', 'fd4e:544d::1/128'],
      bName: 'eth0', bAddr: ['10.77.1.5/32', '192.168.2.7/32', 'fd4e:544d:1::5/128'],
    });
    for (const vip of ['10.77.1.5/32', '192.168.2.7/32', 'fd4e:544d:1::5/128']) await router.route(vip, undefined, 'ntm0');
    await peer.route('10.77.0.1/32', undefined, 'eth0');
    await peer.route('fd4e:544d::1/128', undefined, 'eth0');
    for (const net of ['10.77.0.0/24', '192.168.2.0/24']) await peer.route(net, '10.77.0.1', 'eth0');
    for (const net of ['fd4e:544d::/64', 'fd6e:746d:0:2::/64']) await peer.route(net, 'fd4e:544d::1', 'eth0');

    const nft = nftIn(router);
    const lanNat = new LanTranslation(nft);
    await lanNat.apply(SPEC);

    const agent = async (h: Host, family: 4 | 6 = 4, bind?: string): Promise<UdpAgent> =>
      UdpAgent.start(h, { family, ...(bind ? { bind } : {}) });
    const [peer4, peer6, b1v4, b2v4, b1v6, b2v6, peerMapped] = await Promise.all([
      agent(peer), agent(peer, 6), agent(b1), agent(b2), agent(b1, 6), agent(b2, 6), agent(peer, 4, '192.168.2.7'),
    ]);
    /** from sends `data` to addr:port, waits for it at `to`; returns the source `to` saw */
    const deliver = async (from: UdpAgent, to: UdpAgent, addr: string, data: string): Promise<string | undefined> => {
      await from.send(addr, to.port, data);
      return (await to.waitFor(data, 2000))?.from;
    };

    await t.test('peer → published VIP reaches b2 from the peer VIP; the reply comes from the VIP', async (t) => {
      t.equal(await deliver(peer4, b2v4, '10.77.0.3', 'to-b2'), '10.77.1.5', 'b2 sees the peer VIP');
      const got = await b2v4.waitFor('to-b2');
      t.equal(await deliver(b2v4, peer4, got!.from, 'reply-from-b2'), '10.77.0.3', 'the peer sees the reply from 10.77.0.3');
      const who = await spawnReady(b2, WHO_SRC, ['8080']);
      const r = await peer.exec('curl', ['-s', '--max-time', '3', 'http://10.77.0.3:8080/']);
      t.equal(r.stdout, '10.77.1.5', 'TCP too');
      who.kill();
    });

    await t.test('peer → a LAN address is dropped and counted', async (t) => {
      const before = (await readCounters('inet', 'ntmobile', nft)).get(COUNTERS.tunToLanDrop)!.packets;
      await peer4.send('192.168.2.11', b1v4.port, 'to-b1-direct');
      t.equal(await b1v4.waitFor('to-b1-direct', 700), undefined, 'b1 got nothing');
      t.notOk(await peer.ping('192.168.2.11', { timeoutS: 0.5 }), 'no ping either');
      const after = (await readCounters('inet', 'ntmobile', nft)).get(COUNTERS.tunToLanDrop)!.packets;
      t.ok(after >= before + 2, `${COUNTERS.tunToLanDrop} went from ${before} to ${after}`);
    });

    await t.test('LAN → peer leaves from the router VIP, or from the published VIP', async (t) => {
      t.equal(await deliver(b1v4, peer4, '10.77.1.5', 'from-b1'), '10.77.0.1', 'b1 → peer from the router VIP');
      const seen = await peer4.waitFor('from-b1');
      await peer4.send(seen!.from, seen!.port, 'reply-on-flow');
      t.equal((await b1v4.waitFor('reply-on-flow'))?.from, '10.77.1.5', 'the reply on the flow reaches b1');
      const other = await agent(peer);
      await other.send('10.77.0.1', b1v4.port, 'to-router-vip');
      t.equal(await b1v4.waitFor('to-router-vip', 700), undefined, 'the router VIP off that flow is the router, not b1');
      t.equal(await deliver(b2v4, peer4, '10.77.1.5', 'from-b2'), '10.77.0.3', 'b2 → peer from its own VIP');
      t.ok(await b1.ping('10.77.1.5'), 'b1 pings the peer');
    });

    await t.test('a peer VIP that collides with the LAN, through its mapped address', async (t) => {
      t.equal(await deliver(b1v4, peerMapped, '10.255.0.2', 'to-mapped'), '10.77.0.1', 'b1 → 10.255.0.2 reaches 192.168.2.7');
      const seen = await peerMapped.waitFor('to-mapped');
      await peerMapped.send(seen!.from, seen!.port, 'mapped-reply');
      t.equal((await b1v4.waitFor('mapped-reply'))?.from, '10.255.0.2', 'b1 sees the reply from the mapped address');
      t.equal(await deliver(peerMapped, b2v4, '10.77.0.3', 'from-mapped'), '10.255.0.2',
        '192.168.2.7 → published VIP: b2 sees the mapped address, not one on its own network');
    });

    await t.test('IPv6: published VIP both ways, router VIP', async (t) => {
      t.equal(await deliver(peer6, b2v6, 'fd4e:544d::3', 'to-b2-6'), 'fd4e:544d:1::5', 'peer → fd4e:544d::3 reaches b2');
      t.equal(await deliver(b2v6, peer6, 'fd4e:544d:1::5', 'from-b2-6'), 'fd4e:544d::3', 'b2 → peer from its VIP');
      t.equal(await deliver(b1v6, peer6, 'fd4e:544d:1::5', 'from-b1-6'), 'fd4e:544d::1', 'b1 → peer from the router VIP');
      await peer6.send('fd6e:746d:0:2::11', b1v6.port, 'to-b1-6-direct');
      t.equal(await b1v6.waitFor('to-b1-6-direct', 700), undefined, 'peer → b1 LAN address dropped');
    });

    await t.test('re-applying replaces the table in one transaction', async (t) => {
      const rules = await ruleCount(nft);
      await lanNat.apply(SPEC);
      t.equal(await ruleCount(nft), rules, 'same rule count after a second apply');
      // without an IPv6 VIP of its own the router drops b1's IPv6 to the tunnel; b2 keeps its own VIP
      await lanNat.apply({ ...SPEC, ownVip6: null });
      await b1v6.send('fd4e:544d:1::5', peer6.port, 'b1-6-no-vip');
      t.equal(await peer6.waitFor('b1-6-no-vip', 700), undefined, 'b1 IPv6 dropped');
      t.equal((await readCounters('inet', 'ntmobile', nft)).get(COUNTERS.lanToTunDrop)!.packets, 1, `${COUNTERS.lanToTunDrop} counted it`);
      t.equal(await deliver(b2v6, peer6, 'fd4e:544d:1::5', 'b2-6-still'), 'fd4e:544d::3', 'b2 still sends from its VIP');
      await lanNat.apply(SPEC);
      t.equal(await ruleCount(nft), rules, 'same rule count after going back');
      // the daemon's way: nft run directly, inside the namespace it already is in
      const direct = await router.exec(process.execPath, ['-e', DIRECT_SRC, NFTABLES_MODULE]);
      t.same(JSON.parse(direct.stdout), Object.values(COUNTERS), 'the default exec reads the same counters');
      // a rule set nft rejects leaves the table as it was
      const broken = tableReplacement('inet', 'ntmobile', '  chain forward {\n    iifname "ntm0" no-such-statement\n  }\n');
      const err = await applyRuleset(broken, nft).catch((e: unknown) => e);
      t.type(err, NftError);
      t.match((err as Error).message, /^nft -f - \(table inet ntmobile\) failed with exit code 1: .*Error/s, 'the error names the table and carries nft stderr');
      t.equal(await ruleCount(nft), rules, 'old table intact');
      t.equal(await deliver(peer4, b2v4, '10.77.0.3', 'still-published'), '10.77.1.5', 'and still working');
    });

    await t.test('remove() deletes the table, twice without error', async (t) => {
      await lanNat.remove();
      t.notOk(await hasTable('inet', 'ntmobile', nft), 'no table');
      await lanNat.remove();
      t.notOk(await hasTable('inet', 'ntmobile', nft), 'still no table');
      await peer4.send('10.77.0.3', b2v4.port, 'after-remove');
      t.equal(await b2v4.waitFor('after-remove', 700), undefined, 'published VIP no longer forwarded');
      await t.rejects(listTable('inet', 'ntmobile', nft), { name: 'NftError', message: /table inet ntmobile/ });
    });
  });
});

/** A DNS server for fleet2.test: answers A queries with 10.77.0.3 and prints every question's name. */
const RESPONDER_SRC = `
const dnsPacket = require(process.argv[1]);
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => {
  const q = dnsPacket.decode(m);
  const name = q.questions[0].name;
  console.log(JSON.stringify({ name }));
  const answers = name.endsWith('fleet2.test') ? [{ type: 'A', name, ttl: 5, data: '10.77.0.3' }] : [];
  s.send(dnsPacket.encode({ id: q.id, type: 'response', flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED,
    questions: q.questions, answers }), r.port, r.address);
});
s.bind(5353, process.argv[2], () => console.log('ready'));
`;

/** Resolve a name with node:dns against one server; prints the addresses or the error code. */
const RESOLVE_SRC = `
const { Resolver } = require('node:dns').promises;
const r = new Resolver({ timeout: 1000, tries: 1 });
r.setServers([process.argv[1]]);
r.resolve4(process.argv[2]).then((a) => console.log(a.join(',')), (e) => console.log(e.code));
`;

t.test('dnsmasq forwards a domain to a lab server and is gone after teardown', { skip }, async (t) => {
  t.setTimeout(60_000);
  const lab = await Lab.create('lan-nat-dnsmasq');
  let pid: number | undefined;
  try {
    const seg = await lab.segment('lan');
    const gw = await lab.host('gw');
    const dns = await lab.host('dns');
    const client = await lab.host('client');
    await lab.attach(gw, seg, { addr: '192.168.2.1/24' });
    await lab.attach(dns, seg, { addr: '192.168.2.53/24' });
    await lab.attach(client, seg, { addr: '192.168.2.11/24' });
    const responder = await spawnReady(dns, RESPONDER_SRC, [require.resolve('dns-packet'), '192.168.2.53']);
    const asked: string[] = [];
    createInterface({ input: responder.stdout! }).on('line', (l) => asked.push((JSON.parse(l) as { name: string }).name));

    await t.rejects(startDnsmasq(gw, { listen: ['192.168.2.1'], forward: [{ domain: 'fleet2.test', server: 'dns.lab#53' }] }),
      /forward\[0\]\.server: "dns\.lab#53" is not 'address' or 'address#port'/);
    const d = await startDnsmasq(gw, {
      listen: ['192.168.2.1'],
      forward: [{ domain: 'fleet2.test', server: '192.168.2.53#5353' }],
      hosts: { 'router.lan': '192.168.2.1' },
    });
    pid = d.pid;
    const conf = fs.readFileSync(d.confFile, 'utf8');
    for (const line of ['no-resolv', 'no-hosts', 'server=/fleet2.test/192.168.2.53#5353', 'listen-address=192.168.2.1']) {
      t.match(conf, new RegExp(`^${line}$`, 'm'), `conf has ${line}`);
    }
    const resolve = async (name: string): Promise<string> =>
      (await client.exec(process.execPath, ['-e', RESOLVE_SRC, '192.168.2.1', name])).stdout.trim();
    t.equal(await resolve('b2.fleet2.test'), '10.77.0.3', 'the client resolves b2.fleet2.test through dnsmasq');
    t.equal(await resolve('router.lan'), '192.168.2.1', 'a fixed record');
    t.equal(await resolve('example.com'), 'EREFUSED', 'other names: refused, not forwarded');
    t.same(asked, ['b2.fleet2.test'], 'the responder was asked only for fleet2.test');
    t.match(fs.readFileSync(d.logFile, 'utf8'), /forwarded b2\.fleet2\.test to 192\.168\.2\.53#5353/, 'queries are logged');

    // a second instance, stopped by hand
    const second = await startDnsmasq(dns, { listen: ['192.168.2.53'], forward: [] });
    await second.stop();
    t.notOk(alive(second.pid), 'stop() ends it');
    await second.stop();
    t.ok(alive(d.pid), 'the first one still runs');
  } finally {
    await lab.destroy();
  }
  t.notOk(pid === undefined || alive(pid), `dnsmasq ${pid} is gone after the lab's teardown`);
});
