// The Direction Coordinator (seed 003): registers the nodes of its zone (VIPs, observed and
// reported addresses, keepalives), answers DNS for the zone, and directs every new tunnel:
// a Direction Request from MN → Node Information from CN's DC (over Kdcdc) → a Route Direction
// to each end (responder first, so it holds Ktun before the Tunnel Request arrives), each
// acknowledged by an NTM ACK. Key Distribution from the AS arrives over mutual TLS.

import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { ControlChannel, RequestTimeout, type Incoming, type RetransmitPolicy } from '../../protocol/channel.js';
import { KeyClass, PathKind, Role, Status, statusName, ZERO_KEY, type Body, type WireEndpoint } from '../../protocol/control.js';
import { decodeSockaddr, encodeSockaddr } from '../../protocol/endpoint.js';
import { DC_CONTROL_PORT, DC_TLS_PORT, type DiscoveryOptions } from '../../protocol/discovery.js';
import { randomId32, randomKey } from '../../protocol/keys.js';
import { UdpSocket } from '../../netlink/udp.js';
import { classifyDatagram, DatagramKind } from '../../protocol/demux.js';
import { SOCKADDR_SIZE } from '../../tunnel/io.js';
import { peerIdentity } from '../identity.js';
import { onMessages, tlsContextOptions, writeMessage, type TlsFiles } from '../tls.js';
import { DnsServer } from './dns-server.js';
import { PeerDcs } from './peers.js';
import { Registry, type PoolConfig } from './registry.js';
import { decideRoute } from './route.js';

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
  retransmit?: RetransmitPolicy;
  verbose?: boolean;
}

/** DC ↔ DC requests: a short first try, so that a peer that lost Kdcdc is re-contacted quickly. */
const PEER_RETRANSMIT: RetransmitPolicy = { initialMs: 250, maxMs: 500, tries: 3 };

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
}

export class DirectionCoordinator {
  readonly counters = new DcCounters();
  readonly registry: Registry;
  readonly peers: PeerDcs;
  readonly channel: ControlChannel;
  private socket: UdpSocket | null = null;
  private tlsServer: TlsServer | null = null;
  private dns: DnsServer | null = null;
  private expiryTimer: NodeJS.Timeout | null = null;

  constructor(readonly config: DcConfig) {
    this.registry = Registry.open(config.statePath, config.pool);
    this.peers = new PeerDcs(config.tls, config.discovery, config.peerTlsPort);
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
      this.counters.expired += this.registry.expire(period * c.expireAfterKeepalives).length;
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
      registrations: this.registry.all().map((r) => ({ name: r.name, ...this.registry.vips(r.name), observed: r.observed, local: r.local })),
      counters: { ...this.counters },
      channel: { ...this.channel.counters },
    };
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
    switch (message.type) {
      case 'registrationRequest':
        if (ntmdc) this.onRegistration(m, message.body);
        return;
      case 'keepalive':
        if (ntmdc) this.onKeepalive(m);
        return;
      case 'deregistration':
        if (ntmdc && this.registry.registration(message.body.name)?.keyId === m.key.keyId) this.registry.remove(message.body.name);
        if (ntmdc) this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
        return;
      case 'directionRequest':
        if (ntmdc) void this.onDirection(m, message.body);
        return;
      case 'nodeInformationRequest':
        if (!ntmdc) this.onNodeInformation(m, message.body);
        return;
      case 'routeDirection':
        if (!ntmdc) void this.onPeerRouteDirection(m, message.body);
        return;
      default:
        return;
    }
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
    const observed = wireFrom(m.from);
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
      keepaliveSeconds: this.config.keepaliveSeconds,
      serverTime: Date.now(),
    });
  }

  private onKeepalive(m: Incoming): void {
    const regs = this.registry.byKey(m.key.keyId);
    const observed = wireFrom(m.from);
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
    const fail = (status: number, reason: string): void => {
      this.counters.directionsFailed++;
      if (this.config.verbose) console.error(`dc ${this.config.zone}: direction ${b.source} → ${b.target}: ${statusName(status)}: ${reason}`);
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status, reason });
    };
    const mnReg = this.registry.registration(b.source);
    if (mnReg === undefined || mnReg.keyId !== m.key.keyId) {
      this.counters.directionForeignSource++;
      return fail(Status.notAuthorized, `${b.source} is not registered under this key`);
    }
    const mn = this.nodeView(b.source)!;
    let cn: Body<'nodeInformationResponse'> | null;
    let cnDc: { keyId: number; key: Buffer; to: Buffer } | null = null;
    try {
      if (this.inZone(b.target)) cn = this.nodeView(b.target);
      else {
        const loc = await this.peers.locate(b.target);
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
    const decision = decideRoute({ observed: mn.observed!, local: mn.local }, { observed: cn.observed!, local: cn.local });
    if (decision.kind === 'relay') return fail(Status.relayRequired, `${decision.reason} (not available in this version)`);
    const routeId = randomId32();
    const ktun = randomKey();
    const ktmp = randomKey();
    const expiresAt = Date.now() + this.config.routeLifetimeSeconds * 1000;
    const toMn: Body<'routeDirection'> = {
      inReplyTo: m.envelope.messageId,
      routeId,
      role: decision.initiator === 'mn' ? Role.initiator : Role.responder,
      ktun,
      ktmp,
      expiresAt,
      localName: b.source,
      peerNode: cn.node,
      peerName: cn.target,
      peerVip4: cn.vip4,
      peerVip6: cn.vip6,
      peerVips4: cn.nodeVips4,
      peerVips6: cn.nodeVips6,
      peerEndpoint: decision.mnPeer,
      peerPublicKey: cn.publicKey,
      path: PathKind.direct,
      peerCandidate: null,
      via: '',
    };
    const toCn: Body<'routeDirection'> = {
      inReplyTo: 0n,
      routeId,
      role: decision.initiator === 'cn' ? Role.initiator : Role.responder,
      ktun,
      ktmp,
      expiresAt,
      localName: cn.target,
      peerNode: mn.node,
      peerName: b.source,
      peerVip4: mn.vip4,
      peerVip6: mn.vip6,
      peerVips4: mn.nodeVips4,
      peerVips6: mn.nodeVips6,
      peerEndpoint: decision.cnPeer,
      peerPublicKey: mn.publicKey,
      path: PathKind.direct,
      peerCandidate: null,
      via: '',
    };
    if (this.config.verbose) console.error(`dc ${this.config.zone}: route ${routeId} ${b.source} → ${b.target}: ${decision.case}, ${decision.initiator} initiates`);
    try {
      // The responder first: it must hold Ktun before the initiator's Tunnel Request reaches it.
      const sendCn = (): Promise<void> => this.directCn(toCn, cnDc);
      const sendMn = async (): Promise<void> => {
        const ack = await this.channel.request('routeDirection', toMn, m.key, m.from, this.config.retransmit);
        checkAck(ack, 'MN');
      };
      if (decision.initiator === 'mn') {
        await sendCn();
        await sendMn();
      } else {
        await sendMn();
        await sendCn();
      }
    } catch (e) {
      this.counters.directionsFailed++;
      if (this.config.verbose) console.error(`dc ${this.config.zone}: route ${routeId}: ${(e as Error).message}`);
    }
  }

  /** Route Direction to CN: directly if CN is ours, else through CN's DC over Kdcdc. */
  private async directCn(body: Body<'routeDirection'>, cnDc: { keyId: number; key: Buffer; to: Buffer } | null): Promise<void> {
    if (cnDc !== null) {
      const ack = await this.channel.request('routeDirection', body, { keyClass: KeyClass.dcdc, ...cnDc }, cnDc.to, this.config.retransmit);
      checkAck(ack, `DC of ${body.localName}`);
      return;
    }
    const reg = this.registry.registration(body.localName);
    const key = reg && this.registry.key(reg.keyId);
    if (!reg || !key) throw new Error(`${body.localName} is no longer registered`);
    const ack = await this.channel.request('routeDirection', body, { keyClass: KeyClass.ntmdc, keyId: key.keyId, key: key.key }, encodeSockaddr(reg.observed.address, reg.observed.port), this.config.retransmit);
    checkAck(ack, body.localName);
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

function checkAck(ack: Incoming, who: string): void {
  if (ack.message.type !== 'ntmAck') throw new Error(`${who}: answered a Route Direction with ${ack.message.type}`);
  if (ack.message.body.status !== Status.ok) throw new Error(`${who}: ${statusName(ack.message.body.status)}: ${ack.message.body.reason}`);
}

function wireFrom(sockaddr: Buffer): WireEndpoint {
  const e = decodeSockaddr(sockaddr);
  return { address: e.address, port: e.port };
}

