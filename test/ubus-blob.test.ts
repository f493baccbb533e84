// The ubus wire format, byte for byte: the blob/blobmsg codec (ubus/blob.ts) and the message
// framing and client (ubus/client.ts) against frames captured between the real `ubus` CLI and
// ubusd of the OpenWrt userland (a unix-socket proxy logged both directions), plus vectors built
// from libubox's rules (blob.h, blobmsg.c); round trips; malformed input of every kind is a
// UbusDecodeError, never a crash or a hang; and the client's framing, timeouts, dropped
// messages and reconnection against a scripted ubusd in this process.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  blobmsg,
  BlobmsgType,
  BlobWriter,
  decodeBlobmsgFields,
  decodeBlobmsgTable,
  encodeBlobmsgTable,
  readBlobAttrs,
  UbusDecodeError,
  UbusEncodeError,
  writeBlobmsgTable,
} from '../ubus/blob.js';
import {
  decodeUbusMessage,
  encodeUbusMessage,
  UbusAttr,
  UbusClient,
  UbusError,
  UbusFrameReader,
  UbusMsg,
  UbusStatus,
} from '../ubus/client.js';

function hex(...parts: string[]): Buffer {
  return Buffer.from(parts.join(''), 'hex');
}

// ---- captured: `ubus call session list '{"a":"x","count":3,"flag":true,"ratio":1.5,
// "big":5000000000,"neg":-7,"arr":[1,"x"],"t":{"n":null}}'` (HELLO, LOOKUP session and its
// answer with the object's signature, the INVOKE with every JSON type, rpcd's reply)
const SESSION_HELLO = hex(
  '000000000115303400000004',
);
const SESSION_LOOKUP = hex(
  '0004000100000000000000100200000c73657373696f6e00',
);
const SESSION_LOOKUP_DATA = hex(
  '0002000100000000000002900200000c73657373696f6e00030000086fa27c7f05000008daea1e170600027082000024',
  '00066372656174650000000085000014000774696d656f7574000000000000058200002800046c69737400008500001c',
  '0010756275735f7270635f73657373696f6e0000000000038200004c00056772616e74008500001c0010756275735f72',
  '70635f73657373696f6e00000000000385000010000573636f706500000000038500001400076f626a65637473000000',
  '000000018200005000067265766f6b65000000008500001c0010756275735f7270635f73657373696f6e000000000003',
  '85000010000573636f706500000000038500001400076f626a6563747300000000000001820000640006616363657373',
  '000000008500001c0010756275735f7270635f73657373696f6e00000000000385000010000573636f70650000000003',
  '8500001400066f626a656374000000000000000385000014000866756e6374696f6e0000000000038200003c00037365',
  '740000008500001c0010756275735f7270635f73657373696f6e00000000000385000014000676616c75657300000000',
  '000000028200003800036765740000008500001c0010756275735f7270635f73657373696f6e00000000000385000010',
  '00046b657973000000000001820000380005756e736574008500001c0010756275735f7270635f73657373696f6e0000',
  '000000038500001000046b6579730000000000018200002c000764657374726f790000008500001c0010756275735f72',
  '70635f73657373696f6e0000000000038200004800056c6f67696e00850000140008757365726e616d65000000000003',
  '85000014000870617373776f726400000000000385000014000774696d656f757400000000000005',
);
const SESSION_LOOKUP_STATUS = hex(
  '00010001000000000000000c0100000800000000',
);
const SESSION_INVOKE = hex(
  '000500026fa27c7f000000b4030000086fa27c7f040000096c697374000000000700009c8300000a0001610078000000',
  '850000100005636f756e7400000000038700000d0004666c6167000001000000880000140005726174696f003ff80000',
  '00000000840000140003626967000000000000012a05f2008500001000036e6567000000fffffff98100002400036172',
  '720000008500000c00000000000000018300000a000000007800000082000010000174008000000800016e00',
);
const SESSION_REPLY_DATA = hex(
  '000200026fa27c7f00000128030000086fa27c7f0700011c830000390010756275735f7270635f73657373696f6e0000',
  '30303030303030303030303030303030303030303030303030303030303030300000000085000014000774696d656f75',
  '7400000000000000840000180007657870697265730000000000000000000000820000a4000461636c7300008200003c',
  '000c6163636573732d67726f7570000081000028000f756e61757468656e746963617465640000008300000d00000000',
  '72656164000000008200005c00047562757300008100002000046c756369000083000014000000006765744665617475',
  '7265730081000030000773657373696f6e0000008300000f0000000061636365737300008300000e000000006c6f6769',
  '6e0000008200000c0004646174610000',
);
const SESSION_REPLY_STATUS = hex(
  '000100026fa27c7f000000140100000800000000030000086fa27c7f',
);

const SESSION_ARGS = { a: 'x', count: 3, flag: true, ratio: 1.5, big: 5000000000, neg: -7, arr: [1, 'x'], t: { n: null } };
const SESSION_REPLY = {
  ubus_rpc_session: '00000000000000000000000000000000',
  timeout: 0,
  expires: 0,
  acls: { 'access-group': { unauthenticated: ['read'] }, ubus: { luci: ['getFeatures'], session: ['access', 'login'] } },
  data: {},
};
const SESSION_ID = 0x6fa27c7f;

// ---- captured: `ubus listen ntmobile.handover` while `ubus send ntmobile.handover
// '{"interface":"wan","up":true}'` ran from a second CLI
const LISTEN_HELLO = hex('00000000501591f500000004');
const LISTEN_ADD_OBJECT = hex('000600010000000000000004'); // an object without name or type
const LISTEN_ADD_OBJECT_REPLY = hex('00020001000000000000000c03000008e10ced36', '00010001000000000000000c0100000800000000'); // one read, two messages
const LISTEN_REGISTER = hex(
  '00050002000000010000005803000008000000010400000d7265676973746572000000000700003c8500001400066f62',
  '6a65637400000000e10ced368300002200077061747465726e0000006e746d6f62696c652e68616e646f766572000000',
);
const STATUS_OK_SEQ1 = hex('00010001000000010000000c0100000800000000');
const STATUS_OK_SEQ2 = hex('00010002000000010000000c0100000800000000');
const EVENT_DELIVERY = hex(
  '00050013000000000000004c03000008e10ced36040000166e746d6f62696c652e68616e646f76657200000007000028',
  '830000140009696e746572666163650077616e008700000d000275700000000001000000',
);
const EVENT_ACK = hex('000100130000000000000014010000080000000003000008e10ced36');
const SEND_EVENT = hex(
  '00050001000000010000006c03000008000000010400000973656e6400000000070000548300001e0002696400000000',
  '6e746d6f62696c652e68616e646f766572000000820000300004646174610000830000140009696e7465726661636500',
  '77616e008700000d000275700000000001000000',
);

// ---- built from libubox's rules: ubus_add_object() of "ntmobile" with methods status {} and
// ping {name: string, count: int32}: OBJPATH, then SIGNATURE holding one blobmsg table per method
// whose members are int32 blobmsg type codes (ubus_push_method_data)
const ADD_NTMOBILE = hex(
  '00060001', '00000000', // version 0, ADD_OBJECT, seq 1, peer 0
  '00000054', // the message's blob: 84 bytes, header included
  '0200000d', '6e746d6f62696c6500', '000000', // OBJPATH "ntmobile\0": 13 bytes, padded to 16
  '06000040', // SIGNATURE: 64 bytes
  '82000010', '0006', '73746174757300', '000000', // table "status" (extended bit, name padded to 12), empty
  '8200002c', '0004', '70696e6700', '00', // table "ping", 44 bytes:
  '85000010', '0004', '6e616d6500', '00', '00000003', //   int32 "name" = 3 (string)
  '85000010', '0005', '636f756e7400', '00000005', //   int32 "count" = 5 (int32)
);

t.test('captured frames decode to what the CLI printed', async (t) => {
  const hello = decodeUbusMessage(SESSION_HELLO);
  t.equal(hello.type, UbusMsg.HELLO);
  t.equal(hello.peer, 0x01153034, 'HELLO carries the client id in the peer field');
  t.equal(hello.attrs.size, 0);

  const found = decodeUbusMessage(SESSION_LOOKUP_DATA);
  t.equal(found.type, UbusMsg.DATA);
  t.equal(found.attrs.get(UbusAttr.OBJID)?.payload.readUInt32BE(0), SESSION_ID);
  const sig = found.attrs.get(UbusAttr.SIGNATURE)!;
  const methods = decodeBlobmsgFields(sig.payload, 'table', sig.offset + 4);
  t.strictSame(methods.map((m) => m.name), ['create', 'list', 'grant', 'revoke', 'access', 'set', 'get', 'unset', 'destroy', 'login']);
  t.strictSame(methods.find((m) => m.name === 'login')?.value, { username: BlobmsgType.STRING, password: BlobmsgType.STRING, timeout: BlobmsgType.INT32 });
  t.strictSame(methods.find((m) => m.name === 'grant')?.value, { ubus_rpc_session: BlobmsgType.STRING, scope: BlobmsgType.STRING, objects: BlobmsgType.ARRAY });

  const invoke = decodeUbusMessage(SESSION_INVOKE);
  t.equal(invoke.type, UbusMsg.INVOKE);
  t.equal(invoke.seq, 2);
  t.equal(invoke.peer, SESSION_ID, 'an INVOKE is addressed to the object id');
  const data = invoke.attrs.get(UbusAttr.DATA)!;
  const fields = decodeBlobmsgFields(data.payload, 'table', data.offset + 4);
  t.strictSame(fields.map((f) => f.type), [
    BlobmsgType.STRING, BlobmsgType.INT32, BlobmsgType.BOOL, BlobmsgType.DOUBLE, BlobmsgType.INT64,
    BlobmsgType.INT32, BlobmsgType.ARRAY, BlobmsgType.TABLE,
  ], 'the CLI types JSON: int32 when it fits, else int64; bool as int8; double; null as unspec');
  t.strictSame(decodeBlobmsgTable(data.payload), SESSION_ARGS);

  const reply = decodeUbusMessage(SESSION_REPLY_DATA);
  const rd = reply.attrs.get(UbusAttr.DATA)!;
  t.strictSame(decodeBlobmsgTable(rd.payload), SESSION_REPLY);
  t.equal(decodeBlobmsgFields(rd.payload, 'table').find((f) => f.name === 'expires')?.type, BlobmsgType.INT64);
  const status = decodeUbusMessage(SESSION_REPLY_STATUS);
  t.equal(status.type, UbusMsg.STATUS);
  t.equal(status.attrs.get(UbusAttr.STATUS)?.payload.readUInt32BE(0), 0);
});

t.test('encoding reproduces the captured frames byte for byte', async (t) => {
  t.equal(encodeUbusMessage(UbusMsg.LOOKUP, 1, 0, (w) => w.putString(UbusAttr.OBJPATH, 'session')).toString('hex'), SESSION_LOOKUP.toString('hex'));
  const invoke = encodeUbusMessage(UbusMsg.INVOKE, 2, SESSION_ID, (w) => {
    w.putU32(UbusAttr.OBJID, SESSION_ID);
    w.putString(UbusAttr.METHOD, 'list');
    const d = w.open(UbusAttr.DATA);
    writeBlobmsgTable(w, SESSION_ARGS);
    w.close(d);
  });
  t.equal(invoke.toString('hex'), SESSION_INVOKE.toString('hex'), 'every JSON type as the CLI encodes it');
  const reply = encodeUbusMessage(UbusMsg.DATA, 2, SESSION_ID, (w) => {
    w.putU32(UbusAttr.OBJID, SESSION_ID);
    const d = w.open(UbusAttr.DATA);
    // rpcd sends expires as int64: a small number needs the explicit type
    writeBlobmsgTable(w, { ...SESSION_REPLY, expires: blobmsg.int64(0) });
    w.close(d);
  });
  t.equal(reply.toString('hex'), SESSION_REPLY_DATA.toString('hex'), 'nested tables and arrays as rpcd encodes them');
  const status = encodeUbusMessage(UbusMsg.STATUS, 2, SESSION_ID, (w) => {
    w.putU32(UbusAttr.STATUS, 0);
    w.putU32(UbusAttr.OBJID, SESSION_ID);
  });
  t.equal(status.toString('hex'), SESSION_REPLY_STATUS.toString('hex'));
});

t.test('blobmsg: explicit types, padding and round trips', async (t) => {
  t.equal(encodeBlobmsgTable({ a: blobmsg.int8(5) }).toString('hex'), '870000090001610005000000', 'int8: 9 bytes, padded to 12');
  t.equal(encodeBlobmsgTable({ a: blobmsg.int16(-2) }).toString('hex'), '8600000a00016100fffe0000', 'int16 big-endian');
  t.equal(encodeBlobmsgTable({ a: blobmsg.int32(0xe10ced36) }).toString('hex'), '8500000c00016100e10ced36', 'an unsigned id in an int32 (as ubus writes object ids)');
  t.equal(encodeBlobmsgTable({ a: 2 ** 31 }).toString('hex'), '840000100001610000000000' + '80000000', 'just past int32: int64');
  t.equal(encodeBlobmsgTable({ a: blobmsg.int64(2n ** 64n - 1n) }).toString('hex'), '8400001000016100ffffffffffffffff');
  t.equal(encodeBlobmsgTable({ a: 0.1 }).toString('hex'), '88000010000161003fb999999999999a', 'double big-endian');
  t.equal(encodeBlobmsgTable({ abc: '' }).toString('hex'), '8300000d000361626300000000000000', 'empty string: just the NUL');
  t.equal(encodeBlobmsgTable({ a: new Uint8Array([1, 2, 3]) }).toString('hex'), '8000000b0001610001020300', 'bytes: unspec');
  t.equal(encodeBlobmsgTable({ a: null, b: undefined }).toString('hex'), '8000000800016100', 'null: empty unspec (as the CLI makes JSON null); undefined: left out');
  t.equal(encodeBlobmsgTable({ a: null, b: [null] }, { nulls: 'omit' }).toString('hex'), '8100001000016200' + '8000000800000000', "nulls 'omit': left out of tables, kept in arrays");
  t.equal(encodeBlobmsgTable({}).length, 0);

  const values = {
    s: 'grüße ✓',
    i: -2147483648,
    j: 2147483647,
    k: Number.MAX_SAFE_INTEGER,
    l: -(2 ** 40),
    d: -0.5,
    t: true,
    f: false,
    n: null,
    e: {},
    ea: [],
    nested: { list: [{ a: 1 }, [2, [3, 'x']], 'y', null], deep: { deeper: { deepest: 'z' } } },
  };
  t.strictSame(decodeBlobmsgTable(encodeBlobmsgTable(values)), values, 'round trip');
  const proto = decodeBlobmsgTable(encodeBlobmsgTable({ ['__proto__']: 'x' }));
  t.equal(Object.getPrototypeOf(proto), Object.prototype, 'a member named __proto__ does not replace the prototype');
  t.equal(Object.getOwnPropertyDescriptor(proto, '__proto__')?.value, 'x', 'it is an ordinary member');
  t.strictSame(decodeBlobmsgTable(encodeBlobmsgTable({ big: 2n ** 63n - 1n, small: 7n, neg: -(2n ** 62n) })), { big: 2n ** 63n - 1n, small: 7, neg: -(2n ** 62n) }, 'int64: a number when safe, else a bigint');
  t.strictSame(decodeBlobmsgTable(encodeBlobmsgTable({ b: blobmsg.int8(1), z: blobmsg.int8(0), h: blobmsg.int16(-300) })), { b: true, z: false, h: -300 }, 'int8 reads as bool, as ubus prints it');
  t.strictSame(decodeBlobmsgTable(encodeBlobmsgTable({ u: blobmsg.unspec(new Uint8Array([9])) })), { u: Buffer.from([9]) });
  t.strictSame(decodeBlobmsgTable(Buffer.from('8300000c00016100780079000000', 'hex').subarray(0, 12)), { a: 'x' }, 'a string is read up to its first NUL, as C does');
});

t.test('blobmsg: values that cannot be encoded are a UbusEncodeError', async (t) => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ a: 'x\0y' }, /string "a" "x\\u0000y" contains a NUL/],
    [{ 'a\0': 1 }, /name "a\\u0000" contains a NUL byte/],
    [{ a: blobmsg.int32(2 ** 32) }, /int32 "a" = 4294967296 is not an integer of 32 bits/],
    [{ a: blobmsg.int8(1.5) }, /bool "a" = 1.5 is not an integer of 8 bits/],
    [{ a: blobmsg.int64(2 ** 60) }, /int64 "a" = 1152921504606847000 is not a safe integer \(use a bigint\)/],
    [{ a: blobmsg.int64(2n ** 64n) }, /int64 "a" = 18446744073709551616 is out of range/],
    [{ a: () => 1 }, /"a" is a function, which has no blobmsg type/],
    [{ a: new Date(0) }, /"a" is a Date, not a plain object/],
    [{ a: blobmsg.table([] as unknown as Record<string, unknown>) }, /table "a" needs a plain object/],
    [cyclic, /nesting deeper than 64/],
    [{ a: 'x'.repeat(0x1000000) }, /exceeds the 24-bit length field/],
  ];
  for (const [value, message] of cases) t.throws(() => encodeBlobmsgTable(value), { name: 'UbusEncodeError', message }, String(message));
  t.type(new UbusEncodeError('x'), Error);
});

t.test('blobmsg: malformed input is a UbusDecodeError naming what and where', async (t) => {
  const valid = '8300000a0001610062000000'; // "a": "b", 10 bytes padded to 12
  const cases: [string, 'table' | 'array', string][] = [
    ['830000', 'table', 'blobmsg: truncated attribute header (3 of 4 bytes) at offset 0'],
    [`${valid}85000009`, 'table', 'blobmsg: attribute length 9 exceeds buffer of 4 at offset 12'],
    [`${valid}83000002`, 'table', 'blobmsg: attribute length 2 is shorter than its header at offset 12'],
    ['8300000800ff6100', 'table', 'blobmsg: name length 255 runs past the attribute (4 bytes) at offset 0'],
    ['8300000800016162', 'table', 'blobmsg: name is not NUL-terminated at offset 0'],
    ['8300000500000000', 'table', 'blobmsg: attribute of 1 bytes has no room for its name length at offset 0'],
    ['0300000861620000', 'table', 'blobmsg: table member without a name at offset 0'],
    ['8300000800000000', 'table', 'blobmsg: table member without a name at offset 0'],
    ['8900000800016100', 'table', 'blobmsg: unknown type 9 of "a" at offset 0'],
    ['8500000b00016100000001', 'table', 'blobmsg: int32 "a" has 3 bytes, want 4 at offset 0'],
    ['8700000a000161000101', 'table', 'blobmsg: bool "a" has 2 bytes, want 1 at offset 0'],
    ['8800000c0001610000000000', 'table', 'blobmsg: double "a" has 4 bytes, want 8 at offset 0'],
    ['8300000a000161007878', 'table', 'blobmsg: string "a" is not NUL-terminated at offset 0'],
    ['8300000800016100', 'table', 'blobmsg: string "a" is not NUL-terminated at offset 0'],
    // inside an array inside a table: offsets count from the start of the outer buffer
    ['8100001400016100' + '8500000b00000000000001' + '00', 'table', 'blobmsg: int32 "" has 3 bytes, want 4 at offset 8'],
    ['8200001000016100' + '8500000900016200', 'table', 'blobmsg: attribute length 9 exceeds buffer of 8 at offset 8'],
  ];
  for (const [input, kind, message] of cases) {
    t.throws(() => decodeBlobmsgFields(Buffer.from(input, 'hex'), kind), { name: 'UbusDecodeError', message }, message);
  }
  t.strictSame(decodeBlobmsgFields(Buffer.from('05000008000000018500000c0000000000000002', 'hex'), 'array').map((f) => f.value), [1, 2], 'array elements need no name (plain or extended header)');
  t.throws(() => readBlobAttrs(Buffer.from('01000008000000000102', 'hex'), 0, 'ubus'), { message: 'ubus: truncated attribute header (2 of 4 bytes) at offset 8' });

  // nesting: 100 arrays inside each other, built by hand (the encoder refuses it)
  const w = new BlobWriter();
  const tokens = [w.openField(BlobmsgType.ARRAY, 'deep')];
  for (let i = 0; i < 100; i++) tokens.push(w.openField(BlobmsgType.ARRAY, ''));
  for (const tok of tokens.reverse()) w.close(tok);
  t.throws(() => decodeBlobmsgTable(w.finish()), { name: 'UbusDecodeError', message: /^blobmsg: nesting deeper than 64 at offset \d+$/ });
});

t.test('blobmsg: random corruption of real frames never crashes or hangs', async (t) => {
  // deterministic xorshift, so that a failure can be replayed
  let seed = 0x9e3779b9;
  const rand = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const inputs = [SESSION_INVOKE, SESSION_REPLY_DATA, SESSION_LOOKUP_DATA, EVENT_DELIVERY].map((f) => f.subarray(12));
  let decoded = 0;
  let rejected = 0;
  for (let i = 0; i < 5000; i++) {
    const src = inputs[i % inputs.length];
    const b = Buffer.from(src.subarray(0, rand(4) === 0 ? rand(src.length + 1) : src.length));
    for (let j = 0, n = 1 + rand(4); j < n && b.length > 0; j++) b[rand(b.length)] = rand(256);
    try {
      for (const a of readBlobAttrs(b, 12, 'ubus')) if (a.id === UbusAttr.DATA || a.id === UbusAttr.SIGNATURE) decodeBlobmsgFields(a.payload, 'table', a.offset + 4);
      decoded++;
    } catch (e) {
      if (!(e instanceof UbusDecodeError)) throw e;
      rejected++;
    }
  }
  t.equal(decoded + rejected, 5000);
  t.ok(rejected > 1000, `most corruptions are caught (${rejected} rejected, ${decoded} still well-formed)`);
});

// ---- the client against a scripted ubusd

const dir = mkdtempSync(path.join(os.tmpdir(), 'ntm-ubus-blob-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let fakeCount = 0;

/** A ubusd stand-in: says HELLO, hands the test each frame the client sends, sends what it is told. */
class FakeUbusd {
  readonly path = path.join(dir, `ubus-${++fakeCount}.sock`);
  connections = 0;
  private server: Server | null = null;
  private socket: Socket | null = null;
  private readonly frames: Buffer[] = [];
  private waiter: (() => void) | null = null;

  constructor(private readonly hello: Buffer) {}

  async listen(): Promise<void> {
    this.server = createServer((s) => {
      this.connections++;
      this.socket = s;
      const reader = new UbusFrameReader();
      s.on('data', (chunk: Buffer) => {
        this.frames.push(...reader.push(chunk));
        this.waiter?.();
      });
      s.on('error', () => undefined);
      s.write(this.hello);
    });
    await new Promise<void>((resolve) => this.server!.listen(this.path, resolve));
  }

  /** The next frame the client sent (fails the wait after 5 s). */
  async next(): Promise<Buffer> {
    const deadline = Date.now() + 5000;
    while (this.frames.length === 0) {
      if (Date.now() > deadline) throw new Error('no frame from the client within 5 s');
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 100).unref();
      });
      this.waiter = null;
    }
    return this.frames.shift()!;
  }

  send(...frames: Buffer[]): void {
    this.socket!.write(Buffer.concat(frames));
  }

  /** Sends a frame in single bytes, one write each: the client sees it in many reads. */
  async sendSlowly(frame: Buffer): Promise<void> {
    for (const byte of frame) {
      this.socket!.write(Buffer.from([byte]));
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  dropConnection(): void {
    this.socket?.destroy();
  }

  async close(): Promise<void> {
    this.socket?.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
}

const sameHex = (t: Test, got: Buffer, want: Buffer, msg: string): void => void t.equal(got.toString('hex'), want.toString('hex'), msg);

t.test('client: lookup and invoke, byte for byte as the ubus CLI', async (t) => {
  const fake = new FakeUbusd(SESSION_HELLO);
  await fake.listen();
  const c = new UbusClient(fake.path);
  t.teardown(async () => {
    await c.close();
    await fake.close();
  });
  await c.connect();
  t.equal(c.localId, 0x01153034, 'our id from HELLO');
  const call = c.invoke('session', 'list', SESSION_ARGS);
  sameHex(t, await fake.next(), SESSION_LOOKUP, 'LOOKUP as the CLI sends it');
  fake.send(SESSION_LOOKUP_DATA, SESSION_LOOKUP_STATUS);
  sameHex(t, await fake.next(), SESSION_INVOKE, 'INVOKE as the CLI sends it');
  await fake.sendSlowly(SESSION_REPLY_DATA);
  fake.send(SESSION_REPLY_STATUS);
  const r = await call;
  t.equal(r.status, UbusStatus.OK);
  t.strictSame(r.data, SESSION_REPLY, 'a reply that arrived one byte per read');
  t.equal(c.stats.droppedMessages + c.stats.malformedFrames, 0);
});

t.test('client: events, byte for byte as ubus listen and ubus send', async (t) => {
  const listenFake = new FakeUbusd(LISTEN_HELLO);
  await listenFake.listen();
  const listener = new UbusClient(listenFake.path);
  const sendFake = new FakeUbusd(SESSION_HELLO);
  await sendFake.listen();
  const sender = new UbusClient(sendFake.path);
  t.teardown(async () => {
    await listener.close();
    await sender.close();
    await listenFake.close();
    await sendFake.close();
  });
  await listener.connect();
  const seen: [string, unknown][] = [];
  const listening = listener.listen('ntmobile.handover', (type, data) => seen.push([type, data]));
  sameHex(t, await listenFake.next(), LISTEN_ADD_OBJECT, 'an anonymous object for the events');
  listenFake.send(LISTEN_ADD_OBJECT_REPLY);
  sameHex(t, await listenFake.next(), LISTEN_REGISTER, '"register" on the event object (id 1) with the object id as int32');
  listenFake.send(STATUS_OK_SEQ2);
  await listening;
  listenFake.send(EVENT_DELIVERY);
  sameHex(t, await listenFake.next(), EVENT_ACK, 'the event acknowledged as libubus does');
  t.strictSame(seen, [['ntmobile.handover', { interface: 'wan', up: true }]]);

  await sender.connect();
  const sent = sender.sendEvent('ntmobile.handover', { interface: 'wan', up: true });
  sameHex(t, await sendFake.next(), SEND_EVENT, '"send" on the event object with {id, data}');
  sendFake.send(STATUS_OK_SEQ1);
  await sent;
});

t.test('client: a published object answers calls', async (t) => {
  const fake = new FakeUbusd(SESSION_HELLO);
  await fake.listen();
  const logs: string[] = [];
  const c = new UbusClient(fake.path, { log: (l) => logs.push(l) });
  t.teardown(async () => {
    await c.close();
    await fake.close();
  });
  await c.connect();
  const added = c.addObject('ntmobile', {
    status: { handler: () => undefined },
    ping: {
      policy: { name: BlobmsgType.STRING, count: BlobmsgType.INT32 },
      handler: (req) => {
        if (req.args.name === 'boom') throw new Error('boom');
        return { data: { pong: req.args.name, count: req.args.count ?? null } };
      },
    },
  });
  sameHex(t, await fake.next(), ADD_NTMOBILE, 'ADD_OBJECT with the signature as ubus_add_object() builds it');
  const OBJ = 0x11223344;
  fake.send(
    encodeUbusMessage(UbusMsg.DATA, 1, 0, (w) => w.putU32(UbusAttr.OBJID, OBJ)),
    encodeUbusMessage(UbusMsg.STATUS, 1, 0, (w) => w.putU32(UbusAttr.STATUS, 0)),
  );
  await added;

  const CALLER = 0xabcdef01;
  const invoke = (seq: number, method: string, args: Record<string, unknown> | null, extra?: (w: BlobWriter) => void, objId = OBJ): Buffer =>
    encodeUbusMessage(UbusMsg.INVOKE, seq, CALLER, (w) => {
      w.putU32(UbusAttr.OBJID, objId);
      w.putString(UbusAttr.METHOD, method);
      if (args !== null) w.put(UbusAttr.DATA, encodeBlobmsgTable(args));
      extra?.(w);
    });
  const status = (seq: number, code: number, objId = OBJ): Buffer =>
    encodeUbusMessage(UbusMsg.STATUS, seq, CALLER, (w) => {
      w.putU32(UbusAttr.STATUS, code);
      w.putU32(UbusAttr.OBJID, objId);
    });

  fake.send(invoke(7, 'ping', { name: 'x' }));
  sameHex(t, await fake.next(), encodeUbusMessage(UbusMsg.DATA, 7, CALLER, (w) => {
    w.putU32(UbusAttr.OBJID, OBJ);
    w.put(UbusAttr.DATA, encodeBlobmsgTable({ pong: 'x', count: null }));
  }), 'DATA to the caller (seq and peer of the call), as ubus_send_reply()');
  sameHex(t, await fake.next(), status(7, UbusStatus.OK), 'then STATUS, as ubus_complete_deferred_request()');

  fake.send(invoke(8, 'nope', {}));
  sameHex(t, await fake.next(), status(8, UbusStatus.METHOD_NOT_FOUND), 'unknown method');
  fake.send(invoke(9, 'ping', {}, undefined, 0x55));
  sameHex(t, await fake.next(), status(9, UbusStatus.NOT_FOUND, 0x55), 'unknown object');
  fake.send(invoke(10, 'ping', null));
  sameHex(t, await fake.next(), status(10, UbusStatus.INVALID_ARGUMENT), 'no DATA attribute');
  fake.send(invoke(11, 'ping', { name: 'boom' }));
  sameHex(t, await fake.next(), status(11, UbusStatus.UNKNOWN_ERROR), 'a handler that throws');
  t.match(logs.join('\n'), /ntmobile\.ping: boom/, 'and its message is logged');
  fake.send(invoke(12, 'ping', { name: 'quiet' }, (w) => w.putU8(UbusAttr.NO_REPLY, 1)), invoke(13, 'status', {}));
  sameHex(t, await fake.next(), status(13, UbusStatus.OK), 'no answer at all to a call marked NO_REPLY; a method without data answers STATUS only');
  fake.send(encodeUbusMessage(UbusMsg.INVOKE, 14, CALLER, (w) => {
    w.putU32(UbusAttr.OBJID, OBJ);
    w.putString(UbusAttr.METHOD, 'ping');
    w.put(UbusAttr.DATA, Buffer.from('85000009', 'hex'));
  }));
  sameHex(t, await fake.next(), status(14, UbusStatus.INVALID_ARGUMENT), 'arguments that do not decode');
});

t.test('framing: any split of the stream gives the same messages', async (t) => {
  const stream = Buffer.concat([SESSION_HELLO, SESSION_LOOKUP_DATA, SESSION_LOOKUP_STATUS, EVENT_DELIVERY]);
  const want = [SESSION_HELLO, SESSION_LOOKUP_DATA, SESSION_LOOKUP_STATUS, EVENT_DELIVERY].map((b) => b.toString('hex'));
  const badSplits: number[] = [];
  for (let cut = 0; cut <= stream.length; cut++) {
    const r = new UbusFrameReader();
    const got = [...r.push(stream.subarray(0, cut)), ...r.push(stream.subarray(cut))].map((b) => b.toString('hex'));
    if (got.join() !== want.join()) badSplits.push(cut);
  }
  t.strictSame(badSplits, [], 'no split point changes the messages');
  const r = new UbusFrameReader();
  const bytewise = [...stream].flatMap((byte) => r.push(Buffer.from([byte])));
  t.strictSame(bytewise.map((b) => b.toString('hex')), want, 'one byte per read');
});

t.test('framing: a header that breaks the framing is a UbusDecodeError as soon as it arrives', async (t) => {
  t.throws(() => new UbusFrameReader().push(hex('010000000000000000000004')), { name: 'UbusDecodeError', message: 'ubus: message version 1, want 0, at stream offset 0' });
  t.throws(() => new UbusFrameReader().push(Buffer.concat([SESSION_HELLO, hex('000100010000000000000002')])), {
    message: 'ubus: message length 2 is shorter than its blob header at stream offset 12',
  });
  t.throws(() => new UbusFrameReader().push(hex('000200010000000000100001')), { message: 'ubus: message of 1048577 bytes exceeds the limit of 1048576 at stream offset 0' });
  t.throws(() => new UbusFrameReader(64).push(hex('000200010000000000000044')), { message: 'ubus: message of 68 bytes exceeds the limit of 64 at stream offset 0' });
  t.throws(() => decodeUbusMessage(hex('00010001000000000000000b01000007000000')), { name: 'UbusDecodeError', message: 'ubus: attribute 1 has 3 bytes, want 4 at offset 12' });
  t.throws(() => decodeUbusMessage(hex('00040001000000000000000c0200000861626364')), { message: 'ubus: string attribute 2 is not NUL-terminated at offset 12' });
});

t.test('client: malformed frames, timeouts, lost connections', async (t) => {
  const fake = new FakeUbusd(SESSION_HELLO);
  await fake.listen();
  const logs: string[] = [];
  const c = new UbusClient(fake.path, { backoffMinMs: 10, log: (l) => logs.push(l) });
  t.teardown(async () => {
    await c.close();
    await fake.close();
  });
  await c.connect();

  const timedOut = c.invoke(5, 'slow', {}, { timeoutMs: 50 });
  await t.rejects(timedOut, { name: 'UbusError', status: UbusStatus.TIMEOUT, message: /^ubus call #5 slow: no answer within 50 ms: UBUS_STATUS_TIMEOUT \(Request timed out\)$/ });
  t.equal((await fake.next())[1], UbusMsg.INVOKE);

  // a well-framed reply whose status attribute is 3 bytes: dropped, its request ends at once
  const bad = c.invoke(5, 'x', {});
  const f = await fake.next();
  fake.send(hex('0001', f.subarray(2, 8).toString('hex'), '0000000b01000007000000'));
  await t.rejects(bad, { name: 'UbusDecodeError', message: /attribute 1 has 3 bytes/ });
  t.equal(c.stats.droppedMessages, 1, 'counted as dropped');
  fake.send(encodeUbusMessage(UbusMsg.STATUS, 999, 7, (w) => w.putU32(UbusAttr.STATUS, 0)));
  await until('the stray reply to be dropped', () => c.stats.droppedMessages === 2);
  t.equal(c.stats.connects, 1, 'the connection stays');

  // a frame that breaks the framing: the connection is closed, a pending request fails, the client reconnects
  const pending = c.invoke(5, 'y', {});
  await fake.next();
  const reconnected = new Promise<void>((resolve) => c.once('ready', resolve));
  fake.send(hex('07000000000000000000000c01000008'));
  await t.rejects(pending, { name: 'UbusError', status: UbusStatus.CONNECTION_FAILED });
  await reconnected;
  t.equal(c.stats.malformedFrames, 1, 'counted');
  t.equal(c.stats.connects, 2, 'connected again');
  t.equal(fake.connections, 2);
  t.match(logs.join('\n'), /message version 7, want 0.*closing the connection/);

  const beforeDrop = c.stats.disconnects;
  const again = new Promise<void>((resolve) => c.once('ready', resolve));
  fake.dropConnection();
  await again;
  t.equal(c.stats.disconnects, beforeDrop + 1, 'a dropped connection is noticed and re-established');
});

t.test('client: without ubusd, connect() fails and start() keeps trying quietly', async (t) => {
  const fake = new FakeUbusd(LISTEN_HELLO);
  const once = new UbusClient(fake.path, { reconnect: false });
  await t.rejects(once.connect(), { name: 'UbusError', status: UbusStatus.CONNECTION_FAILED, message: /^ubus: connect .*: UBUS_STATUS_CONNECTION_FAILED \(Connection failed\)$/ });
  await once.close();

  const logs: string[] = [];
  const c = new UbusClient(fake.path, { backoffMinMs: 5, backoffMaxMs: 20, log: (l) => logs.push(l) });
  t.teardown(async () => {
    await c.close();
    await fake.close();
  });
  await c.addObject('ntmobile', { status: { handler: () => ({ data: { ok: true } }) } });
  c.start();
  await until('several failed attempts', () => c.stats.failedConnects >= 4);
  t.equal(logs.filter((l) => l.includes('cannot connect')).length, 1, `logged once for ${c.stats.failedConnects} failures`);
  t.match(logs[0], /retrying in the background/);
  t.equal(c.ready, false);
  await fake.listen();
  const add = await fake.next();
  t.equal(decodeUbusMessage(add).type, UbusMsg.ADD_OBJECT, 'the registered object is published once ubusd is there');
  const ready = new Promise<void>((resolve) => c.once('ready', resolve));
  fake.send(
    encodeUbusMessage(UbusMsg.DATA, add.readUInt16BE(2), 0, (w) => w.putU32(UbusAttr.OBJID, 0x1234)),
    encodeUbusMessage(UbusMsg.STATUS, add.readUInt16BE(2), 0, (w) => w.putU32(UbusAttr.STATUS, 0)),
  );
  await ready;
  t.equal(c.ready, true);
  await until('the reconnection to be logged', () => logs.some((l) => /connected to .* after \d+ failed attempt\(s\)/.test(l)));
  t.equal(new UbusError(UbusStatus.INVALID_ARGUMENT, 'x').statusName, 'UBUS_STATUS_INVALID_ARGUMENT');
});
