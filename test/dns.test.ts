// DNS: the query decoder, response helpers and TCP framing of protocol/dns.ts; the DC's
// authoritative server and the router's DNS hook over real UDP and TCP sockets on 127.0.0.1,
// asked by node:dns (c-ares) and by raw dns-packet queries.
import t, { type Test } from 'tap';
import dgram from 'node:dgram';
import net from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Resolver } from 'node:dns/promises';
import { decode, encode, RECURSION_DESIRED, type Answer, type DecodedPacket, type Packet } from 'dns-packet';
import {
  buildResponse, decodeQuery, DnsStreamReader, encodeResponse, frameMessage, inZone, normalizeName,
  type AddressSet, type QueryPacket,
} from '../protocol/dns.js';
import { DnsServer, type DnsServerOptions } from '../servers/dc/dns-server.js';
import { DnsHook, type DnsHookOptions } from '../router/dns-hook.js';

type Reply = DecodedPacket & { rcode: string };

let nextId = 1;
function query(name: string, type: string, fields: Partial<Packet> = {}): Buffer {
  return encode({
    type: 'query',
    id: nextId++,
    flags: RECURSION_DESIRED,
    questions: [{ name, type: type as 'A' }],
    ...fields,
  });
}

const edns = (udpPayloadSize: number, ednsVersion = 0): Partial<Packet> => ({
  additionals: [{ type: 'OPT', name: '.', udpPayloadSize, ednsVersion, extendedRcode: 0, flags: 0, flag_do: false, options: [] }],
});

function udpExchange(port: number, message: Buffer): Promise<Buffer> {
  const socket = dgram.createSocket('udp4');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`no UDP answer from port ${port} within 3 s`));
    }, 3000);
    socket.once('message', (answer) => {
      clearTimeout(timer);
      socket.close();
      resolve(answer);
    });
    socket.send(message, port, '127.0.0.1');
  });
}

async function ask(port: number, message: Buffer): Promise<Reply> {
  return decode(await udpExchange(port, message)) as Reply;
}

/** Writes chunks to one TCP connection with a pause between them; collects `count` answers. */
async function tcpExchange(port: number, chunks: Buffer[], count: number): Promise<Reply[]> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  let stream = Buffer.alloc(0);
  const replies: Reply[] = [];
  const answered = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      stream = Buffer.concat([stream, chunk]);
      while (stream.length >= 2 && stream.length >= 2 + stream.readUInt16BE(0)) {
        replies.push(decode(stream.subarray(2, 2 + stream.readUInt16BE(0))) as Reply);
        stream = stream.subarray(2 + stream.readUInt16BE(0));
      }
      if (replies.length >= count) resolve();
    });
    socket.on('close', () => reject(new Error(`connection closed after ${replies.length} of ${count} answers`)));
  });
  for (const chunk of chunks) {
    socket.write(chunk);
    await sleep(20);
  }
  await answered;
  socket.destroy();
  return replies;
}

function resolverFor(port: number): Resolver {
  const resolver = new Resolver({ timeout: 2000, tries: 1 });
  resolver.setServers([`127.0.0.1:${port}`]);
  return resolver;
}

const addresses = (count: number) => Array.from({ length: count }, (_, i) => `10.65.${i >> 8}.${i & 255}`);
const hosts = new Map<string, AddressSet>([
  ['b2.rb.fleet2.test', { a: ['10.64.0.2'], aaaa: ['fd00:64::2'] }],
  ['v4only.fleet2.test', { a: ['10.64.0.3'], aaaa: [] }],
  ['big.fleet2.test', { a: addresses(30), aaaa: [] }],
  ['huge.fleet2.test', { a: addresses(60), aaaa: [] }],
  ['broken.fleet2.test', { a: ['fd00::1'], aaaa: [] }],
]);

async function startServer(t: Test, extra: Partial<DnsServerOptions> = {}): Promise<DnsServer> {
  const server = new DnsServer({
    zone: 'fleet2.test',
    address: '127.0.0.1',
    port: 0,
    nsName: 'ns.fleet2.test',
    nsAddresses: ['192.0.2.53', '2001:db8::53'],
    lookup: (name) => hosts.get(name) ?? null,
    ...extra,
  });
  await server.start();
  t.teardown(() => server.stop());
  return server;
}

async function startHook(t: Test, extra: Partial<DnsHookOptions> = {}): Promise<DnsHook> {
  const hook = new DnsHook({
    address: '127.0.0.1',
    port: 0,
    domains: ['fleet2.test'],
    resolve: async (name) => hosts.get(name) ?? null,
    ...extra,
  });
  await hook.start();
  t.teardown(() => hook.stop());
  return hook;
}

const data = (records: Answer[] | undefined) => (records ?? []).map((r) => ('data' in r ? r.data : r.type));

t.test('decodeQuery accepts one QUERY question of class IN and says why it refuses the rest', async (t) => {
  const ok = decodeQuery(query('B2.rb.fleet2.test', 'A'));
  t.ok(ok.ok);
  if (ok.ok) t.equal(ok.packet.questions[0].name, 'B2.rb.fleet2.test');

  const dropped = (buf: Buffer, reason: RegExp) => {
    const r = decodeQuery(buf);
    t.notOk(r.ok);
    if (!r.ok) {
      t.match(r.reason, reason);
      t.equal(r.reply, undefined, 'no reply: dropped');
    }
  };
  dropped(Buffer.alloc(5), /5 bytes, shorter than the 12-byte header/);
  dropped(encode({ type: 'response', id: 1, questions: [{ name: 'a.fleet2.test', type: 'A' }] }), /QR is set/);
  dropped(Buffer.from('00010000000100000000000005', 'hex'), /undecodable/);

  const refused = (buf: Buffer, rcode: number, reason: RegExp) => {
    const r = decodeQuery(buf);
    t.notOk(r.ok);
    if (!r.ok) {
      t.match(r.reason, reason);
      t.equal((r.reply!.flags! & 0xf), rcode);
      t.equal(r.reply!.id, buf.readUInt16BE(0), 'the reply carries the query id');
    }
    return r.ok ? undefined : r.reply!;
  };
  refused(query('a.fleet2.test', 'A', { questions: [{ name: 'a.fleet2.test', type: 'A' }, { name: 'b.fleet2.test', type: 'A' }] }), 1, /2 questions, want exactly 1/);
  refused(query('a.fleet2.test', 'A', { questions: [] }), 1, /0 questions/);
  refused(query('a.fleet2.test', 'A', { flags: 4 << 11 }), 4, /opcode 4/);
  refused(query('a.fleet2.test', 'A', { questions: [{ name: 'a.fleet2.test', type: 'A', class: 'CH' }] }), 5, /class CH/);
  const badvers = refused(query('a.fleet2.test', 'A', edns(1232, 1)), 0, /EDNS version 1/);
  t.match(badvers?.additionals, [{ type: 'OPT', extendedRcode: 1 }], 'BADVERS is extended rcode 16');
  // One label "b2.rb" would be answered as the two labels b2 and rb.
  const dotted = Buffer.concat([
    Buffer.from('000a01000001000000000000', 'hex'),
    Buffer.from('\x05b2.rb\x06fleet2\x04test\x00', 'latin1'),
    Buffer.from('00010001', 'hex'),
  ]);
  refused(dotted, 1, /byte 0x2e at offset 15 inside a label/);
});

t.test('names, zones, responses and truncation', async (t) => {
  t.equal(normalizeName('B2.RB.Fleet2.Test.'), 'b2.rb.fleet2.test');
  t.equal(normalizeName('.'), '');
  t.ok(inZone('b2.rb.fleet2.test', 'fleet2.test'));
  t.ok(inZone('FLEET2.test.', 'fleet2.test'));
  t.notOk(inZone('xfleet2.test', 'fleet2.test'), 'a label boundary, not a suffix');
  t.notOk(inZone('fleet2.test', 'b.fleet2.test'));

  const decoded = decodeQuery(query('big.fleet2.test', 'A'));
  if (!decoded.ok) throw new Error(decoded.reason);
  const q: QueryPacket = decoded.packet;
  const answers: Answer[] = addresses(30).map((a) => ({ type: 'A', name: 'big.fleet2.test', ttl: 60, data: a }));
  const response = buildResponse(q, { rcode: 'NXDOMAIN', authoritative: true, answers });
  t.equal(response.id, q.id);
  t.equal(response.flags! & 0x0100, 0x0100, 'RD copied');
  t.equal(response.flags! & 0x0400, 0x0400, 'AA');
  t.equal(response.flags! & 0xf, 3);
  const cut = encodeResponse(response, 512);
  t.ok(cut.truncated);
  t.ok(cut.message.length <= 512);
  const whole = encodeResponse(response, 65535);
  t.notOk(whole.truncated);
  t.equal((decode(whole.message).answers ?? []).length, 30);
});

t.test('DnsStreamReader: whole messages from any chunking; zero and over-long frames refused', async (t) => {
  const one = query('a.fleet2.test', 'A');
  const two = query('b.fleet2.test', 'AAAA');
  const stream = Buffer.concat([frameMessage(one), frameMessage(two)]);
  const reader = new DnsStreamReader();
  const out: Buffer[] = [];
  for (const byte of stream) {
    const r = reader.push(Buffer.from([byte]));
    if (!r.ok) throw new Error(r.reason);
    out.push(...r.messages);
  }
  t.same(out, [one, two], 'byte by byte');
  const whole = new DnsStreamReader().push(stream);
  t.same(whole.ok && whole.messages, [one, two], 'both in one chunk');

  t.same(new DnsStreamReader().push(Buffer.from([0, 0])), { ok: false, reason: 'TCP frame of 0 bytes, want 1..65535' });
  t.same(new DnsStreamReader(512).push(Buffer.from([2, 1])), { ok: false, reason: 'TCP frame of 513 bytes, want 1..512' });
});

t.test('authoritative server: node:dns gets A, AAAA, NS, SOA and the right errors', async (t) => {
  const server = await startServer(t);
  t.not(server.port, 0, 'port 0 picks a port and reports it');
  const dns = resolverFor(server.port);
  t.same(await dns.resolve4('b2.rb.fleet2.test'), ['10.64.0.2']);
  t.same(await dns.resolve6('b2.rb.fleet2.test'), ['fd00:64::2']);
  t.same(await dns.resolve4('ns.fleet2.test'), ['192.0.2.53'], 'the name server answers for its own name');
  t.same(await dns.resolveNs('fleet2.test'), ['ns.fleet2.test']);
  t.match(await dns.resolveSoa('fleet2.test'), { nsname: 'ns.fleet2.test', hostmaster: 'hostmaster.fleet2.test', minttl: 60 });
  await t.rejects(dns.resolve4('nope.fleet2.test'), { code: 'ENOTFOUND' }, 'NXDOMAIN');
  await t.rejects(dns.resolve6('v4only.fleet2.test'), { code: 'ENODATA' }, 'NODATA');
  await t.rejects(dns.resolve4('example.com'), { code: 'EREFUSED' }, 'outside the zone');
  t.equal((await dns.resolve4('big.fleet2.test')).length, 30, 'c-ares retries a truncated answer over TCP');
  t.ok(server.counters.truncated >= 1);
  t.ok(server.counters.tcpConnections >= 1);
  t.equal(server.counters.nxdomain, 1);
  t.equal(server.counters.refused, 1);
});

t.test('authoritative server: flags, sections and glue on the wire', async (t) => {
  const server = await startServer(t);
  const port = server.port;

  const ns = await ask(port, query('fleet2.test', 'NS'));
  t.equal(ns.rcode, 'NOERROR');
  t.ok(ns.flag_aa, 'AA');
  t.ok(ns.flag_rd, 'RD copied');
  t.notOk(ns.flag_ra, 'no recursion here');
  t.same(data(ns.answers), ['ns.fleet2.test']);
  t.same(ns.additionals?.map((r) => [r.name, r.type, 'data' in r && r.data]),
    [['ns.fleet2.test', 'A', '192.0.2.53'], ['ns.fleet2.test', 'AAAA', '2001:db8::53']], 'glue');

  const soa = await ask(port, query('fleet2.test', 'SOA', { flags: 0 }));
  t.notOk(soa.flag_rd, 'RD not set when not asked');
  t.match(soa.answers, [{ type: 'SOA', data: { mname: 'ns.fleet2.test', rname: 'hostmaster.fleet2.test', refresh: 3600, minimum: 60 } }]);

  const mixed = await ask(port, query('B2.Rb.FLEET2.test', 'A'));
  t.same(mixed.questions, [{ name: 'B2.Rb.FLEET2.test', type: 'A', class: 'IN' }], 'question echoed as asked');
  t.match(mixed.answers, [{ name: 'B2.Rb.FLEET2.test', type: 'A', ttl: 60, data: '10.64.0.2' }]);

  const nx = await ask(port, query('nope.fleet2.test', 'A'));
  t.equal(nx.rcode, 'NXDOMAIN');
  t.ok(nx.flag_aa);
  t.match(nx.authorities, [{ type: 'SOA', name: 'fleet2.test' }], 'SOA for negative caching');

  for (const [name, type] of [['v4only.fleet2.test', 'AAAA'], ['b2.rb.fleet2.test', 'MX'], ['fleet2.test', 'A']] as const) {
    const nodata = await ask(port, query(name, type));
    t.equal(nodata.rcode, 'NOERROR', `${name} ${type}`);
    t.equal(nodata.answers?.length, 0);
    t.match(nodata.authorities, [{ type: 'SOA' }]);
  }

  const refused = await ask(port, query('example.com', 'A'));
  t.equal(refused.rcode, 'REFUSED');
  t.notOk(refused.flag_aa);
  t.equal((await ask(port, query('fleet2.test', 'AXFR'))).rcode, 'REFUSED', 'no zone transfers');
  t.equal((await ask(port, query('a.fleet2.test', 'A', { flags: 5 << 11 }))).rcode, 'NOTIMP');
});

t.test('authoritative server: TC over UDP past 512 bytes or the EDNS size, whole answers over TCP', async (t) => {
  const server = await startServer(t);
  const port = server.port;

  const classic = await ask(port, query('big.fleet2.test', 'A'));
  t.ok(classic.flag_tc, '30 A records do not fit 512 bytes');
  t.equal(classic.answers?.length, 0);
  t.same(classic.questions, [{ name: 'big.fleet2.test', type: 'A', class: 'IN' }]);

  const raw = await udpExchange(port, query('big.fleet2.test', 'A', edns(1232)));
  const roomy = decode(raw);
  t.ok(raw.length > 512);
  t.notOk(roomy.flag_tc, 'they fit the 1232 bytes EDNS offers');
  t.equal(roomy.answers?.length, 30);
  t.match(roomy.additionals, [{ type: 'OPT', udpPayloadSize: 1232 }], 'EDNS answered with EDNS');

  const capped = await ask(port, query('huge.fleet2.test', 'A', edns(4096)));
  t.ok(capped.flag_tc, 'UDP answers stop at 1232 bytes whatever the client offers');

  const [overTcp] = await tcpExchange(port, [frameMessage(query('huge.fleet2.test', 'A'))], 1);
  t.notOk(overTcp!.flag_tc);
  t.equal(overTcp!.answers?.length, 60);
  t.equal(server.counters.truncated, 2);
});

t.test('authoritative server: two queries on one TCP connection, in split chunks', async (t) => {
  const server = await startServer(t);
  const first = query('b2.rb.fleet2.test', 'A');
  const second = query('b2.rb.fleet2.test', 'AAAA');
  const stream = Buffer.concat([frameMessage(first), frameMessage(second)]);
  const cuts = [1, 3, 20, first.length + 3, stream.length];
  const chunks = cuts.map((end, i) => stream.subarray(i === 0 ? 0 : cuts[i - 1], end));
  const replies = await tcpExchange(server.port, chunks, 2);
  const byId = new Map(replies.map((r) => [r.id, r]));
  t.same(data(byId.get(first.readUInt16BE(0))?.answers), ['10.64.0.2']);
  t.same(data(byId.get(second.readUInt16BE(0))?.answers), ['fd00:64::2']);
  t.equal(server.counters.tcpConnections, 1);

  const halfClosed = net.connect(server.port, '127.0.0.1');
  halfClosed.end(frameMessage(first));
  const [answer] = await once(halfClosed, 'data');
  t.same(data(decode((answer as Buffer).subarray(2)).answers), ['10.64.0.2'], 'answered after the client half-closed');
  await once(halfClosed, 'close');
});

t.test('authoritative server: TCP limits (bad frame, idle timeout, max connections)', async (t) => {
  const server = await startServer(t, { tcpIdleMs: 150, maxTcpConnections: 1 });

  const bad = net.connect(server.port, '127.0.0.1');
  await once(bad, 'connect');
  bad.write(Buffer.from([0, 0]));
  await once(bad, 'close');
  t.equal(server.counters.tcpBadFrames, 1, 'a zero-length frame closes the connection');

  const idle = net.connect(server.port, '127.0.0.1');
  await once(idle, 'connect');
  const opened = Date.now();
  await once(idle, 'close');
  t.ok(Date.now() - opened < 1000, 'an idle connection is closed');

  const first = net.connect(server.port, '127.0.0.1');
  await once(first, 'connect');
  await sleep(20);
  const second = net.connect(server.port, '127.0.0.1');
  second.on('error', () => {});
  await once(second, 'close');
  t.equal(server.counters.tcpRejected, 1, 'a connection past maxTcpConnections is closed');
  first.destroy();
});

t.test('authoritative server: garbage is dropped and counted, and the server goes on answering', async (t) => {
  const server = await startServer(t);
  const socket = dgram.createSocket('udp4');
  const garbage = [
    Buffer.alloc(0),
    Buffer.from('hello'),
    Buffer.alloc(12, 0xff), // QR set
    Buffer.from('00010000000100000000000005', 'hex'), // a question cut short
    Buffer.concat([Buffer.from('0001000000010000000000000', 'hex'), Buffer.alloc(40, 0xc0)]), // pointer loop
  ];
  for (const g of garbage) socket.send(g, server.port, '127.0.0.1');
  await sleep(50);
  socket.close();
  const after = await ask(server.port, query('b2.rb.fleet2.test', 'A'));
  t.same(data(after.answers), ['10.64.0.2']);
  t.equal(server.counters.malformed, garbage.length);
  t.equal(server.counters.queries, garbage.length + 1);
  t.equal(server.counters.answered, 1);

  const formerr = await ask(server.port, query('a.fleet2.test', 'A', { questions: [] }));
  t.equal(formerr.rcode, 'FORMERR', 'parseable but not a query we serve: FORMERR');
  t.equal(server.counters.formerr, 1);
});

t.test('authoritative server: lookup data that does not encode is SERVFAIL, with the reason', async (t) => {
  const errors: unknown[] = [];
  const server = await startServer(t, { onError: (e) => errors.push(e) });
  t.equal((await ask(server.port, query('broken.fleet2.test', 'A'))).rcode, 'SERVFAIL');
  t.equal(server.counters.answerErrors, 1);
  t.match(String(errors[0]), /A record for broken\.fleet2\.test: "fd00::1" is not an IPv4 address/);
});

t.test('DNS hook: five concurrent queries share one resolve; answers are cached for ttl', async (t) => {
  let clock = 1_000_000;
  const calls: string[] = [];
  const hook = await startHook(t, {
    now: () => clock,
    resolve: async (name) => {
      calls.push(name);
      await sleep(100);
      return hosts.get(name) ?? null;
    },
  });
  const replies = await Promise.all(Array.from({ length: 5 }, () => ask(hook.port, query('b2.rb.fleet2.test', 'A'))));
  t.same(calls, ['b2.rb.fleet2.test'], 'one resolve call');
  for (const r of replies) {
    t.equal(r.rcode, 'NOERROR');
    t.match(r.answers, [{ type: 'A', data: '10.64.0.2', ttl: 30 }]);
    t.ok(r.flag_ra);
    t.notOk(r.flag_aa);
  }
  t.equal(hook.counters.coalesced, 4);

  clock += 10_000;
  const cached = await ask(hook.port, query('b2.rb.fleet2.test', 'AAAA'));
  t.match(cached.answers, [{ type: 'AAAA', data: 'fd00:64::2', ttl: 20 }], 'from the cache, with the TTL left');
  t.same(await resolverFor(hook.port).resolve4('b2.rb.fleet2.test'), ['10.64.0.2'], 'node:dns too');
  t.equal(calls.length, 1);

  clock += 21_000;
  await ask(hook.port, query('b2.rb.fleet2.test', 'A'));
  t.equal(calls.length, 2, 'asked again once the ttl is over');
});

t.test('DNS hook: a resolve that never settles is SERVFAIL within the timeout, and aborted', async (t) => {
  const signals: AbortSignal[] = [];
  const hook = await startHook(t, {
    timeoutMs: 300,
    resolve: (_name, signal) => {
      signals.push(signal);
      return new Promise(() => {});
    },
  });
  const started = performance.now();
  const r = await ask(hook.port, query('stuck.fleet2.test', 'A'));
  const elapsed = performance.now() - started;
  t.equal(r.rcode, 'SERVFAIL');
  t.ok(elapsed < 300 + 500, `answered in ${elapsed.toFixed(0)} ms`);
  t.ok(signals[0]?.aborted, 'the resolve call is aborted');
  t.match(String(signals[0]?.reason), /did not settle within 300 ms/);
  t.equal(hook.counters.resolveTimeouts, 1);
  t.equal(hook.counters.servfail, 1);

  await ask(hook.port, query('stuck.fleet2.test', 'A'));
  t.equal(signals.length, 2, 'a failure is not cached');
});

t.test('DNS hook: a rejected resolve is SERVFAIL', async (t) => {
  const hook = await startHook(t, { resolve: async () => { throw new Error('DC unreachable'); } });
  t.equal((await ask(hook.port, query('a.fleet2.test', 'A'))).rcode, 'SERVFAIL');
  t.equal(hook.counters.resolveFailures, 1);
});

t.test('DNS hook: unknown names are NXDOMAIN and remembered for a while', async (t) => {
  let clock = 0;
  const calls: string[] = [];
  const hook = await startHook(t, {
    now: () => clock,
    resolve: async (name) => {
      calls.push(name);
      return null;
    },
  });
  t.equal((await ask(hook.port, query('gone.fleet2.test', 'A'))).rcode, 'NXDOMAIN');
  t.equal((await ask(hook.port, query('gone.fleet2.test', 'AAAA'))).rcode, 'NXDOMAIN');
  await t.rejects(resolverFor(hook.port).resolve4('gone.fleet2.test'), { code: 'ENOTFOUND' });
  t.equal(calls.length, 1, 'negative cache');
  t.equal(hook.counters.nxdomain, 3);
  clock += 5_001;
  await ask(hook.port, query('gone.fleet2.test', 'A'));
  t.equal(calls.length, 2, 'asked again after 5 s');
});

t.test('DNS hook: REFUSED outside its domains, NODATA for other types, over UDP and TCP', async (t) => {
  const calls: string[] = [];
  const hook = await startHook(t, {
    domains: ['fleet2.test', 'Other.Example.'],
    resolve: async (name) => {
      calls.push(name);
      return hosts.get(name) ?? { a: ['10.64.9.9'], aaaa: [] };
    },
  });
  const refused = await ask(hook.port, query('example.com', 'A'));
  t.equal(refused.rcode, 'REFUSED');
  t.equal(hook.counters.refused, 1);
  const mx = await ask(hook.port, query('b2.rb.fleet2.test', 'MX'));
  t.equal(mx.rcode, 'NOERROR');
  t.equal(mx.answers?.length, 0);
  t.same(calls, [], 'neither calls resolve');

  const v6 = await ask(hook.port, query('v4only.fleet2.test', 'AAAA'));
  t.equal(v6.rcode, 'NOERROR');
  t.equal(v6.answers?.length, 0, 'resolved, but no IPv6 address: NODATA');

  const [overTcp] = await tcpExchange(hook.port, [frameMessage(query('host.other.example', 'A'))], 1);
  t.same(data(overTcp!.answers), ['10.64.9.9'], 'second domain, over TCP');

  const socket = dgram.createSocket('udp4');
  socket.send(Buffer.from('junk'), hook.port, '127.0.0.1');
  await sleep(50);
  socket.close();
  t.equal(hook.counters.malformed, 1);
  t.equal((await ask(hook.port, query('b2.rb.fleet2.test', 'A'))).rcode, 'NOERROR');
});

t.test('DNS hook: stop aborts resolve calls still running', async (t) => {
  let signal: AbortSignal | undefined;
  const hook = new DnsHook({
    address: '127.0.0.1',
    port: 0,
    domains: ['fleet2.test'],
    resolve: (_name, s) => {
      signal = s;
      return new Promise(() => {});
    },
  });
  await hook.start();
  const socket = dgram.createSocket('udp4');
  socket.send(query('slow.fleet2.test', 'A'), hook.port, '127.0.0.1');
  while (!signal) await sleep(10);
  await hook.stop();
  socket.close();
  t.ok(signal.aborted);
});
