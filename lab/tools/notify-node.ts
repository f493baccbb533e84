// A minimal NTMobile node for the Notification Server's lab tests and the keepalive benchmark,
// run inside a lab host. It does what the router daemon does on the control plane, and nothing of
// the data plane: registration under a Kntmdc given on the command line (the DC's state file
// holds the same key: no AS), UDP keepalives, MQTT mode through router/notify.ts (Notify Request,
// NotifyClient, a keepalive to the DC on every wake), acknowledging Route Directions, and Direction
// Requests on command. It exists because the daemon's wiring of MQTT mode is the lead's to add
// (docs/ns.md, "Router integration"); the MQTT side is the very module the daemon will use.
//
//   node notify-node.js --dc ADDR --name NAME --key-id N --key BASE64 [--port 4500]
//        [--keepalive S]      UDP keepalive period (default: what the DC grants; 0: none)
//        [--mqtt URL --ca FILE --mqtt-keepalive S]   MQTT mode
//        [--nat-keepalive ADDR:PORT]   also a 0xFF NAT keepalive there with every keepalive
//
// stdout: one JSON object per line: {"event":"ready"|"registered"|"grant"|"wake"|"routeDirection"|
// "direction"|"keepalive"|"status"|"subscribe"|"publish"|"error", ...}. stdin commands, one per
// line: `direct NAME`, `keepalive`, `nat-keepalive`, `status`, `subscribe TOPIC`,
// `publish TOPIC HEX` (the last two with the node's own MQTT credentials, as an attacker would
// try), `quit`.

import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { connectAsync, type MqttClient } from 'mqtt';
import { ControlChannel, type Incoming } from '../../protocol/channel.js';
import { KeyClass, Status, statusName } from '../../protocol/control.js';
import { KEEPALIVE_DATAGRAM } from '../../protocol/demux.js';
import { decodeSockaddr, encodeSockaddr } from '../../protocol/endpoint.js';
import { generateX25519 } from '../../protocol/keys.js';
import { mqttClientId, mqttPassword, mqttUsername } from '../../protocol/notify.js';
import { NotifyClient, requestNotifyGrant, type NotifyGrant } from '../../router/notify.js';

const { values: o } = parseArgs({
  options: {
    dc: { type: 'string' },
    'dc-port': { type: 'string', default: '4500' },
    name: { type: 'string' },
    'key-id': { type: 'string' },
    key: { type: 'string' },
    'public-key': { type: 'string' },
    port: { type: 'string', default: '4500' },
    keepalive: { type: 'string' },
    mqtt: { type: 'string' },
    ca: { type: 'string' },
    'mqtt-keepalive': { type: 'string', default: '300' },
    'nat-keepalive': { type: 'string' },
  },
  strict: true,
});

const out = (event: string, fields: Record<string, unknown> = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, at: Date.now(), ...fields }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
};

if (!o.dc || !o.name || !o['key-id'] || !o.key) {
  process.stderr.write('notify-node: --dc, --name, --key-id and --key are required\n');
  process.exit(2);
}
const name = o.name;
const key = { keyClass: KeyClass.ntmdc, keyId: Number(o['key-id']), key: Buffer.from(o.key, 'base64') };
const publicKey = o['public-key'] ? Buffer.from(o['public-key'], 'base64') : generateX25519().publicKey;
const dc = encodeSockaddr(o.dc, Number(o['dc-port']));
const socket = dgram.createSocket(o.dc.includes(':') ? 'udp6' : 'udp4');
const natTarget = o['nat-keepalive'] ? { address: o['nat-keepalive'].slice(0, o['nat-keepalive'].lastIndexOf(':')), port: Number(o['nat-keepalive'].slice(o['nat-keepalive'].lastIndexOf(':') + 1)) } : null;

const channel = new ControlChannel({
  send: (d, to) => {
    const e = decodeSockaddr(to);
    socket.send(d, e.port, e.address);
  },
  keys: (cls, id) => (cls === KeyClass.ntmdc && id === key.keyId ? key.key : undefined),
  onMessage: (m: Incoming) => {
    if (m.message.type === 'routeDirection') {
      channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
      out('routeDirection', { routeId: m.message.body.routeId, peer: m.message.body.peerName, role: m.message.body.role });
    }
  },
});
socket.on('message', (msg, rinfo) => {
  if (msg.length > 4 && msg.readUInt32BE(0) === 0) channel.receive(msg, encodeSockaddr(rinfo.address, rinfo.port));
});

let notify: NotifyClient | null = null;
let grant: NotifyGrant | null = null;
let keepaliveTimer: NodeJS.Timeout | null = null;

/** Our address towards the DC and our port: what the DC compares with what it sees (NAT or not). */
function localEndpoint(): Promise<{ address: string; port: number }> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(o.dc!.includes(':') ? 'udp6' : 'udp4');
    s.on('error', (e) => {
      s.close();
      reject(e);
    });
    s.connect(Number(o['dc-port']), o.dc!, () => {
      const address = s.address().address;
      s.close();
      resolve({ address, port: socket.address().port });
    });
  });
}

async function keepalive(why: string): Promise<void> {
  try {
    const a = await channel.request('keepalive', { local: await localEndpoint() }, key, dc, { initialMs: 500, maxMs: 2000, tries: 4 });
    const b = a.message.body as { status: number; observed: unknown };
    out('keepalive', { why, status: statusName(b.status), observed: b.observed });
  } catch (e) {
    out('error', { what: 'keepalive', why, message: (e as Error).message });
  }
}

function natKeepalive(): void {
  if (natTarget !== null) socket.send(KEEPALIVE_DATAGRAM, natTarget.port, natTarget.address);
}

async function main(): Promise<void> {
  await new Promise<void>((r) => socket.bind(Number(o.port), () => r()));
  const reg = await channel.request('registrationRequest', { name, local: await localEndpoint(), publicKey }, key, dc);
  if (reg.message.type !== 'registrationResponse' || reg.message.body.status !== Status.ok) throw new Error(`registration: ${reg.message.type} ${statusName((reg.message.body as { status: number }).status)}`);
  out('registered', { observed: reg.message.body.observed, vip4: reg.message.body.vip4, keepaliveSeconds: reg.message.body.keepaliveSeconds });
  let period = reg.message.body.keepaliveSeconds;
  if (o.mqtt) {
    grant = await requestNotifyGrant(channel, key, dc, name, Number(o['mqtt-keepalive']));
    out('grant', { keyId: grant.keyId, broker: grant.broker, keepaliveSeconds: grant.keepaliveSeconds, ns: grant.ns });
    period = grant.keepaliveSeconds;
    notify = new NotifyClient({
      url: o.mqtt,
      caFile: o.ca ?? null,
      keepaliveSeconds: Number(o['mqtt-keepalive']),
      reconnectMs: 1000,
      log: (l) => process.stderr.write(`${l}\n`),
      // The daemon's reaction to a wake: a keepalive to its DC from its own port, now.
      onWake: (w) => {
        out('wake', { routeId: w.routeId, reason: w.reason, node: w.node, latencyMs: w.receivedAt - w.sentAt });
        void keepalive('wake');
      },
    });
    notify.use(grant);
    await notify.ready(15_000);
  }
  if (o.keepalive !== undefined) period = Number(o.keepalive);
  if (period > 0) {
    const tick = (): void => {
      natKeepalive();
      void keepalive('timer');
      keepaliveTimer = setTimeout(tick, period * 1000);
    };
    keepaliveTimer = setTimeout(tick, period * 1000);
  }
  out('ready', { port: Number(o.port), keepaliveSeconds: period, mqtt: o.mqtt ?? null });
}

let attacker: MqttClient | null = null;
async function attackerClient(): Promise<MqttClient> {
  if (attacker !== null && attacker.connected) return attacker;
  if (grant === null || !o.mqtt) throw new Error('no MQTT grant');
  // One session per key (the client ID is fixed): our own NotifyClient steps aside, or the two
  // would take the session from each other.
  await notify?.stop();
  notify = null;
  attacker = await connectAsync(o.mqtt, {
    protocolVersion: 4,
    clientId: `${mqttClientId(grant.keyId)}`,
    username: mqttUsername(grant.keyId),
    password: mqttPassword(grant.key),
    ...(o.ca ? { ca: readFileSync(o.ca) } : {}),
    reconnectPeriod: 0,
  });
  return attacker;
}

async function command(line: string): Promise<void> {
  const [cmd, ...args] = line.trim().split(/\s+/);
  switch (cmd) {
    case 'direct': {
      const t0 = Date.now();
      try {
        const a = await channel.request('directionRequest', { source: name, target: args[0]!, flags: 0 }, key, dc, { initialMs: 1000, maxMs: 2000, tries: 5 });
        if (a.message.type === 'routeDirection') {
          channel.reply(a, 'ntmAck', { inReplyTo: a.envelope.messageId, status: Status.ok, reason: '' });
          out('direction', { target: args[0], ok: true, routeId: a.message.body.routeId, ms: Date.now() - t0 });
        } else out('direction', { target: args[0], ok: false, answer: a.message.type, status: statusName((a.message.body as { status: number }).status), ms: Date.now() - t0 });
      } catch (e) {
        out('direction', { target: args[0], ok: false, error: (e as Error).message, ms: Date.now() - t0 });
      }
      return;
    }
    case 'keepalive':
      return keepalive('command');
    case 'nat-keepalive':
      natKeepalive();
      out('nat-keepalive');
      return;
    case 'status':
      out('status', { notify: notify?.status() ?? null, channel: { ...channel.counters } });
      return;
    case 'subscribe': {
      // Not the NotifyClient's session: a second client with the same credentials, as a node
      // that tries another node's topic would.
      try {
        const c = await attackerClient();
        const g = await c.subscribeAsync(args[0]!, { qos: 1 }).then(
          (x) => x[0]?.qos ?? -1,
          (e: Error) => (/Unspecified error/.test(e.message) ? 128 : Promise.reject(e)),
        );
        out('subscribe', { topic: args[0], granted: g });
      } catch (e) {
        out('subscribe', { topic: args[0], error: (e as Error).message });
      }
      return;
    }
    case 'publish': {
      try {
        const c = await attackerClient();
        const closed = new Promise<boolean>((r) => {
          c.once('close', () => r(true));
          setTimeout(() => r(false), 1500);
        });
        c.publish(args[0]!, Buffer.from(args[1] ?? '', 'hex'), { qos: 0 });
        out('publish', { topic: args[0], disconnected: await closed });
      } catch (e) {
        out('publish', { topic: args[0], error: (e as Error).message });
      }
      return;
    }
    case 'quit':
      await shutdown();
      return;
    default:
      out('error', { what: 'command', message: `unknown command ${JSON.stringify(line)}` });
  }
}

async function shutdown(): Promise<void> {
  if (keepaliveTimer) clearTimeout(keepaliveTimer);
  await notify?.stop();
  await attacker?.endAsync(true).catch(() => undefined);
  channel.close();
  socket.close();
  process.exit(0);
}

createInterface({ input: process.stdin }).on('line', (l) => void command(l));
process.on('SIGTERM', () => void shutdown());
main().catch((e: Error) => {
  out('error', { what: 'start', message: e.message });
  process.exit(1);
});
