import t from 'tap';
import { PacketBatch } from '../router/io.js';
t.test('batch slots', async (t) => {
  const b = new PacketBatch(4, 2048);
  t.equal(b.offset(3), 6144);
});
