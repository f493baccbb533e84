// `npm run bench:keepalive`: what it costs a node behind a NAT to stay reachable, in bytes per
// hour each way, with UDP keepalives (every 20 s: the DC's default, short enough for carrier NATs
// that drop idle UDP mappings after 30-60 s) and in MQTT mode (one MQTT session to the
// Notification Server with a PINGREQ every 300 s, plus the UDP refresh of the registration at the
// interval the DC grants, 300 s too; docs/ns.md).
//
// Waiting an hour is not needed: each kind of exchange is measured on the wire, N times in a row,
// by nftables counters in the node's namespace on its uplink (IP packet lengths: IP, UDP or TCP
// headers, TLS records, everything but the link layer), and extrapolated to the configured
// intervals. Measured: one UDP keepalive exchange (Keepalive → Keepalive Ack), one NAT keepalive
// datagram (0xFF, RFC 3948; the daemon sends one to each tunnel's peer with every keepalive), one
// MQTT keepalive exchange (PINGREQ → PINGRESP, over TLS 1.3, with the TCP acknowledgements they
// cause), and the one-off cost of setting up the MQTT session (TCP, TLS, CONNECT, SUBSCRIBE).
// The node is lab/tools/notify-node.js behind an endpoint-independent NAT (IPv4), the DC and the
// NS (embedded broker by default) on the testbed's Internet.
//
//   node dist/bench/keepalive.js [--exchanges 10] [--udp-interval 20] [--mqtt-interval 300]
//                                [--broker embedded|mosquitto] [--json-only]

import { parseArgs } from 'node:util';
import { Lab } from '../lab/lab.js';
import { buildNotifyLab, type LabNode, type NodeProc, type NotifyLab } from '../lab/notify-lab.js';

const { values } = parseArgs({
  options: {
    exchanges: { type: 'string', default: '10' },
    'udp-interval': { type: 'string', default: '20' },
    'mqtt-interval': { type: 'string', default: '300' },
    broker: { type: 'string', default: 'embedded' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write('Usage: node dist/bench/keepalive.js [--exchanges 10] [--udp-interval 20] [--mqtt-interval 300] [--broker embedded|mosquitto] [--json-only]\n');
  process.exit(0);
}
const N = Number(values.exchanges);
const udpInterval = Number(values['udp-interval']);
const mqttInterval = Number(values['mqtt-interval']);
const broker = values.broker as 'embedded' | 'mosquitto';
if (!Number.isInteger(N) || N < 3 || N > 100) fail('--exchanges must be 3..100');
if (!(udpInterval >= 1 && udpInterval <= 3600)) fail('--udp-interval must be 1..3600 seconds');
if (!(mqttInterval >= 10 && mqttInterval <= 3600)) fail('--mqtt-interval must be 10..3600 seconds');
if (broker !== 'embedded' && broker !== 'mosquitto') fail('--broker must be embedded or mosquitto');

function fail(why: string): never {
  process.stderr.write(`bench:keepalive: ${why}\n`);
  process.exit(2);
}
const log = (l: string): void => {
  if (!values['json-only']) process.stderr.write(`${l}\n`);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const TABLE = 'ntm_ka_bench';
const COUNTERS = ['ctl_out', 'ctl_in', 'nat_out', 'mqtt_out', 'mqtt_in', 'mqtt_in_data'] as const;
type Name = (typeof COUNTERS)[number];
type Count = Record<Name, { packets: number; bytes: number }>;

/**
 * Counters on the node's uplink. `meta length` is the IP packet's length; a TCP segment from the
 * broker longer than 64 bytes (IPv4 + TCP with timestamps = 52) carries data: a PINGRESP.
 */
function ruleset(ifname: string, dcPort: number, mqttPort: number): string {
  const i = JSON.stringify(ifname);
  return `table inet ${TABLE} {
${COUNTERS.map((c) => `  counter ${c} {}`).join('\n')}
  chain out {
    type filter hook output priority 0; policy accept;
    oifname ${i} udp dport ${dcPort} udp length 9 counter name nat_out
    oifname ${i} udp dport ${dcPort} udp length != 9 counter name ctl_out
    oifname ${i} tcp dport ${mqttPort} counter name mqtt_out
  }
  chain in {
    type filter hook input priority 0; policy accept;
    iifname ${i} udp sport ${dcPort} counter name ctl_in
    iifname ${i} tcp sport ${mqttPort} counter name mqtt_in
    iifname ${i} tcp sport ${mqttPort} meta length > 64 counter name mqtt_in_data
  }
}
`;
}

async function read(n: LabNode): Promise<Count> {
  const r = await n.host.exec('nft', ['-j', 'list', 'counters', 'table', 'inet', TABLE]);
  const j = JSON.parse(r.stdout) as { nftables: { counter?: { name: string; packets: number; bytes: number } }[] };
  const out = Object.fromEntries(COUNTERS.map((c) => [c, { packets: 0, bytes: 0 }])) as Count;
  for (const x of j.nftables) if (x.counter && (COUNTERS as readonly string[]).includes(x.counter.name)) out[x.counter.name as Name] = { packets: x.counter.packets, bytes: x.counter.bytes };
  return out;
}

async function reset(n: LabNode): Promise<void> {
  await n.host.exec('nft', ['reset', 'counters', 'table', 'inet', TABLE]);
}

interface PerExchange {
  upBytes: number;
  downBytes: number;
  upPackets: number;
  downPackets: number;
}

const per = (up: { packets: number; bytes: number }, down: { packets: number; bytes: number }, n: number): PerExchange => ({
  upBytes: up.bytes / n,
  downBytes: down.bytes / n,
  upPackets: up.packets / n,
  downPackets: down.packets / n,
});

async function command(p: NodeProc, line: string, event: string): Promise<void> {
  const at = p.events.length;
  p.send(line);
  await p.waitFor(event, () => true, 10_000, at);
}

async function measure(lab: Lab, L: NotifyLab): Promise<object> {
  const a = L.nodes.a;
  await a.host.nft(ruleset(a.uplink, 4500, 8883));

  // MQTT session setup: registration, Notify Request, TCP + TLS + CONNECT + SUBSCRIBE.
  log('MQTT session setup');
  await reset(a);
  let p = await L.startNode(a, { mqtt: true, keepalive: 0, mqttKeepalive: mqttInterval, natKeepalive: `${L.dc.address}:4500` });
  const setup = await read(a);
  const grant = p.events.find((e) => e.event === 'grant')!;

  // UDP: Keepalive → Keepalive Ack, N times; then N NAT keepalives.
  log(`UDP keepalive exchange ×${N}`);
  await reset(a);
  for (let i = 0; i < N; i++) await command(p, 'keepalive', 'keepalive');
  const udp = await read(a);
  log(`NAT keepalive ×${N}`);
  await reset(a);
  for (let i = 0; i < N; i++) await command(p, 'nat-keepalive', 'nat-keepalive');
  await sleep(200);
  const nat = await read(a);
  await p.stop();

  // MQTT: PINGREQ → PINGRESP every second (keepalive 1 s), N of them.
  log(`MQTT keepalive exchange ×${N} (keepalive 1 s for the measurement)`);
  p = await L.startNode(a, { mqtt: true, keepalive: 0, mqttKeepalive: 1 });
  await sleep(2500);
  await reset(a);
  const t0 = Date.now();
  let mqtt = await read(a);
  while (mqtt.mqtt_in_data.packets < N) {
    if (Date.now() - t0 > (N + 10) * 1000) throw new Error(`only ${mqtt.mqtt_in_data.packets} PINGRESPs in ${Date.now() - t0} ms`);
    await sleep(100);
    mqtt = await read(a);
  }
  // The client's acknowledgement of the last PINGRESP follows within the delayed-ACK time.
  await sleep(300);
  mqtt = await read(a);
  const exchanges = mqtt.mqtt_in_data.packets;
  await p.stop();
  void lab;

  const u = per(udp.ctl_out, udp.ctl_in, N);
  const k = per(nat.nat_out, { packets: 0, bytes: 0 }, N);
  const m = per(mqtt.mqtt_out, mqtt.mqtt_in, exchanges);
  const granted = Number(grant.keepaliveSeconds);
  const hour = (x: PerExchange, interval: number) => ({ up: Math.round((x.upBytes * 3600) / interval), down: Math.round((x.downBytes * 3600) / interval) });
  const udpMode = hour(u, udpInterval);
  const natPerTunnel = hour(k, udpInterval);
  const mqttPing = hour(m, mqttInterval);
  const mqttRefresh = hour(u, granted);
  const mqttMode = { up: mqttPing.up + mqttRefresh.up, down: mqttPing.down + mqttRefresh.down };
  return {
    bench: 'keepalive',
    broker,
    ipVersion: 4,
    exchanges: { udp: N, nat: N, mqtt: exchanges },
    intervals: { udpSeconds: udpInterval, mqttSeconds: mqttInterval, mqttModeUdpRefreshSeconds: granted },
    perExchange: { udpKeepalive: u, natKeepalive: k, mqttPing: m },
    mqttSetup: { upBytes: setup.mqtt_out.bytes, downBytes: setup.mqtt_in.bytes, upPackets: setup.mqtt_out.packets, downPackets: setup.mqtt_in.packets },
    perHour: {
      udpMode,
      natKeepalivePerTunnel: natPerTunnel,
      mqttMode: { ...mqttMode, ping: mqttPing, udpRefresh: mqttRefresh },
      ratio: { up: +(udpMode.up / mqttMode.up).toFixed(1), down: +(udpMode.down / mqttMode.down).toFixed(1) },
    },
  };
}

function table(r: ReturnType<typeof JSON.parse>): string {
  const e = r.perExchange;
  const h = r.perHour;
  const f = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  const rows: string[][] = [
    ['exchange', 'interval', 'up B (pkts)', 'down B (pkts)', 'up B/h', 'down B/h'],
    ['UDP mode: Keepalive ↔ Ack', `${r.intervals.udpSeconds} s`, `${f(e.udpKeepalive.upBytes)} (${f(e.udpKeepalive.upPackets)})`, `${f(e.udpKeepalive.downBytes)} (${f(e.udpKeepalive.downPackets)})`, `${h.udpMode.up}`, `${h.udpMode.down}`],
    ['  + NAT keepalive 0xFF, per tunnel', `${r.intervals.udpSeconds} s`, `${f(e.natKeepalive.upBytes)} (${f(e.natKeepalive.upPackets)})`, '0', `${h.natKeepalivePerTunnel.up}`, '0'],
    ['MQTT mode: PINGREQ ↔ PINGRESP (TLS)', `${r.intervals.mqttSeconds} s`, `${f(e.mqttPing.upBytes)} (${f(e.mqttPing.upPackets)})`, `${f(e.mqttPing.downBytes)} (${f(e.mqttPing.downPackets)})`, `${h.mqttMode.ping.up}`, `${h.mqttMode.ping.down}`],
    ['  + UDP registration refresh', `${r.intervals.mqttModeUdpRefreshSeconds} s`, `${f(e.udpKeepalive.upBytes)}`, `${f(e.udpKeepalive.downBytes)}`, `${h.mqttMode.udpRefresh.up}`, `${h.mqttMode.udpRefresh.down}`],
    ['total UDP mode (no tunnel)', '', '', '', `${h.udpMode.up}`, `${h.udpMode.down}`],
    ['total MQTT mode', '', '', '', `${h.mqttMode.up}`, `${h.mqttMode.down}`],
    ['MQTT session setup (once per connection)', '', `${r.mqttSetup.upBytes} (${r.mqttSetup.upPackets})`, `${r.mqttSetup.downBytes} (${r.mqttSetup.downPackets})`, '', ''],
  ];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((x) => x[i]!.length)));
  return rows.map((x) => x.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')).join('\n');
}

async function main(): Promise<void> {
  Lab.exitOnSignal = true;
  const result = await Lab.withLab(
    async (lab) => {
      log(`testbed: node behind an endpoint-independent NAT, DC and NS (${broker} broker) on the Internet`);
      const L = await buildNotifyLab(lab, { broker, verbose: false });
      try {
        return await measure(lab, L);
      } finally {
        L.dispose();
      }
    },
    { label: 'bench-keepalive' },
  );
  const r = result as ReturnType<typeof JSON.parse>;
  if (!values['json-only']) {
    process.stdout.write(`${table(r)}\n`);
    process.stdout.write(`UDP mode / MQTT mode: ${r.perHour.ratio.up}× up, ${r.perHour.ratio.down}× down (IPv4; IP packet lengths, no link layer)\n`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((e: Error) => {
  process.stderr.write(`bench:keepalive: ${e.stack ?? e.message}\n`);
  process.exit(1);
});
