// Typed access to the kernel-layer addon (native/ntm.c): TUN, UDP, batched I/O, uv_poll readiness
// and raw netlink. The addon is loaded on first use, so that importing this module (or anything
// above it) never fails on a machine where it is not built; the first call says how to build it.
// Errors thrown by the addon are Error("<call> <subject>: <ERRNO>") with .code = errno name.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface NtmAddon {
  tunOpen(name: string): { fd: number; name: string };
  udpOpen(bindAddress: string, port: number): { fd: number; port: number };
  readBatch(fd: number, buf: Buffer, slotSize: number, maxCount: number, lengths: Int32Array): number;
  writeBatch(fd: number, buf: Buffer, slotSize: number, lengths: Int32Array, count: number): number;
  recvBatch(
    fd: number,
    buf: Buffer,
    slotSize: number,
    maxCount: number,
    lengths: Int32Array,
    addrs: Buffer,
  ): number;
  sendBatch(
    fd: number,
    buf: Buffer,
    slotSize: number,
    lengths: Int32Array,
    addrs: Buffer,
    count: number,
    state?: Int32Array,
  ): number;
  pollStart(fd: number, callback: () => void): PollHandle;
  pollStop(handle: PollHandle): void;
  close(fd: number): void;
  nlOpen(protocol: number, groups: number): number;
  nlSend(fd: number, buf: Buffer): void;
  nlRecv(fd: number, buf: Buffer, timeoutMs: number): number;
}

/** Opaque uv_poll handle returned by pollStart. */
export type PollHandle = { readonly __pollHandle: unique symbol };

/**
 * Path of the built addon, relative to this file once compiled (dist/netlink/native.js); in the
 * OpenWrt package this code is in the bundle dist/router/cli.js, at the same depth, so the same
 * path leads to the packaged addon (openwrt/build-ipk.ts).
 */
export const ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/ntm.node', import.meta.url));

let addon: NtmAddon | undefined;

/** Loads (once) and returns the addon; throws a clear error if it has not been built. */
export function loadNative(): NtmAddon {
  if (addon) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as NtmAddon;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND' || e.code === 'ENOENT') {
      throw new Error(`native addon not built (${ADDON_PATH} missing): run npm run build`, { cause: err });
    }
    throw err;
  }
  return addon;
}

export const tunOpen = (name: string) => loadNative().tunOpen(name);
export const udpOpen = (bindAddress: string, port: number) => loadNative().udpOpen(bindAddress, port);
export const close = (fd: number): void => loadNative().close(fd);
export const pollStart = (fd: number, callback: () => void): PollHandle => loadNative().pollStart(fd, callback);
export const pollStop = (handle: PollHandle): void => loadNative().pollStop(handle);
export const nlOpen = (protocol: number, groups: number): number => loadNative().nlOpen(protocol, groups);
export const nlSend = (fd: number, buf: Buffer): void => loadNative().nlSend(fd, buf);
export const nlRecv = (fd: number, buf: Buffer, timeoutMs: number): number => loadNative().nlRecv(fd, buf, timeoutMs);

export function readBatch(fd: number, buf: Buffer, slotSize: number, maxCount: number, lengths: Int32Array): number {
  return (addon ?? loadNative()).readBatch(fd, buf, slotSize, maxCount, lengths);
}

export function writeBatch(fd: number, buf: Buffer, slotSize: number, lengths: Int32Array, count: number): number {
  return (addon ?? loadNative()).writeBatch(fd, buf, slotSize, lengths, count);
}

export function recvBatch(
  fd: number,
  buf: Buffer,
  slotSize: number,
  maxCount: number,
  lengths: Int32Array,
  addrs: Buffer,
): number {
  return (addon ?? loadNative()).recvBatch(fd, buf, slotSize, maxCount, lengths, addrs);
}

/**
 * Per-socket state for sendBatch, kept by the caller: [SEND_DOMAIN] is the socket's address family
 * (0 = ask the kernel, then remembered), [SEND_GSO] one of the GSO_* values. With a state, runs of
 * equal-size datagrams to one endpoint go as one UDP GSO (UDP_SEGMENT) message each.
 */
export const SEND_DOMAIN = 0;
export const SEND_GSO = 1;
export const GSO_OFF = 0;
export const GSO_UNTRIED = 1;
export const GSO_WORKS = 2;

export function newSendState(gso: boolean): Int32Array {
  const state = new Int32Array(2);
  state[SEND_GSO] = gso ? GSO_UNTRIED : GSO_OFF;
  return state;
}

/** Returns the number of datagrams sent (not messages: a GSO message counts as its datagrams). */
export function sendBatch(
  fd: number,
  buf: Buffer,
  slotSize: number,
  lengths: Int32Array,
  addrs: Buffer,
  count: number,
  state?: Int32Array,
): number {
  return (addon ?? loadNative()).sendBatch(fd, buf, slotSize, lengths, addrs, count, state);
}
