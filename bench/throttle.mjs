// Throttle round trips: ACQUIRE connection + RELEASE over ONE mtaproxy control session, against a
// Redis lease limiter (Lua acquire: ZREMRANGEBYSCORE expired + ZCARD < limit -> ZADD; release:
// ZREM) driven by this same Node process through ioredis, at 1, 16 and 64 operations in flight.
//
//   node bench/throttle.mjs [--seconds=2] [--only=REGEX] [--levels=1,16,64] [--cpu-prof=DIR] [--no-queue]
//        [--daemon-node-args=--trace-gc,--max-semi-space-size=4] [--keep-logs=DIR]  (the daemons' Node flags; their logs kept)
//        [--base-dist=DIR] [--base-node-args=A,B]  (a third, plaintext daemon from another build, measured beside main's)
//
// With --trace-gc among a daemon's Node flags, each of its cells also reports the daemon's
// scavenges per 10 000 operations, their median and largest pause, and its mark-compacts (read
// from the part of its log written during the cell). Every cell reports this process's own
// scavenges (the client side's, from a PerformanceObserver) the same way.
//
// Needs: npm run build; redis-server on PATH (apt-get install redis-server, built with TLS);
// ioredis (devDependency); openssl (a throwaway certificate for Redis's TLS port).
// Target (design.md §9): >= 2x the best Redis limiter variant's ops/s at each level, p99 < 2 ms at 64.
// The queue path (a limit of 4 at 64 in flight: requests wait) is measured too: mtaproxy's
// server-side queue against a Redis limiter's retry loop.
//
// Both sides are measured over TLS and in plaintext: mtaproxy's control session is TLS by default
// (a listener with tls = false is plaintext), Redis is plaintext by default (--tls-port: TLS).
// Every cell also reports CPU per operation: this process (the client side of either), and the
// server's (the daemon's or redis-server's, from /proc/PID/stat): steadier than ops/s on a shared
// machine. "redis bare RESP client" drives Redis without ioredis (batched like ControlClient): the
// strongest Redis side. "node floor" is a bare Node line server (bench/line-echo.mjs) and a bare client: one
// request line, one reply line, nothing else: what one round trip between two Node processes costs.
// --cpu-prof=DIR: the daemons run under node --cpu-prof (run this script itself under
// `node --cpu-prof --cpu-prof-dir=DIR` for the client side); --only: just the variants whose name matches.
import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { ControlClient } from '../dist/client/index.js';
// the bare clients' counters in decimal as mtaproxy's client makes them: String(n) of a counter keeps
// each new text alive in V8's number-string cache until the next scavenge (src/protocol/decimal.ts)
import { decimalString } from '../dist/protocol/decimal.js';
import { cpuSeconds, fmt, freePort, machine, percentile, printTable, SECRET, sleep, spawnPeer, startProxy, verdict, waitForPort } from './lib.mjs';

const argv = process.argv.join(' ');
const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const SECONDS = Number(arg('seconds', 2));
const LEVELS = arg('levels', '1,16,64').split(',').map(Number);
const ONLY = arg('only', null) === null ? null : new RegExp(arg('only', ''));
const CPU_PROF = arg('cpu-prof', null);
// --keep-logs=DIR: made now, so that a missing one cannot fail the run at its end with its peers still up
const KEEP_LOGS = arg('keep-logs', null);
if (KEEP_LOGS !== null) mkdirSync(KEEP_LOGS, { recursive: true });
const QUEUE = !argv.includes('--no-queue');
const KEY = 'bench';
const LIMIT = 1_000_000; // never the bottleneck: every acquire is granted at once
// the queue path: a limit small enough that requests wait (mtaproxy queues them and grants on a
// release; the Redis limiter has no queue: a refused acquire retries after RETRY_MS)
const QUEUE_KEY = 'bench-queue';
const QUEUE_LIMIT = 4;
const QUEUE_IN_FLIGHT = 64;
const RETRY_MS = 1;

const ACQUIRE_LUA = `
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
  return 1
end
return 0`;

const load1 = () => loadavg()[0];

// this process's own scavenges (the client side's), durations in ms, while a cell is measured
const clientScavenges = [];
let countClientGc = false;
new PerformanceObserver((list) => {
  if (countClientGc) for (const e of list.getEntries()) if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) clientScavenges.push(e.duration);
}).observe({ entryTypes: ['gc'] });

/** the bytes of `file` from `from` on (a daemon's log, for the --trace-gc lines written during a cell) */
function logFrom(file, from) {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(Math.max(0, size - from));
    readSync(fd, buf, 0, buf.length, from);
    return { text: buf.toString('latin1'), size };
  } finally { closeSync(fd); }
}
const logSize = (file) => statSync(file).size;

/** --trace-gc lines: scavenges (count, pauses in ms) and mark-compacts */
function gcStats(text) {
  const pauses = [];
  let marks = 0;
  for (const m of text.matchAll(/: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact)[^\n]*? MB, ([\d.]+) \/ [\d.]+ ms/g)) {
    if (m[1] === 'Scavenge') pauses.push(Number(m[2]));
    else marks++;
  }
  pauses.sort((a, b) => a - b);
  return { scavenges: pauses.length, median: pauses.length === 0 ? NaN : pauses[pauses.length >> 1], max: pauses.length === 0 ? NaN : pauses[pauses.length - 1], marks };
}

/** read and write system calls of a process so far (/proc/PID/io: syscr, syscw) */
function syscalls(pid) {
  const text = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { r: Number(/^syscr: (\d+)/m.exec(text)?.[1]), w: Number(/^syscw: (\d+)/m.exec(text)?.[1]) };
}

/**
 * Runs `op` from `inFlight` concurrent loops for `seconds` (after a short warm-up), returning
 * ops/s, latency percentiles of whole operations (acquire + release) in ms, and CPU µs per
 * operation of this process and of the server process `serverPid`.
 */
// latencies go to a preallocated typed array: a growing JS array of numbers made this process's
// own scavenges (4-7 ms each) part of every variant's p99
let LATENCIES = new Float64Array(1 << 21);
async function measure(inFlight, seconds, op, serverPid, serverLog) {
  const warmEnd = performance.now() + 300;
  let count = 0;
  const loop = async (until, record) => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= until) return;
      await op();
      if (record) {
        if (count === LATENCIES.length) {
          const bigger = new Float64Array(LATENCIES.length * 2);
          bigger.set(LATENCIES);
          LATENCIES = bigger;
        }
        LATENCIES[count++] = performance.now() - t0;
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, () => loop(warmEnd, false)));
  const server0 = cpuSeconds(serverPid);
  const client0 = process.cpuUsage();
  const sys0 = syscalls(serverPid);
  const csys0 = syscalls(process.pid);
  const log0 = serverLog === undefined ? 0 : logSize(serverLog);
  clientScavenges.length = 0;
  countClientGc = true;
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(Array.from({ length: inFlight }, () => loop(end, true)));
  const elapsed = (performance.now() - start) / 1000;
  countClientGc = false;
  await sleep(0); // the observer's last entries
  const cgc = clientScavenges.slice().sort((a, b) => a - b);
  const client = process.cpuUsage(client0);
  const server = cpuSeconds(serverPid) - server0;
  const sys1 = syscalls(serverPid);
  const csys1 = syscalls(process.pid);
  const gc = serverLog === undefined ? null : gcStats(logFrom(serverLog, log0).text);
  const latencies = LATENCIES.subarray(0, count).sort();
  const n = latencies.length;
  return {
    ops: n / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), n,
    clientUs: (client.user + client.system) / n, serverUs: (server * 1e6) / n, load: load1(),
    serverReads: (sys1.r - sys0.r) / n, serverWrites: (sys1.w - sys0.w) / n, clientReads: (csys1.r - csys0.r) / n, clientWrites: (csys1.w - csys0.w) / n,
    gc, clientGc: { scavenges: cgc.length, median: cgc.length === 0 ? NaN : cgc[cgc.length >> 1], max: cgc.length === 0 ? NaN : cgc[cgc.length - 1] },
  };
}

/** A bare client of bench/line-echo.mjs: one "<tag> ACQUIRE" line, one reply; release sent untagged. */
async function floorClient(port) {
  const socket = connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.setEncoding('latin1');
  const pending = new Map();
  let nextTag = 1;
  let buffered = '';
  socket.on('data', (chunk) => {
    const data = buffered + chunk;
    let start = 0;
    for (let nl = data.indexOf('\n'); nl !== -1; nl = data.indexOf('\n', start)) {
      const tag = Number(data.slice(start, data.indexOf(' ', start)));
      const resolve = pending.get(tag);
      pending.delete(tag);
      resolve?.();
      start = nl + 1;
    }
    buffered = data.slice(start);
  });
  // batched as ControlClient does (and ioredis's autopipelining): one write per burst of calls
  let outbox = '';
  const send = (line) => {
    if (outbox === '') process.nextTick(() => { socket.write(outbox); outbox = ''; });
    outbox += line;
  };
  return {
    op: async () => {
      const tag = nextTag++;
      await new Promise((resolve) => { pending.set(tag, resolve); send(`${decimalString(tag)} ACQUIRE ${KEY} connection wait=0\n`); });
      send('- RELEASE 1\n');
    },
    close: () => socket.destroy(),
  };
}

/**
 * A bare RESP client of redis-server: the strongest Redis side this bench knows. Commands go out
 * batched as ControlClient's (one write per burst, process.nextTick), replies are matched in
 * order; an acquire is EVALSHA of the same script, a release ZREM (its reply read and dropped
 * when not awaited). No ioredis in between: what Redis costs without a client library's own.
 */
async function respClient(port, sha) {
  const socket = connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.setEncoding('latin1');
  const waiting = []; // resolvers in order (null: a reply nobody awaits)
  let head = 0;
  let buffered = '';
  socket.on('data', (chunk) => {
    const data = buffered + chunk;
    let start = 0;
    for (let nl = data.indexOf('\r\n'); nl !== -1; nl = data.indexOf('\r\n', start)) {
      const line = data.slice(start, nl);
      start = nl + 2;
      if (line[0] !== ':') throw new Error(`redis: unexpected reply ${line}`);
      const resolve = waiting[head];
      waiting[head++] = undefined;
      if (head > 4096 && head * 2 > waiting.length) { waiting.splice(0, head); head = 0; }
      resolve?.(Number(line.slice(1)));
    }
    buffered = data.slice(start);
  });
  let outbox = '';
  const bulk = (s) => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  const command = (words, resolve) => {
    if (outbox === '') process.nextTick(() => { socket.write(outbox); outbox = ''; });
    outbox += `*${words.length}\r\n${words.map((w) => bulk(String(w))).join('')}`;
    waiting.push(resolve);
  };
  return {
    acquire: (key, now, ttl, limit, id) => new Promise((resolve) => command(['EVALSHA', sha, 1, key, now, ttl, limit, id], resolve)),
    zrem: (key, id, awaited) => (awaited ? new Promise((resolve) => command(['ZREM', key, id], resolve)) : command(['ZREM', key, id], null)),
    close: () => socket.destroy(),
  };
}

async function main() {
  console.log(`# throttle bench: ${machine()}, ${SECONDS}s per cell; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  // ---- peers: mtaproxy (TLS and plaintext listeners), redis-server (plaintext and TLS ports), the Node floor; all on loopback
  const metricsPorts = [await freePort(), await freePort()];
  const nodeArgs = [...(CPU_PROF === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`]), ...(arg('daemon-node-args', '') || '').split(',').filter(Boolean)];
  const proxyTls = await startProxy({ ports: [25], nodeArgs, extra: `metrics_listen = "127.0.0.1:${metricsPorts[0]}"` });
  const proxyPlain = await startProxy({ ports: [25], nodeArgs, extra: `tls = false\nmetrics_listen = "127.0.0.1:${metricsPorts[1]}"` });
  const BASE_DIST = arg('base-dist', null);
  const baseNodeArgs = arg('base-node-args', null) === null ? nodeArgs : arg('base-node-args', '').split(',').filter(Boolean);
  if (BASE_DIST !== null) metricsPorts.push(await freePort());
  const proxyBase = BASE_DIST === null ? null : await startProxy({
    ports: [25], nodeArgs: baseNodeArgs, cli: join(BASE_DIST, 'cli/main.js'), extra: `tls = false\nmetrics_listen = "127.0.0.1:${metricsPorts[2]}"`,
  });
  const traceGc = [...nodeArgs, ...baseNodeArgs].some((a) => /^--trace[-_]gc$/.test(a));
  const logOf = new Map([[proxyTls.pid, proxyTls.logFile], [proxyPlain.pid, proxyPlain.logFile], ...(proxyBase === null ? [] : [[proxyBase.pid, proxyBase.logFile]])]);
  const dir = proxyTls.dir;
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'redis.key'), '-out', join(dir, 'redis.crt'), '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });
  const redisPort = await freePort();
  const redisTlsPort = await freePort();
  const redis = spawnPeer('redis-server', [
    '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'no',
    '--tls-port', String(redisTlsPort), '--tls-cert-file', join(dir, 'redis.crt'), '--tls-key-file', join(dir, 'redis.key'), '--tls-auth-clients', 'no',
  ], { dir, name: 'redis' });
  await waitForPort(redisPort);
  await waitForPort(redisTlsPort);
  const echo = spawnPeer(process.execPath, [fileURLToPath(new URL('./line-echo.mjs', import.meta.url)), '--listen=127.0.0.1:0'], { dir: proxyPlain.dir, name: 'line-echo' });
  let echoPort = null;
  for (let i = 0; i < 200 && echoPort === null; i++) {
    echoPort = Number(/listening (\d+)/.exec(echo.log())?.[1] ?? NaN) || null;
    if (echoPort === null) await sleep(20);
  }
  const floor = await floorClient(echoPort);

  const openSession = async (proxy, tls) => {
    const session = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET, ...(tls ? {} : { tls: false }) });
    await session.declare({ key: KEY, sourceIp: '127.0.0.2', maxConnections: LIMIT, maxMessagesPerHour: 1_000_000, mode: 'sum' });
    await session.declare({ key: QUEUE_KEY, sourceIp: '127.0.0.2', maxConnections: QUEUE_LIMIT, maxMessagesPerHour: 1_000_000, mode: 'sum' });
    return session;
  };
  const sTls = await openSession(proxyTls, true);
  const sPlain = await openSession(proxyPlain, false);
  const sBase = proxyBase === null ? null : await openSession(proxyBase, false);

  const makeRedis = (autoPipelining, tls) => {
    const r = new Redis({
      port: tls ? redisTlsPort : redisPort, host: '127.0.0.1', enableAutoPipelining: autoPipelining, lazyConnect: false,
      ...(tls ? { tls: { rejectUnauthorized: false } } : {}),
    });
    r.defineCommand('leaseAcquire', { numberOfKeys: 1, lua: ACQUIRE_LUA });
    return r;
  };
  const redisClients = { plain: makeRedis(false, false), auto: makeRedis(true, false), tlsPlain: makeRedis(false, true), tlsAuto: makeRedis(true, true) };
  await Promise.all(Object.values(redisClients).map((r) => r.ping()));
  await redisClients.plain.del(KEY, QUEUE_KEY);
  const sha = await redisClients.plain.script('LOAD', ACQUIRE_LUA);
  const resp = await respClient(redisPort, sha);
  let leaseSerial = 0;
  const respOp = (awaitRelease) => async () => {
    const id = `r${decimalString(++leaseSerial)}`;
    const granted = await resp.acquire(KEY, Date.now(), 300_000, LIMIT, id);
    if (granted !== 1) throw new Error('redis limiter refused: the limit must never be reached here');
    if (awaitRelease) await resp.zrem(KEY, id, true);
    else resp.zrem(KEY, id, false);
  };
  const redisOp = (r, awaitRelease) => async () => {
    const id = `l${++leaseSerial}`;
    const granted = await r.leaseAcquire(KEY, Date.now(), 300_000, LIMIT, id);
    if (granted !== 1) throw new Error('redis limiter refused: the limit must never be reached here');
    if (awaitRelease) await r.zrem(KEY, id);
    else r.zrem(KEY, id).catch(() => {});
  };

  const M = proxyTls.pid;
  const P = proxyPlain.pid;
  const R = redis.pid;
  // [name, side, transport, op, server pid]
  const variants = [
    ['mtaproxy TLS, release() awaited', 'mtaproxy', 'tls', async () => sTls.release(await sTls.acquire(KEY, 'connection', 0)), M],
    ['mtaproxy TLS, releaseNow()', 'mtaproxy', 'tls', async () => sTls.releaseNow(await sTls.acquire(KEY, 'connection', 0)), M],
    ['mtaproxy plaintext, release() awaited', 'mtaproxy', 'plain', async () => sPlain.release(await sPlain.acquire(KEY, 'connection', 0)), P],
    ['mtaproxy plaintext, releaseNow()', 'mtaproxy', 'plain', async () => sPlain.releaseNow(await sPlain.acquire(KEY, 'connection', 0)), P],
    ...(sBase === null ? [] : [[`base (${BASE_DIST}) plaintext, releaseNow()`, 'base', 'plain', async () => sBase.releaseNow(await sBase.acquire(KEY, 'connection', 0)), proxyBase.pid]]),
    ['redis, ZREM awaited', 'redis', 'plain', redisOp(redisClients.plain, true), R],
    ['redis autopipelining, ZREM awaited', 'redis', 'plain', redisOp(redisClients.auto, true), R],
    ['redis, ZREM not awaited', 'redis', 'plain', redisOp(redisClients.plain, false), R],
    ['redis autopipelining, ZREM not awaited', 'redis', 'plain', redisOp(redisClients.auto, false), R],
    ['redis bare RESP client, ZREM awaited', 'redis', 'plain', respOp(true), R],
    ['redis bare RESP client, ZREM not awaited', 'redis', 'plain', respOp(false), R],
    ['redis TLS, ZREM awaited', 'redis', 'tls', redisOp(redisClients.tlsPlain, true), R],
    ['redis TLS autopipelining, ZREM awaited', 'redis', 'tls', redisOp(redisClients.tlsAuto, true), R],
    ['redis TLS, ZREM not awaited', 'redis', 'tls', redisOp(redisClients.tlsPlain, false), R],
    ['redis TLS autopipelining, ZREM not awaited', 'redis', 'tls', redisOp(redisClients.tlsAuto, false), R],
    ['node floor (bare line server, 1 round trip)', 'floor', 'plain', floor.op, echo.pid],
  ].filter(([name]) => ONLY === null || ONLY.test(name));
  const redisQueued = (r) => async () => {
    const id = `q${++leaseSerial}`;
    while ((await r.leaseAcquire(QUEUE_KEY, Date.now(), 300_000, QUEUE_LIMIT, id)) !== 1) await sleep(RETRY_MS);
    await r.zrem(QUEUE_KEY, id);
  };
  const queueVariants = (QUEUE ? [
    [`mtaproxy TLS queued (limit ${QUEUE_LIMIT}), release() awaited`, 'mtaproxy', 'tls', async () => sTls.release(await sTls.acquire(QUEUE_KEY, 'connection', 10_000)), M],
    [`mtaproxy TLS queued (limit ${QUEUE_LIMIT}), releaseNow()`, 'mtaproxy', 'tls', async () => sTls.releaseNow(await sTls.acquire(QUEUE_KEY, 'connection', 10_000)), M],
    [`mtaproxy plaintext queued (limit ${QUEUE_LIMIT}), releaseNow()`, 'mtaproxy', 'plain', async () => sPlain.releaseNow(await sPlain.acquire(QUEUE_KEY, 'connection', 10_000)), P],
    ...(sBase === null ? [] : [[`base plaintext queued (limit ${QUEUE_LIMIT}), releaseNow()`, 'base', 'plain', async () => sBase.releaseNow(await sBase.acquire(QUEUE_KEY, 'connection', 10_000)), proxyBase.pid]]),
    [`redis (limit ${QUEUE_LIMIT}), retry after ${RETRY_MS} ms, ZREM awaited`, 'redis', 'plain', redisQueued(redisClients.plain), R],
    [`redis autopipelining (limit ${QUEUE_LIMIT}), retry after ${RETRY_MS} ms, ZREM awaited`, 'redis', 'plain', redisQueued(redisClients.auto), R],
  ] : []).filter(([name]) => ONLY === null || ONLY.test(name));
  const results = new Map();
  for (const [name, , , op, pid] of queueVariants) {
    results.set(`${name}@${QUEUE_IN_FLIGHT}`, await measure(QUEUE_IN_FLIGHT, SECONDS, op, pid, logOf.get(pid)));
    await sleep(50);
  }
  for (const level of LEVELS) {
    for (const [name, , , op, pid] of variants) {
      results.set(`${name}@${level}`, await measure(level, SECONDS, op, pid, logOf.get(pid)));
      await sleep(50);
    }
  }
  // the lease tables must be empty again (no lease lost): Redis's sorted sets, and each daemon's
  // connections in use per throttle (its metrics)
  await sleep(100);
  const left = (await redisClients.plain.zcard(KEY)) + (await redisClients.plain.zcard(QUEUE_KEY));
  const inUse = async (port) => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return [...text.matchAll(/^mtaproxy_throttle_connections_in_use\{throttle="([^"]+)"\} (\d+)/gm)].map((m) => `${m[1]}=${m[2]}`).join(' ') || 'none';
  };
  const heldTls = await inUse(metricsPorts[0]);
  const heldPlain = await inUse(metricsPorts[1]);
  const heldBase = proxyBase === null ? null : await inUse(metricsPorts[2]);

  const gcCells = (r) => (!traceGc ? [] : r.gc === null ? ['-', '-', '-'] : [fmt((r.gc.scavenges * 10_000) / r.n, 2), `${fmt(r.gc.median, 2)} / ${fmt(r.gc.max, 2)}`, fmt(r.gc.marks)]).concat([fmt((r.clientGc.scavenges * 10_000) / r.n, 2), `${fmt(r.clientGc.median, 2)} / ${fmt(r.clientGc.max, 2)}`]);
  const row = (name, level, r) => [name, level, fmt(r.ops), fmt(r.p50, 3), fmt(r.p99, 3), fmt(r.clientUs, 1), fmt(r.serverUs, 1), `${fmt(r.serverReads, 2)} / ${fmt(r.serverWrites, 2)}`, `${fmt(r.clientReads, 2)} / ${fmt(r.clientWrites, 2)}`, ...gcCells(r), fmt(r.load, 2), fmt(r.n)];
  const header = ['variant', 'in flight', 'ops/s', 'p50 ms', 'p99 ms', 'client CPU µs/op', 'server CPU µs/op', 'server reads / writes per op', 'client reads / writes per op',
    ...(traceGc ? ['daemon scavenges / 10k ops', 'scavenge median / max ms', 'daemon marks'] : []), 'client scavenges / 10k ops', 'client scavenge median / max ms', 'load', 'ops'];
  console.log('\n## Per variant (one operation = ACQUIRE connection + RELEASE)\n');
  const rows = [];
  for (const level of LEVELS) for (const [name] of variants) rows.push(row(name, level, results.get(`${name}@${level}`)));
  printTable(header, rows);

  let allOk = true;
  const best = (level, pred) => {
    let b = null;
    for (const [name, side, transport] of variants) {
      if (!pred(side, transport, name)) continue;
      const r = results.get(`${name}@${level}`);
      if (b === null || r.ops > b.r.ops) b = { name, r };
    }
    return b;
  };
  if (variants.some(([, side]) => side === 'redis') && variants.some(([, side]) => side === 'mtaproxy')) {
    console.log('\n## Ratios (same run): mtaproxy releaseNow() ops/s against the best Redis variant of any kind (the verdict), and against the best ioredis one\n');
    const summary = [];
    const ioredis = (side, t, name) => side === 'redis' && !name.includes('bare RESP');
    for (const level of LEVELS) {
      const redisBest = best(level, (side) => side === 'redis');
      const ioBest = best(level, ioredis);
      const redisTlsBest = best(level, (side, t) => side === 'redis' && t === 'tls');
      for (const transport of ['tls', 'plain']) {
        const m = best(level, (side, t, name) => side === 'mtaproxy' && t === transport && name.includes('releaseNow'));
        if (m === null) continue;
        const ratio = m.r.ops / redisBest.r.ops;
        const ok = ratio >= 2 && (level !== 64 || m.r.p99 < 2);
        allOk &&= ok;
        summary.push([
          level, m.name, redisBest.name, fmt(ratio, 2),
          ioBest === null ? '-' : `${fmt(m.r.ops / ioBest.r.ops, 2)} (${ioBest.name})`,
          redisTlsBest === null || transport !== 'tls' ? '-' : fmt(m.r.ops / redisTlsBest.r.ops, 2),
          fmt(m.r.serverUs / redisBest.r.serverUs, 2), fmt((m.r.serverUs + m.r.clientUs) / (redisBest.r.serverUs + redisBest.r.clientUs), 2), fmt(m.r.p99, 3), verdict(ok),
        ]);
      }
    }
    printTable(['in flight', 'mtaproxy', 'best Redis', 'ratio (target >= 2)', 'vs best ioredis variant', 'vs best Redis TLS', 'server CPU/op vs best Redis', 'client+server CPU/op vs best Redis', 'mtaproxy p99 ms (< 2 @64)', 'verdict'], summary);
  }
  if (queueVariants.length > 0) {
    console.log(`\n## The queue path: limit ${QUEUE_LIMIT}, ${QUEUE_IN_FLIGHT} in flight (requests wait for a release)\n`);
    printTable(header, queueVariants.map(([name]) => row(name, QUEUE_IN_FLIGHT, results.get(`${name}@${QUEUE_IN_FLIGHT}`))));
    const g = (pred) => Math.max(0, ...queueVariants.filter((v) => pred(v)).map(([name]) => results.get(`${name}@${QUEUE_IN_FLIGHT}`).ops));
    const bestRedis = g(([, side]) => side === 'redis');
    if (bestRedis > 0) {
      for (const [name, side] of queueVariants) {
        if (side === 'mtaproxy') console.log(`# queue path: ${name} / best Redis ${fmt(results.get(`${name}@${QUEUE_IN_FLIGHT}`).ops / bestRedis, 2)}x`);
      }
    }
  }
  console.log(`\n# leftover Redis leases: ${left}; daemon connections in use: TLS ${heldTls}, plaintext ${heldPlain}${heldBase === null ? '' : `, base ${heldBase}`}; overall: ${allOk ? 'all targets met' : 'TARGET MISSED (see table)'}; load average now ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  sTls.destroy();
  sPlain.destroy();
  sBase?.destroy();
  floor.close();
  resp.close();
  for (const r of Object.values(redisClients)) r.disconnect();
  await echo.stop();
  await redis.stop();
  const keep = KEEP_LOGS;
  if (keep !== null) {
    await Promise.all([proxyTls.proc, proxyPlain.proc].map((p) => p.exitCode === null && p.signalCode === null ? new Promise((r) => { p.once('exit', r); p.kill('SIGTERM'); }) : null));
    copyFileSync(proxyTls.logFile, join(keep, 'mtaproxy-tls.log'));
    copyFileSync(proxyPlain.logFile, join(keep, 'mtaproxy-plaintext.log'));
    if (proxyBase !== null) await proxyBase.stop(join(keep, 'mtaproxy-base.log'));
  }
  await proxyTls.stop();
  await proxyPlain.stop();
  await proxyBase?.stop();
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
