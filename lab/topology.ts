// Ready-made lab topologies. All addresses live inside the lab's namespaces:
//   "internet"  198.18.0.0/15 (RFC 2544 benchmarking range) and 2001:db8::/48 (documentation prefix)
//   site LANs   10.0.<i>.0/24 and 172.16.2.0/24 (RFC 1918)
//   two-hosts   10.0.0.0/24 and fd6e:746d::/64 (ULA)

import { type Host, type Lab, type Segment, type MoveOptions, type Nat, type NatType } from './lab.js';

export type SiteNat = NatType | 'none';

// ---------------------------------------------------------------------------------------------------

export interface TwoHosts {
  a: Host;
  b: Host;
  /** interface names on a and b */
  aIf: string;
  bIf: string;
  aAddr: string;
  bAddr: string;
  aAddr6: string;
  bAddr6: string;
}

/** Two hosts 'a' and 'b' over one veth: 10.0.0.1/24 + fd6e:746d::1/64 and 10.0.0.2/24 + fd6e:746d::2/64. */
export async function twoHosts(lab: Lab, o: { mtu?: number; names?: [string, string] } = {}): Promise<TwoHosts> {
  const [an, bn] = o.names ?? ['a', 'b'];
  const a = await lab.host(an);
  const b = await lab.host(bn);
  const l = await lab.link(a, b, {
    aAddr: ['10.0.0.1/24', 'fd6e:746d::1/64'],
    bAddr: ['10.0.0.2/24', 'fd6e:746d::2/64'],
    aName: 'eth0',
    bName: 'eth0',
    mtu: o.mtu,
  });
  return { a, b, aIf: l.a, bIf: l.b, aAddr: '10.0.0.1', bAddr: '10.0.0.2', aAddr6: 'fd6e:746d::1', bAddr6: 'fd6e:746d::2' };
}

// ---------------------------------------------------------------------------------------------------

export interface Site {
  name: string;
  nat: SiteNat;
  /** the NAT box (when nat !== 'none') */
  natBox?: Nat;
  /** the site's access network towards the core router (198.18.<i>.0/24, 2001:db8:0:<i>::/64) */
  wan: Segment;
  /** where a node of this site attaches: the LAN behind the NAT, or the access network for a global site */
  segment: Segment;
  /** the IPv4 prefix nodes of this site get addresses from */
  prefix: string;
  /** default gateway of nodes in this site */
  gateway: string;
  /** IPv6 default gateway (global sites only: NATed sites are IPv4-only) */
  gateway6?: string;
  /**
   * The next free address in the site, as MoveOptions/AttachOptions fields: { addr, gateway }.
   * For lab.attach(host, site.segment, site.allocate()) or lab.moveUplink(host, ifname, site.segment, site.allocate()).
   */
  allocate(): Required<Pick<MoveOptions, 'addr' | 'gateway'>> & { address: string; address6?: string };
}

export interface InternetWithNats {
  /** the backbone: core router and internet hosts (servers, peers): 198.18.0.0/24, 2001:db8::/64 */
  internet: Segment;
  /** the core router: 198.18.0.1 / 2001:db8::1 on the backbone, 198.18.<i>.1 / 2001:db8:0:<i>::1 on site i's access network */
  core: Host;
  sites: Record<string, Site>;
  nodeA: Host;
  nodeB: Host;
  /** the uplink interface name of nodeA / nodeB ('eth0') */
  uplink: string;
  addrs: {
    core: string;
    core6: string;
    /** nodeA's own address (private when behind a NAT) */
    nodeA: string;
    nodeA6?: string;
    nodeB: string;
    nodeB6?: string;
    /** the address the internet sees for nodeA / nodeB (its NAT's public address, or its own) */
    nodeAPublic: string;
    nodeBPublic: string;
  };
  /** Add a host on the backbone (e.g. a DC, RS or a peer): next free 198.18.0.x and 2001:db8::x, default via core. */
  addInternetHost(name: string): Promise<{ host: Host; addr: string; addr6: string; ifname: string }>;
}

export interface InternetOptions {
  aNat: SiteNat;
  bNat: SiteNat;
  /** more sites without a node (e.g. { c: 'eim', d: 'none' }), targets for moveUplink */
  extraSites?: Record<string, SiteNat>;
  /** give every NATed site the same LAN prefix 10.0.0.0/24 (overlapping private address spaces) */
  overlap?: boolean;
  /** idle timeout of eim mappings, seconds */
  mappingTimeout?: number;
}

const CORE = '198.18.0.1';
const CORE6 = '2001:db8::1';

/**
 * An "internet" inside 198.18.0.0/15 and 2001:db8::/48: a core router with a backbone segment
 * (198.18.0.0/24, 2001:db8::/64; internet hosts from .10) and one access network per site
 * (site i = 1, 2, 3, ... for a, b, extraSites: 198.18.i.0/24 and 2001:db8:0:i::/64, core at .1 / ::1).
 * A site is either global (its nodes sit on the access network with their own addresses, .10, .11, ...)
 * or behind a NAT box (eim or symmetric) whose outside is 198.18.i.2 / 2001:db8:0:i::2 and whose inside
 * is a private IPv4 LAN: 10.0.i.0/24 (site b: 172.16.2.0/24; with overlap: every LAN is 10.0.0.0/24),
 * NAT at .1, nodes from .10. nodeA lives in site a, nodeB in site b, each with uplink eth0.
 * Hosts of different sites never share a link, so every path crosses the core (and the NATs).
 */
export async function internetWithNats(lab: Lab, o: InternetOptions): Promise<InternetWithNats> {
  const siteSpecs: [string, SiteNat][] = [['a', o.aNat], ['b', o.bNat], ...Object.entries(o.extraSites ?? {})];
  const seen = new Set<string>();
  for (const [name, nat] of siteSpecs) {
    if (!/^[a-z][a-z0-9]{0,7}$/.test(name)) throw new Error(`site name '${name}': lowercase letters/digits, at most 8`);
    if (seen.has(name)) throw new Error(`duplicate site '${name}'`);
    if (!['none', 'eim', 'symmetric'].includes(nat)) throw new Error(`site ${name}: NAT type '${nat}' (none | eim | symmetric)`);
    seen.add(name);
  }
  if (siteSpecs.length > 200) throw new Error('too many sites');

  const internet = await lab.segment('internet');
  const core = await lab.host('core', { forwarding: true });
  await lab.attach(core, internet, { name: 'bb0', addr: [`${CORE}/24`, `${CORE6}/64`] });

  const sites: Record<string, Site> = {};
  for (let i = 0; i < siteSpecs.length; i++) {
    const [name, nat] = siteSpecs[i]!;
    const idx = i + 1;
    const hex = idx.toString(16);
    const wan = await lab.segment(`wan${name}`);
    const gw = `198.18.${idx}.1`;
    const gw6 = `2001:db8:0:${hex}::1`;
    await lab.attach(core, wan, { name: `site-${name}`, addr: [`${gw}/24`, `${gw6}/64`] });
    if (nat === 'none') {
      let next = 10;
      sites[name] = {
        name,
        nat,
        wan,
        segment: wan,
        prefix: `198.18.${idx}.0/24`,
        gateway: gw,
        gateway6: gw6,
        allocate() {
          const n = next++;
          if (n > 254) throw new Error(`site ${name}: no addresses left`);
          const address = `198.18.${idx}.${n}`;
          const address6 = `2001:db8:0:${hex}::${n.toString(16)}`;
          return { addr: [`${address}/24`, `${address6}/64`], gateway: [gw, gw6], address, address6 };
        },
      };
    } else {
      const lanNet = o.overlap ? '10.0.0' : idx === 2 ? '172.16.2' : `10.0.${idx}`;
      const lan = await lab.segment(`lan${name}`);
      const natBox = await lab.nat(`nat${name.toUpperCase()}`, {
        type: nat,
        outside: { segment: wan, addr: [`198.18.${idx}.2/24`, `2001:db8:0:${hex}::2/64`], gateway: [gw, gw6] },
        inside: { segment: lan, addr: `${lanNet}.1/24` },
        mappingTimeout: o.mappingTimeout,
      });
      let next = 10;
      sites[name] = {
        name,
        nat,
        natBox,
        wan,
        segment: lan,
        prefix: `${lanNet}.0/24`,
        gateway: `${lanNet}.1`,
        allocate() {
          const n = next++;
          if (n > 254) throw new Error(`site ${name}: no addresses left`);
          const address = `${lanNet}.${n}`;
          return { addr: [`${address}/24`], gateway: [`${lanNet}.1`], address };
        },
      };
    }
  }

  const place = async (hostName: string, site: Site): Promise<{ host: Host; address: string; address6?: string }> => {
    const host = await lab.host(hostName);
    const a = site.allocate();
    await lab.attach(host, site.segment, { name: 'eth0', addr: a.addr, gateway: a.gateway });
    return { host, address: a.address, address6: a.address6 };
  };
  const A = await place('nodeA', sites['a']!);
  const B = await place('nodeB', sites['b']!);
  const publicOf = (s: Site, own: string): string => s.natBox?.publicAddrs[0] ?? own;

  let nextInternet = 10;
  const addInternetHost = async (name: string): Promise<{ host: Host; addr: string; addr6: string; ifname: string }> => {
    const n = nextInternet++;
    if (n > 254) throw new Error('no internet host addresses left');
    const addr = `198.18.0.${n}`;
    const addr6 = `2001:db8::${n.toString(16)}`;
    const host = await lab.host(name);
    const ifname = await lab.attach(host, internet, { name: 'eth0', addr: [`${addr}/24`, `${addr6}/64`], gateway: [CORE, CORE6] });
    return { host, addr, addr6, ifname };
  };

  return {
    internet,
    core,
    sites,
    nodeA: A.host,
    nodeB: B.host,
    uplink: 'eth0',
    addrs: {
      core: CORE,
      core6: CORE6,
      nodeA: A.address,
      nodeA6: A.address6,
      nodeB: B.address,
      nodeB6: B.address6,
      nodeAPublic: publicOf(sites['a']!, A.address),
      nodeBPublic: publicOf(sites['b']!, B.address),
    },
    addInternetHost,
  };
}
