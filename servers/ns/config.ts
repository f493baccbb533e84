// The Notification Server's JSON config (servers/ns/cli.ts --help and docs/ns.md table it):
// parsed and checked here, apart from the command line, so that tests can parse configs without
// running a server. Every error names the field; unknown fields are refused.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { isDnsName } from '../../protocol/control.js';
import { MQTT_TLS_PORT, NS_PORT, NS_TLS_PORT } from '../../protocol/discovery.js';
import { type BrokerConfig, type NsConfig } from './ns.js';

/** A malformed config or command line: exit status 2. */
import { UsageError } from '../config-json.js';

export { UsageError };

export const NS_DEFAULTS = {
  listen: { address: '::', port: NS_PORT },
  tlsPort: NS_TLS_PORT,
  brokerPort: MQTT_TLS_PORT,
  /** Nodes may not ask for a longer MQTT keepalive than this (aedes refuses the CONNECT). */
  maxKeepaliveSeconds: 3600,
  maxKeys: 100_000,
};

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

function known(o: Record<string, unknown>, keys: string[], f: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new UsageError(`${f}${k}: unknown setting (known: ${keys.join(', ')})`);
}

function mqttUrl(v: string, f: string): string {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new UsageError(`${f}: "${v}" is not a URL`);
  }
  if (u.protocol !== 'mqtts:' && u.protocol !== 'mqtt:') throw new UsageError(`${f}: "${v}": want an mqtts:// (or, for a broker on this host, mqtt://) URL`);
  return v;
}

/** Parses the config; `base` is the directory relative file names are taken from. */
export function parseNsConfig(text: string, base = '.'): NsConfig {
  let d: Record<string, unknown>;
  try {
    d = obj(JSON.parse(text), 'config');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`config: not valid JSON (${(e as Error).message})`);
  }
  known(d, ['name', 'listen', 'tls', 'broker', 'state', 'maxKeys'], '');
  const path = (p: string): string => resolve(base, p);
  const name = str(d, 'name', '');
  if (!isDnsName(name)) throw new UsageError(`name: "${name}" is not a lower-case DNS name`);
  const listen = obj(d.listen ?? {}, 'listen');
  known(listen, ['address', 'port'], 'listen.');
  const address = str(listen, 'address', 'listen.', NS_DEFAULTS.listen.address);
  if (!isIP(address)) throw new UsageError(`listen.address: "${address}" is not an IP address`);
  const tls = obj(d.tls, 'tls');
  known(tls, ['port', 'ca', 'cert', 'key'], 'tls.');
  const b = obj(d.broker ?? {}, 'broker');
  const type = str(b, 'type', 'broker.', 'embedded');
  let broker: BrokerConfig;
  if (type === 'embedded') {
    known(b, ['type', 'address', 'port', 'publicUrl', 'maxKeepaliveSeconds'], 'broker.');
    const bAddress = str(b, 'address', 'broker.', address);
    if (!isIP(bAddress)) throw new UsageError(`broker.address: "${bAddress}" is not an IP address`);
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
        throw new UsageError(`broker.passwordFile: ${(e as Error).message}`);
      }
    } else password = str(b, 'password', 'broker.');
    const accessControl = str(b, 'accessControl', 'broker.', 'dynsec');
    if (accessControl !== 'dynsec' && accessControl !== 'none') throw new UsageError(`broker.accessControl: "${accessControl}", want dynsec or none`);
    broker = {
      type: 'external',
      url,
      caFile: b.ca === undefined ? null : path(str(b, 'ca', 'broker.')),
      username: str(b, 'username', 'broker.'),
      password,
      accessControl,
      publicUrl: mqttUrl(str(b, 'publicUrl', 'broker.', url), 'broker.publicUrl'),
    };
  } else throw new UsageError(`broker.type: "${type}", want embedded or mosquitto`);
  return {
    name,
    listen: { address, port: int(listen, 'port', 'listen.', NS_DEFAULTS.listen.port, 0, 65535) },
    tls: { port: int(tls, 'port', 'tls.', NS_DEFAULTS.tlsPort, 0, 65535), caFile: path(str(tls, 'ca', 'tls.')), certFile: path(str(tls, 'cert', 'tls.')), keyFile: path(str(tls, 'key', 'tls.')) },
    broker,
    statePath: d.state === undefined || d.state === null ? null : path(str(d, 'state', '')),
    maxKeys: int(d, 'maxKeys', '', NS_DEFAULTS.maxKeys, 1, 10_000_000),
  };
}
