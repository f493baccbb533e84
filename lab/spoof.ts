// Forged source addresses and packet counters, for the anti-reflection tests of a server (the RS
// must never be steered into sending to a third address). Both are nftables tables of their own in
// one lab host's namespace, so they change nothing outside it and go away with the lab.
//   spoofSource(attacker, target, victim)  rewrites the source of what the attacker sends to target
//                                          (SNAT in its own postrouting), as a forged source would
//   countPackets(victim, { from })         counts every packet that reaches the victim from an address

import { isIP } from 'node:net';
import type { Host } from './lab.js';

export const SPOOF_TABLE = 'ntm_spoof';
export const COUNT_TABLE = 'ntm_count';

function family(addr: string, what: string): 'ip' | 'ip6' {
  const v = isIP(addr);
  if (v === 0) throw new Error(`${what}: "${addr}" is not an IP address`);
  return v === 4 ? 'ip' : 'ip6';
}

export interface Spoof {
  /** Take the rule out again: the host sends with its own address. */
  remove(): Promise<void>;
}

/**
 * From now on, every packet the host sends to `target` (UDP to `port` only, when given) leaves with
 * `victim` as its source address; the source port stays as the socket chose it (unless it collides).
 * Answers go to the victim, never back to the host.
 */
export async function spoofSource(host: Host, target: string, victim: string, o: { port?: number } = {}): Promise<Spoof> {
  const fam = family(target, 'spoofSource target');
  if (family(victim, 'spoofSource victim') !== fam) throw new Error(`spoofSource: ${target} and ${victim} are not of one address family`);
  if (o.port !== undefined && !(Number.isInteger(o.port) && o.port > 0 && o.port < 65536)) throw new Error(`spoofSource: port ${o.port}`);
  const match = `${fam} daddr ${target}${o.port !== undefined ? ` udp dport ${o.port}` : ''}`;
  await host.nft(`table ${fam} ${SPOOF_TABLE} {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ${match} snat ${fam} to ${victim}
  }
}
`);
  return {
    remove: async () => {
      await host.exec('nft', ['delete', 'table', fam, SPOOF_TABLE], { allowFail: true });
    },
  };
}

export interface PacketCount {
  packets: number;
  bytes: number;
}

export interface PacketCounter {
  /** What reached the host from the source so far (IP packets, bytes with IP headers). */
  read(): Promise<PacketCount>;
  remove(): Promise<void>;
}

/**
 * Counts every packet that arrives at the host from `from` (any protocol, any port, before
 * conntrack or any socket sees it), so that "the victim received nothing" does not depend on
 * guessing the port an answer would go to.
 */
export async function countPackets(host: Host, o: { from: string }): Promise<PacketCounter> {
  const fam = family(o.from, 'countPackets from');
  await host.nft(`table ${fam} ${COUNT_TABLE} {
  counter seen { }
  chain prerouting {
    type filter hook prerouting priority raw - 10; policy accept;
    ${fam} saddr ${o.from} counter name seen
  }
}
`);
  return {
    read: async () => {
      const r = await host.exec('nft', ['-j', 'list', 'counter', fam, COUNT_TABLE, 'seen']);
      const doc = JSON.parse(r.stdout) as { nftables: { counter?: { packets: number; bytes: number } }[] };
      const c = doc.nftables.find((x) => x.counter)?.counter;
      if (!c) throw new Error(`host ${host.name}: counter ${COUNT_TABLE}/seen not found`);
      return { packets: c.packets, bytes: c.bytes };
    },
    remove: async () => {
      await host.exec('nft', ['delete', 'table', fam, COUNT_TABLE], { allowFail: true });
    },
  };
}
