// End to end, in namespaces (docs/ns.md): a DC, a Notification Server with its embedded broker
// (and once with Mosquitto), node A behind an endpoint-independent NAT whose UDP mappings expire
// after 4 s, nodes B and C with global addresses. Nodes are lab/tools/notify-node.js: the control
// plane of a router (registration, keepalives, Route Directions, MQTT mode through router/notify.ts),
// since the daemon's wiring of MQTT mode is not in yet.
//   - A in UDP mode, its mapping expired: B's direction towards A fails (B, the global end, gets
//     its Route Direction at once, but the DC cannot reach A, which would have to initiate);
//   - A in MQTT mode, its mapping expired: the direction succeeds, both ends directed, because
//     the DC woke A through the NS and A's keepalive opened the NAT again;
//   - C, with MQTT credentials of its own, cannot subscribe to A's topic nor publish on it;
//   - a notification sent to the NS under a forged Kdcns is dropped and counted, nothing published.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { Lab } from '../lab/lab.js';
import { buildNotifyLab, NOTIFY_NAMES, type NotifyLab } from '../lab/notify-lab.js';
import { mosquittoMissing } from '../lab/mosquitto.js';
import { KeyClass, NotifyReason, sealMessage } from '../protocol/control.js';
import { frameControl } from '../protocol/demux.js';
import { NS_PORT } from '../protocol/discovery.js';
import { newMessageId } from '../protocol/channel.js';
import { notifyTopic, sealNotification } from '../protocol/notify.js';

const MAPPING_TIMEOUT = 4;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= end) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(250);
  }
}

/** Node A's UDP mapping at the NAT is gone: no eim entry for port 4500, no conntrack entry. */
async function mappingGone(L: NotifyLab, lab: Lab): Promise<boolean> {
  const nat = L.net.sites['a']!.natBox!;
  const eim = await lab.natMappings(nat);
  if (eim.some((m) => m.internalPort === 4500)) return false;
  const ct = await nat.host.exec('conntrack', ['-L', '-p', 'udp', '--orig-port-src', '4500'], { allowFail: true });
  return !/sport=4500/.test(ct.stdout);
}

async function scenario(t: Test, broker: 'embedded' | 'mosquitto'): Promise<void> {
  await Lab.withLab(
    async (lab) => {
      const L = await buildNotifyLab(lab, { broker, mappingTimeout: MAPPING_TIMEOUT });
      try {
        const b = await L.startNode(L.nodes.b, {});

        // 1. A in UDP mode without keepalives: once its mapping expires, nobody reaches it.
        if (broker === 'embedded') {
          const udpA = await L.startNode(L.nodes.a, { keepalive: 0 });
          t.ok((await lab.natMappings(L.net.sites['a']!.natBox!)).some((m) => m.internalPort === 4500), 'A’s registration opened a mapping');
          await until('A’s mapping expired', () => mappingGone(L, lab), 20_000);
          const failedBefore = L.dc.status().counters.directionsFailed!;
          const from = b.events.length;
          b.send(`direct ${NOTIFY_NAMES.a}`);
          const d = await b.waitFor('direction', () => true, 30_000, from);
          t.equal(d.ok, true, 'B (global, the responder) is directed at once');
          await until('the DC gives up on A', async () => L.dc.status().counters.directionsFailed! > failedBefore, 20_000);
          t.pass('UDP mode, mapping expired: the DC’s Route Direction to A fails');
          t.notOk(udpA.events.some((e) => e.event === 'routeDirection'), 'A never got its Route Direction');
          await udpA.stop();
        }

        // 2. A in MQTT mode: the DC wakes it through the NS.
        const a = await L.startNode(L.nodes.a, { mqtt: true, keepalive: 0, mqttKeepalive: 60 });
        const grant = a.events.find((e) => e.event === 'grant')!;
        t.equal(grant.keepaliveSeconds, 60, 'the DC granted the longer keepalive A asked for');
        t.equal(grant.broker, L.ns.brokerUrl, 'and named the broker the NS announced');
        await until('A’s mapping expired', () => mappingGone(L, lab), 20_000);
        const dcBefore = L.dc.status().counters;
        const from = b.events.length;
        b.send(`direct ${NOTIFY_NAMES.a}`);
        const d = await b.waitFor('direction', () => true, 30_000, from);
        t.equal(d.ok, true, 'B is directed');
        const wake = await a.waitFor('wake');
        t.equal(wake.routeId, d.routeId, 'A was woken for that route');
        const rd = await a.waitFor('routeDirection');
        t.equal(rd.routeId, d.routeId, 'and got its Route Direction');
        const asked = b.events.slice(from).find((e) => e.event === 'direction')!;
        t.comment(`from B's Direction Request to A's Route Direction: ${Number(rd.at) - Number(asked.at) + Number(asked.ms)} ms (A opened the notification ${String(wake.latencyMs)} ms after the NS sealed it)`);
        await sleep(1200); // the DC's status file is written every second
        const dc = L.dc.status().counters;
        t.equal(dc.notifications! - dcBefore.notifications!, 1, 'DC: one notification through the NS');
        t.ok(dc.wakeResends! - dcBefore.wakeResends! >= 1, 'DC: the Route Direction went again at once when A’s keepalive came');
        t.equal(dc.directionsFailed! - dcBefore.directionsFailed!, 0, 'DC: no direction failed');
        t.ok(L.dc.status().registrations.find((r) => r.name === NOTIFY_NAMES.a)?.mqtt, 'DC: A is registered in MQTT mode');

        // 3. C, another node with MQTT credentials of its own, tries A's topic.
        const c = await L.startNode(L.nodes.c, { mqtt: true, mqttKeepalive: 60 });
        const topicA = notifyTopic(Number(grant.keyId));
        let at = c.events.length;
        c.send(`subscribe ${topicA}`);
        t.equal((await c.waitFor('subscribe', () => true, 10_000, at)).granted, 128, 'C may not subscribe to A’s topic');
        at = c.events.length;
        c.send('subscribe ntmobile/n/#');
        t.equal((await c.waitFor('subscribe', () => true, 10_000, at)).granted, 128, 'nor to all topics');
        const forged = sealNotification({ node: NOTIFY_NAMES.a, reason: NotifyReason.direction, routeId: 99 }, { keyId: Number(grant.keyId), key: randomBytes(32) }, Date.now());
        at = c.events.length;
        c.send(`publish ${topicA} ${forged.toString('hex')}`);
        const pub = await c.waitFor('publish', () => true, 10_000, at);
        if (broker === 'embedded') t.equal(pub.disconnected, true, 'a node that publishes is disconnected');
        await sleep(500);
        at = a.events.length;
        a.send('status');
        const st = (await a.waitFor('status', () => true, 10_000, at)).notify as { counters: Record<string, number>; connected: boolean };
        t.equal(st.counters.received, 1, 'A received only its one genuine notification');
        t.equal(st.counters.wakes, 1);
        t.equal(st.connected, true, 'A’s session is still up');

        // 4. A forged notification to the NS (the DC's live key ID, a wrong key).
        const nsStatus = L.ns.status();
        const dcKey = nsStatus.dcs[0]!;
        const datagram = frameControl(
          sealMessage('notification', { node: NOTIFY_NAMES.a, reason: NotifyReason.direction, routeId: 7 }, { keyClass: KeyClass.dcns, keyId: dcKey.keyId, messageId: newMessageId(), timestamp: Date.now() }, randomBytes(32)),
        );
        const script = `const s=require('node:dgram').createSocket('udp4');s.send(Buffer.from(process.argv[1],'hex'),${NS_PORT},process.argv[2],()=>s.close());`;
        await L.nodes.c.host.exec(process.execPath, ['-e', script, datagram.toString('hex'), L.ns.address]);
        await sleep(1500);
        const after = L.ns.status();
        t.equal(after.counters.channel.dropAuth! - nsStatus.counters.channel.dropAuth!, 1, 'NS: the forged notification is dropAuth');
        t.equal(after.counters.broker.published, nsStatus.counters.broker.published, 'NS: nothing published for it');
        if (broker === 'embedded') {
          t.ok(after.counters.broker.subscribeRefused! >= 2, 'NS: C’s subscriptions refused and counted');
          t.ok(after.counters.broker.publishRefused! >= 1, 'NS: C’s publish refused and counted');
        }
        await Promise.all([a.stop(), b.stop(), c.stop()]);
      } finally {
        L.dispose();
      }
    },
    { label: `ns-e2e-${broker}` },
  );
}

t.test('embedded broker: a node in MQTT mode behind an expired NAT mapping is woken through the NS', async (t) => scenario(t, 'embedded'));
t.test('Mosquitto (dynamic security): the same', { skip: mosquittoMissing() ?? false }, async (t) => scenario(t, 'mosquitto'));
