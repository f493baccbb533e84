// `--version` of every command: the version in package.json, which sits two folders above this
// module both in the repository (dist/protocol/) and in the OpenWrt package (/usr/lib/ntmobile).

import { readFileSync } from 'node:fs';

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };
  return `${pkg.name} ${pkg.version}`;
}
