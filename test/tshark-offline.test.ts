// An independent decoder agrees with ours: packets sealed by OutboundSa, wrapped in UDP (RFC 3948)
// and outer IPv4/IPv6, written to a pcap; tshark, given the SA keys, must verify the ICV and find
// the inner packets we put in. With a wrong key or salt it must not.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ESP_MAX_OVERHEAD, OutboundSa, nextHeaderFor, type EspSuite } from '../protocol/esp.js';
import {
  TSHARK, tsharkArgs, tsharkDecrypt, tsharkSupportsChacha, tsharkVersion, writePcap, type TsharkSa,
} from './tools/tshark.js';
import { icmpEcho, udpPacket } from './tools/packets.js';

interface Flow {
  name: string;
  suite: EspSuite;
  keyLength: number;
  spi: number;
  outerSrc: string;
  outerDst: string;
  port: number;
  inners: Buffer[];
}

interface Built {
  sa: TsharkSa;
  packets: Buffer[];
  /** Per packet: what tshark must report. */
  expect: { spi: number; seq: number; innerSrc: string; innerDst: string; innerProto: number; inner: Buffer }[];
}

function keyFor(flow: Flow): { key: Buffer; salt: Buffer } {
  const key = Buffer.alloc(flow.keyLength);
  for (let i = 0; i < key.length; i++) key[i] = (flow.spi * 7 + i * 13) & 0xff;
  const salt = Buffer.from([0xa0, 0xa1, 0xa2, (flow.spi & 0xff) ^ 0x5c]);
  return { key, salt };
}

function build(flow: Flow): Built {
  const { key, salt } = keyFor(flow);
  const out = new OutboundSa({ spi: flow.spi, suite: flow.suite, key, salt });
  const packets: Buffer[] = [];
  const expect: Built['expect'] = [];
  for (const inner of flow.inners) {
    const esp = Buffer.alloc(inner.length + ESP_MAX_OVERHEAD);
    const n = out.seal(inner, 0, inner.length, nextHeaderFor(inner, 0), esp, 0);
    packets.push(udpPacket(flow.outerSrc, flow.outerDst, flow.port, flow.port, esp.subarray(0, n)));
    const v6 = inner[0]! >>> 4 === 6;
    expect.push({
      spi: flow.spi,
      seq: out.seq,
      innerSrc: v6 ? normalize6(inner.subarray(8, 24)) : inner.subarray(12, 16).join('.'),
      innerDst: v6 ? normalize6(inner.subarray(24, 40)) : inner.subarray(16, 20).join('.'),
      innerProto: v6 ? inner[6]! : inner[9]!,
      inner,
    });
  }
  const sa: TsharkSa = {
    family: flow.outerSrc.includes(':') ? 6 : 4,
    src: flow.outerSrc,
    dst: flow.outerDst,
    spi: flow.spi,
    suite: flow.suite,
    key,
    salt,
  };
  return { sa, packets, expect };
}

/** RFC 5952 text of an IPv6 address (what tshark -n prints). */
function normalize6(b: Buffer): string {
  const words = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) { bestAt = i; bestLen = j - i; }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestAt < 0) return hex.join(':');
  return hex.slice(0, bestAt).join(':') + '::' + hex.slice(bestAt + bestLen).join(':');
}

// ---- the flows -------------------------------------------------------------------------------

// Ports 53 and 5353 with payloads that are not DNS on purpose: a fully dissecting tshark 4.0 throws
// "Malformed Packet" inside the inner packet and then omits the ICV verdict (see tools/tshark.ts).
const innerV4a = udpPacket('10.1.0.1', '10.2.0.7', 40000, 53, Buffer.from('inner ipv4 over aes-gcm-128'));
const innerV6a = udpPacket('fd00:1::1', 'fd00:2::7', 40001, 443, Buffer.from('inner ipv6, odd length.'));
const innerV4b = icmpEcho('10.2.0.7', '10.1.0.1', 0x4242, 1);
const innerV6b = udpPacket('fd00:2::7', 'fd00:1::1', 5353, 5353, Buffer.alloc(1000, 0x77));

const flows: Flow[] = [
  {
    name: 'aes-gcm-128, outer IPv4, port 4500', suite: 'aes-gcm', keyLength: 16, spi: 0x00001001,
    outerSrc: '192.0.2.1', outerDst: '198.51.100.2', port: 4500, inners: [innerV4a, innerV6a, innerV4a],
  },
  {
    name: 'aes-gcm-256, outer IPv4, port 4500', suite: 'aes-gcm', keyLength: 32, spi: 0xc0ffee01,
    outerSrc: '198.51.100.2', outerDst: '192.0.2.1', port: 4500, inners: [innerV4b, innerV6b],
  },
  {
    name: 'aes-gcm-128, outer IPv6, port 4500', suite: 'aes-gcm', keyLength: 16, spi: 0x00002002,
    outerSrc: '2001:db8::1', outerDst: '2001:db8:1::2', port: 4500, inners: [innerV6a, innerV4b],
  },
  {
    name: 'aes-gcm-256, outer IPv4, port 14500 (-d udpencap)', suite: 'aes-gcm', keyLength: 32, spi: 0x00003003,
    outerSrc: '203.0.113.9', outerDst: '192.0.2.1', port: 14500, inners: [innerV4a, innerV6b],
  },
];
const chachaFlow: Flow = {
  name: 'chacha20-poly1305, outer IPv4, port 4500', suite: 'chacha20-poly1305', keyLength: 32, spi: 0x00004004,
  outerSrc: '192.0.2.1', outerDst: '198.51.100.2', port: 4500, inners: [innerV4a, innerV6b],
};

// ---- the tests -------------------------------------------------------------------------------

const version = await tsharkVersion();
if (version === null) {
  t.plan(0, `${TSHARK} not found`);
} else {
  const dir = mkdtempSync(join(tmpdir(), 'tshark-offline-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.comment(`tshark ${version}`);

  const withChacha = await tsharkSupportsChacha();
  const all = withChacha ? [...flows, chachaFlow] : flows;
  const built = all.map(build);
  const pcap = join(dir, 'esp.pcap');
  writePcap(pcap, built.flatMap((b) => b.packets));
  const expected = built.flatMap((b, fi) => b.expect.map((e) => ({ ...e, flow: all[fi]!.name })));
  const sas = built.map((b) => b.sa);
  const udpPorts = [...new Set(all.map((f) => f.port))];

  t.test('tshark verifies the ICV and finds the inner packets', async (t) => {
    const args = await tsharkArgs(pcap, sas, { udpPorts });
    t.comment(`WIRESHARK_CONFIG_DIR=<profile with only link, ip, ipv6, udp, udpencap, esp, data enabled> ${TSHARK} ${args.map((a) => (/^[\w.\-/=:|]+$/.test(a) ? a : `'${a}'`)).join(' ')}`);
    const got = await tsharkDecrypt(pcap, sas, { udpPorts });
    t.equal(got.length, expected.length, 'one ESP packet per frame');
    got.forEach((g, i) => {
      const e = expected[i]!;
      const what = `frame ${g.frame} (${e.flow}, seq ${e.seq})`;
      t.equal(g.frame, i + 1, `${what}: frame number`);
      t.equal(g.spi, e.spi, `${what}: SPI`);
      t.equal(g.seq, e.seq, `${what}: sequence number`);
      t.equal(g.icvGood, true, `${what}: ICV good`);
      t.equal(g.innerSrc, e.innerSrc, `${what}: inner source`);
      t.equal(g.innerDst, e.innerDst, `${what}: inner destination`);
      t.equal(g.innerProto, e.innerProto, `${what}: inner protocol`);
      t.ok(g.decryptedHex?.startsWith(e.inner.toString('hex')), `${what}: decrypted payload begins with the inner packet`);
    });
  });

  t.test('chacha20-poly1305', { skip: withChacha ? false : `tshark ${version} has no ChaCha20-Poly1305 for ESP` }, async (t) => {
    t.ok(withChacha);
  });

  const wrong = (mutate: (sa: TsharkSa) => TsharkSa) => sas.map(mutate);
  const flipKey = (sa: TsharkSa): TsharkSa => {
    const key = Buffer.from(sa.key);
    key[0]! ^= 0x01;
    return { ...sa, key };
  };
  const flipSalt = (sa: TsharkSa): TsharkSa => {
    const salt = Buffer.from(sa.salt);
    salt[3]! ^= 0x80;
    return { ...sa, salt };
  };

  for (const [label, mutated] of [
    ['a wrong key', wrong(flipKey)],
    ['a wrong salt', wrong(flipSalt)],
  ] as const) {
    t.test(`with ${label}, tshark reports no good ICV and no inner packet`, async (t) => {
      const got = await tsharkDecrypt(pcap, mutated, { udpPorts });
      t.equal(got.length, expected.length, 'still one ESP packet per frame');
      got.forEach((g, i) => {
        const e = expected[i]!;
        const what = `frame ${g.frame} (${e.flow})`;
        t.equal(g.spi, e.spi, `${what}: SPI still read`);
        t.not(g.icvGood, true, `${what}: ICV not good`);
        t.equal(g.icvGood, false, `${what}: ICV reported bad`);
        t.not(g.innerSrc, e.innerSrc, `${what}: inner source not found`);
        t.not(g.innerDst, e.innerDst, `${what}: inner destination not found`);
      });
    });
  }

  t.test('without SAs, tshark sees ESP but checks and decodes nothing', async (t) => {
    const got = await tsharkDecrypt(pcap, [], { udpPorts });
    t.equal(got.length, expected.length);
    for (const g of got) {
      t.equal(g.icvGood, null, `frame ${g.frame}: ICV not checked`);
      t.equal(g.innerSrc, null, `frame ${g.frame}: no inner packet`);
    }
  });

  t.test('a tampered ciphertext byte fails the ICV', async (t) => {
    const b = built[0]!;
    const pkt = Buffer.from(b.packets[0]!);
    pkt[pkt.length - 20]! ^= 0x01; // inside the ciphertext (before the 16-octet ICV)
    const path = join(dir, 'tampered.pcap');
    writePcap(path, [pkt]);
    const [g] = await tsharkDecrypt(path, [b.sa]);
    t.equal(g?.icvGood, false, 'ICV bad');
  });

  t.test('full dissection: a malformed inner payload hides the ICV verdict (why the profile is restricted)', async (t) => {
    const got = await tsharkDecrypt(pcap, sas, { udpPorts, fullDissection: true });
    const first = got[0]!;
    t.equal(first.innerSrc, expected[0]!.innerSrc, 'still decrypted');
    t.not(first.icvGood, true, 'but no ICV verdict after "Malformed Packet: DNS"');
    t.equal(got[3]!.icvGood, true, 'a packet whose payload dissects cleanly (ICMP echo) has its verdict');
  });

  t.test('writePcap: link types 228 (IPv4) and 229 (IPv6)', async (t) => {
    for (const [family, linktype] of [[4, 228], [6, 229]] as const) {
      const b = built.find((x) => x.sa.family === family)!;
      const path = join(dir, `lt${linktype}.pcap`);
      writePcap(path, b.packets, linktype);
      const got = await tsharkDecrypt(path, [b.sa]);
      t.same(got.map((g) => [g.icvGood, g.innerSrc]), b.expect.map((e) => [true, e.innerSrc]), `linktype ${linktype}`);
    }
  });
}
