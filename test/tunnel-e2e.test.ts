// End to end: two nodes run `ntmobile tunnel` in namespaces, node A behind an
// endpoint-independent NAT, node B on the testbed's Internet. Ping and a 50 MB TCP transfer
// between their VIPs, inner IPv4 and inner IPv6, with matching checksums, for both suites; then
// garbage thrown at B's port is counted and changes nothing.
import t, { type Test } from 'tap';
import { fileURLToPath } from 'node:url';
import { Lab } from '../lab/lab.js';
import { internetWithNats } from '../lab/topology.js';
import { staticPair, startNode } from '../lab/static-node.js';
import { type Host } from '../lab/lab.js';
import { tsharkDecrypt } from './tools/tshark.js';
import path from 'node:path';
import { once } from 'node:events';

const TRANSFER = fileURLToPath(new URL('../lab/tools/transfer.js', import.meta.url));
const MB50 = 50 * 1024 * 1024;

async function transfer(t: Test, lab: Lab, from: Host, to: Host, address: string, port: number) {
  const server = lab.spawnIn(to, process.execPath, [TRANSFER, 'serve', address, String(port)], { log: 'pipe' });
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`transfer server exited with ${code}`)));
  });
  const r = await from.exec(process.execPath, [TRANSFER, 'send', address, String(port), String(MB50)], { timeoutMs: 120_000 });
  const result = JSON.parse(r.stdout) as { bytes: number; sent: string; receivedBytes: number; received: string };
  t.equal(result.receivedBytes, MB50, `50 MB arrived at ${address}`);
  t.equal(result.received, result.sent, `SHA-256 matches at both ends (${address})`);
}

for (const suite of ['aes-gcm', 'chacha20-poly1305'] as const) {
  t.test(`static tunnel through an endpoint-independent NAT (${suite})`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const net = await internetWithNats(lab, { aNat: 'eim', bNat: 'none' });
        const { a, b } = staticPair({
          suite,
          aVips: ['10.123.0.1/24', 'fd7a:6e74:6d00::1/64'],
          bVips: ['10.123.0.2/24', 'fd7a:6e74:6d00::2/64'],
          bEndpoint: `${net.addrs.nodeB}:4500`,
          keepalive: 20,
        });
        const nodeA = await startNode(lab, net.nodeA, a);
        const nodeB = await startNode(lab, net.nodeB, b);

        // Capture B's uplink while the pings run: an independent decoder must agree with ours.
        const pcap = path.join(lab.logDir, 'nodeB-uplink.pcap');
        const capture = lab.spawnIn(net.nodeB, 'tshark', ['-q', '-i', net.uplink, '-f', 'udp port 4500', '-w', pcap], { log: 'pipe' });
        await new Promise<void>((resolve) => {
          capture.stderr!.on('data', (d: Buffer) => d.toString().includes('Capturing on') && resolve());
          setTimeout(resolve, 5000);
        });
        await new Promise((r) => setTimeout(r, 500));

        t.ok(await net.nodeA.ping('10.123.0.2', { count: 3, timeoutS: 5 }), 'A pings B by inner IPv4');
        t.ok(await net.nodeB.ping('10.123.0.1', { count: 1, timeoutS: 5 }), 'B pings A back (A endpoint learned through the NAT)');
        t.ok(await net.nodeA.ping('fd7a:6e74:6d00::2', { count: 2, timeoutS: 5 }), 'A pings B by inner IPv6');

        const captured = once(capture, 'exit');
        capture.kill('SIGINT');
        await captured;
        if (suite === 'aes-gcm') {
          const sas = [
            { family: 4 as const, src: net.addrs.nodeAPublic, dst: net.addrs.nodeB, suite, spi: a.peers[0]!.outbound.spi, key: Buffer.from(a.peers[0]!.outbound.key, 'hex'), salt: Buffer.from(a.peers[0]!.outbound.salt, 'hex') },
            { family: 4 as const, src: net.addrs.nodeB, dst: net.addrs.nodeAPublic, suite, spi: b.peers[0]!.outbound.spi, key: Buffer.from(b.peers[0]!.outbound.key, 'hex'), salt: Buffer.from(b.peers[0]!.outbound.salt, 'hex') },
          ];
          const frames = await tsharkDecrypt(pcap, sas);
          const icmp4 = frames.filter((f) => f.innerProto === 1);
          const icmp6 = frames.filter((f) => f.innerProto === 58);
          t.ok(frames.length >= 8, `tshark saw ${frames.length} ESP packets`);
          t.ok(frames.every((f) => f.icvGood === true), 'tshark verified every ICV with our keys');
          t.ok(icmp4.some((f) => f.innerSrc === '10.123.0.1' && f.innerDst === '10.123.0.2'), 'tshark decrypted A → B inner IPv4');
          t.ok(icmp4.some((f) => f.innerSrc === '10.123.0.2' && f.innerDst === '10.123.0.1'), 'tshark decrypted B → A inner IPv4');
          t.ok(icmp6.some((f) => f.innerSrc === 'fd7a:6e74:6d00::1' && f.innerDst === 'fd7a:6e74:6d00::2'), 'tshark decrypted inner IPv6');
        }

        await transfer(t, lab, net.nodeA, net.nodeB, '10.123.0.2', 5001);
        await transfer(t, lab, net.nodeB, net.nodeA, 'fd7a:6e74:6d00::1', 5002);

        // Garbage at B's port from a host on the Internet: counted, nothing delivered, tunnel intact.
        const attacker = await net.addInternetHost('mallory');
        const before = nodeB.stats().counters;
        await attacker.host.exec(process.execPath, [
          '-e',
          `const s=require('dgram').createSocket('udp4');const m=[Buffer.from([1,2,3]),Buffer.alloc(60,0x41),Buffer.concat([Buffer.from([0,0,0x10,0]),Buffer.alloc(60)])];let n=0;for(const x of m)s.send(x,4500,'${net.addrs.nodeB}',()=>{if(++n===m.length)s.close()});`,
        ]);
        await new Promise((r) => setTimeout(r, 1500));
        const after = nodeB.stats().counters;
        t.equal(after.inDropInvalid! - before.inDropInvalid!, 1, 'short datagram counted as invalid');
        t.ok(after.inDropUnknownSpi! - before.inDropUnknownSpi! >= 2, 'unknown SPIs counted');
        t.ok(await net.nodeA.ping('10.123.0.2', { count: 1, timeoutS: 5 }), 'tunnel still works');
        t.equal(after.inDropBadIcv, 0, 'no authentication failures on the genuine traffic');
        t.ok(after.inPackets! > 30_000, `B received ${after.inPackets} packets through the tunnel`);

        await nodeA.stop();
        await nodeB.stop();
        const links = await net.nodeA.exec('ip', ['link', 'show']);
        t.notMatch(links.stdout, /ntm0/, 'the TUN device is gone after the node stops');
      },
      { label: `e2e-${suite}` },
    );
  });
}
