// `ntmobile init`: a complete starter config for the router daemon, every field present with its
// default (docs/router.md, Configuration, says what each means), the few that have none filled
// with placeholders to replace. It parses as it is (test/cli-help.test.ts checks that), so an
// operator edits a valid file instead of writing one from the reference.

/** The starter config; `name` and `email` fill the placeholders when given. */
export function starterConfig(name = 'router1.zone.example', email = 'router1@zone.example'): object {
  const zone = name.slice(name.indexOf('.') + 1);
  return {
    name,
    account: { email, passwordFile: 'router.password' },
    as: { url: 'https://as.zone.example:8443', ca: 'ca.crt' },
    privateKeyFile: '/etc/ntmobile/node.key',
    listen: { address: '::', port: 4500 },
    tun: { name: 'ntm0', mtu: 1400 },
    lan: { interfaces: ['br-lan'] },
    uplinks: [],
    uplinkTable: 4500,
    publish: [],
    dns: { address: '127.0.0.1', port: 5353, domains: [zone], timeoutMs: 3000 },
    resolvers: [],
    dc: {},
    dcPort: 4500,
    suite: 'aes-gcm',
    rekeyAfterSeconds: 1800,
    mapPool4: '10.255.255.0/24',
    socketPath: '/var/run/ntmobile.sock',
    nftTable: 'ntmobile',
    general: { viaRelay: [] },
    notify: null,
    logLevel: 'info',
    dhcpLeases: '/tmp/dhcp.leases',
  };
}
