// Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time per function, largest first,
// so that a benchmark run can say where the time goes per packet.
//   node dist/bench/profile-summary.js FILE.cpuprofile [--top N]

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '20' } } });
if (positionals.length !== 1) {
  process.stderr.write('usage: profile-summary.js FILE.cpuprofile [--top N]\n');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as { nodes: ProfileNode[]; samples: number[] };
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map<string, number>();
for (const id of profile.samples) {
  const n = byId.get(id)!;
  const file = n.callFrame.url.split('/').slice(-2).join('/');
  const key = `${n.callFrame.functionName || '(anonymous)'} ${file}${file ? `:${n.callFrame.lineNumber + 1}` : ''}`;
  self.set(key, (self.get(key) ?? 0) + 1);
}
const total = profile.samples.length;
const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top));
process.stdout.write(`${total} samples\n`);
for (const [name, count] of rows) process.stdout.write(`${((count / total) * 100).toFixed(1).padStart(5)}%  ${name}\n`);
