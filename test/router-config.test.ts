// The router's configuration file (router/config.ts): defaults, the general-host policy, and a
// clear error naming the setting for every kind of bad input.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError } from '../protocol/config.js';
import { parseRouterConfig } from '../router/config.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ntm-router-config-'));
writeFileSync(path.join(dir, 'pw'), 'secret\n', { mode: 0o600 });

const MIN = {
  name: 'ra.fleet1.test',
  account: { email: 'ra@fleet1.test', passwordFile: 'pw' },
  as: { url: 'https://198.18.0.10:8443', ca: 'ca.crt' },
};

function parse(extra: Record<string, unknown>): ReturnType<typeof parseRouterConfig> {
  return parseRouterConfig(JSON.stringify({ ...MIN, ...extra }), dir);
}

t.test('defaults', async (t) => {
  const c = parse({});
  t.equal(c.account.password, 'secret', 'password read from passwordFile, trimmed');
  t.equal(c.as.caFile, `${dir}/ca.crt`, 'relative paths are relative to the config file');
  t.strictSame(c.dns.domains, ['fleet1.test'], 'the DNS hook answers the router’s own zone by default');
  t.strictSame(c.general, { viaRelay: [] }, 'no general host goes through a relay unless configured');
  t.equal(c.rekeyAfterSeconds, 1800);
  t.equal(c.listen.port, 4500);
  t.equal(c.mapPool4, '10.255.255.0/24');
  t.equal(c.notify, null, 'MQTT mode is off unless configured: UDP keepalives');
});

t.test('notify (MQTT mode)', async (t) => {
  const c = parse({ notify: { mqtt: 'mqtts://ns1.notify.test:8883', ca: 'ns-ca.crt', keepaliveSeconds: 600 } });
  t.strictSame(c.notify, { mqtt: 'mqtts://ns1.notify.test:8883', caFile: `${dir}/ns-ca.crt`, keepaliveSeconds: 600 });
  const d = parse({ notify: {} });
  t.strictSame(d.notify, { mqtt: null, caFile: `${dir}/ca.crt`, keepaliveSeconds: 300 }, 'defaults: the broker the NS announces, the AS’s CA (the operator’s), 300 s');
  t.equal(parse({ notify: null }).notify, null, 'null: off');
  t.equal(parse({ notify: false }).notify, null, 'false: off');
  t.strictSame(parse({ notify: { mqtt: 'mqtts://[2001:db8::16]:8883' } }).notify?.mqtt, 'mqtts://[2001:db8::16]:8883', 'an IPv6 literal');
});

t.test('general.viaRelay', async (t) => {
  const c = parse({ general: { viaRelay: ['general.test', 'cloud.example.org'] } });
  t.strictSame(c.general.viaRelay, ['general.test', 'cloud.example.org']);
});

t.test('bad input: a ConfigError that names the setting', async (t) => {
  const cases: [Record<string, unknown> | string, RegExp][] = [
    ['{', /not valid JSON/],
    [{ general: { viaRelay: ['Not A Name'] } }, /general\.viaRelay\[0\]: "Not A Name" is not a lower-case DNS name/],
    [{ general: { viaRelay: 'general.test' } }, /general\.viaRelay: want a list of strings/],
    [{ general: { relay: ['x.test'] } }, /general\.relay: unknown field/],
    [{ general: [] }, /general: want an object/],
    [{ colour: 'blue' }, /colour: unknown field/],
    [{ rekeyAfterSeconds: 1 }, /rekeyAfterSeconds: 1 is not an integer in 2\.\.86400/],
    [{ suite: 'des' }, /suite: "des"/],
    [{ as: { url: 'http://x', ca: 'c' } }, /as\.url: "http:\/\/x" must be an https:\/\/ URL/],
    [{ dc: { 'fleet1.test': 'nowhere' } }, /dc\.fleet1\.test: want an IP address/],
    [{ tun: { name: 'a-very-long-tun-name' } }, /tun\.name: .* longer than 15/],
    [{ notify: { mqtt: 'mqtt://ns1.notify.test:1883' } }, /notify\.mqtt: "mqtt:\/\/ns1\.notify\.test:1883" must be an mqtts:\/\/ URL/],
    [{ notify: { mqtt: 'not a url' } }, /notify\.mqtt: "not a url" must be an mqtts:\/\/ URL/],
    [{ notify: { mqtt: 42 } }, /notify\.mqtt: 42: want a non-empty string/],
    [{ notify: { keepaliveSeconds: 5 } }, /notify\.keepaliveSeconds: 5 is not an integer in 10\.\.3600/],
    [{ notify: { keepaliveSeconds: 300.5 } }, /notify\.keepaliveSeconds: 300\.5 is not an integer/],
    [{ notify: { url: 'mqtts://x' } }, /notify\.url: unknown field \(known: mqtt, ca, keepaliveSeconds\)/],
    [{ notify: 'mqtts://x' }, /notify: want an object/],
  ];
  for (const [input, re] of cases) {
    const text = typeof input === 'string' ? input : JSON.stringify({ ...MIN, ...input });
    t.throws(() => parseRouterConfig(text, dir), ConfigError, `${JSON.stringify(input)} → ConfigError`);
    t.throws(() => parseRouterConfig(text, dir), re, `${JSON.stringify(input)} → ${re}`);
  }
});

t.test('uplinks: the devices NTMobile may use, most preferred first', async (t) => {
  const d = parse({});
  t.strictSame(d.uplinks, [], 'default: none listed, the kernel’s routing decides');
  t.equal(d.uplinkTable, 4500);
  const c = parse({ uplinks: ['wwan0', 'eth1', 'phy0-sta0'], uplinkTable: 200, lan: { interfaces: ['br-lan'] } });
  t.strictSame(c.uplinks, ['wwan0', 'eth1', 'phy0-sta0'], 'kept in the operator’s order');
  t.equal(c.uplinkTable, 200);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ uplinks: 'wwan0' }, /^uplinks: want a list of strings/],
    [{ uplinks: ['wwan0', 7] }, /^uplinks: want a list of strings/],
    [{ uplinks: [''] }, /^uplinks\[0\]: "" is not an interface name/],
    [{ uplinks: ['eth1', 'a-very-long-name0'] }, /^uplinks\[1\]: "a-very-long-name0" is not an interface name \(1 to 15 bytes/],
    [{ uplinks: ['wan:1'] }, /^uplinks\[0\]: "wan:1" is not an interface name/],
    [{ uplinks: ['wan 1'] }, /^uplinks\[0\]: "wan 1" is not an interface name/],
    [{ uplinks: ['..'] }, /^uplinks\[0\]: "\.\." is not an interface name/],
    [{ uplinks: ['eth1', 'eth1'] }, /^uplinks\[1\]: "eth1" is listed twice/],
    [{ uplinks: ['wwan0', 'br-lan'], lan: { interfaces: ['br-lan'] } }, /^uplinks\[1\]: "br-lan" is a LAN interface \(lan\.interfaces\), not an uplink/],
    [{ uplinks: ['ntm0'] }, /^uplinks\[0\]: "ntm0" is our TUN device \(tun\.name\), not an uplink/],
    [{ uplinkTable: 254 }, /^uplinkTable: 254 is one of the kernel's tables/],
    [{ uplinkTable: 32766 }, /^uplinkTable: 32766 is not an integer in 1\.\.32764/],
    [{ uplinkTable: 0 }, /^uplinkTable: 0 is not an integer/],
  ];
  for (const [input, re] of cases) t.throws(() => parse(input), re, `${JSON.stringify(input)} → ${re}`);
});
