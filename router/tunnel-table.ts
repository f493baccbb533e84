// The tunnel table (the seed's CIT, Communication Information Table): peer VIP ↔ path (the peer's
// real endpoint) and the SAs each way. The data path looks tunnels up by inner destination
// address (outbound) and by SPI (inbound) without allocating: IPv4 VIPs key a map by their
// 32-bit value, IPv6 VIPs by a 32-bit hash whose collisions are resolved by comparing bytes.

import { NEXT_HEADER_IPV4, type InboundSa, type OutboundSa } from '../protocol/esp.js';
import { hashIpv6, IPV4_DST_OFFSET, IPV6_DST_OFFSET } from '../protocol/ip.js';

export interface TunnelStats {
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
  /** Milliseconds since the epoch of the last packet each way (0: never). */
  lastTx: number;
  lastRx: number;
}

export class Tunnel {
  /** The peer's real endpoint (28-byte sockaddr, protocol/endpoint.ts), or null until learned. */
  endpoint: Buffer | null;
  readonly stats: TunnelStats = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, lastTx: 0, lastRx: 0 };

  constructor(
    readonly name: string,
    /** Peer VIPs: IPv4 as a 32-bit number, IPv6 as 16 bytes; either may be absent. */
    readonly vip4: number | null,
    readonly vip6: Buffer | null,
    readonly outbound: OutboundSa,
    readonly inbound: InboundSa,
    endpoint: Buffer | null,
    /** Seconds between NAT keepalives to the peer (0: none). */
    readonly keepaliveSeconds = 0,
  ) {
    this.endpoint = endpoint;
  }
}

export class TunnelTableError extends Error {
  override name = 'TunnelTableError';
}

export class TunnelTable {
  private readonly bySpi = new Map<number, Tunnel>();
  private readonly byVip4 = new Map<number, Tunnel>();
  private readonly byVip6 = new Map<number, Tunnel[]>();
  private readonly all = new Set<Tunnel>();

  add(t: Tunnel): void {
    if (this.bySpi.has(t.inbound.spi)) throw new TunnelTableError(`${t.name}: inbound SPI ${t.inbound.spi} is already in use`);
    if (t.vip4 !== null && this.byVip4.has(t.vip4)) throw new TunnelTableError(`${t.name}: IPv4 VIP is already in use`);
    if (t.vip6 !== null && this.lookupVip6(t.vip6, 0)) throw new TunnelTableError(`${t.name}: IPv6 VIP is already in use`);
    this.bySpi.set(t.inbound.spi, t);
    if (t.vip4 !== null) this.byVip4.set(t.vip4, t);
    if (t.vip6 !== null) {
      const h = hashIpv6(t.vip6, 0);
      const list = this.byVip6.get(h);
      if (list) list.push(t);
      else this.byVip6.set(h, [t]);
    }
    this.all.add(t);
  }

  remove(t: Tunnel): void {
    if (!this.all.delete(t)) return;
    this.bySpi.delete(t.inbound.spi);
    if (t.vip4 !== null) this.byVip4.delete(t.vip4);
    if (t.vip6 !== null) {
      const h = hashIpv6(t.vip6, 0);
      const rest = (this.byVip6.get(h) ?? []).filter((x) => x !== t);
      if (rest.length) this.byVip6.set(h, rest);
      else this.byVip6.delete(h);
    }
  }

  tunnels(): IterableIterator<Tunnel> {
    return this.all.values();
  }

  bySpiLookup(spi: number): Tunnel | undefined {
    return this.bySpi.get(spi);
  }

  /** The tunnel for an inner packet's destination address (packet at buf[start], its ESP next header known). */
  byDestination(buf: Buffer, start: number, nextHeader: number): Tunnel | undefined {
    if (nextHeader === NEXT_HEADER_IPV4) return this.byVip4.get(buf.readUInt32BE(start + IPV4_DST_OFFSET));
    return this.lookupVip6(buf, start + IPV6_DST_OFFSET);
  }

  private lookupVip6(buf: Buffer, at: number): Tunnel | undefined {
    const list = this.byVip6.get(hashIpv6(buf, at));
    if (!list) return undefined;
    for (const t of list) if (buf.compare(t.vip6!, 0, 16, at, at + 16) === 0) return t;
    return undefined;
  }
}
