// A lab host that is an OpenWrt router: the shared OpenWrt userland (real ubusd, procd, rpcd,
// uhttpd, uci, opkg, fw4, dnsmasq's init script; ../shared/openwrt-userland) started inside the
// host's network namespace, so that its fw4 tables and dnsmasq are that host's. Every command goes
// through the userland's run.sh, which runs the rootfs programs in their own PID namespace (its
// reboot paths must never reach this machine). The instance is named after the lab and removed
// (stopped, rootfs deleted) with it.

import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
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
  /** opkg install of a package file (postinst runs, as on a router). */
  install(ipk: string): Promise<RunResult>;
  /** What procd's services wrote to stdout/stderr (the system log on a router). */
  procdLog(): string;
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
  const log = path.join(OWRT_DIR, 'instances', instance, 'log');
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
    procdLog() {
      try {
        return readFileSync(path.join(log, 'procd.log'), 'utf8');
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
