// nftables through the `nft` command (run with execFile, never a shell): load a rule set in one
// transaction, delete a table, list a table as JSON, read its named counters.
//
// Every function takes an optional `exec` that runs nft: the daemon, already inside its own network
// namespace, uses the default (execFile('nft', ...)); tests pass one that runs nft inside a lab host.
// Errors name the tables the command was about and carry nft's own message.

import { execFile } from 'node:child_process';

export type NftFamily = 'ip' | 'ip6' | 'inet' | 'arp' | 'bridge' | 'netdev';

/** What one nft invocation gave back; an NftExec resolves with it whatever the exit code. */
export interface NftResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `nft <args>` with `input` on stdin. */
export type NftExec = (args: string[], input?: string) => Promise<NftResult>;

export interface NftOptions {
  /** how to run nft (default: execFile('nft') in the current namespace) */
  exec?: NftExec;
}

/** The output of `nft -j list ...`. */
export interface NftJson {
  nftables: Record<string, unknown>[];
}

export interface NamedCounter {
  packets: number;
  bytes: number;
}

export class NftError extends Error {
  override name = 'NftError';
  constructor(
    /** the tables the command was about, e.g. ['inet ntmobile'] */
    readonly tables: string[],
    readonly args: string[],
    readonly result: NftResult,
  ) {
    const what = tables.length ? `table ${tables.join(', table ')}` : 'no table';
    super(`nft ${args.join(' ')} (${what}) failed with exit code ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`);
  }
}

const FAMILIES: readonly string[] = ['ip', 'ip6', 'inet', 'arp', 'bridge', 'netdev'];
const TABLE_NAME_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
/** `table <family> <name>` at the start of a line or after `delete`/`flush`/`add`: what a rule set touches */
const TABLE_REF_RE = /^\s*(?:(?:add|create|delete|flush)\s+)?table\s+(ip6?|inet|arp|bridge|netdev)\s+([A-Za-z][A-Za-z0-9_]*)/gm;
const MAX_OUTPUT = 64 * 1024 * 1024;

/** The default NftExec: `nft` from PATH in the current network namespace. */
export const execNft: NftExec = (args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile('nft', args, { maxBuffer: MAX_OUTPUT, encoding: 'utf8' }, (err, stdout, stderr) => {
      // a string code is a failure to run nft at all (ENOENT, output too large), not nft's exit code
      if (err && typeof err.code === 'string') {
        reject(new Error(`cannot run nft ${args.join(' ')}: ${err.message}`));
        return;
      }
      if (!err) resolve({ code: 0, stdout, stderr });
      else if (typeof err.code === 'number') resolve({ code: err.code, stdout, stderr });
      else resolve({ code: 1, stdout, stderr: `${stderr}(nft killed by ${err.signal})` });
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(input ?? '');
  });

/** A valid table name and family, or a TypeError that says which is wrong. */
export function checkTable(family: NftFamily, name: string): void {
  if (!FAMILIES.includes(family)) throw new TypeError(`nftables family "${family}" is not one of ${FAMILIES.join(', ')}`);
  if (!TABLE_NAME_RE.test(name)) throw new TypeError(`nftables table name "${name}": want a letter, then letters, digits or '_' (at most 64)`);
}

/**
 * The rule set text that replaces table <family> <name> by `body` (the statements inside its braces)
 * in one transaction: declaring the table first makes the delete valid when it does not exist yet, and
 * nft -f applies the whole file or nothing, so the old table stays if the new one is rejected.
 */
export function tableReplacement(family: NftFamily, name: string, body: string): string {
  checkTable(family, name);
  return `table ${family} ${name} {}\ndelete table ${family} ${name}\ntable ${family} ${name} {\n${body}}\n`;
}

async function run(args: string[], tables: string[], opts: NftOptions, input?: string): Promise<NftResult> {
  const result = await (opts.exec ?? execNft)(args, input);
  if (result.code !== 0) throw new NftError(tables, args, result);
  return result;
}

function tablesIn(text: string): string[] {
  return [...new Set([...text.matchAll(TABLE_REF_RE)].map((m) => `${m[1]} ${m[2]}`))];
}

/** Load a rule set with `nft -f -`: one transaction, all or nothing. */
export async function applyRuleset(text: string, opts: NftOptions = {}): Promise<void> {
  await run(['-f', '-'], tablesIn(text), opts, text);
}

/** Delete a table; nothing happens if it does not exist. */
export async function deleteTable(family: NftFamily, name: string, opts: NftOptions = {}): Promise<void> {
  checkTable(family, name);
  await run(['-f', '-'], [`${family} ${name}`], opts, `table ${family} ${name} {}\ndelete table ${family} ${name}\n`);
}

/** `nft -j list table <family> <name>`, parsed. Throws NftError if the table does not exist. */
export async function listTable(family: NftFamily, name: string, opts: NftOptions = {}): Promise<NftJson> {
  checkTable(family, name);
  const args = ['-j', 'list', 'table', family, name];
  const { stdout } = await run(args, [`${family} ${name}`], opts);
  try {
    return JSON.parse(stdout) as NftJson;
  } catch (e) {
    throw new Error(`nft ${args.join(' ')}: output is not JSON (${(e as Error).message}): ${stdout.slice(0, 200)}`);
  }
}

/** Whether table <family> <name> exists. */
export async function hasTable(family: NftFamily, name: string, opts: NftOptions = {}): Promise<boolean> {
  checkTable(family, name);
  const { stdout } = await run(['-j', 'list', 'tables', family], [`${family} ${name}`], opts);
  const list = (JSON.parse(stdout) as NftJson).nftables;
  return list.some((o) => (o['table'] as { name?: string } | undefined)?.name === name);
}

/** The named counters of a table, by name. */
export async function readCounters(family: NftFamily, name: string, opts: NftOptions = {}): Promise<Map<string, NamedCounter>> {
  const out = new Map<string, NamedCounter>();
  for (const o of (await listTable(family, name, opts)).nftables) {
    const c = o['counter'] as { name: string; packets: number; bytes: number } | undefined;
    if (c) out.set(c.name, { packets: c.packets, bytes: c.bytes });
  }
  return out;
}
