// Key Distribution (seed 003 login sequence): the AS hands a node's new Kntmdc to the node's DC
// over mutual TLS (both sides show certificates from the operator's CA; the DC's must say role
// "dc" and name the node's zone) and waits for the DC's NTM ACK before answering the node.

import { Status, statusName, ZERO_KEY } from '../../protocol/control.js';
import { DC_TLS_PORT, findDc } from '../../protocol/discovery.js';
import { peerIdentity } from '../identity.js';
import { connectMutualTls, tlsRequest } from '../tls.js';
import { type KeyDistributionRecord } from './server.js';


export interface KeyDistributorOptions {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** DNS server for the NS lookup of the node's zone ('addr' or 'addr:port'). */
  resolver?: string;
  /** Per zone, the DC's "host:port" (TLS), skipping the NS lookup. */
  dcOverride?: Record<string, string>;
  timeoutMs?: number;
}

export function makeKeyDistributor(opts: KeyDistributorOptions): (record: KeyDistributionRecord) => Promise<void> {
  const files = { caFile: opts.caFile, certFile: opts.certFile, keyFile: opts.keyFile };
  return async (record) => {
    let host: string;
    let port = DC_TLS_PORT;
    let zone: string;
    let serverName: string;
    const fixed = Object.entries(opts.dcOverride ?? {}).find(([z]) => record.fqdn === z || record.fqdn.endsWith(`.${z}`));
    if (fixed) {
      zone = fixed[0];
      const i = fixed[1].lastIndexOf(':');
      host = i > 0 ? fixed[1].slice(0, i).replace(/^\[|\]$/g, '') : fixed[1];
      if (i > 0) port = Number(fixed[1].slice(i + 1));
      serverName = zone;
    } else {
      const loc = await findDc(record.fqdn, { ...(opts.resolver ? { resolvers: [opts.resolver] } : {}), timeoutMs: 2000 });
      zone = loc.zone;
      host = loc.address;
      serverName = loc.nsName;
    }
    const socket = await connectMutualTls(files, host, port, serverName, opts.timeoutMs ?? 5000);
    try {
      const id = peerIdentity(socket.getPeerCertificate());
      if (id.role !== 'dc' || !id.dnsNames.includes(zone)) throw new Error(`DC at ${host}: certificate is not a DC of ${zone}`);
      const answer = await tlsRequest(
        socket,
        'keyDistribution',
        { keyId: record.keyId, key: record.key, expiresAt: record.expiresAt, fqdn: record.fqdn, names: record.names, publicKey: record.publicKey ?? (ZERO_KEY as Buffer) },
        opts.timeoutMs ?? 5000,
      );
      if (answer.type !== 'ntmAck') throw new Error(`DC of ${zone} answered Key Distribution with ${answer.type}`);
      if (answer.body.status !== Status.ok) throw new Error(`DC of ${zone}: ${statusName(answer.body.status)}: ${answer.body.reason}`);
    } finally {
      socket.end();
    }
  };
}
