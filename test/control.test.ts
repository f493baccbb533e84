// Control messages (protocol/control.ts) and the authenticated channel (protocol/channel.ts):
// round trips of every message, the byte layout of the envelope and of a body, every way a
// datagram can be malformed, random fuzz, and the channel's replay, duplicate, retransmission and
// key handling driven by an in-memory network, a fake clock and fake timers.
import t, { type Test } from 'tap';
import { createCipheriv, randomBytes } from 'node:crypto';
import {
  AuthError, CONTROL_VERSION, DecodeError, DirectionFlags, HOLE_PUNCH_PAD, NotifyReason, PathKind, HEADER_SIZE, KeyClass, MESSAGES, Role, Status, TAG_SIZE, ZERO_KEY,
  decodeBody, decodeTlsMessage, encodeBody, encodeTlsMessage, openMessage, readHeader, sealMessage,
  type Body, type Envelope, type MessageName,
} from '../protocol/control.js';
import { ControlChannel, REPLAY_WINDOW_MS, RequestTimeout, type Incoming, type RetransmitPolicy, type SendKey } from '../protocol/channel.js';
import { NON_ESP_MARKER_SIZE } from '../protocol/demux.js';
import { encodeSockaddr } from '../protocol/endpoint.js';

const T0 = 1_700_000_000_123;
const key32 = (fill: number) => Buffer.alloc(32, fill);
const KEY = key32(0x42);
const OTHER_KEY = key32(0x43);

type AnyBody = Record<string, unknown>;
const encodeAny = (type: MessageName, body: AnyBody): Buffer => encodeBody(type as never, body as never);
const sealAny = (type: MessageName, body: AnyBody, e: Omit<Envelope, 'version' | 'type'>, key: Buffer): Buffer =>
  sealMessage(type as never, body as never, e, key);

/** Reads and opens a sealed message as a receiver does. */
function open(buf: Buffer, key: Buffer) {
  return openMessage(buf, readHeader(buf), key);
}

/** An independent implementation of the envelope: header ‖ ChaCha20-Poly1305(plain) ‖ tag. */
function sealRaw(header: Buffer, plain: Buffer, key: Buffer): Buffer {
  const c = createCipheriv('chacha20-poly1305', key, header.subarray(4, 16), { authTagLength: TAG_SIZE });
  c.setAAD(header, { plaintextLength: plain.length });
  const ct = c.update(plain);
  c.final();
  return Buffer.concat([header, ct, c.getAuthTag()]);
}

function header(type: number, o: { version?: number; keyClass?: number; flags?: number; keyId?: number; messageId?: bigint; timestamp?: bigint } = {}): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h[0] = o.version ?? CONTROL_VERSION;
  h[1] = type;
  h[2] = o.keyClass ?? KeyClass.ntmdc;
  h[3] = o.flags ?? 0;
  h.writeUInt32BE(o.keyId ?? 7, 4);
  h.writeBigUInt64BE(o.messageId ?? 0x0102030405060708n, 8);
  h.writeBigUInt64BE(o.timestamp ?? BigInt(T0), 16);
  return h;
}

const names32 = Array.from({ length: 32 }, (_, i) => `h${i}.lan.r1.example`);
const vips4x32 = Array.from({ length: 32 }, (_, i) => `10.77.1.${i + 1}`);
const vips6x32 = Array.from({ length: 32 }, (_, i) => `fd4e:544d:1::${(i + 1).toString(16)}`);

/** Realistic bodies of every message; the mapped type makes the compiler ask for each one. */
const SAMPLES: { [N in MessageName]: Body<N>[] } = {
  registrationRequest: [
    { name: 'router-1.fleet.example', local: { address: '192.168.8.20', port: 40000 }, publicKey: key32(1) },
    { name: 'mn.example.com', local: { address: '2001:db8:0:1::5', port: 4500 }, publicKey: key32(2) },
    { name: 'mn.example.com', local: null, publicKey: ZERO_KEY },
  ],
  registrationResponse: [
    {
      inReplyTo: 0xfedcba9876543210n, status: Status.ok, name: 'router-1.fleet.example', vip4: '10.77.0.1', vip6: 'fd4e:544d:1::1',
      observed: { address: '203.0.113.7', port: 61000 }, keepaliveSeconds: 20, serverTime: T0,
    },
    {
      inReplyTo: 1n, status: Status.notRegistered, name: 'mn.example.com', vip4: null, vip6: null,
      observed: { address: '2001:db8::20', port: 65535 }, keepaliveSeconds: 0, serverTime: 0,
    },
  ],
  keepalive: [{ local: { address: '10.0.0.2', port: 1 } }, { local: { address: 'fe80::1', port: 4500 } }, { local: null }],
  keepaliveAck: [
    { inReplyTo: 0xffffffffffffffffn, status: Status.ok, observed: { address: '198.51.100.9', port: 4500 }, serverTime: Number.MAX_SAFE_INTEGER },
    { inReplyTo: 5n, status: Status.notAuthorized, observed: null, serverTime: T0 },
  ],
  directionRequest: [
    { source: 'router-1.fleet.example', target: 'b2.lan.router-2.fleet.example', flags: 0 },
    { source: 'router-1.fleet.example', target: 'www.example.org', flags: DirectionFlags.relay | DirectionFlags.general },
  ],
  nodeInformationRequest: [{ target: 'cn.example.org', requester: 'dc.example.com' }],
  nodeInformationResponse: [
    {
      inReplyTo: 77n, status: Status.ok, target: 'b2.lan.router-2.fleet.example', node: 'router-2.fleet.example',
      vip4: '10.77.0.2', vip6: 'fd4e:544d:1::2', nodeVips4: ['10.77.0.2', '10.77.0.3'], nodeVips6: ['fd4e:544d:1::2', 'fd4e:544d:1::3'],
      observed: { address: '203.0.113.99', port: 4500 }, local: { address: '192.168.9.1', port: 4500 }, publicKey: key32(3),
    },
    {
      inReplyTo: 78n, status: Status.unknownName, target: 'nobody.example.org', node: 'nobody.example.org',
      vip4: null, vip6: null, nodeVips4: [], nodeVips6: [], observed: null, local: null, publicKey: ZERO_KEY,
    },
    {
      inReplyTo: 79n, status: Status.ok, target: 'big.example', node: 'big.example', vip4: '10.77.1.1', vip6: 'fd4e:544d:1::1',
      nodeVips4: vips4x32, nodeVips6: vips6x32, observed: { address: '2001:db8::7', port: 4500 }, local: null, publicKey: key32(4),
    },
  ],
  routeDirection: [
    {
      inReplyTo: 0n, routeId: 0xffffffff, role: Role.initiator, ktun: key32(5), ktmp: key32(6), expiresAt: T0 + 3_600_000,
      localName: 'a1.lan.router-1.fleet.example', peerNode: 'router-2.fleet.example', peerName: 'b2.lan.router-2.fleet.example',
      peerVip4: '10.77.0.2', peerVip6: 'fd4e:544d:1::2', peerVips4: ['10.77.0.2'], peerVips6: ['fd4e:544d:1::2'],
      peerEndpoint: { address: '2001:db8:0:1::5', port: 4500 }, peerPublicKey: key32(7),
      path: PathKind.relay, peerCandidate: { address: '198.51.100.7', port: 61000 }, via: 'rs1.relay.example',
    },
    {
      inReplyTo: 123456789n, routeId: 1, role: Role.responder, ktun: key32(8), ktmp: key32(9), expiresAt: T0,
      localName: 'cn.example.org', peerNode: 'mn.example.com', peerName: 'mn.example.com',
      peerVip4: null, peerVip6: null, peerVips4: [], peerVips6: [], peerEndpoint: null, peerPublicKey: ZERO_KEY,
      path: PathKind.direct, peerCandidate: null, via: '',
    },
  ],
  relayDirection: [{ routeId: 42, ktun: key32(10), expiresAt: T0 + 60_000, nodeA: 'mn.example.com', nodeB: 'cn.example.org' }],
  ntmAck: [
    { inReplyTo: 9n, status: Status.ok, reason: '' },
    { inReplyTo: 10n, status: Status.keyMismatch, reason: '鍵が一致しません (key mismatch) ✓' },
    { inReplyTo: 11n, status: Status.badRequest, reason: 'x'.repeat(512) },
  ],
  tunnelRequest: [{ routeId: 42, node: 'mn.example.com', suite: 1, spi: 0x00010000, ephemeral: key32(11), nonce: key32(12) }],
  tunnelResponse: [{ inReplyTo: 99n, status: Status.ok, routeId: 42, spi: 0xfffffffe, ephemeral: key32(13), nonce: key32(14), confirm: key32(15) }],
  holePunching: [{ routeId: 42, node: 'mn.example.com', pad: HOLE_PUNCH_PAD }],
  holePunchingAck: [
    { inReplyTo: 100n, routeId: 42, observed: { address: '2001:db8:ffff::1', port: 33333 } },
    { inReplyTo: 101n, routeId: 43, observed: { address: '198.51.100.200', port: 4500 } },
  ],
  deregistration: [{ name: 'router-1.fleet.example' }],
  gatewayDirection: [
    {
      routeId: 7, ktun: key32(21), ktmp: key32(22), expiresAt: T0, node: 'router-1.fleet.example', nodeName: 'router-1.fleet.example',
      nodeVips4: ['10.77.0.1'], nodeVips6: ['fd4e:544d:1::1'], nodePublicKey: key32(23), target: 'www.example.org', targets4: ['198.51.100.80'], targets6: [],
    },
  ],
  relayHello: [{ name: 'rs1.relay.example', publicKey: key32(24) }],
  pathProbe: [
    { commit: 0, pad: '' },
    { commit: 1, pad: 'x'.repeat(40) },
  ],
  pathProbeAck: [
    { inReplyTo: 5n, observed: { address: '198.51.100.1', port: 1 } },
    { inReplyTo: 6n, observed: null },
  ],
  notifyRequest: [
    { name: 'router-1.fleet.example', keepaliveSeconds: 300 },
    { name: 'b2.lan.router-2.fleet.example', keepaliveSeconds: 0xffff },
  ],
  notifyResponse: [
    {
      inReplyTo: 0x1122334455667788n, status: Status.ok, ns: 'ns1.notify.example', broker: 'mqtts://198.51.100.50:8883', keyId: 0xdeadbeef,
      key: key32(25), expiresAt: T0 + 86_400_000, keepaliveSeconds: 300,
    },
    { inReplyTo: 3n, status: Status.unavailable, ns: '', broker: '', keyId: 0, key: ZERO_KEY, expiresAt: 0, keepaliveSeconds: 20 },
  ],
  nsKeyDistribution: [{ keyId: 1, key: key32(26), expiresAt: T0 + 3_600_000, node: 'router-1.fleet.example' }],
  notification: [
    { node: 'router-1.fleet.example', reason: NotifyReason.direction, routeId: 0xffffffff },
    { node: 'mn.example.com', reason: 0, routeId: 0 },
  ],
  nsHello: [
    { name: 'ns1.notify.example', broker: 'mqtts://ns1.notify.example:8883' },
    { name: 'ns1.notify.example', broker: '' },
  ],
  keyDistribution: [
    { keyId: 7, key: key32(16), expiresAt: T0 + 86_400_000, fqdn: 'router-1.fleet.example', names: ['a1.lan.router-1.fleet.example'], publicKey: key32(17) },
    { keyId: 0xffffffff, key: key32(18), expiresAt: T0, fqdn: 'mn.example.com', names: [], publicKey: ZERO_KEY },
    { keyId: 8, key: key32(19), expiresAt: T0, fqdn: 'router-1.fleet.example', names: names32, publicKey: key32(20) },
  ],
};

const ALL: [MessageName, AnyBody][] = (Object.keys(SAMPLES) as MessageName[]).flatMap((n) => (SAMPLES[n] as AnyBody[]).map((b): [MessageName, AnyBody] => [n, b]));

function envelopeFor(i: number): Omit<Envelope, 'version' | 'type'> {
  return { keyClass: KeyClass.ntmdc, keyId: 1000 + i, messageId: 0xa000000000000000n + BigInt(i), timestamp: T0 + i };
}

const SEALED = ALL.map(([type, body], i) => ({ type, body, sealed: sealAny(type, body, envelopeFor(i), KEY) }));

/** Runs fn and returns the error it threw, or null. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
    return null;
  } catch (e) {
    return e;
  }
}

function throwsDecode(t: Test, fn: () => unknown, message: RegExp, what: string): void {
  const e = thrown(fn);
  t.ok(e instanceof DecodeError, `${what}: DecodeError (got ${String(e)})`);
  if (e instanceof Error) t.match(e.message, message, `${what}: message names the message and field`);
}

// ---- codec ------------------------------------------------------------------------------------

t.test('the samples cover every message of the catalogue', async (t) => {
  t.strictSame(Object.keys(SAMPLES).sort(), Object.keys(MESSAGES).sort());
  const codes = Object.values(MESSAGES).map((m) => m.code);
  t.equal(new Set(codes).size, codes.length, 'type codes are distinct');
});

t.test('encodeBody / decodeBody round trip every message', async (t) => {
  for (const [type, body] of ALL) {
    const wire = encodeAny(type, body);
    const back = decodeBody(MESSAGES[type].code, wire);
    t.equal(back.type, type, `${type}: type`);
    t.strictSame(back.body, body, `${type}: body`);
    t.ok(wire.equals(encodeAny(type, back.body as AnyBody)), `${type}: re-encoding gives the same bytes`);
  }
});

t.test('sealMessage / readHeader / openMessage round trip every message', async (t) => {
  SEALED.forEach(({ type, body, sealed }, i) => {
    const e = readHeader(sealed);
    const want = envelopeFor(i);
    t.strictSame(e, { version: CONTROL_VERSION, type: MESSAGES[type].code, ...want }, `${type}: envelope`);
    const m = openMessage(sealed, e, KEY);
    t.equal(m.type, type, `${type}: type`);
    t.strictSame(m.body, body, `${type}: body`);
    t.equal(sealed.length, HEADER_SIZE + encodeAny(type, body).length + TAG_SIZE, `${type}: length = header + body + tag`);
  });
});

t.test('TLS framing round trips and is refused where a sealed message is expected', async (t) => {
  const body = SAMPLES.keyDistribution[0]!;
  const wire = encodeTlsMessage('keyDistribution', body, 55n, T0);
  const { envelope, message } = decodeTlsMessage(wire);
  t.equal(envelope.keyClass, KeyClass.tls);
  t.equal(envelope.messageId, 55n);
  t.equal(message.type, 'keyDistribution');
  t.strictSame(message.body, body);
  throwsDecode(t, () => sealMessage('keyDistribution', body, { keyClass: KeyClass.tls, keyId: 0, messageId: 1n, timestamp: T0 }, KEY), /^keyDistribution: key class tls/, 'seal under tls');
  throwsDecode(t, () => decodeTlsMessage(SEALED[0]!.sealed), /key class Kntmdc, want tls/, 'sealed message on a TLS stream');
});

t.test('IPv4 and IPv6 endpoints: wire form is v4-mapped / raw, all zero is null', async (t) => {
  const v4 = encodeAny('keepalive', { local: { address: '192.0.2.1', port: 4500 } });
  t.equal(v4.toString('hex'), '00000000000000000000ffff' + 'c0000201' + '1194');
  const v6 = encodeAny('keepalive', { local: { address: '2001:db8::1', port: 1 } });
  t.equal(v6.toString('hex'), '20010db8000000000000000000000001' + '0001');
  t.equal(encodeAny('keepalive', { local: null }).toString('hex'), '00'.repeat(18));
  // An IPv6 address written with a dotted tail is the same 16 bytes as its hex form.
  const mapped = encodeAny('keepalive', { local: { address: '::ffff:192.0.2.1', port: 4500 } });
  t.equal(mapped.toString('hex'), v4.toString('hex'), '::ffff:192.0.2.1 is encoded as the v4-mapped address');
  t.strictSame(decodeBody(MESSAGES.keepalive.code, mapped).body, { local: { address: '192.0.2.1', port: 4500 } });
  const nat64 = encodeAny('keepalive', { local: { address: '64:ff9b::198.51.100.7', port: 4500 } });
  t.strictSame(decodeBody(MESSAGES.keepalive.code, nat64).body, { local: { address: '64:ff9b::c633:6407', port: 4500 } }, 'NAT64 address with a dotted tail');
});

t.test('header layout, byte for byte', async (t) => {
  const body = { inReplyTo: 0x1122334455667788n, status: Status.notAuthorized, reason: 'nö' };
  const e = { keyClass: KeyClass.tun, keyId: 0xa1b2c3d4, messageId: 0x0102030405060708n, timestamp: T0 };
  const sealed = sealMessage('ntmAck', body, e, KEY);
  t.equal(sealed[0], 1, 'byte 0: version 1');
  t.equal(sealed[1], 10, 'byte 1: type code of ntmAck');
  t.equal(sealed[2], 3, 'byte 2: key class Ktun');
  t.equal(sealed[3], 0, 'byte 3: flags');
  t.equal(sealed.subarray(4, 8).toString('hex'), 'a1b2c3d4', 'bytes 4..7: key id, big-endian');
  t.equal(sealed.subarray(8, 16).toString('hex'), '0102030405060708', 'bytes 8..15: message id, big-endian');
  t.equal(sealed.subarray(16, 24).toString('hex'), T0.toString(16).padStart(16, '0'), 'bytes 16..23: timestamp in ms, big-endian');
  const plain = encodeBody('ntmAck', body);
  t.ok(sealed.equals(sealRaw(sealed.subarray(0, HEADER_SIZE), plain, KEY)), 'body = ChaCha20-Poly1305(key, nonce = bytes 4..15, aad = bytes 0..23)');
  t.notOk(sealed.subarray(HEADER_SIZE, HEADER_SIZE + plain.length).equals(plain), 'the body is not sent in clear');
  const otherType = sealMessage('keepalive', { local: null }, { ...e, keyClass: KeyClass.ntmdc }, KEY);
  t.equal(otherType[1], 3, 'keepalive is type 3');
  t.equal(otherType[2], 1, 'Kntmdc is key class 1');
});

t.test('ntmAck body layout: id(8) status(2) len(2) utf8', async (t) => {
  const wire = encodeBody('ntmAck', { inReplyTo: 0x1122334455667788n, status: Status.notAuthorized, reason: 'nö' });
  t.equal(wire.toString('hex'), '1122334455667788' + '0004' + '0003' + '6ec3b6');
  const reg = encodeBody('registrationRequest', { name: 'a.b', local: null, publicKey: key32(0xee) });
  t.equal(reg.toString('hex'), '03' + Buffer.from('a.b').toString('hex') + '00'.repeat(18) + 'ee'.repeat(32), 'name = len(1) ascii');
  const lists = encodeBody('nodeInformationResponse', {
    ...SAMPLES.nodeInformationResponse[1]!, nodeVips4: ['10.0.0.1'], nodeVips6: ['fd00::1'],
  });
  t.ok(lists.includes(Buffer.from('010a000001', 'hex')), 'vip4 list = count(1) ‖ 4 bytes each');
  t.ok(lists.includes(Buffer.from('01fd000000000000000000000000000001', 'hex')), 'vip6 list = count(1) ‖ 16 bytes each');
});

// ---- malformed input --------------------------------------------------------------------------

t.test('every truncation of every sealed message is refused with DecodeError or AuthError', async (t) => {
  let checked = 0;
  const bad: string[] = [];
  for (const { type, sealed } of SEALED) {
    for (let n = 0; n < sealed.length; n++) {
      const e = thrown(() => open(sealed.subarray(0, n), KEY));
      const want = n < HEADER_SIZE + TAG_SIZE ? DecodeError : AuthError;
      if (!(e instanceof want)) bad.push(`${type} cut to ${n}: ${String(e)}`);
      checked++;
    }
  }
  t.ok(checked > 2000, `${checked} truncations`);
  t.strictSame(bad, [], 'short of header: DecodeError; short of header + tag: DecodeError; otherwise AuthError');
});

t.test('a flipped bit anywhere fails (header: DecodeError or AuthError; body and tag: AuthError)', async (t) => {
  const bad: string[] = [];
  let flips = 0;
  for (const { type, sealed } of SEALED) {
    for (let bit = 0; bit < sealed.length * 8; bit++) {
      const b = Buffer.from(sealed);
      b[bit >> 3]! ^= 1 << (bit & 7);
      const e = thrown(() => open(b, KEY));
      const byte = bit >> 3;
      const ok = byte < 4 || (byte >= 16 && byte < 18) ? e instanceof DecodeError || e instanceof AuthError : e instanceof AuthError;
      if (!ok) bad.push(`${type} bit ${bit}: ${String(e)}`);
      flips++;
    }
  }
  t.ok(flips > 20000, `${flips} flips`);
  t.strictSame(bad, []);
});

t.test('wrong key, appended bytes, oversize body', async (t) => {
  for (const { type, sealed } of SEALED) {
    t.ok(thrown(() => open(sealed, OTHER_KEY)) instanceof AuthError, `${type}: wrong key`);
    t.ok(thrown(() => open(Buffer.concat([sealed, Buffer.from([0])]), KEY)) instanceof AuthError, `${type}: one byte appended`);
  }
  const e = thrown(() => open(sealRaw(header(MESSAGES.ntmAck.code), Buffer.alloc(1201), KEY), KEY));
  t.ok(e instanceof DecodeError, 'a body over 1200 bytes is refused before decryption');
  t.match(String(e), /body of 1201 bytes, at most 1200/);
});

t.test('authenticated but malformed bodies are refused with DecodeError', async (t) => {
  const code = MESSAGES.registrationRequest.code;
  const good = encodeBody('registrationRequest', SAMPLES.registrationRequest[0]!);
  const cases: [string, Buffer, RegExp][] = [
    ['trailing byte', Buffer.concat([good, Buffer.from([0])]), /^registrationRequest: 1 trailing bytes/],
    ['missing last byte', good.subarray(0, good.length - 1), /^registrationRequest: publicKey: truncated/],
    ['empty body', Buffer.alloc(0), /^registrationRequest: name: truncated/],
  ];
  const upper = Buffer.from(good);
  upper[1] = 'R'.charCodeAt(0);
  cases.push(['upper-case name', upper, /^registrationRequest: name: "Router-1/]);
  const empty = Buffer.concat([Buffer.from([0]), good.subarray(1 + good[0]!)]);
  cases.push(['empty name', empty, /^registrationRequest: name: "" is not/]);
  const port0 = Buffer.concat([Buffer.from([3]), Buffer.from('a.b'), Buffer.from('00000000000000000000ffffc0000201' + '0000', 'hex'), key32(1)]);
  cases.push(['endpoint with port 0', port0, /^registrationRequest: local: port 0/]);
  for (const [what, plain, re] of cases) {
    throwsDecode(t, () => decodeBody(code, plain), re, `decodeBody: ${what}`);
    throwsDecode(t, () => open(sealRaw(header(code), plain, KEY), KEY), re, `sealed: ${what}`);
  }
  const kd = encodeBody('keyDistribution', { ...SAMPLES.keyDistribution[1]!, names: [] });
  const countAt = 4 + 32 + 8 + 1 + 'mn.example.com'.length;
  t.equal(kd[countAt], 0, 'names count byte located');
  const kd33 = Buffer.from(kd);
  kd33[countAt] = 33;
  throwsDecode(t, () => decodeBody(MESSAGES.keyDistribution.code, kd33), /^keyDistribution: names: 33 names, at most 32/, 'names count 33');
  const kdTime = Buffer.from(kd);
  kdTime.writeBigUInt64BE(1n << 53n, 36);
  throwsDecode(t, () => decodeBody(MESSAGES.keyDistribution.code, kdTime), /^keyDistribution: expiresAt: time \d+ out of range/, 'time beyond 2^53');

  const nir = encodeBody('nodeInformationResponse', { ...SAMPLES.nodeInformationResponse[1]!, nodeVips4: ['10.0.0.1'] });
  const zeroVip = Buffer.from(nir);
  const at = nir.indexOf(Buffer.from('010a000001', 'hex'));
  zeroVip.writeUInt32BE(0, at + 1);
  throwsDecode(t, () => decodeBody(MESSAGES.nodeInformationResponse.code, zeroVip), /nodeVips4\[0\]: unspecified address/, '0.0.0.0 in a vip list');
  const vip33 = Buffer.from(nir);
  vip33[at] = 33;
  throwsDecode(t, () => decodeBody(MESSAGES.nodeInformationResponse.code, vip33), /nodeVips4: 33 addresses, at most 32/, 'vip list count 33');

  const ack = encodeBody('ntmAck', { inReplyTo: 1n, status: 0, reason: '' });
  const longText = Buffer.concat([ack.subarray(0, 10), Buffer.from([0x02, 0x01]), Buffer.alloc(513, 0x61)]);
  throwsDecode(t, () => decodeBody(MESSAGES.ntmAck.code, longText), /^ntmAck: reason: 513 bytes, at most 512/, 'text of 513 bytes');
});

t.test('unknown type, version, key class, nonzero flags are refused by readHeader', async (t) => {
  const plain = encodeBody('deregistration', { name: 'a.example' });
  const code = MESSAGES.deregistration.code;
  t.equal(open(sealRaw(header(code), plain, KEY), KEY).type, 'deregistration', 'the hand-made header is valid as it is');
  const cases: [string, Buffer, RegExp][] = [
    ['type 0', header(0), /message type 0 is unknown/],
    ['type 26', header(26), /message type 26 is unknown/],
    ['type 255', header(255), /message type 255 is unknown/],
    ['version 0', header(code, { version: 0 }), /version 0, want 1/],
    ['version 2', header(code, { version: 2 }), /version 2, want 1/],
    ['key class 8', header(code, { keyClass: 8 }), /key class 8 is unknown/],
    ['key class 255', header(code, { keyClass: 255 }), /key class 255 is unknown/],
    ['flags 1', header(code, { flags: 1 }), /flags 1, want 0/],
    ['flags 0x80', header(code, { flags: 0x80 }), /flags 128, want 0/],
    ['timestamp 2^53', header(code, { timestamp: 1n << 53n }), /timestamp out of range/],
  ];
  for (const [what, h, re] of cases) {
    // Sealed correctly under the right key: only the header's own checks can refuse it.
    throwsDecode(t, () => open(sealRaw(h, plain, KEY), KEY), re, what);
  }
  throwsDecode(t, () => decodeBody(99, plain), /message type 99 is unknown/, 'decodeBody: unknown type');
});

t.test('invalid values are refused on encode with a DecodeError naming message and field', async (t) => {
  const rr = SAMPLES.registrationRequest[0]!;
  const label63 = 'a'.repeat(63);
  const name253 = [label63, label63, label63, 'b'.repeat(61)].join('.');
  t.equal(name253.length, 253);
  t.strictSame(decodeBody(1, encodeBody('registrationRequest', { ...rr, name: name253 })).body, { ...rr, name: name253 }, 'a 253-character name is fine');
  const longLabel = `${'a'.repeat(63)}.example`;
  t.strictSame(decodeBody(1, encodeBody('registrationRequest', { ...rr, name: longLabel })).body, { ...rr, name: longLabel }, 'a 63-character label is fine');
  const badNames: [string, string][] = [
    ['upper case', 'Router-1.fleet.example'],
    ['empty label', 'router-1..example'],
    ['trailing dot', 'router-1.example.'],
    ['empty', ''],
    ['64-character label', `${'a'.repeat(64)}.example`],
    ['254 characters', `${name253}a`],
    ['255 characters', [label63, label63, label63, label63].join('.')],
    ['leading hyphen', '-a.example'],
    ['underscore', 'a_b.example'],
    ['non-ASCII', 'ルーター.example'],
  ];
  for (const [what, name] of badNames) {
    throwsDecode(t, () => encodeAny('registrationRequest', { ...rr, name }), /^registrationRequest: name: /, `name: ${what}`);
  }
  throwsDecode(t, () => encodeAny('keyDistribution', { ...SAMPLES.keyDistribution[0]!, names: ['ok.example', 'Bad.example'] }), /^keyDistribution: names\[1\]: /, 'bad name in a list');

  throwsDecode(t, () => encodeAny('registrationRequest', { ...rr, local: { address: '192.0.2.1', port: 0 } }), /^registrationRequest: local: port 0 is not in 1\.\.65535/, 'port 0');
  throwsDecode(t, () => encodeAny('registrationRequest', { ...rr, local: { address: '192.0.2.1', port: 65536 } }), /^registrationRequest: local: port 65536/, 'port 65536');
  throwsDecode(t, () => encodeAny('holePunchingAck', { inReplyTo: 1n, routeId: 1, observed: { address: 'example.com', port: 4500 } }), /^holePunchingAck: observed: "example.com" is not an IP address/, 'host name as endpoint');

  throwsDecode(t, () => encodeAny('keyDistribution', { ...SAMPLES.keyDistribution[0]!, names: [...names32, 'x.example'] }), /^keyDistribution: names: want a list of at most 32/, '33 names');
  const nir = SAMPLES.nodeInformationResponse[0]!;
  throwsDecode(t, () => encodeAny('nodeInformationResponse', { ...nir, nodeVips4: [...vips4x32, '10.77.2.1'] }), /^nodeInformationResponse: nodeVips4: want a list of at most 32/, '33 IPv4 VIPs');
  throwsDecode(t, () => encodeAny('routeDirection', { ...SAMPLES.routeDirection[0]!, peerVips6: [...vips6x32, 'fd4e:544d:1::ff'] }), /^routeDirection: peerVips6: want a list of at most 32/, '33 IPv6 VIPs');
  throwsDecode(t, () => encodeAny('nodeInformationResponse', { ...nir, nodeVips4: ['fd00::1'] }), /^nodeInformationResponse: nodeVips4\[0\]: "fd00::1" is not an IPv4 address/, 'IPv6 in an IPv4 list');
  throwsDecode(t, () => encodeAny('registrationResponse', { ...SAMPLES.registrationResponse[0]!, vip6: '10.0.0.1' }), /^registrationResponse: vip6: /, 'IPv4 as vip6');

  throwsDecode(t, () => encodeAny('ntmAck', { inReplyTo: 1n, status: 0, reason: 'x'.repeat(513) }), /^ntmAck: reason: want text of at most 512 bytes/, '513 ASCII bytes');
  throwsDecode(t, () => encodeAny('ntmAck', { inReplyTo: 1n, status: 0, reason: 'ö'.repeat(257) }), /^ntmAck: reason: /, '257 two-byte characters (514 bytes)');

  throwsDecode(t, () => encodeAny('ntmAck', { inReplyTo: -1n, status: 0, reason: '' }), /^ntmAck: inReplyTo: /, 'negative id');
  throwsDecode(t, () => encodeAny('ntmAck', { inReplyTo: 1n << 64n, status: 0, reason: '' }), /^ntmAck: inReplyTo: /, 'id of 65 bits');
  throwsDecode(t, () => encodeAny('ntmAck', { inReplyTo: 1n, status: 0x10000, reason: '' }), /^ntmAck: status: 65536 is not a u16/, 'u16 overflow');
  throwsDecode(t, () => encodeAny('tunnelRequest', { ...SAMPLES.tunnelRequest[0]!, suite: 1.5 }), /^tunnelRequest: suite: /, 'fractional u8');
  throwsDecode(t, () => encodeAny('tunnelRequest', { ...SAMPLES.tunnelRequest[0]!, ephemeral: Buffer.alloc(31) }), /^tunnelRequest: ephemeral: want 32 bytes/, 'short key');
  throwsDecode(t, () => encodeAny('relayDirection', { ...SAMPLES.relayDirection[0]!, expiresAt: -1 }), /^relayDirection: expiresAt: /, 'negative time');
  throwsDecode(t, () => encodeAny('relayDirection', { ...SAMPLES.relayDirection[0]!, nodeB: undefined }), /^relayDirection: nodeB: /, 'missing field');

  const huge = Array.from({ length: 32 }, (_, i) => `${'a'.repeat(60)}${String(i).padStart(3, '0')}.example`);
  throwsDecode(t, () => encodeAny('keyDistribution', { ...SAMPLES.keyDistribution[0]!, names: huge }), /^keyDistribution: body of \d+ bytes, at most 1200/, 'body over 1200 bytes');
});

// ---- fuzz -------------------------------------------------------------------------------------

/** mulberry32: a small seeded PRNG so that a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function mutate(src: Buffer, rnd: () => number): Buffer {
  const int = (n: number) => Math.floor(rnd() * n);
  let b = Buffer.from(src);
  const edits = 1 + int(4);
  for (let k = 0; k < edits; k++) {
    const op = int(5);
    if (op === 0 && b.length) b[int(b.length)] = int(256);
    else if (op === 1 && b.length) b[int(b.length)]! ^= 1 << int(8);
    else if (op === 2) b = b.subarray(0, int(b.length + 1));
    else if (op === 3) b = Buffer.concat([b, Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256)))]);
    else if (b.length) {
      const at = int(b.length);
      b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + int(4))]);
    }
  }
  return b;
}

t.test('fuzz: random buffers and mutated sealed messages throw only DecodeError / AuthError', async (t) => {
  const seed = Number(process.env.FUZZ_SEED ?? 0x5eed);
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const bad: string[] = [];
  let opened = 0;
  const check = (buf: Buffer, what: string) => {
    const e = thrown(() => open(buf, KEY));
    if (e === null) opened++;
    else if (!(e instanceof DecodeError || e instanceof AuthError)) bad.push(`${what} ${buf.toString('hex')}: ${String(e)}`);
  };
  for (let i = 0; i < 20000; i++) {
    const buf = Buffer.from(Array.from({ length: int(300) }, () => int(256)));
    // Half of them get a plausible header so that they reach the AEAD.
    if (i & 1 && buf.length >= 4) header(1 + int(16)).copy(buf, 0, 0, 4);
    check(buf, 'random');
  }
  t.equal(opened, 0, 'no random buffer authenticates');
  let mutants = 0;
  for (let i = 0; i < 20000; i++) {
    const src = SEALED[int(SEALED.length)]!.sealed;
    const m = mutate(src, rnd);
    if (m.equals(src)) continue;
    mutants++;
    check(m, 'mutant');
  }
  t.ok(mutants > 19000, `${mutants} distinct mutants`);
  t.equal(opened, 0, 'no mutant authenticates');
  t.strictSame(bad.slice(0, 5), [], `seed ${seed}: nothing but DecodeError / AuthError`);
});

t.test('fuzz: mutated plaintext bodies reach the decoder and throw only DecodeError', async (t) => {
  const rnd = prng(0xb0d1);
  const int = (n: number) => Math.floor(rnd() * n);
  const bad: string[] = [];
  let decoded = 0;
  for (let i = 0; i < 20000; i++) {
    const [type, body] = ALL[int(ALL.length)]!;
    const plain = mutate(encodeAny(type, body), rnd);
    const code = i % 50 === 0 ? int(256) : MESSAGES[type].code;
    // Sealed under the right key, so the body parser is what answers.
    const e = thrown(() => open(sealRaw(header(code < 1 || code > 16 ? MESSAGES[type].code : code), plain, KEY), KEY));
    const direct = thrown(() => decodeBody(code, plain));
    if (e === null) decoded++;
    for (const x of [e, direct]) if (x !== null && !(x instanceof DecodeError)) bad.push(`${type} ${plain.toString('hex')}: ${String(x)}`);
  }
  t.ok(decoded > 0, `${decoded} mutants still decoded (mutations that kept the body well-formed)`);
  t.strictSame(bad.slice(0, 5), []);
});

// ---- channel ----------------------------------------------------------------------------------

const ADDR_A = encodeSockaddr('192.0.2.10', 40000);
const ADDR_B = encodeSockaddr('2001:db8::20', 4500);
const ADDR_C = encodeSockaddr('198.51.100.30', 4500);
const K_AB: SendKey = { keyClass: KeyClass.ntmdc, keyId: 7, key: KEY };

interface Wire {
  from: Buffer;
  to: Buffer;
  data: Buffer;
}

/** Two (or more) channels on an in-memory network: datagrams queue until deliver(). */
function network() {
  const clocks = new Map<string, { t: number }>();
  const channels = new Map<string, ControlChannel>();
  const handled = new Map<string, Incoming[]>();
  const wire: Wire[] = [];
  const queue: Wire[] = [];
  const addrName = (a: Buffer) => (a.equals(ADDR_A) ? 'a' : a.equals(ADDR_B) ? 'b' : a.equals(ADDR_C) ? 'c' : '?');
  const addrOf = { a: ADDR_A, b: ADDR_B, c: ADDR_C } as const;
  function add(name: 'a' | 'b' | 'c', keys: Map<string, Buffer>, onMessage: (ch: ControlChannel, m: Incoming) => void = () => {}) {
    const clock = { t: T0 };
    clocks.set(name, clock);
    handled.set(name, []);
    const ch = new ControlChannel({
      send: (data, to) => {
        const w = { from: addrOf[name], to: Buffer.from(to), data: Buffer.from(data) };
        wire.push(w);
        queue.push(w);
      },
      keys: (keyClass, keyId) => keys.get(`${keyClass}:${keyId}`),
      onMessage: (m) => {
        handled.get(name)!.push(m);
        onMessage(ch, m);
      },
      now: () => clock.t,
    });
    channels.set(name, ch);
    return ch;
  }
  function deliver(): number {
    let n = 0;
    while (queue.length) {
      const w = queue.shift()!;
      channels.get(addrName(w.to))?.receive(w.data, w.from);
      n++;
    }
    return n;
  }
  return { add, deliver, wire, queue, clocks, handled };
}

const keysOf = (...entries: [SendKey['keyClass'], number, Buffer][]) => new Map(entries.map(([c, id, k]) => [`${c}:${id}`, k]));

const regBody = SAMPLES.registrationRequest[0]!;

/** B answers every registration request. */
function answerRegistrations(ch: ControlChannel, m: Incoming): void {
  if (m.message.type === 'registrationRequest') {
    ch.reply(m, 'registrationResponse', { ...SAMPLES.registrationResponse[0]!, inReplyTo: m.envelope.messageId, name: m.message.body.name });
  }
}

t.test('channel: request and answer', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const b = net.add('b', keysOf([KeyClass.ntmdc, 7, KEY]), answerRegistrations);
  const p = a.request('registrationRequest', regBody, K_AB, ADDR_B, { initialMs: 1000, maxMs: 1000, tries: 2 });
  t.equal(net.queue.length, 1, 'one datagram on the wire');
  const req = net.queue[0]!;
  t.ok(req.data.subarray(0, NON_ESP_MARKER_SIZE).equals(Buffer.alloc(4)), 'request starts with the non-ESP marker');
  t.ok(req.to.equals(ADDR_B), 'sent to B');
  t.equal(readHeader(req.data.subarray(4)).timestamp, T0, 'stamped with the fake clock');
  net.deliver();
  const answer = await p;
  t.equal(answer.message.type, 'registrationResponse');
  t.equal((answer.message.body as Body<'registrationResponse'>).inReplyTo, readHeader(req.data.subarray(4)).messageId, 'answer names the request');
  t.ok(answer.from.equals(ADDR_B), 'answer comes from B');
  t.strictSame(answer.key, K_AB, 'answer came under the request key');
  const bSeen = net.handled.get('b')!;
  t.equal(bSeen.length, 1, "B's handler ran once");
  t.ok(bSeen[0]!.from.equals(ADDR_A), 'B sees A as the sender');
  t.strictSame(bSeen[0]!.message.body, regBody, 'B got the body A sent');
  t.equal(net.wire[1]!.to.equals(ADDR_A), true, 'the reply goes back to where the request came from');
  t.equal(net.handled.get('a')!.length, 0, "an answer does not reach A's onMessage");
  t.match(a.counters, { sent: 1, accepted: 1, retransmits: 0, timeouts: 0 });
  t.match(b.counters, { received: 1, accepted: 1, sent: 1 });
});

/** Replaces setTimeout / clearTimeout while fn runs synchronously; records each delay asked for. */
function withFakeTimers<T>(fn: (timers: { advance: (ms: number) => void; delays: number[]; pending: () => number }) => T): T {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  let now = 0;
  const timers = new Map<object, { due: number; cb: () => void }>();
  const delays: number[] = [];
  globalThis.setTimeout = ((cb: () => void, ms: number) => {
    const h = {};
    delays.push(ms);
    timers.set(h, { due: now + ms, cb });
    return h;
  }) as unknown as typeof setTimeout;
  globalThis.clearTimeout = ((h: object) => {
    if (!timers.delete(h)) realClear(h as NodeJS.Timeout);
  }) as typeof clearTimeout;
  const advance = (ms: number) => {
    const until = now + ms;
    for (;;) {
      let next: [object, { due: number; cb: () => void }] | undefined;
      for (const e of timers) if (e[1].due <= until && (next === undefined || e[1].due < next[1].due)) next = e;
      if (next === undefined) break;
      timers.delete(next[0]);
      now = next[1].due;
      next[1].cb();
    }
    now = until;
  };
  try {
    return fn({ advance, delays, pending: () => timers.size });
  } finally {
    globalThis.setTimeout = realSet;
    globalThis.clearTimeout = realClear;
  }
}

t.test('channel: retransmission with backoff, then RequestTimeout', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const policy: RetransmitPolicy = { initialMs: 10, maxMs: 40, tries: 5 };
  const { p, delays, sends } = withFakeTimers((ft) => {
    const p = a.request('registrationRequest', regBody, K_AB, ADDR_B, policy);
    p.catch(() => {});
    const sends: number[] = [net.wire.length];
    ft.advance(9);
    sends.push(net.wire.length);
    for (const step of [1, 20, 40, 40, 40]) {
      ft.advance(step);
      sends.push(net.wire.length);
    }
    t.equal(ft.pending(), 0, 'no timer left behind');
    return { p, delays: ft.delays, sends };
  });
  t.strictSame(delays, [10, 20, 40, 40, 40], 'waits double from initialMs and stop at maxMs');
  t.strictSame(sends, [1, 1, 2, 3, 4, 5, 5], 'a send per try, none early, none after the last try');
  t.ok(net.wire.every((w) => w.data.equals(net.wire[0]!.data)), 'retransmissions are the same bytes');
  t.equal(a.counters.retransmits, 4);
  t.equal(a.counters.sent, 5);
  t.equal(a.counters.timeouts, 1);
  await t.rejects(p, RequestTimeout);
  await t.rejects(p, /registrationRequest: no answer after 5 tries/);
});

t.test('channel: retransmission stops at the answer; the duplicate gets the same answer bytes', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const b = net.add('b', keysOf([KeyClass.ntmdc, 7, KEY]), answerRegistrations);
  const p = withFakeTimers((ft) => {
    const p = a.request('registrationRequest', regBody, K_AB, ADDR_B, { initialMs: 10, maxMs: 40, tries: 5 });
    // The first answer is lost; the retransmission brings a second copy of the same answer.
    const req = net.queue.shift()!;
    b.receive(req.data, req.from);
    net.queue.length = 0;
    ft.advance(10);
    t.equal(net.queue.length, 1, 'retransmitted after initialMs');
    net.deliver();
    t.equal(ft.pending(), 0, 'the answer cancels the next retransmission');
    ft.advance(1000);
    return p;
  });
  const answer = await p;
  t.equal(answer.message.type, 'registrationResponse');
  t.equal(net.handled.get('b')!.length, 1, "B's handler ran once for two copies");
  t.equal(b.counters.duplicatesAnswered, 1);
  const answers = net.wire.filter((w) => w.from.equals(ADDR_B));
  t.equal(answers.length, 2);
  t.ok(answers[0]!.data.equals(answers[1]!.data), 'identical answer bytes');
  t.equal(a.counters.retransmits, 1);
  t.equal(a.counters.sent, 2, 'no transmission after the answer');
});

t.test('channel: real timers, small policy', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const started = Date.now();
  await t.rejects(a.request('keepalive', { local: null }, K_AB, ADDR_B, { initialMs: 5, maxMs: 10, tries: 3 }), RequestTimeout);
  t.ok(Date.now() - started >= 5 + 10 + 10 - 3, 'waited about initialMs + 2 × maxMs');
  t.equal(a.counters.retransmits, 2);
  t.equal(net.wire.length, 3);
});

t.test('channel: duplicate request answered with identical bytes, handler not called again', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const b = net.add('b', keysOf([KeyClass.ntmdc, 7, KEY]), answerRegistrations);
  const p = a.request('registrationRequest', regBody, K_AB, ADDR_B, { initialMs: 5000, maxMs: 5000, tries: 1 });
  const request = net.queue[0]!;
  net.deliver();
  await p;
  const first = net.wire[1]!;
  for (let i = 0; i < 3; i++) b.receive(request.data, request.from);
  const again = net.wire.slice(2);
  t.equal(again.length, 3, 'every duplicate is answered');
  for (const w of again) {
    t.ok(w.data.equals(first.data), 'same bytes as the first answer');
    t.ok(w.to.equals(first.to), 'to the same place');
  }
  t.equal(net.handled.get('b')!.length, 1, 'handler called once');
  t.equal(b.counters.duplicatesAnswered, 3);
  t.equal(b.counters.accepted, 1);
  a.close();

  // A duplicate of a message that was never answered is dropped (no handler, no send).
  a.send('keepalive', { local: null }, K_AB, ADDR_B);
  const ka = net.queue[net.queue.length - 1]!;
  net.deliver();
  const sentBefore = b.counters.sent;
  b.receive(ka.data, ka.from);
  t.equal(b.counters.dropDuplicate, 1);
  t.equal(b.counters.sent, sentBefore);
  t.equal(net.handled.get('b')!.filter((m) => m.message.type === 'keepalive').length, 1);
});

t.test('channel: replay window', async (t) => {
  const net = network();
  const keys = keysOf([KeyClass.ntmdc, 7, KEY]);
  const a = net.add('a', keys);
  const b = net.add('b', keys, answerRegistrations);
  const c = net.add('c', keys, answerRegistrations);
  a.send('registrationRequest', regBody, K_AB, ADDR_B);
  const request = net.queue[0]!;
  net.deliver();
  t.equal(net.handled.get('b')!.length, 1);
  const sentBefore = b.counters.sent;

  net.clocks.get('b')!.t = T0 + REPLAY_WINDOW_MS + 1;
  b.receive(request.data, request.from);
  t.equal(b.counters.dropStale, 1, 'replay after the window: stale');
  t.equal(b.counters.duplicatesAnswered, 0, 'not even answered as a duplicate');
  t.equal(b.counters.sent, sentBefore, 'nothing sent');
  t.equal(net.handled.get('b')!.length, 1, 'handler not called');

  // A channel that never saw it: exactly at the edge of the window it is still taken, past it not.
  net.clocks.get('c')!.t = T0 + REPLAY_WINDOW_MS + 1;
  c.receive(request.data, request.from);
  t.equal(c.counters.dropStale, 1);
  t.equal(net.handled.get('c')!.length, 0);
  net.clocks.get('c')!.t = T0 + REPLAY_WINDOW_MS;
  c.receive(request.data, request.from);
  t.equal(net.handled.get('c')!.length, 1, 'at exactly the window: accepted');

  // A sender whose clock runs ahead by more than the window is refused too.
  net.clocks.get('a')!.t = T0 + REPLAY_WINDOW_MS + 1;
  net.clocks.get('b')!.t = T0;
  a.send('keepalive', { local: null }, K_AB, ADDR_B);
  net.deliver();
  t.equal(b.counters.dropStale, 2, 'a message from the future is stale');
});

t.test('channel: unknown key id, wrong key, TLS key class, garbage', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const b = net.add('b', keysOf([KeyClass.ntmdc, 7, OTHER_KEY], [KeyClass.dcdc, 9, KEY]));
  a.send('keepalive', { local: null }, { keyClass: KeyClass.ntmdc, keyId: 8, key: KEY }, ADDR_B);
  a.send('keepalive', { local: null }, { keyClass: KeyClass.tun, keyId: 9, key: KEY }, ADDR_B);
  net.deliver();
  t.equal(b.counters.dropUnknownKey, 2, 'key id 8 unknown; key id 9 known only under another class');
  a.send('keepalive', { local: null }, K_AB, ADDR_B);
  net.deliver();
  t.equal(b.counters.dropAuth, 1, 'same key id, different key');
  b.receive(Buffer.concat([Buffer.alloc(4), encodeTlsMessage('keepalive', { local: null }, 1n, T0)]), ADDR_A);
  b.receive(Buffer.concat([Buffer.alloc(4), randomBytes(60)]), ADDR_A);
  b.receive(Buffer.alloc(4), ADDR_A);
  t.equal(b.counters.dropMalformed, 3, 'TLS framing, garbage and an empty message are malformed');
  a.send('nodeInformationRequest', SAMPLES.nodeInformationRequest[0]!, { keyClass: KeyClass.dcdc, keyId: 9, key: KEY }, ADDR_B);
  net.deliver();
  t.equal(net.handled.get('b')!.length, 1, 'the right key still works');
  t.equal(b.counters.received, 7);
  t.equal(b.counters.accepted, 1);
});

t.test('channel: answers nobody waits for', async (t) => {
  const net = network();
  const keys = keysOf([KeyClass.ntmdc, 7, KEY], [KeyClass.ntmdc, 8, KEY]);
  const a = net.add('a', keys);
  const b = net.add('b', keys);
  b.send('ntmAck', { inReplyTo: 0x1234n, status: Status.ok, reason: '' }, K_AB, ADDR_A);
  b.send('keepaliveAck', { inReplyTo: 0x1235n, status: Status.ok, observed: null, serverTime: T0 }, K_AB, ADDR_A);
  net.deliver();
  t.equal(a.counters.dropUnexpectedReply, 2);
  t.equal(net.handled.get('a')!.length, 0, 'onMessage not called');

  const rd = { ...SAMPLES.routeDirection[0]!, inReplyTo: 0x9999n };
  b.send('routeDirection', rd, K_AB, ADDR_A);
  net.deliver();
  t.equal(net.handled.get('a')!.length, 1, 'a route direction with an unmatched inReplyTo reaches onMessage');
  t.strictSame(net.handled.get('a')![0]!.message.body, rd);

  // An answer under another key does not complete a request made under K_AB.
  const p = a.request('keepalive', { local: null }, K_AB, ADDR_B, { initialMs: 60_000, maxMs: 60_000, tries: 1 });
  const id = readHeader(net.queue[0]!.data.subarray(4)).messageId;
  net.deliver();
  b.send('keepaliveAck', { inReplyTo: id, status: Status.ok, observed: null, serverTime: T0 }, { ...K_AB, keyId: 8 }, ADDR_A);
  net.deliver();
  t.equal(a.counters.dropUnexpectedReply, 3, 'answer under another key id: unexpected');
  b.send('keepaliveAck', { inReplyTo: id, status: Status.ok, observed: null, serverTime: T0 }, K_AB, ADDR_A);
  const late = net.queue[0]!;
  net.deliver();
  const got = await p;
  t.equal(got.message.type, 'keepaliveAck');
  a.receive(late.data, late.from);
  t.equal(a.counters.dropDuplicate, 1, 'the same answer again is a duplicate');
  b.send('keepaliveAck', { inReplyTo: id, status: Status.ok, observed: null, serverTime: T0 }, K_AB, ADDR_A);
  net.deliver();
  t.equal(a.counters.dropUnexpectedReply, 4, 'a second, different answer after the first: unexpected');
  t.equal(net.handled.get('a')!.length, 1);
});

t.test('channel: close() rejects pending requests and refuses new ones', async (t) => {
  const net = network();
  const a = net.add('a', keysOf([KeyClass.ntmdc, 7, KEY]));
  const p1 = a.request('keepalive', { local: null }, K_AB, ADDR_B, { initialMs: 60_000, maxMs: 60_000, tries: 3 });
  const p2 = a.request('directionRequest', SAMPLES.directionRequest[0]!, K_AB, ADDR_B, { initialMs: 60_000, maxMs: 60_000, tries: 3 });
  a.close();
  await t.rejects(p1, /control channel closed/);
  await t.rejects(p2, /control channel closed/);
  await t.rejects(a.request('keepalive', { local: null }, K_AB, ADDR_B), /closed/);
  t.equal(a.counters.timeouts, 0, 'not counted as timeouts');
  t.equal(net.wire.length, 2, 'nothing sent after close');
});
