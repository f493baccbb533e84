// `ntmobile router --config FILE`: the node daemon's configuration (JSON; on OpenWrt generated
// from UCI by the init script). Every error names the field: `publish[1].address: "192.168.2.300"
// is not an IP address`, unknown fields are refused at every depth, relative paths are taken
// from the config file's folder (protocol/config.ts). Defaults are the ones a single router on
// one LAN wants.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { ConfigError, int, known, loadConfigFile, obj, parseJsonObject, str, strings } from '../protocol/config.js';
import { isDnsName } from '../protocol/control.js';
import { type EspSuite } from '../protocol/esp.js';

export interface PublishedHostConfig {
  name: string;
  /** The host's LAN address (IPv4 and/or IPv6). */
  address4: string | null;
  address6: string | null;
  /**
   * Or its MAC address: the IPv4 address comes from the DHCP leases (`dhcpLeases`) and follows
   * them; until the host has a lease it is registered but not reachable.
   */
  mac: string | null;
}

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface RouterConfig {
  /** The router's own name (its account's first name at the AS). */
  name: string;
  account: { email: string; password: string };
  as: { url: string; caFile: string };
  /** Raw 32-byte X25519 private key, base64, in a 0600 file; made on first start if missing. */
  privateKeyFile: string;
  listen: { address: string; port: number };
  tun: { name: string; mtu: number };
  lan: { interfaces: string[] };
  /**
   * The devices NTMobile may use as its uplink, most preferred first (docs/mobility.md, uplink
   * preference): the daemon's own UDP traffic leaves through the first usable one. Empty: the
   * kernel's routing decides.
   */
  uplinks: string[];
  /** The routing table the daemon owns for `uplinks`; its two rules get this number and the next as priorities. */
  uplinkTable: number;
  publish: PublishedHostConfig[];
  dns: { address: string; port: number; domains: string[]; timeoutMs: number };
  /** DNS servers for finding DCs by NS record (the system's if empty). */
  resolvers: string[];
  /** Fixed DC addresses per zone, skipping the NS lookup ({"fleet1.test": "198.18.0.10"}). */
  dc: Record<string, string>;
  dcPort: number;
  suite: EspSuite;
  rekeyAfterSeconds: number;
  /** Free local addresses for peer VIPs that collide with a local network (ARCHITECTURE §2.5). */
  mapPool4: string;
  socketPath: string;
  nftTable: string;
  /**
   * General (non-NTMobile) hosts: names under `viaRelay` are reached through a Relay Server, so
   * that their sessions survive the router's moves; all other general traffic goes out directly
   * as it always did (this daemon does not touch it).
   */
  general: { viaRelay: string[] };
  /**
   * MQTT mode (docs/ns.md): keep one MQTT session to the DC's Notification Server and be woken
   * through it, instead of a UDP keepalive every 20 s. null: off (UDP keepalives).
   */
  notify: NotifyConfig | null;
  /** error, warn, info (default), debug (the protocol sequence, as --verbose). */
  logLevel: LogLevel;
  /** dnsmasq's lease file, for published hosts given by MAC. */
  dhcpLeases: string;
}

export interface NotifyConfig {
  /** The broker URL (mqtts://); null: the one the NS announces in the DC's grant. */
  mqtt: string | null;
  /** CA of the broker's certificate (the operator's); default the AS's `as.ca`. */
  caFile: string;
  /** MQTT keepalive, and the UDP keepalive interval asked of the DC (it may grant less). */
  keepaliveSeconds: number;
}

function name(v: unknown, field: string): string {
  if (v === undefined) throw new ConfigError(`${field}: required (a lower-case DNS name)`);
  if (typeof v !== 'string' || !isDnsName(v)) throw new ConfigError(`${field}: ${JSON.stringify(v)} is not a lower-case DNS name`);
  return v;
}

export function parseRouterConfig(text: string, baseDir = '.'): RouterConfig {
  const root = parseJsonObject(text);
  known(root, ['name', 'account', 'as', 'privateKeyFile', 'listen', 'tun', 'lan', 'publish', 'dns', 'resolvers', 'dc', 'dcPort', 'suite', 'rekeyAfterSeconds', 'mapPool4', 'socketPath', 'nftTable', 'general', 'notify', 'logLevel', 'dhcpLeases', 'uplinks', 'uplinkTable'], '');
  const account = obj(root.account, 'account');
  known(account, ['email', 'password', 'passwordFile'], 'account.');
  let password: string;
  if (typeof account.passwordFile === 'string') {
    try {
      password = readFileSync(resolve(baseDir, account.passwordFile), 'utf8').trim();
    } catch (e) {
      throw new ConfigError(`account.passwordFile: ${(e as Error).message}`);
    }
  } else password = str(account, 'password', 'account.');
  const as = obj(root.as, 'as');
  known(as, ['url', 'ca'], 'as.');
  const url = str(as, 'url', 'as.');
  if (!/^https:\/\//.test(url)) throw new ConfigError(`as.url: "${url}" must be an https:// URL`);
  const listen = obj(root.listen ?? {}, 'listen');
  const tun = obj(root.tun ?? {}, 'tun');
  const lan = obj(root.lan ?? {}, 'lan');
  const dns = obj(root.dns ?? {}, 'dns');
  known(listen, ['address', 'port'], 'listen.');
  known(tun, ['name', 'mtu'], 'tun.');
  known(lan, ['interfaces'], 'lan.');
  known(dns, ['address', 'port', 'domains', 'timeoutMs'], 'dns.');
  const publishRaw = root.publish ?? [];
  if (!Array.isArray(publishRaw)) throw new ConfigError('publish: want a list');
  const ownName = name(root.name, 'name');
  const publish = publishRaw.map((p, i) => {
    const f = `publish[${i}].`;
    const o = obj(p, `publish[${i}]`);
    const n = name(o.name, `${f}name`);
    if (!n.endsWith(`.${ownName}`) && n.split('.').slice(1).join('.') !== ownName.split('.').slice(1).join('.')) {
      throw new ConfigError(`${f}name: "${n}" is neither under ${ownName} nor in its zone`);
    }
    known(o, ['name', 'address', 'addresses', 'mac'], f);
    const addrs = typeof o.address === 'string' ? [o.address] : strings(o, 'addresses', f);
    let mac: string | null = null;
    if (o.mac !== undefined) {
      if (typeof o.mac !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(o.mac)) throw new ConfigError(`${f}mac: ${JSON.stringify(o.mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)`);
      mac = o.mac.toLowerCase();
    }
    if (addrs.length === 0 && mac === null) throw new ConfigError(`${f}address: required (an IP address, or a mac)`);
    for (const a of addrs) if (!isIP(a)) throw new ConfigError(`${f}address: "${a}" is not an IP address`);
    return { name: n, address4: addrs.find((a) => isIP(a) === 4) ?? null, address6: addrs.find((a) => isIP(a) === 6) ?? null, mac };
  });
  const suite = str(root, 'suite', '', 'aes-gcm');
  if (suite !== 'aes-gcm' && suite !== 'chacha20-poly1305') throw new ConfigError(`suite: "${suite}", want aes-gcm or chacha20-poly1305`);
  const domains = strings(dns, 'domains', 'dns.').map((d, i) => name(d, `dns.domains[${i}]`));
  const dc = obj(root.dc ?? {}, 'dc');
  for (const [z, a] of Object.entries(dc)) if (typeof a !== 'string' || !isIP(a)) throw new ConfigError(`dc.${z}: want an IP address`);
  const general = obj(root.general ?? {}, 'general');
  known(general, ['viaRelay'], 'general.');
  const viaRelay = strings(general, 'viaRelay', 'general.').map((d, i) => name(d, `general.viaRelay[${i}]`));
  const asCa = resolve(baseDir, str(as, 'ca', 'as.'));
  let notify: NotifyConfig | null = null;
  if (root.notify !== undefined && root.notify !== null && root.notify !== false) {
    const n = obj(root.notify, 'notify');
    known(n, ['mqtt', 'ca', 'keepaliveSeconds'], 'notify.');
    let mqtt: string | null = null;
    if (n.mqtt !== undefined && n.mqtt !== null) {
      mqtt = str(n, 'mqtt', 'notify.');
      let u: URL | null = null;
      try {
        u = new URL(mqtt);
      } catch {
        u = null;
      }
      // Plain mqtt:// would hand the broker credentials to anyone on the path.
      if (u === null || u.protocol !== 'mqtts:' || u.hostname === '') throw new ConfigError(`notify.mqtt: "${mqtt}" must be an mqtts:// URL with a host`);
    }
    notify = {
      mqtt,
      caFile: n.ca === undefined ? asCa : resolve(baseDir, str(n, 'ca', 'notify.')),
      keepaliveSeconds: int(n, 'keepaliveSeconds', 'notify.', 300, 10, 3600),
    };
  }
  const logLevel = str(root, 'logLevel', '', 'info');
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) throw new ConfigError(`logLevel: "${logLevel}", want one of ${LOG_LEVELS.join(', ')}`);
  const tunName = str(tun, 'name', 'tun.', 'ntm0');
  if (tunName.length > 15) throw new ConfigError(`tun.name: "${tunName}" is longer than 15 characters`);
  const lanInterfaces = strings(lan, 'interfaces', 'lan.');
  const uplinks = strings(root, 'uplinks', '');
  uplinks.forEach((d, i) => {
    if (!isIfName(d)) throw new ConfigError(`uplinks[${i}]: ${JSON.stringify(d)} is not an interface name (1 to 15 bytes, no "/", ":" or white space)`);
    if (uplinks.indexOf(d) !== i) throw new ConfigError(`uplinks[${i}]: "${d}" is listed twice`);
    if (d === tunName || lanInterfaces.includes(d)) throw new ConfigError(`uplinks[${i}]: "${d}" is ${d === tunName ? 'our TUN device (tun.name)' : 'a LAN interface (lan.interfaces)'}, not an uplink`);
  });
  // Both rule priorities (this number and the next) must come before the main table's rule
  // (32766); 253-255 are the kernel's own tables.
  const uplinkTable = int(root, 'uplinkTable', '', 4500, 1, 32764);
  if (uplinkTable >= 253 && uplinkTable <= 255) throw new ConfigError(`uplinkTable: ${uplinkTable} is one of the kernel's tables (default, main, local)`);
  return {
    name: ownName,
    account: { email: str(account, 'email', 'account.'), password },
    as: { url, caFile: asCa },
    privateKeyFile: resolve(baseDir, str(root, 'privateKeyFile', '', '/etc/ntmobile/node.key')),
    listen: { address: str(listen, 'address', 'listen.', '::'), port: int(listen, 'port', 'listen.', 4500, 0, 65535) },
    tun: { name: tunName, mtu: int(tun, 'mtu', 'tun.', 1400, 1280, 9000) },
    lan: { interfaces: lanInterfaces },
    uplinks,
    uplinkTable,
    publish,
    dns: {
      address: str(dns, 'address', 'dns.', '127.0.0.1'),
      port: int(dns, 'port', 'dns.', 5353, 0, 65535),
      domains: domains.length ? domains : [ownName.split('.').slice(1).join('.')],
      timeoutMs: int(dns, 'timeoutMs', 'dns.', 3000, 100, 30000),
    },
    resolvers: strings(root, 'resolvers', ''),
    dc: dc as Record<string, string>,
    dcPort: int(root, 'dcPort', '', 4500, 1, 65535),
    suite,
    rekeyAfterSeconds: int(root, 'rekeyAfterSeconds', '', 1800, 2, 86400),
    mapPool4: str(root, 'mapPool4', '', '10.255.255.0/24'),
    socketPath: str(root, 'socketPath', '', '/var/run/ntmobile.sock'),
    nftTable: str(root, 'nftTable', '', 'ntmobile'),
    general: { viaRelay },
    notify,
    logLevel: logLevel as LogLevel,
    dhcpLeases: str(root, 'dhcpLeases', '', '/tmp/dhcp.leases'),
  };
}

/** A name Linux accepts for a network device (dev_valid_name). */
function isIfName(n: string): boolean {
  return n.length > 0 && Buffer.byteLength(n) <= 15 && n !== '.' && n !== '..' && !/[/:\s]/.test(n);
}

/** The config file; relative paths in it are taken from its folder, the files it names must be readable, every error starts with its name. */
export function loadRouterConfig(path: string): RouterConfig {
  return loadConfigFile(path, parseRouterConfig, (c) => [{ field: 'as.ca', path: c.as.caFile }, ...(c.notify ? [{ field: 'notify.ca', path: c.notify.caFile }] : [])]);
}

/** Settings a reload applies in place (router/daemon.ts reload); a change of any other restarts. */
export const LIVE_SETTINGS = ['publish', 'lan', 'dns.domains', 'general', 'logLevel', 'dhcpLeases'];

/** Top-level settings (and dns.* ones) whose values differ. */
export function changedSettings(a: RouterConfig, b: RouterConfig): string[] {
  const out: string[] = [];
  for (const k of Object.keys(b) as (keyof RouterConfig)[]) {
    if (k === 'dns') {
      for (const d of Object.keys(b.dns) as (keyof RouterConfig['dns'])[]) if (JSON.stringify(a.dns[d]) !== JSON.stringify(b.dns[d])) out.push(`dns.${d}`);
    } else if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) out.push(k);
  }
  return out;
}
