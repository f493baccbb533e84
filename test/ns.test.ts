// The Notification Server (docs/ns.md) without namespaces: the MQTT credentials and the sealed
// payload (protocol/notify.ts), the channel's moving destination and immediate resend, the NS and
// DC configs, first contact over real mutual TLS, the NS with its embedded broker (aedes) and a
// node's NotifyClient on loopback (wake, forged/replayed/stale notifications, another node's
// topic, publishing nodes, wrong credentials, the DC's zone), a DC and an NS together waking a
// node whose "NAT mapping" (its UDP socket) is gone, expiry of MQTT-mode registrations, an NS
// restart, and the same with Mosquitto and its dynamic-security plugin as the broker.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { connectAsync, type MqttClient } from 'mqtt';
import { createPki, type IssuedCert } from '../lab/pki.js';
import { mosquittoMissing, mosquittoReady, writeMosquittoConfig } from '../lab/mosquitto.js';
import { ControlChannel, RequestHandle, RequestTimeout, type Incoming } from '../protocol/channel.js';
import { KeyClass, NotifyReason, openMessage, readHeader, Status, statusName, type Body } from '../protocol/control.js';
import { decodeSockaddr, encodeSockaddr } from '../protocol/endpoint.js';
import { exportServerKey, generateX25519 } from '../protocol/keys.js';
import { keyIdFromUsername, mqttClientId, mqttPassword, mqttUsername, notifyTopic, sealNotification } from '../protocol/notify.js';
import { NotifyClient, NotifyError, requestNotifyGrant, type NotifyGrant, type Wake } from '../router/notify.js';
import { ConfigError, parseDcConfig } from '../servers/dc/config.js';
import { DirectionCoordinator, type DcConfig } from '../servers/dc/dc.js';
import { contactNs, type NsConfig as DcNsConfig } from '../servers/dc/ns.js';
import { connectMutualTls, writeMessage } from '../servers/tls.js';
import { parseNsConfig, UsageError } from '../servers/ns/config.js';
import { NotificationServer, type NsConfig } from '../servers/ns/ns.js';

const tmp = mkdtempSync(join(tmpdir(), 'ntm-ns-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const pki = createPki(join(tmp, 'pki'));
const nsCert = pki.issue('ns1', { role: 'ns', dns: ['ns1.notify.test'], ips: ['127.0.0.1', '::1'] });
const dcCert = pki.issue('dc1', { role: 'dc', dns: ['fleet1.test', 'dc.fleet1.test'], ips: ['127.0.0.1'] });
const dc2Cert = pki.issue('dc2', { role: 'dc', dns: ['fleet2.test', 'dc.fleet2.test'], ips: ['127.0.0.1'] });
const rsCert = pki.issue('rs1', { role: 'rs', dns: ['rs1.relay.test'], ips: ['127.0.0.1'] });
const tlsFiles = (c: IssuedCert) => ({ caFile: c.caFile, certFile: c.certFile, keyFile: c.keyFile });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// ---- protocol/notify.ts ---------------------------------------------------------------------

t.test('MQTT credentials and topic derive from Kntmns and its ID', async (t) => {
  const key = Buffer.alloc(32, 9);
  t.equal(mqttUsername(0xdeadbeef), 'deadbeef');
  t.equal(mqttUsername(1), '00000001', 'eight hex digits');
  t.equal(mqttClientId(0xdeadbeef), 'ntm-deadbeef');
  t.equal(notifyTopic(0xdeadbeef), 'ntmobile/n/deadbeef');
  t.equal(mqttPassword(key), createHmac('sha256', key).update('ntmobile mqtt v1').digest('base64url'), 'HMAC-SHA256(Kntmns, label), base64url');
  t.not(mqttPassword(key), key.toString('base64url'), 'the password is not the key');
  t.not(mqttPassword(Buffer.alloc(32, 10)), mqttPassword(key));
  t.equal(keyIdFromUsername('deadbeef'), 0xdeadbeef);
  for (const bad of [undefined, '', 'DEADBEEF', 'deadbee', 'deadbeef0', '00000000', 'ntm-dead', '+/#']) t.equal(keyIdFromUsername(bad), null, `${JSON.stringify(bad)} is no key ID`);
});

t.test('a sealed notification opens under Kntmns only', async (t) => {
  const k = { keyId: 77, key: Buffer.alloc(32, 1) };
  const body = { node: 'rb.fleet1.test', reason: NotifyReason.direction, routeId: 1234 };
  const sealed = sealNotification(body, k, 1_700_000_000_000);
  const h = readHeader(sealed);
  t.equal(h.keyClass, KeyClass.ntmns, 'key class Kntmns');
  t.equal(h.keyId, 77, 'key ID = the Kntmns ID');
  t.equal(h.timestamp, 1_700_000_000_000);
  t.strictSame(openMessage(sealed, h, k.key), { type: 'notification', body });
  t.throws(() => openMessage(sealed, h, Buffer.alloc(32, 2)), /authentication failed under Kntmns key 77/);
  t.equal(sealed.length, 24 + (1 + 14 + 1 + 4) + 16, 'header + body + tag: 60 bytes on the topic');
  t.not(readHeader(sealNotification(body, k, 1)).messageId, h.messageId, 'a fresh message ID each time');
});

// ---- protocol/channel.ts: a destination that moves, and resending at once ---------------------

t.test('channel: request() asks a destination function before every try; resendNow sends at once', async (t) => {
  const sent: string[] = [];
  const key = { keyClass: KeyClass.ntmdc, keyId: 5, key: Buffer.alloc(32, 5) };
  const ch = new ControlChannel({ send: (_d, to) => sent.push(`${decodeSockaddr(to).port}`), keys: () => key.key, onMessage: () => undefined });
  let port = 1000;
  const handle = new RequestHandle();
  const p = ch.request('keepalive', { local: null }, key, () => encodeSockaddr('127.0.0.1', port), { initialMs: 40, maxMs: 40, tries: 3 }, handle);
  port = 2000;
  handle.resendNow();
  await t.rejects(p, RequestTimeout);
  t.strictSame(sent, ['1000', '2000', '2000', '2000'], 'first try, resend to the new place, then the schedule goes on there');
  t.equal(ch.counters.retransmits, 3);
  handle.resendNow();
  t.equal(sent.length, 4, 'nothing once the request is over');
  ch.close();
});

// ---- configs ----------------------------------------------------------------------------------

t.test('NS config: defaults, the two broker kinds, clear errors', async (t) => {
  const base = { name: 'ns1.notify.test', tls: { ca: 'ca.crt', cert: 'ns1.crt', key: 'ns1.key' } };
  const c = parseNsConfig(JSON.stringify(base), '/etc/ntmobile');
  t.strictSame(c.listen, { address: '::', port: 4700 });
  t.equal(c.tls.port, 4701);
  t.equal(c.tls.certFile, '/etc/ntmobile/ns1.crt');
  t.strictSame(c.broker, { type: 'embedded', address: '::', port: 8883, publicUrl: 'mqtts://ns1.notify.test:8883', maxKeepaliveSeconds: 3600 });
  t.equal(c.statePath, null, 'memory only by default');
  writeFileSync(join(tmp, 'mqtt.password'), 'admin-secret\n', { mode: 0o600 });
  const m = parseNsConfig(JSON.stringify({ ...base, state: 'ns.state', broker: { type: 'mosquitto', url: 'mqtts://127.0.0.1:8883', ca: 'ca.crt', username: 'ntmobile-ns', passwordFile: 'mqtt.password', publicUrl: 'mqtts://ns1.notify.test:8883' } }), tmp);
  t.strictSame(m.broker, { type: 'external', url: 'mqtts://127.0.0.1:8883', caFile: join(tmp, 'ca.crt'), username: 'ntmobile-ns', password: 'admin-secret', accessControl: 'dynsec', publicUrl: 'mqtts://ns1.notify.test:8883' });
  t.equal(m.statePath, join(tmp, 'ns.state'));
  const bad: [object, RegExp][] = [
    [{ ...base, name: 'NS1' }, /^name: "NS1" is not a lower-case DNS name/],
    [{ ...base, colour: 1 }, /^colour: unknown field/],
    [{ name: 'ns1.notify.test' }, /^tls: required \(an object\)/],
    [{ ...base, broker: { type: 'hivemq' } }, /^broker\.type: "hivemq", want embedded or mosquitto/],
    [{ ...base, broker: { port: 70000 } }, /^broker\.port: 70000 is not an integer in 0\.\.65535/],
    [{ ...base, broker: { publicUrl: 'https://x' } }, /^broker\.publicUrl: "https:\/\/x": want an mqtts:\/\//],
    [{ ...base, broker: { type: 'mosquitto', url: 'mqtts://127.0.0.1:8883', username: 'u', password: 'p', accessControl: 'acl' } }, /^broker\.accessControl: "acl", want dynsec or none/],
    [{ ...base, broker: { type: 'mosquitto', url: 'mqtts://127.0.0.1:8883', username: 'u' } }, /^broker\.password: required \(a string\)/],
    [{ ...base, broker: { type: 'mosquitto', username: 'u', password: 'p' } }, /^broker\.url: required \(a string\)/],
    [{ ...base, listen: { address: 'any' } }, /^listen\.address: "any" is not an IP address/],
  ];
  for (const [cfg, re] of bad) {
    try {
      parseNsConfig(JSON.stringify(cfg));
      t.fail(`${JSON.stringify(cfg)}: accepted`);
    } catch (e) {
      t.ok(e instanceof UsageError, `${JSON.stringify(cfg)}: a UsageError (exit status 2)`);
      t.match((e as Error).message, re);
    }
  }
});

t.test('DC config: ns', async (t) => {
  const base = { zone: 'fleet1.test', nsName: 'dc.fleet1.test', publicAddress: '198.18.0.11', tls: { ca: 'c', cert: 'c', key: 'k' }, state: '/tmp/x' };
  t.equal(parseDcConfig(JSON.stringify(base)).ns, null, 'no NS: no MQTT mode');
  t.strictSame(parseDcConfig(JSON.stringify({ ...base, ns: { name: 'ns1.notify.test', address: '198.18.0.16' } })).ns, { name: 'ns1.notify.test', address: '198.18.0.16', port: 4700, tlsPort: 4701, maxKeepaliveSeconds: 1800 });
  const bad: [object, RegExp][] = [
    [{ ns: { name: 'ns1.notify.test' } }, /^ns\.address: required \(a string\)/],
    [{ ns: { name: 'x_y', address: '198.18.0.16' } }, /^ns\.name: "x_y" is not a lower-case DNS name/],
    [{ ns: { name: 'ns1.notify.test', address: 'ns1' } }, /^ns\.address: "ns1" is not an IP address/],
    [{ ns: { name: 'ns1.notify.test', address: '198.18.0.16', maxKeepaliveSeconds: 5 } }, /^ns\.maxKeepaliveSeconds: 5 is not an integer in 20\.\.65535/],
    [{ ns: { name: 'ns1.notify.test', address: '198.18.0.16', url: 'x' } }, /^ns\.url: unknown field/],
  ];
  for (const [extra, re] of bad) {
    try {
      parseDcConfig(JSON.stringify({ ...base, ...extra }));
      t.fail(`${JSON.stringify(extra)}: accepted`);
    } catch (e) {
      t.ok(e instanceof ConfigError, `${JSON.stringify(extra)}: a ConfigError`);
      t.match((e as Error).message, re);
    }
  }
});

// ---- the NS on loopback -----------------------------------------------------------------------

async function startNs(t: Test, o: { statePath?: string; ports?: { udp: number; tls: number; mqtt: number }; broker?: NsConfig['broker'] } = {}): Promise<NotificationServer> {
  const config: NsConfig = {
    name: 'ns1.notify.test',
    listen: { address: '127.0.0.1', port: o.ports?.udp ?? 0 },
    tls: { ...tlsFiles(nsCert), port: o.ports?.tls ?? 0 },
    broker: o.broker ?? { type: 'embedded', address: '127.0.0.1', port: o.ports?.mqtt ?? 0, publicUrl: 'mqtts://127.0.0.1:8883', maxKeepaliveSeconds: 3600 },
    statePath: o.statePath ?? null,
    maxKeys: 100,
    verbose: !!process.env.NTM_DEBUG,
  };
  const ns = new NotificationServer(config, { log: (l) => process.env.NTM_DEBUG && console.error(l) });
  await ns.start();
  t.teardown(() => ns.stop());
  return ns;
}

const brokerUrl = (ns: NotificationServer) => `mqtts://127.0.0.1:${ns.brokerPort}`;

/** The QoS a SUBACK granted; mqtt.js rejects a refusal (0x80) as "Unspecified error". */
async function granted(c: MqttClient, topic: string): Promise<number> {
  try {
    return (await c.subscribeAsync(topic, { qos: 1 }))[0]?.qos ?? -1;
  } catch (e) {
    if (/Unspecified error/.test((e as Error).message)) return 128;
    throw e;
  }
}

/** A DC's side of the NS without a DC: first contact, then requests over UDP under Kdcns. */
async function dcSide(t: Test, ns: NotificationServer, cert: IssuedCert = dcCert) {
  const c = await contactNs(tlsFiles(cert), { name: 'ns1.notify.test', address: '127.0.0.1', tlsPort: ns.tlsPort });
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const ch = new ControlChannel({
    send: (d, to) => {
      const e = decodeSockaddr(to);
      sock.send(d, e.port, e.address);
    },
    keys: (cls, id) => (cls === KeyClass.dcns && id === c.keyId ? c.key : undefined),
    onMessage: () => undefined,
  });
  sock.on('message', (m, r) => ch.receive(m, encodeSockaddr(r.address, r.port)));
  t.teardown(() => {
    ch.close();
    sock.close();
  });
  const key = { keyClass: KeyClass.dcns, keyId: c.keyId, key: c.key };
  const to = encodeSockaddr('127.0.0.1', ns.port);
  const ack = async (p: Promise<Incoming>): Promise<Body<'ntmAck'>> => {
    const a = await p;
    if (a.message.type !== 'ntmAck') throw new Error(`answered with ${a.message.type}`);
    return a.message.body;
  };
  return {
    contact: c,
    give: (keyId: number, kntmns: Buffer, node: string, expiresAt = Date.now() + 3600_000) => ack(ch.request('nsKeyDistribution', { keyId, key: kntmns, expiresAt, node }, key, to)),
    notify: (node: string, routeId = 1) => ack(ch.request('notification', { node, reason: NotifyReason.direction, routeId }, key, to)),
  };
}

function grantFor(keyId: number, key: Buffer, broker = ''): NotifyGrant {
  return { ns: 'ns1.notify.test', broker, keyId, key, expiresAt: Date.now() + 3600_000, keepaliveSeconds: 300 };
}

async function nodeClient(t: Test, ns: NotificationServer, grant: NotifyGrant, o: { keepaliveSeconds?: number } = {}): Promise<{ client: NotifyClient; wakes: Wake[] }> {
  const wakes: Wake[] = [];
  const client = new NotifyClient({ url: brokerUrl(ns), caFile: pki.caFile, keepaliveSeconds: o.keepaliveSeconds ?? 60, onWake: (w) => wakes.push(w), reconnectMs: 200 });
  client.use(grant);
  t.teardown(() => client.stop());
  await client.ready(5000);
  return { client, wakes };
}

async function rawClient(t: Test, ns: NotificationServer | string, o: { keyId: number; key: Buffer; clientId?: string; password?: string }): Promise<MqttClient> {
  const c = await connectAsync(typeof ns === 'string' ? ns : brokerUrl(ns), {
    protocolVersion: 4,
    clientId: o.clientId ?? mqttClientId(o.keyId),
    username: mqttUsername(o.keyId),
    password: o.password ?? mqttPassword(o.key),
    ca: readFileSync(pki.caFile),
    reconnectPeriod: 0,
    connectTimeout: 3000,
  });
  t.teardown(() => c.endAsync(true).catch(() => undefined));
  return c;
}

t.test('first contact: a DC gets Kdcns and an NS Hello with the broker URL; other roles are refused', async (t) => {
  const ns = await startNs(t);
  const c = await contactNs(tlsFiles(dcCert), { name: 'ns1.notify.test', address: '127.0.0.1', tlsPort: ns.tlsPort });
  t.equal(c.broker, 'mqtts://127.0.0.1:8883', 'the publicUrl');
  t.equal(ns.status().dcs[0]?.keyId, c.keyId, 'the NS holds the key under the same ID');
  t.equal(ns.status().dcs[0]?.dc, 'fleet1.test', 'named by the DC certificate’s first DNS name');
  const s = await connectMutualTls(tlsFiles(rsCert), '127.0.0.1', ns.tlsPort, 'ns1.notify.test');
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  s.on('error', () => undefined);
  await closed;
  t.equal(ns.counters.tlsRejected, 1, 'an RS certificate gets nothing');
  await t.rejects(contactNs(tlsFiles(dcCert), { name: 'ns2.notify.test', address: '127.0.0.1', tlsPort: ns.tlsPort }), /altnames|Hostname/i, 'a certificate that does not name the NS');
  // A DC talking to something that is not an NS (a DC answering with its own hello).
  const fake = createTlsServer({ ca: readFileSync(pki.caFile), cert: readFileSync(dcCert.certFile), key: readFileSync(dcCert.keyFile), requestCert: true }, (sock) => {
    exportServerKey(sock, 'kdcns');
    writeMessage(sock, 'nsHello', { name: 'fleet1.test', broker: '' });
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => fake.close());
  await t.rejects(contactNs(tlsFiles(dcCert), { name: 'fleet1.test', address: '127.0.0.1', tlsPort: (fake.address() as { port: number }).port }), /^certificate role dc, want ns$/);
});

t.test('NS: a node woken over MQTT; forged, replayed and stale notifications are dropped and counted', async (t) => {
  const ns = await startNs(t);
  const dc = await dcSide(t, ns);
  const kntmns = Buffer.alloc(32, 0x61);
  const keyId = 0x0a0b0c0d;
  t.match(await dc.give(keyId, kntmns, 'rb.fleet1.test'), { status: Status.ok }, 'the NS takes the key');
  t.match(await dc.give(keyId, kntmns, 'rb.fleet1.test'), { status: Status.ok }, 'and the same key again (a DC that retries)');
  const { client, wakes } = await nodeClient(t, ns, grantFor(keyId, kntmns));
  const ack = await dc.notify('rb.fleet1.test', 4242);
  t.equal(ack.status, Status.ok, `notification acknowledged (${ack.reason})`);
  await until('the wake', () => wakes.length === 1);
  t.match(wakes[0], { node: 'rb.fleet1.test', reason: NotifyReason.direction, routeId: 4242 });
  t.ok(Math.abs(wakes[0]!.receivedAt - wakes[0]!.sentAt) < 2000, 'sealed by the NS just now');

  // Whoever can publish on the topic (a broker operator, a rogue publisher) cannot forge a wake.
  const topic = notifyTopic(keyId);
  await ns.broker.publish(topic, sealNotification({ node: 'rb.fleet1.test', reason: 1, routeId: 666 }, { keyId, key: Buffer.alloc(32, 0x62) }, Date.now()));
  await ns.broker.publish(topic, sealNotification({ node: 'rb.fleet1.test', reason: 1, routeId: 667 }, { keyId: keyId + 1, key: kntmns }, Date.now()));
  await ns.broker.publish(topic, Buffer.from('not a control message'));
  const genuine = sealNotification({ node: 'rb.fleet1.test', reason: 1, routeId: 668 }, { keyId, key: kntmns }, Date.now());
  await ns.broker.publish(topic, genuine);
  await ns.broker.publish(topic, genuine);
  await ns.broker.publish(topic, sealNotification({ node: 'rb.fleet1.test', reason: 1, routeId: 669 }, { keyId, key: kntmns }, Date.now() - 60_000));
  await until('the six payloads after the first', () => client.counters.received === 7);
  await sleep(50);
  t.strictSame(wakes.map((w) => w.routeId), [4242, 668], 'only the genuine ones, once');
  const c = client.status() as { counters: Record<string, number> };
  t.equal(c.counters.dropAuth, 1, 'wrong key: dropAuth');
  t.equal(c.counters.dropUnknownKey, 1, 'another key ID: dropUnknownKey');
  t.equal(c.counters.dropMalformed, 1, 'garbage: dropMalformed');
  t.equal(c.counters.dropDuplicate, 1, 'replayed: dropDuplicate');
  t.equal(c.counters.dropStale, 1, 'a minute old: dropStale');
  t.equal(ns.broker.counters.delivered >= 1, true, 'QoS 1 deliveries acknowledged by the node');
});

t.test('NotifyClient: a CA file it cannot read is a counted, logged failure, not a crash', async (t) => {
  const lines: string[] = [];
  const c = new NotifyClient({ url: 'mqtts://127.0.0.1:9', caFile: join(tmp, 'no-such-ca.crt'), keepaliveSeconds: 60, onWake: () => undefined, log: (l) => lines.push(l) });
  c.use(grantFor(1, Buffer.alloc(32, 1)));
  await until('the failure', () => c.counters.connectFailures === 1);
  t.match(lines.join('\n'), /no-such-ca\.crt/);
  t.equal(c.connected, false);
  await c.stop();
});

t.test('NS broker: wrong credentials, another node’s topic, publishing nodes', async (t) => {
  const ns = await startNs(t);
  const dc = await dcSide(t, ns);
  const a = { keyId: 0x100, key: Buffer.alloc(32, 1) };
  const b = { keyId: 0x200, key: Buffer.alloc(32, 2) };
  t.equal((await dc.give(a.keyId, a.key, 'ra.fleet1.test')).status, Status.ok);
  t.equal((await dc.give(b.keyId, b.key, 'rb.fleet1.test')).status, Status.ok);
  const { client: nodeA, wakes } = await nodeClient(t, ns, grantFor(a.keyId, a.key));

  await t.rejects(rawClient(t, ns, { ...b, password: mqttPassword(a.key) }), /Bad username or password|Not authorized|connack/i, 'b with a’s password');
  await t.rejects(rawClient(t, ns, { keyId: 0x300, key: Buffer.alloc(32, 3) }), /Bad username or password|Not authorized/i, 'a key the NS does not hold');
  await t.rejects(rawClient(t, ns, { ...b, clientId: mqttClientId(a.keyId) }), /Identifier rejected|Not authorized/i, 'b with a’s client ID (would take a’s session over)');
  t.equal(ns.broker.counters.authFailures, 3);

  const nodeB = await rawClient(t, ns, b);
  t.equal(await granted(nodeB, notifyTopic(a.keyId)), 128, 'b may not subscribe to a’s topic (SUBACK 0x80)');
  t.equal(await granted(nodeB, 'ntmobile/n/#'), 128, 'nor to a wildcard');
  t.equal(await granted(nodeB, notifyTopic(b.keyId)), 1, 'its own topic: yes');
  t.equal(ns.broker.counters.subscribeRefused, 2);
  const got: string[] = [];
  nodeB.on('message', (topic) => got.push(topic));
  t.equal((await dc.notify('ra.fleet1.test', 7)).status, Status.ok);
  await until('a’s wake', () => wakes.length === 1);
  await sleep(100);
  t.strictSame(got, [], 'b saw nothing of a’s notification');

  const closed = new Promise<void>((r) => nodeB.once('close', () => r()));
  nodeB.publish(notifyTopic(a.keyId), sealNotification({ node: 'ra.fleet1.test', reason: 1, routeId: 9 }, a, Date.now()), { qos: 0 });
  await closed;
  t.equal(ns.broker.counters.publishRefused, 1, 'a node that publishes is disconnected');
  await sleep(100);
  t.equal(nodeA.counters.received, 1, 'and its message reached nobody');
});

t.test('NS: a DC hands keys only for its zone, wakes only nodes whose key it handed', async (t) => {
  const ns = await startNs(t);
  const dc1 = await dcSide(t, ns);
  const dc2 = await dcSide(t, ns, dc2Cert);
  const k = Buffer.alloc(32, 7);
  t.match(await dc1.give(1, k, 'rb.fleet2.test'), { status: Status.notAuthorized, reason: /not in the zones of fleet1\.test/ }, 'fleet1’s DC for a fleet2 node');
  t.equal((await dc1.give(1, k, 'rb.fleet1.test')).status, Status.ok);
  t.match(await dc2.give(1, k, 'rb.fleet2.test'), { status: Status.badRequest, reason: /key ID 00000001 is in use/ }, 'a key ID another node holds');
  t.match(await dc2.notify('rb.fleet1.test'), { status: Status.notAuthorized, reason: /came from fleet1\.test/ }, 'fleet2’s DC cannot wake fleet1’s node');
  t.match(await dc1.notify('nobody.fleet1.test'), { status: Status.notRegistered }, 'no key for that node');
  t.match(await dc1.give(2, k, 'rb.fleet1.test', Date.now() - 1), { status: Status.badRequest, reason: /expired/ });
  t.equal(ns.counters.keyDistributionsRefused, 3);
  t.equal(ns.counters.notifyForeignDc, 1);
  t.equal(ns.counters.notifyUnknownNode, 1);
  // A new key for a node replaces the old one: the old credentials stop working.
  const { client } = await nodeClient(t, ns, grantFor(1, k));
  t.equal((await dc1.give(3, Buffer.alloc(32, 8), 'rb.fleet1.test')).status, Status.ok);
  await until('the old session dropped', () => !client.connected);
  t.strictSame(ns.status().keys.map((x) => x.user), ['00000003'], 'only the new key is held');
});

// ---- a DC and an NS together ------------------------------------------------------------------

interface FakeNode {
  name: string;
  channel: ControlChannel;
  key: { keyClass: number; keyId: number; key: Buffer };
  directions: Body<'routeDirection'>[];
  port(): number;
  /** The NAT mapping expires: datagrams to the node's old port go nowhere. */
  lose(): void;
  /** A new mapping (a new port) and a keepalive from it to the DC. */
  keepalive(): Promise<Incoming>;
}

let nextKeyId = 5000;

async function fakeNode(t: Test, dc: DirectionCoordinator, name: string): Promise<FakeNode> {
  let sock: dgram.Socket | null = null;
  const keyId = nextKeyId++;
  const key = Buffer.alloc(32, keyId & 0xff);
  const publicKey = generateX25519().publicKey;
  const toDc = encodeSockaddr('127.0.0.1', dc.port);
  const node: FakeNode = {
    name,
    key: { keyClass: KeyClass.ntmdc, keyId, key },
    directions: [],
    channel: new ControlChannel({
      send: (d, to) => {
        const e = decodeSockaddr(to);
        sock?.send(d, e.port, e.address);
      },
      keys: (cls, id) => (cls === KeyClass.ntmdc && id === keyId ? key : undefined),
      onMessage: (m: Incoming) => {
        if (m.message.type !== 'routeDirection') return;
        node.directions.push(m.message.body);
        node.channel.reply(m, 'ntmAck', { inReplyTo: m.envelope.messageId, status: Status.ok, reason: '' });
      },
    }),
    port: () => sock?.address().port ?? 0,
    lose: () => {
      sock?.close();
      sock = null;
    },
    keepalive: async () => {
      if (sock === null) await bind();
      return node.channel.request('keepalive', { local: null }, node.key, toDc, { initialMs: 200, maxMs: 400, tries: 4 });
    },
  };
  const bind = async (): Promise<void> => {
    const s = dgram.createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    s.on('message', (msg, rinfo) => node.channel.receive(msg, encodeSockaddr(rinfo.address, rinfo.port)));
    sock = s;
  };
  await bind();
  dc.registry.putKey({ keyId, key, expiresAt: Date.now() + 3600_000, fqdn: name, names: [name], publicKey });
  dc.registry.register({ name, keyId, observed: { address: '127.0.0.1', port: node.port() }, local: { address: '127.0.0.1', port: node.port() }, publicKey, lastSeen: Date.now() });
  t.teardown(() => {
    node.channel.close();
    node.lose();
  });
  return node;
}

async function startDc(t: Test, ns: NotificationServer | null, o: { keepaliveSeconds?: number; nsPort?: number; nsTlsPort?: number } = {}): Promise<DirectionCoordinator> {
  const dir = mkdtempSync(join(tmp, 'dc-'));
  const nsConfig: DcNsConfig | null = ns === null ? null : { name: 'ns1.notify.test', address: '127.0.0.1', port: o.nsPort ?? ns.port, tlsPort: o.nsTlsPort ?? ns.tlsPort, maxKeepaliveSeconds: 600 };
  const config: DcConfig = {
    zone: 'fleet1.test',
    nsName: 'dc.fleet1.test',
    publicAddress: '127.0.0.1',
    listen: { address: '127.0.0.1', port: 0 },
    tls: { ...tlsFiles(dcCert), port: 0 },
    dns: null,
    pool: { ipv4: '10.77.0.0/16', ipv6: 'fd4e:544d:1::/64' },
    statePath: join(dir, 'state.json'),
    keepaliveSeconds: o.keepaliveSeconds ?? 20,
    expireAfterKeepalives: 3,
    routeLifetimeSeconds: 3600,
    discovery: { resolvers: [], override: {}, timeoutMs: 500 },
    peerControlPort: 4500,
    peerTlsPort: 4501,
    relays: [],
    ns: nsConfig,
    retransmit: { initialMs: 100, maxMs: 200, tries: 3 },
    verbose: !!process.env.NTM_DEBUG,
  };
  const dc = new DirectionCoordinator(config);
  await dc.start();
  t.teardown(() => dc.stop());
  return dc;
}

async function direct(mn: FakeNode, dc: DirectionCoordinator, target: string, tries = 2): Promise<Body<'routeDirection'> | Body<'ntmAck'>> {
  const answer = await mn.channel.request('directionRequest', { source: mn.name, target, flags: 0 }, mn.key, encodeSockaddr('127.0.0.1', dc.port), { initialMs: 3000, maxMs: 3000, tries });
  if (answer.message.type === 'routeDirection') mn.channel.reply(answer, 'ntmAck', { inReplyTo: answer.envelope.messageId, status: Status.ok, reason: '' });
  return answer.message.body as Body<'routeDirection'> | Body<'ntmAck'>;
}

const dcAt = (dc: DirectionCoordinator) => encodeSockaddr('127.0.0.1', dc.port);
const counters = (dc: DirectionCoordinator) => (dc.status() as { counters: Record<string, number> }).counters;

t.test('DC + NS: a node in MQTT mode whose mapping expired is woken and gets its Route Direction; without the NS it would not', async (t) => {
  const ns = await startNs(t);
  const dc = await startDc(t, ns);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test');
  const cn = await fakeNode(t, dc, 'rb.fleet1.test');
  const grant = await requestNotifyGrant(cn.channel, cn.key, dcAt(dc), 'rb.fleet1.test', 300);
  t.equal(grant.keepaliveSeconds, 300, 'the UDP keepalive interval the node asked for (within the DC’s 20..600)');
  t.equal(grant.broker, 'mqtts://127.0.0.1:8883', 'the broker URL the NS announced');
  t.equal(grant.ns, 'ns1.notify.test');
  t.equal((await requestNotifyGrant(mn.channel, mn.key, dcAt(dc), 'ra.fleet1.test', 65535).catch(() => null))?.keepaliveSeconds, 600, 'at most the NS’s maximum');
  await t.rejects(requestNotifyGrant(mn.channel, mn.key, dcAt(dc), 'rb.fleet1.test', 300), NotifyError, 'a name of another node');
  t.equal(ns.status().keys.length, 2, 'the NS holds both keys');

  const wakes: Wake[] = [];
  const client = new NotifyClient({
    url: brokerUrl(ns),
    caFile: pki.caFile,
    keepaliveSeconds: 60,
    reconnectMs: 200,
    // What the daemon does on a wake: a keepalive to its DC, from its own port.
    onWake: (w) => {
      wakes.push(w);
      void cn.keepalive();
    },
  });
  t.teardown(() => client.stop());
  client.use(grant);
  await client.ready();

  const oldPort = cn.port();
  cn.lose();
  const r = await direct(mn, dc, 'rb.fleet1.test');
  t.ok('routeId' in r, `MN got its Route Direction (${'status' in r ? statusName(r.status) : 'ok'})`);
  t.equal(cn.directions.length, 1, 'CN got its Route Direction');
  t.equal(wakes.length, 1, 'CN was woken once');
  t.equal(wakes[0]?.routeId, (r as Body<'routeDirection'>).routeId, 'for that route');
  t.not(cn.port(), oldPort, 'at a new port (a new mapping)');
  const c = counters(dc);
  t.equal(c.notifications, 1);
  t.ok(c.wakeResends >= 1, 'the Route Direction went again at once when the keepalive came');
  t.equal(c.directionsFailed, 0);
  const reg = (dc.status() as { registrations: { name: string; observed: { port: number }; mqtt: boolean }[] }).registrations.find((x) => x.name === 'rb.fleet1.test')!;
  t.equal(reg.observed.port, cn.port(), 'the DC follows the new mapping');
  t.equal(reg.mqtt, true);

  // The same node in UDP mode (no grant) and its mapping gone: the direction fails.
  const dc2 = await startDc(t, null);
  const mn2 = await fakeNode(t, dc2, 'ra.fleet1.test');
  const cn2 = await fakeNode(t, dc2, 'rb.fleet1.test');
  const refused = await requestNotifyGrant(cn2.channel, cn2.key, dcAt(dc2), 'rb.fleet1.test', 300).catch((e: Error) => e);
  t.ok(refused instanceof NotifyError && refused.status === Status.unavailable, 'a DC without an NS refuses MQTT mode: unavailable');
  cn2.lose();
  await t.rejects(direct(mn2, dc2, 'rb.fleet1.test', 1), RequestTimeout, 'no NS, no wake: MN never gets a route');
  t.equal(counters(dc2).directionsFailed, 1);
});

t.test('DC: MQTT-mode registrations expire only after 3 of their longer keepalives', async (t) => {
  const ns = await startNs(t);
  const dc = await startDc(t, ns, { keepaliveSeconds: 1 });
  const udp = await fakeNode(t, dc, 'ra.fleet1.test');
  const mqtt = await fakeNode(t, dc, 'rb.fleet1.test');
  const g = await requestNotifyGrant(mqtt.channel, mqtt.key, dcAt(dc), 'rb.fleet1.test', 300);
  t.equal(g.keepaliveSeconds, 300);
  void udp;
  await until('the UDP-mode node expired', () => dc.registry.registration('ra.fleet1.test') === undefined, 6000);
  t.ok(dc.registry.registration('rb.fleet1.test'), 'the MQTT-mode node is still registered after 3 × 1 s');
  // Registering again (after a move) keeps the longer interval.
  const again = await mqtt.channel.request('registrationRequest', { name: 'rb.fleet1.test', local: null, publicKey: dc.registry.registration('rb.fleet1.test')!.publicKey }, mqtt.key, dcAt(dc));
  t.equal((again.message.body as Body<'registrationResponse'>).keepaliveSeconds, 300, 'the registration answer says 300 s');
  t.equal(dc.registry.grant(mqtt.key.keyId)?.keyId, g.keyId, 'the grant persists in the DC state');
  const g2 = await requestNotifyGrant(mqtt.channel, mqtt.key, dcAt(dc), 'rb.fleet1.test', 600);
  t.equal(g2.keyId, g.keyId, 'asking again under the same Kntmdc keeps Kntmns (the MQTT session stays)');
  t.ok(g2.key.equals(g.key));
  t.equal(g2.keepaliveSeconds, 600, 'with the new interval');
  t.equal(ns.status().keys.length, 1, 'the NS holds it once');
});

t.test('DC + NS: an NS that restarted without its state gets Kdcns and the node key again', async (t) => {
  const ns = await startNs(t);
  const ports = { udp: ns.port, tls: ns.tlsPort, mqtt: ns.brokerPort! };
  const dc = await startDc(t, ns);
  const mn = await fakeNode(t, dc, 'ra.fleet1.test');
  const cn = await fakeNode(t, dc, 'rb.fleet1.test');
  await requestNotifyGrant(cn.channel, cn.key, dcAt(dc), 'rb.fleet1.test', 300);
  await ns.stop();
  const ns2 = await startNs(t, { ports });
  t.equal(ns2.status().keys.length, 0, 'the new NS holds nothing');
  const r = await direct(mn, dc, 'rb.fleet1.test');
  t.ok('routeId' in r, 'the route is made (CN’s mapping is alive here)');
  await until('the wake done', () => counters(dc).notifications + counters(dc).notificationsFailed > 0, 5000);
  const c = counters(dc);
  t.equal(c.nsKeyResent, 1, 'the DC handed the node key again after notRegistered');
  t.equal(c.notifications, 1, 'and the wake went out');
  t.equal(c.nsContacts, 2, 'after first contact again');
  t.equal(ns2.status().keys.length, 1);
});

t.test('NS state file: node keys survive a restart, so nodes reconnect with the same credentials', async (t) => {
  const statePath = join(mkdtempSync(join(tmp, 'ns-state-')), 'ns.json');
  const ns = await startNs(t, { statePath });
  const ports = { udp: ns.port, tls: ns.tlsPort, mqtt: ns.brokerPort! };
  const dc = await dcSide(t, ns);
  const k = { keyId: 0x77, key: Buffer.alloc(32, 0x77) };
  t.equal((await dc.give(k.keyId, k.key, 'rb.fleet1.test')).status, Status.ok);
  const { client } = await nodeClient(t, ns, grantFor(k.keyId, k.key));
  await ns.stop();
  await until('the session lost', () => !client.connected);
  const ns2 = await startNs(t, { statePath, ports });
  await until('the node back', () => client.connected, 8000);
  t.equal(client.counters.connects, 2);
  t.strictSame(ns2.status().keys.map((x) => x.node), ['rb.fleet1.test']);
  t.equal(statSync(statePath).mode & 0o777, 0o600, 'the state file is 0600');
});

t.test('NS state file that cannot be written: counted and logged, the NS goes on with the key in memory', async (t) => {
  // The state file's directory is a file: every write fails (as on a full or read-only disk).
  const blocker = join(mkdtempSync(join(tmp, 'ns-state-')), 'not-a-dir');
  writeFileSync(blocker, 'x');
  const ns = await startNs(t, { statePath: join(blocker, 'ns.json') });
  const dc = await dcSide(t, ns);
  const k = { keyId: 0x78, key: Buffer.alloc(32, 0x78) };
  t.equal((await dc.give(k.keyId, k.key, 'rb.fleet1.test')).status, Status.ok, 'the key distribution is answered');
  t.ok(ns.counters.stateWriteFailed >= 1, `write failures counted (${ns.counters.stateWriteFailed})`);
  t.strictSame(ns.status().keys.map((x) => x.node), ['rb.fleet1.test'], 'the key is held in memory');
  const { client } = await nodeClient(t, ns, grantFor(k.keyId, k.key));
  t.ok(client.connected, 'and the node connects with it');
});

// ---- Mosquitto as the broker ----------------------------------------------------------------------

t.test('Mosquitto with dynamic security: the same rules, enforced by the broker', { skip: mosquittoMissing() ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmp, 'mosquitto-'));
  const probe = createNetServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const m = writeMosquittoConfig(dir, { address: '127.0.0.1', port, certFile: nsCert.certFile, keyFile: nsCert.keyFile });
  const child = spawn('/usr/sbin/mosquitto', ['-c', m.configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    child.kill('SIGTERM');
  });
  await mosquittoReady(child);
  const url = `mqtts://127.0.0.1:${port}`;
  const ns = await startNs(t, { broker: { type: 'external', url, caFile: pki.caFile, username: m.adminUser, password: m.adminPassword, accessControl: 'dynsec', publicUrl: url } });
  const dc = await dcSide(t, ns);
  const a = { keyId: 0xa1, key: Buffer.alloc(32, 0xa1) };
  const b = { keyId: 0xb2, key: Buffer.alloc(32, 0xb2) };
  t.equal((await dc.give(a.keyId, a.key, 'ra.fleet1.test')).status, Status.ok);
  t.equal((await dc.give(b.keyId, b.key, 'rb.fleet1.test')).status, Status.ok);
  const wakes: Wake[] = [];
  const nodeA = new NotifyClient({ url, caFile: pki.caFile, keepaliveSeconds: 60, onWake: (w) => wakes.push(w), reconnectMs: 200 });
  t.teardown(() => nodeA.stop());
  nodeA.use(grantFor(a.keyId, a.key));
  await nodeA.ready();
  t.equal((await dc.notify('ra.fleet1.test', 31)).status, Status.ok);
  await until('a’s wake through Mosquitto', () => wakes.length === 1);
  t.equal(wakes[0]?.routeId, 31);

  await t.rejects(rawClient(t, url, { ...b, password: 'guess' }), /Not authorized|Bad username/i, 'a wrong password');
  const nodeB = await rawClient(t, url, b);
  t.equal(await granted(nodeB, notifyTopic(a.keyId)), 128, 'b may not subscribe to a’s topic');
  t.equal(await granted(nodeB, 'ntmobile/n/+'), 128, 'nor to a wildcard');
  t.equal(await granted(nodeB, notifyTopic(b.keyId)), 1, 'its own topic: yes');
  await nodeB.publishAsync(notifyTopic(a.keyId), sealNotification({ node: 'ra.fleet1.test', reason: 1, routeId: 99 }, a, Date.now()), { qos: 1 }).catch(() => undefined);
  await sleep(300);
  t.equal(nodeA.counters.received, 1, 'what b published reached nobody (the plugin denies publishing)');
  // A new key for a: the old client is deleted, and its session with it.
  t.equal((await dc.give(0xa3, Buffer.alloc(32, 0xa3), 'ra.fleet1.test')).status, Status.ok);
  await until('a’s old session closed', () => !nodeA.connected, 5000);
});
