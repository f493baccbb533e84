// luci-app-ntmobile in a real browser against the real LuCI (issue: the LuCI app). Router A of
// the fleet is an OpenWrt router on the shared userland (lab/openwrt.ts: uhttpd, rpcd, ubusd,
// procd, uci, opkg), with the daemon's .ipk and the app's .ipk installed by the real opkg. Debian's
// chromium, driven by playwright-core over a pipe, runs inside router A's network namespace,
// where uhttpd listens on 127.0.0.1: no traffic leaves the lab's namespaces.
//
// It logs in, reads the status page against `ubus call ntmobile peers`, moves router A's uplink
// and watches the page show the handover without a reload, publishes a1 from the DHCP leases in
// Settings (b2 then fetches from a1 by name), checks that an invalid port is refused and nothing
// saved, pings b2 from Diagnostics, checks that a read-only login can neither save nor read the
// password, and stops the daemon. Every page is screenshotted into artifacts/luci/;
// LUCI_DOCS_SCREENSHOTS=1 (npm run docs:screenshots) also refreshes docs/img/luci-*.png.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import t from 'tap';
import { buildFleet, HANDOVER_SITES, LAN, NAMES, type Fleet } from '../lab/fleet.js';
import { serveRandomFile } from '../lab/http.js';
import { Lab, type Host } from '../lab/lab.js';
import { openwrtRouter, waitFor, type OpenWrt } from '../lab/openwrt.js';
import { startSession } from '../lab/traffic.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const ARTIFACTS = path.join(REPO, 'artifacts/luci');
const DOCS_IMG = path.join(REPO, 'docs/img');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** The status page's poll interval (status.js POLL_SECONDS). */
const POLL_MS = 5000;
const ROOT_PASSWORD = 'owrt-test';
const VIEWER = { user: 'viewer', password: 'viewer-only-7' };
/**
 * cgi-io, which the userland lacks (its README: "Not included"): LuCI's apply asks
 * /cgi-bin/cgi-exec whether a change cuts off the browser, gets 404 there and goes on. Not ours.
 */
const CGI_IO = /\/cgi-bin\/cgi-(exec|io|upload|download)(\?|$)/;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Both .ipk files, built by the same builders as `npm run build:ipk` (the daemon's with the host's addon). */
function buildIpks(): { daemon: string; luci: string } {
  const node = (script: string, ...args: string[]): void =>
    void execFileSync(process.execPath, [path.join(REPO, 'dist/openwrt', script), ...args], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
  node('build-ipk.js', '--host-addon');
  node('build-luci-ipk.js');
  const find = (dir: string, re: RegExp): string => {
    const f = readdirSync(dir).find((x) => re.test(x));
    if (f === undefined) throw new Error(`no ${re} in ${dir}`);
    return path.join(dir, f);
  };
  return { daemon: find(path.join(REPO, 'build/ipk/host'), /^ntmobile_.*_x86_64\.ipk$/), luci: find(path.join(REPO, 'build/ipk'), /^luci-app-ntmobile_.*_all\.ipk$/) };
}

interface PeerRow {
  node: string;
  path: string | null;
  route: string;
}
interface Status {
  state: string;
  name: string;
  registered: { name: string; vip4: string | null }[];
  uplink: { address: string | null; handovers: number; recentHandovers: { at: number; ms: number }[] };
}

/** The path kind the page shows for a route text (status.js pathKind). */
const kindOf = (route: string): string => /^(direct|relay|gateway|mesh)\b/.exec(route)?.[1] ?? route;

async function fetchSha(host: Host, url: string): Promise<string> {
  const r = await host.sh(`curl -sf --max-time 20 ${url} | sha256sum`, { allowFail: true, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`${host.name}: curl ${url}: exit ${r.code} ${r.stderr}`);
  return r.stdout.split(/\s+/)[0]!;
}

t.test('LuCI: luci-app-ntmobile in Chromium against the real LuCI, router A in a fleet', async (t) => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh installs it)`);
  const ipks = buildIpks();
  const lab = await Lab.create('luci-e2e');
  let fleet: Fleet | null = null;
  let owrt: OpenWrt | null = null;
  let context: BrowserContext | null = null;
  const profile = mkdtempSync(path.join(os.tmpdir(), `ntm-luci-${lab.id}-`));
  t.teardown(async () => {
    await context?.close().catch(() => undefined);
    rmSync(profile, { recursive: true, force: true });
    if (owrt !== null) await owrt.remove();
    fleet?.dispose();
    await lab.destroy();
  });
  try {
    fleet = await buildFleet(lab, { case: 'b-nat', verbose: false, extraSites: { d: HANDOVER_SITES.d! }, external: {
      ra: async (setup) => {
        const r = await openwrtRouter(lab, ipks.daemon, setup);
        owrt = r.owrt;
        return r.router;
      },
    } });
  } catch (e) {
    lab.dumpLogs();
    throw e;
  }
  const f = fleet;
  const o = owrt as unknown as OpenWrt;

  // ---- the app's package, by opkg ---------------------------------------------------------------
  const installed = await o.install(ipks.luci);
  t.equal(installed.code, 0, 'opkg install luci-app-ntmobile', { output: installed.stdout + installed.stderr });
  t.match(await o.run('opkg list-installed luci-app-ntmobile'), /^luci-app-ntmobile - /m, 'opkg lists luci-app-ntmobile');
  t.not((await o.sh('uci -q get ntmobile.main.password')).code, 0, 'the uci-defaults moved the account password out of /etc/config/ntmobile');
  const pwFile = path.join(o.root, 'etc/ntmobile/password');
  t.equal(statSync(pwFile).mode & 0o777, 0o600, '… into /etc/ntmobile/password, mode 0600');
  t.equal((await o.run('uci -q get ntmobile.main.password_file')).trim(), '/etc/ntmobile/password', '… named by option password_file');

  // a second rpcd login with the read half of the app's grant only (and LuCI's basics, read only)
  const hash = execFileSync('openssl', ['passwd', '-1', VIEWER.password], { encoding: 'utf8' }).trim();
  await o.run([
    'uci add rpcd login >/dev/null',
    `uci set rpcd.@login[-1].username='${VIEWER.user}'`,
    `uci set rpcd.@login[-1].password='${hash}'`,
    // 'unauthenticated' holds session access, which LuCI asks on every page (root has it through '*')
    "uci add_list rpcd.@login[-1].read='unauthenticated'",
    "uci add_list rpcd.@login[-1].read='luci-base'",
    "uci add_list rpcd.@login[-1].read='luci-app-ntmobile'",
    'uci commit rpcd',
  ].join('; '));

  // a tunnel to router B: a1 fetches from b2 by name
  const data = await serveRandomFile(f.b2, { dir: f.dir, bind: LAN.b2, size: 1 << 20 });
  t.equal(await fetchSha(f.a1, `http://${NAMES.b2}:8080/f`), sha(data), `a1 fetches from ${NAMES.b2} by name (a tunnel A → B)`);

  // ---- the browser, in router A's namespace -----------------------------------------------------
  const wrapper = path.join(profile, 'chromium-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${f.ra.host.ns}' '${CHROMIUM}' "$@"\n`);
  chmodSync(wrapper, 0o755);
  context = await chromium.launchPersistentContext(path.join(profile, 'user-data'), {
    executablePath: wrapper,
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    timeout: 60_000,
  });
  const page: Page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20_000);
  const base = 'http://127.0.0.1:8080/cgi-bin/luci';
  const errors: string[] = [];
  let watching = false;
  page.on('pageerror', (e) => errors.push(`${page.url()}: uncaught ${e.message}`));
  page.on('response', (r) => {
    if (watching && r.status() >= 400 && !CGI_IO.test(r.url())) errors.push(`${page.url()}: HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
  });
  page.on('console', (m) => {
    if (watching && m.type() === 'error' && !CGI_IO.test(m.location().url)) errors.push(`${page.url()}: console.error ${m.text()} (${m.location().url})`);
  });
  mkdirSync(ARTIFACTS, { recursive: true });
  let shots = 0;
  const shot = async (name: string, docs?: string, o: { fullPage?: boolean } = {}): Promise<void> => {
    const file = path.join(ARTIFACTS, `${String(++shots).padStart(2, '0')}-${name}.png`);
    // LuCI fades dialogs in: the picture once every animation has ended, from the top of the page
    await page.evaluate(() => Promise.all(document.getAnimations().map((a) => a.finished)).then(() => window.scrollTo(0, 0)));
    await page.screenshot({ path: file, fullPage: o.fullPage ?? true });
    if (docs !== undefined && process.env.LUCI_DOCS_SCREENSHOTS === '1') {
      mkdirSync(DOCS_IMG, { recursive: true });
      copyFileSync(file, path.join(DOCS_IMG, docs));
    }
  };
  const login = async (user: string, password: string, url: string): Promise<void> => {
    watching = false; // LuCI answers a page that needs a login with 403 and the login form
    await page.goto(url);
    await page.fill('input[name=luci_username]', user);
    await page.fill('input[name=luci_password]', password);
    await Promise.all([page.waitForNavigation(), page.click('button.cbi-button-positive')]);
    watching = true;
  };
  const ubus = async <T>(method: string): Promise<T> => JSON.parse(await o.run(`ubus call ntmobile ${method}`)) as T;
  const cell = (sel: string): Promise<string> => page.locator(sel).innerText().then((s) => s.trim());

  // ---- log in; Services → NTMobile: registration and router B as a peer --------------------------
  await login('root', ROOT_PASSWORD, `${base}/admin/services/ntmobile`);
  await page.waitForSelector('#ntm-status');
  t.ok(await page.locator('a[href$="/admin/services/ntmobile"]').count(), 'the Services menu has NTMobile');
  const peerRow = `#ntm-peers tr[data-node="${NAMES.rb}"]`;
  await page.waitForSelector(peerRow);
  const status0 = await ubus<Status>('status');
  const own = status0.registered.find((r) => r.name === NAMES.ra)!;
  t.equal(await cell('#ntm-registration tr[data-key=name] td:last-child'), NAMES.ra, 'status page: the router name');
  t.equal(await cell('#ntm-registration tr[data-key=state] td:last-child'), 'registered', 'status page: registered');
  t.equal(await cell('#ntm-registration tr[data-key=vip4] td:last-child'), own.vip4, `status page: the VIP ${own.vip4}, as ubus says`);
  const peers0 = (await ubus<{ peers: PeerRow[] }>('peers')).peers;
  const b0 = peers0.find((p) => p.node === NAMES.rb)!;
  t.ok(b0, '`ubus call ntmobile peers` has router B');
  t.equal(await page.getAttribute(peerRow, 'data-kind'), kindOf(b0.route), `status page: router B's path kind is ${kindOf(b0.route)} (ubus: "${b0.route}")`);
  t.equal(await cell(`${peerRow} .ntm-endpoint`), b0.path, `status page: router B's endpoint is ${b0.path}, as ubus says`);
  await page.waitForSelector('#ntm-chart svg polyline', { timeout: 3 * POLL_MS }).catch(() => undefined);
  await shot('status', 'luci-status.png');

  // ---- handover: the page shows it within two poll intervals, without a reload ------------------
  await page.evaluate(() => void ((window as unknown as { ntmSamePage: boolean }).ntmSamePage = true));
  const rowsBefore = await page.locator('#ntm-handovers tr[data-at]').count();
  // a transfer a1 → b2 across the move, for the chart
  const session = await startSession({
    tcp: { from: f.a1, target: NAMES.b2, to: f.b2, bind: LAN.b2, port: 9400, bytes: 16_000_000, bytesPerSecond: 800_000 },
    udp: [],
    rate: 0,
    seconds: 0,
  });
  await page.waitForFunction(() => Number(document.querySelector('#ntm-chart-svg')?.getAttribute('data-max')) > 200_000, undefined, { timeout: 4 * POLL_MS });
  const moved = await f.moveRouter('ra', 'd');
  // the newest handover row that ends at the new address, with the uplink shown beside it
  const shown = await page.waitForFunction(
    ({ rows, address }) => {
      const hs = document.querySelectorAll('#ntm-handovers tr[data-at]');
      const up = document.querySelector('#ntm-uplink tr[data-key=address] td:last-child');
      return hs.length > rows && up?.textContent === address && (hs[0]!.textContent ?? '').includes(`→ ${address}`) ? Number(hs[0]!.getAttribute('data-at')) : false;
    },
    { rows: rowsBefore, address: moved.address },
    { timeout: 30_000, polling: 100 },
  );
  const shownAt = Date.now();
  const at = (await shown.jsonValue()) as number;
  const report = (await ubus<Status>('status')).uplink.recentHandovers.find((h) => h.at === at);
  t.ok(report, `the handover the page shows is the daemon's (at ${at})`);
  const delay = shownAt - (report!.at + report!.ms);
  t.ok(delay <= 2 * POLL_MS, `the status page showed the handover to ${moved.address} ${delay} ms after the daemon finished it (within two polls: ${2 * POLL_MS} ms)`);
  const b1 = await waitFor("the peers table shows router B's path as ubus does", 2 * POLL_MS + 1000, async () => {
    const b = (await ubus<{ peers: PeerRow[] }>('peers')).peers.find((p) => p.node === NAMES.rb);
    return b !== undefined && (await page.getAttribute(peerRow, 'data-kind')) === kindOf(b.route) && (await cell(`${peerRow} .ntm-endpoint`)) === b.path ? b : undefined;
  });
  t.pass(`after the handover the page shows router B's path as ubus does: ${b1.route}, ${b1.path}`);
  t.ok(await page.evaluate(() => (window as unknown as { ntmSamePage?: boolean }).ntmSamePage === true), 'the page was not reloaded');
  await page.waitForSelector('#ntm-chart .ntm-handover-mark', { state: 'attached' });
  const transfer = await session.finish();
  t.ok(transfer.tcp.intact && transfer.tcp.code === 0, `the TCP transfer a1 → b2 survived the move (SHA-256 equal, ${transfer.tcp.retransmits} retransmits)`);
  await shot('status-after-handover', 'luci-status-handover.png');

  // ---- Settings: publish a1, picked from the DHCP leases ------------------------------------------
  const mac = (await f.a1.exec('cat', ['/sys/class/net/eth0/address'])).stdout.trim();
  await o.run(`echo "$(( $(date +%s) + 3600 )) ${mac} ${LAN.a1} a1 01:${mac}" > /tmp/dhcp.leases`);
  await page.goto(`${base}/admin/services/ntmobile/settings`);
  await page.waitForSelector('#cbi-ntmobile-publish');
  await shot('settings', 'luci-settings.png');
  await page.click('#cbi-ntmobile-publish .cbi-section-create button');
  const modal = page.locator('.modal');
  await modal.waitFor();
  await modal.locator('[data-name="mac"] .cbi-dropdown').click();
  await modal.locator(`[data-name="mac"] li[data-value="${mac}"]`).first().click();
  await page.waitForFunction((n) => (document.querySelector('.modal [data-name="name"] input') as HTMLInputElement | null)?.value === n, NAMES.a1);
  t.pass(`picking ${mac} from the leases filled in the name ${NAMES.a1}`);
  await shot('settings-publish-from-leases', 'luci-settings-publish.png', { fullPage: false });
  await modal.locator('.button-row .cbi-button-positive').click();
  await modal.waitFor({ state: 'hidden' });
  await page.click('.cbi-page-actions .cbi-button-apply');
  await waitFor(`${NAMES.a1} in /etc/config/ntmobile`, 60_000, async () => (/mac '.*'/.test(readFileSync(path.join(o.root, 'etc/config/ntmobile'), 'utf8')) ? true : undefined));
  t.match(await o.run('uci show ntmobile'), new RegExp(`ntmobile\\.@?\\w+(\\[\\d+\\])?\\.mac='${mac}'`), 'saved: a publish section with the MAC');
  await waitFor(`${NAMES.a1} registered after the reload`, 30_000, async () => (await ubus<Status>('status')).registered.some((r) => r.name === NAMES.a1 && r.vip4) || undefined);
  const dataA1 = await serveRandomFile(f.a1, { dir: f.dir, bind: LAN.a1, size: 1 << 20 });
  t.equal(await fetchSha(f.b2, `http://${NAMES.a1}:8080/f`), sha(dataA1), `b2 reaches the newly published ${NAMES.a1} by name (SHA-256 equal)`);
  await page.waitForSelector('.alert-message', { state: 'detached', timeout: 30_000 }).catch(() => undefined);
  await page.goto(`${base}/admin/services/ntmobile/status`);
  await page.waitForSelector(`#ntm-published tr[data-name="${NAMES.a1}"]`);
  t.match(await cell(`#ntm-published tr[data-name="${NAMES.a1}"]`), /yes/, `the status page lists ${NAMES.a1} as published and registered`);
  await shot('status-published');

  // ---- an invalid port: the form says so, nothing is saved --------------------------------------
  const configBefore = readFileSync(path.join(o.root, 'etc/config/ntmobile'), 'utf8');
  await page.goto(`${base}/admin/services/ntmobile/settings`);
  await page.waitForSelector('#cbi-ntmobile-main');
  await page.click('.cbi-tabmenu li[data-tab="network"] a');
  const port = page.locator('[data-name="port"] input');
  await port.fill('70000');
  await port.blur();
  const writes: string[] = [];
  page.on('request', (r) => {
    const body = r.postData() ?? '';
    if (/"uci"\s*,\s*"(set|add|apply|delete)"/.test(body) || /"file"\s*,\s*"write"/.test(body)) writes.push(body);
  });
  await page.click('.cbi-page-actions .cbi-button-apply');
  t.ok(await page.locator('[data-name="port"] input.cbi-input-invalid').count(), 'the port field is marked invalid');
  const saveError = page.locator('.modal', { hasText: 'UDP port' });
  await saveError.waitFor();
  const errorText = (await saveError.innerText()).replace(/\s+/g, ' ').trim();
  t.match(errorText, /"UDP port" contains an invalid input value/, `the form refuses port 70000: "${errorText}"`);
  await shot('settings-invalid-port', 'luci-settings-invalid.png', { fullPage: false });
  await saveError.locator('button').click();
  t.same(writes, [], 'no UCI change was sent');
  t.equal(readFileSync(path.join(o.root, 'etc/config/ntmobile'), 'utf8'), configBefore, '/etc/config/ntmobile is unchanged');

  // ---- Diagnostics: ping b2 over the tunnel -----------------------------------------------------
  await page.goto(`${base}/admin/services/ntmobile/diagnostics`);
  await page.fill('#ntm-ping-name', NAMES.b2);
  await page.click('#ntm-ping-button');
  await page.waitForSelector('#ntm-ping-result[data-state=ok]', { timeout: 30_000 });
  const peersNow = (await ubus<{ peers: PeerRow[] }>('peers')).peers.find((p) => p.node === NAMES.rb)!;
  t.equal(await cell('#ntm-ping-table tr[data-key=path] td:last-child'), peersNow.route, `diagnostics: the ping to ${NAMES.b2} went ${peersNow.route}`);
  t.match(await cell('#ntm-ping-table tr[data-key=received] td:last-child'), /^[1-9]\d* \/ 3$/, 'diagnostics: replies received');
  await shot('diagnostics', 'luci-diagnostics.png');

  // ---- a read-only login: sees the status, cannot save, never sees the password ----------------
  await context.clearCookies();
  await login(VIEWER.user, VIEWER.password, `${base}/admin/services/ntmobile/settings`);
  await page.waitForSelector('#cbi-ntmobile-main');
  t.not(await page.getAttribute('.cbi-page-actions .cbi-button-apply', 'disabled'), null, 'read-only user: Save & Apply is disabled');
  t.ok(await page.locator('.cbi-page-actions .cbi-button-save').isDisabled(), 'read-only user: Save is disabled');
  await shot('settings-read-only');
  const denied = await page.evaluate(async () => {
    const call = async (object: string, method: string, args: Record<string, unknown>): Promise<unknown> => {
      const env = (window as unknown as { L: { env: { sessionid: string } } }).L.env;
      const r = await fetch('/ubus', { method: 'POST', body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'call', params: [env.sessionid, object, method, args] }) });
      return r.json();
    };
    return {
      set: await call('uci', 'set', { config: 'ntmobile', section: 'main', values: { port: '4501' } }),
      get: await call('uci', 'get', { config: 'ntmobile', section: 'main' }),
      file: await call('file', 'read', { path: '/etc/ntmobile/password' }),
      ping: await call('ntmobile', 'ping', { name: 'b2.rb.fleet2.test' }),
      status: await call('ntmobile', 'status', {}),
    };
  });
  const code = (r: unknown): number | undefined => (r as { error?: { code: number } }).error?.code;
  t.equal(code(denied.set), -32002, 'read-only user: uci set ntmobile is denied (Access denied)');
  t.equal(code(denied.ping), -32002, 'read-only user: the diagnostic ping is denied');
  t.equal(code(denied.file), -32002, 'read-only user: /etc/ntmobile/password cannot be read');
  const values = ((denied.get as { result?: [number, { values?: Record<string, unknown> }] }).result ?? [])[1]?.values ?? {};
  t.ok(Object.keys(values).length > 0 && !('password' in values), 'read-only user: reads the config, which holds no password');
  t.equal(((denied.status as { result?: [number, Status] }).result ?? [])[1]?.state, 'ready', 'read-only user: reads the status');
  await page.goto(`${base}/admin/services/ntmobile/diagnostics`);
  t.ok(await page.locator('#ntm-ping-button').isDisabled(), 'read-only user: the Ping button is disabled');

  // ---- the daemon stopped: the status page says so ---------------------------------------------
  await context.clearCookies();
  await login('root', ROOT_PASSWORD, `${base}/admin/services/ntmobile/status`);
  await page.waitForSelector('#ntm-notice[data-state=ready]', { state: 'attached' });
  await o.run('/etc/init.d/ntmobile stop');
  await page.waitForSelector('#ntm-notice[data-state=stopped]', { timeout: 2 * POLL_MS + 5000 });
  t.match(await cell('#ntm-notice'), /not running/, `the status page says "${await cell('#ntm-notice')}"`);
  t.notOk(await page.locator('#ntm-parts').isVisible(), '… and shows no stale numbers');
  await shot('status-stopped', 'luci-status-stopped.png');

  t.same(errors, [], 'no JavaScript error in the console on any page');
});
