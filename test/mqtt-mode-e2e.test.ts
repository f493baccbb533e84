// End to end with the real daemons (docs/ns.md): router B sits behind a NAT whose UDP mappings
// expire after 4 s and keeps one MQTT session to the NS instead of UDP keepalives to its DC.
// Long after its mapping expired, a1 asks for b2 by name: DC2 cannot reach router B over UDP,
// wakes it through the NS, router B's keepalive opens the NAT again, the direction goes through
// and a1 fetches a file from b2 with a matching checksum.
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { serveRandomFile } from '../lab/http.js';
import { Lab } from '../lab/lab.js';
import { buildFleet, LAN, NAMES } from '../lab/fleet.js';

const MAPPING_TIMEOUT = 4;
const SIZE = 4 * 1024 * 1024;

interface RouterStatus {
  counters: { daemon: { wakes: number; keepalives: number } };
  notify: { connected?: boolean; counters?: { wakes: number } } | null;
}

t.test('a router in MQTT mode behind an expired NAT mapping is woken through the NS and reached by name', async (t) => {
  await Lab.withLab(
    async (lab) => {
      const fleet = await buildFleet(lab, { case: 'b-nat', mappingTimeout: MAPPING_TIMEOUT, notify: { routers: ['rb'] } });
      t.teardown(() => fleet.dispose());
      const data = await serveRandomFile(fleet.b2, { dir: fleet.dir, bind: LAN.b2, size: SIZE });

      // Router B registers, takes its Kntmns grant and connects to the broker.
      let rb: RouterStatus | undefined;
      for (let i = 0; i < 60; i++) {
        rb = (await fleet.rb.api('status')) as RouterStatus;
        if (rb.notify?.connected === true) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      t.equal(rb?.notify?.connected, true, 'router B holds an MQTT session to the NS');
      const before = rb!.counters.daemon.keepalives;

      // Let router B's UDP mapping at its NAT expire: it sends no UDP keepalive in MQTT mode.
      await new Promise((r) => setTimeout(r, (MAPPING_TIMEOUT + 4) * 1000));
      rb = (await fleet.rb.api('status')) as RouterStatus;
      t.equal(rb.counters.daemon.keepalives, before, `no UDP keepalive to the DC in ${MAPPING_TIMEOUT + 4} s (MQTT mode)`);

      const out = path.join(fleet.dir, 'got');
      const r = await fleet.a1.exec('curl', ['-sS', '--retry', '2', '--retry-connrefused', '--max-time', '30', '-o', out, `http://${NAMES.b2}:8080/f`], { allowFail: true, timeoutMs: 60_000 });
      t.equal(r.code, 0, `a1 fetched the file from b2 by name (${r.stderr.trim()})`);
      let sha = '';
      try {
        sha = createHash('sha256').update(readFileSync(out)).digest('hex');
      } catch {
        // nothing arrived
      }
      t.equal(sha, createHash('sha256').update(data).digest('hex'), 'SHA-256 matches');

      rb = (await fleet.rb.api('status')) as RouterStatus;
      t.ok(rb.counters.daemon.wakes >= 1, `router B was woken through the NS (${rb.counters.daemon.wakes})`);
      t.ok((rb.notify?.counters?.wakes ?? 0) >= 1, 'its MQTT client counted the notification');
      t.match(fleet.dc2.program.log(), /route \d+: woke rb\.fleet2\.test through NS ns1\.notify\.test/, 'DC2 logged the wake through the NS');
    },
    { label: 'mqtt-mode' },
  );
});
