// The one-port demultiplexer (ARCHITECTURE §2.2, after RFC 3948 §2): every datagram that reaches
// a node's UDP port is a NAT keepalive, an NTMobile control message, or an ESP packet.
//
//   keepalive   | 0xFF |                                   (exactly one byte, RFC 3948 §2.3)
//   control     | 00 00 00 00 | NTMobile control message | (the non-ESP marker, RFC 3948 §2.2)
//   ESP         | SPI (≠ 0) | Seq | IV | ... | ICV |      (RFC 3948 §2.1)

import { ESP_MIN_SIZE, SPI_MIN } from './esp.js';

export const KEEPALIVE_BYTE = 0xff;
export const NON_ESP_MARKER_SIZE = 4;

export const DatagramKind = {
  keepalive: 0,
  control: 1,
  esp: 2,
  /** Too short for its kind, or an ESP SPI from the reserved range. */
  invalid: 3,
} as const;
export type DatagramKindCode = (typeof DatagramKind)[keyof typeof DatagramKind];

export function classifyDatagram(buf: Buffer, start: number, length: number): DatagramKindCode {
  if (length === 1) return buf[start] === KEEPALIVE_BYTE ? DatagramKind.keepalive : DatagramKind.invalid;
  if (length < NON_ESP_MARKER_SIZE) return DatagramKind.invalid;
  const first = buf.readUInt32BE(start);
  if (first === 0) return length > NON_ESP_MARKER_SIZE ? DatagramKind.control : DatagramKind.invalid;
  if (first < SPI_MIN || length < ESP_MIN_SIZE) return DatagramKind.invalid;
  return DatagramKind.esp;
}

/** Frames a control message behind the non-ESP marker. */
export function frameControl(message: Buffer): Buffer {
  const out = Buffer.alloc(NON_ESP_MARKER_SIZE + message.length);
  message.copy(out, NON_ESP_MARKER_SIZE);
  return out;
}

export const KEEPALIVE_DATAGRAM: Readonly<Buffer> = Buffer.from([KEEPALIVE_BYTE]);
