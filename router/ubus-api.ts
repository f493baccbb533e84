// The daemon's ubus object `ntmobile` (status, peers, ping, handover, reload) and its ubus
// events (ntmobile.*), over our own ubus client (ubus/client.ts). Arguments are checked against
// each method's policy before a handler runs: a wrong type, a missing required argument or an
// unknown one is UBUS_STATUS_INVALID_ARGUMENT; `ubus_rpc_session` (added by rpcd for LuCI) is
// ignored. A handler that throws is UBUS_STATUS_UNKNOWN_ERROR and a log line, never a crash.
// Replies are blobmsg tables: an array result is wrapped as {<method>: [...]}, null members are
// left out. Without ubusd (a plain Linux host) start() logs once and keeps trying in the
// background; the daemon runs on either way. See docs/ubus.md.

import { BlobmsgType, blobmsgTypeName, type BlobmsgField, type BlobmsgTypeCode } from '../ubus/blob.js';
import { UbusClient, UbusStatus, type UbusClientStats, type UbusReply, type UbusRequest } from '../ubus/client.js';

export type UbusApiMethod = 'status' | 'peers' | 'ping' | 'handover' | 'reload';
export type UbusApiHandler = (args: Record<string, unknown>) => Promise<unknown>;

interface ArgSpec {
  type: BlobmsgTypeCode;
  required?: boolean;
}

/** The methods of `ntmobile` and their arguments: the published signature and the checks. */
export const NTMOBILE_METHODS: Record<UbusApiMethod, Record<string, ArgSpec>> = {
  status: {},
  peers: {},
  ping: { name: { type: BlobmsgType.STRING, required: true }, count: { type: BlobmsgType.INT32 } },
  // a hint from OpenWrt's hotplug (ifup/ifdown of an interface)
  handover: { interface: { type: BlobmsgType.STRING }, action: { type: BlobmsgType.STRING }, device: { type: BlobmsgType.STRING } },
  reload: {},
};

export const UBUS_OBJECT = 'ntmobile';

/** rpcd adds the caller's session to every call made through it (LuCI, JSON-RPC). */
const IGNORED_ARGS = new Set(['ubus_rpc_session']);

/** The arguments as an object, or why they do not fit the method's policy. */
export function checkArgs(method: UbusApiMethod, fields: BlobmsgField[]): { args: Record<string, unknown> } | { error: string } {
  const spec = NTMOBILE_METHODS[method];
  const args: Record<string, unknown> = {};
  for (const f of fields) {
    if (IGNORED_ARGS.has(f.name)) continue;
    const s = Object.hasOwn(spec, f.name) ? spec[f.name] : undefined;
    const known = Object.keys(spec);
    if (s === undefined) return { error: `unknown argument "${f.name}" (${known.length > 0 ? `known: ${known.join(', ')}` : 'it takes none'})` };
    if (f.type !== s.type) return { error: `argument "${f.name}" is ${blobmsgTypeName(f.type)}, want ${blobmsgTypeName(s.type)}` };
    if (Object.hasOwn(args, f.name)) return { error: `argument "${f.name}" given twice` };
    args[f.name] = f.value;
  }
  for (const [name, s] of Object.entries(spec)) {
    if (s.required === true && !Object.hasOwn(args, name)) return { error: `argument "${name}" is required` };
  }
  return { args };
}

export class UbusApi {
  private readonly client: UbusClient;

  constructor(
    socketPath: string,
    private readonly handlers: Record<UbusApiMethod, UbusApiHandler>,
    private readonly log: (line: string) => void = () => undefined,
    options: { backoffMinMs?: number; backoffMaxMs?: number } = {},
  ) {
    this.client = new UbusClient(socketPath, { ...options, log });
    this.client.on('ready', () => this.log(`ubus: object ${UBUS_OBJECT} published on ${socketPath}`));
  }

  /** Connections, failed attempts, dropped messages: for status output and tests. */
  get stats(): Readonly<UbusClientStats> {
    return this.client.stats;
  }

  /** Published now (connected to ubusd and the object added). */
  get ready(): boolean {
    return this.client.ready;
  }

  /**
   * Registers the object and connects in the background: resolves at once, whether ubusd is
   * there or not. The object is published when ubusd answers and again after ubusd restarts.
   */
  async start(): Promise<void> {
    const methods = Object.fromEntries(
      (Object.keys(NTMOBILE_METHODS) as UbusApiMethod[]).map((m) => [
        m,
        {
          policy: Object.fromEntries(Object.entries(NTMOBILE_METHODS[m]).map(([arg, s]) => [arg, s.type])),
          handler: (req: UbusRequest) => this.answer(m, req),
        },
      ]),
    );
    await this.client.addObject(UBUS_OBJECT, methods);
    this.client.start();
  }

  /** Withdraws the object by closing the connection; final (a stopped UbusApi does not start again). */
  async stop(): Promise<void> {
    await this.client.close();
  }

  /**
   * Sends the ubus event `type` (e.g. ntmobile.handover), seen by `ubus listen`. Returns false
   * (and logs) when it could not be sent, e.g. without ubusd: events are not queued.
   */
  async event(type: string, data: Record<string, unknown>): Promise<boolean> {
    if (!this.client.ready) return false;
    try {
      await this.client.sendEvent(type, data, { nulls: 'omit' });
      return true;
    } catch (e) {
      this.log(`ubus: event ${type}: ${(e as Error).message}`);
      return false;
    }
  }

  private async answer(method: UbusApiMethod, req: UbusRequest): Promise<UbusReply> {
    const checked = checkArgs(method, req.fields);
    if ('error' in checked) {
      this.log(`ubus: ${UBUS_OBJECT} ${method}: ${checked.error}`);
      return { status: UbusStatus.INVALID_ARGUMENT };
    }
    let result: unknown;
    try {
      result = await this.handlers[method](checked.args);
    } catch (e) {
      this.log(`ubus: ${UBUS_OBJECT} ${method} failed: ${(e as Error)?.message ?? String(e)}`);
      return { status: UbusStatus.UNKNOWN_ERROR };
    }
    if (result === undefined || result === null) return {};
    // a ubus reply is a table: an array travels as the one member named after the method
    if (Array.isArray(result)) return { data: { [method]: result }, nulls: 'omit' };
    if (typeof result !== 'object') {
      this.log(`ubus: ${UBUS_OBJECT} ${method} returned a ${typeof result}, not a table`);
      return { status: UbusStatus.UNKNOWN_ERROR };
    }
    return { data: result as Record<string, unknown>, nulls: 'omit' };
  }
}
