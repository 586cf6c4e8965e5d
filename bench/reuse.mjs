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
// --destination=smtp-server puts a cheap destination in Postfix's place (bench/smtp-dest.mjs:
// smtp-server in a child process, STARTTLS, the same 2-connection limit, no queue, no fsync), to
// tell the destination's share of the result from the proxy's.
// Each path runs with two MTA clients: `pipelining` (bench/smtp-client.mjs, what Postfix's smtp(8),
// Exim and KumoMTA do: MAIL, RCPT and DATA in one write when PIPELINING is offered, RFC 2920) and
// `nodemailer` (its SMTPConnection: one command at a time, waiting for each reply). Besides
// messages/s it prints CPU per message of the proxy (the daemon's process), of Postfix (master and
// every child, reaped ones included) and of the bench process (the MTAs), from /proc.
//
//   npm run build && node bench/reuse.mjs [--messages=2000] [--per-connection=1,10] [--client=pipelining,nodemailer]
//     [--rounds=1] [--destination=postfix|smtp-server] [--only=a|b] [--cpu-prof=DIR] (the proxy writes a V8 profile there: node bench/cpuprofile.mjs FILE)
//     [--postfix-tuning=on|off] (on: Postfix tuned as a high-volume MX, below) [--mta-tls-resume=on|off] (on: (b)'s
//     pipelining MTAs resume their TLS sessions, as Postfix's smtp(8) with a session cache does; nodemailer never does)
//     [--link-tls=on|off] (off: the MTA <-> proxy link in plaintext, tls = false) [--mtas=3]
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
import { readFileSync } from 'node:fs';
import { cpuSeconds, fmt, machine, printTable, ROOT, SECRET, startProxy, verdict } from './lib.mjs';
import { PipeliningClient } from './smtp-client.mjs';
import { startSmtpDest } from './smtp-dest.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const MESSAGES = Number(arg('messages', 2000));
// the paths alternate in ROUNDS rounds of MESSAGES/ROUNDS each, so a load that drifts during the
// run (a shared machine) weighs on every path alike; rows sum the rounds
const ROUNDS = Number(arg('rounds', 1));
const PER_CONNECTION = arg('per-connection', '1,10').split(',').map(Number);
const CLIENTS = arg('client', 'pipelining,nodemailer').split(',');
const CPU_PROF = arg('cpu-prof', null);
const ONLY = arg('only', null); // 'a' or 'b': one path (with --cpu-prof, to profile it alone)
const MTAS = Number(arg('mtas', 3));
const LIMIT = 2;
const SOURCE = '127.0.0.2';

const DESTINATION = arg('destination', 'postfix');
// Postfix as a high-volume MX is tuned (--postfix-tuning=off: the tests' plain instance): its
// daemons live on (max_use: by default cleanup, smtpd, trivial-rewrite and discard exit after 100
// clients, and every message is a client of cleanup), and cleanup skips the address mappings and
// header/body checks a receiving MX that hands mail to a content filter leaves to it (there are
// none configured here, but it still asks trivial-rewrite to canonicalize every address)
const POSTFIX_TUNING = arg('postfix-tuning', 'on') !== 'off';
const MX_TUNING = { max_use: '10000', receive_override_options: 'no_address_mappings, no_header_body_checks, no_unknown_recipient_checks, no_milters' };
// (b)'s MTAs resume TLS sessions with the destination, as Postfix's smtp(8) does with
// smtp_tls_session_cache_database (which Debian's TLS setup, /usr/share/postfix/main.cf.tls, sets); --mta-tls-resume=off: every
// STARTTLS a full handshake
const MTA_TLS_RESUME = arg('mta-tls-resume', 'on') !== 'off';
// the MTA <-> proxy link is TLS, the daemon's default (--link-tls=off: tls = false, a trusted network)
const LINK_TLS = arg('link-tls', 'on') !== 'off';

const tmp = mkdtempSync(join(tmpdir(), 'mtaproxy-reuse-'));
let pf;
let destinationPid;
if (DESTINATION === 'smtp-server') {
  // the cheap destination: no queue file, no fsync, one process
  pf = await startSmtpDest({ host: '127.0.0.13', limit: LIMIT });
  destinationPid = pf.pid;
} else {
  await build({ entryPoints: [join(ROOT, 'test/helpers/postfix.ts')], bundle: true, platform: 'node', format: 'esm', outfile: join(tmp, 'postfix.mjs'), logLevel: 'error' });
  const { postfixUnavailable, startPostfix } = await import(join(tmp, 'postfix.mjs'));
  const why = postfixUnavailable();
  if (why !== null) {
    console.error(`bench/reuse.mjs: ${why}`);
    process.exit(2);
  }
  pf = await startPostfix({ address: '127.0.0.13', connectionLimit: LIMIT, delivery: 'discard', mainCf: { service_throttle_time: '1s', ...(POSTFIX_TUNING ? MX_TUNING : {}) } });
  destinationPid = Number(readFileSync(join(pf.dir, 'queue/pid/master.pid'), 'utf8').trim());
}
const DEST_NAME = DESTINATION === 'smtp-server' ? 'smtp-server' : 'Postfix';
const proxy = await startProxy({ ports: [pf.port], sourceIps: [SOURCE], throttleWaitTimeout: '60s', extra: `${LINK_TLS ? '' : 'tls = false\n'}[smtp]\nidle_timeout = "60s"`, nodeArgs: CPU_PROF === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`] });
const proxyOpts = { host: '127.0.0.1', port: proxy.port, secret: SECRET, ...(LINK_TLS ? {} : { tls: false }) };
const controls = [];
for (let i = 0; i < MTAS; i++) {
  const c = await ControlClient.connect({ ...proxyOpts, name: `mta-${i}` });
  // "average": the cluster-wide limit is 2, whatever the number of MTAs
  await c.declare({ key: 'dest', sourceIp: SOURCE, maxConnections: LIMIT, maxMessagesPerHour: 100_000_000, mode: 'average' });
  controls.push(c);
}

const body = 'Subject: reuse bench\r\nFrom: <a@src.test>\r\n\r\nA small message.\r\n';
/** Each MTA's TLS session with the destination (its session cache), for the next STARTTLS. */
const mtaSessions = new Map();
/** An MTA's SMTP client on an open socket: { send(n), quit() }. */
async function mtaClient(kind, socket, starttls, mta) {
  if (kind === 'pipelining') {
    const c = new PipeliningClient(socket);
    await c.open('mail.src.test', { starttls, session: MTA_TLS_RESUME ? (mtaSessions.get(mta) ?? null) : null });
    if (starttls && c.tlsSession !== null) mtaSessions.set(mta, c.tlsSession);
    return { send: (n) => c.send('a@src.test', [`r${n}@${pf.domain}`], body), quit: () => c.quit({ waitReply: !starttls }) };
  }
  const conn = new SMTPConnection({ connection: socket, name: 'mail.src.test', ...(starttls ? { requireTLS: true, tls: { rejectUnauthorized: false } } : { ignoreTLS: true }) });
  await new Promise((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(resolve);
  });
  conn.on('error', () => {});
  return {
    send: (n) => new Promise((resolve, reject) => conn.send({ from: 'a@src.test', to: [`r${n}@${pf.domain}`] }, body, (err, info) => (err ? reject(err) : resolve(info)))),
    quit: () => new Promise((resolve) => { conn.once('end', resolve); conn.quit(); }),
  };
}

const cpu = () => ({ proxy: cpuSeconds(proxy.pid), postfix: cpuSeconds(destinationPid), bench: process.cpuUsage() });

/** MTA-measured time of each transaction (MAIL to the final reply), ms, of the current run. */
let sendMs = [];
const timed = async (c, n) => {
  const t0 = performance.now();
  await c.send(n);
  sendMs.push(performance.now() - t0);
};

/** Splits `messages` among the MTAs, runs `perMta(i, count)` for each at once; returns stats. */
async function run(name, perMta, messages) {
  sendMs = [];
  const since = await pf.mark();
  const cpu0 = cpu();
  const started = performance.now();
  let failed = 0;
  await Promise.all(
    Array.from({ length: MTAS }, (_, i) => {
      const count = Math.floor(messages / MTAS) + (i < messages % MTAS ? 1 : 0);
      return perMta(i, count).catch((err) => {
        failed++;
        console.error(`${name} mta-${i}: ${err.message}`);
      });
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const stats = await pf.waitForStats((s) => s.transactions >= messages || failed > 0, { since, timeoutMs: 60_000 }).catch(() => pf.stats(since));
  const cpu1 = cpu();
  const n = Math.max(1, stats.transactions);
  const ms = (sec) => (sec * 1000) / n;
  const benchCpu = process.cpuUsage(cpu0.bench);
  return {
    name, seconds, rate: stats.transactions / seconds, transactions: stats.transactions, connections: stats.connections, tls: stats.tlsHandshakes, resumed: stats.tlsResumed, refused: stats.refused, failed,
    cpu: { proxy: ms(cpu1.proxy - cpu0.proxy), postfix: ms(cpu1.postfix - cpu0.postfix), bench: ms((benchCpu.user + benchCpu.system) / 1e6) },
    // the destination's LIMIT connections are busy all the time (3 MTAs for 2 slots): the
    // connection time one message costs, and what one transaction on an open connection took
    slotMs: (LIMIT * seconds * 1000) / n,
    sendMs: sendMs.reduce((x, y) => x + y, 0) / Math.max(1, sendMs.length),
    sends: sendMs.length,
    sendTimes: sendMs,
  };
}

function quantiles(times) {
  const v = [...times].sort((x, y) => x - y);
  const q = (f) => v[Math.min(v.length - 1, Math.floor(f * v.length))] ?? 0;
  return { p50: q(0.5), p99: q(0.99) };
}

/** Rounds of one path summed into one row. */
function sum(rounds) {
  const r0 = rounds[0];
  const add = (f) => rounds.reduce((x, r) => x + f(r), 0);
  const n = Math.max(1, add((r) => r.transactions));
  const w = (f) => add((r) => f(r) * r.transactions) / n;
  const seconds = add((r) => r.seconds);
  return {
    name: r0.name, seconds, rate: add((r) => r.transactions) / seconds, transactions: add((r) => r.transactions), connections: add((r) => r.connections), tls: add((r) => r.tls), resumed: add((r) => r.resumed), refused: add((r) => r.refused), failed: add((r) => r.failed),
    cpu: { proxy: w((r) => r.cpu.proxy), postfix: w((r) => r.cpu.postfix), bench: w((r) => r.cpu.bench) },
    slotMs: (LIMIT * seconds * 1000) / n,
    sendMs: add((r) => r.sendMs * r.sends) / Math.max(1, add((r) => r.sends)),
    // a shared machine's stalls show in the tail: p50 and p99 of the MTAs' transaction times
    sendQ: quantiles(rounds.flatMap((r) => r.sendTimes)),
    rounds,
  };
}

const tables = [];
for (const kind of CLIENTS) {
  const paths = [];
  // (a) smtp mode: one link per MTA, transactions share the proxy's connections
  if (ONLY !== 'b')
    paths.push({
      name: '(a) smtp mode, shared connections',
      perMta: async (i, count) => {
        const l = await openTunnel({ ...proxyOpts, name: `mta-${i}`, source: SOURCE, destination: { host: pf.host, port: pf.port }, throttle: 'dest', waitMs: 60_000, smtp: { ehlo: 'mail.src.test' } });
        const c = await mtaClient(kind, l.socket, false, i);
        for (let n = 0; n < count; n++) await timed(c, n);
        await c.quit();
      },
    });
  // (b) tunnel mode: per-MTA connections with the MTA's own STARTTLS
  if (ONLY !== 'a')
    for (const per of PER_CONNECTION)
      paths.push({
        name: `(b) tunnels, ${per} msg/connection`,
        perMta: async (i, count) => {
          for (let sent = 0, refused = 0; sent < count; ) {
            const t = await openTunnel({ ...proxyOpts, name: `mta-${i}`, source: SOURCE, destination: { host: pf.host, port: pf.port }, throttle: 'dest', waitMs: 60_000 });
            let c;
            try {
              c = await mtaClient(kind, t.socket, true, i);
            } catch (err) {
              // Postfix counts a connection until its smtpd has told anvil it is gone, a moment
              // after the proxy saw it close and gave its throttle slot to the next tunnel: the
              // 421 an MTA then gets (Postfix's table counts it as refused) is retried, as an
              // MTA would retry the destination, here at once and at most 100 times per MTA
              t.socket.destroy();
              if ((err.reply?.code ?? err.responseCode) !== 421 || ++refused > 100) throw err;
              continue;
            }
            for (let k = 0; k < per && sent < count; k++, sent++) await timed(c, sent);
            await c.quit();
          }
        },
      });
  const rounds = paths.map(() => []);
  for (let round = 0; round < ROUNDS; round++) {
    const messages = Math.floor(MESSAGES / ROUNDS) + (round < MESSAGES % ROUNDS ? 1 : 0);
    for (const [i, p] of paths.entries()) rounds[i].push(await run(p.name, p.perMta, messages));
  }
  tables.push({ kind, results: rounds.map(sum) });
}

const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const setup = [DESTINATION === 'postfix' ? `Postfix tuning ${POSTFIX_TUNING ? 'on' : 'off'}` : null, `MTA TLS resumption ${MTA_TLS_RESUME ? 'on' : 'off'}`, `MTA link ${LINK_TLS ? 'TLS' : 'plaintext'}`].filter((x) => x !== null).join(', ');
console.log(`\n# bench/reuse.mjs: ${MESSAGES} messages from ${MTAS} MTAs to one ${DESTINATION === 'smtp-server' ? 'smtp-server (bench/smtp-dest.mjs)' : 'Postfix'} (${LIMIT} connections per client IP, STARTTLS), ${setup}, ${machine()}, load average at the end ${load}`);
let allOk = true;
for (const { kind, results } of tables) {
  console.log(`\n## MTA client: ${kind === 'pipelining' ? 'pipelining (bench/smtp-client.mjs: MAIL+RCPT+DATA in one write, RFC 2920)' : "nodemailer SMTPConnection (one command at a time)"}\n`);
  printTable(
    ['path', 'msgs/s', 'delivered', 'connections', 'TLS handshakes (resumed)', 'msgs per TLS handshake', `refused by ${DEST_NAME}`, 'failed MTAs', 'proxy CPU ms/msg', `${DEST_NAME} CPU ms/msg`, 'MTAs CPU ms/msg', 'connection ms/msg', 'MTA ms/transaction', 'p50 / p99'],
    results.map((r) => [r.name, fmt(r.rate), String(r.transactions), String(r.connections), `${r.tls} (${r.resumed})`, fmt(r.transactions / Math.max(1, r.tls), 1), String(r.refused), String(r.failed), fmt(r.cpu.proxy, 2), fmt(r.cpu.postfix, 2), fmt(r.cpu.bench, 2), fmt(r.slotMs, 2), fmt(r.sendMs, 2), `${fmt(r.sendQ.p50, 1)} / ${fmt(r.sendQ.p99, 1)}`]),
  );
  // in (b) a transaction on an open connection is all (a) can save on, besides the connection's
  // setup: if (a)'s transactions cost what (b)'s do, (a) reaches (b)'s connection time per message
  // divided by its transaction time, at best
  for (const b of results.filter((r) => r.name.startsWith('(b)'))) {
    console.log(`${kind}: ${b.name}: a transaction on an open connection took ${fmt(b.sendMs, 2)} ms, a message cost ${fmt(b.slotMs, 2)} ms of connection time: the most shared connections can gain with transactions as fast as these is ${fmt(b.slotMs / b.sendMs, 2)}x`);
  }
  const a = results[0];
  for (const b of results.slice(1)) {
    const ratio = a.rate / b.rate;
    const ok = Number.isFinite(ratio) && ratio >= 2 && a.failed === 0 && b.failed === 0;
    allOk &&= ok;
    const perRound = a.rounds.length > 1 ? ` (rounds: ${a.rounds.map((ar, k) => fmt(ar.rate / b.rounds[k].rate, 2)).join(', ')})` : '';
    console.log(`${kind}: ${a.name} vs ${b.name}: ${fmt(ratio, 2)}x messages/s${perRound} (target >= 2x) ${verdict(ok)}`);
  }
  const perHandshake = a.transactions / Math.max(1, a.tls);
  console.log(`${kind}: ${a.name}: ${fmt(perHandshake, 1)} messages per TLS handshake to the destination (target >= 50) ${verdict(perHandshake >= 50 && a.transactions === MESSAGES)}`);
}

for (const c of controls) c.destroy();
await proxy.stop();
await pf.stop();
rmSync(tmp, { recursive: true, force: true });
