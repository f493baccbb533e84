// The DC's JSON configuration (`ntmobile-dc serve --config FILE`, documented in docs/servers.md):
// every field checked, with an error that names it; unknown fields are refused so that a typo
// does not silently fall back to a default.

import { isIP } from 'node:net';
import { isDnsName } from '../../protocol/control.js';
import { RS_PORT, RS_TLS_PORT } from '../../protocol/discovery.js';
import { DC_DEFAULTS, type DcConfig } from './dc.js';
import { type RelayConfig } from './relays.js';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

function obj(v: unknown, f: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${f}: want an object`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, k: string, f: string, def?: string): string {
  const v = o[k] ?? def;
  if (typeof v !== 'string' || !v) throw new ConfigError(`${f}${k}: want a string${def === undefined ? ' (required)' : ''}`);
  return v;
}

function int(o: Record<string, unknown>, k: string, f: string, def: number, min: number, max: number): number {
  const v = o[k] ?? def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${f}${k}: ${JSON.stringify(v)} is not an integer in ${min}..${max}`);
  return v;
}

function unknownKeys(o: Record<string, unknown>, known: readonly string[], f: string): void {
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new ConfigError(`${f}${k}: unknown setting (known: ${known.join(', ')})`);
}

/** `relays`: the Relay Servers this DC may direct routes through (docs/relay.md). */
export function parseRelays(v: unknown): RelayConfig[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ConfigError('relays: want a list of { "name", "address", "address6", "port", "tlsPort" }');
  const out: RelayConfig[] = [];
  v.forEach((item, i) => {
    const f = `relays[${i}].`;
    const o = obj(item, `relays[${i}]`);
    unknownKeys(o, ['name', 'address', 'address6', 'port', 'tlsPort'], f);
    const name = str(o, 'name', f);
    if (!isDnsName(name)) throw new ConfigError(`${f}name: "${name}" is not a lower-case DNS name (it must be a DNS name in the RS's certificate)`);
    if (out.some((r) => r.name === name)) throw new ConfigError(`${f}name: "${name}" is listed twice`);
    const address = o.address === undefined || o.address === null ? null : o.address;
    const address6 = o.address6 === undefined || o.address6 === null ? null : o.address6;
    if (address !== null && (typeof address !== 'string' || isIP(address) !== 4)) throw new ConfigError(`${f}address: ${JSON.stringify(address)} is not an IPv4 address`);
    if (address6 !== null && (typeof address6 !== 'string' || isIP(address6) !== 6)) throw new ConfigError(`${f}address6: ${JSON.stringify(address6)} is not an IPv6 address`);
    if (address === null && address6 === null) throw new ConfigError(`relays[${i}] (${name}): want "address" (IPv4), "address6" (IPv6) or both`);
    out.push({ name, address, address6, port: int(o, 'port', f, RS_PORT, 1, 65535), tlsPort: int(o, 'tlsPort', f, RS_TLS_PORT, 1, 65535) });
  });
  return out;
}

export function parseDcConfig(text: string): DcConfig {
  let d: Record<string, unknown>;
  try {
    d = obj(JSON.parse(text), 'config');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`config: not valid JSON (${(e as Error).message})`);
  }
  unknownKeys(d, ['zone', 'nsName', 'publicAddress', 'listen', 'tls', 'dns', 'pool', 'state', 'keepaliveSeconds', 'expireAfterKeepalives', 'routeLifetimeSeconds', 'resolvers', 'dc', 'relays'], '');
  const zone = str(d, 'zone', '');
  const nsName = str(d, 'nsName', '');
  if (!isDnsName(zone)) throw new ConfigError(`zone: "${zone}" is not a lower-case DNS name`);
  if (!isDnsName(nsName)) throw new ConfigError(`nsName: "${nsName}" is not a lower-case DNS name`);
  const publicAddress = str(d, 'publicAddress', '');
  if (!isIP(publicAddress)) throw new ConfigError(`publicAddress: "${publicAddress}" is not an IP address`);
  const listen = obj(d.listen ?? {}, 'listen');
  const tls = obj(d.tls, 'tls');
  const pool = obj(d.pool ?? {}, 'pool');
  const dns = d.dns === null ? null : obj(d.dns ?? {}, 'dns');
  const resolvers = d.resolvers ?? [];
  if (!Array.isArray(resolvers) || resolvers.some((r) => typeof r !== 'string')) throw new ConfigError('resolvers: want a list of addresses');
  const dc = obj(d.dc ?? {}, 'dc');
  for (const [z, a] of Object.entries(dc)) if (typeof a !== 'string' || !isIP(a)) throw new ConfigError(`dc.${z}: want an IP address`);
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
    relays: parseRelays(d.relays),
  };
}
