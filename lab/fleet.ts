// The control-plane scenario (issue: AS, two DCs, two routers with LANs): on the testbed's
// Internet an AS, DC1 for fleet1.test, DC2 for fleet2.test, a Relay Server rs1.relay.test that
// both DCs list, a general web server `web` (www.general.test, no NTMobile) and a resolver
// (dnsmasq forwarding each zone to its DC, as the public DNS delegation would, and answering
// www.general.test); router A (ra.fleet1.test) with LAN host a1, router B (rb.fleet2.test) with LAN
// hosts b1 (not published) and b2 (published as b2.rb.fleet2.test); each LAN's DNS is dnsmasq on
// its router, forwarding the NTMobile zones and general.test (reached through the RS) to the
// router daemon's DNS hook. Every part is the real program, in its own namespace.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RS_PORT, RS_TLS_PORT } from '../protocol/discovery.js';
import { generateX25519, rawPrivate } from '../protocol/keys.js';
import { AccountStore } from '../servers/as/store.js';
import type { RsStatus } from '../servers/rs/rs.js';
import type { LoginLimits } from '../servers/as/server.js';
import { apiCall } from '../router/api.js';
import { startDnsmasq } from './dnsmasq.js';
import { type Host, type Lab } from './lab.js';
import { createPki } from './pki.js';
import { startProgram, type Program } from './program.js';
import { internetWithNats, type Site, type SiteNat } from './topology.js';
import { addNsHost, type BrokerKind, type NsHost } from './notify-lab.js';

const DIST = fileURLToPath(new URL('..', import.meta.url));
export const ROUTER_CLI = path.join(DIST, 'router/cli.js');
const DC_CLI = path.join(DIST, 'servers/dc/cli.js');
const AS_CLI = path.join(DIST, 'servers/as/cli.js');
const RS_CLI = path.join(DIST, 'servers/rs/cli.js');

/**
 * Where the two routers sit. The direct route cases of ARCHITECTURE §3, and the cases that need
 * the RS (docs/relay.md): 'both-eim' (A and B behind two endpoint-independent NATs: relayed, then
 * upgraded to direct), 'both-sym' (behind two symmetric NATs: stays relayed), 'v4-v6' (A behind an
 * EIM NAT with IPv4 only, B on a global site with an IPv6 address only).
 */
export type FleetCase = 'no-nat' | 'a-nat' | 'b-nat' | 'same-nat' | 'both-eim' | 'both-sym' | 'v4-v6';
/** The direct cases. */
export const FLEET_CASES: FleetCase[] = ['no-nat', 'a-nat', 'b-nat', 'same-nat'];
/** The cases whose route goes through the RS. */
export const RELAY_CASES: FleetCase[] = ['both-eim', 'both-sym', 'v4-v6'];

/** Each case's sites: NAT of A's and B's site, B in A's site, B with IPv6 only; and in words. */
const PLACES: Record<FleetCase, { a: SiteNat; b: SiteNat; sameSite?: true; bIpv6Only?: true; text: string }> = {
  'no-nat': { a: 'none', b: 'none', text: 'router A and router B with global addresses' },
  'a-nat': { a: 'eim', b: 'none', text: 'router A behind a NAT, router B with a global address' },
  'b-nat': { a: 'none', b: 'eim', text: 'router A with a global address, router B behind a NAT' },
  'same-nat': { a: 'eim', b: 'none', sameSite: true, text: 'router A and router B behind the same NAT' },
  'both-eim': { a: 'eim', b: 'eim', text: 'router A and router B behind two endpoint-independent NATs' },
  'both-sym': { a: 'symmetric', b: 'symmetric', text: 'router A and router B behind two symmetric NATs' },
  'v4-v6': { a: 'eim', b: 'none', bIpv6Only: true, text: 'router A behind a NAT (IPv4 only), router B with a global IPv6 address only' },
};

export const NAMES = {
  zoneA: 'fleet1.test',
  zoneB: 'fleet2.test',
  ra: 'ra.fleet1.test',
  rb: 'rb.fleet2.test',
  b2: 'b2.rb.fleet2.test',
  /** Bound to router A's account; router A publishes it only where a test does. */
  a1: 'a1.ra.fleet1.test',
  rs1: 'rs1.relay.test',
  /** The routers reach names under this domain through an RS (general.viaRelay). */
  general: 'general.test',
  web: 'www.general.test',
};

export const LAN = {
  ra: '192.168.1.1',
  a1: '192.168.1.10',
  rb: '192.168.2.1',
  b1: '192.168.2.11',
  b2: '192.168.2.20',
};

export interface FleetRouter {
  host: Host;
  name: string;
  program: Program;
  configPath: string;
  socket: string;
  /** Ask the daemon's API (status, peers, ping). */
  api(cmd: string, args?: Record<string, unknown>): Promise<unknown>;
}

export type { RsStatus };

export interface FleetServer {
  host: Host;
  program: Program;
  address: string;
  address6: string;
  configPath: string;
  statusPath: string;
}

export interface Fleet extends FleetMobility {
  dir: string;
  case: FleetCase;
  as: { host: Host; program: Program; address: string; address6: string; storePath: string };
  dc1: FleetServer;
  dc2: FleetServer;
  /** The Relay Server rs1.relay.test, listed by both DCs. */
  rs1: FleetServer;
  /** A general host (no NTMobile) on the Internet: www.general.test; nothing runs on it until a test starts a server. */
  web: { host: Host; addr: string; addr6: string };
  /** The resolver's IPv4 and IPv6 addresses. */
  resolver: string;
  resolver6: string;
  ra: FleetRouter;
  rb: FleetRouter;
  a1: Host;
  b1: Host;
  b2: Host;
  /** Another host on the testbed's Internet (an attacker, a victim, a general server). */
  addInternetHost(name: string): Promise<{ host: Host; addr: string; addr6: string }>;
  /** Router A's and B's uplink addresses (router B's IPv6 address in 'v4-v6'). */
  uplinks: { ra: string; rb: string };
  /** Where the Internet sees router A and B: their NAT's outside address, or their uplink address. */
  publicAddrs: { ra: string; rb: string };
  /** Restart a router daemon (a cold start: new login, registration, no tunnels, empty DNS cache). */
  restartRouter(which: 'ra' | 'rb'): Promise<void>;
  /** Restart a DC from its config and state (a DC restart). */
  restartDc(which: 'dc1' | 'dc2', downMs?: number): Promise<void>;
  /** The DC's status file (registrations, counters). */
  dcStatus(which: 'dc1' | 'dc2'): Promise<DcStatus>;
  /** Restart the RS (it forgets its routes and its Kdcrs keys). */
  restartRs(downMs?: number): Promise<void>;
  /** The RS's status file (counters, routes with their SPIs). */
  rsStatus(): Promise<RsStatus>;
  /** Remove the temporary files (the lab removes namespaces and processes). */
  dispose(): void;
  /** The NS, when the fleet was built with `notify`. */
  ns: NsHost | null;
}

// ---- mobility (issue 5) ----
/** Where a router's uplink is. */
export interface RouterUplink {
  ifname: string;
  site: string;
  metric: number;
  /** its own address (IPv4; IPv6 for an IPv6-only router) */
  address: string;
  /** where the Internet sees it: the site's NAT's outside address, or its own */
  publicAddr: string;
}

/** The metric of a router's first uplink (eth0) default route; addUplink's default is below it. */
export const UPLINK_METRIC = 100;

/**
 * Sites for the handover scenarios (test/handover-e2e.test.ts, bench/handover.ts): c and e
 * behind endpoint-independent NATs (other carriers), d global, f behind a symmetric NAT.
 */
export const HANDOVER_SITES: Record<string, SiteNat> = { c: 'eim', d: 'none', e: 'eim', f: 'symmetric' };

export interface FleetMobility {
  /** Every site of the testbed by name: 'a', 'b' and the extraSites. */
  sites: Record<string, Site>;
  /** Each router's uplinks now, the preferred one (lowest metric) first. */
  routerUplinks: Record<'ra' | 'rb', RouterUplink[]>;
  /**
   * Break-before-make: move a router's uplink (default: its preferred one) to another site's
   * segment. The carrier drops and returns, the interface gets a fresh address of that site
   * and a default route via its gateway (same metric); the old address and routes are gone.
   */
  moveRouter(which: 'ra' | 'rb', site: string, o?: { ifname?: string }): Promise<RouterUplink>;
  /**
   * Make-before-break: a second uplink (a new interface, eth1, eth2, …) in another site, with a
   * fresh address and its own default route at `metric` (default 50, below the first uplink's
   * 100, so the kernel prefers it at once).
   */
  addUplink(which: 'ra' | 'rb', site: string, o?: { metric?: number; ifname?: string }): Promise<RouterUplink>;
  /** Delete one uplink interface of a router (its addresses and routes go with it). */
  dropUplink(which: 'ra' | 'rb', ifname: string): Promise<void>;
}

export interface DcStatus {
  zone: string;
  registrations: { name: string; vip4: string; vip6: string; observed: { address: string; port: number } }[];
  counters: Record<string, number>;
  channel: Record<string, number>;
}

export interface FleetOptions {
  case: FleetCase;
  verbose?: boolean;
  rekeyAfterSeconds?: number;
  suite?: 'aes-gcm' | 'chacha20-poly1305';
  progress?: (line: string) => void;
  /** DC2's IPv4 VIP pool (default 10.78.0.0/16); one inside router A's LAN tests VIP mapping. */
  dc2Pool4?: string;
  // ---- mobility (issue 5) ----
  /**
   * More sites on the testbed's Internet, targets for moveRouter/addUplink: name → NAT type
   * ('eim', 'symmetric' or 'none' for a global site), e.g. HANDOVER_SITES. Names 'a' and 'b' are
   * the routers' own sites.
   */
  extraSites?: Record<string, SiteNat>;
  /** Idle timeout of the NATs' endpoint-independent UDP mappings, seconds (default 120). */
  mappingTimeout?: number;
  // ---- notification (issue 5, docs/ns.md) ----
  /** An NS (ns1.notify.test) for the DCs, and these routers in MQTT mode. */
  notify?: { routers: ('ra' | 'rb')[]; broker?: BrokerKind };
  /**
   * Routers that are brought up by the caller instead (an OpenWrt router: the package installed
   * in the userland, configured through UCI, run by procd): the fleet builds their host and LAN
   * but starts neither dnsmasq nor the daemon there, and calls this with what a config needs.
   */
  external?: Partial<Record<'ra' | 'rb', (setup: RouterSetup) => Promise<FleetRouter>>>;
  // ---- memory (bench/memory.ts) ----
  /** Node flags router A's daemon runs with (the router's NODE_FLAGS), also after a restart. */
  raNodeFlags?: string[];
  /** Router A's daemon from this file instead of dist/router/cli.js (the OpenWrt package's bundle). */
  raCli?: string;
  /** The AS's login limits (servers/as): a swarm of nodes logging in from one address needs more than 20 a minute. */
  asLimits?: Partial<LoginLimits>;
  // ---- uplink preference (test/uplink-preference-e2e.test.ts) ----
  /** More settings for a router's JSON config, over the fleet's own (e.g. `{ ra: { uplinks: ['eth0', 'wwan0'] } }`). */
  routerConfig?: Partial<Record<'ra' | 'rb', Record<string, unknown>>>;
}

/** What a router of the fleet is configured with (the fleet's own JSON config, or UCI). */
export interface RouterSetup {
  tag: 'ra' | 'rb';
  host: Host;
  name: string;
  email: string;
  password: string;
  /** The router's X25519 private key (raw, base64, one line), bound to its account at the AS. */
  keyFile: string;
  asUrl: string;
  /** The operator CA (AS, DC and RS certificates). */
  caFile: string;
  resolvers: string[];
  /** Fixed DC addresses by zone (an IPv6-only router), else empty. */
  dc: Record<string, string>;
  publish: { name: string; address: string }[];
  lanInterface: string;
  lanAddress: string;
  /** The zones the LAN resolves through the router (forwarded by its dnsmasq to the DNS hook). */
  domains: string[];
  viaRelay: string[];
  suite: 'aes-gcm' | 'chacha20-poly1305';
}

export async function buildFleet(lab: Lab, o: FleetOptions): Promise<Fleet> {
  const say = o.progress ?? (() => undefined);
  const dir = mkdtempSync(path.join(os.tmpdir(), `ntm-fleet-${lab.id}-`));
  lab.setInfo({ fleetDir: dir });
  const place = PLACES[o.case];
  if (place === undefined) throw new Error(`buildFleet: case "${String(o.case)}": want one of ${[...FLEET_CASES, ...RELAY_CASES].join(', ')}`);
  say(`testbed: Internet, ${place.text}`);
  const net = await internetWithNats(lab, { aNat: place.a, bNat: place.b, extraSites: o.extraSites, ...(o.mappingTimeout !== undefined ? { mappingTimeout: o.mappingTimeout } : {}) });

  const as = await net.addInternetHost('as');
  const dc1 = await net.addInternetHost('dc1');
  const dc2 = await net.addInternetHost('dc2');
  const res = await net.addInternetHost('resolver');
  const rs = await net.addInternetHost('rs1');
  // The RS forwards gateway traffic between its TUN device and the Internet, as a router does.
  await rs.host.setForwarding(true);
  const web = await net.addInternetHost('web');

  // Operator PKI: AS, DCs and RS authenticate each other with certificates from one CA.
  const pki = createPki(path.join(dir, 'pki'));
  const asCert = pki.issue('as', { role: 'as', ips: [as.addr, as.addr6], dns: ['as.test'] });
  const dc1Cert = pki.issue('dc1', { role: 'dc', ips: [dc1.addr], dns: [NAMES.zoneA, `dc.${NAMES.zoneA}`] });
  const dc2Cert = pki.issue('dc2', { role: 'dc', ips: [dc2.addr], dns: [NAMES.zoneB, `dc.${NAMES.zoneB}`] });
  const rsCert = pki.issue('rs1', { role: 'rs', ips: [rs.addr, rs.addr6], dns: [NAMES.rs1] });

  say('resolver: dnsmasq on the Internet delegating fleet1.test and fleet2.test to their DCs, answering www.general.test');
  await startDnsmasq(res.host, {
    listen: [res.addr, res.addr6],
    forward: [
      { domain: NAMES.zoneA, server: dc1.addr },
      { domain: NAMES.zoneB, server: dc2.addr },
    ],
    hosts: { [NAMES.web]: [web.addr, web.addr6] },
  });

  // The routers' static X25519 keys, bound to their accounts at the AS by the operator.
  const keyA = generateX25519();
  const keyB = generateX25519();
  for (const [n, k] of [
    ['ra', keyA],
    ['rb', keyB],
  ] as const) {
    writeFileSync(path.join(dir, `${n}.key`), `${rawPrivate(k.privateKey).toString('base64')}\n`, { mode: 0o600 });
  }
  const storePath = path.join(dir, 'accounts.json');
  const store = AccountStore.open(storePath, { create: true, scryptN: 2 ** 14 });
  await store.addAccount('ra@fleet1.test', 'router-a-secret');
  store.bindNames('ra@fleet1.test', [NAMES.ra, NAMES.a1]);
  store.setPublicKey('ra@fleet1.test', keyA.publicKey.toString('base64url'));
  await store.addAccount('rb@fleet2.test', 'router-b-secret');
  store.bindNames('rb@fleet2.test', [NAMES.rb, NAMES.b2]);
  store.setPublicKey('rb@fleet2.test', keyB.publicKey.toString('base64url'));

  say(`servers: AS (HTTPS login), DC1 (fleet1.test), DC2 (fleet2.test), RS (${NAMES.rs1})`);
  const rsConfig = path.join(dir, 'rs1.json');
  writeFileSync(
    rsConfig,
    JSON.stringify({
      name: NAMES.rs1,
      listen: { address: '::', port: RS_PORT },
      tls: { port: RS_TLS_PORT, ca: rsCert.caFile, cert: rsCert.certFile, key: rsCert.keyFile },
      privateKeyFile: path.join(dir, 'rs1.key'), // made by the RS on its first start
      gateway: { tun: 'ntmrs0', mtu: 1400, nftTable: 'ntmobile_rs' },
      idleSeconds: 120,
    }),
  );
  const rsStatusPath = path.join(dir, 'rs1-status.json');
  const startRs = (): Promise<Program> =>
    startProgram(lab, rs.host, RS_CLI, ['serve', '--config', rsConfig, '--status', rsStatusPath, ...(o.verbose !== false ? ['--verbose'] : [])], { tag: 'rs1' });
  const rs1: FleetServer = { host: rs.host, program: await startRs(), address: rs.addr, address6: rs.addr6, configPath: rsConfig, statusPath: rsStatusPath };
  const relays = [{ name: NAMES.rs1, address: rs.addr, address6: rs.addr6, port: RS_PORT, tlsPort: RS_TLS_PORT }];
  let nsHost: NsHost | null = null;
  if (o.notify !== undefined) {
    say(`NS: ns1.notify.test with the ${o.notify.broker ?? 'embedded'} MQTT broker`);
    nsHost = await addNsHost(lab, net, pki, dir, { broker: o.notify.broker ?? 'embedded', verbose: o.verbose !== false });
  }
  const dcConfig = (zone: string, addr: string, cert: { certFile: string; keyFile: string; caFile: string }, pool4: string, pool6: string): string => {
    const p = path.join(dir, `dc-${zone}.json`);
    writeFileSync(
      p,
      JSON.stringify({
        zone,
        nsName: `dc.${zone}`,
        publicAddress: addr,
        listen: { address: '::', port: 4500 },
        tls: { port: 4501, ca: cert.caFile, cert: cert.certFile, key: cert.keyFile },
        dns: { address: addr, port: 53 },
        pool: { ipv4: pool4, ipv6: pool6 },
        state: path.join(dir, `dc-${zone}-state.json`),
        keepaliveSeconds: 5,
        resolvers: [res.addr],
        relays,
        ...(nsHost !== null ? { ns: nsHost.dcConfig } : {}),
      }),
    );
    return p;
  };
  const dc1Config = dcConfig(NAMES.zoneA, dc1.addr, dc1Cert, '10.77.0.0/16', 'fd4e:544d:1::/64');
  const dc2Config = dcConfig(NAMES.zoneB, dc2.addr, dc2Cert, o.dc2Pool4 ?? '10.78.0.0/16', 'fd4e:544d:2::/64');
  const startDc = (host: Host, config: string, tag: string): Promise<Program> =>
    startProgram(lab, host, DC_CLI, ['serve', '--config', config, '--status', path.join(dir, `${tag}-status.json`), ...(o.verbose !== false ? ['--verbose'] : [])], { tag });
  const dcs: Record<'dc1' | 'dc2', FleetServer> = {
    dc1: { host: dc1.host, program: await startDc(dc1.host, dc1Config, 'dc1'), address: dc1.addr, address6: dc1.addr6, configPath: dc1Config, statusPath: path.join(dir, 'dc1-status.json') },
    dc2: { host: dc2.host, program: await startDc(dc2.host, dc2Config, 'dc2'), address: dc2.addr, address6: dc2.addr6, configPath: dc2Config, statusPath: path.join(dir, 'dc2-status.json') },
  };
  const asConfig = path.join(dir, 'as.json');
  writeFileSync(
    asConfig,
    JSON.stringify({
      listen: { host: '::', port: 8443 },
      cert: asCert.certFile,
      key: asCert.keyFile,
      store: storePath,
      keyDistribution: { ca: asCert.caFile, cert: asCert.certFile, key: asCert.keyFile, resolver: res.addr },
      ...(o.asLimits !== undefined ? { limits: o.asLimits } : {}),
    }),
  );
  const asProgram = await startProgram(lab, as.host, AS_CLI, ['serve', '--config', asConfig], { tag: 'as' });

  // Router hosts: uplink in their site, a LAN segment with dnsmasq on the router.
  const siteA = net.sites['a']!;
  const siteB = place.sameSite ? siteA : net.sites['b']!;
  const makeRouter = async (tag: 'ra' | 'rb', site: Site, lanAddr: string, lanHosts: [string, string][], ipv6Only = false): Promise<{ host: Host; hosts: Record<string, Host>; uplink: string }> => {
    const external = o.external?.[tag] !== undefined;
    const host = await lab.host(tag, { forwarding: true });
    const a = site.allocate();
    if (ipv6Only && (a.address6 === undefined || site.gateway6 === undefined)) throw new Error(`buildFleet: site ${site.name} has no IPv6 (a NAT site)`);
    const uplink = ipv6Only ? { addr: [`${a.address6}/64`], gateway: [site.gateway6!] } : { addr: a.addr, gateway: a.gateway };
    await lab.attach(host, site.segment, { name: 'eth0', ...uplink, metric: UPLINK_METRIC });
    const seg = await lab.segment(`lan-${tag}`);
    await lab.attach(host, seg, { name: 'lan0', addr: `${lanAddr}/24` });
    const hosts: Record<string, Host> = {};
    for (const [name, addr] of lanHosts) {
      const h = await lab.host(name);
      await lab.attach(h, seg, { name: 'eth0', addr: `${addr}/24`, gateway: lanAddr });
      h.setResolvers([lanAddr]);
      hosts[name] = h;
    }
    if (!external)
      await startDnsmasq(host, {
      listen: [lanAddr],
      forward: [
        { domain: NAMES.zoneA, server: '127.0.0.1#5353' },
        { domain: NAMES.zoneB, server: '127.0.0.1#5353' },
        { domain: NAMES.general, server: '127.0.0.1#5353' },
      ],
    });
    return { host, hosts, uplink: ipv6Only ? a.address6! : a.address };
  };
  const A = await makeRouter('ra', siteA, LAN.ra, [['a1', LAN.a1]]);
  const B = await makeRouter(
    'rb',
    siteB,
    LAN.rb,
    [
      ['b1', LAN.b1],
      ['b2', LAN.b2],
    ],
    place.bIpv6Only,
  );

  const routerStarts = new Map<FleetRouter, () => Promise<Program>>();
  // How a router reaches the AS, the resolver and its DC. An IPv6-only router uses their IPv6
  // addresses, and its DC is configured (the NS lookup would answer with the DC's IPv4 address).
  const reach4 = { as: { url: `https://${as.addr}:8443`, ca: asCert.caFile }, resolvers: [res.addr] };
  const reach6 = (zone: string, dc6: string): { as: { url: string; ca: string }; resolvers: string[]; dc: Record<string, string> } => ({ as: { url: `https://[${as.addr6}]:8443`, ca: asCert.caFile }, resolvers: [res.addr6], dc: { [zone]: dc6 } });
  const startRouter = async (tag: 'ra' | 'rb', host: Host, name: string, email: string, password: string, publish: { name: string; address: string }[], reach: { as: { url: string; ca: string }; resolvers: string[]; dc?: Record<string, string> }): Promise<FleetRouter> => {
    const external = o.external?.[tag];
    if (external !== undefined) {
      return external({
        tag,
        host,
        name,
        email,
        password,
        keyFile: path.join(dir, `${tag}.key`),
        asUrl: reach.as.url,
        caFile: reach.as.ca,
        resolvers: reach.resolvers,
        dc: reach.dc ?? {},
        publish,
        lanInterface: 'lan0',
        lanAddress: tag === 'ra' ? LAN.ra : LAN.rb,
        domains: [NAMES.zoneA, NAMES.zoneB],
        viaRelay: [NAMES.general],
        suite: o.suite ?? 'aes-gcm',
      });
    }
    const configPath = path.join(dir, `${tag}.json`);
    const socket = path.join(dir, `${tag}.sock`);
    writeFileSync(path.join(dir, `${tag}.password`), `${password}\n`, { mode: 0o600 });
    writeFileSync(
      configPath,
      JSON.stringify({
        name,
        account: { email, passwordFile: `${tag}.password` },
        ...reach,
        privateKeyFile: `${tag}.key`,
        listen: { address: '::', port: 4500 },
        tun: { name: 'ntm0', mtu: 1400 },
        lan: { interfaces: ['lan0'] },
        publish,
        dns: { address: '127.0.0.1', port: 5353, domains: [NAMES.zoneA, NAMES.zoneB] },
        general: { viaRelay: [NAMES.general] },
        ...(nsHost !== null && o.notify!.routers.includes(tag) ? { notify: { mqtt: nsHost.brokerUrl, ca: nsHost.caFile } } : {}),
        suite: o.suite ?? 'aes-gcm',
        ...(o.rekeyAfterSeconds ? { rekeyAfterSeconds: o.rekeyAfterSeconds } : {}),
        socketPath: socket,
        nftTable: 'ntmobile',
        ...o.routerConfig?.[tag],
      }),
      { mode: 0o600 },
    );
    const nodeFlags = tag === 'ra' ? (o.raNodeFlags ?? []) : [];
    const cli = tag === 'ra' ? (o.raCli ?? ROUTER_CLI) : ROUTER_CLI;
    const program = await startProgram(lab, host, cli, ['router', '--config', configPath, ...(o.verbose !== false ? ['--verbose'] : [])], { tag: 'ntmobile', timeoutMs: 30_000, nodeFlags });
    const router: FleetRouter = { host, name, program, configPath, socket, api: (cmd, args = {}) => apiCall(socket, cmd, args) };
    routerStarts.set(router, () => startProgram(lab, host, cli, ['router', '--config', configPath, ...(o.verbose !== false ? ['--verbose'] : [])], { tag: 'ntmobile', timeoutMs: 30_000, nodeFlags }));
    return router;
  };
  say('routers: login at the AS, registration at their DCs');
  const ra = await startRouter('ra', A.host, NAMES.ra, 'ra@fleet1.test', 'router-a-secret', [], reach4);
  const rb = await startRouter('rb', B.host, NAMES.rb, 'rb@fleet2.test', 'router-b-secret', [{ name: NAMES.b2, address: LAN.b2 }], place.bIpv6Only ? reach6(NAMES.zoneB, dc2.addr6) : reach4);

  const fleet: Omit<Fleet, keyof FleetMobility> = {
    ns: nsHost,
    dir,
    case: o.case,
    as: { host: as.host, program: asProgram, address: as.addr, address6: as.addr6, storePath },
    dc1: dcs.dc1,
    dc2: dcs.dc2,
    rs1,
    web: { host: web.host, addr: web.addr, addr6: web.addr6 },
    resolver: res.addr,
    resolver6: res.addr6,
    ra,
    rb,
    a1: A.hosts['a1']!,
    b1: B.hosts['b1']!,
    b2: B.hosts['b2']!,
    addInternetHost: (name) => net.addInternetHost(name),
    uplinks: { ra: A.uplink, rb: B.uplink },
    publicAddrs: { ra: siteA.natBox?.publicAddrs[0] ?? A.uplink, rb: place.bIpv6Only ? B.uplink : (siteB.natBox?.publicAddrs[0] ?? B.uplink) },
    async restartRouter(which) {
      const r = fleet[which];
      await r.program.stop();
      r.program = await routerStarts.get(r)!();
    },
    async restartDc(which, downMs = 0) {
      const d = fleet[which];
      await d.program.stop();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      d.program = await startDc(d.host, d.configPath, which);
    },
    async dcStatus(which) {
      return JSON.parse(readFileSync(fleet[which].statusPath, 'utf8')) as DcStatus;
    },
    async restartRs(downMs = 0) {
      await fleet.rs1.program.stop();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      fleet.rs1.program = await startRs();
    },
    async rsStatus() {
      return JSON.parse(readFileSync(fleet.rs1.statusPath, 'utf8')) as RsStatus;
    },
    dispose() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
  // ---- mobility (issue 5) ----
  return Object.assign(fleet, mobility(lab, fleet, net.sites, { ra: { host: A.host, site: siteA.name, address: A.uplink }, rb: { host: B.host, site: siteB.name, address: B.uplink, ipv6Only: place.bIpv6Only === true } }));
}

// ---- mobility (issue 5) ----
/**
 * moveRouter, addUplink, dropUplink: the routers' uplinks change at run time as a vehicle's do.
 * `fleet.uplinks` and `fleet.publicAddrs` follow each router's preferred uplink.
 */
function mobility(
  lab: Lab,
  fleet: Pick<Fleet, 'uplinks' | 'publicAddrs'>,
  sites: Record<string, Site>,
  first: Record<'ra' | 'rb', { host: Host; site: string; address: string; ipv6Only?: boolean }>,
): FleetMobility {
  const uplinkOf = (site: Site, address: string): string => site.natBox?.publicAddrs[0] ?? address;
  const routerUplinks: Record<'ra' | 'rb', RouterUplink[]> = {
    ra: [{ ifname: 'eth0', site: first.ra.site, metric: UPLINK_METRIC, address: first.ra.address, publicAddr: uplinkOf(sites[first.ra.site]!, first.ra.address) }],
    rb: [{ ifname: 'eth0', site: first.rb.site, metric: UPLINK_METRIC, address: first.rb.address, publicAddr: first.rb.ipv6Only ? first.rb.address : uplinkOf(sites[first.rb.site]!, first.rb.address) }],
  };
  const siteOf = (name: string): Site => {
    const s = sites[name];
    if (s === undefined) throw new Error(`fleet: no site "${name}" (sites: ${Object.keys(sites).join(', ')}; add more with extraSites)`);
    return s;
  };
  /** A fresh address in a site, as moveUplink/attach options (IPv6 only for an IPv6-only router). */
  const allocate = (which: 'ra' | 'rb', site: Site): { addr: string | string[]; gateway: string | string[]; address: string; publicAddr: string } => {
    const a = site.allocate();
    if (first[which].ipv6Only) {
      if (a.address6 === undefined || site.gateway6 === undefined) throw new Error(`fleet: ${which} has IPv6 only, site ${site.name} has no IPv6 (a NAT site)`);
      return { addr: [`${a.address6}/64`], gateway: [site.gateway6], address: a.address6, publicAddr: a.address6 };
    }
    return { addr: a.addr, gateway: a.gateway, address: a.address, publicAddr: uplinkOf(site, a.address) };
  };
  const follow = (which: 'ra' | 'rb'): void => {
    const list = routerUplinks[which];
    list.sort((x, y) => x.metric - y.metric);
    const best = list[0];
    if (best !== undefined) {
      fleet.uplinks[which] = best.address;
      fleet.publicAddrs[which] = best.publicAddr;
    }
  };
  return {
    sites,
    routerUplinks,
    async moveRouter(which, siteName, o = {}) {
      const site = siteOf(siteName);
      const list = routerUplinks[which];
      const up = o.ifname === undefined ? list[0] : list.find((u) => u.ifname === o.ifname);
      if (up === undefined) throw new Error(`fleet: ${which} has no uplink ${o.ifname ?? ''} (has ${list.map((u) => u.ifname).join(', ') || 'none'})`);
      const a = allocate(which, site);
      await lab.moveUplink(first[which].host, up.ifname, site.segment, { addr: a.addr, gateway: a.gateway, metric: up.metric });
      Object.assign(up, { site: site.name, address: a.address, publicAddr: a.publicAddr });
      follow(which);
      return { ...up };
    },
    async addUplink(which, siteName, o = {}) {
      const site = siteOf(siteName);
      const host = first[which].host;
      const ifname = o.ifname ?? host.allocIfName();
      const metric = o.metric ?? UPLINK_METRIC / 2;
      const a = allocate(which, site);
      await lab.attach(host, site.segment, { name: ifname, addr: a.addr, gateway: a.gateway, metric });
      const up: RouterUplink = { ifname, site: site.name, metric, address: a.address, publicAddr: a.publicAddr };
      routerUplinks[which].push(up);
      follow(which);
      return { ...up };
    },
    async dropUplink(which, ifname) {
      const host = first[which].host;
      const list = routerUplinks[which];
      const i = list.findIndex((u) => u.ifname === ifname);
      if (i < 0) throw new Error(`fleet: ${which} has no uplink ${ifname} (has ${list.map((u) => u.ifname).join(', ') || 'none'})`);
      // Deleting one end of the veth deletes both (the far end is a bridge port of the old site).
      await host.exec('ip', ['link', 'del', ifname]);
      host.ifaces.delete(ifname);
      host.forgetRoutesOver(ifname, false);
      list.splice(i, 1);
      follow(which);
    },
  };
}
