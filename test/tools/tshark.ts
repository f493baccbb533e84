// Test tool: an independent decoder for our ESP packets. Runs Wireshark's tshark on a pcap with
// the SA keys configured (esp_sa UAT given on the command line) and reports, per ESP packet, the
// SPI, sequence number, the ICV check result and the decrypted inner IP packet's addresses.
//
// Verified against TShark 4.0.17 (Debian 12). What tshark 4.0 needs:
//   -o esp.enable_encryption_decode:TRUE -o esp.enable_authentication_check:TRUE
//   -o 'uat:esp_sa:"IPv4","<outer src>","<outer dst>","0x<spi, 8 hex digits>","AES-GCM with 16 octet ICV [RFC4106]","0x<key||salt>","NULL",""'
//     (fields: protocol, src IP, dst IP, SPI, encryption algorithm, encryption key,
//      authentication algorithm, authentication key; AES-GCM must have authentication "NULL";
//      the key is the AES key followed by the 4-octet salt, in hex with 0x)
//   -d udp.port==N,udpencap for UDP-encapsulated ESP on ports other than 4500 (4500 is the default)
//   -T fields -E occurrence=a -e esp.spi -e esp.sequence -e esp.icv_good -e esp.icv_bad
//     -e esp.decrypted_data -e frame.protocols -e ip.src ... (inner = the ip/ipv6 layer after esp)
// Pitfall (4.0): the ESP dissector adds the ICV verdict (esp.icv_good/esp.icv_bad), pad and next
// header only AFTER the inner packet has been dissected; if any dissector above the inner IP
// throws (e.g. a UDP payload on port 53 that is not DNS: "Malformed Packet"), the verdict is
// silently missing. So tshark runs with a private WIRESHARK_CONFIG_DIR whose disabled_protos
// turns off every protocol except link layers, IP, UDP, UDPENCAP, ESP and data (inner transport
// payloads become "data"); { fullDissection: true } keeps everything on.
// Wireshark 4.0's ESP dissector has no ChaCha20-Poly1305 (it has AES-GCM, AES-CBC/CTR, 3DES, ...);
// tsharkSupportsChacha() says whether the installed tshark has it, and tsharkDecrypt() throws
// TsharkUnsupported for a ChaCha20-Poly1305 SA when it does not.

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface TsharkSa {
  /** Family of the OUTER (underlay) addresses src/dst. */
  family: 4 | 6;
  /** Outer source address of the packets of this SA (or '*'). */
  src: string;
  /** Outer destination address of the packets of this SA (or '*'). */
  dst: string;
  spi: number;
  suite: 'aes-gcm' | 'chacha20-poly1305';
  key: Buffer;
  salt: Buffer;
}

export interface TsharkEspPacket {
  /** Frame number in the pcap (1-based). */
  frame: number;
  spi: number;
  seq: number;
  /** true: ICV verified; false: ICV checked and wrong; null: not checked (no SA, or not decrypted). */
  icvGood: boolean | null;
  /** Inner packet's source and destination (as tshark prints them), null if not decoded. */
  innerSrc: string | null;
  innerDst: string | null;
  /** Inner packet's protocol (IPv4 protocol field / IPv6 next header), null if not decoded. */
  innerProto: number | null;
  /** The decrypted ESP payload (inner packet || padding || pad length || next header), hex. */
  decryptedHex: string | null;
}

export class TsharkUnsupported extends Error {
  override name = 'TsharkUnsupported';
}

export const TSHARK = process.env['TSHARK'] ?? 'tshark';

/** Wireshark's esp_sa UAT name for AES-GCM with a 16-octet ICV (RFC 4106). */
export const WS_AES_GCM_16 = 'AES-GCM with 16 octet ICV [RFC4106]';

let versionCache: Promise<string | null> | undefined;
/** The installed tshark's version ("4.0.17"), or null if tshark cannot be run. */
export function tsharkVersion(): Promise<string | null> {
  versionCache ??= execFileAsync(TSHARK, ['--version'], { env: tsharkEnv() }).then(
    ({ stdout }) => /TShark \(Wireshark\) (\d+\.\d+\.\d+)/.exec(stdout)?.[1] ?? null,
    () => null,
  );
  return versionCache;
}

let chachaCache: Promise<string | null> | undefined;
/**
 * The esp_sa encryption algorithm name for ChaCha20-Poly1305 if this tshark has one, else null.
 * (Wireshark 4.0 has none.) Found by asking tshark to accept the UAT entry.
 */
export function tsharkChachaName(): Promise<string | null> {
  chachaCache ??= (async () => {
    // -G ignores -o, so let tshark read an empty capture with the candidate SA: it exits 1 with
    // "esp_sa:1: invalid value: ..." when the algorithm name is unknown.
    const dir = mkdtempSync(join(tmpdir(), 'tshark-probe-'));
    try {
      const empty = join(dir, 'empty.pcap');
      writePcap(empty, []);
      for (const name of ['ChaCha20 with Poly1305 [RFC7634]']) {
        const uat = `uat:esp_sa:"IPv4","*","*","*","${name}","0x${'00'.repeat(36)}","NULL",""`;
        try {
          await execFileAsync(TSHARK, ['-r', empty, '-o', 'esp.enable_encryption_decode:TRUE', '-o', uat], {
            env: tsharkEnv(),
          });
          return name;
        } catch {
          // unknown algorithm name (or tshark missing)
        }
      }
      return null;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return chachaCache;
}

export async function tsharkSupportsChacha(): Promise<boolean> {
  return (await tsharkChachaName()) !== null;
}

function tsharkEnv(configDir = '/nonexistent-wireshark-config'): NodeJS.ProcessEnv {
  // Keep the user's Wireshark profile (and its own esp_sa table) out of the way.
  return { ...process.env, WIRESHARK_CONFIG_DIR: configDir, LC_ALL: 'C' };
}

/** Protocols left on in the restricted profile (everything else goes in disabled_protos). */
const KEEP_PROTOCOLS = new Set([
  'frame', 'raw', 'eth', 'ethertype', 'sll', 'vlan', 'ieee8021ad', 'null', 'loop',
  'ip', 'ipv6', 'udp', 'udpencap', 'esp', 'data',
]);
const keepProtocol = (p: string) =>
  KEEP_PROTOCOLS.has(p) || p.startsWith('ip.options.') || p.startsWith('ipv6.');

let restrictedCache: Promise<string> | undefined;
/** A Wireshark config dir with all protocols disabled but those ESP decoding needs. */
function restrictedConfigDir(): Promise<string> {
  restrictedCache ??= (async () => {
    const { stdout } = await execFileAsync(TSHARK, ['-G', 'protocols'], {
      env: tsharkEnv(),
      maxBuffer: 64 << 20,
    });
    const names = stdout
      .split('\n')
      .map((l) => l.split('\t')[2]?.trim() ?? '')
      .filter((n) => n !== '' && !keepProtocol(n));
    const dir = mkdtempSync(join(tmpdir(), 'tshark-profile-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'disabled_protos'), names.join('\n') + '\n');
    return dir;
  })();
  return restrictedCache;
}

function uatQuote(s: string): string {
  // UAT strings are double-quoted; escape backslash and quote as \xNN.
  return '"' + s.replace(/[\\"]/g, (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0')) + '"';
}

async function saUat(sa: TsharkSa): Promise<string> {
  let algorithm: string;
  if (sa.suite === 'aes-gcm') {
    if (![16, 24, 32].includes(sa.key.length)) throw new Error(`aes-gcm key length ${sa.key.length}`);
    algorithm = WS_AES_GCM_16;
  } else {
    const name = await tsharkChachaName();
    if (name === null) {
      throw new TsharkUnsupported(
        `tshark ${(await tsharkVersion()) ?? '?'} has no ChaCha20-Poly1305 for ESP`,
      );
    }
    algorithm = name;
  }
  if (sa.salt.length !== 4) throw new Error(`salt length ${sa.salt.length}, want 4`);
  const fields = [
    sa.family === 4 ? 'IPv4' : 'IPv6',
    sa.src,
    sa.dst,
    '0x' + (sa.spi >>> 0).toString(16).padStart(8, '0'),
    algorithm,
    '0x' + Buffer.concat([sa.key, sa.salt]).toString('hex'),
    'NULL',
    '',
  ];
  return 'uat:esp_sa:' + fields.map(uatQuote).join(',');
}

export interface TsharkOptions {
  /** UDP ports that carry ESP (RFC 3948); 4500 needs no mention. */
  udpPorts?: number[];
  /** Dissect the inner packets fully (default: only up to the inner IP/UDP header, see above). */
  fullDissection?: boolean;
}

/** Fields asked of tshark, in column order. */
const FIELDS = [
  'frame.number',
  'frame.protocols',
  'esp.spi',
  'esp.sequence',
  'esp.icv_good',
  'esp.icv_bad',
  'esp.decrypted_data',
  'ip.src',
  'ip.dst',
  'ip.proto',
  'ipv6.src',
  'ipv6.dst',
  'ipv6.nxt',
] as const;

/** The tshark argument list tsharkDecrypt() uses (exported so a test can print it). */
export async function tsharkArgs(
  pcapPath: string,
  sas: TsharkSa[],
  opts: TsharkOptions = {},
): Promise<string[]> {
  const args = ['-n', '-r', pcapPath, '-Y', 'esp'];
  args.push('-o', 'esp.enable_encryption_decode:TRUE');
  args.push('-o', 'esp.enable_authentication_check:TRUE');
  // Sequence analysis only adds expert info; keep the output about this packet alone.
  args.push('-o', 'esp.do_esp_sequence_analysis:FALSE');
  for (const sa of sas) args.push('-o', await saUat(sa));
  for (const port of opts.udpPorts ?? []) {
    if (port !== 4500) args.push('-d', `udp.port==${port},udpencap`);
  }
  args.push('-T', 'fields', '-E', 'separator=/t', '-E', 'occurrence=a', '-E', 'aggregator=|');
  for (const f of FIELDS) args.push('-e', f);
  return args;
}

function parseNum(s: string | undefined): number | null {
  if (s === undefined || s === '') return null;
  const n = s.startsWith('0x') ? parseInt(s, 16) : Number(s);
  return Number.isFinite(n) ? n : null;
}

function parseBool(s: string | undefined): boolean | null {
  if (s === undefined || s === '') return null;
  return s === '1' || s.toLowerCase() === 'true';
}

/** Runs tshark on a pcap with the given SAs; returns one entry per ESP packet it saw. */
export async function tsharkDecrypt(
  pcapPath: string,
  sas: TsharkSa[],
  opts: TsharkOptions = {},
): Promise<TsharkEspPacket[]> {
  const args = await tsharkArgs(pcapPath, sas, opts);
  const { stdout, stderr } = await execFileAsync(TSHARK, args, {
    env: tsharkEnv(opts.fullDissection ? undefined : await restrictedConfigDir()),
    maxBuffer: 256 << 20,
  });
  // tshark prints preference/UAT errors on stderr but still exits 0: treat them as failures.
  const problems = stderr
    .split('\n')
    .filter((l) => l.trim() !== '' && !/Running as user "root"/.test(l) && !/could be dangerous/.test(l));
  if (problems.length > 0) throw new Error(`tshark: ${problems.join('\n')}`);

  const out: TsharkEspPacket[] = [];
  for (const line of stdout.split('\n')) {
    if (line === '') continue;
    const col = Object.fromEntries(FIELDS.map((f, i) => [f, line.split('\t')[i] ?? ''])) as Record<
      (typeof FIELDS)[number],
      string
    >;
    const all = (f: (typeof FIELDS)[number]): string[] => (col[f] === '' ? [] : col[f].split('|'));

    // Which IP layers are inner: those after the (first) esp layer in frame.protocols.
    const layers = col['frame.protocols'].split(':');
    const espAt = layers.indexOf('esp');
    let v4Before = 0;
    let v6Before = 0;
    for (let i = 0; i < espAt; i++) {
      if (layers[i] === 'ip') v4Before++;
      if (layers[i] === 'ipv6') v6Before++;
    }
    const inner = layers.slice(espAt + 1).find((l) => l === 'ip' || l === 'ipv6');
    let innerSrc: string | null = null;
    let innerDst: string | null = null;
    let innerProto: number | null = null;
    if (inner === 'ip') {
      innerSrc = all('ip.src')[v4Before] ?? null;
      innerDst = all('ip.dst')[v4Before] ?? null;
      innerProto = parseNum(all('ip.proto')[v4Before]);
    } else if (inner === 'ipv6') {
      innerSrc = all('ipv6.src')[v6Before] ?? null;
      innerDst = all('ipv6.dst')[v6Before] ?? null;
      innerProto = parseNum(all('ipv6.nxt')[v6Before]);
    }

    const good = parseBool(all('esp.icv_good')[0]);
    const bad = parseBool(all('esp.icv_bad')[0]);
    const icvGood = good === true ? true : bad === true ? false : null;
    const decrypted = all('esp.decrypted_data')[0];
    out.push({
      frame: Number(col['frame.number']),
      spi: parseNum(all('esp.spi')[0]) ?? -1,
      seq: parseNum(all('esp.sequence')[0]) ?? -1,
      icvGood,
      innerSrc,
      innerDst,
      innerProto,
      decryptedHex: decrypted ? decrypted.replace(/:/g, '').toLowerCase() : null,
    });
  }
  return out;
}

/** pcap link types: 101 LINKTYPE_RAW (IPv4 or IPv6), 228 LINKTYPE_IPV4, 229 LINKTYPE_IPV6. */
export type PcapLinkType = 101 | 228 | 229;

/**
 * Writes a classic pcap (microsecond timestamps, little-endian) of raw IP packets. The link type
 * is 101 (RAW: each packet's version nibble says IPv4 or IPv6) unless given.
 */
export function writePcap(path: string, packets: Buffer[], linktype: PcapLinkType = 101): void {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeInt32LE(0, 8); // thiszone
  header.writeUInt32LE(0, 12); // sigfigs
  header.writeUInt32LE(262144, 16); // snaplen
  header.writeUInt32LE(linktype, 20);
  const parts: Buffer[] = [header];
  const t0 = 1_700_000_000;
  packets.forEach((pkt, i) => {
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(t0 + i, 0);
    rec.writeUInt32LE(0, 4);
    rec.writeUInt32LE(pkt.length, 8);
    rec.writeUInt32LE(pkt.length, 12);
    parts.push(rec, pkt);
  });
  writeFileSync(path, Buffer.concat(parts));
}
