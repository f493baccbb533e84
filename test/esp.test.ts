// ESP codec: published vectors, round trips, and every malformed-input drop reason.
import t from 'tap';
import { createCipheriv } from 'node:crypto';
import {
  EspDrop, EspKeyError, InboundSa, OutboundSa, REPLAY_WINDOW, SEAL_EXHAUSTED, SEQ_MAX, ESP_MAX_OVERHEAD,
  NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, type EspSuite,
} from '../protocol/esp.js';
import { classifyDatagram, DatagramKind, frameControl } from '../protocol/demux.js';
import { espVectors } from './fixtures/esp-vectors.js';

const hex = (s: string) => Buffer.from(s, 'hex');

function pair(suite: EspSuite, keyLength = 32) {
  const params = { spi: 0x1234, suite, key: Buffer.alloc(keyLength, 7), salt: Buffer.from('a0a1a2a3', 'hex') };
  return { out: new OutboundSa(params), inb: new InboundSa(params) };
}

function ipv4Packet(length: number): Buffer {
  const p = Buffer.alloc(length, 0xab);
  p[0] = 0x45;
  p.writeUInt16BE(length, 2);
  return p;
}

function ipv6Packet(length: number): Buffer {
  const p = Buffer.alloc(length, 0xcd);
  p[0] = 0x60;
  p.writeUInt16BE(length - 40, 4);
  return p;
}

t.test('published vectors decrypt to the published inner packets', async (t) => {
  t.ok(espVectors.length >= 3, 'vectors for both suites are present');
  for (const v of espVectors) {
    const sa = new InboundSa({ spi: v.spi, suite: v.suite, key: hex(v.key), salt: hex(v.salt) });
    const pkt = hex(v.espPacket);
    const out = Buffer.alloc(pkt.length);
    const n = sa.open(pkt, 0, pkt.length, out, 0);
    if (v.nextHeader === NEXT_HEADER_IPV4 || v.nextHeader === NEXT_HEADER_IPV6) {
      t.equal(n, v.innerPacket.length / 2, `${v.name}: inner length`);
      t.equal(out.subarray(0, n).toString('hex'), v.innerPacket, `${v.name}: inner packet`);
      t.equal(sa.nextHeader, v.nextHeader, `${v.name}: next header`);
    } else {
      // The draft's cases carry next header 1 (transport mode): authenticated, then refused.
      t.equal(n, EspDrop.badNextHeader, `${v.name}: authenticated but not tunnel mode`);
      t.equal(sa.highestSeq, v.seq, `${v.name}: authenticated packet moved the window`);
    }
    const tampered = Buffer.from(pkt);
    tampered[tampered.length - 1]! ^= 1;
    const sa2 = new InboundSa({ spi: v.spi, suite: v.suite, key: hex(v.key), salt: hex(v.salt) });
    t.equal(sa2.open(tampered, 0, tampered.length, out, 0), EspDrop.badIcv, `${v.name}: tampered ICV`);
  }
});

t.test('seal produces what the AEAD of the RFCs produces (nonce = salt || seq IV, AAD = SPI || seq)', async (t) => {
  for (const suite of ['chacha20-poly1305', 'aes-gcm'] as const) {
    const { out } = pair(suite);
    const inner = ipv4Packet(61);
    const buf = Buffer.alloc(200);
    const n = out.seal(inner, 0, inner.length, NEXT_HEADER_IPV4, buf, 0);
    const seq = Buffer.from('0000000000000001', 'hex');
    const nonce = Buffer.concat([hex('a0a1a2a3'), seq]);
    const c = createCipheriv(suite === 'aes-gcm' ? 'aes-256-gcm' : 'chacha20-poly1305', Buffer.alloc(32, 7), nonce, { authTagLength: 16 } as never) as ReturnType<typeof createCipheriv> & { getAuthTag(): Buffer; setAAD(b: Buffer, o?: object): void };
    c.setAAD(Buffer.concat([hex('00001234'), hex('00000001')]), { plaintextLength: 64 });
    const plain = Buffer.concat([inner, Buffer.from([1, 2, 3 - 2 + 0]).subarray(0, 1), Buffer.from([1, NEXT_HEADER_IPV4])]);
    const expected = Buffer.concat([hex('0000123400000001'), seq, c.update(plain), c.final(), c.getAuthTag()]);
    t.equal(n, expected.length, `${suite}: length`);
    t.equal(buf.subarray(0, n).toString('hex'), expected.toString('hex'), `${suite}: bytes`);
  }
});

t.test('round trip, both suites, IPv4 and IPv6, every padding length', async (t) => {
  for (const suite of ['chacha20-poly1305', 'aes-gcm'] as const) {
    for (const keyLength of suite === 'aes-gcm' ? [16, 32] : [32]) {
      const { out, inb } = pair(suite, keyLength);
      for (const make of [ipv4Packet, ipv6Packet]) {
        for (let length = 40; length < 48; length++) {
          const inner = make(length);
          const wire = Buffer.alloc(length + ESP_MAX_OVERHEAD);
          const n = out.seal(inner, 0, length, make === ipv4Packet ? 4 : 41, wire, 0);
          t.equal((n - 16 - 16) % 4, 0, 'ciphertext is 4-octet aligned');
          const back = Buffer.alloc(length);
          t.equal(inb.open(wire, 0, n, back, 0), length);
          t.same(back, inner);
        }
      }
    }
  }
});

t.test('malformed input is a drop code, never a throw', async (t) => {
  const { out, inb } = pair('aes-gcm');
  const inner = ipv4Packet(100);
  const wire = Buffer.alloc(200);
  const n = out.seal(inner, 0, 100, 4, wire, 0);
  const scratch = Buffer.alloc(200);
  for (let cut = 0; cut < 34; cut++) t.equal(inb.open(wire, 0, cut, scratch, 0), EspDrop.truncated, `truncated to ${cut}`);
  t.equal(inb.open(wire, 0, n - 1, scratch, 0), EspDrop.badIcv, 'one byte short');
  const flipped = Buffer.from(wire.subarray(0, n));
  flipped[30]! ^= 0x80;
  t.equal(inb.open(flipped, 0, n, scratch, 0), EspDrop.badIcv, 'flipped ciphertext bit');
  const badSeq = Buffer.from(wire.subarray(0, n));
  badSeq.writeUInt32BE(2, 4);
  t.equal(inb.open(badSeq, 0, n, scratch, 0), EspDrop.badIcv, 'sequence number is authenticated');
  t.equal(inb.open(wire, 0, n, scratch, 0), 100, 'genuine packet still accepted after the bad ones');
  t.equal(inb.open(wire, 0, n, scratch, 0), EspDrop.replayed, 'replayed');
});

t.test('bad padding and dummy packets are counted, not delivered', async (t) => {
  const key = Buffer.alloc(32, 9);
  const salt = hex('01020304');
  const inb = new InboundSa({ spi: 300, suite: 'chacha20-poly1305', key, salt });
  const craft = (seq: number, plain: Buffer) => {
    const header = Buffer.alloc(16);
    header.writeUInt32BE(300, 0);
    header.writeUInt32BE(seq, 4);
    header.writeUInt32BE(seq, 12);
    const c = createCipheriv('chacha20-poly1305', key, Buffer.concat([salt, header.subarray(8, 16)]), { authTagLength: 16 });
    c.setAAD(header.subarray(0, 8), { plaintextLength: plain.length });
    return Buffer.concat([header, c.update(plain), c.final(), c.getAuthTag()]);
  };
  const body = ipv4Packet(20);
  const scratch = Buffer.alloc(100);
  const badPad = craft(1, Buffer.concat([body, Buffer.from([1, 9, 2, 4])]));
  t.equal(inb.open(badPad, 0, badPad.length, scratch, 0), EspDrop.badPadding, 'pad bytes not 1, 2');
  const longPad = craft(2, Buffer.from([200, 4]));
  t.equal(inb.open(longPad, 0, longPad.length, scratch, 0), EspDrop.badPadding, 'pad length beyond payload');
  const dummy = craft(3, Buffer.concat([body, Buffer.from([1, 2, 2, 59])]));
  t.equal(inb.open(dummy, 0, dummy.length, scratch, 0), EspDrop.dummy, 'next header 59');
  const transport = craft(4, Buffer.concat([body, Buffer.from([1, 2, 2, 17])]));
  t.equal(inb.open(transport, 0, transport.length, scratch, 0), EspDrop.badNextHeader, 'next header 17');
  const good = craft(5, Buffer.concat([body, Buffer.from([1, 2, 2, 4])]));
  t.equal(inb.open(good, 0, good.length, scratch, 0), 20, 'well-formed packet');
});

t.test('anti-replay window: out of order inside the window, duplicates and too old outside', async (t) => {
  const { out, inb } = pair('chacha20-poly1305');
  const inner = ipv4Packet(20);
  const packets: Buffer[] = [];
  for (let i = 0; i < REPLAY_WINDOW + 100; i++) {
    const b = Buffer.alloc(80);
    packets.push(b.subarray(0, out.seal(inner, 0, 20, 4, b, 0)));
  }
  const scratch = Buffer.alloc(80);
  const open = (seq: number) => inb.open(packets[seq - 1]!, 0, packets[seq - 1]!.length, scratch, 0);
  t.equal(open(1000), 20);
  t.equal(open(10), 20, 'older, inside the window');
  t.equal(open(10), EspDrop.replayed, 'duplicate');
  t.equal(open(1001), 20);
  t.equal(open(999), 20, 'one behind the top');
  t.equal(open(REPLAY_WINDOW + 50), 20, 'jump forward');
  t.equal(open(50), EspDrop.tooOld, 'now outside the window');
  t.equal(open(51), 20, 'the oldest sequence number still inside the window');
  t.equal(open(1001), EspDrop.replayed, 'remembered across a shift of many words');
  t.equal(open(1002), 20, 'never seen, inside the window');
  t.equal(inb.replayCheck(0), EspDrop.replayed, 'sequence number 0 is never valid');
});

t.test('the sequence space is bounded: rekey signalled, then sealing stops', async (t) => {
  const { out } = pair('aes-gcm');
  const inner = ipv4Packet(20);
  const wire = Buffer.alloc(100);
  t.equal(out.needsRekey, false);
  out.seq = SEQ_MAX - 1;
  t.equal(out.needsRekey, true);
  t.ok(out.seal(inner, 0, 20, 4, wire, 0) > 0, 'last sequence number is used');
  t.equal(out.seal(inner, 0, 20, 4, wire, 0), SEAL_EXHAUSTED, 'never wraps');
});

t.test('bad keys are rejected with the reason', async (t) => {
  t.throws(() => new OutboundSa({ spi: 1000, suite: 'chacha20-poly1305', key: Buffer.alloc(16), salt: Buffer.alloc(4) }), EspKeyError);
  t.throws(() => new OutboundSa({ spi: 1000, suite: 'aes-gcm', key: Buffer.alloc(20), salt: Buffer.alloc(4) }), /key length 20/);
  t.throws(() => new OutboundSa({ spi: 1000, suite: 'aes-gcm', key: Buffer.alloc(16), salt: Buffer.alloc(3) }), /salt length 3/);
  t.throws(() => new OutboundSa({ spi: -1, suite: 'aes-gcm', key: Buffer.alloc(16), salt: Buffer.alloc(4) }), /SPI -1/);
});

t.test('demultiplexer', async (t) => {
  t.equal(classifyDatagram(Buffer.from([0xff]), 0, 1), DatagramKind.keepalive);
  t.equal(classifyDatagram(Buffer.from([0x00]), 0, 1), DatagramKind.invalid);
  t.equal(classifyDatagram(Buffer.alloc(3), 0, 3), DatagramKind.invalid);
  t.equal(classifyDatagram(Buffer.alloc(4), 0, 4), DatagramKind.invalid, 'marker with no message');
  t.equal(classifyDatagram(frameControl(Buffer.from([1, 2])), 0, 6), DatagramKind.control);
  const esp = Buffer.alloc(40);
  esp.writeUInt32BE(0x1234, 0);
  t.equal(classifyDatagram(esp, 0, 40), DatagramKind.esp);
  t.equal(classifyDatagram(esp, 0, 33), DatagramKind.invalid, 'shorter than any ESP packet');
  esp.writeUInt32BE(255, 0);
  t.equal(classifyDatagram(esp, 0, 40), DatagramKind.invalid, 'reserved SPI');
});

t.test('anti-replay window agrees with a reference model over a random arrival order', async (t) => {
  const { out, inb } = pair('aes-gcm', 16);
  const inner = ipv4Packet(20);
  const total = 60_000;
  const packets: Buffer[] = [];
  for (let i = 0; i < total; i++) {
    const b = Buffer.alloc(80);
    packets.push(b.subarray(0, out.seal(inner, 0, 20, 4, b, 0)));
  }
  const seen = new Set<number>();
  let highest = 0;
  let seed = 7;
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const scratch = Buffer.alloc(80);
  let mismatches = 0;
  let cursor = 1;
  for (let step = 0; step < 6000; step++) {
    // Mostly in order with holes, plus reordering, duplicates, packets at the window's edge and jumps.
    const r = rand(20);
    const edge = highest - REPLAY_WINDOW + 32 - rand(64);
    const seq = Math.max(
      1,
      Math.min(total, r < 11 ? (cursor += 1 + rand(3)) : r < 14 ? cursor - rand(2 * REPLAY_WINDOW) : r < 17 ? edge : r < 19 ? cursor : (cursor += rand(300))),
    );
    const want = seq > highest ? 20 : highest - seq >= REPLAY_WINDOW ? EspDrop.tooOld : seen.has(seq) ? EspDrop.replayed : 20;
    const got = inb.open(packets[seq - 1]!, 0, packets[seq - 1]!.length, scratch, 0);
    if (got !== want) mismatches++;
    if (want === 20) {
      seen.add(seq);
      highest = Math.max(highest, seq);
    }
  }
  t.ok(cursor < total, 'the walk never hit the end of the packets (the window kept moving)');
  t.equal(mismatches, 0, 'every accept and drop matches the model');
});
