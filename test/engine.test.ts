// The engine's logic over in-memory devices: routing by VIP, SPI lookup, source checks, endpoint
// learning, keepalives and the counters of every drop.
import t from 'tap';
import { InboundSa, OutboundSa } from '../protocol/esp.js';
import { encodeSockaddr } from '../protocol/endpoint.js';
import { ipv4ToNumber, ipv6ToBytes } from '../protocol/ip.js';
import { frameControl } from '../protocol/demux.js';
import { Engine } from '../tunnel/engine.js';
import { Tunnel, TunnelTable } from '../tunnel/table.js';
import { FakeDevice, FakeSocket } from './fakes.js';
import { ipPacket } from './tools/packets.js';

const keyAB = { suite: 'aes-gcm' as const, key: Buffer.alloc(16, 1), salt: Buffer.alloc(4, 2), spi: 0x1001 };
const keyBA = { suite: 'aes-gcm' as const, key: Buffer.alloc(16, 3), salt: Buffer.alloc(4, 4), spi: 0x2002 };
const A_REAL = encodeSockaddr('198.18.0.1', 4500);
const B_REAL = encodeSockaddr('198.18.0.2', 4500);

/** UDP-protocol packets whose payload is `payload` bytes of a filler (0x5a for IPv4, 0x6b for IPv6). */
const ip4 = (src: string, dst: string, payload = 32) => ipPacket(src, dst, 17, Buffer.alloc(payload, 0x5a));
const ip6 = (src: string, dst: string, payload = 32) => ipPacket(src, dst, 17, Buffer.alloc(payload, 0x6b));

/** Node A knows B at B_REAL; node B has no endpoint for A until A's first packet. */
function twoNodes() {
  const a = { dev: new FakeDevice(), sock: new FakeSocket(), table: new TunnelTable() };
  const b = { dev: new FakeDevice(), sock: new FakeSocket(), table: new TunnelTable() };
  a.table.add(new Tunnel('b', ipv4ToNumber('10.123.0.2'), ipv6ToBytes('fd7a::2'), new OutboundSa(keyAB), new InboundSa(keyBA), Buffer.from(B_REAL), 0));
  b.table.add(new Tunnel('a', ipv4ToNumber('10.123.0.1'), ipv6ToBytes('fd7a::1'), new OutboundSa(keyBA), new InboundSa(keyAB), null, 0));
  const control: Buffer[] = [];
  const ea = new Engine(a.dev, a.sock, a.table);
  const eb = new Engine(b.dev, b.sock, b.table, { onControl: (m) => control.push(m) });
  ea.start();
  eb.start();
  /** Moves everything A sent to B, as if it arrived from `from`. */
  const aToB = (from = A_REAL) => {
    b.sock.deliver(a.sock.sent.splice(0).map((d) => ({ data: d.data, from })));
  };
  return { a, b, ea, eb, aToB, control };
}

t.test('packets for a peer VIP are sealed to its endpoint and delivered to the peer TUN', async (t) => {
  const { a, b, ea, eb, aToB } = twoNodes();
  const p4 = ip4('10.123.0.1', '10.123.0.2');
  const p6 = ip6('fd7a::1', 'fd7a::2');
  a.dev.inject([p4, p6]);
  t.equal(a.sock.sent.length, 2);
  t.same(a.sock.sent[0]!.to, B_REAL, 'sent to the configured endpoint');
  t.not(a.sock.sent[0]!.data.indexOf(p4.subarray(20)), 8, 'payload is not in clear');
  aToB();
  t.same(b.dev.written, [p4, p6], 'inner packets delivered unchanged, in order');
  t.equal(eb.counters.inPackets, 2);
  t.equal(eb.counters.inEndpointUpdates, 1, 'B learned A from its first authenticated packet');
  t.equal(ea.counters.outPackets, 2);
  // B can now answer without configuration of A's endpoint.
  b.dev.inject([ip4('10.123.0.2', '10.123.0.1')]);
  t.equal(b.sock.sent.length, 1);
  t.same(b.sock.sent[0]!.to, A_REAL);
});

t.test('no tunnel, no endpoint, not IP: counted drops', async (t) => {
  const { a, b, ea, eb } = twoNodes();
  a.dev.inject([ip4('10.123.0.1', '10.123.0.9'), Buffer.from([0x00, 1, 2]), Buffer.alloc(0), ip4('10.123.0.1', '10.123.0.2').subarray(0, 12)]);
  t.equal(ea.counters.outDropNoTunnel, 1);
  t.equal(ea.counters.outDropNotIp, 3);
  b.dev.inject([ip4('10.123.0.2', '10.123.0.1')]);
  t.equal(eb.counters.outDropNoEndpoint, 1, 'B does not know A yet');
  t.equal(a.sock.sent.length + b.sock.sent.length, 0, 'nothing sent');
});

t.test('inbound: spoofed inner source, unknown SPI, replay, garbage, keepalive, control', async (t) => {
  const { a, b, eb, aToB, control } = twoNodes();
  a.dev.inject([ip4('10.123.0.77', '10.123.0.2')]); // A's LAN forgot to translate: not A's VIP
  aToB();
  t.equal(eb.counters.inDropSpoofedSource, 1);
  t.equal(b.dev.written.length, 0);

  a.dev.inject([ip4('10.123.0.1', '10.123.0.2')]);
  const copy = a.sock.sent.map((d) => ({ data: d.data, from: A_REAL }));
  aToB();
  b.sock.deliver(copy);
  t.equal(eb.counters.inDropReplayed, 1, 'replay dropped');
  t.equal(b.dev.written.length, 1);

  const unknown = Buffer.from(copy[0]!.data);
  unknown.writeUInt32BE(0x9999, 0);
  const garbage = Buffer.from([1, 2, 3, 4, 5, 6, 7]);
  b.sock.deliver([
    { data: unknown, from: A_REAL },
    { data: garbage, from: A_REAL },
    { data: Buffer.from([0xff]), from: A_REAL },
    { data: frameControl(Buffer.from('hello')), from: A_REAL },
  ]);
  t.equal(eb.counters.inDropUnknownSpi, 1);
  t.equal(eb.counters.inDropInvalid, 1);
  t.equal(eb.counters.inKeepalives, 1);
  t.equal(eb.counters.inControl, 1);
  t.same(control, [frameControl(Buffer.from('hello'))], 'control message handed up with its marker');
  t.equal(b.dev.written.length, 1, 'none of them reached the TUN');
});

t.test('endpoint moves only on an authenticated, newest packet', async (t) => {
  const { a, b, eb, aToB } = twoNodes();
  const NEW = encodeSockaddr('198.18.5.5', 1234);
  a.dev.inject([ip4('10.123.0.1', '10.123.0.2')]);
  aToB();
  a.dev.inject([ip4('10.123.0.1', '10.123.0.2')]);
  aToB(NEW);
  t.same(b.table.bySpiLookup(keyAB.spi)!.endpoint, NEW, 'followed the authenticated move');
  // A forged packet from a third address: fails authentication, endpoint stays.
  const THIRD = encodeSockaddr('198.18.9.9', 1);
  a.dev.inject([ip4('10.123.0.1', '10.123.0.2')]);
  const forged = a.sock.sent.splice(0)[0]!.data;
  forged[forged.length - 1]! ^= 1;
  b.sock.deliver([{ data: forged, from: THIRD }]);
  t.same(b.table.bySpiLookup(keyAB.spi)!.endpoint, NEW, 'forged packet did not move it');
  t.equal(eb.counters.inDropBadIcv, 1);
  // A delayed genuine packet (older sequence number) from the old address does not pull it back.
  a.dev.inject([ip4('10.123.0.1', '10.123.0.2'), ip4('10.123.0.1', '10.123.0.2')]);
  const [first, second] = a.sock.sent.splice(0);
  b.sock.deliver([{ data: second!.data, from: NEW }, { data: first!.data, from: A_REAL }]);
  t.same(b.table.bySpiLookup(keyAB.spi)!.endpoint, NEW, 'older packet from the old address did not move it back');
  t.equal(b.dev.written.length, 4, 'but it was delivered');
  t.equal(eb.counters.inEndpointUpdates, 2, 'learned once, moved once');
});

t.test('keepalives go to tunnels that ask for them', async (t) => {
  const dev = new FakeDevice();
  const sock = new FakeSocket();
  const table = new TunnelTable();
  table.add(new Tunnel('k', ipv4ToNumber('10.1.0.2'), null, new OutboundSa(keyAB), new InboundSa(keyBA), Buffer.from(B_REAL), 20));
  table.add(new Tunnel('q', ipv4ToNumber('10.1.0.3'), null, new OutboundSa({ ...keyAB, spi: 0x3003 }), new InboundSa({ ...keyBA, spi: 0x3004 }), Buffer.from(A_REAL), 0));
  const e = new Engine(dev, sock, table);
  e.start();
  t.same(sock.sent, [{ data: Buffer.from([0xff]), to: B_REAL }], 'one keepalive, to the tunnel with a period');
  e.stop();
});

t.test('the table refuses duplicate SPIs and VIPs', async (t) => {
  const table = new TunnelTable();
  const mk = (spi: number, vip: string, vip6: string | null) =>
    new Tunnel('x', ipv4ToNumber(vip), vip6 ? ipv6ToBytes(vip6) : null, new OutboundSa(keyAB), new InboundSa({ ...keyBA, spi }), null);
  const first = mk(0x5000, '10.0.0.1', 'fd00::1');
  table.add(first);
  t.throws(() => table.add(mk(0x5000, '10.0.0.2', null)), /SPI/);
  t.throws(() => table.add(mk(0x5001, '10.0.0.1', null)), /IPv4 VIP/);
  t.throws(() => table.add(mk(0x5001, '10.0.0.3', 'fd00::1')), /IPv6 VIP/);
  table.remove(first);
  table.add(mk(0x5000, '10.0.0.1', 'fd00::1'));
  t.equal([...table.tunnels()].length, 1);
});

t.test('random datagrams never throw and every one is accounted for', async (t) => {
  const { a, b, eb, aToB } = twoNodes();
  a.dev.inject([ip4('10.123.0.1', '10.123.0.2')]);
  const genuine = a.sock.sent[0]!.data;
  aToB();
  let seed = 12345;
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const N = 5000;
  const datagrams: { data: Buffer; from: Buffer }[] = [];
  for (let i = 0; i < N; i++) {
    const kind = rand(4);
    let d: Buffer;
    if (kind === 0) {
      d = Buffer.alloc(rand(80));
      for (let j = 0; j < d.length; j++) d[j] = rand(256);
    } else {
      // A genuine packet with a few bytes flipped or cut: the SPI is right, so it reaches the SA.
      d = Buffer.from(genuine.subarray(0, kind === 1 ? rand(genuine.length + 1) : genuine.length));
      for (let j = 0; j < 3 && d.length > 8; j++) d[8 + rand(d.length - 8)]! ^= 1 + rand(255);
    }
    datagrams.push({ data: d, from: A_REAL });
  }
  const before = { ...eb.counters.snapshot() };
  t.doesNotThrow(() => b.sock.deliver(datagrams));
  const after = eb.counters.snapshot();
  const delta = (k: string) => after[k]! - before[k]!;
  const accounted = Object.keys(after)
    .filter((k) => k.startsWith('inDrop') || k === 'inPackets' || k === 'inKeepalives' || k === 'inControl')
    .reduce((sum, k) => sum + delta(k), 0);
  t.equal(accounted, N, 'each datagram was delivered or counted once');
  t.equal(b.dev.written.length, 1, 'none of the damaged ones reached the TUN');
});

t.test('address parsing for the tunnel table', async (t) => {
  t.equal(ipv4ToNumber('10.123.0.2'), 0x0a7b0002);
  t.equal(ipv4ToNumber('255.255.255.255'), 0xffffffff);
  t.throws(() => ipv4ToNumber('10.0.0.256'), /not an IPv4 address/);
  t.equal(ipv6ToBytes('fd7a:6e74:6d00::2').toString('hex'), 'fd7a6e746d0000000000000000000002');
  t.equal(ipv6ToBytes('::').toString('hex'), '0'.repeat(32));
  t.equal(ipv6ToBytes('1:2:3:4:5:6:7:8').toString('hex'), '00010002000300040005000600070008');
  t.equal(ipv6ToBytes('::ffff:10.1.2.3').toString('hex'), '00000000000000000000ffff0a010203');
  t.equal(ipv6ToBytes('fe80::1%eth0').toString('hex'), 'fe800000000000000000000000000001');
  t.throws(() => ipv6ToBytes('fd7a::1::2'), /not an IPv6 address/);
});
