// The AS login's own reading of an HTTP/1.1 answer (router/login.ts parseAnswer): the login talks
// to the AS over node:tls without node's HTTP client, so the three ways an answer's body can end
// (content-length, chunked, the connection's end) and malformed answers are checked here; the
// exchange with the real AS over TLS is test/as.test.ts's.
import t from 'tap';
import { parseAnswer } from '../router/login.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

t.test('content-length: complete once that many bytes are in', async (t) => {
  const head = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n';
  t.equal(parseAnswer(b('HTTP/1.1 200 OK\r\nContent-'), false), null, 'head incomplete');
  t.equal(parseAnswer(b(`${head}{"a":`), false), null, 'body incomplete');
  const a = parseAnswer(b(`${head}{"a":1}`), false)!;
  t.equal(a.status, 200);
  t.equal(a.headers.get('content-type'), 'application/json', 'header names in lower case');
  t.equal(a.body.toString(), '{"a":1}');
  t.equal(parseAnswer(b(`${head}{"a":`), true), null, 'cut short: still incomplete at the end');
});

t.test('chunked: complete at the last chunk', async (t) => {
  const head = 'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\nTransfer-Encoding: chunked\r\n\r\n';
  t.equal(parseAnswer(b(`${head}4\r\n{"er`), false), null, 'in the first chunk');
  t.equal(parseAnswer(b(`${head}4\r\n{"er\r\n`), false), null, 'no last chunk yet');
  const a = parseAnswer(b(`${head}4\r\n{"er\r\n9\r\nror":"x"}\r\n0\r\n\r\n`), false)!;
  t.equal(a.status, 429);
  t.equal(a.headers.get('retry-after'), '60');
  t.equal(a.body.toString(), '{"error":"x"}');
});

t.test('neither: the body ends with the connection', async (t) => {
  const raw = b('HTTP/1.0 502 Bad Gateway\r\nServer: proxy\r\n\r\n<html>');
  t.equal(parseAnswer(raw, false), null, 'open: more may come');
  t.equal(parseAnswer(raw, true)!.body.toString(), '<html>');
});

t.test('malformed answers throw', async (t) => {
  t.throws(() => parseAnswer(b('SSH-2.0-OpenSSH\r\n\r\n'), false), /not an HTTP\/1\.1 answer/);
  t.throws(() => parseAnswer(b('HTTP/1.1 200 OK\r\nno colon\r\n\r\n'), false), /malformed header line/);
  t.throws(() => parseAnswer(b('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'), false), /malformed content-length/);
  t.throws(() => parseAnswer(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'), false), /malformed chunked body/);
});
