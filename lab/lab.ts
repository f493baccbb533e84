// Namespace testbed: real networks out of Linux network namespaces, veth pairs, bridges and nftables.
//
// Every object a Lab makes is named after a short random run id, so that parallel runs never collide:
//   namespaces  ntm-<id>-<host>  and  ntm-<id>-br-<segment>
//   registry    /run/ntm-lab/<id>.json   (owner pid, namespaces; used by cleanup())
//   logs        /tmp/ntm-lab-<id>/<host>-<name>.log
// Interfaces are created directly inside their namespaces, so their names only need to be unique per
// namespace (and fit IFNAMSIZ: 15 characters).
// Teardown always happens: destroy(), Lab.withLab(), and process exit / SIGINT / SIGTERM / SIGHUP /
// uncaught exception handlers all kill the lab's processes and delete its namespaces.

import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { natRuleset, type NatType } from './nat.js';

export type { NatType } from './nat.js';

export const REGISTRY_DIR = process.env.NTM_LAB_REGISTRY ?? '/run/ntm-lab';
export const NS_PREFIX = 'ntm-';
const NETNS_ETC = '/etc/netns';
const ID_RE = /^[0-9a-f]{6}$/;
/**
 * The environment of programs run in lab hosts: ours, less NODE_OPTIONS, so that a test runner's
 * instrumentation (tap preloads its process tracker that way) does not ride along into the daemons
 * and tools under test.
 */
function programEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  return env;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export interface ExecOptions {
  /** do not throw on a non-zero exit code */
  allowFail?: boolean;
  /** written to the command's stdin */
  input?: string | Buffer;
  /** kill the command after this many ms (default 30 s) */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface SpawnOpts {
  /**
   * Where stdout/stderr go. A string: appended to <logDir>/<host>-<log>.log (the default, with the
   * command's basename). 'pipe': readable streams on the returned ChildProcess (stdin is a pipe too).
   * 'inherit': the lab process's own stdout/stderr. 'ignore': dropped.
   */
  log?: string | 'pipe' | 'inherit' | 'ignore';
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface HostOptions {
  /** net.ipv4.ip_forward and net.ipv6.conf.all.forwarding (default false) */
  forwarding?: boolean;
}

export interface LinkOptions {
  /** address(es) with prefix on a's end, e.g. '10.0.1.1/24' or ['10.0.1.1/24', 'fd00:1::1/64'] */
  aAddr?: string | string[];
  bAddr?: string | string[];
  /** interface names (default eth0, eth1, ... per host) */
  aName?: string;
  bName?: string;
  mtu?: number;
}

export interface AttachOptions {
  addr?: string | string[];
  /** interface name on the host (default eth<N>) */
  name?: string;
  /** add a default route via this gateway over the new interface (IPv4 or IPv6; or an array) */
  gateway?: string | string[];
  /** metric of that default route (lets a host keep two uplinks at once) */
  metric?: number;
  mtu?: number;
}

export interface MoveOptions {
  /** new address(es) of the moved interface; the old global addresses are flushed */
  addr?: string | string[];
  /** new default route(s) via this gateway over the interface; the old default routes over it are removed */
  gateway?: string | string[];
  metric?: number;
  /** when moving onto a Host (point to point): name and address(es) of the far end there */
  peerName?: string;
  peerAddr?: string | string[];
}

export interface NatOptions {
  type: NatType;
  /** outside (public) side */
  outside: { segment: Segment; addr: string | string[]; gateway?: string | string[]; name?: string };
  /** inside (private) side */
  inside: { segment: Segment; addr: string | string[]; name?: string };
  /** idle timeout of eim UDP mappings, seconds (default 120) */
  mappingTimeout?: number;
}

export interface LabOptions {
  /** keep the log directory after destroy() (also: env NTM_LAB_KEEP_LOGS=1) */
  keepLogs?: boolean;
  /** print progress lines to stderr */
  verbose?: boolean;
}

export interface WithLabOptions extends LabOptions {
  label?: string;
  /** when the body throws, print the tail of every log file to stderr first (default true) */
  dumpLogsOnError?: boolean;
}

export interface LabRecord {
  id: string;
  label: string;
  pid: number;
  keep: boolean;
  created: string;
  logDir: string;
  namespaces: string[];
  info?: unknown;
}

/** Error from a command run in a host: names the lab, the host, the command, its exit code and stderr. */
export class LabExecError extends Error {
  constructor(
    readonly host: string,
    readonly command: string,
    readonly result: ExecResult,
  ) {
    const err = result.stderr.trim() || result.stdout.trim();
    super(`${host}: '${command}' failed with exit code ${result.code}${err ? `: ${err}` : ''}`);
    this.name = 'LabExecError';
  }
}

function asList(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

function isV6(addr: string): boolean {
  return addr.includes(':');
}

function quoteArg(a: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

function checkName(name: string, what: string): void {
  if (!NAME_RE.test(name)) {
    throw new Error(`invalid ${what} name '${name}': use letters, digits, '_', '.', '-' (at most 32, starting with a letter or digit)`);
  }
}

function checkIfName(name: string): void {
  if (!IFNAME_RE.test(name)) throw new Error(`invalid interface name '${name}': 1-15 of letters, digits, '_', '.', '-'`);
}

/** Run a command in the root namespace (used for ip netns add/del and veth creation). */
function run(cmd: string, args: string[], opts: ExecOptions & { label?: string } = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? programEnv(), cwd: opts.cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${opts.label ?? 'lab'}: cannot run '${[cmd, ...args].map(quoteArg).join(' ')}': ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const res: ExecResult = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString() + (timedOut ? `\n(killed after ${opts.timeoutMs ?? 30_000} ms)` : ''),
        code: code ?? (signal ? 128 + (signalNumber(signal) ?? 0) : 1),
      };
      if (res.code !== 0 && !opts.allowFail) {
        reject(new LabExecError(opts.label ?? 'lab', [cmd, ...args].map(quoteArg).join(' '), res));
      } else resolve(res);
    });
    child.stdin!.on('error', () => {});
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

function signalNumber(sig: NodeJS.Signals): number | undefined {
  return os.constants.signals[sig];
}

function runSync(cmd: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Names of all network namespaces (ip netns list). */
export function listNamespaces(): string[] {
  const r = runSync('ip', ['netns', 'list']);
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n);
}

/** Kill every process inside a namespace, then delete it. Synchronous: usable from exit handlers. */
function removeNamespaceSync(ns: string): string | undefined {
  const pids = runSync('ip', ['netns', 'pids', ns]).stdout.split(/\s+/).filter(Boolean).map(Number);
  for (const pid of pids) {
    if (pid > 1 && pid !== process.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  // per-namespace files that `ip netns exec` binds over /etc (resolv.conf of a LAN host)
  fs.rmSync(path.join(NETNS_ETC, ns), { recursive: true, force: true });
  const r = runSync('ip', ['netns', 'del', ns]);
  if (r.code !== 0 && !/No such file|not found/i.test(r.stderr)) return `${ns}: ${r.stderr.trim()}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// process-wide teardown handlers

const liveLabs = new Set<Lab>();
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const lab of [...liveLabs]) lab.destroySync();
  });
  // observe crashes without changing Node's default crash behaviour; 'exit' follows
  process.on('uncaughtExceptionMonitor', () => {
    for (const lab of [...liveLabs]) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      for (const lab of [...liveLabs]) lab.destroySync();
      if (!Lab.exitOnSignal) return;
      // die of the signal as we would have without this handler. Other listeners (e.g. signal-exit,
      // which only re-raises when it is alone) get this tick to run, then the process exits.
      process.removeListener(sig, handler);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
      else setImmediate(() => process.exit(128 + (os.constants.signals[sig] ?? 0)));
    };
    process.on(sig, handler);
  }
}

// ---------------------------------------------------------------------------------------------------

interface IfaceInfo {
  /** where the other end of the veth is */
  peerNs: string;
  peerName: string;
  segment?: Segment;
  peerHost?: Host;
}

interface RouteSpec {
  dest: string;
  via?: string;
  dev?: string;
  metric?: number;
}

/** A network namespace acting as one machine. */
export class Host {
  /** interfaces of this host that are one end of a lab veth, by name */
  readonly ifaces = new Map<string, IfaceInfo>();
  private routes: RouteSpec[] = [];
  private nextIf = 0;

  constructor(
    readonly lab: Lab,
    readonly name: string,
    readonly ns: string,
  ) {}

  /** Run a command inside the host's namespace. Throws LabExecError on a non-zero exit unless allowFail. */
  exec(cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    this.lab.assertAlive();
    return run('ip', ['netns', 'exec', this.ns, cmd, ...args], { ...opts, label: `[lab ${this.lab.id}] host ${this.name}` }).catch(
      (e: unknown) => {
        if (e instanceof LabExecError) {
          throw new LabExecError(e.host, [cmd, ...args].map(quoteArg).join(' '), e.result);
        }
        throw e;
      },
    );
  }

  /** Run a shell command line inside the host (sh -c). */
  sh(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.exec('sh', ['-c', script], opts);
  }

  /**
   * Start a long-running process in the host, in its own process group, tracked by the lab and killed
   * on destroy(). Output goes to a log file by default (see SpawnOpts.log).
   */
  spawn(cmd: string, args: string[] = [], opts: SpawnOpts = {}): ChildProcess {
    return this.lab.spawnIn(this, cmd, args, opts);
  }

  /**
   * The host's DNS servers: `ip netns exec` binds /etc/netns/<ns>/resolv.conf over /etc/resolv.conf,
   * so every program run in the host (curl, getaddrinfo) asks these; removed with the namespace.
   */
  setResolvers(servers: string[]): void {
    const dir = path.join(NETNS_ETC, this.ns);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'resolv.conf'), `${servers.map((s) => `nameserver ${s}`).join('\n')}\noptions timeout:3 attempts:1\n`);
  }

  /** Apply a sysctl inside the host (e.g. 'net.ipv4.ip_forward', '1'). */
  async sysctl(settings: Record<string, string | number>): Promise<void> {
    const args = ['-q', '-w', ...Object.entries(settings).map(([k, v]) => `${k}=${v}`)];
    await this.exec('sysctl', args);
  }

  async setForwarding(on: boolean): Promise<void> {
    await this.sysctl({ 'net.ipv4.ip_forward': on ? 1 : 0, 'net.ipv6.conf.all.forwarding': on ? 1 : 0 });
  }

  /** Add address(es) ('10.0.0.1/24', 'fd00::1/64') to an interface. IPv6 addresses skip DAD. */
  async addAddr(dev: string, addrs: string | string[]): Promise<void> {
    for (const a of asList(addrs)) {
      if (!a.includes('/')) throw new Error(`host ${this.name}: address '${a}' needs a prefix length (e.g. ${a}/24)`);
      await this.exec('ip', isV6(a) ? ['-6', 'addr', 'add', a, 'dev', dev, 'nodad'] : ['addr', 'add', a, 'dev', dev]);
    }
  }

  /** Remove all global addresses from an interface. */
  async flushAddrs(dev: string): Promise<void> {
    await this.exec('ip', ['addr', 'flush', 'dev', dev, 'scope', 'global']);
  }

  /**
   * Add (or replace) a route: host.route('default', '10.0.1.1'), host.route('10.9.0.0/16', '10.0.1.254', 'eth1'),
   * host.route('default', undefined, 'eth0') for an on-link default. IPv6 is picked from the addresses.
   */
  async route(dest: string, via?: string, dev?: string, opts: { metric?: number } = {}): Promise<void> {
    const spec: RouteSpec = { dest, via, dev, metric: opts.metric };
    await this.exec('ip', this.routeArgs('replace', spec));
    this.routes = this.routes.filter((r) => !sameRoute(r, spec));
    this.routes.push(spec);
  }

  /** Delete a route added with route(). */
  async delRoute(dest: string, via?: string, dev?: string, opts: { metric?: number } = {}): Promise<void> {
    const spec: RouteSpec = { dest, via, dev, metric: opts.metric };
    await this.exec('ip', this.routeArgs('del', spec), { allowFail: true });
    this.routes = this.routes.filter((r) => !sameRoute(r, spec));
  }

  private routeArgs(verb: string, r: RouteSpec): string[] {
    const v6 = (r.via !== undefined && isV6(r.via)) || (r.dest !== 'default' && isV6(r.dest));
    const args = [v6 ? '-6' : '-4', 'route', verb, r.dest];
    if (r.via) args.push('via', r.via);
    if (r.dev) args.push('dev', r.dev);
    if (r.metric !== undefined) args.push('metric', String(r.metric));
    return args;
  }

  /** Administratively take an interface down (its routes go with it). */
  async linkDown(dev: string): Promise<void> {
    await this.exec('ip', ['link', 'set', dev, 'down']);
  }

  /** Bring an interface up again and restore the routes that were added over it with route()/attach(). */
  async linkUp(dev: string): Promise<void> {
    await this.exec('ip', ['link', 'set', dev, 'up']);
    for (const r of this.routes.filter((x) => x.dev === dev)) {
      await this.exec('ip', this.routeArgs('replace', r));
    }
  }

  /** Addresses of an interface (or all), without prefix length, global scope only. */
  async addrs(dev?: string): Promise<string[]> {
    const args = ['-j', 'addr', 'show', 'scope', 'global'];
    if (dev) args.push('dev', dev);
    const r = await this.exec('ip', args);
    const list = JSON.parse(r.stdout || '[]') as { addr_info?: { local?: string }[] }[];
    // ip -j lists filtered-out addresses as empty objects
    return list.flatMap((l) => (l.addr_info ?? []).flatMap((a) => (a.local ? [a.local] : [])));
  }

  /** ping -c <count>; resolves true when at least one reply came back. */
  async ping(addr: string, opts: { count?: number; timeoutS?: number } = {}): Promise<boolean> {
    const r = await this.exec(
      'ping',
      [isV6(addr) ? '-6' : '-4', '-n', '-q', '-c', String(opts.count ?? 1), '-i', '0.2', '-W', String(opts.timeoutS ?? 1), addr],
      { allowFail: true },
    );
    return r.code === 0;
  }

  /** Load an nftables rule set (nft -f -) in this host. */
  async nft(ruleset: string): Promise<void> {
    await this.exec('nft', ['-f', '-'], { input: ruleset });
  }

  /** @internal next free eth<N> name */
  allocIfName(): string {
    for (;;) {
      const n = `eth${this.nextIf++}`;
      if (!this.ifaces.has(n)) return n;
    }
  }

  /** @internal */
  forgetRoutesOver(dev: string, onlyDefault: boolean): void {
    this.routes = this.routes.filter((r) => !(r.dev === dev && (!onlyDefault || r.dest === 'default')));
  }
}

function sameRoute(a: RouteSpec, b: RouteSpec): boolean {
  return a.dest === b.dest && a.dev === b.dev && a.metric === b.metric && isV6(a.via ?? a.dest) === isV6(b.via ?? b.dest);
}

/** An L2 segment: a bridge (br0) in a namespace of its own; hosts attach to it with veth pairs. */
export class Segment {
  constructor(
    readonly lab: Lab,
    readonly name: string,
    readonly ns: string,
  ) {}
}

/** A NAT box made by lab.nat(). */
export interface Nat {
  host: Host;
  type: NatType;
  /** inside / outside interface names on the NAT host */
  inside: string;
  outside: string;
  /** outside addresses without prefix length (the address the outside world sees) */
  publicAddrs: string[];
  /** the nftables rule set that was loaded */
  ruleset: string;
}

/** One endpoint-independent mapping read from a NAT box (lab.natMappings). */
export interface NatMapping {
  externalPort: number;
  internalAddr: string;
  internalPort: number;
}

export class Lab {
  /**
   * After SIGINT/SIGTERM/SIGHUP has torn the labs down, end the process as the signal would have
   * (default true). Set false if the program handles these signals itself and exits on its own.
   */
  static exitOnSignal = true;

  readonly hosts = new Map<string, Host>();
  readonly segments = new Map<string, Segment>();
  readonly logDir: string;
  readonly recordPath: string;
  private readonly namespaces: string[] = [];
  private readonly children = new Set<ChildProcess>();
  /** process group ids of everything spawned (= the pids of the spawned leaders) */
  private readonly groups = new Set<number>();
  private destroyed = false;
  private destroying: Promise<void> | undefined;
  private portSeq = 0;
  private keep = false;
  private info: unknown;

  private constructor(
    readonly id: string,
    readonly label: string,
    private readonly opts: LabOptions,
  ) {
    this.logDir = path.join(process.env.NTM_LAB_LOGROOT ?? '/tmp', `ntm-lab-${id}`);
    this.recordPath = path.join(REGISTRY_DIR, `${id}.json`);
  }

  /**
   * Make a new lab with a fresh run id. The registry record is written (exclusively) before any
   * namespace exists, so cleanup() in another process can always tell whose namespaces they are.
   */
  static async create(label = '', opts: LabOptions = {}): Promise<Lab> {
    if (process.platform !== 'linux') throw new Error('the namespace lab needs Linux');
    if (process.getuid && process.getuid() !== 0) throw new Error('the namespace lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)');
    fs.mkdirSync(REGISTRY_DIR, { recursive: true });
    const existing = new Set(listNamespaces());
    for (let attempt = 0; attempt < 50; attempt++) {
      const id = randomBytes(3).toString('hex');
      if ([...existing].some((n) => n.startsWith(`${NS_PREFIX}${id}-`))) continue;
      const lab = new Lab(id, label, opts);
      try {
        fs.writeFileSync(lab.recordPath, JSON.stringify(lab.record()), { flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      fs.mkdirSync(lab.logDir, { recursive: true });
      liveLabs.add(lab);
      installHandlers();
      lab.progress(`lab ${id} created${label ? ` (${label})` : ''}`);
      return lab;
    }
    throw new Error('could not find a free lab id');
  }

  /** Run body with a fresh lab and destroy it afterwards, whatever happens (unless the body called keepAfterExit()). */
  static async withLab<T>(body: (lab: Lab) => Promise<T>, opts: WithLabOptions = {}): Promise<T> {
    const lab = await Lab.create(opts.label ?? '', opts);
    try {
      return await body(lab);
    } catch (e) {
      if (opts.dumpLogsOnError ?? true) lab.dumpLogs();
      throw e;
    } finally {
      if (!lab.kept) await lab.destroy();
    }
  }

  /** true after keepAfterExit() */
  get kept(): boolean {
    return this.keep;
  }

  get alive(): boolean {
    return !this.destroyed;
  }

  /** @internal */
  assertAlive(): void {
    if (this.destroyed) throw new Error(`lab ${this.id} is destroyed`);
  }

  /** Namespaces this lab created (in creation order). */
  get namespaceNames(): readonly string[] {
    return this.namespaces;
  }

  private record(): LabRecord {
    return {
      id: this.id,
      label: this.label,
      pid: process.pid,
      keep: this.keep,
      created: new Date().toISOString(),
      logDir: this.logDir,
      namespaces: this.namespaces,
      ...(this.info !== undefined ? { info: this.info } : {}),
    };
  }

  private saveRecord(): void {
    if (this.destroyed) return;
    fs.writeFileSync(this.recordPath, JSON.stringify(this.record(), null, 1));
  }

  /**
   * Leave the lab in place when this process exits (the CLI's `up --keep`): the exit handlers no
   * longer destroy it, cleanup() skips it, and `lab down <id>` removes it.
   */
  keepAfterExit(info?: unknown): void {
    this.keep = true;
    if (info !== undefined) this.info = info;
    liveLabs.delete(this);
    this.saveRecord();
  }

  /** Store free-form information (e.g. a topology's addresses) in the registry record. */
  setInfo(info: unknown): void {
    this.info = info;
    this.saveRecord();
  }

  private progress(msg: string): void {
    if (this.opts.verbose) process.stderr.write(`[lab ${this.id}] ${msg}\n`);
  }

  private async addNamespace(ns: string): Promise<void> {
    this.assertAlive();
    if (this.namespaces.includes(ns)) throw new Error(`lab ${this.id}: namespace ${ns} already exists`);
    // record first: if we die between the two steps, cleanup() still finds it
    this.namespaces.push(ns);
    this.saveRecord();
    await run('ip', ['netns', 'add', ns], { label: `[lab ${this.id}]` });
  }

  /** Make a host (a network namespace with lo up, IPv6 on, DAD off). */
  async host(name: string, opts: HostOptions = {}): Promise<Host> {
    checkName(name, 'host');
    if (this.hosts.has(name)) throw new Error(`lab ${this.id}: host '${name}' already exists`);
    if (name.startsWith('br-')) throw new Error(`host names may not start with 'br-' (reserved for segments)`);
    const ns = `${NS_PREFIX}${this.id}-${name}`;
    await this.addNamespace(ns);
    const h = new Host(this, name, ns);
    this.hosts.set(name, h);
    await h.exec('ip', ['link', 'set', 'lo', 'up']);
    await h.sysctl({
      'net.ipv6.conf.all.disable_ipv6': 0,
      'net.ipv6.conf.default.disable_ipv6': 0,
      'net.ipv6.conf.all.accept_dad': 0,
      'net.ipv6.conf.default.accept_dad': 0,
      'net.ipv6.conf.default.accept_ra': 0,
      // with two uplinks, a route over an interface without carrier is not used (failover by metric)
      'net.ipv4.conf.all.ignore_routes_with_linkdown': 1,
      'net.ipv6.conf.all.ignore_routes_with_linkdown': 1,
      'net.ipv4.ip_forward': opts.forwarding ? 1 : 0,
      'net.ipv6.conf.all.forwarding': opts.forwarding ? 1 : 0,
    });
    this.progress(`host ${name} (${ns})`);
    return h;
  }

  /** Make an L2 segment: a bridge br0 in namespace ntm-<id>-br-<name>. */
  async segment(name: string): Promise<Segment> {
    checkName(name, 'segment');
    if (this.segments.has(name)) throw new Error(`lab ${this.id}: segment '${name}' already exists`);
    const ns = `${NS_PREFIX}${this.id}-br-${name}`;
    await this.addNamespace(ns);
    const seg = new Segment(this, name, ns);
    this.segments.set(name, seg);
    const ip = (args: string[]): Promise<ExecResult> => run('ip', ['-n', ns, ...args], { label: `[lab ${this.id}] segment ${name}` });
    await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'], {
      label: `[lab ${this.id}] segment ${name}`,
    });
    await ip(['link', 'set', 'lo', 'up']);
    await ip(['link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0', 'mcast_snooping', '0']);
    await ip(['link', 'set', 'br0', 'up']);
    this.progress(`segment ${name} (${ns})`);
    return seg;
  }

  private async veth(aNs: string, aName: string, bNs: string, bName: string, mtu?: number): Promise<void> {
    checkIfName(aName);
    checkIfName(bName);
    const m = mtu !== undefined ? ['mtu', String(mtu)] : [];
    await run('ip', ['link', 'add', 'name', aName, 'netns', aNs, ...m, 'type', 'veth', 'peer', 'name', bName, 'netns', bNs, ...m], {
      label: `[lab ${this.id}] veth ${aNs}/${aName} <-> ${bNs}/${bName}`,
    });
  }

  /** Connect two hosts with a veth pair. */
  async link(a: Host, b: Host, opts: LinkOptions = {}): Promise<{ a: string; b: string }> {
    this.assertAlive();
    const aName = opts.aName ?? a.allocIfName();
    const bName = opts.bName ?? b.allocIfName();
    if (a.ifaces.has(aName)) throw new Error(`host ${a.name} already has interface ${aName}`);
    if (b.ifaces.has(bName)) throw new Error(`host ${b.name} already has interface ${bName}`);
    await this.veth(a.ns, aName, b.ns, bName, opts.mtu);
    a.ifaces.set(aName, { peerNs: b.ns, peerName: bName, peerHost: b });
    b.ifaces.set(bName, { peerNs: a.ns, peerName: aName, peerHost: a });
    await a.addAddr(aName, asList(opts.aAddr));
    await b.addAddr(bName, asList(opts.bAddr));
    await a.exec('ip', ['link', 'set', aName, 'up']);
    await b.exec('ip', ['link', 'set', bName, 'up']);
    this.progress(`link ${a.name}/${aName} <-> ${b.name}/${bName}`);
    return { a: aName, b: bName };
  }

  /** Attach a host to a segment with a new interface; returns the interface name. */
  async attach(host: Host, segment: Segment, opts: AttachOptions = {}): Promise<string> {
    this.assertAlive();
    const name = opts.name ?? host.allocIfName();
    if (host.ifaces.has(name)) throw new Error(`host ${host.name} already has interface ${name}`);
    const port = `p${this.portSeq++}`;
    await this.veth(host.ns, name, segment.ns, port, opts.mtu);
    host.ifaces.set(name, { peerNs: segment.ns, peerName: port, segment });
    await run('ip', ['-n', segment.ns, 'link', 'set', port, 'master', 'br0', 'up'], { label: `[lab ${this.id}] segment ${segment.name}` });
    await host.addAddr(name, asList(opts.addr));
    await host.exec('ip', ['link', 'set', name, 'up']);
    for (const gw of asList(opts.gateway)) await host.route('default', gw, name, { metric: opts.metric });
    this.progress(`attach ${host.name}/${name} -> ${segment.name}`);
    return name;
  }

  /**
   * Move a host's interface to another segment (or onto another host, point to point) at run time, like a
   * router whose uplink changes network: the far end of the veth moves (the host sees the carrier drop and
   * come back), the interface's global addresses and its default routes are replaced by opts.addr/gateway.
   */
  async moveUplink(host: Host, ifname: string, to: Segment | Host, opts: MoveOptions = {}): Promise<void> {
    this.assertAlive();
    const info = host.ifaces.get(ifname);
    if (!info) throw new Error(`host ${host.name} has no lab interface ${ifname}`);
    const label = `[lab ${this.id}] move ${host.name}/${ifname}`;
    if (to instanceof Segment) {
      let port = info.peerName;
      if (info.peerHost) {
        // the far end was on a host: give it a segment port name
        port = `p${this.portSeq++}`;
        info.peerHost.ifaces.delete(info.peerName);
        await run('ip', ['-n', info.peerNs, 'link', 'set', info.peerName, 'down'], { label });
        await run('ip', ['-n', info.peerNs, 'link', 'set', info.peerName, 'name', port], { label });
      }
      if (info.peerNs !== to.ns) {
        await run('ip', ['-n', info.peerNs, 'link', 'set', port, 'netns', to.ns], { label });
      }
      await run('ip', ['-n', to.ns, 'link', 'set', port, 'master', 'br0', 'up'], { label });
      host.ifaces.set(ifname, { peerNs: to.ns, peerName: port, segment: to });
    } else {
      const peerName = opts.peerName ?? to.allocIfName();
      checkIfName(peerName);
      if (to.ifaces.has(peerName)) throw new Error(`host ${to.name} already has interface ${peerName}`);
      if (info.peerHost) info.peerHost.ifaces.delete(info.peerName);
      await run('ip', ['-n', info.peerNs, 'link', 'set', info.peerName, 'down'], { label });
      // rename in place first (the name may be taken in the target otherwise), via a temporary unique name
      const tmp = `m${this.portSeq++}`;
      await run('ip', ['-n', info.peerNs, 'link', 'set', info.peerName, 'name', tmp], { label });
      await run('ip', ['-n', info.peerNs, 'link', 'set', tmp, 'netns', to.ns], { label });
      await run('ip', ['-n', to.ns, 'link', 'set', tmp, 'name', peerName], { label });
      to.ifaces.set(peerName, { peerNs: host.ns, peerName: ifname, peerHost: host });
      await to.addAddr(peerName, asList(opts.peerAddr));
      await run('ip', ['-n', to.ns, 'link', 'set', peerName, 'up'], { label });
      host.ifaces.set(ifname, { peerNs: to.ns, peerName, peerHost: to });
    }
    // the host side: new addresses, new default route
    if (opts.addr !== undefined) {
      await host.flushAddrs(ifname);
      await host.addAddr(ifname, asList(opts.addr));
    }
    if (opts.gateway !== undefined || opts.addr !== undefined) {
      for (const fam of ['-4', '-6']) {
        await host.exec('ip', [fam, 'route', 'flush', 'exact', fam === '-4' ? '0.0.0.0/0' : '::/0', 'dev', ifname], { allowFail: true });
      }
      host.forgetRoutesOver(ifname, true);
      for (const gw of asList(opts.gateway)) await host.route('default', gw, ifname, { metric: opts.metric });
    }
    this.progress(`moved ${host.name}/${ifname} -> ${to instanceof Segment ? `segment ${to.name}` : `host ${to.name}`}`);
  }

  /**
   * Carrier loss / return on a host's interface (the far end of the veth goes down / up), as when a radio
   * link drops: the host keeps its addresses and routes; routes over it are ignored while it has no carrier.
   */
  async carrier(host: Host, ifname: string, up: boolean): Promise<void> {
    const info = host.ifaces.get(ifname);
    if (!info) throw new Error(`host ${host.name} has no lab interface ${ifname}`);
    await run('ip', ['-n', info.peerNs, 'link', 'set', info.peerName, up ? 'up' : 'down'], {
      label: `[lab ${this.id}] carrier ${host.name}/${ifname}`,
    });
  }

  /** Load NAT rules (nftables, see lab/nat.ts) into an existing host forwarding between two of its interfaces. */
  async applyNat(host: Host, o: { type: NatType; inside: string; outside: string; mappingTimeout?: number }): Promise<string> {
    const ruleset = natRuleset(o.type, o);
    await host.setForwarding(true);
    await host.nft(ruleset);
    return ruleset;
  }

  /**
   * A NAT box: a forwarding host attached to an outside and an inside segment, with nftables NAT of the
   * given type ('eim': endpoint-independent mapping and filtering; 'symmetric': endpoint-dependent
   * mapping, address-and-port-dependent filtering). Hosts on the inside use the inside address as gateway.
   */
  async nat(name: string, o: NatOptions): Promise<Nat> {
    const host = await this.host(name, { forwarding: true });
    const outside = await this.attach(host, o.outside.segment, {
      name: o.outside.name ?? 'wan',
      addr: o.outside.addr,
      gateway: o.outside.gateway,
    });
    const inside = await this.attach(host, o.inside.segment, { name: o.inside.name ?? 'lan', addr: o.inside.addr });
    const ruleset = await this.applyNat(host, { type: o.type, inside, outside, mappingTimeout: o.mappingTimeout });
    this.progress(`nat ${name} (${o.type})`);
    return {
      host,
      type: o.type,
      inside,
      outside,
      publicAddrs: asList(o.outside.addr).map((a) => a.split('/')[0]!),
      ruleset,
    };
  }

  /** Current endpoint-independent UDP mappings of an 'eim' NAT box. */
  async natMappings(nat: Nat): Promise<NatMapping[]> {
    if (nat.type !== 'eim') return [];
    const r = await nat.host.exec('nft', ['-j', 'list', 'map', 'ip', 'ntm_nat', 'eim_in']);
    const j = JSON.parse(r.stdout) as { nftables: Record<string, unknown>[] };
    const out: NatMapping[] = [];
    for (const item of j.nftables) {
      const map = item['map'] as { elem?: unknown[] } | undefined;
      for (const el of map?.elem ?? []) {
        // [ key, { concat: [addr, port] } ]  or  [ { elem: { val: key, ... } }, { concat: [...] } ]
        const [k, v] = el as [unknown, { concat: [string, number] }];
        const key = typeof k === 'number' ? k : ((k as { elem: { val: number } }).elem.val);
        out.push({ externalPort: key, internalAddr: v.concat[0], internalPort: v.concat[1] });
      }
    }
    return out;
  }

  /** @internal */
  spawnIn(host: Host, cmd: string, args: string[], opts: SpawnOpts): ChildProcess {
    this.assertAlive();
    const mode = opts.log ?? path.basename(cmd);
    let stdio: SpawnOptions['stdio'];
    let fd: number | undefined;
    if (mode === 'pipe') stdio = ['pipe', 'pipe', 'pipe'];
    else if (mode === 'inherit') stdio = ['ignore', 'inherit', 'inherit'];
    else if (mode === 'ignore') stdio = 'ignore';
    else {
      const safe = mode.replace(/[^A-Za-z0-9_.-]/g, '_');
      fd = fs.openSync(path.join(this.logDir, `${host.name}-${safe}.log`), 'a');
      stdio = ['ignore', fd, fd];
    }
    const child = spawn('ip', ['netns', 'exec', host.ns, cmd, ...args], {
      stdio,
      detached: true, // own process group: destroy() kills the whole group
      env: opts.env ?? programEnv(),
      cwd: opts.cwd,
    });
    if (fd !== undefined) fs.closeSync(fd);
    this.children.add(child);
    if (child.pid !== undefined) this.groups.add(child.pid);
    child.on('exit', () => this.children.delete(child));
    child.on('error', () => this.children.delete(child));
    return child;
  }

  /** Paths of this lab's log files. */
  logFiles(): string[] {
    try {
      return fs.readdirSync(this.logDir).map((f) => path.join(this.logDir, f));
    } catch {
      return [];
    }
  }

  /** Print the last lines of every log file to stderr. */
  dumpLogs(lines = 30): void {
    for (const f of this.logFiles()) {
      try {
        const text = fs.readFileSync(f, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
        if (text) process.stderr.write(`--- ${f} (last ${lines} lines)\n${text}\n`);
      } catch {
        /* ignore */
      }
    }
  }

  /** Signal the process group of every spawned process (its members may outlive the leader). */
  private killGroups(sig: NodeJS.Signals): void {
    for (const pgid of this.groups) {
      try {
        process.kill(-pgid, sig);
      } catch {
        /* group gone */
      }
    }
  }

  private finish(): void {
    const errors: string[] = [];
    for (const ns of [...this.namespaces].reverse()) {
      const e = removeNamespaceSync(ns);
      if (e) errors.push(e);
    }
    try {
      fs.rmSync(this.recordPath, { force: true });
    } catch {
      /* ignore */
    }
    const keepLogs = this.opts.keepLogs || process.env.NTM_LAB_KEEP_LOGS === '1';
    if (!keepLogs) fs.rmSync(this.logDir, { recursive: true, force: true });
    liveLabs.delete(this);
    if (errors.length) process.stderr.write(`[lab ${this.id}] teardown problems:\n  ${errors.join('\n  ')}\n`);
    this.progress(`destroyed${keepLogs ? `; logs kept in ${this.logDir}` : ''}`);
  }

  /**
   * Kill every process the lab started (SIGTERM to each process group, SIGKILL after 1 s; then anything
   * left inside the namespaces), delete every namespace, remove the registry record. Idempotent.
   */
  destroy(): Promise<void> {
    if (!this.destroying) {
      this.destroyed = true;
      this.destroying = (async () => {
        this.killGroups('SIGTERM');
        const deadline = Date.now() + 1000;
        while (this.children.size > 0 && Date.now() < deadline) await sleep(20);
        this.killGroups('SIGKILL');
        this.finish();
      })();
    }
    return this.destroying;
  }

  /** Synchronous destroy for exit and signal handlers (SIGKILL at once). Idempotent. */
  destroySync(): void {
    if (this.destroying) {
      // an async destroy is under way but the process is exiting: finish it now
      if (liveLabs.has(this)) {
        this.killGroups('SIGKILL');
        this.finish();
      }
      return;
    }
    this.destroyed = true;
    this.destroying = Promise.resolve();
    this.killGroups('SIGKILL');
    this.finish();
  }
}

// ---------------------------------------------------------------------------------------------------
// registry, cleanup of stale runs

export interface LabStatus extends LabRecord {
  /** 'running': owner alive; 'kept': left on purpose (up --keep); 'stale': owner dead */
  state: 'running' | 'kept' | 'stale';
  /** namespaces of this id that exist right now */
  present: string[];
}

function readRecords(): LabRecord[] {
  let files: string[] = [];
  try {
    files = fs.readdirSync(REGISTRY_DIR).filter((f) => /^[0-9a-f]{6}\.json$/.test(f));
  } catch {
    return [];
  }
  const out: LabRecord[] = [];
  for (const f of files) {
    try {
      out.push(JSON.parse(fs.readFileSync(path.join(REGISTRY_DIR, f), 'utf8')) as LabRecord);
    } catch {
      // half-written or garbage: treat as an owner-less record
      out.push({ id: f.slice(0, 6), label: '', pid: 0, keep: false, created: '', logDir: '', namespaces: [] });
    }
  }
  return out;
}

function idOfNamespace(ns: string): string | undefined {
  const m = /^ntm-([0-9a-f]{6})-/.exec(ns);
  return m?.[1];
}

/** All labs known to the registry, plus namespaces named like a lab's that no record owns (as 'stale'). */
export function listLabs(): LabStatus[] {
  const present = listNamespaces();
  const byId = new Map<string, string[]>();
  for (const ns of present) {
    const id = idOfNamespace(ns);
    if (id) byId.set(id, [...(byId.get(id) ?? []), ns]);
  }
  const out: LabStatus[] = [];
  for (const r of readRecords()) {
    const state = r.pid > 0 && pidAlive(r.pid) && !r.keep ? 'running' : r.keep ? 'kept' : 'stale';
    out.push({ ...r, state, present: byId.get(r.id) ?? [] });
    byId.delete(r.id);
  }
  for (const [id, nss] of byId) {
    out.push({ id, label: '(no record)', pid: 0, keep: false, created: '', logDir: '', namespaces: nss, state: 'stale', present: nss });
  }
  return out;
}

/** Remove one lab by id (its namespaces, the processes in them, its record and logs), whoever owns it. */
export function removeLab(id: string): string[] {
  if (!ID_RE.test(id)) throw new Error(`invalid lab id '${id}' (6 hex digits)`);
  const rec = readRecords().find((r) => r.id === id);
  const nss = new Set([...(rec?.namespaces ?? []), ...listNamespaces().filter((n) => idOfNamespace(n) === id)]);
  if (rec?.pid && rec.pid !== process.pid && pidAlive(rec.pid) && !rec.keep) {
    // a live owner: ask it to tear down itself first (its SIGTERM handler destroys the lab)
    try {
      process.kill(rec.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  const removed: string[] = [];
  for (const ns of nss) {
    if (!listNamespaces().includes(ns)) continue;
    const e = removeNamespaceSync(ns);
    if (e) throw new Error(`cannot remove namespace ${e}`);
    removed.push(ns);
  }
  fs.rmSync(path.join(REGISTRY_DIR, `${id}.json`), { force: true });
  fs.rmSync(rec?.logDir || path.join('/tmp', `ntm-lab-${id}`), { recursive: true, force: true });
  return removed;
}

/**
 * Remove stale labs: those whose owner process is gone (killed runs), and ntm-<id>-* namespaces that no
 * record owns. Labs of live processes are never touched; kept labs (up --keep) only with { all: true };
 * with { ids }, only those labs are considered.
 */
export function cleanup(opts: { all?: boolean; ids?: string[] } = {}): { removed: string[]; labs: string[] } {
  const removed: string[] = [];
  const labs: string[] = [];
  for (const l of listLabs()) {
    if (opts.ids && !opts.ids.includes(l.id)) continue;
    if (l.state === 'running') continue;
    if (l.state === 'kept' && !opts.all) continue;
    removed.push(...removeLab(l.id));
    labs.push(l.id);
  }
  return { removed, labs };
}
