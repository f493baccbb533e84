// `ntmobile router`: the node daemon. Login at the AS (Kntmdc), registration of the router's
// name and its published LAN hosts at the DC, keepalives (re-registering on its own when the DC
// forgot it or restarted), name resolution through the DNS hook (Direction Request → Route
// Direction → Tunnel Request), the userspace engine (TUN + ESP on one UDP port), the LAN's
// translation to VIPs (nftables) and the local API. Everything it sets up it removes on stop.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { isIP } from 'node:net';
import { execFile } from 'node:child_process';
import { ControlChannel, RequestTimeout, type Incoming, type RetransmitPolicy } from '../protocol/channel.js';
import { DirectionFlags, KeyClass, PathKind, Status, statusName, type WireEndpoint } from '../protocol/control.js';
import { decodeSockaddr, encodeSockaddr, formatEndpoint } from '../protocol/endpoint.js';
import { findDc, parentZones } from '../protocol/discovery.js';
import { ipv4ToNumber, numberToIpv4 } from '../protocol/ip.js';
import { loadOrCreateKey, type X25519Pair } from '../protocol/keys.js';
import { addAddress, addRoute, listAddresses } from '../netlink/rtnetlink.js';
import { TunDevice } from '../netlink/tun.js';
import { UdpSocket } from '../netlink/udp.js';
import { ApiServer } from './api.js';
import { changedSettings, LIVE_SETTINGS, type RouterConfig } from './config.js';
import { DhcpLeases } from './leases.js';
import { silentLogger, type Logger } from './log.js';
import { DnsHook } from './dns-hook.js';
import { Engine } from '../tunnel/engine.js';
import { LanTranslation } from './lan-nat.js';
import { login, LoginError, type LoginResult } from './login.js';
import { TunnelTable } from '../tunnel/table.js';
import { TunnelManager, TunnelSetupError, type PathUpdateResult, type PeerInfo } from '../tunnel/setup.js';
import { UplinkMonitor } from './uplink.js';
import { UplinkPolicy } from './uplink-policy.js';
import { NotifyClient, requestNotifyGrant } from './notify.js';

/** Retransmission for requests a DNS answer waits on: must fit inside the DNS hook's deadline. */
const FAST: RetransmitPolicy = { initialMs: 250, maxMs: 1000, tries: 4 };
const KEEPALIVE_RETRY: RetransmitPolicy = { initialMs: 1000, maxMs: 4000, tries: 3 };
/** A direct Tunnel Request gives up after 1.75 s, so that the relay fallback still fits the DNS deadline. */
const DIRECT_FIRST_TRY: RetransmitPolicy = { initialMs: 250, maxMs: 500, tries: 4 };

export interface Registered {
  name: string;
  vip4: string | null;
  vip6: string | null;
  observed: WireEndpoint | null;
  /** When this name got the VIPs it has now (ms since the epoch): a registration again keeps it. */
  since: number;
}

export class DaemonCounters {
  logins = 0;
  loginFailures = 0;
  registrations = 0;
  registrationRefused = 0;
  keepalives = 0;
  keepaliveTimeouts = 0;
  reRegistrations = 0;
  directions = 0;
  directionsFailed = 0;
  relayFallbacks = 0;
  routeDirections = 0;
  ignoredMessages = 0;
  handovers = 0;
  /** The carrier came back with the address we were registered from: no handover needed. */
  uplinkBlips = 0;
  natRebindings = 0;
  wakes = 0;
}

/** The last move and what it did to each tunnel (status API `uplink.lastHandover`). */
export interface HandoverReport {
  at: number;
  reason: string;
  from: string | null;
  to: string | null;
  /** Milliseconds until every tunnel had its new path (or failed). */
  ms: number;
  registered: boolean;
  tunnels: { node: string; result: PathUpdateResult }[];
}

/** A change of where we are: a new uplink address, or a new NAT mapping on the same one. */
interface Move {
  reason: string;
  from: string | null;
  to: string | null;
  rebinding: boolean;
}

/**
 * After a handover some tunnel could not be moved: try those again after 5 s, 10 s, … at most
 * every 60 s, 8 times (about 5 minutes); after that a name of the peer resolved again asks
 * for a new direction anyway.
 */
const MOVE_RETRY_FIRST_MS = 5000;
const MOVE_RETRY_MAX_MS = 60_000;
const MOVE_RETRY_TRIES = 8;
/** How many handovers status keeps (the last one is `uplink.lastHandover`). */
const RECENT_HANDOVERS = 10;

/**
 * Two moves noticed before the first was handled: one handover from where we were to where we
 * are. A new address outranks a new NAT mapping (it also reconnects MQTT).
 */
function mergeMoves(queued: Move | null, next: Move): Move {
  if (queued === null) return next;
  return { ...next, from: queued.from, rebinding: queued.rebinding && next.rebinding };
}

/** The DC answered a Registration Request with a refusal (not a timeout). */
class RegistrationRefusedError extends Error {
  override name = 'RegistrationRefusedError';
}

/** A published name the DC refused: reported in the status and retried with backoff. */
interface RefusedName {
  name: string;
  reason: string;
  /** ms since the epoch: first refused */
  since: number;
  retries: number;
  /** ms since the epoch: the next attempt */
  retryAt: number;
}

/** First retry of a refused published name, doubling up to the last. */
const REFUSED_RETRY_MS = [5_000, 600_000] as const;

/** The AS refused the credentials (401): the daemon stops trying until its config changes. */
class LoginRefusedError extends Error {
  override name = 'LoginRefusedError';
}

export class RouterDaemon {
  readonly counters = new DaemonCounters();
  readonly table = new TunnelTable();
  /** login-refused: the AS answered 401; no more attempts until the config changes (reload or restart). */
  private state: 'starting' | 'login' | 'login-refused' | 'registering' | 'ready' | 'stopping' = 'starting';
  private lastError: string | null = null;
  private clockOffset = 0;
  private session: LoginResult | null = null;
  private dc: Buffer | null = null;
  private dcAddress: string | null = null;
  private readonly registered = new Map<string, Registered>();
  private readonly refused = new Map<string, RefusedName>();
  private refusedTimer: NodeJS.Timeout | null = null;
  private engine: Engine | null = null;
  private socket: UdpSocket | null = null;
  private device: TunDevice | null = null;
  private readonly channel: ControlChannel;
  private readonly tunnels: TunnelManager;
  private readonly lan = new LanTranslation();
  private dnsHook: DnsHook | null = null;
  private readonly api: ApiServer;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private keepaliveSeconds = 20;
  private readonly staticKey: X25519Pair;
  private readonly routedVips = new Set<string>();
  /** Peer VIPs that collide with a local network → the free local address the LAN sees instead (ARCHITECTURE §2.5). */
  private readonly mapped = new Map<string, string>();
  private readonly mapPool: AddressPool;
  private stopped = false;
  private readonly uplink: UplinkMonitor;
  /** Which device our UDP traffic leaves through (config `uplinks`; empty: the kernel's choice). */
  private readonly uplinkPolicy: UplinkPolicy;
  private handingOver: Promise<void> | null = null;
  private pendingHandover: Move | null = null;
  /** A move noticed while we were not registered: handled as soon as we are again. */
  private missedMove: Move | null = null;
  private uplinkStarted = false;
  private moveRetry: { timer: NodeJS.Timeout; waitMs: number; tries: number } | null = null;
  private lastHandover: HandoverReport | null = null;
  /** The last handovers, oldest first (status API `uplink.recentHandovers`, the LuCI status page). */
  private readonly recentHandovers: HandoverReport[] = [];
  /** Where the DC last saw us (registration or keepalive answer): a change is a NAT rebinding. */
  private observedByDc: WireEndpoint | null = null;
  /** Our uplink address when the DC last told us where it saw us. */
  private observedFrom: string | null = null;
  /** MQTT mode (docs/ns.md): one MQTT session to the NS instead of 20 s UDP keepalives to the DC. */
  private readonly notify: NotifyClient | null = null;
  private natKeepaliveTimer: NodeJS.Timeout | null = null;

  private readonly leases: DhcpLeases;
  /** Events for the outside (OpenWrt: ubus events ntmobile.handover, ntmobile.peer). */
  onEvent: ((type: string, data: Record<string, unknown>) => void) | null = null;
  /** The protocol sequence (debug level); lifecycle lines use `logger` directly. */
  private readonly log: (line: string) => void;

  constructor(
    public config: RouterConfig,
    private readonly logger: Logger = silentLogger,
  ) {
    this.log = (l) => logger.debug(l);
    this.leases = new DhcpLeases(config.dhcpLeases, () => {
      this.logger.info('DHCP leases changed: published hosts given by MAC follow');
      void this.applyLan().catch((e: Error) => this.logger.error(`nftables: ${e.message}`));
    });
    this.staticKey = loadOrCreateKey(config.privateKeyFile);
    this.mapPool = new AddressPool(config.mapPool4);
    const now = (): number => Date.now() + this.clockOffset;
    this.channel = new ControlChannel({
      send: (d, to) => this.socket?.sendOne(d, to),
      keys: (cls, id) => this.keyFor(cls, id),
      onMessage: (m) => this.dispatch(m),
      now,
      trace: (l) => this.log(l),
    });
    this.tunnels = new TunnelManager({
      table: this.table,
      channel: this.channel,
      staticKey: this.staticKey,
      nodeName: config.name,
      suite: config.suite,
      rekeyAfterSeconds: config.rekeyAfterSeconds,
      onVips: (vips) => this.routeVips(vips),
      now,
      renew: async (peerName, relay) => {
        await this.direct(peerName, relay);
      },
      retransmit: FAST,
      directRetransmit: DIRECT_FIRST_TRY,
      sendDummy: (t) => void this.engine?.sendDummy(t),
      onPeerUp: (p) => this.onEvent?.('ntmobile.peer', { event: 'up', ...peerView(p) }),
      log: (l) => this.log(l),
    });
    if (config.notify !== null) {
      this.notify = new NotifyClient({
        url: config.notify.mqtt,
        caFile: config.notify.caFile,
        keepaliveSeconds: config.notify.keepaliveSeconds,
        now,
        log: (l) => this.log(l),
        onWake: () => this.wake(),
      });
    }
    this.uplinkPolicy = new UplinkPolicy({ devices: config.uplinks, table: config.uplinkTable, ownDevice: config.tun.name, log: (l) => this.logger.info(l) });
    this.uplink = new UplinkMonitor({
      probe: async () => (this.dcAddress === null ? null : (await this.localEndpoint()).address),
      onChange: (from, to) => this.handover({ reason: `uplink ${from ?? 'none'} → ${to ?? 'none'}`, from, to, rebinding: false }),
      ownDevice: config.tun.name,
      log: (l) => this.log(l),
    });
    this.api = new ApiServer(config.socketPath, {
      status: async () => this.status(),
      peers: async () => this.peers(),
      ping: async (args) => this.ping(args),
    });
  }

  get publicKey(): Buffer {
    return this.staticKey.publicKey;
  }

  async start(): Promise<void> {
    const c = this.config;
    mkdirSync(dirname(c.socketPath), { recursive: true });
    await this.api.start();
    this.device = await TunDevice.open({ name: c.tun.name, mtu: c.tun.mtu, addresses: [] });
    this.socket = portOrField(() => UdpSocket.open({ bindAddress: c.listen.address, port: c.listen.port }), 'listen.port', `UDP ${c.listen.address} port ${c.listen.port}`);
    await this.uplinkPolicy.start(this.socket.port);
    this.engine = new Engine(this.device, this.socket, this.table, { onControl: (msg, from) => this.channel.receive(msg, from) });
    this.engine.start();
    this.tunnels.start();
    // NAT keepalives to live tunnels' peers every 20 s, whatever the DC keepalive interval is
    // (in MQTT mode that one is minutes).
    this.natKeepaliveTimer = setInterval(() => {
      this.engine?.sendKeepalives();
      void this.tunnels.refreshRelays(Promise.resolve()).catch((e: Error) => this.log(`relays: ${e.message}`));
    }, 20_000);
    this.natKeepaliveTimer.unref();
    this.dnsHook = new DnsHook({
      address: c.dns.address,
      port: c.dns.port,
      domains: [...new Set([...c.dns.domains, ...c.general.viaRelay])],
      timeoutMs: c.dns.timeoutMs,
      // The LAN's resolver (dnsmasq) caches our answers for the TTL. After the daemon starts
      // again (a crash, an update, a reload that restarts it) a cached answer names a VIP the new
      // daemon has no tunnel to until the LAN asks again: a short TTL bounds that. A repeated
      // question for a name with a tunnel is answered from the tunnel table, not the DC.
      ttl: 5,
      resolve: (name) => this.resolveName(name),
      onError: (e) => this.log(`dns: ${(e as Error).message ?? String(e)}`),
    });
    await portOrField(() => this.dnsHook!.start(), 'dns.port', `DNS ${c.dns.address} port ${c.dns.port}`);
    if (c.publish.some((p) => p.mac !== null)) this.leases.start();
    this.logger.info(`listening on UDP ${this.socket.port}, TUN ${this.device.name}, DNS ${c.dns.address}:${this.dnsHook.port}`);
    await this.connect();
  }

  /** Login, DC discovery and registration, retried with backoff until it works or we stop. */
  private async connect(): Promise<void> {
    let wait = 1000;
    let failures = 0;
    while (!this.stopped) {
      try {
        await this.loginAndRegister();
        this.state = 'ready';
        this.lastError = null;
        this.scheduleKeepalive();
        if (!this.uplinkStarted) {
          this.uplinkStarted = true;
          this.uplink.start((await this.localEndpoint().catch(() => null))?.address ?? null);
          // We just registered from this address: a different mapping in a keepalive answer
          // from now on is a NAT rebinding.
          this.observedFrom = this.uplink.address;
        }
        this.logger.info(`ready: ${[...this.registered.values()].map((r) => `${r.name} = ${r.vip4}, ${r.vip6}`).join('; ')}`);
        // We moved while registering again (a dead zone: the keepalive failed, then a new
        // uplink came): we are registered from the new place, the tunnels still have to move.
        const missed = this.missedMove;
        this.missedMove = null;
        if (missed !== null && this.tunnels.peers.size > 0) this.handover(missed);
        else if (missed !== null && !missed.rebinding) this.notify?.reconnect(); // the MQTT session died with the old address
        return;
      } catch (e) {
        this.lastError = (e as Error).message;
        if (e instanceof LoginRefusedError) {
          // Retrying the same password would only count towards the AS's lockout of the account
          // (and a service manager restarting us would do the same): stay up, say why, wait.
          this.state = 'login-refused';
          this.logger.error(`login: ${this.lastError}`);
          return;
        }
        // The AS's rate limit says when it will listen again; asking earlier only fails again.
        if (e instanceof LoginError && e.retryAfterSeconds !== null) wait = Math.max(wait, e.retryAfterSeconds * 1000);
        // A DC that lost our key drops everything under it silently: after two failed rounds,
        // log in again so that the AS hands the DC a fresh Kntmdc.
        if (++failures % 2 === 0) this.session = null;
        this.logger.error(`connect: ${this.lastError}; retrying in ${wait / 1000} s`);
        await sleep(wait);
        wait = Math.min(wait * 2, 30_000);
      }
    }
  }

  private async loginAndRegister(): Promise<void> {
    const c = this.config;
    if (this.session === null || this.session.expiresAt < Date.now() + this.clockOffset + 60_000) {
      this.state = 'login';
      try {
        this.session = await login({ url: c.as.url, caFile: c.as.caFile, email: c.account.email, password: c.account.password });
      } catch (e) {
        this.counters.loginFailures++;
        if (e instanceof LoginError && e.status === 401) {
          throw new LoginRefusedError(`${e.message}: the AS refused ${c.account.email} with this password; not retrying (every failure counts towards the AS locking the account): fix account.email or the password and restart or reload the daemon`);
        }
        throw e;
      }
      this.counters.logins++;
      this.clockOffset = this.session.clockOffsetMs;
      if (!this.session.names.includes(c.name)) throw new Error(`the account is not bound to ${c.name} (it has ${this.session.names.join(', ')})`);
    }
    this.state = 'registering';
    const zone = parentZones(c.name).find((z) => c.dc[z] !== undefined);
    const address = zone !== undefined ? c.dc[zone]! : (await findDc(c.name, c.resolvers.length ? { resolvers: c.resolvers } : {})).address;
    this.dcAddress = address;
    this.dc = encodeSockaddr(address, c.dcPort);
    await this.registerAll();
  }

  private dcKey(): { keyClass: number; keyId: number; key: Buffer } {
    const s = this.session!;
    return { keyClass: KeyClass.ntmdc, keyId: s.keyId, key: s.key };
  }

  private async registerAll(): Promise<void> {
    const local = await this.localEndpoint();
    // Our own name carries the registration; a published host's refused name must not hold the
    // rest of the LAN back (SERVFAIL for every name): it is reported and retried on its own.
    await this.registerName(this.config.name, local);
    for (const p of this.config.publish) await this.registerPublished(p.name, local);
    const own = this.registered.get(this.config.name)!;
    for (const [v, len] of [
      [own.vip4, 32],
      [own.vip6, 128],
    ] as const) {
      if (v !== null) await addAddress(this.config.tun.name, `${v}/${len}`).catch(ignoreExists);
    }
    await this.applyLan();
    if (this.notify !== null) {
      try {
        const grant = await requestNotifyGrant(this.channel, this.dcKey(), this.dc!, this.config.name, this.config.notify!.keepaliveSeconds);
        // The DC answers MQTT-mode nodes with the long keepalive interval.
        this.keepaliveSeconds = grant.keepaliveSeconds;
        this.notify.use(grant);
      } catch (e) {
        this.logger.warn(`notify: ${(e as Error).message}: staying on UDP keepalives`);
      }
    }
  }

  /** A published host's name: registered, or noted as refused (status, error log) and retried later. */
  private async registerPublished(name: string, local: WireEndpoint): Promise<void> {
    try {
      await this.registerName(name, local);
      if (this.refused.delete(name)) this.logger.info(`registration of ${name}: accepted now`);
    } catch (e) {
      if (!(e instanceof RegistrationRefusedError)) throw e;
      const before = this.refused.get(name);
      const retries = before === undefined ? 0 : before.retries + 1;
      const delay = Math.min(REFUSED_RETRY_MS[0] * 2 ** retries, REFUSED_RETRY_MS[1]);
      this.refused.set(name, { name, reason: e.message, since: before?.since ?? Date.now(), retries, retryAt: Date.now() + delay });
      this.logger.error(`${e.message}; the other names stay registered; retrying in ${delay / 1000} s`);
      this.scheduleRefusedRetry();
    }
  }

  private scheduleRefusedRetry(): void {
    if (this.refusedTimer !== null || this.refused.size === 0 || this.stopped) return;
    const next = Math.min(...[...this.refused.values()].map((r) => r.retryAt));
    this.refusedTimer = setTimeout(() => {
      this.refusedTimer = null;
      void this.retryRefused().catch((e: Error) => this.log(`registration retry: ${e.message}`));
    }, Math.max(0, next - Date.now()));
    this.refusedTimer.unref();
  }

  private async retryRefused(): Promise<void> {
    for (const name of this.refused.keys()) if (!this.config.publish.some((p) => p.name === name)) this.refused.delete(name);
    // Not registered at all right now: connect() registers every name, this one included.
    if (this.state !== 'ready' || this.stopped) return this.scheduleRefusedRetry();
    const local = await this.localEndpoint();
    const due = [...this.refused.values()].filter((r) => r.retryAt <= Date.now());
    for (const r of due) await this.registerPublished(r.name, local);
    if (due.some((r) => !this.refused.has(r.name))) await this.applyLan();
    this.scheduleRefusedRetry();
  }

  /** Registers one name (ours or a published host's) at the DC; throws when refused. */
  private async registerName(name: string, local: WireEndpoint): Promise<void> {
    const answer = await this.channel.request('registrationRequest', { name, local, publicKey: this.staticKey.publicKey }, this.dcKey(), this.dc!);
    if (answer.message.type !== 'registrationResponse') throw new Error(`registration of ${name}: answered with ${answer.message.type}`);
    const r = answer.message.body;
    if (r.status !== Status.ok) {
      this.counters.registrationRefused++;
      throw new RegistrationRefusedError(`registration of ${name} refused: ${statusName(r.status)}`);
    }
    this.counters.registrations++;
    this.keepaliveSeconds = r.keepaliveSeconds || 20;
    const before = this.registered.get(name);
    const since = before !== undefined && before.vip4 === r.vip4 && before.vip6 === r.vip6 ? before.since : Date.now();
    this.registered.set(name, { name, vip4: r.vip4, vip6: r.vip6, observed: r.observed, since });
    if (name === this.config.name) {
      this.observedByDc = r.observed;
      this.observedFrom = this.uplink.address;
    }
  }

  /** The NS woke us: a direction is waiting at the DC. A keepalive opens our NAT towards it. */
  private wake(): void {
    if (this.state !== 'ready' || this.stopped) return;
    this.counters.wakes++;
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    void this.keepalive();
  }

  private async applyLan(): Promise<void> {
    const own = this.registered.get(this.config.name);
    if (own === undefined || this.config.lan.interfaces.length === 0) return;
    await this.lan.apply({
      table: this.config.nftTable,
      tun: this.config.tun.name,
      lanInterfaces: this.config.lan.interfaces,
      ownVip4: own.vip4,
      ownVip6: own.vip6,
      published: this.config.publish.flatMap((p) => {
        const r = this.registered.get(p.name);
        if (r === undefined) return [];
        const lan4 = p.address4 ?? (p.mac !== null ? this.leases.addressOf(p.mac) : null);
        return [
          {
            name: p.name,
            ...(lan4 !== null && r.vip4 !== null ? { lan4, vip4: r.vip4 } : {}),
            ...(p.address6 !== null && r.vip6 !== null ? { lan6: p.address6, vip6: r.vip6 } : {}),
          },
        ];
      }),
      mapped: [...this.mapped].map(([real, local]) => ({ real, local })),
    });
  }

  /**
   * The address and port the DC should see if there were no NAT: the source address of our own
   * socket's datagrams towards it (the kernel's lookup for our port, so the uplink policy's rules
   * apply); throws when there is none (no route, no usable listed uplink).
   */
  private async localEndpoint(): Promise<WireEndpoint> {
    const address = await this.uplinkPolicy.source(this.dcAddress!, this.config.dcPort);
    if (address === null) throw new Error(`no route to the DC ${this.dcAddress} from our port ${this.socket!.port}`);
    return { address, port: this.socket!.port };
  }

  private scheduleKeepalive(): void {
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    this.keepaliveTimer = setTimeout(() => void this.keepalive(), this.keepaliveSeconds * 1000);
    this.keepaliveTimer.unref();
  }

  /** One keepalive; a DC that forgot us gets a new registration, one that is silent a reconnect. */
  private async keepalive(): Promise<void> {
    if (this.stopped) return;
    try {
      const local = await this.localEndpoint();
      const a = await this.channel.request('keepalive', { local }, this.dcKey(), this.dc!, KEEPALIVE_RETRY);
      if (a.message.type === 'keepaliveAck' && a.message.body.status === Status.ok) {
        this.counters.keepalives++;
        this.scheduleKeepalive();
        const seen = a.message.body.observed;
        const before = this.observedByDc;
        const sameUplink = this.observedFrom === this.uplink.address;
        this.observedByDc = seen;
        this.observedFrom = this.uplink.address;
        if (seen !== null && before !== null && sameUplink && (seen.address !== before.address || seen.port !== before.port)) {
          // Same uplink address, new mapping: the carrier's NAT rebound us. Peers and relays
          // still send to the old mapping; tell them where we are.
          this.counters.natRebindings++;
          const reason = `NAT rebinding ${formatEndpoint(before)} → ${formatEndpoint(seen)}`;
          // The DC took the new mapping from this keepalive; with no tunnel nobody else needs it
          // (in MQTT mode the mapping lapses between keepalives by design: no work for that).
          if (this.tunnels.peers.size > 0) this.handover({ reason, from: formatEndpoint(before), to: formatEndpoint(seen), rebinding: true });
          else this.log(`${reason}: no tunnel to move`);
        }
        return;
      }
      this.log('keepalive: the DC does not know us: registering again');
    } catch (e) {
      this.counters.keepaliveTimeouts++;
      this.log(`keepalive: ${(e as Error).message}: registering again`);
    }
    this.counters.reRegistrations++;
    await this.connect();
  }

  // ---- moves: a new uplink address, a new NAT mapping --------------------------------------------

  /**
   * The router moved (or its NAT rebound it): register again from where we are now and move
   * every tunnel to the new path (tunnel/setup.ts `updatePath`), all at once: the path updates
   * do not wait for the registration, only a new direction does. A move while one is running is
   * handled right after it, from the newest state.
   */
  private handover(move: Move): void {
    if (this.stopped) return;
    if (this.state !== 'ready') {
      // connect() registers from wherever we are; it moves the tunnels after that.
      this.missedMove = mergeMoves(this.missedMove, move);
      return;
    }
    if (this.handingOver !== null) {
      this.pendingHandover = mergeMoves(this.pendingHandover, move);
      return;
    }
    // The carrier dropped and came back with the address we are registered from (a blip, or the
    // first step of a move whose new address is still to come): the DC and the peers still know
    // us there. Moving the tunnels to it would only race the real move (a path update answered
    // to an address that is about to go); a keepalive confirms the NAT mapping instead.
    if (!move.rebinding && move.from === null && move.to !== null && move.to === this.observedFrom) {
      this.counters.uplinkBlips++;
      this.logger.info(`uplink back on ${move.to}: nothing moved`);
      if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
      void this.keepalive();
      return;
    }
    // This handover moves every tunnel: a retry waiting for its turn is not needed any more.
    if (this.moveRetry !== null) {
      clearTimeout(this.moveRetry.timer);
      this.moveRetry = null;
    }
    this.handingOver = this.runHandover(move)
      .catch((e: Error) => this.logger.error(`handover: ${e.message}`))
      .finally(() => {
        this.handingOver = null;
        const next = this.pendingHandover;
        this.pendingHandover = null;
        if (next !== null) this.handover(next);
      });
  }

  private async runHandover({ reason, from, to, rebinding }: Move): Promise<void> {
    const at = Date.now();
    this.counters.handovers++;
    const peers = [...this.tunnels.peers.values()];
    this.logger.info(`handover (${reason}): registering again and moving ${peers.length} tunnel(s)`);
    if (to === null) {
      // No route to the DC at all: nothing can be told now; the next uplink event tries again.
      this.recordHandover({ at, reason, from, to, ms: 0, registered: false, tunnels: peers.map((p) => ({ node: p.route.peerNode, result: 'failed' })) });
      return;
    }
    let registered = false;
    const registration = this.registerAll().then(
      () => {
        registered = true;
      },
      (e: Error) => this.log(`handover: registration: ${e.message} (the keepalive loop retries)`),
    );
    const results = await Promise.all(peers.map(async (p) => ({ node: p.route.peerNode, result: await this.tunnels.updatePath(p, registration) })));
    await registration;
    this.engine?.sendKeepalives();
    // The MQTT session runs over TCP from our address: a new address needs a new session, a new
    // UDP mapping does not.
    if (!rebinding) this.notify?.reconnect();
    const report = this.recordHandover({ at, reason, from, to, ms: Date.now() - at, registered, tunnels: results });
    this.logger.info(`handover done in ${report.ms} ms: ${results.map((r) => `${r.node} ${r.result}`).join(', ') || 'no tunnels'}`);
    this.onEvent?.('ntmobile.handover', { ...report });
    this.retryFailedMoves(results, MOVE_RETRY_FIRST_MS, 0);
  }

  private recordHandover(report: HandoverReport): HandoverReport {
    this.lastHandover = report;
    this.recentHandovers.push(report);
    if (this.recentHandovers.length > RECENT_HANDOVERS) this.recentHandovers.shift();
    return report;
  }

  /**
   * Tunnels a handover could not move (no answer at the peer's address and no new direction
   * yet: the peer offline, the DC not reachable yet) are tried again with backoff while they
   * exist; a newer handover takes over.
   */
  private retryFailedMoves(results: { node: string; result: PathUpdateResult }[], waitMs: number, tries: number): void {
    if (this.moveRetry !== null) clearTimeout(this.moveRetry.timer);
    this.moveRetry = null;
    const failed = results.filter((r) => r.result === 'failed').map((r) => r.node);
    if (failed.length === 0 || this.stopped) return;
    if (tries >= MOVE_RETRY_TRIES) {
      this.logger.warn(`handover retry: giving up on ${failed.join(', ')} after ${tries} tries (a new lookup of the peer asks for a new direction)`);
      return;
    }
    const timer = setTimeout(() => {
      this.moveRetry = null;
      if (this.stopped) return;
      if (this.state !== 'ready' || this.handingOver !== null) return this.retryFailedMoves(results, waitMs, tries);
      const peers = failed.map((n) => this.tunnels.peers.get(n)).filter((p) => p !== undefined);
      if (peers.length === 0) return;
      this.handingOver = Promise.all(peers.map(async (p) => ({ node: p.route.peerNode, result: await this.tunnels.updatePath(p, Promise.resolve()) })))
        .then((again) => {
          this.log(`handover retry: ${again.map((r) => `${r.node} ${r.result}`).join(', ')}`);
          if (this.lastHandover !== null) {
            for (const r of again) {
              const t = this.lastHandover.tunnels.find((x) => x.node === r.node);
              if (t !== undefined) t.result = r.result;
            }
          }
          this.retryFailedMoves(again, Math.min(waitMs * 2, MOVE_RETRY_MAX_MS), tries + 1);
        })
        .catch((e: Error) => this.log(`handover retry: ${e.message}`))
        .finally(() => {
          this.handingOver = null;
          const next = this.pendingHandover;
          this.pendingHandover = null;
          if (next !== null) this.handover(next);
        });
    }, waitMs);
    timer.unref();
    this.moveRetry = { timer, waitMs, tries };
  }

  // ---- control messages that are not answers -------------------------------------------------

  private keyFor(keyClass: number, keyId: number): Buffer | undefined {
    if (keyClass === KeyClass.ntmdc) return this.session?.keyId === keyId ? this.session.key : undefined;
    if (keyClass === KeyClass.tun) return this.tunnels.ktun(keyId);
    if (keyClass === KeyClass.path) return this.tunnels.pathKey(keyId);
    return undefined;
  }

  private dispatch(m: Incoming): void {
    const { message } = m;
    if (message.type === 'routeDirection' && m.key.keyClass === KeyClass.ntmdc) {
      this.counters.routeDirections++;
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
      void this.tunnels.onRouteDirection(message.body, 10_000).catch((e: Error) => this.log(`route ${message.body.routeId}: ${e.message}`));
      return;
    }
    if (message.type === 'tunnelRequest' && m.key.keyClass === KeyClass.tun) {
      this.tunnels.onTunnelRequest(m, message.body);
      return;
    }
    if (message.type === 'pathProbe' && m.key.keyClass === KeyClass.path) {
      this.tunnels.onPathProbe(m, message.body);
      return;
    }
    this.counters.ignoredMessages++;
  }

  // ---- name resolution (the DNS hook's control-plane call) -----------------------------------

  async resolveName(name: string): Promise<{ a: string[]; aaaa: string[] } | null> {
    const own = this.registered.get(name);
    if (own !== undefined) return addrs(own.vip4, own.vip6);
    for (const p of this.tunnels.peers.values()) {
      const n = p.names.get(name);
      if (n !== undefined && n.expiresAt > Date.now() + this.clockOffset) {
        this.tunnels.touch(p, name);
        return addrs(this.shown(n.vip4), n.vip6);
      }
    }
    const r = await this.direct(name);
    return r === null ? null : addrs(this.shown(r.vip4), r.vip6);
  }

  /** A general host this router reaches through an RS (config general.viaRelay)? */
  private viaRelay(name: string): boolean {
    return this.config.general.viaRelay.some((d) => name === d || name.endsWith(`.${d}`));
  }

  /**
   * Direction Request → Route Direction → tunnel ready; the target's VIPs (for a general host
   * behind an RS, its real addresses), or null if unknown. A direct route whose tunnel cannot
   * be set up in time (a firewall between the ends, a NAT the DC misjudged) is asked for again
   * through a relay.
   */
  private async direct(name: string, relay = false): Promise<{ vip4: string | null; vip6: string | null } | null> {
    if (this.state !== 'ready') throw new Error(`not registered yet (${this.state}${this.lastError ? `: ${this.lastError}` : ''})`);
    this.counters.directions++;
    const flags = (relay ? DirectionFlags.relay : 0) | (this.viaRelay(name) ? DirectionFlags.general : 0);
    let answer: Incoming;
    try {
      answer = await this.channel.request('directionRequest', { source: this.config.name, target: name, flags }, this.dcKey(), this.dc!, FAST);
    } catch (e) {
      this.counters.directionsFailed++;
      throw e instanceof RequestTimeout ? new Error(`direction for ${name}: the DC does not answer`) : e;
    }
    // Even when the DNS hook gave up waiting, the direction goes on: the Route
    // Direction is acknowledged and the tunnel built, so that the client's retry finds it ready
    // and no route is left half-made at the DC, the RS and the peer.
    const msg = answer.message;
    if (msg.type === 'ntmAck') {
      this.counters.directionsFailed++;
      if (msg.body.status === Status.unknownName) return null;
      throw new Error(`direction for ${name}: ${statusName(msg.body.status)}: ${msg.body.reason}`);
    }
    if (msg.type !== 'routeDirection') throw new Error(`direction for ${name}: answered with ${msg.type}`);
    this.counters.routeDirections++;
    this.channel.reply(answer, 'ntmAck', { inReplyTo: answer.envelope.messageId, status: Status.ok, reason: '' });
    const isDirect = msg.body.path === PathKind.direct && !this.tunnels.peers.has(msg.body.peerNode);
    let peer: PeerInfo;
    try {
      peer = await this.tunnels.onRouteDirection(msg.body, isDirect ? Math.min(2000, this.config.dns.timeoutMs) : this.config.dns.timeoutMs);
    } catch (e) {
      if (!isDirect || relay || !(e instanceof RequestTimeout || e instanceof TunnelSetupError)) throw e;
      this.counters.relayFallbacks++;
      this.log(`direction for ${name}: the direct path failed (${(e as Error).message}): asking for a relay`);
      return this.direct(name, true);
    }
    return peer.names.get(name) ?? { vip4: msg.body.peerVip4, vip6: msg.body.peerVip6 };
  }

  /**
   * Routes to a peer's VIPs through the TUN. A peer VIP inside one of our own networks (another
   * DC's pool may overlap our LAN) is shown to the LAN as a free local address instead; nftables
   * translates between the two (router/lan-nat.ts `mapped`).
   */
  private async routeVips(vips: string[]): Promise<void> {
    const fresh = vips.filter((v) => !this.routedVips.has(v));
    if (fresh.length === 0) return;
    const local = (await listAddresses()).filter((a) => a.family === 4 && a.dev !== this.config.tun.name);
    // Never route our own servers into the tunnel (a general host that resolves to the DC's or
    // an RS's address): our control traffic and ESP would loop.
    const servers = new Set([this.dcAddress, ...[...this.tunnels.routes.values()].filter((r) => r.path !== PathKind.direct).map((r) => r.peerEndpoint?.address)]);
    let remapped = false;
    for (const v of fresh) {
      if (servers.has(v)) {
        this.log(`peer address ${v} is one of our servers (DC or RS): not routed into the tunnel`);
        continue;
      }
      if (isIP(v) === 4 && !this.mapped.has(v) && local.some((a) => inPrefix(v, a.address, a.prefixLen))) {
        const m = this.mapPool.take();
        this.mapped.set(v, m);
        remapped = true;
        this.logger.info(`peer VIP ${v} collides with a local network: the LAN sees it as ${m}`);
      }
      await addRoute(`${v}/${isIP(v) === 4 ? 32 : 128}`, { dev: this.config.tun.name }).catch(ignoreExists);
      this.routedVips.add(v);
    }
    if (remapped) await this.applyLan();
  }

  /** A peer address as the LAN sees it. */
  private shown(vip: string | null): string | null {
    return vip === null ? null : (this.mapped.get(vip) ?? vip);
  }

  // ---- reload (SIGHUP, ubus reload) -------------------------------------------------------------

  /**
   * Takes a new configuration in place where it can: published hosts (registered or
   * deregistered one by one, the LAN translation applied again), LAN interfaces, the NTMobile
   * and relayed domains, the log level, the lease file. No tunnel is touched by these. Any other
   * change (name, account, AS, port, TUN, suite, …) needs a restart of the daemon, which the
   * caller does (`restart: true`): those are what every tunnel was made with.
   */
  async reload(next: RouterConfig): Promise<{ changed: string[]; restart: boolean }> {
    const changed = changedSettings(this.config, next);
    const restart = changed.filter((k) => !LIVE_SETTINGS.includes(k));
    if (changed.length === 0) this.logger.info('reload: no change');
    if (changed.length === 0 || restart.length > 0) return { changed, restart: restart.length > 0 };
    const before = this.config;
    this.config = next;
    this.logger.level = next.logLevel;
    this.dnsHook?.setDomains([...new Set([...next.dns.domains, ...next.general.viaRelay])]);
    if (next.publish.some((p) => p.mac !== null)) this.leases.start(next.dhcpLeases);
    else this.leases.stop();
    if (this.state === 'ready' && this.session !== null && this.dc !== null) {
      const gone = before.publish.filter((p) => !next.publish.some((q) => q.name === p.name));
      for (const p of gone) {
        this.channel.send('deregistration', { name: p.name }, this.dcKey(), this.dc);
        this.registered.delete(p.name);
        this.refused.delete(p.name);
      }
      const added = next.publish.filter((p) => !this.registered.has(p.name));
      if (added.length > 0) {
        const local = await this.localEndpoint();
        for (const p of added) {
          try {
            await this.registerPublished(p.name, local);
          } catch (e) {
            this.logger.error(`reload: ${(e as Error).message}`);
          }
        }
      }
    }
    await this.applyLan();
    this.logger.info(`reload: ${changed.join(', ')} applied; ${this.tunnels.peers.size} tunnel(s) kept`);
    return { changed, restart: false };
  }

  /**
   * OpenWrt's hotplug says an interface went up or down (ifup/ifdown): check the uplink now
   * instead of waiting for the debounced rtnetlink events. The monitor handles a change once,
   * whoever noticed it first, so the hint never causes a second handover.
   */
  uplinkHint(args: Record<string, unknown>): object {
    this.logger.debug(`hotplug: ${String(args.action ?? '?')} ${String(args.interface ?? '?')} (${String(args.device ?? '?')})`);
    if (this.uplinkStarted) this.uplink.check();
    return { uplink: this.uplink.address, handovers: this.counters.handovers };
  }

  // ---- the local API ---------------------------------------------------------------------------

  status(): object {
    return {
      state: this.state,
      error: this.lastError,
      // the daemon's clock, against which a viewer on another machine reads the times below
      now: Date.now(),
      name: this.config.name,
      publicKey: this.staticKey.publicKey.toString('base64url'),
      dc: this.dcAddress === null ? null : formatEndpoint(this.dcAddress, this.config.dcPort),
      port: this.socket?.port ?? null,
      registered: [...this.registered.values()],
      // Published names the DC refused (the others work), with the reason and the next attempt.
      refused: [...this.refused.values()],
      notify: this.notify?.status() ?? null,
      uplink: { address: this.uplink.address, handovers: this.counters.handovers, lastHandover: this.lastHandover, recentHandovers: this.recentHandovers, observedByDc: this.observedByDc === null ? null : formatEndpoint(this.observedByDc), candidates: this.uplinkPolicy.status() },
      keyId: this.session?.keyId ?? null,
      keyExpiresAt: this.session?.expiresAt ?? null,
      counters: { daemon: { ...this.counters }, channel: { ...this.channel.counters }, tunnels: { ...this.tunnels.counters }, engine: this.engine?.counters.snapshot() ?? null, dns: this.dnsHook ? { ...this.dnsHook.counters } : null },
    };
  }

  peers(): object[] {
    return [...this.tunnels.peers.values()].map((p) => ({ ...peerView(p), mapped: [...p.tunnel.vips4].map(numberToIpv4).filter((v) => this.mapped.has(v)).map((v) => ({ vip: v, shownAs: this.mapped.get(v) })) }));
  }

  async ping(args: Record<string, unknown>): Promise<object> {
    const name = args.name;
    const count = args.count ?? 3;
    if (typeof name !== 'string' || name.length === 0) throw new Error('ping: "name" is required');
    if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > 100) throw new Error('ping: "count" must be 1..100');
    const t0 = Date.now();
    const r = await this.resolveName(name.toLowerCase().replace(/\.$/, ''));
    if (r === null) throw new Error(`${name}: no such NTMobile name`);
    const setupMs = Date.now() - t0;
    const own = this.registered.get(this.config.name)!;
    const target = r.a[0] ?? r.aaaa[0]!;
    const source = isIP(target) === 4 ? own.vip4 : own.vip6;
    const out = await new Promise<string>((resolve) =>
      execFile('ping', ['-n', '-c', String(count), '-i', '0.2', '-W', '2', ...(source ? ['-I', source] : []), target], { timeout: 10_000 + count * 2000 }, (_e, stdout) => resolve(String(stdout))),
    );
    const rtts = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    return { name, vip: target, setupMs, sent: count, received: rtts.length, rttMs: rtts };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.state = 'stopping';
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    if (this.natKeepaliveTimer) clearInterval(this.natKeepaliveTimer);
    if (this.moveRetry !== null) clearTimeout(this.moveRetry.timer);
    if (this.refusedTimer !== null) clearTimeout(this.refusedTimer);
    this.uplink.stop();
    await this.notify?.stop();
    this.tunnels.stop();
    if (this.session !== null && this.dc !== null) {
      for (const name of this.registered.keys()) this.channel.send('deregistration', { name }, this.dcKey(), this.dc);
    }
    this.channel.close();
    await this.dnsHook?.stop();
    this.leases.stop();
    await this.lan.remove().catch((e: Error) => this.logger.error(`nftables: ${e.message}`));
    this.engine?.stop();
    await this.uplinkPolicy.stop();
    await this.api.stop();
  }
}

function peerView(p: PeerInfo): Record<string, unknown> {
  const t = p.tunnel;
  const path = t.endpoint ? formatEndpoint(decodeSockaddr(t.endpoint)) : null;
  return {
    node: p.route.peerNode,
    names: Object.fromEntries([...p.names].map(([n, v]) => [n, { vip4: v.vip4, vip6: v.vip6 }])),
    path,
    route: routeText(p),
    relayObserved: p.route.relayObserved === null ? null : formatEndpoint(p.route.relayObserved),
    txBytes: t.stats.txBytes,
    rxBytes: t.stats.rxBytes,
    txPackets: t.stats.txPackets,
    rxPackets: t.stats.rxPackets,
    lastTx: t.stats.lastTx || null,
    lastRx: t.stats.lastRx || null,
    rekeys: p.rekeys,
    /** The SAs in use (a reload that must not touch tunnels keeps them). */
    spiOut: t.outbound.spi,
    spiIn: t.inbound.spi,
  };
}

function routeText(p: PeerInfo): string {
  switch (p.path) {
    case 'relay':
      return `relay via ${p.route.via}`;
    case 'upgraded':
      return `direct (upgraded from relay via ${p.route.via})`;
    case 'gateway':
      return `gateway via ${p.route.via}`;
    default:
      return p.route.initiator ? 'direct (we initiated)' : 'direct (peer initiated)';
  }
}

function inPrefix(address: string, network: string, len: number): boolean {
  if (len === 0) return true;
  const mask = len >= 32 ? 0xffffffff : (~0 << (32 - len)) >>> 0;
  return ((ipv4ToNumber(address) & mask) >>> 0) === ((ipv4ToNumber(network) & mask) >>> 0);
}

/** Free local IPv4 addresses for mapped peer VIPs, from the configured prefix. */
class AddressPool {
  private next = 1;
  private readonly base: number;
  private readonly size: number;
  constructor(cidr: string) {
    const [net, len] = cidr.split('/');
    const bits = Number(len);
    if (net === undefined || isIP(net) !== 4 || !Number.isInteger(bits) || bits < 8 || bits > 30) throw new Error(`mapPool4: "${cidr}" is not an IPv4 prefix of /8../30`);
    this.base = ipv4ToNumber(net);
    this.size = 2 ** (32 - bits);
  }
  take(): string {
    if (this.next >= this.size - 1) throw new Error(`mapPool4: all ${this.size - 2} addresses in use`);
    return numberToIpv4((this.base + this.next++) >>> 0);
  }
}

function addrs(vip4: string | null, vip6: string | null): { a: string[]; aaaa: string[] } {
  return { a: vip4 ? [vip4] : [], aaaa: vip6 ? [vip6] : [] };
}

function ignoreExists(e: Error): void {
  if (!/EEXIST/.test(e.message)) throw e;
}

/**
 * `open()`, with a port already in use named by its config field (`bind [::]:4500: EADDRINUSE`
 * alone does not say which setting to change).
 */
function portOrField<T>(open: () => T, field: string, what: string): T {
  const named = (e: unknown): unknown =>
    (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? new Error(`${field}: ${what} is in use by another program (\`ss -lnp\` shows which): stop it or choose another ${field}`) : e;
  try {
    const r = open();
    return (r instanceof Promise ? r.catch((e: unknown) => Promise.reject(named(e))) : r) as T;
  } catch (e) {
    throw named(e);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
