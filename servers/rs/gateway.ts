// The RS as the far end of gateway tunnels (docs/relay.md "A gateway route"): what the kernel must
// do with the packets the tunnel engine writes into the RS's TUN device. One nftables table
// (family inet) holds it, replaced in one transaction whenever the allowed pairs change:
//
//   - forward from the TUN only (VIP, target) pairs that a Gateway Direction named (sets of
//     `saddr . daddr`), and masquerade them towards the host, so the host answers the RS;
//   - into the TUN only replies (ct state established,related): the host cannot open anything
//     towards a node, nor can anyone else who routes a VIP here;
//   - nothing from the TUN to the RS itself (its own services are not the nodes' business);
//   - every drop counted by a named counter.
//
// Also here: IP forwarding for the RS's network namespace, which a gateway needs.

import { readFileSync, writeFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { applyRuleset, checkTable, deleteTable, tableReplacement, type NftOptions } from '../../netlink/nftables.js';

export const DEFAULT_GATEWAY_TABLE = 'ntmobile_rs';

/** Named counters of the table (netlink/nftables.ts readCounters). */
export const GATEWAY_COUNTERS = {
  /** from the TUN to a (VIP, target) pair a direction named: forwarded, masqueraded */
  forwarded: 'gw_forwarded',
  /** from the TUN to anything else */
  forwardDrop: 'gw_forward_drop',
  /** into the TUN that is not a reply */
  returnDrop: 'gw_return_drop',
  /** from the TUN to the RS itself */
  inputDrop: 'gw_input_drop',
} as const;

export interface GatewaySpec {
  table: string;
  tun: string;
  /** (node VIP, general host address) pairs the node may reach, per family. */
  pairs4: [string, string][];
  pairs6: [string, string][];
}

const q = (s: string): string => JSON.stringify(s);

export function buildGatewayRuleset(spec: GatewaySpec): string {
  checkTable('inet', spec.table);
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(spec.tun)) throw new TypeError(`gateway tun: ${JSON.stringify(spec.tun)} is not an interface name`);
  for (const [v, t] of spec.pairs4) if (!isIPv4(v) || !isIPv4(t)) throw new TypeError(`gateway pair ${v} . ${t}: not two IPv4 addresses`);
  for (const [v, t] of spec.pairs6) if (!isIPv6(v) || !isIPv6(t) || v.includes('%') || t.includes('%')) throw new TypeError(`gateway pair ${v} . ${t}: not two IPv6 addresses`);
  const set = (name: string, type: string, pairs: [string, string][]): string => {
    const unique = [...new Set(pairs.map(([v, t]) => `${v} . ${t}`))];
    return `  set ${name} {\n    type ${type} . ${type}\n${unique.length ? `    elements = { ${unique.join(', ')} }\n` : ''}  }\n`;
  };
  const tun = q(spec.tun);
  const C = GATEWAY_COUNTERS;
  const chain = (name: string, head: string, rules: string[]): string => `  chain ${name} {\n    ${head}\n${rules.map((r) => `    ${r}\n`).join('')}  }\n`;
  const body =
    Object.values(C)
      .map((c) => `  counter ${c} {}\n`)
      .join('') +
    set('pairs4', 'ipv4_addr', spec.pairs4) +
    set('pairs6', 'ipv6_addr', spec.pairs6) +
    chain('forward', 'type filter hook forward priority filter; policy accept;', [
      `iifname ${tun} ip saddr . ip daddr @pairs4 counter name ${C.forwarded} accept`,
      `iifname ${tun} ip6 saddr . ip6 daddr @pairs6 counter name ${C.forwarded} accept`,
      `iifname ${tun} counter name ${C.forwardDrop} drop`,
      `oifname ${tun} ct state established,related accept`,
      `oifname ${tun} counter name ${C.returnDrop} drop`,
    ]) +
    chain('input', 'type filter hook input priority filter; policy accept;', [`iifname ${tun} counter name ${C.inputDrop} drop`]) +
    // iifname is not known in postrouting: the pair itself says the packet came from the TUN.
    chain('postrouting', 'type nat hook postrouting priority srcnat; policy accept;', [
      `oifname != ${tun} ip saddr . ip daddr @pairs4 masquerade`,
      `oifname != ${tun} ip6 saddr . ip6 daddr @pairs6 masquerade`,
    ]);
  return tableReplacement('inet', spec.table, body);
}

/** The gateway's table: applied again on every change (serialised), removed on stop. */
export class GatewayNat {
  private chain: Promise<void> = Promise.resolve();
  private applied = false;

  constructor(
    readonly table: string,
    private readonly nft: NftOptions = {},
  ) {
    checkTable('inet', table);
  }

  /** Replaces the table with spec's rules; calls are applied one after the other, in order. */
  apply(spec: Omit<GatewaySpec, 'table'>): Promise<void> {
    const text = buildGatewayRuleset({ ...spec, table: this.table });
    const run = this.chain.then(async () => {
      await applyRuleset(text, this.nft);
      this.applied = true;
    });
    this.chain = run.catch(() => undefined);
    return run;
  }

  async remove(): Promise<void> {
    await this.chain;
    if (this.applied) await deleteTable('inet', this.table, this.nft);
    this.applied = false;
  }
}

const FORWARDING = ['/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv6/conf/all/forwarding'];

/**
 * Turns IP forwarding on (IPv4 and IPv6) where it is off; returns what undoes exactly that. Note
 * that IPv6 forwarding makes the kernel ignore router advertisements (accept_ra 1): a host that
 * takes its IPv6 default route from SLAAC needs accept_ra 2 on its uplink.
 */
export function enableForwarding(log: (line: string) => void = () => undefined): () => void {
  const changed: string[] = [];
  for (const path of FORWARDING) {
    let value: string;
    try {
      value = readFileSync(path, 'utf8').trim();
    } catch (e) {
      throw new Error(`gateway: cannot read ${path}: ${(e as Error).message}`);
    }
    if (value === '1') continue;
    try {
      writeFileSync(path, '1\n');
    } catch (e) {
      throw new Error(`gateway: cannot enable forwarding (${path}): ${(e as Error).message}`);
    }
    changed.push(path);
    log(`gateway: ${path} = 1 (was ${value})`);
  }
  return () => {
    for (const path of changed) {
      try {
        writeFileSync(path, '0\n');
      } catch {
        // Best effort on the way out: the namespace may be gone already.
      }
    }
  };
}
