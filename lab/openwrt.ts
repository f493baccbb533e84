// A lab host that is an OpenWrt router: the shared OpenWrt userland (real ubusd, procd, rpcd,
// uhttpd, uci, opkg, fw4, dnsmasq's init script; ../shared/openwrt-userland) started inside the
// host's network namespace, so that its fw4 tables and dnsmasq are that host's. Every command goes
// through the userland's run.sh, which runs the rootfs programs in their own PID namespace (its
// reboot paths must never reach this machine). The instance is named after the lab and removed
// (stopped, rootfs deleted) with it.

import { execFile } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiCall } from '../router/api.js';
import { type FleetRouter, type RouterSetup } from './fleet.js';
import { type Host, type Lab } from './lab.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

/** Where the userland's scripts are: $OWRT_USERLAND, or ../shared/openwrt-userland beside the repo. */
export function userlandDir(): string {
  const candidates = [process.env.OWRT_USERLAND, path.join(REPO, '../shared/openwrt-userland'), '/work/shared/openwrt-userland'].filter((p): p is string => !!p);
  const dir = candidates.find((d) => existsSync(path.join(d, 'run.sh')));
  if (dir === undefined) throw new Error(`the OpenWrt userland is missing (looked in ${candidates.join(', ')}; set OWRT_USERLAND)`);
  return dir;
}

/** The userland's build and instances (OWRT_DIR). */
export const OWRT_DIR = process.env.OWRT_DIR ?? '/var/tmp/openwrt-userland';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface OpenWrt {
  instance: string;
  host: Host;
  /** The instance's root file system on this machine. */
  root: string;
  /** A command inside the rootfs (run.sh exec): never throws, gives the exit code. */
  exec(args: string[], o?: { timeoutMs?: number }): Promise<RunResult>;
  /** A shell script inside the rootfs (ash). */
  sh(script: string, o?: { timeoutMs?: number }): Promise<RunResult>;
  /** Like sh, but a non-zero exit throws with the output. */
  run(script: string, o?: { timeoutMs?: number }): Promise<string>;
  /**
   * uci on the instance's config from this machine (the userland's own uci binary with its
   * config and save directories; no process inside the instance needed): never throws.
   */
  uci(args: string[]): Promise<RunResult>;
  /** ubus on the instance's ubusd from this machine (its own ubus CLI): never throws. */
  ubus(args: string[]): Promise<RunResult>;
  /** opkg install of a package file (postinst runs, as on a router). */
  install(ipk: string): Promise<RunResult>;
  /** The system log: what procd's services wrote to stdout/stderr (`logread` on a router). */
  syslog(): string;
  /** Stop every daemon of the instance and delete its rootfs. */
  remove(): Promise<void>;
}

function runSh(args: string[], env: Record<string, string>, timeoutMs: number, ns?: string): Promise<RunResult> {
  const [cmd, argv] = ns === undefined ? [path.join(userlandDir(), 'run.sh'), args] : ['ip', ['netns', 'exec', ns, 'env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), path.join(userlandDir(), 'run.sh'), ...args]];
  return new Promise((resolve) => {
    execFile(cmd, argv, { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 << 20 }, (e, stdout, stderr) => {
      const code = e === null ? 0 : typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 1;
      resolve({ stdout: String(stdout), stderr: String(stderr) + (e !== null && code === 1 && !stderr ? e.message : ''), code });
    });
  });
}

// OpenWrt's base-files define these in /lib/functions.sh; the userland's functions.sh is a subset
// without them, and every package built by the buildroot (ours too) calls them from its postinst
// and prerm. These do what base-files' do, for a package installed on a running system: run the
// package's own script, then its uci-defaults (deleted when they succeed) and enable + start its
// init scripts; prerm: the package's script, then disable + stop. Added only where missing.
export const BASE_FILES_SCRIPTS = `
default_postinst() {
	local pkgname="$(basename "\${1%.*}")" ret=0 i
	local filelist="/usr/lib/opkg/info/$pkgname.list"
	if [ -f "/usr/lib/opkg/info/$pkgname.postinst-pkg" ]; then
		( . "/usr/lib/opkg/info/$pkgname.postinst-pkg" ); ret=$?
	fi
	if grep -m1 -q -s "^/etc/uci-defaults/" "$filelist"; then
		for i in $(grep -s "^/etc/uci-defaults/" "$filelist"); do
			( [ -f "$i" ] && cd "$(dirname "$i")" && . "$i" ) && rm -f "$i"
		done
		uci commit
	fi
	for i in $(grep -s "^/etc/init.d/" "$filelist"); do
		[ "$PKG_UPGRADE" = 1 ] || "$i" enable
		"$i" start
	done
	return $ret
}
default_prerm() {
	local pkgname="$(basename "\${1%.*}")" ret=0 i
	if [ -f "/usr/lib/opkg/info/$pkgname.prerm-pkg" ]; then
		( . "/usr/lib/opkg/info/$pkgname.prerm-pkg" ); ret=$?
	fi
	for i in $(grep -s "^/etc/init.d/" "/usr/lib/opkg/info/$pkgname.list"); do
		[ "$PKG_UPGRADE" = 1 ] || "$i" disable
		"$i" stop
	done
	return $ret
}
`;

/** Adds BASE_FILES_SCRIPTS to an instance's /lib/functions.sh where they are missing. */
export function addBaseFilesScripts(root: string): void {
  const functions = path.join(root, 'lib/functions.sh');
  if (!readFileSync(functions, 'utf8').includes('default_postinst()')) appendFileSync(functions, BASE_FILES_SCRIPTS);
}

/** Where the instance's system log is written (rootfs path). */
const SYSLOG_FILE = 'tmp/log/messages';
/** The userland has no logd: busybox's syslogd under procd stands in for it. */
const SYSLOG_INIT = `#!/bin/sh /etc/rc.common
# The system log of the lab's OpenWrt userland (logd's place on a router).
START=12
USE_PROCD=1
start_service() {
	mkdir -p /tmp/log
	procd_open_instance
	procd_set_param command /bin/busybox syslogd -n -S -O /${SYSLOG_FILE}
	procd_close_instance
}
`;

/** One of the rootfs's uci/ubus binaries run here, with the rootfs's libraries (run.sh's owrt_uci/owrt_ubus). */
function hostTool(root: string, bin: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(path.join(root, bin), args, { env: { ...process.env, LD_LIBRARY_PATH: path.join(root, 'usr/lib') }, timeout: 30_000 }, (e, stdout, stderr) => {
      const code = e === null ? 0 : typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 1;
      resolve({ stdout: String(stdout), stderr: String(stderr), code });
    });
  });
}

/**
 * Starts an OpenWrt userland instance in a lab host's namespace. `bwrapArgs` add mounts for every
 * process of the instance (e.g. /dev/net/tun for a daemon that makes a TUN device).
 */
export async function startOpenWrt(lab: Lab, host: Host, o: { tag?: string; bwrapArgs?: string[]; httpPort?: number } = {}): Promise<OpenWrt> {
  const instance = `ntm-${lab.id}-${o.tag ?? host.name}`;
  const env: Record<string, string> = {
    OWRT_DIR,
    OWRT_INSTANCE: instance,
    OWRT_HTTP_PORT: String(o.httpPort ?? 8080),
    OWRT_HTTP_ADDR: '127.0.0.1',
    OWRT_BWRAP_ARGS: (o.bwrapArgs ?? []).join(' '),
  };
  const root = path.join(OWRT_DIR, 'instances', instance, 'root');
  const started = await runSh(['start'], env, 60_000, host.ns);
  const owrt: OpenWrt = {
    instance,
    host,
    root,
    exec: (args, x = {}) => runSh(['exec', ...args], env, x.timeoutMs ?? 60_000),
    sh: (script, x = {}) => runSh(['exec', 'sh', '-c', script], env, x.timeoutMs ?? 60_000),
    async run(script, x = {}) {
      const r = await owrt.sh(script, x);
      if (r.code !== 0) throw new Error(`openwrt ${instance}: \`${script}\` exited with ${r.code}:\n${r.stdout}${r.stderr}`);
      return r.stdout;
    },
    install: (ipk) => runSh(['install', ipk], env, 120_000),
    uci: (args) => hostTool(root, 'usr/bin/uci', ['-c', path.join(root, 'etc/config'), '-t', path.join(root, 'tmp/.uci'), ...args]),
    ubus: (args) => hostTool(root, 'usr/bin/ubus', ['-s', path.join(root, 'tmp/run/ubus/ubus.sock'), ...args]),
    syslog() {
      try {
        return readFileSync(path.join(root, SYSLOG_FILE), 'utf8');
      } catch {
        return '';
      }
    },
    async remove() {
      await runSh(['stop'], env, 30_000);
      rmSync(path.join(OWRT_DIR, 'instances', instance), { recursive: true, force: true });
    },
  };
  if (started.code !== 0) {
    await owrt.remove();
    throw new Error(`openwrt ${instance}: run.sh start failed (${started.code}):\n${started.stdout}${started.stderr}`);
  }
  addBaseFilesScripts(root);
  // A system log, as logd is on a router: procd sends its services' stdout/stderr to syslog
  // (/dev/log in procd's own mount namespace, so the logger must be one of procd's services).
  writeFileSync(path.join(root, 'etc/init.d/log'), SYSLOG_INIT, { mode: 0o755 });
  const logStarted = await owrt.sh('/etc/init.d/log enable && /etc/init.d/log start');
  if (logStarted.code !== 0) {
    await owrt.remove();
    throw new Error(`openwrt ${instance}: the system log did not start: ${logStarted.stdout}${logStarted.stderr}`);
  }
  return owrt;
}

/** Instances of labs that no longer exist (a killed run): stopped and deleted by `lab cli cleanup`. */
export async function removeStaleInstances(liveLabIds: Set<string>): Promise<string[]> {
  const dir = path.join(OWRT_DIR, 'instances');
  if (!existsSync(dir)) return [];
  const { readdirSync } = await import('node:fs');
  const gone: string[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^ntm-([0-9a-f]{6})-/.exec(name);
    if (m === null || liveLabIds.has(m[1]!)) continue;
    await runSh(['stop'], { OWRT_DIR, OWRT_INSTANCE: name }, 30_000);
    rmSync(path.join(dir, name), { recursive: true, force: true });
    gone.push(name);
  }
  return gone;
}

/** Polls `check` until it returns a value (not undefined) or the deadline passes. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface OpenWrtRouter {
  owrt: OpenWrt;
  router: FleetRouter;
  /** procd's pid of the daemon (null: not running). */
  procdPid(): Promise<number | null>;
}

/**
 * A fleet router as an OpenWrt router (lab/fleet.ts `external`): the userland in the router's
 * namespace, the .ipk installed by opkg (postinst, uci-defaults), the lab's devices behind the
 * logical interfaces lan and wan and in fw4's zones, the router's account, key and CA in UCI and
 * /etc/ntmobile, the service enabled and started by procd, dnsmasq (OpenWrt's init script)
 * answering the LAN. Resolves once the daemon is registered.
 */
export async function openwrtRouter(lab: Lab, ipk: string, setup: RouterSetup, o: { httpPort?: number } = {}): Promise<OpenWrtRouter> {
  const owrt = await startOpenWrt(lab, setup.host, { bwrapArgs: ['--dev-bind', '/dev/net/tun', '/dev/net/tun'], ...(o.httpPort !== undefined ? { httpPort: o.httpPort } : {}) });
  try {
    const installed = await owrt.install(ipk);
    if (installed.code !== 0) throw new Error(`opkg install ${ipk}: exit ${installed.code}\n${installed.stdout}${installed.stderr}`);
    // The key bound to the account at the AS, and the operator's CA.
    mkdirSync(path.join(owrt.root, 'etc/ntmobile'), { recursive: true, mode: 0o700 });
    copyFileSync(setup.keyFile, path.join(owrt.root, 'etc/ntmobile/node.key'));
    copyFileSync(setup.caFile, path.join(owrt.root, 'etc/ntmobile/ca.pem'));
    // What netifd would know on a router: the lab's devices behind the logical interfaces, and
    // fw4's zones on them (without netifd, fw4 takes zone devices only from UCI).
    await owrt.run(
      [
        'uci set network.lan=interface',
        `uci set network.lan.device=${setup.lanInterface}`,
        'uci set network.wan=interface',
        'uci set network.wan.device=eth0',
        'uci commit network',
        `uci add_list firewall.@zone[0].device=${setup.lanInterface}`,
        'uci add_list firewall.@zone[1].device=eth0',
        'uci commit firewall',
        '/etc/init.d/firewall enable',
        '/etc/init.d/firewall start',
      ].join(' && '),
    );
    const list = (opt: string, values: string[]): string => [`uci -q delete ntmobile.main.${opt}`, ...values.map((v) => `uci add_list ntmobile.main.${opt}='${v}'`)].join('; ');
    await owrt.run(
      [
        'uci set ntmobile.main.enabled=1',
        `uci set ntmobile.main.name='${setup.name}'`,
        `uci set ntmobile.main.email='${setup.email}'`,
        `uci set ntmobile.main.password='${setup.password}'`,
        `uci set ntmobile.main.as_url='${setup.asUrl}'`,
        `uci set ntmobile.main.suite='${setup.suite}'`,
        'uci set ntmobile.main.log_level=debug',
        list('lan', ['lan']),
        list('uplink', ['wan']),
        list('domain', setup.domains),
        list('via_relay', setup.viaRelay),
        list('resolver', setup.resolvers),
        ...setup.publish.map((p) => `uci add ntmobile publish >/dev/null; uci set ntmobile.@publish[-1].name='${p.name}'; uci set ntmobile.@publish[-1].ip='${p.address}'`),
        ...Object.entries(setup.dc).map(([zone, address]) => `uci add ntmobile dc >/dev/null; uci set ntmobile.@dc[-1].zone='${zone}'; uci set ntmobile.@dc[-1].address='${address}'`),
        'uci commit ntmobile',
      ].join('; '),
    );
    const start = await owrt.sh('/etc/init.d/ntmobile enable && /etc/init.d/ntmobile start && /etc/init.d/dnsmasq enable && /etc/init.d/dnsmasq start');
    const socket = path.join(owrt.root, 'tmp/run/ntmobile.sock');
    const api = (cmd: string, args: Record<string, unknown> = {}): Promise<unknown> => apiCall(socket, cmd, args, 10_000);
    await waitFor(`${setup.name} (OpenWrt) registered`, 30_000, async () => ((await api('status')) as { state: string }).state === 'ready' || undefined).catch((e: Error) => {
      throw new Error(`${e.message}\n--- /etc/init.d/ntmobile start (exit ${start.code}):\n${start.stdout}${start.stderr}\n--- procd log:\n${owrt.syslog().slice(-3000)}`);
    });
    const procdPid = async (): Promise<number | null> => {
      const r = await owrt.ubus(['call', 'service', 'list', '{"name":"ntmobile"}']);
      const main = (JSON.parse(r.stdout || '{}') as { ntmobile?: { instances?: { main?: { pid?: number; running?: boolean } } } }).ntmobile?.instances?.main;
      return main?.running ? (main.pid ?? null) : null;
    };
    const router: FleetRouter = {
      host: setup.host,
      name: setup.name,
      // procd owns the daemon: stopped through the init script, not as a lab program
      program: {
        host: setup.host,
        process: null as never,
        logFile: path.join(owrt.root, SYSLOG_FILE),
        log: () => owrt.syslog(),
        stop: async () => void (await owrt.run('/etc/init.d/ntmobile stop')),
      },
      configPath: '/etc/config/ntmobile',
      socket,
      api,
    };
    return { owrt, router, procdPid };
  } catch (e) {
    await owrt.remove();
    throw e;
  }
}
