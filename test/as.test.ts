// The Account Server and its client over real TLS on 127.0.0.1, with certificates from lab/pki.ts:
// the account store (file mode, atomic rewrite, scrypt), login and its failures, rate limits, the
// router's client (strict answer, CA pinning) and the admin CLI.

import t, { type Test } from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, request } from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { connect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { createPki, type Pki } from '../lab/pki.js';
import { login, LoginError } from '../router/login.js';
import { AsServer, type AsServerOptions, type KeyDistributionRecord } from '../servers/as/server.js';
import { AccountStore, StoreError } from '../servers/as/store.js';
import { peerIdentity } from '../servers/identity.js';

const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '..', 'servers', 'as', 'cli.js');
/** Cheap hashes for the tests; the default (2^15) is checked once below. */
const scryptN = 2 ** 10;
const password = 'correct horse battery';

const tmp = mkdtempSync(join(tmpdir(), 'ntm-as-test-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const pki: Pki = createPki(join(tmp, 'pki'));
const asCert = pki.issue('as', { dns: ['as.test'], ips: ['127.0.0.1'], role: 'as' });
let storeCount = 0;
const newStorePath = () => join(tmp, `accounts-${++storeCount}.json`);

async function newStore(): Promise<AccountStore> {
  const store = AccountStore.open(newStorePath(), { create: true, scryptN });
  await store.addAccount('Node1@Example.test', password);
  store.bindNames('node1@example.test', ['node1.example.test', 'www.node1.example.test']);
  return store;
}

interface Running {
  server: AsServer;
  url: string;
  records: KeyDistributionRecord[];
}

async function startAs(t: Test, store: AccountStore, options: Partial<AsServerOptions> = {}): Promise<Running> {
  const records: KeyDistributionRecord[] = [];
  const server = new AsServer({
    host: '127.0.0.1',
    port: 0,
    cert: readFileSync(asCert.certFile),
    key: readFileSync(asCert.keyFile),
    store,
    distributeKey: async (r) => void records.push(r),
    ...options,
  });
  const { port } = await server.start();
  t.teardown(() => server.stop());
  return { server, url: `https://127.0.0.1:${port}`, records };
}

/** A raw request, for the answers the router's client does not make. */
function post(url: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }, method = 'POST', path = '/v1/login'):
  Promise<{ status: number; headers: Record<string, unknown>; body: { error?: string } & Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), { method, ca: readFileSync(pki.caFile), headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: JSON.parse(Buffer.concat(chunks).toString() || '{}') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const creds = (url: string, email = 'node1@example.test', pw = password) => ({ url, caFile: pki.caFile, email, password: pw, timeoutMs: 5000 });

t.test('pki: the certificate carries role and names, and peerIdentity reads them', async (t) => {
  t.equal(statSync(asCert.keyFile).mode & 0o777, 0o600, 'key file 0600');
  t.equal(statSync(pki.caKeyFile).mode & 0o777, 0o600, 'CA key file 0600');
  const text = execFileSync('openssl', ['x509', '-in', asCert.certFile, '-noout', '-text'], { encoding: 'utf8' });
  t.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
  t.match(text, /DNS:as\.test, IP Address:127\.0\.0\.1/);
  t.match(text, /ASN1 OID: prime256v1/);
  t.throws(() => pki.issue('bad/name', { dns: ['x.test'] }), /name "bad\/name"/);
  t.throws(() => pki.issue('nosan'), /at least one DNS name or IP/);

  const { url } = await startAs(t, await newStore());
  const port = Number(new URL(url).port);
  const identity = await new Promise<ReturnType<typeof peerIdentity>>((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca: readFileSync(pki.caFile), servername: 'as.test' }, () => {
      resolve(peerIdentity(socket.getPeerCertificate()));
      socket.end();
    });
    socket.on('error', reject);
  });
  t.same(identity, { role: 'as', dnsNames: ['as.test'] });
  const unnamed = pki.issue('anon', { dns: ['anon.test'] });
  const out = execFileSync('openssl', ['x509', '-in', unnamed.certFile, '-noout', '-subject'], { encoding: 'utf8' });
  t.notMatch(out, /OU/, 'no role: no OU');
  t.same(peerIdentity({} as never), { role: null, dnsNames: [] }, 'no certificate: no identity');
});

t.test('store: round trip, mode 0600, atomic rewrite', async (t) => {
  const path = newStorePath();
  t.throws(() => AccountStore.open(path), /no such file/, 'a missing store is not created unless asked');
  const store = AccountStore.open(path, { create: true, scryptN });
  t.equal(statSync(path).mode & 0o777, 0o600);
  const added = await store.addAccount(' Alice@Example.TEST ', 'password-1');
  t.equal(added.email, 'alice@example.test', 'emails are lower-cased');
  t.match(added.passwordHash, /^scrypt\$1024\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/);
  await t.rejects(store.addAccount('alice@example.test', 'password-2'), /already exists/);
  await t.rejects(store.addAccount('bob@example.test', 'short'), /password: 5 characters, want at least 8/);
  await t.rejects(store.addAccount('not an email', 'password-2'), /email "not an email"/);
  store.bindNames('alice@example.test', ['Alice.Example.Test.']);
  store.bindNames('alice@example.test', ['alias.example.test', 'alice.example.test']);
  const pub = Buffer.alloc(32, 7).toString('base64url');
  store.setPublicKey('alice@example.test', pub);
  await store.addAccount('bob@example.test', 'password-2');
  t.throws(() => store.bindNames('bob@example.test', ['alice.example.test']), /name alice\.example\.test: already bound to alice@example\.test/);
  t.throws(() => store.bindNames('bob@example.test', ['under_score.example.test']), /label "under_score"/);
  t.throws(() => store.bindNames('bob@example.test', ['localhost']), /fully qualified/);
  t.throws(() => store.setPublicKey('bob@example.test', Buffer.alloc(31).toString('base64url')), /31 bytes, want 32/);
  t.throws(() => store.revoke('carol@example.test'), /account carol@example\.test: no such account/);
  store.revoke('bob@example.test');

  const reopened = AccountStore.open(path, { scryptN });
  t.same(reopened.get('alice@example.test'), { ...added, names: ['alice.example.test', 'alias.example.test'], publicKey: pub });
  t.equal(reopened.get('bob@example.test')!.revoked, true);
  t.same(reopened.list().map((a) => a.email), ['alice@example.test', 'bob@example.test']);
  t.equal(statSync(path).mode & 0o777, 0o600, 'still 0600 after rewrites');
  t.same(readdirSync(dirname(path)).filter((f) => f.includes('.tmp-')), [], 'no temp files left');

  chmodSync(path, 0o644);
  t.throws(() => AccountStore.open(path), StoreError, 'a readable store is refused');
  t.throws(() => AccountStore.open(path), /mode 0644 lets group or others at the password hashes; run `chmod 600 /);
  chmodSync(path, 0o600);

  const broken = newStorePath();
  writeFileSync(broken, JSON.stringify({ version: 1, accounts: [{ ...added, names: ['Upper.Example.Test'] }] }), { mode: 0o600 });
  t.throws(() => AccountStore.open(broken), /accounts\[0\]\.names\[0\]: "Upper\.Example\.Test" is not in normal form/);
  writeFileSync(broken, '{"version": 1, "accounts": [', { mode: 0o600 });
  t.throws(() => AccountStore.open(broken), /not valid JSON/);
});

t.test('store: scrypt verify', async (t) => {
  const store = await newStore();
  t.equal((await store.verify('node1@example.test', password))?.email, 'node1@example.test');
  t.equal((await store.verify('NODE1@example.test', password))?.email, 'node1@example.test', 'email case does not matter');
  t.equal(await store.verify('node1@example.test', `${password}!`), null, 'wrong password');
  t.equal(await store.verify('nobody@example.test', password), null, 'unknown account');
  t.equal(await store.verify('not an email', password), null, 'not an email');
  store.revoke('node1@example.test');
  t.equal(await store.verify('node1@example.test', password), null, 'revoked');

  const strong = AccountStore.open(newStorePath(), { create: true });
  const a = await strong.addAccount('default@example.test', 'password-1');
  t.match(a.passwordHash, /^scrypt\$32768\$8\$1\$/, 'default cost N=2^15, r=8, p=1');
  t.ok(await strong.verify('default@example.test', 'password-1'), 'the default cost fits in maxmem');
  t.throws(() => AccountStore.open(newStorePath(), { create: true, scryptN: 1000 }), /scryptN 1000: want a power of two/);
});

t.test('login: success distributes the key to the DC and hands it to the node', async (t) => {
  const store = await newStore();
  store.setPublicKey('node1@example.test', Buffer.alloc(32, 9).toString('base64url'));
  let clock = 1_700_000_000_000;
  const { server, url, records } = await startAs(t, store, { now: () => clock, keyLifetimeSeconds: 3600 });
  const result = await login(creds(url));
  t.equal(records.length, 1, 'distributeKey called once');
  const r = records[0]!;
  t.same(
    { fqdn: r.fqdn, names: r.names, expiresAt: r.expiresAt, publicKey: r.publicKey },
    { fqdn: 'node1.example.test', names: ['node1.example.test', 'www.node1.example.test'], expiresAt: clock + 3600_000, publicKey: Buffer.alloc(32, 9) },
  );
  t.equal(r.key.length, 32);
  t.ok(Number.isInteger(r.keyId) && r.keyId >= 1 && r.keyId <= 0xffffffff, 'keyId a nonzero uint32');
  t.same(result.key, r.key, 'the node gets the key the DC got');
  t.equal(result.keyId, r.keyId);
  t.equal(result.fqdn, 'node1.example.test');
  t.same(result.names, r.names);
  t.equal(result.expiresAt, r.expiresAt);
  t.ok(Math.abs(result.clockOffsetMs - (clock - Date.now())) < 2000, 'clock offset = server time − local time');
  t.equal(server.counters.loginsOk, 1);

  clock += 1000;
  const again = await login(creds(url));
  t.not(again.key.toString('hex'), result.key.toString('hex'), 'a new key per login');
  t.equal(records.length, 2);

  const health = await post(url, '', {}, 'GET', '/v1/health');
  t.equal(health.status, 200);
  t.equal((await post(url, '', {}, 'GET', '/v1/nothing')).status, 404);
  t.equal((await post(url, '', {}, 'GET')).status, 405);
});

t.test('login: bad credentials are one answer, counted, and never reach the DC', async (t) => {
  const store = await newStore();
  await store.addAccount('revoked@example.test', password);
  store.bindNames('revoked@example.test', ['revoked.example.test']);
  store.revoke('revoked@example.test');
  const { server, url, records } = await startAs(t, store);
  const errors: LoginError[] = [];
  for (const [email, pw] of [['node1@example.test', 'wrong password'], ['nobody@example.test', password], ['revoked@example.test', password]] as const) {
    const err = await login(creds(url, email, pw)).catch((e: LoginError) => e);
    t.ok(err instanceof LoginError, `${email}: LoginError`);
    errors.push(err as LoginError);
  }
  t.same(errors.map((e) => e.status), [401, 401, 401]);
  t.same(new Set(errors.map((e) => e.message)).size, 1, 'wrong password, unknown and revoked look the same');
  t.match(errors[0]!.message, /401 invalid credentials/);
  t.equal(records.length, 0, 'distributeKey not called');
  t.equal(server.counters.badCredentials, 3);

  await store.addAccount('nameless@example.test', password);
  const nameless = await login(creds(url, 'nameless@example.test')).catch((e: LoginError) => e);
  t.equal((nameless as LoginError).status, 403);
  t.match((nameless as LoginError).message, /no name bound/);
  t.equal(server.counters.noName, 1);
});

t.test('login: rate limits per account and per source', async (t) => {
  const store = await newStore();
  let clock = 1_700_000_000_000;
  const { server, url } = await startAs(t, store, { now: () => clock, limits: { accountFailures: 3, accountWindowSeconds: 60, sourceRequests: 8, sourceWindowSeconds: 10 } });
  for (let i = 0; i < 3; i++) t.equal((await login(creds(url, 'node1@example.test', 'wrong password')).catch((e: LoginError) => e) as LoginError).status, 401);
  const limited = (await login(creds(url)).catch((e: LoginError) => e)) as LoginError;
  t.equal(limited.status, 429, 'even the right password waits once the account is locked');
  t.equal(limited.retryAfterSeconds, 60);
  t.equal(server.counters.rateLimited, 1);
  t.equal((await post(url, JSON.stringify({ email: 'node1@example.test', password }))).headers['retry-after'], '60');
  clock += 61_000;
  t.equal((await login(creds(url))).fqdn, 'node1.example.test', 'unlocked after the window');

  clock += 61_000;
  for (let i = 0; i < 8; i++) await login(creds(url));
  const bySource = (await login(creds(url)).catch((e: LoginError) => e)) as LoginError;
  t.equal(bySource.status, 429, 'the 9th request from one address in 10 s');
  t.equal(bySource.retryAfterSeconds, 10);
  clock += 10_000;
  t.equal((await login(creds(url))).fqdn, 'node1.example.test', 'source unlocked after the window');
});

t.test('account unlock lifts the lockout of a running AS at once', async (t) => {
  const store = await newStore();
  const { url } = await startAs(t, store, { limits: { accountFailures: 2, accountWindowSeconds: 900 } });
  for (let i = 0; i < 2; i++) await login(creds(url, 'node1@example.test', 'wrong password')).catch(() => undefined);
  t.equal(((await login(creds(url)).catch((e: LoginError) => e)) as LoginError).status, 429, 'locked for 15 minutes');
  const unlocked = AccountStore.open(store.path).unlock('node1@example.test');
  t.ok(unlocked.unlockedAt, 'the store records the unlock');
  t.equal((await login(creds(url))).fqdn, 'node1.example.test', 'the right password works at once');
  t.throws(() => AccountStore.open(store.path).unlock('nobody@example.test'), /no such account/);
});

t.test('account bind keeps to the account\'s zone; account unbind', async (t) => {
  const store = await newStore();
  t.throws(() => store.bindNames('node1@example.test', ['cam.other.test']), /name cam\.other\.test: outside the account's zone example\.test \(its name node1\.example\.test\)/, 'another zone is refused');
  t.throws(() => store.bindNames('node1@example.test', ['a.b.example.test']), /outside the account's zone/, 'a deeper name not under the node is refused');
  t.same(store.bindNames('node1@example.test', ['cam.node1.example.test', 'printer.example.test']).names, ['node1.example.test', 'www.node1.example.test', 'cam.node1.example.test', 'printer.example.test'], 'under the node and in its zone are fine');
  t.throws(() => store.unbindNames('node1@example.test', ['node1.example.test']), /node1\.example\.test is its own name .* unbind the others/, 'its own name goes last');
  t.throws(() => store.unbindNames('node1@example.test', ['nope.example.test']), /name nope\.example\.test is not bound to it/);
  t.same(store.unbindNames('node1@example.test', ['printer.example.test', 'www.node1.example.test']).names, ['node1.example.test', 'cam.node1.example.test']);
  t.same(store.unbindNames('node1@example.test', ['cam.node1.example.test', 'node1.example.test']).names, [], 'all of them, its own name with the last');
  t.same(store.bindNames('node1@example.test', ['node9.other.test']).names, ['node9.other.test'], 'an account without names may start in any zone');
});

t.test('login: malformed requests get 4xx with the reason', async (t) => {
  const store = await newStore();
  const { server, url, records } = await startAs(t, store);
  const cases: [string, string, Record<string, string>, number, RegExp][] = [
    ['bad JSON', '{"email":', { 'content-type': 'application/json' }, 400, /not valid JSON/],
    ['not an object', '[1]', { 'content-type': 'application/json' }, 400, /want a JSON object/],
    ['missing password', '{"email":"a@b.test"}', { 'content-type': 'application/json' }, 400, /^password: missing$/],
    ['number email', '{"email":1,"password":"x"}', { 'content-type': 'application/json' }, 400, /^email: want a non-empty string$/],
    ['unknown field', '{"email":"a@b.test","password":"x","admin":true}', { 'content-type': 'application/json' }, 400, /^admin: unknown field$/],
    ['content type', '{}', { 'content-type': 'text/plain' }, 415, /content-type "text\/plain": want application\/json/],
    ['too big', JSON.stringify({ email: 'a@b.test', password: 'x'.repeat(5000) }), { 'content-type': 'application/json' }, 413, /at most 4096/],
  ];
  for (const [what, body, headers, status, error] of cases) {
    const res = await post(url, body, headers);
    t.equal(res.status, status, what);
    t.match(res.body.error, error, what);
  }
  t.equal(server.counters.badRequests, cases.length);
  t.equal(records.length, 0);
});

t.test('login: a failed key distribution is a 502 and no key', async (t) => {
  const store = await newStore();
  const { server, url } = await startAs(t, store, { distributeKey: async () => Promise.reject(new Error('DC dc.example.test:4500: no NTM ACK')) });
  const err = (await login(creds(url)).catch((e: LoginError) => e)) as LoginError;
  t.ok(err instanceof LoginError);
  t.equal(err.status, 502);
  t.match(err.message, /key distribution to the DC of node1\.example\.test failed/);
  t.equal(server.counters.distributionFailed, 1);
  t.equal(server.counters.loginsOk, 0);

  const hung = await startAs(t, store, { distributeKey: () => new Promise(() => {}), distributionTimeoutMs: 100 });
  t.equal(((await login(creds(hung.url)).catch((e: LoginError) => e)) as LoginError).status, 502, 'a DC that never acks');
});

t.test('client: trusts only the given CA and checks the answer', async (t) => {
  const store = await newStore();
  const { url } = await startAs(t, store);
  const other = createPki(join(tmp, 'other-pki'));
  const err = (await login({ ...creds(url), caFile: other.caFile }).catch((e: LoginError) => e)) as LoginError;
  t.ok(err instanceof LoginError, 'a server certificate from another CA is refused');
  t.equal(err.status, null);
  t.match(err.message, /certificate/);
  await t.rejects(login({ ...creds(url), url: url.replace('https', 'http') }), /want https/);
  await t.rejects(login({ ...creds(url), caFile: join(tmp, 'missing.crt') }), /CA file .*missing\.crt/);

  // An impostor with a certificate from the right CA still has to answer in the right shape.
  const good = { fqdn: 'n.example.test', names: ['n.example.test'], keyId: 5, key: Buffer.alloc(32, 1).toString('base64'), expiresAt: 2_000, serverTime: 1_000 };
  const answers: [string, object, RegExp][] = [
    ['short key', { ...good, key: Buffer.alloc(16).toString('base64') }, /field key: 16 bytes, want 32/],
    ['keyId 0', { ...good, keyId: 0 }, /field keyId: 0, want an integer 1\.\.4294967295/],
    ['names', { ...good, names: ['other.example.test'] }, /field names: .*starting with fqdn/],
    ['fqdn', { ...good, fqdn: 'Not A Name' }, /field fqdn/],
    ['expired', { ...good, expiresAt: 500 }, /field expiresAt: 500/],
    ['no serverTime', { ...good, serverTime: undefined }, /field serverTime: missing/],
  ];
  let answer: object = good;
  const fake = createHttpsServer({ cert: readFileSync(asCert.certFile), key: readFileSync(asCert.keyFile) }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  });
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  t.teardown(() => void fake.close());
  const fakeUrl = `https://127.0.0.1:${(fake.address() as { port: number }).port}`;
  const ok = await login(creds(fakeUrl));
  t.equal(ok.keyId, 5, 'the fake answers well-formed by default');
  for (const [what, body, want] of answers) {
    answer = body;
    await t.rejects(login(creds(fakeUrl)), want, what);
  }
});

t.test('cli: account add, bind, key, list, revoke', async (t) => {
  const store = join(tmp, 'cli-accounts.json');
  const run = (args: string[], input?: string) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
  const fails = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input: '' });

  t.match(run(['--help']), /account add --store F --email E/);
  t.match(run(['account', 'add', '--store', store, '--email', 'r1@example.test'], `${password}\n`), /added r1@example\.test/);
  const pwFile = join(tmp, 'pw');
  writeFileSync(pwFile, 'another password\n', { mode: 0o600 });
  t.match(run(['account', 'add', '--store', store, '--email', 'r2@example.test', '--password-file', pwFile]), /added r2@example\.test/);
  t.equal(statSync(store).mode & 0o777, 0o600);
  t.match(run(['account', 'bind', '--store', store, '--email', 'r1@example.test', '--name', 'r1.example.test', '--name', 'lan.r1.example.test']), /r1\.example\.test, lan\.r1\.example\.test/);
  const pub = Buffer.alloc(32, 3).toString('base64url');
  t.match(run(['account', 'key', '--store', store, '--email', 'r1@example.test', '--public-key', pub]), new RegExp(pub));
  t.match(run(['account', 'revoke', '--store', store, '--email', 'r2@example.test']), /revoked r2@example\.test/);

  const listed = JSON.parse(run(['account', 'list', '--store', store, '--json'])) as Record<string, unknown>[];
  t.same(listed.map(({ createdAt: _c, ...rest }) => rest), [
    { email: 'r1@example.test', names: ['r1.example.test', 'lan.r1.example.test'], publicKey: pub, revoked: false },
    { email: 'r2@example.test', names: [], publicKey: null, revoked: true },
  ], 'list shows no password hash');
  t.match(run(['account', 'list', '--store', store]), /r2@example\.test\trevoked/);

  const opened = AccountStore.open(store);
  t.ok(await opened.verify('r1@example.test', password), 'the password from stdin, without its newline');
  t.equal(await opened.verify('r2@example.test', 'another password'), null, 'revoked');

  const usage = fails(['account', 'bind', '--store', store, '--name', 'x.example.test']);
  t.equal(usage.status, 2, 'usage error: exit 2');
  t.match(usage.stderr, /--email is required/);
  t.equal(fails(['account', 'list', '--store', store, '--email', 'x@y.test']).status, 2, 'an option that does not apply');
  t.equal(fails(['account', 'frobnicate', '--store', store]).status, 2);
  t.equal(fails(['account', 'list', '--bogus']).status, 2);
  const failure = fails(['account', 'revoke', '--store', store, '--email', 'nobody@example.test']);
  t.equal(failure.status, 1, 'failure: exit 1');
  t.match(failure.stderr, /no such account/);
  t.match(fails(['account', 'add', '--store', store, '--email', 'r3@example.test']).stderr, /password: 0 characters, want at least 8/);
  chmodSync(store, 0o640);
  const exposed = fails(['account', 'list', '--store', store]);
  t.equal(exposed.status, 1);
  t.match(exposed.stderr, /mode 0640/);
  chmodSync(store, 0o600);
});

t.test('a running AS sees the CLI\'s changes to the store', async (t) => {
  const path = join(tmp, 'live.json');
  const store = AccountStore.open(path, { create: true, scryptN });
  await store.addAccount('live@example.test', password);
  store.bindNames('live@example.test', ['live.example.test']);
  const { url } = await startAs(t, store);
  t.equal((await login(creds(url, 'live@example.test'))).fqdn, 'live.example.test');
  execFileSync(process.execPath, [cli, 'account', 'revoke', '--store', path, '--email', 'live@example.test']);
  t.equal(((await login(creds(url, 'live@example.test')).catch((e: LoginError) => e)) as LoginError).status, 401);
});

t.test('cli: serve answers health and logins, and fails the login when no DC acks', async (t) => {
  const path = join(tmp, 'serve.json');
  const store = AccountStore.open(path, { create: true, scryptN });
  await store.addAccount('served@example.test', password);
  store.bindNames('served@example.test', ['served.example.test']);
  const config = join(tmp, 'as-config.json');
  writeFileSync(config, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    cert: asCert.certFile,
    key: asCert.keyFile,
    store: path,
    keyLifetimeSeconds: 600,
    // Nothing listens on port 1: Key Distribution cannot reach the DC.
    keyDistribution: { ca: pki.caFile, cert: asCert.certFile, key: asCert.keyFile, dc: { 'example.test': '127.0.0.1:1' } },
  }));
  const bad = join(tmp, 'bad-config.json');
  writeFileSync(bad, JSON.stringify({ listen: { port: 70000 } }));
  const refused = spawnSync(process.execPath, [cli, 'serve', '--config', bad], { encoding: 'utf8' });
  t.equal(refused.status, 2);
  t.match(refused.stderr, /bad-config\.json: listen\.port: 70000 is not an integer in 0\.\.65535/);
  const dcCert = pki.issue('not-the-as', { dns: ['dc.example.test'], role: 'dc' });
  const wrongRole = join(tmp, 'wrong-role.json');
  writeFileSync(wrongRole, JSON.stringify({ ...JSON.parse(readFileSync(config, 'utf8')), keyDistribution: { ca: pki.caFile, cert: dcCert.certFile, key: dcCert.keyFile } }));
  const notAs = spawnSync(process.execPath, [cli, 'serve', '--config', wrongRole], { encoding: 'utf8' });
  t.equal(notAs.status, 1, 'another role\'s certificate: not started');
  t.match(notAs.stderr, /keyDistribution\.cert .*not-the-as\.crt: role \(OU\) dc, want as/, 'names the field and the role');

  const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--verbose'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(() => child.kill());
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ready port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`serve exited: ${stderr}`)));
  });
  const url = `https://127.0.0.1:${port}`;
  t.equal((await post(url, '', {}, 'GET', '/v1/health')).status, 200);
  t.equal(((await login(creds(url, 'served@example.test', 'wrong password')).catch((e: LoginError) => e)) as LoginError).status, 401);
  t.equal(((await login(creds(url, 'served@example.test')).catch((e: LoginError) => e)) as LoginError).status, 502);
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM stops it cleanly');
  t.match(stderr, /"event":"login-failed"/, '--verbose logs outcomes as JSON lines');
  t.match(stderr, /"event":"key-distribution-failed","fqdn":"served\.example\.test"/);
});
