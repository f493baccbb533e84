// NAT rebinding (docs/mobility.md): the carrier's NAT gives router A a new mapping while nothing
// changes on the router itself. Router A notices from the DC's keepalive answer (the address
// and port the DC saw) and moves its tunnel the same way as after a move: a Path Probe commit on
// a direct path, a new Hole Punching on a relayed one (where the RS drops what comes from the
// unknown new mapping until then). A TCP transfer survives with a matching checksum; the UDP
// stream's longest silence is the time to notice (at most one DC keepalive period, 5 s in the
// lab) plus one round trip.
import t from 'tap';
import { Lab } from '../lab/lab.js';
import { buildFleet, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { NAT_TABLE } from '../lab/nat.js';
import { startSession } from '../lab/traffic.js';

const RATE = 200;
const SECONDS = 14;

interface Status {
  counters: { daemon: { natRebindings: number } };
  uplink: { lastHandover: { reason: string; tunnels: { node: string; result: string }[] } | null; observedByDc: string | null };
}

async function vipOfB2(fleet: Fleet): Promise<string> {
  const r = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 20_000 });
  const vip = r.stdout.split(/\s+/)[0];
  if (r.code !== 0 || !vip) throw new Error(`a1 cannot resolve ${NAMES.b2}`);
  return vip;
}

const CASES = [
  {
    key: 'a-nat' as const,
    title: 'direct path, endpoint-independent NAT: the NAT forgets its mappings and gives router A another port',
    expect: 'path-update',
    // Flush the NAT's mappings and connections, and hold router A's old external port for another
    // inside host: the next packet gets a fresh random port (lab/nat.ts eimRuleset).
    // While router A's packets are held back (so that nothing re-learns the old mapping).
    rebind: (uplink: string) =>
      [
        `nft add table ip ntmhold`,
        `nft add chain ip ntmhold hold '{ type filter hook forward priority -300; policy accept; }'`,
        `nft add rule ip ntmhold hold ip saddr ${uplink} drop`,
        `conntrack -F`,
        `nft flush map ip ${NAT_TABLE} eim_out`,
        `nft flush map ip ${NAT_TABLE} eim_in`,
        `nft add element ip ${NAT_TABLE} eim_in '{ 4500 : 10.0.1.250 . 4500 }'`,
        `nft delete table ip ntmhold`,
      ].join(' && '),
  },
  {
    key: 'both-sym' as const,
    title: 'relayed path, symmetric NAT: the NAT drops its connections, every new one gets a new random port',
    expect: 're-punch',
    rebind: () => 'conntrack -F',
  },
];

for (const c of CASES) {
  t.test(`NAT rebinding (${c.key}): ${c.title}`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: c.key });
        t.teardown(() => fleet.dispose());
        const vip = await vipOfB2(fleet);
        const before = (await fleet.ra.api('status')) as Status;
        const session = await startSession({
          tcp: { from: fleet.a1, target: NAMES.b2, to: fleet.b2, bind: LAN.b2, port: 5001, bytes: 250_000 * SECONDS, bytesPerSecond: 250_000 },
          udp: [{ label: 'a1→b2', from: fleet.a1, target: vip, to: fleet.b2, bind: LAN.b2, port: 5002 }],
          rate: RATE,
          seconds: SECONDS,
        });
        try {
          await new Promise((r) => setTimeout(r, 2000));
          await lab.hosts.get('natA')!.exec('sh', ['-c', c.rebind(fleet.uplinks.ra)]);
        } catch (e) {
          session.abort();
          throw e;
        }
        const r = await session.finish();
        const after = (await fleet.ra.api('status')) as Status;
        t.equal(r.tcp.code, 0, `the TCP transfer ended without a reset${r.tcp.error ? ` (${r.tcp.error})` : ''}`);
        t.ok(r.tcp.intact, `SHA-256 equal at both ends (${(r.tcp.receivedBytes / 1e6).toFixed(1)} MB, ${r.tcp.retransmits} retransmissions)`);
        t.ok(after.counters.daemon.natRebindings > before.counters.daemon.natRebindings, `router A noticed the rebinding (${before.uplink.observedByDc} → ${after.uplink.observedByDc})`);
        t.not(after.uplink.observedByDc, before.uplink.observedByDc, 'the DC sees router A at a new mapping');
        const h = after.uplink.lastHandover;
        t.match(h?.reason ?? '', /^NAT rebinding /, `the last handover was the rebinding (${h?.reason})`);
        t.same(h?.tunnels.map((x) => x.result), [c.expect], `its tunnel to router B: ${c.expect}`);
        const u = r.udp['a1→b2']!;
        const tail = u.last - (r.udp['a1→b2']!.first + (SECONDS - 1) * 1000);
        t.ok(u.received > RATE * (SECONDS - 7), `the UDP stream went on after the rebinding (${u.received} of ${RATE * SECONDS} received, longest silence ${u.maxGapMs} ms, last arrival ${tail} ms from the end)`);
        t.comment(`rebinding ${c.key}: longest silence ${u.maxGapMs} ms, ${u.lost} lost; TCP retransmits ${r.tcp.retransmits}`);
      },
      { label: `rebind-${c.key}` },
    );
  });
}
