// The configuration file of `ntmobile tunnel`: one node with static peers and keys, for debugging
// and interop (docs/static-tunnel.md). Parsing checks every field and names the one that is wrong,
// e.g. `peers[0].inbound.key: 62 hex digits, want 64 (32 bytes for chacha20-poly1305)`.

import { isIP } from 'node:net';
import { ConfigError as SharedConfigError, loadConfigFile, parseJsonObject } from '../protocol/config.js';
import { type EspSuite, SPI_MIN } from '../protocol/esp.js';
import { encodeSockaddr } from '../protocol/endpoint.js';

export interface StaticSa {
  spi: number;
  key: Buffer;
  salt: Buffer;
}

export interface StaticPeer {
  name: string;
  vips: string[];
  /** 28-byte sockaddr, or null: learned from the peer's first authenticated packet. */
  endpoint: Buffer | null;
  endpointText: string | null;
  keepaliveSeconds: number;
  suite: EspSuite;
  outbound: StaticSa;
  inbound: StaticSa;
}

export interface StaticConfig {
  tun: { name: string; mtu: number; addresses: string[] };
  listen: { address: string; port: number };
  peers: StaticPeer[];
}

export const DEFAULT_TUN_MTU = 1400;
export const DEFAULT_PORT = 4500;

/** The loader's ConfigError (exit status 2), built from the field's path and what is wrong with it. */
export class ConfigError extends SharedConfigError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

type Json = Record<string, unknown>;

function object(v: unknown, field: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(field, 'want an object');
  return v as Json;
}

function noUnknownKeys(o: Json, allowed: string[], field: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(field ? `${field}.${k}` : k, `unknown field (known: ${allowed.join(', ')})`);
  }
}

function string(v: unknown, field: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(field, 'want a non-empty string');
  return v;
}

function integer(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(field, `${JSON.stringify(v)}: want an integer from ${min} to ${max}`);
  }
  return v;
}

function hexBytes(v: unknown, field: string, want: number[], what: string): Buffer {
  const s = string(v, field);
  if (!/^([0-9a-fA-F]{2})+$/.test(s)) throw new ConfigError(field, 'want hex digits (an even number of 0-9, a-f)');
  if (!want.includes(s.length / 2)) {
    throw new ConfigError(field, `${s.length} hex digits, want ${want.map((n) => n * 2).join(' or ')} (${what})`);
  }
  return Buffer.from(s, 'hex');
}

function cidr(v: unknown, field: string): string {
  const s = string(v, field);
  const [address, prefix, extra] = s.split('/');
  const family = isIP(address ?? '');
  if (extra !== undefined || family === 0 || prefix === undefined || !/^\d+$/.test(prefix) || Number(prefix) > (family === 4 ? 32 : 128)) {
    throw new ConfigError(field, `"${s}": want an address with a prefix length, e.g. 10.123.0.1/24 or fd7a::1/64`);
  }
  return s;
}

/** "198.18.0.2:4500" or "[fd00::2]:4500" */
export function parseEndpoint(v: unknown, field: string): { sockaddr: Buffer; text: string } {
  const s = string(v, field);
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:[\]]+):(\d+)$/.exec(s);
  if (!m || isIP(m[1]!) === 0 || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new ConfigError(field, `"${s}": want address:port, e.g. 198.18.0.2:4500 or [2001:db8::2]:4500`);
  }
  return { sockaddr: encodeSockaddr(m[1]!, Number(m[2])), text: s };
}

function sa(v: unknown, field: string, suite: EspSuite): StaticSa {
  const o = object(v, field);
  noUnknownKeys(o, ['spi', 'key', 'salt'], field);
  const keyLengths = suite === 'chacha20-poly1305' ? [32] : [16, 32];
  return {
    spi: integer(o.spi, `${field}.spi`, SPI_MIN, 0xffffffff),
    key: hexBytes(o.key, `${field}.key`, keyLengths, `${keyLengths.join(' or ')} bytes for ${suite}`),
    salt: hexBytes(o.salt, `${field}.salt`, [4], '4 bytes'),
  };
}

function peer(v: unknown, field: string): StaticPeer {
  const o = object(v, field);
  noUnknownKeys(o, ['name', 'vips', 'endpoint', 'keepalive', 'suite', 'outbound', 'inbound'], field);
  const suite = o.suite ?? 'aes-gcm';
  if (suite !== 'aes-gcm' && suite !== 'chacha20-poly1305') {
    throw new ConfigError(`${field}.suite`, `${JSON.stringify(suite)}: want "aes-gcm" or "chacha20-poly1305"`);
  }
  if (!Array.isArray(o.vips) || o.vips.length === 0) throw new ConfigError(`${field}.vips`, 'want a list of one IPv4 and/or one IPv6 address');
  const vips = o.vips.map((a, i) => {
    const s = string(a, `${field}.vips[${i}]`);
    if (isIP(s) === 0) throw new ConfigError(`${field}.vips[${i}]`, `"${s}" is not an IP address`);
    return s;
  });
  if (vips.filter((a) => isIP(a) === 4).length > 1 || vips.filter((a) => isIP(a) === 6).length > 1) {
    throw new ConfigError(`${field}.vips`, 'at most one IPv4 and one IPv6 VIP per peer');
  }
  const endpoint = o.endpoint === undefined ? null : parseEndpoint(o.endpoint, `${field}.endpoint`);
  return {
    name: string(o.name, `${field}.name`),
    vips,
    endpoint: endpoint?.sockaddr ?? null,
    endpointText: endpoint?.text ?? null,
    keepaliveSeconds: o.keepalive === undefined ? 0 : integer(o.keepalive, `${field}.keepalive`, 0, 3600),
    suite,
    outbound: sa(o.outbound, `${field}.outbound`, suite),
    inbound: sa(o.inbound, `${field}.inbound`, suite),
  };
}

export function parseStaticConfig(text: string): StaticConfig {
  const o = parseJsonObject(text);
  noUnknownKeys(o, ['tun', 'listen', 'peers'], '');
  const tun = object(o.tun, 'tun');
  noUnknownKeys(tun, ['name', 'mtu', 'addresses'], 'tun');
  const name = string(tun.name ?? 'ntm0', 'tun.name');
  if (name.length > 15 || !/^[A-Za-z0-9_.-]+$/.test(name)) throw new ConfigError('tun.name', `"${name}": want at most 15 letters, digits, "_", "-" or "."`);
  if (!Array.isArray(tun.addresses) || tun.addresses.length === 0) throw new ConfigError('tun.addresses', 'want a list of addresses with prefix lengths');
  const listen = o.listen === undefined ? {} : object(o.listen, 'listen');
  noUnknownKeys(listen, ['address', 'port'], 'listen');
  const listenAddress = string(listen.address ?? '::', 'listen.address');
  if (isIP(listenAddress) === 0) throw new ConfigError('listen.address', `"${listenAddress}" is not an IP address`);
  if (!Array.isArray(o.peers)) throw new ConfigError('peers', 'want a list of peers');
  const peers = o.peers.map((p, i) => peer(p, `peers[${i}]`));
  const spis = new Set<number>();
  peers.forEach((p, i) => {
    if (spis.has(p.inbound.spi)) throw new ConfigError(`peers[${i}].inbound.spi`, `${p.inbound.spi} is used by another peer`);
    spis.add(p.inbound.spi);
  });
  return {
    tun: {
      name,
      mtu: tun.mtu === undefined ? DEFAULT_TUN_MTU : integer(tun.mtu, 'tun.mtu', 576, 9000),
      addresses: tun.addresses.map((a, i) => cidr(a, `tun.addresses[${i}]`)),
    },
    listen: { address: listenAddress, port: listen.port === undefined ? DEFAULT_PORT : integer(listen.port, 'listen.port', 0, 65535) },
    peers,
  };
}

/** The config file; every error starts with its name (`tunnel.json: peers[0].inbound.key: …`). */
export function loadStaticConfig(path: string): StaticConfig {
  return loadConfigFile(path, parseStaticConfig);
}
