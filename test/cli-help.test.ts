// The command lines a newcomer starts from (issue 13): `--help` on every command and subcommand
// exits 0 and names every option and subcommand; `--version` prints package.json's version;
// `ntmobile ping` fails when no reply came back; `ntmobile status` as a user who is not root says
// the socket is root-only instead of asking whether the daemon runs.

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import t from 'tap';

const DIST = resolve(import.meta.dirname, '..');
const ROOT = resolve(DIST, '..');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const run = (cli: string, args: string[], options: { uid?: number; gid?: number } = {}) =>
  spawnSync(process.execPath, [join(DIST, cli), ...args], { encoding: 'utf8', timeout: 20_000, ...options });

/** Like run, but the event loop keeps running (the test's own API stand-in must answer). */
function runAsync(cli: string, args: string[], options: { uid?: number; gid?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [join(DIST, cli), ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (status) => done({ status, stdout, stderr }));
  });
}

const SERVER_WORDS = ['serve', '--config', '--status', '--verbose', '--check', '--help', '--version', 'Exit status'];
const programs: { cli: string; helps: string[][]; words: string[] }[] = [
  {
    cli: 'router/cli.js',
    helps: [['--help'], ['help'], ['router', '--help'], ['status', '--help'], ['peers', '--help'], ['ping', '--help'], ['tunnel', '--help']],
    words: ['router', 'status', 'peers', 'ping', 'tunnel', '--config', '--uci', '--check', '--ubus', '--verbose', '--socket', '--json', '-c N', '--stats', '--version', 'Exit status'],
  },
  { cli: 'servers/dc/cli.js', helps: [['--help'], ['serve', '--help']], words: SERVER_WORDS },
  { cli: 'servers/rs/cli.js', helps: [['--help'], ['serve', '--help']], words: SERVER_WORDS },
  { cli: 'servers/ns/cli.js', helps: [['--help'], ['serve', '--help']], words: SERVER_WORDS },
  {
    cli: 'servers/as/cli.js',
    helps: [['--help'], ['serve', '--help'], ['account', '--help'], ['account', 'add', '--help']],
    words: ['serve', 'account add', 'account bind', 'account unbind', 'account unlock', 'account key', 'account revoke', 'account list', '--store', '--email', '--password-file', '--name', '--public-key', '--json', '--check', '--verbose', '--version', 'Exit status'],
  },
];

for (const p of programs) {
  t.test(`${p.cli}: --help everywhere, --version`, async (t) => {
    for (const args of p.helps) {
      const r = run(p.cli, args);
      t.equal(r.status, 0, `${args.join(' ')}: exit 0 (${r.stderr.trim()})`);
      for (const w of p.words) t.ok(r.stdout.includes(w), `${args.join(' ')}: names ${w}`);
    }
    const v = run(p.cli, ['--version']);
    t.equal(v.status, 0, '--version: exit 0');
    t.match(v.stdout, new RegExp(`ntmobile-router ${VERSION.replace(/\./g, '\\.')}`), '--version: the package version');
  });
}

t.test('package.json has a bin entry for every command', async (t) => {
  const bin = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin;
  t.same(bin, { ntmobile: 'dist/router/cli.js', 'ntmobile-dc': 'dist/servers/dc/cli.js', 'ntmobile-as': 'dist/servers/as/cli.js', 'ntmobile-rs': 'dist/servers/rs/cli.js', 'ntmobile-ns': 'dist/servers/ns/cli.js' });
});

t.test('ntmobile ping: exit 1 without a reply; status: the socket is root-only', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ntm-cli-'));
  chmodSync(dir, 0o755);
  const socket = join(dir, 'api.sock');
  let received = 0;
  // A stand-in for the daemon's API: one line in, one line out.
  const server = createServer((c) => {
    c.once('data', () => c.end(`${JSON.stringify({ ok: true, result: { name: 'x.test', vip: '10.77.0.9', setupMs: 5, sent: 3, received, rttMs: [] } })}\n`));
  });
  await new Promise<void>((r) => server.listen(socket, r));
  chmodSync(socket, 0o600);
  t.teardown(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const none = await runAsync('router/cli.js', ['ping', 'x.test', '--socket', socket]);
  t.equal(none.status, 1, 'no reply: exit 1');
  t.match(none.stdout, /0\/3 replies/);
  received = 3;
  const some = await runAsync('router/cli.js', ['ping', 'x.test', '--socket', socket]);
  t.equal(some.status, 0, 'replies: exit 0');
  const user = await runAsync('router/cli.js', ['status', '--socket', socket], { uid: 65534, gid: 65534 });
  t.equal(user.status, 1, 'not root: exit 1');
  t.match(user.stderr, /EACCES.*the API socket is root-only: run this as root/, 'says why');
  t.notMatch(user.stderr, /is the router daemon running/);
});

t.test('ntmobile init: a starter config with every documented field, valid as it is', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ntm-init-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run('router/cli.js', ['init', '--name', 'r9.fleet1.test', '--email', 'r9@fleet1.test']);
  t.equal(r.status, 0, 'exit 0');
  const starter = JSON.parse(r.stdout) as Record<string, unknown>;
  t.equal(starter.name, 'r9.fleet1.test');
  // docs/router.md's Configuration table is the reference: the starter has each of its fields.
  const doc = readFileSync(join(ROOT, 'docs/router.md'), 'utf8');
  const section = doc.slice(doc.indexOf('\n## Configuration'), doc.indexOf('\n## ', doc.indexOf('\n## Configuration') + 1));
  const fields = [...new Set([...section.matchAll(/^\| `([A-Za-z0-9]+)/gm)].map((m) => m[1]!))];
  t.ok(fields.length > 15, `the table lists ${fields.length} fields`);
  for (const f of fields) t.ok(f in starter, `has ${f}`);
  writeFileSync(join(dir, 'router.json'), r.stdout);
  writeFileSync(join(dir, 'router.password'), 'a password\n', { mode: 0o600 });
  writeFileSync(join(dir, 'ca.crt'), 'the operator CA\n');
  const check = run('router/cli.js', ['router', '--config', join(dir, 'router.json'), '--check']);
  t.equal(check.status, 0, `router --check accepts it (${check.stderr.trim()})`);
});
