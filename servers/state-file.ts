// Servers' state files (the DC's registry, the NS's node keys) and status files: written whole
// to a temporary file 0600 in a 0700 directory, then renamed over the old one, so a reader or a
// crash sees the old file or the new one, never half of one. State files are synced first.

import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces `path` with `text`; throws (with the temporary file removed) when it cannot.
 * `durable: false` skips the fsync (a status file rewritten every second).
 */
export function writeStateFile(path: string, text: string, o: { durable?: boolean } = {}): void {
  const tmp = `${path}.tmp`;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, text);
      if (o.durable !== false) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
