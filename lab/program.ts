// Running one of our own programs (a server, a router daemon) in a lab host: spawned through the
// lab (so teardown kills it), its stderr kept in the lab's log directory, resolved once it prints
// its ready line, rejected with the end of its log if it exits or stays silent.

import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync } from 'node:fs';
import path from 'node:path';
import { type Host, type Lab } from './lab.js';

export interface Program {
  host: Host;
  process: ChildProcess;
  logFile: string;
  /** Everything the program wrote to stderr so far. */
  log(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** `nodeFlags` go to node before the script (e.g. the V8 heap flags a router runs the daemon with). */
export async function startProgram(lab: Lab, host: Host, script: string, args: string[], o: { tag: string; ready?: RegExp; timeoutMs?: number; nodeFlags?: string[] }): Promise<Program> {
  const logFile = path.join(lab.logDir, `${host.name}-${o.tag}.log`);
  const child = lab.spawnIn(host, process.execPath, [...(o.nodeFlags ?? []), script, ...args], { log: 'pipe' });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    appendFileSync(logFile, d);
  });
  let out = '';
  const ready = o.ready ?? /^ready /m;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${o.tag} in ${host.name}: not ready within ${o.timeoutMs ?? 20_000} ms:\n${err.slice(-3000)}`));
    }, o.timeoutMs ?? 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      appendFileSync(logFile, d);
      if (ready.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${o.tag} in ${host.name} exited with ${code} before it was ready:\n${err.slice(-3000)}`));
    });
  });
  return {
    host,
    process: child,
    logFile,
    log: () => err,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill(signal);
      await exited;
    },
  };
}
