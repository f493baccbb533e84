// The outside direction of the data path (after Nebula's outside.go): datagrams from the UDP port
// are demultiplexed (keepalive / control / ESP); ESP is opened with the SA its SPI names, checked
// to come from that tunnel's peer VIP, and written to the TUN device as one batch.

import { classifyDatagram, DatagramKind } from '../protocol/demux.js';
import { EspDrop } from '../protocol/esp.js';
import { IPV4_SRC_OFFSET, IPV6_SRC_OFFSET, IP_VERSION_4 } from '../protocol/ip.js';
import { type EngineCounters } from './counters.js';
import { SOCKADDR_SIZE, type PacketBatch, type PacketDevice } from './io.js';
import { type Tunnel, type TunnelTable } from './table.js';

/** Receives control messages (copied out of the batch) with the sender's sockaddr. */
export type ControlHandler = (message: Buffer, from: Buffer) => void;

/**
 * Where ESP goes whose SPI is in no tunnel of the table, instead of being dropped as unknown: the
 * RS's relay forwarding shares the one UDP port with its gateway tunnels (servers/rs). Called
 * synchronously per datagram with views into the receive batch (valid only during the call: copy
 * what is kept); flush() once at the end of every received batch, to send what forward() queued.
 */
export interface ForeignEsp {
  /** ESP datagram in buf[start, start + length); its source's sockaddr at addrs[addrAt, addrAt + SOCKADDR_SIZE). */
  forward(buf: Buffer, start: number, length: number, addrs: Buffer, addrAt: number): void;
  flush(): void;
  /** A NAT keepalive (counted as inKeepalives either way) from the sockaddr at addrs[addrAt]. */
  keepalive?(addrs: Buffer, addrAt: number): void;
}

export class Outside {
  constructor(
    private readonly table: TunnelTable,
    private readonly device: PacketDevice,
    private readonly out: PacketBatch,
    private readonly counters: EngineCounters,
    private readonly now: () => number,
    private readonly onControl: ControlHandler | null,
    private readonly foreign: ForeignEsp | null = null,
  ) {}

  handle(batch: PacketBatch): void {
    const { table, out, counters } = this;
    const buf = batch.buf;
    const now = this.now();
    out.count = 0;
    for (let i = 0; i < batch.count; i++) {
      const start = batch.offset(i);
      const length = batch.lengths[i]!;
      const kind = classifyDatagram(buf, start, length);
      if (kind === DatagramKind.keepalive) {
        counters.inKeepalives++;
        if (this.foreign?.keepalive) this.foreign.keepalive(batch.addrs, i * SOCKADDR_SIZE);
        continue;
      }
      if (kind === DatagramKind.control) {
        counters.inControl++;
        if (this.onControl) {
          const from = batch.addrs.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE);
          this.onControl(Buffer.from(buf.subarray(start, start + length)), Buffer.from(from));
        }
        continue;
      }
      if (kind === DatagramKind.invalid) {
        counters.inDropInvalid++;
        continue;
      }
      const spi = buf.readUInt32BE(start);
      const tunnel = table.bySpiLookup(spi);
      if (tunnel === undefined) {
        if (this.foreign !== null) this.foreign.forward(buf, start, length, batch.addrs, i * SOCKADDR_SIZE);
        else counters.inDropUnknownSpi++;
        continue;
      }
      const slot = out.count;
      const at = out.offset(slot);
      const sa = tunnel.inboundFor(spi)!;
      const innerLength = sa.open(buf, start, start + length, out.buf, at);
      if (innerLength < 0) {
        // A dummy packet is authenticated too: after a rekey it shows the peer holds the new keys.
        if (innerLength === EspDrop.dummy && tunnel.pendingOutbound !== null && sa === tunnel.inbound) {
          tunnel.outbound = tunnel.pendingOutbound;
          tunnel.pendingOutbound = null;
        }
        counters.countEspDrop(innerLength);
        continue;
      }
      if (tunnel.pendingOutbound !== null && sa === tunnel.inbound) {
        // The peer sends on the new SA, so it holds the new keys: switch our side too.
        tunnel.outbound = tunnel.pendingOutbound;
        tunnel.pendingOutbound = null;
      }
      if (!fromPeerVip(tunnel, out.buf, at, innerLength)) {
        counters.inDropSpoofedSource++;
        continue;
      }
      if (sa === tunnel.inbound && tunnel.roaming) this.learnEndpoint(tunnel, batch.addrs, i * SOCKADDR_SIZE);
      out.lengths[slot] = innerLength;
      out.count++;
      tunnel.stats.rxPackets++;
      tunnel.stats.rxBytes += innerLength;
      tunnel.stats.lastRx = now;
      counters.inPackets++;
      counters.inBytes += innerLength;
    }
    if (out.count > 0) {
      const written = this.device.write(out);
      counters.inDropWriteFailed += out.count - written;
    }
    if (this.foreign !== null) this.foreign.flush();
  }

  /**
   * Follows a peer whose address changed (NAT rebinding, a move), but only on an authenticated
   * packet that is the newest seen on the SA, so that a replayed or delayed packet from an old
   * address can never pull the tunnel back (as WireGuard does; MOBIKE-style path updates come
   * with the control plane).
   */
  private learnEndpoint(tunnel: Tunnel, addrs: Buffer, at: number): void {
    if (tunnel.inbound.lastSeq !== tunnel.inbound.highestSeq) return;
    const current = tunnel.endpoint;
    if (current !== null && addrs.compare(current, 0, SOCKADDR_SIZE, at, at + SOCKADDR_SIZE) === 0) return;
    if (current === null) tunnel.endpoint = Buffer.alloc(SOCKADDR_SIZE);
    addrs.copy(tunnel.endpoint!, 0, at, at + SOCKADDR_SIZE);
    this.counters.inEndpointUpdates++;
  }
}

/** An inner packet must come from its tunnel's peer VIP: no spoofing of other addresses. */
function fromPeerVip(tunnel: Tunnel, buf: Buffer, start: number, length: number): boolean {
  if (buf[start]! >>> 4 === IP_VERSION_4) {
    if (length < 20) return false;
    const src = buf.readUInt32BE(start + IPV4_SRC_OFFSET);
    const vips = tunnel.vips4;
    for (let i = 0; i < vips.length; i++) if (vips[i] === src) return true;
    return false;
  }
  if (length < 40) return false;
  const vips = tunnel.vips6;
  for (let i = 0; i < vips.length; i++) {
    if (buf.compare(vips[i]!, 0, 16, start + IPV6_SRC_OFFSET, start + IPV6_SRC_OFFSET + 16) === 0) return true;
  }
  return false;
}
