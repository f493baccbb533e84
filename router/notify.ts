// MQTT mode (docs/ns.md): instead of a UDP keepalive every 20 s that keeps the NAT mapping of
// the node's port open, the node keeps one MQTT session to the Notification Server and lets the
// mapping expire. When a tunnel waits for it, its DC asks the NS to wake it; the NS publishes a
// Notification sealed under Kntmns on the node's topic; the node opens it, checks it (AEAD, replay
// window, duplicate message IDs: the control channel's own checks) and sends a keepalive to its
// DC, which opens the mapping again; the DC sends the waiting Route Direction there at once.
//
// This module is what the daemon needs: `requestNotifyGrant` (Notify Request → Response under
// Kntmdc, after registration) and `NotifyClient` (the MQTT session, the checks, `onWake`).

import { readFileSync } from 'node:fs';
import type { IClientOptions, MqttClient } from 'mqtt';
import { ControlChannel, type RetransmitPolicy, type SendKey } from '../protocol/channel.js';
import { KeyClass, Status, statusName, type Body } from '../protocol/control.js';
import { frameControl } from '../protocol/demux.js';
import { encodeSockaddr } from '../protocol/endpoint.js';
import { mqttClientId, mqttPassword, mqttUsername, notifyTopic } from '../protocol/notify.js';

/** What the DC answered a Notify Request with: the node is in MQTT mode. */
export interface NotifyGrant {
  /** The NS's name and the broker URL it announced ('' if none). */
  ns: string;
  broker: string;
  /** Kntmns and its ID: MQTT user name, client ID, password and topic derive from them. */
  keyId: number;
  key: Buffer;
  expiresAt: number;
  /** The UDP keepalive interval the DC now expects (it expires the node after 3 of them). */
  keepaliveSeconds: number;
}

export class NotifyError extends Error {
  override readonly name = 'NotifyError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Asks the DC for MQTT mode, under Kntmdc on the node's control channel (after registration).
 * `mqttKeepaliveSeconds` is the MQTT keepalive the node will use: the DC grants a UDP keepalive
 * interval of about as long (between its own and its NS's maximum). Throws NotifyError when the
 * DC refuses (no NS configured: `unavailable`), RequestTimeout when it does not answer.
 */
export async function requestNotifyGrant(channel: ControlChannel, key: SendKey, dc: Buffer, name: string, mqttKeepaliveSeconds: number, policy?: RetransmitPolicy): Promise<NotifyGrant> {
  const answer = await channel.request('notifyRequest', { name, keepaliveSeconds: mqttKeepaliveSeconds }, key, dc, policy);
  const m = answer.message;
  if (m.type !== 'notifyResponse') throw new NotifyError(Status.badRequest, `notify request: answered with ${m.type}`);
  if (m.body.status !== Status.ok) throw new NotifyError(m.body.status, `notify request: ${statusName(m.body.status)}`);
  return { ns: m.body.ns, broker: m.body.broker, keyId: m.body.keyId, key: Buffer.from(m.body.key), expiresAt: m.body.expiresAt, keepaliveSeconds: m.body.keepaliveSeconds };
}

/** One accepted notification. */
export interface Wake extends Body<'notification'> {
  /** The NS's timestamp (its clock, ms) and when we opened it (ours). */
  sentAt: number;
  receivedAt: number;
}

export class NotifyCounters {
  /** MQTT sessions established (CONNACK 0 and our topic granted). */
  connects = 0;
  /** Connection attempts that failed (TCP, TLS, CONNACK refused), and sessions lost. */
  connectFailures = 0;
  disconnects = 0;
  /** The broker refused our subscription (SUBACK 0x80). */
  subscribeRefused = 0;
  /** Payloads received on our topic, and on any other (never, with a broker that keeps the rules). */
  received = 0;
  foreignTopic = 0;
  /** Notifications accepted and handed to onWake. */
  wakes = 0;
  /** Authenticated messages under Kntmns that are not notifications. */
  ignored = 0;
}

export interface NotifyClientOptions {
  /** The broker URL from the node's config; null: the one the grant names. */
  url: string | null;
  /** CA of the broker's certificate (the operator's); null: the system's. */
  caFile: string | null;
  /** MQTT keepalive (PINGREQ after this long without sending; the broker drops us after 1.5×). */
  keepaliveSeconds: number;
  onWake: (w: Wake) => void;
  /** The node's clock as its DC sees it (the replay window is ±30 s). */
  now?: () => number;
  log?: (line: string) => void;
  /** Wait between reconnection attempts (ms). */
  reconnectMs?: number;
}

/**
 * mqtt.js is loaded on first use: importing it costs a node process about 20 MB of RSS, which a
 * router that does not use MQTT mode (most, on 128 MB devices) should not pay.
 */
let mqttModule: Promise<typeof import('mqtt')> | null = null;
const loadMqtt = (): Promise<typeof import('mqtt')> => (mqttModule ??= import('mqtt'));

/** No reply ever goes back over MQTT; the channel only wants some sender address. */
const NO_SENDER = encodeSockaddr('::', 0);

export class NotifyClient {
  readonly counters = new NotifyCounters();
  /** Opens and checks notifications: AEAD under Kntmns, replay window, duplicate message IDs. */
  readonly channel: ControlChannel;
  private grant: NotifyGrant | null = null;
  private client: MqttClient | null = null;
  private subscribed = false;
  /** Bumped by every open() and by stop(): a connection made for an older one is dropped. */
  private generation = 0;
  private stopped = false;
  private readonly waiters: (() => void)[] = [];
  private readonly log: (line: string) => void;

  constructor(private readonly o: NotifyClientOptions) {
    this.log = o.log ?? (() => undefined);
    this.channel = new ControlChannel({
      send: () => undefined,
      keys: (cls, id) => (cls === KeyClass.ntmns && this.grant !== null && id === this.grant.keyId ? this.grant.key : undefined),
      onMessage: (m) => {
        if (m.message.type !== 'notification') {
          this.counters.ignored++;
          return;
        }
        this.counters.wakes++;
        this.log(`notify: woken for route ${m.message.body.routeId}`);
        this.o.onWake({ ...m.message.body, sentAt: m.envelope.timestamp, receivedAt: (this.o.now ?? Date.now)() });
      },
      ...(o.now ? { now: o.now } : {}),
    });
  }

  get connected(): boolean {
    return this.client?.connected === true && this.subscribed;
  }

  get topic(): string | null {
    return this.grant === null ? null : notifyTopic(this.grant.keyId);
  }

  /** Starts (or moves) the session to a grant's credentials; the same grant again changes nothing. */
  use(grant: NotifyGrant): void {
    const same = this.grant !== null && this.grant.keyId === grant.keyId && this.grant.key.equals(grant.key);
    this.grant = grant;
    if (same && this.generation > 0) return;
    this.open();
  }

  /** Drops the TCP session and connects again now: after an uplink change the old one is dead, and MQTT would notice only after 1.5 keepalives. */
  reconnect(): void {
    if (this.grant !== null) this.open();
  }

  /** Resolves once subscribed to our topic (or at once if we are). */
  ready(timeoutMs = 10_000): Promise<void> {
    if (this.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`notify: not subscribed within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.generation++;
    const c = this.client;
    this.client = null;
    this.subscribed = false;
    this.channel.close();
    if (c !== null) await c.endAsync(true).catch(() => undefined);
  }

  status(): object {
    return {
      connected: this.connected,
      broker: this.url(),
      keyId: this.grant?.keyId ?? null,
      topic: this.topic,
      expiresAt: this.grant?.expiresAt ?? null,
      keepaliveSeconds: this.o.keepaliveSeconds,
      counters: { ...this.counters, dropAuth: this.channel.counters.dropAuth, dropUnknownKey: this.channel.counters.dropUnknownKey, dropStale: this.channel.counters.dropStale, dropDuplicate: this.channel.counters.dropDuplicate, dropMalformed: this.channel.counters.dropMalformed },
    };
  }

  private url(): string | null {
    return this.o.url ?? (this.grant?.broker || null);
  }

  private open(): void {
    if (this.stopped) return;
    const grant = this.grant!;
    const url = this.url();
    if (url === null) {
      this.log('notify: no broker URL (neither in the config nor announced by the NS)');
      return;
    }
    const old = this.client;
    this.client = null;
    if (old !== null) void old.endAsync(true).catch(() => undefined);
    this.subscribed = false;
    const generation = ++this.generation;
    loadMqtt().then(
      (m) => {
        if (generation !== this.generation) return;
        try {
          this.connect(m.connect, grant, url);
        } catch (e) {
          // A CA file that cannot be read, a URL mqtt.js refuses: logged, never thrown at the daemon.
          this.counters.connectFailures++;
          this.log(`notify: ${url}: ${(e as Error).message}`);
        }
      },
      (e: Error) => this.log(`notify: cannot load mqtt: ${e.message}`),
    );
  }

  private connect(connect: (typeof import('mqtt'))['connect'], grant: NotifyGrant, url: string): void {
    const topic = notifyTopic(grant.keyId);
    const opts: IClientOptions = {
      protocolVersion: 4,
      clientId: mqttClientId(grant.keyId),
      username: mqttUsername(grant.keyId),
      password: mqttPassword(grant.key),
      // A clean session: nothing is worth keeping for us while we are away (a notification older
      // than the replay window is refused anyway), and the broker keeps no state per node.
      clean: true,
      keepalive: this.o.keepaliveSeconds,
      reconnectPeriod: this.o.reconnectMs ?? 5000,
      connectTimeout: 10_000,
      ...(this.o.caFile !== null ? { ca: readFileSync(this.o.caFile) } : {}),
      rejectUnauthorized: true,
    };
    const client = connect(url, opts);
    this.client = client;
    client.on('connect', () => {
      if (this.client !== client) return;
      client.subscribe(topic, { qos: 1 }, (e, granted) => {
        if (this.client !== client) return;
        if (e || !granted || granted.some((g) => g.qos === 128)) {
          this.counters.subscribeRefused++;
          this.log(`notify: the broker refused our topic ${topic}${e ? `: ${e.message}` : ''}`);
          return;
        }
        this.subscribed = true;
        this.counters.connects++;
        this.log(`notify: subscribed to ${topic} at ${url}`);
        for (const w of this.waiters.splice(0)) w();
      });
    });
    client.on('message', (t, payload) => {
      if (this.client !== client) return;
      if (t !== topic) {
        this.counters.foreignTopic++;
        return;
      }
      this.counters.received++;
      this.channel.receive(frameControl(payload), NO_SENDER);
    });
    client.on('error', (e) => {
      if (this.client !== client) return;
      this.counters.connectFailures++;
      this.log(`notify: ${url}: ${e.message}`);
    });
    client.on('close', () => {
      if (this.client !== client) return;
      if (this.subscribed) this.counters.disconnects++;
      this.subscribed = false;
    });
  }
}
