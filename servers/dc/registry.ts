// The DC's persistent state: node keys from the AS (Kntmdc), the VIP of every name (an IPv4 VIP
// from the configured pool and an IPv6 ULA VIP, stable per name, never reused for another name),
// and the registrations (name → key, observed and reported real address). Written atomically
// (temporary file, fsync, rename) with mode 0600 after every change that must survive a restart;
// keepalive times stay in memory (a restart counts as fresh contact).

import { existsSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { ipv6BytesToText, ipv6ToBytes, numberToIpv4 } from '../../protocol/ip.js';
import { type WireEndpoint } from '../../protocol/control.js';
import { writeStateFile } from '../state-file.js';

export interface NodeKey {
  keyId: number;
  key: Buffer;
  expiresAt: number;
  fqdn: string;
  names: string[];
  publicKey: Buffer | null;
}

export interface Registration {
  name: string;
  keyId: number;
  observed: WireEndpoint;
  local: WireEndpoint | null;
  publicKey: Buffer;
  /** In memory only: ms epoch of the last registration or keepalive. */
  lastSeen: number;
}

/**
 * A node in MQTT mode (docs/ns.md): Kntmns, which the DC made and handed to the NS and the node,
 * and the longer UDP keepalive interval the node was granted. Keyed by the node's Kntmdc key ID:
 * the grant covers every name registered under it.
 */
export interface NotifyGrant {
  nodeKeyId: number;
  keyId: number;
  key: Buffer;
  expiresAt: number;
  /** The node (its Kntmdc's FQDN): the name the NS knows it by. */
  node: string;
  keepaliveSeconds: number;
}

export interface Vips {
  vip4: string;
  vip6: string;
}

export interface PoolConfig {
  /** IPv4 pool as a CIDR, e.g. "10.77.0.0/16" (not 100.64.0.0/10: carriers use it for CGNAT). */
  ipv4: string;
  /** IPv6 ULA prefix, /64 or shorter, e.g. "fd4e:544d:1::/64". */
  ipv6: string;
}

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
}

interface StateFile {
  version: 1;
  nextIndex: number;
  vips: Record<string, { index: number }>;
  keys: { keyId: number; key: string; expiresAt: number; fqdn: string; names: string[]; publicKey: string | null }[];
  registrations: { name: string; keyId: number; observed: WireEndpoint; local: WireEndpoint | null; publicKey: string }[];
  /** Absent in state files written before the NS existed. */
  grants?: { nodeKeyId: number; keyId: number; key: string; expiresAt: number; node: string; keepaliveSeconds: number }[];
}

export class Registry {
  private readonly keys = new Map<number, NodeKey>();
  private readonly registrations = new Map<string, Registration>();
  private readonly vipIndex = new Map<string, number>();
  private readonly grants = new Map<number, NotifyGrant>();
  private nextIndex = 1;
  /** Writes of the state file that failed (the DC's status shows them, and the last error). */
  stateWriteFailed = 0;
  lastStateError: string | null = null;
  private readonly v4Base: number;
  private readonly v4Size: number;
  private readonly v6Prefix: Buffer;

  private constructor(
    private readonly path: string,
    pool: PoolConfig,
    private readonly now: () => number,
  ) {
    const [net4, len4] = parseCidr(pool.ipv4, 4, 'pool.ipv4');
    if (len4 > 30) throw new RegistryError(`pool.ipv4: /${len4} is too small`);
    const base = net4.readUInt32BE(0);
    const cgnatStart = 0x64400000;
    const cgnatEnd = 0x64800000;
    if (base < cgnatEnd && base + 2 ** (32 - len4) > cgnatStart) {
      throw new RegistryError(`pool.ipv4: ${pool.ipv4} is inside 100.64.0.0/10, which carriers use for their NAT`);
    }
    this.v4Base = base;
    this.v4Size = 2 ** (32 - len4);
    const [net6, len6] = parseCidr(pool.ipv6, 6, 'pool.ipv6');
    if (len6 > 64) throw new RegistryError(`pool.ipv6: /${len6}, want /64 or shorter`);
    if ((net6[0]! & 0xfe) !== 0xfc) throw new RegistryError(`pool.ipv6: ${pool.ipv6} is not a ULA prefix (fc00::/7)`);
    this.v6Prefix = net6;
  }

  static open(path: string, pool: PoolConfig, now: () => number = Date.now): Registry {
    const r = new Registry(path, pool, now);
    if (existsSync(path)) {
      const mode = statSync(path).mode & 0o777;
      if (mode & 0o077) throw new RegistryError(`${path}: mode ${mode.toString(8)}; the state holds keys, want 600`);
      let s: StateFile;
      try {
        s = JSON.parse(readFileSync(path, 'utf8')) as StateFile;
      } catch (e) {
        throw new RegistryError(`${path}: not valid JSON (${(e as Error).message})`);
      }
      if (s.version !== 1) throw new RegistryError(`${path}: state version ${String(s.version)}, want 1`);
      r.nextIndex = s.nextIndex;
      for (const [name, v] of Object.entries(s.vips)) r.vipIndex.set(name, v.index);
      for (const k of s.keys) {
        r.keys.set(k.keyId, { ...k, key: Buffer.from(k.key, 'base64'), publicKey: k.publicKey === null ? null : Buffer.from(k.publicKey, 'base64') });
      }
      const t = now();
      for (const g of s.registrations) r.registrations.set(g.name, { ...g, publicKey: Buffer.from(g.publicKey, 'base64'), lastSeen: t });
      for (const g of s.grants ?? []) r.grants.set(g.nodeKeyId, { ...g, key: Buffer.from(g.key, 'base64') });
    }
    return r;
  }

  putKey(k: NodeKey): void {
    // A new login replaces the account's older keys: one live Kntmdc per node.
    for (const [id, old] of this.keys) {
      if (old.fqdn === k.fqdn && id !== k.keyId) {
        this.keys.delete(id);
        this.grants.delete(id);
      }
    }
    this.keys.set(k.keyId, k);
    this.save();
  }

  key(keyId: number): NodeKey | undefined {
    const k = this.keys.get(keyId);
    return k !== undefined && k.expiresAt > this.now() ? k : undefined;
  }

  /** The VIPs of a name, allocated the first time and kept for good. */
  vips(name: string): Vips {
    let index = this.vipIndex.get(name);
    if (index === undefined) {
      if (this.nextIndex >= this.v4Size - 1) throw new RegistryError(`IPv4 pool exhausted (${this.v4Size - 2} addresses)`);
      index = this.nextIndex++;
      this.vipIndex.set(name, index);
      this.save();
    }
    return { vip4: numberToIpv4((this.v4Base + index) >>> 0), vip6: ipv6WithIndex(this.v6Prefix, index) };
  }

  register(reg: Registration): { changed: boolean } {
    const old = this.registrations.get(reg.name);
    const changed =
      old === undefined ||
      old.keyId !== reg.keyId ||
      !sameEndpoint(old.observed, reg.observed) ||
      !sameEndpoint(old.local, reg.local) ||
      !old.publicKey.equals(reg.publicKey);
    this.registrations.set(reg.name, reg);
    if (changed) this.save();
    return { changed };
  }

  registration(name: string): Registration | undefined {
    return this.registrations.get(name);
  }

  byKey(keyId: number): Registration[] {
    return [...this.registrations.values()].filter((r) => r.keyId === keyId);
  }

  all(): Registration[] {
    return [...this.registrations.values()];
  }

  remove(name: string): boolean {
    const had = this.registrations.delete(name);
    if (had) this.save();
    return had;
  }

  /** The node's MQTT-mode grant (live: its Kntmns has not expired). */
  grant(nodeKeyId: number): NotifyGrant | undefined {
    const g = this.grants.get(nodeKeyId);
    return g !== undefined && g.expiresAt > this.now() ? g : undefined;
  }

  putGrant(g: NotifyGrant): void {
    this.grants.set(g.nodeKeyId, g);
    this.save();
  }

  allGrants(): NotifyGrant[] {
    return [...this.grants.values()];
  }

  /**
   * Drops registrations not heard from for maxAgeMs (a number, or per registration: MQTT-mode
   * nodes are allowed longer) and those whose key expired; returns their names. Grants whose
   * Kntmns or Kntmdc expired go too.
   */
  expire(maxAgeMs: number | ((r: Registration) => number)): string[] {
    const t = this.now();
    const gone: string[] = [];
    const age = typeof maxAgeMs === 'number' ? () => maxAgeMs : maxAgeMs;
    for (const r of this.registrations.values()) {
      if (t - r.lastSeen > age(r) || this.key(r.keyId) === undefined) gone.push(r.name);
    }
    for (const n of gone) this.registrations.delete(n);
    let grantsGone = 0;
    for (const [id, g] of this.grants) {
      if (g.expiresAt <= t || this.key(id) === undefined) {
        this.grants.delete(id);
        grantsGone++;
      }
    }
    if (gone.length || grantsGone) this.save();
    return gone;
  }

  private save(): void {
    const s: StateFile = {
      version: 1,
      nextIndex: this.nextIndex,
      vips: Object.fromEntries([...this.vipIndex].map(([n, index]) => [n, { index }])),
      keys: [...this.keys.values()].map((k) => ({ ...k, key: k.key.toString('base64'), publicKey: k.publicKey?.toString('base64') ?? null })),
      registrations: [...this.registrations.values()].map((g) => ({ name: g.name, keyId: g.keyId, observed: g.observed, local: g.local, publicKey: g.publicKey.toString('base64') })),
      grants: [...this.grants.values()].map((g) => ({ ...g, key: g.key.toString('base64') })),
    };
    try {
      writeStateFile(this.path, JSON.stringify(s));
    } catch (e) {
      // A full or read-only disk: the DC goes on from memory (a restart then loses what changed).
      this.stateWriteFailed++;
      this.lastStateError = (e as Error).message;
    }
  }
}

function sameEndpoint(a: WireEndpoint | null, b: WireEndpoint | null): boolean {
  return a === b || (a !== null && b !== null && a.address === b.address && a.port === b.port);
}

function parseCidr(text: string, family: 4 | 6, field: string): [Buffer, number] {
  const [addr, len] = text.split('/');
  const bits = Number(len);
  if (addr === undefined || isIP(addr) !== family || !Number.isInteger(bits) || bits < 0 || bits > (family === 4 ? 32 : 128)) {
    throw new RegistryError(`${field}: "${text}" is not an IPv${family} prefix`);
  }
  const bytes = family === 4 ? Buffer.from(addr.split('.').map(Number)) : ipv6ToBytes(addr);
  return [bytes, bits];
}

function ipv6WithIndex(prefix: Buffer, index: number): string {
  const b = Buffer.from(prefix);
  b.fill(0, 8);
  b.writeUInt32BE(index, 12);
  return ipv6BytesToText(b);
}
