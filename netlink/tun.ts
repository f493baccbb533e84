// The kernel TUN device behind tunnel/io.ts PacketDevice: opened by the addon (IFF_TUN|IFF_NO_PI,
// non-blocking), configured with rtnetlink (MTU, addresses, link up), read in batches into one
// preallocated PacketBatch whenever uv_poll says it is readable. No allocation and no promise per
// packet. The kernel deletes the device when it is closed (it is not made persistent).
import { PacketBatch, type PacketDevice } from '../tunnel/io.js';
import { drainOnReadable } from './drain.js';
import { close, pollStop, readBatch, tunOpen, writeBatch, type PollHandle } from './native.js';
import { addAddress, setLinkUp, setMtu } from './rtnetlink.js';

export interface TunOptions {
  /** Interface name; 'tun%d' lets the kernel number it. */
  name: string;
  mtu: number;
  /** CIDRs to add, IPv4 and IPv6 (IPv6 without DAD, usable at once). */
  addresses: string[];
  /** Packets per read batch (default 64). */
  batch?: number;
}

export class TunDevice implements PacketDevice {
  private handle: PollHandle | undefined;
  private closed = false;
  private readonly rx: PacketBatch;

  private constructor(
    readonly fd: number,
    readonly name: string,
    readonly mtu: number,
    batch: number,
  ) {
    this.rx = new PacketBatch(batch, Math.max(2048, Math.ceil(mtu / 2048) * 2048));
  }

  static async open(options: TunOptions): Promise<TunDevice> {
    const { mtu, addresses, batch = 64 } = options;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new RangeError(`mtu ${mtu} is not in 68..65535`);
    if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`batch ${batch} must be a positive integer`);
    const { fd, name } = tunOpen(options.name);
    try {
      await setMtu(name, mtu);
      await setLinkUp(name, true);
      for (const cidr of addresses) await addAddress(name, cidr);
    } catch (err) {
      close(fd);
      throw err;
    }
    return new TunDevice(fd, name, mtu, batch);
  }

  start(onPackets: (batch: PacketBatch) => void): void {
    if (this.closed) throw new Error(`TUN ${this.name} is closed`);
    if (this.handle) throw new Error(`TUN ${this.name} is already started`);
    const { fd, rx } = this;
    this.handle = drainOnReadable(fd, rx, (b) => readBatch(fd, b.buf, b.slotSize, b.capacity, b.lengths), onPackets, () => this.closed);
  }

  write(batch: PacketBatch): number {
    if (this.closed || batch.count === 0) return 0;
    return writeBatch(this.fd, batch.buf, batch.slotSize, batch.lengths, batch.count);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.handle) pollStop(this.handle);
    this.handle = undefined;
    close(this.fd);
  }
}
