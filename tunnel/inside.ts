// The inside direction of the data path (after Nebula's inside.go): packets the TUN device hands
// us, from the LAN or the node itself, are looked up by inner destination VIP, sealed into ESP
// under that tunnel's outbound SA, and sent as one batch of UDP datagrams.

import { NEXT_HEADER_IPV4, nextHeaderFor, SEAL_EXHAUSTED } from '../protocol/esp.js';
import { IPV4_HEADER_MIN, IPV6_HEADER_SIZE } from '../protocol/ip.js';
import { type EngineCounters } from './counters.js';
import { SOCKADDR_SIZE, type DatagramSocket, type PacketBatch } from './io.js';
import { type TunnelTable } from './table.js';

export class Inside {
  constructor(
    private readonly table: TunnelTable,
    private readonly socket: DatagramSocket,
    private readonly out: PacketBatch,
    private readonly counters: EngineCounters,
    private readonly now: () => number,
  ) {}

  handle(batch: PacketBatch): void {
    const { table, out, counters } = this;
    const buf = batch.buf;
    const now = this.now();
    out.count = 0;
    for (let i = 0; i < batch.count; i++) {
      const start = batch.offset(i);
      const length = batch.lengths[i]!;
      const nextHeader = length > 0 ? nextHeaderFor(buf, start) : 0;
      if (nextHeader === 0 || length < (nextHeader === NEXT_HEADER_IPV4 ? IPV4_HEADER_MIN : IPV6_HEADER_SIZE)) {
        counters.outDropNotIp++;
        continue;
      }
      const tunnel = table.byDestination(buf, start, nextHeader);
      if (tunnel === undefined) {
        counters.outDropNoTunnel++;
        continue;
      }
      if (tunnel.endpoint === null) {
        counters.outDropNoEndpoint++;
        continue;
      }
      const slot = out.count;
      const sealed = tunnel.outbound.seal(buf, start, start + length, nextHeader, out.buf, out.offset(slot));
      if (sealed === SEAL_EXHAUSTED) {
        counters.outDropSeqExhausted++;
        continue;
      }
      out.lengths[slot] = sealed;
      tunnel.endpoint.copy(out.addrs, slot * SOCKADDR_SIZE);
      out.count++;
      tunnel.stats.txPackets++;
      tunnel.stats.txBytes += length;
      tunnel.stats.lastTx = now;
      counters.outPackets++;
      counters.outBytes += length;
    }
    if (out.count > 0) {
      const sent = this.socket.send(out);
      counters.outDropSendFailed += out.count - sent;
    }
  }
}
