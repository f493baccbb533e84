// The Relay Server (docs/relay.md): one UDP port for hole punching, relayed Tunnel Requests and
// Responses, relayed ESP, gateway tunnels and the DCs' Relay/Gateway Directions; one mutual-TLS
// port where DCs make first contact (Kdcrs from the TLS exporter, answered by a Relay Hello).
//
// Datagrams: a keepalive refreshes what its sender punched; a Tunnel Request/Response under the
// Ktun of a relayed route is authenticated here and forwarded unchanged (not through the control
// channel: it is not ours to answer, and a retransmission must be forwarded again, not treated as
// a duplicate); every other control message goes to the channel; ESP goes to the relay core
// (servers/rs/relay.ts), or first to the gateway's tunnel engine, which hands on the SPIs it does
// not own (tunnel/outside.ts ForeignEsp). The ESP path sends through one preallocated batch.

import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { type Server as TlsServer } from 'node:tls';
import { ControlChannel, REPLAY_WINDOW_MS, type Incoming } from '../../protocol/channel.js';
import {
  AuthError,
  encodeBody,
  HEADER_SIZE,
  KeyClass,
  MESSAGES,
  openMessage,
  PathKind,
  readHeader,
  Role,
  Status,
  statusName,
  TAG_SIZE,
  type Body,
  type ControlMessage,
  type Envelope,
  type StatusCode,
} from '../../protocol/control.js';
import { classifyDatagram, DatagramKind, NON_ESP_MARKER_SIZE } from '../../protocol/demux.js';
import { EndpointMap, formatEndpoint, SOCKADDR_SIZE, wireEndpoint } from '../../protocol/endpoint.js';
import { reservedRange, sameAddress } from '../../protocol/ip.js';
import { RS_PORT, RS_TLS_PORT } from '../../protocol/discovery.js';
import { KDCRS_LIFETIME_MS, loadOrCreateKey, type X25519Pair } from '../../protocol/keys.js';
import { addRoute } from '../../netlink/rtnetlink.js';
import { TunDevice } from '../../netlink/tun.js';
import { UdpSocket } from '../../netlink/udp.js';
import { type NftOptions } from '../../netlink/nftables.js';
import { Engine } from '../../tunnel/engine.js';
import { PacketBatch, type DatagramSocket } from '../../tunnel/io.js';
import { type ForeignEsp } from '../../tunnel/outside.js';
import { TunnelManager } from '../../tunnel/setup.js';
import { TunnelTable } from '../../tunnel/table.js';
import { checkOwnCertificate, listenFirstContact, type TlsFiles } from '../tls.js';
import { enableForwarding, GatewayNat } from './gateway.js';
import { Relay, RELAY_DEFAULTS, type RelayQuota, type RelaySide, type RouteStatus } from './relay.js';

export interface GatewayConfig {
  tun: string;
  mtu: number;
  nftTable: string;
  /**
   * Forward to general hosts in private ranges too (RFC 1918, 100.64.0.0/10, ULA): for a
   * deployment whose general hosts are on a private network. Loopback, link-local, multicast,
   * unspecified and reserved addresses, and the RS's own, are refused whatever this says.
   */
  allowPrivate?: boolean;
}

export interface RsConfig {
  /** A DNS name of its certificate: the name DCs connect with and the Relay Hello says. */
  name: string;
  listen: { address: string; port: number };
  tls: TlsFiles & { port: number };
  /** The static X25519 key (gateway tunnels), made on first start. */
  privateKeyFile: string;
  /** Absent: no general hosts, relaying only. */
  gateway: GatewayConfig | null;
  quota: RelayQuota;
  idleSeconds: number;
  graceSeconds?: number;
  verbose?: boolean;
}

export const RS_DEFAULTS = {
  listen: { address: '::', port: RS_PORT },
  tlsPort: RS_TLS_PORT,
  gateway: { tun: 'ntmrs0', mtu: 1400, nftTable: 'ntmobile_rs', allowPrivate: false },
  quota: RELAY_DEFAULTS.quota,
  idleSeconds: RELAY_DEFAULTS.idleSeconds,
};

/** The server's own events and refusals; the relay core's are in Relay.counters. */
export class RsCounters {
  /** First contacts from DCs (Kdcrs taken, Relay Hello sent). */
  tlsAccepted = 0;
  /** TLS handshakes that failed, and peers whose certificate role is not `dc`. */
  tlsRejected = 0;
  /** Relay Directions that made a new route. */
  relayDirections = 0;
  /** The same Relay Direction again (a DC that retried): acknowledged, nothing new. */
  relayDirectionsRepeated = 0;
  relayDirectionsRefused = 0;
  gatewayDirections = 0;
  /** The same Gateway Direction again: acknowledged, nothing new. */
  gatewayDirectionsRepeated = 0;
  gatewayDirectionsRefused = 0;
  /** Authenticated messages that are not for an RS, or under the wrong key class. */
  ignoredMessages = 0;
  /** Datagrams that are neither keepalive, control nor ESP (too short, reserved SPI). */
  invalidDatagrams = 0;
  gatewayKeepalives = 0;
  gatewayRoutesExpired = 0;
  gatewayTunnelsExpired = 0;
  nftFailures = 0;
}

export interface RsDeps {
  now?: () => number;
  /** Operational lines (always) and, with verbose, the protocol trace. */
  log?: (line: string) => void;
  nft?: NftOptions;
  /** This host's addresses, never a gateway target (default: the listen address and every interface's, asked each time). */
  ownAddresses?: () => string[];
}

interface DcKey {
  key: Buffer;
  dc: string;
  contactedAt: number;
  expiresAt: number;
}

interface GatewayRoute {
  routeId: number;
  node: string;
  nodeName: string;
  nodeVips4: string[];
  nodeVips6: string[];
  target: string;
  targets4: string[];
  targets6: string[];
  pairs4: [string, string][];
  pairs6: [string, string][];
  ktun: Buffer;
  createdAt: number;
  expiresAt: number;
  owner: string;
}

export interface RsStatus {
  name: string;
  publicKey: string;
  udpPort: number;
  tlsPort: number;
  counters: {
    rs: Record<string, number>;
    relay: Record<string, number>;
    channel: Record<string, number>;
    engine: Record<string, number> | null;
    tunnels: Record<string, number> | null;
  };
  routes: RouteStatus[];
  dcs: { keyId: number; dc: string; contactedAt: number; expiresAt: number }[];
  gateway: {
    tun: string;
    nftTable: string;
    routes: { routeId: number; node: string; nodeName: string; target: string; targets4: string[]; targets6: string[]; nodeVips4: string[]; nodeVips6: string[]; owner: string; createdAt: number; expiresAt: number }[];
    tunnels: {
      node: string;
      endpoint: string | null;
      routeId: number;
      vips4: string[];
      vips6: string[];
      keyedAt: number;
      rekeys: number;
      txPackets: number;
      txBytes: number;
      rxPackets: number;
      rxBytes: number;
      lastTx: number | null;
      lastRx: number | null;
      lastKeepalive: number | null;
    }[];
  } | null;
}

/**
 * Relayed ESP out of the receive batch into one preallocated send batch: no allocation and no
 * logging per packet. The time is read once per batch.
 */
export class EspForwarder implements ForeignEsp {
  private readonly out: PacketBatch;
  /** The side each slot of `out` goes to: what to take back when the socket does not send it. */
  private readonly sides: (RelaySide | null)[];
  private now = 0;

  constructor(
    private readonly relay: Relay,
    private readonly socket: () => DatagramSocket | null,
    private readonly clock: () => number,
    private readonly onKeepalive: (addrs: Buffer, addrAt: number, now: number) => void,
    batchSize = 64,
    slotSize = 2048,
  ) {
    this.out = new PacketBatch(batchSize, slotSize);
    this.sides = new Array<RelaySide | null>(batchSize).fill(null);
  }

  forward(buf: Buffer, start: number, length: number, addrs: Buffer, addrAt: number): void {
    if (this.now === 0) this.now = this.clock();
    const out = this.out;
    if (length > out.slotSize) {
      this.relay.counters.espDropSendFailed++;
      return;
    }
    const to = this.relay.forwardEsp(buf, start, length, addrs, addrAt, this.now);
    if (to === null) return;
    const slot = out.count;
    buf.copy(out.buf, out.offset(slot), start, start + length);
    out.lengths[slot] = length;
    to.endpoint!.copy(out.addrs, slot * SOCKADDR_SIZE, 0, SOCKADDR_SIZE);
    this.sides[slot] = to;
    out.count++;
    if (out.count === out.capacity) this.send();
  }

  keepalive(addrs: Buffer, addrAt: number): void {
    if (this.now === 0) this.now = this.clock();
    this.onKeepalive(addrs, addrAt, this.now);
  }

  flush(): void {
    this.send();
    this.now = 0;
  }

  private send(): void {
    const out = this.out;
    if (out.count === 0) return;
    const socket = this.socket();
    const sent = socket === null ? 0 : socket.send(out);
    // The socket says how many it sent, not which: the last ones are taken back (exact when the
    // kernel stopped at a full buffer; when it refused one in the middle, the totals are still
    // exact and only which route's counts are taken back may differ).
    for (let i = sent; i < out.count; i++) this.relay.espUnsent(this.sides[i]!, out.lengths[i]!);
    this.sides.fill(null, 0, out.count);
    out.count = 0;
  }
}

export class RelayServer {
  readonly counters = new RsCounters();
  readonly relay: Relay;
  readonly channel: ControlChannel;
  readonly staticKey: X25519Pair;
  readonly forwarder: EspForwarder;
  /** The gateway's tunnel machinery (null without `gateway`). */
  readonly table: TunnelTable | null = null;
  readonly tunnels: TunnelManager | null = null;
  private readonly dcKeys = new Map<number, DcKey>();
  private readonly gwRoutes = new Map<number, GatewayRoute>();
  /** Gateway tunnels: the last keepalive from each node's endpoint, and that endpoint's index. */
  private readonly gwSeen = new Map<string, number>();
  private gwByEndpoint = new EndpointMap<string>();
  private readonly routedVips = new Set<string>();
  private readonly nat: GatewayNat | null = null;
  private readonly now: () => number;
  private readonly log: (line: string) => void;
  private readonly ownAddresses: () => string[];
  private readonly idleMs: number;
  private readonly graceMs: number;
  private socket: DatagramSocket | null = null;
  private engine: Engine | null = null;
  private device: TunDevice | null = null;
  private tlsServer: TlsServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private restoreForwarding: (() => void) | null = null;
  /** Length of the datagram the channel is handling now (dispatch is synchronous within receive). */
  private requestLength = 0;
  private stopped = false;

  constructor(
    readonly config: RsConfig,
    deps: RsDeps = {},
  ) {
    this.now = deps.now ?? Date.now;
    this.log = deps.log ?? ((l) => process.stderr.write(`rs ${config.name}: ${l}\n`));
    const graceSeconds = config.graceSeconds ?? RELAY_DEFAULTS.graceSeconds;
    this.idleMs = config.idleSeconds * 1000;
    this.graceMs = graceSeconds * 1000;
    this.ownAddresses = deps.ownAddresses ?? (() => hostAddresses(config.listen.address));
    this.staticKey = loadOrCreateKey(config.privateKeyFile);
    // An SPI is either a relayed route's or a gateway tunnel's, never both: the gateway's engine
    // sees ESP first and would take a relayed route's, and the relay would send on a gateway's.
    this.relay = new Relay({ quota: config.quota, idleSeconds: config.idleSeconds, graceSeconds, spiOwnedElsewhere: (spi) => this.table?.spiFree(spi) === false });
    this.channel = new ControlChannel({
      send: (d, to) => this.socket?.sendOne(d, to),
      keys: (cls, id) => this.keyFor(cls, id),
      onMessage: (m) => this.dispatch(m),
      now: this.now,
      ...(config.verbose ? { trace: (l: string) => this.log(l) } : {}),
    });
    this.forwarder = new EspForwarder(
      this.relay,
      () => this.socket,
      this.now,
      (addrs, at, now) => this.onKeepalive(addrs, at, now),
    );
    if (config.gateway !== null) {
      this.table = new TunnelTable();
      this.tunnels = new TunnelManager({
        table: this.table,
        channel: this.channel,
        staticKey: this.staticKey,
        nodeName: config.name,
        suite: 'aes-gcm',
        rekeyAfterSeconds: 3600,
        onVips: (vips) => this.routeVips(vips),
        now: this.now,
        // The RS only ever answers (responder): nodes rekey and renew their gateway routes.
        renew: () => Promise.reject(new Error('an RS does not renew routes')),
        spiTaken: (spi) => this.relay.spiLearned(spi),
        log: (l) => this.trace(l),
      });
      this.nat = new GatewayNat(config.gateway.nftTable, deps.nft);
    }
  }

  get port(): number {
    return this.socket?.port ?? 0;
  }

  get tlsPort(): number {
    const a = this.tlsServer?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  get publicKey(): Buffer {
    return this.staticKey.publicKey;
  }

  async start(): Promise<void> {
    const c = this.config;
    checkOwnCertificate(c.tls.certFile, c.name, 'rs');
    try {
      if (c.gateway !== null) {
        this.restoreForwarding = enableForwarding((l) => this.log(l));
        this.device = await TunDevice.open({ name: c.gateway.tun, mtu: c.gateway.mtu, addresses: [] });
        const socket = UdpSocket.open({ bindAddress: c.listen.address, port: c.listen.port });
        this.socket = socket;
        this.engine = new Engine(this.device, socket, this.table!, { onControl: (m, from) => this.onControl(m, from), foreignEsp: this.forwarder });
        await this.nat!.apply({ tun: c.gateway.tun, pairs4: [], pairs6: [] });
        this.engine.start();
        this.tunnels!.start();
      } else {
        this.attach(UdpSocket.open({ bindAddress: c.listen.address, port: c.listen.port }));
      }
      this.tlsServer = await listenFirstContact('rs', {
        tls: c.tls,
        address: c.listen.address,
        hello: () => ({ name: c.name, publicKey: this.staticKey.publicKey }),
        onKey: (k, names) => this.addDcKey(k.keyId, k.key, names[0]!),
        counters: this.counters,
        trace: (l) => this.trace(l),
      });
    } catch (e) {
      await this.stop();
      throw e;
    }
    this.sweepTimer = setInterval(() => this.sweep(), 1000);
    this.sweepTimer.unref();
  }

  /** Relaying only (no gateway): our own receive loop on `socket` (tests pass an in-memory one). */
  attach(socket: DatagramSocket): void {
    this.socket = socket;
    socket.start((batch) => this.onDatagrams(batch));
  }

  /** Removes everything start() set up: the nftables table, forwarding, the TUN, the sockets. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.tunnels?.stop();
    this.channel.close();
    if (this.engine !== null) this.engine.stop();
    else {
      this.socket?.close();
      this.device?.close();
    }
    this.socket = null;
    await this.nat?.remove().catch((e: Error) => this.log(`nftables: ${e.message}`));
    this.restoreForwarding?.();
    await new Promise<void>((r) => (this.tlsServer?.listening ? this.tlsServer.close(() => r()) : r()));
  }

  /** Kdcrs for a DC (first contact); public for tests that skip TLS. */
  addDcKey(keyId: number, key: Buffer, dc: string): void {
    const now = this.now();
    this.dcKeys.set(keyId, { key: Buffer.from(key), dc, contactedAt: now, expiresAt: now + KDCRS_LIFETIME_MS });
  }

  /** Expiry, once a second: routes, Kdcrs, gateway routes and tunnels. */
  sweep(): void {
    const now = this.now();
    this.relay.expire(now);
    for (const [id, k] of this.dcKeys) if (k.expiresAt <= now) this.dcKeys.delete(id);
    if (this.tunnels !== null) this.sweepGateway(now);
  }

  // ---- datagrams ---------------------------------------------------------------------------------

  /** Relaying only: the receive loop (with a gateway, the engine's Outside calls the same parts). */
  onDatagrams(batch: PacketBatch): void {
    const buf = batch.buf;
    for (let i = 0; i < batch.count; i++) {
      const start = batch.offset(i);
      const length = batch.lengths[i]!;
      const at = i * SOCKADDR_SIZE;
      switch (classifyDatagram(buf, start, length)) {
        case DatagramKind.esp:
          this.forwarder.forward(buf, start, length, batch.addrs, at);
          break;
        case DatagramKind.keepalive:
          this.forwarder.keepalive(batch.addrs, at);
          break;
        case DatagramKind.control:
          this.onControl(Buffer.from(buf.subarray(start, start + length)), Buffer.from(batch.addrs.subarray(at, at + SOCKADDR_SIZE)));
          break;
        default:
          this.counters.invalidDatagrams++;
      }
    }
    this.forwarder.flush();
  }

  private onKeepalive(addrs: Buffer, addrAt: number, now: number): void {
    const relayed = this.relay.keepalive(addrs, addrAt, now);
    let gateway = false;
    if (this.gwByEndpoint.size > 0) {
      const node = this.gwByEndpoint.get(addrs, addrAt);
      if (node !== undefined) {
        this.gwSeen.set(node, now);
        this.counters.gatewayKeepalives++;
        gateway = true;
      }
    }
    if (!relayed && !gateway) this.relay.counters.keepaliveDropUnknown++;
  }

  /** A control datagram (non-ESP marker ‖ message, owned by us) from `from`. */
  onControl(datagram: Buffer, from: Buffer): void {
    let e: Envelope | null = null;
    try {
      e = readHeader(datagram.subarray(NON_ESP_MARKER_SIZE));
    } catch {
      // Malformed: the channel counts it.
    }
    if (e !== null && e.keyClass === KeyClass.tun && (e.type === MESSAGES.tunnelRequest.code || e.type === MESSAGES.tunnelResponse.code)) {
      const route = this.relay.route(e.keyId, this.now());
      if (route !== undefined) {
        this.relayControl(datagram, e, from);
        return;
      }
    }
    this.requestLength = datagram.length;
    this.channel.receive(datagram, from);
  }

  /** A Tunnel Request/Response on a relayed route: authenticate, learn its SPI, forward it unchanged. */
  private relayControl(datagram: Buffer, e: Envelope, from: Buffer): void {
    const now = this.now();
    const c = this.relay.counters;
    const route = this.relay.route(e.keyId, now)!;
    // The source first: nothing from an address that did not punch is even decrypted.
    if (this.relay.sideAt(route, from) === null) {
      c.controlDropUnknownSource++;
      return;
    }
    let message: ControlMessage;
    try {
      message = openMessage(datagram.subarray(NON_ESP_MARKER_SIZE), e, route.ktun);
    } catch (err) {
      if (err instanceof AuthError) c.controlDropAuth++;
      else c.controlDropMalformed++;
      return;
    }
    if (Math.abs(now - e.timestamp) > REPLAY_WINDOW_MS) {
      c.controlDropStale++;
      return;
    }
    const to = this.relay.forwardControl(route, message, from, datagram.length, now);
    if (to === null) return;
    if (this.socket?.sendOne(datagram, to.endpoint!) !== true) {
      this.relay.controlUnsent(to, datagram.length);
      return;
    }
    // Trace lines of per-datagram events are only built with --verbose.
    if (this.config.verbose) this.trace(`route ${route.routeId}: ${message.type} ${formatEndpoint(from)} → ${formatEndpoint(to.endpoint!)}`);
  }

  private keyFor(keyClass: number, keyId: number): Buffer | undefined {
    const now = this.now();
    if (keyClass === KeyClass.dcrs) {
      const k = this.dcKeys.get(keyId);
      return k !== undefined && k.expiresAt > now ? k.key : undefined;
    }
    if (keyClass === KeyClass.tun) return this.relay.ktun(keyId, now) ?? this.tunnels?.ktun(keyId);
    // A gateway tunnel's own key: the node moved and proves it with a Path Probe commit.
    if (keyClass === KeyClass.path) return this.tunnels?.pathKey(keyId);
    return undefined;
  }

  private dispatch(m: Incoming): void {
    const { message } = m;
    const cls = m.key.keyClass;
    if (message.type === 'relayDirection' && cls === KeyClass.dcrs) return this.onRelayDirection(m, message.body);
    if (message.type === 'gatewayDirection' && cls === KeyClass.dcrs) return void this.onGatewayDirection(m, message.body);
    if (message.type === 'holePunching' && cls === KeyClass.tun) return this.onHolePunching(m, message.body);
    if (message.type === 'tunnelRequest' && cls === KeyClass.tun && this.tunnels?.routes.has(m.key.keyId) === true && this.gwRoutes.has(m.key.keyId)) {
      return this.tunnels.onTunnelRequest(m, message.body);
    }
    if (message.type === 'pathProbe' && cls === KeyClass.path && this.tunnels !== null) return this.tunnels.onPathProbe(m, message.body);
    this.counters.ignoredMessages++;
  }

  private ack(m: Incoming, status: StatusCode, reason: string): void {
    this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status, reason });
  }

  private dcName(keyId: number): string {
    return this.dcKeys.get(keyId)?.dc ?? `key ${keyId}`;
  }

  private onRelayDirection(m: Incoming, b: Body<'relayDirection'>): void {
    const now = this.now();
    const v = this.gwRoutes.has(b.routeId)
      ? ({ ok: false, status: Status.badRequest, reason: `route ID ${b.routeId} is in use` } as const)
      : this.relay.addRoute(b, now, this.dcName(m.key.keyId), { total: this.gwRoutes.size, of: (node) => this.gatewayRoutesOf(node) });
    if (v.ok) {
      if (v.created) {
        this.counters.relayDirections++;
        this.trace(`route ${b.routeId}: relay ${b.nodeA} ↔ ${b.nodeB} for ${this.dcName(m.key.keyId)}`);
      } else this.counters.relayDirectionsRepeated++;
      this.ack(m, Status.ok, '');
      return;
    }
    this.counters.relayDirectionsRefused++;
    this.log(`relay direction ${b.routeId} (${b.nodeA} ↔ ${b.nodeB}) refused: ${statusName(v.status)}: ${v.reason}`);
    this.ack(m, v.status, v.reason);
  }

  /**
   * Hole Punching under a relayed route's Ktun: the sender's side is where it came from. The
   * answer (where we saw it) goes out only if it is no longer than the request.
   */
  private onHolePunching(m: Incoming, b: Body<'holePunching'>): void {
    const c = this.relay.counters;
    if (b.routeId !== m.key.keyId) {
      c.punchDropMismatch++;
      return;
    }
    const ack: Body<'holePunchingAck'> = { inReplyTo: m.envelope.messageId, routeId: b.routeId, observed: wireEndpoint(m.from) };
    const answerLength = NON_ESP_MARKER_SIZE + HEADER_SIZE + encodeBody('holePunchingAck', ack).length + TAG_SIZE;
    if (answerLength > this.requestLength) {
      c.punchDropTooShort++;
      return;
    }
    const r = this.relay.punch(b.routeId, b.node, m.from, this.now(), m.envelope.timestamp);
    if (!r.ok) {
      if (this.config.verbose) this.trace(`route ${b.routeId}: hole punch from ${b.node} at ${formatEndpoint(m.from)} refused: ${r.reason}`);
      return;
    }
    if (this.config.verbose) this.trace(`route ${b.routeId}: ${b.node} at ${formatEndpoint(m.from)}${r.moved ? ' (moved)' : ''}`);
    this.channel.reply(m, 'holePunchingAck', ack);
  }

  // ---- gateway routes (general hosts) ------------------------------------------------------------

  private async onGatewayDirection(m: Incoming, b: Body<'gatewayDirection'>): Promise<void> {
    const now = this.now();
    const fail = (status: StatusCode, reason: string): void => {
      this.counters.gatewayDirectionsRefused++;
      this.log(`gateway direction ${b.routeId} (${b.node} → ${b.target}) refused: ${statusName(status)}: ${reason}`);
      this.ack(m, status, reason);
    };
    const gw = this.config.gateway;
    if (gw === null || this.tunnels === null) return fail(Status.badRequest, `${this.config.name} has no gateway for general hosts`);
    if (b.routeId === 0) return fail(Status.badRequest, 'route ID 0');
    if (b.expiresAt <= now) return fail(Status.badRequest, 'the route has already expired');
    const existing = this.gwRoutes.get(b.routeId);
    if (existing !== undefined) {
      if (existing.ktun.equals(b.ktun) && existing.node === b.node) {
        this.counters.gatewayDirectionsRepeated++;
        return this.ack(m, Status.ok, '');
      }
      return fail(Status.badRequest, `route ID ${b.routeId} is in use`);
    }
    if (this.relay.route(b.routeId, now) !== undefined) return fail(Status.badRequest, `route ID ${b.routeId} is in use`);
    if (b.node === this.config.name) return fail(Status.badRequest, `${b.node} is this RS`);
    // The DC has already left such targets out; the RS does not rely on it.
    const refusal = this.targetRefusal(b.targets4, b.targets6, b.node, gw.allowPrivate === true);
    if (refusal !== null) return fail(Status.badRequest, refusal);
    const pairs4 = b.nodeVips4.flatMap((v) => b.targets4.map((t): [string, string] => [v, t]));
    const pairs6 = b.nodeVips6.flatMap((v) => b.targets6.map((t): [string, string] => [v, t]));
    if (pairs4.length + pairs6.length === 0) return fail(Status.badRequest, `no target address in a family ${b.node} has a VIP of`);
    // Replies to a VIP go into the one tunnel that owns it: two nodes with the same VIP (DCs with
    // overlapping pools) cannot both use this gateway.
    for (const r of this.gwRoutes.values()) {
      if (r.node === b.node) continue;
      const clash = [...b.nodeVips4, ...b.nodeVips6].find((v) => r.nodeVips4.includes(v) || r.nodeVips6.includes(v));
      if (clash !== undefined) return fail(Status.badRequest, `VIP ${clash} is ${r.node}'s on this RS`);
    }
    const q = this.config.quota;
    if (this.relay.size + this.gwRoutes.size >= q.maxRoutes) return fail(Status.overQuota, `this relay carries ${q.maxRoutes} routes already`);
    if (this.gatewayRoutesOf(b.node) + this.relay.routesOf(b.node) >= q.maxRoutesPerNode) return fail(Status.overQuota, `${b.node} has ${q.maxRoutesPerNode} routes here already`);
    this.gwRoutes.set(b.routeId, {
      routeId: b.routeId,
      node: b.node,
      nodeName: b.nodeName,
      nodeVips4: b.nodeVips4,
      nodeVips6: b.nodeVips6,
      target: b.target,
      targets4: b.targets4,
      targets6: b.targets6,
      pairs4,
      pairs6,
      ktun: Buffer.from(b.ktun),
      createdAt: now,
      expiresAt: b.expiresAt,
      owner: this.dcName(m.key.keyId),
    });
    try {
      // Forwarding is allowed before the node can send anything on the route.
      await this.applyNat();
    } catch (e) {
      this.gwRoutes.delete(b.routeId);
      return fail(Status.internal, `nftables: ${(e as Error).message}`);
    }
    const direction: Body<'routeDirection'> = {
      inReplyTo: 0n,
      routeId: b.routeId,
      role: Role.responder,
      ktun: b.ktun,
      ktmp: b.ktmp,
      expiresAt: b.expiresAt,
      localName: this.config.name,
      peerNode: b.node,
      peerName: b.nodeName,
      peerVip4: b.nodeVips4[0] ?? null,
      peerVip6: b.nodeVips6[0] ?? null,
      peerVips4: b.nodeVips4,
      peerVips6: b.nodeVips6,
      peerEndpoint: null,
      peerPublicKey: b.nodePublicKey,
      path: PathKind.gateway,
      peerCandidate: null,
      via: this.config.name,
    };
    // The Tunnel Request comes from the node once its DC has directed it; if it never comes, the
    // wait times out and the route ends with the sweep.
    this.tunnels.onRouteDirection(direction, this.idleMs).catch((e: Error) => this.trace(`route ${b.routeId}: ${e.message}`));
    this.counters.gatewayDirections++;
    this.trace(`route ${b.routeId}: gateway ${b.node} (${b.nodeName}) → ${b.target} [${[...b.targets4, ...b.targets6].join(', ')}]`);
    this.ack(m, Status.ok, '');
  }

  /**
   * Why the RS will not forward to one of a gateway route's targets, or null: an address of the
   * wrong family, a private or reserved one (protocol/ip.ts reservedRange; the private ranges
   * are allowed with gateway.allowPrivate, the others never), one of this host's, or the VIP of
   * another node of a gateway route here (its replies would go into that node's tunnel).
   */
  private targetRefusal(targets4: string[], targets6: string[], node: string, allowPrivate: boolean): string | null {
    const own = this.ownAddresses();
    for (const [family, list] of [[4, targets4], [6, targets6]] as const) {
      for (const t of list) {
        if (isIP(t) !== family) return `target ${t} is not an IPv${family} address`;
        const r = reservedRange(t);
        if (r !== null && !(r.private && allowPrivate)) return `target ${t} is ${r.what} (${r.range})${r.private ? '; gateway.allowPrivate is off' : ''}`;
        if (own.some((a) => sameAddress(a, t))) return `target ${t} is an address of this RS`;
        for (const g of this.gwRoutes.values()) {
          if (g.node !== node && [...g.nodeVips4, ...g.nodeVips6].some((v) => sameAddress(v, t))) return `target ${t} is the VIP of ${g.node} on this RS`;
        }
      }
    }
    return null;
  }

  private gatewayRoutesOf(node: string): number {
    let n = 0;
    for (const r of this.gwRoutes.values()) if (r.node === node) n++;
    return n;
  }

  private applyNat(): Promise<void> {
    const gw = this.config.gateway!;
    const routes = [...this.gwRoutes.values()];
    return this.nat!.apply({ tun: gw.tun, pairs4: routes.flatMap((r) => r.pairs4), pairs6: routes.flatMap((r) => r.pairs6) });
  }

  /** Routes to a gateway node's VIPs through the TUN: the host's replies (after NAT) go into the tunnel. */
  private async routeVips(vips: string[]): Promise<void> {
    const dev = this.config.gateway!.tun;
    for (const v of vips) {
      if (this.routedVips.has(v)) continue;
      await addRoute(`${v}/${v.includes(':') ? 128 : 32}`, { dev }).catch((e: Error) => {
        if (!/EEXIST/.test(e.message)) throw e;
      });
      this.routedVips.add(v);
    }
  }

  /**
   * Gateway routes end at expiresAt + grace, or when no Tunnel Request came within the idle time;
   * a gateway tunnel ends with its node's last route or after idleSeconds without ESP either way
   * or a keepalive from the node.
   */
  private sweepGateway(now: number): void {
    const tunnels = this.tunnels!;
    const table = this.table!;
    let changed = false;
    const dropRoute = (id: number): void => {
      this.gwRoutes.delete(id);
      tunnels.routes.delete(id);
      this.counters.gatewayRoutesExpired++;
      changed = true;
    };
    for (const r of this.gwRoutes.values()) {
      const unused = !tunnels.peers.has(r.node) && now - r.createdAt > this.idleMs;
      if (now > r.expiresAt + this.graceMs || unused) dropRoute(r.routeId);
    }
    const withRoutes = new Set([...this.gwRoutes.values()].map((r) => r.node));
    const index = new EndpointMap<string>();
    for (const [node, peer] of tunnels.peers) {
      const s = peer.tunnel.stats;
      const last = Math.max(s.lastRx, s.lastTx, peer.keyedAt, this.gwSeen.get(node) ?? 0);
      if (!withRoutes.has(node) || now - last > this.idleMs) {
        table.remove(peer.tunnel);
        tunnels.peers.delete(node);
        this.gwSeen.delete(node);
        for (const r of [...this.gwRoutes.values()]) if (r.node === node) dropRoute(r.routeId);
        this.counters.gatewayTunnelsExpired++;
        this.trace(`gateway tunnel to ${node} ended (${withRoutes.has(node) ? 'idle' : 'no route left'})`);
        continue;
      }
      if (peer.tunnel.endpoint !== null) index.set(peer.tunnel.endpoint, node);
    }
    this.gwByEndpoint = index;
    if (changed) {
      this.applyNat().catch((e: Error) => {
        this.counters.nftFailures++;
        this.log(`nftables: ${e.message}`);
      });
    }
  }

  // ---- status ------------------------------------------------------------------------------------

  status(): RsStatus {
    const gw = this.config.gateway;
    const tunnels = this.tunnels;
    return {
      name: this.config.name,
      publicKey: this.staticKey.publicKey.toString('base64url'),
      udpPort: this.port,
      tlsPort: this.tlsPort,
      counters: {
        rs: { ...this.counters },
        relay: { ...this.relay.counters },
        channel: { ...this.channel.counters },
        engine: this.engine?.counters.snapshot() ?? null,
        tunnels: tunnels ? { ...tunnels.counters } : null,
      },
      routes: this.relay.status(),
      dcs: [...this.dcKeys].map(([keyId, k]) => ({ keyId, dc: k.dc, contactedAt: k.contactedAt, expiresAt: k.expiresAt })),
      gateway:
        gw === null || tunnels === null
          ? null
          : {
              tun: gw.tun,
              nftTable: gw.nftTable,
              routes: [...this.gwRoutes.values()].map((r) => ({
                routeId: r.routeId,
                node: r.node,
                nodeName: r.nodeName,
                target: r.target,
                targets4: r.targets4,
                targets6: r.targets6,
                nodeVips4: r.nodeVips4,
                nodeVips6: r.nodeVips6,
                owner: r.owner,
                createdAt: r.createdAt,
                expiresAt: r.expiresAt,
              })),
              tunnels: [...tunnels.peers.values()].map((p) => {
                const s = p.tunnel.stats;
                return {
                  node: p.route.peerNode,
                  endpoint: p.tunnel.endpoint === null ? null : formatEndpoint(p.tunnel.endpoint),
                  routeId: p.route.routeId,
                  vips4: p.route.peerVips4,
                  vips6: p.route.peerVips6,
                  keyedAt: p.keyedAt,
                  rekeys: p.rekeys,
                  txPackets: s.txPackets,
                  txBytes: s.txBytes,
                  rxPackets: s.rxPackets,
                  rxBytes: s.rxBytes,
                  lastTx: s.lastTx || null,
                  lastRx: s.lastRx || null,
                  lastKeepalive: this.gwSeen.get(p.route.peerNode) ?? null,
                };
              }),
            },
    };
  }

  /** The protocol trace (--verbose). Where a line is costly to build (per datagram), the caller checks config.verbose first. */
  private trace(line: string): void {
    if (this.config.verbose) this.log(line);
  }
}

/** The host's addresses (every interface's, and the listen address unless it is a wildcard). */
function hostAddresses(listen: string): string[] {
  const out = listen === '::' || listen === '0.0.0.0' ? [] : [listen];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.push(a.address);
  return out;
}
