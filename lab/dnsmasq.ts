// dnsmasq as the DNS server of a lab LAN, as on an OpenWrt router: per-domain forwarding
// (server=/domain/addr#port), optional upstreams and fixed records, every query logged.
//
// It reads nothing of the machine it runs on: its own conf file (--conf-file, so not
// /etc/dnsmasq.conf), no-resolv (not /etc/resolv.conf), no-hosts (not /etc/hosts), and it only ever
// asks the servers given here, which are addresses (never names) inside the lab. `.invalid` is
// answered locally (RFC 6761), which is also how startDnsmasq tells that it is up.
// The conf, log and pid files live in the lab's log directory (<logDir>/<host>-dnsmasq-<n>.*): they
// are shown by lab.dumpLogs() and removed with the lab. The process is spawned through the lab, so
// lab.destroy() and the lab's exit handlers kill it even when a test crashes before stop().

import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import type { Host } from './lab.js';

export interface DnsmasqOptions {
  /** addresses to answer on (port 53), e.g. ['192.168.2.1'] */
  listen: string[];
  /** per-domain forwarding: queries for domain and its subdomains go to server ('addr' or 'addr#port') */
  forward: { domain: string; server: string }[];
  /** servers for every other name ('addr' or 'addr#port'); none: other names are refused */
  upstream?: string[];
  /** fixed A/AAAA records, name → address (or addresses: one IPv4 and/or one IPv6) */
  hosts?: Record<string, string | string[]>;
  /** ms to wait until dnsmasq answers (default 5000) */
  startTimeoutMs?: number;
}

export interface Dnsmasq {
  readonly pid: number;
  readonly confFile: string;
  readonly logFile: string;
  /** SIGTERM, then SIGKILL after 2 s; resolves when the process is gone. Idempotent. */
  stop(): Promise<void>;
}

const DOMAIN_RE = /^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/;
const PROBE_NAME = 'ntm-lab-probe.invalid';
/** Asks one server for PROBE_NAME and prints the outcome: 'ENOTFOUND' means dnsmasq answered. */
const PROBE_SRC = `
const { Resolver } = require('node:dns').promises;
const r = new Resolver({ timeout: 300, tries: 1 });
r.setServers([process.argv[1]]);
r.resolve4(process.argv[2]).then(() => console.log('ANSWER'), (e) => console.log(e.code));
`;

function checkServer(field: string, server: string): string {
  const [addr, port, ...rest] = server.split('#');
  const portOk = port === undefined || (/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535);
  if (rest.length || !addr || !isIP(addr) || !portOk) {
    throw new Error(`dnsmasq: ${field}: "${server}" is not 'address' or 'address#port' (an IP address, not a name)`);
  }
  return server;
}

function checkDomain(field: string, domain: string): string {
  if (!DOMAIN_RE.test(domain)) throw new Error(`dnsmasq: ${field}: "${domain}" is not a domain name`);
  return domain;
}

/** The conf file text for opts (validated: every value is an address or a domain name). */
function dnsmasqConf(opts: DnsmasqOptions, files: { logFile: string; pidFile: string }): string {
  if (!opts.listen.length) throw new Error('dnsmasq: listen: want at least one address');
  const lines = [
    'keep-in-foreground',
    'user=root',
    `pid-file=${files.pidFile}`,
    `log-facility=${files.logFile}`,
    'log-queries',
    'no-resolv',
    'no-hosts',
    'bind-interfaces',
    'cache-size=0',
    'local=/invalid/',
  ];
  opts.listen.forEach((a, i) => {
    if (!isIP(a)) throw new Error(`dnsmasq: listen[${i}]: "${a}" is not an IP address`);
    lines.push(`listen-address=${a}`);
  });
  opts.forward.forEach((f, i) => {
    lines.push(`server=/${checkDomain(`forward[${i}].domain`, f.domain)}/${checkServer(`forward[${i}].server`, f.server)}`);
  });
  (opts.upstream ?? []).forEach((s, i) => lines.push(`server=${checkServer(`upstream[${i}]`, s)}`));
  for (const [name, addrs] of Object.entries(opts.hosts ?? {})) {
    checkDomain(`hosts["${name}"]`, name);
    const list = typeof addrs === 'string' ? [addrs] : addrs;
    if (list.length === 0) throw new Error(`dnsmasq: hosts["${name}"]: want at least one address`);
    for (const a of list) if (!isIP(a)) throw new Error(`dnsmasq: hosts["${name}"]: "${a}" is not an IP address`);
    // host-record takes at most one address of each family
    if (list.filter((a) => isIP(a) === 4).length > 1 || list.filter((a) => isIP(a) === 6).length > 1) {
      throw new Error(`dnsmasq: hosts["${name}"]: at most one IPv4 and one IPv6 address`);
    }
    lines.push(`host-record=${name},${list.join(',')}`);
  }
  return `${lines.join('\n')}\n`;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-10).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Start dnsmasq in a lab host; resolves once it answers a query on its first listen address. */
export async function startDnsmasq(host: Host, opts: DnsmasqOptions): Promise<Dnsmasq> {
  // the first free instance number of this host: files <host>-dnsmasq-<n>.{conf,log,pid}
  let n = 0;
  let base: string;
  for (;; n++) {
    base = path.join(host.lab.logDir, `${host.name}-dnsmasq-${n}`);
    try {
      fs.writeFileSync(`${base}.conf`, dnsmasqConf(opts, { logFile: `${base}.log`, pidFile: `${base}.pid` }), { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  const confFile = `${base}.conf`;
  const logFile = `${base}.log`;

  const child = host.spawn('dnsmasq', [`--conf-file=${confFile}`], { log: `dnsmasq-${n}` });
  const where = `host ${host.name}: dnsmasq (${confFile})`;
  if (child.pid === undefined) throw new Error(`${where} did not start`);
  const pid = child.pid;
  const stop = async (): Promise<void> => {
    child.kill('SIGTERM');
    if (!(await waitExit(child, 2000))) {
      child.kill('SIGKILL');
      await waitExit(child, 2000);
    }
  };

  const server = opts.listen[0]!;
  const deadline = Date.now() + (opts.startTimeoutMs ?? 5000);
  let last = '';
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${where} exited (${child.exitCode ?? child.signalCode}) before answering:\n${tail(logFile)}`);
    }
    const probe = await host.exec(process.execPath, ['-e', PROBE_SRC, server, PROBE_NAME], { allowFail: true });
    last = probe.stdout.trim() || probe.stderr.trim();
    if (last === 'ENOTFOUND') break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${where} did not answer on ${server} within ${opts.startTimeoutMs ?? 5000} ms (last probe: ${last}):\n${tail(logFile)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { pid, confFile, logFile, stop };
}
