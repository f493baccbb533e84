// Who a TLS peer is, read from its certificate: servers authorise each other (AS → DC key
// distribution, DC ↔ DC, DC ↔ RS) by the role the operator's CA wrote into the subject's OU
// (`as`, `dc`, `rs`, `ns`) and by the DNS names in the subjectAltName. The chain itself is checked
// by node:tls (requestCert + rejectUnauthorized against the operator's CA) before this is read.

import type { PeerCertificate } from 'node:tls';

export interface PeerIdentity {
  /** The subject's single OU, or null if there is none or more than one (ambiguous: no role). */
  role: string | null;
  /** The subjectAltName DNS names, lower-case, in certificate order. */
  dnsNames: string[];
}

/**
 * Node formats subjectAltName as `DNS:a.example, IP Address:127.0.0.1`; a value with characters
 * that would make this ambiguous (comma, quote, control characters) is written as a JSON string.
 */
const SAN_ENTRY = /([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/y;

function parseSubjectAltName(text: string): { type: string; value: string }[] {
  const entries: { type: string; value: string }[] = [];
  SAN_ENTRY.lastIndex = 0;
  while (SAN_ENTRY.lastIndex < text.length) {
    const m = SAN_ENTRY.exec(text);
    if (!m) break;
    const raw = m[2]!;
    entries.push({ type: m[1]!, value: raw.startsWith('"') ? (JSON.parse(raw) as string) : raw });
  }
  return entries;
}

/** The role and DNS names of a peer, from `tls.TLSSocket.getPeerCertificate()`. */
export function peerIdentity(cert: PeerCertificate): PeerIdentity {
  // getPeerCertificate() returns {} when the peer sent no certificate.
  const ou: unknown = cert.subject?.OU;
  const role = typeof ou === 'string' && ou !== '' ? ou : null;
  const dnsNames = cert.subjectaltname
    ? parseSubjectAltName(cert.subjectaltname)
        .filter((e) => e.type === 'DNS')
        .map((e) => e.value.toLowerCase())
    : [];
  return { role, dnsNames };
}
