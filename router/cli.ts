#!/usr/bin/env node
// The `ntmobile` command: subcommands for the node daemon and its tools.

import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { decodeSockaddr, formatEndpoint } from '../protocol/endpoint.js';
import { type Engine } from './engine.js';
import { ConfigError, loadStaticConfig } from './static-config.js';
import { startStaticTunnel } from './static-tunnel.js';

const USAGE = `Usage: ntmobile <command> [options]

Commands:
  tunnel --config FILE   Bring up one node with static peers and keys (debugging, interop).
                         File format: docs/static-tunnel.md

Options for tunnel:
  --config FILE          The node's configuration (JSON).
  --stats FILE           Write counters and per-peer traffic as JSON to FILE every second.
  --verbose              Print what the node sets up.
  -h, --help             This help.

Signals: SIGINT/SIGTERM stop the node and remove its TUN device; SIGUSR1 prints counters.
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`ntmobile: ${message}\n`);
  process.exit(code);
}

function status(engine: Engine): object {
  return {
    counters: engine.counters.snapshot(),
    peers: [...engine.table.tunnels()].map((t) => ({
      name: t.name,
      endpoint: t.endpoint ? formatEndpoint(decodeSockaddr(t.endpoint, 0)) : null,
      ...t.stats,
    })),
  };
}

async function tunnel(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      stats: { type: 'string' },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (!values.config) fail('tunnel: --config FILE is required (see ntmobile --help)');
  const config = loadStaticConfig(values.config);
  const engine = await startStaticTunnel(config);
  const log = (msg: string) => values.verbose && process.stderr.write(`ntmobile: ${msg}\n`);
  log(`${config.tun.name} up (mtu ${config.tun.mtu}, ${config.tun.addresses.join(', ')}), udp port ${engine.socket.port}`);
  for (const p of config.peers) log(`peer ${p.name}: vips ${p.vips.join(', ')}, endpoint ${p.endpointText ?? '(learned)'}, ${p.suite}`);
  let statsTimer: NodeJS.Timeout | null = null;
  if (values.stats) {
    const path = values.stats;
    const write = () => writeFileSync(path, JSON.stringify(status(engine)));
    write();
    statsTimer = setInterval(write, 1000);
  }
  process.stdout.write(`ready ${config.tun.name} port ${engine.socket.port}\n`);
  const stop = () => {
    if (statsTimer) clearInterval(statsTimer);
    if (values.stats) writeFileSync(values.stats, JSON.stringify(status(engine)));
    engine.stop();
    log('stopped');
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(status(engine))}\n`));
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'tunnel':
      return tunnel(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      fail(`unknown command "${command}" (see ntmobile --help)`);
  }
}

main().catch((e: Error) => {
  if (e instanceof ConfigError) fail(`config: ${e.message}`);
  if ((e as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') fail(`${e.message} (see ntmobile --help)`);
  fail(e.message, 1);
});
