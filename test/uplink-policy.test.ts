// Uplink preference (router/uplink-policy.ts): the pure choice (listed devices as the kernel sees
// them → the one the daemon uses) in this process, and the policy routing against a real kernel
// inside a network namespace this file creates and deletes (it re-runs itself under `ip netns
// exec`, as test/netlink.test.ts does): two listed uplinks and an unlisted device with the best
// metric, carrier loss and return, our rules and table only for our port, removal on stop, and
// what a crashed run left removed on the next start.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import {
  IFF_LOWER_UP,
  IFF_UP,
  IPPROTO_UDP,
  RT_TABLE_MAIN,
  RTN_UNICAST,
  addRule,
  addUnreachableRoute,
  delRule,
  getRoute,
  listRules,
  replaceRoute,
  type AddressInfo,
  type LinkInfo,
  type RouteInfo,
} from '../netlink/rtnetlink.js';
import { candidatesOf, chooseUplink, RTPROT_NTMOBILE, UplinkPolicy, usable, type KernelState } from '../router/uplink-policy.js';

const INSIDE = process.env.NTM_TEST_NETNS;

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

if (INSIDE === undefined) {
  // ---- the pure choice ----------------------------------------------------------------------
  const link = (index: number, name: string, flags = IFF_UP | IFF_LOWER_UP): LinkInfo => ({ index, name, mtu: 1500, flags, up: (flags & IFF_UP) !== 0 });
  const addr = (index: number, address: string, o: Partial<AddressInfo> = {}): AddressInfo => ({
    index,
    family: address.includes(':') ? 6 : 4,
    address,
    prefixLen: 24,
    cidr: `${address}/24`,
    flags: 0,
    scope: 0,
    ...o,
  });
  const dflt = (index: number, via: string | undefined, metric: number, o: Partial<RouteInfo> = {}): RouteInfo => ({
    family: via?.includes(':') ? 6 : 4,
    dst: via?.includes(':') ? '::/0' : '0.0.0.0/0',
    index,
    ...(via !== undefined ? { via } : {}),
    metric,
    table: RT_TABLE_MAIN,
    protocol: 4,
    scope: 0,
    routeType: RTN_UNICAST,
    ...o,
  });
  const kernel = (o: Partial<KernelState> = {}): KernelState => ({
    links: [link(1, 'lo'), link(2, 'wwan0'), link(3, 'eth1'), link(4, 'br-lan')],
    addresses: [addr(2, '100.64.1.2'), addr(3, '192.0.2.10'), addr(4, '192.168.1.1')],
    routes: [dflt(2, '100.64.1.1', 100), dflt(3, '192.0.2.1', 50), dflt(4, '192.168.1.254', 10)],
    ...o,
  });
  const devices = ['wwan0', 'eth1'];

  t.test('the first listed device that is up, has an address and a default route in main is chosen, whatever the metrics', async (t) => {
    const c = candidatesOf(devices, kernel());
    t.same(
      c.map((x) => [x.device, x.link, x.ipv4.address, x.ipv4.defaultRoute?.via]),
      [
        ['wwan0', 'up', '100.64.1.2', '100.64.1.1'],
        ['eth1', 'up', '192.0.2.10', '192.0.2.1'],
      ],
      'the listed devices in the operator’s order; br-lan (best metric) is not among them',
    );
    t.equal(chooseUplink(c, 4)?.device, 'wwan0', 'wwan0 although eth1 and br-lan have better metrics');
    t.equal(chooseUplink(c, 6), null, 'no IPv6 anywhere: none');
  });

  t.test('a device that is not usable is passed over, for its reason', async (t) => {
    const cases: [string, Partial<KernelState>, string | null][] = [
      ['link down', { links: [link(2, 'wwan0', 0), link(3, 'eth1')] }, 'eth1'],
      ['no carrier', { links: [link(2, 'wwan0', IFF_UP), link(3, 'eth1')] }, 'eth1'],
      ['absent', { links: [link(3, 'eth1')] }, 'eth1'],
      ['no address', { addresses: [addr(3, '192.0.2.10')] }, 'eth1'],
      ['a tentative address only', { addresses: [addr(2, '100.64.1.2', { flags: 0x40 }), addr(3, '192.0.2.10')] }, 'eth1'],
      ['a link-scope address only', { addresses: [addr(2, '100.64.1.2', { scope: 253 }), addr(3, '192.0.2.10')] }, 'eth1'],
      ['no default route over it', { routes: [dflt(3, '192.0.2.1', 50)] }, 'eth1'],
      ['its default route in another table', { routes: [dflt(2, '100.64.1.1', 100, { table: 100 }), dflt(3, '192.0.2.1', 50)] }, 'eth1'],
      ['an unreachable default is no route over it', { routes: [dflt(2, undefined, 100, { routeType: 7 }), dflt(3, '192.0.2.1', 50)] }, 'eth1'],
      ['both unusable: none (never the unlisted br-lan)', { links: [link(2, 'wwan0', IFF_UP), link(3, 'eth1', 0), link(4, 'br-lan')] }, null],
    ];
    for (const [what, k, want] of cases) t.equal(chooseUplink(candidatesOf(devices, kernel(k)), 4)?.device ?? null, want, what);
  });

  t.test('an on-link default (PPP, raw-IP LTE) counts; the lowest metric over a device gives the gateway; families are chosen apart', async (t) => {
    const k = kernel({
      addresses: [addr(2, '100.64.1.2'), addr(3, '192.0.2.10'), addr(3, '2001:db8::10')],
      routes: [dflt(2, undefined, 100), dflt(3, '192.0.2.9', 70), dflt(3, '192.0.2.1', 50), dflt(3, 'fe80::1', 1024)],
    });
    const c = candidatesOf(devices, k);
    t.same(c[0]?.ipv4.defaultRoute, { via: null, metric: 100 }, 'on-link default over wwan0');
    t.same(c[1]?.ipv4.defaultRoute, { via: '192.0.2.1', metric: 50 }, 'the lowest metric over eth1');
    t.equal(chooseUplink(c, 4)?.device, 'wwan0');
    t.equal(chooseUplink(c, 6)?.device, 'eth1', 'IPv6 through the first device that has it');
    t.notOk(usable(c[0]!, 6));
  });

  t.test('uplink policy against the kernel, inside a network namespace', { skip: process.getuid?.() !== 0 ? 'needs root for ip netns' : false }, async (t) => {
    const ns = `ntmtest-up-${process.pid}-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    const cleanup = (): void => void spawnSync('ip', ['netns', 'del', ns]);
    process.once('exit', cleanup);
    t.teardown(cleanup);
    await t.spawn('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, fileURLToPath(import.meta.url)], { env: { ...process.env, NTM_TEST_NETNS: ns } }, `inside ${ns}`);
  });
} else {
  // ---- inside the namespace --------------------------------------------------------------------
  const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });
  const PORT = 4500;
  const TABLE = 4500;
  const DC = '198.18.0.10';
  const log: string[] = [];

  ip('link', 'set', 'lo', 'up');
  // Three devices with a default route each: up1 and up2 listed, mesh0 (best metric) not.
  for (const [dev, n, metric] of [
    ['up1', 1, 100],
    ['up2', 2, 50],
    ['mesh0', 3, 10],
  ] as const) {
    ip('link', 'add', dev, 'type', 'veth', 'peer', 'name', `far${n}`);
    ip('link', 'set', `far${n}`, 'up');
    ip('link', 'set', dev, 'up');
    ip('addr', 'add', `10.0.${n}.2/24`, 'dev', dev);
    ip('route', 'add', 'default', 'via', `10.0.${n}.1`, 'dev', dev, 'metric', String(metric));
  }
  const ours = async (): Promise<number> => (await listRules()).filter((r) => r.protocol === RTPROT_NTMOBILE).length;
  const table = (family: '-4' | '-6' = '-4'): string => ip(family, 'route', 'show', 'table', String(TABLE)).trim();

  t.test('our datagrams leave through the preferred listed device; nothing else is affected', async (t) => {
    const policy = new UplinkPolicy({ devices: ['up1', 'up2'], table: TABLE, ownDevice: 'ntm0', log: (l) => log.push(l) });
    await policy.start(PORT);
    t.teardown(() => policy.stop());
    t.equal(await ours(), 4, 'two rules per family');
    t.match(table(), /default via 10\.0\.1\.1 dev up1 proto 78 metric 1/, 'our table: the default via up1’s gateway');
    t.match(table(), /unreachable default proto 78 metric 4294967295/, 'and the unreachable one behind it');
    t.match(table('-6'), /unreachable default/, 'IPv6: no listed device has it, unreachable only');
    t.equal(await policy.source(DC, PORT), '10.0.1.2', 'our port: up1’s address');
    t.equal((await getRoute(DC)).dev, 'mesh0', 'other traffic: the kernel’s choice (mesh0, metric 10)');
    t.equal((await getRoute(DC, { ipProto: IPPROTO_UDP, sport: PORT + 1 })).dev, 'mesh0', 'another UDP port: the kernel’s choice');
    t.equal(await policy.source('10.0.3.9', PORT), '10.0.3.2', 'a directly connected network keeps its route (main without default routes first)');
    t.same(
      policy.status().map((c) => [c.device, c.link, c.ipv4.address, c.ipv4.gateway, c.ipv4.usable, c.ipv4.chosen]),
      [
        ['up1', 'up', '10.0.1.2', '10.0.1.1', true, true],
        ['up2', 'up', '10.0.2.2', '10.0.2.1', true, false],
      ],
      'status: each listed device, usable, the chosen one',
    );

    ip('link', 'set', 'far1', 'down'); // up1 loses its carrier: its routes stay (linkdown), the kernel would still use them
    await waitFor(() => policy.status()[1]?.ipv4.chosen === true, 'the events to move us to up2');
    t.equal(policy.status()[0]?.link, 'no-carrier');
    t.match(table(), /default via 10\.0\.2\.1 dev up2/, 'our table follows without a probe (rtnetlink events)');
    t.equal(await policy.source(DC, PORT), '10.0.2.2', 'our port: up2’s address');

    ip('link', 'set', 'up2', 'down');
    t.equal(await policy.source(DC, PORT), null, 'no listed device usable: no route for us, not the unlisted mesh0');
    t.equal(await policy.source('10.0.3.9', PORT), '10.0.3.2', 'directly connected networks still reachable');

    ip('link', 'set', 'up2', 'up');
    ip('route', 'add', 'default', 'via', '10.0.2.1', 'dev', 'up2', 'metric', '50'); // the kernel dropped it with the link
    ip('link', 'set', 'far1', 'up');
    t.equal(await policy.source(DC, PORT), '10.0.1.2', 'up1 back: the probe brings the table up to date first, back to up1');
    t.match(log.join('\n'), /uplinks: IPv4 through up2; up1: no carrier/, 'the log says why');

    await policy.stop();
    t.equal(await ours(), 0, 'stop: no rule of ours left');
    t.equal(table(), '', 'stop: our table is empty');
    t.equal(table('-6'), '', 'stop: our IPv6 table is empty');
    t.equal((await getRoute(DC, { ipProto: IPPROTO_UDP, sport: PORT })).dev, 'mesh0', 'after stop our port follows the kernel again');
  });

  t.test('a crashed run’s rules and routes are removed at the next start; other rules are left alone', async (t) => {
    await addRule({ family: 4, priority: 1000, table: 100, iifname: 'lo' }); // someone else's
    t.teardown(() => delRule({ family: 4, priority: 1000, table: 100 }));
    // What a run with another port and table left when its process died.
    for (const family of [4, 6] as const) {
      await addRule({ family, priority: 4600, table: RT_TABLE_MAIN, iifname: 'lo', ipProto: IPPROTO_UDP, sport: [4501, 4501], suppressPrefixLength: 0, protocol: RTPROT_NTMOBILE });
      await addRule({ family, priority: 4601, table: 4600, iifname: 'lo', ipProto: IPPROTO_UDP, sport: [4501, 4501], protocol: RTPROT_NTMOBILE });
    }
    await replaceRoute('0.0.0.0/0', { dev: 'up2', via: '10.0.2.1', metric: 1, table: 4600, protocol: RTPROT_NTMOBILE });
    await addUnreachableRoute('::/0', { metric: 0xffffffff, table: 4600, protocol: RTPROT_NTMOBILE });
    t.equal(await ours(), 4);
    const policy = new UplinkPolicy({ devices: ['up1'], table: TABLE, ownDevice: 'ntm0', log: (l) => log.push(l) });
    await policy.start(PORT);
    t.teardown(() => policy.stop());
    t.equal(ip('-4', 'route', 'show', 'table', '4600').trim(), '', 'the crashed run’s table is empty');
    t.equal(ip('-6', 'route', 'show', 'table', '4600').trim(), '', 'also for IPv6');
    const rules = (await listRules()).filter((r) => r.protocol === RTPROT_NTMOBILE);
    t.same([...new Set(rules.map((r) => r.sport?.[0]))], [PORT], 'only our port’s rules');
    t.equal(rules.length, 4);
    t.ok((await listRules(4)).some((r) => r.priority === 1000 && r.table === 100), 'a rule that is not ours stays');
    t.match(log.join('\n'), /removed \d+ rule\(s\) and route\(s\) an earlier run left/);
    await policy.stop();
  });

  t.test('no devices listed: nothing is set up, the kernel decides', async (t) => {
    const policy = new UplinkPolicy({ devices: [], table: TABLE, ownDevice: 'ntm0' });
    await policy.start(PORT);
    t.equal(await ours(), 0);
    t.equal(await policy.source(DC, PORT), '10.0.3.2', 'the kernel’s choice (mesh0)');
    t.same(policy.status(), []);
    await policy.stop();
  });
}
