// Tunnel setup (seed 003 Tunnel Request / Response) and the life of each tunnel after it: the
// route state a Route Direction brings (Ktun, Ktmp, the peer), Kmncn from X25519 (static and
// ephemeral) mixed with Ktmp, the ESP SAs from HKDF, the entry in the tunnel table (the seed's
// CIT), routes to the peer's VIPs through the TUN, and rekeying before the time or sequence
// limit without losing packets (tunnel-table.ts `rekey`: old inbound SA kept, outbound switched
// once the peer has the new keys).

import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { type ControlChannel, type Incoming, type RetransmitPolicy } from '../protocol/channel.js';
import { HOLE_PUNCH_PAD, KeyClass, PathKind, Role, Status, statusName, type Body, type WireEndpoint } from '../protocol/control.js';
import { decodeSockaddr, encodeSockaddr } from '../protocol/endpoint.js';
import { InboundSa, OutboundSa, SPI_MIN, type EspSuite } from '../protocol/esp.js';
import { ipv4ToNumber, ipv6ToBytes } from '../protocol/ip.js';
import { confirmationMatches, deriveKmncn, derivePathKey, deriveSaKeys, generateX25519, keyConfirmation, suiteFromCode, SUITE_CODES, x25519, type Transcript, type X25519Pair } from '../protocol/keys.js';
import { ownCopy, Tunnel, type TunnelTable } from './table.js';

export interface Route {
  routeId: number;
  ktun: Buffer;
  ktmp: Buffer;
  expiresAt: number;
  initiator: boolean;
  localName: string;
  peerNode: string;
  peerName: string;
  peerVip4: string | null;
  peerVip6: string | null;
  peerVips4: string[];
  peerVips6: string[];
  peerEndpoint: WireEndpoint | null;
  peerPublicKey: Buffer;
  /** PathKind: direct, relay (peerEndpoint is the RS), gateway (the RS is the far end). */
  path: number;
  /** On a relayed route: the peer's endpoint as its DC saw it (a direct path to try). */
  peerCandidate: WireEndpoint | null;
  /** The RS's name on relay and gateway paths. */
  via: string;
  /** Where the RS saw us (its Hole Punching Ack), on a relayed path. */
  relayObserved: WireEndpoint | null;
}

/** Where a tunnel's packets go now. */
export type PathState = 'direct' | 'relay' | 'upgraded' | 'gateway';

export interface PeerInfo {
  tunnel: Tunnel;
  route: Route;
  /** Names of the peer resolved through this tunnel, with their VIPs. */
  names: Map<string, { vip4: string | null; vip6: string | null; expiresAt: number; usedAt: number }>;
  keyedAt: number;
  rekeys: number;
  path: PathState;
  /** Kpath: the tunnel's own control key (path probes), from Kmncn; only the two ends have it. */
  pathKey: Buffer;
  /** The Kpath of the SAs before a rekey (`tunnel.previousInbound`, and our outbound SA until the switch). */
  prevPathKey: Buffer | null;
  /** Our outbound SPI before the rekey: answers to probes sent under it come back under it. */
  prevOutboundSpi: number | null;
  /** The send time of the newest path commit taken: an older one, held back and let go later, moves nothing. */
  lastCommitAt: number;
  /** After failed renewals: no new attempt before this time (exponential backoff). */
  retryAt: number;
  renewFailures: number;
}

/** Routes through an RS are renewed this long before they expire (the RS keeps them 60 s more). */
const RS_RENEW_BEFORE_MS = 60_000;
/** A general host's route is renewed if it was resolved this recently... */
const GATEWAY_KEEP_MS = 3600_000;
/** ...or its gateway tunnel carried traffic this recently. */
const GATEWAY_BUSY_MS = 120_000;
const RENEW_BACKOFF_MAX_MS = 300_000;

export class TunnelSetupError extends Error {
  override readonly name = 'TunnelSetupError';
}

export interface TunnelManagerOptions {
  table: TunnelTable;
  channel: ControlChannel;
  staticKey: X25519Pair;
  nodeName: string;
  suite: EspSuite;
  rekeyAfterSeconds: number;
  /** Adds the routes for a new peer VIP through the TUN (and any LAN translation for it). */
  onVips: (vips: string[]) => Promise<void>;
  now: () => number;
  /**
   * Asks the DCs for a new route to a peer whose route expired (the rekey then runs on it);
   * `relay`: the tunnel runs through a relay now, so ask for one again.
   */
  renew: (peerName: string, relay: boolean) => Promise<void>;
  retransmit?: RetransmitPolicy;
  /** Tunnel Request on a direct path: short, so that the fallback to a relay fits the DNS deadline. */
  directRetransmit?: RetransmitPolicy;
  /** Path probes towards a direct candidate (how long to try before staying on the relay). */
  probeRetransmit?: RetransmitPolicy;
  /** The path update after a move (short: a new direction follows when it gets no answer). */
  moveRetransmit?: RetransmitPolicy;
  /** SPIs in use elsewhere on the same port (the RS's relayed routes): never chosen as ours. */
  spiTaken?: (spi: number) => boolean;
  /** Sends one dummy ESP packet (RFC 4303 §2.6) to the tunnel's endpoint on its outbound SA (the engine). */
  sendDummy?: (t: Tunnel) => void;
  /** A tunnel to a new peer is up (the router's ntmobile.peer event). */
  onPeerUp?: (peer: PeerInfo) => void;
  log: (line: string) => void;
}

export class TunnelCounters {
  established = 0;
  rekeys = 0;
  requestsRefused = 0;
  confirmFailed = 0;
  holePunches = 0;
  holePunchFailed = 0;
  upgradeAttempts = 0;
  upgrades = 0;
  upgradeFailed = 0;
  pathProbesAnswered = 0;
  peerMoves = 0;
  /** Path commits older than the one taken (held back on the way): dropped, not answered, nothing moved. */
  staleCommits = 0;
  pathUpdates = 0;
  pathUpdatesFailed = 0;
}

/** What a move did to one tunnel. */
export type PathUpdateResult = 'path-update' | 're-punch' | 'new-direction' | 'failed';

export class TunnelManager {
  readonly counters = new TunnelCounters();
  readonly routes = new Map<number, Route>();
  readonly peers = new Map<string, PeerInfo>();
  private readonly waiting = new Map<number, { resolve: (p: PeerInfo) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly initiating = new Map<number, Promise<PeerInfo>>();
  /** The newest initiation per peer node: the next one waits for it. */
  private readonly initiatingPeer = new Map<string, Promise<PeerInfo>>();
  private rekeyTimer: NodeJS.Timeout | null = null;
  private readonly renewing = new Set<string>();
  private stopped = false;

  constructor(private readonly o: TunnelManagerOptions) {}

  start(): void {
    this.rekeyTimer = setInterval(() => this.checkRekey(), 1000);
    this.rekeyTimer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.rekeyTimer) clearInterval(this.rekeyTimer);
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new TunnelSetupError('stopping'));
    }
    this.waiting.clear();
  }

  /** The Ktun of a live route (the channel's key lookup for key class Ktun). */
  ktun(routeId: number): Buffer | undefined {
    const r = this.routes.get(routeId);
    return r !== undefined && r.expiresAt > this.o.now() ? r.ktun : undefined;
  }

  /** A Route Direction for us: keep the route, then initiate or wait for the peer's request. */
  async onRouteDirection(b: Body<'routeDirection'>, timeoutMs: number): Promise<PeerInfo> {
    // The route's keys live as long as its tunnel: one buffer of their own (ownCopy), not views
    // into the decrypted message.
    const keys = ownCopy(b.ktun, b.ktmp, b.peerPublicKey);
    const ktmpAt = b.ktun.length;
    const publicKeyAt = ktmpAt + b.ktmp.length;
    const route: Route = {
      routeId: b.routeId,
      ktun: keys.subarray(0, ktmpAt),
      ktmp: keys.subarray(ktmpAt, publicKeyAt),
      expiresAt: b.expiresAt,
      initiator: b.role === Role.initiator,
      localName: b.localName,
      peerNode: b.peerNode,
      peerName: b.peerName,
      peerVip4: b.peerVip4,
      peerVip6: b.peerVip6,
      peerVips4: b.peerVips4,
      peerVips6: b.peerVips6,
      peerEndpoint: b.peerEndpoint,
      peerPublicKey: keys.subarray(publicKeyAt),
      path: b.path,
      peerCandidate: b.peerCandidate,
      via: b.via,
      relayObserved: null,
    };
    this.routes.set(route.routeId, route);
    const how = route.path === PathKind.relay ? ` through relay ${route.via}` : route.path === PathKind.gateway ? ` (gateway ${route.via})` : '';
    this.o.log(`route ${route.routeId}: ${route.initiator ? 'initiator' : 'responder'} towards ${route.peerName} (${route.peerNode}) at ${fmt(route.peerEndpoint)}${how}`);
    if (route.initiator) return this.initiate(route);
    // Relayed responder: teach the RS our NAT mapping now, so that it can forward the Tunnel
    // Request to us when the initiator sends it.
    if (route.path === PathKind.relay) void this.punch(route).catch((e: Error) => this.o.log(`route ${route.routeId}: ${e.message}`));
    const existing = this.peers.get(route.peerNode);
    if (existing?.route.routeId === route.routeId) return existing;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(route.routeId);
        reject(new TunnelSetupError(`route ${route.routeId}: no Tunnel Request from ${route.peerNode} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(route.routeId, { resolve, reject, timer });
    });
  }

  /** Initiator: Tunnel Request under Ktun to the directed endpoint, Response proves Kmncn. */
  initiate(route: Route): Promise<PeerInfo> {
    let p = this.initiating.get(route.routeId);
    if (p === undefined) {
      // One Tunnel Request at a time per peer (two routes to it can come at once: two of its
      // names resolved together): answers installed out of order would leave each end on SAs
      // the other has already let go.
      const before = this.initiatingPeer.get(route.peerNode);
      const run = before === undefined ? this.runInitiate(route) : before.then(() => this.runInitiate(route), () => this.runInitiate(route));
      const mine: Promise<PeerInfo> = run.finally(() => {
        this.initiating.delete(route.routeId);
        if (this.initiatingPeer.get(route.peerNode) === mine) this.initiatingPeer.delete(route.peerNode);
      });
      p = mine;
      this.initiating.set(route.routeId, p);
      this.initiatingPeer.set(route.peerNode, p);
    }
    return p;
  }

  private async runInitiate(route: Route): Promise<PeerInfo> {
    if (route.peerEndpoint === null) throw new TunnelSetupError(`route ${route.routeId}: no endpoint for ${route.peerNode}`);
    // A tunnel that left its relay for a direct path rekeys on that path: the RS may have let
    // the idle route go.
    const current = this.peers.get(route.peerNode);
    const rekey = current !== undefined && current.route.routeId === route.routeId && current.tunnel.endpoint !== null;
    const upgraded = rekey && current.path === 'upgraded';
    if (route.path === PathKind.relay && !upgraded) await this.punch(route);
    const eph = generateX25519();
    const spi = this.freshSpi();
    const nonce = randomBytes(32);
    // A rekey goes to where the peer is now, which is not where the direction said if it moved
    // since (a path update) or if we left the relay for a direct path.
    const to = rekey && current.path !== 'relay' ? Buffer.from(current.tunnel.endpoint!) : encodeSockaddr(route.peerEndpoint.address, route.peerEndpoint.port);
    const answer = await this.o.channel.request(
      'tunnelRequest',
      { routeId: route.routeId, node: this.o.nodeName, suite: SUITE_CODES[this.o.suite], spi, ephemeral: eph.publicKey, nonce },
      { keyClass: KeyClass.tun, keyId: route.routeId, key: route.ktun },
      to,
      route.path === PathKind.direct && current === undefined ? (this.o.directRetransmit ?? this.o.retransmit) : this.o.retransmit,
    );
    if (answer.message.type !== 'tunnelResponse') throw new TunnelSetupError(`route ${route.routeId}: answered with ${answer.message.type}`);
    const r = answer.message.body;
    if (r.status !== Status.ok) throw new TunnelSetupError(`route ${route.routeId}: ${route.peerNode} refused: ${statusName(r.status)}`);
    const t: Transcript = { routeId: route.routeId, initiatorSpi: spi, responderSpi: r.spi, initiatorEphemeral: eph.publicKey, responderEphemeral: r.ephemeral, initiatorNonce: nonce, responderNonce: r.nonce };
    const kmncn = deriveKmncn(route.ktmp, x25519(this.o.staticKey.privateKey, route.peerPublicKey), x25519(eph.privateKey, r.ephemeral), t);
    if (!confirmationMatches(kmncn, t, r.confirm)) {
      this.counters.confirmFailed++;
      throw new TunnelSetupError(`route ${route.routeId}: ${route.peerNode}'s key confirmation does not match`);
    }
    const keys = deriveSaKeys(kmncn, this.o.suite);
    const inbound = new InboundSa({ spi, suite: this.o.suite, ...keys.r2i });
    const outbound = new OutboundSa({ spi: r.spi, suite: this.o.suite, ...keys.i2r });
    return this.install(route, inbound, outbound, answer.from, true, derivePathKey(kmncn));
  }

  /** Responder: a Tunnel Request (already authenticated with the route's Ktun by the channel). */
  onTunnelRequest(m: Incoming, b: Body<'tunnelRequest'>): void {
    const route = this.routes.get(m.key.keyId);
    const refuse = (status: number, why: string): void => {
      this.counters.requestsRefused++;
      this.o.log(`tunnel request on route ${m.key.keyId} refused: ${why}`);
      this.o.channel.reply(m, 'tunnelResponse', { inReplyTo: m.envelope.messageId, status, routeId: b.routeId, spi: 0, ephemeral: Buffer.alloc(32), nonce: Buffer.alloc(32), confirm: Buffer.alloc(32) });
    };
    if (route === undefined || route.routeId !== b.routeId) return refuse(Status.badRequest, 'route ID does not match the key');
    if (b.node !== route.peerNode) return refuse(Status.notAuthorized, `sender ${b.node} is not the directed peer ${route.peerNode}`);
    const suite = suiteFromCode(b.suite);
    if (suite === null) return refuse(Status.badRequest, `suite ${b.suite} unknown`);
    const eph = generateX25519();
    const spi = this.freshSpi();
    const nonce = randomBytes(32);
    const t: Transcript = { routeId: route.routeId, initiatorSpi: b.spi, responderSpi: spi, initiatorEphemeral: b.ephemeral, responderEphemeral: eph.publicKey, initiatorNonce: b.nonce, responderNonce: nonce };
    let kmncn: Buffer;
    try {
      kmncn = deriveKmncn(route.ktmp, x25519(this.o.staticKey.privateKey, route.peerPublicKey), x25519(eph.privateKey, b.ephemeral), t);
    } catch (e) {
      return refuse(Status.badRequest, (e as Error).message);
    }
    const keys = deriveSaKeys(kmncn, suite);
    const inbound = new InboundSa({ spi, suite, ...keys.i2r });
    const outbound = new OutboundSa({ spi: b.spi, suite, ...keys.r2i });
    // Answer first (the channel remembers the answer for duplicates), then install: the
    // initiator only sends data after it has the answer.
    this.o.channel.reply(m, 'tunnelResponse', { inReplyTo: m.envelope.messageId, status: Status.ok, routeId: route.routeId, spi, ephemeral: eph.publicKey, nonce, confirm: keyConfirmation(kmncn, t) });
    void this.install(route, inbound, outbound, m.from, false, derivePathKey(kmncn)).then(
      (p) => {
        const w = this.waiting.get(route.routeId);
        if (w) {
          clearTimeout(w.timer);
          this.waiting.delete(route.routeId);
          w.resolve(p);
        }
      },
      (e: Error) => this.o.log(`route ${route.routeId}: install failed: ${e.message}`),
    );
  }

  private async install(route: Route, inbound: InboundSa, outbound: OutboundSa, from: Buffer, initiator: boolean, pathKey: Buffer): Promise<PeerInfo> {
    const { table } = this.o;
    let peer = this.peers.get(route.peerNode);
    const vips = [...route.peerVips4, ...route.peerVips6];
    const path: PathState = route.path === PathKind.relay ? 'relay' : route.path === PathKind.gateway ? 'gateway' : 'direct';
    if (peer === undefined) {
      const tunnel = new Tunnel(route.peerNode, null, null, outbound, inbound, ownCopy(from), 20);
      tunnel.roaming = path === 'direct';
      table.add(tunnel);
      peer = { tunnel, route, names: new Map(), keyedAt: this.o.now(), rekeys: 0, path, pathKey, prevPathKey: null, prevOutboundSpi: null, lastCommitAt: 0, retryAt: 0, renewFailures: 0 };
      this.peers.set(route.peerNode, peer);
      this.counters.established++;
      this.o.log(`tunnel to ${route.peerNode} up (${initiator ? 'we initiated' : 'peer initiated'}), endpoint ${fmtSockaddr(from)}${path === 'relay' ? ` (relay ${route.via})` : ''}`);
      this.o.onPeerUp?.(peer);
    } else {
      const sameRoute = peer.route.routeId === route.routeId;
      const outboundBefore = peer.tunnel.outbound.spi;
      // Only a rekey on the same route may replace an unused one: two routes to one peer can be
      // set up at the same time (two names resolved at once), and both are real.
      const replaced = table.rekey(peer.tunnel, inbound, outbound, initiator, sameRoute);
      // A rekey on the direct path a relayed tunnel moved to keeps that path.
      const stayDirect = peer.path === 'upgraded' && sameRoute;
      // The answer to our request is proven by the key confirmation: the peer is where it came
      // from. A request on the same route proves only Ktun, which the DCs (and an RS) hold too:
      // it moves nothing; the peer moves its endpoint with a path update, like any move.
      if (initiator || !sameRoute || peer.tunnel.endpoint === null) peer.tunnel.endpoint = ownCopy(from);
      if (!stayDirect) peer.path = path;
      peer.tunnel.roaming = peer.path === 'direct';
      if (!replaced) {
        peer.prevPathKey = peer.pathKey;
        peer.prevOutboundSpi = outboundBefore;
      }
      peer.pathKey = pathKey;
      peer.route = route;
      peer.keyedAt = this.o.now();
      peer.rekeys++;
      this.counters.rekeys++;
      const t = peer.tunnel;
      const p = peer;
      // The SAs before the rekey stay until the peer has shown it holds the new keys (ESP or a
      // dummy packet on the new inbound SA): a Tunnel Request nobody answered with traffic (lost
      // on the way back, or made by someone holding only Ktun) leaves the working SAs working,
      // and an initiator whose dummy packets were all lost still accepts what the responder
      // sends on the old SA.
      const retire = (): void => {
        if (this.stopped || this.peers.get(route.peerNode)?.tunnel !== t || t.inbound !== inbound || t.previousInbound === null) return;
        if (t.pendingOutbound !== null || inbound.highestSeq === 0) {
          setTimeout(retire, 30_000).unref();
          return;
        }
        table.retirePrevious(t);
        p.prevPathKey = null;
        p.prevOutboundSpi = null;
      };
      setTimeout(retire, 30_000).unref();
      // Initiator: show the responder we hold the new keys even when no data flows (an idle
      // tunnel), so that it switches its outbound SA too; a few times, in case one is lost.
      if (initiator) this.confirmRekey(t, outbound);
      this.o.log(`tunnel to ${route.peerNode} rekeyed (route ${route.routeId})${replaced ? ', replacing a rekey the peer never used' : ''}`);
    }
    for (const v of route.peerVips4) if (!table.addVip4(peer.tunnel, ipv4ToNumber(v))) this.o.log(`VIP ${v} of ${route.peerNode} is already another tunnel's`);
    for (const v of route.peerVips6) if (!table.addVip6(peer.tunnel, ipv6ToBytes(v))) this.o.log(`VIP ${v} of ${route.peerNode} is already another tunnel's`);
    peer.names.set(route.peerName, { vip4: route.peerVip4, vip6: route.peerVip6, expiresAt: route.expiresAt, usedAt: this.o.now() });
    await this.o.onVips(vips.filter((v) => isIP(v)));
    if (peer.path === 'relay' && route.peerCandidate !== null) {
      const p = peer;
      void this.upgrade(p, route).catch((e: Error) => this.o.log(`route ${route.routeId}: direct path: ${e.message}`));
    }
    return peer;
  }

  /** Dummy ESP packets (RFC 4303 §2.6) on a new outbound SA, now, after 1 s and after 5 s. */
  private confirmRekey(t: Tunnel, sa: OutboundSa): void {
    const send = this.o.sendDummy;
    if (send === undefined) return;
    const once = (): void => {
      if (t.outbound === sa && t.endpoint !== null && !this.stopped) send(t);
    };
    once();
    for (const ms of [1000, 5000]) setTimeout(once, ms).unref();
  }

  /** The key and key ID our path probes go under: our outbound SPI, and the Kpath of its generation. */
  private probeKey(peer: PeerInfo): { keyClass: number; keyId: number; key: Buffer } {
    const t = peer.tunnel;
    // Responder during a rekey: we still send on the SA before it, whose key the peer pairs with it.
    const key = t.pendingOutbound !== null && peer.prevPathKey !== null ? peer.prevPathKey : peer.pathKey;
    return { keyClass: KeyClass.path, keyId: t.outbound.spi, key };
  }

  /** Hole Punching to the route's RS from our own port: the RS learns our NAT mapping. */
  private async punch(route: Route): Promise<void> {
    const rs = encodeSockaddr(route.peerEndpoint!.address, route.peerEndpoint!.port);
    let answer: Incoming;
    try {
      answer = await this.o.channel.request('holePunching', { routeId: route.routeId, node: this.o.nodeName, pad: HOLE_PUNCH_PAD }, { keyClass: KeyClass.tun, keyId: route.routeId, key: route.ktun }, rs, this.o.retransmit);
    } catch (e) {
      this.counters.holePunchFailed++;
      throw new TunnelSetupError(`route ${route.routeId}: relay ${route.via} at ${fmt(route.peerEndpoint)} does not answer Hole Punching (${(e as Error).message})`);
    }
    if (answer.message.type !== 'holePunchingAck') throw new TunnelSetupError(`route ${route.routeId}: relay answered Hole Punching with ${answer.message.type}`);
    this.counters.holePunches++;
    const observed = answer.message.body.observed;
    route.relayObserved = observed;
    this.o.log(`route ${route.routeId}: relay ${route.via} sees us at ${fmt(observed)}`);
  }

  /**
   * From the relay to a direct path (docs/relay.md, like ICE): both ends probe the peer's
   * candidate under Kpath, which opens each one's own NAT for the other; the initiator, once a
   * probe is answered, commits, and both move the tunnel to the direct path. No answer (a
   * symmetric NAT): the tunnel stays on the relay.
   */
  private async upgrade(peer: PeerInfo, route: Route): Promise<void> {
    const candidate = encodeSockaddr(route.peerCandidate!.address, route.peerCandidate!.port);
    const key = (): { keyClass: number; keyId: number; key: Buffer } => this.probeKey(peer);
    const policy = this.o.probeRetransmit ?? { initialMs: 250, maxMs: 1000, tries: 8 };
    this.counters.upgradeAttempts++;
    let ack: Incoming;
    try {
      ack = await this.o.channel.request('pathProbe', { commit: 0, pad: '' }, key(), candidate, policy);
    } catch {
      if (route.initiator) this.counters.upgradeFailed++;
      this.o.log(`route ${route.routeId}: no direct path to ${route.peerNode} at ${fmt(route.peerCandidate)}: staying on relay ${route.via}`);
      return;
    }
    if (!route.initiator || peer.route !== route || peer.path !== 'relay') return;
    const commit = await this.o.channel.request('pathProbe', { commit: 1, pad: '' }, key(), ack.from, policy);
    if (peer.route !== route) return;
    peer.tunnel.endpoint = ownCopy(commit.from);
    peer.path = 'upgraded';
    this.counters.upgrades++;
    this.o.log(`tunnel to ${route.peerNode}: moved from relay ${route.via} to the direct path ${fmtSockaddr(commit.from)}`);
  }

  /**
   * After our uplink changed (a move, a new NAT mapping): tell each peer where we are now, with
   * the fewest round trips that prove it. A direct or upgraded path, and a gateway tunnel (the RS
   * is the peer): a Path Probe commit from the new address under the tunnel's own key, so the
   * peer moves its endpoint (same SAs). A relayed path: a new Hole Punching, so the RS forwards
   * to the new mapping. When that gets no answer (the peer's NAT filters the new address, the
   * route expired at the RS), a new direction: the DCs decide again from where we are now.
   */
  async updatePath(peer: PeerInfo, registered: Promise<unknown>): Promise<PathUpdateResult> {
    const route = peer.route;
    const renew = async (relay: boolean): Promise<PathUpdateResult> => {
      await registered.catch(() => undefined);
      try {
        await this.o.renew(route.peerName, relay);
        return 'new-direction';
      } catch (e) {
        this.counters.pathUpdatesFailed++;
        this.o.log(`tunnel to ${route.peerNode}: no new direction after the move: ${(e as Error).message}`);
        return 'failed';
      }
    };
    if (peer.path === 'relay') {
      if (route.expiresAt <= this.o.now() + 5000) return renew(true);
      try {
        await this.punch(route);
        this.counters.pathUpdates++;
        return 're-punch';
      } catch {
        return renew(true);
      }
    }
    if (peer.tunnel.endpoint === null) return renew(peer.path === 'upgraded');
    const to = Buffer.from(peer.tunnel.endpoint);
    try {
      await this.o.channel.request('pathProbe', { commit: 1, pad: '' }, this.probeKey(peer), to, this.o.moveRetransmit ?? { initialMs: 150, maxMs: 400, tries: 5 });
      this.counters.pathUpdates++;
      return 'path-update';
    } catch {
      this.o.log(`tunnel to ${route.peerNode}: no answer at ${fmtSockaddr(to)} from our new address: asking for a new direction`);
      return renew(peer.path === 'upgraded');
    }
  }

  /**
   * Kpath of the tunnel a path probe names: probes carry the receiver's inbound SPI as key ID,
   * and their answers come back under the same ID, which is then our outbound SPI.
   */
  pathKey(spi: number): Buffer | undefined {
    // Our inbound SPIs first, over all tunnels: an outbound SPI is chosen by the peer, and one
    // peer must never get its own key chosen for an ID that names another peer's tunnel.
    for (const p of this.peers.values()) {
      const t = p.tunnel;
      if (t.inbound.spi === spi) return p.pathKey;
      if (t.previousInbound?.spi === spi) return p.prevPathKey ?? undefined;
    }
    for (const p of this.peers.values()) {
      const t = p.tunnel;
      if (t.pendingOutbound?.spi === spi) return p.pathKey;
      if (t.outbound.spi === spi) return this.probeKey(p).key;
      if (p.prevOutboundSpi === spi && p.prevPathKey !== null) return p.prevPathKey;
    }
    return undefined;
  }

  /** A path probe (authenticated under Kpath by the channel): answer it; a commit moves the tunnel. */
  onPathProbe(m: Incoming, b: Body<'pathProbe'>): void {
    // The tunnel whose inbound SPI the key ID names, and whose own key opened the message.
    const peer = [...this.peers.values()].find((p) => p.tunnel.inboundFor(m.key.keyId) !== null && (p.pathKey.equals(m.key.key) || p.prevPathKey?.equals(m.key.key) === true));
    if (peer === undefined) return;
    if (b.commit === 1 && m.envelope.timestamp < peer.lastCommitAt) {
      // Sent before the commit we took: held back somewhere and let go late. The tunnel stays
      // where the newer commit put it, and no answer tells the sender it moved anything (a
      // sender whose clock stepped back gets no answer and asks for a new direction).
      this.counters.staleCommits++;
      return;
    }
    if (b.commit === 1) {
      peer.lastCommitAt = m.envelope.timestamp;
      // The peer proves with the tunnel's own key that it is now at m.from: it left the relay
      // for a direct path, or it moved (MOBIKE-like path update: same SAs, new outer address).
      const moved = peer.tunnel.endpoint === null || !peer.tunnel.endpoint.equals(m.from);
      peer.tunnel.endpoint = ownCopy(m.from);
      if (peer.path === 'relay') {
        this.counters.upgrades++;
        this.o.log(`tunnel to ${peer.route.peerNode}: moved from relay ${peer.route.via} to the direct path ${fmtSockaddr(m.from)} (peer's commit)`);
        peer.path = 'upgraded';
        peer.tunnel.roaming = false;
      } else if (moved) {
        this.counters.peerMoves++;
        this.o.log(`tunnel to ${peer.route.peerNode}: the peer moved to ${fmtSockaddr(m.from)}`);
      }
    }
    this.counters.pathProbesAnswered++;
    const e = decodeSockaddr(m.from);
    this.o.channel.reply(m, 'pathProbeAck', { inReplyTo: m.envelope.messageId, observed: { address: e.address, port: e.port } });
  }

  private freshSpi(): number {
    for (;;) {
      const spi = randomBytes(4).readUInt32BE(0);
      if (spi >= SPI_MIN && this.o.table.spiFree(spi) && this.o.spiTaken?.(spi) !== true) return spi;
    }
  }

  /**
   * The initiator of each tunnel rekeys it before its time or sequence limit: on the same route
   * while it lives, else through a new direction (whose Tunnel Request rekeys the tunnel).
   */
  private checkRekey(): void {
    const now = this.o.now();
    this.pruneRoutes(now);
    for (const peer of this.peers.values()) {
      if (!peer.route.initiator || this.initiating.has(peer.route.routeId) || this.renewing.has(peer.route.peerNode) || now < peer.retryAt) continue;
      const old = now - peer.keyedAt > this.o.rekeyAfterSeconds * 1000;
      // A route through an RS ends there at its expiry: renew it a minute before, rekey due or not.
      const ends = peer.path === 'gateway' ? Math.min(...[...peer.names.values()].map((n) => n.expiresAt)) : peer.route.expiresAt;
      const viaRs = peer.path !== 'direct' && ends < now + RS_RENEW_BEFORE_MS;
      if (!old && !peer.tunnel.outbound.needsRekey && !viaRs) continue;
      if (!viaRs && peer.route.expiresAt > now + 10_000) {
        void this.initiate(peer.route).catch((e: Error) => this.o.log(`rekey of ${peer.route.peerNode}: ${e.message}`));
        continue;
      }
      this.renewing.add(peer.route.peerNode);
      void this.renewPeer(peer).finally(() => this.renewing.delete(peer.route.peerNode));
    }
  }

  /**
   * A new direction for a peer; for a gateway tunnel, one per general host it carries (each
   * host's permission at the RS lives as long as its own route).
   */
  private async renewPeer(peer: PeerInfo): Promise<void> {
    const now = this.o.now();
    let names = [peer.route.peerName];
    if (peer.path === 'gateway') {
      // A general host keeps its permission at the RS while it is in use: resolved within the
      // last hour, or the tunnel busy right now. Others are forgotten (a new DNS query makes a
      // new route), so that names resolved once do not hold RS routes for ever.
      const busy = now - Math.max(peer.tunnel.stats.lastTx, peer.tunnel.stats.lastRx) < GATEWAY_BUSY_MS;
      names = [];
      for (const [name, n] of peer.names) {
        if (n.expiresAt >= now + RS_RENEW_BEFORE_MS) continue;
        if (busy || now - n.usedAt < GATEWAY_KEEP_MS) names.push(name);
        else if (n.expiresAt <= now) {
          peer.names.delete(name);
          this.o.log(`general host ${name}: not used for a while, its route through ${peer.route.via} is not renewed`);
        }
      }
    }
    let failed = false;
    for (const name of names) {
      try {
        await this.o.renew(name, peer.path === 'relay' || peer.path === 'upgraded');
      } catch (e) {
        failed = true;
        this.o.log(`rekey of ${peer.route.peerNode}: new direction for ${name} failed: ${(e as Error).message}`);
      }
    }
    if (failed) {
      peer.renewFailures++;
      peer.retryAt = this.o.now() + Math.min(RENEW_BACKOFF_MAX_MS, 5000 * 2 ** (peer.renewFailures - 1));
    } else {
      peer.renewFailures = 0;
      peer.retryAt = 0;
    }
  }

  /** A name of this peer was looked up (DNS): its gateway route is in use. */
  touch(peer: PeerInfo, name: string): void {
    const n = peer.names.get(name);
    if (n !== undefined) n.usedAt = this.o.now();
  }

  /** Routes nobody uses any more: expired, and not a tunnel's current route. */
  private pruneRoutes(now: number): void {
    if (this.routes.size < 64) return;
    const inUse = new Set([...this.peers.values()].map((p) => p.route.routeId));
    for (const [id, r] of this.routes) {
      if (r.expiresAt < now - 120_000 && !inUse.has(id) && !this.initiating.has(id) && !this.waiting.has(id)) this.routes.delete(id);
    }
  }

  /**
   * Relayed tunnels: an answered Hole Punching instead of a silent NAT keepalive, so that a route
   * the RS lost (restart, idle, quota) or a mapping that changed under us is noticed within one
   * keepalive period and healed (updatePath: punch again, else a new direction).
   */
  async refreshRelays(registered: Promise<unknown>): Promise<void> {
    const relayed = [...this.peers.values()].filter((p) => p.path === 'relay' && p.route.expiresAt > this.o.now());
    await Promise.all(
      relayed.map(async (p) => {
        try {
          await this.punch(p.route);
        } catch {
          this.o.log(`tunnel to ${p.route.peerNode}: relay ${p.route.via} stopped answering: moving it`);
          await this.updatePath(p, registered);
        }
      }),
    );
  }
}

function fmt(e: WireEndpoint | null): string {
  if (e === null) return '(to be learned)';
  return isIP(e.address) === 6 ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
}

function fmtSockaddr(s: Buffer): string {
  const e = decodeSockaddr(s);
  return fmt(e);
}
