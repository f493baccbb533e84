// Key material of a tunnel (ARCHITECTURE §2.4): static X25519 node keys, Kmncn derived from the
// static exchange and a per-tunnel ephemeral exchange mixed with Ktmp (so that the DCs that
// direct a tunnel can authorise it but never decrypt it), the ESP SAs each way (HKDF, RFC 5869),
// the key confirmation a Tunnel Response carries, and Kdcdc from a TLS exporter (RFC 5705).

import { createHmac, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { type TLSSocket } from 'node:tls';
import { ESP_SALT_SIZE, type EspSuite } from './esp.js';

export const X25519_KEY_SIZE = 32;
const SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');
const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

export class KeyError extends Error {
  override readonly name = 'KeyError';
}

export interface X25519Pair {
  privateKey: KeyObject;
  /** The raw 32-byte public key, as registered at the DC. */
  publicKey: Buffer;
}

export function generateX25519(): X25519Pair {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return { privateKey, publicKey: rawPublic(publicKey) };
}

export function x25519FromPrivate(raw: Buffer): X25519Pair {
  if (raw.length !== X25519_KEY_SIZE) throw new KeyError(`X25519 private key: ${raw.length} bytes, want ${X25519_KEY_SIZE}`);
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  return { privateKey, publicKey: rawPublic(createPublicKey(privateKey)) };
}

/**
 * A static X25519 key (a router's, an RS's): raw 32 bytes, base64, in a 0600 file; made on first
 * start. Shared by router/ and servers/ (which must not import the router).
 */
export function loadOrCreateKey(path: string): X25519Pair {
  if (existsSync(path)) {
    const raw = Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
    return x25519FromPrivate(raw);
  }
  const pair = generateX25519();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, `${rawPrivate(pair.privateKey).toString('base64')}\n`, { mode: 0o600 });
  chmodSync(path, 0o600);
  return pair;
}

export function rawPrivate(k: KeyObject): Buffer {
  return (k.export({ format: 'der', type: 'pkcs8' }) as Buffer).subarray(-X25519_KEY_SIZE);
}

function rawPublic(k: KeyObject): Buffer {
  return (k.export({ format: 'der', type: 'spki' }) as Buffer).subarray(-X25519_KEY_SIZE);
}

export function x25519(privateKey: KeyObject, peerPublic: Buffer): Buffer {
  if (peerPublic.length !== X25519_KEY_SIZE) throw new KeyError(`X25519 public key: ${peerPublic.length} bytes, want ${X25519_KEY_SIZE}`);
  const publicKey = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, peerPublic]), format: 'der', type: 'spki' });
  // An all-zero result means a low-order peer key (RFC 7748 §6.1): refuse it. OpenSSL 3 already
  // fails the derivation itself in that case, with a generic error that we turn into a KeyError.
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey, publicKey });
  } catch (e) {
    throw new KeyError(`X25519: peer public key has low order (${(e as Error).message})`);
  }
  if (shared.every((b) => b === 0)) throw new KeyError('X25519: peer public key has low order');
  return shared;
}

export const SUITE_CODES: Record<EspSuite, number> = { 'chacha20-poly1305': 1, 'aes-gcm': 2 };
export function suiteFromCode(code: number): EspSuite | null {
  return code === 1 ? 'chacha20-poly1305' : code === 2 ? 'aes-gcm' : null;
}

/** What both ends of a tunnel exchange contribute (the Tunnel Request's and Response's fields). */
export interface Transcript {
  routeId: number;
  initiatorSpi: number;
  responderSpi: number;
  initiatorEphemeral: Buffer;
  responderEphemeral: Buffer;
  initiatorNonce: Buffer;
  responderNonce: Buffer;
}

function transcriptBytes(t: Transcript): Buffer {
  const ids = Buffer.alloc(12);
  ids.writeUInt32BE(t.routeId, 0);
  ids.writeUInt32BE(t.initiatorSpi, 4);
  ids.writeUInt32BE(t.responderSpi, 8);
  return Buffer.concat([ids, t.initiatorEphemeral, t.responderEphemeral, t.initiatorNonce, t.responderNonce]);
}

/**
 * Kmncn = HKDF-SHA256(salt = Ktmp, ikm = X25519(static, peer static) ‖ X25519(ephemeral, peer
 * ephemeral), info = label ‖ transcript). The static part binds the tunnel to the keys the DCs
 * registered; the ephemeral part gives forward secrecy; Ktmp ties it to the DC's direction.
 */
export function deriveKmncn(ktmp: Buffer, staticShared: Buffer, ephemeralShared: Buffer, t: Transcript): Buffer {
  const info = Buffer.concat([Buffer.from('ntmobile kmncn v1'), transcriptBytes(t)]);
  return Buffer.from(hkdfSync('sha256', Buffer.concat([staticShared, ephemeralShared]), ktmp, info, 32));
}

export interface SaKeys {
  key: Buffer;
  salt: Buffer;
}

/** The two ESP SAs: initiator → responder and responder → initiator. */
export function deriveSaKeys(kmncn: Buffer, suite: EspSuite): { i2r: SaKeys; r2i: SaKeys } {
  const keyLength = 32;
  const one = (label: string): SaKeys => {
    const okm = Buffer.from(hkdfSync('sha256', kmncn, Buffer.alloc(0), Buffer.from(`ntmobile esp v1 ${suite} ${label}`), keyLength + ESP_SALT_SIZE));
    return { key: okm.subarray(0, keyLength), salt: okm.subarray(keyLength) };
  };
  return { i2r: one('i2r'), r2i: one('r2i') };
}

/** Kpath: the tunnel's own control key (path probes and updates), known to the two ends only. */
export function derivePathKey(kmncn: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', kmncn, Buffer.alloc(0), Buffer.from('ntmobile path v1'), 32));
}

/** The Tunnel Response's proof that the responder holds Kmncn. */
export function keyConfirmation(kmncn: Buffer, t: Transcript): Buffer {
  return createHmac('sha256', kmncn).update('ntmobile confirm v1').update(transcriptBytes(t)).digest();
}

export function confirmationMatches(kmncn: Buffer, t: Transcript, got: Buffer): boolean {
  const want = keyConfirmation(kmncn, t);
  return got.length === want.length && timingSafeEqual(got, want);
}

export function randomKey(): Buffer {
  return randomBytes(32);
}

/** A random nonzero 32-bit identifier (key IDs, route IDs). */
export function randomId32(): number {
  for (;;) {
    const v = randomBytes(4).readUInt32BE(0);
    if (v !== 0) return v;
  }
}

/** Kdcrs from first contact lives this long at both ends (the DC makes first contact again after it). */
export const KDCRS_LIFETIME_MS = 3600_000;
/** Kdcns from first contact (DC ↔ NS) lives this long; the DC makes first contact again after it. */
export const KDCNS_LIFETIME_MS = 3600_000;

/** Kdcdc (or Kdcrs, Kdcns) and its key ID from a mutually authenticated TLS session (RFC 5705 exporter). */
export function exportServerKey(socket: TLSSocket, label: 'kdcdc' | 'kdcrs' | 'kdcns'): { keyId: number; key: Buffer } {
  const m = socket.exportKeyingMaterial(36, `EXPORTER-ntmobile-${label}`, Buffer.alloc(0));
  const keyId = m.readUInt32BE(32) || 1;
  return { keyId, key: Buffer.from(m.subarray(0, 32)) };
}
