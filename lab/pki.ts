// A small operator PKI for the tests and the namespace lab, made with the `openssl` CLI: one CA
// (EC P-256, self-signed, 10 years) and certificates it signs for servers and nodes. Every leaf is
// good for both TLS server and client authentication (servers authenticate each other mutually),
// carries its role in the subject's OU (read back by servers/identity.ts) and its DNS names and IP
// addresses in the subjectAltName. Private keys are written with mode 0600.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';

export interface IssuedCert {
  certFile: string;
  keyFile: string;
  caFile: string;
}

export interface IssueOptions {
  dns?: string[];
  ips?: string[];
  /** Written to the subject's OU: 'as', 'dc', 'rs', 'ns', 'node'… */
  role?: string;
}

export interface Pki {
  dir: string;
  caFile: string;
  caKeyFile: string;
  /** A key and a certificate signed by the CA, as `<dir>/<name>.key` and `<dir>/<name>.crt`. */
  issue(name: string, options?: IssueOptions): IssuedCert;
}

export class PkiError extends Error {
  override name = 'PkiError';
}

const CA_DAYS = 3650;
const LEAF_DAYS = 825;
const ORGANIZATION = 'NTMobile lab';
/** `-subj` and file names: no '/', '=', ',' or '+' that would change the subject's structure. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DNS_NAME = /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** Only the sections `req` needs, so that the host's openssl.cnf does not change what we make. */
const REQ_CONFIG = `[req]
distinguished_name = req_dn
[req_dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`;

function openssl(args: string[], input?: string): string {
  try {
    return execFileSync('openssl', args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new PkiError('openssl: command not found (install the openssl package)');
    throw new PkiError(`openssl ${args[0]}: ${(e.stderr ?? e.message).trim()}`);
  }
}

function newEcKey(): string {
  return openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
}

/** Makes `dir` (mode 0700) with a new CA in it: ca.key, ca.crt. */
export function createPki(dir: string): Pki {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const configFile = join(dir, 'openssl-req.cnf');
  const caFile = join(dir, 'ca.crt');
  const caKeyFile = join(dir, 'ca.key');
  writeFileSync(configFile, REQ_CONFIG);
  writeFileSync(caKeyFile, newEcKey(), { mode: 0o600 });
  openssl([
    'req', '-x509', '-new', '-config', configFile, '-extensions', 'ca_ext', '-key', caKeyFile,
    '-sha256', '-days', String(CA_DAYS), '-subj', `/O=${ORGANIZATION}/CN=${ORGANIZATION} CA`, '-out', caFile,
  ]);

  const issue = (name: string, options: IssueOptions = {}): IssuedCert => {
    if (!SAFE_NAME.test(name)) throw new PkiError(`issue: name "${name}": want letters, digits, '.', '_', '-' (it names the files and the CN)`);
    if (name === 'ca') throw new PkiError('issue: name "ca" is the CA\'s own file name');
    const { dns = [], ips = [], role } = options;
    if (role !== undefined && !SAFE_NAME.test(role)) throw new PkiError(`issue ${name}: role "${role}": want letters, digits, '.', '_', '-'`);
    for (const d of dns) if (!DNS_NAME.test(d)) throw new PkiError(`issue ${name}: dns "${d}" is not a DNS name`);
    for (const ip of ips) if (!isIP(ip)) throw new PkiError(`issue ${name}: ips "${ip}" is not an IP address`);
    if (dns.length + ips.length === 0) throw new PkiError(`issue ${name}: give at least one DNS name or IP address (TLS checks the peer's name against the subjectAltName only)`);

    const keyFile = join(dir, `${name}.key`);
    const certFile = join(dir, `${name}.crt`);
    const extFile = join(dir, `${name}.ext`);
    const san = [...dns.map((d) => `DNS:${d}`), ...ips.map((ip) => `IP:${ip}`)].join(',');
    writeFileSync(keyFile, newEcKey(), { mode: 0o600 });
    writeFileSync(extFile, [
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature',
      'extendedKeyUsage = serverAuth,clientAuth',
      `subjectAltName = ${san}`,
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      '',
    ].join('\n'));
    try {
      const subject = `/O=${ORGANIZATION}${role !== undefined ? `/OU=${role}` : ''}/CN=${name}`;
      const csr = openssl(['req', '-new', '-config', configFile, '-key', keyFile, '-subj', subject]);
      openssl([
        'x509', '-req', '-CA', caFile, '-CAkey', caKeyFile, '-set_serial', `0x${randomBytes(16).toString('hex')}`,
        '-days', String(LEAF_DAYS), '-sha256', '-extfile', extFile, '-out', certFile,
      ], csr);
    } finally {
      rmSync(extFile, { force: true });
    }
    return { certFile, keyFile, caFile };
  };

  return { dir, caFile, caKeyFile, issue };
}
