// An attacker on the testbed's Internet, for the security tests: sends what a node without the
// right keys (or with keys for another name) could send, and prints what came back as JSON.
//   login URL CA EMAIL PASSWORD                 → {"status": 401, ...}
//   register URL CA EMAIL PASSWORD DC NAME      → logs in legitimately, registers someone else's NAME
//   forge ADDR PORT KEYID                       → a Route Direction under a made-up Kntmdc
// These send from one socket of the attacker's own (any port) and print, after a second of
// listening, {"sent", "bytesSent", "answers", "bytesReceived"}: datagrams and bytes each way.
//   replay ADDR PORT HEX...                     → resends captured datagrams as they are
//   esp ADDR PORT SPI COUNT [SIZE]              → COUNT ESP-looking datagrams of SIZE bytes (default
//                                                 200) under that SPI, sequence numbers 1..COUNT
//   punch ADDR PORT ROUTEID NODE                → a Hole Punching for a route and node, under a
//                                                 made-up Ktun

import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { HOLE_PUNCH_PAD, Role, KeyClass, readHeader, openMessage, sealMessage, statusName } from '../../protocol/control.js';
import { NON_ESP_MARKER_SIZE } from '../../protocol/demux.js';
import { newMessageId } from '../../protocol/channel.js';
import { login, LoginError } from '../../router/login.js';

function send(addr: string, port: number, datagrams: Buffer[], waitMs: number): Promise<Buffer[]> {
  return new Promise((resolve) => {
    const s = createSocket(addr.includes(':') ? 'udp6' : 'udp4');
    const got: Buffer[] = [];
    s.on('message', (m) => got.push(m));
    s.bind(0, () => {
      for (const d of datagrams) s.send(d, port, addr);
      setTimeout(() => {
        s.close();
        resolve(got);
      }, waitMs);
    });
  });
}

function frame(sealed: Buffer): Buffer {
  return Buffer.concat([Buffer.alloc(NON_ESP_MARKER_SIZE), sealed]);
}

/** Sends the datagrams and prints what came back. */
async function exchange(addr: string, port: number, datagrams: Buffer[]): Promise<void> {
  const answers = await send(addr, port, datagrams, 1000);
  const bytes = (l: Buffer[]): number => l.reduce((n, d) => n + d.length, 0);
  console.log(JSON.stringify({ sent: datagrams.length, bytesSent: bytes(datagrams), answers: answers.length, bytesReceived: bytes(answers) }));
}

function uint(text: string | undefined, what: string, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > max) throw new Error(`${what}: "${text ?? ''}" is not an integer in 0..${max}`);
  return n;
}

async function main(): Promise<void> {
  const [cmd, ...a] = process.argv.slice(2);
  if (cmd === 'login') {
    try {
      await login({ url: a[0]!, caFile: a[1]!, email: a[2]!, password: a[3]! });
      console.log(JSON.stringify({ status: 200 }));
    } catch (e) {
      console.log(JSON.stringify({ status: e instanceof LoginError ? e.status : null, error: (e as Error).message }));
    }
    return;
  }
  if (cmd === 'register') {
    const s = await login({ url: a[0]!, caFile: a[1]!, email: a[2]!, password: a[3]! });
    const name = a[5]!;
    const sealed = sealMessage(
      'registrationRequest',
      { name, local: { address: '203.0.113.7', port: 4500 }, publicKey: randomBytes(32) },
      { keyClass: KeyClass.ntmdc, keyId: s.keyId, messageId: newMessageId(), timestamp: Date.now() + s.clockOffsetMs },
      s.key,
    );
    const answers = await send(a[4]!, 4500, [frame(sealed)], 1500);
    const out = answers.map((m) => {
      const buf = m.subarray(NON_ESP_MARKER_SIZE);
      const msg = openMessage(buf, readHeader(buf), s.key);
      return msg.type === 'registrationResponse' ? { type: msg.type, status: statusName(msg.body.status), vip4: msg.body.vip4 } : { type: msg.type };
    });
    console.log(JSON.stringify({ answers: out }));
    return;
  }
  if (cmd === 'forge') {
    const keyId = Number(a[2]);
    const body = {
      inReplyTo: 0n,
      routeId: 77,
      role: Role.initiator,
      ktun: randomBytes(32),
      ktmp: randomBytes(32),
      expiresAt: Date.now() + 3600_000,
      localName: 'ra.fleet1.test',
      peerNode: 'evil.fleet2.test',
      peerName: 'evil.fleet2.test',
      peerVip4: '10.78.0.66',
      peerVip6: null,
      peerVips4: ['10.78.0.66'],
      peerVips6: [],
      peerEndpoint: { address: '198.18.0.66', port: 4500 },
      peerPublicKey: randomBytes(32),
      path: 0,
      peerCandidate: null,
      via: '',
    };
    const datagrams = [keyId, (keyId + 1) >>> 0].map((id) =>
      frame(sealMessage('routeDirection', body, { keyClass: KeyClass.ntmdc, keyId: id, messageId: newMessageId(), timestamp: Date.now() }, randomBytes(32))),
    );
    const answers = await send(a[0]!, Number(a[1]), datagrams, 1000);
    console.log(JSON.stringify({ sent: datagrams.length, answers: answers.length }));
    return;
  }
  if (cmd === 'replay') {
    await exchange(a[0]!, uint(a[1], 'PORT', 65535), a.slice(2).map((h) => Buffer.from(h, 'hex')));
    return;
  }
  if (cmd === 'esp') {
    const spi = uint(a[2], 'SPI', 0xffffffff);
    const count = uint(a[3], 'COUNT', 100_000);
    const size = a[4] === undefined ? 200 : uint(a[4], 'SIZE', 1400);
    if (size < 64) throw new Error(`SIZE ${size}: want at least 64 (an ESP header, IV, trailer and ICV)`);
    const datagrams = Array.from({ length: count }, (_, i) => {
      const d = randomBytes(size);
      d.writeUInt32BE(spi, 0);
      d.writeUInt32BE(i + 1, 4);
      return d;
    });
    await exchange(a[0]!, uint(a[1], 'PORT', 65535), datagrams);
    return;
  }
  if (cmd === 'punch') {
    const routeId = uint(a[2], 'ROUTEID', 0xffffffff);
    const sealed = sealMessage(
      'holePunching',
      { routeId, node: a[3]!, pad: HOLE_PUNCH_PAD },
      { keyClass: KeyClass.tun, keyId: routeId, messageId: newMessageId(), timestamp: Date.now() },
      randomBytes(32),
    );
    await exchange(a[0]!, uint(a[1], 'PORT', 65535), [frame(sealed)]);
    return;
  }
  throw new Error(`unknown command ${cmd ?? ''}; see the header of lab/tools/attacker.ts`);
}


main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
