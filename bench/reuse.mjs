// Shared connections vs per-MTA connections (issue 11, design.md §9 "reuse"): 3 MTA sessions
// deliver small messages to one destination, a real Postfix that allows only 2 concurrent
// connections per client IP (smtpd_client_connection_count_limit = 2) with STARTTLS, in one run:
//   (a) smtp mode: each MTA holds one link; the proxy lends its 2 destination connections
//       transaction by transaction (the proxy does STARTTLS, once per connection);
//   (b) tunnel mode: each MTA opens its own connections through the proxy and does STARTTLS
//       itself, as an MTA behind HAProxy would, sending --per-connection messages on each one
//       (the throttle, max_connections = 2 cluster-wide, keeps them under Postfix's limit).
// Prints messages/s, the TLS handshakes and connections Postfix logged, and the ratio.
//
//   npm run build && node bench/reuse.mjs [--messages=2000] [--per-connection=1,10]
//
// Needs root and Debian's postfix (apt-get install postfix, preseeded "No configuration" as in
// README's test command); the Postfix instance is the tests' harness (test/helpers/postfix.ts),
// bundled with esbuild. Targets: (a) >= 2x the messages/s of (b); (a) <= 1 TLS handshake to the
// destination per 50 messages.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { fmt, machine, printTable, ROOT, SECRET, startProxy, verdict } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const MESSAGES = Number(arg('messages', 2000));
const PER_CONNECTION = arg('per-connection', '1,10').split(',').map(Number);
const MTAS = 3;
const LIMIT = 2;
const SOURCE = '127.0.0.2';

const tmp = mkdtempSync(join(tmpdir(), 'mtaproxy-reuse-'));
await build({ entryPoints: [join(ROOT, 'test/helpers/postfix.ts')], bundle: true, platform: 'node', format: 'esm', outfile: join(tmp, 'postfix.mjs'), logLevel: 'error' });
const { postfixUnavailable, startPostfix } = await import(join(tmp, 'postfix.mjs'));
const why = postfixUnavailable();
if (why !== null) {
  console.error(`bench/reuse.mjs: ${why}`);
  process.exit(2);
}

const pf = await startPostfix({ address: '127.0.0.13', connectionLimit: LIMIT, delivery: 'discard', mainCf: { service_throttle_time: '1s' } });
const proxy = await startProxy({ ports: [pf.port], sourceIps: [SOURCE], throttleWaitTimeout: '60s', extra: '[smtp]\nidle_timeout = "60s"' });
const proxyOpts = { host: '127.0.0.1', port: proxy.port, secret: SECRET };
const controls = [];
for (let i = 0; i < MTAS; i++) {
  const c = await ControlClient.connect({ ...proxyOpts, name: `mta-${i}` });
  // "average": the cluster-wide limit is 2, whatever the number of MTAs
  await c.declare({ key: 'dest', sourceIp: SOURCE, maxConnections: LIMIT, maxMessagesPerHour: 100_000_000, mode: 'average' });
  controls.push(c);
}

const body = 'Subject: reuse bench\r\nFrom: <a@src.test>\r\n\r\nA small message.\r\n';
const send = (conn, n) =>
  new Promise((resolve, reject) => conn.send({ from: 'a@src.test', to: [`r${n}@${pf.domain}`] }, body, (err, info) => (err ? reject(err) : resolve(info))));
const connectSmtp = async (socket, extra) => {
  const conn = new SMTPConnection({ connection: socket, name: 'mail.src.test', ...extra });
  await new Promise((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(resolve);
  });
  conn.on('error', () => {});
  return conn;
};
const quit = (conn) =>
  new Promise((resolve) => {
    conn.once('end', resolve);
    conn.quit();
  });

/** Splits MESSAGES among the MTAs, runs `perMta(i, count)` for each at once; returns stats. */
async function run(name, perMta) {
  const since = await pf.mark();
  const started = performance.now();
  let failed = 0;
  await Promise.all(
    Array.from({ length: MTAS }, (_, i) => {
      const count = Math.floor(MESSAGES / MTAS) + (i < MESSAGES % MTAS ? 1 : 0);
      return perMta(i, count).catch((err) => {
        failed++;
        console.error(`${name} mta-${i}: ${err.message}`);
      });
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const stats = await pf.waitForStats((s) => s.transactions >= MESSAGES || failed > 0, { since, timeoutMs: 60_000 }).catch(() => pf.stats(since));
  return { name, seconds, rate: stats.transactions / seconds, transactions: stats.transactions, connections: stats.connections, tls: stats.tlsHandshakes, resumed: stats.tlsResumed, refused: stats.refused, failed };
}

const results = [];
// (a) smtp mode: one link per MTA, transactions share the proxy's connections
results.push(
  await run('(a) smtp mode, shared connections', async (i, count) => {
    const l = await openTunnel({ ...proxyOpts, name: `mta-${i}`, source: SOURCE, destination: { host: pf.host, port: pf.port }, throttle: 'dest', waitMs: 60_000, smtp: { ehlo: 'mail.src.test' } });
    const conn = await connectSmtp(l.socket, { ignoreTLS: true });
    for (let n = 0; n < count; n++) await send(conn, n);
    await quit(conn);
  }),
);
// (b) tunnel mode: per-MTA connections with the MTA's own STARTTLS
for (const per of PER_CONNECTION) {
  results.push(
    await run(`(b) tunnels, ${per} msg/connection`, async (i, count) => {
      for (let sent = 0; sent < count; ) {
        const t = await openTunnel({ ...proxyOpts, name: `mta-${i}`, source: SOURCE, destination: { host: pf.host, port: pf.port }, throttle: 'dest', waitMs: 60_000 });
        const conn = await connectSmtp(t.socket, { requireTLS: true, tls: { rejectUnauthorized: false } });
        for (let k = 0; k < per && sent < count; k++, sent++) await send(conn, sent);
        await quit(conn);
      }
    }),
  );
}

console.log(`\n# bench/reuse.mjs: ${MESSAGES} messages from ${MTAS} MTAs to one Postfix (${LIMIT} connections per client IP, STARTTLS), ${machine()}`);
printTable(
  ['path', 'msgs/s', 'delivered', 'connections', 'TLS handshakes (resumed)', 'msgs per TLS handshake', 'refused by Postfix', 'failed MTAs'],
  results.map((r) => [r.name, fmt(r.rate), String(r.transactions), String(r.connections), `${r.tls} (${r.resumed})`, fmt(r.transactions / Math.max(1, r.tls), 1), String(r.refused), String(r.failed)]),
);
const a = results[0];
for (const b of results.slice(1)) {
  const ratio = a.rate / b.rate;
  console.log(`${a.name} vs ${b.name}: ${fmt(ratio, 2)}x messages/s (target >= 2x) ${verdict(Number.isFinite(ratio) && ratio >= 2 && a.failed === 0 && b.failed === 0)}`);
}
const perHandshake = a.transactions / Math.max(1, a.tls);
console.log(`${a.name}: ${fmt(perHandshake, 1)} messages per TLS handshake to the destination (target >= 50) ${verdict(perHandshake >= 50 && a.transactions === MESSAGES)}`);

for (const c of controls) c.destroy();
await proxy.stop();
await pf.stop();
rmSync(tmp, { recursive: true, force: true });
