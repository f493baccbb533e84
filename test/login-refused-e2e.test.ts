// A wrong password at router start must not lock the account (issue 13): the AS refuses it
// (401), the daemon makes that one attempt, stays up in state `login-refused` with the reason and
// what to do in its status and its log, and makes no more; after the password is fixed and the
// daemon restarted, the AS takes the right one at once (no 429). There is no DC here: the
// accepted login ends in the AS's key distribution failing, which is what proves the credentials
// passed. The AS and the router run as the real commands in a namespace of their own.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import t from 'tap';
import { createPki } from '../lab/pki.js';
import { apiCall } from '../router/api.js';

const DIST = resolve(import.meta.dirname, '..');
const tag = `${process.pid % 100000}`;
const NS = `ntmlr${tag}`;
const dir = mkdtempSync(join(tmpdir(), 'ntm-login-refused-'));
const children: ChildProcess[] = [];
execFileSync('ip', ['netns', 'add', NS]);
execFileSync('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
t.teardown(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  execFileSync('ip', ['netns', 'del', NS]);
  rmSync(dir, { recursive: true, force: true });
});

/** A program in the namespace; its output kept, and awaitable line by line. */
function start(argv: string[]) {
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const out = { stdout: '', stderr: '' };
  const waiters: (() => void)[] = [];
  for (const s of ['stdout', 'stderr'] as const) {
    child[s].on('data', (d: Buffer) => {
      out[s] += d.toString();
      for (const w of waiters) w();
    });
  }
  const waitFor = (s: 'stdout' | 'stderr', re: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> =>
    new Promise((resolveWait, reject) => {
      const check = (): void => {
        const m = re.exec(out[s]);
        if (m) {
          clearTimeout(timer);
          resolveWait(m);
        }
      };
      const timer = setTimeout(() => reject(new Error(`no ${re} on ${s} within ${timeoutMs} ms; ${s}: ${out[s]}`)), timeoutMs);
      waiters.push(check);
      child.on('exit', (code) => reject(new Error(`exited (${code}) before ${re}; stderr: ${out.stderr}`)));
      check();
    });
  const stop = (): Promise<void> => new Promise((r) => (child.exitCode !== null ? r() : (child.once('exit', () => r()), child.kill('SIGTERM'))));
  return { child, out, waitFor, stop };
}

const EMAIL = `r1-${tag}@lr.test`;
const NAME = 'r1.lr.test';
const pki = createPki(join(dir, 'pki'));
const asCert = pki.issue('as', { role: 'as', ips: ['127.0.0.1'], dns: ['as.test'] });
const store = join(dir, 'accounts.json');
const asCli = join(DIST, 'servers/as/cli.js');
writeFileSync(join(dir, 'right.password'), 'the right one\n', { mode: 0o600 });
execFileSync(process.execPath, [asCli, 'account', 'add', '--store', store, '--email', EMAIL, '--password-file', join(dir, 'right.password')]);
execFileSync(process.execPath, [asCli, 'account', 'bind', '--store', store, '--email', EMAIL, '--name', NAME]);
writeFileSync(
  join(dir, 'as.json'),
  JSON.stringify({
    listen: { host: '127.0.0.1', port: 8443 },
    cert: asCert.certFile,
    key: asCert.keyFile,
    store,
    keyDistribution: { ca: pki.caFile, cert: asCert.certFile, key: asCert.keyFile, dc: { 'lr.test': '127.0.0.1:4501' } },
  }),
);

const socket = join(dir, 'ntmobile.sock');
const routerConfig = (password: string): string => {
  const path = join(dir, 'router.json');
  writeFileSync(
    path,
    JSON.stringify({
      name: NAME,
      account: { email: EMAIL, password },
      as: { url: 'https://127.0.0.1:8443', ca: pki.caFile },
      privateKeyFile: join(dir, 'node.key'),
      tun: { name: `ntmlr${tag}` },
      nftTable: `ntmlr${tag}`,
      socketPath: socket,
      lan: { interfaces: [] },
      dns: { address: '127.0.0.1', port: 0 },
      dc: { 'lr.test': '127.0.0.1' },
    }),
  );
  chmodSync(path, 0o600);
  return path;
};

t.test('a wrong password: one attempt, a clear status and log, and the account stays usable', async (t) => {
  const as = start([asCli, 'serve', '--config', join(dir, 'as.json'), '--verbose']);
  await as.waitFor('stdout', /^ready port 8443$/m);

  const wrong = start([join(DIST, 'router/cli.js'), 'router', '--config', routerConfig('the wrong one')]);
  const line = await wrong.waitFor('stdout', /^login-refused: (.*)$/m);
  t.match(line[1], /401.*not retrying.*fix account\.email or the password/, 'the ready line says why and what to do');
  t.match(wrong.out.stderr, /login: .*401.*not retrying/, 'an error log line says so too');
  const status = (await apiCall(socket, 'status')) as { state: string; error: string; counters: { daemon: { loginFailures: number } } };
  t.equal(status.state, 'login-refused', 'status: login-refused');
  t.match(status.error, /refused .* with this password/, 'status: the reason');
  t.equal(status.counters.daemon.loginFailures, 1, 'one login attempt');
  t.equal(wrong.child.exitCode, null, 'the daemon stays up (a service manager would restart it into the lockout)');
  t.equal([...as.out.stderr.matchAll(/"event":"login-failed"/g)].length, 1, 'the AS saw one failed login');
  await wrong.stop();

  // The operator fixes the file and restarts: the AS takes the password at once.
  const right = start([join(DIST, 'router/cli.js'), 'router', '--config', routerConfig('the right one')]);
  await as.waitFor('stderr', new RegExp(`"event":"key-distribution-failed","fqdn":"${NAME.replace(/\./g, '\\.')}"`));
  t.notMatch(as.out.stderr, /login-rate-limited/, 'never rate limited');
  t.notMatch(right.out.stderr, /429|login-refused/, 'the router was neither locked out nor refused');
  await right.stop();
  await as.stop();
});

t.test('a port in use is named by its config field', async (t) => {
  const holder = start(['-e', "require('node:dgram').createSocket('udp6').bind(4500, () => console.log('bound'))"]);
  await holder.waitFor('stdout', /^bound$/m);
  const r = start([join(DIST, 'router/cli.js'), 'router', '--config', routerConfig('the right one')]);
  const code = await new Promise<number | null>((done) => r.child.on('exit', (c) => done(c)));
  t.equal(code, 1, 'exit 1');
  t.match(r.out.stderr, /listen\.port: UDP :: port 4500 is in use by another program .*choose another listen\.port/, 'names listen.port');
  await holder.stop();
});
