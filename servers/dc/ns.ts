// The DC's Notification Server (docs/ns.md) and Kdcns, the key the two share. First contact is
// mutual TLS to the NS's TLS port with certificates from the operator's CA (role "ns", the NS's
// configured name among the subjectAltNames), exactly as with an RS (servers/dc/relays.ts): both
// ends take the key and its ID from the TLS exporter, the NS writes one NS Hello (its name and the
// broker URL its nodes connect to) and the DC closes. From then on the DC sends NS Key
// Distribution and Notification over UDP under Kdcns. Only the DC makes first contact.

import { type WireEndpoint } from '../../protocol/control.js';
import { KDCNS_LIFETIME_MS } from '../../protocol/keys.js';
import { firstContact, type TlsFiles } from '../tls.js';
/** First contact happens while a node waits for its grant or a direction waits for a wake: short. */
const CONTACT_TIMEOUT_MS = 2000;

export interface NsConfig {
  /** TLS server name: a DNS subjectAltName of the NS's certificate, and the name its NS Hello says. */
  name: string;
  address: string;
  /** UDP: NS Key Distribution, Notification. */
  port: number;
  /** TCP: mutual TLS, first contact. */
  tlsPort: number;
  /** The longest UDP keepalive interval granted to a node in MQTT mode (seconds). */
  maxKeepaliveSeconds: number;
}

export interface NsContact {
  keyId: number;
  key: Buffer;
  /** The MQTT URL the NS announced for its nodes ('' if none). */
  broker: string;
}

export interface NsKey extends NsContact {
  contactedAt: number;
  expiresAt: number;
}

/** First contact with the NS over mutual TLS: Kdcns from the exporter, the broker URL from its NS Hello. */
export async function contactNs(files: TlsFiles, ns: Pick<NsConfig, 'name' | 'address' | 'tlsPort'>, timeoutMs = CONTACT_TIMEOUT_MS): Promise<NsContact> {
  const c = await firstContact(files, 'ns', ns, timeoutMs);
  return { keyId: c.keyId, key: c.key, broker: c.hello.broker };
}

export interface NsLinkStatus {
  name: string;
  address: string;
  port: number;
  tlsPort: number;
  contacted: boolean;
  contactedAt: number | null;
  keyExpiresAt: number | null;
  keyId: number | null;
  broker: string | null;
  lastError: string | null;
}

/** Kdcns with the one configured NS: made on demand, shared by concurrent callers, dropped on failure. */
export class NsLink {
  private current: NsKey | null = null;
  private connecting: Promise<NsKey> | null = null;
  private lastError: string | null = null;
  contacts = 0;

  constructor(
    readonly config: NsConfig,
    private readonly contact: () => Promise<NsContact>,
    private readonly now: () => number = Date.now,
  ) {}

  static withTls(config: NsConfig, files: TlsFiles, now: () => number = Date.now): NsLink {
    return new NsLink(config, () => contactNs(files, config), now);
  }

  /** Where the DC sends to the NS over UDP. */
  get endpoint(): WireEndpoint {
    return { address: this.config.address, port: this.config.port };
  }

  key(keyId: number): NsKey | undefined {
    const k = this.current;
    return k !== null && k.keyId === keyId && k.expiresAt > this.now() ? k : undefined;
  }

  async ensure(): Promise<NsKey> {
    const k = this.current;
    if (k !== null && k.expiresAt > this.now()) return k;
    if (this.connecting === null) {
      this.connecting = this.contact()
        .then(
          (c) => {
            const now = this.now();
            this.current = { ...c, contactedAt: now, expiresAt: now + KDCNS_LIFETIME_MS };
            this.contacts++;
            this.lastError = null;
            return this.current;
          },
          (e: Error) => {
            this.lastError = e.message;
            throw e;
          },
        )
        .finally(() => (this.connecting = null));
    }
    return this.connecting;
  }

  /** The NS stopped answering under the key (it restarted): the next call makes first contact. */
  forget(): void {
    this.current = null;
  }

  failed(why: string): void {
    this.lastError = why;
  }

  status(): NsLinkStatus {
    const k = this.current;
    const live = k !== null && k.expiresAt > this.now();
    return {
      name: this.config.name,
      address: this.config.address,
      port: this.config.port,
      tlsPort: this.config.tlsPort,
      contacted: live,
      contactedAt: k?.contactedAt ?? null,
      keyExpiresAt: k?.expiresAt ?? null,
      keyId: live ? k.keyId : null,
      broker: k?.broker ?? null,
      lastError: this.lastError,
    };
  }
}
