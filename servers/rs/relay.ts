// The Relay Server's relay core (docs/relay.md): the relayed routes a DC directed here, each with
// its two nodes and the endpoint each one's hole punch taught us, the SPIs learned from the Tunnel
// Request/Response we forwarded, and the ESP forwarding by (source endpoint, SPI). Pure logic, no
// sockets, time passed in: servers/rs/rs.ts feeds it datagrams, the tests a fake clock.
//
// The rules it enforces (no open relay, no amplification): it only ever names as a destination an
// endpoint that an authenticated hole punch set, only for a datagram that came from the other
// side's punched endpoint, one datagram out per datagram in; everything else is dropped and
// counted by reason. Quotas: token buckets per route and per sending node (bytes/s), a byte budget
// per route, a maximum number of routes in all and per node.

import { Status, type ControlMessage, type StatusCode } from '../../protocol/control.js';
import { EndpointMap, formatEndpoint, SOCKADDR_SIZE } from '../../protocol/endpoint.js';

export interface RelayQuota {
  /** Bytes per second one route may forward, both ways together; 0: unlimited. Burst: one second's worth. */
  routeBytesPerSecond: number;
  /** Bytes per second one node may send through all its routes together; 0: unlimited. */
  nodeBytesPerSecond: number;
  /** Bytes one route may forward in its life; 0: unlimited. */
  routeBytes: number;
  maxRoutes: number;
  maxRoutesPerNode: number;
}

export interface RelayOptions {
  quota: RelayQuota;
  /** A route with no punch, forwarded datagram or keepalive for this long ends. */
  idleSeconds: number;
  /** A route ends this long after its expiresAt: room for the rekey on the route that replaces it. */
  graceSeconds: number;
  /**
   * SPIs that something else on the same port receives (the RS's gateway tunnels): never learned
   * for a relayed route, whose ESP would otherwise go there.
   */
  spiOwnedElsewhere?: (spi: number) => boolean;
}

export const RELAY_DEFAULTS: RelayOptions = {
  quota: { routeBytesPerSecond: 125_000_000, nodeBytesPerSecond: 250_000_000, routeBytes: 0, maxRoutes: 10_000, maxRoutesPerNode: 256 },
  idleSeconds: 120,
  graceSeconds: 60,
};

const NO_OTHERS = { total: 0, of: (): number => 0 };

/** SPIs kept per side: the current one, the previous (during a rekey) and one more in flight. */
const MAX_SPIS_PER_SIDE = 3;
/** SPIs key the forwarding map by their low 30 bits, a small integer for V8 (no boxing per lookup). */
const SPI_HASH = 0x3fffffff;

/** One event or drop reason per field (ARCHITECTURE §5: every datagram accounted for). */
export class RelayCounters {
  routesCreated = 0;
  /** Relay Directions refused: too many routes in all or for a node. */
  routesRefusedQuota = 0;
  /** Relay Directions refused: malformed (same node twice, already expired, route ID in use). */
  routesRefusedBad = 0;
  routesExpiredIdle = 0;
  routesExpiredHard = 0;
  punches = 0;
  /** A punch from a new address for a side that had one: the node's NAT mapping changed (the last authenticated punch to arrive wins). */
  punchEndpointMoves = 0;
  punchDropUnknownRoute = 0;
  /** Its body's route ID differs from the key ID it came under (a node's bug or a forgery by the other node). */
  punchDropMismatch = 0;
  /** The node named is not one of the route's two. */
  punchDropForeignNode = 0;
  /** The address is the other side's endpoint: forwarding there would loop. */
  punchDropConflict = 0;
  /** Hole punches from a new endpoint sent before the newest one taken (held back on the way). */
  punchDropStale = 0;
  /** Answer (Hole Punching Ack) would be longer than the request: no amplification. */
  punchDropTooShort = 0;
  controlForwarded = 0;
  /** A relayed Tunnel Request/Response from an address neither side punched from. */
  controlDropUnknownSource = 0;
  /** A relayed Tunnel Request/Response that does not open under the route's Ktun. */
  controlDropAuth = 0;
  controlDropStale = 0;
  controlDropMalformed = 0;
  /** Its route ID differs from its key ID, or a Tunnel Request names a node other than its sender's side. */
  controlDropMismatch = 0;
  /** The other side has not punched yet: nowhere to forward to. */
  controlDropPeerNotLearned = 0;
  controlDropSendFailed = 0;
  spisLearned = 0;
  /**
   * A Tunnel Request/Response not forwarded: its SPI is already forwarded for another route from
   * the same source endpoint (the older route keeps it; a node that spoofs a source cannot divert
   * another route's ESP).
   */
  spiRefusedShadow = 0;
  /** A Tunnel Request/Response not forwarded: its SPI is one of the RS's own gateway tunnels'. */
  spiRefusedGateway = 0;
  /** Sent (a send the socket refused is taken back and counted in espDropSendFailed). */
  espForwarded = 0;
  espBytes = 0;
  espDropUnknownSpi = 0;
  /** The SPI is known but the datagram does not come from the endpoint that sends on it. */
  espDropUnknownSource = 0;
  espDropPeerNotLearned = 0;
  espDropSendFailed = 0;
  /** Control or ESP on a route past its idle time or its expiresAt + grace (before the sweep removed it). */
  dropExpired = 0;
  dropQuotaRate = 0;
  dropQuotaBytes = 0;
  keepalives = 0;
  /** A keepalive from an address no side punched from (not forwarded either way). */
  keepaliveDropUnknown = 0;
}

/** Bytes per second with a burst of one second: refilled lazily from the time passed. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly rate: number,
    now: number,
  ) {
    this.tokens = rate;
    this.last = now;
  }

  /** Refills for the time since the last call; whether n bytes fit now (always, if unlimited). */
  fits(n: number, now: number): boolean {
    if (this.rate === 0) return true;
    if (now > this.last) {
      this.tokens = Math.min(this.rate, this.tokens + ((now - this.last) * this.rate) / 1000);
      this.last = now;
    }
    return this.tokens >= n;
  }

  take(n: number): void {
    if (this.rate !== 0) this.tokens -= n;
  }
}

interface NodeState {
  routes: number;
  /** What the node sends through all its routes. */
  bucket: TokenBucket;
}

/** One end of a relayed route. */
export class RelaySide {
  /** Where the node's hole punch came from (28-byte sockaddr, owned), or null before its first. */
  endpoint: Buffer | null = null;
  punches = 0;
  lastPunch = 0;
  /** The send time (control envelope) of the newest punch taken from this side. */
  lastPunchSentAt = 0;
  /** Datagrams and bytes received from this side and forwarded. */
  packets = 0;
  bytes = 0;
  /** This side's inbound SPIs (ESP towards it carries them), oldest first. */
  readonly spis: number[] = [];
  other!: RelaySide;

  constructor(
    readonly route: RelayRoute,
    readonly node: string,
    readonly nodeState: NodeState,
  ) {}
}

export class RelayRoute {
  readonly a: RelaySide;
  readonly b: RelaySide;
  lastActivity: number;
  packets = 0;
  bytes = 0;
  readonly bucket: TokenBucket;

  constructor(
    readonly routeId: number,
    readonly ktun: Buffer,
    readonly expiresAt: number,
    nodeA: { name: string; state: NodeState },
    nodeB: { name: string; state: NodeState },
    readonly createdAt: number,
    /** Who directed it (the DC's name), for the status. */
    readonly owner: string,
    rate: number,
  ) {
    this.a = new RelaySide(this, nodeA.name, nodeA.state);
    this.b = new RelaySide(this, nodeB.name, nodeB.state);
    this.a.other = this.b;
    this.b.other = this.a;
    this.lastActivity = createdAt;
    this.bucket = new TokenBucket(rate, createdAt);
  }
}

/** A forwarding entry: ESP carrying `spi` goes to `to`, and only if it comes from to.other's endpoint. */
interface Forward {
  spi: number;
  to: RelaySide;
}

export type Verdict = { ok: true } | { ok: false; status: StatusCode; reason: string };
/** addRoute's answer: `created` is false for the same direction again (acknowledged, nothing new). */
export type AddRouteVerdict = { ok: true; created: boolean } | { ok: false; status: StatusCode; reason: string };

export type PunchResult = { ok: true; moved: boolean } | { ok: false; reason: 'unknownRoute' | 'foreignNode' | 'conflict' | 'stale' };

export interface RelayDirection {
  routeId: number;
  ktun: Buffer;
  expiresAt: number;
  nodeA: string;
  nodeB: string;
}

export interface SideStatus {
  node: string;
  /** "1.2.3.4:5" or "[2001:db8::1]:5"; null before the node punched. */
  endpoint: string | null;
  /** This side's inbound SPIs: ESP carrying them is forwarded to this side. */
  spis: number[];
  punches: number;
  packets: number;
  bytes: number;
}

export interface RouteStatus {
  routeId: number;
  owner: string;
  createdAt: number;
  expiresAt: number;
  lastActivity: number;
  packets: number;
  bytes: number;
  a: SideStatus;
  b: SideStatus;
}

export class Relay {
  readonly counters = new RelayCounters();
  private readonly routes = new Map<number, RelayRoute>();
  private readonly nodes = new Map<string, NodeState>();
  /** SPI & SPI_HASH → entries (several on a hash or SPI collision: the source endpoint decides). */
  private readonly forwards = new Map<number, Forward[]>();
  /** Endpoint → the sides punched from it: keepalives refresh their routes. */
  private readonly byEndpoint = new EndpointMap<Set<RelaySide>>();
  private readonly idleMs: number;
  private readonly graceMs: number;

  constructor(readonly options: RelayOptions = RELAY_DEFAULTS) {
    this.idleMs = options.idleSeconds * 1000;
    this.graceMs = options.graceSeconds * 1000;
  }

  get size(): number {
    return this.routes.size;
  }

  /** Routes a node is on (for the per-node limit, shared with gateway routes by the server). */
  routesOf(node: string): number {
    return this.nodes.get(node)?.routes ?? 0;
  }

  /**
   * A Relay Direction: the route, or why not (answered with NTM ACK). Idempotent for the same
   * route. `others` counts routes the server holds besides these (its gateway routes), in all and
   * per node, against the same limits.
   */
  addRoute(d: RelayDirection, now: number, owner = '', others: { total: number; of: (node: string) => number } = NO_OTHERS): AddRouteVerdict {
    const c = this.counters;
    const bad = (reason: string): AddRouteVerdict => {
      c.routesRefusedBad++;
      return { ok: false, status: Status.badRequest, reason };
    };
    const over = (reason: string): AddRouteVerdict => {
      c.routesRefusedQuota++;
      return { ok: false, status: Status.overQuota, reason };
    };
    if (d.routeId === 0) return bad('route ID 0');
    if (d.nodeA === d.nodeB) return bad(`both ends are ${d.nodeA}`);
    if (d.expiresAt <= now) return bad('the route has already expired');
    const existing = this.routes.get(d.routeId);
    if (existing !== undefined) {
      const same = existing.ktun.equals(d.ktun) && existing.a.node === d.nodeA && existing.b.node === d.nodeB && existing.expiresAt === d.expiresAt;
      return same ? { ok: true, created: false } : bad(`route ID ${d.routeId} is in use`);
    }
    const q = this.options.quota;
    if (this.routes.size + others.total >= q.maxRoutes) return over(`this relay carries ${q.maxRoutes} routes already`);
    for (const n of [d.nodeA, d.nodeB]) if (this.routesOf(n) + others.of(n) >= q.maxRoutesPerNode) return over(`${n} has ${q.maxRoutesPerNode} routes here already`);
    const route = new RelayRoute(d.routeId, Buffer.from(d.ktun), d.expiresAt, { name: d.nodeA, state: this.node(d.nodeA, now) }, { name: d.nodeB, state: this.node(d.nodeB, now) }, now, owner, q.routeBytesPerSecond);
    this.routes.set(d.routeId, route);
    c.routesCreated++;
    return { ok: true, created: true };
  }

  /** A live route (not past its idle time or its expiresAt + grace). */
  route(routeId: number, now: number): RelayRoute | undefined {
    const r = this.routes.get(routeId);
    return r !== undefined && this.alive(r, now) ? r : undefined;
  }

  /** Ktun of a live route: the control channel's key for key class Ktun. */
  ktun(routeId: number, now: number): Buffer | undefined {
    return this.route(routeId, now)?.ktun;
  }

  /** The side that punched from the sockaddr at from[at], or null. */
  sideAt(route: RelayRoute, from: Buffer, at = 0): RelaySide | null {
    if (sameEndpoint(route.a.endpoint, from, at)) return route.a;
    if (sameEndpoint(route.b.endpoint, from, at)) return route.b;
    return null;
  }

  /**
   * An authenticated Hole Punching: `node`'s side of the route is now where it came from. The
   * newest one sent wins (the node punches again when its NAT mapping may have changed): a
   * punch from another endpoint sent before the one taken (`sentAt`, held back on the way and
   * let go late) moves nothing; replays never get here (the control channel's message-ID and
   * timestamp checks).
   */
  punch(routeId: number, node: string, from: Buffer, now: number, sentAt = now): PunchResult {
    const c = this.counters;
    const route = this.route(routeId, now);
    if (route === undefined) {
      c.punchDropUnknownRoute++;
      return { ok: false, reason: 'unknownRoute' };
    }
    const side = node === route.a.node ? route.a : node === route.b.node ? route.b : null;
    if (side === null) {
      c.punchDropForeignNode++;
      return { ok: false, reason: 'foreignNode' };
    }
    if (sameEndpoint(side.other.endpoint, from, 0)) {
      c.punchDropConflict++;
      return { ok: false, reason: 'conflict' };
    }
    let moved = false;
    if (!sameEndpoint(side.endpoint, from, 0)) {
      if (side.endpoint !== null && sentAt < side.lastPunchSentAt) {
        c.punchDropStale++;
        return { ok: false, reason: 'stale' };
      }
      moved = side.endpoint !== null;
      if (moved) c.punchEndpointMoves++;
      this.unindex(side);
      side.endpoint = Buffer.from(from.subarray(0, SOCKADDR_SIZE));
      let set = this.byEndpoint.get(side.endpoint);
      if (set === undefined) this.byEndpoint.set(side.endpoint, (set = new Set()));
      set.add(side);
    }
    side.punches++;
    side.lastPunch = now;
    if (sentAt > side.lastPunchSentAt) side.lastPunchSentAt = sentAt;
    route.lastActivity = now;
    c.punches++;
    return { ok: true, moved };
  }

  /**
   * A Tunnel Request or Response on a relayed route, already authenticated under its Ktun: the
   * side to forward the datagram to unchanged (at its endpoint), or null (counted). Learns the SPI
   * it carries: the sender's inbound SPI, so ESP with it goes to the sender. A message whose SPI
   * cannot be learned (another route's from the same source, or a gateway tunnel's) is not
   * forwarded. If the send then fails, the caller hands it back with controlUnsent.
   */
  forwardControl(route: RelayRoute, message: ControlMessage, from: Buffer, length: number, now: number): RelaySide | null {
    const c = this.counters;
    const side = this.sideAt(route, from, 0);
    if (side === null) {
      c.controlDropUnknownSource++;
      return null;
    }
    if (!this.alive(route, now)) {
      c.dropExpired++;
      return null;
    }
    let spi: number;
    if (message.type === 'tunnelRequest') {
      if (message.body.routeId !== route.routeId || message.body.node !== side.node) {
        c.controlDropMismatch++;
        return null;
      }
      spi = message.body.spi;
    } else if (message.type === 'tunnelResponse') {
      if (message.body.routeId !== route.routeId) {
        c.controlDropMismatch++;
        return null;
      }
      spi = message.body.status === Status.ok ? message.body.spi : 0;
    } else {
      c.controlDropMismatch++;
      return null;
    }
    const to = side.other;
    if (to.endpoint === null) {
      c.controlDropPeerNotLearned++;
      return null;
    }
    if (spi !== 0 && !this.learnable(side, spi)) return null;
    if (!this.charge(route, side, length, now)) return null;
    if (spi !== 0) this.learn(side, spi);
    c.controlForwarded++;
    return to;
  }

  /** A control datagram forwardControl let through to `to` that the socket did not send: its counts are taken back. */
  controlUnsent(to: RelaySide, length: number): void {
    this.counters.controlForwarded--;
    this.counters.controlDropSendFailed++;
    this.uncharge(to.other, length);
  }

  /**
   * The ESP data path: the side the datagram in buf[start, start + length) from the sockaddr at
   * addrs[addrAt] goes to (send it to side.endpoint, which is set: copy it, do not keep it), or
   * null (counted). No allocation: a map lookup by a small integer, a compare of 28 bytes,
   * arithmetic. It is counted as forwarded; a send that then fails is handed back with espUnsent.
   */
  forwardEsp(buf: Buffer, start: number, length: number, addrs: Buffer, addrAt: number, now: number): RelaySide | null {
    const c = this.counters;
    const spi = buf.readUInt32BE(start);
    const list = this.forwards.get(spi & SPI_HASH);
    if (list === undefined) {
      c.espDropUnknownSpi++;
      return null;
    }
    let to: RelaySide | null = null;
    let spiKnown = false;
    for (let i = 0; i < list.length; i++) {
      const f = list[i]!;
      if (f.spi !== spi) continue;
      spiKnown = true;
      if (sameEndpoint(f.to.other.endpoint, addrs, addrAt)) {
        to = f.to;
        break;
      }
    }
    if (to === null) {
      if (spiKnown) c.espDropUnknownSource++;
      else c.espDropUnknownSpi++;
      return null;
    }
    const route = to.route;
    if (!this.alive(route, now)) {
      c.dropExpired++;
      return null;
    }
    if (to.endpoint === null) {
      c.espDropPeerNotLearned++;
      return null;
    }
    if (!this.charge(route, to.other, length, now)) return null;
    c.espForwarded++;
    c.espBytes += length;
    return to;
  }

  /**
   * An ESP datagram forwardEsp let through to `to` that the socket did not send: espForwarded,
   * espBytes and the route's and the sending side's packets and bytes (and so the route's byte
   * quota) are taken back, and it is counted in espDropSendFailed. The rate buckets keep the charge.
   */
  espUnsent(to: RelaySide, length: number): void {
    const c = this.counters;
    c.espForwarded--;
    c.espBytes -= length;
    c.espDropSendFailed++;
    this.uncharge(to.other, length);
  }

  /** Whether ESP carrying `spi` is forwarded for some relayed route (the gateway never chooses it). */
  spiLearned(spi: number): boolean {
    const list = this.forwards.get(spi & SPI_HASH);
    if (list === undefined) return false;
    for (let i = 0; i < list.length; i++) if (list[i]!.spi === spi) return true;
    return false;
  }

  /**
   * A NAT keepalive (not forwarded): refreshes the routes of the sides punched from there. False
   * if none was: the caller counts keepaliveDropUnknown unless another part of it knows the sender
   * (the RS's gateway tunnels share the port).
   */
  keepalive(addrs: Buffer, addrAt: number, now: number): boolean {
    const set = this.byEndpoint.get(addrs, addrAt);
    if (set === undefined) return false;
    for (const side of set) side.route.lastActivity = Math.max(side.route.lastActivity, now);
    this.counters.keepalives++;
    return true;
  }

  /** Ends the routes past their idle time or their expiresAt + grace; returns how many. */
  expire(now: number): number {
    let n = 0;
    for (const r of this.routes.values()) {
      if (now > r.expiresAt + this.graceMs) this.counters.routesExpiredHard++;
      else if (now - r.lastActivity > this.idleMs) this.counters.routesExpiredIdle++;
      else continue;
      this.remove(r);
      n++;
    }
    return n;
  }

  remove(route: RelayRoute): void {
    if (this.routes.get(route.routeId) !== route) return;
    this.routes.delete(route.routeId);
    for (const side of [route.a, route.b]) {
      this.unindex(side);
      for (const spi of side.spis) this.unforward(side, spi);
      side.spis.length = 0;
      const n = side.nodeState;
      n.routes--;
      if (n.routes === 0) this.nodes.delete(side.node);
    }
  }

  /** Every route, for the status file and SIGUSR1. */
  status(): RouteStatus[] {
    const side = (s: RelaySide): SideStatus => ({
      node: s.node,
      endpoint: s.endpoint === null ? null : formatEndpoint(s.endpoint),
      spis: [...s.spis],
      punches: s.punches,
      packets: s.packets,
      bytes: s.bytes,
    });
    return [...this.routes.values()].map((r) => ({
      routeId: r.routeId,
      owner: r.owner,
      createdAt: r.createdAt,
      expiresAt: r.expiresAt,
      lastActivity: r.lastActivity,
      packets: r.packets,
      bytes: r.bytes,
      a: side(r.a),
      b: side(r.b),
    }));
  }

  private alive(r: RelayRoute, now: number): boolean {
    return now <= r.expiresAt + this.graceMs && now - r.lastActivity <= this.idleMs;
  }

  private node(name: string, now: number): NodeState {
    let n = this.nodes.get(name);
    if (n === undefined) this.nodes.set(name, (n = { routes: 0, bucket: new TokenBucket(this.options.quota.nodeBytesPerSecond, now) }));
    n.routes++;
    return n;
  }

  /** Quotas for `length` bytes sent by `from` on `route`; on success they are spent and counted. */
  private charge(route: RelayRoute, from: RelaySide, length: number, now: number): boolean {
    const q = this.options.quota;
    if (q.routeBytes > 0 && route.bytes + length > q.routeBytes) {
      this.counters.dropQuotaBytes++;
      return false;
    }
    const nodeBucket = from.nodeState.bucket;
    // Both must have room before either is charged: a refusal spends nothing.
    if (!route.bucket.fits(length, now) || !nodeBucket.fits(length, now)) {
      this.counters.dropQuotaRate++;
      return false;
    }
    route.bucket.take(length);
    nodeBucket.take(length);
    route.bytes += length;
    route.packets++;
    from.bytes += length;
    from.packets++;
    route.lastActivity = now;
    return true;
  }

  /** Takes back what charge() counted for a datagram that was not sent after all (not the rate buckets). */
  private uncharge(from: RelaySide, length: number): void {
    const route = from.route;
    route.bytes -= length;
    route.packets--;
    from.bytes -= length;
    from.packets--;
  }

  /**
   * Whether `owner` may receive ESP carrying `spi` (counted if not): not if the RS's gateway owns
   * the SPI, nor if another route already forwards it from the same source endpoint (the older
   * route keeps it: otherwise a node that can spoof a source could divert that route's ESP).
   */
  private learnable(owner: RelaySide, spi: number): boolean {
    if (owner.spis.includes(spi)) return true;
    if (this.options.spiOwnedElsewhere?.(spi) === true) {
      this.counters.spiRefusedGateway++;
      return false;
    }
    const source = owner.other.endpoint;
    for (const f of this.forwards.get(spi & SPI_HASH) ?? []) {
      if (f.spi === spi && f.to !== owner && source !== null && sameEndpoint(f.to.other.endpoint, source, 0)) {
        this.counters.spiRefusedShadow++;
        return false;
      }
    }
    return true;
  }

  /** `owner` receives ESP carrying `spi` (from owner.other's endpoint); learnable() said yes. */
  private learn(owner: RelaySide, spi: number): void {
    if (owner.spis.includes(spi)) return;
    owner.spis.push(spi);
    if (owner.spis.length > MAX_SPIS_PER_SIDE) this.unforward(owner, owner.spis.shift()!);
    const key = spi & SPI_HASH;
    const list = this.forwards.get(key);
    // Oldest first: should a side's endpoint move so that two routes forward one SPI from one
    // source, the older route keeps it, as learnable() decides for a new SPI.
    if (list === undefined) this.forwards.set(key, [{ spi, to: owner }]);
    else list.push({ spi, to: owner });
    this.counters.spisLearned++;
  }

  private unforward(owner: RelaySide, spi: number): void {
    const key = spi & SPI_HASH;
    const list = this.forwards.get(key);
    if (list === undefined) return;
    const rest = list.filter((f) => !(f.spi === spi && f.to === owner));
    if (rest.length > 0) this.forwards.set(key, rest);
    else this.forwards.delete(key);
  }

  private unindex(side: RelaySide): void {
    if (side.endpoint === null) return;
    const set = this.byEndpoint.get(side.endpoint);
    if (set !== undefined) {
      set.delete(side);
      if (set.size === 0) this.byEndpoint.delete(side.endpoint);
    }
  }
}

/** Whether the 28-byte sockaddr at buf[at] is `endpoint` (false for null). */
function sameEndpoint(endpoint: Buffer | null, buf: Buffer, at: number): boolean {
  return endpoint !== null && buf.compare(endpoint, 0, SOCKADDR_SIZE, at, at + SOCKADDR_SIZE) === 0;
}
