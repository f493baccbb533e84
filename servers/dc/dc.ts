// The Direction Coordinator (seed 003): registers the nodes of its zone (VIPs, observed and
// reported addresses, keepalives), answers DNS for the zone, and directs every new tunnel:
// a Direction Request from MN → Node Information from CN's DC (over Kdcdc) → a Route Direction
// to each end (responder first, so it holds Ktun before the Tunnel Request arrives), each
// acknowledged by an NTM ACK. Key Distribution from the AS arrives over mutual TLS. Routes that
// cannot go direct, and routes to general (non-NTMobile) hosts, go through a Relay Server
// (docs/relay.md): the DC picks one, hands it the route over Kdcrs, then directs the ends to it.

import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { ControlChannel, RequestHandle, RequestTimeout, type Incoming, type RetransmitPolicy } from '../../protocol/channel.js';
import { DirectionFlags, KeyClass, NotifyReason, PathKind, Role, Status, statusName, ZERO_KEY, type Body, type StatusCode } from '../../protocol/control.js';
import { encodeSockaddr, wireEndpoint } from '../../protocol/endpoint.js';
import { DC_CONTROL_PORT, DC_TLS_PORT, type DiscoveryOptions } from '../../protocol/discovery.js';
import { randomId32, randomKey } from '../../protocol/keys.js';
import { UdpSocket } from '../../netlink/udp.js';
import { classifyDatagram, DatagramKind } from '../../protocol/demux.js';
import { SOCKADDR_SIZE } from '../../tunnel/io.js';
import { parsePrefix, prefixContains, reservedRange, sameAddress } from '../../protocol/ip.js';
import { peerIdentity } from '../identity.js';
import { checkOwnCertificate, onMessages, tlsContextOptions, writeMessage, type TlsFiles } from '../tls.js';
import { DnsServer } from './dns-server.js';
import { NoDcError, PeerDcs } from './peers.js';
import { NsLink, type NsConfig, type NsKey } from './ns.js';
import { Registry, type NotifyGrant, type PoolConfig, type Registration } from './registry.js';
import { familyOf, pickRelays, relayControlAddress, relayEndpoint, relayHas, RelayServers, type RelayConfig, type RelayKey } from './relays.js';
import { decideRoute, relayPlan } from './route.js';

export interface DcConfig {
  zone: string;
  /** The DC's host name, answered as the zone's NS (with glue). */
  nsName: string;
  /** The address other DCs, the AS and nodes reach this DC at (NS glue). */
  publicAddress: string;
  listen: { address: string; port: number };
  tls: TlsFiles & { port: number };
  dns: { address: string; port: number } | null;
  pool: PoolConfig;
  statePath: string;
  keepaliveSeconds: number;
  /** Registrations not heard from for this many keepalive periods expire. */
  expireAfterKeepalives: number;
  routeLifetimeSeconds: number;
  discovery: DiscoveryOptions;
  /** UDP control port of other DCs (the well-known port unless a deployment changes it). */
  peerControlPort: number;
  peerTlsPort: number;
  /** Relay Servers for routes that cannot go direct and for general hosts (none: such routes fail). */
  relays?: RelayConfig[];
  /**
   * General hosts (gateway routes): `allowPrivate` hands the RS addresses in private ranges too
   * (RFC 1918, 100.64.0.0/10, ULA); off by default, so that a DNS answer cannot point an RS at its
   * own networks. Loopback, link-local, multicast, unspecified and reserved addresses, the VIP
   * pools, the relays' and this DC's addresses are never handed on.
   */
  general?: { allowPrivate: boolean };
  /** The Notification Server that wakes this DC's nodes in MQTT mode (docs/ns.md; none: no MQTT mode). */
  ns?: NsConfig | null;
  retransmit?: RetransmitPolicy;
  verbose?: boolean;
}

/** DC ↔ DC requests: a short first try, so that a peer that lost Kdcdc is re-contacted quickly. */
const PEER_RETRANSMIT: RetransmitPolicy = { initialMs: 250, maxMs: 500, tries: 3 };
/** DC → RS directions: as short, so that a restarted RS is re-contacted, or the next one tried, quickly. */
const RELAY_RETRANSMIT: RetransmitPolicy = { initialMs: 250, maxMs: 500, tries: 3 };
/** DC → NS requests: as short, so that a restarted NS is re-contacted quickly. */
const NS_RETRANSMIT: RetransmitPolicy = { initialMs: 250, maxMs: 500, tries: 3 };
/**
 * A Route Direction to a node in MQTT mode: its NAT mapping may be gone until the NS has woken it,
 * so the schedule is a little longer than the default (about 7 s in all), and each keepalive from
 * the node sends it again at once, to where that keepalive came from.
 */
const WAKE_RETRANSMIT: RetransmitPolicy = { initialMs: 300, maxMs: 1000, tries: 8 };
/** At most this many addresses of a general host per family go to the RS and the node. */
const MAX_GATEWAY_TARGETS = 8;

type CnDc = { keyId: number; key: Buffer; to: Buffer };
type Fail = (status: number, reason: string) => void;

export const DC_DEFAULTS = {
  keepaliveSeconds: 20,
  expireAfterKeepalives: 3,
  routeLifetimeSeconds: 3600,
  peerControlPort: DC_CONTROL_PORT,
  peerTlsPort: DC_TLS_PORT,
};

/** What the DC refused, by reason: each a security-relevant event somebody may want to alert on. */
export class DcCounters {
  registrations = 0;
  registrationForeignName = 0;
  registrationKeyMismatch = 0;
  keepalives = 0;
  keepaliveUnknown = 0;
  directions = 0;
  directionsFailed = 0;
  directionForeignSource = 0;
  nodeInformation = 0;
  routeDirectionForged = 0;
  keyDistributions = 0;
  tlsRejected = 0;
  expired = 0;
  /** Routes an RS accepted to relay between two nodes. */
  relayRoutes = 0;
  /** Routes to general hosts an RS accepted as gateway. */
  gatewayRoutes = 0;
  /** An RS failed a route: first contact failed, no answer, or it refused; the next one is tried. */
  relayFailures = 0;
  /** Notify Requests answered ok: a node put in MQTT mode (Kntmns made and handed to the NS), or kept in it. */
  notifyGrants = 0;
  /** Notify Requests refused: no NS configured, the NS refused or did not answer, a name not registered under the key. */
  notifyRefused = 0;
  /** Notifications the NS published to a node (a wake for a Route Direction), and those that failed. */
  notifications = 0;
  notificationsFailed = 0;
  /** Kntmns handed to the NS again because it had lost it (it restarted without its state file). */
  nsKeyResent = 0;
  /** Route Directions sent again at once because the node they wait for sent a keepalive (it woke). */
  wakeResends = 0;
}

export class DirectionCoordinator {
  readonly counters = new DcCounters();
  readonly registry: Registry;
  readonly peers: PeerDcs;
  readonly relays: RelayServers;
  /** The NS link (null: no NS configured, no MQTT mode). */
  readonly ns: NsLink | null;
  readonly channel: ControlChannel;
  /** Route Directions waiting for a node in MQTT mode, by registered name: sent again when it wakes. */
  private readonly waking = new Map<string, Set<RequestHandle>>();
  private socket: UdpSocket | null = null;
  private tlsServer: TlsServer | null = null;
  private dns: DnsServer | null = null;
  private expiryTimer: NodeJS.Timeout | null = null;

  constructor(readonly config: DcConfig) {
    this.registry = Registry.open(config.statePath, config.pool);
    this.peers = new PeerDcs(config.tls, config.discovery, config.peerTlsPort);
    this.relays = RelayServers.withTls(config.relays ?? [], config.tls);
    this.ns = config.ns ? NsLink.withTls(config.ns, config.tls) : null;
    this.channel = new ControlChannel({
      send: (d, to) => this.socket?.sendOne(d, to),
      keys: (cls, id) => this.keyFor(cls, id),
      onMessage: (m) => this.dispatch(m),
      ...(config.verbose ? { trace: (l: string) => console.error(`dc ${config.zone}: ${l}`) } : {}),
    });
  }

  get port(): number {
    return this.socket?.port ?? 0;
  }

  get tlsPort(): number {
    const a = this.tlsServer?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  async start(): Promise<void> {
    const c = this.config;
    // The AS hands keys only to a DC whose certificate names its zone with role dc.
    checkOwnCertificate(c.tls.certFile, c.zone, 'dc');
    this.socket = UdpSocket.open({ bindAddress: c.listen.address, port: c.listen.port, gso: false });
    this.socket.start((batch) => {
      for (let i = 0; i < batch.count; i++) {
        const at = batch.offset(i);
        const len = batch.lengths[i]!;
        if (classifyDatagram(batch.buf, at, len) !== DatagramKind.control) continue;
        this.channel.receive(Buffer.from(batch.buf.subarray(at, at + len)), batch.addrs.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE));
      }
    });
    this.tlsServer = createTlsServer({ ...tlsContextOptions(c.tls), requestCert: true, rejectUnauthorized: true }, (s) => this.onTls(s));
    this.tlsServer.on('tlsClientError', () => this.counters.tlsRejected++);
    await new Promise<void>((resolve, reject) => {
      this.tlsServer!.once('error', reject);
      this.tlsServer!.listen(c.tls.port, c.listen.address === '::' ? undefined : c.listen.address, () => resolve());
    });
    if (c.dns) {
      this.dns = new DnsServer({
        zone: c.zone,
        address: c.dns.address,
        port: c.dns.port,
        nsName: c.nsName,
        nsAddresses: [c.publicAddress],
        lookup: (name) => this.dnsLookup(name),
      });
      await this.dns.start();
    }
    const period = c.keepaliveSeconds * 1000;
    this.expiryTimer = setInterval(() => {
      this.counters.expired += this.registry.expire((r) => this.keepalivePeriodMs(r) * c.expireAfterKeepalives).length;
    }, period);
    this.expiryTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    this.channel.close();
    this.socket?.close();
    this.socket = null;
    await this.dns?.stop();
    await new Promise<void>((r) => (this.tlsServer ? this.tlsServer.close(() => r()) : r()));
  }

  status(): object {
    return {
      zone: this.config.zone,
      registrations: this.registry.all().map((r) => ({ name: r.name, ...this.registry.vips(r.name), observed: r.observed, local: r.local, mqtt: this.registry.grant(r.keyId) !== undefined })),
      counters: { ...this.counters, relayContacts: this.relays.contacts, nsContacts: this.ns?.contacts ?? 0, stateWriteFailed: this.registry.stateWriteFailed },
      stateError: this.registry.lastStateError,
      relays: this.relays.status(),
      ns: this.ns?.status() ?? null,
      grants: this.registry.allGrants().map((g) => ({ node: g.node, keyId: g.keyId, expiresAt: g.expiresAt, keepaliveSeconds: g.keepaliveSeconds })),
      channel: { ...this.channel.counters },
    };
  }

  /** How often a registration must be refreshed: the DC's keepalive, or the longer one of a node in MQTT mode. */
  private keepalivePeriodMs(r: Registration): number {
    const g = this.registry.grant(r.keyId);
    return (g !== undefined ? Math.max(g.keepaliveSeconds, this.config.keepaliveSeconds) : this.config.keepaliveSeconds) * 1000;
  }

  private dnsLookup(name: string): { a: string[]; aaaa: string[] } | null {
    if (name === this.config.nsName) return { a: [this.config.publicAddress], aaaa: [] };
    if (this.registry.registration(name) === undefined) return null;
    const v = this.registry.vips(name);
    return { a: [v.vip4], aaaa: [v.vip6] };
  }

  private keyFor(keyClass: number, keyId: number): Buffer | undefined {
    if (keyClass === KeyClass.ntmdc) return this.registry.key(keyId)?.key;
    if (keyClass === KeyClass.dcdc) return this.peers.key(keyId)?.key;
    if (keyClass === KeyClass.dcrs) return this.relays.key(keyId)?.key;
    if (keyClass === KeyClass.dcns) return this.ns?.key(keyId)?.key;
    return undefined;
  }

  // ---- mutual TLS: Key Distribution from the AS, first contact from other DCs -----------------

  private onTls(socket: TLSSocket): void {
    socket.on('error', () => undefined);
    const id = peerIdentity(socket.getPeerCertificate());
    if (id.role === 'dc') {
      this.peers.accept(socket);
      socket.end();
      return;
    }
    if (id.role !== 'as') {
      this.counters.tlsRejected++;
      socket.destroy();
      return;
    }
    onMessages(
      socket,
      (m, messageId) => {
        if (m.type !== 'keyDistribution') {
          writeMessage(socket, 'ntmAck', { inReplyTo: messageId, status: Status.badRequest, reason: `${m.type} is not accepted from the AS` });
          return;
        }
        const b = m.body;
        const foreign = [b.fqdn, ...b.names].filter((n) => n !== this.config.zone && !n.endsWith(`.${this.config.zone}`));
        if (foreign.length) {
          writeMessage(socket, 'ntmAck', { inReplyTo: messageId, status: Status.notAuthorized, reason: `${foreign.join(', ')} not in zone ${this.config.zone}` });
          return;
        }
        this.registry.putKey({ keyId: b.keyId, key: b.key, expiresAt: b.expiresAt, fqdn: b.fqdn, names: b.names, publicKey: b.publicKey.equals(ZERO_KEY) ? null : b.publicKey });
        this.counters.keyDistributions++;
        writeMessage(socket, 'ntmAck', { inReplyTo: messageId, status: Status.ok, reason: '' });
      },
      () => this.counters.tlsRejected++,
    );
  }

  // ---- UDP control messages --------------------------------------------------------------------

  private dispatch(m: Incoming): void {
    const { message } = m;
    const ntmdc = m.key.keyClass === KeyClass.ntmdc;
    // Only other DCs may ask about our nodes or direct routes to them; an RS (Kdcrs) only answers.
    const dcdc = m.key.keyClass === KeyClass.dcdc;
    switch (message.type) {
      case 'registrationRequest':
        if (ntmdc) this.onRegistration(m, message.body);
        return;
      case 'keepalive':
        if (ntmdc) this.onKeepalive(m);
        return;
      case 'notifyRequest':
        if (ntmdc) void this.onNotifyRequest(m, message.body).catch((e: Error) => this.internalError('notify request', e));
        return;
      case 'deregistration':
        if (ntmdc && this.registry.registration(message.body.name)?.keyId === m.key.keyId) this.registry.remove(message.body.name);
        if (ntmdc) this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
        return;
      case 'directionRequest':
        if (ntmdc) void this.onDirection(m, message.body).catch((e: Error) => this.internalError('direction', e));
        return;
      case 'nodeInformationRequest':
        if (dcdc) this.onNodeInformation(m, message.body);
        return;
      case 'routeDirection':
        if (dcdc) void this.onPeerRouteDirection(m, message.body).catch((e: Error) => this.internalError('route direction', e));
        return;
      default:
        return;
    }
  }

  private internalError(what: string, e: Error): void {
    console.error(`dc ${this.config.zone}: ${what}: internal error: ${e.stack ?? e.message}`);
  }

  private log(line: string): void {
    if (this.config.verbose) console.error(`dc ${this.config.zone}: ${line}`);
  }

  private onRegistration(m: Incoming, b: Body<'registrationRequest'>): void {
    const key = this.registry.key(m.key.keyId)!;
    const deny = (status: number, why: string): void => {
      this.channel.reply(m, 'registrationResponse', { inReplyTo: m.envelope.messageId, status, name: b.name, vip4: null, vip6: null, observed: null, keepaliveSeconds: 0, serverTime: Date.now() });
      if (this.config.verbose) console.error(`dc ${this.config.zone}: registration of ${b.name} refused: ${why}`);
    };
    if (!key.names.includes(b.name)) {
      this.counters.registrationForeignName++;
      return deny(Status.notAuthorized, `${b.name} is not bound to key ${key.keyId} (${key.fqdn})`);
    }
    if (key.publicKey !== null && !key.publicKey.equals(b.publicKey)) {
      this.counters.registrationKeyMismatch++;
      return deny(Status.keyMismatch, 'public key differs from the one the AS bound');
    }
    const observed = wireEndpoint(m.from);
    this.registry.register({ name: b.name, keyId: key.keyId, observed, local: b.local, publicKey: b.publicKey, lastSeen: Date.now() });
    const v = this.registry.vips(b.name);
    this.counters.registrations++;
    this.channel.reply(m, 'registrationResponse', {
      inReplyTo: m.envelope.messageId,
      status: Status.ok,
      name: b.name,
      vip4: v.vip4,
      vip6: v.vip6,
      observed,
      // A node in MQTT mode that registers again (it moved) keeps its longer interval.
      keepaliveSeconds: this.keepalivePeriodMs(this.registry.registration(b.name)!) / 1000,
      serverTime: Date.now(),
    });
  }

  private onKeepalive(m: Incoming): void {
    const regs = this.registry.byKey(m.key.keyId);
    const observed = wireEndpoint(m.from);
    if (regs.length === 0) {
      this.counters.keepaliveUnknown++;
      this.channel.reply(m, 'keepaliveAck', { inReplyTo: m.envelope.messageId, status: Status.notRegistered, observed, serverTime: Date.now() });
      return;
    }
    this.counters.keepalives++;
    const now = Date.now();
    for (const r of regs) {
      r.lastSeen = now;
      if (r.observed.address !== observed.address || r.observed.port !== observed.port) this.registry.register({ ...r, observed });
    }
    this.channel.reply(m, 'keepaliveAck', { inReplyTo: m.envelope.messageId, status: Status.ok, observed, serverTime: now });
    // A node in MQTT mode that the NS woke: the keepalive opened its NAT again; what waits for
    // it goes now, to where the keepalive came from (the request's destination is the registration).
    for (const r of regs) {
      for (const h of this.waking.get(r.name) ?? []) {
        this.counters.wakeResends++;
        h.resendNow();
      }
    }
  }

  // ---- MQTT mode: Kntmns, the NS, notifications (docs/ns.md) ----------------------------------

  /**
   * A node asks to be woken through the NS instead of keeping its NAT mapping open with UDP
   * keepalives: the DC makes Kntmns, hands it to the NS (acknowledged), keeps the grant, and
   * answers with the key and the longer keepalive interval the node may now use.
   */
  private async onNotifyRequest(m: Incoming, b: Body<'notifyRequest'>): Promise<void> {
    const key = this.registry.key(m.key.keyId)!;
    const answer = (status: StatusCode, g: NotifyGrant | null, broker = ''): void => {
      this.channel.reply(m, 'notifyResponse', {
        inReplyTo: m.envelope.messageId,
        status,
        ns: g !== null ? this.config.ns!.name : '',
        broker: g !== null ? broker : '',
        keyId: g?.keyId ?? 0,
        key: g?.key ?? (ZERO_KEY as Buffer),
        expiresAt: g?.expiresAt ?? 0,
        keepaliveSeconds: g?.keepaliveSeconds ?? this.config.keepaliveSeconds,
      });
    };
    const refuse = (status: StatusCode, why: string): void => {
      this.counters.notifyRefused++;
      this.log(`notify request for ${b.name}: ${statusName(status)}: ${why}`);
      answer(status, null);
    };
    if (this.registry.registration(b.name)?.keyId !== key.keyId) return refuse(Status.notRegistered, `${b.name} is not registered under key ${key.keyId}`);
    if (this.ns === null) return refuse(Status.unavailable, 'no Notification Server is configured');
    const c = this.config;
    const wanted = b.keepaliveSeconds === 0 ? c.keepaliveSeconds : b.keepaliveSeconds;
    const keepaliveSeconds = Math.min(Math.max(wanted, c.keepaliveSeconds), c.ns!.maxKeepaliveSeconds);
    // A node asking again under the same Kntmdc (it registered again after a move) keeps its
    // Kntmns, so that its MQTT session is not replaced; the NS is told again in case it lost it.
    const live = this.registry.grant(key.keyId);
    const grant: NotifyGrant =
      live !== undefined
        ? { ...live, keepaliveSeconds }
        : {
            nodeKeyId: key.keyId,
            keyId: randomId32(),
            key: randomKey(),
            // Kntmns lives as long as the Kntmdc it was asked for under: a new login asks again.
            expiresAt: key.expiresAt,
            node: key.fqdn,
            keepaliveSeconds,
          };
    let nsKey: NsKey;
    try {
      nsKey = await this.distributeNsKey(grant);
    } catch (e) {
      this.ns.failed((e as Error).message);
      return refuse(Status.unavailable, `NS ${c.ns!.name}: ${(e as Error).message}`);
    }
    this.registry.putGrant(grant);
    this.counters.notifyGrants++;
    this.log(`${grant.node} in MQTT mode${live !== undefined ? ' (again)' : ''}: Kntmns ${grant.keyId} at NS ${c.ns!.name}, keepalive ${grant.keepaliveSeconds} s`);
    answer(Status.ok, grant, nsKey.broker);
  }

  private distributeNsKey(g: NotifyGrant): Promise<NsKey> {
    return this.nsRequest('nsKeyDistribution', { keyId: g.keyId, key: g.key, expiresAt: g.expiresAt, node: g.node });
  }

  /** One request to the NS under Kdcns (first contact if needed); resolves once it said ok. */
  private async nsRequest(type: 'nsKeyDistribution' | 'notification', body: Body<'nsKeyDistribution'> | Body<'notification'>): Promise<NsKey> {
    const ns = this.ns!;
    const to = encodeSockaddr(ns.endpoint.address, ns.endpoint.port);
    const policy = this.config.retransmit ?? NS_RETRANSMIT;
    const send = (k: NsKey): Promise<Incoming> => {
      const key = { keyClass: KeyClass.dcns, keyId: k.keyId, key: k.key };
      return type === 'nsKeyDistribution'
        ? this.channel.request(type, body as Body<'nsKeyDistribution'>, key, to, policy)
        : this.channel.request(type, body as Body<'notification'>, key, to, policy);
    };
    const started = Date.now();
    let k = await ns.ensure();
    let ack: Incoming;
    try {
      ack = await send(k);
    } catch (e) {
      // An NS that restarted has forgotten Kdcns: first contact again, then once more.
      if (!(e instanceof RequestTimeout) || k.contactedAt >= started) throw e;
      ns.forget();
      k = await ns.ensure();
      ack = await send(k);
    }
    if (ack.message.type !== 'ntmAck') throw new Error(`answered ${type} with ${ack.message.type}`);
    if (ack.message.body.status !== Status.ok) throw new NsRefusal(ack.message.body.status, `${statusName(ack.message.body.status)}: ${ack.message.body.reason}`);
    return k;
  }

  /** Wakes a node in MQTT mode through the NS; an NS that lost the node's key gets it again first. */
  private async wake(g: NotifyGrant, routeId: number): Promise<void> {
    const body: Body<'notification'> = { node: g.node, reason: NotifyReason.direction, routeId };
    try {
      try {
        await this.nsRequest('notification', body);
      } catch (e) {
        if (!(e instanceof NsRefusal) || e.status !== Status.notRegistered) throw e;
        this.counters.nsKeyResent++;
        await this.distributeNsKey(g);
        await this.nsRequest('notification', body);
      }
      this.counters.notifications++;
      this.log(`route ${routeId}: woke ${g.node} through NS ${this.config.ns!.name}`);
    } catch (e) {
      this.counters.notificationsFailed++;
      this.ns?.failed((e as Error).message);
      this.log(`route ${routeId}: waking ${g.node} through NS ${this.config.ns!.name} failed: ${(e as Error).message}`);
    }
  }

  private nodeView(name: string): Body<'nodeInformationResponse'> | null {
    const r = this.registry.registration(name);
    if (r === undefined) return null;
    const v = this.registry.vips(name);
    const key = this.registry.key(r.keyId);
    const node = key?.fqdn ?? name;
    const siblings = this.registry.byKey(r.keyId).map((s) => this.registry.vips(s.name));
    return {
      inReplyTo: 0n,
      status: Status.ok,
      target: name,
      node,
      vip4: v.vip4,
      vip6: v.vip6,
      nodeVips4: siblings.map((s) => s.vip4),
      nodeVips6: siblings.map((s) => s.vip6),
      observed: r.observed,
      local: r.local,
      publicKey: r.publicKey,
    };
  }

  private onNodeInformation(m: Incoming, b: Body<'nodeInformationRequest'>): void {
    this.counters.nodeInformation++;
    const view = this.inZone(b.target) ? this.nodeView(b.target) : null;
    if (view === null) {
      this.channel.reply(m, 'nodeInformationResponse', {
        inReplyTo: m.envelope.messageId,
        status: Status.unknownName,
        target: b.target,
        node: b.target,
        vip4: null,
        vip6: null,
        nodeVips4: [],
        nodeVips6: [],
        observed: null,
        local: null,
        publicKey: ZERO_KEY as Buffer,
      });
      return;
    }
    this.channel.reply(m, 'nodeInformationResponse', { ...view, inReplyTo: m.envelope.messageId });
  }

  private inZone(name: string): boolean {
    return name === this.config.zone || name.endsWith(`.${this.config.zone}`);
  }

  private async onDirection(m: Incoming, b: Body<'directionRequest'>): Promise<void> {
    this.counters.directions++;
    const fail: Fail = (status, reason) => {
      this.counters.directionsFailed++;
      this.log(`direction ${b.source} → ${b.target}: ${statusName(status)}: ${reason}`);
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status, reason });
    };
    const mnReg = this.registry.registration(b.source);
    if (mnReg === undefined || mnReg.keyId !== m.key.keyId) {
      this.counters.directionForeignSource++;
      return fail(Status.notAuthorized, `${b.source} is not registered under this key`);
    }
    const mn = this.nodeView(b.source)!;
    if (b.flags & DirectionFlags.general) {
      // The router's policy names the target a general host; one of our own names is a node.
      if (this.inZone(b.target)) return fail(Status.badRequest, `${b.target} is in zone ${this.config.zone}: an NTMobile name, not a general host`);
      return this.directGateway(m, b, mn, "general host by the router's policy", fail);
    }
    let cn: Body<'nodeInformationResponse'> | null;
    let cnDc: CnDc | null = null;
    try {
      if (this.inZone(b.target)) cn = this.nodeView(b.target);
      else {
        let loc: { zone: string; nsName: string; address: string };
        try {
          loc = await this.peers.locate(b.target);
        } catch (e) {
          if (e instanceof NoDcError) return this.directGateway(m, b, mn, `no NTMobile DC for ${b.target}`, fail);
          throw e;
        }
        const ask = async (): Promise<Incoming> => {
          const peer = await this.peers.forZone(loc.zone, loc.nsName, loc.address);
          cnDc = { keyId: peer.keyId, key: peer.key, to: encodeSockaddr(loc.address, this.config.peerControlPort) };
          return this.channel.request('nodeInformationRequest', { target: b.target, requester: b.source }, { keyClass: KeyClass.dcdc, ...cnDc }, cnDc.to, this.config.retransmit ?? PEER_RETRANSMIT);
        };
        let answer: Incoming;
        try {
          answer = await ask();
        } catch (e) {
          // A peer DC that restarted has forgotten Kdcdc and drops what we send under it: make
          // first contact again and ask once more.
          if (!(e instanceof RequestTimeout)) throw e;
          this.peers.forget(loc.zone);
          answer = await ask();
        }
        cn = answer.message.type === 'nodeInformationResponse' && answer.message.body.status === Status.ok ? answer.message.body : null;
      }
    } catch (e) {
      return fail(Status.peerUnreachable, `DC of ${b.target}: ${(e as Error).message}`);
    }
    if (cn === null) return fail(Status.unknownName, `${b.target} is not registered`);
    if (cn.node === mn.node) return fail(Status.badRequest, `${b.target} is on the asking node itself`);
    if (cn.observed === null || isIP(cn.observed.address) === 0) return fail(Status.peerUnreachable, `DC of ${b.target} gave no address for it`);
    const decision = decideRoute({ observed: mn.observed!, local: mn.local }, { observed: cn.observed, local: cn.local });
    if (decision.kind === 'relay') return this.directRelayed(m, b, mn, cn, cnDc, decision.reason, fail);
    // The router tried the direct route this DC chose and got no answer: a firewall, or a NAT
    // that behaves otherwise than its addresses suggest.
    if (b.flags & DirectionFlags.relay) return this.directRelayed(m, b, mn, cn, cnDc, `direct ${decision.case} attempt failed`, fail);
    const routeId = randomId32();
    const ktun = randomKey();
    const ktmp = randomKey();
    const expiresAt = Date.now() + this.config.routeLifetimeSeconds * 1000;
    const toMn: Body<'routeDirection'> = {
      ...this.directionTo(m.envelope.messageId, routeId, ktun, ktmp, expiresAt, b.source, cn),
      role: decision.initiator === 'mn' ? Role.initiator : Role.responder,
      peerEndpoint: decision.mnPeer,
      path: PathKind.direct,
      peerCandidate: null,
      via: '',
    };
    const toCn: Body<'routeDirection'> = {
      ...this.directionTo(0n, routeId, ktun, ktmp, expiresAt, cn.target, mn),
      role: decision.initiator === 'cn' ? Role.initiator : Role.responder,
      peerEndpoint: decision.cnPeer,
      path: PathKind.direct,
      peerCandidate: null,
      via: '',
    };
    this.log(`route ${routeId} ${b.source} → ${b.target}: ${decision.case}, ${decision.initiator} initiates`);
    await this.directEnds(m, routeId, toMn, toCn, decision.initiator, cnDc);
  }

  /** The fields of a Route Direction that describe the peer (a node as its DC sees it). */
  private directionTo(
    inReplyTo: bigint,
    routeId: number,
    ktun: Buffer,
    ktmp: Buffer,
    expiresAt: number,
    localName: string,
    peer: Body<'nodeInformationResponse'>,
  ): Omit<Body<'routeDirection'>, 'role' | 'peerEndpoint' | 'path' | 'peerCandidate' | 'via'> {
    return {
      inReplyTo,
      routeId,
      ktun,
      ktmp,
      expiresAt,
      localName,
      peerNode: peer.node,
      peerName: peer.target,
      peerVip4: peer.vip4,
      peerVip6: peer.vip6,
      peerVips4: peer.nodeVips4,
      peerVips6: peer.nodeVips6,
      peerPublicKey: peer.publicKey,
    };
  }

  /** Route Direction to both ends, the responder first: it must hold Ktun before the initiator's Tunnel Request reaches it. */
  private async directEnds(m: Incoming, routeId: number, toMn: Body<'routeDirection'>, toCn: Body<'routeDirection'>, initiator: 'mn' | 'cn', cnDc: CnDc | null): Promise<void> {
    try {
      const sendCn = (): Promise<void> => this.directCn(toCn, cnDc);
      const sendMn = (): Promise<void> => this.directMn(m, toMn);
      if (initiator === 'mn') {
        await sendCn();
        await sendMn();
      } else {
        await sendMn();
        await sendCn();
      }
    } catch (e) {
      this.counters.directionsFailed++;
      this.log(`route ${routeId}: ${(e as Error).message}`);
    }
  }

  private async directMn(m: Incoming, body: Body<'routeDirection'>): Promise<void> {
    const ack = await this.channel.request('routeDirection', body, m.key, m.from, this.config.retransmit);
    checkAck(ack, 'MN');
  }

  /**
   * A route through an RS between two nodes (both behind different NATs, IPv4 ↔ IPv6, or a direct
   * attempt that failed): the first RS in rendezvous order that takes the route carries it; each
   * end is sent to the RS in its own family, MN initiates (after both have hole-punched the RS).
   */
  private async directRelayed(m: Incoming, b: Body<'directionRequest'>, mn: Body<'nodeInformationResponse'>, cn: Body<'nodeInformationResponse'>, cnDc: CnDc | null, reason: string, fail: Fail): Promise<void> {
    if (this.relays.relays.length === 0) return fail(Status.relayRequired, `${reason}: needs a Relay Server, and none is configured`);
    const mnFamily = familyOf(mn.observed!.address);
    const cnFamily = familyOf(cn.observed!.address);
    const candidates = pickRelays(this.relays.relays, [mnFamily, cnFamily], mn.node, cn.node);
    if (candidates.length === 0) {
      const need = mnFamily === cnFamily ? `an IPv${mnFamily} address` : 'both an IPv4 and an IPv6 address';
      return fail(Status.relayRequired, `${reason}: no configured Relay Server has ${need}`);
    }
    const routeId = randomId32();
    const ktun = randomKey();
    const ktmp = randomKey();
    const expiresAt = Date.now() + this.config.routeLifetimeSeconds * 1000;
    const rs = await this.firstRelay(routeId, candidates, () => ['relayDirection', { routeId, ktun, expiresAt, nodeA: mn.node, nodeB: cn.node }]);
    if (rs === null) return fail(Status.peerUnreachable, `${reason}: no Relay Server took the route (tried ${candidates.map((r) => r.name).join(', ')})`);
    this.counters.relayRoutes++;
    const plan = relayPlan(mn.observed!, cn.observed!, (f) => relayEndpoint(rs.relay, f))!;
    const toMn: Body<'routeDirection'> = {
      ...this.directionTo(m.envelope.messageId, routeId, ktun, ktmp, expiresAt, b.source, cn),
      role: Role.initiator,
      peerEndpoint: plan.mnPeer,
      path: PathKind.relay,
      peerCandidate: plan.mnCandidate,
      via: rs.relay.name,
    };
    const toCn: Body<'routeDirection'> = {
      ...this.directionTo(0n, routeId, ktun, ktmp, expiresAt, cn.target, mn),
      role: Role.responder,
      peerEndpoint: plan.cnPeer,
      path: PathKind.relay,
      peerCandidate: plan.cnCandidate,
      via: rs.relay.name,
    };
    this.log(`route ${routeId} ${b.source} → ${b.target}: relay via ${rs.relay.name} (${reason})`);
    await this.directEnds(m, routeId, toMn, toCn, 'mn', cnDc);
  }

  /**
   * A route to a general host: the tunnel ends at an RS, which forwards to the host's addresses.
   * The RS needs MN's family (MN reaches it) and one of the host's (it reaches the host); the
   * host's addresses of a family the RS lacks are left out.
   */
  private async directGateway(m: Incoming, b: Body<'directionRequest'>, mn: Body<'nodeInformationResponse'>, reason: string, fail: Fail): Promise<void> {
    if (this.relays.relays.length === 0) return fail(Status.relayRequired, `${b.target}: ${reason}: a general host needs a Relay Server, and none is configured`);
    let host: { targets4: string[]; targets6: string[]; refused: string[] };
    try {
      host = await this.resolveHost(b.target);
    } catch (e) {
      return fail(Status.peerUnreachable, `${b.target}: ${reason}: DNS: ${(e as Error).message}`);
    }
    if (host.targets4.length + host.targets6.length === 0) {
      const left = host.refused.length > 0 ? ` (left out: ${host.refused.join('; ')})` : '';
      return fail(Status.unknownName, `${b.target}: ${reason}, and no usable A or AAAA record${left}`);
    }
    const mnFamily = familyOf(mn.observed!.address);
    const candidates = pickRelays(this.relays.relays, [mnFamily], mn.node, b.target).filter(
      (r) => (host.targets4.length > 0 && relayHas(r, 4)) || (host.targets6.length > 0 && relayHas(r, 6)),
    );
    if (candidates.length === 0) {
      const has = [host.targets4.length ? 'IPv4' : '', host.targets6.length ? 'IPv6' : ''].filter(Boolean).join(' or ');
      return fail(Status.relayRequired, `${b.target}: ${reason}: no configured Relay Server has IPv${mnFamily} (for ${b.source}) and ${has} (for the host)`);
    }
    const routeId = randomId32();
    const ktun = randomKey();
    const ktmp = randomKey();
    const expiresAt = Date.now() + this.config.routeLifetimeSeconds * 1000;
    const targetsFor = (r: RelayConfig): { targets4: string[]; targets6: string[] } => ({
      targets4: relayHas(r, 4) ? host.targets4 : [],
      targets6: relayHas(r, 6) ? host.targets6 : [],
    });
    const rs = await this.firstRelay(routeId, candidates, (r) => [
      'gatewayDirection',
      {
        routeId,
        ktun,
        ktmp,
        expiresAt,
        node: mn.node,
        nodeName: b.source,
        nodeVips4: mn.nodeVips4,
        nodeVips6: mn.nodeVips6,
        nodePublicKey: mn.publicKey,
        target: b.target,
        ...targetsFor(r),
      },
    ]);
    if (rs === null) return fail(Status.peerUnreachable, `${b.target}: ${reason}: no Relay Server took the route (tried ${candidates.map((r) => r.name).join(', ')})`);
    this.counters.gatewayRoutes++;
    const { targets4, targets6 } = targetsFor(rs.relay);
    const toMn: Body<'routeDirection'> = {
      inReplyTo: m.envelope.messageId,
      routeId,
      role: Role.initiator,
      ktun,
      ktmp,
      expiresAt,
      localName: b.source,
      peerNode: rs.relay.name,
      peerName: b.target,
      peerVip4: targets4[0] ?? null,
      peerVip6: targets6[0] ?? null,
      peerVips4: targets4,
      peerVips6: targets6,
      peerEndpoint: relayEndpoint(rs.relay, mnFamily),
      peerPublicKey: rs.publicKey,
      path: PathKind.gateway,
      peerCandidate: null,
      via: rs.relay.name,
    };
    this.log(`route ${routeId} ${b.source} → ${b.target}: gateway via ${rs.relay.name} (${reason}; ${[...targets4, ...targets6].join(', ')})`);
    try {
      await this.directMn(m, toMn);
    } catch (e) {
      this.counters.directionsFailed++;
      this.log(`route ${routeId}: ${(e as Error).message}`);
    }
  }

  /**
   * A general host's A and AAAA records, from the DC's resolvers; addresses an RS must not be
   * pointed at (gatewayTargetRefusal) are left out, each with why in `refused`.
   */
  private async resolveHost(name: string): Promise<{ targets4: string[]; targets6: string[]; refused: string[] }> {
    const resolver = new Resolver({ timeout: this.config.discovery.timeoutMs ?? 2000, tries: 2 });
    if (this.config.discovery.resolvers?.length) resolver.setServers(this.config.discovery.resolvers);
    const lookup = (p: Promise<string[]>): Promise<{ addresses: string[]; error: Error | null }> =>
      p.then(
        (addresses) => ({ addresses, error: null }),
        (e: NodeJS.ErrnoException) => ({ addresses: [], error: e.code === 'ENODATA' || e.code === 'ENOTFOUND' ? null : new Error(`${name}: ${e.code ?? e.message}`) }),
      );
    const [a, aaaa] = await Promise.all([lookup(resolver.resolve4(name)), lookup(resolver.resolve6(name))]);
    if (a.addresses.length + aaaa.addresses.length === 0 && (a.error ?? aaaa.error)) throw (a.error ?? aaaa.error)!;
    const policy = this.gatewayPolicy();
    const refused: string[] = [];
    const usable = (address: string): boolean => {
      const why = gatewayTargetRefusal(address, policy);
      if (why !== null) refused.push(`${address}: ${why}`);
      return why === null;
    };
    const targets4 = [...new Set(a.addresses.filter(usable))].slice(0, MAX_GATEWAY_TARGETS);
    const targets6 = [...new Set(aaaa.addresses.filter(usable))].slice(0, MAX_GATEWAY_TARGETS);
    if (refused.length > 0) this.log(`general host ${name}: left out ${refused.join('; ')}`);
    return { targets4, targets6, refused };
  }

  /** What gateway targets this DC refuses: private ranges unless allowed, its VIP pools, the relays' and its own addresses. */
  private gatewayPolicy(): GatewayTargetPolicy {
    const c = this.config;
    return {
      allowPrivate: c.general?.allowPrivate === true,
      pools: [c.pool.ipv4, c.pool.ipv6],
      excluded: [
        ...(c.relays ?? []).flatMap((r) => [r.address, r.address6].filter((x): x is string => x !== null).map((address) => ({ address, what: `the address of RS ${r.name}` }))),
        { address: c.publicAddress, what: 'this DC’s address' },
      ],
    };
  }

  /**
   * Offers a route to each candidate RS in turn (rendezvous order, but those that failed within
   * the last minute last); the first that acknowledges carries it. Each failure is counted and
   * logged (always: a failing RS is the operator's business), and the next RS is tried.
   */
  private async firstRelay(
    routeId: number,
    candidates: RelayConfig[],
    message: (r: RelayConfig) => ['relayDirection', Body<'relayDirection'>] | ['gatewayDirection', Body<'gatewayDirection'>],
  ): Promise<RelayKey | null> {
    for (const r of this.relays.tryOrder(candidates)) {
      try {
        const k = await this.relayRequest(r, message(r));
        this.relays.succeeded(r.name);
        return k;
      } catch (e) {
        this.counters.relayFailures++;
        this.relays.failed(r.name, (e as Error).message);
        console.error(`dc ${this.config.zone}: route ${routeId}: RS ${r.name} failed: ${(e as Error).message}`);
      }
    }
    return null;
  }

  /** One Relay or Gateway Direction to an RS under Kdcrs (first contact if needed); resolves with the key once it said ok. */
  private async relayRequest(r: RelayConfig, [type, body]: ['relayDirection', Body<'relayDirection'>] | ['gatewayDirection', Body<'gatewayDirection'>]): Promise<RelayKey> {
    const to = encodeSockaddr(relayControlAddress(r), r.port);
    const policy = this.config.retransmit ?? RELAY_RETRANSMIT;
    const send = (k: RelayKey): Promise<Incoming> => {
      const key = { keyClass: KeyClass.dcrs, keyId: k.keyId, key: k.key };
      return type === 'relayDirection' ? this.channel.request(type, body, key, to, policy) : this.channel.request(type, body, key, to, policy);
    };
    const started = Date.now();
    let k = await this.relays.ensure(r.name);
    let ack: Incoming;
    try {
      ack = await send(k);
    } catch (e) {
      // An RS that restarted has forgotten Kdcrs and drops what we send under it: make first
      // contact again and ask once more. A key made for this very request that gets no answer
      // means the RS's UDP port is unreachable: a new key would not help, the next RS might.
      if (!(e instanceof RequestTimeout) || k.contactedAt >= started) throw e;
      this.relays.forget(r.name);
      k = await this.relays.ensure(r.name);
      ack = await send(k);
    }
    if (ack.message.type !== 'ntmAck') throw new Error(`answered ${type} with ${ack.message.type}`);
    if (ack.message.body.status !== Status.ok) throw new Error(`${statusName(ack.message.body.status)}: ${ack.message.body.reason}`);
    return k;
  }

  /** Route Direction to CN: directly if CN is ours, else through CN's DC over Kdcdc. */
  private async directCn(body: Body<'routeDirection'>, cnDc: CnDc | null): Promise<void> {
    if (cnDc !== null) {
      const ack = await this.channel.request('routeDirection', body, { keyClass: KeyClass.dcdc, ...cnDc }, cnDc.to, this.config.retransmit);
      checkAck(ack, `DC of ${body.localName}`);
      return;
    }
    const reg = this.registry.registration(body.localName);
    const key = reg && this.registry.key(reg.keyId);
    if (!reg || !key) throw new Error(`${body.localName} is no longer registered`);
    const sendKey = { keyClass: KeyClass.ntmdc, keyId: key.keyId, key: key.key };
    const grant = this.registry.grant(key.keyId);
    if (grant === undefined || this.ns === null) {
      const ack = await this.channel.request('routeDirection', body, sendKey, encodeSockaddr(reg.observed.address, reg.observed.port), this.config.retransmit);
      checkAck(ack, body.localName);
      return;
    }
    // MQTT mode: the node's NAT mapping may have expired. The Route Direction goes out as usual
    // and, at the same time, the NS wakes the node; the node's keepalive then opens a mapping
    // (perhaps a new one) and the direction is sent there at once (onKeepalive).
    const name = body.localName;
    const handle = new RequestHandle();
    let waiting = this.waking.get(name);
    if (waiting === undefined) this.waking.set(name, (waiting = new Set()));
    waiting.add(handle);
    const to = (): Buffer => {
      const r = this.registry.registration(name) ?? reg;
      return encodeSockaddr(r.observed.address, r.observed.port);
    };
    void this.wake(grant, body.routeId);
    try {
      const ack = await this.channel.request('routeDirection', body, sendKey, to, WAKE_RETRANSMIT, handle);
      checkAck(ack, body.localName);
    } finally {
      waiting.delete(handle);
      if (waiting.size === 0 && this.waking.get(name) === waiting) this.waking.delete(name);
    }
  }

  /** DCcn side: a Route Direction from DCmn for one of our nodes, forwarded under its Kntmdc. */
  private async onPeerRouteDirection(m: Incoming, b: Body<'routeDirection'>): Promise<void> {
    const peer = this.peers.key(m.key.keyId);
    const speaksForPeer = peer !== undefined && peer.domains.some((d) => b.peerName === d || b.peerName.endsWith(`.${d}`));
    if (!speaksForPeer || !this.inZone(b.localName) || this.registry.registration(b.localName) === undefined) {
      this.counters.routeDirectionForged++;
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.notAuthorized, reason: `route for ${b.peerName} → ${b.localName} refused` });
      return;
    }
    try {
      await this.directCn(b, null);
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
    } catch (e) {
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.peerUnreachable, reason: (e as Error).message });
    }
  }
}

/** The NS answered with a status other than ok. */
class NsRefusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function checkAck(ack: Incoming, who: string): void {
  if (ack.message.type !== 'ntmAck') throw new Error(`${who}: answered with ${ack.message.type}, want ntmAck`);
  if (ack.message.body.status !== Status.ok) throw new Error(`${who}: ${statusName(ack.message.body.status)}: ${ack.message.body.reason}`);
}

/** What a DC refuses to hand an RS as a general host's address (servers/dc/dc.ts gatewayPolicy). */
export interface GatewayTargetPolicy {
  /** Private ranges (RFC 1918, 100.64.0.0/10, ULA) are allowed; the other reserved ranges never are. */
  allowPrivate?: boolean;
  /** The VIP pools ("10.77.0.0/16", "fd4e:544d:1::/64"): a VIP is a node's, never a general host's. */
  pools?: string[];
  /** Addresses of the fleet's own servers (the relays, the DC), with what they are. */
  excluded?: { address: string; what: string }[];
}

/**
 * Why a general host's address must not be handed to an RS to forward to, or null if it may: a
 * private or reserved address (protocol/ip.ts reservedRange; a DNS answer with one would point
 * the RS at itself, its own networks or its provider's), an address in the DC's VIP pools, or one
 * of the fleet's servers'.
 */
export function gatewayTargetRefusal(address: string, policy: GatewayTargetPolicy = {}): string | null {
  const r = reservedRange(address);
  if (r !== null && !(r.private && policy.allowPrivate === true)) return `${r.what} (${r.range})${r.private ? '; general.allowPrivate is off' : ''}`;
  for (const pool of policy.pools ?? []) {
    const p = parsePrefix(pool);
    if (p !== null && prefixContains(p, address)) return `inside the VIP pool ${pool}`;
  }
  for (const e of policy.excluded ?? []) if (sameAddress(e.address, address)) return e.what;
  return null;
}

/** Whether a general host's address may be handed to an RS (gatewayTargetRefusal says why not). */
export function gatewayTarget(address: string, policy: GatewayTargetPolicy = {}): boolean {
  return gatewayTargetRefusal(address, policy) === null;
}
