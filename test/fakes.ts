// In-memory PacketDevice and DatagramSocket (tunnel/io.ts) for unit tests of the engine's pure
// logic. Acceptance tests use the kernel devices in namespaces instead.

import { PacketBatch, SOCKADDR_SIZE, type DatagramSocket, type PacketDevice } from '../tunnel/io.js';

export class FakeDevice implements PacketDevice {
  readonly written: Buffer[] = [];
  private handler: ((b: PacketBatch) => void) | null = null;
  constructor(
    readonly name = 'fake0',
    readonly mtu = 1400,
  ) {}
  start(onPackets: (b: PacketBatch) => void): void {
    this.handler = onPackets;
  }
  /** Hands packets to the engine as the kernel would (one batch). */
  inject(packets: Buffer[]): void {
    const b = new PacketBatch(packets.length, 2048);
    packets.forEach((p, i) => {
      p.copy(b.buf, b.offset(i));
      b.lengths[i] = p.length;
    });
    b.count = packets.length;
    this.handler!(b);
  }
  write(batch: PacketBatch): number {
    for (let i = 0; i < batch.count; i++) {
      this.written.push(Buffer.from(batch.buf.subarray(batch.offset(i), batch.offset(i) + batch.lengths[i]!)));
    }
    return batch.count;
  }
  close(): void {}
}

export interface Datagram {
  data: Buffer;
  to: Buffer;
}

/** A socket whose sends are recorded; `deliver` plays a datagram in as if from `from`. */
export class FakeSocket implements DatagramSocket {
  readonly sent: Datagram[] = [];
  private handler: ((b: PacketBatch) => void) | null = null;
  constructor(readonly port = 4500) {}
  start(onDatagrams: (b: PacketBatch) => void): void {
    this.handler = onDatagrams;
  }
  deliver(datagrams: { data: Buffer; from: Buffer }[]): void {
    const b = new PacketBatch(datagrams.length, 2048);
    datagrams.forEach((d, i) => {
      d.data.copy(b.buf, b.offset(i));
      b.lengths[i] = d.data.length;
      d.from.copy(b.addrs, i * SOCKADDR_SIZE);
    });
    b.count = datagrams.length;
    this.handler!(b);
  }
  send(batch: PacketBatch): number {
    for (let i = 0; i < batch.count; i++) {
      this.sent.push({
        data: Buffer.from(batch.buf.subarray(batch.offset(i), batch.offset(i) + batch.lengths[i]!)),
        to: Buffer.from(batch.addrs.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE)),
      });
    }
    return batch.count;
  }
  sendOne(data: Buffer, sockaddr: Buffer): boolean {
    this.sent.push({ data: Buffer.from(data), to: Buffer.from(sockaddr) });
    return true;
  }
  close(): void {}
}
