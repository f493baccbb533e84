// A TCP transfer with checksums at both ends, run inside lab hosts:
//   node transfer.js serve ADDRESS PORT      accept one connection, answer with the SHA-256 of what it read
//   node transfer.js send ADDRESS PORT BYTES send BYTES random bytes, print {"bytes","sent","received"} hashes
// The server prints "listening" once it accepts connections.

import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';

const [mode, address, portText, bytesText] = process.argv.slice(2);
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
  const total = Number(bytesText);
  const socket = net.connect({ host: address!, port });
  const hash = createHash('sha256');
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const chunk = randomBytes(Math.min(65536, total - sent));
      hash.update(chunk);
      sent += chunk.length;
      if (!socket.write(chunk)) return void socket.once('drain', pump);
    }
    socket.end();
  };
  socket.on('connect', pump);
  let reply = '';
  socket.on('data', (d) => (reply += d.toString()));
  socket.on('end', () => {
    const remote = JSON.parse(reply) as { bytes: number; sha256: string };
    process.stdout.write(`${JSON.stringify({ bytes: sent, sent: hash.digest('hex'), receivedBytes: remote.bytes, received: remote.sha256 })}\n`);
  });
  socket.on('error', (e) => {
    process.stderr.write(`transfer: ${e.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write('usage: transfer.js serve ADDRESS PORT | send ADDRESS PORT BYTES\n');
  process.exit(2);
}
