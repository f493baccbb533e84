#!/usr/bin/env node
// The `ntmobile` command: subcommands for the node daemon and its tools.

import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { decodeSockaddr, formatEndpoint } from '../protocol/endpoint.js';
import { type Engine } from '../tunnel/engine.js';
import { ConfigError } from '../protocol/config.js';
import { packageVersion } from '../protocol/version.js';
import { loadStaticConfig } from './static-config.js';
import { startStaticTunnel } from './static-tunnel.js';
import { apiCall } from './api.js';
import { loadRouterConfig, type RouterConfig } from './config.js';
import { createLogger } from './log.js';
import { starterConfig } from './init.js';
import { preflight, PreflightError } from './preflight.js';
import { loadUciConfig } from './uci-config.js';
import { UbusApi } from './ubus-api.js';

/** Where OpenWrt's ubusd listens. */
const DEFAULT_UBUS_SOCKET = '/var/run/ubus/ubus.sock';
import { RouterDaemon } from './daemon.js';

const USAGE = `Usage: ntmobile <command> [options]

Commands:
  router --config FILE   Run the NTMobile node daemon for this router and its LAN
                         (login, registration, DNS hook, tunnels, LAN translation).
                         File format: docs/router.md
  router --uci CONFIG    The same, configured from UCI (/etc/config/CONFIG, normally
                         ntmobile; docs/openwrt.md). SIGHUP re-reads it.
  router … --check       Validate the configuration and exit (0 valid, 2 invalid).
  router … --verbose     Log the protocol sequence (as logLevel "debug").
  router … --ubus PATH   Publish the ubus object \`ntmobile\` on this ubusd socket (default with
                         --uci: /var/run/ubus/ubus.sock; docs/ubus.md).
  status                 The running daemon's state, registrations and counters.
  peers                  Tunnels: peer node, names and VIPs, path, bytes each way, last traffic.
  ping NAME [-c N]       Resolve NAME through NTMobile (sets up the tunnel) and ping its VIP.
  tunnel --config FILE   Bring up one node with static peers and keys (debugging, interop).
                         File format: docs/static-tunnel.md
  init [--name FQDN] [--email E]
                         Print a starter router config: every field with its default
                         (docs/router.md says what each means), e.g. > /etc/ntmobile/router.json
  --version              The package's version.
  help, --help, -h       This help (also after any command: ntmobile status --help).

Options for status, peers, ping (the API socket is root's: run them as root):
  --socket PATH          The daemon's API socket (default /var/run/ntmobile.sock).
  --json                 Print JSON instead of text.
  -c N                   (ping) Send N echo requests (default 3).

Options for tunnel:
  --config FILE          The node's configuration (JSON).
  --stats FILE           Write counters and per-peer traffic as JSON to FILE every second.
  --check                Validate the configuration and exit (0 valid, 2 invalid).
  --verbose              Print what the node sets up.
  -h, --help             This help.

Exit status: 0 done (router, tunnel: stopped by a signal); 1 failed (the daemon could not start
or answer; ping: no reply came back); 2 bad command line or configuration (nothing was started).

Signals: SIGINT/SIGTERM stop the node and remove its TUN device; SIGHUP reloads the router
daemon's configuration (an invalid one is logged and the running one stays); SIGUSR1 prints
counters.
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`ntmobile: ${message}\n`);
  process.exit(code);
}

function status(engine: Engine): object {
  return {
    counters: engine.counters.snapshot(),
    peers: [...engine.table.tunnels()].map((t) => ({
      name: t.name,
      endpoint: t.endpoint ? formatEndpoint(decodeSockaddr(t.endpoint, 0)) : null,
      ...t.stats,
    })),
  };
}

async function tunnel(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      stats: { type: 'string' },
      check: { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (!values.config) fail('tunnel: --config FILE is required (see ntmobile --help)');
  const config = loadStaticConfig(values.config);
  if (values.check) {
    process.stdout.write(`${values.config}: valid\n`);
    return;
  }
  const engine = await startStaticTunnel(config);
  const log = (msg: string) => values.verbose && process.stderr.write(`ntmobile: ${msg}\n`);
  log(`${config.tun.name} up (mtu ${config.tun.mtu}, ${config.tun.addresses.join(', ')}), udp port ${engine.socket.port}`);
  for (const p of config.peers) log(`peer ${p.name}: vips ${p.vips.join(', ')}, endpoint ${p.endpointText ?? '(learned)'}, ${p.suite}`);
  let statsTimer: NodeJS.Timeout | null = null;
  if (values.stats) {
    const path = values.stats;
    const write = () => writeFileSync(path, JSON.stringify(status(engine)));
    write();
    statsTimer = setInterval(write, 1000);
  }
  process.stdout.write(`ready ${config.tun.name} port ${engine.socket.port}\n`);
  const stop = () => {
    if (statsTimer) clearInterval(statsTimer);
    if (values.stats) writeFileSync(values.stats, JSON.stringify(status(engine)));
    engine.stop();
    log('stopped');
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(status(engine))}\n`));
}

async function router(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      uci: { type: 'string' },
      ubus: { type: 'string' },
      check: { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if ((values.config === undefined) === (values.uci === undefined)) fail('router: give --config FILE or --uci CONFIG (see ntmobile --help)');
  const source = values.uci !== undefined ? `/etc/config/${values.uci}` : values.config!;
  // A JSON config's messages start with its file name already; UCI ones name the UCI option.
  const where = values.uci !== undefined ? `${source}: ` : '';
  const load = (): RouterConfig => (values.uci !== undefined ? loadUciConfig(values.uci).config : loadRouterConfig(values.config!));
  let config: RouterConfig;
  try {
    config = load();
  } catch (e) {
    if (e instanceof ConfigError) fail(`${where}${e.message}; not started`);
    throw e;
  }
  if (values.check) {
    process.stdout.write(`${source}: valid\n`);
    return;
  }
  try {
    preflight(config);
  } catch (e) {
    if (e instanceof PreflightError) fail(`${e.message}; not started`, 1);
    throw e;
  }
  const logger = createLogger(values.verbose ? 'debug' : config.logLevel);
  let daemon = new RouterDaemon(config, logger);
  // On OpenWrt (--uci) the local API is also the ubus object `ntmobile` (docs/ubus.md); it
  // belongs to the process, so it stays published across an in-process restart of the daemon.
  const ubus =
    values.uci !== undefined || values.ubus !== undefined
      ? new UbusApi(
          values.ubus ?? DEFAULT_UBUS_SOCKET,
          {
            status: async () => daemon.status(),
            peers: async () => daemon.peers(),
            ping: (a) => daemon.ping(a),
            handover: async (a) => daemon.uplinkHint(a),
            reload: () => reload(),
          },
          (l) => logger.info(l),
        )
      : null;
  const attach = (d: RouterDaemon): void => {
    if (ubus !== null) d.onEvent = (type, data) => void ubus.event(type, data);
  };
  attach(daemon);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void Promise.all([daemon.stop(), ubus?.stop()]).then(() => process.exit(0));
  };
  // SIGHUP (procd's reload, `ubus call ntmobile reload`): an invalid new config is logged and the
  // running one stays; a change the daemon cannot take in place restarts it inside this process.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<object> => {
    const run = reloading.then(async () => {
      let next: RouterConfig;
      try {
        next = load();
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        logger.error(`reload: ${where}${e.message}; the running configuration stays`);
        throw new Error(`${where}${e.message}; the running configuration stays`);
      }
      if (values.verbose) next = { ...next, logLevel: 'debug' };
      const r = await daemon.reload(next);
      if (r.restart && !stopping) {
        logger.info(`reload: ${r.changed.join(', ')} changed: restarting the daemon`);
        await daemon.stop();
        logger.level = next.logLevel;
        daemon = new RouterDaemon(next, logger);
        attach(daemon);
        await daemon.start();
      }
      return r;
    });
    reloading = run.catch(() => undefined);
    return run;
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGHUP', () => void reload().catch(() => undefined));
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(daemon.status())}\n`));
  await ubus?.start();
  await daemon.start();
  // start() returns unregistered only when it gave up on its own (the AS refused the password).
  const started = daemon.status() as { state: string; error: string | null };
  process.stdout.write(started.state === 'ready' ? `ready ${config.name} port ${config.listen.port}\n` : `${started.state}: ${started.error}\n`);
}

async function client(command: 'status' | 'peers' | 'ping', argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string', default: '/var/run/ntmobile.sock' },
      json: { type: 'boolean', default: false },
      ...(command === 'ping' ? { count: { type: 'string', short: 'c', default: '3' } } : {}),
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: command === 'ping',
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const args: Record<string, unknown> = {};
  if (command === 'ping') {
    if (positionals.length !== 1) fail('ping: give one NAME');
    args.name = positionals[0];
    args.count = Number(values.count);
    if (!Number.isInteger(args.count) || (args.count as number) < 1) fail(`ping: -c ${String(values.count)}: want a whole number of at least 1`);
  }
  const result = await apiCall(values.socket, command, args);
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : formatResult(command, result));
  // Like ping(8): no reply at all is a failure a script can test for.
  if (command === 'ping' && (result as { received: number }).received === 0) process.exitCode = 1;
}

function formatResult(command: string, r: unknown): string {
  if (command === 'status') {
    const s = r as { state: string; error: string | null; name: string; dc: string | null; registered: { name: string; vip4: string; vip6: string; observed: { address: string; port: number } | null }[]; refused?: { name: string; reason: string; retries: number; retryAt: number }[] };
    const lines = [`${s.name}: ${s.state}${s.error ? ` (${s.error})` : ''}`, `DC: ${s.dc ?? '-'}`];
    for (const g of s.registered) lines.push(`  ${g.name}  ${g.vip4}  ${g.vip6}  seen by the DC as ${g.observed ? formatEndpoint(g.observed) : '-'}`);
    for (const f of s.refused ?? []) lines.push(`  ${f.name}  REFUSED: ${f.reason} (retried ${f.retries} times, next in ${Math.max(0, Math.round((f.retryAt - Date.now()) / 1000))} s)`);
    return `${lines.join('\n')}\n`;
  }
  if (command === 'peers') {
    const list = r as { node: string; names: Record<string, { vip4: string | null; vip6: string | null }>; path: string | null; route: string; txBytes: number; rxBytes: number; lastTx: number | null; lastRx: number | null }[];
    if (list.length === 0) return 'no tunnels\n';
    const ago = (t: number | null): string => (t === null ? 'never' : `${Math.round((Date.now() - t) / 1000)} s ago`);
    return list
      .map((p) => {
        const names = Object.entries(p.names).map(([n, v]) => `${n} (${[v.vip4, v.vip6].filter(Boolean).join(', ')})`);
        return `${p.node}  path ${p.path ?? '-'}  ${p.route}\n  names: ${names.join('; ')}\n  sent ${p.txBytes} B, received ${p.rxBytes} B, last traffic out ${ago(p.lastTx)}, in ${ago(p.lastRx)}\n`;
      })
      .join('');
  }
  const p = r as { name: string; vip: string; setupMs: number; sent: number; received: number; rttMs: number[] };
  return `${p.name} is ${p.vip} (resolved in ${p.setupMs} ms): ${p.received}/${p.sent} replies${p.rttMs.length ? `, rtt ${p.rttMs.join(' / ')} ms` : ''}\n`;
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'router':
      return router(rest);
    case 'status':
    case 'peers':
    case 'ping':
      return client(command, rest);
    case 'tunnel':
      return tunnel(rest);
    case 'init': {
      const { values } = parseArgs({ args: rest, options: { name: { type: 'string' }, email: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false } }, strict: true });
      process.stdout.write(values.help ? USAGE : `${JSON.stringify(starterConfig(values.name, values.email), null, 2)}\n`);
      return;
    }
    case '--version':
      process.stdout.write(`ntmobile (${packageVersion()})\n`);
      return;
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      fail(`unknown command "${command}" (see ntmobile --help)`);
  }
}

main().catch((e: Error) => {
  if (e instanceof ConfigError) fail(e.message);
  if ((e as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') fail(`${e.message} (see ntmobile --help)`);
  fail(e.message, 1);
});
