// Every program's config through its real command line (protocol/config.ts): a valid file passes
// `--check`; a typo at each depth, a wrong type, a missing field, a file that is not there and
// text that is not JSON each end the program with status 2 within a second, naming the file and
// the field, before anything starts (no ready line; for the router no TUN device, no nftables
// table, no API socket). Relative paths are taken from the config's folder, not the working
// directory (the children run in /).

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import t from 'tap';

const DIST = resolve(import.meta.dirname, '..');
const dir = mkdtempSync(join(tmpdir(), 'ntm-config-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// Unique names, so that a leftover of another run cannot be mistaken for ours.
const tag = `${process.pid % 100000}`;
const TUN = `ntmcfg${tag}`;
const TABLE = `ntmcfg${tag}`;
const SOCKET = join(dir, 'ntm.sock');

for (const [file, mode] of [['ca.crt', 0o644], ['server.crt', 0o644], ['server.key', 0o600], ['open.key', 0o644]] as const) {
  writeFileSync(join(dir, file), 'not checked by --check beyond being readable\n', { mode });
}
const TLS = { ca: 'ca.crt', cert: 'server.crt', key: 'server.key' };

type Doc = Record<string, unknown>;
interface Program {
  name: string;
  file: string;
  /** The command line before `--config FILE`. */
  argv: string[];
  good: Doc;
  /** [what, the config (or raw text), the message it must give] */
  bad: [string, Doc | string, RegExp][];
}

const router: Doc = {
  name: 'r1.cfgtest.test',
  account: { email: 'r1@cfgtest.test', password: 'pw' },
  as: { url: 'https://127.0.0.1:1', ca: 'ca.crt' },
  privateKeyFile: 'node.key',
  tun: { name: TUN },
  nftTable: TABLE,
  socketPath: SOCKET,
  lan: { interfaces: [] },
  publish: [{ name: 'cam.r1.cfgtest.test', address: '192.168.1.5' }],
};
const sa = (spi: number, byte: string) => ({ spi, key: byte.repeat(32), salt: '01020304' });
const tunnel: Doc = {
  tun: { name: TUN, addresses: ['10.123.0.1/24'] },
  listen: { address: '127.0.0.1', port: 0 },
  peers: [{ name: 'b', vips: ['10.123.0.2'], outbound: sa(4097, 'aa'), inbound: sa(8193, 'bb') }],
};
const dc: Doc = { zone: 'cfgtest.test', nsName: 'dc.cfgtest.test', publicAddress: '127.0.0.1', listen: { address: '127.0.0.1', port: 0 }, tls: { port: 0, ...TLS }, dns: null, state: 'dc-state.json' };
const rs: Doc = { name: 'rs1.cfgtest.test', listen: { address: '127.0.0.1', port: 0 }, tls: { port: 0, ...TLS }, privateKeyFile: 'rs.key' };
const ns: Doc = { name: 'ns1.cfgtest.test', listen: { address: '127.0.0.1', port: 0 }, tls: { port: 0, ...TLS }, broker: { type: 'embedded', port: 0 } };
const as: Doc = { listen: { host: '127.0.0.1', port: 0 }, cert: 'server.crt', key: 'server.key', store: 'accounts.json', keyDistribution: { ...TLS } };

const NOT_JSON = '{\n  "name": "x",\n  oops\n}\n';
const with_ = (base: Doc, path: string, value: unknown): Doc => {
  const copy = structuredClone(base);
  const keys = path.split('.');
  let o = copy as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
  if (value === undefined) delete o[keys.at(-1)!];
  else o[keys.at(-1)!] = value;
  return copy;
};

const programs: Program[] = [
  {
    name: 'router',
    file: 'router.json',
    argv: ['router/cli.js', 'router'],
    good: router,
    bad: [
      ['a typo at the top', with_(router, 'lann', {}), /^ntmobile: \S*router\.json: lann: unknown field \(known: name, account, /m],
      ['a typo in lan', with_(router, 'lan', { interface: ['eth0'] }), /router\.json: lan\.interface: unknown field \(known: interfaces\)/],
      ['a typo in account', with_(router, 'account', { email: 'r1@cfgtest.test', password: 'pw', emial: 'x' }), /router\.json: account\.emial: unknown field \(known: email, password, passwordFile\)/],
      ['a typo in dns', with_(router, 'dns', { adress: '127.0.0.1' }), /router\.json: dns\.adress: unknown field/],
      ['a typo in a published host', with_(router, 'publish', [{ name: 'cam.r1.cfgtest.test', adress: '192.168.1.5' }]), /router\.json: publish\[0\]\.adress: unknown field/],
      ['a wrong type', with_(router, 'listen', { port: '4500' }), /router\.json: listen\.port: "4500" is not an integer in 0\.\.65535/],
      ['a missing field', with_(router, 'account.email', undefined), /router\.json: account\.email: required/],
      ['a missing name', with_(router, 'name', undefined), /router\.json: name: required \(a lower-case DNS name\)/],
      ['a file that is not there', with_(router, 'as.ca', 'missing-ca.crt'), new RegExp(`router\\.json: as\\.ca: cannot read ${dir}/missing-ca\\.crt \\(ENOENT\\)`)],
      ['not JSON', NOT_JSON, /router\.json: line 3, column 3: not valid JSON/],
    ],
  },
  {
    name: 'tunnel',
    file: 'tunnel.json',
    argv: ['router/cli.js', 'tunnel'],
    good: tunnel,
    bad: [
      ['a typo at the top', with_(tunnel, 'tunn', {}), /tunnel\.json: tunn: unknown field/],
      ['a typo in tun', with_(tunnel, 'tun.nmae', 'x'), /tunnel\.json: tun\.nmae: unknown field/],
      ['a typo in a peer SA', with_(tunnel, 'peers', [{ ...(tunnel.peers as Doc[])[0], inbound: { ...sa(8193, 'bb'), kye: 'x' } }]), /tunnel\.json: peers\[0\]\.inbound\.kye: unknown field/],
      ['a wrong type', with_(tunnel, 'listen.port', 'x'), /tunnel\.json: listen\.port: "x": want an integer/],
      ['a missing field', with_(tunnel, 'peers', undefined), /tunnel\.json: peers: want a list/],
      ['not JSON', NOT_JSON, /tunnel\.json: line 3, column 3: not valid JSON/],
    ],
  },
  {
    name: 'dc',
    file: 'dc.json',
    argv: ['servers/dc/cli.js', 'serve'],
    good: dc,
    bad: [
      ['a typo at the top', with_(dc, 'zonee', 'x'), /dc\.json: zonee: unknown field/],
      ['a typo in tls', with_(dc, 'tls.cetr', 'x'), /dc\.json: tls\.cetr: unknown field \(known: port, ca, cert, key\)/],
      ['a typo in pool', with_(dc, 'pool', { ip4: '10.1.0.0/16' }), /dc\.json: pool\.ip4: unknown field \(known: ipv4, ipv6\)/],
      ['a typo in a relay', with_(dc, 'relays', [{ name: 'rs1.relay.test', adress: '198.18.0.14' }]), /dc\.json: relays\[0\]\.adress: unknown field/],
      ['a wrong type', with_(dc, 'keepaliveSeconds', '20'), /dc\.json: keepaliveSeconds: "20" is not an integer/],
      ['a missing field', with_(dc, 'zone', undefined), /dc\.json: zone: required/],
      ['a file that is not there', with_(dc, 'tls.cert', 'nope.crt'), new RegExp(`dc\\.json: tls\\.cert: cannot read ${dir}/nope\\.crt`)],
      ['a readable key', with_(dc, 'tls.key', 'open.key'), /dc\.json: tls\.key: .*open\.key has mode 0644.*chmod 600/],
      ['not JSON', NOT_JSON, /dc\.json: line 3, column 3: not valid JSON/],
    ],
  },
  {
    name: 'rs',
    file: 'rs.json',
    argv: ['servers/rs/cli.js', 'serve'],
    good: rs,
    bad: [
      ['a typo at the top', with_(rs, 'nmae', 'x'), /rs\.json: nmae: unknown field/],
      ['a typo in quota', with_(rs, 'quota', { maxroutes: 1 }), /rs\.json: quota\.maxroutes: unknown field/],
      ['a typo in gateway', with_(rs, 'gateway', { tunn: 'x' }), /rs\.json: gateway\.tunn: unknown field/],
      ['a wrong type', with_(rs, 'idleSeconds', true), /rs\.json: idleSeconds: true is not an integer/],
      ['a missing field', with_(rs, 'name', undefined), /rs\.json: name: required/],
      ['a file that is not there', with_(rs, 'tls.ca', 'nope.crt'), new RegExp(`rs\\.json: tls\\.ca: cannot read ${dir}/nope\\.crt`)],
      ['not JSON', NOT_JSON, /rs\.json: line 3, column 3: not valid JSON/],
    ],
  },
  {
    name: 'ns',
    file: 'ns.json',
    argv: ['servers/ns/cli.js', 'serve'],
    good: ns,
    bad: [
      ['a typo at the top', with_(ns, 'stat', 'x'), /ns\.json: stat: unknown field/],
      ['a typo in broker', with_(ns, 'broker.prot', 1), /ns\.json: broker\.prot: unknown field/],
      ['a wrong type', with_(ns, 'maxKeys', 'many'), /ns\.json: maxKeys: "many" is not an integer/],
      ['a missing field', with_(ns, 'tls', undefined), /ns\.json: tls: required \(an object\)/],
      ['a file that is not there', with_(ns, 'tls.key', 'nope.key'), new RegExp(`ns\\.json: tls\\.key: cannot read ${dir}/nope\\.key`)],
      ['not JSON', NOT_JSON, /ns\.json: line 3, column 3: not valid JSON/],
    ],
  },
  {
    name: 'as',
    file: 'as.json',
    argv: ['servers/as/cli.js', 'serve'],
    good: as,
    bad: [
      ['a typo at the top', with_(as, 'stor', 'x'), /as\.json: stor: unknown field/],
      ['a typo in limits', with_(as, 'limits', { accountFailure: 5 }), /as\.json: limits\.accountFailure: unknown field \(known: accountFailures, /],
      ['a typo in keyDistribution', with_(as, 'keyDistribution.resolvr', 'x'), /as\.json: keyDistribution\.resolvr: unknown field/],
      ['a wrong type', with_(as, 'listen.port', '8443'), /as\.json: listen\.port: "8443" is not an integer/],
      ['a missing field', with_(as, 'store', undefined), /as\.json: store: required/],
      ['a file that is not there', with_(as, 'cert', 'nope.crt'), new RegExp(`as\\.json: cert: cannot read ${dir}/nope\\.crt`)],
      ['not JSON', NOT_JSON, /as\.json: line 3, column 3: not valid JSON/],
    ],
  },
];

/**
 * Runs the program under bash, whose `times` reports the CPU time the child used: "within a
 * second" is about what the program does, not how busy the test machine is.
 */
function run(p: Program, doc: Doc | string, extra: string[]) {
  const path = join(dir, p.file);
  writeFileSync(path, typeof doc === 'string' ? doc : JSON.stringify(doc, null, 2));
  const argv = [process.execPath, join(DIST, p.argv[0]!), ...p.argv.slice(1), '--config', path, ...extra];
  // tap puts its coverage hooks into every child's NODE_OPTIONS and NODE_V8_COVERAGE (also into
  // the ones of a child it did not start itself): unset here, they would be timed as ours.
  const script = 'unset NODE_OPTIONS NODE_V8_COVERAGE; "$@"; rc=$?; times >&2; exit $rc';
  const r = spawnSync('bash', ['-c', script, 'run', ...argv], { cwd: '/', encoding: 'utf8', timeout: 20_000 });
  // `times`: the shell's user and system time, then its children's ("0m0.210s 0m0.057s").
  const lines = r.stderr.trimEnd().split('\n');
  const seconds = (lines.at(-1) ?? '').split(' ').map((x) => { const m = /^(\d+)m([\d.]+)s$/.exec(x); return m ? Number(m[1]) * 60 + Number(m[2]) : NaN; });
  return { ...r, stderr: lines.slice(0, -2).join('\n'), cpuMs: Math.round((seconds[0]! + seconds[1]!) * 1000) };
}

const linkExists = (name: string): boolean => spawnSync('ip', ['link', 'show', name], { stdio: 'ignore' }).status === 0;
const tableExists = (name: string): boolean => spawnSync('nft', ['list', 'table', 'inet', name], { stdio: 'ignore' }).status === 0;

for (const p of programs) {
  t.test(`${p.name}: a valid config passes --check, nothing started`, async (t) => {
    const r = run(p, p.good, ['--check']);
    t.equal(r.status, 0, `exit 0 (stderr: ${r.stderr.trim()})`);
    t.match(r.stdout, /: valid\n$/);
  });
  t.test(`${p.name}: bad configs are refused with the file and the field`, async (t) => {
    for (const [what, doc, message] of p.bad) {
      const r = run(p, doc, []);
      t.equal(r.status, 2, `${what}: exit status 2`);
      t.ok(r.cpuMs < 1000, `${what}: refused within a second of CPU time (${r.cpuMs} ms)`);
      t.match(r.stderr, message, `${what}: ${message}`);
      t.notMatch(r.stdout, /ready/, `${what}: never ready`);
      if (p.name === 'router' || p.name === 'tunnel') {
        t.notOk(linkExists(TUN), `${what}: no TUN device`);
        t.notOk(tableExists(TABLE), `${what}: no nftables table`);
        t.notOk(existsSync(SOCKET), `${what}: no API socket`);
      }
    }
  });
}

t.test('a port in use is named by its config field', async (t) => {
  const { namePortInUse } = await import('../servers/serve.js');
  const ports = [
    { field: 'listen.port', port: 4500 },
    { field: 'tls.port', port: 4501 },
    { field: 'dns.port', port: 53 },
  ];
  t.match(namePortInUse(new Error('bind [::]:4500: EADDRINUSE'), ports).message, /^listen\.port: bind \[::\]:4500: EADDRINUSE: in use by another program/);
  t.match(namePortInUse(new Error('listen EADDRINUSE: address already in use :::4501'), ports).message, /^tls\.port: /);
  t.match(namePortInUse(new Error('bind EADDRINUSE 127.0.0.1:53'), ports).message, /^dns\.port: /);
  t.match(namePortInUse(new Error('listen EADDRINUSE: address already in use :::45011'), ports).message, /^a port: /, 'no field for another port');
  const other = new Error('EACCES');
  t.equal(namePortInUse(other, ports), other, 'other errors as they are');
});
