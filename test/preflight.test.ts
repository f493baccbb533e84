// The router's checks before start (router/preflight.ts), over a fake system: each problem is
// refused with what to do, and a root with forwarding on and its LAN devices present passes.
import t from 'tap';
import { parseRouterConfig } from '../router/config.js';
import { preflight, type System } from '../router/preflight.js';

const config = (lan: string[]) =>
  parseRouterConfig(JSON.stringify({ name: 'r1.zone.test', account: { email: 'r1@zone.test', password: 'pw' }, as: { url: 'https://as.test', ca: '/ca.crt' }, lan: { interfaces: lan } }));

const system = (over: { uid?: number; capEff?: string; ipv4?: string | null; ipv6?: string | null; devices?: string[] } = {}): System => {
  const files: Record<string, string | null> = {
    '/proc/self/status': `Name:\tnode\nCapEff:\t${over.capEff ?? '0000000000000000'}\n`,
    '/proc/sys/net/ipv4/ip_forward': over.ipv4 === undefined ? '1\n' : over.ipv4,
    '/proc/sys/net/ipv6/conf/all/forwarding': over.ipv6 === undefined ? '1\n' : over.ipv6,
  };
  const devices = over.devices ?? ['br-lan'];
  return { uid: () => over.uid ?? 0, readFile: (p) => files[p] ?? null, exists: (p) => devices.some((d) => p === `/sys/class/net/${d}`) };
};

t.test('passes: root, forwarding on, the LAN device present', async (t) => {
  t.doesNotThrow(() => preflight(config(['br-lan']), system()));
  t.doesNotThrow(() => preflight(config([]), system({ ipv4: '0\n' })), 'no LAN: forwarding does not matter');
  t.doesNotThrow(() => preflight(config(['br-lan']), system({ uid: 1000, capEff: '0000000000001000' })), 'not root but CAP_NET_ADMIN');
  t.doesNotThrow(() => preflight(config(['br-lan']), system({ ipv6: null })), 'a kernel without IPv6');
});

t.test('refused, with what to do', async (t) => {
  const cases: [string, string[], Parameters<typeof system>[0], RegExp][] = [
    ['not root', [], { uid: 1000 }, /needs root, or the capability CAP_NET_ADMIN.*run it as root/],
    ['a missing LAN device', ['br-lan', 'lan9'], {}, /^lan\.interfaces\[1\]: no network device "lan9" here.*the LAN would get no translation/],
    ['IPv4 forwarding off', ['br-lan'], { ipv4: '0\n' }, /^net\.ipv4\.ip_forward is 0: .*sysctl -w net\.ipv4\.ip_forward=1/],
    ['IPv6 forwarding off', ['br-lan'], { ipv6: '0\n' }, /^net\.ipv6\.conf\.all\.forwarding is 0: .*sysctl -w net\.ipv6\.conf\.all\.forwarding=1/],
  ];
  for (const [what, lan, sys, re] of cases) t.throws(() => preflight(config(lan), system(sys)), { name: 'PreflightError', message: re }, what);
});
