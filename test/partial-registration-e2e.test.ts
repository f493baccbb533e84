// A published name the DC refuses must not hold back the rest of the LAN (issue 13): router B
// publishes one name its account does not hold (the DC refuses it: not bound to its key) before
// b2's; router B is ready, its own name and b2's work from router A's LAN (a1 fetches from b2 by
// name, checksum matching), and its status names the refused one with the DC's reason and the
// next attempt.
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { serveRandomFile } from '../lab/http.js';
import { Lab } from '../lab/lab.js';
import { buildFleet, LAN, NAMES } from '../lab/fleet.js';

const REFUSED = 'cam.rb.fleet2.test';

t.test('a refused published name: the others work, the status shows it', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, {
        case: 'no-nat',
        routerConfig: { rb: { publish: [{ name: REFUSED, address: LAN.b1 }, { name: NAMES.b2, address: LAN.b2 }] } },
      });
      t.teardown(() => fleet.dispose());
      const status = (await fleet.rb.api('status')) as { state: string; registered: { name: string }[]; refused: { name: string; reason: string; retries: number; retryAt: number }[] };
      t.equal(status.state, 'ready', 'router B is ready');
      t.same(status.registered.map((r) => r.name).sort(), [NAMES.b2, NAMES.rb].sort(), 'its own name and b2 are registered');
      t.equal(status.refused.length, 1, 'one refused name');
      t.equal(status.refused[0]!.name, REFUSED);
      t.match(status.refused[0]!.reason, /registration of cam\.rb\.fleet2\.test refused: notAuthorized/, 'with the DC\'s answer');
      t.ok(status.refused[0]!.retryAt > Date.now() - 1000, 'and a next attempt');

      const want = createHash('sha256').update(await serveRandomFile(fleet.b2, { dir: fleet.dir, bind: LAN.b2, size: 1024 * 1024 })).digest('hex');
      const out = path.join(fleet.dir, 'got');
      const r = await fleet.a1.exec('curl', ['-sS', '--max-time', '30', '-o', out, '-w', '%{http_code}', `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 60_000 });
      t.equal(r.code, 0, `a1 fetches from b2 by name (curl: ${r.stderr.trim()})`);
      t.equal(r.stdout, '200');
      t.equal(createHash('sha256').update(readFileSync(out)).digest('hex'), want, 'checksum matches');
    },
    { label: 'partial-registration' },
  );
});
