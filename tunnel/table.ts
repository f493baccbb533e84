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
  /** Peer VIPs (the peer node's own and its published hosts'): IPv4 as 32-bit numbers, IPv6 as 16 bytes. */
  readonly vips4: number[] = [];
  readonly vips6: Buffer[] = [];
  outbound: OutboundSa;
  inbound: InboundSa;
  /** During a rekey: the SA the peer may still be sending on, accepted until it goes quiet. */
  previousInbound: InboundSa | null = null;
  /** During a rekey (responder side): the new outbound SA, taken into use at the first packet on the new inbound SA. */
  pendingOutbound: OutboundSa | null = null;
  /**
   * Follow the peer to the source of its newest authenticated packet (a direct tunnel). Off where
   * the control plane chooses the path (through an RS, or moved off one by path probes): there
   * packets still in flight on the other path must not pull the tunnel back.
   */
  roaming = true;

  constructor(
    readonly name: string,
    vip4: number | null,
    vip6: Buffer | null,
    outbound: OutboundSa,
    inbound: InboundSa,
    endpoint: Buffer | null,
    /** Seconds between NAT keepalives to the peer (0: none). */
    readonly keepaliveSeconds = 0,
  ) {
    this.endpoint = endpoint;
    this.outbound = outbound;
    this.inbound = inbound;
    if (vip4 !== null) this.vips4.push(vip4);
    if (vip6 !== null) this.vips6.push(vip6);
  }

  /** The SA that an inbound packet's SPI names (the current one or, during a rekey, the previous). */
  inboundFor(spi: number): InboundSa | null {
    if (this.inbound.spi === spi) return this.inbound;
    const p = this.previousInbound;
    return p !== null && p.spi === spi ? p : null;
  }
}

/**
 * A copy of a small buffer in memory of its own, for what a tunnel keeps for its lifetime (its
 * endpoint, its route's keys). Buffer.from() and Buffer.concat() of a small buffer give a slice of
 * node's shared 8 KB pool, and one long-lived slice keeps its whole slab alive: two slabs pinned
 * per tunnel were 1.5 MB for 100 tunnels (docs/benchmarks.md, "Memory on a router").
 */
export function ownCopy(...parts: Buffer[]): Buffer {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = Buffer.alloc(length);
  let at = 0;
  for (const p of parts) at += p.copy(out, at);
  return out;
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
    if (this.all.has(t)) throw new TunnelTableError(`${t.name}: already in the table`);
    if (this.bySpi.has(t.inbound.spi)) throw new TunnelTableError(`${t.name}: inbound SPI ${t.inbound.spi} is already in use`);
    for (const v of t.vips4) if (this.byVip4.has(v)) throw new TunnelTableError(`${t.name}: IPv4 VIP is already in use`);
    for (const v of t.vips6) if (this.lookupVip6(v, 0)) throw new TunnelTableError(`${t.name}: IPv6 VIP is already in use`);
    this.bySpi.set(t.inbound.spi, t);
    for (const v of t.vips4) this.byVip4.set(v, t);
    for (const v of t.vips6) this.indexVip6(t, v);
    this.all.add(t);
  }

  remove(t: Tunnel): void {
    if (!this.all.delete(t)) return;
    this.bySpi.delete(t.inbound.spi);
    if (t.previousInbound) this.bySpi.delete(t.previousInbound.spi);
    for (const v of t.vips4) this.byVip4.delete(v);
    for (const v of t.vips6) {
      const h = hashIpv6(v, 0);
      const rest = (this.byVip6.get(h) ?? []).filter((x) => x !== t);
      if (rest.length) this.byVip6.set(h, rest);
      else this.byVip6.delete(h);
    }
  }

  /** Adds a VIP to a tunnel in the table (a peer's published host); false if another tunnel has it. */
  addVip4(t: Tunnel, vip: number): boolean {
    const owner = this.byVip4.get(vip);
    if (owner === t) return true;
    if (owner !== undefined) return false;
    t.vips4.push(vip);
    this.byVip4.set(vip, t);
    return true;
  }

  addVip6(t: Tunnel, vip: Buffer): boolean {
    const owner = this.lookupVip6(vip, 0);
    if (owner === t) return true;
    if (owner !== undefined) return false;
    t.vips6.push(vip);
    this.indexVip6(t, vip);
    return true;
  }

  /** Whether an inbound SPI is free to choose. */
  spiFree(spi: number): boolean {
    return !this.bySpi.has(spi);
  }

  /**
   * Installs a rekeyed inbound SA: the current one becomes the previous (still accepted), the one
   * before it is forgotten. The outbound SA is switched now (initiator) or held as pending until
   * the peer is seen using the new keys (responder), so no packet in flight is lost. Returns
   * true when it replaced an unconfirmed rekey instead of demoting the current SA.
   */
  rekey(t: Tunnel, inbound: InboundSa, outbound: OutboundSa, switchOutboundNow: boolean, mayReplace = true): boolean {
    if (this.bySpi.has(inbound.spi)) throw new TunnelTableError(`${t.name}: inbound SPI ${inbound.spi} is already in use`);
    // Responder: the last rekey was never used by the peer (its answer lost, or a request from
    // someone with Ktun only): replace that one, and keep the SA before it, which still works.
    const replace = mayReplace && !switchOutboundNow && t.pendingOutbound !== null && t.previousInbound !== null;
    if (replace) this.bySpi.delete(t.inbound.spi);
    else {
      if (t.previousInbound) this.bySpi.delete(t.previousInbound.spi);
      t.previousInbound = t.inbound;
    }
    t.inbound = inbound;
    this.bySpi.set(inbound.spi, t);
    if (switchOutboundNow) {
      t.outbound = outbound;
      t.pendingOutbound = null;
    } else t.pendingOutbound = outbound;
    return replace;
  }

  /** Forgets a rekeyed tunnel's previous inbound SA (after its grace period). */
  retirePrevious(t: Tunnel): void {
    if (t.previousInbound === null) return;
    this.bySpi.delete(t.previousInbound.spi);
    t.previousInbound = null;
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

  private indexVip6(t: Tunnel, v: Buffer): void {
    const h = hashIpv6(v, 0);
    const list = this.byVip6.get(h);
    if (list) list.push(t);
    else this.byVip6.set(h, [t]);
  }

  private lookupVip6(buf: Buffer, at: number): Tunnel | undefined {
    const list = this.byVip6.get(hashIpv6(buf, at));
    if (!list) return undefined;
    for (const t of list) for (const v of t.vips6) if (buf.compare(v, 0, 16, at, at + 16) === 0) return t;
    return undefined;
  }
}
