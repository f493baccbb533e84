// The static tunnel file: a valid file parses to the right values, and every kind of mistake is
// refused with the name of the field.
import t from 'tap';
import { ConfigError } from '../protocol/config.js';
import { parseStaticConfig } from '../router/static-config.js';
import { decodeSockaddr } from '../protocol/endpoint.js';

const good = () => ({
  tun: { name: 'ntm0', mtu: 1400, addresses: ['10.123.0.1/24', 'fd7a::1/64'] },
  listen: { port: 4500 },
  peers: [
    {
      name: 'b',
      vips: ['10.123.0.2', 'fd7a::2'],
      endpoint: '[2001:db8::2]:4501',
      keepalive: 20,
      suite: 'chacha20-poly1305',
      outbound: { spi: 4097, key: 'aa'.repeat(32), salt: '01020304' },
      inbound: { spi: 8193, key: 'bb'.repeat(32), salt: '05060708' },
    },
  ],
});

t.test('a valid file', async (t) => {
  const c = parseStaticConfig(JSON.stringify(good()));
  t.equal(c.tun.mtu, 1400);
  t.equal(c.listen.address, '::', 'listens on all addresses by default');
  t.equal(c.peers[0]!.suite, 'chacha20-poly1305');
  t.same(decodeSockaddr(c.peers[0]!.endpoint!, 0), { address: '2001:db8::2', port: 4501, family: 6 });
  t.equal(c.peers[0]!.outbound.key.length, 32);
  const v4 = good();
  v4.peers[0]!.endpoint = '198.18.0.2:4500';
  (v4.peers[0] as { suite?: string }).suite = undefined;
  v4.peers[0]!.outbound.key = 'cc'.repeat(16);
  v4.peers[0]!.inbound.key = 'dd'.repeat(16);
  const c4 = parseStaticConfig(JSON.stringify(v4));
  t.equal(c4.peers[0]!.suite, 'aes-gcm', 'AES-GCM by default');
  t.equal(decodeSockaddr(c4.peers[0]!.endpoint!, 0).address, '198.18.0.2');
});

t.test('mistakes name their field', async (t) => {
  const cases: [string, (c: ReturnType<typeof good>) => unknown, RegExp][] = [
    ['not JSON', () => '{', /^line 1, column 2: not valid JSON/],
    ['unknown top field', (c) => ({ ...c, tunn: 1 }), /^tunn: unknown field/],
    ['tun name too long', (c) => ((c.tun.name = 'a-very-long-tun-name'), c), /^tun\.name/],
    ['mtu', (c) => ((c.tun.mtu = 100), c), /^tun\.mtu: 100: want an integer from 576/],
    ['address without prefix', (c) => ((c.tun.addresses = ['10.0.0.1']), c), /^tun\.addresses\[0\]/],
    ['port', (c) => ((c.listen.port = 70000), c), /^listen\.port/],
    ['short key', (c) => ((c.peers[0]!.inbound.key = 'ab'.repeat(31)), c), /^peers\[0\]\.inbound\.key: 62 hex digits, want 64/],
    ['not hex', (c) => ((c.peers[0]!.outbound.key = 'zz'.repeat(32)), c), /^peers\[0\]\.outbound\.key: want hex digits/],
    ['salt', (c) => ((c.peers[0]!.outbound.salt = '0102'), c), /^peers\[0\]\.outbound\.salt/],
    ['reserved SPI', (c) => ((c.peers[0]!.outbound.spi = 7), c), /^peers\[0\]\.outbound\.spi: 7/],
    ['suite', (c) => ((c.peers[0]!.suite = 'rot13'), c), /^peers\[0\]\.suite/],
    ['bad endpoint', (c) => ((c.peers[0]!.endpoint = '2001:db8::2:4500'), c), /^peers\[0\]\.endpoint/],
    ['bad VIP', (c) => ((c.peers[0]!.vips = ['10.0.0.300']), c), /^peers\[0\]\.vips\[0\]/],
    ['two IPv4 VIPs', (c) => ((c.peers[0]!.vips = ['10.0.0.1', '10.0.0.2']), c), /^peers\[0\]\.vips: at most one/],
    ['duplicate inbound SPI', (c) => ((c.peers = [c.peers[0]!, { ...c.peers[0]!, name: 'c' }]), c), /^peers\[1\]\.inbound\.spi: 8193 is used/],
    ['missing peers', (c) => ({ tun: c.tun }), /^peers: want a list/],
  ];
  for (const [what, mutate, want] of cases) {
    const input = mutate(good());
    const text = typeof input === 'string' ? input : JSON.stringify(input);
    t.throws(() => parseStaticConfig(text), want, what);
    try {
      parseStaticConfig(text);
    } catch (e) {
      t.type(e, ConfigError, `${what}: a ConfigError`);
    }
  }
});
