// The README's main command: an NTMobile data path in network namespaces, with a readable report.
// Node A sits behind an endpoint-independent NAT, node B on the testbed's Internet; both run
// `ntmobile tunnel`. The demo pings and transfers data between their VIPs, then moves A's uplink
// to another carrier (behind a symmetric NAT) in the middle of a TCP transfer and a UDP stream,
// and reports whether the session survived and how long the path was interrupted.
//
//   node dist/lab/demo.js [--suite aes-gcm|chacha20-poly1305] [--keep] [--help]

import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type EspSuite } from '../protocol/esp.js';
import { Lab, type Host } from './lab.js';
import { staticPair, startNode, type RunningNode } from './static-node.js';
import { internetWithNats } from './topology.js';

const TRANSFER = fileURLToPath(new URL('./tools/transfer.js', import.meta.url));
const PROBE = fileURLToPath(new URL('./tools/probe.js', import.meta.url));

const { values } = parseArgs({
  options: {
    suite: { type: 'string', default: 'aes-gcm' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(`Usage: node dist/lab/demo.js [--suite aes-gcm|chacha20-poly1305] [--keep]
Builds a testbed in network namespaces (an Internet, two NATs, two NTMobile nodes), sends traffic
between the nodes' virtual addresses, moves one node to another network mid-session, and prints
a report. --keep leaves the namespaces up afterwards (remove them with: node dist/lab/cli.js down ID).
`);
  process.exit(0);
}
if (values.suite !== 'aes-gcm' && values.suite !== 'chacha20-poly1305') {
  process.stderr.write(`demo: --suite ${values.suite}: want aes-gcm or chacha20-poly1305\n`);
  process.exit(2);
}
const suite = values.suite as EspSuite;

const VIP_A = '10.123.0.1';
const VIP_B = '10.123.0.2';
const VIP6_A = 'fd7a:6e74:6d00::1';
const VIP6_B = 'fd7a:6e74:6d00::2';
const report: string[] = [];
let failures = 0;
let step = 0;
const STEPS = 6;

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}
function heading(text: string): void {
  say(`\n[${++step}/${STEPS}] ${text}`);
}
function check(ok: boolean, what: string): void {
  if (!ok) failures++;
  say(`      ${ok ? 'ok  ' : 'FAIL'} ${what}`);
  report.push(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
}

async function pingRtt(from: Host, to: string): Promise<number | null> {
  const r = await from.exec('ping', ['-c', '3', '-i', '0.2', '-W', '3', to], { allowFail: true });
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
  return r.code === 0 && m ? Number(m[1]) : null;
}

async function startServer(lab: Lab, host: Host, tool: string, args: string[]) {
  const child = lab.spawnIn(host, process.execPath, [tool, ...args], { log: 'pipe' });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`${tool} ${args.join(' ')} exited with ${code}`)));
  });
  return child;
}

function endpointOf(node: RunningNode): string {
  const peer = node.stats().peers[0] as { endpoint: string | null };
  return peer.endpoint ?? '(none)';
}

await Lab.withLab(
  async (lab) => {
    say(`NTMobile data-path demo (lab ${lab.id}, suite ${suite})`);

    heading('Testbed: an Internet, NATs, two nodes (network namespaces, nftables NATs)');
    const net = await internetWithNats(lab, { aNat: 'eim', bNat: 'none', extraSites: { c: 'symmetric' } });
    say(`      Internet 198.18.0.0/15 and 2001:db8::/48, core router ${net.addrs.core}`);
    say(`      node A at ${net.addrs.nodeA} behind an endpoint-independent NAT (public ${net.addrs.nodeAPublic})`);
    say(`      node B at ${net.addrs.nodeB} on the Internet`);
    say(`      site C behind a symmetric NAT (public ${net.sites.c!.natBox!.publicAddrs[0]}): "another carrier" for the handover`);

    heading('Nodes: ntmobile tunnel on A and B (static keys; B learns where A is from A\'s traffic)');
    const { a, b } = staticPair({
      suite,
      aVips: [`${VIP_A}/24`, `${VIP6_A}/64`],
      bVips: [`${VIP_B}/24`, `${VIP6_B}/64`],
      bEndpoint: `${net.addrs.nodeB}:4500`,
      keepalive: 20,
    });
    const nodeA = await startNode(lab, net.nodeA, a);
    const nodeB = await startNode(lab, net.nodeB, b);
    say(`      A: VIPs ${VIP_A}, ${VIP6_A}; B: VIPs ${VIP_B}, ${VIP6_B}; UDP port 4500; ESP ${suite}`);

    heading('Reachability over the tunnel');
    const rtt4 = await pingRtt(net.nodeA, VIP_B);
    check(rtt4 !== null, `A → B ping by inner IPv4 (${VIP_B}): ${rtt4 === null ? 'no answer' : `${rtt4} ms`}`);
    const rttBack = await pingRtt(net.nodeB, VIP_A);
    check(rttBack !== null, `B → A ping through A's NAT, to the endpoint B learned: ${rttBack === null ? 'no answer' : `${rttBack} ms`}`);
    const rtt6 = await pingRtt(net.nodeA, VIP6_B);
    check(rtt6 !== null, `A → B ping by inner IPv6 (${VIP6_B}): ${rtt6 === null ? 'no answer' : `${rtt6} ms`}`);
    say(`      B sees A at ${endpointOf(nodeB)} (A's NAT mapping)`);

    heading('20 MB TCP transfer A → B between the VIPs');
    {
      await startServer(lab, net.nodeB, TRANSFER, ['serve', VIP_B, '5001']);
      const r = JSON.parse((await net.nodeA.exec(process.execPath, [TRANSFER, 'send', VIP_B, '5001', String(20 * 2 ** 20)], { timeoutMs: 120_000 })).stdout);
      const mbps = ((r.bytes * 8) / r.seconds / 1e6).toFixed(0);
      check(r.received === r.sent && r.receivedBytes === r.bytes, `20 MB in ${r.seconds.toFixed(2)} s (${mbps} Mbit/s), SHA-256 equal at both ends`);
    }

    heading('Handover: A moves from NAT A to a symmetric NAT at another carrier, mid-session');
    {
      const before = endpointOf(nodeB);
      await startServer(lab, net.nodeB, TRANSFER, ['serve', VIP_B, '5002']);
      const probe = await startServer(lab, net.nodeB, PROBE, ['recv', VIP_B, '5003']);
      let probeOut = '';
      probe.stdout!.on('data', (d: Buffer) => (probeOut += d.toString()));
      const sender = net.nodeA.exec(process.execPath, [TRANSFER, 'send', VIP_B, '5002', String(24 * 2 ** 20), String(4 * 2 ** 20)], { timeoutMs: 120_000 });
      const stream = net.nodeA.exec(process.execPath, [PROBE, 'send', VIP_B, '5003', '500', '6']);
      await new Promise((r) => setTimeout(r, 2000));
      const site = net.sites.c!;
      await lab.moveUplink(net.nodeA, net.uplink, site.segment, site.allocate());
      say(`      t=2 s: A's uplink moved to site C (new address ${(await net.nodeA.addrs(net.uplink)).join(', ')})`);
      const r = JSON.parse((await sender).stdout);
      await stream;
      await new Promise((res) => setTimeout(res, 300));
      const exited = once(probe, 'exit');
      probe.kill('SIGTERM');
      await exited;
      const p = JSON.parse(probeOut.split('\n').find((l) => l.startsWith('{')) ?? '{}') as { received: number; lost: number; maxGapMs: number };
      const after = endpointOf(nodeB);
      check(r.received === r.sent && r.receivedBytes === r.bytes, `the TCP session survived the move: 24 MB, SHA-256 equal at both ends`);
      check(after !== before, `B follows A: ${before} → ${after} (moved on A's first authenticated packet)`);
      check(p.received > 0, `UDP stream at 500 packets/s: ${p.received} received, ${p.lost} lost, longest gap ${p.maxGapMs} ms`);
    }

    heading('Counters (every packet that did not make it has a reason)');
    const ca = nodeA.stats().counters;
    const cb = nodeB.stats().counters;
    for (const [name, c] of [['A', ca], ['B', cb]] as const) {
      const drops = Object.entries(c).filter(([k, v]) => k.includes('Drop') && v > 0);
      say(`      ${name}: ${c.outPackets} packets sealed, ${c.inPackets} opened, ${c.inEndpointUpdates} endpoint updates; drops: ${drops.length ? drops.map(([k, v]) => `${k}=${v}`).join(' ') : 'none'}`);
    }
    check(cb.inDropBadIcv === 0 && ca.inDropBadIcv === 0, 'no authentication failures');
    await nodeA.stop();
    await nodeB.stop();
    if (values.keep) {
      lab.keepAfterExit();
      say(`\nThe namespaces stay up (--keep): node dist/lab/cli.js down ${lab.id}`);
    }
  },
  { label: 'demo' },
);

say(`\nReport\n${report.map((l) => `  ${l}`).join('\n')}`);
say(failures === 0 ? '\nAll checks passed.' : `\n${failures} check(s) failed.`);
process.exitCode = failures === 0 ? 0 : 1;
