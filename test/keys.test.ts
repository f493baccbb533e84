// Tunnel key material (protocol/keys.ts): X25519 against RFC 7748, refusal of low-order points,
// Kmncn from both sides and its dependence on every input, the ESP SA keys, the key confirmation,
// and SAs derived by the two ends interoperating through protocol/esp.ts.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import {
  KeyError, SUITE_CODES, confirmationMatches, deriveKmncn, deriveSaKeys, generateX25519, keyConfirmation, randomId32,
  rawPrivate, suiteFromCode, x25519, x25519FromPrivate, type Transcript, type X25519Pair,
} from '../protocol/keys.js';
import { ESP_MAX_OVERHEAD, EspDrop, InboundSa, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, OutboundSa, nextHeaderFor, type EspSuite } from '../protocol/esp.js';
import { icmpEcho, udpPacket } from './tools/packets.js';

const hex = (s: string) => Buffer.from(s, 'hex');

t.test('X25519 agreement: static and ephemeral pairs, both ways', async (t) => {
  const staticA = generateX25519();
  const staticB = generateX25519();
  const ephA = generateX25519();
  const ephB = generateX25519();
  for (const [what, a, b] of [['static', staticA, staticB], ['ephemeral', ephA, ephB], ['static × ephemeral', staticA, ephB]] as const) {
    const ab = x25519(a.privateKey, b.publicKey);
    const ba = x25519(b.privateKey, a.publicKey);
    t.equal(ab.length, 32, `${what}: 32 bytes`);
    t.ok(ab.equals(ba), `${what}: both sides agree`);
  }
  t.equal(staticA.publicKey.length, 32, 'raw public key is 32 bytes');
  t.notOk(x25519(staticA.privateKey, staticB.publicKey).equals(x25519(ephA.privateKey, ephB.publicKey)), 'different pairs, different secrets');
  t.notOk(x25519(staticA.privateKey, staticB.publicKey).equals(x25519(staticA.privateKey, ephB.publicKey)), 'different peer, different secret');
});

t.test('raw private key round trip', async (t) => {
  const k = generateX25519();
  const raw = rawPrivate(k.privateKey);
  t.equal(raw.length, 32);
  const back = x25519FromPrivate(raw);
  t.ok(back.publicKey.equals(k.publicKey), 'same public key');
  t.ok(rawPrivate(back.privateKey).equals(raw), 'same raw private key');
  const peer = generateX25519();
  t.ok(x25519(back.privateKey, peer.publicKey).equals(x25519(k.privateKey, peer.publicKey)), 'same shared secret');
  t.throws(() => x25519FromPrivate(raw.subarray(0, 31)), KeyError, '31-byte private key');
  t.throws(() => x25519FromPrivate(Buffer.concat([raw, Buffer.from([0])])), KeyError, '33-byte private key');
  t.throws(() => x25519(k.privateKey, peer.publicKey.subarray(0, 31)), KeyError, '31-byte public key');
});

t.test('RFC 7748 §6.1 test vector', async (t) => {
  const alicePriv = hex('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a');
  const alicePub = hex('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
  const bobPriv = hex('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb');
  const bobPub = hex('de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f');
  const shared = hex('4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742');
  const alice = x25519FromPrivate(alicePriv);
  const bob = x25519FromPrivate(bobPriv);
  t.equal(alice.publicKey.toString('hex'), alicePub.toString('hex'), "Alice's public key");
  t.equal(bob.publicKey.toString('hex'), bobPub.toString('hex'), "Bob's public key");
  t.equal(x25519(alice.privateKey, bobPub).toString('hex'), shared.toString('hex'), 'Alice computes K');
  t.equal(x25519(bob.privateKey, alicePub).toString('hex'), shared.toString('hex'), 'Bob computes K');
  t.ok(rawPrivate(alice.privateKey).equals(alicePriv), 'the raw private key is exported unchanged');
});

t.test('low-order public keys are refused with KeyError', async (t) => {
  const k = generateX25519();
  const lowOrder: [string, string][] = [
    ['0 (all zero)', '00'.repeat(32)],
    ['1', '01' + '00'.repeat(31)],
    ['order 8', 'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800'],
    ['order 8 (other)', '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157'],
    ['p − 1', 'ec' + 'ff'.repeat(30) + '7f'],
    ['p', 'ed' + 'ff'.repeat(30) + '7f'],
    ['p + 1', 'ee' + 'ff'.repeat(30) + '7f'],
  ];
  for (const [what, pub] of lowOrder) {
    let e: unknown = null;
    try {
      x25519(k.privateKey, hex(pub));
    } catch (err) {
      e = err;
    }
    t.ok(e instanceof KeyError, `${what}: KeyError (got ${String(e)})`);
    if (e instanceof KeyError) t.match(e.message, /low order/);
  }
});

/** Both ends of one tunnel: static keys registered at the DC, ephemeral keys and nonces per tunnel. */
interface Side {
  static: X25519Pair;
  eph: X25519Pair;
}

function setup() {
  const i: Side = { static: generateX25519(), eph: generateX25519() };
  const r: Side = { static: generateX25519(), eph: generateX25519() };
  const ktmp = randomBytes(32);
  const transcript: Transcript = {
    routeId: 0x01020304,
    initiatorSpi: 0x1000,
    responderSpi: 0x2000,
    initiatorEphemeral: i.eph.publicKey,
    responderEphemeral: r.eph.publicKey,
    initiatorNonce: randomBytes(32),
    responderNonce: randomBytes(32),
  };
  const initiatorKmncn = (ktmpI = ktmp, tr = transcript) =>
    deriveKmncn(ktmpI, x25519(i.static.privateKey, r.static.publicKey), x25519(i.eph.privateKey, tr.responderEphemeral), tr);
  const responderKmncn = (ktmpR = ktmp, tr = transcript) =>
    deriveKmncn(ktmpR, x25519(r.static.privateKey, i.static.publicKey), x25519(r.eph.privateKey, tr.initiatorEphemeral), tr);
  return { i, r, ktmp, transcript, initiatorKmncn, responderKmncn };
}

t.test('deriveKmncn: both sides get the same key; every input changes it', async (t) => {
  const s = setup();
  const base = s.initiatorKmncn();
  t.equal(base.length, 32);
  t.ok(base.equals(s.responderKmncn()), 'initiator and responder agree');
  t.ok(base.equals(s.initiatorKmncn()), 'deterministic');

  const staticShared = x25519(s.i.static.privateKey, s.r.static.publicKey);
  const ephShared = x25519(s.i.eph.privateKey, s.r.eph.publicKey);
  const other = generateX25519();
  const variants: [string, Buffer][] = [
    ['Ktmp', deriveKmncn(randomBytes(32), staticShared, ephShared, s.transcript)],
    ['route id', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, routeId: s.transcript.routeId + 1 })],
    ['initiator nonce', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, initiatorNonce: randomBytes(32) })],
    ['responder nonce', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, responderNonce: randomBytes(32) })],
    ['initiator ephemeral in the transcript', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, initiatorEphemeral: other.publicKey })],
    ['responder ephemeral in the transcript', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, responderEphemeral: other.publicKey })],
    ['initiator SPI', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, initiatorSpi: 0x1001 })],
    ['responder SPI', deriveKmncn(s.ktmp, staticShared, ephShared, { ...s.transcript, responderSpi: 0x2001 })],
    ['ephemeral exchange', deriveKmncn(s.ktmp, staticShared, x25519(other.privateKey, s.r.eph.publicKey), s.transcript)],
    ['static exchange', deriveKmncn(s.ktmp, x25519(other.privateKey, s.r.static.publicKey), ephShared, s.transcript)],
    ['static and ephemeral swapped', deriveKmncn(s.ktmp, ephShared, staticShared, s.transcript)],
  ];
  const all = [base.toString('hex'), ...variants.map(([, k]) => k.toString('hex'))];
  for (const [what, k] of variants) t.notOk(k.equals(base), `a different ${what} gives a different key`);
  t.equal(new Set(all).size, all.length, 'all variants pairwise distinct');

  // A responder that was given another Ktmp, or sees a replaced ephemeral, does not agree.
  t.notOk(s.responderKmncn(randomBytes(32)).equals(base), 'responder with another Ktmp disagrees');
  const mitm = generateX25519();
  const tampered = { ...s.transcript, initiatorEphemeral: mitm.publicKey };
  t.notOk(s.responderKmncn(s.ktmp, tampered).equals(base), 'a swapped initiator ephemeral breaks agreement');
});

t.test('deriveSaKeys: two directions, right sizes, bound to Kmncn and suite', async (t) => {
  const kmncn = randomBytes(32);
  for (const suite of ['chacha20-poly1305', 'aes-gcm'] as const) {
    const k = deriveSaKeys(kmncn, suite);
    t.equal(k.i2r.key.length, 32, `${suite}: i2r key 32 bytes`);
    t.equal(k.r2i.key.length, 32, `${suite}: r2i key 32 bytes`);
    t.equal(k.i2r.salt.length, 4, `${suite}: i2r salt 4 bytes`);
    t.equal(k.r2i.salt.length, 4, `${suite}: r2i salt 4 bytes`);
    t.notOk(k.i2r.key.equals(k.r2i.key), `${suite}: i2r key ≠ r2i key`);
    t.notOk(k.i2r.salt.equals(k.r2i.salt), `${suite}: i2r salt ≠ r2i salt`);
    const again = deriveSaKeys(kmncn, suite);
    t.ok(again.i2r.key.equals(k.i2r.key) && again.r2i.salt.equals(k.r2i.salt), `${suite}: deterministic`);
    const other = deriveSaKeys(randomBytes(32), suite);
    t.notOk(other.i2r.key.equals(k.i2r.key), `${suite}: another Kmncn, other keys`);
  }
  const c = deriveSaKeys(kmncn, 'chacha20-poly1305');
  const g = deriveSaKeys(kmncn, 'aes-gcm');
  t.notOk(c.i2r.key.equals(g.i2r.key), 'the suite is part of the derivation');
});

t.test('key confirmation', async (t) => {
  const s = setup();
  const kmncn = s.responderKmncn();
  const confirm = keyConfirmation(kmncn, s.transcript);
  t.equal(confirm.length, 32, 'fits the 32-byte confirm field of the Tunnel Response');
  t.ok(confirmationMatches(s.initiatorKmncn(), s.transcript, confirm), 'the initiator accepts the responder’s proof');
  t.notOk(confirmationMatches(kmncn, { ...s.transcript, routeId: 99 }, confirm), 'other route id');
  t.notOk(confirmationMatches(kmncn, { ...s.transcript, responderNonce: randomBytes(32) }, confirm), 'other responder nonce');
  t.notOk(confirmationMatches(kmncn, { ...s.transcript, responderSpi: 0x2001 }, confirm), 'other responder SPI');
  t.notOk(confirmationMatches(randomBytes(32), s.transcript, confirm), 'other Kmncn');
  const flipped = Buffer.from(confirm);
  flipped[31]! ^= 1;
  t.notOk(confirmationMatches(kmncn, s.transcript, flipped), 'one bit flipped');
  t.notOk(confirmationMatches(kmncn, s.transcript, confirm.subarray(0, 31)), 'truncated (no throw)');
  t.notOk(confirmationMatches(kmncn, s.transcript, Buffer.alloc(0)), 'empty (no throw)');
  t.notOk(keyConfirmation(kmncn, s.transcript).equals(kmncn), 'the proof is not the key');
});

t.test('suite codes', async (t) => {
  for (const [suite, code] of Object.entries(SUITE_CODES)) t.equal(suiteFromCode(code), suite);
  t.equal(suiteFromCode(0), null);
  t.equal(suiteFromCode(3), null);
  for (let i = 0; i < 100; i++) t.not(randomId32(), 0);
});

function seal(sa: OutboundSa, inner: Buffer): Buffer {
  const out = Buffer.alloc(inner.length + ESP_MAX_OVERHEAD);
  const n = sa.seal(inner, 0, inner.length, nextHeaderFor(inner, 0), out, 0);
  return out.subarray(0, n);
}

function open(sa: InboundSa, pkt: Buffer): Buffer | number {
  const out = Buffer.alloc(pkt.length);
  const n = sa.open(pkt, 0, pkt.length, out, 0);
  return n < 0 ? n : out.subarray(0, n);
}

t.test('end to end: SAs derived by initiator and responder interoperate through ESP', async (t) => {
  for (const suite of ['chacha20-poly1305', 'aes-gcm'] as EspSuite[]) {
    const s = setup();
    const { initiatorSpi, responderSpi } = s.transcript;
    // Each side derives on its own, exactly as tunnel/setup.ts does.
    const ik = deriveSaKeys(s.initiatorKmncn(), suite);
    const rk = deriveSaKeys(s.responderKmncn(), suite);
    const initiator = {
      out: new OutboundSa({ spi: responderSpi, suite, ...ik.i2r }),
      in: new InboundSa({ spi: initiatorSpi, suite, ...ik.r2i }),
    };
    const responder = {
      out: new OutboundSa({ spi: initiatorSpi, suite, ...rk.r2i }),
      in: new InboundSa({ spi: responderSpi, suite, ...rk.i2r }),
    };

    const request = udpPacket('10.77.0.1', '10.77.0.2', 40000, 53, Buffer.from('hello over the tunnel'));
    const esp = seal(initiator.out, request);
    t.equal(esp.readUInt32BE(0), responderSpi, `${suite}: i → r carries the responder's SPI`);
    t.equal(esp.indexOf(Buffer.from('hello over the tunnel')), -1, `${suite}: payload not in clear`);
    const got = open(responder.in, esp);
    t.ok(Buffer.isBuffer(got) && got.equals(request), `${suite}: responder opens the initiator's IPv4 packet`);
    t.equal(responder.in.nextHeader, NEXT_HEADER_IPV4);

    const reply = icmpEcho('10.77.0.2', '10.77.0.1', 7, 1);
    const back = open(initiator.in, seal(responder.out, reply));
    t.ok(Buffer.isBuffer(back) && back.equals(reply), `${suite}: initiator opens the responder's reply`);

    const v6 = udpPacket('fd4e:544d:1::1', 'fd4e:544d:1::2', 1234, 5678, randomBytes(300));
    const v6back = open(responder.in, seal(initiator.out, v6));
    t.ok(Buffer.isBuffer(v6back) && v6back.equals(v6), `${suite}: IPv6 inner packet`);
    t.equal(responder.in.nextHeader, NEXT_HEADER_IPV6);

    // The directions are separate keys: a packet cannot be reflected back to its sender.
    const reflected = seal(initiator.out, request);
    t.equal(open(new InboundSa({ spi: initiatorSpi, suite, ...ik.r2i }), reflected), EspDrop.badIcv, `${suite}: i2r packet does not open under r2i`);

    // A responder whose DC gave it another Ktmp derives other SAs.
    const wrong = deriveSaKeys(s.responderKmncn(randomBytes(32)), suite);
    t.equal(open(new InboundSa({ spi: responderSpi, suite, ...wrong.i2r }), seal(initiator.out, request)), EspDrop.badIcv, `${suite}: another Ktmp cannot open`);
  }
});
