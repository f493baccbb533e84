// The servers' JSON config helpers (servers/dc/config.ts, servers/rs/config.ts,
// servers/ns/config.ts): every field checked, with an error that names it (`f` is the field's
// path prefix, e.g. "listen."); unknown fields are refused so that a typo does not silently fall
// back to a default.

/** A malformed command line or config: the commands exit with status 2. */
export class UsageError extends Error {}

/** A malformed config (a UsageError: exit status 2); the message names the field. */
export class ConfigError extends UsageError {
  override readonly name = 'ConfigError';
}

export function obj(v: unknown, f: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${f}: want an object`);
  return v as Record<string, unknown>;
}

export function str(o: Record<string, unknown>, k: string, f: string, def?: string): string {
  const v = o[k] ?? def;
  if (typeof v !== 'string' || !v) throw new ConfigError(`${f}${k}: want a string${def === undefined ? ' (required)' : ''}`);
  return v;
}

export function int(o: Record<string, unknown>, k: string, f: string, def: number, min: number, max: number): number {
  const v = o[k] ?? def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${f}${k}: ${JSON.stringify(v)} is not an integer in ${min}..${max}`);
  return v;
}

export function bool(o: Record<string, unknown>, k: string, f: string, def: boolean): boolean {
  const v = o[k] ?? def;
  if (typeof v !== 'boolean') throw new ConfigError(`${f}${k}: ${JSON.stringify(v)} is not true or false`);
  return v;
}

/** Refuses fields not in `keys`. */
export function known(o: Record<string, unknown>, keys: readonly string[], f: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new ConfigError(`${f}${k}: unknown setting (known: ${keys.join(', ')})`);
}

/** The config's top-level object, or a ConfigError for text that is not a JSON object. */
export function parseJsonObject(text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config: not valid JSON (${(e as Error).message})`);
  }
  return obj(v, 'config');
}
