// The kernel UDP socket behind tunnel/io.ts DatagramSocket: one port for control and ESP
// (ARCHITECTURE §2.2), dual-stack by default ('::' with IPV6_V6ONLY=0, IPv4 peers v4-mapped),
// 4 MiB kernel buffers, recvmmsg/sendmmsg batches into one preallocated PacketBatch driven by
// uv_poll. Endpoints are the 28-byte form of protocol/endpoint.ts.
import { PacketBatch, SOCKADDR_SIZE, type DatagramSocket } from '../tunnel/io.js';
import { drainOnReadable } from './drain.js';
import { close, GSO_OFF, GSO_WORKS, newSendState, pollStop, recvBatch, SEND_GSO, sendBatch, udpOpen, type PollHandle } from './native.js';

export interface UdpOptions {
  /** '::' (default, dual-stack), an IPv6 address, or an IPv4 address (IPv4-only socket). */
  bindAddress?: string;
  /** 0 = ephemeral; see .port for the one bound. */
  port: number;
  /** Datagrams per receive batch (default 64). */
  batch?: number;
  /** Receive slot size (default 2048); a longer datagram is delivered with length 0. */
  slotSize?: number;
  /**
   * UDP GSO on send (default true): a run of equal-size datagrams to one endpoint in a batch goes
   * to the kernel as one message. Turned off by itself for good if the kernel refuses it.
   */
  gso?: boolean;
}

export class UdpSocket implements DatagramSocket {
  private handle: PollHandle | undefined;
  private closed = false;
  private readonly rx: PacketBatch;
  private readonly oneLength = new Int32Array(1);
  /** sendBatch state: address family, GSO untried / works / off (netlink/native.ts). */
  private readonly sendState: Int32Array;
  private static readonly EMPTY = Buffer.alloc(1);

  private constructor(
    readonly fd: number,
    readonly port: number,
    readonly bindAddress: string,
    batch: number,
    slotSize: number,
    gso: boolean,
  ) {
    this.rx = new PacketBatch(batch, slotSize);
    this.sendState = newSendState(gso);
  }

  /** 'untried' until a GSO message has gone out, then 'works'; 'off' if disabled or refused. */
  get gso(): 'off' | 'untried' | 'works' {
    const s = this.sendState[SEND_GSO];
    return s === GSO_OFF ? 'off' : s === GSO_WORKS ? 'works' : 'untried';
  }

  /** Opens and binds the socket (synchronous: it is one socket() and bind()). */
  static open(options: UdpOptions): UdpSocket {
    const { bindAddress = '::', port, batch = 64, slotSize = 2048, gso = true } = options;
    if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`batch ${batch} must be a positive integer`);
    if (!Number.isInteger(slotSize) || slotSize < 1 || slotSize > 65536) throw new RangeError(`slotSize ${slotSize} is not in 1..65536`);
    const { fd, port: bound } = udpOpen(bindAddress, port);
    return new UdpSocket(fd, bound, bindAddress, batch, slotSize, gso);
  }

  start(onDatagrams: (batch: PacketBatch) => void): void {
    if (this.closed) throw new Error(`UDP socket :${this.port} is closed`);
    if (this.handle) throw new Error(`UDP socket :${this.port} is already started`);
    const { fd, rx } = this;
    this.handle = drainOnReadable(fd, rx, (b) => recvBatch(fd, b.buf, b.slotSize, b.capacity, b.lengths, b.addrs), onDatagrams, () => this.closed);
  }

  send(batch: PacketBatch): number {
    if (this.closed || batch.count === 0) return 0;
    return sendBatch(this.fd, batch.buf, batch.slotSize, batch.lengths, batch.addrs, batch.count, this.sendState);
  }

  sendOne(data: Buffer, sockaddr: Buffer): boolean {
    if (this.closed) return false;
    if (sockaddr.length < SOCKADDR_SIZE) throw new RangeError(`sockaddr must be ${SOCKADDR_SIZE} bytes`);
    this.oneLength[0] = data.length;
    const buf = data.length > 0 ? data : UdpSocket.EMPTY;
    return sendBatch(this.fd, buf, buf.length, this.oneLength, sockaddr, 1, this.sendState) === 1;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.handle) pollStop(this.handle);
    this.handle = undefined;
    close(this.fd);
  }
}
