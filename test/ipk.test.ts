// The OpenWrt package as `npm run build:ipk` makes it (openwrt/build-ipk.ts from
// openwrt/net/ntmobile/Makefile): both variants are built here, their structure read back with
// tar, the bundle's inputs checked (no server code, no broker), the musl addon checked for glibc,
// the host addon loaded by the installed bundle, and the host variant installed and removed with
// the real opkg of the shared OpenWrt userland, in an instance of its own inside a network
// namespace of its own.
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { checkMusl, controlDepends, libcOf, parseMakefile, readPackageInfo, stageApp, MAKEFILE, PACKAGE_DIR } from '../openwrt/build-ipk.js';
import { ADDON_PATH } from '../netlink/native.js';
import { addBaseFilesScripts, OWRT_DIR, userlandDir } from '../lab/openwrt.js';
import { staticPair } from '../lab/static-node.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const BUILDER = path.join(REPO, 'dist/openwrt/build-ipk.js');
const APP = 'usr/lib/ntmobile';
const ADDON = `${APP}/native/build/Release/ntm.node`;
/** The daemon's entry point: the bundle, where dist/router/cli.js sits in the repository. */
const ENTRY = `${APP}/dist/router/cli.js`;
const info = readPackageInfo();
const ipkName = `${info.name}_${info.version}_x86_64.ipk`;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'ntm-ipk-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

interface Built {
  file: string;
  /** the extracted package: debian-binary, control/, data/ */
  dir: string;
  output: string;
}

/** Runs the builder as `npm run build:ipk` does (dist is built: this test runs from it). */
function build(args: string[], name: string): Built {
  const r = spawnSync(process.execPath, [BUILDER, ...args], { cwd: REPO, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build-ipk ${args.join(' ')} exited with ${r.status}:\n${r.stdout}${r.stderr}`);
  const file = path.join(REPO, 'build/ipk', args.includes('--host-addon') ? 'host' : '', ipkName);
  const dir = path.join(tmp, name);
  for (const d of ['outer', 'control', 'data']) execFileSync('mkdir', ['-p', path.join(dir, d)]);
  execFileSync('tar', ['-xzf', file, '-C', path.join(dir, 'outer')]);
  execFileSync('tar', ['-xzf', path.join(dir, 'outer/control.tar.gz'), '-C', path.join(dir, 'control')]);
  execFileSync('tar', ['-xzf', path.join(dir, 'outer/data.tar.gz'), '-C', path.join(dir, 'data')]);
  return { file, dir, output: r.stdout };
}

const members = (tarFile: string): string[] => execFileSync('tar', ['-tzf', tarFile], { encoding: 'utf8' }).split('\n').filter(Boolean);

/** Paths of the regular files and links under a folder, relative, without ./ */
function filesOf(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel === '' ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) out.push(...filesOf(dir, r));
    else out.push(r);
  }
  return out.sort();
}

const musl = build([], 'musl');
const host = build(['--host-addon'], 'host');

t.test('the builder says what it made', async (t) => {
  for (const b of [musl, host]) {
    t.match(b.output, /build:ipk: compiling the addon/, 'a progress line per step');
    t.match(b.output, new RegExp(`${ipkName.replaceAll('.', '\\.')}: \\d+ bytes \\(.*MiB\\), installed size \\d+ bytes`), 'the file, its size and the installed size');
    t.ok(existsSync(b.file), b.file);
  }
  t.not(musl.file, host.file, 'the two variants sit side by side');
  t.match(musl.output, /NEEDED libc\.so only, no GLIBC_/, 'the musl check ran');
});

t.test('outer archive: debian-binary, data.tar.gz, control.tar.gz', async (t) => {
  for (const b of [musl, host]) {
    t.strictSame(members(b.file), ['./debian-binary', './data.tar.gz', './control.tar.gz']);
    t.equal(readFileSync(path.join(b.dir, 'outer/debian-binary'), 'utf8'), '2.0\n');
  }
});

t.test('control: fields from the Makefile', async (t) => {
  const mk = parseMakefile(readFileSync(MAKEFILE, 'utf8'));
  const npmVersion = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  for (const b of [musl, host]) {
    const text = readFileSync(path.join(b.dir, 'control/control'), 'utf8');
    const field = (name: string): string => new RegExp(`^${name}: (.*)$`, 'm').exec(text)?.[1] ?? '';
    t.equal(field('Package'), 'ntmobile');
    t.equal(field('Version'), `${npmVersion}-r${mk.vars.get('PKG_RELEASE')}`, 'package.json version, -r PKG_RELEASE');
    t.equal(field('Architecture'), 'x86_64');
    const depends = field('Depends').split(', ');
    for (const d of ['libc', 'node', 'kmod-tun', 'kmod-nft-nat', 'nftables-json']) t.ok(depends.includes(d), `Depends has ${d}`);
    t.notOk(/[+@:()]/.test(field('Depends')), 'no + and no conditions');
    const makeDepends = /DEPENDS:=((?:[^\n]*\\\n)*[^\n]*)/.exec(mk.defines.get('Package/ntmobile') ?? '')?.[1] ?? '';
    t.strictSame(depends.slice(1), controlDepends(makeDepends.replace(/\\\n/g, ' ')), 'libc, then DEPENDS in order');
    const dataBytes = filesOf(path.join(b.dir, 'data')).reduce((s, f) => s + (lstatSync(path.join(b.dir, 'data', f)).isFile() ? statSync(path.join(b.dir, 'data', f)).size : 0), 0);
    t.equal(Number(field('Installed-Size')), dataBytes, 'Installed-Size: the bytes of data');
    t.equal(field('License'), 'Apache-2.0');
    t.equal(readFileSync(path.join(b.dir, 'control/conffiles'), 'utf8'), '/etc/config/ntmobile\n');
  }
});

t.test('control: postinst and prerm wrapped as the buildroot does', async (t) => {
  const dir = path.join(musl.dir, 'control');
  for (const s of ['postinst', 'prerm', 'postinst-pkg', 'prerm-pkg']) {
    t.ok(statSync(path.join(dir, s)).mode & 0o100, `${s} is executable`);
  }
  t.match(readFileSync(path.join(dir, 'postinst'), 'utf8'), /\. \$\{IPKG_INSTROOT\}\/lib\/functions\.sh\ndefault_postinst \$0 \$@/);
  t.match(readFileSync(path.join(dir, 'prerm'), 'utf8'), /default_prerm \$0 \$@/);
  const prerm = readFileSync(path.join(dir, 'prerm-pkg'), 'utf8');
  t.ok(prerm.startsWith('#!/bin/sh\n'), 'prerm-pkg is a shell script');
  t.notOk(prerm.includes('$$'), 'make escaping undone');
  const stop = prerm.indexOf('/etc/init.d/ntmobile stop');
  const remove = prerm.indexOf('/usr/libexec/ntmobile/integration remove');
  t.ok(stop >= 0 && remove > stop, 'prerm stops the service, then removes the firewall and DNS integration');
});

t.test('data: the files of Package/ntmobile/install, and nothing of the build', async (t) => {
  for (const b of [musl, host]) {
    const data = path.join(b.dir, 'data');
    const files = filesOf(data);
    for (const f of ['etc/init.d/ntmobile', 'etc/config/ntmobile', 'etc/uci-defaults/90-ntmobile', 'etc/hotplug.d/iface/90-ntmobile',
      'usr/libexec/ntmobile/integration', 'usr/sbin/ntmobile', ENTRY, `${APP}/package.json`, ADDON]) {
      t.ok(files.includes(f), `has /${f}`);
    }
    // every ./files/X → $(1)/Y of the Makefile, read here independently of the builder
    const installs = [...readFileSync(MAKEFILE, 'utf8').matchAll(/\$\((INSTALL_\w+)\) \.\/files\/(\S+) \$\(1\)\/(\S+)/g)];
    t.ok(installs.length >= 6, 'the Makefile installs the files/ scripts');
    for (const [, op, src, dst] of installs) {
      t.equal(readFileSync(path.join(data, dst), 'utf8'), readFileSync(path.join(PACKAGE_DIR, 'files', src), 'utf8'), `/${dst} is files/${src}`);
      const mode = statSync(path.join(data, dst)).mode & 0o777;
      t.equal(mode, { INSTALL_BIN: 0o755, INSTALL_DATA: 0o644, INSTALL_CONF: 0o600 }[op], `/${dst} has the mode of ${op}`);
    }
    t.strictSame(files.filter((f) => /\.[mc]?ts$/.test(f)), [], 'no TypeScript (.ts, .d.ts)');
    t.strictSame(files.filter((f) => f.endsWith('.map')), [], 'no source maps');
    const app = files.filter((f) => f.startsWith(`${APP}/`));
    t.strictSame(app.filter((f) => f !== `${APP}/package.json` && f !== ADDON && !/^usr\/lib\/ntmobile\/dist\/router\/[\w-]+\.js$/.test(f)), [],
      'the app: the bundle (dist/router/*.js), the addon, package.json; no node_modules');
    t.ok(app.filter((f) => f.endsWith('.js')).length <= 4, 'the bundle: its entry and a few chunks loaded on demand');
    const pkg = JSON.parse(readFileSync(path.join(data, APP, 'package.json'), 'utf8')) as { type: string; dependencies?: Record<string, string> };
    t.equal(pkg.type, 'module', 'package.json: ESM');
    t.equal(pkg.dependencies, undefined, 'package.json: no runtime packages (all in the bundle)');
  }
});

t.test('the bundle holds the daemon and its packages, no server code, no broker', async (t) => {
  const dir = path.join(tmp, 'stage');
  const stage = await stageApp(REPO, dir, ADDON_PATH);
  t.equal(stage.bundle[0], 'dist/router/cli.js', 'the entry first');
  t.ok(stage.distFiles.includes('dist/router/daemon.js') && stage.distFiles.includes('dist/tunnel/engine.js'), 'the daemon and the data path');
  t.strictSame(stage.distFiles.filter((f) => !/^dist\/(router|protocol|tunnel|netlink|ubus)\//.test(f)), [], 'no tests, servers, lab, bench or builder');
  for (const p of ['node_modules/dns-packet', 'node_modules/mqtt']) t.ok(stage.packages.includes(p), `${p} bundled`);
  t.strictSame(stage.packages.filter((p) => /^node_modules\/(aedes|typescript|tap|@tapjs|node-gyp|esbuild|@types)(\/|$)/.test(p)), [], 'no broker, compiler, test runner or types');
  // mqtt is imported on demand (MQTT mode only): it must stay out of the entry file
  const entry = readFileSync(path.join(dir, stage.bundle[0]!), 'utf8');
  t.notMatch(entry, /mqtt-packet/, 'mqtt is not in the entry file');
  t.ok(stage.bundle.slice(1).some((f) => readFileSync(path.join(dir, f), 'utf8').includes('mqtt-packet')), 'mqtt is in a chunk of its own');
  t.notMatch(entry, /[^\x00-\x7f]/, 'ASCII only (V8 keeps any other source as UTF-16)');
});

t.test('musl addon: libc.so only, no glibc symbol versions', async (t) => {
  const { needed, glibcVersions } = libcOf(path.join(musl.dir, 'data', ADDON));
  t.strictSame(needed, ['libc.so']);
  t.strictSame(glibcVersions, []);
  t.strictSame(libcOf(path.join(host.dir, 'data', ADDON)).needed, ['libc.so.6'], 'the host variant is the glibc one');
  t.throws(() => checkMusl(path.join(host.dir, 'data', ADDON)), /not a musl-only object: NEEDED \[libc\.so\.6\] \(want \[libc\.so\]\), glibc symbol versions \[GLIBC_/, 'the check fails the build on a glibc object, saying why');
});

t.test('host addon: the installed bundle finds and loads it', async (t) => {
  // a static tunnel in a network namespace of its own: its TUN device and UDP socket come from the addon
  const config = path.join(tmp, 'static.json');
  writeFileSync(config, JSON.stringify(staticPair({ suite: 'aes-gcm', aVips: ['10.250.0.1/24'], bVips: ['10.250.0.2/24'], bEndpoint: '127.0.0.1:4501' }).a));
  const child = spawn('unshare', ['--net', process.execPath, path.join(host.dir, 'data', ENTRY), 'tunnel', '--config', config], { cwd: tmp, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = once(child, 'exit');
  const ready = await new Promise<boolean>((resolve) => {
    child.stdout.on('data', () => out.includes('ready ') && resolve(true));
    void exited.then(() => resolve(false));
  });
  t.ok(ready, 'ntmobile tunnel from the package: TUN device and UDP socket open', { output: out });
  child.kill('SIGTERM');
  await exited;
  t.notMatch(out, /native addon not built/, 'the addon is where the bundle looks for it');
});

t.test('the packaged daemon runs from its own files', async (t) => {
  const app = path.join(host.dir, 'data', APP);
  const help = spawnSync(process.execPath, [path.join(host.dir, 'data', ENTRY), '--help'], { cwd: tmp, encoding: 'utf8' });
  t.equal(help.status, 0, 'ntmobile --help: every static import is in the package', { output: help.stderr });
  t.match(help.stdout, /^Usage: ntmobile/);
  // the chunks the daemon imports later (mqtt only in MQTT mode) are loaded here, from the package alone
  const chunks = readdirSync(path.join(app, 'dist/router')).filter((f) => f !== 'cli.js').map((f) => pathToFileURL(path.join(app, 'dist/router', f)).href);
  t.ok(chunks.length > 0, 'chunks loaded on demand');
  const load = spawnSync(process.execPath, ['--input-type=module', '-e', 'for (const c of process.argv.slice(1)) await import(c);', ...chunks], { cwd: tmp, encoding: 'utf8' });
  t.equal(load.status, 0, 'every chunk loads (mqtt and the packages it needs are in the bundle)', { output: load.stderr });
});

t.test('opkg install and remove in the OpenWrt userland (host variant)', async (t) => {
  const runSh = path.join(userlandDir(), 'run.sh');
  const name = `ipk-${process.pid}-${Date.now().toString(36)}`;
  const env = { ...process.env, OWRT_DIR, OWRT_INSTANCE: name };
  const run = (args: string[], ns = false) => {
    const [cmd, argv] = ns ? ['ip', ['netns', 'exec', name, runSh, ...args]] : [runSh, args];
    const r = spawnSync(cmd, argv, { env, encoding: 'utf8', timeout: 120_000 });
    return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
  };
  execFileSync('ip', ['netns', 'add', name]);
  t.teardown(() => {
    run(['stop']);
    run(['reset']);
    spawnSync('ip', ['netns', 'del', name]);
  });
  const started = run(['start'], true);
  t.equal(started.code, 0, `instance ${name} started in netns ${name}`, { output: started.out });
  const root = run(['root']).out.trim();
  addBaseFilesScripts(root);

  const installed = run(['install', host.file]);
  t.equal(installed.code, 0, 'opkg install succeeds', { output: installed.out });
  t.match(run(['exec', 'opkg', 'list-installed']).out, new RegExp(`^ntmobile - ${info.version}$`, 'm'), 'opkg lists it');
  const listed = run(['exec', 'opkg', 'files', 'ntmobile']).out.split('\n').filter((l) => l.startsWith('/')).sort();
  const packaged = filesOf(path.join(host.dir, 'data')).map((f) => `/${f}`);
  t.strictSame(listed, packaged, 'opkg files ntmobile: exactly the files of data.tar.gz');
  t.ok(existsSync(path.join(root, 'etc/rc.d/S95ntmobile')), 'postinst enabled the service');
  t.notOk(existsSync(path.join(root, 'etc/uci-defaults/90-ntmobile')), 'postinst ran the uci-defaults script (and deleted it)');
  t.equal(run(['exec', 'uci', '-q', 'get', 'firewall.ntmobile']).code, 0, 'the uci-defaults script added the firewall zone');

  // opkg keeps a conffile the user changed, and only that
  appendFileSync(path.join(root, 'etc/config/ntmobile'), '\n# changed by ipk.test\n');
  const removed = run(['exec', 'opkg', 'remove', 'ntmobile']);
  t.equal(removed.code, 0, 'opkg remove succeeds', { output: removed.out });
  t.match(removed.out, /Not deleting modified conffile \/etc\/config\/ntmobile/);
  t.notMatch(run(['exec', 'opkg', 'list-installed']).out, /^ntmobile /m, 'no longer listed');
  t.strictSame(packaged.filter((f) => f !== '/etc/config/ntmobile' && existsSync(path.join(root, f))), [], 'every other file is gone');
  t.match(readFileSync(path.join(root, 'etc/config/ntmobile'), 'utf8'), /# changed by ipk\.test/, 'the changed /etc/config/ntmobile stays');
  t.ok(existsSync(path.join(root, 'etc/rc.d')) && !readdirSync(path.join(root, 'etc/rc.d')).some((l) => l.endsWith('ntmobile')), 'prerm disabled the service');
  t.not(run(['exec', 'uci', '-q', 'get', 'firewall.ntmobile']).code, 0, 'prerm removed the firewall zone');
});
