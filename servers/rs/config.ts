// The Relay Server's JSON config (servers/rs/cli.ts --help tables it): parsed and checked here,
// apart from the command line, so that tests can parse configs without running a server.

import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { isDnsName } from '../../protocol/control.js';
import { checkTable } from '../../netlink/nftables.js';
import { bool, ConfigError, int, known, obj, parseJsonObject, str } from '../../protocol/config.js';
import { RS_DEFAULTS, type RsConfig } from './rs.js';

export { ConfigError, UsageError } from '../../protocol/config.js';

/** Parses the config; `base` is the directory relative file names are taken from. */
export function parseRsConfig(text: string, base = '.'): RsConfig {
  const d = parseJsonObject(text);
  known(d, ['name', 'listen', 'tls', 'privateKeyFile', 'gateway', 'quota', 'idleSeconds'], '');
  const path = (p: string): string => resolve(base, p);
  const name = str(d, 'name', '');
  if (!isDnsName(name)) throw new ConfigError(`name: "${name}" is not a lower-case DNS name`);
  const listen = obj(d.listen ?? {}, 'listen');
  known(listen, ['address', 'port'], 'listen.');
  const address = str(listen, 'address', 'listen.', RS_DEFAULTS.listen.address);
  if (!isIP(address)) throw new ConfigError(`listen.address: "${address}" is not an IP address`);
  const tls = obj(d.tls, 'tls');
  known(tls, ['port', 'ca', 'cert', 'key'], 'tls.');
  let gateway: RsConfig['gateway'] = null;
  if (d.gateway !== undefined && d.gateway !== null) {
    const g = obj(d.gateway, 'gateway');
    known(g, ['tun', 'mtu', 'nftTable', 'allowPrivate'], 'gateway.');
    const tun = str(g, 'tun', 'gateway.', RS_DEFAULTS.gateway.tun);
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(tun)) throw new ConfigError(`gateway.tun: "${tun}" is not an interface name (1-15 letters, digits, '_', '.', '-')`);
    const nftTable = str(g, 'nftTable', 'gateway.', RS_DEFAULTS.gateway.nftTable);
    try {
      checkTable('inet', nftTable);
    } catch (e) {
      throw new ConfigError(`gateway.nftTable: ${(e as Error).message}`);
    }
    gateway = { tun, mtu: int(g, 'mtu', 'gateway.', RS_DEFAULTS.gateway.mtu, 1280, 9000), nftTable, allowPrivate: bool(g, 'allowPrivate', 'gateway.', RS_DEFAULTS.gateway.allowPrivate) };
  }
  const quota = obj(d.quota ?? {}, 'quota');
  const Q = RS_DEFAULTS.quota;
  known(quota, Object.keys(Q), 'quota.');
  const rate = (k: 'routeBytesPerSecond' | 'nodeBytesPerSecond'): number => {
    const v = int(quota, k, 'quota.', Q[k], 0, Number.MAX_SAFE_INTEGER);
    // The burst is one second's worth: below a datagram's size nothing would ever pass.
    if (v !== 0 && v < 65536) throw new ConfigError(`quota.${k}: ${v} is below 65536 bytes/s (0: unlimited)`);
    return v;
  };
  return {
    name,
    listen: { address, port: int(listen, 'port', 'listen.', RS_DEFAULTS.listen.port, 0, 65535) },
    tls: { port: int(tls, 'port', 'tls.', RS_DEFAULTS.tlsPort, 0, 65535), caFile: path(str(tls, 'ca', 'tls.')), certFile: path(str(tls, 'cert', 'tls.')), keyFile: path(str(tls, 'key', 'tls.')) },
    privateKeyFile: path(str(d, 'privateKeyFile', '')),
    gateway,
    quota: {
      routeBytesPerSecond: rate('routeBytesPerSecond'),
      nodeBytesPerSecond: rate('nodeBytesPerSecond'),
      routeBytes: int(quota, 'routeBytes', 'quota.', Q.routeBytes, 0, Number.MAX_SAFE_INTEGER),
      maxRoutes: int(quota, 'maxRoutes', 'quota.', Q.maxRoutes, 1, 10_000_000),
      maxRoutesPerNode: int(quota, 'maxRoutesPerNode', 'quota.', Q.maxRoutesPerNode, 1, 1_000_000),
    },
    idleSeconds: int(d, 'idleSeconds', '', RS_DEFAULTS.idleSeconds, 5, 86400),
  };
}

