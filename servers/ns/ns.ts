// The Notification Server (docs/ns.md): wakes nodes behind NATs through one MQTT session each, so
// that they need not send a UDP keepalive every 20 s to keep their NAT mapping open.
//
//   DC ──(mutual TLS, TCP 4701: first contact, Kdcns from the TLS exporter, NS Hello)──► NS
//   DC ──(UDP 4700, Kdcns: NS Key Distribution {Kntmns of a node} / Notification {node})──► NS
//   NS ──(MQTT over TLS, 8883: Notification sealed under the node's Kntmns, topic ntmobile/n/<key ID>)──► node
//
// A DC may hand over keys only for nodes of its own zone (the DNS names of its certificate), and
// may wake only the nodes whose keys it handed over. The broker (servers/ns/broker.ts) lets a node
// in with credentials derived from its Kntmns and lets it subscribe to its own topic only.

import { createSocket, type Socket } from 'node:dgram';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { type Server as TlsServer } from 'node:tls';
import { ControlChannel, type Incoming } from '../../protocol/channel.js';
import { KeyClass, Status, type Body, type StatusCode } from '../../protocol/control.js';
import { classifyDatagram, DatagramKind } from '../../protocol/demux.js';
import { decodeSockaddr, encodeSockaddr } from '../../protocol/endpoint.js';
import { KDCNS_LIFETIME_MS } from '../../protocol/keys.js';
import { mqttPassword, mqttUsername, notifyTopic, sealNotification } from '../../protocol/notify.js';
import { checkOwnCertificate, listenFirstContact, type TlsFiles } from '../tls.js';
import { EmbeddedBroker, ExternalBroker, type Broker } from './broker.js';
import { writeStateFile } from '../state-file.js';

export type BrokerConfig =
  | { type: 'embedded'; address: string; port: number; publicUrl: string; maxKeepaliveSeconds: number }
  | { type: 'external'; url: string; caFile: string | null; username: string; password: string; accessControl: 'dynsec' | 'none'; publicUrl: string };

export interface NsConfig {
  /** A DNS name of its certificate (OU ns): the name DCs connect with and its NS Hello says. */
  name: string;
  listen: { address: string; port: number };
  tls: TlsFiles & { port: number };
  broker: BrokerConfig;
  /** Where Kntmns keys are kept across restarts (0600); null: in memory only. */
  statePath: string | null;
  maxKeys: number;
  verbose?: boolean;
}


export class NsCounters {
  /** First contacts from DCs (Kdcns taken, NS Hello sent). */
  tlsAccepted = 0;
  /** TLS handshakes that failed, and peers whose certificate role is not `dc`. */
  tlsRejected = 0;
  keyDistributions = 0;
  /** Keys refused: a node outside the DC's zones, a key ID another DC's node holds, the key limit. */
  keyDistributionsRefused = 0;
  keysExpired = 0;
  /** Writes of the key state file that failed (full disk, permissions): the keys stay in memory. */
  stateWriteFailed = 0;
  notifications = 0;
  /** Notifications for a node with no live key here (answered notRegistered: the DC hands the key again). */
  notifyUnknownNode = 0;
  /** Notifications from a DC for a node whose key another DC handed over. */
  notifyForeignDc = 0;
  /** The broker did not take a notification. */
  notifyBrokerFailed = 0;
  /** Authenticated messages that are not for an NS, or under the wrong key class. */
  ignoredMessages = 0;
  /** Datagrams that are not control messages. */
  invalidDatagrams = 0;
  brokerErrors = 0;
}

interface DcKey {
  key: Buffer;
  dc: string;
  /** The zones the DC speaks for: the DNS names of its certificate. */
  domains: string[];
  contactedAt: number;
  expiresAt: number;
}

interface NodeKey {
  keyId: number;
  key: Buffer;
  node: string;
  /** The DC that handed it over (its certificate's first DNS name). */
  dc: string;
  expiresAt: number;
}

export interface NsStatus {
  name: string;
  udpPort: number;
  tlsPort: number;
  broker: { description: string; publicUrl: string; port: number | null; connectedNodes: number | null };
  counters: { ns: Record<string, number>; broker: Record<string, number>; channel: Record<string, number> };
  keys: { keyId: number; user: string; node: string; dc: string; expiresAt: number }[];
  dcs: { keyId: number; dc: string; contactedAt: number; expiresAt: number }[];
}

export interface NsDeps {
  now?: () => number;
  log?: (line: string) => void;
  /** A broker made elsewhere (tests). */
  broker?: Broker;
}

export class NotificationServer {
  readonly counters = new NsCounters();
  readonly channel: ControlChannel;
  readonly broker: Broker;
  private readonly dcKeys = new Map<number, DcKey>();
  private readonly nodeKeys = new Map<number, NodeKey>();
  private readonly byNode = new Map<string, number>();
  private readonly now: () => number;
  private readonly log: (line: string) => void;
  private socket: Socket | null = null;
  private tlsServer: TlsServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    readonly config: NsConfig,
    deps: NsDeps = {},
  ) {
    this.now = deps.now ?? Date.now;
    this.log = deps.log ?? ((l) => process.stderr.write(`ns ${config.name}: ${l}\n`));
    this.channel = new ControlChannel({
      send: (d, to) => this.send(d, to),
      keys: (cls, id) => (cls === KeyClass.dcns ? this.dcKey(id)?.key : undefined),
      onMessage: (m) => this.dispatch(m),
      now: this.now,
      ...(config.verbose ? { trace: (l: string) => this.log(l) } : {}),
    });
    const b = config.broker;
    const brokerLog = (l: string): void => this.trace(l);
    this.broker =
      deps.broker ??
      (b.type === 'embedded'
        ? new EmbeddedBroker({ address: b.address, port: b.port, cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile), maxKeepaliveSeconds: b.maxKeepaliveSeconds, log: brokerLog })
        : new ExternalBroker({ url: b.url, caFile: b.caFile, username: b.username, password: b.password, accessControl: b.accessControl, log: (l) => this.log(l) }));
  }

  get port(): number {
    return this.socket?.address().port ?? 0;
  }

  get tlsPort(): number {
    const a = this.tlsServer?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  get brokerPort(): number | null {
    return this.broker instanceof EmbeddedBroker ? this.broker.port : null;
  }

  async start(): Promise<void> {
    const c = this.config;
    checkOwnCertificate(c.tls.certFile, c.name, 'ns');
    try {
      this.load();
      await this.broker.start();
      for (const k of this.nodeKeys.values()) await this.broker.addNode({ keyId: k.keyId, password: mqttPassword(k.key) });
      const socket = createSocket({ type: c.listen.address.includes(':') ? 'udp6' : 'udp4', reuseAddr: false });
      socket.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo.address, rinfo.port));
      socket.on('error', (e) => this.log(`udp: ${e.message}`));
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(c.listen.port, c.listen.address, () => {
          socket.off('error', reject);
          resolve();
        });
      });
      this.socket = socket;
      this.tlsServer = await listenFirstContact('ns', {
        tls: c.tls,
        address: c.listen.address,
        hello: () => ({ name: c.name, broker: c.broker.publicUrl }),
        onKey: (k, names) => this.addDcKey(k.keyId, k.key, names[0]!, names),
        counters: this.counters,
        trace: (l) => this.trace(l),
      });
    } catch (e) {
      await this.stop();
      throw e;
    }
    this.sweepTimer = setInterval(() => void this.sweep(), 1000);
    this.sweepTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.channel.close();
    this.socket?.close();
    this.socket = null;
    await new Promise<void>((r) => (this.tlsServer?.listening ? this.tlsServer.close(() => r()) : r()));
    await this.broker.stop().catch((e: Error) => this.log(`broker: ${e.message}`));
  }

  /** Kdcns for a DC (first contact); public for tests that skip TLS. */
  addDcKey(keyId: number, key: Buffer, dc: string, domains: string[] = [dc]): void {
    const now = this.now();
    this.dcKeys.set(keyId, { key: Buffer.from(key), dc, domains, contactedAt: now, expiresAt: now + KDCNS_LIFETIME_MS });
  }

  /** Expiry, once a second: Kdcns and Kntmns keys. */
  async sweep(): Promise<void> {
    const now = this.now();
    for (const [id, k] of this.dcKeys) if (k.expiresAt <= now) this.dcKeys.delete(id);
    let changed = false;
    for (const k of [...this.nodeKeys.values()]) {
      if (k.expiresAt > now) continue;
      this.dropNodeKey(k);
      this.counters.keysExpired++;
      changed = true;
      await this.broker.removeNode(k.keyId).catch((e: Error) => this.brokerError(e));
    }
    if (changed) this.save();
  }

  status(): NsStatus {
    return {
      name: this.config.name,
      udpPort: this.port,
      tlsPort: this.tlsPort,
      broker: { description: this.broker.description, publicUrl: this.config.broker.publicUrl, port: this.brokerPort, connectedNodes: this.broker.connectedNodes() },
      counters: { ns: { ...this.counters }, broker: { ...this.broker.counters }, channel: { ...this.channel.counters } },
      keys: [...this.nodeKeys.values()].map((k) => ({ keyId: k.keyId, user: mqttUsername(k.keyId), node: k.node, dc: k.dc, expiresAt: k.expiresAt })),
      dcs: [...this.dcKeys].map(([keyId, k]) => ({ keyId, dc: k.dc, contactedAt: k.contactedAt, expiresAt: k.expiresAt })),
    };
  }

  private dcKey(keyId: number): DcKey | undefined {
    const k = this.dcKeys.get(keyId);
    return k !== undefined && k.expiresAt > this.now() ? k : undefined;
  }

  private send(d: Buffer, to: Buffer): void {
    // The channel speaks in 28-byte sockaddrs (protocol/endpoint.ts); dgram wants address and port,
    // and a dual-stack (udp6) socket wants IPv4 addresses in their v4-mapped form.
    const e = decodeSockaddr(to);
    const v6 = this.socket?.address().family === 'IPv6';
    this.socket?.send(d, e.port, v6 && e.family === 4 ? `::ffff:${e.address}` : e.address);
  }

  private onDatagram(msg: Buffer, address: string, port: number): void {
    if (classifyDatagram(msg, 0, msg.length) !== DatagramKind.control) {
      this.counters.invalidDatagrams++;
      return;
    }
    this.channel.receive(msg, encodeSockaddr(address, port));
  }

  // ---- UDP control messages ------------------------------------------------------------------

  private dispatch(m: Incoming): void {
    const dc = m.key.keyClass === KeyClass.dcns ? this.dcKey(m.key.keyId) : undefined;
    if (dc === undefined) {
      this.counters.ignoredMessages++;
      return;
    }
    const { message } = m;
    if (message.type === 'nsKeyDistribution') void this.onKeyDistribution(m, dc, message.body);
    else if (message.type === 'notification') void this.onNotification(m, dc, message.body);
    else this.counters.ignoredMessages++;
  }

  private ack(m: Incoming, status: StatusCode, reason: string): void {
    this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status, reason });
  }

  private async onKeyDistribution(m: Incoming, dc: DcKey, b: Body<'nsKeyDistribution'>): Promise<void> {
    const refuse = (status: StatusCode, reason: string): void => {
      this.counters.keyDistributionsRefused++;
      this.trace(`key ${b.keyId} for ${b.node} from ${dc.dc} refused: ${reason}`);
      this.ack(m, status, reason);
    };
    if (!dc.domains.some((d) => b.node === d || b.node.endsWith(`.${d}`))) return refuse(Status.notAuthorized, `${b.node} is not in the zones of ${dc.dc}`);
    if (b.expiresAt <= this.now()) return refuse(Status.badRequest, 'the key has expired already');
    const clash = this.nodeKeys.get(b.keyId);
    if (clash !== undefined && (clash.node !== b.node || clash.dc !== dc.dc)) return refuse(Status.badRequest, `key ID ${mqttUsername(b.keyId)} is in use`);
    if (clash !== undefined && clash.key.equals(b.key)) {
      // The key we hold already (a DC making sure we have it): the node's session stays as it is.
      clash.expiresAt = b.expiresAt;
      this.save();
      this.counters.keyDistributions++;
      return this.ack(m, Status.ok, '');
    }
    const previousId = this.byNode.get(b.node);
    const previous = previousId === undefined ? undefined : this.nodeKeys.get(previousId);
    if (previous !== undefined && previous.dc !== dc.dc) return refuse(Status.notAuthorized, `${b.node}'s key came from ${previous.dc}`);
    if (previous === undefined && clash === undefined && this.nodeKeys.size >= this.config.maxKeys) return refuse(Status.overQuota, `${this.config.maxKeys} keys held`);
    const entry: NodeKey = { keyId: b.keyId, key: Buffer.from(b.key), node: b.node, dc: dc.dc, expiresAt: b.expiresAt };
    try {
      // The node's older key (a new grant replaces it) is shut out first: one session per node.
      if (previous !== undefined && previous.keyId !== b.keyId) {
        this.dropNodeKey(previous);
        await this.broker.removeNode(previous.keyId);
      }
      await this.broker.addNode({ keyId: b.keyId, password: mqttPassword(entry.key) });
    } catch (e) {
      this.brokerError(e as Error);
      return refuse(Status.unavailable, `broker: ${(e as Error).message}`);
    }
    this.nodeKeys.set(b.keyId, entry);
    this.byNode.set(b.node, b.keyId);
    this.save();
    this.counters.keyDistributions++;
    this.trace(`key ${mqttUsername(b.keyId)} for ${b.node} from ${dc.dc}`);
    this.ack(m, Status.ok, '');
  }

  private async onNotification(m: Incoming, dc: DcKey, b: Body<'notification'>): Promise<void> {
    this.counters.notifications++;
    const keyId = this.byNode.get(b.node);
    const k = keyId === undefined ? undefined : this.nodeKeys.get(keyId);
    if (k === undefined || k.expiresAt <= this.now()) {
      this.counters.notifyUnknownNode++;
      return this.ack(m, Status.notRegistered, `no key for ${b.node}`);
    }
    if (k.dc !== dc.dc) {
      this.counters.notifyForeignDc++;
      return this.ack(m, Status.notAuthorized, `${b.node}'s key came from ${k.dc}`);
    }
    try {
      await this.broker.publish(notifyTopic(k.keyId), sealNotification(b, k, this.now()));
    } catch (e) {
      this.counters.notifyBrokerFailed++;
      this.brokerError(e as Error);
      return this.ack(m, Status.unavailable, `broker: ${(e as Error).message}`);
    }
    this.trace(`notification for ${b.node} (route ${b.routeId}) published on ${notifyTopic(k.keyId)}`);
    this.ack(m, Status.ok, '');
  }

  private dropNodeKey(k: NodeKey): void {
    this.nodeKeys.delete(k.keyId);
    if (this.byNode.get(k.node) === k.keyId) this.byNode.delete(k.node);
  }

  private brokerError(e: Error): void {
    this.counters.brokerErrors++;
    this.log(`broker: ${e.message}`);
  }

  private trace(line: string): void {
    if (this.config.verbose) this.log(line);
  }

  // ---- the state file ------------------------------------------------------------------------

  private load(): void {
    const path = this.config.statePath;
    if (path === null || !existsSync(path)) return;
    const mode = statSync(path).mode & 0o777;
    if (mode & 0o077) throw new Error(`${path}: mode ${mode.toString(8)}; the state holds keys, want 600`);
    let s: { version: number; keys: { keyId: number; key: string; node: string; dc: string; expiresAt: number }[] };
    try {
      s = JSON.parse(readFileSync(path, 'utf8')) as typeof s;
    } catch (e) {
      throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
    }
    if (s.version !== 1 || !Array.isArray(s.keys)) throw new Error(`${path}: state version ${String(s.version)}, want 1`);
    const now = this.now();
    for (const k of s.keys) {
      if (k.expiresAt <= now) continue;
      this.nodeKeys.set(k.keyId, { ...k, key: Buffer.from(k.key, 'base64') });
      this.byNode.set(k.node, k.keyId);
    }
  }

  /** Written atomically (temporary file, fsync, rename), mode 0600, after every change. */
  /** Writes the keys to the state file; a failed write is logged and counted, never thrown. */
  private save(): void {
    const path = this.config.statePath;
    if (path === null) return;
    const s = { version: 1, keys: [...this.nodeKeys.values()].map((k) => ({ ...k, key: k.key.toString('base64') })) };
    try {
      writeStateFile(path, JSON.stringify(s));
    } catch (e) {
      this.counters.stateWriteFailed++;
      this.log(`state file ${path}: ${(e as Error).message} (the keys stay in memory; a restart loses them)`);
    }
  }
}
