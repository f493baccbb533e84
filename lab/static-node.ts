// Runs `ntmobile tunnel` nodes inside lab hosts: makes a matching pair of static configurations
// with fresh keys, starts the daemon in a host's namespace, waits for it to be ready, and reads its
// counters. Shared by the demo, the end-to-end tests and the benchmarks.

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ChildProcess } from 'node:child_process';
import { type EspSuite } from '../protocol/esp.js';
import { type Host, type Lab } from './lab.js';
import { startProgram } from './program.js';

export const CLI_PATH = fileURLToPath(new URL('../router/cli.js', import.meta.url));

export interface SaKeys {
  spi: number;
  key: string;
  salt: string;
}

/** One side of a static pair, in the JSON shape of docs/static-tunnel.md. */
export interface StaticNodeConfig {
  tun: { name: string; mtu: number; addresses: string[] };
  listen: { address: string; port: number };
  peers: {
    name: string;
    vips: string[];
    endpoint?: string;
    keepalive?: number;
    suite: EspSuite;
    outbound: SaKeys;
    inbound: SaKeys;
  }[];
}

export interface PairOptions {
  suite: EspSuite;
  /** VIPs with prefix lengths, e.g. ['10.123.0.1/24', 'fd7a:6e74::1/64'] */
  aVips: string[];
  bVips: string[];
  /** B's endpoint as A sees it ("198.18.2.10:4500"); A's endpoint is learned by B unless given. */
  bEndpoint: string;
  aEndpoint?: string;
  port?: number;
  /** keepalive period A → B (A behind a NAT) */
  keepalive?: number;
  mtu?: number;
}

function sa(suite: EspSuite): SaKeys {
  return {
    spi: 0x1000 + randomBytes(2).readUInt16BE(0),
    key: randomBytes(suite === 'aes-gcm' ? 16 : 32).toString('hex'),
    salt: randomBytes(4).toString('hex'),
  };
}

/** Two configurations that talk to each other: A's outbound SA is B's inbound and the other way. */
export function staticPair(o: PairOptions): { a: StaticNodeConfig; b: StaticNodeConfig } {
  const ab = sa(o.suite);
  const ba = { ...sa(o.suite), spi: ab.spi + 1 };
  const bare = (vips: string[]) => vips.map((v) => v.split('/')[0]!);
  const port = o.port ?? 4500;
  const mtu = o.mtu ?? 1400;
  return {
    a: {
      tun: { name: 'ntm0', mtu, addresses: o.aVips },
      listen: { address: '::', port },
      peers: [{ name: 'b', vips: bare(o.bVips), endpoint: o.bEndpoint, keepalive: o.keepalive ?? 0, suite: o.suite, outbound: ab, inbound: ba }],
    },
    b: {
      tun: { name: 'ntm0', mtu, addresses: o.bVips },
      listen: { address: '::', port },
      peers: [{ name: 'a', vips: bare(o.aVips), ...(o.aEndpoint ? { endpoint: o.aEndpoint } : {}), suite: o.suite, outbound: ba, inbound: ab }],
    },
  };
}

export interface RunningNode {
  host: Host;
  process: ChildProcess;
  configPath: string;
  statsPath: string;
  /** The daemon's counters and per-peer stats, as last written (once a second and at exit). */
  stats(): { counters: Record<string, number>; peers: Record<string, unknown>[] };
  stop(): Promise<void>;
}

/** Starts `ntmobile tunnel` in host's namespace and resolves once it printed "ready". */
export async function startNode(lab: Lab, host: Host, config: StaticNodeConfig, tag = 'ntmobile'): Promise<RunningNode> {
  const configPath = path.join(lab.logDir, `${host.name}-${tag}.json`);
  const statsPath = path.join(lab.logDir, `${host.name}-${tag}-stats.json`);
  writeFileSync(configPath, JSON.stringify(config, null, 2), { mode: 0o600 });
  const program = await startProgram(lab, host, CLI_PATH, ['tunnel', '--config', configPath, '--stats', statsPath, '--verbose'], { tag, timeoutMs: 15_000 });
  return {
    host,
    process: program.process,
    configPath,
    statsPath,
    stats: () => JSON.parse(readFileSync(statsPath, 'utf8')),
    stop: () => program.stop(),
  };
}
