// The router daemon's configuration on OpenWrt: /etc/config/ntmobile, read through the `uci` CLI
// and turned into the same JSON shape that `--config FILE` takes, so that one loader
// (router/config.ts) validates both. Why the daemon reads UCI itself instead of the init script
// writing JSON: a reload re-reads the config in the daemon (which keeps the old one when the new
// one is invalid), there is no second translation in shell to keep in step, and every error can
// name the UCI option the operator typed (`ntmobile.main.port: 70000 is not an integer in 0..65535`).
// The `uci` CLI is on every OpenWrt image; the ubus `uci` object needs rpcd, which is optional.
//
// Logical interface names (`lan`, `wan`, `wwan`) become devices here: netifd's view first
// (`ubus call network.interface.NAME status` → l3_device), then the UCI network config
// (`network.NAME.device`), else the name is taken as a device name.

import { execFileSync } from 'node:child_process';
import { ConfigError } from '../protocol/config.js';
import { parseRouterConfig, type RouterConfig } from './config.js';

/** One UCI section: its type, its name (cfgXXXXXX for anonymous ones) and its options. */
export interface UciSection {
  type: string;
  name: string;
  options: Map<string, string | string[]>;
}

/**
 * Parses `uci -X show CONFIG` output: `cfg.sec=type`, `cfg.sec.opt='v'`, lists as `'a' 'b'`
 * (a quote inside a value is written `'\''`). Throws on a line it cannot read.
 */
export function parseUciShow(text: string, config: string): UciSection[] {
  const sections = new Map<string, UciSection>();
  const order: UciSection[] = [];
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    const eq = line.indexOf('=');
    if (eq < 0) throw new ConfigError(`uci show ${config}: line ${i + 1}: no "=" in ${JSON.stringify(line)}`);
    const path = line.slice(0, eq).split('.');
    const words = shellWords(line.slice(eq + 1), `uci show ${config}: line ${i + 1}`);
    if (path[0] !== config || path.length < 2 || path.length > 3) throw new ConfigError(`uci show ${config}: line ${i + 1}: unexpected key ${line.slice(0, eq)}`);
    if (path.length === 2) {
      const s: UciSection = { type: words[0] ?? '', name: path[1]!, options: new Map() };
      sections.set(s.name, s);
      order.push(s);
      continue;
    }
    const s = sections.get(path[1]!);
    if (s === undefined) throw new ConfigError(`uci show ${config}: line ${i + 1}: option of unknown section ${path[1]}`);
    // `uci show` cannot tell a one-element list from an option; callers that want lists accept both.
    s.options.set(path[2]!, words.length === 1 ? words[0]! : words);
  }
  return order;
}

/** Splits a shell-quoted value as `uci show` prints it: 'a' 'b', 'it'\''s'. */
function shellWords(s: string, where: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < s.length) {
    if (s[i] === ' ') {
      i++;
      continue;
    }
    let w = '';
    while (i < s.length && s[i] !== ' ') {
      if (s[i] === "'") {
        const end = s.indexOf("'", i + 1);
        if (end < 0) throw new ConfigError(`${where}: unterminated quote`);
        w += s.slice(i + 1, end);
        i = end + 1;
      } else if (s[i] === '\\' && i + 1 < s.length) {
        w += s[i + 1];
        i += 2;
      } else {
        w += s[i];
        i++;
      }
    }
    words.push(w);
  }
  return words;
}

/** How the daemon reaches uci and ubus (the real CLIs; a test may point at another root). */
export interface UciAccess {
  /** `uci -X show CONFIG` output, or null when the config does not exist. */
  show(config: string): string | null;
  /** netifd's device of a logical interface (l3_device), or null without netifd or interface. */
  interfaceDevice(name: string): string | null;
}

export const systemUci: UciAccess = {
  show(config) {
    try {
      return execFileSync('uci', ['-q', '-X', 'show', config], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { status?: number };
      if (err.code === 'ENOENT') throw new ConfigError('uci: the uci command is not installed (is this OpenWrt? use --config FILE elsewhere)');
      return null;
    }
  },
  interfaceDevice(name) {
    try {
      const out = execFileSync('ubus', ['-t', '2', 'call', `network.interface.${name}`, 'status'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
      const s = JSON.parse(out) as { l3_device?: unknown; device?: unknown };
      const dev = s.l3_device ?? s.device;
      return typeof dev === 'string' && dev !== '' ? dev : null;
    } catch {
      return null; // no netifd (or no such interface): the UCI network config answers
    }
  },
};

type Json = Record<string, unknown>;

/** A UCI option's JSON field, so that the loader's errors can name the option. */
interface OptionMap {
  option: string;
  field: string;
  kind: 'string' | 'int' | 'list' | 'bool';
}

const MAIN_OPTIONS: OptionMap[] = [
  { option: 'name', field: 'name', kind: 'string' },
  { option: 'email', field: 'account.email', kind: 'string' },
  { option: 'password', field: 'account.password', kind: 'string' },
  { option: 'password_file', field: 'account.passwordFile', kind: 'string' },
  { option: 'as_url', field: 'as.url', kind: 'string' },
  { option: 'as_ca', field: 'as.ca', kind: 'string' },
  { option: 'key_file', field: 'privateKeyFile', kind: 'string' },
  { option: 'port', field: 'listen.port', kind: 'int' },
  { option: 'listen', field: 'listen.address', kind: 'string' },
  { option: 'tun', field: 'tun.name', kind: 'string' },
  { option: 'mtu', field: 'tun.mtu', kind: 'int' },
  { option: 'suite', field: 'suite', kind: 'string' },
  { option: 'log_level', field: 'logLevel', kind: 'string' },
  { option: 'domain', field: 'dns.domains', kind: 'list' },
  { option: 'dns_port', field: 'dns.port', kind: 'int' },
  { option: 'resolver', field: 'resolvers', kind: 'list' },
  { option: 'dc_port', field: 'dcPort', kind: 'int' },
  { option: 'via_relay', field: 'general.viaRelay', kind: 'list' },
  { option: 'rekey_after', field: 'rekeyAfterSeconds', kind: 'int' },
  { option: 'leases', field: 'dhcpLeases', kind: 'string' },
  { option: 'uplink_table', field: 'uplinkTable', kind: 'int' },
  { option: 'socket', field: 'socketPath', kind: 'string' },
  { option: 'mqtt_url', field: 'notify.mqtt', kind: 'string' },
  { option: 'mqtt_ca', field: 'notify.ca', kind: 'string' },
  { option: 'mqtt_keepalive', field: 'notify.keepaliveSeconds', kind: 'int' },
];
/** Options the init script reads, or that are handled below rather than by the table. */
const MAIN_OTHER = ['enabled', 'lan', 'uplink', 'mqtt'];
const PUBLISH_OPTIONS = ['name', 'ip', 'ip6', 'mac'];
const DC_OPTIONS = ['zone', 'address'];

export interface UciLoad {
  config: RouterConfig;
  /** The JSON the UCI config became (what `--check --json` prints). */
  json: Json;
}

/**
 * Reads /etc/config/<config> (via uci) into a RouterConfig. Every error names the UCI option:
 * `ntmobile.main.port: 70000 is not an integer in 0..65535`.
 */
export function loadUciConfig(config = 'ntmobile', uci: UciAccess = systemUci): UciLoad {
  const text = uci.show(config);
  if (text === null) throw new ConfigError(`/etc/config/${config}: no such UCI config`);
  const sections = parseUciShow(text, config);
  const main = sections.find((s) => s.type === 'ntmobile');
  if (main === undefined) throw new ConfigError(`/etc/config/${config}: no "config ntmobile" section (see docs/openwrt.md)`);
  const at = (s: UciSection, o: string): string => `${config}.${s.name}.${o}`;
  const names = new Map<string, string>(); // JSON field → UCI option path, for error messages

  const json: Json = {};
  for (const [opt, value] of main.options) {
    const m = MAIN_OPTIONS.find((x) => x.option === opt);
    if (m === undefined) {
      if (MAIN_OTHER.includes(opt)) continue;
      throw new ConfigError(`${at(main, opt)}: unknown option (known: ${[...MAIN_OPTIONS.map((x) => x.option), ...MAIN_OTHER].sort().join(', ')})`);
    }
    names.set(m.field, at(main, opt));
    setPath(json, m.field, convert(value, m.kind, at(main, opt)));
  }
  const devices = (opt: string, field: string, def: string[]): void => {
    const v = main.options.get(opt);
    const list = v === undefined ? def : Array.isArray(v) ? v : v.split(/\s+/).filter(Boolean);
    if (v === undefined && list.length === 0) return;
    names.set(field, at(main, opt));
    setPath(
      json,
      field,
      list.map((n) => resolveDevice(n, uci)),
    );
  };
  devices('lan', 'lan.interfaces', ['lan']);
  devices('uplink', 'uplinks', []);
  const mqtt = main.options.get('mqtt');
  if (mqtt !== undefined && convert(mqtt, 'bool', at(main, 'mqtt')) === true) {
    json.notify = { ...((json.notify as Json | undefined) ?? {}) };
  } else delete json.notify;

  const dc: Json = {};
  const publish: Json[] = [];
  for (const s of sections) {
    if (s === main) continue;
    if (s.type === 'dc') {
      for (const o of s.options.keys()) if (!DC_OPTIONS.includes(o)) throw new ConfigError(`${at(s, o)}: unknown option (known: ${DC_OPTIONS.join(', ')})`);
      const zone = s.options.get('zone');
      const address = s.options.get('address');
      if (typeof zone !== 'string' || typeof address !== 'string') throw new ConfigError(`${config}.${s.name}: a dc section needs "zone" and "address"`);
      dc[zone] = address;
      names.set(`dc.${zone}`, at(s, 'address'));
    } else if (s.type === 'publish') {
      for (const o of s.options.keys()) if (!PUBLISH_OPTIONS.includes(o)) throw new ConfigError(`${at(s, o)}: unknown option (known: ${PUBLISH_OPTIONS.join(', ')})`);
      const i = publish.length;
      const p: Json = {};
      const name = s.options.get('name');
      if (name !== undefined) p.name = name;
      names.set(`publish[${i}].name`, at(s, 'name'));
      const addresses = [s.options.get('ip'), s.options.get('ip6')].flat().filter((a): a is string => typeof a === 'string');
      if (addresses.length > 0) p.addresses = addresses;
      names.set(`publish[${i}].address`, at(s, s.options.has('ip6') && !s.options.has('ip') ? 'ip6' : 'ip'));
      const mac = s.options.get('mac');
      if (mac !== undefined) p.mac = mac;
      names.set(`publish[${i}].mac`, at(s, 'mac'));
      publish.push(p);
    } else {
      throw new ConfigError(`${config}.${s.name}: unknown section type "${s.type}" (known: ntmobile, dc, publish)`);
    }
  }
  json.dc = dc;
  json.publish = publish;
  try {
    return { config: parseRouterConfig(JSON.stringify(json), '/etc/ntmobile'), json };
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new ConfigError(renameField(e.message, names));
  }
}

/** `listen.port: …` → `ntmobile.main.port: …` (the loader names JSON fields; UCI users typed options). */
function renameField(message: string, names: Map<string, string>): string {
  const colon = message.indexOf(':');
  if (colon < 0) return message;
  const field = message.slice(0, colon);
  const base = field.replace(/\[\d+\]$/, '');
  const uci = names.get(field) ?? names.get(base);
  return uci === undefined ? message : `${uci}${message.slice(colon)}`;
}

function convert(value: string | string[], kind: OptionMap['kind'], where: string): unknown {
  if (kind === 'list') return Array.isArray(value) ? value : value.split(/\s+/).filter(Boolean);
  if (Array.isArray(value)) throw new ConfigError(`${where}: one value expected, got a list of ${value.length}`);
  if (kind === 'int') return /^-?\d+$/.test(value) ? Number(value) : value;
  if (kind === 'bool') {
    if (['1', 'on', 'true', 'yes', 'enabled'].includes(value)) return true;
    if (['0', 'off', 'false', 'no', 'disabled'].includes(value)) return false;
    throw new ConfigError(`${where}: "${value}" is not a boolean (0 or 1)`);
  }
  return value;
}

function setPath(o: Json, field: string, value: unknown): void {
  const parts = field.split('.');
  let cur = o;
  for (const p of parts.slice(0, -1)) {
    if (typeof cur[p] !== 'object' || cur[p] === null) cur[p] = {};
    cur = cur[p] as Json;
  }
  cur[parts[parts.length - 1]!] = value;
}

/** A logical interface (lan, wan) → its device; a name UCI does not know is taken as a device. */
export function resolveDevice(name: string, uci: UciAccess): string {
  const fromNetifd = uci.interfaceDevice(name);
  if (fromNetifd !== null) return fromNetifd;
  const text = uci.show(`network.${name}`);
  if (text !== null) {
    const s = parseUciShow(text, 'network').find((x) => x.name === name);
    const dev = s?.options.get('device') ?? s?.options.get('ifname');
    if (typeof dev === 'string' && dev !== '') return dev;
  }
  return name;
}
