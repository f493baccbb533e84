// The DC's JSON configuration (`ntmobile-dc serve --config FILE`, documented in docs/servers.md):
// every field checked, with an error that names it; unknown fields are refused at every depth so
// that a typo does not silently fall back to a default; relative paths are taken from the config
// file's folder (`base`).

import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { isDnsName } from '../../protocol/control.js';
import { NS_PORT, NS_TLS_PORT, RS_PORT, RS_TLS_PORT } from '../../protocol/discovery.js';
import { bool, ConfigError, int, known as unknownKeys, obj, parseJsonObject, str } from '../../protocol/config.js';
import { DC_DEFAULTS, type DcConfig } from './dc.js';
import { type NsConfig } from './ns.js';
import { type RelayConfig } from './relays.js';

export { ConfigError } from '../../protocol/config.js';

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

/** `ns`: the Notification Server that wakes nodes in MQTT mode (docs/ns.md); absent or null: none. */
export function parseNs(v: unknown, keepaliveSeconds: number): NsConfig | null {
  if (v === undefined || v === null) return null;
  const o = obj(v, 'ns');
  unknownKeys(o, ['name', 'address', 'port', 'tlsPort', 'maxKeepaliveSeconds'], 'ns.');
  const name = str(o, 'name', 'ns.');
  if (!isDnsName(name)) throw new ConfigError(`ns.name: "${name}" is not a lower-case DNS name (it must be a DNS name in the NS's certificate)`);
  const address = str(o, 'address', 'ns.');
  if (!isIP(address)) throw new ConfigError(`ns.address: "${address}" is not an IP address`);
  return {
    name,
    address,
    port: int(o, 'port', 'ns.', NS_PORT, 1, 65535),
    tlsPort: int(o, 'tlsPort', 'ns.', NS_TLS_PORT, 1, 65535),
    maxKeepaliveSeconds: int(o, 'maxKeepaliveSeconds', 'ns.', 1800, keepaliveSeconds, 65535),
  };
}

/** `general`: how general hosts' addresses are screened before an RS gets them (docs/servers.md). */
export function parseGeneral(v: unknown): { allowPrivate: boolean } {
  const o = obj(v ?? {}, 'general');
  unknownKeys(o, ['allowPrivate'], 'general.');
  return { allowPrivate: bool(o, 'allowPrivate', 'general.', false) };
}

/** Parses the config; `base` is the directory relative file names are taken from. */
export function parseDcConfig(text: string, base = '.'): DcConfig {
  const d = parseJsonObject(text);
  unknownKeys(d, ['zone', 'nsName', 'publicAddress', 'listen', 'tls', 'dns', 'pool', 'state', 'keepaliveSeconds', 'expireAfterKeepalives', 'routeLifetimeSeconds', 'resolvers', 'dc', 'relays', 'ns', 'general'], '');
  const zone = str(d, 'zone', '');
  const nsName = str(d, 'nsName', '');
  if (!isDnsName(zone)) throw new ConfigError(`zone: "${zone}" is not a lower-case DNS name`);
  if (!isDnsName(nsName)) throw new ConfigError(`nsName: "${nsName}" is not a lower-case DNS name`);
  const publicAddress = str(d, 'publicAddress', '');
  if (!isIP(publicAddress)) throw new ConfigError(`publicAddress: "${publicAddress}" is not an IP address`);
  const path = (p: string): string => resolve(base, p);
  const listen = obj(d.listen ?? {}, 'listen');
  unknownKeys(listen, ['address', 'port'], 'listen.');
  const tls = obj(d.tls, 'tls');
  unknownKeys(tls, ['port', 'ca', 'cert', 'key'], 'tls.');
  const pool = obj(d.pool ?? {}, 'pool');
  unknownKeys(pool, ['ipv4', 'ipv6'], 'pool.');
  const dns = d.dns === null ? null : obj(d.dns ?? {}, 'dns');
  if (dns !== null) unknownKeys(dns, ['address', 'port'], 'dns.');
  const resolvers = d.resolvers ?? [];
  if (!Array.isArray(resolvers) || resolvers.some((r) => typeof r !== 'string')) throw new ConfigError('resolvers: want a list of addresses');
  const dc = obj(d.dc ?? {}, 'dc');
  for (const [z, a] of Object.entries(dc)) if (typeof a !== 'string' || !isIP(a)) throw new ConfigError(`dc.${z}: want an IP address`);
  const keepaliveSeconds = int(d, 'keepaliveSeconds', '', DC_DEFAULTS.keepaliveSeconds, 1, 3600);
  return {
    zone,
    nsName,
    publicAddress,
    listen: { address: str(listen, 'address', 'listen.', '::'), port: int(listen, 'port', 'listen.', 4500, 0, 65535) },
    tls: { port: int(tls, 'port', 'tls.', 4501, 0, 65535), caFile: path(str(tls, 'ca', 'tls.')), certFile: path(str(tls, 'cert', 'tls.')), keyFile: path(str(tls, 'key', 'tls.')) },
    dns: dns === null ? null : { address: str(dns, 'address', 'dns.', publicAddress), port: int(dns, 'port', 'dns.', 53, 0, 65535) },
    pool: { ipv4: str(pool, 'ipv4', 'pool.', '10.77.0.0/16'), ipv6: str(pool, 'ipv6', 'pool.', 'fd4e:544d:1::/64') },
    statePath: path(str(d, 'state', '')),
    keepaliveSeconds,
    expireAfterKeepalives: int(d, 'expireAfterKeepalives', '', DC_DEFAULTS.expireAfterKeepalives, 1, 100),
    routeLifetimeSeconds: int(d, 'routeLifetimeSeconds', '', DC_DEFAULTS.routeLifetimeSeconds, 10, 86400 * 7),
    discovery: { resolvers: resolvers as string[], override: dc as Record<string, string> },
    peerControlPort: DC_DEFAULTS.peerControlPort,
    peerTlsPort: DC_DEFAULTS.peerTlsPort,
    relays: parseRelays(d.relays),
    general: parseGeneral(d.general),
    ns: parseNs(d.ns, keepaliveSeconds),
  };
}
