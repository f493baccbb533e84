// A UDP probe stream that measures a path's gap, run inside lab hosts:
//   node probe.js recv ADDRESS PORT         count probes until SIGTERM, then print a JSON summary
//   node probe.js send ADDRESS PORT RATE SECONDS   send RATE numbered probes per second
// The summary: {"received","lost","maxGapMs","gapAfterSeq"}: the longest time between two
// consecutive arrivals is the interruption a handover caused.

import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';

const [mode, address, portText, rateText, secondsText] = process.argv.slice(2);
const port = Number(portText);
const family = isIPv6(address ?? '') ? 'udp6' : 'udp4';

if (mode === 'recv') {
  const socket = dgram.createSocket(family);
  let received = 0;
  let highest = 0;
  let last = 0;
  let maxGapMs = 0;
  let gapAfterSeq = 0;
  socket.on('error', () => undefined);
  socket.on('message', (m) => {
    if (m.length < 4) return;
    const seq = m.readUInt32BE(0);
    const now = performance.now();
    if (received > 0 && now - last > maxGapMs) {
      maxGapMs = now - last;
      gapAfterSeq = highest;
    }
    last = now;
    received++;
    highest = Math.max(highest, seq);
  });
  socket.bind(port, address, () => process.stdout.write('listening\n'));
  process.on('SIGTERM', () => {
    process.stdout.write(`${JSON.stringify({ received, lost: highest - received, maxGapMs: Math.round(maxGapMs), gapAfterSeq })}\n`);
    process.exit(0);
  });
} else if (mode === 'send') {
  const socket = dgram.createSocket(family);
  const rate = Number(rateText);
  const total = Math.round(rate * Number(secondsText));
  const started = performance.now();
  let seq = 0;
  const packet = Buffer.alloc(64);
  socket.on('error', () => undefined); // a send that fails during a move is a lost probe, counted by the receiver
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
    while (seq < due) {
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
