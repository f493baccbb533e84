// The DC's pure logic: Route Direction for every case of ARCHITECTURE §3 (servers/dc/route.ts)
// and the persistent registry of keys, VIPs and registrations (servers/dc/registry.ts).
import t, { type Test } from 'tap';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isIPv4, isIPv6 } from 'node:net';
import { behindNat, decideRoute, type EndView } from '../servers/dc/route.js';
import { Registry, RegistryError, type NodeKey, type PoolConfig, type Registration } from '../servers/dc/registry.js';
import { ipv4ToNumber, ipv6ToBytes, isPrivateOrReserved, parsePrefix, prefixContains, reservedRange, sameAddress } from '../protocol/ip.js';

// ---- addresses a general host cannot have (protocol/ip.ts) -------------------------------------

t.test('isPrivateOrReserved: IPv4 ranges and their edges', async (t) => {
  const reserved = [
    '0.0.0.0', '0.255.255.255', '10.0.0.0', '10.255.255.255', '100.64.0.0', '100.127.255.255', '127.0.0.1', '127.255.255.255',
    '169.254.0.0', '169.254.169.254', '169.254.255.255', '172.16.0.0', '172.31.255.255', '192.168.0.0', '192.168.255.255',
    '224.0.0.0', '239.255.255.255', '240.0.0.0', '255.255.255.254', '255.255.255.255',
  ];
  const publicAddrs = [
    '1.0.0.0', '9.255.255.255', '11.0.0.0', '100.63.255.255', '100.128.0.0', '126.255.255.255', '128.0.0.0', '169.253.255.255',
    '169.255.0.0', '172.15.255.255', '172.32.0.0', '192.167.255.255', '192.169.0.0', '223.255.255.255',
    // The testbed's Internet (RFC 2544 benchmarking) and the documentation ranges are not refused.
    '198.18.0.0', '198.18.0.30', '198.19.255.255', '192.0.2.80', '203.0.113.1', '8.8.8.8',
  ];
  for (const a of reserved) t.ok(isPrivateOrReserved(a), `${a} is private or reserved`);
  for (const a of publicAddrs) t.notOk(isPrivateOrReserved(a), `${a} may be a host on the Internet`);
  t.same(reservedRange('172.20.1.1'), { range: '172.16.0.0/12', what: 'private (RFC 1918)', private: true });
  t.same(reservedRange('100.100.1.1'), { range: '100.64.0.0/10', what: 'shared address space (carrier-grade NAT, RFC 6598)', private: true });
  t.match(reservedRange('255.255.255.255'), { range: '240.0.0.0/4', private: false });
  t.match(reservedRange('127.0.0.53'), { what: 'loopback', private: false });
});

t.test('isPrivateOrReserved: IPv6 ranges, IPv4-mapped and NAT64 judged by their IPv4 address', async (t) => {
  const reserved = [
    '::', '::1', '0:0:0:0:0:0:0:1', 'fc00::', 'fd4e:544d:1::2', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'fe80::1', 'fe80::1%1',
    'febf:ffff::1', 'ff02::1', 'ff00::', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
    '::ffff:127.0.0.1', '::ffff:10.1.2.3', '::ffff:a9fe:a9fe', '::ffff:0.0.0.0', '64:ff9b::10.0.0.1', '64:ff9b::a9fe:a9fe', '64:ff9b::127.0.0.1',
    'not an address', '',
  ];
  const publicAddrs = [
    '::2', 'fbff:ffff::1', 'fe00::1', 'fec0::1', 'feff::1', '2001:db8::80', '2a00:1450::1', '2001:db8:0:1::10',
    '::ffff:192.0.2.80', '::ffff:198.18.0.30', '::ffff:172.32.0.0', '64:ff9b::192.0.2.1', '64:ff9b::8.8.8.8',
    // Only the well-known NAT64 prefix is judged by what it carries.
    '64:ff9c::10.0.0.1', '64:ff9b:1::10.0.0.1',
  ];
  for (const a of reserved) t.ok(isPrivateOrReserved(a), `${JSON.stringify(a)} is private or reserved`);
  for (const a of publicAddrs) t.notOk(isPrivateOrReserved(a), `${a} may be a host on the Internet`);
  t.same(reservedRange('fd00::1'), { range: 'fc00::/7', what: 'unique local (ULA)', private: true });
  t.same(reservedRange('::ffff:192.168.1.1'), { range: '::ffff:192.168.0.0/16', what: 'IPv4-mapped private (RFC 1918)', private: true });
  t.same(reservedRange('64:ff9b::169.254.169.254'), { range: '64:ff9b::169.254.0.0/16', what: 'NAT64 of link-local', private: false });
  t.match(reservedRange('::'), { what: 'unspecified', private: false });
});

t.test('prefixes and address comparison', async (t) => {
  const p4 = parsePrefix('10.77.0.0/16')!;
  t.ok(prefixContains(p4, '10.77.255.255'));
  t.notOk(prefixContains(p4, '10.78.0.0'));
  t.notOk(prefixContains(p4, '::ffff:10.77.0.1'), 'an IPv6 address is not in an IPv4 prefix');
  const p6 = parsePrefix('fd4e:544d:1::/64')!;
  t.ok(prefixContains(p6, 'fd4e:544d:1::5'));
  t.notOk(prefixContains(p6, 'fd4e:544d:2::5'));
  const odd = parsePrefix('172.16.0.0/12')!;
  t.ok(prefixContains(odd, '172.31.0.1'));
  t.notOk(prefixContains(odd, '172.32.0.1'));
  t.ok(prefixContains(parsePrefix('0.0.0.0/0')!, '8.8.8.8'));
  for (const bad of ['10.0.0.0', '10.0.0.0/33', 'x/8', '::/129', '10.0.0.0/-1', '10.0.0.0/1e1']) t.equal(parsePrefix(bad), null, bad);
  t.ok(sameAddress('2001:db8::1', '2001:0db8:0:0:0:0:0:1'));
  t.ok(sameAddress('192.0.2.1', '::ffff:192.0.2.1'));
  t.notOk(sameAddress('192.0.2.1', '192.0.2.2'));
  t.notOk(sameAddress('x', 'x'));
});

// ---- route ------------------------------------------------------------------------------------

const ep = (address: string, port: number) => ({ address, port });
/** A node with a public address: it reports what the DC sees. */
const pub = (address: string, port = 4500): EndView => ({ observed: ep(address, port), local: ep(address, port) });
/** A node behind a NAT: the DC sees the NAT's address, the node reports its private one. */
const natted = (nat: string, natPort: number, local: string, localPort = 4500): EndView => ({ observed: ep(nat, natPort), local: ep(local, localPort) });

t.test('behindNat', async (t) => {
  t.equal(behindNat(pub('198.51.100.10')), false, 'reported = observed');
  t.equal(behindNat(natted('198.51.100.10', 61000, '192.168.1.10')), true, 'other address');
  t.equal(behindNat({ observed: ep('198.51.100.10', 61000), local: ep('198.51.100.10', 4500) }), true, 'same address, port translated');
  t.equal(behindNat({ observed: ep('198.51.100.10', 4500), local: null }), true, 'nothing reported: assume NAT');
  t.equal(behindNat(pub('2001:db8::1')), false, 'IPv6 public');
});

t.test('decideRoute: no NAT → MN initiates to CN’s address', async (t) => {
  const mn = pub('198.51.100.10');
  const cn = pub('203.0.113.20', 4501);
  t.strictSame(decideRoute(mn, cn), { kind: 'direct', case: 'no-nat', initiator: 'mn', mnPeer: ep('203.0.113.20', 4501), cnPeer: ep('198.51.100.10', 4500) });
  t.strictSame(decideRoute(pub('2001:db8::10'), pub('2001:db8:1::20')), {
    kind: 'direct', case: 'no-nat', initiator: 'mn', mnPeer: ep('2001:db8:1::20', 4500), cnPeer: ep('2001:db8::10', 4500),
  }, 'IPv6 on both ends');
});

t.test('decideRoute: MN behind NAT → MN initiates (its NAT opens the mapping)', async (t) => {
  const mn = natted('198.51.100.10', 61000, '192.168.1.10');
  const cn = pub('203.0.113.20');
  t.strictSame(decideRoute(mn, cn), { kind: 'direct', case: 'mn-behind-nat', initiator: 'mn', mnPeer: ep('203.0.113.20', 4500), cnPeer: ep('198.51.100.10', 61000) }, 'CN expects MN from its NAT address');
});

t.test('decideRoute: CN behind NAT → CN initiates', async (t) => {
  const mn = pub('198.51.100.10');
  const cn = natted('203.0.113.20', 62000, '10.0.0.5');
  t.strictSame(decideRoute(mn, cn), { kind: 'direct', case: 'cn-behind-nat', initiator: 'cn', mnPeer: ep('203.0.113.20', 62000), cnPeer: ep('198.51.100.10', 4500) });
});

t.test('decideRoute: both behind the same NAT → private addresses', async (t) => {
  const mn = natted('198.51.100.10', 61000, '192.168.1.10', 4500);
  const cn = natted('198.51.100.10', 61001, '192.168.1.11', 4501);
  t.strictSame(decideRoute(mn, cn), { kind: 'direct', case: 'same-nat', initiator: 'mn', mnPeer: ep('192.168.1.11', 4501), cnPeer: ep('192.168.1.10', 4500) });
  const d = decideRoute({ ...mn, local: null }, cn);
  t.equal(d.kind, 'relay', 'same NAT, but MN reported no private address: relay');
  t.equal(decideRoute(mn, { ...cn, local: null }).kind, 'relay', 'same NAT, CN reported nothing: relay');
});

t.test('decideRoute: different NATs → relay', async (t) => {
  const d = decideRoute(natted('198.51.100.10', 61000, '192.168.1.10'), natted('203.0.113.20', 62000, '192.168.1.10'));
  t.equal(d.kind, 'relay');
  if (d.kind === 'relay') t.match(d.reason, /different NATs/);
  t.equal(decideRoute(natted('2001:db8::1', 1000, 'fd00::1'), natted('2001:db8:1::1', 1000, 'fd00::2')).kind, 'relay', 'IPv6 behind NPT on both ends');
});

t.test('decideRoute: IPv4 ↔ IPv6 → relay, whatever the NATs', async (t) => {
  const v4 = pub('198.51.100.10');
  const v6 = pub('2001:db8::20');
  for (const [mn, cn, re] of [[v4, v6, /IPv4 ↔ IPv6/], [v6, v4, /IPv6 ↔ IPv4/]] as const) {
    const d = decideRoute(mn, cn);
    t.equal(d.kind, 'relay');
    if (d.kind === 'relay') t.match(d.reason, re);
  }
  t.equal(decideRoute(natted('198.51.100.10', 61000, '192.168.1.10'), v6).kind, 'relay', 'IPv4 behind NAT ↔ IPv6 public');
});

t.test('decideRoute: a node that reports no local address counts as behind a NAT', async (t) => {
  const silent = (a: string, port = 4500): EndView => ({ observed: ep(a, port), local: null });
  const m = decideRoute(silent('198.51.100.10'), pub('203.0.113.20'));
  t.match(m, { kind: 'direct', case: 'mn-behind-nat', initiator: 'mn' });
  const c = decideRoute(pub('198.51.100.10'), silent('203.0.113.20'));
  t.match(c, { kind: 'direct', case: 'cn-behind-nat', initiator: 'cn' });
  t.equal(decideRoute(silent('198.51.100.10'), silent('203.0.113.20')).kind, 'relay', 'both silent: relay');
});

// ---- registry ---------------------------------------------------------------------------------

const POOL: PoolConfig = { ipv4: '10.77.0.0/16', ipv6: 'fd4e:544d:1::/64' };
const T0 = 1_700_000_000_000;

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'ntm-registry-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function nodeKey(keyId: number, fqdn: string, expiresAt = T0 + 86_400_000): NodeKey {
  return { keyId, key: Buffer.alloc(32, keyId & 0xff), expiresAt, fqdn, names: [`lan.${fqdn}`], publicKey: Buffer.alloc(32, 0x50 + (keyId & 0xf)) };
}

function registration(name: string, keyId: number, lastSeen: number, observedPort = 61000): Registration {
  return { name, keyId, observed: ep('198.51.100.10', observedPort), local: ep('192.168.1.10', 4500), publicKey: Buffer.alloc(32, 0x33), lastSeen };
}


t.test('VIPs: stable per name, distinct across names, inside the pools', async (t) => {
  const path = join(tempDir(t), 'dc.json');
  const r = Registry.open(path, POOL, () => T0);
  const first = r.vips('router-1.fleet.example');
  t.strictSame(r.vips('router-1.fleet.example'), first, 'same name, same VIPs');
  const names = Array.from({ length: 200 }, (_, i) => `n${i}.fleet.example`);
  const all = [first, ...names.map((n) => r.vips(n))];
  t.equal(new Set(all.map((v) => v.vip4)).size, all.length, 'IPv4 VIPs distinct');
  t.equal(new Set(all.map((v) => v.vip6)).size, all.length, 'IPv6 VIPs distinct');
  const prefix = ipv6ToBytes('fd4e:544d:1::').subarray(0, 8);
  const net4 = ipv4ToNumber('10.77.0.0');
  for (const v of all) {
    if (!isIPv4(v.vip4) || !isIPv6(v.vip6)) {
      t.fail(`not addresses: ${JSON.stringify(v)}`);
      continue;
    }
    const n = ipv4ToNumber(v.vip4);
    if (n <= net4 || n >= net4 + 65535) t.fail(`${v.vip4} outside 10.77.0.0/16 or the network / broadcast address`);
    if (!ipv6ToBytes(v.vip6).subarray(0, 8).equals(prefix)) t.fail(`${v.vip6} outside fd4e:544d:1::/64`);
  }
  t.ok(ipv6ToBytes(first.vip6).subarray(0, 8).equals(prefix), `${first.vip6} is inside fd4e:544d:1::/64`);
  t.notOk(ipv6ToBytes(first.vip6).subarray(8).equals(Buffer.alloc(8)), 'not the subnet-router anycast address');
  t.strictSame(r.vips(names[100]!), all[101], 'asking again later gives the same VIPs');
});

t.test('VIPs: IPv6 VIP inside a shorter ULA prefix; small IPv4 pool runs out cleanly', async (t) => {
  const dir = tempDir(t);
  const r = Registry.open(join(dir, 'a.json'), { ipv4: '10.99.0.0/30', ipv6: 'fd00:aaaa:bbbb::/48' }, () => T0);
  const a = r.vips('a.example');
  const b = r.vips('b.example');
  t.strictSame([a.vip4, b.vip4], ['10.99.0.1', '10.99.0.2'], '/30: the two host addresses');
  t.ok(ipv6ToBytes(a.vip6).subarray(0, 6).equals(ipv6ToBytes('fd00:aaaa:bbbb::').subarray(0, 6)), `${a.vip6} inside the /48`);
  t.throws(() => r.vips('c.example'), RegistryError, 'a third name exhausts the /30');
  t.strictSame(r.vips('a.example'), a, 'existing names keep their VIPs after exhaustion');
  t.throws(() => Registry.open(join(dir, 'b.json'), { ...POOL, ipv4: '10.99.0.0/31' }, () => T0), /too small/);
});

t.test('a state file that cannot be written: counted, the registry goes on from memory', async (t) => {
  const dir = tempDir(t);
  const blocker = join(dir, 'not-a-dir');
  writeFileSync(blocker, 'x');
  const r = Registry.open(join(blocker, 'dc.json'), POOL, () => T0);
  r.putKey(nodeKey(12, 'router-2.fleet.example'));
  const reg = registration('router-2.fleet.example', 12, T0);
  t.strictSame(r.register(reg), { changed: true }, 'the registration is taken');
  t.ok(r.stateWriteFailed >= 2, `each failed write counted (${r.stateWriteFailed})`);
  t.match(r.lastStateError ?? '', /ENOTDIR|EEXIST|not a directory/i, `the last error is kept for the status (${r.lastStateError})`);
  t.strictSame(r.registration('router-2.fleet.example'), reg, 'and held in memory');
});

t.test('state survives reopen: keys, VIPs, registrations; file mode 0600', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'sub', 'dc.json');
  const r = Registry.open(path, POOL, () => T0);
  t.notOk(existsSync(path), 'nothing written before a change');
  const k = nodeKey(11, 'router-1.fleet.example');
  r.putKey(k);
  const v1 = r.vips('router-1.fleet.example');
  const v2 = r.vips('a1.lan.router-1.fleet.example');
  const reg = registration('router-1.fleet.example', 11, T0);
  t.strictSame(r.register(reg), { changed: true }, 'first registration is a change');
  t.strictSame(r.register({ ...reg, lastSeen: T0 + 1000 }), { changed: false }, 'a keepalive-like refresh is not');
  t.strictSame(r.register({ ...reg, observed: ep('198.51.100.10', 61001) }), { changed: true }, 'a new NAT port is');
  t.equal(statSync(path).mode & 0o777, 0o600, 'state file is 0600');
  t.notOk(existsSync(`${path}.tmp`), 'no temporary file left behind');
  t.notOk(readFileSync(path, 'utf8').includes('lastSeen'), 'keepalive times are not persisted');

  const again = Registry.open(path, POOL, () => T0 + 5000);
  t.strictSame(again.key(11), k, 'key restored (bytes, expiry, fqdn, names, public key)');
  t.strictSame(again.vips('router-1.fleet.example'), v1, 'VIP of the node restored');
  t.strictSame(again.vips('a1.lan.router-1.fleet.example'), v2, 'VIP of a LAN name restored');
  const back = again.registration('router-1.fleet.example');
  t.strictSame(back, { ...reg, observed: ep('198.51.100.10', 61001), lastSeen: T0 + 5000 }, 'registration restored; a restart counts as fresh contact');
  const v3 = again.vips('new.fleet.example');
  t.not(v3.vip4, v1.vip4, 'a new name after reopen does not reuse a VIP');
  t.not(v3.vip4, v2.vip4);
  t.not(v3.vip6, v1.vip6);

  t.ok(again.remove('router-1.fleet.example'), 'remove');
  t.notOk(again.remove('router-1.fleet.example'), 'remove twice');
  const third = Registry.open(path, POOL, () => T0);
  t.equal(third.registration('router-1.fleet.example'), undefined, 'removal persisted');
  t.strictSame(third.vips('router-1.fleet.example'), v1, 'the VIP stays with the name after deregistration');
});

t.test('refuses a state file readable by others, and a broken one', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'dc.json');
  Registry.open(path, POOL, () => T0).putKey(nodeKey(1, 'a.example'));
  chmodSync(path, 0o644);
  t.throws(() => Registry.open(path, POOL, () => T0), { name: 'RegistryError', message: /mode 644/ }, '0644');
  chmodSync(path, 0o640);
  t.throws(() => Registry.open(path, POOL, () => T0), RegistryError, '0640');
  chmodSync(path, 0o600);
  t.doesNotThrow(() => Registry.open(path, POOL, () => T0), '0600 is fine');
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{"version":1,', { mode: 0o600 });
  t.throws(() => Registry.open(broken, POOL, () => T0), { name: 'RegistryError', message: /not valid JSON/ });
  const v2 = join(dir, 'v2.json');
  writeFileSync(v2, JSON.stringify({ version: 2 }), { mode: 0o600 });
  t.throws(() => Registry.open(v2, POOL, () => T0), { name: 'RegistryError', message: /state version 2/ });
});

t.test('refuses pools inside 100.64.0.0/10 and IPv6 prefixes that are not ULA', async (t) => {
  const path = join(tempDir(t), 'dc.json');
  const refused4 = ['100.64.0.0/10', '100.64.0.0/16', '100.100.0.0/24', '100.127.255.0/24', '100.0.0.0/8', '96.0.0.0/4'];
  for (const ipv4 of refused4) t.throws(() => Registry.open(path, { ...POOL, ipv4 }, () => T0), { name: 'RegistryError', message: /100\.64\.0\.0\/10/ }, ipv4);
  for (const ipv4 of ['100.63.255.0/24', '100.128.0.0/16', '10.0.0.0/8', '172.16.0.0/12']) {
    t.doesNotThrow(() => Registry.open(path, { ...POOL, ipv4 }, () => T0), `${ipv4} is fine`);
  }
  for (const ipv6 of ['2001:db8::/64', 'fe80::/64', 'fe00::/64', '::/64']) {
    t.throws(() => Registry.open(path, { ...POOL, ipv6 }, () => T0), { name: 'RegistryError', message: /not a ULA prefix/ }, ipv6);
  }
  t.throws(() => Registry.open(path, { ...POOL, ipv6: 'fd00::/96' }, () => T0), { name: 'RegistryError', message: /want \/64 or shorter/ });
  for (const ipv6 of ['fc00::/7', 'fd00::/8', 'fc12:3456::/32']) t.doesNotThrow(() => Registry.open(path, { ...POOL, ipv6 }, () => T0), `${ipv6} is fine`);
  for (const bad of [{ ...POOL, ipv4: '10.77.0.0' }, { ...POOL, ipv4: '10.77.0.0/33' }, { ...POOL, ipv4: 'fd00::/64' }, { ...POOL, ipv6: '10.0.0.0/8' }]) {
    t.throws(() => Registry.open(path, bad, () => T0), RegistryError, `malformed pool ${JSON.stringify(bad)}`);
  }
  t.notOk(existsSync(path), 'no state written for a refused configuration');
});

t.test('expiry of stale registrations and of registrations whose key expired', async (t) => {
  const path = join(tempDir(t), 'dc.json');
  const clock = { t: T0 };
  const r = Registry.open(path, POOL, () => clock.t);
  r.putKey(nodeKey(1, 'a.example'));
  r.putKey(nodeKey(2, 'b.example', T0 + 100_000));
  r.register(registration('a.example', 1, T0));
  r.register(registration('b.example', 2, T0 + 50_000, 61002));
  r.register(registration('lan.a.example', 1, T0 + 50_000, 61003));

  clock.t = T0 + 60_000;
  t.strictSame(r.expire(60_000), [], 'exactly maxAge old: kept');
  clock.t = T0 + 60_001;
  t.strictSame(r.expire(60_000), ['a.example'], 'a.example not heard from for more than 60 s');
  t.equal(r.registration('a.example'), undefined);
  t.ok(r.registration('b.example'), 'b.example kept');
  t.strictSame(r.byKey(1).map((g) => g.name), ['lan.a.example'], 'the other name under the same key stays');

  r.register({ ...r.registration('b.example')!, lastSeen: clock.t });
  t.ok(r.key(2), 'key 2 still valid');
  clock.t = T0 + 100_000;
  t.equal(r.key(2), undefined, 'key 2 expired at its expiresAt');
  t.strictSame(r.expire(60_000), ['b.example'], 'b.example dropped: its key expired though it was just seen');
  t.strictSame(r.all().map((g) => g.name), ['lan.a.example']);

  const reopened = Registry.open(path, POOL, () => clock.t);
  t.strictSame(reopened.all().map((g) => g.name), ['lan.a.example'], 'expiry persisted');
});

t.test('putKey replaces the older key of the same fqdn only', async (t) => {
  const path = join(tempDir(t), 'dc.json');
  const r = Registry.open(path, POOL, () => T0);
  r.putKey(nodeKey(1, 'router-1.fleet.example'));
  r.putKey(nodeKey(3, 'router-2.fleet.example'));
  t.ok(r.key(1));
  const renewed = { ...nodeKey(2, 'router-1.fleet.example'), key: Buffer.alloc(32, 0xaa) };
  r.putKey(renewed);
  t.equal(r.key(1), undefined, 'the old key of router-1 is gone');
  t.strictSame(r.key(2), renewed, 'the new one is there');
  t.ok(r.key(3), "router-2's key is untouched");
  const same = { ...renewed, key: Buffer.alloc(32, 0xbb) };
  r.putKey(same);
  t.strictSame(r.key(2), same, 'the same key id again: replaced in place');
  const reopened = Registry.open(path, POOL, () => T0);
  t.equal(reopened.key(1), undefined, 'replacement persisted');
  t.strictSame(reopened.key(2), same);
  t.ok(reopened.key(3));
});
