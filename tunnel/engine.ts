// The userspace tunnel engine: a TUN device and one UDP port, the tunnel table between them, and
// the timers that keep NAT mappings open. The two data-path directions are inside.ts and
// outside.ts; this file wires them to the devices and owns their batches.

import { KEEPALIVE_DATAGRAM } from '../protocol/demux.js';
import { ESP_MAX_OVERHEAD, NEXT_HEADER_NONE } from '../protocol/esp.js';
import { EngineCounters } from './counters.js';
import { Inside } from './inside.js';
import { PacketBatch, type DatagramSocket, type PacketDevice } from './io.js';
import { Outside, type ControlHandler, type ForeignEsp } from './outside.js';
import { type Tunnel, type TunnelTable } from './table.js';

export interface EngineOptions {
  /** Packets per batch each way. */
  batchSize?: number;
  onControl?: ControlHandler;
  /** ESP whose SPI is not in the table goes here instead of being dropped (the RS's relay forwarding). */
  foreignEsp?: ForeignEsp;
  /** Milliseconds; tests pass a fake clock. */
  now?: () => number;
}

const EMPTY = Buffer.alloc(0);

/** The largest inner packet the engine accepts: the TUN MTU bounds it, this bounds the slots. */
const MAX_INNER = 9000;

export class Engine {
  readonly counters = new EngineCounters();
  private readonly inside: Inside;
  private readonly outside: Outside;
  private keepaliveTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly device: PacketDevice,
    readonly socket: DatagramSocket,
    readonly table: TunnelTable,
    opts: EngineOptions = {},
  ) {
    const batchSize = opts.batchSize ?? 64;
    const innerSlot = Math.min(MAX_INNER, device.mtu);
    const now = opts.now ?? Date.now;
    this.inside = new Inside(table, socket, new PacketBatch(batchSize, align(innerSlot + ESP_MAX_OVERHEAD)), this.counters, now);
    this.outside = new Outside(table, device, new PacketBatch(batchSize, align(innerSlot)), this.counters, now, opts.onControl ?? null, opts.foreignEsp ?? null);
  }

  start(): void {
    this.device.start((batch) => this.inside.handle(batch));
    this.socket.start((batch) => this.outside.handle(batch));
    const periods = [...this.table.tunnels()].map((t) => t.keepaliveSeconds).filter((s) => s > 0);
    if (periods.length > 0) {
      this.sendKeepalives();
      this.keepaliveTimer = setInterval(() => this.sendKeepalives(), Math.min(...periods) * 1000);
      this.keepaliveTimer.unref();
    }
  }

  /** RFC 3948 NAT keepalives to every tunnel that asks for them and has an endpoint. */
  sendKeepalives(): void {
    for (const t of this.table.tunnels()) {
      if (t.keepaliveSeconds > 0 && t.endpoint !== null) this.socket.sendOne(KEEPALIVE_DATAGRAM as Buffer, t.endpoint);
    }
  }

  /**
   * One dummy ESP packet (next header 59, RFC 4303 §2.6) on the tunnel's outbound SA: after a
   * rekey it shows the peer that we hold the new keys although no data flows. Not on the
   * packet path: a few per rekey.
   */
  sendDummy(t: Tunnel): boolean {
    if (t.endpoint === null) return false;
    const out = Buffer.alloc(ESP_MAX_OVERHEAD);
    const n = t.outbound.seal(EMPTY, 0, 0, NEXT_HEADER_NONE, out, 0);
    return n > 0 && this.socket.sendOne(out.subarray(0, n), t.endpoint);
  }

  stop(): void {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    this.device.close();
    this.socket.close();
  }
}

function align(n: number): number {
  return (n + 63) & ~63;
}
