// The read side shared by the TUN device and the UDP socket: on each readable event, drain the fd
// in batches into one preallocated PacketBatch and hand each batch to the handler.

import { type PacketBatch } from '../tunnel/io.js';
import { pollStart, type PollHandle } from './native.js';

/** Batches drained per readable event before yielding to the event loop (level-triggered: it comes back). */
const MAX_ROUNDS = 16;

/** `read` fills rx and returns the number of packets (0: nothing left); `closed` stops the loop. */
export function drainOnReadable(
  fd: number,
  rx: PacketBatch,
  read: (rx: PacketBatch) => number,
  deliver: (rx: PacketBatch) => void,
  closed: () => boolean,
): PollHandle {
  return pollStart(fd, () => {
    for (let round = 0; round < MAX_ROUNDS && !closed(); round++) {
      const n = read(rx);
      if (n === 0) return;
      rx.count = n;
      deliver(rx);
      if (n < rx.capacity) return;
    }
  });
}
