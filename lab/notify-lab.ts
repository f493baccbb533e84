// The Notification Server in the namespace testbed (docs/ns.md):
//   addNsHost()       an NS on a new Internet host (embedded broker, or Mosquitto beside it), with
//                     its certificate from the lab's PKI, and the `ns` block a DC's config needs;
//                     buildFleet (lab/fleet.ts) can use it once the router daemon has MQTT mode.
//   buildNotifyLab()  a small testbed of its own: the Internet, site a behind an endpoint-
//                     independent NAT whose UDP mappings expire after `mappingTimeout` seconds,
//                     site b global, one DC (fleet1.test) and the NS on the Internet, and nodes run
//                     by lab/tools/notify-node.js (control plane only, no tunnels; the DC's state
//                     file holds their Kntmdc keys, so no AS is needed).
// Used by test/ns-e2e.test.ts and bench/keepalive.ts.

import { type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MQTT_TLS_PORT, NS_PORT, NS_TLS_PORT } from '../protocol/discovery.js';
import { randomId32 } from '../protocol/keys.js';
import type { NsStatus } from '../servers/ns/ns.js';
import { type Host, type Lab } from './lab.js';
import { MOSQUITTO, mosquittoReady, writeMosquittoConfig } from './mosquitto.js';
import { createPki, type Pki } from './pki.js';
import { startProgram, type Program } from './program.js';
import { internetWithNats, type InternetWithNats } from './topology.js';

const DIST = fileURLToPath(new URL('..', import.meta.url));
const NS_CLI = path.join(DIST, 'servers/ns/cli.js');
const DC_CLI = path.join(DIST, 'servers/dc/cli.js');
const NODE_TOOL = path.join(DIST, 'lab/tools/notify-node.js');

export type BrokerKind = 'embedded' | 'mosquitto';

export interface NsHost {
  host: Host;
  program: Program;
  name: string;
  address: string;
  address6: string;
  /** What nodes connect to: mqtts://<IPv4 address>:8883. */
  brokerUrl: string;
  caFile: string;
  statusPath: string;
  /** The `ns` block of a DC config that lists this NS. */
  dcConfig: { name: string; address: string; port: number; tlsPort: number; maxKeepaliveSeconds: number };
  mosquitto: ChildProcess | null;
  status(): NsStatus;
}

/** An NS on a new Internet host: `ns1.notify.test` by default, embedded broker unless told otherwise. */
export async function addNsHost(lab: Lab, net: Pick<InternetWithNats, 'addInternetHost'>, pki: Pki, dir: string, o: { name?: string; broker?: BrokerKind; verbose?: boolean; maxKeepaliveSeconds?: number } = {}): Promise<NsHost> {
  const name = o.name ?? 'ns1.notify.test';
  const broker = o.broker ?? 'embedded';
  const h = await net.addInternetHost(name.split('.')[0]!);
  const cert = pki.issue(name.split('.')[0]!, { role: 'ns', dns: [name], ips: [h.addr, h.addr6, '127.0.0.1'] });
  const brokerUrl = `mqtts://${h.addr}:${MQTT_TLS_PORT}`;
  const configPath = path.join(dir, `${name}.json`);
  const statusPath = path.join(dir, `${name}-status.json`);
  let mosquitto: ChildProcess | null = null;
  let brokerConfig: object;
  if (broker === 'mosquitto') {
    const mdir = mkdtempSync(path.join(dir, 'mosquitto-'));
    const m = writeMosquittoConfig(mdir, { address: '0.0.0.0', port: MQTT_TLS_PORT, certFile: cert.certFile, keyFile: cert.keyFile });
    mosquitto = lab.spawnIn(h.host, MOSQUITTO, ['-c', m.configFile], { log: 'pipe' });
    const logFile = path.join(lab.logDir, `${h.host.name}-mosquitto.log`);
    mosquitto.stderr!.on('data', (d: Buffer) => appendFileSync(logFile, d));
    await mosquittoReady(mosquitto);
    brokerConfig = { type: 'mosquitto', url: `mqtts://127.0.0.1:${MQTT_TLS_PORT}`, ca: cert.caFile, username: m.adminUser, passwordFile: m.passwordFile, accessControl: 'dynsec', publicUrl: brokerUrl };
  } else {
    brokerConfig = { type: 'embedded', address: '::', port: MQTT_TLS_PORT, publicUrl: brokerUrl, ...(o.maxKeepaliveSeconds ? { maxKeepaliveSeconds: o.maxKeepaliveSeconds } : {}) };
  }
  writeFileSync(
    configPath,
    JSON.stringify({
      name,
      listen: { address: '::', port: NS_PORT },
      tls: { port: NS_TLS_PORT, ca: cert.caFile, cert: cert.certFile, key: cert.keyFile },
      broker: brokerConfig,
    }),
  );
  const program = await startProgram(lab, h.host, NS_CLI, ['serve', '--config', configPath, '--status', statusPath, ...(o.verbose !== false ? ['--verbose'] : [])], { tag: 'ns' });
  return {
    host: h.host,
    program,
    name,
    address: h.addr,
    address6: h.addr6,
    brokerUrl,
    caFile: cert.caFile,
    statusPath,
    dcConfig: { name, address: h.addr, port: NS_PORT, tlsPort: NS_TLS_PORT, maxKeepaliveSeconds: 1800 },
    mosquitto,
    status: () => JSON.parse(readFileSync(statusPath, 'utf8')) as NsStatus,
  };
}

export interface LabNode {
  host: Host;
  name: string;
  keyId: number;
  key: Buffer;
  /** The node's uplink interface ('eth0') and address. */
  uplink: string;
  address: string;
}

/** A running lab/tools/notify-node.js: its events, and commands to it. */
export interface NodeProc {
  node: LabNode;
  child: ChildProcess;
  events: Record<string, unknown>[];
  /** The first event (from `since`, an index into events) that matches, within timeoutMs. */
  waitFor(event: string, pred?: (e: Record<string, unknown>) => boolean, timeoutMs?: number, since?: number): Promise<Record<string, unknown>>;
  send(line: string): void;
  stop(): Promise<void>;
}

export interface NotifyLab {
  dir: string;
  net: InternetWithNats;
  pki: Pki;
  ns: NsHost;
  dc: { host: Host; program: Program; address: string; statusPath: string; status(): DcStatusView };
  /** The node behind site a's NAT, the global node of site b, and a second global node (site b). */
  nodes: { a: LabNode; b: LabNode; c: LabNode };
  startNode(n: LabNode, o: { mqtt?: boolean; keepalive?: number; mqttKeepalive?: number; natKeepalive?: string }): Promise<NodeProc>;
  dispose(): void;
}

export interface DcStatusView {
  registrations: { name: string; observed: { address: string; port: number }; mqtt: boolean }[];
  counters: Record<string, number>;
  ns: { contacted: boolean; lastError: string | null } | null;
  grants: { node: string; keyId: number; keepaliveSeconds: number }[];
}

export const NOTIFY_NAMES = { zone: 'fleet1.test', a: 'ra.fleet1.test', b: 'rb.fleet1.test', c: 'rc.fleet1.test' };

export async function buildNotifyLab(lab: Lab, o: { broker?: BrokerKind; mappingTimeout?: number; dcKeepaliveSeconds?: number; verbose?: boolean; maxKeepaliveSeconds?: number } = {}): Promise<NotifyLab> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `ntm-notify-${lab.id}-`));
  const mappingTimeout = o.mappingTimeout ?? 120;
  const net = await internetWithNats(lab, { aNat: 'eim', bNat: 'none', mappingTimeout });
  // The NAT's mapping table (eim_in/eim_out) expires after mappingTimeout; so must its conntrack
  // entries, or replies to an old flow would still find their way in.
  await net.sites['a']!.natBox!.host.sysctl({ 'net.netfilter.nf_conntrack_udp_timeout': mappingTimeout, 'net.netfilter.nf_conntrack_udp_timeout_stream': mappingTimeout });
  const pki = createPki(path.join(dir, 'pki'));
  const dcH = await net.addInternetHost('dc1');
  const dcCert = pki.issue('dc1', { role: 'dc', dns: [NOTIFY_NAMES.zone, `dc.${NOTIFY_NAMES.zone}`], ips: [dcH.addr] });
  const ns = await addNsHost(lab, net, pki, dir, { broker: o.broker ?? 'embedded', verbose: o.verbose ?? true, ...(o.maxKeepaliveSeconds ? { maxKeepaliveSeconds: o.maxKeepaliveSeconds } : {}) });

  const hostC = await lab.host('nodeC');
  const c = net.sites['b']!.allocate();
  await lab.attach(hostC, net.sites['b']!.segment, { name: 'eth0', addr: c.addr, gateway: c.gateway });
  const mk = (host: Host, name: string, address: string): LabNode => ({ host, name, keyId: randomId32(), key: randomBytes(32), uplink: 'eth0', address });
  const nodes = { a: mk(net.nodeA, NOTIFY_NAMES.a, net.addrs.nodeA), b: mk(net.nodeB, NOTIFY_NAMES.b, net.addrs.nodeB), c: mk(hostC, NOTIFY_NAMES.c, c.address) };

  // The DC's state: the nodes' Kntmdc keys, as the AS would have distributed them.
  const statePath = path.join(dir, 'dc-state.json');
  const expiresAt = Date.now() + 24 * 3600_000;
  writeFileSync(
    statePath,
    JSON.stringify({ version: 1, nextIndex: 1, vips: {}, registrations: [], keys: Object.values(nodes).map((n) => ({ keyId: n.keyId, key: n.key.toString('base64'), expiresAt, fqdn: n.name, names: [n.name], publicKey: null })) }),
    { mode: 0o600 },
  );
  const dcConfigPath = path.join(dir, 'dc.json');
  writeFileSync(
    dcConfigPath,
    JSON.stringify({
      zone: NOTIFY_NAMES.zone,
      nsName: `dc.${NOTIFY_NAMES.zone}`,
      publicAddress: dcH.addr,
      listen: { address: '::', port: 4500 },
      tls: { port: 4501, ca: dcCert.caFile, cert: dcCert.certFile, key: dcCert.keyFile },
      dns: null,
      state: statePath,
      keepaliveSeconds: o.dcKeepaliveSeconds ?? 20,
      ns: { ...ns.dcConfig, ...(o.maxKeepaliveSeconds ? { maxKeepaliveSeconds: o.maxKeepaliveSeconds } : {}) },
    }),
  );
  const dcStatusPath = path.join(dir, 'dc-status.json');
  const dcProgram = await startProgram(lab, dcH.host, DC_CLI, ['serve', '--config', dcConfigPath, '--status', dcStatusPath, ...(o.verbose !== false ? ['--verbose'] : [])], { tag: 'dc1' });

  const startNode = async (n: LabNode, so: { mqtt?: boolean; keepalive?: number; mqttKeepalive?: number; natKeepalive?: string }): Promise<NodeProc> => {
    const args = [NODE_TOOL, '--dc', dcH.addr, '--name', n.name, '--key-id', String(n.keyId), '--key', n.key.toString('base64')];
    if (so.mqtt) args.push('--mqtt', ns.brokerUrl, '--ca', ns.caFile, '--mqtt-keepalive', String(so.mqttKeepalive ?? 300));
    if (so.keepalive !== undefined) args.push('--keepalive', String(so.keepalive));
    if (so.natKeepalive !== undefined) args.push('--nat-keepalive', so.natKeepalive);
    const child = lab.spawnIn(n.host, process.execPath, args, { log: 'pipe' });
    const logFile = path.join(lab.logDir, `${n.host.name}-notify-node.log`);
    child.stderr!.on('data', (d: Buffer) => appendFileSync(logFile, d));
    const events: Record<string, unknown>[] = [];
    const listeners = new Set<() => void>();
    createInterface({ input: child.stdout! }).on('line', (line) => {
      appendFileSync(logFile, `${line}\n`);
      try {
        events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        return;
      }
      for (const l of listeners) l();
    });
    const proc: NodeProc = {
      node: n,
      child,
      events,
      waitFor: (event, pred = () => true, timeoutMs = 20_000, since = 0) =>
        new Promise((resolve, reject) => {
          const done = (): void => {
            listeners.delete(onEvent);
            clearTimeout(timer);
            child.off('exit', onExit);
          };
          const onEvent = (): void => {
            const e = events.slice(since).find((x) => x.event === event && pred(x));
            if (e === undefined) return;
            done();
            resolve(e);
          };
          const onExit = (code: number | null): void => {
            done();
            reject(new Error(`${n.name}: notify-node exited with ${code}; events: ${JSON.stringify(events.slice(-8))}`));
          };
          const timer = setTimeout(() => {
            done();
            reject(new Error(`${n.name}: no ${event} event within ${timeoutMs} ms; events: ${JSON.stringify(events.slice(-8))}`));
          }, timeoutMs);
          listeners.add(onEvent);
          child.once('exit', onExit);
          onEvent();
        }),
      send: (line) => child.stdin!.write(`${line}\n`),
      stop: async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        await exited;
      },
    };
    await proc.waitFor('ready', () => true, 30_000);
    return proc;
  };

  return {
    dir,
    net,
    pki,
    ns,
    dc: { host: dcH.host, program: dcProgram, address: dcH.addr, statusPath: dcStatusPath, status: () => JSON.parse(readFileSync(dcStatusPath, 'utf8')) as DcStatusView },
    nodes,
    startNode,
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}
