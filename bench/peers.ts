// Comparison peers for benchmarks: wireguard-go, nebula and OpenVPN (all
// userspace, from Debian packages) and plain veth, each brought up between two
// EXISTING network namespaces that share one underlay link.
//
// Every setup:
//  - writes keys/certs/configs into a fresh subdirectory of `workDir`,
//  - starts its daemons with `ip netns exec` (which execs, so the pid we hold is
//    the daemon's own pid and can be used with rssKb()),
//  - waits (bounded) until the inner address answers ping both ways, failing with
//    the daemons' log tails otherwise,
//  - on any failure tears down what it started before rethrowing.
// stop() is idempotent: SIGTERM (then SIGKILL) the daemons, delete any device
// left behind, remove the subdirectory.
//
// Device names carry a random tag: wireguard-go's UAPI sockets live in
// /var/run/wireguard/<dev>.sock, which is shared by all namespaces.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nsRun, pingCommand, pingOk, run, sleep, which } from './measure.js';

export interface PeerTunnel {
  name: string;
  /** Inner (tunnel) address of namespace a, without prefix length. */
  innerA: string;
  /** Inner (tunnel) address of namespace b, without prefix length. */
  innerB: string;
  /** Daemon pids, a's first. Empty for plain veth. */
  pids: number[];
  stop(): Promise<void>;
}

export interface PeerNamespaces {
  a: string;
  b: string;
  /** Underlay address of a on the shared link, without prefix length. */
  underlayA: string;
  /** Underlay address of b on the shared link, without prefix length. */
  underlayB: string;
  /** Directory for keys, configs and logs; a per-tunnel subdirectory is created in it. */
  workDir: string;
}

export type PeerSetup = (ns: PeerNamespaces) => Promise<PeerTunnel>;

/** How long a setup waits for the inner ping before giving up. */
export const READY_TIMEOUT_MS = 20_000;

const REQUIRED: Record<string, string[]> = {
  wireguardGo: ['wireguard-go', 'wg'],
  nebula: ['nebula', 'nebula-cert'],
  openvpn: ['openvpn', 'openssl'],
  common: ['ip', 'iperf3'],
};

/**
 * Binaries the peers and measurements need that are not installed. Ping is
 * reported as "ping (or busybox)" when neither is available.
 */
export function missingPeers(): string[] {
  const all = [...new Set(Object.values(REQUIRED).flat())];
  const missing = all.filter((b) => !which(b));
  if (!pingCommand()) missing.push('ping (or busybox)');
  return missing;
}

function requireBinaries(peer: keyof typeof REQUIRED): void {
  const missing = [...REQUIRED[peer]!, ...REQUIRED.common!].filter((b) => !which(b));
  if (missing.length) {
    throw new Error(`${peer}: required binaries not installed: ${missing.join(', ')}`);
  }
}

/* ------------------------------------------------------------------ */
/* daemon plumbing                                                     */
/* ------------------------------------------------------------------ */

interface Daemon {
  label: string;
  child: ChildProcess;
  log: string;
}

function isAlive(d: Daemon): boolean {
  return d.child.exitCode === null && d.child.signalCode === null;
}

function startDaemon(
  label: string,
  ns: string,
  cmd: string,
  args: string[],
  log: string,
  env?: NodeJS.ProcessEnv,
): Daemon {
  const fd = openSync(log, 'a');
  try {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, ...env },
    });
    child.on('error', () => {
      /* reported through exit / readiness check */
    });
    if (child.pid === undefined) throw new Error(`${label}: failed to spawn ${cmd}`);
    return { label, child, log };
  } finally {
    closeSync(fd);
  }
}

/** `ip netns exec` execs the command; wait until the pid shows the daemon, not `ip`. */
async function waitExeced(d: Daemon, comm: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isAlive(d)) return; // reported by waitReady with the log tail
    try {
      const c = readFileSync(`/proc/${d.child.pid}/comm`, 'utf8').trim();
      if (c === comm.slice(0, 15)) return;
    } catch {
      /* gone; handled later */
    }
    await sleep(20);
  }
  throw new Error(`${d.label}: pid ${d.child.pid} never became ${comm}`);
}

function tail(file: string, lines = 25): string {
  try {
    const all = readFileSync(file, 'utf8').trimEnd().split('\n');
    return all.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function logTails(daemons: Daemon[]): string {
  return daemons
    .map((d) => {
      const state = isAlive(d)
        ? 'running'
        : `exited (code ${d.child.exitCode}, signal ${d.child.signalCode})`;
      return `--- ${d.label} [pid ${d.child.pid}, ${state}] ${d.log}\n${tail(d.log)}`;
    })
    .join('\n');
}

async function stopDaemon(d: Daemon, graceMs = 3000): Promise<void> {
  if (!isAlive(d)) return;
  const gone = new Promise<void>((r) => d.child.once('exit', () => r()));
  d.child.kill('SIGTERM');
  const timer = setTimeout(() => d.child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

async function linkExists(ns: string, dev: string): Promise<boolean> {
  try {
    await run('ip', ['-n', ns, 'link', 'show', 'dev', dev], { timeoutMs: 5000 });
    return true;
  } catch {
    return false;
  }
}

async function deleteLink(ns: string, dev: string): Promise<void> {
  if (await linkExists(ns, dev)) {
    await run('ip', ['-n', ns, 'link', 'del', 'dev', dev], { timeoutMs: 5000 }).catch(() => undefined);
  }
}

/**
 * Wait until each side pings the other's inner address. Fails fast if a daemon
 * dies; on timeout the error carries every daemon's log tail.
 */
async function waitReady(
  name: string,
  checks: Array<{ ns: string; addr: string }>,
  daemons: Daemon[],
  timeoutMs = READY_TIMEOUT_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const pending = [...checks];
  while (pending.length) {
    const dead = daemons.filter((d) => !isAlive(d));
    if (dead.length) {
      throw new Error(`${name}: ${dead.map((d) => d.label).join(', ')} exited during setup\n${logTails(daemons)}`);
    }
    if (Date.now() > deadline) {
      const what = pending.map((c) => `${c.ns} -> ${c.addr}`).join(', ');
      throw new Error(`${name}: inner ping (${what}) not answered within ${timeoutMs} ms\n${logTails(daemons)}`);
    }
    const c = pending[0]!;
    if (await pingOk(c.ns, c.addr, { count: 1, waitSec: 1 })) pending.shift();
    else await sleep(100);
  }
}

/** Unique short tag for device names (IFNAMSIZ is 16 incl. NUL). */
function tag(): string {
  return randomBytes(3).toString('hex');
}

function makeWorkDir(workDir: string, name: string, t: string): string {
  const dir = join(workDir, `${name}-${t}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/**
 * Shared setup/teardown skeleton: `body` starts daemons (registering them and
 * any devices/namespaces to clean); on failure everything is torn down.
 */
interface Ctx {
  dir: string;
  daemons: Daemon[];
  links: Array<{ ns: string; dev: string }>;
  cleanups: Array<() => Promise<void>>;
}

async function withTeardown(
  name: string,
  workDir: string,
  body: (ctx: Ctx, t: string) => Promise<{ innerA: string; innerB: string }>,
): Promise<PeerTunnel> {
  const t = tag();
  const ctx: Ctx = { dir: makeWorkDir(workDir, name, t), daemons: [], links: [], cleanups: [] };
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      const errors: string[] = [];
      await Promise.all(ctx.daemons.map((d) => stopDaemon(d)));
      for (const l of ctx.links) await deleteLink(l.ns, l.dev);
      for (const c of ctx.cleanups.reverse()) {
        await c().catch((e: Error) => errors.push(e.message));
      }
      rmSync(ctx.dir, { recursive: true, force: true });
      if (errors.length) throw new Error(`${name} stop: ${errors.join('; ')}`);
    })());
  try {
    const { innerA, innerB } = await body(ctx, t);
    return { name, innerA, innerB, pids: ctx.daemons.map((d) => d.child.pid!), stop };
  } catch (e) {
    await stop().catch(() => undefined);
    throw e;
  }
}

/* ------------------------------------------------------------------ */
/* plain veth                                                          */
/* ------------------------------------------------------------------ */

/** No tunnel: the underlay itself, as the baseline. */
export const plainVeth: PeerSetup = async (ns) => {
  if (!(await pingOk(ns.a, ns.underlayB, { count: 3 }))) {
    throw new Error(`veth: ${ns.a} cannot ping ${ns.underlayB} on the underlay`);
  }
  return { name: 'veth', innerA: ns.underlayA, innerB: ns.underlayB, pids: [], stop: async () => undefined };
};

/* ------------------------------------------------------------------ */
/* wireguard-go                                                        */
/* ------------------------------------------------------------------ */

export const WG_PORT = 51820;
export const WG_INNER = { a: '10.200.0.1', b: '10.200.0.2', prefix: 24 };

export const wireguardGo: PeerSetup = (ns) =>
  withTeardown('wireguard-go', ns.workDir, async (ctx, t) => {
    requireBinaries('wireguardGo');
    const env = {
      // Foreground so the pid we hold is the daemon; never fall back to the kernel module.
      WG_PROCESS_FOREGROUND: '1',
      WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1',
      // Handshake events in the log, so a setup timeout shows something useful.
      LOG_LEVEL: 'verbose',
    };
    const side = [
      { key: 'a', ns: ns.a, dev: `wg${t}a`, under: ns.underlayA, inner: WG_INNER.a },
      { key: 'b', ns: ns.b, dev: `wg${t}b`, under: ns.underlayB, inner: WG_INNER.b },
    ] as const;
    const keys: Record<string, { priv: string; pub: string }> = {};
    for (const s of side) {
      const priv = (await run('wg', ['genkey'])).stdout.trim();
      const pub = (await run('wg', ['pubkey'], { input: priv + '\n' })).stdout.trim();
      const file = join(ctx.dir, `${s.key}.key`);
      writeFileSync(file, priv + '\n', { mode: 0o600 });
      keys[s.key] = { priv: file, pub };
    }
    for (const s of side) {
      const d = startDaemon(`wireguard-go ${s.ns}`, s.ns, 'wireguard-go', ['-f', s.dev], join(ctx.dir, `${s.key}.log`), env);
      ctx.daemons.push(d);
      ctx.links.push({ ns: s.ns, dev: s.dev });
      await waitExeced(d, 'wireguard-go');
    }
    // The device and its UAPI socket appear shortly after start.
    for (const s of side) {
      const deadline = Date.now() + 5000;
      while (!existsSync(`/var/run/wireguard/${s.dev}.sock`)) {
        if (Date.now() > deadline || !ctx.daemons.every(isAlive)) {
          throw new Error(`wireguard-go: ${s.dev} did not come up\n${logTails(ctx.daemons)}`);
        }
        await sleep(20);
      }
      // Make sure this is the userspace implementation: a tun device, not kernel "wireguard".
      const info = (await run('ip', ['-d', '-n', s.ns, 'link', 'show', 'dev', s.dev])).stdout;
      if (!/\btun type tun\b/.test(info)) {
        throw new Error(`wireguard-go: ${s.dev} is not a userspace tun device:\n${info}`);
      }
    }
    for (const [me, other] of [
      [side[0], side[1]],
      [side[1], side[0]],
    ] as const) {
      await nsRun(me.ns, 'wg', [
        'set', me.dev,
        'private-key', keys[me.key]!.priv,
        'listen-port', String(WG_PORT),
        'peer', keys[other.key]!.pub,
        'endpoint', `${other.under}:${WG_PORT}`,
        'allowed-ips', `${other.inner}/32`,
      ]);
      await run('ip', ['-n', me.ns, 'addr', 'add', `${me.inner}/${WG_INNER.prefix}`, 'dev', me.dev]);
      await run('ip', ['-n', me.ns, 'link', 'set', 'dev', me.dev, 'mtu', '1420', 'up']);
    }
    await waitReady(
      'wireguard-go',
      [
        { ns: ns.a, addr: WG_INNER.b },
        { ns: ns.b, addr: WG_INNER.a },
      ],
      ctx.daemons,
    );
    return { innerA: WG_INNER.a, innerB: WG_INNER.b };
  });

/* ------------------------------------------------------------------ */
/* nebula                                                              */
/* ------------------------------------------------------------------ */

export const NEBULA_PORT = 4242;
export const NEBULA_INNER = { a: '10.201.0.1', b: '10.201.0.2', prefix: 24 };

interface NebulaHost {
  name: string;
  ip: string; // inner, no prefix
  prefix: number;
}

async function nebulaPki(dir: string, hosts: NebulaHost[]): Promise<void> {
  const ca = join(dir, 'ca.crt');
  const caKey = join(dir, 'ca.key');
  await run('nebula-cert', ['ca', '-name', 'ntmobile-bench-ca', '-duration', '48h', '-out-crt', ca, '-out-key', caKey]);
  for (const h of hosts) {
    await run('nebula-cert', [
      'sign', '-ca-crt', ca, '-ca-key', caKey,
      '-name', h.name, '-ip', `${h.ip}/${h.prefix}`,
      '-out-crt', join(dir, `${h.name}.crt`), '-out-key', join(dir, `${h.name}.key`),
    ]);
  }
}

/**
 * Nebula config. Nebula parses YAML, and JSON is YAML, so no YAML library is
 * needed; the file is still named .yml.
 */
function nebulaConfig(dir: string, host: string, dev: string, extra: Record<string, unknown>): string {
  const cfg = {
    pki: { ca: join(dir, 'ca.crt'), cert: join(dir, `${host}.crt`), key: join(dir, `${host}.key`) },
    punchy: { punch: false },
    tun: { disabled: false, dev },
    logging: { level: 'info', format: 'text' },
    firewall: {
      conntrack: { tcp_timeout: '12m', udp_timeout: '3m', default_timeout: '10m' },
      outbound: [{ port: 'any', proto: 'any', host: 'any' }],
      inbound: [{ port: 'any', proto: 'any', host: 'any' }],
    },
    ...extra,
  };
  const file = join(dir, `${host}.yml`);
  writeFileSync(file, JSON.stringify(cfg, null, 2) + '\n', { mode: 0o600 });
  return file;
}

/** Two static hosts (no lighthouse), each knowing the other's underlay address. */
export const nebula: PeerSetup = (ns) =>
  withTeardown('nebula', ns.workDir, async (ctx, t) => {
    requireBinaries('nebula');
    const side = [
      { key: 'a', ns: ns.a, dev: `nb${t}a`, under: ns.underlayA, inner: NEBULA_INNER.a },
      { key: 'b', ns: ns.b, dev: `nb${t}b`, under: ns.underlayB, inner: NEBULA_INNER.b },
    ] as const;
    await nebulaPki(
      ctx.dir,
      side.map((s) => ({ name: s.key, ip: s.inner, prefix: NEBULA_INNER.prefix })),
    );
    for (const [me, other] of [
      [side[0], side[1]],
      [side[1], side[0]],
    ] as const) {
      const cfg = nebulaConfig(ctx.dir, me.key, me.dev, {
        static_host_map: { [other.inner]: [`${other.under}:${NEBULA_PORT}`] },
        lighthouse: { am_lighthouse: false, hosts: [] },
        listen: { host: me.under, port: NEBULA_PORT },
      });
      const d = startDaemon(`nebula ${me.ns}`, me.ns, 'nebula', ['-config', cfg], join(ctx.dir, `${me.key}.log`));
      ctx.daemons.push(d);
      ctx.links.push({ ns: me.ns, dev: me.dev });
      await waitExeced(d, 'nebula');
    }
    await waitReady(
      'nebula',
      [
        { ns: ns.a, addr: NEBULA_INNER.b },
        { ns: ns.b, addr: NEBULA_INNER.a },
      ],
      ctx.daemons,
    );
    return { innerA: NEBULA_INNER.a, innerB: NEBULA_INNER.b };
  });

export const NEBULA_RELAY_INNER = { a: '10.203.0.1', b: '10.203.0.2', relay: '10.203.0.3', prefix: 24 };
/** Underlay links to the relay namespace: a <-> relay and b <-> relay. */
export const NEBULA_RELAY_LINKS = {
  a: { self: '10.78.0.1', relay: '10.78.0.254', prefix: 24 },
  b: { self: '10.79.0.2', relay: '10.79.0.254', prefix: 24 },
};

/**
 * Nebula through a relay: a third namespace (created here, deleted by stop())
 * runs a nebula lighthouse with am_relay, linked to a and b by two extra veths.
 * a and b bind their nebula sockets to their relay-link addresses, so their
 * direct path (the shared underlay) cannot carry nebula traffic and every packet
 * goes a -> relay -> b. The shared-link addresses in `ns` are not used.
 */
export const nebulaRelay: PeerSetup = (ns) =>
  withTeardown('nebula-relay', ns.workDir, async (ctx, t) => {
    requireBinaries('nebula');
    const relayNs = `nbrelay-${t}-${process.pid}`;
    await run('ip', ['netns', 'add', relayNs]);
    ctx.cleanups.push(async () => {
      await run('ip', ['netns', 'del', relayNs], { timeoutMs: 10_000 });
    });
    await run('ip', ['-n', relayNs, 'link', 'set', 'lo', 'up']);
    const L = NEBULA_RELAY_LINKS;
    for (const [key, hostNs] of [
      ['a', ns.a],
      ['b', ns.b],
    ] as const) {
      const hostDev = `nr${t}${key}`;
      const relayDev = `nr${t}r${key}`;
      // Create in the relay namespace, move the host end; deleting the relay
      // namespace deletes both ends.
      await run('ip', ['-n', relayNs, 'link', 'add', relayDev, 'type', 'veth', 'peer', 'name', hostDev, 'netns', hostNs]);
      ctx.links.push({ ns: hostNs, dev: hostDev });
      await run('ip', ['-n', relayNs, 'addr', 'add', `${L[key].relay}/${L[key].prefix}`, 'dev', relayDev]);
      await run('ip', ['-n', hostNs, 'addr', 'add', `${L[key].self}/${L[key].prefix}`, 'dev', hostDev]);
      await run('ip', ['-n', relayNs, 'link', 'set', relayDev, 'up']);
      await run('ip', ['-n', hostNs, 'link', 'set', hostDev, 'up']);
    }
    return startNebulaViaRelay(ctx, t, {
      a: { ns: ns.a, listen: L.a.self, relay: L.a.relay },
      b: { ns: ns.b, listen: L.b.self, relay: L.b.relay },
      relay: { ns: relayNs },
    });
  });

/** Where nebula runs for a relayed pair: each end's namespace, the address its nebula binds and the relay's address as that end reaches it; the relay's namespace. */
export interface NebulaRelayPlaces {
  a: { ns: string; listen: string; relay: string };
  b: { ns: string; listen: string; relay: string };
  relay: { ns: string };
  /** The ends tell the lighthouse no local addresses: peers only learn where the lighthouse saw them (ends behind NATs). */
  hideLocalAddresses?: boolean;
}

/**
 * Nebula through a relay between namespaces that exist already, e.g. two routers behind NATs and
 * a host on a lab's Internet (bench/relay.ts): the same three daemons as nebulaRelay, no links of
 * its own. Whether a and b could also reach each other directly is the topology's business.
 */
export function nebulaRelayAt(places: NebulaRelayPlaces, workDir: string): Promise<PeerTunnel> {
  return withTeardown('nebula-relay', workDir, async (ctx, t) => {
    requireBinaries('nebula');
    return startNebulaViaRelay(ctx, t, places);
  });
}

/** The relay (lighthouse, am_relay) and the two ends (use_relays), up and answering inner pings. */
async function startNebulaViaRelay(ctx: Ctx, t: string, p: NebulaRelayPlaces): Promise<{ innerA: string; innerB: string }> {
  const I = NEBULA_RELAY_INNER;
  await nebulaPki(ctx.dir, [
    { name: 'a', ip: I.a, prefix: I.prefix },
    { name: 'b', ip: I.b, prefix: I.prefix },
    { name: 'relay', ip: I.relay, prefix: I.prefix },
  ]);
  const relayCfg = nebulaConfig(ctx.dir, 'relay', `nb${t}r`, {
    lighthouse: { am_lighthouse: true, interval: 10 },
    relay: { am_relay: true, use_relays: false },
    listen: { host: '0.0.0.0', port: NEBULA_PORT },
  });
  const rd = startDaemon(`nebula relay ${p.relay.ns}`, p.relay.ns, 'nebula', ['-config', relayCfg], join(ctx.dir, 'relay.log'));
  ctx.daemons.push(rd);
  ctx.links.push({ ns: p.relay.ns, dev: `nb${t}r` });
  await waitExeced(rd, 'nebula');
  for (const key of ['a', 'b'] as const) {
    const end = p[key];
    const dev = `nb${t}${key}`;
    const cfg = nebulaConfig(ctx.dir, key, dev, {
      static_host_map: { [I.relay]: [`${end.relay}:${NEBULA_PORT}`] },
      lighthouse: {
        am_lighthouse: false,
        hosts: [I.relay],
        interval: 10,
        ...(p.hideLocalAddresses ? { local_allow_list: { '0.0.0.0/0': false, '::/0': false } } : {}),
      },
      relay: { relays: [I.relay], use_relays: true, am_relay: false },
      listen: { host: end.listen, port: NEBULA_PORT },
    });
    const d = startDaemon(`nebula ${end.ns}`, end.ns, 'nebula', ['-config', cfg], join(ctx.dir, `${key}.log`));
    ctx.daemons.push(d);
    ctx.links.push({ ns: end.ns, dev });
    await waitExeced(d, 'nebula');
  }
  // pids are reported a, b, then the relay.
  ctx.daemons.push(ctx.daemons.shift()!);
  await waitReady(
    'nebula-relay',
    [
      { ns: p.a.ns, addr: I.b },
      { ns: p.b.ns, addr: I.a },
    ],
    ctx.daemons,
    READY_TIMEOUT_MS * 2,
  );
  return { innerA: I.a, innerB: I.b };
}

/* ------------------------------------------------------------------ */
/* OpenVPN                                                             */
/* ------------------------------------------------------------------ */

export const OPENVPN_PORT = 1194;
export const OPENVPN_INNER = { a: '10.202.0.1', b: '10.202.0.2', prefix: 24 };
export const OPENVPN_CIPHER = 'AES-256-GCM';

/** CA + server (a) + client (b) certificates, P-256 EC keys, valid 2 days. */
async function openvpnPki(dir: string): Promise<void> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const p = (f: string): string => join(dir, f);
  await run('openssl', [
    'req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '2',
    '-subj', '/CN=ntmobile-bench-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  for (const [role, eku] of [
    ['server', 'serverAuth'],
    ['client', 'clientAuth'],
  ] as const) {
    await run('openssl', ['req', ...ec, '-keyout', p(`${role}.key`), '-out', p(`${role}.csr`), '-subj', `/CN=${role}`]);
    writeFileSync(
      p(`${role}.ext`),
      `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=${eku}\n`,
    );
    await run('openssl', [
      'x509', '-req', '-in', p(`${role}.csr`), '-CA', p('ca.crt'), '-CAkey', p('ca.key'),
      '-set_serial', '0x' + randomBytes(8).toString('hex'),
      '-days', '2', '-extfile', p(`${role}.ext`), '-out', p(`${role}.crt`),
    ]);
  }
}

/**
 * Point-to-point TLS (no --server/--client pool mode): a is --tls-server, b is
 * --tls-client, `--ifconfig` sets the inner /32 peer addresses, AES-256-GCM data
 * channel, userspace data path (--disable-dco) like the other peers.
 */
export const openvpn: PeerSetup = (ns) =>
  withTeardown('openvpn', ns.workDir, async (ctx, t) => {
    requireBinaries('openvpn');
    await openvpnPki(ctx.dir);
    const p = (f: string): string => join(ctx.dir, f);
    const side = [
      { key: 'a', role: 'server', ns: ns.a, dev: `ov${t}a`, under: ns.underlayA, inner: OPENVPN_INNER.a },
      { key: 'b', role: 'client', ns: ns.b, dev: `ov${t}b`, under: ns.underlayB, inner: OPENVPN_INNER.b },
    ] as const;
    for (const [me, other] of [
      [side[0], side[1]],
      [side[1], side[0]],
    ] as const) {
      const args = [
        '--dev', me.dev, '--dev-type', 'tun',
        '--proto', 'udp',
        '--local', me.under, '--lport', String(OPENVPN_PORT),
        '--remote', other.under, '--rport', String(OPENVPN_PORT),
        me.role === 'server' ? '--tls-server' : '--tls-client',
        ...(me.role === 'server' ? ['--dh', 'none'] : []),
        '--ca', p('ca.crt'), '--cert', p(`${me.role}.crt`), '--key', p(`${me.role}.key`),
        '--remote-cert-tls', other.role,
        '--ifconfig', me.inner, other.inner,
        '--data-ciphers', OPENVPN_CIPHER, '--cipher', OPENVPN_CIPHER,
        '--disable-dco',
        '--keepalive', '5', '30',
        '--verb', '3',
      ];
      const d = startDaemon(`openvpn ${me.role} ${me.ns}`, me.ns, 'openvpn', args, p(`${me.key}.log`));
      ctx.daemons.push(d);
      ctx.links.push({ ns: me.ns, dev: me.dev });
      await waitExeced(d, 'openvpn');
    }
    await waitReady(
      'openvpn',
      [
        { ns: ns.a, addr: OPENVPN_INNER.b },
        { ns: ns.b, addr: OPENVPN_INNER.a },
      ],
      ctx.daemons,
    );
    return { innerA: OPENVPN_INNER.a, innerB: OPENVPN_INNER.b };
  });

/** All peers by name, in benchmark order. */
export const peers: Record<string, PeerSetup> = {
  veth: plainVeth,
  'wireguard-go': wireguardGo,
  nebula,
  openvpn,
  'nebula-relay': nebulaRelay,
};
