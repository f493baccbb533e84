// Tunnel setup and moves between two TunnelManagers joined by in-memory control channels and
// engines over fake devices (pure logic: no sockets, no kernel). What is checked here is who may
// move a tunnel: a rekey made by a holder of Ktun only (a DC, an RS) must not steer or break it,
// a path commit sent earlier than the one taken must not pull it back, and a move in the middle
// of a rekey is still a path update. And that what a tunnel keeps for its life holds no slice of
// node's shared Buffer pool (one such slice keeps a whole 8 KB slab alive per tunnel).

import t from 'tap';
import { ControlChannel, type Incoming } from '../protocol/channel.js';
import { KeyClass, PathKind, Role } from '../protocol/control.js';
import { encodeSockaddr } from '../protocol/endpoint.js';
import { generateX25519, SUITE_CODES } from '../protocol/keys.js';
import { randomBytes } from 'node:crypto';
import { Engine } from '../tunnel/engine.js';
import { TunnelTable } from '../tunnel/table.js';
import { TunnelManager } from '../tunnel/setup.js';
import { FakeDevice, FakeSocket } from './fakes.js';
import { ipPacket } from './tools/packets.js';

const A_AT = encodeSockaddr('198.18.0.1', 4500);
const B_AT = encodeSockaddr('198.18.0.2', 4500);
const A_NEW = encodeSockaddr('198.18.7.7', 4500);
const FORGER = encodeSockaddr('198.18.66.66', 4500);
const ROUTE_ID = 77;
const VIP_A = '10.50.0.1';
const VIP_B = '10.60.0.1';
const FAST = { initialMs: 20, maxMs: 40, tries: 3 };

interface Node {
  name: string;
  table: TunnelTable;
  engine: Engine;
  dev: FakeDevice;
  sock: FakeSocket;
  channel: ControlChannel;
  tunnels: TunnelManager;
  /** where this node's control datagrams appear to come from */
  at: Buffer;
  /** when set, control datagrams this node sends are kept here instead (a network holding them) */
  held: Buffer[] | null;
}

/** Two nodes; control datagrams go straight across (from `at`), ESP through the fake sockets. */
function pair() {
  const keys = { a: generateX25519(), b: generateX25519() };
  const nodes: Record<'a' | 'b', Node> = {} as Record<'a' | 'b', Node>;
  for (const [me, other] of [
    ['a', 'b'],
    ['b', 'a'],
  ] as const) {
    const table = new TunnelTable();
    const dev = new FakeDevice();
    const sock = new FakeSocket();
    let tunnels: TunnelManager;
    const channel = new ControlChannel({
      send: (datagram, to) => {
        const self = nodes[me];
        if (self.held !== null) return void self.held.push(Buffer.from(datagram));
        // It reaches the other node, from wherever this one is now, if sent to where that one is.
        const peer = nodes[other];
        if (!to.equals(peer.at)) return;
        const from = Buffer.from(self.at);
        setImmediate(() => peer.channel.receive(datagram, from));
      },
      keys: (keyClass, keyId) => (keyClass === KeyClass.tun ? tunnels.ktun(keyId) : keyClass === KeyClass.path ? tunnels.pathKey(keyId) : undefined),
      onMessage: (m: Incoming) => {
        if (m.message.type === 'tunnelRequest') tunnels.onTunnelRequest(m, m.message.body);
        else if (m.message.type === 'pathProbe') tunnels.onPathProbe(m, m.message.body);
      },
    });
    const engine = new Engine(dev, sock, table);
    tunnels = new TunnelManager({
      table,
      channel,
      staticKey: keys[me],
      nodeName: `${me}.node.test`,
      suite: 'aes-gcm',
      rekeyAfterSeconds: 3600,
      onVips: async () => undefined,
      now: Date.now,
      renew: () => Promise.reject(new Error('no DC here')),
      retransmit: FAST,
      moveRetransmit: FAST,
      sendDummy: (tn) => void engine.sendDummy(tn),
      log: () => undefined,
    });
    engine.start();
    nodes[me] = { name: `${me}.node.test`, table, engine, dev, sock, channel, tunnels, at: me === 'a' ? A_AT : B_AT, held: null };
  }
  const ktun = randomBytes(32);
  const ktmp = randomBytes(32);
  const direction = (me: 'a' | 'b') => {
    const other = me === 'a' ? 'b' : 'a';
    return {
      inReplyTo: 0n,
      routeId: ROUTE_ID,
      ktun,
      ktmp,
      expiresAt: Date.now() + 3600_000,
      role: me === 'a' ? Role.initiator : Role.responder,
      localName: nodes[me].name,
      peerNode: nodes[other].name,
      peerName: nodes[other].name,
      peerVip4: other === 'a' ? VIP_A : VIP_B,
      peerVip6: null,
      peerVips4: [other === 'a' ? VIP_A : VIP_B],
      peerVips6: [],
      peerEndpoint: { address: other === 'a' ? '198.18.0.1' : '198.18.0.2', port: 4500 },
      peerPublicKey: keys[other].publicKey,
      path: PathKind.direct,
      peerCandidate: null,
      via: '',
    };
  };
  /** Moves ESP that `from` sent to the other node, as if it came from `from.at`. */
  const esp = (from: 'a' | 'b') => {
    const to = nodes[from === 'a' ? 'b' : 'a'];
    to.sock.deliver(nodes[from].sock.sent.splice(0).map((d) => ({ data: d.data, from: nodes[from].at })));
  };
  const stop = () => {
    for (const n of Object.values(nodes)) {
      n.tunnels.stop();
      n.channel.close();
    }
  };
  return { nodes, direction, esp, ktun, stop };
}

/** B waits for the Tunnel Request, A (the initiator) sends it. */
async function up(p: ReturnType<typeof pair>) {
  const rb = p.nodes.b.tunnels.onRouteDirection(p.direction('b'), 2000);
  const pa = await p.nodes.a.tunnels.onRouteDirection(p.direction('a'), 2000);
  const pb = await rb;
  return { pa, pb };
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

t.test('a rekey request made with Ktun alone neither moves the tunnel nor breaks it', async (t) => {
  const p = pair();
  t.teardown(p.stop);
  const { pb } = await up(p);
  const b = p.nodes.b;
  t.same(pb.tunnel.endpoint, A_AT, 'B has A at its real address');
  const spiBefore = pb.tunnel.outbound.spi;

  // The forger (a DC or an RS: it holds Ktun and Ktmp, not A's static key) sends B a Tunnel
  // Request on the same route from its own address. B answers it, but nothing may change for A.
  const forger = new ControlChannel({ send: (d) => setImmediate(() => b.channel.receive(d, FORGER)), keys: () => undefined, onMessage: () => undefined });
  t.teardown(() => forger.close());
  const eph = generateX25519();
  forger.send('tunnelRequest', { routeId: ROUTE_ID, node: p.nodes.a.name, suite: SUITE_CODES['aes-gcm'], spi: 0x5151_5151, ephemeral: eph.publicKey, nonce: randomBytes(32) }, { keyClass: KeyClass.tun, keyId: ROUTE_ID, key: p.ktun }, B_AT);
  await tick(20);
  t.equal(pb.rekeys, 1, 'B took it as a rekey');
  t.same(pb.tunnel.endpoint, A_AT, 'the endpoint did not move to the forger');
  t.equal(pb.tunnel.outbound.spi, spiBefore, 'B still sends on the SA A holds');
  t.not(pb.tunnel.pendingOutbound, null, 'the new SA waits for A to use it');

  // A second forged rekey replaces the unused one; the SA A holds is still accepted.
  forger.send('tunnelRequest', { routeId: ROUTE_ID, node: p.nodes.a.name, suite: SUITE_CODES['aes-gcm'], spi: 0x5252_5252, ephemeral: generateX25519().publicKey, nonce: randomBytes(32) }, { keyClass: KeyClass.tun, keyId: ROUTE_ID, key: p.ktun }, B_AT);
  await tick(20);
  t.equal(pb.rekeys, 2);
  t.equal(pb.tunnel.outbound.spi, spiBefore, 'still the SA A holds');
  // Traffic both ways still flows on the original SAs.
  p.nodes.a.dev.inject([ipPacket(VIP_A, VIP_B, 17, Buffer.alloc(40, 1))]);
  p.esp('a');
  t.equal(b.dev.written.length, 1, "A's packet on the original SA is accepted by B");
  b.dev.inject([ipPacket(VIP_B, VIP_A, 17, Buffer.alloc(40, 2))]);
  t.same(b.sock.sent[0]?.to, A_AT, "B's answer goes to A, not to the forger");
  p.esp('b');
  t.equal(p.nodes.a.dev.written.length, 1, "B's packet is accepted by A");

  // A path update from A still works (the Kpath of the SAs in use).
  p.nodes.a.at = A_NEW;
  const r = await p.nodes.a.tunnels.updatePath(p.nodes.a.tunnels.peers.get(b.name)!, Promise.resolve());
  t.equal(r, 'path-update', 'A moved with a path update while B held unused rekeys');
  t.same(pb.tunnel.endpoint, A_NEW, 'B follows A to its new address');
});

t.test('a real rekey on an idle tunnel: the dummy packets switch the responder', async (t) => {
  const p = pair();
  t.teardown(p.stop);
  const { pa, pb } = await up(p);
  const before = { a: pa.tunnel.outbound.spi, b: pb.tunnel.outbound.spi };
  await p.nodes.a.tunnels.initiate(pa.route);
  t.equal(pa.rekeys, 1);
  t.not(pa.tunnel.outbound.spi, before.a, 'A sends on the new SA at once');
  t.equal(pb.tunnel.outbound.spi, before.b, 'B waits for proof');
  t.ok(p.nodes.a.sock.sent.length >= 1, 'A sent a dummy packet on the new SA');
  p.esp('a');
  t.equal(pb.tunnel.pendingOutbound, null, 'the dummy switched B');
  t.not(pb.tunnel.outbound.spi, before.b, 'B sends on the new SA');
  t.equal(p.nodes.b.dev.written.length, 0, 'the dummy packet was not delivered to the TUN');
  t.equal(p.nodes.b.engine.counters.inDropDummy, 1);
  // B's first packet after the idle rekey reaches A.
  p.nodes.b.dev.inject([ipPacket(VIP_B, VIP_A, 17, Buffer.alloc(40, 3))]);
  p.esp('b');
  t.equal(p.nodes.a.dev.written.length, 1);
});

t.test('a path commit sent before the one taken moves nothing and is not answered', async (t) => {
  const p = pair();
  t.teardown(p.stop);
  const { pa, pb } = await up(p);
  const a = p.nodes.a;
  // A hostile network holds A's commit from X1; A moves on to X2 and commits from there.
  const held: Buffer[] = [];
  a.held = held;
  a.at = encodeSockaddr('198.18.1.1', 4500);
  t.equal(await a.tunnels.updatePath(pa, Promise.resolve()), 'failed', 'the commit from X1 got nowhere (held)');
  a.held = null;
  a.at = A_NEW;
  t.equal(await a.tunnels.updatePath(pa, Promise.resolve()), 'path-update');
  t.same(pb.tunnel.endpoint, A_NEW);
  // Now the held commit arrives, from X1.
  const answered = p.nodes.b.channel.counters.accepted;
  const dup0 = p.nodes.b.channel.counters.dropDuplicate;
  p.nodes.b.channel.receive(held[0]!, encodeSockaddr('198.18.1.1', 4500));
  p.nodes.b.channel.receive(held[held.length - 1]!, encodeSockaddr('198.18.1.1', 4500));
  await tick(5);
  t.same(pb.tunnel.endpoint, A_NEW, 'the older commit did not pull the tunnel back');
  t.equal(p.nodes.b.channel.counters.accepted, answered + 1, 'authenticated, and only counted');
  t.equal(p.nodes.b.tunnels.counters.staleCommits, 1, 'dropped as stale');
  t.equal(p.nodes.b.channel.counters.dropDuplicate, dup0 + 1, 'its retransmission is a duplicate, not answered either');
});

t.test('two routes to one peer at once (two names resolved together): one Tunnel Request at a time, traffic flows both ways after', async (t) => {
  const p = pair();
  t.teardown(p.stop);
  await up(p);
  const second = { ...p.direction('a'), routeId: ROUTE_ID + 1, ktun: randomBytes(32), ktmp: randomBytes(32) };
  const secondB = { ...p.direction('b'), routeId: ROUTE_ID + 1, ktun: second.ktun, ktmp: second.ktmp };
  // A rekey on the first route and the setup of the second start together.
  const rb = p.nodes.b.tunnels.onRouteDirection(secondB, 2000);
  const a = p.nodes.a.tunnels;
  const first = a.initiate(a.peers.get(p.nodes.b.name)!.route);
  const other = a.onRouteDirection(second, 2000);
  t.equal(a.peers.get(p.nodes.b.name)!.rekeys, 0, 'the second waits for the first');
  await Promise.all([first, other, rb]);
  const pa = a.peers.get(p.nodes.b.name)!;
  const pb = p.nodes.b.tunnels.peers.get(p.nodes.a.name)!;
  t.equal(pa.rekeys, 2, 'both requests ran, one after the other');
  t.equal(pa.route.routeId, ROUTE_ID + 1, 'the later route is the one in use');
  p.esp('a');
  t.equal(pb.tunnel.pendingOutbound, null, "A's dummy packets switched B to the newest SA");
  p.nodes.a.dev.inject([ipPacket(VIP_A, VIP_B, 17, Buffer.alloc(40, 4))]);
  p.esp('a');
  t.equal(p.nodes.b.dev.written.length, 1, 'A → B');
  p.nodes.b.dev.inject([ipPacket(VIP_B, VIP_A, 17, Buffer.alloc(40, 5))]);
  p.esp('b');
  t.equal(p.nodes.a.dev.written.length, 1, 'B → A');
  t.equal(pb.tunnel.outbound.spi, pa.tunnel.inbound.spi, 'B sends on the SA A holds as current');
});

t.test("a tunnel's endpoint and its route's keys are buffers of their own, not slices of node's pool", async (t) => {
  const p = pair();
  t.teardown(p.stop);
  // As a decoded message gives them: views into one larger buffer.
  const message = Buffer.concat([Buffer.alloc(100), p.ktun, randomBytes(32)]);
  const rb = p.nodes.b.tunnels.onRouteDirection({ ...p.direction('b'), ktun: message.subarray(100, 132), ktmp: message.subarray(132, 164) }, 2000);
  await p.nodes.a.tunnels.onRouteDirection({ ...p.direction('a'), ktmp: message.subarray(132, 164) }, 2000);
  const pb = await rb;
  const owned = (b: Buffer | null, length: number) => b !== null && b.buffer.byteLength === length;
  t.ok(owned(pb.tunnel.endpoint, 28), 'the endpoint owns its 28 bytes');
  t.ok(owned(pb.route.ktun, 96) && pb.route.ktun.buffer === pb.route.ktmp.buffer && pb.route.ktmp.buffer === pb.route.peerPublicKey.buffer, 'Ktun, Ktmp and the peer key share one 96-byte buffer');
  t.ok(pb.route.ktun.equals(p.ktun), 'with the same bytes');
});
