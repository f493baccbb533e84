// Many NTMobile nodes in one process, for benchmarks that need a router with many peers
// (bench/memory.ts): each node has its own account at the AS, its own X25519 key and its own UDP
// port, logs in, registers its name at its DC and keeps the registration alive, and answers Route
// Directions and Tunnel Requests with the project's own ControlChannel and TunnelManager, so the
// tunnels a router opens to these nodes by name are set up by the real protocol. A node has no TUN
// device and no data path: it holds its SAs and ignores the ESP that reaches it (the router under
// test still keeps its side of each tunnel as for any peer). Started by lab/swarm.ts.
//
//   node swarm.js --config FILE [--verbose]
//
// FILE (JSON): {"as": {"url", "ca"}, "dc": {"address", "port"}, "bind": ADDR, "suite",
// "nodes": [{"name", "email", "password", "privateKey" (raw X25519, base64), "port"}]}.
// stdout: `ready N` once every node is registered. SIGTERM/SIGINT end it.

import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ControlChannel, type Incoming } from '../../protocol/channel.js';
import { KeyClass, Status, statusName, type WireEndpoint } from '../../protocol/control.js';
import { classifyDatagram, DatagramKind } from '../../protocol/demux.js';
import { decodeSockaddr, encodeSockaddr } from '../../protocol/endpoint.js';
import { type EspSuite } from '../../protocol/esp.js';
import { x25519FromPrivate, type X25519Pair } from '../../protocol/keys.js';
import { login, type LoginResult } from '../../router/login.js';
import { TunnelTable } from '../../tunnel/table.js';
import { TunnelManager } from '../../tunnel/setup.js';

export interface SwarmNodeConfig {
  name: string;
  email: string;
  password: string;
  privateKey: string;
  port: number;
}

export interface SwarmConfig {
  as: { url: string; ca: string };
  dc: { address: string; port: number };
  bind: string;
  suite: EspSuite;
  nodes: SwarmNodeConfig[];
}

/** Logins (scrypt at the AS, then key distribution to the DC) running at once. */
const LOGIN_CONCURRENCY = 8;

const { values } = parseArgs({ options: { config: { type: 'string' }, verbose: { type: 'boolean', default: false } }, strict: true });
if (!values.config) {
  process.stderr.write('swarm: --config FILE is required\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(values.config, 'utf8')) as SwarmConfig;
const log = (line: string): void => {
  if (values.verbose) process.stderr.write(`swarm: ${line}\n`);
};

class SwarmNode {
  private readonly socket = dgram.createSocket('udp4');
  private readonly channel: ControlChannel;
  private readonly tunnels: TunnelManager;
  private readonly dc: Buffer;
  private session: LoginResult | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private readonly key: X25519Pair;

  constructor(private readonly c: SwarmNodeConfig) {
    this.key = x25519FromPrivate(Buffer.from(c.privateKey, 'base64'));
    this.dc = encodeSockaddr(config.dc.address, config.dc.port);
    const now = (): number => Date.now() + (this.session?.clockOffsetMs ?? 0);
    this.channel = new ControlChannel({
      send: (d, to) => {
        const e = decodeSockaddr(to);
        this.socket.send(d, e.port, e.address);
      },
      keys: (cls, id) => this.keyFor(cls, id),
      onMessage: (m) => this.dispatch(m),
      now,
    });
    this.tunnels = new TunnelManager({
      table: new TunnelTable(),
      channel: this.channel,
      staticKey: this.key,
      nodeName: c.name,
      suite: config.suite,
      rekeyAfterSeconds: 86400,
      onVips: async () => undefined,
      now,
      // The router under test initiates; a swarm node never asks for a direction itself.
      renew: async () => undefined,
      log: (l) => log(`${c.name}: ${l}`),
    });
    this.socket.on('message', (msg, rinfo) => {
      // ESP and NAT keepalives from the router are not this node's concern (no data path).
      if (classifyDatagram(msg, 0, msg.length) === DatagramKind.control) this.channel.receive(msg, encodeSockaddr(rinfo.address, rinfo.port));
    });
    this.socket.on('error', (e) => log(`${c.name}: socket: ${e.message}`));
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.socket.bind(this.c.port, config.bind, resolve));
    this.tunnels.start();
    this.session = await login({ url: config.as.url, caFile: config.as.ca, email: this.c.email, password: this.c.password });
    await this.register();
  }

  private local(): WireEndpoint {
    return { address: config.bind, port: this.c.port };
  }

  private dcKey(): { keyClass: number; keyId: number; key: Buffer } {
    return { keyClass: KeyClass.ntmdc, keyId: this.session!.keyId, key: this.session!.key };
  }

  private async register(): Promise<void> {
    const a = await this.channel.request('registrationRequest', { name: this.c.name, local: this.local(), publicKey: this.key.publicKey }, this.dcKey(), this.dc);
    if (a.message.type !== 'registrationResponse') throw new Error(`${this.c.name}: registration answered with ${a.message.type}`);
    if (a.message.body.status !== Status.ok) throw new Error(`${this.c.name}: registration refused: ${statusName(a.message.body.status)}`);
    this.schedule(a.message.body.keepaliveSeconds || 20);
  }

  /** Keepalives at the DC's interval; a DC that forgot the node (or stays silent) gets a new registration. */
  private schedule(seconds: number): void {
    this.keepaliveTimer = setTimeout(() => {
      void this.channel
        .request('keepalive', { local: this.local() }, this.dcKey(), this.dc)
        .then((a) => (a.message.type === 'keepaliveAck' && a.message.body.status === Status.ok ? this.schedule(seconds) : this.register()))
        .catch(() => this.register())
        .catch((e: Error) => {
          log(`${this.c.name}: ${e.message}; trying again`);
          this.schedule(seconds);
        });
    }, seconds * 1000);
  }

  private keyFor(keyClass: number, keyId: number): Buffer | undefined {
    if (keyClass === KeyClass.ntmdc) return this.session?.keyId === keyId ? this.session.key : undefined;
    if (keyClass === KeyClass.tun) return this.tunnels.ktun(keyId);
    if (keyClass === KeyClass.path) return this.tunnels.pathKey(keyId);
    return undefined;
  }

  private dispatch(m: Incoming): void {
    const { message } = m;
    if (message.type === 'routeDirection' && m.key.keyClass === KeyClass.ntmdc) {
      this.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
      void this.tunnels.onRouteDirection(message.body, 10_000).catch((e: Error) => log(`${this.c.name}: route ${message.body.routeId}: ${e.message}`));
    } else if (message.type === 'tunnelRequest' && m.key.keyClass === KeyClass.tun) {
      this.tunnels.onTunnelRequest(m, message.body);
    } else if (message.type === 'pathProbe' && m.key.keyClass === KeyClass.path) {
      this.tunnels.onPathProbe(m, message.body);
    }
  }

  stop(): void {
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    this.tunnels.stop();
    this.socket.close();
  }
}

const nodes = config.nodes.map((c) => new SwarmNode(c));
const stop = (): void => {
  for (const n of nodes) n.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

let next = 0;
const worker = async (): Promise<void> => {
  while (next < nodes.length) {
    const i = next++;
    await nodes[i]!.start().catch((e: Error) => {
      throw new Error(`node ${config.nodes[i]!.name}: ${e.message}`);
    });
    log(`${config.nodes[i]!.name} registered`);
  }
};
try {
  await Promise.all(Array.from({ length: Math.min(LOGIN_CONCURRENCY, nodes.length) }, worker));
} catch (e) {
  process.stderr.write(`swarm: ${(e as Error).message}\n`);
  process.exit(1);
}
process.stdout.write(`ready ${nodes.length}\n`);
