// Throttle round trips: ACQUIRE connection + RELEASE over ONE mtaproxy control session, against a
// Redis lease limiter (Lua acquire: ZREMRANGEBYSCORE expired + ZCARD < limit -> ZADD; release:
// ZREM) driven by this same Node process through ioredis, at 1, 16 and 64 operations in flight.
//
//   node bench/throttle.mjs [--seconds=2]
//
// Needs: npm run build; redis-server on PATH (apt-get install redis-server); ioredis (devDependency).
// Target (design.md §9): >= 2x the Redis limiter's ops/s at each level, p99 < 2 ms at 64.
// The queue path (a limit of 4 at 64 in flight: requests wait) is measured too: mtaproxy's
// server-side queue against a Redis limiter's retry loop.
import { loadavg } from 'node:os';
import { Redis } from 'ioredis';
import { ControlClient } from '../dist/client/index.js';
import { fmt, freePort, machine, percentile, printTable, SECRET, sleep, spawnPeer, startProxy, verdict, waitForPort } from './lib.mjs';

const SECONDS = Number(/--seconds=(\S+)/.exec(process.argv.join(' '))?.[1] ?? 2);
const LEVELS = [1, 16, 64];
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

/**
 * Runs `op` from `inFlight` concurrent loops for `seconds` (after a short warm-up), returning
 * ops/s and latency percentiles of whole operations (acquire + release), in ms.
 */
async function measure(inFlight, seconds, op) {
  const warmEnd = performance.now() + 300;
  const loop = async (until, record) => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= until) return;
      await op();
      if (record !== null) record.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, () => loop(warmEnd, null)));
  const latencies = [];
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(Array.from({ length: inFlight }, () => loop(end, latencies)));
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return { ops: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), n: latencies.length };
}

async function main() {
  console.log(`# throttle bench: ${machine()}, ${SECONDS}s per cell; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  // ---- peers: mtaproxy and redis-server, both on loopback, no persistence
  const proxy = await startProxy({ ports: [25] });
  const redisPort = await freePort();
  const redis = spawnPeer('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'no'], { dir: proxy.dir, name: 'redis' });
  await waitForPort(redisPort);

  const session = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET });
  console.log(`# ${await session.declare({ key: KEY, sourceIp: '127.0.0.2', maxConnections: LIMIT, maxMessagesPerHour: 1_000_000, mode: 'sum' })}`);
  await session.declare({ key: QUEUE_KEY, sourceIp: '127.0.0.2', maxConnections: QUEUE_LIMIT, maxMessagesPerHour: 1_000_000, mode: 'sum' });

  const makeRedis = (autoPipelining) => {
    const r = new Redis({ port: redisPort, host: '127.0.0.1', enableAutoPipelining: autoPipelining, lazyConnect: false });
    r.defineCommand('leaseAcquire', { numberOfKeys: 1, lua: ACQUIRE_LUA });
    return r;
  };
  const redisPlain = makeRedis(false);
  const redisAuto = makeRedis(true);
  await Promise.all([redisPlain.ping(), redisAuto.ping()]);
  await redisPlain.del(KEY);
  let leaseSerial = 0;
  const redisOp = (r, awaitRelease) => async () => {
    const id = `l${++leaseSerial}`;
    const granted = await r.leaseAcquire(KEY, Date.now(), 300_000, LIMIT, id);
    if (granted !== 1) throw new Error('redis limiter refused: the limit must never be reached here');
    if (awaitRelease) await r.zrem(KEY, id);
    else r.zrem(KEY, id).catch(() => {});
  };

  const variants = [
    ['mtaproxy, release() awaited', async () => session.release(await session.acquire(KEY, 'connection', 0))],
    ['mtaproxy, releaseNow()', async () => session.releaseNow(await session.acquire(KEY, 'connection', 0))],
    ['redis, ZREM awaited', redisOp(redisPlain, true)],
    ['redis autopipelining, ZREM awaited', redisOp(redisAuto, true)],
    ['redis, ZREM not awaited', redisOp(redisPlain, false)],
    ['redis autopipelining, ZREM not awaited', redisOp(redisAuto, false)],
  ];
  const redisQueued = (r) => async () => {
    const id = `q${++leaseSerial}`;
    while ((await r.leaseAcquire(QUEUE_KEY, Date.now(), 300_000, QUEUE_LIMIT, id)) !== 1) await sleep(RETRY_MS);
    await r.zrem(QUEUE_KEY, id);
  };
  const queueVariants = [
    [`mtaproxy queued (limit ${QUEUE_LIMIT}), release() awaited`, async () => session.release(await session.acquire(QUEUE_KEY, 'connection', 10_000))],
    [`mtaproxy queued (limit ${QUEUE_LIMIT}), releaseNow()`, async () => session.releaseNow(await session.acquire(QUEUE_KEY, 'connection', 10_000))],
    [`redis (limit ${QUEUE_LIMIT}), retry after ${RETRY_MS} ms, ZREM awaited`, redisQueued(redisPlain)],
    [`redis autopipelining (limit ${QUEUE_LIMIT}), retry after ${RETRY_MS} ms, ZREM awaited`, redisQueued(redisAuto)],
  ];
  const results = new Map();
  for (const [name, op] of queueVariants) {
    results.set(`${name}@${QUEUE_IN_FLIGHT}`, await measure(QUEUE_IN_FLIGHT, SECONDS, op));
    await sleep(50);
  }
  for (const level of LEVELS) {
    for (const [name, op] of variants) {
      results.set(`${name}@${level}`, await measure(level, SECONDS, op));
      await sleep(50);
    }
  }
  // the lease tables must be empty again (no lease lost)
  await sleep(100);
  const left = (await redisPlain.zcard(KEY)) + (await redisPlain.zcard(QUEUE_KEY));
  const status = proxy.status();
  const inUse = /throttles=\d+/.exec(status)?.[0] ?? '?';

  console.log('\n## Per variant (one operation = ACQUIRE connection + RELEASE)\n');
  const rows = [];
  for (const level of LEVELS) {
    for (const [name] of variants) {
      const r = results.get(`${name}@${level}`);
      rows.push([name, level, fmt(r.ops), fmt(r.p50, 3), fmt(r.p99, 3), fmt(r.n)]);
    }
  }
  printTable(['variant', 'in flight', 'ops/s', 'p50 ms', 'p99 ms', 'ops'], rows);

  console.log('\n## Ratios (same run). Baseline = the best Redis limiter with the same release semantics\n');
  const summary = [];
  let allOk = true;
  for (const level of LEVELS) {
    const g = (n) => results.get(`${n}@${level}`);
    const redisAwait = Math.max(g('redis, ZREM awaited').ops, g('redis autopipelining, ZREM awaited').ops);
    const redisNoAwait = Math.max(g('redis, ZREM not awaited').ops, g('redis autopipelining, ZREM not awaited').ops);
    const mAwait = g('mtaproxy, release() awaited');
    const mNow = g('mtaproxy, releaseNow()');
    const ratioAwait = mAwait.ops / redisAwait;
    const ratioNowVsAwait = mNow.ops / redisAwait;
    const ratioNowVsNoAwait = mNow.ops / redisNoAwait;
    const p99ok = level !== 64 || mNow.p99 < 2;
    const ok = ratioNowVsAwait >= 2 && p99ok;
    allOk &&= ok;
    summary.push([level, fmt(ratioAwait, 2), fmt(ratioNowVsAwait, 2), fmt(ratioNowVsNoAwait, 2), level === 64 ? `${fmt(mNow.p99, 3)} (<2)` : '-', verdict(ok)]);
  }
  console.log(`\n## The queue path: limit ${QUEUE_LIMIT}, ${QUEUE_IN_FLIGHT} in flight (requests wait for a release)\n`);
  printTable(['variant', 'ops/s', 'p50 ms', 'p99 ms', 'ops'], queueVariants.map(([name]) => {
    const r = results.get(`${name}@${QUEUE_IN_FLIGHT}`);
    return [name, fmt(r.ops), fmt(r.p50, 3), fmt(r.p99, 3), fmt(r.n)];
  }));
  {
    const g = (n) => results.get(`${n}@${QUEUE_IN_FLIGHT}`);
    const bestRedis = Math.max(g(queueVariants[2][0]).ops, g(queueVariants[3][0]).ops);
    console.log(`\n# queue path: mtaproxy release() awaited / best Redis ${fmt(g(queueVariants[0][0]).ops / bestRedis, 2)}x, releaseNow() / best Redis ${fmt(g(queueVariants[1][0]).ops / bestRedis, 2)}x`);
  }
  printTable(['in flight', 'mtaproxy await / redis await', 'mtaproxy releaseNow / redis await', 'mtaproxy releaseNow / redis no-await', 'mtaproxy p99 ms', 'target >= 2x (releaseNow vs the Redis limiter), p99 < 2 ms @64'], summary);
  console.log(`\n# leftover Redis leases: ${left}; proxy: ${inUse}; overall: ${allOk ? 'all targets met' : 'TARGET MISSED (see table)'}`);

  session.destroy();
  redisPlain.disconnect();
  redisAuto.disconnect();
  await proxy.stop();
  await redis.stop();
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
