// The two small interfaces that hide the machine from the tunnel engine (STYLE.md, after
// wireguard-go's tun.Device and conn.Bind). The engine only ever sees batches of packets in
// preallocated buffers: the kernel implementations live in netlink/ (TUN device, UDP socket),
// the in-memory fakes in test/. Nothing here allocates per packet.

/** Bytes reserved per endpoint in a batch: the size of a sockaddr_in6 (IPv4 is stored v4-mapped). */
export const SOCKADDR_SIZE = 28;

/**
 * A reusable set of packet slots in one buffer. Slot i starts at byte i * slotSize; lengths[i]
 * is the number of bytes in it. Endpoints (for datagrams) sit in `addrs` at i * SOCKADDR_SIZE,
 * in the sockaddr form that protocol/endpoint.ts encodes and decodes.
 */
export class PacketBatch {
  readonly buf: Buffer;
  readonly lengths: Int32Array;
  readonly addrs: Buffer;
  count = 0;

  constructor(
    readonly capacity: number,
    readonly slotSize: number,
  ) {
    this.buf = Buffer.alloc(capacity * slotSize);
    this.lengths = new Int32Array(capacity);
    this.addrs = Buffer.alloc(capacity * SOCKADDR_SIZE);
  }

  offset(i: number): number {
    return i * this.slotSize;
  }
}

/** A layer-3 packet device (TUN): whole IPv4/IPv6 packets, no link header. */
export interface PacketDevice {
  readonly name: string;
  readonly mtu: number;
  /**
   * Starts delivering packets. The handler is called with a batch that the device reuses as soon
   * as the handler returns; it must copy what it keeps.
   */
  start(onPackets: (batch: PacketBatch) => void): void;
  /** Writes batch.count packets; returns how many the device took (the rest are dropped). */
  write(batch: PacketBatch): number;
  close(): void;
}

/** A UDP socket bound to one port, used for control messages and ESP alike (ARCHITECTURE §2.2). */
export interface DatagramSocket {
  readonly port: number;
  /** Same reuse rule as PacketDevice.start; the source of datagram i is at batch.addrs[i * SOCKADDR_SIZE]. */
  start(onDatagrams: (batch: PacketBatch) => void): void;
  /** Sends batch.count datagrams, datagram i to the endpoint at batch.addrs[i * SOCKADDR_SIZE]. */
  send(batch: PacketBatch): number;
  /** Sends one datagram (control messages; not for the data path). */
  sendOne(data: Buffer, sockaddr: Buffer): boolean;
  close(): void;
}
