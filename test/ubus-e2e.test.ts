// The ubus client (ubus/client.ts) and the daemon's `ntmobile` object (router/ubus-api.ts)
// against the REAL ubusd and `ubus` CLI of the shared OpenWrt userland: an instance of its own
// (unique name) in a network namespace of its own, the object published from this process with
// stand-in handlers, every assertion made with the real CLI; the client's own calls to procd's
// and rpcd's objects; events both ways; ubusd restarted under the object. Needs root (netns).
// The userland is found at $OWRT_USERLAND, else <repo>/../shared/openwrt-userland, else
// /work/shared/openwrt-userland; without it this test fails (it never skips).
import t from 'tap';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlobmsgType } from '../ubus/blob.js';
import { UbusApi } from '../router/ubus-api.js';
import { UbusClient, UbusStatus } from '../ubus/client.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function findUserland(): string {
  const env = process.env.OWRT_USERLAND;
  const candidates = env !== undefined && env !== '' ? [env] : [path.resolve(repo, '../shared/openwrt-userland'), '/work/shared/openwrt-userland'];
  const found = candidates.find((c) => existsSync(path.join(c, 'run.sh')));
  if (found === undefined) throw new Error(`OpenWrt userland not found (no run.sh in ${candidates.join(' or ')}): set OWRT_USERLAND to its folder`);
  return found;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command without blocking the event loop: the object under test lives in this process. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 20_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 50));
  }
}

const id = `ubus-${process.pid}-${randomBytes(3).toString('hex')}`;
const netns = id;
const children: ChildProcess[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

let userland: string;
try {
  userland = findUserland();
} catch (e) {
  t.fail((e as Error).message);
  process.exit(1);
}
if (process.getuid?.() !== 0) {
  t.fail('needs root: it creates a network namespace for its OpenWrt instance');
  process.exit(1);
}
const runSh = path.join(userland, 'run.sh');
const instanceEnv = { OWRT_INSTANCE: id };

let removed = false;
/** Ends the CLI children, the instance and the namespace; also on a failed setup, an exit or a signal. */
function removeInstance(): void {
  if (removed) return;
  removed = true;
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  spawnSync(runSh, ['stop'], { env: { ...process.env, ...instanceEnv }, timeout: 30_000 });
  spawnSync(runSh, ['reset'], { env: { ...process.env, ...instanceEnv }, timeout: 30_000 });
  spawnSync('ip', ['netns', 'del', netns]);
}
process.once('exit', removeInstance);
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  // before tap's own handler, which ends the process by the signal (no exit handlers then)
  process.prependOnceListener(signal, () => {
    removeInstance();
    process.exit(code);
  });
}
t.teardown(async () => {
  for (const c of cleanups.reverse()) await c();
  removeInstance();
});

const added = spawnSync('ip', ['netns', 'add', netns], { encoding: 'utf8' });
if (added.status !== 0) throw new Error(`ip netns add ${netns}: ${added.stderr}`);
const started = await run('ip', ['netns', 'exec', netns, 'env', `OWRT_INSTANCE=${id}`, runSh, 'start'], {}, 60_000);
if (started.code !== 0) throw new Error(`run.sh start (instance ${id}) failed: ${started.stdout}${started.stderr}`);
const envOut = (await run(runSh, ['env'], instanceEnv)).stdout;
const root = /OWRT_ROOT='([^']+)'/.exec(envOut)?.[1];
const sock = /OWRT_UBUS_SOCK='([^']+)'/.exec(envOut)?.[1];
if (root === undefined || sock === undefined) throw new Error(`run.sh env printed no OWRT_ROOT/OWRT_UBUS_SOCK: ${envOut}`);
const ubusBin = path.join(root, 'usr/bin/ubus');
const ubusEnv = { LD_LIBRARY_PATH: path.join(root, 'usr/lib') };

/** The real CLI, host side, on the instance's socket (output to pipes, as in scripts). */
const ubus = (...args: string[]): Promise<Run> => run(ubusBin, ['-s', sock, ...args], ubusEnv);

/**
 * The real CLI on a terminal (script(1) gives it one), as a user sees it: there it prints
 * "Command failed: <status text>" and exits with the status. On pipes it prints the command and
 * exits with 256 - status instead (and, for status 2, its usage too: upstream's -2 quirk).
 */
const ubusTty = (...args: string[]): Promise<Run> =>
  run('script', ['-q', '-e', '-c', [ubusBin, '-s', sock, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' '), '/dev/null'], ubusEnv);

// ---- the object under test, with stand-in handlers

const calls: Record<string, Record<string, unknown>[]> = { status: [], peers: [], ping: [], handover: [], reload: [] };
let releaseHang: (() => void) | null = null;
const STATUS = {
  state: 'ready',
  name: 'ra.fleet1.test',
  startedMs: 1765100000000, // a ms timestamp: int64
  rxBytes: 5_000_000_000, // past int32: int64
  lossRatio: 0.25, // double
  relay: null, // left out
  uplink: { address: '192.0.2.7', up: true },
  tunnels: 2,
};
const logs: string[] = [];
const api = new UbusApi(
  sock,
  {
    status: async (args) => {
      calls.status.push(args);
      return STATUS;
    },
    peers: async (args) => {
      calls.peers.push(args);
      return [
        { name: 'rb.fleet2.test', path: 'direct', rxBytes: 12, lastHandshakeMs: null },
        { name: 'rc.fleet2.test', path: 'relay via rs1.relay.test', rxBytes: 7_000_000_000 },
      ];
    },
    ping: async (args) => {
      calls.ping.push(args);
      if (args.name === 'hang') await new Promise<void>((resolve) => (releaseHang = resolve));
      return { name: args.name, sent: args.count ?? 3, received: 3, rttMs: [1.5, 2, 2.25] };
    },
    handover: async (args) => {
      calls.handover.push(args);
      if (args.action === 'ifdown') throw new Error('handover refused: no uplink left');
      return { moved: 2 };
    },
    reload: async (args) => {
      calls.reload.push(args);
      return { reloaded: true };
    },
  },
  (l) => logs.push(l),
  { backoffMinMs: 50, backoffMaxMs: 500 },
);
cleanups.push(() => api.stop());
cleanups.push(() => releaseHang?.());

t.test('ntmobile is published: ubus list, ubus -v list', async (t) => {
  await api.start();
  const listed = await until('ubus list ntmobile', async () => {
    const r = await ubus('list', 'ntmobile');
    return r.code === 0 ? r : undefined;
  });
  t.equal(listed.stdout, 'ntmobile\n');
  t.equal(api.ready, true);
  t.match(logs.join('\n'), /ubus: object ntmobile published/);
  const verbose = await ubus('-v', 'list', 'ntmobile');
  t.equal(verbose.code, 0);
  const lines = verbose.stdout.trim().split('\n').map((l) => l.trim());
  t.match(lines[0], /^'ntmobile' @[0-9a-f]{8}$/);
  t.strictSame(lines.slice(1), [
    '"status":{}',
    '"peers":{}',
    '"ping":{"name":"String","count":"Integer"}',
    '"handover":{"interface":"String","action":"String","device":"String"}',
    '"reload":{}',
  ], 'methods and argument types as the CLI shows them');
});

t.test('calls: tables, numbers, arrays', async (t) => {
  const status = await ubus('call', 'ntmobile', 'status');
  t.equal(status.code, 0, status.stderr);
  const { relay: _omitted, ...withoutNull } = STATUS;
  t.strictSame(JSON.parse(status.stdout), withoutNull, 'int64 counters and timestamps, a double, a nested table; the null member left out');
  t.notMatch(status.stdout, /relay/);

  const peers = await ubus('call', 'ntmobile', 'peers');
  t.equal(peers.code, 0, peers.stderr);
  t.strictSame(JSON.parse(peers.stdout), {
    peers: [
      { name: 'rb.fleet2.test', path: 'direct', rxBytes: 12 },
      { name: 'rc.fleet2.test', path: 'relay via rs1.relay.test', rxBytes: 7_000_000_000 },
    ],
  }, 'an array result arrives as {peers: [...]}');

  const reload = await ubus('call', 'ntmobile', 'reload');
  t.strictSame(JSON.parse(reload.stdout), { reloaded: true });

  const ping = await ubus('call', 'ntmobile', 'ping', '{"name":"rb.fleet2.test","count":2,"ubus_rpc_session":"0123456789abcdef"}');
  t.equal(ping.code, 0, ping.stderr);
  t.strictSame(JSON.parse(ping.stdout), { name: 'rb.fleet2.test', sent: 2, received: 3, rttMs: [1.5, 2, 2.25] });
  t.strictSame(calls.ping.at(-1), { name: 'rb.fleet2.test', count: 2 }, 'the handler gets its arguments without ubus_rpc_session');

  const hint = await ubus('call', 'ntmobile', 'handover', '{"interface":"wan","action":"ifup","device":"eth1"}');
  t.equal(hint.code, 0, hint.stderr);
  t.strictSame(calls.handover.at(-1), { interface: 'wan', action: 'ifup', device: 'eth1' });
});

t.test('arguments are checked before the handler runs', async (t) => {
  const before = calls.ping.length;
  const cases: [string, RegExp][] = [
    ['{"name": 5}', /argument "name" is int32, want string/],
    ['{}', /argument "name" is required/],
    ['{"count": 2}', /argument "name" is required/],
    ['{"name": "x", "count": "2"}', /argument "count" is string, want int32/],
    ['{"name": "x", "count": 5000000000}', /argument "count" is int64, want int32/],
    ['{"name": "x", "bogus": 1}', /unknown argument "bogus" \(known: name, count\)/],
  ];
  for (const [args, why] of cases) {
    const r = await ubusTty('call', 'ntmobile', 'ping', args);
    t.equal(r.code, UbusStatus.INVALID_ARGUMENT, `ping ${args}: exit code 2`);
    t.equal(r.stdout.trim(), 'Command failed: Invalid argument', `ping ${args}: the CLI's message`);
    t.match(logs.at(-1), why, `ping ${args}: the log says why`);
  }
  const piped = await ubus('call', 'ntmobile', 'ping', '{"name": 5}');
  t.equal(piped.code, 256 - UbusStatus.INVALID_ARGUMENT, 'on pipes: exit code 254');
  t.match(piped.stderr, /^Command failed: ubus call ntmobile ping \{"name": 5\} \(Invalid argument\)\n/, 'on pipes: the command and the status text');
  t.equal(calls.ping.length, before, 'the handler never ran');
  const status = await ubusTty('call', 'ntmobile', 'status', '{"verbose": true}');
  t.equal(status.code, UbusStatus.INVALID_ARGUMENT, 'a method without arguments refuses one');
  const unknown = await ubusTty('call', 'ntmobile', 'frobnicate');
  t.equal(unknown.code, UbusStatus.METHOD_NOT_FOUND);
  t.equal(unknown.stdout.trim(), 'Command failed: Method not found');
});

t.test('a handler that throws is an error status; the object keeps answering', async (t) => {
  const r = await ubusTty('call', 'ntmobile', 'handover', '{"interface":"wan","action":"ifdown"}');
  t.equal(r.code, UbusStatus.UNKNOWN_ERROR);
  t.equal(r.stdout.trim(), 'Command failed: Unknown error');
  t.match(logs.join('\n'), /ubus: ntmobile handover failed: handover refused: no uplink left/);
  const after = await ubus('call', 'ntmobile', 'status');
  t.equal(after.code, 0, 'still answering');
});

t.test('events: ubus listen sees ntmobile.handover; the client hears the CLI and the daemon', async (t) => {
  const listener = spawn(ubusBin, ['-s', sock, 'listen', 'ntmobile.handover'], { env: { ...process.env, ...ubusEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(listener);
  let out = '';
  listener.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  // `ubus listen` gives no sign of being registered: send until it prints one
  let seq = 0;
  const unsent: number[] = [];
  const line = await until('ubus listen to print an event', async () => {
    if (out.includes('\n')) return out.split('\n')[0];
    if (!(await api.event('ntmobile.handover', { interface: 'wan', action: 'ifup', seq: ++seq, note: null }))) unsent.push(seq);
    return undefined;
  });
  t.strictSame(unsent, [], `all ${seq} events accepted by ubusd`);
  const got = JSON.parse(line) as { 'ntmobile.handover': { seq: number } };
  t.strictSame(got, { 'ntmobile.handover': { interface: 'wan', action: 'ifup', seq: got['ntmobile.handover'].seq } }, `ubus listen printed ${line}`);
  t.ok(got['ntmobile.handover'].seq >= 1 && got['ntmobile.handover'].seq <= seq);
  listener.kill('SIGTERM');

  const client = new UbusClient(sock, { backoffMinMs: 50, backoffMaxMs: 500 });
  cleanups.push(() => client.close());
  await client.connect();
  const heard: [string, unknown][] = [];
  await client.listen('ntmobile.*', (type, data) => heard.push([type, data]));
  t.equal(await api.event('ntmobile.peer', { name: 'rb.fleet2.test', path: 'direct', rxBytes: 5_000_000_000 }), true);
  const sent = await ubus('send', 'ntmobile.peer', '{"name":"rc.fleet2.test","path":"relay"}');
  t.equal(sent.code, 0, sent.stderr);
  await until('both events', () => (heard.length >= 2 ? true : undefined), 5_000);
  t.strictSame(heard, [
    ['ntmobile.peer', { name: 'rb.fleet2.test', path: 'direct', rxBytes: 5_000_000_000 }],
    ['ntmobile.peer', { name: 'rc.fleet2.test', path: 'relay' }],
  ]);
});

t.test('the client calls real objects: procd, rpcd, ours', async (t) => {
  const client = new UbusClient(sock, { backoffMinMs: 50, backoffMaxMs: 500 });
  cleanups.push(() => client.close());
  await client.connect();
  const board = await client.invoke('system', 'board');
  t.equal(board.status, UbusStatus.OK);
  t.strictSame(board.data, JSON.parse((await ubus('call', 'system', 'board')).stdout), 'system board (procd): the same as the CLI prints');
  const services = await client.invoke('service', 'list', {});
  t.equal(services.status, UbusStatus.OK);
  t.strictSame(Object.keys(services.data ?? {}).sort(), Object.keys(JSON.parse((await ubus('call', 'service', 'list')).stdout) as object).sort(), 'service list (procd): the same services');
  const session = await client.call('session', 'list', { ubus_rpc_session: '00000000000000000000000000000000' });
  t.equal((session as { timeout: number }).timeout, 0, 'rpcd answers');

  const [ours] = await client.lookup('ntmobile');
  t.strictSame(ours.signature, {
    status: {},
    peers: {},
    ping: { name: BlobmsgType.STRING, count: BlobmsgType.INT32 },
    handover: { interface: BlobmsgType.STRING, action: BlobmsgType.STRING, device: BlobmsgType.STRING },
    reload: {},
  }, 'our signature as ubusd keeps it');
  t.strictSame(await client.call('ntmobile', 'ping', { name: 'x', count: 1 }), { name: 'x', sent: 1, received: 3, rttMs: [1.5, 2, 2.25] });
  await t.rejects(client.call('ntmobile', 'ping', { name: 5 }), { name: 'UbusError', status: UbusStatus.INVALID_ARGUMENT, message: 'ubus call ntmobile ping: UBUS_STATUS_INVALID_ARGUMENT (Invalid argument)' });
  await t.rejects(client.call('no.such.object', 'x'), { name: 'UbusError', status: UbusStatus.NOT_FOUND });
  t.equal((await client.invoke('ntmobile', 'frobnicate')).status, UbusStatus.METHOD_NOT_FOUND);

  const dropped = client.stats.droppedMessages;
  await t.rejects(client.invoke('ntmobile', 'ping', { name: 'hang' }, { timeoutMs: 300 }), { name: 'UbusError', status: UbusStatus.TIMEOUT });
  await until('the hanging handler to start', () => (releaseHang !== null ? true : undefined));
  releaseHang!();
  await until('the late answer to be dropped', () => (client.stats.droppedMessages > dropped ? true : undefined), 5_000);
  t.equal((await client.invoke('ntmobile', 'status')).status, UbusStatus.OK, 'the connection is fine after a timeout');
});

t.test('ubusd restarted: the object and the event registration come back', async (t) => {
  const listener = new UbusClient(sock, { backoffMinMs: 50, backoffMaxMs: 500 });
  cleanups.push(() => listener.close());
  await listener.connect();
  const heard: unknown[] = [];
  await listener.listen('ntmobile.*', (_type, data) => heard.push(data));
  const firstId = (await ubus('-v', 'list', 'ntmobile')).stdout.split('\n')[0];

  const restarted = await run('ip', ['netns', 'exec', netns, 'env', `OWRT_INSTANCE=${id}`, runSh, 'restart'], {}, 60_000);
  t.equal(restarted.code, 0, `run.sh restart: ${restarted.stderr}`);
  await until('ntmobile to be listed again', async () => ((await ubus('list', 'ntmobile')).code === 0 ? true : undefined), 20_000);
  t.not((await ubus('-v', 'list', 'ntmobile')).stdout.split('\n')[0], firstId, 'a new object id from the new ubusd');
  const status = await ubus('call', 'ntmobile', 'status');
  t.equal(status.code, 0, status.stderr);
  t.equal((JSON.parse(status.stdout) as { name: string }).name, 'ra.fleet1.test');
  await until('the daemon side to be ready', () => (api.ready ? true : undefined));

  await until('the listener to hear an event after the restart', async () => {
    if (heard.length > 0) return true;
    await ubus('send', 'ntmobile.peer', '{"after":"restart"}');
    return undefined;
  });
  t.strictSame(heard[0], { after: 'restart' });
  t.ok(listener.stats.disconnects >= 1 && listener.stats.connects >= 2, 'the listener reconnected');
});

t.test('without ubusd, start() neither throws nor blocks: it logs once and keeps trying', async (t) => {
  const lines: string[] = [];
  const lone = new UbusApi(path.join(root, 'tmp/no-such-dir/ubus.sock'), { status: async () => ({}), peers: async () => [], ping: async () => ({}), handover: async () => ({}), reload: async () => ({}) }, (l) => lines.push(l), { backoffMinMs: 5, backoffMaxMs: 20 });
  await lone.start();
  await until('several attempts', () => (lone.stats.failedConnects >= 4 ? true : undefined));
  t.equal(lone.ready, false);
  t.equal(await lone.event('ntmobile.peer', { name: 'x' }), false, 'events are not queued without ubusd');
  t.equal(lines.length, 1, `one log line for ${lone.stats.failedConnects} failed attempts`);
  t.match(lines[0], /ubus: cannot connect to .*no-such-dir\/ubus\.sock \(.*ENOENT.*\): retrying in the background/);
  await lone.stop();
});
