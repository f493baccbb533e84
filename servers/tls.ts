// Mutually authenticated TLS between servers (AS → DC Key Distribution, DC ↔ DC, DC → RS and
// DC → NS first contact): certificates from the operator's CA on both sides, TLS 1.3, and a stream of
// control messages of key class "tls" (protocol/control.ts), each behind a 2-byte length.

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as tls from 'node:tls';
import { type FileField } from '../protocol/config.js';
import { decodeTlsMessage, encodeTlsMessage, type Body, type ControlMessage, type MessageName } from '../protocol/control.js';
import { newMessageId } from '../protocol/channel.js';
import { exportServerKey } from '../protocol/keys.js';
import { peerIdentity } from './identity.js';

export interface TlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** The `tls` section's files for the start-up check (protocol/config.ts checkFiles): the key is a secret. */
export function tlsFileFields(f: TlsFiles, prefix = 'tls.'): FileField[] {
  return [
    { field: `${prefix}ca`, path: f.caFile },
    { field: `${prefix}cert`, path: f.certFile },
    { field: `${prefix}key`, path: f.keyFile, secret: true },
  ];
}

export function tlsContextOptions(f: TlsFiles): { ca: Buffer; cert: Buffer; key: Buffer; minVersion: 'TLSv1.3' } {
  return { ca: readFileSync(f.caFile), cert: readFileSync(f.certFile), key: readFileSync(f.keyFile), minVersion: 'TLSv1.3' };
}

export function connectMutualTls(files: TlsFiles, host: string, port: number, servername: string, timeoutMs = 5000): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ ...tlsContextOptions(files), host, port, servername, rejectUnauthorized: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`TLS ${host}:${port}: no handshake within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`TLS ${host}:${port}: ${e.message}`));
    });
  });
}

const MAX_FRAME = 4096;

/** Reassembles 2-byte-length frames from a TLS stream and decodes each as a control message. */
export function onMessages(socket: tls.TLSSocket, handler: (m: ControlMessage, messageId: bigint) => void, onError: (e: Error) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 2) {
      const n = pending.readUInt16BE(0);
      if (n === 0 || n > MAX_FRAME) {
        onError(new Error(`TLS stream: frame of ${n} bytes`));
        socket.destroy();
        return;
      }
      if (pending.length < 2 + n) break;
      const frame = pending.subarray(2, 2 + n);
      pending = pending.subarray(2 + n);
      try {
        const { envelope, message } = decodeTlsMessage(frame);
        handler(message, envelope.messageId);
      } catch (e) {
        onError(e as Error);
        socket.destroy();
        return;
      }
    }
  });
}

export function writeMessage<N extends MessageName>(socket: tls.TLSSocket, type: N, body: Body<N>, messageId: bigint = newMessageId()): bigint {
  const m = encodeTlsMessage(type, body, messageId, Date.now());
  const len = Buffer.alloc(2);
  len.writeUInt16BE(m.length);
  socket.write(Buffer.concat([len, m]));
  return messageId;
}

/**
 * Waits for the next message on the stream (first contact with an RS: its Relay Hello). Rejects
 * when none comes within timeoutMs, the stream ends first, or what comes is not a message.
 */
export function readMessage(socket: tls.TLSSocket, timeoutMs = 5000, what = 'TLS stream'): Promise<ControlMessage> {
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (e: Error | null, m?: ControlMessage): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('close', onClose);
      if (e) reject(e);
      else resolve(m!);
    };
    const timer = setTimeout(() => finish(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onClose = (): void => finish(new Error(`${what}: connection closed before an answer`));
    onMessages(
      socket,
      (m) => finish(null, m),
      (e) => finish(e),
    );
    socket.once('close', onClose);
  });
}

/** Sends one message and waits for the first message back (an NTM ACK, typically). */
export function tlsRequest<N extends MessageName>(socket: tls.TLSSocket, type: N, body: Body<N>, timeoutMs = 5000): Promise<ControlMessage> {
  const answer = readMessage(socket, timeoutMs, type);
  writeMessage(socket, type, body);
  return answer;
}

/** What a DC's first contact with an RS or an NS says, by the role the DC expects. */
const FIRST_CONTACT = {
  rs: { keyLabel: 'kdcrs', hello: 'relayHello', text: 'Relay Hello' },
  ns: { keyLabel: 'kdcns', hello: 'nsHello', text: 'NS Hello' },
} as const;

/**
 * A DC's first contact with an RS or an NS: mutual TLS to its TLS port; its certificate must
 * carry the role (the OU: a DC's or the AS's certificate cannot pass for it) and name `name`
 * (TLS has already checked the chain and the server name); both ends take the key and its ID
 * from the TLS exporter; the server writes one hello naming itself, and the DC closes.
 */
export async function firstContact<R extends keyof typeof FIRST_CONTACT>(
  files: TlsFiles,
  role: R,
  server: { name: string; address: string; tlsPort: number },
  timeoutMs: number,
): Promise<{ keyId: number; key: Buffer; hello: Body<(typeof FIRST_CONTACT)[R]['hello']> }> {
  const what = FIRST_CONTACT[role];
  const socket = await connectMutualTls(files, server.address, server.tlsPort, server.name, timeoutMs);
  try {
    const id = peerIdentity(socket.getPeerCertificate());
    if (id.role !== role) throw new Error(`certificate role ${id.role ?? 'none'}, want ${role}`);
    if (!id.dnsNames.includes(server.name)) throw new Error(`certificate does not name ${server.name}`);
    const k = exportServerKey(socket, what.keyLabel);
    const hello = await readMessage(socket, timeoutMs, what.text);
    if (hello.type !== what.hello) throw new Error(`sent ${hello.type}, want ${what.hello}`);
    // Both hellos begin with the server's name.
    const named = (hello.body as { name: string }).name;
    if (named !== server.name) throw new Error(`${what.text} names ${named}, want ${server.name}`);
    return { ...k, hello: hello.body as Body<(typeof FIRST_CONTACT)[R]['hello']> };
  } finally {
    socket.destroy();
  }
}

/**
 * The server side of first contact (an RS or an NS): mutual TLS on `tls.port` that takes DCs'
 * certificates only (role `dc`, with the DNS names the DC is known by); each DC's key and its ID
 * from the TLS exporter go to `onKey`, then the server writes its hello and closes.
 */
export async function listenFirstContact<R extends keyof typeof FIRST_CONTACT>(
  role: R,
  o: {
    tls: TlsFiles & { port: number };
    address: string;
    hello: () => Body<(typeof FIRST_CONTACT)[R]['hello']>;
    onKey: (key: { keyId: number; key: Buffer }, dcNames: string[]) => void;
    counters: { tlsAccepted: number; tlsRejected: number };
    trace: (line: string) => void;
  },
): Promise<tls.Server> {
  const what = FIRST_CONTACT[role];
  const server = tls.createServer({ ...tlsContextOptions(o.tls), requestCert: true, rejectUnauthorized: true }, (socket) => {
    socket.on('error', () => undefined);
    const id = peerIdentity(socket.getPeerCertificate());
    if (id.role !== 'dc' || id.dnsNames.length === 0) {
      o.counters.tlsRejected++;
      o.trace(`first contact refused: certificate role ${id.role ?? 'none'}, want dc with a DNS name`);
      socket.destroy();
      return;
    }
    const k = exportServerKey(socket, what.keyLabel);
    o.onKey(k, id.dnsNames);
    writeMessage(socket, what.hello as MessageName, o.hello() as Body<MessageName>);
    socket.end();
    o.counters.tlsAccepted++;
    o.trace(`first contact from ${id.dnsNames.join(', ')}: key ${k.keyId}`);
  });
  server.on('tlsClientError', () => o.counters.tlsRejected++);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.tls.port, o.address === '::' ? undefined : o.address, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/**
 * A server's own certificate must name it and carry its role (`dc`: its zone; `rs`, `ns`: its
 * name; `as`: the role only, for Key Distribution): the AS and the DCs refuse it otherwise, long
 * after the server said `ready`.
 */
export function checkOwnCertificate(certFile: string, name: string | null, role: 'as' | 'dc' | keyof typeof FIRST_CONTACT, field = 'tls.cert'): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(certFile));
  } catch (e) {
    throw new Error(`${field} ${certFile}: ${(e as Error).message}`);
  }
  if (name !== null && cert.checkHost(name, { wildcards: false }) === undefined) throw new Error(`${field} ${certFile}: does not name ${name} (subjectAltName ${cert.subjectAltName ?? 'none'})`);
  // The role as the DCs will read it from the TLS session (servers/identity.ts).
  const found = peerIdentity(cert.toLegacyObject()).role;
  if (found !== role) throw new Error(`${field} ${certFile}: role (OU) ${found ?? 'none or several'}, want ${role} (${role === 'rs' || role === 'ns' ? 'DCs' : role === 'as' ? 'the DCs' : 'the AS and other DCs'} refuse it otherwise; issue one with OU ${role})`);
}
