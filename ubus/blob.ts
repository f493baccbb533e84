// The blob / blobmsg wire format of libubox, which ubus messages are made of: plain blob
// attributes (a 32-bit big-endian id_len header, payload, zero padding to 4 bytes) for the ubus
// message itself, and blobmsg attributes (the same header with the "extended" bit, then a
// 16-bit name length, the NUL-terminated name padded to 4, then the value) for method arguments
// and replies. Encodes plain JS values (with explicit typing where JS has no matching type) and
// decodes to JS values; malformed input is a UbusDecodeError naming what and where, never an
// out-of-range read or an endless loop (every attribute is at least 4 bytes, nesting is bounded).

/** A blob or blobmsg buffer could not be decoded. */
export class UbusDecodeError extends Error {
  override name = 'UbusDecodeError';
}

/** A JS value cannot be expressed as blobmsg (bad type, out of range, too large, too deep). */
export class UbusEncodeError extends Error {
  override name = 'UbusEncodeError';
}

const HEADER = 4;
const ALIGN = 4;
const EXTENDED = 0x80000000;
const ID_SHIFT = 24;
const ID_MASK = 0x7f;
const LEN_MASK = 0x00ffffff;
/** The largest raw length an attribute header can carry (24 bits, header included). */
export const BLOB_MAX_RAW_LEN = LEN_MASK;
/** Deeper nesting is refused both ways: ubus data from OpenWrt programs is a few levels deep. */
export const BLOBMSG_MAX_DEPTH = 64;

/** blobmsg value types (libubox enum blobmsg_type); BOOL shares INT8's code. */
export const BlobmsgType = {
  UNSPEC: 0,
  ARRAY: 1,
  TABLE: 2,
  STRING: 3,
  INT64: 4,
  INT32: 5,
  INT16: 6,
  INT8: 7,
  BOOL: 7,
  DOUBLE: 8,
} as const;
export type BlobmsgTypeCode = (typeof BlobmsgType)[keyof typeof BlobmsgType];

const TYPE_NAMES = ['unspec', 'array', 'table', 'string', 'int64', 'int32', 'int16', 'bool', 'double'];
/** Readable name of a blobmsg type code, for messages. */
export function blobmsgTypeName(type: number): string {
  return TYPE_NAMES[type] ?? `type ${type}`;
}

const FIXED_SIZE: Partial<Record<number, number>> = {
  [BlobmsgType.INT8]: 1,
  [BlobmsgType.INT16]: 2,
  [BlobmsgType.INT32]: 4,
  [BlobmsgType.INT64]: 8,
  [BlobmsgType.DOUBLE]: 8,
};

function pad(len: number): number {
  return (len + ALIGN - 1) & ~(ALIGN - 1);
}

/** Length of a blobmsg name header: 16-bit length, name, NUL, padded to 4. */
function nameHeaderLen(nameBytes: number): number {
  return pad(2 + nameBytes + 1);
}

// ---------------------------------------------------------------------------------------------
// Plain blob attributes

/** One attribute of a blob list; payload is a view into the decoded buffer (no copy). */
export interface BlobAttr {
  id: number;
  extended: boolean;
  payload: Buffer;
  /** Offset of the attribute's header, counted from the start of the outermost buffer. */
  offset: number;
}

/**
 * Splits a list of blob attributes (the payload of a container). `base` is where `buf` starts
 * in the outermost buffer, so that errors name absolute offsets; `what` prefixes the messages.
 */
export function readBlobAttrs(buf: Buffer, base = 0, what = 'blob'): BlobAttr[] {
  const attrs: BlobAttr[] = [];
  let off = 0;
  while (off < buf.length) {
    const remaining = buf.length - off;
    if (remaining < HEADER) {
      throw new UbusDecodeError(`${what}: truncated attribute header (${remaining} of ${HEADER} bytes) at offset ${base + off}`);
    }
    const idLen = buf.readUInt32BE(off);
    const rawLen = idLen & LEN_MASK;
    if (rawLen < HEADER) throw new UbusDecodeError(`${what}: attribute length ${rawLen} is shorter than its header at offset ${base + off}`);
    if (rawLen > remaining) throw new UbusDecodeError(`${what}: attribute length ${rawLen} exceeds buffer of ${remaining} at offset ${base + off}`);
    attrs.push({
      id: (idLen >>> ID_SHIFT) & ID_MASK,
      extended: (idLen & EXTENDED) !== 0,
      payload: buf.subarray(off + HEADER, off + rawLen),
      offset: base + off,
    });
    // the last attribute's padding may be missing: libubox stops at the end of the list too
    off += Math.min(pad(rawLen), remaining);
  }
  return attrs;
}

/**
 * Builds blob and blobmsg attributes into one growing buffer, the way libubox's blob_buf does:
 * containers are opened, filled and closed, and their lengths fixed up on close.
 */
export class BlobWriter {
  private buf: Buffer;
  private len = 0;

  constructor(initialSize = 256) {
    this.buf = Buffer.alloc(initialSize);
  }

  /** Reserves n zeroed bytes (padding included) and returns their offset. */
  private reserve(n: number): number {
    if (this.len + n > this.buf.length) {
      const grown = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
      this.buf.copy(grown, 0, 0, this.len);
      this.buf = grown;
    }
    const at = this.len;
    this.len += n;
    return at;
  }

  private setHeader(at: number, id: number, extended: boolean, rawLen: number): void {
    if (rawLen > BLOB_MAX_RAW_LEN) throw new UbusEncodeError(`blob: attribute of ${rawLen} bytes exceeds the 24-bit length field`);
    this.buf.writeUInt32BE(((extended ? EXTENDED : 0) | (id << ID_SHIFT) | rawLen) >>> 0, at);
  }

  /** A plain blob attribute. */
  put(id: number, payload: Uint8Array): void {
    const at = this.reserve(pad(HEADER + payload.length));
    this.setHeader(at, id, false, HEADER + payload.length);
    this.buf.set(payload, at + HEADER);
  }

  putU32(id: number, value: number): void {
    const at = this.reserve(HEADER + 4);
    this.setHeader(at, id, false, HEADER + 4);
    this.buf.writeUInt32BE(value >>> 0, at + HEADER);
  }

  putU8(id: number, value: number): void {
    const at = this.reserve(HEADER + ALIGN);
    this.setHeader(at, id, false, HEADER + 1);
    this.buf.writeUInt8(value & 0xff, at + HEADER);
  }

  putString(id: number, value: string): void {
    this.put(id, cString(value, 'blob string'));
  }

  /** Opens a plain container attribute; pass the returned token to close(). */
  open(id: number): number {
    const at = this.reserve(HEADER);
    this.setHeader(at, id, false, HEADER);
    return at;
  }

  /** Closes a container opened by open() or openField(): its length covers all it holds. */
  close(token: number): void {
    const idLen = this.buf.readUInt32BE(token);
    this.setHeader(token, (idLen >>> ID_SHIFT) & ID_MASK, (idLen & EXTENDED) !== 0, this.len - token);
  }

  /** A blobmsg attribute: extended header, name, then the payload. */
  putField(type: BlobmsgTypeCode, name: string, payload: Uint8Array): void {
    const at = this.openField(type, name);
    // reserve() may replace this.buf: take the offset first
    const dataAt = this.reserve(pad(payload.length));
    this.buf.set(payload, dataAt);
    this.setHeader(at, type, true, this.len - at - (pad(payload.length) - payload.length));
  }

  /** Opens a blobmsg table or array; close it with close(). */
  openField(type: BlobmsgTypeCode, name: string): number {
    const nameBytes = Buffer.from(name, 'utf8');
    if (nameBytes.includes(0)) throw new UbusEncodeError(`blobmsg: name ${JSON.stringify(name)} contains a NUL byte`);
    if (nameBytes.length > 0xffff) throw new UbusEncodeError(`blobmsg: name of ${nameBytes.length} bytes exceeds 65535`);
    const hdr = nameHeaderLen(nameBytes.length);
    const at = this.reserve(HEADER + hdr);
    this.setHeader(at, type, true, HEADER + hdr);
    this.buf.writeUInt16BE(nameBytes.length, at + HEADER);
    this.buf.set(nameBytes, at + HEADER + 2);
    return at;
  }

  /** The bytes written so far (a copy: the writer may be reused). */
  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

function cString(value: string, what: string): Buffer {
  if (value.includes('\0')) throw new UbusEncodeError(`${what} ${JSON.stringify(value.slice(0, 40))} contains a NUL character`);
  return Buffer.from(`${value}\0`, 'utf8');
}

// ---------------------------------------------------------------------------------------------
// blobmsg from JS values

/** A value with an explicit blobmsg type, for what plain JS values cannot say (int8, int16, int64 of a small number ...). */
export class BlobmsgTyped {
  constructor(
    readonly type: BlobmsgTypeCode,
    readonly value: unknown,
  ) {}
}

/**
 * Explicit typing. Integer widths accept the signed and the unsigned range of their size,
 * because ubus writes unsigned values (object ids) into int32 fields.
 */
export const blobmsg = {
  int8: (v: number) => new BlobmsgTyped(BlobmsgType.INT8, v),
  int16: (v: number) => new BlobmsgTyped(BlobmsgType.INT16, v),
  int32: (v: number) => new BlobmsgTyped(BlobmsgType.INT32, v),
  int64: (v: number | bigint) => new BlobmsgTyped(BlobmsgType.INT64, v),
  double: (v: number) => new BlobmsgTyped(BlobmsgType.DOUBLE, v),
  bool: (v: boolean) => new BlobmsgTyped(BlobmsgType.BOOL, v ? 1 : 0),
  string: (v: string) => new BlobmsgTyped(BlobmsgType.STRING, v),
  unspec: (v: Uint8Array = new Uint8Array(0)) => new BlobmsgTyped(BlobmsgType.UNSPEC, v),
  table: (v: Record<string, unknown>) => new BlobmsgTyped(BlobmsgType.TABLE, v),
  array: (v: unknown[]) => new BlobmsgTyped(BlobmsgType.ARRAY, v),
};

export interface BlobmsgEncodeOptions {
  /**
   * What a null table member becomes: 'unspec' (an empty unspec attribute, what `ubus call`
   * makes of JSON null and prints as null) or 'omit' (the key is left out). Null array
   * elements are always unspec, so that the positions of the others stay. Undefined members
   * are always left out, as JSON.stringify does.
   */
  nulls?: 'unspec' | 'omit';
}

const INT32_MIN = -0x80000000;
const INT32_MAX = 0x7fffffff;

function intRange(type: BlobmsgTypeCode, v: unknown, bits: number, name: string): number {
  if (typeof v !== 'number') throw new UbusEncodeError(`blobmsg: ${blobmsgTypeName(type)} "${name}" needs a number, got ${typeof v}`);
  const min = -(2 ** (bits - 1));
  const max = 2 ** bits - 1;
  if (!Number.isInteger(v) || v < min || v > max) throw new UbusEncodeError(`blobmsg: ${blobmsgTypeName(type)} "${name}" = ${v} is not an integer of ${bits} bits`);
  return v;
}

function int64Bytes(v: number | bigint, name: string): Buffer {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new UbusEncodeError(`blobmsg: int64 "${name}" = ${v} is not a safe integer (use a bigint)`);
  const big = BigInt(v);
  if (big < -(2n ** 63n) || big >= 2n ** 64n) throw new UbusEncodeError(`blobmsg: int64 "${name}" = ${big} is out of range`);
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, big));
  return b;
}

/** Writes one named value (name '' inside arrays). */
function writeValue(w: BlobWriter, name: string, value: unknown, depth: number, opts: BlobmsgEncodeOptions): void {
  if (depth > BLOBMSG_MAX_DEPTH) throw new UbusEncodeError(`blobmsg: nesting deeper than ${BLOBMSG_MAX_DEPTH} at "${name}"`);
  const typed = value instanceof BlobmsgTyped ? value : inferType(value, name);
  const v = typed.value;
  const b = Buffer.alloc(8);
  switch (typed.type) {
    case BlobmsgType.TABLE:
    case BlobmsgType.ARRAY: {
      const isArray = typed.type === BlobmsgType.ARRAY;
      if (isArray ? !Array.isArray(v) : !isPlainObject(v)) throw new UbusEncodeError(`blobmsg: ${blobmsgTypeName(typed.type)} "${name}" needs ${isArray ? 'an array' : 'a plain object'}`);
      const at = w.openField(typed.type, name);
      if (isArray) for (const item of v as unknown[]) writeValue(w, '', item ?? null, depth + 1, opts);
      else writeMembers(w, v as Record<string, unknown>, depth + 1, opts);
      w.close(at);
      return;
    }
    case BlobmsgType.STRING:
      if (typeof v !== 'string') throw new UbusEncodeError(`blobmsg: string "${name}" needs a string, got ${typeof v}`);
      w.putField(BlobmsgType.STRING, name, cString(v, `blobmsg: string "${name}"`));
      return;
    case BlobmsgType.INT8:
      b.writeUInt8(intRange(typed.type, v, 8, name) & 0xff);
      w.putField(typed.type, name, b.subarray(0, 1));
      return;
    case BlobmsgType.INT16:
      b.writeUInt16BE(intRange(typed.type, v, 16, name) & 0xffff);
      w.putField(typed.type, name, b.subarray(0, 2));
      return;
    case BlobmsgType.INT32:
      b.writeUInt32BE(intRange(typed.type, v, 32, name) >>> 0);
      w.putField(typed.type, name, b.subarray(0, 4));
      return;
    case BlobmsgType.INT64:
      if (typeof v !== 'number' && typeof v !== 'bigint') throw new UbusEncodeError(`blobmsg: int64 "${name}" needs a number or bigint`);
      w.putField(typed.type, name, int64Bytes(v, name));
      return;
    case BlobmsgType.DOUBLE:
      if (typeof v !== 'number') throw new UbusEncodeError(`blobmsg: double "${name}" needs a number`);
      b.writeDoubleBE(v);
      w.putField(typed.type, name, b);
      return;
    case BlobmsgType.UNSPEC:
      if (!(v instanceof Uint8Array)) throw new UbusEncodeError(`blobmsg: unspec "${name}" needs bytes`);
      w.putField(typed.type, name, v);
      return;
  }
}

function writeMembers(w: BlobWriter, obj: Record<string, unknown>, depth: number, opts: BlobmsgEncodeOptions): void {
  for (const [key, member] of Object.entries(obj)) {
    if (member === undefined) continue;
    if (member === null && opts.nulls === 'omit') continue;
    writeValue(w, key, member, depth, opts);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** The blobmsg type of a plain JS value: numbers become int32, int64 or double by value. */
function inferType(value: unknown, name: string): BlobmsgTyped {
  switch (typeof value) {
    case 'string':
      return new BlobmsgTyped(BlobmsgType.STRING, value);
    case 'boolean':
      return new BlobmsgTyped(BlobmsgType.BOOL, value ? 1 : 0);
    case 'bigint':
      return new BlobmsgTyped(BlobmsgType.INT64, value);
    case 'number':
      if (Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX) return new BlobmsgTyped(BlobmsgType.INT32, value);
      if (Number.isSafeInteger(value)) return new BlobmsgTyped(BlobmsgType.INT64, value);
      return new BlobmsgTyped(BlobmsgType.DOUBLE, value);
    case 'object':
      if (value === null) return new BlobmsgTyped(BlobmsgType.UNSPEC, new Uint8Array(0));
      if (Array.isArray(value)) return new BlobmsgTyped(BlobmsgType.ARRAY, value);
      if (value instanceof Uint8Array) return new BlobmsgTyped(BlobmsgType.UNSPEC, value);
      if (isPlainObject(value)) return new BlobmsgTyped(BlobmsgType.TABLE, value);
      throw new UbusEncodeError(`blobmsg: "${name}" is a ${value.constructor?.name ?? 'object'}, not a plain object, array or bytes`);
    default:
      throw new UbusEncodeError(`blobmsg: "${name}" is a ${typeof value}, which has no blobmsg type`);
  }
}

/** Writes the members of a table (no table header of its own), e.g. into an open container. */
export function writeBlobmsgTable(w: BlobWriter, obj: Record<string, unknown>, opts: BlobmsgEncodeOptions = {}): void {
  writeMembers(w, obj, 1, opts);
}

/** The blobmsg attributes of a table's members: what ubus carries as method arguments and replies. */
export function encodeBlobmsgTable(obj: Record<string, unknown>, opts: BlobmsgEncodeOptions = {}): Buffer {
  const w = new BlobWriter();
  writeBlobmsgTable(w, obj, opts);
  return w.finish();
}

// ---------------------------------------------------------------------------------------------
// blobmsg to JS values

/**
 * A decoded value: int8 (= bool) is a boolean, as `ubus` prints it; int16/int32/double are
 * numbers; int64 is a number when it is a safe integer, else a bigint; a string is cut at its
 * first NUL, as C reads it; unspec is null when empty, else its bytes.
 */
export type BlobmsgValue = string | number | bigint | boolean | null | Buffer | BlobmsgValue[] | { [key: string]: BlobmsgValue };

/** One decoded attribute, with the type it had on the wire (for policy checks). */
export interface BlobmsgField {
  name: string;
  type: BlobmsgTypeCode;
  value: BlobmsgValue;
  offset: number;
}

/**
 * Decodes a list of blobmsg attributes: the members of a table (names required) or the
 * elements of an array. `base` is the offset of `buf` in the outermost buffer, for messages.
 */
export function decodeBlobmsgFields(buf: Buffer, kind: 'table' | 'array', base = 0, depth = 1): BlobmsgField[] {
  if (depth > BLOBMSG_MAX_DEPTH) throw new UbusDecodeError(`blobmsg: nesting deeper than ${BLOBMSG_MAX_DEPTH} at offset ${base}`);
  return readBlobAttrs(buf, base, 'blobmsg').map((a) => decodeField(a, kind, depth));
}

function decodeField(a: BlobAttr, kind: 'table' | 'array', depth: number): BlobmsgField {
  let name = '';
  let data = a.payload;
  let dataOffset = a.offset + HEADER;
  if (a.extended) {
    if (a.payload.length < 2) throw new UbusDecodeError(`blobmsg: attribute of ${a.payload.length} bytes has no room for its name length at offset ${a.offset}`);
    const nameLen = a.payload.readUInt16BE(0);
    const hdr = nameHeaderLen(nameLen);
    if (hdr > a.payload.length) throw new UbusDecodeError(`blobmsg: name length ${nameLen} runs past the attribute (${a.payload.length} bytes) at offset ${a.offset}`);
    if (a.payload[2 + nameLen] !== 0) throw new UbusDecodeError(`blobmsg: name is not NUL-terminated at offset ${a.offset}`);
    name = a.payload.toString('utf8', 2, 2 + nameLen);
    data = a.payload.subarray(hdr);
    dataOffset += hdr;
  }
  if (kind === 'table' && name === '') throw new UbusDecodeError(`blobmsg: table member without a name at offset ${a.offset}`);
  if (a.id > BlobmsgType.DOUBLE) throw new UbusDecodeError(`blobmsg: unknown type ${a.id} of "${name}" at offset ${a.offset}`);
  const type = a.id as BlobmsgTypeCode;
  const want = FIXED_SIZE[type];
  if (want !== undefined && data.length !== want) {
    throw new UbusDecodeError(`blobmsg: ${blobmsgTypeName(type)} "${name}" has ${data.length} bytes, want ${want} at offset ${a.offset}`);
  }
  let value: BlobmsgValue;
  switch (type) {
    case BlobmsgType.TABLE:
      value = fieldsToObject(decodeBlobmsgFields(data, 'table', dataOffset, depth + 1));
      break;
    case BlobmsgType.ARRAY:
      value = decodeBlobmsgFields(data, 'array', dataOffset, depth + 1).map((f) => f.value);
      break;
    case BlobmsgType.STRING: {
      if (data.length === 0 || data[data.length - 1] !== 0) throw new UbusDecodeError(`blobmsg: string "${name}" is not NUL-terminated at offset ${a.offset}`);
      value = data.toString('utf8', 0, data.indexOf(0));
      break;
    }
    case BlobmsgType.INT8:
      value = data[0] !== 0;
      break;
    case BlobmsgType.INT16:
      value = data.readInt16BE(0);
      break;
    case BlobmsgType.INT32:
      value = data.readInt32BE(0);
      break;
    case BlobmsgType.INT64: {
      const big = data.readBigInt64BE(0);
      value = big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
      break;
    }
    case BlobmsgType.DOUBLE:
      value = data.readDoubleBE(0);
      break;
    case BlobmsgType.UNSPEC:
      value = data.length === 0 ? null : Buffer.from(data);
      break;
  }
  return { name, type, value, offset: a.offset };
}

/** Members to an object; a repeated name keeps its first value, as blobmsg_parse does. */
export function fieldsToObject(fields: BlobmsgField[]): { [key: string]: BlobmsgValue } {
  const obj: { [key: string]: BlobmsgValue } = {};
  for (const f of fields) {
    if (Object.hasOwn(obj, f.name)) continue;
    // defineProperty: a member named "__proto__" must stay data, not replace the prototype
    Object.defineProperty(obj, f.name, { value: f.value, enumerable: true, writable: true, configurable: true });
  }
  return obj;
}

/** Decodes the members of a table (e.g. the data of a ubus reply) to an object. */
export function decodeBlobmsgTable(buf: Buffer): { [key: string]: BlobmsgValue } {
  return fieldsToObject(decodeBlobmsgFields(buf, 'table'));
}
