// Our own engine as a benchmark peer: `ntmobile tunnel` with a static pair of configurations in
// each namespace, in the same shape as the peers of bench/peers.ts.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type EspSuite } from '../protocol/esp.js';
import { CLI_PATH, staticPair } from '../lab/static-node.js';
import { pingOk } from './measure.js';
import { type PeerSetup } from './peers.js';

export const NTM_INNER = { a: '10.204.0.1', b: '10.204.0.2', prefix: 24 };

/** `cli`: the daemon's entry point (default dist/router/cli.js; the OpenWrt package's bundle, say). */
export function ntmobile(suite: EspSuite, extraArgs: string[] = [], cli = CLI_PATH): PeerSetup {
  return async (ns) => {
    const dir = join(ns.workDir, `ntmobile-${suite}`);
    mkdirSync(dir, { recursive: true });
    const pair = staticPair({
      suite,
      aVips: [`${NTM_INNER.a}/${NTM_INNER.prefix}`],
      bVips: [`${NTM_INNER.b}/${NTM_INNER.prefix}`],
      bEndpoint: `${ns.underlayB}:4500`,
      aEndpoint: `${ns.underlayA}:4500`,
    });
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const start = async (side: 'a' | 'b') => {
      const config = join(dir, `${side}.json`);
      writeFileSync(config, JSON.stringify(pair[side]), { mode: 0o600 });
      const log = openSync(join(dir, `${side}.log`), 'a');
      const child = spawn('ip', ['netns', 'exec', ns[side], process.execPath, ...extraArgs, cli, 'tunnel', '--config', config], {
        stdio: ['ignore', 'pipe', log],
        env,
        cwd: dir,
      });
      closeSync(log);
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        child.once('exit', (code) => reject(new Error(`ntmobile (${side}) exited with ${code}: ${readFileSync(join(dir, `${side}.log`), 'utf8')}`)));
      });
      return child;
    };
    const a = await start('a');
    const b = await start('b').catch((e) => {
      a.kill('SIGKILL');
      throw e;
    });
    const stop = async () => {
      for (const c of [a, b]) {
        if (c.exitCode !== null || c.signalCode !== null) continue;
        const gone = once(c, 'exit');
        c.kill('SIGTERM');
        await gone;
      }
    };
    if (!(await pingOk(ns.a, NTM_INNER.b, { count: 3 }))) {
      await stop();
      throw new Error(`ntmobile (${suite}): no inner ping; logs in ${dir}`);
    }
    return { name: `ntmobile-${suite}`, innerA: NTM_INNER.a, innerB: NTM_INNER.b, pids: [a.pid!, b.pid!], stop };
  };
}
