// `npm run build:ipk` (second half): luci-app-ntmobile's .ipk (Architecture: all) without the
// SDK, in the format OpenWrt 24.10's opkg reads, beside the daemon's.
//
// openwrt/luci/luci-app-ntmobile/Makefile is written for openwrt/luci's luci.mk; this reads its
// LUCI_* and PKG_* assignments and does what luci.mk does with them: htdocs/ goes to /www, root/
// to /, the package is named after its folder, and the postinst runs the app's uci-defaults
// scripts. The control file and the postinst wrapper are build-ipk.ts's (package-ipkg.mk's).
//
// It also keeps po/templates/ntmobile.pot in step with the strings the pages translate (`_()` in
// the views, the titles in menu.d, the descriptions in acl.d): the build fails when the template
// misses one, and `--pot` writes it anew.
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BuildError, controlDepends, parseMakefile, REPO, sourceDate, tarGz, treeSize, writeControl, type PackageInfo } from './build-ipk.js';

export const APP_DIR = path.join(REPO, 'openwrt/luci/luci-app-ntmobile');
export const POT = path.join(APP_DIR, 'po/templates/ntmobile.pot');

// ---- the Makefile, as luci.mk reads it ---------------------------------------------------------

export function luciPackageInfo(appDir = APP_DIR): PackageInfo {
  const makefile = path.join(appDir, 'Makefile');
  const text = readFileSync(makefile, 'utf8');
  if (!/^include \.\.\/\.\.\/luci\.mk$/m.test(text)) throw new BuildError(`${makefile}: no "include ../../luci.mk": not a LuCI app Makefile`);
  const mk = parseMakefile(text);
  const need = (name: string): string => {
    const v = mk.vars.get(name);
    if (v === undefined || v === '') throw new BuildError(`${makefile}: ${name} is not set`);
    return v;
  };
  if (need('LUCI_PKGARCH') !== 'all') throw new BuildError(`${makefile}: LUCI_PKGARCH must be "all" (the app is JavaScript and JSON only)`);
  const name = path.basename(appDir);
  return {
    name,
    version: `${need('PKG_VERSION')}-r${mk.vars.get('PKG_RELEASE') ?? '1'}`,
    depends: ['libc', ...controlDepends(mk.vars.get('LUCI_DEPENDS') ?? '').filter((d) => d !== 'libc')],
    conffiles: [],
    postinst: luciPostinst(appDir),
    prerm: null,
    install: [],
    stageUnderInstallDir: '',
    license: need('PKG_LICENSE'),
    licenseFiles: '',
    maintainer: need('PKG_MAINTAINER'),
    section: 'luci',
    description: mk.vars.get('LUCI_DESCRIPTION') ?? need('LUCI_TITLE'),
  };
}

/** luci.mk's Package/<name>/postinst: each root/etc/uci-defaults script, deleted when it succeeds. */
function luciPostinst(appDir: string): string | null {
  const dir = path.join(appDir, 'root/etc/uci-defaults');
  const scripts = existsSync(dir) ? readdirSync(dir).sort() : [];
  if (scripts.length === 0) return null;
  const runs = scripts.map((s) => `\t(. /etc/uci-defaults/${s}) && rm -f /etc/uci-defaults/${s}\n`).join('');
  return `#!/bin/sh\n[ -n "\${IPKG_INSTROOT}" ] || {\n${runs}\texit 0\n}\n`;
}

// ---- the translation template ------------------------------------------------------------------

interface Msg {
  id: string;
  refs: string[];
}

/** JavaScript string literal body → its value (the escapes LuCI's views use). */
function unescapeJs(body: string): string {
  return body.replace(/\\(u\{[0-9a-fA-F]+\}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)/g, (_m, e: string) => {
    if (e.startsWith('u{')) return String.fromCodePoint(parseInt(e.slice(2, -1), 16));
    if (e[0] === 'u' && e.length === 5) return String.fromCharCode(parseInt(e.slice(1), 16));
    if (e[0] === 'x' && e.length === 3) return String.fromCharCode(parseInt(e.slice(1), 16));
    return ({ n: '\n', t: '\t', r: '\r' } as Record<string, string>)[e] ?? e;
  });
}

/** Every string the app shows through LuCI's translation: `_()` in htdocs, menu titles, ACL descriptions. */
export function translatableStrings(appDir = APP_DIR): Msg[] {
  const msgs = new Map<string, Msg>();
  const add = (id: string, ref: string): void => {
    if (id === '') return;
    const m = msgs.get(id) ?? { id, refs: [] };
    if (!m.refs.includes(ref)) m.refs.push(ref);
    msgs.set(id, m);
  };
  const rel = (f: string): string => path.relative(REPO, f);
  const walk = (dir: string): string[] =>
    existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)])) : [];
  for (const file of walk(path.join(appDir, 'htdocs')).filter((f) => f.endsWith('.js')).sort()) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?<![\w$.])_\(\s*(['"])((?:\\.|(?!\1)[^\\\n])*)\1\s*[,)]/g)) {
      const line = text.slice(0, m.index).split('\n').length;
      add(unescapeJs(m[2]!), `${rel(file)}:${line}`);
    }
  }
  for (const file of walk(path.join(appDir, 'root/usr/share/luci/menu.d')).sort()) {
    for (const node of Object.values(JSON.parse(readFileSync(file, 'utf8')) as Record<string, { title?: string }>)) if (node.title) add(node.title, rel(file));
  }
  for (const file of walk(path.join(appDir, 'root/usr/share/rpcd/acl.d')).sort()) {
    for (const grant of Object.values(JSON.parse(readFileSync(file, 'utf8')) as Record<string, { description?: string }>)) if (grant.description) add(grant.description, rel(file));
  }
  return [...msgs.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

const poString = (s: string): string => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n').replace(/\t/g, '\\t')}"`;

/** The .pot as LuCI's i18n-scan writes it: a header, then each msgid with where it is used. */
export function potText(msgs: Msg[]): string {
  const entries = msgs.map((m) => `${m.refs.map((r) => `#: ${r}`).join('\n')}\nmsgid ${poString(m.id)}\nmsgstr ""\n`);
  return ['msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8"\n', ...entries].join('\n');
}

/** The msgids of a .pot file. */
export function potIds(text: string): Set<string> {
  const ids = new Set<string>();
  for (const m of text.matchAll(/^msgid ("(?:\\.|[^"\\])*"(?:\n"(?:\\.|[^"\\])*")*)/gm)) {
    const value = m[1]!.split('\n').map((part) => JSON.parse(part) as string).join('');
    if (value !== '') ids.add(value);
  }
  return ids;
}

/** Fails unless the template has every translatable string (and no stale one). */
export function checkPot(appDir = APP_DIR): void {
  const have = existsSync(POT) ? potIds(readFileSync(POT, 'utf8')) : new Set<string>();
  const want = translatableStrings(appDir).map((m) => m.id);
  const missing = want.filter((id) => !have.has(id));
  const stale = [...have].filter((id) => !want.includes(id));
  if (missing.length > 0 || stale.length > 0) {
    throw new BuildError(
      `${path.relative(REPO, POT)} is out of date (${missing.length} missing${missing.length ? `, e.g. ${JSON.stringify(missing[0])}` : ''}; ${stale.length} no longer used): `
      + 'run node dist/openwrt/build-luci-ipk.js --pot',
    );
  }
}

// ---- the .ipk ----------------------------------------------------------------------------------

/** cp -pR SRC/* DST/ (luci.mk's install of htdocs/ and root/): modes kept, folders created. */
function copyInto(src: string, dst: string): void {
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, e.name);
    const to = path.join(dst, e.name);
    if (e.isDirectory()) {
      mkdirSync(to, { recursive: true, mode: 0o755 });
      copyInto(from, to);
    } else {
      copyFileSync(from, to);
      chmodSync(to, statSync(from).mode & 0o111 ? 0o755 : 0o644);
    }
  }
}

export interface LuciIpkResult {
  file: string;
  size: number;
  installedSize: number;
  files: string[];
}

export function buildLuciIpk(outDir: string, log: (line: string) => void = () => undefined): LuciIpkResult {
  const info = luciPackageInfo();
  const npmVersion = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  if (!info.version.startsWith(`${npmVersion}-r`)) throw new BuildError(`${APP_DIR}/Makefile: PKG_VERSION ${info.version} differs from package.json's version ${npmVersion}`);
  checkPot();
  mkdirSync(outDir, { recursive: true });
  const work = mkdtempSync(path.join(outDir, '.work-luci-'));
  try {
    const data = path.join(work, 'data');
    mkdirSync(path.join(data, 'www'), { recursive: true, mode: 0o755 });
    log('installing htdocs/ → /www and root/ → / (luci.mk)');
    copyInto(path.join(APP_DIR, 'htdocs'), path.join(data, 'www'));
    copyInto(path.join(APP_DIR, 'root'), data);
    const files: string[] = [];
    const list = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) list(p);
        else files.push(`/${path.relative(data, p)}`);
      }
    };
    list(data);
    const installedSize = treeSize(data);
    writeControl(path.join(work, 'control'), info, 'all', installedSize);
    const mtime = sourceDate();
    tarGz(data, ['.'], path.join(work, 'data.tar.gz'), mtime);
    tarGz(path.join(work, 'control'), ['.'], path.join(work, 'control.tar.gz'), mtime);
    writeFileSync(path.join(work, 'debian-binary'), '2.0\n');
    const file = path.join(outDir, `${info.name}_${info.version}_all.ipk`);
    tarGz(work, ['./debian-binary', './data.tar.gz', './control.tar.gz'], path.join(work, 'package.ipk'), mtime);
    renameSync(path.join(work, 'package.ipk'), file);
    return { file, size: statSync(file).size, installedSize, files: files.sort() };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function main(): void {
  const { values } = parseArgs({ options: { pot: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } } });
  if (values.help) {
    process.stdout.write(`usage: node dist/openwrt/build-luci-ipk.js [--pot]

Builds build/ipk/luci-app-ntmobile_<version>-r<release>_all.ipk from openwrt/luci/luci-app-ntmobile
(npm run build:ipk runs it after the daemon's package).

  --pot   write po/templates/ntmobile.pot from the strings the app translates, and build nothing
`);
    return;
  }
  const log = (line: string): void => console.log(`build:ipk (luci): ${line}`);
  if (values.pot) {
    const msgs = translatableStrings();
    writeFileSync(POT, potText(msgs));
    log(`${path.relative(process.cwd(), POT)}: ${msgs.length} strings`);
    return;
  }
  const r = buildLuciIpk(path.join(REPO, 'build/ipk'), log);
  log(`${path.relative(process.cwd(), r.file)}: ${r.size} bytes, ${r.files.length} files, installed size ${r.installedSize} bytes`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    if (!(err instanceof BuildError)) throw err;
    console.error(`build:ipk (luci): ${err.message}`);
    process.exitCode = 1;
  }
}
