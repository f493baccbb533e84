// The DC's authoritative DNS server for its one zone, on UDP and TCP (protocol/dns.ts DnsListener).
// The apex holds SOA and NS (this server's own name, with glue); the name server's name answers
// with its addresses; every other name comes from the DC's registrations through lookup(). Answers
// inside the zone are authoritative; names outside it are REFUSED, as this is no resolver; zone
// transfers are refused too (there are no secondaries, so the SOA serial is informative only).

import { isIP } from 'node:net';
import type { Answer, Packet, SoaAnswer } from 'dns-packet';
import {
  addressRecords, buildResponse, DnsConfigError, DnsCounters, DnsListener, inZone, normalizeName,
  type AddressSet, type QueryPacket,
} from '../../protocol/dns.js';

export interface DnsServerOptions {
  zone: string;
  /** An IP address to listen on. */
  address: string;
  /** Default 53; 0 picks a free port (read `port` after start). */
  port?: number;
  /** TTL of every record, and the negative-caching TTL in the SOA, in seconds (default 60). */
  ttl?: number;
  /** This server's host name: the SOA's MNAME and the zone's NS record. */
  nsName: string;
  /** Addresses of nsName: glue with the NS record, and the answer to A/AAAA queries for nsName. */
  nsAddresses: string[];
  /** The addresses of a name inside the zone (lower case, no trailing dot); null: no such name. */
  lookup: (name: string) => AddressSet | null;
  tcpIdleMs?: number;
  maxTcpConnections?: number;
  /** Told why a query was answered SERVFAIL (lookup threw, or returned an address that is not one). */
  onError?: (error: unknown) => void;
}

export class DnsServer {
  readonly counters = new DnsCounters();
  private readonly listener: DnsListener;
  private readonly zone: string;
  private readonly nsName: string;
  private readonly ttl: number;
  private readonly soa: SoaAnswer;
  private readonly nsAddresses: AddressSet;
  private readonly lookup: (name: string) => AddressSet | null;

  constructor(options: DnsServerOptions) {
    this.zone = normalizeName(options.zone);
    this.nsName = normalizeName(options.nsName);
    this.ttl = options.ttl ?? 60;
    this.lookup = options.lookup;
    if (this.zone === '') throw new DnsConfigError('dns-server: zone is empty');
    if (this.nsName === '') throw new DnsConfigError('dns-server: nsName is empty');
    if (!Number.isInteger(this.ttl) || this.ttl < 0) throw new DnsConfigError(`dns-server: ttl ${this.ttl} is not a whole number of seconds`);
    options.nsAddresses.forEach((a, i) => {
      if (isIP(a) === 0) throw new DnsConfigError(`dns-server: nsAddresses[${i}] "${a}" is not an IP address`);
    });
    if (inZone(this.nsName, this.zone) && options.nsAddresses.length === 0) {
      throw new DnsConfigError(`dns-server: nsName ${this.nsName} is inside zone ${this.zone}, so nsAddresses (glue) must not be empty`);
    }
    this.nsAddresses = {
      a: options.nsAddresses.filter((a) => isIP(a) === 4),
      aaaa: options.nsAddresses.filter((a) => isIP(a) === 6),
    };
    this.soa = {
      type: 'SOA',
      name: this.zone,
      ttl: this.ttl,
      data: {
        mname: this.nsName,
        rname: `hostmaster.${this.zone}`,
        serial: Math.floor(Date.now() / 1000) >>> 0,
        refresh: 3600,
        retry: 600,
        expire: 604800,
        minimum: this.ttl,
      },
    };
    this.listener = new DnsListener({
      label: 'dns-server',
      address: options.address,
      port: options.port ?? 53,
      answer: (query) => this.answer(query),
      counters: this.counters,
      onError: options.onError,
      tcpIdleMs: options.tcpIdleMs,
      maxTcpConnections: options.maxTcpConnections,
    });
  }

  /** The bound port once started. */
  get port(): number {
    return this.listener.port;
  }

  start(): Promise<void> {
    return this.listener.start();
  }

  stop(): Promise<void> {
    return this.listener.stop();
  }

  private answer(query: QueryPacket): Packet {
    const { name: owner } = query.questions[0];
    // dns-packet's RecordType leaves out ANY and the UNKNOWN_<n> names it decodes to.
    const type: string = query.questions[0].type;
    const name = normalizeName(owner);
    if (!inZone(name, this.zone) || type === 'AXFR' || type === 'IXFR') return buildResponse(query, { rcode: 'REFUSED' });
    const records = this.recordsAt(name, owner);
    if (records === null) return buildResponse(query, { rcode: 'NXDOMAIN', authoritative: true, authorities: [this.soa] });
    const answers = type === 'ANY' ? records : records.filter((r) => r.type === type);
    if (answers.length === 0) return buildResponse(query, { authoritative: true, authorities: [this.soa] });
    const glue = answers.some((r) => r.type === 'NS') ? this.addressesOf(this.nsName, this.nsAddresses) : [];
    return buildResponse(query, { authoritative: true, answers, additionals: glue });
  }

  /** Every record of name, owned by the name as the client spelled it; null if the name does not exist. */
  private recordsAt(name: string, owner: string): Answer[] | null {
    const apex = name === this.zone;
    const addresses = name === this.nsName ? this.nsAddresses : this.lookup(name);
    if (addresses === null && !apex) return null;
    const records: Answer[] = apex ? [{ ...this.soa, name: owner }, { type: 'NS', name: owner, ttl: this.ttl, data: this.nsName }] : [];
    return addresses ? [...records, ...this.addressesOf(owner, addresses)] : records;
  }

  private addressesOf(owner: string, addresses: AddressSet): Answer[] {
    return [...addressRecords(owner, 'A', addresses.a, this.ttl), ...addressRecords(owner, 'AAAA', addresses.aaaa, this.ttl)];
  }
}
