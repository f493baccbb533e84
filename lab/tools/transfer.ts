// A TCP transfer with checksums at both ends, run inside lab hosts:
//   node transfer.js serve ADDRESS PORT      accept one connection, answer with the SHA-256 of what it read
//   node transfer.js send ADDRESS PORT BYTES [BYTES_PER_SECOND]
//                                           send BYTES random bytes (paced if a rate is given), print
//                                           {"bytes","sent","receivedBytes","received","seconds"};
//                                           BYTES may be Infinity: SIGTERM ends the stream (as does
//                                           SIGTERM with a finite BYTES) and the report follows
// The server prints "listening" once it accepts connections.

import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';

const [mode, address, portText, bytesText, rateText] = process.argv.slice(2);
const port = Number(portText);

if (mode === 'serve') {
  const server = net.createServer((socket) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (d) => {
      hash.update(d);
      bytes += d.length;
    });
    socket.on('end', () => {
      socket.end(JSON.stringify({ bytes, sha256: hash.digest('hex') }));
      server.close();
    });
  });
  server.listen(port, address, () => process.stdout.write('listening\n'));
} else if (mode === 'send') {
  let total = Number(bytesText);
  let ended = false;
  const rate = rateText ? Number(rateText) : Infinity;
  const socket = net.connect({ host: address!, port });
  const hash = createHash('sha256');
  const started = Date.now();
  let sent = 0;
  // Pacing: a token bucket of 100 ms at the rate (at least 64 KiB). Credit does not pile up while
  // the socket is blocked (a path that stalled), so the sender never catches up in one burst.
  const bucket = Math.max(65536, rate / 10);
  let credit = 65536;
  let refilled = started;
  const pump = (): void => {
    while (sent < total) {
      if (rate !== Infinity) {
        const now = Date.now();
        credit = Math.min(bucket, credit + ((now - refilled) / 1000) * rate);
        refilled = now;
        if (credit <= 0) return void setTimeout(pump, 10);
      }
      const chunk = randomBytes(Math.min(65536, total - sent));
      credit -= chunk.length;
      hash.update(chunk);
      sent += chunk.length;
      if (!socket.write(chunk)) {
        socket.once('drain', () => {
          refilled = Date.now(); // no credit for the time spent blocked
          pump();
        });
        return;
      }
    }
    finish();
  };
  const finish = (): void => {
    if (ended) return;
    ended = true;
    socket.end();
  };
  // Stop sending now: what was written still goes out, then the server answers with its hash.
  process.on('SIGTERM', () => {
    total = sent;
    if (socket.readyState === 'open') finish();
    else process.exit(1);
  });
  socket.on('connect', pump);
  let reply = '';
  socket.on('data', (d) => (reply += d.toString()));
  socket.on('end', () => {
    const remote = JSON.parse(reply) as { bytes: number; sha256: string };
    const seconds = (Date.now() - started) / 1000;
    process.stdout.write(`${JSON.stringify({ bytes: sent, sent: hash.digest('hex'), receivedBytes: remote.bytes, received: remote.sha256, seconds })}\n`);
  });
  socket.on('error', (e) => {
    process.stderr.write(`transfer: ${e.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write('usage: transfer.js serve ADDRESS PORT | send ADDRESS PORT BYTES [BYTES_PER_SECOND]\n');
  process.exit(2);
}
