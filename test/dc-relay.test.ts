// The DC's side of relaying (docs/relay.md): the pick rule (rendezvous hashing over the relays
// that have the families a route needs), the relayed route's plan, the `relays` config, Kdcrs
// first contact over real mutual TLS, and the DC itself on loopback directing relayed and gateway
// routes through a fake RS (TLS + UDP) to fake nodes, with the log lines the lab tests grep.
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { ControlChannel, type Incoming } from '../protocol/channel.js';
import { DirectionFlags, KeyClass, PathKind, Role, Status, statusName, type Body } from '../protocol/control.js';
import { DnsCounters, DnsListener, buildResponse, addressRecords, normalizeName, type QueryPacket } from '../protocol/dns.js';
import { decodeSockaddr, encodeSockaddr } from '../protocol/endpoint.js';
import { exportServerKey, generateX25519, KDCRS_LIFETIME_MS } from '../protocol/keys.js';
import { createPki, type IssuedCert } from '../lab/pki.js';
import { ConfigError, parseDcConfig, parseRelays } from '../servers/dc/config.js';
import { DirectionCoordinator, gatewayTarget, gatewayTargetRefusal, type DcConfig } from '../servers/dc/dc.js';
import { contactRelay, orderRelays, pickRelays, preferHealthy, RELAY_FAILURE_MEMORY_MS, RelayServers, rendezvousScore, type RelayConfig, type RelayContact } from '../servers/dc/relays.js';
import { decideRoute, relayPlan, type EndView } from '../servers/dc/route.js';
import { writeMessage } from '../servers/tls.js';

const relay = (name: string, address: string | null, address6: string | null = null, port = 4600): RelayConfig => ({ name, address, address6, port, tlsPort: port + 1 });
const names = (rs: RelayConfig[]): string[] => rs.map((r) => r.name);

// ---- the pick rule ----------------------------------------------------------------------------

t.test('rendezvous score: SHA-256(relay ‖ 0 ‖ sorted node names joined by 0), the same whichever end asks', async (t) => {
  const want = createHash('sha256').update(Buffer.from('rs1.relay.test\0ra.fleet1.test\0rb.fleet2.test')).digest();
  t.ok(rendezvousScore('rs1.relay.test', 'ra.fleet1.test', 'rb.fleet2.test').equals(want), 'a then b');
  t.ok(rendezvousScore('rs1.relay.test', 'rb.fleet2.test', 'ra.fleet1.test').equals(want), 'b then a');
  t.notOk(rendezvousScore('rs2.relay.test', 'ra.fleet1.test', 'rb.fleet2.test').equals(want), 'another relay, another score');
  // The separator keeps ("ab", "c") and ("a", "bc") apart.
  t.notOk(rendezvousScore('r', 'a.x', 'bc.x').equals(rendezvousScore('r', 'ab.x', 'c.x')));
});

const FOUR = [relay('rs1.relay.test', '198.18.0.14'), relay('rs2.relay.test', '198.18.0.15'), relay('rs3.relay.test', '198.18.0.16'), relay('rs4.relay.test', '198.18.0.17')];
const pairs = Array.from({ length: 2000 }, (_, i) => [`n${i}.fleet1.test`, `m${i}.fleet2.test`] as const);

t.test('order: highest score first, independent of the list order and of which end asks', async (t) => {
  for (const [a, b] of pairs.slice(0, 50)) {
    const order = orderRelays(FOUR, a, b);
    const scores = order.map((r) => rendezvousScore(r.name, a, b));
    for (let i = 1; i < scores.length; i++) if (Buffer.compare(scores[i - 1]!, scores[i]!) < 0) t.fail(`${a}/${b}: not in descending score order`);
    t.strictSame(names(orderRelays([...FOUR].reverse(), a, b)), names(order), `${a}/${b}: list order does not matter`);
    t.strictSame(names(orderRelays(FOUR, b, a)), names(order), `${a}/${b}: which end asks does not matter`);
  }
  t.strictSame(orderRelays([], 'a.test', 'b.test'), []);
});

t.test('order: pairs spread evenly over the relays', async (t) => {
  const count = new Map<string, number>();
  for (const [a, b] of pairs) {
    const first = orderRelays(FOUR, a, b)[0]!.name;
    count.set(first, (count.get(first) ?? 0) + 1);
  }
  t.equal(count.size, 4, 'every relay carries some pairs');
  // 2000 pairs over 4: 500 each, standard deviation about 19; ±100 is over 5 deviations.
  for (const r of FOUR) t.ok(Math.abs((count.get(r.name) ?? 0) - 500) < 100, `${r.name}: ${count.get(r.name)} of 2000 pairs`);
});

t.test('order: removing a relay moves only its own pairs, each to its second choice', async (t) => {
  const without = FOUR.filter((r) => r.name !== 'rs2.relay.test');
  let moved = 0;
  let wrong = 0;
  for (const [a, b] of pairs) {
    const before = orderRelays(FOUR, a, b);
    const after = orderRelays(without, a, b);
    if (before[0]!.name === 'rs2.relay.test') {
      moved++;
      if (after[0]!.name !== before[1]!.name) wrong++;
    } else if (after[0]!.name !== before[0]!.name) wrong++;
    if (names(after).join() !== names(before.filter((r) => r.name !== 'rs2.relay.test')).join()) wrong++;
  }
  t.equal(wrong, 0, 'no pair of another relay moved; the removed relay’s pairs went to their second choice');
  t.ok(moved > 300 && moved < 700, `rs2 had ${moved} pairs`);
  const added = [...FOUR, relay('rs5.relay.test', '198.18.0.18')];
  let stolen = 0;
  for (const [a, b] of pairs) {
    const first = orderRelays(added, a, b)[0]!.name;
    if (first !== orderRelays(FOUR, a, b)[0]!.name && first !== 'rs5.relay.test') t.fail(`${a}/${b}: moved to ${first}, not to the new relay`);
    if (first === 'rs5.relay.test') stolen++;
  }
  t.ok(stolen > 250 && stolen < 550, `adding a fifth relay takes about a fifth of the pairs (${stolen})`);
});

t.test('pick: only relays with an address for each family the route needs', async (t) => {
  const v4 = relay('v4.relay.test', '198.18.0.14');
  const v6 = relay('v6.relay.test', null, '2001:db8::e');
  const dual = relay('dual.relay.test', '198.18.0.15', '2001:db8::f');
  const all = [v4, v6, dual];
  const sorted = (rs: RelayConfig[]): string[] => names(rs).sort();
  t.strictSame(sorted(pickRelays(all, [4, 4], 'a.test', 'b.test')), ['dual.relay.test', 'v4.relay.test'], 'IPv4 ↔ IPv4');
  t.strictSame(sorted(pickRelays(all, [6, 6], 'a.test', 'b.test')), ['dual.relay.test', 'v6.relay.test'], 'IPv6 ↔ IPv6');
  t.strictSame(names(pickRelays(all, [4, 6], 'a.test', 'b.test')), ['dual.relay.test'], 'IPv4 ↔ IPv6: only a dual-stack relay');
  t.strictSame(names(pickRelays(all, [6, 4], 'a.test', 'b.test')), ['dual.relay.test'], 'IPv6 ↔ IPv4');
  t.strictSame(pickRelays([v4, v6], [4, 6], 'a.test', 'b.test'), [], 'no dual-stack relay: no candidate');
  t.strictSame(names(pickRelays(all, [4, 4], 'a.test', 'b.test')), names(orderRelays([v4, dual], 'a.test', 'b.test')), 'the candidates keep the rendezvous order');
});

// ---- route plans ------------------------------------------------------------------------------

const ep = (address: string, port: number) => ({ address, port });

t.test('relayPlan: each end gets the RS in its own family; a candidate only within one family', async (t) => {
  const dual = relay('rs1.relay.test', '198.18.0.14', '2001:db8::e');
  const at = (f: 4 | 6) => (f === 4 ? ep('198.18.0.14', 4600) : ep('2001:db8::e', 4600));
  const rs = (f: 4 | 6) => (f === 4 ? (dual.address ? ep(dual.address, 4600) : null) : dual.address6 ? ep(dual.address6, 4600) : null);
  t.strictSame(relayPlan(ep('198.51.100.10', 61000), ep('203.0.113.20', 62000), rs), {
    mnPeer: at(4), cnPeer: at(4), mnCandidate: ep('203.0.113.20', 62000), cnCandidate: ep('198.51.100.10', 61000),
  }, 'IPv4 ↔ IPv4: the RS, and the peer as its DC saw it');
  t.strictSame(relayPlan(ep('198.51.100.10', 61000), ep('2001:db8:2::10', 4500), rs), { mnPeer: at(4), cnPeer: at(6), mnCandidate: null, cnCandidate: null }, 'IPv4 ↔ IPv6: no candidate');
  t.strictSame(relayPlan(ep('2001:db8:2::10', 4500), ep('198.51.100.10', 61000), rs), { mnPeer: at(6), cnPeer: at(4), mnCandidate: null, cnCandidate: null }, 'IPv6 ↔ IPv4');
  t.equal(relayPlan(ep('198.51.100.10', 1), ep('2001:db8:2::10', 1), (f) => (f === 4 ? at(4) : null)), null, 'an RS without IPv6 cannot carry IPv4 ↔ IPv6');
});

const natted = (nat: string, natPort: number, local: string): EndView => ({ observed: ep(nat, natPort), local: ep(local, 4500) });
t.test('decideRoute: the relay cases and their reasons (the DC logs them)', async (t) => {
  t.strictSame(decideRoute(natted('198.51.100.10', 61000, '192.168.1.10'), natted('203.0.113.20', 62000, '192.168.1.10')), { kind: 'relay', reason: 'both behind different NATs' });
  t.strictSame(decideRoute({ observed: ep('198.51.100.10', 4500), local: ep('198.51.100.10', 4500) }, { observed: ep('2001:db8::20', 4500), local: null }), { kind: 'relay', reason: 'IPv4 ↔ IPv6' });
  t.strictSame(decideRoute({ observed: ep('2001:db8::20', 4500), local: ep('2001:db8::20', 4500) }, { observed: ep('198.51.100.10', 4500), local: ep('198.51.100.10', 4500) }), { kind: 'relay', reason: 'IPv6 ↔ IPv4' });
  t.strictSame(decideRoute({ observed: ep('198.51.100.10', 61000), local: null }, natted('198.51.100.10', 61001, '192.168.1.11')), { kind: 'relay', reason: 'both behind one NAT, private addresses not reported' });
  t.equal(decideRoute(natted('198.51.100.10', 61000, '192.168.1.10'), natted('198.51.100.10', 61001, '192.168.1.11')).kind, 'direct', 'one NAT with private addresses stays direct');
});

t.test('gatewayTarget: private and reserved addresses, the VIP pools and the fleet’s servers are not handed to an RS', async (t) => {
  for (const a of ['198.18.0.30', '192.0.2.80', '8.8.8.8', '2001:db8::80', '2a00:1450::1', '::ffff:192.0.2.80']) t.ok(gatewayTarget(a), a);
  const never = ['0.0.0.0', '0.1.2.3', '127.0.0.1', '127.9.9.9', '169.254.169.254', '224.0.0.1', '239.1.1.1', '255.255.255.255', '::', '::1', 'fe80::1', 'febf::1', 'ff02::1', '::ffff:127.0.0.1', '64:ff9b::a9fe:a9fe', 'x'];
  const privateOnes = ['10.1.2.3', '172.16.0.1', '192.168.1.1', '100.64.0.1', 'fd00::1', '::ffff:10.0.0.1'];
  for (const a of [...never, ...privateOnes]) t.notOk(gatewayTarget(a), `${a}: refused by default`);
  const allow = { allowPrivate: true };
  for (const a of privateOnes) t.ok(gatewayTarget(a, allow), `${a}: allowed with allowPrivate`);
  for (const a of never) t.notOk(gatewayTarget(a, allow), `${a}: refused even with allowPrivate`);
  t.equal(gatewayTargetRefusal('10.1.2.3'), 'private (RFC 1918) (10.0.0.0/8); general.allowPrivate is off');
  t.equal(gatewayTargetRefusal('169.254.169.254', allow), 'link-local (169.254.0.0/16)');

  const policy = {
    allowPrivate: true,
    pools: ['10.77.0.0/16', 'fd4e:544d:1::/64'],
    excluded: [{ address: '198.18.0.14', what: 'the address of RS rs1.relay.test' }, { address: '2001:db8::e', what: 'the address of RS rs1.relay.test' }],
  };
  t.equal(gatewayTargetRefusal('10.77.0.9', policy), 'inside the VIP pool 10.77.0.0/16', 'a VIP is a node’s');
  t.equal(gatewayTargetRefusal('fd4e:544d:1::9', policy), 'inside the VIP pool fd4e:544d:1::/64');
  t.equal(gatewayTargetRefusal('198.18.0.14', policy), 'the address of RS rs1.relay.test', 'the RS itself, though on the Internet');
  t.equal(gatewayTargetRefusal('2001:0db8:0::e', policy), 'the address of RS rs1.relay.test', 'in any of its forms');
  t.equal(gatewayTargetRefusal('10.78.0.9', policy), null, 'another DC’s pool is only private');
  t.equal(gatewayTargetRefusal('198.18.0.15', policy), null);
});

// ---- config -----------------------------------------------------------------------------------

const BASE = { zone: 'fleet1.test', nsName: 'dc.fleet1.test', publicAddress: '198.18.0.11', tls: { ca: 'ca', cert: 'c', key: 'k' }, state: 's' };
const cfg = (extra: object) => parseDcConfig(JSON.stringify({ ...BASE, ...extra }));

t.test('config relays: defaults, both families, ports', async (t) => {
  t.strictSame(cfg({}).relays, [], 'no relays by default');
  t.strictSame(cfg({ relays: [] }).relays, []);
  t.strictSame(cfg({ relays: [{ name: 'rs1.relay.test', address: '198.18.0.14', address6: '2001:db8::e', port: 4600, tlsPort: 4601 }] }).relays, [
    { name: 'rs1.relay.test', address: '198.18.0.14', address6: '2001:db8::e', port: 4600, tlsPort: 4601 },
  ]);
  t.strictSame(cfg({ relays: [{ name: 'rs1.relay.test', address: '198.18.0.14' }, { name: 'rs2.relay.test', address6: '2001:db8::f', port: 14600, tlsPort: 14601 }] }).relays, [
    { name: 'rs1.relay.test', address: '198.18.0.14', address6: null, port: 4600, tlsPort: 4601 },
    { name: 'rs2.relay.test', address: null, address6: '2001:db8::f', port: 14600, tlsPort: 14601 },
  ], 'ports default to 4600/4601; one family is enough');
});

t.test('config general: allowPrivate off by default; bad input named', async (t) => {
  t.strictSame(cfg({}).general, { allowPrivate: false });
  t.strictSame(cfg({ general: {} }).general, { allowPrivate: false });
  t.strictSame(cfg({ general: { allowPrivate: true } }).general, { allowPrivate: true });
  t.throws(() => cfg({ general: { allowPrivate: 'yes' } }), { name: 'ConfigError', message: /^general\.allowPrivate: "yes" is not true or false$/ });
  t.throws(() => cfg({ general: { allowPrivates: true } }), { name: 'ConfigError', message: /^general\.allowPrivates: unknown field \(known: allowPrivate\)$/ });
  t.throws(() => cfg({ general: [] }), { name: 'ConfigError', message: /^general: want an object$/ });
});

t.test('config relays: bad input is refused with the field named', async (t) => {
  const bad: [unknown, RegExp][] = [
    [{ name: 'rs1.relay.test', address: '198.18.0.14' }, /relays: want a list/],
    [['rs1.relay.test'], /relays\[0\]: want an object/],
    [[{ address: '198.18.0.14' }], /relays\[0\]\.name: required \(a string\)/],
    [[{ name: 'RS1.relay.test', address: '198.18.0.14' }], /relays\[0\]\.name: "RS1\.relay\.test" is not a lower-case DNS name/],
    [[{ name: 'rs1.relay.test' }], /relays\[0\] \(rs1\.relay\.test\): want "address" \(IPv4\), "address6" \(IPv6\) or both/],
    [[{ name: 'rs1.relay.test', address: '2001:db8::e' }], /relays\[0\]\.address: "2001:db8::e" is not an IPv4 address/],
    [[{ name: 'rs1.relay.test', address6: '198.18.0.14' }], /relays\[0\]\.address6: "198\.18\.0\.14" is not an IPv6 address/],
    [[{ name: 'rs1.relay.test', address: 'rs1.relay.test' }], /relays\[0\]\.address: "rs1\.relay\.test" is not an IPv4 address/],
    [[{ name: 'rs1.relay.test', address: '198.18.0.14', port: 0 }], /relays\[0\]\.port: 0 is not an integer in 1\.\.65535/],
    [[{ name: 'rs1.relay.test', address: '198.18.0.14', tlsPort: '4601' }], /relays\[0\]\.tlsPort: "4601" is not an integer/],
    [[{ name: 'rs1.relay.test', address: '198.18.0.14', adress6: '2001:db8::e' }], /relays\[0\]\.adress6: unknown field/],
    [[{ name: 'rs1.relay.test', address: '198.18.0.14' }, { name: 'rs1.relay.test', address: '198.18.0.15' }], /relays\[1\]\.name: "rs1\.relay\.test" is listed twice/],
  ];
  for (const [relays, re] of bad) t.throws(() => cfg({ relays }), { name: 'ConfigError', message: re }, JSON.stringify(relays));
  t.throws(() => parseRelays(null), ConfigError, 'null is not a list');
  t.throws(() => cfg({ relay: [] }), { message: /relay: unknown field/ }, 'a misspelt top-level field');
});

// ---- Kdcrs: the key store ---------------------------------------------------------------------

t.test('RelayServers: one contact for concurrent callers, expiry after an hour, forget, failures not cached', async (t) => {
  const clock = { t: 1_700_000_000_000 };
  const contacts: string[] = [];
  let nextId = 100;
  let failNext = false;
  const rs = new RelayServers(
    [relay('rs1.relay.test', '198.18.0.14'), relay('rs2.relay.test', null, '2001:db8::f')],
    async (r): Promise<RelayContact> => {
      contacts.push(r.name);
      await new Promise((res) => setTimeout(res, 10));
      if (failNext) {
        failNext = false;
        throw new Error('TLS 198.18.0.14:4601: connect ECONNREFUSED');
      }
      return { keyId: nextId++, key: Buffer.alloc(32, nextId), publicKey: Buffer.alloc(32, 0x55) };
    },
    () => clock.t,
  );
  const [a, b] = await Promise.all([rs.ensure('rs1.relay.test'), rs.ensure('rs1.relay.test')]);
  t.equal(a, b, 'concurrent callers share one key');
  t.strictSame(contacts, ['rs1.relay.test'], 'one first contact');
  t.equal(rs.key(a.keyId), a, 'found by key ID for datagrams under it');
  t.equal(rs.contacts, 1);
  t.equal(await rs.ensure('rs1.relay.test'), a, 'kept while live');
  t.match(rs.status(), [{ name: 'rs1.relay.test', contacted: true, contactedAt: clock.t, keyExpiresAt: clock.t + KDCRS_LIFETIME_MS, keyId: a.keyId, lastError: null }, { name: 'rs2.relay.test', contacted: false, keyExpiresAt: null }]);

  clock.t += KDCRS_LIFETIME_MS;
  t.equal(rs.key(a.keyId), undefined, 'expired after an hour');
  t.match(rs.status()[0], { contacted: false, keyId: null });
  const c = await rs.ensure('rs1.relay.test');
  t.not(c.keyId, a.keyId, 'a new key by a new first contact');
  t.equal(contacts.length, 2);

  rs.forget('rs1.relay.test');
  t.equal(rs.key(c.keyId), undefined, 'forgotten');
  failNext = true;
  await t.rejects(rs.ensure('rs1.relay.test'), /ECONNREFUSED/, 'a failed contact rejects');
  t.match(rs.status()[0], { contacted: false, lastError: /ECONNREFUSED/ });
  const d = await rs.ensure('rs1.relay.test');
  t.equal(contacts.length, 4, 'the failure was not cached: the next call contacts again');
  t.match(rs.status()[0], { contacted: true, keyId: d.keyId, lastError: null });
  await t.rejects(rs.ensure('rs9.relay.test'), /not configured/);
});

t.test('RelayServers: an RS that failed within the last minute is tried after the others, in rendezvous order', async (t) => {
  const clock = { t: 1_700_000_000_000 };
  const three = [relay('rs1.relay.test', '198.18.0.14'), relay('rs2.relay.test', '198.18.0.15'), relay('rs3.relay.test', '198.18.0.16')];
  const rs = new RelayServers(three, async () => ({ keyId: 1, key: Buffer.alloc(32), publicKey: Buffer.alloc(32, 1) }), () => clock.t);
  const order = orderRelays(three, 'a.test', 'b.test');
  const [first, second, third] = names(order);
  t.strictSame(names(rs.tryOrder(order)), names(order), 'no failures: the rendezvous order');
  rs.failed(first!, 'TLS: connect ECONNREFUSED');
  t.strictSame(names(rs.tryOrder(order)), [second, third, first], 'the dead first choice is tried last');
  t.match(rs.status().find((r) => r.name === first), { failedAt: clock.t, lastError: /ECONNREFUSED/ });
  clock.t += 10_000;
  rs.failed(second!, 'overQuota: full');
  t.strictSame(names(rs.tryOrder(order)), [third, first, second], 'two failed: both last, still in rendezvous order');
  clock.t += RELAY_FAILURE_MEMORY_MS - 10_000 - 1;
  t.strictSame(names(rs.tryOrder(order)), [third, first, second], 'just under a minute: still remembered');
  clock.t += 1;
  t.strictSame(names(rs.tryOrder(order)), [first, third, second], 'a minute after its failure the first choice is first again');
  rs.succeeded(second!);
  t.strictSame(names(rs.tryOrder(order)), names(order), 'an RS that carried a route is no longer tried last');
  t.equal(rs.status().find((r) => r.name === second)?.failedAt, null);

  // The pure rule.
  const failedAt = new Map([['rs2.relay.test', 100], ['rs3.relay.test', 1]]);
  t.strictSame(names(preferHealthy([three[2]!, three[1]!, three[0]!], (n) => failedAt.get(n), 1000, 60_000)), ['rs1.relay.test', 'rs3.relay.test', 'rs2.relay.test'], 'the healthy first, each group in the given order');
  t.strictSame(names(preferHealthy(three, (n) => failedAt.get(n), 60_050, 60_000)), ['rs1.relay.test', 'rs3.relay.test', 'rs2.relay.test'], 'rs3’s failure is forgotten, rs2’s not');
});

// ---- first contact over mutual TLS ------------------------------------------------------------

const tmp = mkdtempSync(join(tmpdir(), 'ntm-dc-relay-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const pki = createPki(join(tmp, 'pki'));
const dcCert = pki.issue('dc1', { role: 'dc', dns: ['fleet1.test', 'dc.fleet1.test'], ips: ['127.0.0.1'] });
const RS_NAMES = ['rs1.relay.test', 'rs2.relay.test', 'rs3.relay.test'];
const rsCert = pki.issue('rs1', { role: 'rs', dns: RS_NAMES, ips: ['127.0.0.1', '::1'] });
const notRsCert = pki.issue('rs-as-dc', { role: 'dc', dns: RS_NAMES });
const tlsFiles = (c: IssuedCert) => ({ caFile: c.caFile, certFile: c.certFile, keyFile: c.keyFile });

interface FakeRs {
  tlsPort: number;
  udpPort: number;
  publicKey: Buffer;
  /** Kdcrs keys it holds, by key ID (clear() = a restart). */
  keys: Map<number, Buffer>;
  got: { type: string; body: Record<string, unknown>; keyId: number }[];
  tlsContacts: number;
  /** The status it answers directions with. */
  answer: number;
  /** Relay Hello: what name to say (default: the TLS server name asked for), or none. */
  hello: 'sni' | 'none' | string;
  close(): Promise<void>;
}

async function listenTls(server: TlsServer, host: string): Promise<number> {
  await new Promise<void>((res) => server.listen(0, host, () => res()));
  return (server.address() as { port: number }).port;
}

/** An RS as the DC sees it: mutual TLS (Relay Hello) and a UDP control channel under Kdcrs. */
async function fakeRs(t: Test, cert: IssuedCert = rsCert): Promise<FakeRs> {
  const self: FakeRs = {
    tlsPort: 0,
    udpPort: 0,
    publicKey: generateX25519().publicKey,
    keys: new Map(),
    got: [],
    tlsContacts: 0,
    answer: Status.ok,
    hello: 'sni',
    close: async () => undefined,
  };
  const server = createTlsServer({ ca: readFileSync(cert.caFile), cert: readFileSync(cert.certFile), key: readFileSync(cert.keyFile), minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: true }, (s: TLSSocket) => {
    s.on('error', () => undefined);
    self.tlsContacts++;
    const k = exportServerKey(s, 'kdcrs');
    self.keys.set(k.keyId, k.key);
    const sni = (s as TLSSocket & { servername?: string }).servername ?? 'rs1.relay.test';
    if (self.hello !== 'none') writeMessage(s, 'relayHello', { name: self.hello === 'sni' ? sni : self.hello, publicKey: self.publicKey });
  });
  self.tlsPort = await listenTls(server, '127.0.0.1');
  const sock = dgram.createSocket({ type: 'udp6', ipv6Only: false });
  await new Promise<void>((res) => sock.bind(0, '::', () => res()));
  self.udpPort = sock.address().port;
  const channel = new ControlChannel({
    send: (d, to) => {
      // A dual-stack socket sends to IPv4 peers at their v4-mapped address.
      const e = decodeSockaddr(to);
      sock.send(d, e.port, e.family === 4 ? `::ffff:${e.address}` : e.address);
    },
    keys: (cls, id) => (cls === KeyClass.dcrs ? self.keys.get(id) : undefined),
    onMessage: (m) => {
      self.got.push({ type: m.message.type, body: m.message.body as Record<string, unknown>, keyId: m.key.keyId });
      channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: self.answer, reason: self.answer === Status.ok ? '' : 'refused by the test' });
    },
  });
  sock.on('message', (msg, rinfo) => channel.receive(msg, encodeSockaddr(rinfo.address, rinfo.port)));
  self.close = async () => {
    channel.close();
    sock.close();
    await new Promise<void>((res) => server.close(() => res()));
  };
  t.teardown(() => self.close());
  return self;
}

t.test('contactRelay: Kdcrs from the TLS exporter and the public key from the Relay Hello', async (t) => {
  const rs = await fakeRs(t);
  const r = { ...relay('rs2.relay.test', '127.0.0.1'), tlsPort: rs.tlsPort };
  const c = await contactRelay(tlsFiles(dcCert), r);
  t.ok(c.publicKey.equals(rs.publicKey), 'the RS’s static public key');
  t.ok(rs.keys.get(c.keyId)?.equals(c.key), 'both ends hold the same key under the same ID');

  rs.hello = 'rs3.relay.test';
  await t.rejects(contactRelay(tlsFiles(dcCert), r), /^Relay Hello names rs3\.relay\.test, want rs2\.relay\.test$/, 'a Relay Hello with another name');
  rs.hello = 'none';
  await t.rejects(contactRelay(tlsFiles(dcCert), r, 300), /^Relay Hello: no answer within 300 ms$/, 'no Relay Hello');
  rs.hello = 'sni';
  await t.rejects(contactRelay(tlsFiles(dcCert), { ...r, name: 'rs9.relay.test' }), /TLS 127\.0\.0\.1:\d+: .*(altnames|Hostname)/i, 'a certificate that does not name the relay');

  const impostor = await fakeRs(t, notRsCert);
  await t.rejects(contactRelay(tlsFiles(dcCert), { ...r, tlsPort: impostor.tlsPort }), /^certificate role dc, want rs$/, 'a DC’s certificate does not pass for an RS');
  const closed = createNetServer();
  await new Promise<void>((res) => closed.listen(0, '127.0.0.1', () => res()));
  const port = (closed.address() as { port: number }).port;
  await new Promise<void>((res) => closed.close(() => res()));
  await t.rejects(contactRelay(tlsFiles(dcCert), { ...r, tlsPort: port }), /ECONNREFUSED/, 'an RS that is down');
});

// ---- the DC on loopback -------------------------------------------------------------------------

interface FakeNode {
  name: string;
  channel: ControlChannel;
  port: number;
  address: string;
  key: { keyClass: number; keyId: number; key: Buffer };
  /** Route Directions received (CN side), in order. */
  directions: Body<'routeDirection'>[];
}

const events: string[] = [];
let nextKeyId = 1000;

async function fakeNode(t: Test, dc: DirectionCoordinator, name: string, address: string, reportLocal: 'same' | 'nat' = 'same'): Promise<FakeNode> {
  const sock = dgram.createSocket({ type: address.includes(':') ? 'udp6' : 'udp4' });
  await new Promise<void>((res) => sock.bind(0, address, () => res()));
  const port = sock.address().port;
  const keyId = nextKeyId++;
  const key = Buffer.alloc(32, keyId & 0xff);
  const publicKey = generateX25519().publicKey;
  dc.registry.putKey({ keyId, key, expiresAt: Date.now() + 3600_000, fqdn: name, names: [name], publicKey });
  const local = reportLocal === 'same' ? { address, port } : { address: address.includes(':') ? 'fd00::10' : '192.168.1.10', port: 4500 };
  dc.registry.register({ name, keyId, observed: { address, port }, local, publicKey, lastSeen: Date.now() });
  const node: FakeNode = { name, port, address, key: { keyClass: KeyClass.ntmdc, keyId, key }, directions: [], channel: undefined as unknown as ControlChannel };
  node.channel = new ControlChannel({
    send: (d, to) => {
      const e = decodeSockaddr(to);
      sock.send(d, e.port, e.address);
    },
    keys: (cls, id) => (cls === KeyClass.ntmdc && id === keyId ? key : undefined),
    onMessage: (m: Incoming) => {
      if (m.message.type !== 'routeDirection') return;
      events.push(`${name} got routeDirection`);
      node.directions.push(m.message.body);
      node.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
    },
  });
  sock.on('message', (msg, rinfo) => node.channel.receive(msg, encodeSockaddr(rinfo.address, rinfo.port)));
  t.teardown(() => {
    node.channel.close();
    sock.close();
  });
  return node;
}

/** MN's side: a Direction Request; a Route Direction is acknowledged and returned, an NTM ACK returned as it is. */
async function direct(mn: FakeNode, dc: DirectionCoordinator, target: string, flags = 0): Promise<{ route: Body<'routeDirection'> } | { ack: Body<'ntmAck'> }> {
  const answer = await mn.channel.request('directionRequest', { source: mn.name, target, flags }, mn.key, encodeSockaddr(mn.address.includes(':') ? '::1' : '127.0.0.1', dc.port), { initialMs: 3000, maxMs: 3000, tries: 2 });
  if (answer.message.type === 'routeDirection') {
    events.push(`${mn.name} got routeDirection`);
    mn.channel.reply(answer, 'ntmAck', { inReplyTo: answer.envelope.messageId, status: Status.ok, reason: '' });
    return { route: answer.message.body };
  }
  if (answer.message.type === 'ntmAck') return { ack: answer.message.body };
  throw new Error(`answered with ${answer.message.type}`);
}

function route(t: Test, r: { route: Body<'routeDirection'> } | { ack: Body<'ntmAck'> }): Body<'routeDirection'> {
  if ('ack' in r) {
    t.fail(`want a Route Direction, got ntmAck ${statusName(r.ack.status)}: ${r.ack.reason}`);
    throw new Error('no route');
  }
  return r.route;
}

/** A DNS server for the DC's resolvers: NS questions get NXDOMAIN (no zone is delegated). */
async function fakeDns(t: Test, records: Record<string, { a?: string[]; aaaa?: string[] }>): Promise<string> {
  const listener = new DnsListener({
    label: 'fake-dns',
    address: '127.0.0.1',
    port: 0,
    counters: new DnsCounters(),
    answer: (q: QueryPacket) => {
      const question = q.questions[0];
      const name = normalizeName(question.name);
      const r = records[name];
      if (r === undefined || question.type === 'NS') return buildResponse(q, { rcode: 'NXDOMAIN', authoritative: true });
      if (question.type === 'A') return buildResponse(q, { authoritative: true, answers: addressRecords(name, 'A', r.a ?? [], 60) });
      if (question.type === 'AAAA') return buildResponse(q, { authoritative: true, answers: addressRecords(name, 'AAAA', r.aaaa ?? [], 60) });
      return buildResponse(q, { authoritative: true });
    },
  });
  await listener.start();
  t.teardown(() => listener.stop());
  return `127.0.0.1:${listener.port}`;
}

async function startDc(t: Test, relays: RelayConfig[], resolvers: string[] = [], extra: Partial<DcConfig> = {}): Promise<DirectionCoordinator> {
  const dir = mkdtempSync(join(tmp, 'dc-'));
  const config: DcConfig = {
    zone: 'fleet1.test',
    nsName: 'dc.fleet1.test',
    publicAddress: '127.0.0.1',
    listen: { address: '::', port: 0 },
    tls: { ...tlsFiles(dcCert), port: 0 },
    dns: null,
    pool: { ipv4: '10.77.0.0/16', ipv6: 'fd4e:544d:1::/64' },
    statePath: join(dir, 'state.json'),
    keepaliveSeconds: 20,
    expireAfterKeepalives: 3,
    routeLifetimeSeconds: 3600,
    discovery: { resolvers, override: {}, timeoutMs: 500 },
    peerControlPort: 4500,
    peerTlsPort: 4501,
    relays,
    retransmit: { initialMs: 100, maxMs: 200, tries: 3 },
    verbose: true,
    ...extra,
  };
  const dc = new DirectionCoordinator(config);
  await dc.start();
  t.teardown(() => dc.stop());
  return dc;
}

// The DC logs with console.error (--verbose): keep its lines, show only the others.
const originalError = console.error;
const dcLines: string[] = [];
console.error = (...args: unknown[]) => {
  const line = args.map(String).join(' ');
  if (line.startsWith('dc fleet1.test: ')) dcLines.push(line.slice('dc fleet1.test: '.length));
  else originalError(...args);
};
t.teardown(() => {
  console.error = originalError;
  if (process.env.NTM_DEBUG) originalError(dcLines.join('\n'));
});
const logged = (re: RegExp): string | undefined => dcLines.find((l) => re.test(l));

const rsAt = (rs: FakeRs, name = 'rs1.relay.test', address: string | null = '127.0.0.1', address6: string | null = '::1'): RelayConfig => ({ name, address, address6, port: rs.udpPort, tlsPort: rs.tlsPort });

t.test('DC: IPv4 ↔ IPv6 goes through the RS; each end is sent to the RS in its family; CN first', async (t) => {
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs)]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  const cn = await fakeNode(t, dc, 'rb.fleet1.test', '::1');
  events.length = 0;
  const toMn = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  await new Promise((r) => setTimeout(r, 50));
  t.strictSame(events, ['rb.fleet1.test got routeDirection', 'ra.fleet1.test got routeDirection'], 'the responder (CN) first');
  const toCn = cn.directions[0]!;
  t.equal(rs.got.length, 1, 'one Relay Direction');
  const rd = rs.got[0]!;
  t.equal(rd.type, 'relayDirection');
  t.match(rd.body, { routeId: toMn.routeId, nodeA: 'ra.fleet1.test', nodeB: 'rb.fleet1.test', expiresAt: toMn.expiresAt });
  t.ok((rd.body.ktun as Buffer).equals(toMn.ktun) && toCn.ktun.equals(toMn.ktun), 'the RS and both ends share Ktun');
  t.match(toMn, { role: Role.initiator, path: PathKind.relay, peerEndpoint: { address: '127.0.0.1', port: rs.udpPort }, peerCandidate: null, via: 'rs1.relay.test', peerNode: 'rb.fleet1.test', localName: 'ra.fleet1.test' });
  t.match(toCn, { role: Role.responder, path: PathKind.relay, peerEndpoint: { address: '::1', port: rs.udpPort }, peerCandidate: null, via: 'rs1.relay.test', peerNode: 'ra.fleet1.test', localName: 'rb.fleet1.test', routeId: toMn.routeId });
  t.ok(toCn.ktmp.equals(toMn.ktmp), 'both ends share Ktmp');
  t.equal(logged(new RegExp(`^route ${toMn.routeId} `)), `route ${toMn.routeId} ra.fleet1.test → rb.fleet1.test: relay via rs1.relay.test (IPv4 ↔ IPv6)`, 'the log line');
  t.match(dc.status(), { counters: { relayRoutes: 1, relayFailures: 0, relayContacts: 1, directionsFailed: 0 }, relays: [{ name: 'rs1.relay.test', contacted: true }] });

  // A second route reuses Kdcrs: no new first contact.
  const again = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  t.equal(rs.tlsContacts, 1, 'Kdcrs reused');
  t.equal(rs.got[1]?.keyId, rd.keyId, 'under the same key');
  t.not(again.routeId, toMn.routeId);
});

t.test('DC: the relay flag (a direct attempt failed) relays a route that would go direct; one family gets candidates', async (t) => {
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs)]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  const cn = await fakeNode(t, dc, 'rb.fleet1.test', '127.0.0.1');
  const plain = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  t.match(plain, { path: PathKind.direct, peerCandidate: null, via: '', role: Role.initiator, peerEndpoint: { address: '127.0.0.1', port: cn.port } }, 'without the flag: direct, as before');
  t.equal(rs.got.length, 0, 'the RS was not asked');
  t.match(logged(new RegExp(`^route ${plain.routeId} `)), /: no-nat, mn initiates$/);

  const toMn = route(t, await direct(mn, dc, 'rb.fleet1.test', DirectionFlags.relay));
  await new Promise((r) => setTimeout(r, 50));
  const toCn = cn.directions.at(-1)!;
  t.match(toMn, { path: PathKind.relay, role: Role.initiator, peerEndpoint: { address: '127.0.0.1', port: rs.udpPort }, peerCandidate: { address: '127.0.0.1', port: cn.port } }, 'MN: the RS, and CN as a direct candidate');
  t.match(toCn, { path: PathKind.relay, role: Role.responder, peerEndpoint: { address: '127.0.0.1', port: rs.udpPort }, peerCandidate: { address: '127.0.0.1', port: mn.port } }, 'CN: the RS, and MN as a direct candidate');
  t.equal(logged(new RegExp(`^route ${toMn.routeId} `)), `route ${toMn.routeId} ra.fleet1.test → rb.fleet1.test: relay via rs1.relay.test (direct no-nat attempt failed)`);
});

t.test('DC: an RS that is down is skipped for the next in rendezvous order; a refusing one too', async (t) => {
  const rs = await fakeRs(t);
  const order = orderRelays([relay('rs1.relay.test', '127.0.0.1'), relay('rs2.relay.test', '127.0.0.1'), relay('rs3.relay.test', '127.0.0.1')], 'ra.fleet1.test', 'rb.fleet1.test').map((r) => r.name);
  const closed = createNetServer();
  await new Promise<void>((res) => closed.listen(0, '127.0.0.1', () => res()));
  const deadPort = (closed.address() as { port: number }).port;
  await new Promise<void>((res) => closed.close(() => res()));
  // The first choice is down, the second refuses (over quota), the third takes it.
  const relays = [{ ...rsAt(rs, order[0]), tlsPort: deadPort }, rsAt(rs, order[1]), rsAt(rs, order[2])];
  const dc = await startDc(t, relays);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1', 'nat');
  await fakeNode(t, dc, 'rb.fleet1.test', '::1');
  let refused = 0;
  const origSend = rs.answer;
  rs.answer = Status.overQuota;
  const first = (async () => {
    // Refuse the first direction only (the second candidate's), accept the next.
    while (rs.got.length === 0) await new Promise((r) => setTimeout(r, 5));
    refused++;
    rs.answer = origSend;
  })();
  const toMn = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  await first;
  t.equal(refused, 1);
  t.equal(toMn.via, order[2], `carried by the third choice ${order[2]}`);
  t.equal(rs.got.length, 2, 'two Relay Directions: the refused one and the accepted one');
  t.match(dc.status(), { counters: { relayRoutes: 1, relayFailures: 2 } });
  t.match(logged(new RegExp(`^route ${toMn.routeId}: RS ${order[0]!.replace(/\./g, '\\.')} failed: `)), /ECONNREFUSED/, 'the dead RS logged');
  t.match(logged(new RegExp(`^route ${toMn.routeId}: RS ${order[1]!.replace(/\./g, '\\.')} failed: `)), / failed: overQuota: refused by the test$/, 'the refusal logged');
  t.match((dc.status() as { relays: { name: string; lastError: string | null }[] }).relays.find((r) => r.name === order[0])?.lastError, /ECONNREFUSED/);

  // The next route of the same pair: the two that just failed are tried after the third.
  const before = dcLines.length;
  const again = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  t.equal(again.via, order[2], 'carried by the RS that worked');
  t.equal(rs.got.length, 3, 'one more Relay Direction, to it alone');
  t.match(dc.status(), { counters: { relayRoutes: 2, relayFailures: 2 } }, 'the dead RS was not tried first again');
  t.notOk(dcLines.slice(before).some((l) => / failed: /.test(l)), 'no failure this time');
  const st = (dc.status() as { relays: { name: string; failedAt: number | null }[] }).relays;
  t.ok(st.find((r) => r.name === order[0])!.failedAt !== null && st.find((r) => r.name === order[1])!.failedAt !== null, 'the failures are in the status');
  t.equal(st.find((r) => r.name === order[2])!.failedAt, null);
});

t.test('DC: an RS that restarted (forgot Kdcrs) is contacted again and the direction retried once', async (t) => {
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs)]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  await fakeNode(t, dc, 'rb.fleet1.test', '::1');
  route(t, await direct(mn, dc, 'rb.fleet1.test'));
  rs.keys.clear();
  const toMn = route(t, await direct(mn, dc, 'rb.fleet1.test'));
  t.equal(rs.tlsContacts, 2, 'first contact made again');
  t.equal(rs.got.length, 2, 'the RS took the retried direction');
  t.equal(toMn.via, 'rs1.relay.test');
  t.match(dc.status(), { counters: { relayRoutes: 2, relayFailures: 0, relayContacts: 2 } });
});

t.test('DC: no relays configured, or no RS with the families, or none answering', async (t) => {
  const none = await startDc(t, []);
  const mn = await fakeNode(t, none, 'ra.fleet1.test', '127.0.0.1');
  await fakeNode(t, none, 'rb.fleet1.test', '::1');
  const r = await direct(mn, none, 'rb.fleet1.test');
  t.match(r, { ack: { status: Status.relayRequired, reason: 'IPv4 ↔ IPv6: needs a Relay Server, and none is configured' } });

  const rs = await fakeRs(t);
  const v4only = await startDc(t, [rsAt(rs, 'rs1.relay.test', '127.0.0.1', null)]);
  const mn2 = await fakeNode(t, v4only, 'ra.fleet1.test', '127.0.0.1');
  await fakeNode(t, v4only, 'rb.fleet1.test', '::1');
  t.match(await direct(mn2, v4only, 'rb.fleet1.test'), { ack: { status: Status.relayRequired, reason: 'IPv4 ↔ IPv6: no configured Relay Server has both an IPv4 and an IPv6 address' } });
  t.equal(rs.tlsContacts, 0, 'the IPv4-only RS was not contacted');

  rs.answer = Status.overQuota;
  const refusing = await startDc(t, [rsAt(rs)]);
  const mn3 = await fakeNode(t, refusing, 'ra.fleet1.test', '127.0.0.1');
  await fakeNode(t, refusing, 'rb.fleet1.test', '::1');
  t.match(await direct(mn3, refusing, 'rb.fleet1.test'), { ack: { status: Status.peerUnreachable, reason: 'IPv4 ↔ IPv6: no Relay Server took the route (tried rs1.relay.test)' } });
  t.match(refusing.status(), { counters: { relayRoutes: 0, relayFailures: 1, directionsFailed: 1 } });
});

t.test('DC: a general host by the router’s policy goes to the RS as a gateway route', async (t) => {
  const resolver = await fakeDns(t, { 'www.general.test': { a: ['192.0.2.80', '127.0.0.1'], aaaa: ['2001:db8::80'] }, 'empty.general.test': { a: ['127.0.0.1'] } });
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs, 'rs1.relay.test', '127.0.0.1', null)], [resolver]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  const toMn = route(t, await direct(mn, dc, 'www.general.test', DirectionFlags.general));
  t.equal(rs.got.length, 1);
  const gd = rs.got[0]!;
  t.equal(gd.type, 'gatewayDirection');
  const vips = dc.registry.vips('ra.fleet1.test');
  t.match(gd.body, {
    routeId: toMn.routeId,
    node: 'ra.fleet1.test',
    nodeName: 'ra.fleet1.test',
    nodeVips4: [vips.vip4],
    nodeVips6: [vips.vip6],
    target: 'www.general.test',
    targets4: ['192.0.2.80'],
    targets6: [],
  }, 'the loopback address is left out; the IPv6 address too (the RS has no IPv6)');
  t.ok((gd.body.ktun as Buffer).equals(toMn.ktun) && (gd.body.ktmp as Buffer).equals(toMn.ktmp), 'the RS gets Ktun and Ktmp');
  t.ok((gd.body.nodePublicKey as Buffer).equals(dc.registry.registration('ra.fleet1.test')!.publicKey), "the node's public key");
  t.match(toMn, {
    role: Role.initiator,
    path: PathKind.gateway,
    peerNode: 'rs1.relay.test',
    peerName: 'www.general.test',
    peerVip4: '192.0.2.80',
    peerVip6: null,
    peerVips4: ['192.0.2.80'],
    peerVips6: [],
    peerEndpoint: { address: '127.0.0.1', port: rs.udpPort },
    peerCandidate: null,
    via: 'rs1.relay.test',
  });
  t.ok(toMn.peerPublicKey.equals(rs.publicKey), "the peer's key is the RS's (Relay Hello)");
  t.equal(logged(new RegExp(`^route ${toMn.routeId} `)), `route ${toMn.routeId} ra.fleet1.test → www.general.test: gateway via rs1.relay.test (general host by the router's policy; 192.0.2.80)`);
  t.match(dc.status(), { counters: { gatewayRoutes: 1, relayRoutes: 0 } });

  t.match(await direct(mn, dc, 'empty.general.test', DirectionFlags.general), { ack: { status: Status.unknownName, reason: /no usable A or AAAA record/ } }, 'only a loopback address: unknown');
  t.match(await direct(mn, dc, 'nothing.general.test', DirectionFlags.general), { ack: { status: Status.unknownName } }, 'no record at all: unknown');
  t.match(await direct(mn, dc, 'rb.fleet1.test', DirectionFlags.general), { ack: { status: Status.badRequest, reason: /an NTMobile name, not a general host/ } }, 'a name of the zone is not a general host');
  t.equal(rs.got.length, 1, 'the RS heard of none of these');
});

t.test('DC: a name with no NTMobile DC (no NS anywhere) is a general host; a dual-stack RS gets both families', async (t) => {
  const resolver = await fakeDns(t, { 'www.nodc.test': { a: ['192.0.2.81'], aaaa: ['2001:db8::81', 'fe80::1'] } });
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs)], [resolver]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '::1');
  const toMn = route(t, await direct(mn, dc, 'www.nodc.test'));
  t.match(rs.got[0]?.body, { targets4: ['192.0.2.81'], targets6: ['2001:db8::81'] });
  t.match(toMn, { path: PathKind.gateway, peerVip4: '192.0.2.81', peerVip6: '2001:db8::81', peerEndpoint: { address: '::1', port: rs.udpPort } }, "MN (IPv6) reaches the RS over IPv6");
  t.match(logged(new RegExp(`^route ${toMn.routeId} `)), /: gateway via rs1\.relay\.test \(no NTMobile DC for www\.nodc\.test; 192\.0\.2\.81, 2001:db8::81\)$/);
});

t.test('DC: a general host’s private or reserved addresses, VIP pool addresses and the RS’s own address are not handed on', async (t) => {
  const resolver = await fakeDns(t, {
    'private.general.test': { a: ['10.1.2.3', '169.254.169.254'], aaaa: ['fd00::10'] },
    'mixed.general.test': { a: ['10.1.2.3', '10.77.0.9', '192.0.2.90', '127.0.0.2'], aaaa: ['fd00::10', 'fd4e:544d:1::9'] },
  });
  const rs = await fakeRs(t);
  const dc = await startDc(t, [rsAt(rs)], [resolver]);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  t.match(await direct(mn, dc, 'private.general.test', DirectionFlags.general), {
    ack: { status: Status.unknownName, reason: /no usable A or AAAA record \(left out: 10\.1\.2\.3: private \(RFC 1918\) \(10\.0\.0\.0\/8\); general\.allowPrivate is off; 169\.254\.169\.254: link-local/ },
  }, 'nothing left: unknownName, saying why');
  const toMn = route(t, await direct(mn, dc, 'mixed.general.test', DirectionFlags.general));
  t.match(rs.got.at(-1)?.body, { targets4: ['192.0.2.90'], targets6: [] });
  t.strictSame(toMn.peerVips4, ['192.0.2.90']);
  t.ok(logged(/^general host mixed\.general\.test: left out 10\.1\.2\.3: private/), 'the DC logs what it left out');

  // allowPrivate: private ranges go through; the VIP pools, loopback and the RS's address never do.
  const open = await startDc(t, [rsAt(rs, 'rs1.relay.test', '127.0.0.1', '::1')], [resolver], { general: { allowPrivate: true } });
  const mn2 = await fakeNode(t, open, 'ra.fleet1.test', '127.0.0.1');
  const toMn2 = route(t, await direct(mn2, open, 'mixed.general.test', DirectionFlags.general));
  t.match(rs.got.at(-1)?.body, { targets4: ['10.1.2.3', '192.0.2.90'], targets6: ['fd00::10'] });
  t.strictSame(toMn2.peerVips6, ['fd00::10']);
});

t.test('DC: without relays, a general host is refused with relayRequired', async (t) => {
  const dc = await startDc(t, []);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test', '127.0.0.1');
  t.match(await direct(mn, dc, 'www.general.test', DirectionFlags.general), { ack: { status: Status.relayRequired, reason: /a general host needs a Relay Server, and none is configured/ } });
});
