// The router's DNS listener for NTMobile names, on UDP and TCP (protocol/dns.ts DnsListener). The
// LAN's dnsmasq forwards the NTMobile domains here (server=/fleet2.test/127.0.0.1#5353). An A or
// AAAA query asks the control plane (resolve), which directs the tunnel and settles once it is
// ready, so the answer reaches the LAN host when its first packet can go through. Queries for one
// name share one resolve call; answers are cached for ttl seconds and unknown names for
// negativeTtl; a resolve that fails or outlasts timeoutMs is aborted and answered SERVFAIL, and
// is not cached, so the next query tries again.

import type { Packet } from 'dns-packet';
import {
  addressRecords, buildResponse, DnsConfigError, DnsCounters, DnsListener, inZone, normalizeName,
  type AddressSet, type QueryPacket, type ResponseOptions,
} from '../protocol/dns.js';

/** Names cached at most; the oldest goes first, so a flood of made-up names cannot grow memory. */
const MAX_CACHED_NAMES = 1024;
/** resolve calls running at once at most; more queries for new names are answered SERVFAIL. */
const MAX_RESOLVING = 64;

export interface DnsHookOptions {
  /** An IP address to listen on. */
  address: string;
  /** 0 picks a free port (read `port` after start). */
  port: number;
  /** The NTMobile domains forwarded here; names outside them are REFUSED. */
  domains: string[];
  /** The control plane: the addresses of name once its tunnel is ready; null if the name is unknown. */
  resolve: (name: string, signal: AbortSignal) => Promise<AddressSet | null>;
  /** Default 3000. */
  timeoutMs?: number;
  /** Seconds an answer is cached and announced for (default 30). */
  ttl?: number;
  /** Seconds an unknown name is remembered (default 5). */
  negativeTtl?: number;
  tcpIdleMs?: number;
  maxTcpConnections?: number;
  /** Told why a query was answered SERVFAIL when resolve gave something other than an AddressSet of valid addresses. */
  onError?: (error: unknown) => void;
  /** Clock of the caches in milliseconds (default Date.now). */
  now?: () => number;
}

export class DnsHookCounters extends DnsCounters {
  /** resolve calls made. */
  resolves = 0;
  /** Queries that joined a resolve call already running for their name. */
  coalesced = 0;
  cacheHits = 0;
  resolveTimeouts = 0;
  resolveFailures = 0;
  /** Queries answered SERVFAIL because MAX_RESOLVING calls were running. */
  overloaded = 0;
}

interface Resolved {
  addresses: AddressSet | null;
  /** By the hook's clock, in milliseconds. */
  expires: number;
}

export class DnsHook {
  readonly counters = new DnsHookCounters();
  private readonly listener: DnsListener;
  private domains: string[];
  private readonly timeoutMs: number;
  private readonly ttl: number;
  private readonly negativeTtl: number;
  private readonly now: () => number;
  private readonly cache = new Map<string, Resolved>();
  private readonly resolving = new Map<string, { result: Promise<Resolved>; controller: AbortController }>();

  constructor(private readonly options: DnsHookOptions) {
    this.domains = checkedDomains(options.domains);
    this.timeoutMs = options.timeoutMs ?? 3000;
    this.ttl = options.ttl ?? 30;
    this.negativeTtl = options.negativeTtl ?? 5;
    this.now = options.now ?? Date.now;
    for (const [field, value] of [['timeoutMs', this.timeoutMs], ['ttl', this.ttl], ['negativeTtl', this.negativeTtl]] as const) {
      if (!Number.isFinite(value) || value < 0) throw new DnsConfigError(`dns-hook: ${field} ${value} is not a non-negative number`);
    }
    this.listener = new DnsListener({
      label: 'dns-hook',
      address: options.address,
      port: options.port,
      answer: (query) => this.answer(query),
      counters: this.counters,
      onError: options.onError,
      tcpIdleMs: options.tcpIdleMs,
      maxTcpConnections: options.maxTcpConnections,
    });
  }

  /** New domains (a config reload); names outside them are refused from now on, cached answers stay. */
  setDomains(domains: string[]): void {
    this.domains = checkedDomains(domains);
  }

  /** The bound port once started. */
  get port(): number {
    return this.listener.port;
  }

  start(): Promise<void> {
    return this.listener.start();
  }

  /** Stops listening and aborts every resolve call still running. */
  stop(): Promise<void> {
    for (const { controller } of this.resolving.values()) controller.abort(new Error('dns-hook stopped'));
    return this.listener.stop();
  }

  private async answer(query: QueryPacket): Promise<Packet> {
    const { name: owner, type } = query.questions[0];
    const name = normalizeName(owner);
    if (!this.domains.some((domain) => inZone(name, domain))) return this.reply(query, { rcode: 'REFUSED' });
    if (type !== 'A' && type !== 'AAAA') return this.reply(query, {});
    let resolved: Resolved;
    try {
      resolved = await this.lookup(name);
    } catch {
      return this.reply(query, { rcode: 'SERVFAIL' });
    }
    if (resolved.addresses === null) return this.reply(query, { rcode: 'NXDOMAIN' });
    const ttl = Math.max(0, Math.ceil((resolved.expires - this.now()) / 1000));
    const addresses = type === 'A' ? resolved.addresses.a : resolved.addresses.aaaa;
    return this.reply(query, { answers: addressRecords(owner, type, addresses, ttl) });
  }

  /** The hook fetches answers for its clients, so it offers recursion; it is not the authority. */
  private reply(query: QueryPacket, options: ResponseOptions): Packet {
    return buildResponse(query, { ...options, recursionAvailable: true });
  }

  private async lookup(name: string): Promise<Resolved> {
    const cached = this.cache.get(name);
    if (cached && cached.expires > this.now()) {
      this.counters.cacheHits++;
      return cached;
    }
    const running = this.resolving.get(name);
    if (running) {
      this.counters.coalesced++;
      return running.result;
    }
    if (this.resolving.size >= MAX_RESOLVING) {
      this.counters.overloaded++;
      throw new Error(`dns-hook: ${MAX_RESOLVING} names are being resolved already`);
    }
    return this.startResolve(name);
  }

  private startResolve(name: string): Promise<Resolved> {
    this.counters.resolves++;
    const controller = new AbortController();
    const timer = setTimeout(() => {
      this.counters.resolveTimeouts++;
      controller.abort(new Error(`dns-hook: resolve(${name}) did not settle within ${this.timeoutMs} ms`));
    }, this.timeoutMs);
    const aborted = new Promise<never>((_, reject) => {
      controller.signal.addEventListener('abort', () => reject(controller.signal.reason), { once: true });
    });
    const called = new Promise<AddressSet | null>((settle) => settle(this.options.resolve(name, controller.signal)));
    const result = Promise.race([called, aborted])
      .then(
        (addresses) => this.remember(name, addresses),
        (err: unknown) => {
          if (!controller.signal.aborted) {
            this.counters.resolveFailures++;
            controller.abort(err);
          }
          throw err;
        },
      )
      .finally(() => {
        clearTimeout(timer);
        this.resolving.delete(name);
      });
    this.resolving.set(name, { result, controller });
    return result;
  }

  private remember(name: string, addresses: AddressSet | null): Resolved {
    const resolved = { addresses, expires: this.now() + 1000 * (addresses ? this.ttl : this.negativeTtl) };
    this.cache.delete(name);
    if (this.cache.size >= MAX_CACHED_NAMES) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(name, resolved);
    return resolved;
  }
}

function checkedDomains(domains: string[]): string[] {
  if (domains.length === 0) throw new DnsConfigError('dns-hook: domains is empty');
  const root = domains.findIndex((d) => normalizeName(d) === '');
  if (root >= 0) throw new DnsConfigError(`dns-hook: domains[${root}] is the root, which would take every name`);
  return domains.map(normalizeName);
}
