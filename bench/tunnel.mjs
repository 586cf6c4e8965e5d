// Tunnel cost: the same egress (an SMTP delivery from source 127.0.0.2 to a sink on 127.0.0.1),
// measured in one run through four paths: direct (the baseline), mtaproxy's native tunnel
// (openTunnel, over TLS with session resumption; also with a full TLS handshake per tunnel, and in
// plaintext on a second proxy with tls = false: the cost of TLS), HAProxy in KumoMTA style (PROXY v2 header in, `usesrc clientip` out, nbthread 1)
// and Dante (SOCKS5 CONNECT, `external: 127.0.0.2`).
//
//   node bench/tunnel.mjs [--seconds=5]
//
// Needs: npm run build; root (usesrc clientip needs CAP_NET_ADMIN; without it HAProxy falls back to
// `source 127.0.0.2`, and the output says so); apt-get install -y haproxy dante-server (a missing
// peer is skipped). The sink is Postfix's /usr/sbin/smtp-sink when installed, otherwise the Node
// sink below, run as a child process so that its CPU is not the load client's.
// Measures: (a) MiB/s of the DATA phase of one session carrying 10 MiB (median of 5, after
// 10 warm-up sessions through the same path: steady state, not the JIT's first minutes);
// (b) whole sessions/s (connect + proxy setup, EHLO, MAIL, RCPT, 1 KiB DATA, QUIT) from
// 16 concurrent loops, and the proxy's CPU per session (/proc/PID/stat, forked children included).
// Targets: mtaproxy MiB/s >= 0.9x HAProxy; sessions/s >= 0.9x HAProxy; CPU/session <= 1.2x HAProxy.
import { existsSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { cpuSeconds, fdLimit, fmt, freePort, machine, median, printTable, SECRET, sleep, spawnPeer, startProxy, verdict, waitForPort } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const SECONDS = Number(arg('seconds', 5));
const LOOPS = 16;
const RUNS = 5;
const WARMUP = 10; // sessions of 10 MiB through each path before its MiB/s runs
const SOURCE = '127.0.0.2';
const SINK_HOST = '127.0.0.1';
const SINK_PORT = arg('sink', null); // set only in the sink's child process

// ---- the Node SMTP sink (child process: node bench/tunnel.mjs --sink=PORT) ----------------------
function runSink(port) {
  const TERM = Buffer.from('\r\n.\r\n');
  createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => {});
    const who = s.remoteAddress.replace(/^::ffff:/, '');
    let text = '';
    let tail = null; // in DATA: the last 4 bytes read, as the terminator may straddle two reads
    s.on('data', (chunk) => {
      if (tail !== null) {
        if (Buffer.concat([tail, chunk.subarray(0, 4)]).indexOf(TERM) === -1 && chunk.indexOf(TERM) === -1) {
          tail = chunk.length >= 4 ? chunk.subarray(-4) : Buffer.concat([tail, chunk]).subarray(-4);
          return;
        }
        tail = null; // the client does not pipeline: nothing follows the terminator in this read
        return void s.write('250 2.0.0 queued\r\n');
      }
      text += chunk.toString('latin1');
      for (let nl = text.indexOf('\r\n'); nl !== -1; nl = text.indexOf('\r\n')) {
        const verb = text.slice(0, 4).toUpperCase();
        text = text.slice(nl + 2);
        if (verb === 'EHLO' || verb === 'HELO') s.write(`250 sink greets ${who}\r\n`); // shows the egress source
        else if (verb === 'QUIT') return void s.end('221 2.0.0 bye\r\n'); // the server closes first, as MXs do
        else if (verb === 'DATA') {
          tail = Buffer.from('\r\n'); // the DATA line's CRLF begins the terminator of an empty body
          text = '';
          return void s.write('354 go ahead\r\n');
        } else s.write('250 2.0.0 ok\r\n');
      }
    });
    s.write('220 sink ESMTP\r\n');
  }).listen({ host: SINK_HOST, port, backlog: 4096 });
}

// ---- the load client ----------------------------------------------------------------------------
/** The client side of one SMTP connection: send, then await the whole (maybe multi-line) reply. */
class Smtp {
  buf = '';
  waiter = null;
  error = null;
  constructor(socket) {
    this.socket = socket;
    socket.setNoDelay(true); // on every path alike (the shipped client does not set it)
    socket.setTimeout(15_000, () => socket.destroy(new Error('no reply in 15 s')));
    this.closed = new Promise((resolve) => socket.once('close', resolve));
    socket.on('data', (c) => {
      this.buf += c.toString('latin1');
      this.#settle();
    });
    socket.on('error', (e) => (this.error ??= e) && this.#settle());
    socket.on('close', () => (this.error ??= new Error(`closed after ${JSON.stringify(this.buf.slice(0, 80))}`)) && this.#settle());
    socket.resume(); // openTunnel and the SOCKS handshake hand the socket over paused
  }
  #settle() {
    const w = this.waiter;
    if (w === null) return;
    for (let start = 0, nl = this.buf.indexOf('\n'); nl !== -1; nl = this.buf.indexOf('\n', start)) {
      const last = this.buf[start + 3] !== '-'; // "250-…" continues a reply, "250 …" ends it
      start = nl + 1;
      if (!last) continue;
      const reply = this.buf.slice(0, start);
      this.buf = this.buf.slice(start);
      this.waiter = null;
      return w(null, reply);
    }
    if (this.error !== null) (this.waiter = null), w(this.error);
  }
  /** Sends `data` (unless null); resolves with the reply, which must have the code `expect`. */
  cmd(data, expect) {
    if (data !== null) this.socket.write(data);
    return new Promise((resolve, reject) => {
      this.waiter = (err, reply) => (err !== null ? reject(err) : reply.startsWith(String(expect)) ? resolve(reply) : reject(new Error(`expected ${expect}, got ${reply.trim()}`)));
      this.#settle();
    });
  }
}

/** About `bytes` in all: base64 in 76-character lines (+ CRLF), then the terminator, for one write. */
const body = (bytes) => Buffer.from(`${randomBytes(bytes).toString('base64').slice(0, Math.floor(((bytes - 5) * 76) / 78)).replace(/.{76}/g, '$&\r\n')}\r\n.\r\n`);
const BIG = SINK_PORT === null ? body(10 * 1024 * 1024) : null;
const SMALL = SINK_PORT === null ? body(1024) : null;

/** One whole session carrying `data`: resolves with the sink's EHLO reply and the DATA phase MiB/s. */
async function session(path, data = SMALL) {
  const smtp = new Smtp(await path.open());
  try {
    await smtp.cmd(null, 220);
    const ehlo = await smtp.cmd('EHLO bench.example\r\n', 250);
    await smtp.cmd('MAIL FROM:<a@bench.example>\r\n', 250);
    await smtp.cmd('RCPT TO:<b@sink.example>\r\n', 250);
    await smtp.cmd('DATA\r\n', 354);
    const t0 = performance.now();
    await smtp.cmd(data, 250);
    const mib = data.length / 1024 / 1024 / ((performance.now() - t0) / 1000);
    await smtp.cmd('QUIT\r\n', 221);
    smtp.socket.end();
    await smtp.closed;
    return { ehlo, mib };
  } finally {
    smtp.socket.destroy();
  }
}

/** One session that must succeed within 5 s (a peer that accepts but never answers is skipped). */
const probe = (path) => Promise.race([session(path), sleep(5000).then(() => Promise.reject(new Error('probe session timed out')))]);

/** LOOPS concurrent session loops for `seconds` (after a warm-up); proxy CPU over the same window. */
async function sessionRate(path, seconds) {
  let ok = 0;
  let failed = 0;
  let firstError = null;
  const loop = async (until, count) => {
    while (performance.now() < until) {
      try {
        await session(path);
        if (count) ok++;
      } catch (err) {
        if (count) failed++;
        firstError ??= err.message;
        await sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: LOOPS }, () => loop(performance.now() + 500, false)));
  const cpu = () => (path.pid === null ? NaN : cpuSeconds(path.pid));
  const cpu0 = cpu();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: LOOPS }, () => loop(t0 + seconds * 1000, true)));
  const elapsed = (performance.now() - t0) / 1000;
  return { rate: ok / elapsed, failed, firstError, cpuUs: ((cpu() - cpu0) * 1e6) / ok };
}

// ---- the paths ---------------------------------------------------------------------------------
function dial(port, host = '127.0.0.1', localAddress = undefined) {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, localAddress }).once('error', reject);
    s.once('connect', () => resolve(s.removeListener('error', reject)));
  });
}

/** Reads exactly n bytes and pauses, putting back what follows (the sink's 220 may share the read). */
function readExactly(socket, n) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = (err) => {
      socket.off('data', onData).off('close', onClose).off('error', done).pause();
      if (err) return reject(err);
      if (buf.length > n) socket.unshift(buf.subarray(n));
      resolve(buf.subarray(0, n));
    };
    const onData = (c) => (buf = Buffer.concat([buf, c])).length >= n && done(null);
    const onClose = () => done(new Error('SOCKS server closed the connection'));
    socket.on('data', onData).on('close', onClose).on('error', done);
    socket.resume(); // a paused socket stays paused when a 'data' listener is added
  });
}

const ipv4 = (ip) => Buffer.from(ip.split('.').map(Number));
const port16 = (p) => Buffer.from([p >> 8, p & 255]);

async function startHaproxy(dir, sinkPort) {
  const port = await freePort();
  // PROXY v2 header (command PROXY, TCP over IPv4): src = the egress address, dst = the destination,
  // as KumoMTA sends it; `usesrc clientip` then binds the source and `server 0.0.0.0` dials dst
  const header = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a2111000c', 'hex'), ipv4(SOURCE), ipv4(SINK_HOST), port16(0), port16(sinkPort)]);
  // two fds per proxied connection: keep maxconn well below the fd limit
  const maxconn = Math.max(256, Math.min(8000, Math.floor(((Number(fdLimit()) || 1024) - 200) / 2)));
  for (const transparent of [true, false]) {
    const cfg = join(dir, `haproxy-${transparent ? 'usesrc' : 'source'}.cfg`);
    writeFileSync(cfg, [
      'global', '  nbthread 1', `  maxconn ${maxconn}`,
      'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 30s', '  timeout server 30s',
      'frontend egress', `  bind 127.0.0.1:${port} accept-proxy`, '  default_backend out',
      'backend out', transparent ? '  server s 0.0.0.0 source 0.0.0.0 usesrc clientip' : `  server s ${SINK_HOST}:${sinkPort} source ${SOURCE}`, '',
    ].join('\n'));
    const peer = spawnPeer('haproxy', ['-db', '-f', cfg], { dir, name: 'haproxy' });
    const path = {
      name: 'HAProxy',
      pid: peer.pid,
      note: transparent ? `PROXY v2 in, \`usesrc clientip\` out (KumoMTA style), maxconn ${maxconn}` : 'usesrc clientip FAILED here: plain `source 127.0.0.2` server line instead',
      open: () => dial(port).then((s) => (s.write(header), s)), // SMTP then flows as if direct
      stop: () => peer.stop(),
    };
    try {
      await waitForPort(port, '127.0.0.1', 5000);
      path.seen = (await probe(path)).ehlo;
      return path;
    } catch (err) {
      console.log(`# HAProxy (${transparent ? 'usesrc clientip' : 'source 127.0.0.2'}) failed: ${err.message}; ${peer.log().trim().split('\n').at(-1)}`);
      await peer.stop();
    }
  }
  return null;
}

async function startDante(dir, sinkPort) {
  const port = await freePort();
  const cfg = join(dir, 'danted.conf');
  writeFileSync(cfg, [
    'logoutput: stderr', `internal: 127.0.0.1 port = ${port}`, `external: ${SOURCE}`,
    'clientmethod: none', 'socksmethod: none', 'user.privileged: root', 'user.unprivileged: nobody',
    'client pass {', '  from: 127.0.0.0/8 to: 0.0.0.0/0', '  log: error', '}',
    // one keyword per line: "command: connect log: error" would read "log" as a command
    'socks pass {', '  from: 127.0.0.0/8 to: 0.0.0.0/0', '  command: connect', '  log: error', '}', '',
  ].join('\n'));
  const peer = spawnPeer('danted', ['-f', cfg, '-p', join(dir, 'danted.pid')], { dir, name: 'danted' });
  const request = Buffer.concat([Buffer.from([5, 1, 0, 1]), ipv4(SINK_HOST), port16(sinkPort)]);
  const path = {
    name: 'Dante',
    pid: peer.pid,
    note: 'SOCKS5 no-auth: method round trip, then CONNECT (as common clients do)',
    open: async () => {
      const s = await dial(port);
      s.write(Buffer.from([5, 1, 0])); // version 5, one method: no authentication
      const m = await readExactly(s, 2);
      if (m[0] !== 5 || m[1] !== 0) throw new Error(`SOCKS5 method refused: ${m.toString('hex')}`);
      s.write(request);
      const r = await readExactly(s, 10); // VER REP RSV ATYP=1 BND.ADDR(4) BND.PORT(2)
      if (r[1] !== 0 || r[3] !== 1) throw new Error(`SOCKS5 CONNECT refused: ${r.toString('hex')}`);
      return s;
    },
    stop: () => peer.stop(),
  };
  try {
    await waitForPort(port, '127.0.0.1', 5000);
    path.seen = (await probe(path)).ehlo;
    return path;
  } catch (err) {
    console.log(`# Dante failed: ${err.message}; ${peer.log().trim().split('\n').at(-1)}`);
    await peer.stop();
    return null;
  }
}

const installed = (cmd) => [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'].some((d) => existsSync(join(d, cmd)));

// ---- main --------------------------------------------------------------------------------------
async function main() {
  console.log(`# tunnel bench: ${machine()}, ${SECONDS}s per session-rate cell, ${LOOPS} loops`);
  const sinkPort = await freePort();
  const proxy = await startProxy({ ports: [sinkPort] });
  const smtpSink = existsSync('/usr/sbin/smtp-sink');
  const sink = smtpSink
    ? spawnPeer('/usr/sbin/smtp-sink', ['-u', 'nobody', `${SINK_HOST}:${sinkPort}`, '4096'], { dir: proxy.dir, name: 'sink' })
    : spawnPeer(process.execPath, [fileURLToPath(import.meta.url), `--sink=${sinkPort}`], { dir: proxy.dir, name: 'sink' });
  await waitForPort(sinkPort);
  console.log(`# sink: ${smtpSink ? "Postfix's /usr/sbin/smtp-sink" : 'Node SMTP sink (child process: bench/tunnel.mjs --sink)'} on ${SINK_HOST}:${sinkPort}`);

  // a delivery needs the MTA's control session and a declared throttle (never the limit here)
  const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET });
  await control.declare({ key: 'bench', sourceIp: SOURCE, maxConnections: 10_000, maxMessagesPerHour: 100_000_000, mode: 'sum' });
  const tunnel = { host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET, source: SOURCE, destination: { host: SINK_HOST, port: sinkPort }, throttle: 'bench' };
  // the same proxy with plaintext native listeners: the difference is what TLS costs
  const plain = await startProxy({ ports: [sinkPort], extra: 'tls = false' });
  const plainControl = await ControlClient.connect({ host: '127.0.0.1', port: plain.port, name: 'bench', secret: SECRET, tls: false });
  await plainControl.declare({ key: 'bench', sourceIp: SOURCE, maxConnections: 10_000, maxMessagesPerHour: 100_000_000, mode: 'sum' });
  const paths = [
    { name: 'direct', pid: null, note: `the client binds ${SOURCE} itself`, open: () => dial(sinkPort, SINK_HOST, SOURCE) },
    { name: 'mtaproxy', pid: proxy.pid, note: 'native protocol over TLS, sessions resumed: TLS + HMAC handshake bound to it + CONNECT per tunnel', open: async () => (await openTunnel(tunnel)).socket },
    { name: 'mtaproxy full TLS', pid: proxy.pid, note: 'the same with a full TLS handshake per tunnel (no resumption)', open: async () => (await openTunnel({ ...tunnel, tls: { resumption: false } })).socket },
    { name: 'mtaproxy plaintext', pid: plain.pid, note: 'tls = false (a trusted network only): HMAC handshake + CONNECT per tunnel', open: async () => (await openTunnel({ ...tunnel, port: plain.port, tls: false })).socket },
  ];
  for (const p of paths) p.seen = (await probe(p)).ehlo;
  for (const [cmd, pkg, start] of [['haproxy', 'haproxy', startHaproxy], ['danted', 'dante-server', startDante]]) {
    if (!installed(cmd)) console.log(`# ${cmd} skipped: not installed (apt-get install -y ${pkg})`);
    else paths.push(...[await start(proxy.dir, sinkPort)].filter((p) => p !== null));
  }
  for (const p of paths) console.log(`# ${p.name}: ${p.note}; the sink saw the connection from ${/greets (\S+)/.exec(p.seen)?.[1] ?? '? (smtp-sink does not say)'}`);

  // a) then b), one path at a time (they share the loopback and the CPUs)
  const results = new Map();
  for (let i = 0; i < 3; i++) await session(paths[0], BIG); // warms the client and the sink up (JIT)
  for (const p of paths) {
    // and each path: ~100 MiB, so that a JIT-compiled proxy is measured warm, as it runs for days
    for (let i = 0; i < WARMUP; i++) await session(p, BIG);
    const runs = [];
    for (let i = 0; i < RUNS; i++) runs.push((await session(p, BIG)).mib);
    results.set(p.name, { mib: median(runs), mibMin: Math.min(...runs), mibMax: Math.max(...runs) });
  }
  for (const p of paths) {
    Object.assign(results.get(p.name), await sessionRate(p, SECONDS));
    await sleep(200);
  }

  const direct = results.get('direct');
  const ha = results.get('HAProxy');
  const ratio = (a, b) => (b === undefined || !Number.isFinite(a / b) ? '-' : `${fmt(a / b, 2)}x`);
  console.log(`\n## a) one session carrying ${fmt(BIG.length / 1024 / 1024, 1)} MiB of DATA: MiB/s of the DATA phase, median of ${RUNS}\n`);
  printTable(['path', 'MiB/s', 'min', 'max', 'vs HAProxy', 'vs direct'], paths.map(({ name }) => {
    const r = results.get(name);
    return [name, fmt(r.mib), fmt(r.mibMin), fmt(r.mibMax), ratio(r.mib, ha?.mib), ratio(r.mib, direct.mib)];
  }));
  console.log(`\n## b) whole sessions (connect + setup, EHLO, MAIL, RCPT, 1 KiB DATA, QUIT), ${LOOPS} loops, ${SECONDS}s\n`);
  printTable(['path', 'sessions/s', 'failed', 'proxy CPU µs/session', 'sessions/s vs HAProxy', 'vs direct', 'CPU vs HAProxy'], paths.map(({ name }) => {
    const r = results.get(name);
    return [name, fmt(r.rate), r.failed, fmt(r.cpuUs), ratio(r.rate, ha?.rate), ratio(r.rate, direct.rate), ratio(r.cpuUs, ha?.cpuUs)];
  }));
  for (const p of paths) if (results.get(p.name).firstError !== null) console.log(`# ${p.name}: first failure: ${results.get(p.name).firstError}`);

  console.log('\n## Targets (same run)\n');
  const m = results.get('mtaproxy');
  const target = (label, a, b, ok) => (ha === undefined ? [label, 'n/a (no HAProxy)', 'n/a'] : [label, ratio(a, b), verdict(ok(a / b))]);
  const rows = [
    target('mtaproxy MiB/s >= 0.9x HAProxy', m.mib, ha?.mib, (x) => x >= 0.9),
    target('mtaproxy sessions/s >= 0.9x HAProxy', m.rate, ha?.rate, (x) => x >= 0.9),
    target('mtaproxy CPU/session <= 1.2x HAProxy', m.cpuUs, ha?.cpuUs, (x) => x <= 1.2),
  ];
  printTable(['target', 'measured', 'verdict'], rows);
  console.log(`\n# overall: ${rows.every((r) => r[2] === 'PASS') ? 'all targets met' : 'TARGET MISSED (see table)'}`);

  const plaintext = results.get('mtaproxy plaintext');
  const full = results.get('mtaproxy full TLS');
  console.log(`\n# TLS cost (mtaproxy vs mtaproxy plaintext): MiB/s ${ratio(m.mib, plaintext.mib)}, sessions/s ${ratio(m.rate, plaintext.rate)} resumed and ${ratio(full.rate, plaintext.rate)} with full handshakes, proxy CPU/session ${ratio(m.cpuUs, plaintext.cpuUs)} resumed and ${ratio(full.cpuUs, plaintext.cpuUs)} full`);

  control.destroy();
  plainControl.destroy();
  for (const p of paths) await p.stop?.();
  await sink.stop();
  await proxy.stop();
  await plain.stop();
}

if (SINK_PORT !== null) runSink(Number(SINK_PORT));
else main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
