// The DC's Relay Servers (docs/relay.md): which RS carries a route, and Kdcrs, the key the DC
// shares with each. First contact is mutual TLS to the RS's TLS port with certificates from the
// operator's CA (role "rs", the relay's configured name among the subjectAltNames); both ends take
// the key and its ID from the TLS exporter, the RS writes one Relay Hello (its name and static
// X25519 public key, which gateway routes need) and the DC closes. From then on the DC sends Relay
// and Gateway Directions over UDP under Kdcrs. Only the DC makes first contact: the RS never asks.

import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { ZERO_KEY, type WireEndpoint } from '../../protocol/control.js';
import { KDCRS_LIFETIME_MS } from '../../protocol/keys.js';
import { firstContact, type TlsFiles } from '../tls.js';

/**
 * How long first contact may take, handshake and Relay Hello each: short, because the node's
 * Direction Request waits for it (the router gives up after under 3 s) and the next RS may answer.
 */
const CONTACT_TIMEOUT_MS = 2000;
/**
 * An RS that failed a route within this long is tried after the others: a dead first choice
 * would otherwise cost every route of its pairs a first contact timeout or three retransmissions.
 */
export const RELAY_FAILURE_MEMORY_MS = 60_000;

export interface RelayConfig {
  /** TLS server name: a DNS subjectAltName of the RS's certificate, and the name it says in its Relay Hello. */
  name: string;
  address: string | null;
  address6: string | null;
  /** UDP: hole punching, relayed traffic, Relay/Gateway Directions. */
  port: number;
  /** TCP: mutual TLS, first contact. */
  tlsPort: number;
}

export type Family = 4 | 6;

/** What first contact yields. */
export interface RelayContact {
  keyId: number;
  key: Buffer;
  /** The RS's static X25519 public key (from its Relay Hello): the far end of gateway tunnels. */
  publicKey: Buffer;
}

export interface RelayKey extends RelayContact {
  relay: RelayConfig;
  contactedAt: number;
  expiresAt: number;
}

export function familyOf(address: string): Family {
  const f = isIP(address);
  if (f !== 4 && f !== 6) throw new Error(`"${address}" is not an IP address`);
  return f;
}

export function relayHas(r: RelayConfig, family: Family): boolean {
  return (family === 4 ? r.address : r.address6) !== null;
}

/** Where a node of `family` reaches the RS (null: the RS has no address of that family). */
export function relayEndpoint(r: RelayConfig, family: Family): WireEndpoint | null {
  const address = family === 4 ? r.address : r.address6;
  return address === null ? null : { address, port: r.port };
}

/** The address the DC itself uses for the RS (first contact and directions): IPv4 if it has one. */
export function relayControlAddress(r: RelayConfig): string {
  return r.address ?? r.address6!;
}

/** Rendezvous (highest random weight) score: SHA-256(relay name ‖ 0 ‖ the two node names, sorted, joined by 0). */
export function rendezvousScore(relayName: string, nodeA: string, nodeB: string): Buffer {
  const [x, y] = nodeA <= nodeB ? [nodeA, nodeB] : [nodeB, nodeA];
  return createHash('sha256').update(`${relayName}\0${x}\0${y}`, 'utf8').digest();
}

/**
 * The relays in the order a route between nodeA and nodeB tries them: highest score first. The
 * order does not depend on the order of `relays` or on which end asks; a pair keeps its RS while
 * that RS is listed, pairs spread evenly, and removing an RS moves only the pairs it had.
 */
export function orderRelays(relays: readonly RelayConfig[], nodeA: string, nodeB: string): RelayConfig[] {
  return relays
    .map((r) => ({ r, score: rendezvousScore(r.name, nodeA, nodeB) }))
    .sort((p, q) => Buffer.compare(q.score, p.score) || (p.r.name < q.r.name ? -1 : p.r.name > q.r.name ? 1 : 0))
    .map((p) => p.r);
}

/** The candidates for a route whose ends need `families` (one per end), in the order to try them. */
export function pickRelays(relays: readonly RelayConfig[], families: readonly Family[], nodeA: string, nodeB: string): RelayConfig[] {
  return orderRelays(
    relays.filter((r) => families.every((f) => relayHas(r, f))),
    nodeA,
    nodeB,
  );
}

/**
 * The order to try `candidates` (already in rendezvous order) in: those that did not fail within
 * `memoryMs` first, then those that did, each group keeping its order. `failedAt` is when an RS
 * last failed (undefined: not since it last succeeded).
 */
export function preferHealthy(candidates: readonly RelayConfig[], failedAt: (name: string) => number | undefined, now: number, memoryMs = RELAY_FAILURE_MEMORY_MS): RelayConfig[] {
  const recent = (r: RelayConfig): boolean => {
    const t = failedAt(r.name);
    return t !== undefined && now - t < memoryMs;
  };
  return [...candidates.filter((r) => !recent(r)), ...candidates.filter(recent)];
}

/** First contact with one RS over mutual TLS: the key from the exporter, the public key from its Relay Hello. */
export async function contactRelay(files: TlsFiles, r: RelayConfig, timeoutMs = CONTACT_TIMEOUT_MS): Promise<RelayContact> {
  const c = await firstContact(files, 'rs', { name: r.name, address: relayControlAddress(r), tlsPort: r.tlsPort }, timeoutMs);
  if (c.hello.publicKey.equals(ZERO_KEY)) throw new Error('Relay Hello without a public key');
  return { keyId: c.keyId, key: c.key, publicKey: c.hello.publicKey };
}

export interface RelayStatus {
  name: string;
  address: string | null;
  address6: string | null;
  port: number;
  tlsPort: number;
  /** Whether the DC holds a live Kdcrs for it. */
  contacted: boolean;
  contactedAt: number | null;
  keyExpiresAt: number | null;
  keyId: number | null;
  lastError: string | null;
  /** When it last failed a route (ms since the epoch), null once it carried one again; within a minute it is tried last. */
  failedAt: number | null;
}

export class RelayServers {
  private readonly byName = new Map<string, RelayKey>();
  private readonly byId = new Map<number, RelayKey>();
  private readonly connecting = new Map<string, Promise<RelayKey>>();
  private readonly lastError = new Map<string, string>();
  private readonly failedAt = new Map<string, number>();
  /** First contacts made (successful). */
  contacts = 0;

  constructor(
    readonly relays: readonly RelayConfig[],
    private readonly contact: (r: RelayConfig) => Promise<RelayContact>,
    private readonly now: () => number = Date.now,
  ) {}

  static withTls(relays: readonly RelayConfig[], files: TlsFiles, now: () => number = Date.now): RelayServers {
    return new RelayServers(relays, (r) => contactRelay(files, r), now);
  }

  /** The key a datagram under Kdcrs names (expired keys are gone). */
  key(keyId: number): RelayKey | undefined {
    const k = this.byId.get(keyId);
    return k !== undefined && k.expiresAt > this.now() ? k : undefined;
  }

  /** The live key for an RS, or a new one from first contact; concurrent callers share one contact. */
  async ensure(name: string): Promise<RelayKey> {
    const k = this.byName.get(name);
    if (k !== undefined && k.expiresAt > this.now()) return k;
    let p = this.connecting.get(name);
    if (p === undefined) {
      const relay = this.relays.find((r) => r.name === name);
      if (relay === undefined) throw new Error(`RS ${name} is not configured`);
      p = this.contact(relay)
        .then(
          (c) => this.store(relay, c),
          (e: Error) => {
            this.lastError.set(name, e.message);
            throw e;
          },
        )
        .finally(() => this.connecting.delete(name));
      this.connecting.set(name, p);
    }
    return p;
  }

  /** Drops the key for an RS (it stopped answering under it, e.g. after a restart). */
  forget(name: string): void {
    const k = this.byName.get(name);
    if (k === undefined) return;
    this.byName.delete(name);
    this.byId.delete(k.keyId);
  }

  /** Notes that and why an RS failed a request: the status shows it, and it is tried last for a while (tryOrder). */
  failed(name: string, why: string): void {
    this.lastError.set(name, why);
    this.failedAt.set(name, this.now());
  }

  /** An RS took a route: it is no longer tried last. */
  succeeded(name: string): void {
    this.failedAt.delete(name);
  }

  /** The candidates (in rendezvous order) in the order to try them: RSs that failed in the last minute last. */
  tryOrder(candidates: readonly RelayConfig[]): RelayConfig[] {
    return preferHealthy(candidates, (name) => this.failedAt.get(name), this.now());
  }

  status(): RelayStatus[] {
    const now = this.now();
    return this.relays.map((r) => {
      const k = this.byName.get(r.name);
      const live = k !== undefined && k.expiresAt > now;
      return {
        name: r.name,
        address: r.address,
        address6: r.address6,
        port: r.port,
        tlsPort: r.tlsPort,
        contacted: live,
        contactedAt: k?.contactedAt ?? null,
        keyExpiresAt: k?.expiresAt ?? null,
        keyId: live ? k.keyId : null,
        lastError: this.lastError.get(r.name) ?? null,
        failedAt: this.failedAt.get(r.name) ?? null,
      };
    });
  }

  private store(relay: RelayConfig, c: RelayContact): RelayKey {
    this.forget(relay.name);
    const now = this.now();
    const entry: RelayKey = { ...c, relay, contactedAt: now, expiresAt: now + KDCRS_LIFETIME_MS };
    // Another RS with the same key ID (1 in 2^32): a key ID names one key, so that RS is
    // forgotten and makes first contact again on its next route.
    const clash = this.byId.get(c.keyId);
    if (clash !== undefined && clash.relay.name !== relay.name) this.forget(clash.relay.name);
    this.byName.set(relay.name, entry);
    this.byId.set(c.keyId, entry);
    this.contacts++;
    this.lastError.delete(relay.name);
    return entry;
  }
}
