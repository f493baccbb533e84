// A thin rtnetlink layer over the addon's raw netlink socket (nlOpen/nlSend/nlRecv): links,
// addresses, routes and policy-routing rules (set, list, delete), route lookups as the kernel
// does them for one socket's datagrams, and link/address/route change events, which is how the router
// notices that its uplink moved. Requests are synchronous request/ack exchanges on one shared
// socket (the kernel answers at once; a 5 s timeout guards against the impossible), exposed as
// promises so that callers need not change if this ever becomes asynchronous; events come
// from a separate socket bound to multicast groups and driven by uv_poll.
// Messages are in host byte order (os.endianness), so this also runs on big-endian MIPS routers.
// Constant names are the kernel's (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, ...).
import { constants as osConstants, endianness } from 'node:os';
import { EndpointError, decodeSockaddr, encodeSockaddr } from '../protocol/endpoint.js';
import { close, nlOpen, nlRecv, nlSend, pollStart, pollStop } from './native.js';

// linux/netlink.h
export const NETLINK_ROUTE = 0;
export const NLMSG_HDRLEN = 16;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP = 0x300;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSGERR_ATTR_MSG = 1;
// linux/rtnetlink.h
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWRULE = 32;
export const RTM_DELRULE = 33;
export const RTM_GETRULE = 34;
export const RTMGRP_LINK = 0x1;
export const RTMGRP_IPV4_IFADDR = 0x10;
export const RTMGRP_IPV4_ROUTE = 0x40;
export const RTMGRP_IPV6_IFADDR = 0x100;
export const RTMGRP_IPV6_ROUTE = 0x400;
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_TABLE = 15;
export const RTA_IP_PROTO = 27;
export const RTA_SPORT = 28;
export const RTA_DPORT = 29;
export const RT_TABLE_UNSPEC = 0;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;
export const RTPROT_KERNEL = 2;
export const RTPROT_BOOT = 3;
export const RTPROT_STATIC = 4;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
export const RT_SCOPE_NOWHERE = 255;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RTN_UNREACHABLE = 7;
// linux/fib_rules.h (rules: kernel 4.17 or later for FRA_PROTOCOL, FRA_IP_PROTO and port ranges)
export const FRA_IIFNAME = 3;
export const FRA_PRIORITY = 6;
export const FRA_SUPPRESS_PREFIXLEN = 14;
export const FRA_TABLE = 15;
export const FRA_PROTOCOL = 21;
export const FRA_IP_PROTO = 22;
export const FRA_SPORT_RANGE = 23;
export const FR_ACT_TO_TBL = 1;
// linux/in.h
export const IPPROTO_UDP = 17;
// linux/if_link.h, linux/if.h
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFF_UP = 0x1;
export const IFF_RUNNING = 0x40;
export const IFF_LOWER_UP = 0x10000;
// linux/if_addr.h
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;
export const IFA_FLAGS = 8;
export const IFA_F_NODAD = 0x02;
export const IFA_F_TENTATIVE = 0x40;
export const IFA_F_PERMANENT = 0x80;
// linux/socket.h
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;

const TIMEOUT_MS = 5000;
const LE = endianness() === 'LE';
const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));

export class RtnetlinkError extends Error {
  override readonly name = 'RtnetlinkError';
  /** Errno name, e.g. 'EEXIST'. */
  readonly code: string;
  constructor(
    /** What was asked, e.g. 'RTM_NEWADDR 10.1.0.1/24 dev tun0'. */
    readonly operation: string,
    readonly errno: number,
    /** The kernel's extended ack message, if it gave one. */
    readonly extack?: string,
  ) {
    const code = ERRNO_NAMES.get(errno) ?? `E${errno}`;
    super(`${operation}: ${code}${extack ? ` (${extack})` : ''}`);
    this.code = code;
  }
}

export interface LinkInfo {
  index: number;
  name: string;
  mtu: number;
  /** IFF_* flags. */
  flags: number;
  up: boolean;
}

export interface AddressInfo {
  index: number;
  dev?: string;
  family: 4 | 6;
  address: string;
  prefixLen: number;
  /** address/prefixLen */
  cidr: string;
  /** IFA_F_* flags. */
  flags: number;
  scope: number;
}

export interface RouteInfo {
  family: 4 | 6;
  /** Destination prefix, "0.0.0.0/0" or "::/0" for a default route. */
  dst: string;
  index?: number;
  dev?: string;
  via?: string;
  metric?: number;
  prefsrc?: string;
  table: number;
  /** RTPROT_* */
  protocol: number;
  /** RT_SCOPE_* */
  scope: number;
  /** RTN_* (RTN_UNICAST, RTN_LOCAL, ...) */
  routeType: number;
}

export type RtEvent =
  | ({ type: 'RTM_NEWLINK' | 'RTM_DELLINK' } & LinkInfo)
  | ({ type: 'RTM_NEWADDR' | 'RTM_DELADDR' } & AddressInfo)
  | ({ type: 'RTM_NEWROUTE' | 'RTM_DELROUTE' } & RouteInfo)
  /** The kernel dropped events (socket buffer full): re-read the state with the list functions. */
  | { type: 'overrun' };

export interface RouteOptions {
  dev: string;
  via?: string;
  metric?: number;
  /** Routing table, default main. */
  table?: number;
  /** RTPROT_*, default RTPROT_STATIC. */
  protocol?: number;
}

/** A policy-routing rule (`ip rule`) whose action is a table lookup. */
export interface RuleInfo {
  family: 4 | 6;
  priority: number;
  table: number;
  /** Matches packets that came in on this device; "lo": generated on this host. */
  iifname?: string;
  /** IPPROTO_* of the packets matched. */
  ipProto?: number;
  /** Source port range matched, [first, last]. */
  sport?: [number, number];
  /** Routes of the table with a prefix this long or shorter are ignored (0: the default route). */
  suppressPrefixLength?: number;
  /** Who made the rule (RTPROT_*, or a number of the caller's own). */
  protocol: number;
}

export type RuleOptions = Omit<RuleInfo, 'protocol'> & { protocol?: number };

// ---- message encoding -------------------------------------------------------------------------

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  LE ? b.writeUInt16LE(v) : b.writeUInt16BE(v);
  return b;
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  LE ? b.writeUInt32LE(v >>> 0) : b.writeUInt32BE(v >>> 0);
  return b;
}
const r16 = (b: Buffer, o: number) => (LE ? b.readUInt16LE(o) : b.readUInt16BE(o));
const r32 = (b: Buffer, o: number) => (LE ? b.readUInt32LE(o) : b.readUInt32BE(o));
const ri32 = (b: Buffer, o: number) => (LE ? b.readInt32LE(o) : b.readInt32BE(o));
const align4 = (n: number) => (n + 3) & ~3;

function attr(type: number, data: Buffer): Buffer {
  const len = 4 + data.length;
  const b = Buffer.alloc(align4(len));
  b.set(u16(len), 0);
  b.set(u16(type), 2);
  b.set(data, 4);
  return b;
}
const strAttr = (type: number, s: string) => attr(type, Buffer.from(`${s}\0`));

function ifinfomsg(index: number, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16); // family, pad, type u16, index i32, flags u32, change u32
  b.set(u32(index), 4);
  b.set(u32(flags), 8);
  b.set(u32(change), 12);
  return b;
}

function ifaddrmsg(family: number, prefixLen: number, flags: number, scope: number, index: number): Buffer {
  const b = Buffer.from([family, prefixLen, flags & 0xff, scope, 0, 0, 0, 0]);
  b.set(u32(index), 4);
  return b;
}

function rtmsg(f: { family: number; dstLen: number; table: number; protocol: number; scope: number; type: number }): Buffer {
  // family, dst_len, src_len, tos, table, protocol, scope, type, flags u32
  return Buffer.from([f.family, f.dstLen, 0, 0, f.table, f.protocol, f.scope, f.type, 0, 0, 0, 0]);
}

interface Cidr {
  family: 4 | 6;
  af: number;
  bytes: Buffer;
  address: string;
  prefixLen: number;
}

function ipBytes(address: string): { family: 4 | 6; bytes: Buffer } {
  const sa = encodeSockaddr(address, 0); // throws EndpointError naming a bad address
  const family = decodeSockaddr(sa).family;
  return { family, bytes: family === 4 ? sa.subarray(20, 24) : sa.subarray(8, 24) };
}

function ipString(bytes: Buffer): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const sa = Buffer.alloc(28);
  sa[0] = AF_INET6;
  sa.set(bytes.subarray(0, 16), 8);
  return decodeSockaddr(sa).address;
}

export function parseCidr(cidr: string): Cidr {
  const slash = cidr.indexOf('/');
  const address = slash < 0 ? cidr : cidr.slice(0, slash);
  const { family, bytes } = ipBytes(address);
  const max = family === 4 ? 32 : 128;
  const prefixLen = slash < 0 ? max : Number(cidr.slice(slash + 1));
  if (!/^\d+$/.test(slash < 0 ? String(max) : cidr.slice(slash + 1)) || prefixLen > max) {
    throw new EndpointError(`"${cidr}": prefix length must be 0..${max}`);
  }
  return { family, af: family === 4 ? AF_INET : AF_INET6, bytes, address, prefixLen };
}

// ---- request / reply --------------------------------------------------------------------------

interface NlMsg {
  type: number;
  flags: number;
  /** Payload after the nlmsghdr (a copy; safe to keep). */
  data: Buffer;
}

let requestFd: number | undefined;
let seq = Math.floor(Math.random() * 0x7fffffff);
const rbuf = Buffer.alloc(65536);

function* messages(buf: Buffer, n: number): Generator<{ type: number; flags: number; seq: number; data: Buffer }> {
  for (let off = 0; off + NLMSG_HDRLEN <= n; ) {
    const len = r32(buf, off);
    if (len < NLMSG_HDRLEN || off + len > n) return;
    yield { type: r16(buf, off + 4), flags: r16(buf, off + 6), seq: r32(buf, off + 8), data: buf.subarray(off + NLMSG_HDRLEN, off + len) };
    off += align4(len);
  }
}

/** Error (negative errno) and extack message of an NLMSG_ERROR payload. */
function parseError(flags: number, data: Buffer): { errno: number; extack?: string } {
  const errno = -ri32(data, 0);
  if (!(flags & NLM_F_ACK_TLVS) || data.length < 4 + NLMSG_HDRLEN) return { errno };
  const origLen = flags & NLM_F_CAPPED ? NLMSG_HDRLEN : r32(data, 4);
  const attrs = parseAttrs(data, 4 + align4(origLen));
  const msg = attrs.get(NLMSGERR_ATTR_MSG);
  return msg ? { errno, extack: cstr(msg) } : { errno };
}

/** Sends one request and collects the replies up to the ack (or NLMSG_DONE for a dump). */
function transact(operation: string, type: number, flags: number, body: Buffer, attrs: Buffer[] = []): NlMsg[] {
  for (let attempt = 1; ; attempt++) {
    const { out, interrupted } = exchange(operation, type, flags, Buffer.concat([body, ...attrs]));
    if (!interrupted || attempt === 3) return out; // a dump interrupted by a change is redone
  }
}

function exchange(operation: string, type: number, flags: number, payload: Buffer): { out: NlMsg[]; interrupted: boolean } {
  requestFd ??= nlOpen(NETLINK_ROUTE, 0);
  const fd = requestFd;
  seq = (seq + 1) >>> 0;
  const hdr = Buffer.concat([u32(NLMSG_HDRLEN + payload.length), u16(type), u16(flags | NLM_F_REQUEST), u32(seq), u32(0)]);
  nlSend(fd, Buffer.concat([hdr, payload]));
  const out: NlMsg[] = [];
  let interrupted = false;
  for (;;) {
    const n = nlRecv(fd, rbuf, TIMEOUT_MS);
    if (n === 0) throw new RtnetlinkError(operation, osConstants.errno.ETIMEDOUT);
    for (const m of messages(rbuf, n)) {
      if (m.seq !== seq) continue; // a late answer to an earlier, abandoned request
      if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
      if (m.type === NLMSG_ERROR) {
        const { errno, extack } = parseError(m.flags, m.data);
        if (errno !== 0) throw new RtnetlinkError(operation, errno, extack);
        return { out, interrupted };
      }
      if (m.type === NLMSG_DONE) {
        const errno = m.data.length >= 4 ? -ri32(m.data, 0) : 0;
        if (errno > 0) throw new RtnetlinkError(operation, errno);
        return { out, interrupted };
      }
      if (m.type === NLMSG_NOOP || m.type === NLMSG_OVERRUN) continue;
      out.push({ type: m.type, flags: m.flags, data: Buffer.from(m.data) });
    }
  }
}

function request(operation: string, type: number, flags: number, body: Buffer, attrs: Buffer[] = []): NlMsg[] {
  return transact(operation, type, flags | NLM_F_ACK, body, attrs);
}

function dump(operation: string, type: number, body: Buffer): NlMsg[] {
  return transact(operation, type, NLM_F_DUMP, body);
}

/** Closes the shared request socket (it is reopened on the next request). */
export function closeRtnetlink(): void {
  if (requestFd !== undefined) close(requestFd);
  requestFd = undefined;
}

// ---- parsing ----------------------------------------------------------------------------------

function parseAttrs(data: Buffer, off: number): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  while (off + 4 <= data.length) {
    const len = r16(data, off);
    if (len < 4 || off + len > data.length) break;
    m.set(r16(data, off + 2) & 0x3fff, data.subarray(off + 4, off + len));
    off += align4(len);
  }
  return m;
}

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return b.toString('utf8', 0, z < 0 ? b.length : z);
}

function parseLink(data: Buffer): LinkInfo {
  const a = parseAttrs(data, 16);
  const flags = r32(data, 8);
  const name = a.get(IFLA_IFNAME);
  const mtu = a.get(IFLA_MTU);
  return { index: ri32(data, 4), name: name ? cstr(name) : '', mtu: mtu ? r32(mtu, 0) : 0, flags, up: (flags & IFF_UP) !== 0 };
}

function parseAddress(data: Buffer, nameOf?: (index: number) => string | undefined): AddressInfo {
  const family = data[0] === AF_INET ? 4 : 6;
  const prefixLen = data[1] ?? 0;
  const a = parseAttrs(data, 8);
  const bytes = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS) ?? Buffer.alloc(family === 4 ? 4 : 16);
  const address = ipString(bytes);
  const f32 = a.get(IFA_FLAGS);
  const index = r32(data, 4);
  const label = a.get(IFA_LABEL);
  const dev = nameOf?.(index) ?? (label ? cstr(label) : undefined);
  const info: AddressInfo = { index, family, address, prefixLen, cidr: `${address}/${prefixLen}`, flags: f32 ? r32(f32, 0) : (data[2] ?? 0), scope: data[3] ?? 0 };
  if (dev !== undefined) info.dev = dev;
  return info;
}

function parseRoute(data: Buffer, nameOf?: (index: number) => string | undefined): RouteInfo {
  const family = data[0] === AF_INET ? 4 : 6;
  const dstLen = data[1] ?? 0;
  const a = parseAttrs(data, 12);
  const dstBytes = a.get(RTA_DST);
  const dst = dstBytes ? ipString(dstBytes) : family === 4 ? '0.0.0.0' : '::';
  const table = a.get(RTA_TABLE);
  const r: RouteInfo = {
    family,
    dst: `${dst}/${dstLen}`,
    table: table ? r32(table, 0) : (data[4] ?? 0),
    protocol: data[5] ?? 0,
    scope: data[6] ?? 0,
    routeType: data[7] ?? 0,
  };
  const oif = a.get(RTA_OIF);
  if (oif) {
    r.index = r32(oif, 0);
    const dev = nameOf?.(r.index);
    if (dev !== undefined) r.dev = dev;
  }
  const gw = a.get(RTA_GATEWAY);
  if (gw) r.via = ipString(gw);
  const prio = a.get(RTA_PRIORITY);
  if (prio) r.metric = r32(prio, 0);
  const src = a.get(RTA_PREFSRC);
  if (src) r.prefsrc = ipString(src);
  return r;
}

function linkNames(): (index: number) => string | undefined {
  const names = new Map(listLinksSync().map((l) => [l.index, l.name]));
  return (index) => names.get(index);
}

// ---- operations -------------------------------------------------------------------------------

function listLinksSync(): LinkInfo[] {
  return dump('RTM_GETLINK', RTM_GETLINK, ifinfomsg(0))
    .filter((m) => m.type === RTM_NEWLINK)
    .map((m) => parseLink(m.data));
}

function getLinkSync(name: string): LinkInfo {
  const replies = request(`RTM_GETLINK ${name}`, RTM_GETLINK, 0, ifinfomsg(0), [strAttr(IFLA_IFNAME, name)]);
  const m = replies.find((r) => r.type === RTM_NEWLINK);
  if (!m) throw new RtnetlinkError(`RTM_GETLINK ${name}`, osConstants.errno.ENODEV);
  return parseLink(m.data);
}

function linkIndexSync(name: string): number {
  return getLinkSync(name).index;
}

export async function listLinks(): Promise<LinkInfo[]> {
  return listLinksSync();
}

/** The link called name; RtnetlinkError ENODEV if there is none. */
export async function getLink(name: string): Promise<LinkInfo> {
  return getLinkSync(name);
}

export async function linkIndex(name: string): Promise<number> {
  return linkIndexSync(name);
}

export async function setLinkUp(name: string, up = true): Promise<void> {
  request(`RTM_NEWLINK ${name} ${up ? 'up' : 'down'}`, RTM_NEWLINK, 0, ifinfomsg(0, up ? IFF_UP : 0, IFF_UP), [strAttr(IFLA_IFNAME, name)]);
}

export async function setMtu(name: string, mtu: number): Promise<void> {
  request(`RTM_NEWLINK ${name} mtu ${mtu}`, RTM_NEWLINK, 0, ifinfomsg(0), [strAttr(IFLA_IFNAME, name), attr(IFLA_MTU, u32(mtu))]);
}

function addressRequest(type: number, name: string, cidr: string): void {
  const op = `${type === RTM_NEWADDR ? 'RTM_NEWADDR' : 'RTM_DELADDR'} ${cidr} dev ${name}`;
  const c = parseCidr(cidr);
  const index = linkIndexSync(name);
  const flags = c.family === 6 && type === RTM_NEWADDR ? IFA_F_NODAD : 0; // v6 usable at once
  const attrs = [attr(IFA_LOCAL, c.bytes), attr(IFA_ADDRESS, c.bytes)];
  if (type === RTM_NEWADDR) attrs.push(attr(IFA_FLAGS, u32(flags)));
  request(op, type, type === RTM_NEWADDR ? NLM_F_CREATE | NLM_F_EXCL : 0, ifaddrmsg(c.af, c.prefixLen, flags, RT_SCOPE_UNIVERSE, index), attrs);
}

/** Adds cidr (e.g. "10.1.0.1/24", "fd00::1/64") to dev; EEXIST if it is already there. */
export async function addAddress(name: string, cidr: string): Promise<void> {
  addressRequest(RTM_NEWADDR, name, cidr);
}

export async function delAddress(name: string, cidr: string): Promise<void> {
  addressRequest(RTM_DELADDR, name, cidr);
}

/** Addresses of every link, or of one (RtnetlinkError ENODEV if it does not exist). */
export async function listAddresses(name?: string): Promise<AddressInfo[]> {
  const names = linkNames();
  const all = dump('RTM_GETADDR', RTM_GETADDR, ifaddrmsg(AF_UNSPEC, 0, 0, 0, 0))
    .filter((m) => m.type === RTM_NEWADDR)
    .map((m) => parseAddress(m.data, names));
  if (name === undefined) return all;
  if (!all.some((a) => a.dev === name) && !listLinksSync().some((l) => l.name === name)) throw new RtnetlinkError(`RTM_GETADDR dev ${name}`, osConstants.errno.ENODEV);
  return all.filter((a) => a.dev === name);
}

function routeRequest(type: number, cidr: string, o: Partial<RouteOptions> & { unreachable?: boolean; replace?: boolean }): void {
  const c = parseCidr(cidr);
  const verb = type === RTM_NEWROUTE ? 'RTM_NEWROUTE' : 'RTM_DELROUTE';
  const table = o.table ?? RT_TABLE_MAIN;
  const op = `${verb} ${o.unreachable ? 'unreachable ' : ''}${cidr}${o.dev ? ` dev ${o.dev}` : ''}${o.via ? ` via ${o.via}` : ''}${o.metric !== undefined ? ` metric ${o.metric}` : ''}${table !== RT_TABLE_MAIN ? ` table ${table}` : ''}`;
  const attrs = [attr(RTA_DST, c.bytes), attr(RTA_TABLE, u32(table))];
  if (o.dev !== undefined) attrs.push(attr(RTA_OIF, u32(linkIndexSync(o.dev))));
  if (o.via !== undefined) {
    const gw = ipBytes(o.via);
    if (gw.family !== c.family) throw new EndpointError(`gateway ${o.via} is not in the family of ${cidr}`);
    attrs.push(attr(RTA_GATEWAY, gw.bytes));
  }
  if (o.metric !== undefined) attrs.push(attr(RTA_PRIORITY, u32(o.metric)));
  const add = type === RTM_NEWROUTE;
  const body = rtmsg({
    family: c.af,
    dstLen: c.prefixLen,
    table: table < 256 ? table : RT_TABLE_UNSPEC,
    protocol: add ? (o.protocol ?? RTPROT_STATIC) : (o.protocol ?? 0),
    scope: add ? (o.via !== undefined || o.unreachable ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK) : RT_SCOPE_NOWHERE,
    type: add ? (o.unreachable ? RTN_UNREACHABLE : RTN_UNICAST) : 0,
  });
  request(op, type, add ? NLM_F_CREATE | (o.replace ? NLM_F_REPLACE : NLM_F_EXCL) : 0, body, attrs);
}

/** Adds a unicast route; EEXIST if the same route is already there. */
export async function addRoute(cidr: string, options: RouteOptions): Promise<void> {
  routeRequest(RTM_NEWROUTE, cidr, options);
}

/** Adds a unicast route, or replaces the one to the same prefix with the same metric (`ip route replace`). */
export async function replaceRoute(cidr: string, options: RouteOptions): Promise<void> {
  routeRequest(RTM_NEWROUTE, cidr, { ...options, replace: true });
}

/** Adds an unreachable route (lookups that end on it fail with EHOSTUNREACH); EEXIST if it is there. */
export async function addUnreachableRoute(cidr: string, options: Omit<RouteOptions, 'dev' | 'via'> = {}): Promise<void> {
  routeRequest(RTM_NEWROUTE, cidr, { ...options, unreachable: true });
}

/** Deletes the route to cidr matching the given dev/via/metric/table/protocol; ESRCH if there is none. */
export async function delRoute(cidr: string, options: Partial<RouteOptions> = {}): Promise<void> {
  routeRequest(RTM_DELROUTE, cidr, options);
}

/**
 * The route the kernel picks for a datagram to dst (`ip route get`), rules included; with ipProto
 * and sport, the lookup is the one for a socket bound to that port, which is what rules matching
 * ports see. `prefsrc` is the source address it would use. RtnetlinkError (ENETUNREACH,
 * EHOSTUNREACH) when there is no route.
 */
export async function getRoute(dst: string, o: { ipProto?: number; sport?: number; dport?: number } = {}): Promise<RouteInfo> {
  const c = parseCidr(dst);
  const op = `RTM_GETROUTE ${dst}${o.ipProto !== undefined ? ` ipproto ${o.ipProto}` : ''}${o.sport !== undefined ? ` sport ${o.sport}` : ''}${o.dport !== undefined ? ` dport ${o.dport}` : ''}`;
  const attrs = [attr(RTA_DST, c.bytes)];
  if (o.ipProto !== undefined) attrs.push(attr(RTA_IP_PROTO, Buffer.from([o.ipProto])));
  // Ports are in network byte order here (nla_get_be16), unlike the rest of the message.
  const be16 = (v: number): Buffer => Buffer.from([(v >> 8) & 0xff, v & 0xff]);
  if (o.sport !== undefined) attrs.push(attr(RTA_SPORT, be16(o.sport)));
  if (o.dport !== undefined) attrs.push(attr(RTA_DPORT, be16(o.dport)));
  const body = rtmsg({ family: c.af, dstLen: c.prefixLen, table: 0, protocol: 0, scope: 0, type: 0 });
  const m = request(op, RTM_GETROUTE, 0, body, attrs).find((r) => r.type === RTM_NEWROUTE);
  if (!m) throw new RtnetlinkError(op, osConstants.errno.ENETUNREACH);
  return parseRoute(m.data, linkNames());
}

/** Routes of one table (default main; 'all' for every table), optionally one family. */
export async function listRoutes(options: { table?: number | 'all'; family?: 4 | 6 } = {}): Promise<RouteInfo[]> {
  const names = linkNames();
  const af = options.family === 4 ? AF_INET : options.family === 6 ? AF_INET6 : AF_UNSPEC;
  const table = options.table ?? RT_TABLE_MAIN;
  return dump('RTM_GETROUTE', RTM_GETROUTE, rtmsg({ family: af, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0 }))
    .filter((m) => m.type === RTM_NEWROUTE)
    .map((m) => parseRoute(m.data, names))
    .filter((r) => table === 'all' || r.table === table);
}

// ---- policy-routing rules ------------------------------------------------------------------------

/** struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags u32. */
function fibRuleHdr(family: number, table: number, action: number): Buffer {
  return Buffer.from([family, 0, 0, 0, table < 256 ? table : RT_TABLE_UNSPEC, 0, 0, action, 0, 0, 0, 0]);
}

function ruleText(r: Partial<RuleInfo>): string {
  const parts = [`family ${r.family === 6 ? 'inet6' : 'inet'}`];
  if (r.priority !== undefined) parts.push(`pref ${r.priority}`);
  if (r.iifname !== undefined) parts.push(`iif ${r.iifname}`);
  if (r.ipProto !== undefined) parts.push(`ipproto ${r.ipProto}`);
  if (r.sport !== undefined) parts.push(`sport ${r.sport[0]}-${r.sport[1]}`);
  if (r.table !== undefined) parts.push(`lookup ${r.table}`);
  if (r.suppressPrefixLength !== undefined) parts.push(`suppress_prefixlength ${r.suppressPrefixLength}`);
  if (r.protocol !== undefined) parts.push(`proto ${r.protocol}`);
  return parts.join(' ');
}

function ruleAttrs(r: Partial<RuleInfo>): Buffer[] {
  const attrs: Buffer[] = [];
  if (r.priority !== undefined) attrs.push(attr(FRA_PRIORITY, u32(r.priority)));
  if (r.table !== undefined) attrs.push(attr(FRA_TABLE, u32(r.table)));
  if (r.iifname !== undefined) attrs.push(strAttr(FRA_IIFNAME, r.iifname));
  if (r.ipProto !== undefined) attrs.push(attr(FRA_IP_PROTO, Buffer.from([r.ipProto])));
  if (r.sport !== undefined) attrs.push(attr(FRA_SPORT_RANGE, Buffer.concat([u16(r.sport[0]), u16(r.sport[1])])));
  if (r.suppressPrefixLength !== undefined) attrs.push(attr(FRA_SUPPRESS_PREFIXLEN, u32(r.suppressPrefixLength)));
  if (r.protocol !== undefined) attrs.push(attr(FRA_PROTOCOL, Buffer.from([r.protocol])));
  return attrs;
}

function parseRule(data: Buffer): RuleInfo {
  const a = parseAttrs(data, 12);
  const table = a.get(FRA_TABLE);
  const prio = a.get(FRA_PRIORITY);
  const r: RuleInfo = { family: data[0] === AF_INET6 ? 6 : 4, priority: prio ? r32(prio, 0) : 0, table: table ? r32(table, 0) : (data[4] ?? 0), protocol: a.get(FRA_PROTOCOL)?.[0] ?? 0 };
  const iif = a.get(FRA_IIFNAME);
  if (iif) r.iifname = cstr(iif);
  const proto = a.get(FRA_IP_PROTO);
  if (proto) r.ipProto = proto[0] ?? 0;
  const sport = a.get(FRA_SPORT_RANGE);
  if (sport && sport.length >= 4) r.sport = [r16(sport, 0), r16(sport, 2)];
  const suppress = a.get(FRA_SUPPRESS_PREFIXLEN);
  // The kernel reports "none" as -1 (or leaves the attribute out).
  if (suppress && r32(suppress, 0) !== 0xffffffff) r.suppressPrefixLength = r32(suppress, 0);
  return r;
}

/** Adds a rule looking up `table` for the packets it matches; EEXIST if the same rule is there. */
export async function addRule(rule: RuleOptions): Promise<void> {
  const r = { ...rule, protocol: rule.protocol ?? RTPROT_STATIC };
  request(`RTM_NEWRULE ${ruleText(r)}`, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, fibRuleHdr(r.family === 6 ? AF_INET6 : AF_INET, r.table, FR_ACT_TO_TBL), ruleAttrs(r));
}

/** Deletes the first rule matching what is given (family and priority at least); ENOENT if none does. */
export async function delRule(rule: Partial<RuleInfo> & { family: 4 | 6; priority: number }): Promise<void> {
  request(`RTM_DELRULE ${ruleText(rule)}`, RTM_DELRULE, 0, fibRuleHdr(rule.family === 6 ? AF_INET6 : AF_INET, rule.table ?? 0, rule.table !== undefined ? FR_ACT_TO_TBL : 0), ruleAttrs(rule));
}

/** The table-lookup rules of one family, or of both. */
export async function listRules(family?: 4 | 6): Promise<RuleInfo[]> {
  const af = family === 4 ? AF_INET : family === 6 ? AF_INET6 : AF_UNSPEC;
  return dump('RTM_GETRULE', RTM_GETRULE, fibRuleHdr(af, 0, 0))
    .filter((m) => m.type === RTM_NEWRULE && m.data[7] === FR_ACT_TO_TBL)
    .map((m) => parseRule(m.data));
}

/**
 * Delivers link/address/route changes for `groups` (RTMGRP_* bits) until close(). Events come from
 * the event loop (uv_poll), parsed; dev names are resolved at delivery time when still known.
 */
export function subscribe(groups: number, onEvent: (event: RtEvent) => void): { close(): void } {
  const fd = nlOpen(NETLINK_ROUTE, groups);
  const buf = Buffer.alloc(65536);
  const nameOf = (index: number): string | undefined => {
    try {
      return request(`RTM_GETLINK ${index}`, RTM_GETLINK, 0, ifinfomsg(index))
        .filter((m) => m.type === RTM_NEWLINK)
        .map((m) => parseLink(m.data).name)[0];
    } catch {
      return undefined; // the link is already gone
    }
  };
  let closed = false;
  const handle = pollStart(fd, () => {
    while (!closed) {
      let n: number;
      try {
        n = nlRecv(fd, buf, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOBUFS') throw err;
        onEvent({ type: 'overrun' });
        continue;
      }
      if (n === 0) return;
      for (const m of messages(buf, n)) {
        const data = Buffer.from(m.data);
        switch (m.type) {
          case RTM_NEWLINK:
          case RTM_DELLINK:
            onEvent({ type: m.type === RTM_NEWLINK ? 'RTM_NEWLINK' : 'RTM_DELLINK', ...parseLink(data) });
            break;
          case RTM_NEWADDR:
          case RTM_DELADDR:
            onEvent({ type: m.type === RTM_NEWADDR ? 'RTM_NEWADDR' : 'RTM_DELADDR', ...parseAddress(data, nameOf) });
            break;
          case RTM_NEWROUTE:
          case RTM_DELROUTE:
            onEvent({ type: m.type === RTM_NEWROUTE ? 'RTM_NEWROUTE' : 'RTM_DELROUTE', ...parseRoute(data, nameOf) });
            break;
        }
      }
    }
  });
  return {
    close() {
      if (closed) return;
      closed = true;
      pollStop(handle);
      close(fd);
    },
  };
}
