// Finding a name's DC (ARCHITECTURE §3: "the node finds its DC from the NS record of its own
// domain"; "DCmn finds DCcn from the NS record of CN's domain"): walk up the name's labels asking
// for NS records until a zone cut answers, then resolve the name server's address. The DC's UDP
// control port and its mutual-TLS port are well known (overridable per deployment).

import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';

export const DC_CONTROL_PORT = 4500;
export const DC_TLS_PORT = 4501;
/** A Relay Server's UDP port (hole punching, relayed ESP, Relay Direction) and its mutual-TLS port
 *  (first contact with DCs): different from the DC's, so that one machine can run both. */
export const RS_PORT = 4600;
export const RS_TLS_PORT = 4601;
/** A Notification Server's UDP port (Notification and NS Key Distribution from DCs, under Kdcns), its
 *  mutual-TLS port (first contact with DCs), and the MQTT-over-TLS port its nodes connect to. */
export const NS_PORT = 4700;
export const NS_TLS_PORT = 4701;
export const MQTT_TLS_PORT = 8883;

export interface DcLocation {
  zone: string;
  nsName: string;
  address: string;
}

export class DiscoveryError extends Error {
  override readonly name = 'DiscoveryError';
}

export interface DiscoveryOptions {
  /** DNS servers to ask ('addr' or 'addr:port'); the system's if omitted. */
  resolvers?: string[];
  /** Per zone, a fixed DC address (no DNS lookup): { "fleet2.test": "198.18.0.20" }. */
  override?: Record<string, string>;
  timeoutMs?: number;
}

export function parentZones(name: string): string[] {
  const labels = name.toLowerCase().replace(/\.$/, '').split('.');
  const out: string[] = [];
  for (let i = 0; i < labels.length - 1; i++) out.push(labels.slice(i).join('.'));
  return out;
}

export async function findDc(name: string, opts: DiscoveryOptions = {}): Promise<DcLocation> {
  for (const zone of parentZones(name)) {
    const fixed = opts.override?.[zone];
    if (fixed !== undefined) return { zone, nsName: zone, address: fixed };
  }
  const resolver = new Resolver({ timeout: opts.timeoutMs ?? 2000, tries: 2 });
  if (opts.resolvers?.length) resolver.setServers(opts.resolvers);
  for (const zone of parentZones(name)) {
    let ns: string[];
    try {
      ns = await resolver.resolveNs(zone);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENODATA' || code === 'ENOTFOUND') continue;
      throw new DiscoveryError(`NS ${zone}: ${code ?? (e as Error).message}`);
    }
    for (const nsName of ns) {
      if (isIP(nsName)) return { zone, nsName, address: nsName };
      const addrs = await resolver.resolve4(nsName).catch(() => [] as string[]);
      const addrs6 = addrs.length ? [] : await resolver.resolve6(nsName).catch(() => [] as string[]);
      const address = addrs[0] ?? addrs6[0];
      if (address !== undefined) return { zone, nsName, address };
    }
    throw new DiscoveryError(`NS ${zone}: no address for ${ns.join(', ')}`);
  }
  throw new DiscoveryError(`no NS record for any zone of ${name}`);
}
