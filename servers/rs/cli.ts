#!/usr/bin/env node
// `ntmobile-rs serve --config FILE`: one Relay Server (docs/relay.md).

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseRsConfig, UsageError } from './config.js';
import { RelayServer } from './rs.js';

const USAGE = `Usage: ntmobile-rs serve --config FILE [--status FILE] [--verbose]

Runs a Relay Server: carries tunnels between nodes that cannot reach each other directly (both
behind NATs, IPv4 ↔ IPv6), and, with "gateway", tunnels to general hosts that run no NTMobile.
DCs make first contact over mutual TLS and direct routes here over UDP.

Config (JSON; relative paths are relative to the config file):
  name            a DNS name of its certificate, e.g. "rs1.relay.test"          (required)
  listen          { "address": "::", "port": 4600 }      UDP: punching, relaying, directions
  tls             { "port": 4601, "ca", "cert", "key" }  mutual TLS (first contact by DCs) (required)
  privateKeyFile  static X25519 key, made on first start (0600), e.g. "rs.key" (required)
  gateway         { "tun": "ntmrs0", "mtu": 1400, "nftTable": "ntmobile_rs", "allowPrivate": false }
                  optional: terminate tunnels for general hosts (TUN, nftables, IP forwarding);
                  allowPrivate: also forward to private ranges (RFC 1918, 100.64.0.0/10, ULA);
                  loopback, link-local, multicast, reserved and the RS's own addresses never
  quota           { "routeBytesPerSecond": 125000000, "nodeBytesPerSecond": 250000000,
                    "routeBytes": 0, "maxRoutes": 10000, "maxRoutesPerNode": 256 }  (0 bytes: unlimited)
  idleSeconds     (120) a route or gateway tunnel with no traffic or keepalive for this long ends

Options:
  --status FILE   write counters, routes, DC keys and gateway tunnels as JSON to FILE every second
  --verbose       print the protocol sequence to stderr
Signals: SIGINT/SIGTERM stop (and remove what was set up); SIGUSR1 prints the status.
`;

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (command !== 'serve') throw new UsageError(`unknown command "${command}" (see ntmobile-rs --help)`);
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string' }, status: { type: 'string' }, verbose: { type: 'boolean', default: false } }, strict: true });
  if (!values.config) throw new UsageError('serve: --config FILE is required');
  let text: string;
  try {
    text = readFileSync(values.config, 'utf8');
  } catch (e) {
    throw new UsageError(`${values.config}: ${(e as Error).message}`);
  }
  const config = { ...parseRsConfig(text, dirname(resolve(values.config))), verbose: values.verbose };
  const rs = new RelayServer(config);
  await rs.start();
  process.stdout.write(`ready ${config.name} udp ${rs.port} tls ${rs.tlsPort}${config.gateway ? ` gateway ${config.gateway.tun}` : ''}\n`);
  const writeStatus = (): void => {
    if (values.status) writeFileSync(values.status, JSON.stringify(rs.status()));
  };
  const timer = values.status ? setInterval(writeStatus, 1000) : null;
  writeStatus();
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    if (timer) clearInterval(timer);
    writeStatus();
    void rs.stop().then(
      () => process.exit(0),
      (e: Error) => {
        process.stderr.write(`ntmobile-rs: stop: ${e.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(rs.status())}\n`));
}

main().catch((e: Error) => {
  process.stderr.write(`ntmobile-rs: ${e.message}\n`);
  process.exit(e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1);
});
