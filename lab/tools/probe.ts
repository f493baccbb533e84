// A UDP probe stream that measures a path's gap, run inside lab hosts:
//   node probe.js recv ADDRESS PORT         count probes until SIGTERM, then print a JSON summary
//   node probe.js send ADDRESS PORT RATE SECONDS   send RATE numbered probes per second (SECONDS 0:
//                                                  until SIGTERM)
// The summary: {"received","lost","maxGapMs","gapAfterSeq","first","last","gaps"}: the longest
// time between two consecutive arrivals is the interruption a handover caused. `gaps` lists every
// silence longer than 5 ms as {after, next, ms, at}: the sequence numbers of the last probe
// before it and the first after it, its length, and when it began (Date.now() of the last probe
// before it, so that a test can match a gap to the moment it switched a path); `first`/`last`
// are the Date.now() of the first and last arrival; the loss inside a gap is next - after - 1.

import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';

const [mode, address, portText, rateText, secondsText] = process.argv.slice(2);
const port = Number(portText);
const family = isIPv6(address ?? '') ? 'udp6' : 'udp4';
/** Silences shorter than this are scheduling noise at 1000 packets/s, not listed in `gaps`. */
const GAP_LISTED_MS = 5;
const MAX_GAPS = 20_000;

if (mode === 'recv') {
  const socket = dgram.createSocket(family);
  let received = 0;
  let highest = 0;
  let lastSeq = 0;
  let last = 0;
  let lastWall = 0;
  let firstWall = 0;
  let maxGapMs = 0;
  let gapAfterSeq = 0;
  const gaps: { after: number; next: number; ms: number; at: number }[] = [];
  socket.on('error', () => undefined);
  socket.on('message', (m) => {
    if (m.length < 4) return;
    const seq = m.readUInt32BE(0);
    const now = performance.now();
    const wall = Date.now();
    if (received > 0) {
      const gap = now - last;
      if (gap > maxGapMs) {
        maxGapMs = gap;
        gapAfterSeq = highest;
      }
      if (gap > GAP_LISTED_MS && gaps.length < MAX_GAPS) gaps.push({ after: lastSeq, next: seq, ms: Math.round(gap * 10) / 10, at: lastWall });
    } else firstWall = wall;
    last = now;
    lastWall = wall;
    lastSeq = seq;
    received++;
    highest = Math.max(highest, seq);
  });
  socket.bind(port, address, () => process.stdout.write('listening\n'));
  process.on('SIGTERM', () => {
    process.stdout.write(`${JSON.stringify({ received, lost: highest - received, maxGapMs: Math.round(maxGapMs), gapAfterSeq, first: firstWall, last: lastWall, gaps })}\n`);
    process.exit(0);
  });
} else if (mode === 'send') {
  const socket = dgram.createSocket(family);
  const rate = Number(rateText);
  const seconds = Number(secondsText);
  let total = seconds > 0 ? Math.round(rate * seconds) : Infinity;
  process.on('SIGTERM', () => {
    total = seq;
  });
  const started = performance.now();
  let seq = 0;
  socket.on('error', () => undefined); // a send that fails during a move is a lost probe, counted by the receiver
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
    while (seq < due) {
      // A buffer per probe: send() hands it over asynchronously (after the address "lookup").
      const packet = Buffer.alloc(64);
      packet.writeUInt32BE(++seq, 0);
      socket.send(packet, port, address);
    }
    if (seq < total) setTimeout(tick, 1);
    else setTimeout(() => socket.close(), 100);
  };
  tick();
} else {
  process.stderr.write('usage: probe.js recv ADDRESS PORT | send ADDRESS PORT RATE SECONDS\n');
  process.exit(2);
}
