// Tests for the kernel layer: protocol/endpoint.ts, the native addon, netlink/udp.ts on loopback
// (in this process), and netlink/rtnetlink.ts + netlink/tun.ts inside a network namespace that
// this file creates and deletes: it re-runs itself under `ip netns exec` (NTM_TEST_NETNS set) as a
// tap subprocess, so nothing touches the host's links, addresses or routes.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { EndpointError, decodeSockaddr, encodeSockaddr, formatEndpoint } from '../protocol/endpoint.js';
import { PacketBatch, SOCKADDR_SIZE } from '../tunnel/io.js';
import * as native from '../netlink/native.js';
import {
  IFA_F_TENTATIVE,
  RTMGRP_IPV4_IFADDR,
  RTMGRP_IPV4_ROUTE,
  RTMGRP_IPV6_IFADDR,
  RTMGRP_LINK,
  RtnetlinkError,
  addAddress,
  addRoute,
  delAddress,
  delRoute,
  getLink,
  linkIndex,
  listAddresses,
  listLinks,
  listRoutes,
  setLinkUp,
  setMtu,
  subscribe,
  type RtEvent,
} from '../netlink/rtnetlink.js';
import { TunDevice } from '../netlink/tun.js';
import { UdpSocket } from '../netlink/udp.js';
import { icmpEcho, udpPacket } from './tools/packets.js';

const INSIDE = process.env.NTM_TEST_NETNS;

async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// ---- tiny packet parser and batch helper for the TUN tests -------------------------------

interface Seen {
  src: string;
  dst: string;
  proto: number;
  body: Buffer;
}

function parseIp(p: Buffer): Seen | undefined {
  const sa = Buffer.alloc(SOCKADDR_SIZE);
  const str = (b: Buffer) => {
    if (b.length === 4) return b.join('.');
    sa[0] = 10;
    sa.set(b, 8);
    return decodeSockaddr(sa).address;
  };
  if (p[0] === undefined) return undefined;
  if (p[0] >> 4 === 4) {
    const ihl = (p[0] & 15) * 4;
    return { src: str(p.subarray(12, 16)), dst: str(p.subarray(16, 20)), proto: p[9] ?? 0, body: p.subarray(ihl) };
  }
  if (p[0] >> 4 === 6) return { src: str(p.subarray(8, 24)), dst: str(p.subarray(24, 40)), proto: p[6] ?? 0, body: p.subarray(40) };
  return undefined;
}

function putPacket(b: PacketBatch, p: Buffer): void {
  b.buf.set(p, b.offset(b.count));
  b.lengths[b.count++] = p.length;
}

// ---- in this process ---------------------------------------------------------------------------

if (INSIDE === undefined) {
  t.test('endpoint encode/decode', async (t) => {
    const v4 = encodeSockaddr('192.0.2.7', 4500);
    t.equal(v4.length, 28);
    t.same([...v4.subarray(0, 4)], [10, 0, 0x11, 0x94], 'AF_INET6 little-endian, port big-endian');
    t.same([...v4.subarray(8, 24)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7], 'v4-mapped');
    t.same(decodeSockaddr(v4), { address: '192.0.2.7', port: 4500, family: 4 });

    const cases: [string, string][] = [
      ['::1', '::1'],
      ['::', '::'],
      ['2001:db8::8:800:200c:417a', '2001:db8::8:800:200c:417a'],
      ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
      ['fd00:1::', 'fd00:1::'],
      ['fe80::1%3', 'fe80::1%3'],
      ['::ffff:10.1.2.3', '10.1.2.3'],
      ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
    ];
    for (const [input, text] of cases) {
      const d = decodeSockaddr(encodeSockaddr(input, 65535));
      t.equal(d.address, text, `${input} round trip`);
      t.equal(d.port, 65535);
    }
    t.equal(encodeSockaddr('fe80::1%3', 1).readUInt32LE(24), 3, 'scope id little-endian at 24');

    const out = Buffer.alloc(3 * 28, 0xaa);
    encodeSockaddr('10.0.0.1', 1, out, 28);
    t.equal(out[0], 0xaa, 'slot 0 untouched');
    t.equal(out[56], 0xaa, 'slot 2 untouched');
    t.same(decodeSockaddr(out, 28), { address: '10.0.0.1', port: 1, family: 4 });

    t.equal(formatEndpoint('1.2.3.4', 5), '1.2.3.4:5');
    t.equal(formatEndpoint('::1', 5), '[::1]:5');
    t.equal(formatEndpoint(encodeSockaddr('2001:db8::1', 4500)), '[2001:db8::1]:4500');
    t.equal(formatEndpoint(out, 28), '10.0.0.1:1');
    t.equal(formatEndpoint({ address: '10.0.0.1', port: 9 }), '10.0.0.1:9');

    t.throws(() => encodeSockaddr('1.2.3', 1), new EndpointError('"1.2.3" is not an IP address'));
    t.throws(() => encodeSockaddr('example.com', 1), { name: 'EndpointError' });
    t.throws(() => encodeSockaddr('1.2.3.4', 70000), { name: 'EndpointError', message: /port 70000/ });
    t.throws(() => encodeSockaddr('1.2.3.4', 1.5), { name: 'EndpointError' });
    t.throws(() => encodeSockaddr('fe80::1%eth0', 1), { name: 'EndpointError', message: /numeric/ });
    t.throws(() => encodeSockaddr('1.2.3.4', 1, Buffer.alloc(40), 20), { name: 'EndpointError', message: /offset 20/ });
    const bad = encodeSockaddr('1.2.3.4', 1);
    bad[0] = 2;
    t.throws(() => decodeSockaddr(bad), { name: 'EndpointError', message: /family 2/ });
    t.throws(() => decodeSockaddr(Buffer.alloc(27)), { name: 'EndpointError' });
  });

  t.test('addon argument and errno errors', async (t) => {
    t.throws(() => native.udpOpen('not-an-ip', 0), { code: 'EINVAL', message: 'udpOpen not-an-ip: EINVAL' });
    const a = UdpSocket.open({ bindAddress: '127.0.0.1', port: 0 });
    t.teardown(() => a.close());
    t.throws(() => UdpSocket.open({ bindAddress: '127.0.0.1', port: a.port }), {
      code: 'EADDRINUSE',
      message: `bind 127.0.0.1:${a.port}: EADDRINUSE`,
    });
    const lengths = new Int32Array(4);
    t.throws(() => native.readBatch(-1, Buffer.alloc(4096), 1024, 4, lengths), { code: 'EBADF', message: 'read fd -1: EBADF' });
    t.throws(() => native.readBatch(a.fd, Buffer.alloc(4096), 2048, 4, lengths), RangeError, 'slots beyond the buffer');
    t.throws(() => native.recvBatch(a.fd, Buffer.alloc(4096), 1024, 4, lengths, Buffer.alloc(28)), RangeError, 'addrs too short');
    t.throws(() => native.readBatch(a.fd, Buffer.alloc(4096), 1024, 4, new Int32Array(2)), RangeError, 'lengths too short');
    t.throws(() => native.writeBatch(a.fd, Buffer.alloc(4), 4, new Float64Array(1) as unknown as Int32Array, 1), TypeError);
    t.throws(() => native.tunOpen('x'.repeat(16)), RangeError, 'interface name too long');
    t.equal(native.recvBatch(a.fd, Buffer.alloc(4096), 1024, 4, lengths, Buffer.alloc(112)), 0, 'empty socket: 0');
    t.throws(() => native.close(-1), { code: 'EBADF' });
  });

  t.test('UDP batch send/recv on loopback', async (t) => {
    const cases: [string, string, 4 | 6][] = [
      ['127.0.0.1', '127.0.0.1', 4], // AF_INET sockets
      ['::', '::1', 6], // dual-stack sockets, IPv6
      ['::', '127.0.0.1', 4], // dual-stack sockets, IPv4 (v4-mapped inside)
    ];
    for (const [bind, dest, family] of cases) {
      const a = UdpSocket.open({ bindAddress: bind, port: 0 });
      const b = UdpSocket.open({ bindAddress: bind, port: 0, batch: 16 });
      t.teardown(() => (a.close(), b.close()));
      t.not(a.port, 0, 'ephemeral port bound');
      const atB: { data: string; from: ReturnType<typeof decodeSockaddr> }[] = [];
      const echoes: string[] = [];
      b.start((batch) => {
        for (let i = 0; i < batch.count; i++) {
          const o = batch.offset(i);
          atB.push({ data: batch.buf.toString('utf8', o, o + (batch.lengths[i] ?? 0)), from: decodeSockaddr(batch.addrs, i * SOCKADDR_SIZE) });
        }
        t.equal(b.send(batch), batch.count, 'echo the received batch back to its sources');
      });
      a.start((batch) => {
        for (let i = 0; i < batch.count; i++) echoes.push(batch.buf.toString('utf8', batch.offset(i), batch.offset(i) + (batch.lengths[i] ?? 0)));
      });
      const N = 40;
      const out = new PacketBatch(N, 2048);
      for (let i = 0; i < N; i++) {
        putPacket(out, Buffer.from(`datagram ${i} ${'x'.repeat(i * 25)}`));
        encodeSockaddr(dest, b.port, out.addrs, i * SOCKADDR_SIZE);
      }
      t.equal(a.send(out), N, `${bind} -> ${dest}: all sent`);
      await waitFor(() => atB.length === N && echoes.length === N, `${N} datagrams and echoes (${bind} -> ${dest})`);
      t.same(
        atB.map((x) => x.data),
        Array.from({ length: N }, (_, i) => `datagram ${i} ${'x'.repeat(i * 25)}`),
        'contents in order',
      );
      t.ok(atB.every((x) => x.from.address === dest && x.from.port === a.port && x.from.family === family), `source is ${formatEndpoint(dest, a.port)}`);
      t.equal(echoes.length, N, 'echoes arrived');
      t.equal(a.sendOne(Buffer.from('one'), encodeSockaddr(dest, b.port)), true, 'sendOne');
      t.equal(a.sendOne(Buffer.alloc(0), encodeSockaddr(dest, b.port)), true, 'sendOne empty datagram');
      await waitFor(() => atB.length === N + 2, 'sendOne datagrams');
      t.same(atB.slice(N).map((x) => x.data), ['one', '']);
      a.close();
      b.close();
      t.equal(a.send(out), 0, 'send after close: 0');
    }
  });

  t.test('UDP: unusable endpoints are dropped, the rest still sent', async (t) => {
    const a = UdpSocket.open({ bindAddress: '127.0.0.1', port: 0 });
    const b = UdpSocket.open({ bindAddress: '127.0.0.1', port: 0 });
    t.teardown(() => (a.close(), b.close()));
    const got: string[] = [];
    b.start((batch) => {
      for (let i = 0; i < batch.count; i++) got.push(batch.buf.toString('utf8', batch.offset(i), batch.offset(i) + (batch.lengths[i] ?? 0)));
    });
    const out = new PacketBatch(4, 256);
    putPacket(out, Buffer.from('to v6 on an IPv4 socket'));
    encodeSockaddr('::1', b.port, out.addrs, 0);
    putPacket(out, Buffer.from('ok 1'));
    encodeSockaddr('127.0.0.1', b.port, out.addrs, 28);
    putPacket(out, Buffer.from('zeroed endpoint'));
    putPacket(out, Buffer.from('ok 2'));
    encodeSockaddr('127.0.0.1', b.port, out.addrs, 84);
    t.equal(a.send(out), 2);
    await waitFor(() => got.length === 2, 'two datagrams');
    t.same(got, ['ok 1', 'ok 2']);
  });

  // UDP GSO on send (netlink/udp.ts, sendBatch in native/ntm.c): runs of equal-size datagrams to
  // one endpoint leave as one UDP_SEGMENT message; the kernel cuts them apart again on loopback.
  const gsoRoundTrip = async (
    t: Test,
    bind: string,
    plan: { len: number; to: 'b' | 'c' | 'bad' }[],
    opts: { gso?: boolean } = {},
  ): Promise<{ a: UdpSocket; sent: number; got: Record<'b' | 'c', string[]>; want: Record<'b' | 'c', string[]> }> => {
    const a = UdpSocket.open({ bindAddress: bind, port: 0, ...opts });
    const b = UdpSocket.open({ bindAddress: bind, port: 0 });
    const c = UdpSocket.open({ bindAddress: bind, port: 0 });
    t.teardown(() => (a.close(), b.close(), c.close()));
    const got = { b: [] as string[], c: [] as string[] };
    const want = { b: [] as string[], c: [] as string[] };
    for (const [name, s] of [['b', b], ['c', c]] as const) {
      s.start((batch) => {
        for (let i = 0; i < batch.count; i++) got[name].push(batch.buf.toString('latin1', batch.offset(i), batch.offset(i) + (batch.lengths[i] ?? 0)));
      });
    }
    const dest = bind === '127.0.0.1' ? '127.0.0.1' : '::1';
    const out = new PacketBatch(plan.length, 2048);
    plan.forEach(({ len, to }, i) => {
      // distinct, position-dependent contents: a datagram cut or sent out of order shows up
      const data = Buffer.alloc(len, String.fromCharCode(0x41 + (i % 26)));
      if (len >= 4) data.write(String(i).padStart(4, '0'), 'latin1');
      putPacket(out, data);
      if (to === 'bad') return; // zeroed endpoint: not sent
      encodeSockaddr(dest, (to === 'b' ? b : c).port, out.addrs, i * SOCKADDR_SIZE);
      want[to].push(data.toString('latin1'));
    });
    const sent = a.send(out);
    await waitFor(() => got.b.length === want.b.length && got.c.length === want.c.length, `${want.b.length + want.c.length} datagrams`);
    return { a, sent, got, want };
  };

  t.test('UDP GSO: a batch of equal-size datagrams to one destination', async (t) => {
    for (const bind of ['127.0.0.1', '::']) {
      const plan = Array.from({ length: 64 }, () => ({ len: 1400, to: 'b' as const }));
      const { a, sent, got, want } = await gsoRoundTrip(t, bind, plan);
      t.equal(a.gso, 'works', `${bind}: sent as GSO messages`);
      t.equal(sent, 64, 'the count is datagrams, not messages');
      t.equal(got.b.length, 64);
      t.ok(got.b.every((d, i) => d === want.b[i]), 'all intact and in order');
      // more than fits in one message (64 KiB): it takes two or more, still in order
      const big = Array.from({ length: 200 }, (_, i) => ({ len: i === 199 ? 17 : 1200, to: 'b' as const }));
      const r = await gsoRoundTrip(t, bind, big);
      t.equal(r.sent, 200);
      t.ok(r.got.b.length === 200 && r.got.b.every((d, i) => d === r.want.b[i]), '200 intact and in order');
    }
  });

  t.test('UDP GSO: a mixed batch arrives intact and in order', async (t) => {
    const L = (len: number, n: number, to: 'b' | 'c' | 'bad' = 'b') => Array.from({ length: n }, () => ({ len, to }));
    const plan = [
      ...L(1000, 5), // a group
      ...L(700, 1), // a shorter last one closes it
      ...L(700, 3), // a new group of the shorter size
      ...L(1200, 2), // longer: a new group
      ...L(1200, 2, 'c'), // same size, other destination: a new group
      ...L(1200, 1, 'bad'), // unusable endpoint in the middle: dropped
      ...L(1200, 2, 'c'),
      ...L(0, 2), // empty datagrams are never segments
      ...L(1, 3),
      ...L(1500, 70), // more than 64 segments: split
      ...L(9, 1, 'c'),
      ...L(2048, 2), // a full slot
    ];
    for (const bind of ['127.0.0.1', '::']) {
      const { a, sent, got, want } = await gsoRoundTrip(t, bind, plan);
      t.equal(a.gso, 'works', `${bind}: GSO used`);
      t.equal(sent, plan.length - 1, 'all but the unusable one counted');
      t.same(got.b, want.b, 'to b: intact and in order');
      t.same(got.c, want.c, 'to c: intact and in order');
      const off = await gsoRoundTrip(t, bind, plan, { gso: false });
      t.equal(off.a.gso, 'off');
      t.equal(off.sent, plan.length - 1);
      t.same(off.got.b, off.want.b, 'without GSO: the same');
      t.same(off.got.c, off.want.c);
    }
  });

  const skip = process.getuid?.() !== 0 ? 'needs root for ip netns' : false;
  t.test('rtnetlink and TUN inside a network namespace', { skip }, async (t) => {
    const ns = `ntmtest-${process.pid}-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    const cleanup = () => void spawnSync('ip', ['netns', 'del', ns]);
    process.once('exit', cleanup);
    t.teardown(cleanup);
    await t.spawn(
      'ip',
      ['netns', 'exec', ns, process.execPath, ...process.execArgv, fileURLToPath(import.meta.url)],
      { env: { ...process.env, NTM_TEST_NETNS: ns } },
      `inside ${ns}`,
    );
  });
} else {
  // ---- inside the namespace ------------------------------------------------------------------

  t.test('rtnetlink: links, addresses, routes', async (t) => {
    await setLinkUp('lo', true);
    t.ok((await listLinks()).some((l) => l.name === 'lo' && l.up), 'lo is up');
    const { fd, name } = native.tunOpen('ntmr%d');
    t.teardown(() => native.close(fd));
    t.match(name, /^ntmr\d+$/, 'kernel-chosen name');
    t.equal(await linkIndex(name), (await getLink(name)).index);

    await setMtu(name, 1300);
    await setLinkUp(name, true);
    const link = await getLink(name);
    t.equal(link.mtu, 1300);
    t.ok(link.up);

    await addAddress(name, '10.66.0.1/24');
    await addAddress(name, 'fd66::1/64');
    const addrs = await listAddresses(name);
    t.ok(addrs.some((a) => a.cidr === '10.66.0.1/24' && a.family === 4 && a.dev === name), 'IPv4 address listed');
    const v6 = addrs.find((a) => a.cidr === 'fd66::1/64');
    t.ok(v6 && v6.family === 6, 'IPv6 address listed');
    t.equal((v6?.flags ?? IFA_F_TENTATIVE) & IFA_F_TENTATIVE, 0, 'no DAD: not tentative');
    const ipAddrs = JSON.parse(execFileSync('ip', ['-j', 'addr', 'show', 'dev', name], { encoding: 'utf8' }))[0].addr_info as { local: string; prefixlen: number }[];
    t.ok(ipAddrs.some((a) => a.local === '10.66.0.1' && a.prefixlen === 24), 'iproute2 sees the IPv4 address');
    t.ok(ipAddrs.some((a) => a.local === 'fd66::1' && a.prefixlen === 64), 'iproute2 sees the IPv6 address');
    await t.rejects(addAddress(name, '10.66.0.1/24'), {
      name: 'RtnetlinkError',
      code: 'EEXIST',
      message: new RegExp(`^RTM_NEWADDR 10\\.66\\.0\\.1/24 dev ${name}: EEXIST`),
    });

    await addRoute('10.67.0.0/16', { dev: name });
    await addRoute('10.68.0.0/16', { dev: name, via: '10.66.0.2', metric: 50 });
    await addRoute('fd67::/64', { dev: name, metric: 10 });
    const routes = await listRoutes();
    t.ok(routes.some((r) => r.dst === '10.67.0.0/16' && r.dev === name && r.via === undefined), 'direct route listed');
    t.ok(routes.some((r) => r.dst === '10.68.0.0/16' && r.via === '10.66.0.2' && r.metric === 50), 'gateway route listed');
    t.ok(routes.some((r) => r.dst === 'fd67::/64' && r.family === 6 && r.metric === 10), 'IPv6 route listed');
    t.ok((await listRoutes({ family: 4 })).every((r) => r.family === 4), 'family filter');
    const ipRoutes = JSON.parse(execFileSync('ip', ['-j', 'route', 'show', '10.68.0.0/16'], { encoding: 'utf8' })) as { gateway: string; metric: number; dev: string }[];
    t.same(ipRoutes.map((r) => [r.gateway, r.metric, r.dev]), [['10.66.0.2', 50, name]], 'iproute2 sees the gateway route');
    await t.rejects(addRoute('10.67.0.0/16', { dev: name }), { code: 'EEXIST', message: /^RTM_NEWROUTE 10\.67\.0\.0\/16 dev \w+: EEXIST/ });
    await t.rejects(addRoute('10.69.0.0/16', { dev: name, via: 'fd66::2' }), { name: 'EndpointError' });

    await delRoute('10.67.0.0/16', { dev: name });
    await delRoute('10.68.0.0/16', { via: '10.66.0.2', metric: 50 });
    await delRoute('fd67::/64', { dev: name, metric: 10 });
    const after = await listRoutes();
    t.notOk(after.some((r) => ['10.67.0.0/16', '10.68.0.0/16', 'fd67::/64'].includes(r.dst)), 'routes deleted');
    await t.rejects(delRoute('10.67.0.0/16', { dev: name }), { code: 'ESRCH' });

    await delAddress(name, '10.66.0.1/24');
    await delAddress(name, 'fd66::1/64');
    t.notOk((await listAddresses(name)).some((a) => a.cidr === '10.66.0.1/24' || a.cidr === 'fd66::1/64'), 'addresses deleted');
    await t.rejects(delAddress(name, '10.66.0.1/24'), { code: 'EADDRNOTAVAIL' });
  });

  t.test('rtnetlink: errors on a bad device or input', async (t) => {
    const noDev = { name: 'RtnetlinkError', code: 'ENODEV' };
    await t.rejects(linkIndex('nosuch0'), { ...noDev, message: 'RTM_GETLINK nosuch0: ENODEV' });
    await t.rejects(setLinkUp('nosuch0'), { ...noDev, message: /^RTM_NEWLINK nosuch0 up: ENODEV/ });
    await t.rejects(setMtu('nosuch0', 1400), noDev);
    await t.rejects(addAddress('nosuch0', '10.1.0.1/24'), noDev);
    await t.rejects(addRoute('10.2.0.0/16', { dev: 'nosuch0' }), noDev);
    await t.rejects(listAddresses('nosuch0'), noDev);
    await t.rejects(addAddress('lo', '10.1.0/24'), { name: 'EndpointError', message: '"10.1.0" is not an IP address' });
    await t.rejects(addAddress('lo', '10.1.0.1/33'), { name: 'EndpointError', message: /prefix length/ });
    await t.rejects(addRoute('10.2.0.1/16', { dev: 'lo' }), { name: 'RtnetlinkError', code: 'EINVAL' }, 'host bits set');
    t.ok(new RtnetlinkError('X', 17) instanceof Error);
  });

  t.test('rtnetlink: events', async (t) => {
    const events: RtEvent[] = [];
    const sub = subscribe(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE, (e) => events.push(e));
    t.teardown(() => sub.close());
    const { fd, name } = native.tunOpen('ntme%d');
    let open = true;
    t.teardown(() => open && native.close(fd));
    await waitFor(() => events.some((e) => e.type === 'RTM_NEWLINK' && e.name === name), 'RTM_NEWLINK');
    await setLinkUp(name, true);
    await addAddress(name, '10.55.0.1/24');
    await waitFor(() => events.some((e) => e.type === 'RTM_NEWADDR' && e.cidr === '10.55.0.1/24' && e.dev === name), 'RTM_NEWADDR');
    await addRoute('10.56.0.0/16', { dev: name, metric: 7 });
    await waitFor(() => events.some((e) => e.type === 'RTM_NEWROUTE' && e.dst === '10.56.0.0/16' && e.metric === 7 && e.dev === name), 'RTM_NEWROUTE');
    await delRoute('10.56.0.0/16', { dev: name, metric: 7 });
    await waitFor(() => events.some((e) => e.type === 'RTM_DELROUTE' && e.dst === '10.56.0.0/16'), 'RTM_DELROUTE');
    await delAddress(name, '10.55.0.1/24');
    await waitFor(() => events.some((e) => e.type === 'RTM_DELADDR' && e.cidr === '10.55.0.1/24'), 'RTM_DELADDR');
    native.close(fd);
    open = false;
    await waitFor(() => events.some((e) => e.type === 'RTM_DELLINK' && e.name === name), 'RTM_DELLINK');
    sub.close();
    const n = events.length;
    await addAddress('lo', '10.57.0.1/32');
    await new Promise((r) => setTimeout(r, 50));
    t.equal(events.length, n, 'no events after close');
    await delAddress('lo', '10.57.0.1/32');
  });

  t.test('TUN device: configure, kernel -> TUN, TUN -> kernel', async (t) => {
    const tun = await TunDevice.open({ name: 'ntmt%d', mtu: 1400, addresses: ['10.77.0.1/24', 'fd77::1/64'] });
    t.teardown(() => tun.close());
    t.match(tun.name, /^ntmt\d+$/);
    const ipLink = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', tun.name], { encoding: 'utf8' }))[0] as { mtu: number; flags: string[] };
    t.equal(ipLink.mtu, 1400, 'MTU set');
    t.ok(ipLink.flags.includes('UP'), 'link up');
    t.same((await listAddresses(tun.name)).map((a) => a.cidr).filter((c) => !c.startsWith('fe80')).sort(), ['10.77.0.1/24', 'fd77::1/64']);

    const seen: Seen[] = [];
    let batches = 0;
    tun.start((batch) => {
      batches++;
      for (let i = 0; i < batch.count; i++) {
        const p = parseIp(Buffer.from(batch.buf.subarray(batch.offset(i), batch.offset(i) + (batch.lengths[i] ?? 0))));
        if (p) seen.push(p);
      }
    });
    t.throws(() => tun.start(() => {}), /already started/);

    // kernel -> TUN: datagrams to addresses routed into the TUN come out of it as IP packets
    const sender = UdpSocket.open({ port: 0 });
    t.teardown(() => sender.close());
    t.ok(sender.sendOne(Buffer.from('to-tun-v4'), encodeSockaddr('10.77.0.2', 9999)));
    t.ok(sender.sendOne(Buffer.from('to-tun-v6'), encodeSockaddr('fd77::2', 9999)));
    const isUdpTo = (s: Seen, dst: string, text: string) =>
      s.proto === 17 && s.dst === dst && s.body.readUInt16BE(0) === sender.port && s.body.readUInt16BE(2) === 9999 && s.body.subarray(8).toString() === text;
    await waitFor(() => seen.some((s) => isUdpTo(s, '10.77.0.2', 'to-tun-v4') && s.src === '10.77.0.1'), 'IPv4 UDP out of the TUN');
    await waitFor(() => seen.some((s) => isUdpTo(s, 'fd77::2', 'to-tun-v6') && s.src === 'fd77::1'), 'IPv6 UDP out of the TUN');
    t.ok(batches > 0);

    // TUN -> kernel: an ICMP echo request to the TUN's own address; the reply comes back out
    const out = new PacketBatch(4, 2048);
    putPacket(out, icmpEcho('10.77.0.2', '10.77.0.1', 0x4242, 7, Buffer.from('ping payload')));
    t.equal(tun.write(out), 1, 'echo request written');
    await waitFor(
      () => seen.some((s) => s.proto === 1 && s.src === '10.77.0.1' && s.dst === '10.77.0.2' && s.body[0] === 0 && s.body.readUInt16BE(4) === 0x4242 && s.body.subarray(8).toString() === 'ping payload'),
      'ICMP echo reply from the kernel',
    );

    // TUN -> kernel: UDP packets to a socket bound on the TUN's addresses, with their sources
    const rx = UdpSocket.open({ bindAddress: '::', port: 0 });
    t.teardown(() => rx.close());
    const got: { data: string; from: ReturnType<typeof decodeSockaddr> }[] = [];
    rx.start((b) => {
      for (let i = 0; i < b.count; i++) got.push({ data: b.buf.toString('utf8', b.offset(i), b.offset(i) + (b.lengths[i] ?? 0)), from: decodeSockaddr(b.addrs, i * SOCKADDR_SIZE) });
    });
    out.count = 0;
    putPacket(out, Buffer.from([0x00, 1, 2, 3])); // not IP: the kernel refuses it (EINVAL), it is dropped
    putPacket(out, udpPacket('10.77.0.2', '10.77.0.1', 5555, rx.port, Buffer.from('from-tun-v4')));
    putPacket(out, udpPacket('fd77::2', 'fd77::1', 5556, rx.port, Buffer.from('from-tun-v6')));
    t.equal(tun.write(out), 2, 'two written, the malformed one dropped without a throw');
    await waitFor(() => got.length === 2, 'UDP from the TUN to a socket');
    t.same(got.map((g) => g.data).sort(), ['from-tun-v4', 'from-tun-v6']);
    t.same(got.find((g) => g.data === 'from-tun-v4')?.from, { address: '10.77.0.2', port: 5555, family: 4 });
    t.same(got.find((g) => g.data === 'from-tun-v6')?.from, { address: 'fd77::2', port: 5556, family: 6 });

    const name = tun.name;
    tun.close();
    tun.close();
    t.equal(tun.write(out), 0, 'write after close: 0');
    await t.rejects(linkIndex(name), { code: 'ENODEV' }, 'the device is gone after close');
  });

  t.test('UDP GSO: refused by the kernel, the socket falls back for good', async (t) => {
    // a segment that would need IP fragmentation is refused (EINVAL); sent alone it is fragmented
    await setLinkUp('lo', true);
    await setMtu('lo', 1300);
    t.teardown(() => setMtu('lo', 65536));
    const a = UdpSocket.open({ bindAddress: '127.0.0.1', port: 0 });
    const b = UdpSocket.open({ bindAddress: '127.0.0.1', port: 0 });
    t.teardown(() => (a.close(), b.close()));
    const got: string[] = [];
    b.start((batch) => {
      for (let i = 0; i < batch.count; i++) got.push(batch.buf.toString('latin1', batch.offset(i), batch.offset(i) + (batch.lengths[i] ?? 0)));
    });
    const out = new PacketBatch(8, 2048);
    const want: string[] = [];
    for (let i = 0; i < 8; i++) {
      const d = Buffer.alloc(1400, 0x61 + i);
      putPacket(out, d);
      encodeSockaddr('127.0.0.1', b.port, out.addrs, i * SOCKADDR_SIZE);
      want.push(d.toString('latin1'));
    }
    t.equal(a.gso, 'untried');
    t.equal(a.send(out), 8, 'all sent, one per message');
    t.equal(a.gso, 'off', 'GSO off for this socket');
    t.equal(a.send(out), 8, 'and again');
    await waitFor(() => got.length === 16, '16 datagrams');
    t.same(got, [...want, ...want], 'intact and in order');
  });

  t.test('TUN device: a failed open closes the fd and names the problem', async (t) => {
    await t.rejects(TunDevice.open({ name: 'ntmx%d', mtu: 1400, addresses: ['10.88.0.1/24', '10.88.0.1/24'] }), {
      name: 'RtnetlinkError',
      message: /^RTM_NEWADDR 10\.88\.0\.1\/24 dev ntmx\d+: EEXIST/,
    });
    t.notOk((await listLinks()).some((l) => l.name.startsWith('ntmx')), 'no device left behind');
  });
}
