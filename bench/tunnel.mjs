// Tunnel cost: the same egress (an SMTP delivery from source 127.0.0.2 to a sink on 127.0.0.1),
// measured in one run through every path: direct (the baseline), the bare Node PROXY v2 forwarder
// (bench/bare-forwarder.mjs: header in, connect from its source, pump both ways, nothing else: the
// floor no Node proxy goes below), mtaproxy's PROXY v2 and SOCKS5 front-ends, its native tunnel
// (openTunnel over TLS with session resumption; also with a full TLS handshake per tunnel, and in
// plaintext on a second proxy with tls = false), HAProxy in KumoMTA style (PROXY v2 header in,
// `usesrc clientip` out, nbthread 1) and Dante (SOCKS5 CONNECT, `external: 127.0.0.2`).
//
//   node bench/tunnel.mjs [--seconds=5] [--paths=NAME,...] [--cpu-prof=DIR] [--svg=FILE] [--smtp-sink] [--paired] [--daemon-node-args=A,B] [--bare-node-args=A,B] [--base-dist=DIR] [--base-node-args=A,B] [--keep-logs=DIR]
//
//   --rounds=N (default 3): each path's session-rate window in N parts, the paths taking turns
//   --paired: then each proxy path again, at the same time as the bare forwarder (8 loops each, the
//   same windows): the CPU per session of both under the same load, which a shared machine's
//   other work (coming and going within seconds) skews less than turns taken one after another
//
// Needs: npm run build; root (usesrc clientip needs CAP_NET_ADMIN; without it HAProxy falls back to
// `source 127.0.0.2`, and the output says so); apt-get install -y haproxy dante-server (a missing
// peer is skipped). The sink is the Node sink below, run as a child process (so that its CPU is not
// the load client's): its EHLO reply names the address each connection came from, and every
// session checks it is 127.0.0.2 ("wrong source" column). --smtp-sink: Postfix's smtp-sink
// instead (faster, but it does not say who connected: no check).
// Measures: (a) MiB/s of the DATA phase of one session carrying 10 MiB (median of 5, after
// 10 warm-up sessions through every path: steady state, not the JIT's first minutes; the 5 runs
// in rounds, one of each path per round, the order reversed every other round), and the
// proxy's CPU per MiB over those 5 (a slow sink caps MiB/s for every path alike; CPU/MiB it does not);
// (b) whole sessions/s (connect + proxy setup, EHLO, MAIL, RCPT, 1 KiB DATA, QUIT) from
// 16 concurrent loops, and the proxy's CPU per session (/proc/PID/stat utime+stime, forked children
// included: CPU time, robust when the machine is loaded, unlike sessions/s).
// Targets (issue 14), for the SOCKS5 and PROXY v2 front-ends: CPU/session <= 1.2x the bare
// forwarder's, sessions/s >= 0.95x the bare forwarder's, MiB/s >= 0.9x HAProxy's, no failed
// session, every connection from 127.0.0.2. The native front-end's cost is broken down (handshake,
// TLS, tunnel) from the differences between paths. --svg=FILE writes a chart of the ratios.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { connect, createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { writeRatioChart, cpuSeconds, fdLimit, fmt, freePort, machine, median, printTable, SECRET, sleep, spawnPeer, startProxy, timeWaitOn, verdict, waitForPort } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const SECONDS = Number(arg('seconds', 6));
const ROUNDS = Number(arg('rounds', 3)); // --rounds=N: the session-rate window of each path is cut in N, the paths interleaved
const LOOPS = 16;
const RUNS = Number(arg('bulk-runs', 5)); // --bulk-runs=0: no 10 MiB sessions (for profiling the session rate alone)
const WARMUP = RUNS === 0 ? 0 : 10; // sessions of 10 MiB through each path before its MiB/s runs
const SOURCE = '127.0.0.2';
const SINK_HOST = '127.0.0.1';
const SINK_PORT = arg('sink', null); // set only in the sink's child process
// --paths=mtaproxy,HAProxy: only these paths (exact names; direct always runs, as the baseline)
const ONLY = arg('paths', null)?.split(',') ?? null;
// --cpu-prof=DIR: both proxies run under node --cpu-prof (a .cpuprofile each in DIR, written when
// they stop; summarize with node bench/cpuprofile.mjs FILE); best with --paths= one proxy path
const CPU_PROF = arg('cpu-prof', null);
// --keep-logs=DIR: made now, so that a missing one cannot fail the run at its end with its peers still up
const KEEP_LOGS = arg('keep-logs', null);
if (KEEP_LOGS !== null) mkdirSync(KEEP_LOGS, { recursive: true });
// --daemon-node-args=--trace-gc,--max-semi-space-size=4: Node flags for the mtaproxy daemons (not the bare forwarder)
const DAEMON_NODE_ARGS = arg('daemon-node-args', '').split(',').filter((a) => a !== '');
// --bare-node-args=A,B: Node flags for the bare forwarder
const BARE_NODE_ARGS = arg('bare-node-args', '').split(',').filter((a) => a !== '');
// --base-dist=DIR: a second proxy built elsewhere (e.g. a worktree of the commit before a change;
// DIR is its dist/) with the same SOCKS5 and PROXY v2 front-ends: its paths "base PROXY v2" and
// "base SOCKS5" run in every table, and table b3 runs each front-end at the same time as its base
// (8 loops each): before/after on a shared machine, the load hitting both alike
const BASE_DIST = arg('base-dist', null);
// --base-node-args=A,B: Node flags for the --base-dist proxy instead of --daemon-node-args (the same
// build as base, different flags: what a V8 flag does, under the same load)
const BASE_NODE_ARGS = arg('base-node-args', null)?.split(',').filter((a) => a !== '') ?? null;
const SVG = arg('svg', null);
const SMTP_SINK = process.argv.includes('--smtp-sink');
// --paired: also each proxy path at the same time as the bare forwarder (table b2)
const PAIRED = process.argv.includes('--paired');
/** the sink names the connection's source in its EHLO reply (the Node sink; smtp-sink does not) */
const CHECK_SOURCE = !SMTP_SINK;

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
    // the client closes second, on the server's FIN (after QUIT the MX closes first): closing on
    // the 221 crossed the server's FIN in ~10 % of sessions, and such a simultaneous close leaves
    // a TIME_WAIT socket on the source address at both ends; their pile made every later bind(2)
    // of 127.0.0.2 scan the port range (bench/bind-scan.mjs), on every path (timeWaitLine)
    socket.on('end', () => socket.end());
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
  path.total = (path.total ?? 0) + 1; // every session through the path, warm-ups included (--cpu-prof: per session)
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
    await smtp.closed; // the server's FIN, then ours (the 'end' listener)
    return { ehlo, mib };
  } finally {
    smtp.socket.destroy();
  }
}

/** One session that must succeed within 5 s (a peer that accepts but never answers is skipped). */
const probe = (path) => Promise.race([session(path), sleep(5000).then(() => Promise.reject(new Error('probe session timed out')))]);

/** LOOPS concurrent session loops for `seconds` (after a warm-up); proxy CPU over the same window. */
async function sessionRate(path, seconds, warmupMs = 2000, loops = LOOPS) {
  let ok = 0;
  let failed = 0;
  let firstError = null;
  let wrongSource = 0;
  const loop = async (until, count) => {
    while (performance.now() < until) {
      try {
        const { ehlo } = await session(path);
        if (CHECK_SOURCE && !ehlo.includes(`greets ${SOURCE}\r\n`) && count) wrongSource++;
        if (count) ok++;
      } catch (err) {
        if (count) failed++;
        firstError ??= err.message;
        await sleep(10);
      }
    }
  };
  // warm-up: the JIT compiles the path's code before the window that counts
  await Promise.all(Array.from({ length: loops }, () => loop(performance.now() + warmupMs, false)));
  const cpu = () => (path.pid === null ? NaN : cpuSeconds(path.pid));
  const tw0 = timeWaitOn(SOURCE);
  const io0 = syscalls(path.pid);
  if (path.tunnels !== undefined) path.tunnels = path.resumed = 0; // count the measured window only
  const cpu0 = cpu();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: loops }, () => loop(t0 + seconds * 1000, true)));
  const elapsed = (performance.now() - t0) / 1000;
  const io1 = syscalls(path.pid);
  noteTimeWait(tw0);
  noteTimeWait(timeWaitOn(SOURCE));
  const resumed = path.tunnels === undefined ? null : path.resumed / path.tunnels;
  return { elapsed, sessions: ok, failed, wrongSource, firstError, cpuS: cpu() - cpu0, reads: io1.r - io0.r, writes: io1.w - io0.w, tunnels: path.tunnels ?? 0, resumedTunnels: path.resumed ?? 0, resumed };
}

/**
 * The most TIME_WAIT sockets on SOURCE seen at a window's start or end: every connect from it
 * (each proxy's, the direct path's) is a bind(2) that scans the port range past them, so a run
 * that had many paid more kernel time per session on every path (bench/bind-scan.mjs). Printed
 * with the tables, so that two runs are compared only where they had alike.
 */
const timeWait = { min: Infinity, max: -Infinity };
function noteTimeWait(n) {
  if (!Number.isFinite(n)) return;
  timeWait.min = Math.min(timeWait.min, n);
  timeWait.max = Math.max(timeWait.max, n);
}
function timeWaitLine() {
  if (timeWait.max < 0) return `# TIME_WAIT sockets on ${SOURCE}: not readable (/proc/net/tcp)`;
  const many = timeWait.max >= 15_000 ? `: MANY, each bind(2) of ${SOURCE} scanned the port range (${fmt(timeWait.max)} of the ${portRange()} ephemeral ports); CPU per session is higher on every path, ratios to the bare forwarder lower than on a quiet machine` : '';
  return `# TIME_WAIT sockets on ${SOURCE} at the windows' starts and ends: ${fmt(timeWait.min)}–${fmt(timeWait.max)}${many}`;
}
function portRange() {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'latin1').trim().split(/\s+/).map(Number);
    return fmt(hi - lo + 1);
  } catch {
    return '?';
  }
}

/** read(2)-like and write(2)-like system calls of a process and its children so far (/proc/PID/io: syscr, syscw; NaN if unreadable) */
function syscalls(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/io`, 'utf8');
    return { r: Number(/^syscr: (\d+)/m.exec(text)?.[1]), w: Number(/^syscw: (\d+)/m.exec(text)?.[1]) };
  } catch {
    return { r: NaN, w: NaN };
  }
}

/** ROUNDS rounds, each path in turn for seconds/ROUNDS: load that comes and goes hits every path alike. */
async function sessionRates(paths, seconds) {
  const sums = new Map(paths.map((p) => [p.name, { elapsed: 0, sessions: 0, failed: 0, wrongSource: 0, firstError: null, cpuS: 0, reads: 0, writes: 0, tunnels: 0, resumedTunnels: 0 }]));
  for (let round = 0; round < ROUNDS; round++) {
    // the order turns each round: the first path after another process's turn paid for the idle
    // pause (V8 shrinks an idle heap; whichever mtaproxy path came first read 1.2-1.3x its own
    // CPU/session), so no path is always first; and each turn warms up for 1 s
    for (const p of [...paths.slice(round % paths.length), ...paths.slice(0, round % paths.length)]) {
      const r = await sessionRate(p, seconds / ROUNDS, round === 0 ? 2000 : 1000);
      const t = sums.get(p.name);
      for (const k of ['elapsed', 'sessions', 'failed', 'wrongSource', 'cpuS', 'reads', 'writes', 'tunnels', 'resumedTunnels']) t[k] += r[k];
      t.firstError ??= r.firstError;
      await sleep(100);
    }
  }
  const out = new Map();
  for (const [name, t] of sums) {
    out.set(name, { rate: t.sessions / t.elapsed, sessions: t.sessions, failed: t.failed, wrongSource: t.wrongSource, firstError: t.firstError, cpuUs: (t.cpuS * 1e6) / t.sessions, reads: t.reads / t.sessions, writes: t.writes / t.sessions, resumed: t.tunnels === 0 ? null : t.resumedTunnels / t.tunnels });
  }
  return out;
}

/**
 * --paired: each proxy path runs at the same time as the bare forwarder (LOOPS/2 loops each, the
 * same windows), so that the other work on the machine, which comes and goes within seconds,
 * weighs on both alike: each path's CPU per session beside the bare forwarder's of the same
 * windows. ROUNDS rounds, the paths in turn.
 */
async function pairedRates(bare, paths, seconds) {
  const sums = new Map(paths.map((p) => [p.name, { elapsed: 0, sessions: 0, failed: 0, cpuS: 0, bareSessions: 0, bareElapsed: 0, bareCpuS: 0, rounds: [] }]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const p of [...paths.slice(round % paths.length), ...paths.slice(0, round % paths.length)]) {
      const [r, b] = await Promise.all([sessionRate(p, seconds / ROUNDS, 1000, LOOPS / 2), sessionRate(bare, seconds / ROUNDS, 1000, LOOPS / 2)]);
      const t = sums.get(p.name);
      t.elapsed += r.elapsed;
      t.sessions += r.sessions;
      t.failed += r.failed + b.failed;
      t.cpuS += r.cpuS;
      t.bareElapsed += b.elapsed;
      t.bareSessions += b.sessions;
      t.bareCpuS += b.cpuS;
      // each round's own CPU ratio: how far the windows of one run disagree
      t.rounds.push(r.cpuS / r.sessions / (b.cpuS / b.sessions));
      await sleep(100);
    }
  }
  return sums;
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

/**
 * What the proxy's TLS listener negotiates with Node's defaults (as the client library connects):
 * protocol, cipher, key exchange group, and how many session tickets a full and a resumed
 * handshake bring (TLS 1.3 sends them after the handshake, so wait a little for them).
 */
async function tlsFacts(port) {
  const handshake = (session) => new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, session });
    const tickets = [];
    s.on('session', (t) => tickets.push(t));
    s.once('error', reject);
    s.once('secureConnect', () => setTimeout(() => {
      const facts = { protocol: s.getProtocol(), cipher: s.getCipher().name, group: s.getEphemeralKeyInfo()?.name ?? '?', reused: s.isSessionReused(), tickets };
      s.destroy();
      resolve(facts);
    }, 200));
  });
  const full = await handshake(undefined);
  const resumed = await handshake(full.tickets.at(-1));
  return `${full.protocol} ${full.cipher}, key exchange ${full.group}; session tickets: ${full.tickets.length} after a full handshake, ${resumed.tickets.length} after a resumed one (${resumed.reused ? 'resumed' : 'NOT resumed'})`;
}

const installed = (cmd) => [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'].some((d) => existsSync(join(d, cmd)));

// ---- main --------------------------------------------------------------------------------------
/** The bare forwarder (bench/bare-forwarder.mjs) as a child process; resolves with its port. */
async function startBare(dir, extra = []) {
  const peer = spawnPeer(process.execPath, [...(CPU_PROF === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`]), ...BARE_NODE_ARGS, fileURLToPath(new URL('./bare-forwarder.mjs', import.meta.url)), '--listen=127.0.0.1:0', ...extra], { dir, name: extra.length === 0 ? 'bare-forwarder' : 'bare-socks5' });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = /listening [\d.]+:(\d+)/.exec(peer.log());
    if (m !== null) return { ...peer, port: Number(m[1]) };
    if (peer.proc.exitCode !== null || Date.now() > deadline) throw new Error(`bare forwarder did not start: ${peer.log()}`);
    await sleep(20);
  }
}

/** SOCKS5 no-auth, as common clients do: the method round trip, then CONNECT; resolves with the socket. */
async function socks5Open(port, sinkPort) {
  const s = await dial(port);
  s.write(Buffer.from([5, 1, 0])); // version 5, one method: no authentication
  const m = await readExactly(s, 2);
  if (m[0] !== 5 || m[1] !== 0) throw new Error(`SOCKS5 method refused: ${m.toString('hex')}`);
  s.write(Buffer.concat([Buffer.from([5, 1, 0, 1]), ipv4(SINK_HOST), port16(sinkPort)]));
  const r = await readExactly(s, 10); // VER REP RSV ATYP=1 BND.ADDR(4) BND.PORT(2)
  if (r[1] !== 0 || r[3] !== 1) throw new Error(`SOCKS5 CONNECT refused: ${r.toString('hex')}`);
  return s;
}

async function main() {
  console.log(`# tunnel bench: ${machine()}, ${SECONDS}s per session-rate cell, ${LOOPS} loops; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const sinkPort = await freePort();
  const nodeArgs = [...(CPU_PROF === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`]), ...DAEMON_NODE_ARGS];
  const socksPort = await freePort();
  const pv2Port = await freePort();
  // the SOCKS5 and PROXY v2 front-ends on the TLS proxy: their deliveries take slots of derived
  // throttles (one per source and destination), never the limit here
  const frontEnds = [
    '[socks5]', `listen = ["127.0.0.1:${socksPort}"]`, 'allow_unauthenticated = true', `source_ip = "${SOURCE}"`,
    '[proxy_v2]', `listen = ["127.0.0.1:${pv2Port}"]`,
    '[derived_throttle]', 'max_connections = 10000',
  ].join('\n');
  const proxy = await startProxy({ ports: [sinkPort], nodeArgs, extra: frontEnds });
  const sink = SMTP_SINK
    ? spawnPeer('/usr/sbin/smtp-sink', ['-u', 'nobody', `${SINK_HOST}:${sinkPort}`, '4096'], { dir: proxy.dir, name: 'sink' })
    : spawnPeer(process.execPath, [fileURLToPath(import.meta.url), `--sink=${sinkPort}`], { dir: proxy.dir, name: 'sink' });
  await waitForPort(sinkPort);
  console.log(`# sink: ${SMTP_SINK ? "Postfix's /usr/sbin/smtp-sink (no source check)" : 'Node SMTP sink (child process: bench/tunnel.mjs --sink); every session checks the source it names'} on ${SINK_HOST}:${sinkPort}`);
  const bare = await startBare(proxy.dir);
  // the same floor for SOCKS5: what the protocol's method round trip costs any SOCKS5 proxy
  const bareSocks = await startBare(proxy.dir, [`--socks5=${SOURCE}`]);

  // a native delivery needs the MTA's control session and a declared throttle (never the limit here)
  const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET });
  await control.declare({ key: 'bench', sourceIp: SOURCE, maxConnections: 10_000, maxMessagesPerHour: 100_000_000, mode: 'sum' });
  const tunnel = { host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET, source: SOURCE, destination: { host: SINK_HOST, port: sinkPort }, throttle: 'bench' };
  // the same proxy with plaintext native listeners: the difference is what TLS costs
  const plain = await startProxy({ ports: [sinkPort], extra: 'tls = false', nodeArgs });
  const plainControl = await ControlClient.connect({ host: '127.0.0.1', port: plain.port, name: 'bench', secret: SECRET, tls: false });
  await plainControl.declare({ key: 'bench', sourceIp: SOURCE, maxConnections: 10_000, maxMessagesPerHour: 100_000_000, mode: 'sum' });
  /** a TLS path counts its tunnels and how many of them resumed a TLS session (client side) */
  const tlsPath = (path, opts) => Object.assign(path, {
    tunnels: 0,
    resumed: 0,
    open: async () => {
      const { socket } = await openTunnel(opts);
      path.tunnels++;
      if (socket.isSessionReused()) path.resumed++;
      return socket;
    },
  });
  const pv2Header = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a2111000c', 'hex'), ipv4(SOURCE), ipv4(SINK_HOST), port16(0), port16(sinkPort)]);
  const paths = [
    { name: 'direct', pid: null, note: `the client binds ${SOURCE} itself`, open: () => dial(sinkPort, SINK_HOST, SOURCE) },
    { name: 'bare forwarder', pid: bare.pid, note: 'bench/bare-forwarder.mjs: PROXY v2 in, connect from its source, write/drain pump, nothing else', open: () => dial(bare.port).then((s) => (s.write(pv2Header), s)) },
    { name: 'mtaproxy PROXY v2', pid: proxy.pid, note: '[proxy_v2] front-end: the same header; policy, derived throttle, delivery record', open: () => dial(pv2Port).then((s) => (s.write(pv2Header), s)) },
    { name: 'bare SOCKS5 forwarder', pid: bareSocks.pid, note: `bench/bare-forwarder.mjs --socks5: no-auth method round trip, CONNECT from ${SOURCE}, the same pump (the SOCKS5 protocol's own floor)`, open: () => socks5Open(bareSocks.port, sinkPort) },
    { name: 'mtaproxy SOCKS5', pid: proxy.pid, note: `[socks5] front-end, no auth, source_ip = ${SOURCE}: method round trip, then CONNECT`, open: () => socks5Open(socksPort, sinkPort) },
    tlsPath({ name: 'mtaproxy', pid: proxy.pid, note: 'native protocol over TLS, sessions resumed: TLS + HMAC handshake bound to it + CONNECT per tunnel' }, tunnel),
    tlsPath({ name: 'mtaproxy full TLS', pid: proxy.pid, note: 'the same with a full TLS handshake per tunnel (no resumption)' }, { ...tunnel, tls: { resumption: false } }),
    { name: 'mtaproxy plaintext', pid: plain.pid, note: 'native, tls = false (a trusted network only): HMAC handshake + CONNECT per tunnel', open: async () => (await openTunnel({ ...tunnel, port: plain.port, tls: false })).socket },
  ].filter((p) => ONLY === null || p.name === 'direct' || ONLY.includes(p.name));
  let baseProxy = null;
  if (BASE_DIST !== null) {
    const baseSocks = await freePort();
    const basePv2 = await freePort();
    const ends = frontEnds.replace(`"127.0.0.1:${socksPort}"`, `"127.0.0.1:${baseSocks}"`).replace(`"127.0.0.1:${pv2Port}"`, `"127.0.0.1:${basePv2}"`);
    baseProxy = await startProxy({ ports: [sinkPort], nodeArgs: BASE_NODE_ARGS ?? nodeArgs, extra: ends, cli: join(BASE_DIST, 'cli/main.js') });
    paths.push(
      { name: 'base PROXY v2', pid: baseProxy.pid, note: `${BASE_DIST}'s [proxy_v2] front-end`, open: () => dial(basePv2).then((s) => (s.write(pv2Header), s)) },
      { name: 'base SOCKS5', pid: baseProxy.pid, note: `${BASE_DIST}'s [socks5] front-end`, open: () => socks5Open(baseSocks, sinkPort) },
    );
  }
  for (const p of paths) p.seen = (await probe(p)).ehlo;
  for (const [cmd, pkg, start, name] of [['haproxy', 'haproxy', startHaproxy, 'HAProxy'], ['danted', 'dante-server', startDante, 'Dante']]) {
    if (ONLY !== null && !ONLY.includes(name)) continue;
    if (!installed(cmd)) console.log(`# ${cmd} skipped: not installed (apt-get install -y ${pkg})`);
    else paths.push(...[await start(proxy.dir, sinkPort)].filter((p) => p !== null));
  }
  console.log(`# TLS link: ${await tlsFacts(proxy.port)}`);
  for (const p of paths) console.log(`# ${p.name}: ${p.note}; the sink saw the connection from ${/greets (\S+)/.exec(p.seen)?.[1] ?? '? (smtp-sink does not say)'}`);

  // a) then b), one path at a time (they share the loopback and the CPUs)
  const results = new Map();
  const wrong = (ehlo) => (CHECK_SOURCE && !ehlo.includes(`greets ${SOURCE}\r\n`) ? 1 : 0);
  for (let i = 0; i < (RUNS === 0 ? 0 : 3); i++) await session(paths[0], BIG); // warms the client and the sink up (JIT)
  // each path's warm-up (~100 MiB, so that a JIT-compiled proxy is measured warm, as it runs for
  // days), then the measured runs in rounds, one run of every path per round: the client and the
  // sink (this process and its child) keep getting faster over the first minutes, and paths measured
  // one after another read 1.5-2x apart by their place in the order alone (the first ones slowest)
  const bulk = new Map(paths.map((p) => [p.name, { wrongSource: 0, runs: [], cpuS: 0 }]));
  for (const p of paths) for (let i = 0; i < WARMUP; i++) bulk.get(p.name).wrongSource += wrong((await session(p, BIG)).ehlo);
  for (let i = 0; i < RUNS; i++) {
    for (const p of (i % 2 === 0 ? paths : [...paths].reverse())) {
      const b = bulk.get(p.name);
      const cpu0 = p.pid === null ? NaN : cpuSeconds(p.pid);
      const r = await session(p, BIG);
      b.cpuS += p.pid === null ? NaN : cpuSeconds(p.pid) - cpu0;
      b.runs.push(r.mib);
      b.wrongSource += wrong(r.ehlo);
    }
  }
  for (const p of paths) {
    const { runs, cpuS, wrongSource } = bulk.get(p.name);
    // the proxy's CPU per MiB carried (during its own runs): what the sink's own speed does not hide
    const cpuMsPerMib = (cpuS * 1000) / ((RUNS * BIG.length) / 1024 / 1024);
    results.set(p.name, { mib: median(runs), mibMin: Math.min(...runs), mibMax: Math.max(...runs), cpuMsPerMib, bulkWrongSource: wrongSource });
  }
  const loadBefore = loadavg()[0];
  for (const [name, r] of await sessionRates(paths, SECONDS)) Object.assign(results.get(name), r);
  const loadAfter = loadavg()[0];

  const direct = results.get('direct');
  const ha = results.get('HAProxy');
  const floor = results.get('bare forwarder');
  const ratio = (a, b) => (b === undefined || !Number.isFinite(a / b) ? '-' : `${fmt(a / b, 2)}x`);
  // a paired path's per-round CPU ratios, lowest to highest (the spread of the one above them)
  const spread = (rounds) => (rounds.length === 0 ? '-' : `${fmt(Math.min(...rounds), 2)}–${fmt(Math.max(...rounds), 2)}x`);
  console.log(`\n## a) one session carrying ${fmt(BIG.length / 1024 / 1024, 1)} MiB of DATA: MiB/s of the DATA phase, median of ${RUNS}\n`);
  printTable(['path', 'MiB/s', 'min', 'max', 'vs HAProxy', 'vs bare', 'vs direct', 'proxy CPU ms/MiB'], paths.map(({ name }) => {
    const r = results.get(name);
    return [name, fmt(r.mib), fmt(r.mibMin), fmt(r.mibMax), ratio(r.mib, ha?.mib), ratio(r.mib, floor?.mib), ratio(r.mib, direct.mib), fmt(r.cpuMsPerMib, 2)];
  }));
  console.log(`\n## b) whole sessions (connect + setup, EHLO, MAIL, RCPT, 1 KiB DATA, QUIT), ${LOOPS} loops, ${SECONDS}s each in ${ROUNDS} interleaved rounds; load average ${fmt(loadBefore, 2)} before, ${fmt(loadAfter, 2)} after\n`);
  printTable(['path', 'sessions/s', 'failed', 'wrong source', 'proxy CPU µs/session', 'proxy reads/writes per session', 'sessions/s vs bare', 'CPU vs bare', 'sessions/s vs HAProxy', 'CPU vs HAProxy'], paths.map(({ name }) => {
    const r = results.get(name);
    const wrongCell = CHECK_SOURCE ? `${r.wrongSource + r.bulkWrongSource} of ${r.sessions + WARMUP + RUNS}` : 'not checked';
    return [name, fmt(r.rate), r.failed, wrongCell, fmt(r.cpuUs), Number.isFinite(r.reads) ? `${fmt(r.reads, 1)} / ${fmt(r.writes, 1)}` : 'n/a', ratio(r.rate, floor?.rate), ratio(r.cpuUs, floor?.cpuUs), ratio(r.rate, ha?.rate), ratio(r.cpuUs, ha?.cpuUs)];
  }));
  for (const p of paths) if (results.get(p.name).firstError !== null) console.log(`# ${p.name}: first failure: ${results.get(p.name).firstError}`);
  console.log(timeWaitLine());

  if (PAIRED && floor !== undefined) {
    const bare = paths.find((p) => p.name === 'bare forwarder');
    const others = paths.filter((p) => p.pid !== null && p !== bare);
    const l0 = loadavg()[0];
    const paired = await pairedRates(bare, others, SECONDS);
    console.log(`\n## b2) --paired: each path at the same time as the bare forwarder (${LOOPS / 2} loops each), ${SECONDS}s each in ${ROUNDS} rounds; load average ${fmt(l0, 2)} before, ${fmt(loadavg()[0], 2)} after\n`);
    printTable(['path', 'sessions/s', 'bare sessions/s (same windows)', 'failed (both)', 'proxy CPU µs/session', 'bare CPU µs/session (same windows)', 'CPU vs bare', 'CPU vs bare, per round', 'sessions/s vs bare'], others.map(({ name }) => {
      const t = paired.get(name);
      const cpu = (t.cpuS * 1e6) / t.sessions;
      const bareCpu = (t.bareCpuS * 1e6) / t.bareSessions;
      const rate = t.sessions / t.elapsed;
      const bareRate = t.bareSessions / t.bareElapsed;
      results.get(name).paired = { cpuRatio: cpu / bareCpu, rateRatio: rate / bareRate };
      return [name, fmt(rate), fmt(bareRate), t.failed, fmt(cpu), fmt(bareCpu), ratio(cpu, bareCpu), spread(t.rounds), ratio(rate, bareRate)];
    }));
  }

  // SOCKS5 against its own protocol's floor, at the same time (information: the floor is the PROXY v2 one)
  const socksFloor = paths.find((p) => p.name === 'bare SOCKS5 forwarder');
  const socksPath = paths.find((p) => p.name === 'mtaproxy SOCKS5');
  if (PAIRED && socksFloor !== undefined && socksPath !== undefined) {
    const l0 = loadavg()[0];
    const t = (await pairedRates(socksFloor, [socksPath], SECONDS)).get(socksPath.name);
    const cpu = (t.cpuS * 1e6) / t.sessions;
    const floorCpu = (t.bareCpuS * 1e6) / t.bareSessions;
    const rate = t.sessions / t.elapsed;
    const floorRate = t.bareSessions / t.bareElapsed;
    results.get(socksPath.name).pairedSocks = { cpuRatio: cpu / floorCpu, rateRatio: rate / floorRate };
    console.log(`\n## b2s) --paired: mtaproxy SOCKS5 at the same time as the bare SOCKS5 forwarder (${LOOPS / 2} loops each), ${SECONDS}s in ${ROUNDS} rounds; load average ${fmt(l0, 2)} before, ${fmt(loadavg()[0], 2)} after\n`);
    printTable(['path', 'sessions/s', 'bare SOCKS5 sessions/s (same windows)', 'failed (both)', 'proxy CPU µs/session', 'bare SOCKS5 CPU µs/session (same windows)', 'CPU vs bare SOCKS5', 'per round', 'sessions/s vs bare SOCKS5'], [
      [socksPath.name, fmt(rate), fmt(floorRate), t.failed, fmt(cpu), fmt(floorCpu), ratio(cpu, floorCpu), spread(t.rounds), ratio(rate, floorRate)],
    ]);
  }

  if (BASE_DIST !== null) {
    const pairs = ['PROXY v2', 'SOCKS5'].map((f) => [paths.find((p) => p.name === `mtaproxy ${f}`), paths.find((p) => p.name === `base ${f}`)]).filter(([a, b]) => a !== undefined && b !== undefined);
    const l0 = loadavg()[0];
    const out = [];
    for (const [a, b] of pairs) {
      const t = (await pairedRates(b, [a], SECONDS)).get(a.name);
      const cpu = (t.cpuS * 1e6) / t.sessions;
      const baseCpu = (t.bareCpuS * 1e6) / t.bareSessions;
      out.push([a.name, fmt(cpu), fmt(baseCpu), ratio(cpu, baseCpu), spread(t.rounds), ratio(t.sessions / t.elapsed, t.bareSessions / t.bareElapsed), t.failed]);
    }
    console.log(`\n## b3) --base-dist: each front-end at the same time as the same front-end of ${BASE_DIST} (${LOOPS / 2} loops each), ${SECONDS}s in ${ROUNDS} rounds; load average ${fmt(l0, 2)} before, ${fmt(loadavg()[0], 2)} after\n`);
    printTable(['path', 'CPU µs/session', 'base CPU µs/session (same windows)', 'CPU vs base', 'CPU vs base, per round', 'sessions/s vs base', 'failed (both)'], out);
  }

  if (PAIRED || BASE_DIST !== null) console.log(`\n${timeWaitLine()} (all windows so far)`);
  console.log('\n## Targets (same run): the SOCKS5 and PROXY v2 front-ends against the bare forwarder and HAProxy\n');
  const rows = [];
  for (const name of ['mtaproxy PROXY v2', 'mtaproxy SOCKS5']) {
    const m = results.get(name);
    if (m === undefined) continue;
    const row = (label, a, b, ok) => (b === undefined ? [`${name}: ${label}`, 'n/a (reference not run)', 'n/a'] : [`${name}: ${label}`, ratio(a, b), verdict(ok(a / b))]);
    rows.push(row('CPU/session <= 1.2x bare', m.cpuUs, floor?.cpuUs, (x) => x <= 1.2));
    if (m.paired !== undefined) rows.push([`${name}: CPU/session <= 1.2x bare (--paired)`, `${fmt(m.paired.cpuRatio, 2)}x`, verdict(m.paired.cpuRatio <= 1.2)]);
    rows.push(row('sessions/s >= 0.95x bare', m.rate, floor?.rate, (x) => x >= 0.95));
    rows.push(row('MiB/s >= 0.9x HAProxy', m.mib, ha?.mib, (x) => x >= 0.9));
    if (name === 'mtaproxy SOCKS5' && socksFloor !== undefined) {
      // information, not the target: the same measures against the SOCKS5 protocol's own floor
      const f = results.get(socksFloor.name);
      rows.push([`${name}: CPU/session vs bare SOCKS5 forwarder (information)`, ratio(m.cpuUs, f.cpuUs), 'info']);
      if (m.pairedSocks !== undefined) rows.push([`${name}: CPU/session vs bare SOCKS5 forwarder, --paired (information)`, `${fmt(m.pairedSocks.cpuRatio, 2)}x`, 'info']);
      rows.push([`${name}: sessions/s vs bare SOCKS5 forwarder (information)`, ratio(m.rate, f.rate), 'info']);
    }
    rows.push([`${name}: no failed session`, String(m.failed), verdict(m.failed === 0)]);
    if (CHECK_SOURCE) rows.push([`${name}: every connection from ${SOURCE}`, `${m.wrongSource + m.bulkWrongSource} wrong`, verdict(m.wrongSource + m.bulkWrongSource === 0)]);
  }
  printTable(['target', 'measured', 'verdict'], rows);
  console.log(`\n# overall: ${rows.length > 0 && rows.every((r) => r[2] === 'PASS' || r[2] === 'info') ? 'all targets met' : 'TARGET MISSED (see table)'}`);

  // the native front-end's cost per delivery, from differences between paths of this run
  const pv2 = results.get('mtaproxy PROXY v2');
  const nativeTls = results.get('mtaproxy');
  const nativeFull = results.get('mtaproxy full TLS');
  const nativePlain = results.get('mtaproxy plaintext');
  if (pv2 !== undefined && nativePlain !== undefined) {
    console.log('\n## c) the native front-end per delivery: proxy CPU µs/session, broken down (differences between paths of this run)\n');
    const us = (x) => (Number.isFinite(x) ? fmt(x) : 'n/a');
    printTable(['part', 'proxy CPU µs/session', 'from'], [
      ['Node floor: accept, connect from the source, pump, close', us(floor?.cpuUs), 'bare forwarder'],
      ["mtaproxy's tunnel: policy, derived throttle, delivery record, metrics", us(pv2.cpuUs - (floor?.cpuUs ?? NaN)), 'PROXY v2 - bare'],
      ['native handshake: HMAC handshake, CONNECT line and its reply (a round trip more)', us(nativePlain.cpuUs - pv2.cpuUs), 'native plaintext - PROXY v2'],
      ['TLS, session resumed', us((nativeTls?.cpuUs ?? NaN) - nativePlain.cpuUs), 'native TLS resumed - native plaintext (other proxy process)'],
      ['TLS, full handshake', us((nativeFull?.cpuUs ?? NaN) - nativePlain.cpuUs), 'native full TLS - native plaintext'],
      ['native over TLS (resumed), total', us(nativeTls?.cpuUs ?? NaN), 'mtaproxy'],
    ]);
  }
  const tlsRows = ['mtaproxy', 'mtaproxy full TLS', 'mtaproxy plaintext'].filter((n) => results.has(n));
  if (tlsRows.length > 0) {
    console.log(`\n## d) the TLS link (from b): TLS sessions resumed, full TLS handshakes, plaintext (tls = false)\n`);
    printTable(['path', 'sessions/s', 'proxy CPU µs/session', 'TLS sessions resumed', 'sessions/s vs plaintext', 'CPU vs plaintext'], tlsRows.map((name) => {
      const r = results.get(name);
      return [name, fmt(r.rate), fmt(r.cpuUs), r.resumed === null ? '-' : `${fmt(100 * r.resumed, 1)} %`, ratio(r.rate, nativePlain?.rate), ratio(r.cpuUs, nativePlain?.cpuUs)];
    }));
  }
  if (SVG !== null) {
    const chartPaths = paths.filter((p) => p.name !== 'direct').map((p) => p.name);
    const series = [
      { label: 'sessions/s vs bare forwarder', values: chartPaths.map((n) => results.get(n).rate / (floor?.rate ?? NaN)) },
      { label: 'proxy CPU/session vs bare forwarder', values: chartPaths.map((n) => results.get(n).cpuUs / (floor?.cpuUs ?? NaN)) },
      { label: '10 MiB DATA MiB/s vs HAProxy', values: chartPaths.map((n) => results.get(n).mib / (ha?.mib ?? NaN)) },
    ];
    writeRatioChart(SVG, { title: `bench/tunnel.mjs, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load ${fmt(loadBefore, 1)}–${fmt(loadAfter, 1)}`, categories: chartPaths, series, marks: [0.95, 1.2] });
    console.log(`\n# chart: ${SVG}`);
  }

  control.destroy();
  plainControl.destroy();
  for (const p of paths) await p.stop?.();
  await sink.stop();
  // SIGTERM: the daemon exits by itself, so --cpu-prof writes its profile
  // --keep-logs=DIR: the daemons' and the bare forwarders' output (e.g. with --daemon-node-args=--trace-deopt or --bare-node-args=--trace-gc) kept
  const keep = KEEP_LOGS;
  const kept = (name) => (keep === null ? null : join(keep, name));
  await bare.stop();
  await bareSocks.stop();
  if (keep !== null) for (const [peer, name] of [[bare, 'bare-forwarder.log'], [bareSocks, 'bare-socks5.log']]) copyFileSync(peer.logFile, join(keep, name));
  await proxy.stop(kept('mtaproxy-tls.log'));
  await plain.stop(kept('mtaproxy-plaintext.log'));
  await baseProxy?.stop(kept('mtaproxy-base.log'));
  if (CPU_PROF !== null) for (const p of paths) console.log(`# ${p.name}: ${p.total} sessions in all (node bench/cpuprofile.mjs FILE --per=${p.total} --vs=OTHER --vs-per=N)`);
  if (CPU_PROF !== null) console.log(`# CPU profiles in ${CPU_PROF} (TLS proxy, with SOCKS5 and PROXY v2: pid ${proxy.pid}; plaintext ${plain.pid}; bare forwarder ${bare.pid}): node bench/cpuprofile.mjs FILE`);
}

if (SINK_PORT !== null) runSink(Number(SINK_PORT));
else main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
