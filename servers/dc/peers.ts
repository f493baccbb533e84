// Kdcdc (seed 003 key table): the key a DC shares with each other DC. First contact is mutual TLS
// with certificates from the operator's CA (role "dc", the zone among the subjectAltNames); both
// ends take the key and its ID from the TLS exporter (protocol/keys.ts), and from then on talk
// over UDP under it. Either end may make the first contact; the key is good both ways.

import { type TLSSocket } from 'node:tls';
import { DiscoveryError, findDc, DC_TLS_PORT, type DiscoveryOptions } from '../../protocol/discovery.js';
import { exportServerKey } from '../../protocol/keys.js';
import { peerIdentity } from '../identity.js';
import { connectMutualTls, type TlsFiles } from '../tls.js';

export const KDCDC_LIFETIME_MS = 3600_000;

export interface PeerKey {
  keyId: number;
  key: Buffer;
  /** The zones the peer's certificate names: what it may speak for. */
  domains: string[];
  expiresAt: number;
  /** The peer DC's UDP control address, once known. */
  address: string | null;
}

/** No zone of the name is delegated anywhere: the name has no NTMobile DC (a general host). */
export class NoDcError extends Error {
  override readonly name = 'NoDcError';
}

export class PeerDcs {
  private readonly byId = new Map<number, PeerKey>();
  private readonly byDomain = new Map<string, PeerKey>();
  private readonly connecting = new Map<string, Promise<PeerKey>>();

  constructor(
    private readonly files: TlsFiles,
    private readonly discovery: DiscoveryOptions,
    private readonly tlsPort = DC_TLS_PORT,
    private readonly now: () => number = Date.now,
  ) {}

  /** The TLS server side of a first contact: called for a peer whose certificate says role "dc". */
  accept(socket: TLSSocket): PeerKey {
    const { dnsNames } = peerIdentity(socket.getPeerCertificate());
    return this.store(exportServerKey(socket, 'kdcdc'), dnsNames, socket.remoteAddress ?? null);
  }

  key(keyId: number): PeerKey | undefined {
    const k = this.byId.get(keyId);
    return k !== undefined && k.expiresAt > this.now() ? k : undefined;
  }

  /** The key for the DC of `zone`, making first contact if there is none. */
  async forZone(zone: string, serverName: string, address: string): Promise<PeerKey> {
    const k = this.byDomain.get(zone);
    if (k !== undefined && k.expiresAt > this.now()) {
      k.address = address;
      return k;
    }
    let p = this.connecting.get(zone);
    if (p === undefined) {
      p = this.contact(zone, serverName, address).finally(() => this.connecting.delete(zone));
      this.connecting.set(zone, p);
    }
    return p;
  }

  /** Drops the key for a zone (its DC stopped answering under it, e.g. after a restart). */
  forget(zone: string): void {
    const k = this.byDomain.get(zone);
    if (k === undefined) return;
    for (const d of k.domains) this.byDomain.delete(d);
    this.byId.delete(k.keyId);
  }

  /**
   * Where the DC of `name` is. Throws NoDcError when no zone of the name has an NS record (every
   * lookup answered NXDOMAIN or no data): a general host. Any other failure (a resolver that
   * fails or times out, an NS without an address) is not proof of that and throws as it is.
   */
  async locate(name: string): Promise<{ zone: string; nsName: string; address: string }> {
    try {
      return await findDc(name, this.discovery);
    } catch (e) {
      // findDc tells this case only by its message (protocol/discovery.ts).
      if (e instanceof DiscoveryError && e.message.startsWith('no NS record for any zone')) throw new NoDcError(e.message);
      throw e;
    }
  }

  private async contact(zone: string, serverName: string, address: string): Promise<PeerKey> {
    const socket = await connectMutualTls(this.files, address, this.tlsPort, serverName);
    try {
      const id = peerIdentity(socket.getPeerCertificate());
      if (id.role !== 'dc') throw new Error(`DC ${serverName}: certificate role ${id.role ?? 'none'}, want dc`);
      if (!id.dnsNames.includes(zone)) throw new Error(`DC ${serverName}: certificate does not name zone ${zone}`);
      return this.store(exportServerKey(socket, 'kdcdc'), id.dnsNames, address);
    } finally {
      socket.end();
    }
  }

  private store(k: { keyId: number; key: Buffer }, domains: string[], address: string | null): PeerKey {
    const entry: PeerKey = { ...k, domains, expiresAt: this.now() + KDCDC_LIFETIME_MS, address };
    this.byId.set(k.keyId, entry);
    for (const d of domains) this.byDomain.set(d, entry);
    return entry;
  }
}
