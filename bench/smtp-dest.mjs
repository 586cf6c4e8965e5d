// A cheap SMTP destination for bench/reuse.mjs --destination=smtp-server: nodemailer's smtp-server
// in a child process (its CPU is measured apart), STARTTLS with smtp-server's built-in self-signed
// certificate, at most `limit` concurrent connections per client IP (the 421 Postfix's
// smtpd_client_connection_count_limit gives), PIPELINING, messages read and dropped (no queue, no
// fsync). It counts what bench/reuse.mjs reads from Postfix's log: connections, TLS handshakes
// (resumed), transactions, refusals.
//
//   startSmtpDest({ host, limit }) -> { host, port, domain, pid, mark(), stats(since), waitForStats(pred, { since, timeoutMs }), stop() }
import { fork } from 'node:child_process';

if (process.argv[2] === '--child') {
  const { SMTPServer } = await import('smtp-server');
  const [host, limitText] = process.argv.slice(3);
  const limit = Number(limitText);
  const c = { connections: 0, tlsHandshakes: 0, tlsResumed: 0, transactions: 0, refused: 0 };
  const open = new Map();
  const server = new SMTPServer({
    name: 'sink.dest.test',
    authOptional: true,
    logger: false,
    size: 50 * 1024 * 1024,
    onConnect(session, cb) {
      const n = open.get(session.remoteAddress) ?? 0;
      if (n >= limit) {
        c.refused++;
        return cb(Object.assign(new Error('4.7.0 Error: too many connections from you'), { responseCode: 421 }));
      }
      open.set(session.remoteAddress, n + 1);
      session.counted = true;
      c.connections++;
      cb();
    },
    onClose(session) {
      if (session.counted !== true) return;
      open.set(session.remoteAddress, (open.get(session.remoteAddress) ?? 1) - 1);
    },
    onSecure(socket, _session, cb) {
      c.tlsHandshakes++;
      if (socket.isSessionReused()) c.tlsResumed++;
      cb();
    },
    onData(stream, _session, cb) {
      stream.on('data', () => {});
      stream.on('end', () => {
        c.transactions++;
        cb(null, '2.0.0 Ok: queued');
      });
    },
  });
  server.on('error', () => {});
  server.listen(0, host, () => process.send({ port: server.server.address().port }));
  process.on('message', (m) => {
    if (m === 'stats') process.send({ stats: { ...c } });
  });
} else {
  // nothing: imported by bench/reuse.mjs
}

export async function startSmtpDest({ host = '127.0.0.1', limit = 2 } = {}) {
  const child = fork(new URL(import.meta.url).pathname, ['--child', host, String(limit)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m.port));
    child.once('exit', (code) => reject(new Error(`smtp-dest exited ${code}`)));
  });
  const counters = () =>
    new Promise((resolve) => {
      const on = (m) => {
        if (m.stats === undefined) return;
        child.off('message', on);
        resolve(m.stats);
      };
      child.on('message', on);
      child.send('stats');
    });
  const diff = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, a[k] - (b?.[k] ?? 0)]));
  const stats = async (since) => diff(await counters(), since);
  return {
    host,
    port,
    domain: 'dest.test',
    pid: child.pid,
    mark: counters,
    stats,
    async waitForStats(pred, { since, timeoutMs = 60_000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = await stats(since);
        if (pred(s)) return s;
        if (Date.now() > deadline) throw new Error('smtp-dest: stats not reached');
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
    },
  };
}
