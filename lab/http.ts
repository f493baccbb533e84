// Web servers for the demo and the end-to-end tests: python's http.server in a host serving one
// file of random bytes, and a wait until a server answers. Only GET /NAME fetches the file, so
// a server's log (`HOST-http.log`) shows who fetched it; the wait asks for / and is not counted.

import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { type Host } from './lab.js';

/** Waits until something answers `url` from inside `host` (any HTTP status); throws after about 5 s. */
export async function waitHttp(host: Host, url: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await host.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', url], { allowFail: true });
    if (/^\d{3}$/.test(r.stdout) && r.stdout !== '000') return;
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error(`${url}: the web server in ${host.name} did not answer`);
}

/**
 * python's http.server on `bind`:`port` (default 8080) in `host`, serving `size` random bytes as
 * /`name` from a directory under `dir`; returns the bytes once the server answers.
 */
export async function serveRandomFile(host: Host, o: { dir: string; bind: string; size: number; name?: string; port?: number }): Promise<Buffer> {
  const name = o.name ?? 'f';
  const port = o.port ?? 8080;
  const root = path.join(o.dir, `www-${host.name}-${port}`);
  mkdirSync(root, { recursive: true });
  const data = randomBytes(o.size);
  writeFileSync(path.join(root, name), data);
  host.spawn('python3', ['-m', 'http.server', '--bind', o.bind, String(port), '--directory', root], { log: 'http' });
  await waitHttp(host, `http://${o.bind.includes(':') ? `[${o.bind}]` : o.bind}:${port}/`);
  return data;
}
