// Servers' state files (the DC's registry, the NS's node keys): written whole to a temporary
// file 0600 in a 0700 directory, synced, then renamed over the old one, so a crash leaves the
// old file or the new one, never half of one.

import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/** Replaces `path` with `text`; throws (with the temporary file removed) when it cannot. */
export function writeStateFile(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
