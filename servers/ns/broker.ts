// The NS's MQTT broker (docs/ns.md): either embedded (aedes, in this process, over TLS with the
// operator's certificate) or an external Mosquitto that the NS reaches as an MQTT client. Either
// way the same rules hold:
//   - a node logs in with the credentials derived from its Kntmns (protocol/notify.ts): user name
//     = key ID, client ID = "ntm-" ‖ key ID, password = HMAC(Kntmns, …); nothing else gets in;
//   - it may subscribe to its own topic only, and may not publish at all;
//   - only the NS publishes, sealed payloads only (the broker never sees a key).
// Embedded, aedes's authenticate/authorizeSubscribe/authorizePublish/authorizeForward hooks
// enforce this. With Mosquitto, its dynamic-security plugin does: the NS (an admin client of the
// plugin) creates one broker client per Kntmns with a role of its own, "ntmobile-node-<key ID>",
// whose only ACL is `subscribeLiteral ntmobile/n/<key ID>` (the plugin's defaults deny publishing
// and every other subscription; Mosquitto 2.0's plugin does not substitute %u in ACLs, hence one
// role per node), and deletes both when the key is replaced or expires. With accessControl "none"
// the operator's broker decides who may subscribe; the payloads stay sealed, but any client it
// lets in could then learn when a node is woken (not what for, and it cannot forge a wake).

import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client } from 'aedes';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import { keyIdFromUsername, mqttClientId, mqttPassword, mqttUsername, notifyTopic } from '../../protocol/notify.js';

/** What the broker needs to know about one node's key. */
export interface BrokerNode {
  keyId: number;
  /** The derived password (mqttPassword(Kntmns)), never Kntmns itself. */
  password: string;
}

export class BrokerCounters {
  /** Node sessions accepted (CONNACK 0; embedded broker only). */
  connects = 0;
  /** CONNECTs refused, and TLS handshakes that failed (embedded broker only): unknown or expired key ID, wrong password, wrong client ID. */
  authFailures = 0;
  /** SUBSCRIBEs refused (SUBACK 0x80; embedded broker only): any topic but the client's own. */
  subscribeRefused = 0;
  /** PUBLISHes from clients (nodes never publish; embedded broker only): the client is disconnected. */
  publishRefused = 0;
  /** PINGREQs received (embedded broker only): the MQTT keepalive exchanges. */
  pings = 0;
  /** Notifications handed to the broker, and those it failed to take. */
  published = 0;
  publishErrors = 0;
  /** QoS 1 deliveries acknowledged by the node (embedded broker only). */
  delivered = 0;
}

export interface Broker {
  readonly counters: BrokerCounters;
  /** Where nodes connect (for the status); the config's publicUrl is what they are told. */
  readonly description: string;
  start(): Promise<void>;
  /** Lets a node in (or replaces its password when its key ID is reused). */
  addNode(n: BrokerNode): Promise<void>;
  /** Shuts a node out and drops its session. */
  removeNode(keyId: number): Promise<void>;
  publish(topic: string, payload: Buffer): Promise<void>;
  /** Connected node sessions (embedded: exact; external: null, the broker knows). */
  connectedNodes(): number | null;
  stop(): Promise<void>;
}

export interface EmbeddedBrokerOptions {
  address: string;
  port: number;
  cert: Buffer;
  key: Buffer;
  /** Longest MQTT keepalive a node may ask for (seconds); longer is refused at CONNECT. */
  maxKeepaliveSeconds: number;
  log?: (line: string) => void;
}

function authError(message: string, returnCode: number): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** aedes in this process, behind TLS (node:tls; no client certificates: nodes log in with passwords). */
export class EmbeddedBroker implements Broker {
  readonly counters = new BrokerCounters();
  private readonly nodes = new Map<number, BrokerNode>();
  /** The key ID each authenticated client logged in with. */
  private readonly clientKey = new WeakMap<Client, number>();
  private readonly live = new Map<number, Client>();
  private aedes: Aedes | null = null;
  private server: TlsServer | null = null;

  constructor(private readonly o: EmbeddedBrokerOptions) {}

  get description(): string {
    return `embedded (aedes) on ${this.o.address === '::' ? '*' : this.o.address}:${this.port}`;
  }

  get port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  async start(): Promise<void> {
    // Memory persistence and emitter (aedes's defaults): nothing outlives the process, which is
    // what we want: sessions are clean and notifications are only worth anything for seconds.
    const aedes = new Aedes({
      heartbeatInterval: 60_000,
      connectTimeout: 10_000,
      // A session without a keepalive, or with a longer one, could hold a dead TCP connection
      // (and its memory) for ever: refused at CONNECT.
      keepaliveLimit: this.o.maxKeepaliveSeconds,
      authenticate: (client, username, password, done) => this.authenticate(client, username, password, done),
      authorizeSubscribe: (client, sub, done) => {
        const keyId = this.clientKey.get(client);
        if (keyId !== undefined && sub.topic === notifyTopic(keyId)) return done(null, { ...sub, qos: sub.qos > 1 ? 1 : sub.qos });
        this.counters.subscribeRefused++;
        this.o.log?.(`mqtt: ${client.id} may not subscribe to ${sub.topic}`);
        done(null, null);
      },
      authorizePublish: (client, packet, done) => {
        // Only the NS publishes (aedes.publish bypasses this hook); a node that tries is dropped.
        this.counters.publishRefused++;
        this.o.log?.(`mqtt: ${client?.id ?? '?'} may not publish (${packet.topic})`);
        done(new Error('nodes may not publish'));
      },
      // A second fence: whatever a subscription matched, a client only ever gets its own topic.
      authorizeForward: (client, packet) => (packet.topic === notifyTopic(this.clientKey.get(client) ?? -1) ? packet : null),
    });
    await aedes.listen();
    aedes.on('ping', () => this.counters.pings++);
    aedes.on('ack', () => this.counters.delivered++);
    aedes.on('clientDisconnect', (client) => {
      const keyId = this.clientKey.get(client);
      if (keyId !== undefined && this.live.get(keyId) === client) this.live.delete(keyId);
    });
    aedes.on('clientError', () => undefined);
    aedes.on('connectionError', () => undefined);
    this.aedes = aedes;
    this.server = createTlsServer({ cert: this.o.cert, key: this.o.key, minVersion: 'TLSv1.2' }, (socket) => {
      socket.on('error', () => undefined);
      aedes.handle(socket);
    });
    this.server.on('tlsClientError', () => this.counters.authFailures++);
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.o.port, this.o.address === '::' ? undefined : this.o.address, () => resolve());
    });
  }

  private authenticate(client: Client, username: string | undefined, password: Buffer | undefined, done: (e: AuthenticateError | null, ok: boolean | null) => void): void {
    const keyId = keyIdFromUsername(username);
    const node = keyId === null ? undefined : this.nodes.get(keyId);
    const refuse = (why: string, code: number): void => {
      this.counters.authFailures++;
      this.o.log?.(`mqtt: CONNECT refused: ${why}`);
      done(authError(why, code), null);
    };
    if (keyId === null || node === undefined) return refuse(`user ${JSON.stringify(username ?? '')} is no live key`, 4);
    if (password === undefined || !sameSecret(password.toString('utf8'), node.password)) return refuse(`key ${mqttUsername(keyId)}: wrong password`, 4);
    if (client.id !== mqttClientId(keyId)) return refuse(`key ${mqttUsername(keyId)}: client ID ${JSON.stringify(client.id)}, want ${mqttClientId(keyId)}`, 2);
    this.clientKey.set(client, keyId);
    this.live.set(keyId, client);
    this.counters.connects++;
    done(null, true);
  }

  async addNode(n: BrokerNode): Promise<void> {
    const old = this.nodes.get(n.keyId);
    this.nodes.set(n.keyId, n);
    if (old !== undefined && old.password !== n.password) this.live.get(n.keyId)?.close();
  }

  async removeNode(keyId: number): Promise<void> {
    this.nodes.delete(keyId);
    const c = this.live.get(keyId);
    this.live.delete(keyId);
    c?.close();
  }

  publish(topic: string, payload: Buffer): Promise<void> {
    const aedes = this.aedes;
    if (aedes === null) return Promise.reject(new Error('broker is not running'));
    return new Promise((resolve, reject) => {
      aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false } as AedesPublishPacket, (e) => {
        if (e) {
          this.counters.publishErrors++;
          reject(e);
        } else {
          this.counters.published++;
          resolve();
        }
      });
    });
  }

  connectedNodes(): number {
    return this.live.size;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (this.aedes !== null) await new Promise<void>((r) => this.aedes!.close(() => r()));
    this.aedes = null;
    if (server !== null) await new Promise<void>((r) => server.close(() => r()));
  }
}

export interface ExternalBrokerOptions {
  url: string;
  /** CA for an mqtts:// URL (null: the system's). */
  caFile: string | null;
  username: string;
  password: string;
  /** "dynsec": manage node clients through Mosquitto's dynamic-security plugin; "none": the broker's own rules. */
  accessControl: 'dynsec' | 'none';
  log?: (line: string) => void;
  /** How long a dynamic-security command may take. */
  commandTimeoutMs?: number;
}

const DYNSEC_TOPIC = '$CONTROL/dynamic-security/v1';
const NS_ROLE = 'ntmobile-ns';
const nodeRole = (keyId: number): string => `ntmobile-node-${mqttUsername(keyId)}`;

interface DynsecResponse {
  command: string;
  error?: string;
  correlationData?: string;
  data?: { client?: { roles?: { rolename: string }[] } };
}

/** An external broker (Mosquitto): the NS is one of its clients. */
export class ExternalBroker implements Broker {
  readonly counters = new BrokerCounters();
  private client: MqttClient | null = null;
  private readonly waiting = new Map<string, (r: DynsecResponse) => void>();
  private seq = 0;

  constructor(private readonly o: ExternalBrokerOptions) {}

  get description(): string {
    return `external ${this.o.url} (${this.o.accessControl === 'dynsec' ? 'access control by dynamic security' : 'access control left to the broker'})`;
  }

  async start(): Promise<void> {
    const opts: IClientOptions = {
      protocolVersion: 4,
      clientId: `ntmobile-ns-${process.pid}`,
      username: this.o.username,
      password: this.o.password,
      clean: true,
      keepalive: 60,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      ...(this.o.caFile !== null ? { ca: readFileSync(this.o.caFile) } : {}),
      rejectUnauthorized: true,
    };
    const client = await connectAsync(this.o.url, opts);
    client.on('error', (e) => this.o.log?.(`mqtt broker: ${e.message}`));
    this.client = client;
    if (this.o.accessControl === 'dynsec') {
      client.on('message', (topic, payload) => {
        if (topic !== `${DYNSEC_TOPIC}/response`) return;
        let r: { responses?: DynsecResponse[] };
        try {
          r = JSON.parse(payload.toString('utf8')) as { responses?: DynsecResponse[] };
        } catch {
          return;
        }
        for (const x of r.responses ?? []) {
          const w = x.correlationData === undefined ? undefined : this.waiting.get(x.correlationData);
          if (w !== undefined) {
            this.waiting.delete(x.correlationData!);
            w(x);
          }
        }
      });
      await client.subscribeAsync(`${DYNSEC_TOPIC}/response`, { qos: 1 });
      // The NS's role: publishing on the node topics (the plugin's default ACL denies publishing).
      await this.command({ command: 'createRole', rolename: NS_ROLE, acls: [{ acltype: 'publishClientSend', topic: 'ntmobile/n/#', priority: 0, allow: true }] }, ['already exists']);
      await this.takeNsRole(client);
    }
  }

  /**
   * Gives the NS's own broker user the role that may publish on node topics. The plugin kicks a
   * client whose roles change (so that it reconnects under the new ACLs): the answer to that
   * command never reaches us, so we wait for the reconnection and look again.
   */
  private async takeNsRole(client: MqttClient): Promise<void> {
    const has = async (): Promise<boolean> => {
      const r = await this.command({ command: 'getClient', username: this.o.username });
      return (r.data?.client?.roles ?? []).some((x) => x.rolename === NS_ROLE);
    };
    if (await has()) return;
    const reconnected = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`dynamic security: no reconnection after taking role ${NS_ROLE}`)), 15_000);
      client.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.command({ command: 'addClientRole', username: this.o.username, rolename: NS_ROLE }).catch(() => undefined);
    await reconnected;
    // mqtt.js subscribes again on reconnection; give the SUBACK a moment before asking.
    await new Promise((r) => setTimeout(r, 200));
    if (!(await has())) throw new Error(`dynamic security: ${this.o.username} did not get role ${NS_ROLE}`);
  }

  /** One dynamic-security command; `tolerated` are error texts that mean "already so". */
  private command(cmd: Record<string, unknown>, tolerated: string[] = []): Promise<DynsecResponse> {
    const client = this.client;
    if (client === null) return Promise.reject(new Error('broker is not connected'));
    const id = `ns-${++this.seq}`;
    return new Promise<DynsecResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`dynamic security ${String(cmd.command)}: no answer within ${this.o.commandTimeoutMs ?? 5000} ms (is the plugin loaded, and is ${this.o.username} its admin?)`));
      }, this.o.commandTimeoutMs ?? 5000);
      this.waiting.set(id, (r) => {
        clearTimeout(timer);
        if (r.error === undefined || tolerated.some((t) => r.error!.toLowerCase().includes(t.toLowerCase()))) resolve(r);
        else reject(new Error(`dynamic security ${String(cmd.command)}: ${r.error}`));
      });
      client.publish(DYNSEC_TOPIC, JSON.stringify({ commands: [{ ...cmd, correlationData: id }] }), { qos: 1 }, (e) => {
        if (e) {
          clearTimeout(timer);
          this.waiting.delete(id);
          reject(e);
        }
      });
    });
  }

  async addNode(n: BrokerNode): Promise<void> {
    if (this.o.accessControl !== 'dynsec') return;
    const username = mqttUsername(n.keyId);
    const rolename = nodeRole(n.keyId);
    // A key ID seen before (an NS restart, a DC that distributes again): replace the client.
    await this.command({ command: 'deleteClient', username }, ['not found']);
    // Its own topic, literally: no wildcard, no other node's topic (the default denies the rest).
    await this.command({ command: 'createRole', rolename, acls: [{ acltype: 'subscribeLiteral', topic: notifyTopic(n.keyId), priority: 0, allow: true }] }, ['already exists']);
    await this.command({ command: 'createClient', username, password: n.password, clientid: mqttClientId(n.keyId), roles: [{ rolename }] });
  }

  async removeNode(keyId: number): Promise<void> {
    if (this.o.accessControl !== 'dynsec') return;
    // Deleting the client also disconnects its session (Mosquitto kicks clients it deletes).
    await this.command({ command: 'deleteClient', username: mqttUsername(keyId) }, ['not found']);
    await this.command({ command: 'deleteRole', rolename: nodeRole(keyId) }, ['not found']);
  }

  async publish(topic: string, payload: Buffer): Promise<void> {
    const client = this.client;
    if (client === null) throw new Error('broker is not connected');
    try {
      await client.publishAsync(topic, payload, { qos: 1, retain: false });
      this.counters.published++;
    } catch (e) {
      this.counters.publishErrors++;
      throw e;
    }
  }

  connectedNodes(): null {
    return null;
  }

  async stop(): Promise<void> {
    const c = this.client;
    this.client = null;
    for (const w of this.waiting.values()) w({ command: '?', error: 'stopping' });
    this.waiting.clear();
    if (c !== null) await c.endAsync(true).catch(() => undefined);
  }
}

/** The password a broker stores for a node (exported for tests and the NS). */
export function brokerNode(keyId: number, kntmns: Buffer): BrokerNode {
  return { keyId, password: mqttPassword(kntmns) };
}
