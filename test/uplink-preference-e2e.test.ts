// End to end, in namespaces (uplink preference, docs/mobility.md): router A of the fleet (a-nat:
// behind site a's NAT on eth0) is configured with `uplinks: ["eth0", "wwan0"]`. Two more uplinks
// come up while it runs, both better by the kernel's metrics: wwan0 behind site c's NAT (metric
// 50) and usb0 on the global site d (metric 10, not listed). The daemon stays on eth0: no
// handover, the DC and router B still see it at site a, although the kernel routes everything
// else (other programs, forwarded LAN traffic) through usb0. During a TCP transfer a1 → b2 (by name, SHA-256 at both ends) and UDP probe
// streams both ways, eth0 loses its carrier (an LTE modem out of coverage): exactly one handover,
// to wwan0 (never usb0); the carrier comes back: exactly one handover back to eth0. The gaps are
// reported. Then the daemon is killed (SIGKILL) and started again: it finds its rules from the
// crashed run and leaves one set; stopped properly, it leaves no rule and no route of its own.
//
// About 75 s.
import t from 'tap';
import { Lab, type Host } from '../lab/lab.js';
import { buildFleet, HANDOVER_SITES, LAN, NAMES, type Fleet, type RouterUplink } from '../lab/fleet.js';
import { waitHandover, type UplinkStatus } from '../lab/handover.js';
import { gapOfSwitch, startSession } from '../lab/traffic.js';

const RATE = 1000;
const TCP_RATE = 2_000_000;
/** The streams run this long before the first switch, between the two and after the second. */
const LEAD_MS = 2000;
const SPACING_MS = 4000;
const TAIL_MS = 2500;
const TABLE = 4500;
const RTPROT_NTMOBILE = '78';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Candidate {
  device: string;
  link: string;
  ipv4: { address: string | null; usable: boolean; chosen: boolean };
}
interface Status {
  state: string;
  registered: { name: string; vip4: string }[];
  uplink: UplinkStatus & { candidates: Candidate[] };
  counters: { daemon: { keepalives: number; handovers: number } };
}

async function waitFor<T>(what: string, ms: number, get: () => Promise<T>, ok: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(v)})`);
    await sleep(50);
  }
}

const status = async (fleet: Fleet): Promise<Status> => (await fleet.ra.api('status')) as Status;
const hostOf = (path: string | null | undefined): string => (path ?? '').replace(/:\d+$/, '').replace(/^\[|\]$/g, '');

/** Where router B sends router A's tunnel traffic. */
async function pathToA(fleet: Fleet): Promise<string> {
  const peers = (await fleet.rb.api('peers')) as { node: string; path: string | null }[];
  return hostOf(peers.find((p) => p.node === NAMES.ra)?.path);
}

/** Where DC1 saw router A last (registration or keepalive). */
async function dcSeesA(fleet: Fleet): Promise<string | undefined> {
  return (await fleet.dcStatus('dc1')).registrations.find((r) => r.name === NAMES.ra)?.observed.address;
}

/** The source address the kernel picks in router A towards the DC, for any datagram or for our port's. */
async function kernelSource(host: Host, dst: string, ourPort: boolean): Promise<string> {
  const r = await host.exec('ip', ['-4', 'route', 'get', dst, ...(ourPort ? ['ipproto', 'udp', 'sport', '4500'] : [])]);
  return /\bsrc (\S+)/.exec(r.stdout)?.[1] ?? `none (${r.stdout.trim()})`;
}

/** Router A's policy-routing rules beyond the kernel's own (priorities 0, 32766, 32767), and its routes tagged as the daemon's. */
async function leftovers(host: Host): Promise<{ rules: string[]; routes: string[] }> {
  const rules: string[] = [];
  const routes: string[] = [];
  for (const fam of ['-4', '-6']) {
    const rs = JSON.parse((await host.exec('ip', ['-j', fam, 'rule', 'show'])).stdout) as { priority: number; table: string; protocol?: string }[];
    for (const r of rs) if (![0, 32766, 32767].includes(r.priority)) rules.push(`${fam} pref ${r.priority} lookup ${r.table} proto ${r.protocol}`);
    const rt = JSON.parse((await host.exec('ip', ['-j', fam, 'route', 'show', 'table', 'all'])).stdout) as { dst: string; table?: string; protocol?: string; dev?: string }[];
    for (const r of rt) if (r.protocol === RTPROT_NTMOBILE || r.table === String(TABLE)) routes.push(`${fam} ${r.dst} table ${r.table} dev ${r.dev}`);
  }
  return { rules, routes };
}

t.test('uplink preference: router A keeps to eth0 while the kernel prefers other uplinks, moves to wwan0 when eth0 loses its carrier and back when it returns, never to the unlisted usb0', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'a-nat', extraSites: HANDOVER_SITES, routerConfig: { ra: { uplinks: ['eth0', 'wwan0'], uplinkTable: TABLE } } });
      t.teardown(() => fleet.dispose());
      const eth0: RouterUplink = { ...fleet.routerUplinks.ra[0]! };
      const r = await fleet.a1.exec('getent', ['ahostsv4', NAMES.b2], { allowFail: true, timeoutMs: 20_000 });
      const vip = r.stdout.split(/\s+/)[0] ?? '';
      t.equal(r.code, 0, `a1 resolves ${NAMES.b2} (${vip}): the tunnel is up`);
      const raVip4 = (await status(fleet)).registered.find((x) => x.name === NAMES.ra)!.vip4;

      // Two more uplinks, both better by metric: wwan0 (listed) behind site c's NAT, usb0 (not listed) on global site d.
      const wwan0 = await fleet.addUplink('ra', 'c', { ifname: 'wwan0', metric: 50 });
      const usb0 = await fleet.addUplink('ra', 'd', { ifname: 'usb0', metric: 10 });
      const keepalivesThen = (await status(fleet)).counters.daemon.keepalives;
      const st0 = await waitFor('router A to see wwan0 usable', 5000, () => status(fleet), (s) => s.uplink.candidates.some((c) => c.device === 'wwan0' && c.ipv4.usable));
      t.same(
        st0.uplink.candidates.map((c) => [c.device, c.link, c.ipv4.address, c.ipv4.chosen]),
        [
          ['eth0', 'up', eth0.address, true],
          ['wwan0', 'up', wwan0.address, false],
        ],
        'status lists the two uplinks, eth0 chosen; usb0 is not a candidate',
      );
      t.equal(await kernelSource(fleet.ra.host, fleet.dc1.address, false), usb0.address, `the kernel routes other traffic to the DC through usb0 (${usb0.address}, metric 10)`);
      t.equal(await kernelSource(fleet.ra.host, fleet.dc1.address, true), eth0.address, `and the daemon's port through eth0 (${eth0.address}, metric 100)`);
      const forwarded = await fleet.ra.host.exec('ip', ['-4', 'route', 'get', fleet.dc1.address, 'from', LAN.a1, 'iif', 'lan0', 'ipproto', 'udp', 'sport', '4500']);
      t.match(forwarded.stdout, /\bdev usb0\b/, `forwarded LAN traffic, even from port 4500, keeps the kernel's route (${forwarded.stdout.split('\n')[0]?.trim()})`);
      // One DC keepalive after the new uplinks came (the DC asks for one every 5 s).
      await waitFor('a DC keepalive after the new uplinks', 10_000, () => status(fleet), (s) => s.counters.daemon.keepalives > keepalivesThen);
      const st1 = await status(fleet);
      t.equal(st1.uplink.address, eth0.address, 'the daemon uses eth0');
      t.equal(st1.counters.daemon.handovers, 0, 'no handover for uplinks the kernel prefers');
      t.equal(await waitFor('DC1 to see router A at site a', 5000, () => dcSeesA(fleet), (a) => a === eth0.publicAddr), eth0.publicAddr, `DC1 sees router A at site a's public address (${eth0.publicAddr})`);
      t.equal(await pathToA(fleet), eth0.publicAddr, "router B's tunnel goes to site a");

      // Traffic across both switches.
      const seconds = (LEAD_MS + 2 * SPACING_MS + TAIL_MS) / 1000;
      const session = await startSession({
        tcp: { from: fleet.a1, target: NAMES.b2, to: fleet.b2, bind: LAN.b2, port: 5001, bytes: TCP_RATE * seconds, bytesPerSecond: TCP_RATE },
        udp: [
          { label: 'a1→b2', from: fleet.a1, target: vip, to: fleet.b2, bind: LAN.b2, port: 5002 },
          { label: 'b2→ra', from: fleet.b2, target: raVip4, to: fleet.ra.host, bind: raVip4, port: 5003 },
        ],
        rate: RATE,
        seconds,
      });
      const switches: { what: string; t0: number; to: RouterUplink; handover: { done: boolean; status: UplinkStatus }; handoversAfter: number }[] = [];
      try {
        await sleep(LEAD_MS);
        for (const [what, carrier, to] of [
          ['eth0 loses its carrier', false, wwan0],
          ['eth0 has its carrier again', true, eth0],
        ] as const) {
          const t0 = Date.now();
          await lab.carrier(fleet.ra.host, 'eth0', carrier);
          const handover = await waitHandover(fleet, 'ra', t0, to.address, SPACING_MS - 500);
          const rest = t0 + SPACING_MS - Date.now();
          if (rest > 0) await sleep(rest);
          // Counted at the end of the window: a second handover for the same switch would show here.
          switches.push({ what, t0, to, handover, handoversAfter: (await status(fleet)).counters.daemon.handovers });
        }
      } catch (e) {
        session.abort();
        throw e;
      }
      const res = await session.finish(); // the streams run TAIL_MS past the last window

      t.equal(res.tcp.code, 0, `the TCP transfer ended without a reset or error${res.tcp.error ? ` (${res.tcp.error})` : ''}`);
      t.ok(res.tcp.intact, `${(res.tcp.receivedBytes / 1e6).toFixed(1)} MB of ${(res.tcp.bytes / 1e6).toFixed(1)} MB arrived, SHA-256 equal at both ends (${res.tcp.retransmits} retransmissions)`);
      for (const [i, s] of switches.entries()) {
        const until = switches[i + 1]?.t0 ?? s.t0 + SPACING_MS + TAIL_MS;
        const g = gapOfSwitch(res.udp['a1→b2']!, s.t0, until);
        const gr = gapOfSwitch(res.udp['b2→ra']!, s.t0, until);
        const h = s.handover.status.lastHandover;
        t.ok(s.handover.done, `${s.what}: router A handed over to ${s.to.ifname} (${s.to.address}) with no failed tunnel (${h?.reason ?? 'none'}, ${h?.ms ?? '-'} ms)`);
        t.equal(s.handoversAfter, i + 1, `${s.what}: exactly one handover (${s.handoversAfter} in all)`);
        t.ok(g.resumed && gr.resumed, `${s.what}: both probe streams came back`);
        t.comment(`gap, ${s.what} (→ ${s.to.ifname}): a1→b2 ${g.ms} ms (${g.lost} lost), b2→ra ${gr.ms} ms (${gr.lost} lost); handover ${h?.ms ?? '-'} ms: ${h?.tunnels.map((x) => `${x.node} ${x.result}`).join(', ') ?? '-'}`);
      }
      t.equal(await pathToA(fleet), eth0.publicAddr, "router B's tunnel is back at site a");
      t.equal(await waitFor('DC1 to see router A at site a again', 5000, () => dcSeesA(fleet), (a) => a === eth0.publicAddr), eth0.publicAddr, 'DC1 sees router A at site a again');
      const end = await status(fleet);
      t.equal(end.counters.daemon.handovers, 2, 'two handovers in all: to wwan0 and back; none to usb0');
      t.not(end.uplink.address, usb0.address, 'usb0 was never the uplink');

      // A crash leaves the rules and the table behind; the next start finds them and keeps one set.
      const during = await leftovers(fleet.ra.host);
      t.equal(during.rules.length, 4, `while running: two rules per family (${during.rules.join('; ')})`);
      await fleet.ra.program.stop('SIGKILL');
      t.equal((await leftovers(fleet.ra.host)).rules.length, 4, 'killed: its rules are still there');
      await fleet.restartRouter('ra');
      const again = await waitFor('router A to be ready again', 20_000, () => status(fleet), (s) => s.state === 'ready');
      t.equal(again.uplink.address, eth0.address, 'restarted: on eth0 again');
      t.same((await leftovers(fleet.ra.host)).rules, during.rules, 'one set of rules, as before the crash');

      await fleet.ra.program.stop();
      const after = await leftovers(fleet.ra.host);
      t.same(after.rules, [], 'stopped: no ip rule of the daemon left in router A');
      t.same(after.routes, [], 'stopped: no route of the daemon left');
    },
    { label: 'uplink-pref' },
  );
});
