// An attacker on the testbed's Internet, for the security tests: sends what a node without the
// right keys (or with keys for another name) could send, and prints what came back as JSON.
//   login URL CA EMAIL PASSWORD                 → {"status": 401, ...}
//   register URL CA EMAIL PASSWORD DC NAME      → logs in legitimately, registers someone else's NAME
//   forge ADDR PORT KEYID                       → a Route Direction under a made-up Kntmdc
//   replay ADDR PORT HEX...                     → resends captured datagrams as they are

import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { Role, KeyClass, readHeader, openMessage, sealMessage, statusName } from '../../protocol/control.js';
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
    const datagrams = a.slice(2).map((h) => Buffer.from(h, 'hex'));
    const answers = await send(a[0]!, Number(a[1]), datagrams, 1000);
    console.log(JSON.stringify({ sent: datagrams.length, answers: answers.length }));
    return;
  }
  throw new Error(`unknown command ${cmd ?? ''}; see the header of lab/tools/attacker.ts`);
}


main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
