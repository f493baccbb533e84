// `npm run build:ipk`: the ntmobile .ipk for x86_64 OpenWrt without the SDK, in the format
// OpenWrt 24.10's opkg reads (a gzip'd tar of debian-binary, data.tar.gz, control.tar.gz).
//
// openwrt/net/ntmobile/Makefile is the single source of truth: this reads PKG_VERSION,
// PKG_RELEASE, DEPENDS, the conffiles and the postinst/prerm defines from it, wraps the scripts
// as OpenWrt's include/package-ipkg.mk does, and carries out Package/ntmobile/install itself (the
// few install commands it uses). The daemon's files under /usr/lib/ntmobile come from `--stage`,
// which the Makefile's Build/Compile calls too: the import closure of dist/router/cli.js, the
// runtime packages it imports with their closure from package-lock.json, the addon and a
// package.json.
//
// The addon is compiled for musl (Debian's musl-gcc, OpenWrt's libc) and checked to need no
// glibc; `--host-addon` compiles it for the host instead (glibc), which is what the shared
// OpenWrt userland, itself built with glibc, can load.
import { execFileSync } from 'node:child_process';
import {
  appendFileSync, chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync,
  renameSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ts from 'typescript';
import { ADDON_PATH } from '../netlink/native.js';

/** The repository root (this file runs as dist/openwrt/build-ipk.js). */
export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const PACKAGE_DIR = path.join(REPO, 'openwrt/net/ntmobile');
export const MAKEFILE = path.join(PACKAGE_DIR, 'Makefile');
/** Where the daemon's entry point is, relative to the staged app and to the repository. */
const ENTRY = 'dist/router/cli.js';
/** OpenWrt's architecture name for the hosts this builder compiles the addon on. */
const OPENWRT_ARCH: Record<string, string> = { x64: 'x86_64' };

export class BuildError extends Error {}

// ---- the Makefile -----------------------------------------------------------------------------

export interface Makefile {
  /** top-level `NAME:=value` assignments, continuation lines joined */
  vars: Map<string, string>;
  /** `define NAME` … `endef` bodies, as written */
  defines: Map<string, string>;
}

/** Reads the plain assignments and the defines; nothing is evaluated. */
export function parseMakefile(text: string): Makefile {
  const vars = new Map<string, string>();
  const defines = new Map<string, string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const def = /^define\s+(\S+)\s*$/.exec(line);
    if (def) {
      const body: string[] = [];
      for (i++; i < lines.length && lines[i] !== 'endef'; i++) body.push(lines[i]);
      if (i === lines.length) throw new BuildError(`${MAKEFILE}: define ${def[1]} has no endef`);
      defines.set(def[1], body.join('\n'));
      continue;
    }
    const assign = /^([A-Za-z0-9_/.-]+)\s*:?=\s*(.*)$/.exec(line);
    if (!assign) continue;
    let value = assign[2];
    while (value.endsWith('\\') && i + 1 < lines.length) value = `${value.slice(0, -1)} ${lines[++i].trim()}`;
    vars.set(assign[1], value.trim());
  }
  return { vars, defines };
}

export interface PackageInfo {
  name: string;
  /** PKG_VERSION-rPKG_RELEASE, OpenWrt 24.10's package version */
  version: string;
  depends: string[];
  conffiles: string[];
  /** the package's own scripts (postinst-pkg, prerm-pkg), make's $$ undone */
  postinst: string | null;
  prerm: string | null;
  /** the lines of Package/<name>/install */
  install: string[];
  /** the Build/Compile argument that tells --stage where the daemon goes under $(PKG_INSTALL_DIR) */
  stageUnderInstallDir: string;
  license: string;
  licenseFiles: string;
  maintainer: string;
  section: string;
  description: string;
}

const need = (mk: Makefile, name: string): string => {
  const v = mk.vars.get(name);
  if (v === undefined || v === '') throw new BuildError(`${MAKEFILE}: ${name} is not set`);
  return v;
};

const needDefine = (mk: Makefile, name: string): string => {
  const v = mk.defines.get(name);
  if (v === undefined) throw new BuildError(`${MAKEFILE}: no define ${name}`);
  return v;
};

/** DEPENDS as the buildroot puts it into the control file: no `@` conditions, no `+`, no `COND:`. */
export function controlDepends(depends: string): string[] {
  return depends
    .split(/\s+/)
    .filter((d) => d !== '' && !d.startsWith('@'))
    .map((d) => d.replace(/^\+/, '').replace(/^.*:/, ''));
}

/** A script define with make's escaping undone; anything else make would expand is refused. */
function script(mk: Makefile, name: string): string | null {
  const body = mk.defines.get(name);
  if (body === undefined) return null;
  const text = body.replaceAll('$$', '\0');
  if (text.includes('$')) throw new BuildError(`${MAKEFILE}: define ${name}: only $$ may appear (no make variables)`);
  return `${text.replaceAll('\0', '$')}\n`;
}

export function packageInfo(mk: Makefile): PackageInfo {
  const name = need(mk, 'PKG_NAME');
  const pkg = parseMakefile(needDefine(mk, `Package/${name}`).split('\n').map((l) => l.trim()).join('\n'));
  const depends = pkg.vars.get('DEPENDS') ?? '';
  const compile = needDefine(mk, 'Build/Compile').replace(/\\\n\s*/g, ' ');
  const stage = /--stage\s+\$\(PKG_INSTALL_DIR\)(\/\S+)/.exec(compile);
  if (!stage) throw new BuildError(`${MAKEFILE}: Build/Compile does not call --stage $(PKG_INSTALL_DIR)/…`);
  return {
    name,
    version: `${need(mk, 'PKG_VERSION')}-r${need(mk, 'PKG_RELEASE')}`,
    // package-defaults.mk's PKG_DEFAULT_DEPENDS: every non-kmod package depends on libc
    depends: ['libc', ...controlDepends(depends).filter((d) => d !== 'libc')],
    conffiles: (mk.defines.get(`Package/${name}/conffiles`) ?? '').split('\n').map((l) => l.trim()).filter(Boolean),
    postinst: script(mk, `Package/${name}/postinst`),
    prerm: script(mk, `Package/${name}/prerm`),
    install: needDefine(mk, `Package/${name}/install`).split('\n').map((l) => l.trim()).filter(Boolean),
    stageUnderInstallDir: stage[1],
    license: need(mk, 'PKG_LICENSE'),
    licenseFiles: mk.vars.get('PKG_LICENSE_FILES') ?? '',
    maintainer: need(mk, 'PKG_MAINTAINER'),
    section: pkg.vars.get('SECTION') ?? 'opt',
    description: mk.defines.get(`Package/${name}/description`) ?? pkg.vars.get('TITLE') ?? '',
  };
}

export const readPackageInfo = (): PackageInfo => packageInfo(parseMakefile(readFileSync(MAKEFILE, 'utf8')));

// ---- Package/<name>/install -------------------------------------------------------------------

/** The modes of rules.mk's install commands. */
const INSTALL_MODES: Record<string, number> = { INSTALL_BIN: 0o755, INSTALL_DATA: 0o644, INSTALL_CONF: 0o600 };

/**
 * Carries out the install define into `root` ($(1)); `installDir` stands for $(PKG_INSTALL_DIR),
 * ./ for the package's folder. Only the commands the Makefile uses are known; any other line is an
 * error, so the .ipk can never silently differ from what the SDK builds.
 */
export function runInstall(lines: string[], root: string, installDir: string): void {
  const expand = (word: string, line: string): string => {
    const out = word
      .replaceAll('$(1)', root)
      .replaceAll('$(PKG_INSTALL_DIR)', installDir)
      .replace(/^\.\//, `${PACKAGE_DIR}/`);
    if (out.includes('$')) throw new BuildError(`${MAKEFILE}: install: cannot expand ${word} in "${line}"`);
    return out;
  };
  for (const line of lines) {
    const [command, ...args] = line.split(/\s+/);
    const words = args.map((a) => expand(a, line));
    const op = /^\$\((\w+)\)$/.exec(command)?.[1];
    if (op === 'INSTALL_DIR') {
      for (const dir of words) mkdirSync(dir, { recursive: true, mode: 0o755 });
    } else if (op !== undefined && op in INSTALL_MODES && words.length === 2) {
      const [from, dest] = words;
      if (!existsSync(from)) throw new BuildError(`${MAKEFILE}: install: ${from} does not exist (line "${line}")`);
      const to = dest.endsWith('/') || (existsSync(dest) && statSync(dest).isDirectory()) ? path.join(dest, path.basename(from)) : dest;
      copyFileSync(from, to);
      chmodSync(to, INSTALL_MODES[op]);
    } else if (op === 'CP' && words.length === 2) {
      copyTree(words[0], words[1], line);
    } else {
      throw new BuildError(`${MAKEFILE}: install: unsupported line "${line}"`);
    }
  }
}

/** `cp -fpR FROM TO` for what the install define does with it: FROM/. copies the contents. */
function copyTree(from: string, to: string, line: string): void {
  if (!existsSync(from)) throw new BuildError(`${MAKEFILE}: install: ${from} does not exist (line "${line}")`);
  const target = from.endsWith('/.') || !existsSync(to) ? to : path.join(to, path.basename(from));
  const walk = (src: string, dst: string): void => {
    const st = statSync(src);
    if (st.isDirectory()) {
      mkdirSync(dst, { recursive: true });
      chmodSync(dst, st.mode & 0o7777);
      for (const e of readdirSync(src)) walk(path.join(src, e), path.join(dst, e));
    } else {
      copyFileSync(src, dst);
      chmodSync(dst, st.mode & 0o7777);
    }
  };
  walk(from, target);
}

// ---- the daemon's files (--stage) -------------------------------------------------------------

export interface StageResult {
  distFiles: string[];
  packages: string[];
  /** packages of type declarations only: nothing to run */
  typesOnly: string[];
}

/** Where dist/netlink/native.js loads the addon from a computed path: the one load not followed. */
const ADDON_LOADER = 'dist/netlink/native.js';

/**
 * The modules a JavaScript file loads: import/export … from, import(), require() and
 * createRequire(…)(…). A load whose specifier is not a string literal cannot be followed and is
 * an error (with its line), except the addon's, which the stage places itself.
 */
export function moduleLoads(file: string, text: string): string[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS);
  const specs: string[] = [];
  const dynamic = (node: ts.Node, arg: ts.Expression | undefined): void => {
    if (arg !== undefined && ts.isStringLiteralLike(arg)) specs.push(arg.text);
    else if (!file.endsWith(ADDON_LOADER)) {
      const { line } = source.getLineAndCharacterOfPosition(node.getStart());
      throw new BuildError(`${file}:${line + 1}: a module loaded by a computed name cannot be packaged: ${node.getText().slice(0, 80)}`);
    }
  };
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      specs.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node)) {
      const callee = node.expression;
      const isRequire = ts.isIdentifier(callee) && callee.text === 'require';
      const isCreatedRequire = ts.isCallExpression(callee) && ts.isIdentifier(callee.expression) && callee.expression.text === 'createRequire';
      if (callee.kind === ts.SyntaxKind.ImportKeyword || isRequire || isCreatedRequire) dynamic(node, node.arguments[0]);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return specs;
}

/** Relative imports (→ files) and bare ones (→ packages) reachable from the entry, static and dynamic. */
export function importClosure(repo: string, entry: string): { files: string[]; bare: Map<string, string> } {
  const files = new Set<string>();
  const bare = new Map<string, string>();
  const queue = [path.join(repo, entry)];
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (files.has(file)) continue;
    if (!existsSync(file)) throw new BuildError(`${path.relative(repo, file)} is imported but missing: run npm run build`);
    files.add(file);
    for (const spec of moduleLoads(path.relative(repo, file), readFileSync(file, 'utf8'))) {
      if (spec.startsWith('.')) queue.push(path.resolve(path.dirname(file), spec));
      else if (!isBuiltin(spec)) bare.set(packageName(spec), path.relative(repo, file));
    }
  }
  return { files: [...files].map((f) => path.relative(repo, f)).sort(), bare };
}

const packageName = (spec: string): string => spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/');

interface LockEntry {
  version?: string;
  dev?: boolean;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/** The node_modules paths of the packages and everything they need, from package-lock.json. */
export function packageClosure(repo: string, roots: string[]): string[] {
  const lock = JSON.parse(readFileSync(path.join(repo, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const entries = lock.packages;
  // Node's lookup: the package's own node_modules, then each enclosing one up to the top.
  const find = (from: string, name: string): string | null => {
    for (let base = from; ; ) {
      const key = `${base === '' ? '' : `${base}/`}node_modules/${name}`;
      if (entries[key]) return key;
      if (base === '') return null;
      const i = base.lastIndexOf('/node_modules/');
      base = i < 0 ? '' : base.slice(0, i);
    }
  };
  const out = new Set<string>();
  const visit = (key: string): void => {
    if (out.has(key)) return;
    out.add(key);
    const e = entries[key];
    for (const dep of Object.keys(e.dependencies ?? {})) {
      const found = find(key, dep);
      if (found === null) throw new BuildError(`package-lock.json: ${key} needs ${dep}, which is not in the lock`);
      visit(found);
    }
    // optional and peer dependencies come along where npm installed them
    for (const dep of Object.keys({ ...e.optionalDependencies, ...e.peerDependencies })) {
      const found = find(key, dep);
      if (found !== null) visit(found);
    }
  };
  for (const name of roots) {
    const key = find('', name);
    if (key === null) throw new BuildError(`package-lock.json: no ${name}: run npm install`);
    visit(key);
  }
  return [...out].sort();
}

/** What of a package goes to the router: no nested node_modules (own entries), no TypeScript, no maps. */
const shipped = (name: string): boolean => !/\.(d\.)?[mc]?ts$/.test(name) && !name.endsWith('.map');

function packageFiles(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules') out.push(...packageFiles(dir, r));
    } else if (shipped(e.name)) out.push(r);
  }
  return out;
}

function copyFile(from: string, to: string): void {
  mkdirSync(path.dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, statSync(from).mode & 0o111 ? 0o755 : 0o644);
}

/** Writes the daemon's app tree (what goes to /usr/lib/ntmobile) into `out`. */
export function stageApp(repo: string, out: string, addon: string): StageResult {
  rmSync(out, { recursive: true, force: true });
  const pkg = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8')) as {
    name: string; version: string; description?: string; license?: string; dependencies?: Record<string, string>;
  };
  const { files, bare } = importClosure(repo, ENTRY);
  for (const f of files) copyFile(path.join(repo, f), path.join(out, f));

  const dependencies: Record<string, string> = {};
  for (const [name, importer] of bare) {
    const range = pkg.dependencies?.[name];
    if (range === undefined) throw new BuildError(`${importer} imports ${name}, which is not in package.json "dependencies"`);
    dependencies[name] = range;
  }
  const packages: string[] = [];
  const typesOnly: string[] = [];
  for (const key of packageClosure(repo, [...bare.keys()].sort())) {
    const src = path.join(repo, key);
    if (!existsSync(path.join(src, 'package.json'))) throw new BuildError(`${key} is not installed: run npm ci`);
    const list = packageFiles(src);
    if (!list.some((f) => /\.(c|m)?js$|\.node$/.test(f))) {
      typesOnly.push(key);
      continue;
    }
    for (const f of list) copyFile(path.join(src, f), path.join(out, key, f));
    packages.push(key);
  }

  // the path dist/netlink/native.js loads the addon from, relative to the app
  const addonRel = path.relative(REPO, ADDON_PATH);
  if (!existsSync(addon)) throw new BuildError(`addon ${addon} does not exist`);
  copyFile(addon, path.join(out, addonRel));
  chmodSync(path.join(out, addonRel), 0o755);

  const appPackage = {
    name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license,
    private: true, type: 'module', dependencies,
  };
  writeFileSync(path.join(out, 'package.json'), `${JSON.stringify(appPackage, null, 2)}\n`, { mode: 0o644 });
  return { distFiles: files, packages, typesOnly };
}

// ---- the addon --------------------------------------------------------------------------------

/**
 * Node's headers, the way `npm run build` finds them: npm's nodedir setting (npm passes it on as
 * npm_config_nodedir), else the headers installed beside this node (NodeSource, nodejs.org
 * tarballs, Debian's libnode-dev), else none: node-gyp then uses its cache and, if empty,
 * downloads them from nodejs.org (`npx node-gyp install`).
 */
export function nodeHeadersDir(): string | null {
  const configured = process.env.npm_config_nodedir;
  if (configured) return configured;
  const prefix = path.dirname(path.dirname(process.execPath));
  return existsSync(path.join(prefix, 'include/node/node_api.h')) ? prefix : null;
}

/**
 * musl-gcc searches only musl's own include folder; the kernel's uapi headers (linux/, asm/,
 * asm-generic/ from linux-libc-dev) are made visible through a folder of links to them alone,
 * so no glibc header can slip in.
 */
function kernelHeaders(work: string): string {
  const dir = path.join(work, 'kernel-headers');
  const multiarch = execFileSync('gcc', ['-print-multiarch'], { encoding: 'utf8' }).trim();
  const links: Record<string, string> = {
    linux: '/usr/include/linux', 'asm-generic': '/usr/include/asm-generic', asm: `/usr/include/${multiarch}/asm`,
  };
  mkdirSync(dir, { recursive: true });
  for (const [name, target] of Object.entries(links)) {
    if (!existsSync(target)) throw new BuildError(`kernel headers: ${target} missing (Debian package linux-libc-dev)`);
    symlinkSync(target, path.join(dir, name));
  }
  return dir;
}

export type Variant = 'musl' | 'host';

/** Compiles native/ (binding.gyp, ntm.c) with node-gyp in `work`, for musl or the host's libc. */
export function buildAddon(variant: Variant, work: string): string {
  const src = path.join(work, 'addon');
  mkdirSync(src, { recursive: true });
  for (const f of ['binding.gyp', 'ntm.c']) copyFileSync(path.join(REPO, 'native', f), path.join(src, f));
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (variant === 'musl') {
    try {
      execFileSync('musl-gcc', ['--version'], { stdio: 'ignore' });
    } catch {
      throw new BuildError('musl-gcc not found: apt-get install musl-tools (scripts/setup.sh installs it)');
    }
    Object.assign(env, { CC: 'musl-gcc', CXX: 'musl-gcc', LINK: 'musl-gcc', CPPFLAGS: `-isystem ${kernelHeaders(work)}` });
  }
  const headers = nodeHeadersDir();
  const gyp = path.join(REPO, 'node_modules/node-gyp/bin/node-gyp.js');
  const args = [gyp, 'rebuild', `--directory=${src}`, ...(headers ? [`--nodedir=${headers}`] : [])];
  try {
    execFileSync(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: Buffer; stderr?: Buffer };
    throw new BuildError(`node-gyp (${variant} addon) failed:\n${String(e.stdout ?? '')}${String(e.stderr ?? '')}`);
  }
  const built = path.join(src, 'build/Release/ntm.node');
  // as the buildroot's RSTRIP does to every ELF file in a package
  execFileSync('strip', ['--strip-unneeded', built]);
  return built;
}

/** What the dynamic section and the symbol versions of an ELF file say about its libc. */
export function libcOf(file: string): { needed: string[]; glibcVersions: string[] } {
  const dynamic = execFileSync('readelf', ['-d', file], { encoding: 'utf8' });
  const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  const versions = execFileSync('readelf', ['-V', file], { encoding: 'utf8' })
    + execFileSync('objdump', ['-T', file], { encoding: 'utf8' });
  const glibcVersions = [...new Set([...versions.matchAll(/GLIBC_[0-9.]+/g)].map((m) => m[0]))].sort();
  return { needed, glibcVersions };
}

/** Fails unless the addon needs musl's libc.so and nothing of glibc. */
export function checkMusl(file: string): void {
  const { needed, glibcVersions } = libcOf(file);
  if (needed.length !== 1 || needed[0] !== 'libc.so' || glibcVersions.length > 0) {
    throw new BuildError(
      `${file} is not a musl-only object: NEEDED [${needed.join(', ')}] (want [libc.so]), `
      + `glibc symbol versions [${glibcVersions.join(', ')}] (want none)`,
    );
  }
}

// ---- the .ipk ---------------------------------------------------------------------------------

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

function dirsUnder(dir: string): string[] {
  const subs = readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
  return [dir, ...subs.flatMap(dirsUnder)];
}

/** Bytes of the regular files of a tree: the Installed-Size opkg shows. */
export const treeSize = (dir: string): number =>
  filesUnder(dir).reduce((sum, f) => sum + (lstatSync(f).isFile() ? lstatSync(f).size : 0), 0);

/** The control file as package-ipkg.mk writes it (Package/<name>/CONTROL, then the description). */
export function controlFile(info: PackageInfo, arch: string, installedSize: number): string {
  const fields: [string, string][] = [
    ['Package', info.name],
    ['Version', info.version],
    ['Depends', info.depends.join(', ')],
    ['License', info.license],
    ['LicenseFiles', info.licenseFiles],
    ['Section', info.section],
    ['Maintainer', info.maintainer],
    ['Architecture', arch],
    ['Installed-Size', String(installedSize)],
  ];
  const description = info.description.split('\n').map((l) => l.replace(/^\s*/, ' ')).join('\n');
  return `${fields.filter(([, v]) => v !== '').map(([k, v]) => `${k}: ${v}`).join('\n')}\nDescription: ${description}\n`;
}

/** CONTROL/: the files package-ipkg.mk writes, postinst and prerm wrapped around default_postinst/prerm. */
export function writeControl(dir: string, info: PackageInfo, arch: string, installedSize: number): void {
  mkdirSync(dir, { recursive: true });
  const write = (name: string, text: string, mode: number): void => {
    writeFileSync(path.join(dir, name), text);
    chmodSync(path.join(dir, name), mode);
  };
  write('control', controlFile(info, arch, installedSize), 0o644);
  write('postinst', '#!/bin/sh\n[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0\n. ${IPKG_INSTROOT}/lib/functions.sh\ndefault_postinst $0 $@\n', 0o755);
  write('prerm', '#!/bin/sh\n. ${IPKG_INSTROOT}/lib/functions.sh\ndefault_prerm $0 $@\n', 0o755);
  if (info.postinst !== null) write('postinst-pkg', info.postinst, 0o755);
  if (info.prerm !== null) write('prerm-pkg', info.prerm, 0o755);
  if (info.conffiles.length > 0) write('conffiles', `${info.conffiles.join('\n')}\n`, 0o644);
}

/** A deterministic gzip'd tar of a folder's contents (./…), owned by root. */
function tarGz(cwd: string, members: string[], out: string, mtime: number): void {
  execFileSync('tar', [
    '--owner=0', '--group=0', '--numeric-owner', '--sort=name', `--mtime=@${mtime}`, '--format=gnu',
    '--use-compress-program=gzip -9n', '-C', cwd, '-cf', out, ...members,
  ]);
}

/** The time stamp of the files: SOURCE_DATE_EPOCH, else the last commit, else now. */
function sourceDate(): number {
  if (process.env.SOURCE_DATE_EPOCH) return Number(process.env.SOURCE_DATE_EPOCH);
  try {
    return Number(execFileSync('git', ['-C', REPO, 'log', '-1', '--format=%ct'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    return Math.floor(Date.now() / 1000);
  }
}

export interface IpkResult {
  file: string;
  size: number;
  installedSize: number;
  stage: StageResult;
}

export function buildIpk(variant: Variant, outDir: string, log: (line: string) => void): IpkResult {
  const arch = OPENWRT_ARCH[process.arch];
  if (arch === undefined) throw new BuildError(`build:ipk compiles the addon for the host's CPU; ${process.arch} is not supported (x64 only)`);

  log(`reading ${path.relative(REPO, MAKEFILE)}`);
  const info = readPackageInfo();
  const npmVersion = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  if (!info.version.startsWith(`${npmVersion}-r`)) {
    throw new BuildError(`${MAKEFILE}: PKG_VERSION ${info.version.replace(/-r\d+$/, '')} differs from package.json's version ${npmVersion}`);
  }

  // a folder of its own: another build of the same variant may be running
  const work = mkdtempSync(path.join(outDir, `.work-${variant}-`));
  try {
    log(`compiling the addon for ${variant === 'musl' ? 'musl (musl-gcc)' : 'the host (glibc)'}`);
    const addon = buildAddon(variant, work);
    if (variant === 'musl') {
      checkMusl(addon);
      log('checked the addon: NEEDED libc.so only, no GLIBC_ symbol versions');
    }

    log(`staging the daemon (import closure of ${ENTRY})`);
    const installDir = path.join(work, 'install');
    const stage = stageApp(REPO, path.join(installDir, info.stageUnderInstallDir), addon);
    log(`  ${stage.distFiles.length} files of dist/, ${stage.packages.length} packages`
      + (stage.typesOnly.length > 0 ? ` (left out, types only: ${stage.typesOnly.map((k) => k.replace(/^node_modules\//, '')).join(', ')})` : ''));

    log(`running Package/${info.name}/install`);
    const data = path.join(work, 'data');
    mkdirSync(data, { mode: 0o755 });
    runInstall(info.install, data, installDir);
    // folders as INSTALL_DIR makes them, whatever the umask or the modes $(CP) copied
    for (const dir of dirsUnder(data)) chmodSync(dir, 0o755);
    // package-ipkg.mk: conffiles that are no file of the package (folders) are kept over sysupgrade
    const keep = info.conffiles.filter((c) => !existsSync(path.join(data, c)) || !statSync(path.join(data, c)).isFile());
    if (keep.length > 0) {
      mkdirSync(path.join(data, 'lib/upgrade/keep.d'), { recursive: true });
      appendFileSync(path.join(data, 'lib/upgrade/keep.d', info.name), `${keep.join('\n')}\n`, { mode: 0o644 });
    }

    log('writing control.tar.gz and data.tar.gz');
    const installedSize = treeSize(data);
    writeControl(path.join(work, 'control'), info, arch, installedSize);
    const mtime = sourceDate();
    tarGz(path.join(work, 'data'), ['.'], path.join(work, 'data.tar.gz'), mtime);
    tarGz(path.join(work, 'control'), ['.'], path.join(work, 'control.tar.gz'), mtime);
    writeFileSync(path.join(work, 'debian-binary'), '2.0\n');
    // renamed into place whole, so that nobody reads a half-written package
    const file = path.join(outDir, `${info.name}_${info.version}_${arch}.ipk`);
    tarGz(work, ['./debian-binary', './data.tar.gz', './control.tar.gz'], path.join(work, 'package.ipk'), mtime);
    renameSync(path.join(work, 'package.ipk'), file);
    return { file, size: statSync(file).size, installedSize, stage };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// ---- command line -----------------------------------------------------------------------------

const USAGE = `usage: npm run build:ipk [-- --host-addon]
       node dist/openwrt/build-ipk.js --stage DIR --addon FILE

Builds ${path.relative(process.cwd(), REPO) || '.'}/build/ipk/ntmobile_<version>-r<release>_x86_64.ipk from
openwrt/net/ntmobile/Makefile, with the addon compiled for musl (OpenWrt's libc).

  --host-addon   the same package with the addon compiled for this host's libc (glibc), into
                 build/ipk/host/: what the shared OpenWrt userland (built with glibc) can load
  --stage DIR    only write the daemon's app tree (dist closure, node_modules, the addon given
                 by --addon, package.json) into DIR; the Makefile's Build/Compile uses this
`;

const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(2)} MiB`;

function main(): void {
  const { values } = parseArgs({
    options: {
      'host-addon': { type: 'boolean', default: false },
      stage: { type: 'string' },
      addon: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const log = (line: string): void => console.log(`build:ipk: ${line}`);
  if (values.stage !== undefined) {
    if (values.addon === undefined) throw new BuildError('--stage needs --addon FILE');
    const r = stageApp(REPO, path.resolve(values.stage), path.resolve(values.addon));
    log(`staged ${r.distFiles.length} files of dist/ and ${r.packages.length} packages into ${values.stage}`);
    return;
  }
  const variant: Variant = values['host-addon'] ? 'host' : 'musl';
  const outDir = path.join(REPO, 'build/ipk', variant === 'host' ? 'host' : '');
  mkdirSync(outDir, { recursive: true });
  const r = buildIpk(variant, outDir, log);
  log(`${path.relative(process.cwd(), r.file)}: ${r.size} bytes (${mib(r.size)}), installed size ${r.installedSize} bytes (${mib(r.installedSize)})`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    if (!(err instanceof BuildError)) throw err;
    console.error(`build:ipk: ${err.message}`);
    process.exitCode = 1;
  }
}
