// End to end on a real OpenWrt userland (issue: the OpenWrt package): router A of the fleet is an
// OpenWrt router — the shared userland's ubusd, procd, uci, opkg, fw4 and dnsmasq init script,
// running in router A's namespace — with the ntmobile .ipk installed by the real opkg (postinst
// and uci-defaults run), configured through UCI and run by procd. Router B, the AS, the DCs and
// the RS are the fleet's own ('b-nat': router A has a global address behind fw4's WAN zone, so
// router B's Tunnel Requests and the DC's directions only get in through the package's WAN rule).
//
// The userland is glibc with this machine's Node, so the .ipk installed here is the variant whose
// addon is built for the host (`build-ipk --host-addon`); the musl .ipk is checked by
// test/ipk.test.ts. Everything runs in the lab's namespaces; the instance is removed at the end.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Lab, type Host } from '../lab/lab.js';
import { buildFleet, HANDOVER_SITES, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { serveRandomFile } from '../lab/http.js';
import { openwrtRouter, waitFor, type OpenWrt } from '../lab/openwrt.js';
import { startSession } from '../lab/traffic.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Builds the host-addon .ipk (the same builder as `npm run build:ipk`) and returns its path. */
function hostIpk(): string {
  execFileSync(process.execPath, [path.join(REPO, 'dist/openwrt/build-ipk.js'), '--host-addon'], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
  const dir = path.join(REPO, 'build/ipk/host');
  const ipk = readdirSync(dir).find((f) => /^ntmobile_.*_x86_64\.ipk$/.test(f));
  if (ipk === undefined) throw new Error(`no ntmobile .ipk in ${dir}`);
  return path.join(dir, ipk);
}

interface PeerRow {
  node: string;
  path: string | null;
  route: string;
  spiOut: number;
  spiIn: number;
}
interface Status {
  state: string;
  error: string | null;
  registered: { name: string; vip4: string | null }[];
  uplink: { address: string | null; handovers: number; recentHandovers: { at: number; to: string | null }[] };
  counters: { daemon: { handovers: number } };
}

/** a1 (or another LAN host) fetches a URL by name; the bytes' SHA-256. */
async function fetchSha(host: Host, url: string): Promise<string> {
  const r = await host.sh(`curl -sf --max-time 20 ${url} | sha256sum`, { allowFail: true, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`${host.name}: curl ${url}: exit ${r.code} ${r.stderr}`);
  return r.stdout.split(/\s+/)[0]!;
}

let owrt: OpenWrt | null = null;
let procdPid = async (): Promise<number | null> => null;

t.test('OpenWrt: the .ipk on a real userland, in a fleet', async (t) => {
  const ipk = hostIpk();
  const lab = await Lab.create('openwrt-e2e');
  let fleet: Fleet | null = null;
  t.teardown(async () => {
    if (owrt !== null) await owrt.remove();
    fleet?.dispose();
    await lab.destroy();
  });
  const buildStart = Date.now();
  try {
    fleet = await buildFleet(lab, { case: 'b-nat', verbose: false, extraSites: { d: HANDOVER_SITES.d! }, external: {
        ra: async (setup) => {
          const r = await openwrtRouter(lab, ipk, setup);
          owrt = r.owrt;
          procdPid = r.procdPid;
          return r.router;
        },
      },
    });
  } catch (e) {
    lab.dumpLogs();
    throw e;
  }
  const f = fleet;
  const o = owrt!;
  const began = Date.now();
  const phase = (name: string): void => void t.comment(`${name}: ${((Date.now() - began) / 1000).toFixed(1)} s`);
  t.comment(`fleet with the OpenWrt router up in ${((Date.now() - buildStart) / 1000).toFixed(1)} s`);
  t.match(await o.run('opkg list-installed ntmobile'), /^ntmobile - /m, 'opkg installed ntmobile (postinst ran)');
  t.equal((await o.uci(['-q', 'get', 'firewall.ntmobile.name'])).stdout.trim(), 'ntmobile', 'uci-defaults added the fw4 zone ntmobile');

  // ---- up, by procd, answering on ubus, reachable by name ----------------------------------
  const ubusStatus = JSON.parse((await o.ubus(['call', 'ntmobile', 'status'])).stdout) as Status;
  t.equal(ubusStatus.state, 'ready', 'ubus call ntmobile status: registered');
  t.ok(ubusStatus.registered.some((r) => r.name === NAMES.ra && r.vip4), `ubus status shows ${NAMES.ra} with its VIP`);
  const badArg = await o.ubus(['call', 'ntmobile', 'ping', '{"name": 5}']);
  t.not(badArg.code, 0, 'ubus call ntmobile ping {"name": 5}: refused');
  t.match(badArg.stderr + badArg.stdout, /Invalid argument/, '… as an invalid argument');
  t.match((await o.ubus(['list', 'ntmobile'])).stdout, /^ntmobile$/m, 'the daemon still answers on ubus after the bad call');
  t.match((await o.uci(['-q', 'get', 'dhcp.@dnsmasq[0].server'])).stdout, new RegExp(`/${NAMES.zoneB}/127\\.0\\.0\\.1#5353`), "dnsmasq forwards the NTMobile zones to the daemon's DNS hook");

  const data = await serveRandomFile(f.b2, { dir: f.dir, bind: LAN.b2, size: 4 << 20 });
  const url = `http://${NAMES.b2}:8080/f`;
  phase('b2 serving');
  t.equal(await fetchSha(f.a1, url), sha(data), `a1 fetches 4 MB from ${NAMES.b2} by name through the OpenWrt router (SHA-256 equal)`);
  const nft = await f.ra.host.exec('nft', ['list', 'tables']);
  t.match(nft.stdout, /table inet fw4/, "fw4's table is loaded");
  t.match(nft.stdout, /table inet ntmobile/, "the daemon's table is loaded beside it");
  const peerB = async (): Promise<PeerRow> => {
    const p = ((await f.ra.api('peers')) as PeerRow[]).find((x) => x.node === NAMES.rb);
    if (p === undefined) throw new Error('router A has no tunnel to router B');
    return p;
  };
  const before = await peerB();

  phase('up and reachable');
  // ---- fw4 reload: both tables, tunnel unchanged ---------------------------------------------
  await o.run('fw4 reload');
  t.match((await f.ra.host.exec('nft', ['list', 'tables'])).stdout, /table inet ntmobile/, "fw4 reload leaves the daemon's table");
  t.equal(await fetchSha(f.a1, url), sha(data), 'after fw4 reload a1 still fetches from b2 by name');

  phase('fw4 reload');
  // ---- reload with nothing changed: same SAs, same process -------------------------------------
  const pid0 = await procdPid();
  t.ok(pid0, `procd runs the daemon (pid ${pid0})`);
  const reloads = (): number => o.syslog().split('\n').filter((l) => /info: reload: /.test(l)).length;
  const reloads0 = reloads();
  await o.run('uci commit ntmobile; /etc/init.d/ntmobile reload');
  await waitFor('the daemon took the reload', 10_000, async () => (reloads() > reloads0 ? true : undefined));
  t.match(o.syslog(), /info: reload: no change/, 'the daemon re-read its config and found nothing changed');
  const same = await peerB();
  t.same([same.spiOut, same.spiIn], [before.spiOut, before.spiIn], 'a reload with nothing changed keeps the tunnel (same SPIs)');
  t.equal(await procdPid(), pid0, '… and the same daemon process');

  phase('reload unchanged');
  // ---- publish a LAN host by MAC (address from the DHCP leases), reload ----------------------
  const mac = (await f.a1.exec('cat', ['/sys/class/net/eth0/address'])).stdout.trim();
  await o.run(`echo "$(( $(date +%s) + 3600 )) ${mac} ${LAN.a1} a1 01:${mac}" > /tmp/dhcp.leases`);
  await o.run(`uci add ntmobile publish >/dev/null; uci set ntmobile.@publish[-1].name='${NAMES.a1}'; uci set ntmobile.@publish[-1].mac='${mac}'; uci commit ntmobile; /etc/init.d/ntmobile reload`);
  await waitFor(`${NAMES.a1} registered after the reload`, 15_000, async () => ((await f.ra.api('status')) as Status).registered.some((r) => r.name === NAMES.a1 && r.vip4) || undefined);
  const kept = await peerB();
  t.same([kept.spiOut, kept.spiIn], [before.spiOut, before.spiIn], 'publishing a host dropped no tunnel (same SPIs)');
  t.equal(await procdPid(), pid0, '… and did not restart the daemon');
  const dataA1 = await serveRandomFile(f.a1, { dir: f.dir, bind: LAN.a1, size: 1 << 20 });
  t.equal(await fetchSha(f.b2, `http://${NAMES.a1}:8080/f`), sha(dataA1), `b2 reaches the newly published ${NAMES.a1} by name (by MAC ${mac}, from the leases)`);

  phase('published by MAC');
  // ---- bad UCI: reload keeps the running config; a start does not start ---------------------
  for (const [what, set, field] of [
    ['an unknown suite', "uci set ntmobile.main.suite='rot13'", /ntmobile\.main\.suite: "rot13"/],
    ['a port out of range', "uci set ntmobile.main.port='70000'", /ntmobile\.main\.port: 70000 is not an integer/],
    ['a published host without an address', `uci add ntmobile publish >/dev/null; uci set ntmobile.@publish[-1].name='cam.${NAMES.ra}'`, /ntmobile\.cfg[0-9a-f]+\.ip: required/],
  ] as const) {
    const pidBefore = await procdPid();
    await o.run(`cp /etc/config/ntmobile /tmp/ntmobile.good; ${set}; uci commit ntmobile`);
    const r = await o.sh('/etc/init.d/ntmobile reload');
    t.match(r.stderr + r.stdout, field, `reload with ${what}: the reason, naming the UCI option`);
    t.equal(await procdPid(), pidBefore, `reload with ${what}: the daemon keeps running`);
    t.equal(((await f.ra.api('status')) as Status).state, 'ready', `reload with ${what}: still registered`);
    if (what === 'an unknown suite') {
      await o.run('/etc/init.d/ntmobile stop');
      const s = await o.sh('/etc/init.d/ntmobile start');
      t.match(s.stderr + s.stdout, field, 'start with an invalid config: the reason');
      t.equal(await procdPid(), null, 'start with an invalid config: nothing started');
      t.notMatch((await f.ra.host.exec('ip', ['-o', 'link'])).stdout, /ntm0/, '… no TUN device');
      t.notMatch((await f.ra.host.exec('nft', ['list', 'tables'])).stdout, /table inet ntmobile/, '… no nftables table');
    }
    await o.run('cp /tmp/ntmobile.good /etc/config/ntmobile');
    if (what === 'an unknown suite') {
      await o.run('/etc/init.d/ntmobile start');
      await waitFor('router A registered again', 30_000, async () => ((await f.ra.api('status')) as Status).state === 'ready' || undefined);
    }
  }
  // the unknown-suite case restarted the daemon: the LAN's resolver asks again within the TTL (5 s)
  const again = Date.now();
  await waitFor('a1 reaches b2 by name after the restart', 20_000, async () => ((await fetchSha(f.a1, url)) === sha(data) ? true : undefined));
  t.pass(`after the refused reloads and a restart a1 fetches from b2 by name (${((Date.now() - again) / 1000).toFixed(1)} s after the restart was ready)`);

  phase('bad UCI');
  // ---- an uplink change and netifd's hotplug call: one handover, the transfer survives --------
  const listen = o.exec(['ubus', '-t', '20', 'listen', 'ntmobile.handover'], { timeoutMs: 30_000 });
  const session = await startSession({
    tcp: { from: f.a1, target: NAMES.b2, to: f.b2, bind: LAN.b2, port: 9400, bytes: 8_000_000, bytesPerSecond: 2_000_000 },
    udp: [],
    rate: 0,
    seconds: 0,
  });
  await sleep(1000); // the transfer is under way before the move
  const movedAt = Date.now();
  const moved = await f.moveRouter('ra', 'd');
  // netifd runs the iface hotplug scripts once the interface is up again with its new address
  const hot = await o.sh(`ACTION=ifup INTERFACE=wan DEVICE=eth0 sh /etc/hotplug.d/iface/90-ntmobile; echo rc=$?`);
  t.match(hot.stdout, /rc=0/, 'the hotplug script runs as netifd would run it');
  const toNew = async (): Promise<number> => ((await f.ra.api('status')) as Status).uplink.recentHandovers.filter((h) => h.at >= movedAt && h.to === moved.address).length;
  await waitFor('the handover to the new address', 15_000, async () => ((await toNew()) > 0 ? true : undefined));
  const result = await session.finish();
  t.ok(result.tcp.intact && result.tcp.code === 0, `the TCP transfer a1 → b2 survived the move to ${moved.address} (SHA-256 equal, ${result.tcp.retransmits} retransmits)`, { tcp: result.tcp });
  const handovers1 = ((await f.ra.api('status')) as Status).counters.daemon.handovers;
  await o.sh(`ACTION=ifup INTERFACE=wan DEVICE=eth0 sh /etc/hotplug.d/iface/90-ntmobile`);
  t.match(o.syslog(), /debug: hotplug: ifup wan \(eth0\)/, 'the daemon got the hotplug hint');
  t.equal(((await f.ra.api('status')) as Status).counters.daemon.handovers, handovers1, 'a hotplug hint with nothing moved makes no handover');
  t.equal(await toNew(), 1, `one handover to the new address ${moved.address} (the hotplug hint added none)`, { uplink: ((await f.ra.api('status')) as { uplink: unknown }).uplink });
  const events = await listen;
  t.match(events.stdout, /"ntmobile\.handover"/, 'ubus listen saw the ntmobile.handover event');

  phase('hotplug');
  // ---- SIGKILL: procd respawns it -------------------------------------------------------------
  const pid1 = await procdPid();
  await o.ubus(['call', 'service', 'signal', '{"name":"ntmobile","signal":9}']);
  const killedAt = Date.now();
  const pid2 = await waitFor('procd respawned the daemon', 20_000, async () => {
    const p = await procdPid();
    return p !== null && p !== pid1 ? p : undefined;
  });
  t.not(pid2, pid1, `procd restarted the killed daemon (pid ${pid1} → ${pid2})`);
  await waitFor('status answers again', 30_000, async () => ((await f.ra.api('status')) as Status).state === 'ready' || undefined);
  const back = await waitFor('a1 reaches b2 by name again', 60_000, async () => ((await fetchSha(f.a1, url)) === sha(data) ? Date.now() : undefined));
  t.pass(`after SIGKILL a1 fetches from b2 by name again (${((back - killedAt) / 1000).toFixed(1)} s after the kill)`);

  phase('SIGKILL');
  // ---- opkg remove ------------------------------------------------------------------------------
  await o.uci(['set', 'ntmobile.main.log_level=warn']);
  await o.uci(['commit', 'ntmobile']);
  const removed = await o.exec(['opkg', 'remove', 'ntmobile']);
  t.equal(removed.code, 0, 'opkg remove ntmobile');
  t.equal(await procdPid(), null, 'the service is stopped');
  t.notMatch((await f.ra.host.exec('nft', ['list', 'tables'])).stdout, /table inet ntmobile/, "the daemon's nftables table is gone");
  t.notMatch((await f.ra.host.exec('ip', ['-o', 'link'])).stdout, /ntm0/, 'the TUN device is gone');
  t.not((await o.uci(['-q', 'get', 'firewall.ntmobile'])).code, 0, 'the fw4 zone is gone');
  t.notMatch((await o.uci(['-q', 'get', 'dhcp.@dnsmasq[0].server'])).stdout, /127\.0\.0\.1#5353/, "dnsmasq's forwarding is gone");
  t.notOk(existsSync(path.join(o.root, 'usr/lib/ntmobile/dist/router/cli.js')), "the daemon's files are gone");
  const conf = path.join(o.root, 'etc/config/ntmobile');
  t.ok(existsSync(conf) && /log_level 'warn'/.test(readFileSync(conf, 'utf8')), 'the modified /etc/config/ntmobile is kept');
});
