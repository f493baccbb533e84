// The OpenWrt configuration path of the router daemon, as pure logic: `uci -X show` output parsed
// (quotes, lists), UCI options mapped onto the one config loader with errors that name the UCI
// option, logical interfaces resolved to devices, the DHCP leases behind published-by-MAC hosts,
// and what a reload can take in place. The real uci/procd path is test/openwrt-e2e.test.ts.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ConfigError } from '../protocol/config.js';
import { changedSettings } from '../router/config.js';
import { DhcpLeases } from '../router/leases.js';
import { loadUciConfig, parseUciShow, type UciAccess } from '../router/uci-config.js';

const MAIN = [
  'ntmobile.main=ntmobile',
  "ntmobile.main.enabled='1'",
  "ntmobile.main.name='ra.fleet1.test'",
  "ntmobile.main.email='ra@fleet1.test'",
  "ntmobile.main.password='it'\\''s secret'",
  "ntmobile.main.as_url='https://198.18.0.5:8443'",
  "ntmobile.main.as_ca='/etc/ntmobile/ca.pem'",
  "ntmobile.main.port='4501'",
  "ntmobile.main.lan='lan' 'guest'",
  "ntmobile.main.uplink='wwan'",
  "ntmobile.main.domain='fleet1.test' 'fleet2.test'",
];

/** uci and netifd as a map: config name → `uci -X show` text; interface → l3_device. */
function fakeUci(configs: Record<string, string[]>, netifd: Record<string, string> = {}): UciAccess {
  return {
    show: (c) => (configs[c] === undefined ? null : `${configs[c]!.join('\n')}\n`),
    interfaceDevice: (n) => netifd[n] ?? null,
  };
}

t.test('uci show output: sections, options, lists, quotes', async (t) => {
  const s = parseUciShow(`${MAIN.join('\n')}\nntmobile.cfg0a1b2c=publish\nntmobile.cfg0a1b2c.name='b2.ra.fleet1.test'\n`, 'ntmobile');
  t.equal(s.length, 2);
  t.equal(s[0]!.options.get('password'), "it's secret", "a quote written '\\'' comes back");
  t.same(s[0]!.options.get('lan'), ['lan', 'guest'], 'a list');
  t.equal(s[1]!.type, 'publish');
  t.throws(() => parseUciShow("ntmobile.main.name='x", 'ntmobile'), ConfigError, 'an unterminated quote is an error, not a guess');
  t.throws(() => parseUciShow("other.main.name='x'", 'ntmobile'), /unexpected key/);
});

t.test('UCI onto the loader: devices, lists, sections', async (t) => {
  const uci = fakeUci(
    {
      ntmobile: [...MAIN, 'ntmobile.cfg1=publish', "ntmobile.cfg1.name='cam.ra.fleet1.test'", "ntmobile.cfg1.mac='AA:BB:CC:00:11:22'", 'ntmobile.cfg2=dc', "ntmobile.cfg2.zone='fleet2.test'", "ntmobile.cfg2.address='198.18.0.11'"],
      'network.lan': ['network.lan=interface', "network.lan.device='br-lan'"],
      'network.guest': ['network.guest=interface', "network.guest.ifname='br-guest'"],
    },
    { wwan: 'wwan0' },
  );
  const { config } = loadUciConfig('ntmobile', uci);
  t.equal(config.listen.port, 4501, 'a number option becomes a number');
  t.same(config.lan.interfaces, ['br-lan', 'br-guest'], 'logical LAN interfaces → devices (UCI device, then the old ifname)');
  t.same(config.uplinks, ['wwan0'], 'an uplink → its device as netifd knows it');
  t.same(config.dns.domains, ['fleet1.test', 'fleet2.test']);
  t.equal(config.account.password, "it's secret");
  t.same(config.publish, [{ name: 'cam.ra.fleet1.test', address4: null, address6: null, mac: 'aa:bb:cc:00:11:22' }], 'a host published by MAC');
  t.same(config.dc, { 'fleet2.test': '198.18.0.11' });
  t.equal(config.dhcpLeases, '/tmp/dhcp.leases');
});

t.test('every error names the UCI option', async (t) => {
  const load = (extra: string[]): unknown => loadUciConfig('ntmobile', fakeUci({ ntmobile: [...MAIN, ...extra] }));
  t.throws(() => load(["ntmobile.main.port='70000'"]), /^ntmobile\.main\.port: 70000 is not an integer in 0\.\.65535/, 'a port out of range');
  t.throws(() => load(["ntmobile.main.suite='rot13'"]), /^ntmobile\.main\.suite: "rot13"/, 'an unknown suite');
  t.throws(() => load(["ntmobile.main.log_level='loud'"]), /^ntmobile\.main\.log_level: "loud"/, 'an unknown log level');
  t.throws(() => load(["ntmobile.main.prot='4500'"]), /^ntmobile\.main\.prot: unknown option \(known: .*port/, 'a typo of an option, with the known ones');
  t.throws(() => load(['ntmobile.cfg9=publish', "ntmobile.cfg9.name='cam.ra.fleet1.test'"]), /^ntmobile\.cfg9\.ip: required/, 'a published host without an address');
  t.throws(() => load(['ntmobile.cfg9=publish', "ntmobile.cfg9.name='cam.ra.fleet1.test'", "ntmobile.cfg9.mac='nope'"]), /^ntmobile\.cfg9\.mac: "nope" is not a MAC address/);
  t.throws(() => load(['ntmobile.cfg9=pubilsh']), /unknown section type "pubilsh"/, 'a typo of a section type');
  t.throws(() => load(["ntmobile.main.mqtt='maybe'"]), /^ntmobile\.main\.mqtt: "maybe" is not a boolean/);
  t.throws(() => loadUciConfig('ntmobile', fakeUci({})), /no such UCI config/);
});

t.test('DHCP leases: MAC → address, changes noticed, bad lines counted', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ntm-leases-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'dhcp.leases');
  const leases = new DhcpLeases(file, () => undefined);
  t.equal(leases.read(), false, 'no file: no leases, no change');
  writeFileSync(file, '1796650000 aa:bb:cc:00:11:22 192.168.1.20 cam 01:aa:bb:cc:00:11:22\ngarbage\n1796650000 aa:bb:cc:00:11:33 fd00::5 phone *\n');
  t.equal(leases.read(), true, 'a new lease is a change');
  t.equal(leases.addressOf('aa:bb:cc:00:11:22'), '192.168.1.20');
  t.equal(leases.addressOf('aa:bb:cc:00:11:33'), null, 'IPv6 leases are not IPv4 addresses');
  t.equal(leases.badLines, 1, 'a line that is no lease is counted');
  writeFileSync(file, '1796650000 aa:bb:cc:00:11:22 192.168.1.21 cam *\n');
  // the mtime resolution may hide a rewrite within the same tick: make it differ
  const { utimesSync } = await import('node:fs');
  utimesSync(file, new Date(), new Date(Date.now() + 5000));
  t.equal(leases.read(), true, 'a new address for the MAC is a change');
  t.equal(leases.addressOf('aa:bb:cc:00:11:22'), '192.168.1.21');
  t.equal(leases.read(), false, 'an unchanged file is not read again');
});

t.test('reload: which settings changed', async (t) => {
  const uci = fakeUci({ ntmobile: MAIN, 'network.lan': ['network.lan=interface', "network.lan.device='br-lan'"] });
  const a = loadUciConfig('ntmobile', uci).config;
  const b = loadUciConfig('ntmobile', fakeUci({ ntmobile: [...MAIN, 'ntmobile.cfg1=publish', "ntmobile.cfg1.name='cam.ra.fleet1.test'", "ntmobile.cfg1.ip='192.168.1.20'"], 'network.lan': ['network.lan=interface', "network.lan.device='br-lan'"] })).config;
  t.same(changedSettings(a, a), [], 'nothing');
  t.same(changedSettings(a, b), ['publish'], 'a published host');
  t.same(changedSettings(a, { ...a, suite: 'chacha20-poly1305' }), ['suite'], 'the suite (a restart)');
  t.same(changedSettings(a, { ...a, dns: { ...a.dns, domains: ['fleet1.test'] } }), ['dns.domains']);
});
