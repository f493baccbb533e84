#!/usr/bin/env node
// `ntmobile-dc serve --config FILE`: one Direction Coordinator. `status` prints what it holds.

import { readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { isDnsName } from '../../protocol/control.js';
import { DC_DEFAULTS, DirectionCoordinator, type DcConfig } from './dc.js';

const USAGE = `Usage: ntmobile-dc serve --config FILE [--status FILE] [--verbose]

Runs a Direction Coordinator: registration of its zone's nodes, the zone's authoritative DNS,
route direction, Key Distribution from the AS (mutual TLS).

Config (JSON):
  zone            the DNS zone this DC serves, e.g. "fleet1.test"                (required)
  nsName          its host name, answered as the zone's NS, e.g. "dc.fleet1.test" (required)
  publicAddress   the address nodes, DCs and the AS reach it at (NS glue)        (required)
  listen          { "address": "::", "port": 4500 }       UDP control port
  tls             { "port": 4501, "ca", "cert", "key" }   mutual TLS (AS, other DCs)
  dns             { "address", "port": 53 } or null       authoritative DNS for the zone
  pool            { "ipv4": "10.77.0.0/16", "ipv6": "fd4e:544d:1::/64" }   VIP pools
  state           state file (keys, VIPs, registrations; kept 0600)         (required)
  keepaliveSeconds (20), expireAfterKeepalives (3), routeLifetimeSeconds (3600)
  resolvers       DNS servers for finding other DCs by NS record (["198.18.0.53"])
  dc              fixed addresses of other zones' DCs: { "fleet2.test": "198.18.0.20" }

Options:
  --status FILE   write counters and registrations as JSON to FILE every second
  --verbose       print the protocol sequence to stderr
Signals: SIGINT/SIGTERM stop; SIGUSR1 prints the status.
`;

class UsageError extends Error {}

function obj(v: unknown, f: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UsageError(`${f}: want an object`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, k: string, f: string, def?: string): string {
  const v = o[k] ?? def;
  if (typeof v !== 'string' || !v) throw new UsageError(`${f}${k}: want a string${def === undefined ? ' (required)' : ''}`);
  return v;
}

function int(o: Record<string, unknown>, k: string, f: string, def: number, min: number, max: number): number {
  const v = o[k] ?? def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new UsageError(`${f}${k}: ${JSON.stringify(v)} is not an integer in ${min}..${max}`);
  return v;
}

export function parseDcConfig(text: string): DcConfig {
  let d: Record<string, unknown>;
  try {
    d = obj(JSON.parse(text), 'config');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`config: not valid JSON (${(e as Error).message})`);
  }
  const known = ['zone', 'nsName', 'publicAddress', 'listen', 'tls', 'dns', 'pool', 'state', 'keepaliveSeconds', 'expireAfterKeepalives', 'routeLifetimeSeconds', 'resolvers', 'dc'];
  for (const k of Object.keys(d)) if (!known.includes(k)) throw new UsageError(`${k}: unknown setting (known: ${known.join(', ')})`);
  const zone = str(d, 'zone', '');
  const nsName = str(d, 'nsName', '');
  if (!isDnsName(zone)) throw new UsageError(`zone: "${zone}" is not a lower-case DNS name`);
  if (!isDnsName(nsName)) throw new UsageError(`nsName: "${nsName}" is not a lower-case DNS name`);
  const publicAddress = str(d, 'publicAddress', '');
  if (!isIP(publicAddress)) throw new UsageError(`publicAddress: "${publicAddress}" is not an IP address`);
  const listen = obj(d.listen ?? {}, 'listen');
  const tls = obj(d.tls, 'tls');
  const pool = obj(d.pool ?? {}, 'pool');
  const dns = d.dns === null ? null : obj(d.dns ?? {}, 'dns');
  const resolvers = d.resolvers ?? [];
  if (!Array.isArray(resolvers) || resolvers.some((r) => typeof r !== 'string')) throw new UsageError('resolvers: want a list of addresses');
  const dc = obj(d.dc ?? {}, 'dc');
  for (const [z, a] of Object.entries(dc)) if (typeof a !== 'string' || !isIP(a)) throw new UsageError(`dc.${z}: want an IP address`);
  return {
    zone,
    nsName,
    publicAddress,
    listen: { address: str(listen, 'address', 'listen.', '::'), port: int(listen, 'port', 'listen.', 4500, 0, 65535) },
    tls: { port: int(tls, 'port', 'tls.', 4501, 0, 65535), caFile: str(tls, 'ca', 'tls.'), certFile: str(tls, 'cert', 'tls.'), keyFile: str(tls, 'key', 'tls.') },
    dns: dns === null ? null : { address: str(dns, 'address', 'dns.', publicAddress), port: int(dns, 'port', 'dns.', 53, 0, 65535) },
    pool: { ipv4: str(pool, 'ipv4', 'pool.', '10.77.0.0/16'), ipv6: str(pool, 'ipv6', 'pool.', 'fd4e:544d:1::/64') },
    statePath: str(d, 'state', ''),
    keepaliveSeconds: int(d, 'keepaliveSeconds', '', DC_DEFAULTS.keepaliveSeconds, 1, 3600),
    expireAfterKeepalives: int(d, 'expireAfterKeepalives', '', DC_DEFAULTS.expireAfterKeepalives, 1, 100),
    routeLifetimeSeconds: int(d, 'routeLifetimeSeconds', '', DC_DEFAULTS.routeLifetimeSeconds, 10, 86400 * 7),
    discovery: { resolvers: resolvers as string[], override: dc as Record<string, string> },
    peerControlPort: DC_DEFAULTS.peerControlPort,
    peerTlsPort: DC_DEFAULTS.peerTlsPort,
  };
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (command !== 'serve') throw new UsageError(`unknown command "${command}" (see ntmobile-dc --help)`);
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string' }, status: { type: 'string' }, verbose: { type: 'boolean', default: false } }, strict: true });
  if (!values.config) throw new UsageError('serve: --config FILE is required');
  let text: string;
  try {
    text = readFileSync(values.config, 'utf8');
  } catch (e) {
    throw new UsageError(`${values.config}: ${(e as Error).message}`);
  }
  const config = { ...parseDcConfig(text), verbose: values.verbose };
  const dc = new DirectionCoordinator(config);
  await dc.start();
  process.stdout.write(`ready ${config.zone} udp ${dc.port} tls ${dc.tlsPort}\n`);
  const writeStatus = (): void => {
    if (values.status) writeFileSync(values.status, JSON.stringify(dc.status()));
  };
  const timer = values.status ? setInterval(writeStatus, 1000) : null;
  writeStatus();
  const stop = (): void => {
    if (timer) clearInterval(timer);
    writeStatus();
    void dc.stop().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(dc.status())}\n`));
}

main().catch((e: Error) => {
  process.stderr.write(`ntmobile-dc: ${e.message}\n`);
  process.exit(e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1);
});
