#!/usr/bin/env node
// The AS's command: `serve` runs the Account Server from a JSON config, `account …` administers
// the account store file. The admin commands never load the key-distribution module (it talks to
// DCs over mutual TLS and is only needed to serve).

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, int, known, loadConfigFile, obj, parseJsonObject, str, UsageError } from '../../protocol/config.js';
import { packageVersion } from '../../protocol/version.js';
import type { KeyDistributorOptions } from './key-distribution.js';
import { AsServer, type LoginLimits } from './server.js';
import { namePortInUse } from '../serve.js';
import { checkOwnCertificate, tlsFileFields } from '../tls.js';
import { AccountStore, StoreError, type Account } from './store.js';

const USAGE = `Usage: node dist/servers/as/cli.js <command> [options]

Commands:
  serve --config FILE [--check]            Run the Account Server (--check: validate the config
                                           and exit; relative paths are relative to the config).
  account add --store F --email E [--password-file F]
                                           Add an account; the password comes from the file, or
                                           else from stdin (never from a terminal, which would echo
                                           it). Creates the store (mode 0600) if it does not exist.
  account bind --store F --email E --name FQDN [--name FQDN ...]
                                           Bind names to an account; the first name it ever gets is
                                           its FQDN, which names its DC; the others must be in its
                                           zone or under it. A name has one owner.
  account unbind --store F --email E --name FQDN [--name FQDN ...]
                                           Remove names from an account (its own name, the first,
                                           only when it is the last).
  account unlock --store F --email E       Lift the lockout after failed logins (5 in 15 min by
                                           default): a running AS forgets them at once.
  account key --store F --email E --public-key B64
                                           Set the node's X25519 public key (32 bytes, base64url).
  account revoke --store F --email E       Refuse all further logins of the account.
  account list --store F [--json]          Show the accounts (never the password hashes).

Options:
  -h, --help                               This help (also after any command).
  --version                                The package's version.
  --verbose                                (serve) Log every login outcome as JSON lines on stderr.

Config of serve (JSON):
  {
    "listen": { "host": "::", "port": 8443 },
    "cert": "/etc/ntmobile/as.crt", "key": "/etc/ntmobile/as.key",
    "store": "/var/lib/ntmobile/accounts.json",
    "keyLifetimeSeconds": 86400,
    "limits": { "accountFailures": 5, "accountWindowSeconds": 900,
                "sourceRequests": 20, "sourceWindowSeconds": 60, "maxTracked": 50000 },
    "keyDistribution": { "ca": "/etc/ntmobile/ca.crt", "cert": "/etc/ntmobile/as.crt",
                         "key": "/etc/ntmobile/as.key", "resolver": "192.0.2.53",
                         "dc": { "example.net": "dc.example.net:4501" } }
  }
  keyLifetimeSeconds, limits, keyDistribution.resolver and keyDistribution.dc are optional.

Exit status: 0 done, 1 failed, 2 usage error.
`;

interface AsConfig {
  listen: { host: string; port: number };
  cert: string;
  key: string;
  store: string;
  keyLifetimeSeconds: number;
  limits: Partial<LoginLimits>;
  keyDistribution: KeyDistributorOptions;
}

const LIMITS = ['accountFailures', 'accountWindowSeconds', 'sourceRequests', 'sourceWindowSeconds', 'maxTracked'] as const;

/** Checks a config document; errors name the field, e.g. `listen.port: 70000 is not an integer in 0..65535`. */
function parseAsConfig(text: string, base: string): AsConfig {
  const doc = parseJsonObject(text);
  const path = (p: string): string => resolve(base, p);
  known(doc, ['listen', 'cert', 'key', 'store', 'keyLifetimeSeconds', 'limits', 'keyDistribution'], '');
  const listen = obj(doc.listen, 'listen');
  known(listen, ['host', 'port'], 'listen.');
  const listenAt = { host: str(listen, 'host', 'listen.', '::'), port: int(listen, 'port', 'listen.', 8443, 0, 65535) };
  const limitsIn = obj(doc.limits ?? {}, 'limits');
  known(limitsIn, LIMITS, 'limits.');
  const limits: Partial<LoginLimits> = {};
  for (const k of LIMITS) if (limitsIn[k] !== undefined) limits[k] = int(limitsIn, k, 'limits.', 1, 1, Number.MAX_SAFE_INTEGER);
  const kd = obj(doc.keyDistribution, 'keyDistribution');
  known(kd, ['ca', 'cert', 'key', 'resolver', 'dc'], 'keyDistribution.');
  const keyDistribution: KeyDistributorOptions = {
    caFile: path(str(kd, 'ca', 'keyDistribution.')),
    certFile: path(str(kd, 'cert', 'keyDistribution.')),
    keyFile: path(str(kd, 'key', 'keyDistribution.')),
  };
  if (kd.resolver !== undefined) keyDistribution.resolver = str(kd, 'resolver', 'keyDistribution.');
  if (kd.dc !== undefined) {
    const dc = obj(kd.dc, 'keyDistribution.dc');
    for (const [domain, target] of Object.entries(dc)) {
      if (typeof target !== 'string' || !/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/.test(target)) throw new ConfigError(`keyDistribution.dc.${domain}: ${JSON.stringify(target)}: want "host:port" or "[v6]:port"`);
    }
    keyDistribution.dcOverride = dc as Record<string, string>;
  }
  return {
    listen: listenAt,
    cert: path(str(doc, 'cert', '')),
    key: path(str(doc, 'key', '')),
    store: path(str(doc, 'store', '')),
    keyLifetimeSeconds: int(doc, 'keyLifetimeSeconds', '', 86400, 60, 86400 * 365),
    limits,
    keyDistribution,
  };
}

function readFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${what} ${path}: ${(err as Error).message}`);
  }
}

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, verbose: { type: 'boolean', default: false }, check: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
    strict: true,
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values.config) throw new UsageError('serve: --config FILE is required');
  const config = loadConfigFile(values.config, parseAsConfig, (c) => [
    { field: 'cert', path: c.cert },
    { field: 'key', path: c.key, secret: true },
    ...tlsFileFields(c.keyDistribution, 'keyDistribution.'),
  ]);
  if (values.check) return void process.stdout.write(`${values.config}: valid\n`);
  // The DCs take Key Distribution only from a certificate with role as.
  checkOwnCertificate(config.keyDistribution.certFile, null, 'as', 'keyDistribution.cert');
  const store = AccountStore.open(config.store);
  const { makeKeyDistributor } = await import('./key-distribution.js');
  const server = new AsServer({
    host: config.listen.host,
    port: config.listen.port,
    cert: readFile(config.cert, 'cert'),
    key: readFile(config.key, 'key'),
    store,
    distributeKey: makeKeyDistributor(config.keyDistribution),
    limits: config.limits,
    keyLifetimeSeconds: config.keyLifetimeSeconds,
    log: (event) => values.verbose && process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`),
  });
  const { port } = await server.start().catch((e: Error) => Promise.reject(namePortInUse(e, [{ field: 'listen.port', port: config.listen.port }])));
  process.stdout.write(`ready port ${port}\n`);
  const stop = () => void server.stop().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGUSR1', () => process.stderr.write(`${JSON.stringify(server.counters.snapshot())}\n`));
}

async function readPassword(file: string | undefined): Promise<string> {
  let text: string;
  if (file !== undefined) {
    text = readFile(file, 'password file').toString('utf8');
  } else {
    if (process.stdin.isTTY) throw new UsageError('account add: give the password with --password-file F or on stdin (e.g. < F); it is not read from a terminal, which would echo it');
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    text = Buffer.concat(chunks).toString('utf8');
  }
  // The one line ending that editors and `echo` add is not part of the password.
  return text.replace(/\r?\n$/, '');
}

function describe(a: Account): string {
  const state = a.revoked ? 'revoked' : 'active';
  return `${a.email}\t${state}\t${a.names.join(',') || '-'}\t${a.publicKey ?? '-'}\t${a.createdAt}`;
}

async function account(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === '-h' || sub === '--help') return void process.stdout.write(USAGE);
  const { values } = parseArgs({
    args: rest,
    options: {
      store: { type: 'string' },
      email: { type: 'string' },
      'password-file': { type: 'string' },
      name: { type: 'string', multiple: true },
      'public-key': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return void process.stdout.write(USAGE);
  const allowed: Record<string, string[]> = {
    add: ['store', 'email', 'password-file'],
    bind: ['store', 'email', 'name'],
    unbind: ['store', 'email', 'name'],
    unlock: ['store', 'email'],
    key: ['store', 'email', 'public-key'],
    revoke: ['store', 'email'],
    list: ['store', 'json'],
  };
  if (sub === undefined || !(sub in allowed)) throw new UsageError(`account: want one of ${Object.keys(allowed).join(', ')}, got ${sub ?? 'nothing'}`);
  const given = Object.keys(values).filter((k) => k !== 'help' && !(k === 'json' && !values.json));
  const stray = given.find((k) => !allowed[sub]!.includes(k));
  if (stray !== undefined) throw new UsageError(`account ${sub}: --${stray} does not apply`);
  const need = (v: string | undefined, flag: string): string => {
    if (v === undefined) throw new UsageError(`account ${sub}: --${flag} is required`);
    return v;
  };
  const storePath = need(values.store, 'store');
  switch (sub) {
    case 'add': {
      const email = need(values.email, 'email');
      const password = await readPassword(values['password-file']);
      const a = await AccountStore.open(storePath, { create: true }).addAccount(email, password);
      process.stdout.write(`added ${a.email}\n`);
      return;
    }
    case 'bind': {
      const email = need(values.email, 'email');
      if (!values.name || values.name.length === 0) throw new UsageError('account bind: --name FQDN is required');
      const a = AccountStore.open(storePath).bindNames(email, values.name);
      process.stdout.write(`${a.email}: ${a.names.join(', ')}\n`);
      return;
    }
    case 'unbind': {
      const email = need(values.email, 'email');
      if (!values.name || values.name.length === 0) throw new UsageError('account unbind: --name FQDN is required');
      const a = AccountStore.open(storePath).unbindNames(email, values.name);
      process.stdout.write(`${a.email}: ${a.names.join(', ') || 'no names'}\n`);
      return;
    }
    case 'unlock': {
      const a = AccountStore.open(storePath).unlock(need(values.email, 'email'));
      process.stdout.write(`unlocked ${a.email}\n`);
      return;
    }
    case 'key': {
      const a = AccountStore.open(storePath).setPublicKey(need(values.email, 'email'), need(values['public-key'], 'public-key'));
      process.stdout.write(`${a.email}: public key ${a.publicKey}\n`);
      return;
    }
    case 'revoke': {
      const a = AccountStore.open(storePath).revoke(need(values.email, 'email'));
      process.stdout.write(`revoked ${a.email}\n`);
      return;
    }
    case 'list': {
      const accounts = AccountStore.open(storePath).list();
      if (values.json) {
        const shown = accounts.map(({ passwordHash: _hidden, ...rest }) => rest);
        process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
      } else {
        process.stdout.write(`email\tstate\tnames\tpublic key\tcreated\n${accounts.map(describe).join('\n')}${accounts.length ? '\n' : ''}`);
      }
    }
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    if (command === undefined) process.exitCode = 2;
    return;
  }
  if (command === '--version') return void process.stdout.write(`ntmobile-as (${packageVersion()})\n`);
  if (command === 'serve') return serve(rest);
  if (command === 'account') return account(rest);
  throw new UsageError(`unknown command "${command}" (serve, account; see --help)`);
}

main(process.argv.slice(2)).catch((err: Error) => {
  const usage = err instanceof UsageError || (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
  process.stderr.write(`ntmobile-as: ${err instanceof StoreError || usage ? '' : `${err.name}: `}${err.message}\n`);
  process.exit(usage ? 2 : 1);
});
