// The Relay Server: the relay core's pure logic with a fake clock (servers/rs/relay.ts: punching,
// SPI learning, ESP forwarding by (source, SPI), quotas, expiry, no allocation per packet), the
// server's datagram handling over an in-memory socket (servers/rs/rs.ts: directions, hole punch
// answers no longer than the request, forged and replayed punches, relayed Tunnel Request and ESP),
// first contact over real mutual TLS, the config parser and the gateway's nftables rules.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants as perf, PerformanceObserver } from 'node:perf_hooks';
import { createPki } from '../lab/pki.js';
import { KeyClass, HOLE_PUNCH_PAD, openMessage, readHeader, sealMessage, Status, type Body, type ControlMessage, type MessageName } from '../protocol/control.js';
import { frameControl, KEEPALIVE_DATAGRAM, NON_ESP_MARKER_SIZE } from '../protocol/demux.js';
import { encodeSockaddr } from '../protocol/endpoint.js';
import { exportServerKey } from '../protocol/keys.js';
import { newMessageId } from '../protocol/channel.js';
import { PacketBatch } from '../tunnel/io.js';
import { buildGatewayRuleset } from '../servers/rs/gateway.js';
import { parseRsConfig } from '../servers/rs/config.js';
import { Relay, RELAY_DEFAULTS, type RelayQuota, type RelayRoute } from '../servers/rs/relay.js';
import { RelayServer, type RsConfig } from '../servers/rs/rs.js';
import { connectMutualTls, readMessage } from '../servers/tls.js';
import { FakeSocket } from './fakes.js';

const T0 = 1_700_000_000_000;
const A = encodeSockaddr('198.51.100.10', 40001);
const A2 = encodeSockaddr('198.51.100.99', 50002);
const B = encodeSockaddr('2001:db8::20', 4500);
const X = encodeSockaddr('203.0.113.66', 4500);
const KTUN = Buffer.alloc(32, 7);
const ROUTE = 4242;
const SPI_A = 0x8000_1001; // A's inbound SPI (above 2^31: the unsigned path)
const SPI_B = 0x2002;

/** Setup of a test: a failure is an error of the test, not an assertion of it. */
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`setup failed: ${what}`);
}

function relay(quota: Partial<RelayQuota> = {}, idleSeconds = 120) {
  return new Relay({ quota: { ...RELAY_DEFAULTS.quota, ...quota }, idleSeconds, graceSeconds: 60 });
}

/** A relay with route ROUTE between a.test and b.test, both punched (A, B). */
function punched(quota: Partial<RelayQuota> = {}) {
  const r = relay(quota);
  check(r.addRoute({ routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, T0).ok, 'route');
  check(r.punch(ROUTE, 'a.test', A, T0).ok && r.punch(ROUTE, 'b.test', B, T0).ok, 'punches');
  return r;
}

const tunnelRequest = (node: string, spi: number, routeId = ROUTE): ControlMessage => ({
  type: 'tunnelRequest',
  body: { routeId, node, suite: 1, spi, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) },
});
const tunnelResponse = (spi: number, status: number = Status.ok, routeId = ROUTE): ControlMessage => ({
  type: 'tunnelResponse',
  body: { inReplyTo: 1n, status, routeId, spi, ephemeral: Buffer.alloc(32, 3), nonce: Buffer.alloc(32, 4), confirm: Buffer.alloc(32, 5) },
});

/** Where forwardControl sends the datagram (the receiving side's endpoint), or null. */
const ctl = (r: Relay, route: RelayRoute, message: ControlMessage, from: Buffer, length: number, now: number): Buffer | null =>
  r.forwardControl(route, message, from, length, now)?.endpoint ?? null;

/** Both SPIs learned: A's from its Tunnel Request, B's from its Tunnel Response. */
function established(quota: Partial<RelayQuota> = {}) {
  const r = punched(quota);
  check(ctl(r, r.route(ROUTE, T0)!, tunnelRequest('a.test', SPI_A), A, 150, T0)?.equals(B) === true, 'request forwarded');
  check(ctl(r, r.route(ROUTE, T0)!, tunnelResponse(SPI_B), B, 180, T0)?.equals(A) === true, 'response forwarded');
  return r;
}

/** An ESP datagram with `spi`, `size` bytes long. */
function esp(spi: number, size = 100): Buffer {
  const b = Buffer.alloc(size, 0xee);
  b.writeUInt32BE(spi, 0);
  b.writeUInt32BE(1, 4);
  return b;
}

const fwd = (r: Relay, spi: number, from: Buffer, now = T0, size = 100) => {
  const d = esp(spi, size);
  return r.forwardEsp(d, 0, d.length, from, 0, now)?.endpoint ?? null;
};

// ---- the relay core ---------------------------------------------------------------------------

t.test('a punch teaches the endpoint of its own side; only the route’s nodes may punch', async (t) => {
  const r = relay();
  t.same(r.addRoute({ routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 60_000, nodeA: 'a.test', nodeB: 'b.test' }, T0), { ok: true, created: true });
  t.same(r.punch(ROUTE, 'a.test', A, T0 + 1), { ok: true, moved: false });
  t.same(r.punch(ROUTE, 'c.test', X, T0 + 2), { ok: false, reason: 'foreignNode' }, 'a third node');
  t.same(r.punch(999, 'a.test', X, T0 + 2), { ok: false, reason: 'unknownRoute' });
  t.same(r.punch(ROUTE, 'b.test', A, T0 + 3), { ok: false, reason: 'conflict' }, 'B may not take A’s endpoint (a loop)');
  t.same(r.punch(ROUTE, 'b.test', B, T0 + 4), { ok: true, moved: false });
  const [s] = r.status();
  t.equal(s!.a.endpoint, '198.51.100.10:40001');
  t.equal(s!.b.endpoint, '[2001:db8::20]:4500');
  t.equal(s!.a.node, 'a.test');
  t.equal(r.counters.punches, 2);
  t.equal(r.counters.punchDropForeignNode, 1);
  t.equal(r.counters.punchDropUnknownRoute, 1);
  t.equal(r.counters.punchDropConflict, 1);
});

t.test('relayed Tunnel Request/Response: only between punched endpoints, SPIs learned', async (t) => {
  const r = relay();
  r.addRoute({ routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 60_000, nodeA: 'a.test', nodeB: 'b.test' }, T0);
  const route = r.route(ROUTE, T0)!;
  r.punch(ROUTE, 'a.test', A, T0);
  t.equal(ctl(r, route, tunnelRequest('a.test', SPI_A), X, 150, T0), null, 'from an address nobody punched from');
  t.equal(r.counters.controlDropUnknownSource, 1);
  t.equal(ctl(r, route, tunnelRequest('a.test', SPI_A), A, 150, T0), null, 'B has not punched: nowhere to go');
  t.equal(r.counters.controlDropPeerNotLearned, 1);
  r.punch(ROUTE, 'b.test', B, T0);
  t.equal(ctl(r, route, tunnelRequest('b.test', SPI_A), A, 150, T0), null, 'A’s endpoint speaking for B');
  t.equal(ctl(r, route, tunnelRequest('a.test', SPI_A, 77), A, 150, T0), null, 'another route ID in the body');
  t.equal(r.counters.controlDropMismatch, 2);
  t.same(ctl(r, route, tunnelRequest('a.test', SPI_A), A, 150, T0), B, 'A → B');
  t.same(ctl(r, route, tunnelRequest('a.test', SPI_A), A, 150, T0), B, 'a retransmission is forwarded again');
  t.same(ctl(r, route, tunnelResponse(0, Status.badRequest), B, 180, T0), A, 'a refusal is forwarded, no SPI learned');
  t.same(ctl(r, route, tunnelResponse(SPI_B), B, 180, T0), A, 'B → A');
  t.same(r.status()[0]!.a.spis, [SPI_A], 'A’s inbound SPI, once');
  t.same(r.status()[0]!.b.spis, [SPI_B]);
  t.equal(r.counters.controlForwarded, 4);
  t.equal(r.counters.spisLearned, 2);
});

t.test('ESP goes by (learned source, learned SPI) to the other learned endpoint; everything else is counted', async (t) => {
  const r = established();
  t.same(fwd(r, SPI_A, B), A, 'B → A on A’s SPI');
  t.same(fwd(r, SPI_B, A), B, 'A → B on B’s SPI');
  t.equal(fwd(r, 0x7777, A), null, 'unknown SPI');
  t.equal(r.counters.espDropUnknownSpi, 1);
  t.equal(fwd(r, SPI_A, X), null, 'known SPI from a third address');
  t.equal(fwd(r, SPI_A, A), null, 'A’s own SPI from A (would reflect to A)');
  t.equal(r.counters.espDropUnknownSource, 2);
  t.equal(fwd(r, SPI_A + 0x40000000, B), null, 'an SPI equal in the low 30 bits is another SPI');
  t.equal(r.counters.espDropUnknownSpi, 2);
  t.equal(r.counters.espForwarded, 2);
  t.equal(r.counters.espBytes, 200);
  const s = r.status()[0]!;
  t.equal(s.a.packets, 2, 'A sent its Tunnel Request and one ESP');
  t.equal(s.b.bytes, 180 + 100);
  t.equal(s.bytes, 150 + 180 + 200);
});

t.test('an unpunched peer gets nothing, not even after the other side’s SPIs are known', async (t) => {
  const r = relay();
  r.addRoute({ routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 60_000, nodeA: 'a.test', nodeB: 'b.test' }, T0);
  r.punch(ROUTE, 'a.test', A, T0);
  t.equal(ctl(r, r.route(ROUTE, T0)!, tunnelRequest('a.test', SPI_A), A, 150, T0), null);
  t.equal(fwd(r, SPI_A, B), null, 'no SPI was learned from a request that went nowhere');
  t.equal(r.counters.espDropUnknownSpi, 1);
  t.same(r.status()[0]!.a.spis, []);
});

t.test('the last authenticated punch wins: a side that moves takes its traffic with it', async (t) => {
  const r = established();
  t.same(r.punch(ROUTE, 'a.test', A2, T0 + 10), { ok: true, moved: true });
  t.equal(r.counters.punchEndpointMoves, 1);
  t.same(fwd(r, SPI_A, B, T0 + 11), A2, 'B → A goes to A’s new address');
  t.same(fwd(r, SPI_B, A2, T0 + 11), B, 'A sends from its new address');
  t.equal(fwd(r, SPI_B, A, T0 + 11), null, 'nothing from the old address');
  t.equal(r.status()[0]!.a.endpoint, '198.51.100.99:50002');
  t.notOk(r.keepalive(A, 0, T0 + 12), 'the old address is no longer known to keepalives');
  t.ok(r.keepalive(A2, 0, T0 + 12));
});

t.test('the newest punch sent wins: one from another address sent earlier and let go late moves nothing', async (t) => {
  const r = established();
  // A punches from A2 (sent at T0 + 20); a punch it sent from A at T0 + 15, held back by the
  // network, arrives after it.
  t.same(r.punch(ROUTE, 'a.test', A2, T0 + 21, T0 + 20), { ok: true, moved: true });
  t.same(r.punch(ROUTE, 'a.test', A, T0 + 22, T0 + 15), { ok: false, reason: 'stale' });
  t.equal(r.counters.punchDropStale, 1);
  t.same(fwd(r, SPI_A, B, T0 + 23), A2, 'B → A still goes to A2');
  // From the address it is at, an older send time only refreshes; a newer one from elsewhere moves.
  t.same(r.punch(ROUTE, 'a.test', A2, T0 + 24, T0 + 18), { ok: true, moved: false });
  t.same(r.punch(ROUTE, 'a.test', A, T0 + 25, T0 + 25), { ok: true, moved: true });
  t.same(fwd(r, SPI_A, B, T0 + 26), A);
});

t.test('an SPI another route already forwards from the same source is refused: the older route keeps it', async (t) => {
  const r = established();
  // Route 2's node d punches from B's address (a spoofed source), its other node c sits at X and
  // asks for ESP on A's SPI: B's ESP on that SPI would go to X if the newer route won.
  check(r.addRoute({ routeId: 2, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'c.test', nodeB: 'd.test' }, T0).ok, 'route 2');
  check(r.punch(2, 'd.test', B, T0).ok && r.punch(2, 'c.test', X, T0).ok, 'route 2 punched');
  const route2 = r.route(2, T0)!;
  t.equal(ctl(r, route2, tunnelRequest('c.test', SPI_A, 2), X, 150, T0), null, 'not forwarded');
  t.equal(r.counters.spiRefusedShadow, 1);
  t.same(r.status().find((s) => s.routeId === 2)!.a.spis, [], 'not learned');
  t.equal(r.status().find((s) => s.routeId === 2)!.bytes, 0, 'nothing charged');
  t.same(fwd(r, SPI_A, B), A, 'B’s ESP on A’s SPI still goes to A');
  t.same(ctl(r, route2, tunnelRequest('c.test', 0x4444, 2), X, 150, T0), B, 'another SPI is fine');
  t.same(ctl(r, route2, tunnelRequest('c.test', 0x4444, 2), X, 150, T0), B, 'and its retransmission');
  t.equal(r.counters.spiRefusedShadow, 1);
  t.ok(r.spiLearned(SPI_A) && r.spiLearned(0x4444) && !r.spiLearned(0x5555));

  // The same SPI from another source is another forwarding entry, no conflict.
  const r2 = established();
  r2.addRoute({ routeId: 2, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'c.test', nodeB: 'd.test' }, T0);
  const Y = encodeSockaddr('203.0.113.77', 4500);
  r2.punch(2, 'd.test', Y, T0);
  r2.punch(2, 'c.test', X, T0);
  t.same(ctl(r2, r2.route(2, T0)!, tunnelRequest('c.test', SPI_A, 2), X, 150, T0), Y, 'SPI_A from Y is route 2’s');
  t.same(fwd(r2, SPI_A, Y), X);
  t.same(fwd(r2, SPI_A, B), A);
  // d then moves to B: both entries now match (SPI_A, B); the older route keeps it.
  t.same(r2.punch(2, 'd.test', B, T0 + 1), { ok: true, moved: true });
  t.same(fwd(r2, SPI_A, B, T0 + 1), A, 'the older route wins the lookup');
  // Once route 1 is gone, route 2 may have it.
  r2.remove(r2.route(ROUTE, T0 + 1)!);
  t.same(fwd(r2, SPI_A, B, T0 + 1), X);
});

t.test('an SPI the RS’s gateway owns is never learned for a relayed route', async (t) => {
  const r = new Relay({ ...RELAY_DEFAULTS, spiOwnedElsewhere: (spi) => spi === SPI_B });
  r.addRoute({ routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, T0);
  r.punch(ROUTE, 'a.test', A, T0);
  r.punch(ROUTE, 'b.test', B, T0);
  const route = r.route(ROUTE, T0)!;
  t.same(ctl(r, route, tunnelRequest('a.test', SPI_A), A, 150, T0), B);
  t.equal(ctl(r, route, tunnelResponse(SPI_B), B, 180, T0), null, 'a Tunnel Response with a gateway tunnel’s SPI is not forwarded');
  t.equal(r.counters.spiRefusedGateway, 1);
  t.same(r.status()[0]!.b.spis, []);
  t.equal(fwd(r, SPI_B, A), null);
});

t.test('rate quota per route and per node: drops counted, nothing spent on a refusal', async (t) => {
  // 1000 B/s per route: one second's burst, then what the clock refills.
  const r = established({ routeBytesPerSecond: 1000, nodeBytesPerSecond: 0 });
  // The Tunnel Request and Response (330 bytes) came out of the same bucket at T0.
  t.same(fwd(r, SPI_B, A, T0, 600), B);
  t.equal(fwd(r, SPI_B, A, T0, 100), null, '330 + 600 + 100 > 1000');
  t.equal(r.counters.dropQuotaRate, 1);
  t.same(fwd(r, SPI_A, B, T0 + 100, 100), A, '100 ms refill: 70 + 100 bytes');
  t.equal(fwd(r, SPI_A, B, T0 + 100, 100), null);
  t.same(fwd(r, SPI_A, B, T0 + 2000, 1000), A, 'refilled to the burst after a pause');
  t.equal(r.counters.dropQuotaRate, 2);

  // Per node: a.test on two routes shares one bucket.
  const n = relay({ routeBytesPerSecond: 0, nodeBytesPerSecond: 1000 });
  n.addRoute({ routeId: 1, ktun: KTUN, expiresAt: T0 + 60_000, nodeA: 'a.test', nodeB: 'b.test' }, T0);
  n.addRoute({ routeId: 2, ktun: KTUN, expiresAt: T0 + 60_000, nodeA: 'a.test', nodeB: 'c.test' }, T0);
  const C = encodeSockaddr('192.0.2.30', 4500);
  n.punch(1, 'a.test', A, T0);
  n.punch(1, 'b.test', B, T0);
  n.punch(2, 'a.test', A, T0);
  n.punch(2, 'c.test', C, T0);
  t.same(ctl(n, n.route(1, T0)!, tunnelRequest('a.test', 0x1111, 1), A, 600, T0), B);
  t.equal(ctl(n, n.route(2, T0)!, tunnelRequest('a.test', 0x2222, 2), A, 600, T0), null, 'a.test’s second route shares its node quota');
  t.same(ctl(n, n.route(2, T0)!, tunnelResponse(0x3333, Status.ok, 2), C, 600, T0), A, 'c.test has its own');
  t.equal(n.counters.dropQuotaRate, 1);
});

t.test('byte quota per route', async (t) => {
  const r = established({ routeBytes: 1000 });
  t.same(fwd(r, SPI_B, A, T0, 600), B, '330 + 600');
  t.equal(fwd(r, SPI_A, B, T0, 100), null, '330 + 600 + 100 > 1000');
  t.same(fwd(r, SPI_A, B, T0, 70), A, 'exactly 1000');
  t.equal(fwd(r, SPI_A, B, T0 + 3600, 8), null, 'spent for good');
  t.equal(r.counters.dropQuotaBytes, 2);
});

t.test('idle and hard expiry; keepalives keep a route alive', async (t) => {
  const r = established();
  t.same(fwd(r, SPI_A, B, T0 + 119_000), A, 'active within the idle time');
  t.equal(fwd(r, SPI_A, B, T0 + 119_000 + 120_001), null, 'idle for more than 120 s');
  t.equal(r.counters.dropExpired, 1);
  t.equal(r.route(ROUTE, T0 + 240_000), undefined, 'no Ktun either');
  t.equal(r.expire(T0 + 240_000), 1);
  t.equal(r.counters.routesExpiredIdle, 1);
  t.equal(r.size, 0);
  t.equal(fwd(r, SPI_A, B, T0 + 240_000), null, 'forwarding entries are gone with the route');
  t.equal(r.counters.espDropUnknownSpi, 1);
  t.equal(r.routesOf('a.test'), 0, 'node state released');

  const k = established();
  let kept = 0;
  for (let s = 100; s <= 3600; s += 100) if (k.keepalive(B, 0, T0 + s * 1000)) kept++;
  t.equal(kept, 36);
  t.equal(k.expire(T0 + 3650_000), 0, 'keepalives every 100 s: alive past expiresAt, within the grace');
  t.same(fwd(k, SPI_A, B, T0 + 3650_000), A);
  t.equal(fwd(k, SPI_A, B, T0 + 3660_001), null, 'past expiresAt + 60 s');
  t.equal(k.expire(T0 + 3660_001), 1);
  t.equal(k.counters.routesExpiredHard, 1);
});

t.test('route limits and malformed directions', async (t) => {
  const r = relay({ maxRoutes: 3, maxRoutesPerNode: 2 });
  const d = (routeId: number, nodeA: string, nodeB: string) => ({ routeId, ktun: KTUN, expiresAt: T0 + 60_000, nodeA, nodeB });
  t.same(r.addRoute(d(1, 'a.test', 'b.test'), T0), { ok: true, created: true });
  t.same(r.addRoute(d(1, 'a.test', 'b.test'), T0), { ok: true, created: false }, 'the same direction again (idempotent, nothing new)');
  t.match(r.addRoute(d(1, 'a.test', 'c.test'), T0), { ok: false, status: Status.badRequest, reason: /in use/ });
  t.same(r.addRoute(d(2, 'a.test', 'c.test'), T0), { ok: true, created: true });
  t.match(r.addRoute(d(3, 'a.test', 'd.test'), T0), { ok: false, status: Status.overQuota, reason: /a\.test has 2 routes/ });
  t.same(r.addRoute(d(4, 'e.test', 'd.test'), T0), { ok: true, created: true });
  t.match(r.addRoute(d(5, 'f.test', 'g.test'), T0), { ok: false, status: Status.overQuota, reason: /3 routes/ });
  t.match(r.addRoute(d(6, 'f.test', 'f.test'), T0), { ok: false, status: Status.badRequest });
  t.match(r.addRoute({ ...d(7, 'f.test', 'g.test'), expiresAt: T0 }, T0), { ok: false, status: Status.badRequest, reason: /expired/ });
  t.equal(r.counters.routesRefusedQuota, 2);
  t.equal(r.counters.routesRefusedBad, 3);
  t.equal(r.counters.routesCreated, 3);
});

t.test('the ESP lookup allocates nothing per packet', async (t) => {
  // With the quotas on: the token buckets run too.
  const r = established();
  // Other routes' SPIs in the same map, and one colliding in the low 30 bits.
  for (let i = 0; i < 1000; i++) {
    const id = 10_000 + i;
    r.addRoute({ routeId: id, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: `n${i}.test`, nodeB: `m${i}.test` }, T0);
    r.punch(id, `n${i}.test`, encodeSockaddr('192.0.2.1', 1000 + i), T0);
    r.punch(id, `m${i}.test`, encodeSockaddr('192.0.2.2', 1000 + i), T0);
    r.forwardControl(r.route(id, T0)!, tunnelRequest(`n${i}.test`, i === 0 ? (SPI_A & 0x3fffffff) : 0x10000 + i), encodeSockaddr('192.0.2.1', 1000 + i), 100, T0);
  }
  const batch = new PacketBatch(2, 256);
  esp(SPI_A, 200).copy(batch.buf, batch.offset(1));
  B.copy(batch.addrs, 28);
  // As the server calls it: the clock read once per batch (servers/rs/rs.ts EspForwarder), here one
  // of 256 datagrams a millisecond, 51 MB/s: within the quotas. (A new time per call would box a
  // number per call in this loop, not in the relay.)
  const run = (n: number, from: number): number => {
    let hits = 0;
    let now = from;
    for (let i = 0; i < n; i++) {
      if ((i & 255) === 0) now = from + (i >> 8);
      if (r.forwardEsp(batch.buf, 256, 200, batch.addrs, 28, now) !== null) hits++;
    }
    return hits;
  };
  run(200_000, T0); // warm up: optimised code, as on a busy server
  // Scavenges (minor GCs) are what per-packet garbage causes; a major GC here finishes the setup's.
  let gcs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === perf.NODE_PERFORMANCE_GC_MINOR) gcs++;
  });
  obs.observe({ entryTypes: ['gc'] });
  const before = process.memoryUsage().heapUsed;
  const n = 3_000_000;
  const hits = run(n, T0 + 1000);
  const grown = process.memoryUsage().heapUsed - before;
  await new Promise((r) => setTimeout(r, 50));
  obs.disconnect();
  t.equal(hits, n, 'every lookup forwarded');
  // 16 bytes per lookup would be 48 MB and dozens of scavenges; the per-batch clock is 12 000
  // numbers (200 kB).
  t.ok(grown < 1_000_000, `heap grew by ${grown} bytes over ${n} lookups`);
  t.ok(gcs <= 1, `${gcs} scavenges during ${n} lookups`);
});

// ---- the server's datagram handling -----------------------------------------------------------

const tmp = mkdtempSync(join(tmpdir(), 'ntm-rs-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const DC = encodeSockaddr('192.0.2.53', 4500);
const KDCRS = randomBytes(32);
const DC_KEY_ID = 77;

function rsConfig(over: Partial<RsConfig> = {}): RsConfig {
  return {
    name: 'rs1.relay.test',
    listen: { address: '127.0.0.1', port: 0 },
    tls: { port: 0, caFile: '/nonexistent', certFile: '/nonexistent', keyFile: '/nonexistent' },
    privateKeyFile: join(tmp, 'rs.key'),
    gateway: null,
    quota: RELAY_DEFAULTS.quota,
    idleSeconds: 120,
    ...over,
  };
}

/** A datagram as a node or DC would send it: marker ‖ sealed message. */
function sealed<N extends MessageName>(type: N, body: Body<N>, keyClass: number, keyId: number, key: Buffer, now = T0): Buffer {
  return frameControl(sealMessage(type, body, { keyClass, keyId, messageId: newMessageId(), timestamp: now }, key));
}

function open(d: Buffer, key: Buffer): ControlMessage {
  const m = d.subarray(NON_ESP_MARKER_SIZE);
  return openMessage(m, readHeader(m), key);
}

function server() {
  let now = T0;
  const lines: string[] = [];
  const rs = new RelayServer(rsConfig(), { now: () => now, log: (l) => lines.push(l) });
  const sock = new FakeSocket(4600);
  rs.attach(sock);
  rs.addDcKey(DC_KEY_ID, KDCRS, 'dc.fleet1.test');
  const deliver = (data: Buffer, from: Buffer) => sock.deliver([{ data, from }]);
  const sent = () => sock.sent.splice(0);
  const direct = () => {
    deliver(sealed('relayDirection', { routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
    return sent();
  };
  const punch = (node: string, from: Buffer, pad = HOLE_PUNCH_PAD, key = KTUN) => {
    const d = sealed('holePunching', { routeId: ROUTE, node, pad }, KeyClass.tun, ROUTE, key, now);
    deliver(d, from);
    return d;
  };
  return { rs, sock, deliver, sent, direct, punch, lines, tick: (ms: number) => (now += ms) };
}

t.test('server: Relay Direction under Kdcrs is acknowledged; a wrong key or a refused route is answered or dropped', async (t) => {
  const s = server();
  const out = s.direct();
  t.equal(out.length, 1);
  t.same(out[0]!.to, DC);
  const ack = open(out[0]!.data, KDCRS);
  t.equal(ack.type, 'ntmAck');
  t.equal((ack.body as Body<'ntmAck'>).status, Status.ok);
  t.equal(s.rs.relay.size, 1);
  t.equal(s.rs.status().routes[0]!.owner, 'dc.fleet1.test');

  s.deliver(sealed('relayDirection', { routeId: 9, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, KeyClass.dcrs, DC_KEY_ID, randomBytes(32)), DC);
  t.equal(s.sent().length, 0, 'forged: no answer');
  t.equal(s.rs.channel.counters.dropAuth, 1);
  t.equal(s.rs.relay.size, 1);

  s.deliver(sealed('relayDirection', { routeId: 9, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'a.test' }, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
  const refused = open(s.sent()[0]!.data, KDCRS).body as Body<'ntmAck'>;
  t.equal(refused.status, Status.badRequest);
  t.equal(s.rs.counters.relayDirectionsRefused, 1);

  s.deliver(sealed('gatewayDirection', {
    routeId: 10, ktun: KTUN, ktmp: KTUN, expiresAt: T0 + 3600_000, node: 'a.test', nodeName: 'a.test', nodeVips4: ['10.77.0.2'], nodeVips6: [],
    nodePublicKey: Buffer.alloc(32, 9), target: 'example.com', targets4: ['93.184.216.34'], targets6: [],
  }, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
  const gw = open(s.sent()[0]!.data, KDCRS).body as Body<'ntmAck'>;
  t.equal(gw.status, Status.badRequest, 'no gateway configured');
  t.match(gw.reason, /no gateway/);
});

t.test('server: hole punch answers where it saw the node, never longer than the request', async (t) => {
  const s = server();
  s.direct();
  const req = s.punch('a.test', A);
  const out = s.sent();
  t.equal(out.length, 1);
  t.same(out[0]!.to, A, 'answered to the sender');
  t.ok(out[0]!.data.length <= req.length, `answer ${out[0]!.data.length} bytes, request ${req.length}`);
  const ack = open(out[0]!.data, KTUN);
  t.equal(ack.type, 'holePunchingAck');
  t.same((ack.body as Body<'holePunchingAck'>).observed, { address: '198.51.100.10', port: 40001 });
  t.equal(s.rs.status().routes[0]!.a.endpoint, '198.51.100.10:40001');

  const short = s.punch('b.test', B, '');
  t.equal(s.sent().length, 0, 'an unpadded punch (shorter than the answer) gets nothing');
  t.ok(short.length < req.length);
  t.equal(s.rs.relay.counters.punchDropTooShort, 1);
  t.equal(s.rs.status().routes[0]!.b.endpoint, null, 'and teaches nothing');
});

t.test('server: a forged hole punch counts dropAuth and changes nothing; a replayed one is answered to its first sender only', async (t) => {
  const s = server();
  s.direct();
  const req = s.punch('a.test', A);
  s.sent();
  s.punch('a.test', X, HOLE_PUNCH_PAD, randomBytes(32));
  t.equal(s.rs.channel.counters.dropAuth, 1);
  t.equal(s.sent().length, 0, 'nothing sent');
  t.equal(s.rs.status().routes[0]!.a.endpoint, '198.51.100.10:40001', 'A stays where it punched from');

  s.deliver(req, X); // the attacker replays A's punch from its own address
  const out = s.sent();
  t.equal(out.length, 1, 'a duplicate: the first answer again');
  t.same(out[0]!.to, A, 'to the original sender, not the attacker');
  t.equal(s.rs.status().routes[0]!.a.endpoint, '198.51.100.10:40001');
  t.equal(s.rs.relay.counters.punches, 1);
});

t.test('server: relayed Tunnel Request, Response and ESP go through unchanged; forgeries do not', async (t) => {
  const s = server();
  s.direct();
  s.punch('a.test', A);
  s.punch('b.test', B);
  s.sent();
  const request = sealed('tunnelRequest', { routeId: ROUTE, node: 'a.test', suite: 1, spi: SPI_A, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) }, KeyClass.tun, ROUTE, KTUN);
  s.deliver(request, X);
  t.equal(s.sent().length, 0, 'from an address that did not punch');
  t.equal(s.rs.relay.counters.controlDropUnknownSource, 1);
  const forged = sealed('tunnelRequest', { routeId: ROUTE, node: 'a.test', suite: 1, spi: 0x9999, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) }, KeyClass.tun, ROUTE, randomBytes(32));
  s.deliver(forged, A);
  t.equal(s.sent().length, 0, 'not under Ktun');
  t.equal(s.rs.relay.counters.controlDropAuth, 1);
  const stale = sealed('tunnelRequest', { routeId: ROUTE, node: 'a.test', suite: 1, spi: 0x9999, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) }, KeyClass.tun, ROUTE, KTUN, T0 - 31_000);
  s.deliver(stale, A);
  t.equal(s.sent().length, 0, 'stale');
  t.equal(s.rs.relay.counters.controlDropStale, 1);

  s.deliver(request, A);
  let out = s.sent();
  t.equal(out.length, 1);
  t.same(out[0]!.to, B);
  t.same(out[0]!.data, request, 'forwarded byte for byte');
  const response = sealed('tunnelResponse', { inReplyTo: 1n, status: Status.ok, routeId: ROUTE, spi: SPI_B, ephemeral: Buffer.alloc(32, 3), nonce: Buffer.alloc(32, 4), confirm: Buffer.alloc(32, 5) }, KeyClass.tun, ROUTE, KTUN);
  s.deliver(response, B);
  out = s.sent();
  t.same(out[0]!.to, A);
  t.same(out[0]!.data, response);

  s.sock.deliver([
    { data: esp(SPI_A, 300), from: B },
    { data: esp(SPI_B, 200), from: A },
    { data: esp(SPI_B, 200), from: X },
    { data: esp(0x5555, 200), from: A },
    { data: KEEPALIVE_DATAGRAM as Buffer, from: A },
    { data: KEEPALIVE_DATAGRAM as Buffer, from: X },
  ]);
  out = s.sent();
  t.equal(out.length, 2, 'two of the four ESP datagrams, nothing for keepalives');
  t.same(out[0], { data: esp(SPI_A, 300), to: A });
  t.same(out[1], { data: esp(SPI_B, 200), to: B });
  const c = s.rs.relay.counters;
  t.equal(c.espDropUnknownSource, 1);
  t.equal(c.espDropUnknownSpi, 1);
  t.equal(c.keepalives, 1);
  t.equal(c.keepaliveDropUnknown, 1);
  const st = s.rs.status();
  t.same(st.routes[0]!.a.spis, [SPI_A]);
  t.same(st.routes[0]!.b.spis, [SPI_B]);
  t.equal(st.counters.relay.espForwarded, 2);
  t.equal(st.counters.relay.controlForwarded, 2);
  t.same(st.dcs.map((d) => d.dc), ['dc.fleet1.test']);
  t.ok(JSON.parse(JSON.stringify(st)), 'the status is JSON');

  s.tick(121_000);
  s.rs.sweep();
  t.equal(s.rs.relay.size, 0, 'idle route swept');
  s.deliver(request, A);
  t.equal(s.sent().length, 0, 'its Tunnel Request is no longer relayed');
  t.equal(s.rs.channel.counters.dropUnknownKey, 1, 'and the channel does not know its Ktun');
});

// ---- first contact over mutual TLS ------------------------------------------------------------

t.test('server: the same Relay Direction again is acknowledged but not counted as a new one', async (t) => {
  const s = server();
  const body = { routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' };
  s.deliver(sealed('relayDirection', body, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
  s.deliver(sealed('relayDirection', body, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC); // a new message: a DC's retry
  const acks = s.sent().map((d) => (open(d.data, KDCRS).body as Body<'ntmAck'>).status);
  t.same(acks, [Status.ok, Status.ok]);
  t.equal(s.rs.counters.relayDirections, 1);
  t.equal(s.rs.counters.relayDirectionsRepeated, 1);
  t.equal(s.rs.relay.counters.routesCreated, 1);
});

t.test('server: a hole punch whose route ID is not its key ID has its own counter', async (t) => {
  const s = server();
  s.direct();
  s.deliver(sealed('holePunching', { routeId: ROUTE + 1, node: 'a.test', pad: HOLE_PUNCH_PAD }, KeyClass.tun, ROUTE, KTUN), A);
  t.equal(s.sent().length, 0);
  t.equal(s.rs.relay.counters.punchDropMismatch, 1);
  t.equal(s.rs.relay.counters.punchDropUnknownRoute, 0);
  t.equal(s.rs.status().routes[0]!.a.endpoint, null);
});

t.test('server: sends the socket refused are taken back: counters, route and side bytes agree', async (t) => {
  let now = T0;
  const rs = new RelayServer(rsConfig(), { now: () => now, log: () => undefined });
  // Sends all but the last `refuse` datagrams of a batch (as sendBatch stopping at ENOBUFS), and
  // refuses single sends while refuseOne is set.
  class Refusing extends FakeSocket {
    refuse = 0;
    refuseOne = false;
    override send(batch: PacketBatch): number {
      const count = batch.count;
      const n = Math.max(0, count - this.refuse);
      batch.count = n;
      super.send(batch);
      batch.count = count;
      return n;
    }
    override sendOne(data: Buffer, to: Buffer): boolean {
      return this.refuseOne ? false : super.sendOne(data, to);
    }
  }
  const sock = new Refusing(4600);
  rs.attach(sock);
  rs.addDcKey(DC_KEY_ID, KDCRS, 'dc.fleet1.test');
  const deliver = (data: Buffer, from: Buffer) => sock.deliver([{ data, from }]);
  deliver(sealed('relayDirection', { routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
  deliver(sealed('holePunching', { routeId: ROUTE, node: 'a.test', pad: HOLE_PUNCH_PAD }, KeyClass.tun, ROUTE, KTUN), A);
  deliver(sealed('holePunching', { routeId: ROUTE, node: 'b.test', pad: HOLE_PUNCH_PAD }, KeyClass.tun, ROUTE, KTUN), B);
  const request = sealed('tunnelRequest', { routeId: ROUTE, node: 'a.test', suite: 1, spi: SPI_A, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) }, KeyClass.tun, ROUTE, KTUN);
  sock.refuseOne = true;
  deliver(request, A);
  const c = rs.relay.counters;
  t.equal(c.controlForwarded, 0, 'a Tunnel Request the socket refused is not forwarded');
  t.equal(c.controlDropSendFailed, 1);
  t.match(rs.status().routes[0], { packets: 0, bytes: 0, a: { packets: 0, bytes: 0 } });
  sock.refuseOne = false;
  deliver(request, A);
  const response = sealed('tunnelResponse', { inReplyTo: 1n, status: Status.ok, routeId: ROUTE, spi: SPI_B, ephemeral: Buffer.alloc(32, 3), nonce: Buffer.alloc(32, 4), confirm: Buffer.alloc(32, 5) }, KeyClass.tun, ROUTE, KTUN);
  deliver(response, B);
  t.equal(c.controlForwarded, 2);
  const before = rs.status().routes[0]!;
  sock.sent.splice(0);

  sock.refuse = 2;
  sock.deliver([
    { data: esp(SPI_A, 300), from: B },
    { data: esp(SPI_B, 200), from: A },
    { data: esp(SPI_B, 100), from: A },
  ]);
  t.equal(sock.sent.length, 1, 'one of three sent');
  t.equal(c.espForwarded, 1);
  t.equal(c.espBytes, 300, 'bytes only for what was sent');
  t.equal(c.espDropSendFailed, 2);
  const after = rs.status().routes[0]!;
  t.equal(after.bytes - before.bytes, 300, 'the route counts what was sent');
  t.equal(after.packets - before.packets, 1);
  t.equal(after.b.bytes - before.b.bytes, 300, 'B sent 300 bytes');
  t.equal(after.a.bytes - before.a.bytes, 0, 'A’s two datagrams were not sent: not counted');
  now += 1;
});

t.test('server: gateway targets that are private, reserved, the RS’s own or another node’s VIP are refused', async (t) => {
  const nftCalls: string[][] = [];
  const gwConfig = (allowPrivate: boolean) => rsConfig({ gateway: { tun: 'ntmrs0', mtu: 1400, nftTable: 'ntmobile_rs', allowPrivate } });
  const make = (allowPrivate: boolean) => {
    const lines: string[] = [];
    const rs = new RelayServer(gwConfig(allowPrivate), {
      now: () => T0,
      log: (l) => lines.push(l),
      nft: { exec: async (args) => (nftCalls.push(args), { code: 0, stdout: '', stderr: '' }) },
      ownAddresses: () => ['203.0.113.5', '2001:db8:5::5'],
    });
    const sock = new FakeSocket(4600);
    rs.attach(sock);
    rs.addDcKey(DC_KEY_ID, KDCRS, 'dc.fleet1.test');
    t.teardown(() => rs.stop());
    let nextRoute = 100;
    // The answer is asynchronous (an accepted route waits for nftables).
    const direct = async (node: string, targets4: string[], targets6: string[] = [], vip4 = '10.77.0.2'): Promise<Body<'ntmAck'>> => {
      sock.deliver([{
        data: sealed('gatewayDirection', {
          routeId: nextRoute++, ktun: randomBytes(32), ktmp: KTUN, expiresAt: T0 + 3600_000, node, nodeName: node, nodeVips4: [vip4], nodeVips6: ['fd4e:544d:1::2'],
          nodePublicKey: Buffer.alloc(32, 9), target: 'www.general.test', targets4, targets6,
        }, KeyClass.dcrs, DC_KEY_ID, KDCRS),
        from: DC,
      }]);
      for (let i = 0; i < 100 && sock.sent.length === 0; i++) await new Promise((r) => setImmediate(r));
      return open(sock.sent.splice(0).at(-1)!.data, KDCRS).body as Body<'ntmAck'>;
    };
    return { rs, direct, lines };
  };
  const s = make(false);
  t.match(await s.direct('a.test', ['10.1.2.3']), { status: Status.badRequest, reason: 'target 10.1.2.3 is private (RFC 1918) (10.0.0.0/8); gateway.allowPrivate is off' });
  t.match(await s.direct('a.test', ['127.0.0.1']), { status: Status.badRequest, reason: /^target 127\.0\.0\.1 is loopback/ });
  t.match(await s.direct('a.test', ['93.184.216.34'], ['fe80::1']), { status: Status.badRequest, reason: /^target fe80::1 is link-local/ });
  // On the wire an IPv6 target is 16 bytes: the RS sees the v4-mapped form in hex.
  t.match(await s.direct('a.test', ['93.184.216.34'], ['::ffff:192.168.1.1']), { status: Status.badRequest, reason: 'target ::ffff:c0a8:101 is IPv4-mapped private (RFC 1918) (::ffff:192.168.0.0/16); gateway.allowPrivate is off' });
  t.match(await s.direct('a.test', [], ['64:ff9b::a9fe:a9fe']), { status: Status.badRequest, reason: /^target 64:ff9b::a9fe:a9fe is NAT64 of link-local/ }, 'NAT64 of the metadata address');
  t.match(await s.direct('a.test', ['203.0.113.5']), { status: Status.badRequest, reason: 'target 203.0.113.5 is an address of this RS' });
  t.match(await s.direct('a.test', [], ['2001:db8:5::5']), { status: Status.badRequest, reason: 'target 2001:db8:5::5 is an address of this RS' });
  t.equal(s.rs.counters.gatewayDirectionsRefused, 7);
  t.equal(nftCalls.length, 0, 'no rules for a refused route');
  t.ok(s.lines.some((l) => /gateway direction \d+ \(a\.test → www\.general\.test\) refused: badRequest: target 10\.1\.2\.3 is private/.test(l)), 'logged with the address');
  t.match(await s.direct('a.test', ['198.18.0.30', '192.0.2.80']), { status: Status.ok }, 'the testbed’s Internet (198.18.0.0/15) and others are fine');
  t.equal(s.rs.counters.gatewayDirections, 1);

  const p = make(true);
  t.match(await p.direct('a.test', ['10.1.2.3'], ['fd00::10']), { status: Status.ok }, 'allowPrivate: private ranges are allowed');
  t.match(await p.direct('b.test', ['127.0.0.1'], [], '10.77.0.3'), { status: Status.badRequest, reason: /loopback/ }, 'loopback never');
  t.match(await p.direct('b.test', ['10.77.0.2'], [], '10.77.0.3'), { status: Status.badRequest, reason: 'target 10.77.0.2 is the VIP of a.test on this RS' });
});

t.test('server: the relay never learns an SPI the gateway owns, and the gateway never chooses a relayed one', async (t) => {
  const rs = new RelayServer(rsConfig({ gateway: { tun: 'ntmrs0', mtu: 1400, nftTable: 'ntmobile_rs' } }), { now: () => T0, log: () => undefined });
  const sock = new FakeSocket(4600);
  rs.attach(sock);
  rs.addDcKey(DC_KEY_ID, KDCRS, 'dc.fleet1.test');
  t.teardown(() => rs.stop());
  // The gateway's table holds SPI_B (as if a gateway tunnel had chosen it).
  rs.table!.spiFree = (spi: number) => spi !== SPI_B;
  const deliver = (data: Buffer, from: Buffer) => sock.deliver([{ data, from }]);
  deliver(sealed('relayDirection', { routeId: ROUTE, ktun: KTUN, expiresAt: T0 + 3600_000, nodeA: 'a.test', nodeB: 'b.test' }, KeyClass.dcrs, DC_KEY_ID, KDCRS), DC);
  deliver(sealed('holePunching', { routeId: ROUTE, node: 'a.test', pad: HOLE_PUNCH_PAD }, KeyClass.tun, ROUTE, KTUN), A);
  deliver(sealed('holePunching', { routeId: ROUTE, node: 'b.test', pad: HOLE_PUNCH_PAD }, KeyClass.tun, ROUTE, KTUN), B);
  deliver(sealed('tunnelRequest', { routeId: ROUTE, node: 'a.test', suite: 1, spi: SPI_A, ephemeral: Buffer.alloc(32, 1), nonce: Buffer.alloc(32, 2) }, KeyClass.tun, ROUTE, KTUN), A);
  deliver(sealed('tunnelResponse', { inReplyTo: 1n, status: Status.ok, routeId: ROUTE, spi: SPI_B, ephemeral: Buffer.alloc(32, 3), nonce: Buffer.alloc(32, 4), confirm: Buffer.alloc(32, 5) }, KeyClass.tun, ROUTE, KTUN), B);
  t.equal(rs.relay.counters.controlForwarded, 1, 'the request, not the response');
  t.equal(rs.relay.counters.spiRefusedGateway, 1);
  t.same(rs.status().routes[0]!.b.spis, []);
  // The gateway's TunnelManager asks the relay before it picks an SPI (TunnelManagerOptions.spiTaken).
  const spiTaken = (rs.tunnels as unknown as { o: { spiTaken?: (spi: number) => boolean } }).o.spiTaken;
  t.equal(spiTaken?.(SPI_A), true, 'A’s relayed SPI is taken');
  t.equal(spiTaken?.(0x7777), false);
});

t.test('first contact: a DC gets Kdcrs and a Relay Hello; other roles are refused', async (t) => {
  const pki = createPki(join(tmp, 'pki'));
  const rsCert = pki.issue('rs1', { dns: ['rs1.relay.test'], ips: ['127.0.0.1'], role: 'rs' });
  const dcCert = pki.issue('dc1', { dns: ['fleet1.test', 'dc.fleet1.test'], role: 'dc' });
  const asCert = pki.issue('as', { dns: ['as.test'], role: 'as' });
  const tls = { port: 0, caFile: pki.caFile, certFile: rsCert.certFile, keyFile: rsCert.keyFile };

  const wrongName = new RelayServer(rsConfig({ name: 'rs2.relay.test', tls }), { log: () => undefined });
  await t.rejects(wrongName.start(), /does not name rs2\.relay\.test/, 'its certificate must name it');
  const wrongRole = new RelayServer(rsConfig({ name: 'fleet1.test', tls: { ...tls, certFile: dcCert.certFile, keyFile: dcCert.keyFile } }), { log: () => undefined });
  await t.rejects(wrongRole.start(), /role \(OU\) dc, want rs/);

  const rs = new RelayServer(rsConfig({ tls }), { log: () => undefined });
  await rs.start();
  t.teardown(() => rs.stop());
  t.ok(rs.port > 0 && rs.tlsPort > 0);
  const socket = await connectMutualTls({ caFile: pki.caFile, certFile: dcCert.certFile, keyFile: dcCert.keyFile }, '127.0.0.1', rs.tlsPort, 'rs1.relay.test');
  const k = exportServerKey(socket, 'kdcrs');
  const hello = await readMessage(socket, 5000, 'Relay Hello');
  socket.destroy();
  t.equal(hello.type, 'relayHello');
  const body = hello.body as Body<'relayHello'>;
  t.equal(body.name, 'rs1.relay.test');
  t.same(body.publicKey, rs.publicKey, 'its static X25519 key');
  const dcs = rs.status().dcs;
  t.equal(dcs.length, 1);
  t.equal(dcs[0]!.keyId, k.keyId, 'both ends took the same key ID from the exporter');
  t.equal(dcs[0]!.dc, 'fleet1.test');
  t.equal(dcs[0]!.expiresAt - dcs[0]!.contactedAt, 3600_000, 'Kdcrs lives one hour');

  const as = await connectMutualTls({ caFile: pki.caFile, certFile: asCert.certFile, keyFile: asCert.keyFile }, '127.0.0.1', rs.tlsPort, 'rs1.relay.test');
  as.on('error', () => undefined);
  await t.rejects(readMessage(as, 2000), /closed/, 'the AS gets no Relay Hello');
  as.destroy();
  t.equal(rs.status().counters.rs.tlsRejected, 1);
  t.equal(rs.status().dcs.length, 1);
});

// ---- config and gateway rules -----------------------------------------------------------------

t.test('config: defaults, relative paths, clear errors', async (t) => {
  const c = parseRsConfig(JSON.stringify({ name: 'rs1.relay.test', tls: { ca: 'ca.crt', cert: '/etc/rs.crt', key: 'rs.key' }, privateKeyFile: 'x25519.key' }), '/etc/ntmobile');
  t.same(c.listen, { address: '::', port: 4600 });
  t.equal(c.tls.port, 4601);
  t.equal(c.tls.caFile, '/etc/ntmobile/ca.crt');
  t.equal(c.tls.certFile, '/etc/rs.crt');
  t.equal(c.privateKeyFile, '/etc/ntmobile/x25519.key');
  t.equal(c.gateway, null);
  t.equal(c.idleSeconds, 120);
  t.same(c.quota, RELAY_DEFAULTS.quota);
  const g = parseRsConfig(JSON.stringify({ name: 'rs1.relay.test', tls: { ca: 'a', cert: 'b', key: 'c' }, privateKeyFile: 'k', gateway: {}, quota: { routeBytes: 5 } }));
  t.same(g.gateway, { tun: 'ntmrs0', mtu: 1400, nftTable: 'ntmobile_rs', allowPrivate: false });
  t.equal(g.quota.routeBytes, 5);
  const bad = (o: object) => () => parseRsConfig(JSON.stringify({ name: 'rs1.relay.test', tls: { ca: 'a', cert: 'b', key: 'c' }, privateKeyFile: 'k', ...o }));
  t.throws(bad({ name: 'RS1' }), /name: "RS1" is not a lower-case DNS name/);
  t.throws(bad({ tls: undefined }), /tls: required \(an object\)/);
  t.throws(bad({ privateKeyFile: undefined }), /privateKeyFile: required \(a string\)/);
  t.throws(bad({ quota: { routeBytesPerSecond: 10 } }), /quota\.routeBytesPerSecond: 10 is below/);
  t.throws(bad({ quota: { maxroutes: 1 } }), /quota\.maxroutes: unknown field/);
  t.throws(bad({ gateway: { nftTable: 'bad-name' } }), /gateway\.nftTable/);
  t.throws(bad({ listen: { address: 'localhost' } }), /listen\.address: "localhost" is not an IP address/);
  t.throws(() => parseRsConfig('{'), /not valid JSON/);
});

t.test('gateway rules: only named (VIP, target) pairs forwarded and masqueraded, replies back', async (t) => {
  const text = buildGatewayRuleset({ table: 'ntmobile_rs', tun: 'ntmrs0', pairs4: [['10.77.0.2', '93.184.216.34'], ['10.77.0.2', '93.184.216.34']], pairs6: [['fd4e:544d:1::2', '2606:2800:220:1::1']] });
  t.match(text, /elements = \{ 10\.77\.0\.2 \. 93\.184\.216\.34 \}/, 'each pair once');
  t.match(text, /elements = \{ fd4e:544d:1::2 \. 2606:2800:220:1::1 \}/);
  t.match(text, /iifname "ntmrs0" ip saddr \. ip daddr @pairs4 counter name gw_forwarded accept/);
  t.match(text, /iifname "ntmrs0" counter name gw_forward_drop drop/);
  t.match(text, /oifname "ntmrs0" ct state established,related accept\n\s*oifname "ntmrs0" counter name gw_return_drop drop/);
  t.match(text, /oifname != "ntmrs0" ip saddr \. ip daddr @pairs4 masquerade/);
  t.throws(() => buildGatewayRuleset({ table: 'ntmobile_rs', tun: 'ntmrs0', pairs4: [['10.77.0.2', '::1']], pairs6: [] }), /not two IPv4/);
  const empty = buildGatewayRuleset({ table: 'ntmobile_rs', tun: 'ntmrs0', pairs4: [], pairs6: [] });
  t.notMatch(empty, /elements/);
  let nft = process.getuid?.() === 0;
  try {
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
  } catch {
    nft = false;
  }
  if (!nft) return;
  // nft -c: the kernel checks the whole transaction without committing it.
  for (const rules of [text, empty]) {
    const f = join(tmp, 'gw.nft');
    writeFileSync(f, rules);
    t.doesNotThrow(() => execFileSync('nft', ['-c', '-f', f], { stdio: 'pipe' }), 'nft accepts the rule set');
  }
});
