// The AS's account store: one JSON file, mode 0600, rewritten atomically (temp file, fsync,
// rename, fsync of the directory) on every change, so a crash leaves either the old or the new
// file and never half of one. Passwords are kept as scrypt hashes that carry their own parameters
// (`scrypt$N$r$p$salt$hash`), so the cost can be raised later without breaking old accounts.
// The store re-reads the file when it changed on disk, so that `account …` commands take effect in
// a running AS without a restart.

import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

export interface Account {
  /** Lower-case: the login name. */
  email: string;
  /** `scrypt$N$r$p$salt_b64$hash_b64` */
  passwordHash: string;
  /** FQDNs, lower-case; the first is the node's own name (the `fqdn` of a login). */
  names: string[];
  /** The node's static X25519 public key, 32 bytes as base64url, or null if it has none yet. */
  publicKey: string | null;
  revoked: boolean;
  /** ISO 8601 */
  createdAt: string;
  /**
   * ISO 8601: when the operator last lifted the AS's lockout of the account (`account unlock`);
   * failed logins before it no longer count. Absent if never.
   */
  unlockedAt?: string;
}

export interface StoreOptions {
  /** Create an empty store if the file does not exist (the first `account add`). Default false. */
  create?: boolean;
  /** scrypt cost of new hashes, a power of two. Default 2^15; tests lower it. */
  scryptN?: number;
}

export class StoreError extends Error {
  override name = 'StoreError';
}

export const SCRYPT_N = 2 ** 15;
export const SCRYPT_R = 8;
export const SCRYPT_P = 1;
export const SALT_BYTES = 16;
export const HASH_BYTES = 32;
export const PASSWORD_MIN_LENGTH = 8;
/** scrypt's own input is unbounded; a limit keeps one login from hashing megabytes. */
export const PASSWORD_MAX_LENGTH = 1024;
export const PUBLIC_KEY_BYTES = 32;
/** Limits on parameters read back from the file, so a damaged store cannot ask for gigabytes. */
const MAX_SCRYPT_N = 2 ** 20;
const MAX_SCRYPT_R = 32;
const MAX_SCRYPT_P = 16;
const STORE_VERSION = 1;

const EMAIL = /^[^\s@]{1,64}@[^\s@]{1,253}$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const BASE64URL = /^[A-Za-z0-9_-]*$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

function scryptAsync(password: string, salt: Buffer, keylen: number, { N, r, p }: ScryptParams): Promise<Buffer> {
  // scrypt needs 128·r·(N + p) bytes; node:crypto's default limit (32 MiB) is exactly 128·N·r at
  // N=2^15, r=8 and so too small for the default parameters.
  const maxmem = 128 * r * (N + p) + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keylen, { N, r, p, maxmem }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 1 && (n & (n - 1)) === 0;
}

interface ParsedHash {
  params: ScryptParams;
  salt: Buffer;
  hash: Buffer;
}

/** Why `text` is not a usable hash, or its parts. */
function parseHash(text: string): ParsedHash | string {
  const parts = text.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return 'want scrypt$N$r$p$salt$hash';
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (!isPowerOfTwo(N) || N > MAX_SCRYPT_N) return `N=${parts[1]}: want a power of two up to 2^20`;
  if (!Number.isInteger(r) || r < 1 || r > MAX_SCRYPT_R) return `r=${parts[2]}: want 1..${MAX_SCRYPT_R}`;
  if (!Number.isInteger(p) || p < 1 || p > MAX_SCRYPT_P) return `p=${parts[3]}: want 1..${MAX_SCRYPT_P}`;
  if (!BASE64.test(parts[4]!) || !BASE64.test(parts[5]!)) return 'salt and hash: want base64';
  const salt = Buffer.from(parts[4]!, 'base64');
  const hash = Buffer.from(parts[5]!, 'base64');
  if (salt.length < SALT_BYTES) return `salt of ${salt.length} bytes, want at least ${SALT_BYTES}`;
  if (hash.length < HASH_BYTES) return `hash of ${hash.length} bytes, want at least ${HASH_BYTES}`;
  return { params: { N, r, p }, salt, hash };
}

export function normalizeEmail(email: string): string {
  const e = email.trim().toLowerCase();
  if (!EMAIL.test(e)) throw new StoreError(`email "${email}": want local@domain without spaces`);
  return e;
}

/** A DNS name, lower-case, without a trailing dot; at least two labels (a node's FQDN). */
export function normalizeName(name: string): string {
  const n = name.toLowerCase().replace(/\.$/, '');
  if (n.length > 253) throw new StoreError(`name "${name}": ${n.length} characters, at most 253`);
  const labels = n.split('.');
  if (labels.length < 2) throw new StoreError(`name "${name}": want a fully qualified name (node.domain)`);
  const bad = labels.find((l) => !DNS_LABEL.test(l));
  if (bad !== undefined) throw new StoreError(`name "${name}": label "${bad}": want 1-63 of a-z, 0-9, '-', not starting or ending with '-'`);
  return n;
}

export function checkPassword(password: string): void {
  if (password.length < PASSWORD_MIN_LENGTH) throw new StoreError(`password: ${password.length} characters, want at least ${PASSWORD_MIN_LENGTH}`);
  if (password.length > PASSWORD_MAX_LENGTH) throw new StoreError(`password: ${password.length} characters, at most ${PASSWORD_MAX_LENGTH}`);
}

/** A base64url X25519 public key (padding accepted and dropped), or an error naming what is wrong. */
export function normalizePublicKey(b64: string): string {
  const text = b64.trim().replace(/=+$/, '');
  if (!BASE64URL.test(text)) throw new StoreError(`public key "${b64}": want base64url (A-Z a-z 0-9 - _)`);
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.length !== PUBLIC_KEY_BYTES || bytes.toString('base64url') !== text) {
    throw new StoreError(`public key "${b64}": ${bytes.length} bytes, want ${PUBLIC_KEY_BYTES} (an X25519 public key)`);
  }
  return text;
}

function validateAccount(raw: unknown, where: string): Account {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new StoreError(`${where}: want an object`);
  const a = raw as Record<string, unknown>;
  const known = ['email', 'passwordHash', 'names', 'publicKey', 'revoked', 'createdAt', 'unlockedAt'];
  const unknown = Object.keys(a).find((k) => !known.includes(k));
  if (unknown !== undefined) throw new StoreError(`${where}.${unknown}: unknown field`);
  const field = <T>(name: string, ok: (v: unknown) => v is T, want: string): T => {
    if (!ok(a[name])) throw new StoreError(`${where}.${name}: want ${want}`);
    return a[name] as T;
  };
  const isString = (v: unknown): v is string => typeof v === 'string';
  const email = field('email', isString, 'a string');
  const passwordHash = field('passwordHash', isString, 'a string');
  const names = field('names', (v): v is unknown[] => Array.isArray(v), 'a list of names');
  const publicKey = field('publicKey', (v): v is string | null => v === null || typeof v === 'string', 'a string or null');
  const revoked = field('revoked', (v): v is boolean => typeof v === 'boolean', 'true or false');
  const createdAt = field('createdAt', isString, 'an ISO 8601 time');
  const normalized = (name: string, value: string, normalize: (v: string) => string): void => {
    let n: string;
    try {
      n = normalize(value);
    } catch (err) {
      throw new StoreError(`${where}.${name}: ${(err as Error).message}`);
    }
    if (n !== value) throw new StoreError(`${where}.${name}: "${value}" is not in normal form, want "${n}"`);
  };
  normalized('email', email, normalizeEmail);
  const bad = parseHash(passwordHash);
  if (typeof bad === 'string') throw new StoreError(`${where}.passwordHash: ${bad}`);
  names.forEach((n, i) => {
    if (typeof n !== 'string') throw new StoreError(`${where}.names[${i}]: want a string`);
    normalized(`names[${i}]`, n, normalizeName);
  });
  if (publicKey !== null) normalized('publicKey', publicKey, normalizePublicKey);
  if (Number.isNaN(Date.parse(createdAt))) throw new StoreError(`${where}.createdAt: "${createdAt}" is not a time`);
  const account: Account = { email, passwordHash, names: names as string[], publicKey, revoked, createdAt };
  if (a.unlockedAt !== undefined) {
    const unlockedAt = field('unlockedAt', isString, 'an ISO 8601 time');
    if (Number.isNaN(Date.parse(unlockedAt))) throw new StoreError(`${where}.unlockedAt: "${unlockedAt}" is not a time`);
    account.unlockedAt = unlockedAt;
  }
  return account;
}

function copy(a: Account): Account {
  return { ...a, names: [...a.names] };
}

/** The file's identity: a rename (ours or another process's) changes the inode. */
interface FileStamp {
  ino: number;
  mtimeMs: number;
  size: number;
}

export class AccountStore {
  private accounts = new Map<string, Account>();
  private stamp: FileStamp | null = null;
  /** Of new hashes, and of the stand-in hash for unknown emails. */
  private readonly params: ScryptParams;

  private constructor(
    readonly path: string,
    scryptN: number,
  ) {
    this.params = { N: scryptN, r: SCRYPT_R, p: SCRYPT_P };
  }

  /** Opens the store at `path`; refuses a file that group or others can read or write. */
  static open(path: string, options: StoreOptions = {}): AccountStore {
    const scryptN = options.scryptN ?? SCRYPT_N;
    if (!isPowerOfTwo(scryptN) || scryptN > MAX_SCRYPT_N) throw new StoreError(`scryptN ${scryptN}: want a power of two up to 2^20`);
    const store = new AccountStore(path, scryptN);
    if (!store.load()) {
      if (!options.create) throw new StoreError(`store ${path}: no such file (\`account add\` creates it)`);
      store.save();
    }
    return store;
  }

  /** Reads the file; false if it does not exist. */
  private load(): boolean {
    let fd: number;
    try {
      fd = openSync(this.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw new StoreError(`store ${this.path}: ${(err as Error).message}`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new StoreError(`store ${this.path}: not a regular file`);
      if ((st.mode & 0o077) !== 0) {
        const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
        throw new StoreError(`store ${this.path}: mode ${mode} lets group or others at the password hashes; run \`chmod 600 ${this.path}\``);
      }
      const text = readFileSync(fd, 'utf8');
      this.accounts = this.parse(text);
      this.stamp = { ino: st.ino, mtimeMs: st.mtimeMs, size: st.size };
      return true;
    } finally {
      closeSync(fd);
    }
  }

  private parse(text: string): Map<string, Account> {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new StoreError(`store ${this.path}: not valid JSON: ${(err as Error).message}`);
    }
    const d = doc as { version?: unknown; accounts?: unknown };
    if (typeof doc !== 'object' || doc === null || d.version !== STORE_VERSION || !Array.isArray(d.accounts)) {
      throw new StoreError(`store ${this.path}: want {"version": ${STORE_VERSION}, "accounts": [...]}`);
    }
    const accounts = new Map<string, Account>();
    const owners = new Map<string, string>();
    d.accounts.forEach((raw, i) => {
      const where = `store ${this.path}: accounts[${i}]`;
      let a: Account;
      try {
        a = validateAccount(raw, `accounts[${i}]`);
      } catch (err) {
        throw new StoreError(`store ${this.path}: ${(err as Error).message}`);
      }
      if (accounts.has(a.email)) throw new StoreError(`${where}.email: "${a.email}" appears twice`);
      for (const n of a.names) {
        const owner = owners.get(n);
        if (owner !== undefined) throw new StoreError(`${where}.names: "${n}" is also bound to ${owner}`);
        owners.set(n, a.email);
      }
      accounts.set(a.email, a);
    });
    return accounts;
  }

  /** Picks up changes that another process (the CLI) made to the file. */
  private refresh(): void {
    let st;
    try {
      st = statSync(this.path);
    } catch (err) {
      throw new StoreError(`store ${this.path}: ${(err as Error).message}`);
    }
    const s = this.stamp;
    if (s && s.ino === st.ino && s.mtimeMs === st.mtimeMs && s.size === st.size) return;
    if (!this.load()) throw new StoreError(`store ${this.path}: the file disappeared`);
  }

  private save(): void {
    const text = `${JSON.stringify({ version: STORE_VERSION, accounts: [...this.accounts.values()] }, null, 2)}\n`;
    const tmp = `${this.path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    let fd: number | null = null;
    try {
      fd = openSync(tmp, 'wx', 0o600);
      writeSync(fd, text);
      fsyncSync(fd);
      closeSync(fd);
      fd = null;
      renameSync(tmp, this.path);
      const dirFd = openSync(dirname(this.path), 'r');
      try {
        fsyncSync(dirFd);
      } finally {
        closeSync(dirFd);
      }
    } catch (err) {
      if (fd !== null) closeSync(fd);
      rmSync(tmp, { force: true });
      throw new StoreError(`store ${this.path}: cannot write: ${(err as Error).message}`);
    }
    const st = statSync(this.path);
    this.stamp = { ino: st.ino, mtimeMs: st.mtimeMs, size: st.size };
  }

  private mustGet(email: string): Account {
    const e = normalizeEmail(email);
    const a = this.accounts.get(e);
    if (!a) throw new StoreError(`account ${e}: no such account in ${this.path}`);
    return a;
  }

  async addAccount(email: string, password: string): Promise<Account> {
    const e = normalizeEmail(email);
    checkPassword(password);
    const salt = randomBytes(SALT_BYTES);
    const params = this.params;
    const hash = await scryptAsync(password, salt, HASH_BYTES, params);
    this.refresh();
    if (this.accounts.has(e)) throw new StoreError(`account ${e}: already exists in ${this.path}`);
    const account: Account = {
      email: e,
      passwordHash: `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64')}$${hash.toString('base64')}`,
      names: [],
      publicKey: null,
      revoked: false,
      createdAt: new Date().toISOString(),
    };
    this.accounts.set(e, account);
    this.save();
    return copy(account);
  }

  /** Adds names to an account (the first name ever bound is its FQDN); a name has one owner. */
  bindNames(email: string, names: string[]): Account {
    this.refresh();
    const a = this.mustGet(email);
    if (names.length === 0) throw new StoreError(`account ${a.email}: no names to bind`);
    const normalized = names.map(normalizeName);
    // The DC of the account's zone registers its names: a name elsewhere would make the AS hand
    // the key to another zone's DC, which refuses it, and every login would fail with a 502.
    const fqdn = a.names[0] ?? normalized[0]!;
    const zone = fqdn.slice(fqdn.indexOf('.') + 1);
    for (const n of normalized) {
      if (n !== fqdn && !n.endsWith(`.${fqdn}`) && n.slice(n.indexOf('.') + 1) !== zone) {
        throw new StoreError(`name ${n}: outside the account's zone ${zone} (its name ${fqdn}); bind a name in ${zone} or under ${fqdn}`);
      }
      const owner = [...this.accounts.values()].find((o) => o !== a && o.names.includes(n));
      if (owner) throw new StoreError(`name ${n}: already bound to ${owner.email}`);
    }
    for (const n of normalized) if (!a.names.includes(n)) a.names.push(n);
    this.save();
    return copy(a);
  }

  setPublicKey(email: string, b64: string): Account {
    this.refresh();
    const a = this.mustGet(email);
    a.publicKey = normalizePublicKey(b64);
    this.save();
    return copy(a);
  }

  /** Removes names from the account; its first name (its FQDN) only once it is the last. */
  unbindNames(email: string, names: string[]): Account {
    this.refresh();
    const a = this.mustGet(email);
    const normalized = names.map(normalizeName);
    for (const n of normalized) {
      if (!a.names.includes(n)) throw new StoreError(`account ${a.email}: name ${n} is not bound to it (it has ${a.names.join(', ') || 'none'})`);
    }
    const left = a.names.filter((n) => !normalized.includes(n));
    if (left.length > 0 && !left.includes(a.names[0]!)) {
      throw new StoreError(`account ${a.email}: ${a.names[0]} is its own name (the FQDN it logs in as); unbind the others (${left.join(', ')}) first`);
    }
    a.names = left;
    this.save();
    return copy(a);
  }

  /** Lifts the AS's lockout after failed logins: a running AS forgets the failures before now. */
  unlock(email: string): Account {
    this.refresh();
    const a = this.mustGet(email);
    a.unlockedAt = new Date().toISOString();
    this.save();
    return copy(a);
  }

  revoke(email: string): Account {
    this.refresh();
    const a = this.mustGet(email);
    a.revoked = true;
    this.save();
    return copy(a);
  }

  get(email: string): Account | null {
    this.refresh();
    let e: string;
    try {
      e = normalizeEmail(email);
    } catch {
      return null;
    }
    const a = this.accounts.get(e);
    return a ? copy(a) : null;
  }

  list(): Account[] {
    this.refresh();
    return [...this.accounts.values()].map(copy);
  }

  /**
   * The account if `password` is its password and it is not revoked, else null. Unknown accounts
   * cost one scrypt too, and the hash comparison is constant-time, so the answer's timing does not
   * tell which emails exist.
   */
  async verify(email: string, password: string): Promise<Account | null> {
    this.refresh();
    let account: Account | undefined;
    try {
      account = this.accounts.get(normalizeEmail(email));
    } catch {
      account = undefined;
    }
    const parsed = account ? parseHash(account.passwordHash) : null;
    // Unknown emails are checked against a random stand-in (as would be a hash that does not parse,
    // though load refuses those), so that every answer costs one scrypt.
    const target = parsed && typeof parsed !== 'string'
      ? parsed
      : { params: this.params, salt: randomBytes(SALT_BYTES), hash: Buffer.alloc(HASH_BYTES) };
    const candidate = password.length <= PASSWORD_MAX_LENGTH ? password : '';
    const derived = await scryptAsync(candidate, target.salt, target.hash.length, target.params);
    const match = timingSafeEqual(derived, target.hash);
    if (!match || !account || account.revoked || password.length > PASSWORD_MAX_LENGTH) return null;
    return copy(account);
  }
}
