// Comparison peers (bench/peers.ts) and measurement helpers (bench/measure.ts)
// between two network namespaces joined by one veth. Needs root and the Debian
// packages wireguard-go, wireguard-tools, nebula, openvpn, iperf3, iproute2.
// Missing binaries FAIL the test with their names; nothing is skipped.
//
// The namespaces are created here with plain `ip` commands (deliberately not
// via lab/) and deleted in teardown, on exit and on SIGINT/SIGTERM.

import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  missingPeers,
  nebula,
  nebulaRelay,
  openvpn,
  plainVeth,
  wireguardGo,
  type PeerSetup,
  type PeerTunnel,
} from '../bench/peers.js';
import { iperf3, pingOk, rssKb, run } from '../bench/measure.js';

const id = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const A = `pt-${id}-a`;
const B = `pt-${id}-b`;
const VA = `pv${id}a`.slice(0, 15);
const VB = `pv${id}b`.slice(0, 15);
const UA = '10.77.0.1';
const UB = '10.77.0.2';
const workDir = mkdtempSync(join(tmpdir(), 'ntm-peers-'));
const live = new Set<PeerTunnel>();
let created = false;

function ipSync(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Synchronous last-resort cleanup, safe to call repeatedly. */
function cleanupSync(): void {
  for (const tun of live) {
    for (const pid of tun.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  live.clear();
  if (created) {
    for (const ns of [A, B]) {
      try {
        ipSync('netns', 'del', ns);
      } catch {
        /* already gone */
      }
    }
    created = false;
  }
  rmSync(workDir, { recursive: true, force: true });
}

process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    cleanupSync();
    process.exit(130);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function linkNames(ns: string): Promise<string[]> {
  const out = (await run('ip', ['-n', ns, '-j', 'link', 'show'])).stdout;
  return (JSON.parse(out) as Array<{ ifname: string }>).map((l) => l.ifname).sort();
}

async function txBytes(ns: string, dev: string): Promise<number> {
  const out = (await run('ip', ['-n', ns, '-s', '-j', 'link', 'show', 'dev', dev])).stdout;
  const [l] = JSON.parse(out) as Array<{ stats64: { tx: { bytes: number } } }>;
  return l!.stats64.tx.bytes;
}

t.test('peer binaries are installed', async (t) => {
  const missing = missingPeers();
  t.same(missing, [], `missing binaries (install the Debian packages): ${missing.join(', ') || 'none'}`);
});

t.test('namespaces', async (t) => {
  t.equal(process.getuid?.(), 0, 'must run as root (creates network namespaces)');
  ipSync('netns', 'add', A);
  created = true; // from here on, cleanup deletes both names (a missing one is ignored)
  ipSync('netns', 'add', B);
  ipSync('link', 'add', VA, 'netns', A, 'type', 'veth', 'peer', 'name', VB, 'netns', B);
  ipSync('-n', A, 'addr', 'add', `${UA}/24`, 'dev', VA);
  ipSync('-n', B, 'addr', 'add', `${UB}/24`, 'dev', VB);
  for (const [ns, dev] of [
    [A, VA],
    [B, VB],
  ] as const) {
    ipSync('-n', ns, 'link', 'set', 'lo', 'up');
    ipSync('-n', ns, 'link', 'set', dev, 'up');
  }
  t.ok(await pingOk(A, UB, { count: 3 }), 'underlay ping a -> b');
});

t.teardown(cleanupSync);

const ns = { a: A, b: B, underlayA: UA, underlayB: UB, workDir };

async function exercise(t: Tap, name: string, setup: PeerSetup, extra?: (tun: PeerTunnel) => Promise<void>): Promise<void> {
  if (!created) {
    t.fail('namespaces were not created');
    return;
  }
  const before = { a: await linkNames(A), b: await linkNames(B) };
  const tun = await setup(ns);
  live.add(tun);
  try {
    t.equal(tun.name, name);
    t.ok(await pingOk(A, tun.innerB), `${name}: a pings ${tun.innerB}`);
    t.ok(await pingOk(B, tun.innerA), `${name}: b pings ${tun.innerA}`);
    const r = await iperf3(B, A, tun.innerB, 2);
    t.ok(r.mbps > 0, `${name}: 2 s iperf3 a -> b: ${r.mbps.toFixed(1)} Mbit/s, ${r.retransmits} retransmits`);
    for (const pid of tun.pids) {
      const m = rssKb(pid);
      t.ok(m.rssKb > 0 && m.hwmKb >= m.rssKb, `${name}: pid ${pid} RSS ${m.rssKb} KiB, peak ${m.hwmKb} KiB`);
    }
    if (extra) await extra(tun);
  } finally {
    await tun.stop();
    live.delete(tun);
  }
  await tun.stop(); // idempotent
  for (const pid of tun.pids) t.notOk(alive(pid), `${name}: pid ${pid} gone after stop()`);
  t.same(await linkNames(A), before.a, `${name}: no devices left in ${A}`);
  t.same(await linkNames(B), before.b, `${name}: no devices left in ${B}`);
}

/** The assertions exercise() uses; satisfied by any subtest. */
type Tap = Pick<typeof t, 'ok' | 'notOk' | 'equal' | 'same' | 'fail'>;

t.test('plain veth', async (t) => {
  await exercise(t, 'veth', plainVeth);
});

t.test('wireguard-go', async (t) => {
  await exercise(t, 'wireguard-go', wireguardGo, async (tun) => {
    t.equal(tun.pids.length, 2);
    // The pid is the userspace daemon itself (kept in the foreground).
    for (const pid of tun.pids) {
      const comm = (await run('cat', [`/proc/${pid}/comm`])).stdout.trim();
      t.equal(comm, 'wireguard-go', `pid ${pid} is wireguard-go`);
    }
  });
});

t.test('nebula', async (t) => {
  await exercise(t, 'nebula', nebula);
});

t.test('openvpn', async (t) => {
  await exercise(t, 'openvpn', openvpn, async (tun) => {
    t.equal(tun.pids.length, 2);
  });
});

t.test('nebula via relay namespace', async (t) => {
  const relayNamespaces = async (): Promise<string[]> =>
    (await run('ip', ['netns', 'list'])).stdout
      .split('\n')
      .map((l) => l.split(' ')[0]!)
      .filter((n) => n.startsWith('nbrelay-') && n.endsWith(`-${process.pid}`));
  await exercise(t, 'nebula-relay', nebulaRelay, async (tun) => {
    t.equal((await relayNamespaces()).length, 1, 'relay namespace exists while up');
    t.equal(tun.pids.length, 3, 'a, b and the relay');
    // Traffic must take the relay path, not the shared veth.
    const tx0 = await txBytes(A, VA);
    const r = await iperf3(B, A, tun.innerB, 1);
    const tx1 = await txBytes(A, VA);
    const moved = (r.senderMbps * 1e6) / 8;
    t.ok(tx1 - tx0 < moved / 20, `shared veth carried ${tx1 - tx0} B of ~${moved.toFixed(0)} B sent`);
  });
  t.same(await relayNamespaces(), [], 'relay namespace deleted by stop()');
});
