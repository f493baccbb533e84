// The one way our servers run from the command line (`ntmobile-dc|rs|ns serve --config FILE
// [--status FILE] [--verbose] [--check]`, `--help`, `--version`): argument parsing, the config
// file read and checked (protocol/config.ts; `--check` stops there), a ready line, the status file every second, SIGINT/SIGTERM stop (removing what the server set
// up), SIGUSR1 prints the status; exit 2 for bad usage or config, 1 for anything else.

import { parseArgs } from 'node:util';
import { type FileField, loadConfigFile, UsageError } from '../protocol/config.js';
import { packageVersion } from '../protocol/version.js';
import { writeStateFile } from './state-file.js';

export interface Servable {
  start(): Promise<void>;
  stop(): Promise<void>;
  status(): object;
}

export interface ServeSpec<C, S extends Servable> {
  /** The program's name in messages, e.g. "ntmobile-rs". */
  program: string;
  usage: string;
  /** Parses the config text (paths relative to `baseDir`); throws a UsageError (or ConfigError). */
  parse: (text: string, baseDir: string) => C;
  create: (config: C & { verbose: boolean }) => S;
  /** The files the config names, checked before anything starts (readable, secrets 0600). */
  files: (config: C) => readonly FileField[];
  /** The config's port fields, to name the one whose port is in use. */
  ports: (config: C) => readonly { field: string; port: number }[];
  /** What follows "ready " once the server listens. */
  ready: (config: C, server: S) => string;
}

/**
 * A start error for a port already in use (`bind [::]:4500: EADDRINUSE`, `listen EADDRINUSE: …
 * :::4501`), with the config field of that port in front; any other error as it is.
 */
export function namePortInUse(e: Error, ports: readonly { field: string; port: number }[]): Error {
  if (!/EADDRINUSE/.test(e.message)) return e;
  const fields = ports.filter((p) => p.port !== 0 && new RegExp(`[:\\]]${p.port}(?!\\d)`).test(e.message)).map((p) => p.field);
  return new Error(`${fields.join(' or ') || 'a port'}: ${e.message}: in use by another program (\`ss -lnp\` shows which): stop it or choose another port`);
}

export function runServerCli<C, S extends Servable>(spec: ServeSpec<C, S>): void {
  serve(spec).catch((e: Error) => {
    process.stderr.write(`${spec.program}: ${e.message}\n`);
    process.exit(e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1);
  });
}

async function serve<C, S extends Servable>(spec: ServeSpec<C, S>): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(spec.usage);
    return;
  }
  if (command === '--version') {
    process.stdout.write(`${spec.program} (${packageVersion()})\n`);
    return;
  }
  if (command !== 'serve') throw new UsageError(`unknown command "${command}" (see ${spec.program} --help)`);
  const { values } = parseArgs({
    args: rest,
    options: {
      config: { type: 'string' },
      status: { type: 'string' },
      verbose: { type: 'boolean', default: false },
      check: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(spec.usage);
    return;
  }
  if (!values.config) throw new UsageError('serve: --config FILE is required');
  const config = loadConfigFile(values.config, spec.parse, spec.files);
  if (values.check) {
    process.stdout.write(`${values.config}: valid\n`);
    return;
  }
  const server = spec.create({ ...config, verbose: values.verbose });
  await server.start().catch((e: Error) => Promise.reject(namePortInUse(e, spec.ports(config))));
  process.stdout.write(`ready ${spec.ready(config, server)}\n`);
  const writeStatus = (): void => {
    // Replaced whole: a reader never sees a half-written file.
    if (values.status) writeStateFile(values.status, JSON.stringify(server.status()), { durable: false });
  };
  const timer = values.status ? setInterval(writeStatus, 1000) : null;
  writeStatus();
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    if (timer) clearInterval(timer);
    writeStatus();
    void server.stop().then(
      () => process.exit(0),
      (e: Error) => {
        process.stderr.write(`${spec.program}: stop: ${e.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(server.status())}\n`));
}
