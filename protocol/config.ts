// The one config loader of every program (router, static tunnel, DC, RS, NS, AS): reading the
// file, JSON syntax errors with line and column, field readers whose errors name the field's path
// (`lan.interface: unknown field (known: interfaces)`), unknown fields refused at every depth, and
// the file's name put in front of every message (`router.json: …`). Relative paths in a config
// are taken from the config file's folder, never from the working directory.
// It knows no program: router/ and servers/ build their parsers out of it.

import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** A malformed command line or config: the commands exit with status 2. */
export class UsageError extends Error {}

/** A malformed config (a UsageError: exit status 2); the message starts with the field's path. */
export class ConfigError extends UsageError {
  override readonly name: string = 'ConfigError';
}

export type Json = Record<string, unknown>;

export function obj(v: unknown, f: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${f}: ${v === undefined ? 'required (an object)' : 'want an object'}`);
  return v as Json;
}

export function str(o: Json, k: string, f: string, def?: string): string {
  const v = o[k] ?? def;
  if (typeof v !== 'string' || !v) throw new ConfigError(`${f}${k}: ${v === undefined ? 'required (a string)' : `${JSON.stringify(v)}: want a non-empty string`}`);
  return v;
}

export function int(o: Json, k: string, f: string, def: number, min: number, max: number): number {
  const v = o[k] ?? def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${f}${k}: ${JSON.stringify(v)} is not an integer in ${min}..${max}`);
  return v;
}

export function bool(o: Json, k: string, f: string, def: boolean): boolean {
  const v = o[k] ?? def;
  if (typeof v !== 'boolean') throw new ConfigError(`${f}${k}: ${JSON.stringify(v)} is not true or false`);
  return v;
}

export function strings(o: Json, k: string, f: string): string[] {
  const v = o[k] ?? [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new ConfigError(`${f}${k}: want a list of strings`);
  return v as string[];
}

/** Refuses fields not in `keys`, naming the ones it knows (`f` is the object's path prefix, e.g. "lan."). */
export function known(o: Json, keys: readonly string[], f: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new ConfigError(`${f}${k}: unknown field (known: ${keys.join(', ')})`);
}

/** The config's top-level object, or a ConfigError naming the line and column of a syntax error. */
export function parseJsonObject(text: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    const at = syntaxErrorOffset(text);
    const { line, column } = lineColumn(text, at);
    // V8 quotes the whole text in some messages; the line and column say where instead.
    const why = (e as Error).message.replace(/, ".*$/s, '').replace(/ in JSON at position \d+$/, '');
    throw new ConfigError(`line ${line}, column ${column}: not valid JSON (${why})`);
  }
  return obj(v, '(top level)');
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - (before.lastIndexOf('\n') + 1) + 1 };
}

/**
 * The offset of the first character JSON.parse refuses (V8 gives it only for some errors): a
 * small scanner of the same grammar, run only on text that already failed to parse.
 */
function syntaxErrorOffset(text: string): number {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const fail = (): never => {
    throw i;
  };
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') return void i++;
      for (;;) {
        ws();
        if (text[i] !== '"') fail();
        string();
        ws();
        if (text[i] !== ':') fail();
        i++;
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') return void i++;
        else fail();
      }
    } else if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') return void i++;
      for (;;) {
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') return void i++;
        else fail();
      }
    } else if (c === '"') string();
    else if (c !== undefined && /[-0-9]/.test(c)) {
      const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
      if (m === null) fail();
      i += m![0].length;
    } else {
      const lit = ['true', 'false', 'null'].find((l) => text.startsWith(l, i));
      if (lit === undefined) fail();
      i += lit!.length;
    }
  };
  const string = (): void => {
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text.charCodeAt(i) < 0x20) fail();
      i += text[i] === '\\' ? 2 : 1;
    }
    if (i >= text.length) fail();
    i++;
  };
  try {
    value();
    ws();
    return i < text.length ? i : text.length;
  } catch (at) {
    return Math.min(at as number, text.length);
  }
}

/** A file a config names: its field, its (absolute) path, and whether it is a secret (a private key, a password). */
export interface FileField {
  field: string;
  path: string;
  secret?: boolean;
}

/**
 * The files a config names are readable, and no secret is readable by group or others: checked
 * before anything starts, so that the error names the field instead of a raw errno later.
 */
export function checkFiles(files: readonly FileField[]): void {
  for (const { field, path, secret } of files) {
    let mode: number;
    try {
      accessSync(path, constants.R_OK);
      mode = statSync(path).mode;
    } catch (e) {
      throw new ConfigError(`${field}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    if (secret && (mode & 0o077) !== 0) throw new ConfigError(`${field}: ${path} has mode 0${(mode & 0o777).toString(8)}: group or others may read a secret; run \`chmod 600 ${path}\``);
  }
}

/**
 * Reads and parses a config file with `parse(text, folder)` and checks the files it names
 * (`files`); every ConfigError comes back with the file's name in front
 * (`router.json: lan.interface: unknown field …`).
 */
export function loadConfigFile<C>(path: string, parse: (text: string, baseDir: string) => C, files?: (config: C) => readonly FileField[]): C {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`${path}: cannot read the config: ${(e as Error).message}`);
  }
  try {
    const config = parse(text, dirname(resolve(path)));
    if (files) checkFiles(files(config));
    return config;
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`${path}: ${e.message}`);
    throw e;
  }
}
