// Shared pieces of the soaks (bench/soak-*.mjs): an SMTP sink that answers each message's final
// dot with the SHA-256 of the body it received, a minimal SMTP client for a tunnel's socket, and
// the verdict line. On demand only, like every bench.
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import { loadavg } from 'node:os';

/** Prints the verdict line and sets the exit code (0 PASS, 1 FAIL). */
export function finish(name, ok, summary) {
  console.log(`\n${name}: ${ok ? 'PASS' : 'FAIL'}: ${summary} (load average ${loadavg().map((l) => l.toFixed(2)).join(' ')})`);
  process.exitCode = ok ? 0 : 1;
}

/** SMTP sink on 127.0.0.1: `250 2.0.0 sha256=HEX` after each body; counts connections. */
export async function hashingSink() {
  const sink = { port: 0, connections: 0, open: 0, messages: 0, server: createServer() };
  sink.server.on('connection', (sock) => {
    sink.connections++;
    sink.open++;
    sock.on('close', () => sink.open--);
    sock.on('error', () => {});
    let data = false;
    let buf = Buffer.alloc(0);
    let hash = null;
    sock.write('220 sink ESMTP\r\n');
    sock.on('data', (chunk) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      for (;;) {
        if (data) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end === -1) {
            // hash what cannot be part of the terminator yet
            if (buf.length > 5) { hash.update(buf.subarray(0, buf.length - 5)); buf = buf.subarray(buf.length - 5); }
            return;
          }
          hash.update(buf.subarray(0, end + 2));
          buf = buf.subarray(end + 5);
          data = false;
          sink.messages++;
          sock.write(`250 2.0.0 sha256=${hash.digest('hex')}\r\n`);
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl === -1) return;
        const verb = buf.subarray(0, 4).toString('latin1').toUpperCase();
        buf = buf.subarray(nl + 2);
        if (verb === 'EHLO') sock.write('250-sink\r\n250 8BITMIME\r\n');
        else if (verb === 'DATA') { data = true; hash = createHash('sha256'); sock.write('354 go\r\n'); }
        else if (verb === 'QUIT') return void sock.end('221 bye\r\n');
        else sock.write('250 ok\r\n');
      }
    });
  });
  await new Promise((r) => sink.server.listen(0, '127.0.0.1', r));
  sink.port = sink.server.address().port;
  sink.close = () => new Promise((r) => sink.server.close(r));
  return sink;
}

/** Reads SMTP replies off a socket: `next()` resolves with the next complete reply's text. */
function replyReader(socket) {
  let text = '';
  const queue = [];
  const waiters = [];
  socket.on('data', (c) => {
    text += c.toString('latin1');
    for (;;) {
      const m = /^(\d{3}) [^\r\n]*\r\n/m.exec(text);
      if (m === null) return;
      const reply = text.slice(0, m.index + m[0].length);
      text = text.slice(m.index + m[0].length);
      const w = waiters.shift();
      if (w) w.resolve(reply); else queue.push(reply);
    }
  });
  const fail = (err) => { for (const w of waiters.splice(0)) w.reject(err); };
  socket.on('close', () => fail(new Error('connection closed')));
  socket.on('error', (err) => fail(err));
  socket.resume(); // openTunnel hands the socket over paused
  return { next: () => (queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise((resolve, reject) => waiters.push({ resolve, reject }))) };
}

/**
 * One SMTP transaction over `socket` whose body is sent in `chunks` pieces with `pauseMs` between
 * them; resolves with whether the sink's hash of the body equals ours.
 */
export async function sendMessage(socket, body, { chunks = 1, pauseMs = 0 } = {}) {
  const r = replyReader(socket);
  const expect = async (code) => {
    const reply = await r.next();
    if (!reply.startsWith(code)) throw new Error(`expected ${code}, got ${reply.trim()}`);
    return reply;
  };
  await expect('220');
  socket.write('EHLO soak.example\r\n');
  await expect('250');
  socket.write('MAIL FROM:<a@soak.example>\r\n');
  await expect('250');
  socket.write('RCPT TO:<b@soak.example>\r\n');
  await expect('250');
  socket.write('DATA\r\n');
  await expect('354');
  const size = Math.ceil(body.length / chunks);
  for (let i = 0; i < body.length; i += size) {
    socket.write(body.subarray(i, i + size));
    if (pauseMs > 0) await new Promise((res) => setTimeout(res, pauseMs));
  }
  socket.write('.\r\n');
  const final = await expect('250');
  socket.write('QUIT\r\n');
  await expect('221');
  socket.end();
  const want = createHash('sha256').update(body).digest('hex');
  return final.includes(`sha256=${want}`);
}

/** A body of `bytes` printable bytes in CRLF lines, no line starting with a dot. */
export function messageBody(bytes, seed) {
  const line = `X-Soak-${seed}: ${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2)}\r\n`;
  return Buffer.from(`Subject: soak ${seed}\r\n\r\n${line.repeat(Math.ceil(bytes / line.length))}`);
}
