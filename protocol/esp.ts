// ESP in tunnel mode (RFC 4303) with combined-mode AEAD suites: ChaCha20-Poly1305 (RFC 7634)
// and AES-GCM with a 16-octet ICV (RFC 4106). Owns the byte layout of one ESP packet, the
// outbound sequence counter and the inbound anti-replay window. The UDP encapsulation (RFC 3948)
// is the datagram itself: see demux.ts. Nothing here throws on bad input from the network: open()
// returns a negative EspDrop code that the caller counts.
//
//   0               4               8              16                      len-16         len
//   | SPI (be32)    | Seq (be32)    | IV (8, = seq) | ciphertext of inner packet, padding,  | ICV (16) |
//                                                   | pad length (1), next header (1)       |
//
// The IV is the 64-bit sequence number, so it never repeats under one key (RFC 7634 §2 and
// RFC 4106 §3.1 ask only for uniqueness). Nonce = salt (4) || IV (8); AAD = SPI || Seq.

import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';

export type EspSuite = 'chacha20-poly1305' | 'aes-gcm';

export const ESP_HEADER_SIZE = 8;
export const ESP_IV_SIZE = 8;
export const ESP_ICV_SIZE = 16;
export const ESP_SALT_SIZE = 4;
/** SPI, sequence number, IV, pad length, next header and ICV: the smallest possible ESP packet. */
export const ESP_MIN_SIZE = ESP_HEADER_SIZE + ESP_IV_SIZE + 2 + ESP_ICV_SIZE;
/** Bytes that ESP adds to an inner packet at most (3 bytes of padding for 4-octet alignment). */
export const ESP_MAX_OVERHEAD = ESP_HEADER_SIZE + ESP_IV_SIZE + 3 + 2 + ESP_ICV_SIZE;

/** Next header values for tunnel mode (IANA protocol numbers). */
export const NEXT_HEADER_IPV4 = 4;
export const NEXT_HEADER_IPV6 = 41;
/** RFC 4303 §2.6: a dummy packet, to be dropped silently. */
export const NEXT_HEADER_NONE = 59;

/** The last sequence number an SA may send: 32-bit sequence numbers must never wrap (RFC 4303 §3.3.3). */
export const SEQ_MAX = 0xffffffff;
/** Rekey once this many packets are sent; leaves room for the new SA to come up before SEQ_MAX. */
export const REKEY_AFTER_PACKETS = SEQ_MAX - 0x00ffffff;
/** Anti-replay window in packets (RFC 4303 §3.4.3 asks for at least 32; we keep 2048). */
export const REPLAY_WINDOW = 2048;
const WINDOW_BLOCKS = REPLAY_WINDOW / 32 + 1;
/** SPIs 1..255 are reserved by IANA; 0 is never on the wire (RFC 4303 §2.1). */
export const SPI_MIN = 256;

/** Why an inbound ESP packet was dropped. Values are negative so that open() can return them. */
export const EspDrop = {
  truncated: -1,
  badIcv: -2,
  badPadding: -3,
  replayed: -4,
  tooOld: -5,
  badNextHeader: -6,
  dummy: -7,
  unknownSpi: -8,
} as const;

/** Returned by seal() when the SA has used its last sequence number and must be replaced. */
export const SEAL_EXHAUSTED = -1;

export class EspKeyError extends Error {
  override name = 'EspKeyError';
}

export interface SaParams {
  spi: number;
  suite: EspSuite;
  /** 32 bytes for ChaCha20-Poly1305; 16, 24 or 32 bytes for AES-GCM. */
  key: Buffer;
  salt: Buffer;
}

function cipherName(suite: EspSuite, keyLength: number): string {
  if (suite === 'chacha20-poly1305') {
    if (keyLength !== 32) throw new EspKeyError(`chacha20-poly1305: key length ${keyLength}, want 32`);
    return 'chacha20-poly1305';
  }
  if (keyLength !== 16 && keyLength !== 24 && keyLength !== 32) {
    throw new EspKeyError(`aes-gcm: key length ${keyLength}, want 16, 24 or 32`);
  }
  return `aes-${keyLength * 8}-gcm`;
}

function checkParams(p: SaParams): string {
  // The reserved range (below SPI_MIN) is refused where SPIs are chosen and by the demultiplexer;
  // the SA itself takes any 32-bit value so that published vectors with SPI 0 can be checked.
  if (!Number.isInteger(p.spi) || p.spi < 0 || p.spi > 0xffffffff) {
    throw new EspKeyError(`SPI ${p.spi}: want a 32-bit unsigned integer`);
  }
  if (p.salt.length !== ESP_SALT_SIZE) {
    throw new EspKeyError(`${p.suite}: salt length ${p.salt.length}, want ${ESP_SALT_SIZE}`);
  }
  return cipherName(p.suite, p.key.length);
}

/** State shared by both directions: cipher name, key, and a nonce/AAD scratch area. */
abstract class SaBase {
  readonly spi: number;
  readonly suite: EspSuite;
  protected readonly algorithm: string;
  protected readonly key: KeyObject;
  /** salt (4) || IV (8): rewritten per packet, copied by node:crypto. */
  protected readonly nonce = Buffer.alloc(12);
  protected readonly aad = Buffer.alloc(8);

  constructor(p: SaParams) {
    this.algorithm = checkParams(p);
    this.spi = p.spi;
    this.suite = p.suite;
    this.key = createSecretKey(p.key);
    p.salt.copy(this.nonce, 0);
  }
}

/** Outbound SA: numbers, pads and encrypts inner packets. */
export class OutboundSa extends SaBase {
  /** Sequence number of the last packet sent (0: none yet). */
  seq = 0;

  get needsRekey(): boolean {
    return this.seq >= REKEY_AFTER_PACKETS;
  }

  /**
   * Writes the ESP packet for inner[innerStart, innerEnd) at out[outStart]; returns its length,
   * or SEAL_EXHAUSTED when the sequence space is used up. `out` must have room for
   * innerLength + ESP_MAX_OVERHEAD bytes; `inner` and `out` must not overlap.
   */
  seal(
    inner: Buffer,
    innerStart: number,
    innerEnd: number,
    nextHeader: number,
    out: Buffer,
    outStart: number,
  ): number {
    if (this.seq >= SEQ_MAX) return SEAL_EXHAUSTED;
    const seq = ++this.seq;
    const innerLength = innerEnd - innerStart;
    // Pad so that inner || padding || pad length || next header is a multiple of 4 octets.
    const padLength = (4 - ((innerLength + 2) & 3)) & 3;
    const plainLength = innerLength + padLength + 2;
    const plainStart = outStart + ESP_HEADER_SIZE + ESP_IV_SIZE;
    const plainEnd = plainStart + plainLength;

    out.writeUInt32BE(this.spi, outStart);
    out.writeUInt32BE(seq, outStart + 4);
    out.writeUInt32BE(0, outStart + 8);
    out.writeUInt32BE(seq, outStart + 12);
    this.nonce.writeUInt32BE(0, 4);
    this.nonce.writeUInt32BE(seq, 8);
    out.copy(this.aad, 0, outStart, outStart + 8);
    // Lay the plaintext out where the ciphertext goes and encrypt it with one update():
    // node:crypto returns a new buffer, which is copied back over it.
    inner.copy(out, plainStart, innerStart, innerEnd);
    let at = plainStart + innerLength;
    for (let i = 1; i <= padLength; i++) out[at++] = i;
    out[at++] = padLength;
    out[at] = nextHeader;

    // Typed as a GCM name only to pick node's AEAD typings; chacha20-poly1305 has the same API.
    const cipher = createCipheriv(this.algorithm as 'aes-128-gcm', this.key, this.nonce, {
      authTagLength: ESP_ICV_SIZE,
    });
    cipher.setAAD(this.aad);
    cipher.update(out.subarray(plainStart, plainEnd)).copy(out, plainStart);
    cipher.final();
    cipher.getAuthTag().copy(out, plainEnd);
    return plainEnd + ESP_ICV_SIZE - outStart;
  }
}

/**
 * Inbound SA: checks the anti-replay window, authenticates and decrypts, checks the trailer.
 * After a successful open(), `nextHeader` and `lastSeq` describe the packet just opened.
 */
export class InboundSa extends SaBase {
  /** Highest authenticated sequence number. */
  highestSeq = 0;
  nextHeader = 0;
  lastSeq = 0;
  /**
   * The window as a ring of 32-bit blocks (RFC 6479): sequence number n is bit (n & 31) of block
   * (n >>> 5) % WINDOW_BLOCKS. Moving forward clears the blocks it enters instead of shifting
   * the whole bitmap, so an in-order packet costs one word at most. One block more than the window
   * needs keeps the oldest partial block alive while the newest fills.
   */
  private readonly window = new Uint32Array(WINDOW_BLOCKS);
  private readonly tag = Buffer.alloc(ESP_ICV_SIZE);

  /** Would this sequence number be accepted? (cheap check before decryption, RFC 4303 §3.4.3) */
  replayCheck(seq: number): number {
    if (seq === 0) return EspDrop.replayed;
    if (seq > this.highestSeq) return 0;
    if (this.highestSeq - seq >= REPLAY_WINDOW) return EspDrop.tooOld;
    return this.window[(seq >>> 5) % WINDOW_BLOCKS]! & (1 << (seq & 31)) ? EspDrop.replayed : 0;
  }

  private replayAccept(seq: number): void {
    const w = this.window;
    if (seq > this.highestSeq) {
      const top = this.highestSeq >>> 5;
      const blocks = Math.min((seq >>> 5) - top, WINDOW_BLOCKS);
      for (let i = 1; i <= blocks; i++) w[(top + i) % WINDOW_BLOCKS] = 0;
      this.highestSeq = seq;
    }
    w[(seq >>> 5) % WINDOW_BLOCKS]! |= 1 << (seq & 31);
  }

  /**
   * Opens the ESP packet pkt[start, end) and writes the inner packet at out[outStart].
   * Returns the inner packet's length, or an EspDrop code (negative).
   */
  open(pkt: Buffer, start: number, end: number, out: Buffer, outStart: number): number {
    const length = end - start;
    if (length < ESP_MIN_SIZE) return EspDrop.truncated;
    const seq = pkt.readUInt32BE(start + 4);
    const replay = this.replayCheck(seq);
    if (replay !== 0) return replay;

    pkt.copy(this.nonce, 4, start + 8, start + 16);
    pkt.copy(this.aad, 0, start, start + 8);
    pkt.copy(this.tag, 0, end - ESP_ICV_SIZE, end);
    const cipherStart = start + ESP_HEADER_SIZE + ESP_IV_SIZE;
    const cipherEnd = end - ESP_ICV_SIZE;
    const decipher = createDecipheriv(this.algorithm as 'aes-128-gcm', this.key, this.nonce, {
      authTagLength: ESP_ICV_SIZE,
    });
    decipher.setAAD(this.aad);
    decipher.setAuthTag(this.tag);
    const plain = decipher.update(pkt.subarray(cipherStart, cipherEnd));
    try {
      decipher.final();
    } catch {
      return EspDrop.badIcv;
    }

    const nextHeader = plain[plain.length - 1]!;
    const padLength = plain[plain.length - 2]!;
    const innerLength = plain.length - 2 - padLength;
    if (innerLength < 0) return EspDrop.badPadding;
    for (let i = 0; i < padLength; i++) {
      if (plain[innerLength + i] !== i + 1) return EspDrop.badPadding;
    }
    // Authenticated: only now may the window move (RFC 4303 §3.4.3).
    this.replayAccept(seq);
    if (nextHeader === NEXT_HEADER_NONE) return EspDrop.dummy;
    if (nextHeader !== NEXT_HEADER_IPV4 && nextHeader !== NEXT_HEADER_IPV6) return EspDrop.badNextHeader;
    this.nextHeader = nextHeader;
    this.lastSeq = seq;
    return plain.copy(out, outStart, 0, innerLength);
  }
}

/** Next header value for an inner IP packet from its version nibble, or 0 if it is not IP. */
export function nextHeaderFor(pkt: Buffer, start: number): number {
  const version = pkt[start]! >>> 4;
  return version === 4 ? NEXT_HEADER_IPV4 : version === 6 ? NEXT_HEADER_IPV6 : 0;
}
