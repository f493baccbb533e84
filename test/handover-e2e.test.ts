// End to end, in namespaces (issue 5, mobility): the handover scenarios of lab/handover.ts on the
// fleet of lab/fleet.ts with the extra sites c, e (EIM NATs of other carriers), d (global) and
// f (a symmetric NAT). In each, a1 sends to b2 by name a paced TCP transfer (2 MB/s) that runs
// across the switch and must end with no reset and the same SHA-256 at both ends, while a UDP
// stream a1 → b2 (1000 packets/s, to b2's VIP) measures the gap: the silence between the last
// probe before the switch and the first after it, and the probes lost in it. A second stream
// b2 → router A's VIP measures the other direction (it must come back too; its gap is
// reported). The moving router must report the handover with no failed tunnel, and the other
// end must have followed it (direct paths: the peer's path is the mover's new public address;
// relayed: still via rs1). Make-before-break loses no probe at all.
//
// Gaps in one run (2-core VM, 2026-11-23, router of 4957b6a), a1 → b2 / b2 → router A, and what
// the router reported; a break-before-make switch includes the lab's own move, about 100 ms of
// `ip` commands during which the uplink has no carrier or no address (bench:handover has
// medians of ten, with wireguard-go and nebula beside them: docs/benchmarks.md):
//   global-to-nat     67 / 70 ms     path-update in 31 ms
//   nat-to-nat       137 / 137 ms    path-update in 34 ms
//   nat-to-global     87 / 88 ms     path-update in 24 ms
//   peer-behind-nat   49 / 90 ms     path-update in 28 ms
//   both-move         84 / 82 ms (A moves), 92 / 55 ms (B moves)    path-update in 29, 28 ms
//   relayed          109 / 109 ms    re-punch through rs1 in 22 ms
//   two-uplinks        0 / 0 lost, longest silences 6 / 15 ms (scheduling noise)    path-update in 27 ms
//
// NTM_SCENARIO=key[,key] runs only those (keys in lab/handover.ts). About 15 s per scenario,
// under two minutes in all.
import t from 'tap';
import { Lab } from '../lab/lab.js';
import { buildFleet, HANDOVER_SITES, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { doSwitch, pickScenarios, waitHandover, type HandoverScenario, type SwitchDone, type UplinkStatus } from '../lab/handover.js';
import { gapOfSwitch, startSession } from '../lab/traffic.js';

const RATE = 1000;
const TCP_RATE = 2_000_000;
/** Streams run this long before the first switch, between switches and after the last one. */
const LEAD_MS = 2000;
const SPACING_MS = 3500;
const TAIL_MS = 2500;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface PeerRow {
  node: string;
  path: string | null;
  route: string;
}

async function peerOf(fleet: Fleet, which: 'ra' | 'rb'): Promise<PeerRow | undefined> {
  const other = which === 'ra' ? NAMES.rb : NAMES.ra;
  return ((await fleet[which].api('peers')) as PeerRow[]).find((p) => p.node === other);
}

/** b2's VIP as a1's DNS answer gives it (the tunnel is up once the answer comes). */
async function vipOfB2(fleet: Fleet): Promise<string> {
  const r = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 20_000 });
  const vip = r.stdout.split(/\s+/)[0];
  if (r.code !== 0 || !vip) throw new Error(`a1 cannot resolve ${NAMES.b2}: ${r.stderr.trim() || `getent exit ${r.code}`}`);
  return vip;
}

async function ownVip4(fleet: Fleet, which: 'ra' | 'rb'): Promise<string> {
  const s = (await fleet[which].api('status')) as { registered: { name: string; vip4: string }[] };
  const me = s.registered.find((r) => r.name === fleet[which].name);
  if (!me?.vip4) throw new Error(`${which} has no IPv4 VIP yet`);
  return me.vip4;
}

const hostOf = (path: string | null | undefined): string => (path ?? '').replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
const results = (s: UplinkStatus): string => s.lastHandover?.tunnels.map((x) => `${x.node} ${x.result}`).join(', ') || 'no tunnels';

/** Not a lab/handover.ts scenario (no traffic during the switch): the test at the end of this file. */
const DEAD_ZONE = 'dead-zone';
const filter = process.env.NTM_SCENARIO;
const wanted = filter === undefined ? null : filter.split(',').map((k) => k.trim()).filter(Boolean);
let scenarios: HandoverScenario[];
try {
  scenarios = wanted === null ? pickScenarios(undefined) : wanted.length === 1 && wanted[0] === DEAD_ZONE ? [] : pickScenarios(wanted.filter((k) => k !== DEAD_ZONE).join(','));
} catch (e) {
  t.fail(`NTM_SCENARIO: ${(e as Error).message}`);
  scenarios = [];
}

for (const s of scenarios) {
  t.test(`${s.key}: ${s.title}: the TCP transfer survives, the UDP stream measures the gap`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: s.case, extraSites: HANDOVER_SITES });
        t.teardown(() => fleet.dispose());
        const vip = await vipOfB2(fleet);
        const raVip = await ownVip4(fleet, 'ra');
        const before = await peerOf(fleet, 'ra');
        t.ok(before !== undefined, `router A has a tunnel to router B (${before?.route} at ${before?.path})`);
        if (s.case === 'both-sym') t.match(before?.route ?? '', /^relay via /, 'the path is relayed before the switch');

        const mbb = s.steps.some((x) => x.mbb);
        const seconds = (LEAD_MS + SPACING_MS * s.steps.length + TAIL_MS) / 1000;
        const session = await startSession({
          tcp: { from: fleet.a1, target: NAMES.b2, to: fleet.b2, bind: LAN.b2, port: 5001, bytes: TCP_RATE * seconds, bytesPerSecond: TCP_RATE },
          udp: [
            { label: 'a1→b2', from: fleet.a1, target: vip, to: fleet.b2, bind: LAN.b2, port: 5002 },
            { label: 'b2→ra', from: fleet.b2, target: raVip, to: fleet.ra.host, bind: raVip, port: 5003 },
          ],
          rate: RATE,
          seconds,
        });
        const done: { sw: SwitchDone; handover: { done: boolean; status: UplinkStatus } }[] = [];
        try {
          await sleep(LEAD_MS);
          for (const step of s.steps) {
            const sw = await doSwitch(fleet, step);
            const handover = sw.dropped?.handover ?? (await waitHandover(fleet, step.router, sw.t0, sw.uplink.address, SPACING_MS - 500));
            done.push({ sw, handover });
            const rest = sw.t0 + SPACING_MS - Date.now();
            if (rest > 0) await sleep(rest);
          }
        } catch (e) {
          session.abort();
          throw e;
        }
        const r = await session.finish();

        t.equal(r.tcp.code, 0, `the TCP transfer ended without a reset or error${r.tcp.error ? ` (${r.tcp.error})` : ''}`);
        t.ok(r.tcp.intact, `${(r.tcp.receivedBytes / 1e6).toFixed(1)} MB of ${(r.tcp.bytes / 1e6).toFixed(1)} MB arrived, SHA-256 equal at both ends (${r.tcp.retransmits} retransmissions)`);

        const fwd = r.udp['a1→b2']!;
        const rev = r.udp['b2→ra']!;
        for (const [i, { sw, handover }] of done.entries()) {
          const until = done[i + 1]?.sw.t0 ?? sw.t0 + SPACING_MS + TAIL_MS;
          const g = gapOfSwitch(fwd, sw.t0, until);
          const gr = gapOfSwitch(rev, sw.t0, until);
          const what = `${sw.step.router} → site ${sw.step.site}${sw.step.mbb ? ' (make-before-break)' : ''}`;
          t.ok(g.resumed, `${what}: a1 → b2 probes came back after the switch: gap ${g.ms} ms, ${g.lost} lost`);
          t.ok(gr.resumed, `${what}: b2 → router A probes came back: gap ${gr.ms} ms, ${gr.lost} lost`);
          t.comment(`gap ${s.key} ${what}: a1→b2 ${g.ms} ms (${g.lost} lost), b2→ra ${gr.ms} ms (${gr.lost} lost); handover ${handover.status.lastHandover?.ms ?? '-'} ms: ${results(handover.status)}`);
          const who = sw.step.router === 'ra' ? 'router A' : 'router B';
          t.ok(handover.done, `${who} reported the handover from ${sw.uplink.address} with no failed tunnel (${handover.status.lastHandover?.ms ?? '-'} ms: ${results(handover.status)})`);
        }
        if (mbb) {
          t.equal(fwd.lost, 0, `make-before-break: no a1 → b2 probe lost at ${RATE}/s (${fwd.received} received, longest silence ${fwd.maxGapMs} ms)`);
          t.comment(`b2 → router A during make-before-break: ${rev.lost} lost, longest silence ${rev.maxGapMs} ms`);
          const drop = done[0]?.sw.dropped;
          t.ok(drop !== undefined && drop.at > done[0]!.handover.status.lastHandover!.at, `the old uplink ${drop?.ifname} was dropped only after the handover`);
        }

        // The other end followed the move.
        for (const which of ['ra', 'rb'] as const) {
          if (!s.steps.some((x) => x.router === which)) continue;
          const other = which === 'ra' ? 'rb' : 'ra';
          const seen = await peerOf(fleet, other);
          if (s.case === 'both-sym') {
            t.match(seen?.route ?? '', /^relay via /, `router ${other === 'ra' ? 'A' : 'B'} still reaches the mover through the RS (${seen?.route} at ${seen?.path})`);
            t.equal(hostOf(seen?.path), fleet.rs1.address, 'at the RS address');
          } else {
            t.equal(hostOf(seen?.path), fleet.publicAddrs[which], `router ${other === 'ra' ? 'A' : 'B'} sends to the mover's new public address (${seen?.path}, ${seen?.route})`);
          }
        }
      },
      { label: `ho-${s.key}` },
    );
  });
}

// A vehicle in a tunnel: no coverage for longer than the DC keepalive allows (the lab's DC asks
// for one every 5 s, 7 s of retries), so the daemon is registering again when the router comes
// out of it at another site (another symmetric NAT, the tunnel relayed). The move it noticed
// while it was not registered is not lost: right after the registration the relayed tunnel is
// punched from the new place, without waiting for the next 20 s punch.
if (wanted === null || wanted.includes(DEAD_ZONE)) {
  t.test(`${DEAD_ZONE}: router A loses coverage until its registration lapses, then comes back behind another NAT: the relayed tunnel moves right after it registers again`, async (t) => {
    await Lab.withLab(
      async (lab) => {
        const fleet = await buildFleet(lab, { case: 'both-sym', extraSites: HANDOVER_SITES });
        t.teardown(() => fleet.dispose());
        const vip = await vipOfB2(fleet);
        t.ok(await fleet.a1.ping(vip), 'a1 reaches b2 before');
        t.match((await peerOf(fleet, 'ra'))?.route ?? '', /^relay via /, 'the path is relayed');
        const status = async () => (await fleet.ra.api('status')) as { state: string; uplink: UplinkStatus };

        // No coverage: the link stays up (an LTE modem out of range), nothing gets through.
        const up = fleet.routerUplinks.ra[0]!.ifname;
        await fleet.ra.host.nft(`table inet deadzone {\n  chain in { type filter hook input priority -300; iifname ${up} drop; }\n  chain out { type filter hook output priority -300; oifname ${up} drop; }\n}\n`);
        const lostAt = Date.now();
        let st = await status();
        while (st.state === 'ready' && Date.now() - lostAt < 25_000) {
          await sleep(200);
          st = await status();
        }
        t.not(st.state, 'ready', `router A noticed it lost its DC and is registering again (${st.state}, after ${Date.now() - lostAt} ms)`);

        // Out of the tunnel at another site; coverage back a moment later.
        const moved = await fleet.moveRouter('ra', 'f');
        await sleep(1000);
        await fleet.ra.host.exec('nft', ['delete', 'table', 'inet', 'deadzone']);
        const backAt = Date.now();
        let handover: UplinkStatus['lastHandover'] = null;
        let readyAt = 0;
        while (Date.now() - backAt < 20_000) {
          st = await status();
          if (st.state === 'ready' && readyAt === 0) readyAt = Date.now();
          // The report appears once the handover is over: the first one seen is its outcome (a
          // retry of a failed tunnel would rewrite it later).
          const h = st.uplink.lastHandover;
          if (h !== null && h.at >= backAt - 1000 && h.tunnels.length > 0) {
            handover = h;
            break;
          }
          await sleep(100);
        }
        t.ok(readyAt > 0, `router A registered again ${readyAt - backAt} ms after coverage came back`);
        t.ok(handover !== null && handover.tunnels.every((x) => x.result !== 'failed'), `router A moved its tunnel after registering (${handover?.reason ?? 'no handover reported'}: ${handover?.tunnels.map((x) => `${x.node} ${x.result}`).join(', ') ?? '-'})`);
        // (readyAt is when this loop first saw the state; the daemon's handover starts the moment it is ready.)
        t.ok(handover !== null && handover.at - readyAt < 3000, `the move followed the registration at once (began ${handover === null ? '-' : handover.at - backAt} ms after coverage came back, ready seen at ${readyAt - backAt} ms), not at the next 20 s punch`);
        const pingAt = Date.now();
        t.ok(await fleet.a1.ping(vip, { count: 3, timeoutS: 2 }), `a1 reaches b2 again (${Date.now() - pingAt} ms)`);
        const seen = await peerOf(fleet, 'rb');
        t.match(seen?.route ?? '', /^relay via /, `router B still reaches router A through the RS (${seen?.route})`);
        t.comment(`dead zone: router A at ${moved.address} behind site f; after coverage came back: registered by ${readyAt - backAt} ms, tunnel move began at ${handover === null ? '-' : handover.at - backAt} ms and took ${handover?.ms ?? '-'} ms`);
      },
      { label: 'ho-deadzone' },
    );
  });
}
