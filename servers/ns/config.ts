// The Notification Server's JSON config (servers/ns/cli.ts --help and docs/ns.md table it):
// parsed and checked here, apart from the command line, so that tests can parse configs without
// running a server. Every error names the field; unknown fields are refused.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { isDnsName } from '../../protocol/control.js';
import { MQTT_TLS_PORT, NS_PORT, NS_TLS_PORT } from '../../protocol/discovery.js';
import { type BrokerConfig, type NsConfig } from './ns.js';

import { ConfigError, int, known, obj, parseJsonObject, str, UsageError } from '../../protocol/config.js';

export { UsageError };

export const NS_DEFAULTS = {
  listen: { address: '::', port: NS_PORT },
  tlsPort: NS_TLS_PORT,
  brokerPort: MQTT_TLS_PORT,
  /** Nodes may not ask for a longer MQTT keepalive than this (aedes refuses the CONNECT). */
  maxKeepaliveSeconds: 3600,
  maxKeys: 100_000,
};

function mqttUrl(v: string, f: string): string {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new ConfigError(`${f}: "${v}" is not a URL`);
  }
  if (u.protocol !== 'mqtts:' && u.protocol !== 'mqtt:') throw new ConfigError(`${f}: "${v}": want an mqtts:// (or, for a broker on this host, mqtt://) URL`);
  return v;
}

/** Parses the config; `base` is the directory relative file names are taken from. */
export function parseNsConfig(text: string, base = '.'): NsConfig {
  const d = parseJsonObject(text);
  known(d, ['name', 'listen', 'tls', 'broker', 'state', 'maxKeys'], '');
  const path = (p: string): string => resolve(base, p);
  const name = str(d, 'name', '');
  if (!isDnsName(name)) throw new ConfigError(`name: "${name}" is not a lower-case DNS name`);
  const listen = obj(d.listen ?? {}, 'listen');
  known(listen, ['address', 'port'], 'listen.');
  const address = str(listen, 'address', 'listen.', NS_DEFAULTS.listen.address);
  if (!isIP(address)) throw new ConfigError(`listen.address: "${address}" is not an IP address`);
  const tls = obj(d.tls, 'tls');
  known(tls, ['port', 'ca', 'cert', 'key'], 'tls.');
  const b = obj(d.broker ?? {}, 'broker');
  const type = str(b, 'type', 'broker.', 'embedded');
  let broker: BrokerConfig;
  if (type === 'embedded') {
    known(b, ['type', 'address', 'port', 'publicUrl', 'maxKeepaliveSeconds'], 'broker.');
    const bAddress = str(b, 'address', 'broker.', address);
    if (!isIP(bAddress)) throw new ConfigError(`broker.address: "${bAddress}" is not an IP address`);
    const port = int(b, 'port', 'broker.', NS_DEFAULTS.brokerPort, 0, 65535);
    const publicUrl = mqttUrl(str(b, 'publicUrl', 'broker.', `mqtts://${name}:${port}`), 'broker.publicUrl');
    broker = { type, address: bAddress, port, publicUrl, maxKeepaliveSeconds: int(b, 'maxKeepaliveSeconds', 'broker.', NS_DEFAULTS.maxKeepaliveSeconds, 10, 65535) };
  } else if (type === 'mosquitto' || type === 'external') {
    known(b, ['type', 'url', 'ca', 'username', 'password', 'passwordFile', 'accessControl', 'publicUrl'], 'broker.');
    const url = mqttUrl(str(b, 'url', 'broker.'), 'broker.url');
    let password: string;
    if (b.passwordFile !== undefined) {
      const file = path(str(b, 'passwordFile', 'broker.'));
      try {
        password = readFileSync(file, 'utf8').trim();
      } catch (e) {
        throw new ConfigError(`broker.passwordFile: ${(e as Error).message}`);
      }
    } else password = str(b, 'password', 'broker.');
    const accessControl = str(b, 'accessControl', 'broker.', 'dynsec');
    if (accessControl !== 'dynsec' && accessControl !== 'none') throw new ConfigError(`broker.accessControl: "${accessControl}", want dynsec or none`);
    broker = {
      type: 'external',
      url,
      caFile: b.ca === undefined ? null : path(str(b, 'ca', 'broker.')),
      username: str(b, 'username', 'broker.'),
      password,
      accessControl,
      publicUrl: mqttUrl(str(b, 'publicUrl', 'broker.', url), 'broker.publicUrl'),
    };
  } else throw new ConfigError(`broker.type: "${type}", want embedded or mosquitto`);
  return {
    name,
    listen: { address, port: int(listen, 'port', 'listen.', NS_DEFAULTS.listen.port, 0, 65535) },
    tls: { port: int(tls, 'port', 'tls.', NS_DEFAULTS.tlsPort, 0, 65535), caFile: path(str(tls, 'ca', 'tls.')), certFile: path(str(tls, 'cert', 'tls.')), keyFile: path(str(tls, 'key', 'tls.')) },
    broker,
    statePath: d.state === undefined || d.state === null ? null : path(str(d, 'state', '')),
    maxKeys: int(d, 'maxKeys', '', NS_DEFAULTS.maxKeys, 1, 10_000_000),
  };
}
