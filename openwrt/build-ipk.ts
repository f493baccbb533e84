// `npm run build:ipk`: the ntmobile .ipk for x86_64 OpenWrt without the SDK, in the format
// OpenWrt 24.10's opkg reads (a gzip'd tar of debian-binary, data.tar.gz, control.tar.gz).
//
// openwrt/net/ntmobile/Makefile is the single source of truth: this reads PKG_VERSION,
// PKG_RELEASE, DEPENDS, the conffiles and the postinst/prerm defines from it, wraps the scripts
// as OpenWrt's include/package-ipkg.mk does, and carries out Package/ntmobile/install itself (the
// few install commands it uses). The daemon's files under /usr/lib/ntmobile come from `--stage`,
// which the Makefile's Build/Compile calls too: dist/router/cli.js bundled with everything it
// imports (npm packages too) by esbuild, the addon and a package.json.
//
// The addon is compiled for musl (Debian's musl-gcc, OpenWrt's libc) and checked to need no
// glibc; `--host-addon` compiles it for the host instead (glibc), which is what the shared
// OpenWrt userland, itself built with glibc, can load.
import { execFileSync } from 'node:child_process';
import {
  appendFileSync, chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync,
  renameSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as esbuild from 'esbuild';
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
  /** the bundle's files, relative to the app: the entry, then the chunks it loads on demand */
  bundle: string[];
  /** the modules of dist/ in the bundle, relative to the repository */
  distFiles: string[];
  /** the npm packages in the bundle (node_modules/…) */
  packages: string[];
}

/**
 * What may never reach a router: server, lab, test, benchmark and builder code, the NS's MQTT
 * broker, the compilers and test runner. The bundle's inputs are checked against it.
 */
const NOT_SHIPPED = /^dist\/(servers|lab|test|bench|openwrt)\/|(^|\/)node_modules\/(aedes|typescript|tap|@tapjs|node-gyp|esbuild|@esbuild)\//;

/** node_modules/NAME (or a nested one) of a bundled file, wherever node_modules is linked from. */
const packageOf = (file: string): string | null =>
  /(?:^|\/)(node_modules\/(?:.*\/node_modules\/)?(?:@[^/]+\/)?[^/]+)\//.exec(file)?.[1] ?? null;

/**
 * The stage's bundle has a `require` of its own (the banner below), so that the CommonJS packages
 * it holds (dns-packet, mqtt) can load node's builtins; `createRequire(import.meta.url)('name')`,
 * which dist/ uses so that node does not run its CommonJS export lexer on a package, becomes that
 * require, which esbuild follows into the package. A computed name (the addon's path) stays a load
 * at run time.
 */
const REQUIRE_BANNER = 'import{createRequire as __ntmCreateRequire}from"node:module";const require=__ntmCreateRequire(import.meta.url);';
const createdRequire: esbuild.Plugin = {
  name: 'created-require',
  setup(build) {
    build.onLoad({ filter: /[\\/]dist[\\/].*\.js$/ }, (args) => {
      const text = readFileSync(args.path, 'utf8');
      return { contents: text.replace(/createRequire\(import\.meta\.url\)\((['"][^'"]+['"])\)/g, 'require($1)'), loader: 'js' };
    });
  },
};

/**
 * Writes the daemon's app tree (what goes to /usr/lib/ntmobile) into `out`: dist/router/cli.js and
 * everything it imports, npm packages included, bundled and minified by esbuild into one ES module
 * at the same place (plus a chunk per group of modules the daemon imports only on demand, such
 * as mqtt), the addon and a package.json. Each file of the bundle sits where the modules it
 * replaces sat, two folders below the app, so that the paths they resolve from import.meta.url
 * (the addon's, package.json) are the same as in dist/. One file instead of some 60 modules saves
 * the router about 4.7 MB of RSS (docs/benchmarks.md, "Memory on a router").
 */
export async function stageApp(repo: string, out: string, addon: string): Promise<StageResult> {
  rmSync(out, { recursive: true, force: true });
  const pkg = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8')) as {
    name: string; version: string; description?: string; license?: string;
  };
  const entry = path.join(repo, ENTRY);
  if (!existsSync(entry)) throw new BuildError(`${ENTRY} is missing: run npm run build`);
  const outdir = path.join(out, path.dirname(ENTRY));
  let result: esbuild.BuildResult<{ metafile: true }>;
  try {
    result = await esbuild.build({
      absWorkingDir: repo,
      entryPoints: [entry],
      outdir,
      entryNames: '[name]',
      chunkNames: '[name]-[hash]',
      bundle: true,
      splitting: true,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      minify: true,
      // ASCII only: V8 keeps a source with any other character as UTF-16, twice the memory
      charset: 'ascii',
      legalComments: 'eof',
      banner: { js: REQUIRE_BANNER },
      plugins: [createdRequire],
      metafile: true,
      logLevel: 'silent',
    });
  } catch (err) {
    const failure = err as esbuild.BuildFailure;
    if (!Array.isArray(failure.errors)) throw err;
    throw new BuildError(`esbuild: ${esbuild.formatMessagesSync(failure.errors, { kind: 'error' }).join('')}`);
  }
  if (result.warnings.length > 0) {
    throw new BuildError(`esbuild: ${esbuild.formatMessagesSync(result.warnings, { kind: 'warning' }).join('')}`);
  }
  const inputs = Object.keys(result.metafile.inputs).map((f) => path.relative(repo, path.resolve(repo, f)));
  const refused = inputs.filter((f) => NOT_SHIPPED.test(f));
  if (refused.length > 0) throw new BuildError(`${ENTRY} imports what no router gets: ${refused.join(', ')}`);
  const bundle = Object.keys(result.metafile.outputs).map((f) => path.relative(out, path.resolve(repo, f)));
  for (const f of bundle) chmodSync(path.join(out, f), 0o644);

  // the path dist/netlink/native.js loads the addon from, relative to the app
  const addonRel = path.relative(REPO, ADDON_PATH);
  if (!existsSync(addon)) throw new BuildError(`addon ${addon} does not exist`);
  mkdirSync(path.dirname(path.join(out, addonRel)), { recursive: true });
  copyFileSync(addon, path.join(out, addonRel));
  chmodSync(path.join(out, addonRel), 0o755);

  // ESM for node, and the version `--version` reads; everything the daemon runs is in the bundle
  const appPackage = {
    name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license,
    private: true, type: 'module',
  };
  writeFileSync(path.join(out, 'package.json'), `${JSON.stringify(appPackage, null, 2)}\n`, { mode: 0o644 });
  const packages = [...new Set(inputs.map(packageOf).filter((k) => k !== null))].sort();
  return {
    bundle: [ENTRY, ...bundle.filter((f) => f !== ENTRY).sort()],
    distFiles: inputs.filter((f) => f.startsWith('dist/')).sort(),
    packages,
  };
}

const stageSummary = (r: StageResult): string =>
  `${r.bundle.join(', ')}: ${r.distFiles.length} modules of dist/, packages ${r.packages.map((k) => k.replace(/^node_modules\//, '')).join(', ')}`;

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
export function tarGz(cwd: string, members: string[], out: string, mtime: number): void {
  execFileSync('tar', [
    '--owner=0', '--group=0', '--numeric-owner', '--sort=name', `--mtime=@${mtime}`, '--format=gnu',
    '--use-compress-program=gzip -9n', '-C', cwd, '-cf', out, ...members,
  ]);
}

/** The time stamp of the files: SOURCE_DATE_EPOCH, else the last commit, else now. */
export function sourceDate(): number {
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

export async function buildIpk(variant: Variant, outDir: string, log: (line: string) => void): Promise<IpkResult> {
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

    log(`staging the daemon (${ENTRY} bundled with what it imports)`);
    const installDir = path.join(work, 'install');
    const stage = await stageApp(REPO, path.join(installDir, info.stageUnderInstallDir), addon);
    log(`  ${stageSummary(stage)}`);

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
  --stage DIR    only write the daemon's app tree (the bundle, the addon given by --addon,
                 package.json) into DIR; the Makefile's Build/Compile uses this
`;

const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(2)} MiB`;

async function main(): Promise<void> {
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
    const r = await stageApp(REPO, path.resolve(values.stage), path.resolve(values.addon));
    log(`staged into ${values.stage}: ${stageSummary(r)}`);
    return;
  }
  const variant: Variant = values['host-addon'] ? 'host' : 'musl';
  const outDir = path.join(REPO, 'build/ipk', variant === 'host' ? 'host' : '');
  mkdirSync(outDir, { recursive: true });
  const r = await buildIpk(variant, outDir, log);
  log(`${path.relative(process.cwd(), r.file)}: ${r.size} bytes (${mib(r.size)}), installed size ${r.installedSize} bytes (${mib(r.installedSize)})`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (err) {
    if (!(err instanceof BuildError)) throw err;
    console.error(`build:ipk: ${err.message}`);
    process.exitCode = 1;
  }
}
