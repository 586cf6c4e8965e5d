// Event-loop stalls of the whole daemon under many waiting ACQUIREs: a probe control session PINGs
// every 10 ms and records its longest round trip per phase, while N other sessions (40, then 80)
// each queue 1024 waiting ACQUIREs (the per-session maximum) on one key with max_connections = 1,
// the held slot is released and every grant released at once so grants flow, and then all N
// sessions disconnect at once. Target: no round trip over 50 ms. (The finding this checks: 40 x
// 1024 waiting ACQUIREs once blocked the loop for 12.3 s, 80 x 1024 for 36.3 s.)
//
//   npm run build && node bench/stalls-daemon.mjs
//
// Loopback only, bounded: each phase has a time limit, a watchdog ends the run after 150 s, and
// the daemon is killed on exit. The probe runs in a worker thread so that the load generator's own
// work (parsing tens of thousands of replies) does not count as the daemon's delay; on a machine
// with few CPUs the two still compete, so the RTT is an upper bound on the daemon's stall.
import { Worker } from 'node:worker_threads';
import { loadavg } from 'node:os';
import { ROOT, SECRET, fmt, machine, printTable, sleep, startProxy } from './lib.mjs';

const { ControlClient } = await import(new URL('dist/client/index.js', `file://${ROOT}`).href);

const TARGET_MS = 50;
const PER_SESSION = 1024;
const SESSION_COUNTS = [40, 80];
const KEY = 'bench.example';
const PHASE_LIMIT_MS = 30_000;
const GRANT_PHASE_MS = 3000;

const watchdog = setTimeout(() => {
  console.error('stalls-daemon: watchdog: the run took more than 150 s, giving up');
  process.exit(2);
}, 150_000);

const daemon = await startProxy({ sourceIps: ['127.0.0.1'], throttleWaitTimeout: '120s' });
const { port } = daemon;

// the probe: its own thread and event loop; asked for the longest RTT since the last mark
const probeCode = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { ControlClient } = await import(workerData.client);
  const c = await ControlClient.connect({ host: '127.0.0.1', port: workerData.port, name: 'probe', secret: workerData.secret });
  let max = 0, count = 0, stop = false;
  parentPort.on('message', (m) => {
    if (m === 'stop') { stop = true; c.destroy(); return; }
    parentPort.postMessage({ max, count }); max = 0; count = 0;
  });
  parentPort.postMessage('ready');
  while (!stop) {
    const t0 = performance.now();
    try { await c.request('PING'); } catch { break; }
    const rtt = performance.now() - t0;
    count++;
    if (rtt > max) max = rtt;
    await new Promise((r) => setTimeout(r, 10));
  }
})().catch((err) => parentPort.postMessage({ error: String(err) }));
`;
const probe = new Worker(probeCode, { eval: true, workerData: { client: new URL('dist/client/index.js', `file://${ROOT}`).href, port, secret: SECRET } });
await new Promise((resolve, reject) => {
  probe.once('message', (m) => (m === 'ready' ? resolve() : reject(new Error(JSON.stringify(m)))));
  probe.once('error', reject);
});
/** The probe's longest round trip since the previous mark(). */
function mark() {
  return new Promise((resolve) => {
    probe.once('message', resolve);
    probe.postMessage('mark');
  });
}

const connect = (name) => ControlClient.connect({ host: '127.0.0.1', port, name, secret: SECRET });
const declaration = { key: KEY, sourceIp: '127.0.0.1', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'average' };

const rows = [];
let failures = 0;
function row(phase, rtt, elapsedMs, note) {
  const pass = rtt.max <= TARGET_MS && !note.includes('cut');
  if (!pass) failures++;
  rows.push([phase, fmt(rtt.count), fmt(rtt.max, 1), fmt(elapsedMs), `${TARGET_MS}`, pass ? 'PASS' : 'FAIL', note]);
}

/** Resolves true when cond() holds, false after ms. */
async function until(cond, ms) {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}

for (const n of SESSION_COUNTS) {
  await mark();
  let t0 = performance.now();
  const holder = await connect(`holder-${n}`);
  await holder.declare(declaration);
  const held = await holder.acquire(KEY, 'connection');
  const sessions = [];
  for (let i = 0; i < n; i += 20) {
    sessions.push(...(await Promise.all(Array.from({ length: Math.min(20, n - i) }, (_, j) => connect(`mta${i + j}-${n}`)))));
  }
  await Promise.all(sessions.map((c) => c.declare(declaration)));
  row(`${n} sessions: connect and declare`, await mark(), performance.now() - t0, '');

  // every grant is released at once, so the one slot goes round
  let grants = 0;
  let failed = 0;
  let flowing = false;
  t0 = performance.now();
  for (const c of sessions) {
    for (let i = 0; i < PER_SESSION; i++) {
      c.request('ACQUIRE', [KEY, 'connection', 'wait=120000']).then(
        (reply) => {
          grants++;
          const id = /^lease (\d+)$/.exec(reply.text)?.[1];
          if (id !== undefined && flowing) c.releaseNow(Number(id));
        },
        () => failed++,
      );
    }
  }
  // requests other than ACQUIRE are answered in order: a PING answered means its ACQUIREs are in
  const queued = await Promise.race([
    Promise.all(sessions.map((c) => c.request('PING'))).then(() => true),
    sleep(PHASE_LIMIT_MS).then(() => false),
  ]);
  row(`${n} x ${PER_SESSION} ACQUIREs queued`, await mark(), performance.now() - t0, queued ? `${fmt(n * PER_SESSION)} waiting, ${failed} refused` : `cut at ${PHASE_LIMIT_MS / 1000} s`);

  t0 = performance.now();
  flowing = true;
  holder.releaseNow(held);
  await sleep(GRANT_PHASE_MS);
  row(`${n} sessions: grants flow for ${GRANT_PHASE_MS / 1000} s`, await mark(), performance.now() - t0, `${fmt(grants)} granted and released`);

  // all at once: the daemon answers nothing to them any more, it only cleans up
  t0 = performance.now();
  flowing = false;
  for (const c of sessions) c.destroy();
  await Promise.all(sessions.map((c) => c.closed));
  // the probe's next pings show how long the daemon was busy with the leaves
  await sleep(1000);
  row(`${n} sessions with ~${PER_SESSION} waiting each disconnect at once`, await mark(), performance.now() - t0, `${fmt(failed)} requests ended by the close`);
  holder.destroy();
  await until(() => holder.closed !== null, 0);
  await sleep(200);
}

probe.postMessage('stop');
await probe.terminate();
await daemon.stop();
clearTimeout(watchdog);

console.log(`daemon stalls (${machine()}), load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
console.log('probe: one PING every 10 ms on its own control session; max RTT per phase');
console.log('');
printTable(['phase', 'pings', 'max RTT ms', 'phase ms', 'target ms', 'verdict', 'note'], rows);
console.log('');
console.log(failures === 0 ? 'all PASS' : `${failures} FAIL`);
process.exitCode = failures === 0 ? 0 : 1;
