// Event-loop stalls of the throttle manager at scale: the longest single synchronous call (and, for
// the service's timer, the longest event-loop delay) at 100 000 keys or 100 000 waiters, against a
// 50 ms target; and ACQUIRE+RELEASE ops/s through the service at 10 keys vs 100 000 keys (target:
// within 1.5x). Pure CPU, no network, bounded: a scenario that runs past its budget is cut short
// and reported as such (FAIL).
//
//   npm run build && node bench/stalls.mjs [--dir=DIR]
//
// --dir: a directory with manager.js and service.js to measure instead of ../dist/throttle (e.g. a
// build of an older version, for before/after numbers).
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { fmt, machine, printTable } from './lib.mjs';

const dirArg = /--dir=(\S+)/.exec(process.argv.join(' '))?.[1];
const base = dirArg === undefined ? new URL('../dist/throttle/', import.meta.url) : pathToFileURL(`${resolve(dirArg)}/`);
const { ThrottleManager } = await import(new URL('manager.js', base).href);
const { ThrottleService } = await import(new URL('service.js', base).href);

const TARGET_MS = 50;
const OPS_RATIO_TARGET = 1.5;
/** per scenario: past this, a loop stops and the row says how far it got */
const BUDGET_MS = 6000;
const N = 100_000;

const decl = (key, over = {}) => ({ key, sourceIp: '192.0.2.10', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'average', ...over });

/** Times each call of a loop: the longest one, the total, and whether the budget cut it short. */
class Calls {
  constructor() {
    this.max = 0;
    this.total = 0;
    this.count = 0;
    this.started = performance.now();
    this.cut = false;
  }
  time(f) {
    const t0 = performance.now();
    const r = f();
    const dt = performance.now() - t0;
    this.total += dt;
    this.count++;
    if (dt > this.max) this.max = dt;
    return r;
  }
  /** true when the scenario ran past its budget (checked by the loops) */
  over() {
    if (performance.now() - this.started > BUDGET_MS) this.cut = true;
    return this.cut;
  }
}

const rows = [];
let failures = 0;
function row(name, calls, expected, note = '') {
  const done = calls.count >= expected && !calls.cut;
  const pass = done && calls.max <= TARGET_MS;
  if (!pass) failures++;
  rows.push([
    name,
    `${fmt(calls.count)}${done ? '' : ` of ${fmt(expected)} (cut at ${BUDGET_MS / 1000} s)`}`,
    fmt(calls.max, 2),
    fmt(calls.total, 0),
    fmt((calls.total / Math.max(1, calls.count)) * 1000, 2),
    `${TARGET_MS}`,
    pass ? 'PASS' : 'FAIL',
    note,
  ]);
}

/** 100 sessions, each with `perSession` waiting ACQUIREs; keys: how many keys they spread over. */
function waiters(keys, perSession = 1000, sessions = 100) {
  const m = new ThrottleManager();
  const held = [];
  const declare = new Calls();
  for (let s = 0; s < sessions; s++) for (let k = 0; k < keys; k++) declare.time(() => m.declare(`s${s}`, decl(`k${k}`), 0));
  for (let k = 0; k < keys; k++) {
    const r = m.acquire('s0', `k${k}`, 'connection', 0, 0);
    if (r.status === 'granted') held.push(r.lease.id);
  }
  const acquire = new Calls();
  outer: for (let s = 0; s < sessions; s++) {
    for (let i = 0; i < perSession; i++) {
      acquire.time(() => m.acquire(`s${s}`, `k${(s * perSession + i) % keys}`, 'connection', 0, 1e12));
      if (i % 1000 === 999 && acquire.over()) break outer;
    }
  }
  return { m, held, acquire, expected: sessions * perSession };
}

/** Releases every slot, one at a time, each grant handing on its slot: grants all waiters. */
function releaseAll(m, held, expected) {
  const release = new Calls();
  const queue = [...held];
  let granted = 0;
  while (queue.length > 0) {
    const id = queue.pop();
    const events = release.time(() => m.release(id, 1));
    for (const e of events) {
      if (e.type === 'granted') {
        granted++;
        queue.push(e.lease.id);
      }
    }
    if (release.count % 1000 === 0 && release.over()) break;
  }
  return { release, granted, expected };
}

// 1. 100 000 DECLAREs of distinct keys in one session, then its leave
{
  const m = new ThrottleManager();
  const calls = new Calls();
  for (let k = 0; k < N; k++) {
    calls.time(() => m.declare('mta', decl(`k${k}`), 0));
    if (k % 1000 === 999 && calls.over()) break;
  }
  row('declare 100 000 distinct keys (one session)', calls, N);
  const leave = new Calls();
  if (!calls.cut) leave.time(() => m.leave('mta', 1));
  row('leave of a session with 100 000 keys', leave, 1, calls.cut ? 'setup cut short' : `${m.throttleCount} throttles left`);
}

// 2. 100 sessions x 1000 waiters on one key: acquire, leave of one session, grant all
{
  const { m, held, acquire, expected } = waiters(1);
  row('100 sessions x 1000 waiting ACQUIREs, one key', acquire, expected);
  const leave = new Calls();
  let cancelled = 0;
  if (!acquire.cut) leave.time(() => (cancelled = m.leave('s42', 1).filter((e) => e.type === 'cancelled').length));
  row('leave of a session with 1000 of 100 000 waiters', leave, 1, acquire.cut ? 'setup cut short' : `${cancelled} reported cancelled`);
  const { release, granted } = acquire.cut ? { release: new Calls(), granted: 0 } : releaseAll(m, held, expected);
  row('release -> grant them all, one key', release, expected - 1000, `${fmt(granted)} granted`);
}

// 3. the same spread over 1000 keys
{
  const { m, held, acquire, expected } = waiters(1000);
  row('100 sessions x 1000 waiting ACQUIREs, 1000 keys', acquire, expected);
  const { release, granted } = acquire.cut ? { release: new Calls(), granted: 0 } : releaseAll(m, held, expected);
  row('release -> grant them all, 1000 keys', release, expected, `${fmt(granted)} granted`);
}

// 4. one tick expires 100 000 waiters (one per key, 100 000 keys)
{
  const m = new ThrottleManager();
  const setup = new Calls();
  for (let k = 0; k < N; k++) {
    setup.time(() => {
      m.declare('mta', decl(`k${k}`), 0);
      m.acquire('mta', `k${k}`, 'connection', 0, 0);
      m.acquire('mta', `k${k}`, 'connection', 0, 1000 + (k % 100));
    });
    if (k % 1000 === 999 && setup.over()) break;
  }
  const tick = new Calls();
  let expired = 0;
  // a tick may expire them in bounded batches (nextWakeup then says "now"): each call counts
  if (!setup.cut) {
    do expired += tick.time(() => m.tick(2000)).length;
    while (m.nextWakeup(2000) === 2000 && tick.count < 1000);
  }
  row('ticks expiring 100 000 waiters due at once (100 000 keys)', tick, 1, setup.cut ? 'setup cut short' : `${fmt(expired)} timed out in ${tick.count} tick(s)`);
}

// 5. the service's timer answers 100 000 expired waits: the event-loop delay it causes
{
  const s = new ThrottleService(() => performance.now());
  const setup = new Calls();
  let answered = 0;
  for (let i = 0; i < 100; i++) s.declare(`s${i}`, decl('gmail'));
  s.acquire('s0', 'gmail', 'connection', 0, () => {});
  for (let i = 0; i < N; i++) {
    setup.time(() => s.acquire(`s${i % 100}`, 'gmail', 'connection', 200, () => answered++));
    if (i % 1000 === 999 && setup.over()) break;
  }
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const until = performance.now() + Math.min(BUDGET_MS, 3000);
  while (answered < setup.count && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
  h.disable();
  s.stop();
  const delay = new Calls();
  delay.count = answered;
  delay.max = h.max / 1e6;
  delay.total = NaN;
  delay.cut = setup.cut || answered < N;
  row('service timer: 100 000 waits time out (event-loop delay)', delay, N, `${fmt(answered)} answered 451`);
  rows.at(-1)[3] = '';
  rows.at(-1)[4] = '';
}

// 6. ACQUIRE+RELEASE through the service at 10 vs 100 000 declared keys (each with one waiter
//    elsewhere, so that wakeups have something to consider), on the first 10 keys
async function opsPerSecond(keys) {
  const s = new ThrottleService(() => performance.now());
  const setup = new Calls();
  for (let k = 0; k < keys; k++) {
    s.declare('mta', decl(`k${k}`, { maxConnections: 2 }));
    if (k >= 10) {
      s.acquire('mta', `k${k}`, 'connection', 0, () => {});
      s.acquire('mta', `k${k}`, 'connection', 0, () => {});
      s.acquire('mta', `k${k}`, 'connection', 600_000, () => {}); // waits
    }
    if (k % 1000 === 999 && setup.over()) break;
  }
  const calls = new Calls();
  const until = performance.now() + 1000;
  let ops = 0;
  const t0 = performance.now();
  while (performance.now() < until) {
    for (let i = 0; i < 100; i++) {
      let lease = 0;
      calls.time(() => {
        s.acquire('mta', `k${ops % 10}`, 'connection', 1000, (o) => (lease = o.ok ? o.lease.id : 0));
        s.release(lease);
      });
      ops++;
    }
  }
  const rate = ops / ((performance.now() - t0) / 1000);
  s.stop();
  return { rate, calls, cut: setup.cut };
}
{
  const small = await opsPerSecond(10);
  const big = await opsPerSecond(N);
  const ratio = small.rate / big.rate;
  const pass = !big.cut && ratio <= OPS_RATIO_TARGET;
  if (!pass) failures++;
  rows.push(['ACQUIRE+RELEASE, 10 keys', fmt(small.calls.count), fmt(small.calls.max, 2), fmt(small.calls.total), fmt((small.calls.total / small.calls.count) * 1000, 2), '', '', `${fmt(small.rate)} ops/s`]);
  rows.push([
    'ACQUIRE+RELEASE, 100 000 keys (99 990 with a waiter)',
    fmt(big.calls.count),
    fmt(big.calls.max, 2),
    fmt(big.calls.total),
    fmt((big.calls.total / big.calls.count) * 1000, 2),
    `ratio <= ${OPS_RATIO_TARGET}`,
    pass ? 'PASS' : 'FAIL',
    `${fmt(big.rate)} ops/s: ${fmt(ratio, 2)}x slower${big.cut ? ' (setup cut short)' : ''}`,
  ]);
}

console.log(`throttle stalls (${machine()}), code: ${base.pathname}`);
console.log('');
printTable(['scenario', 'calls', 'max call ms', 'total ms', 'mean µs', 'target ms', 'verdict', 'note'], rows);
console.log('');
console.log(failures === 0 ? 'all PASS' : `${failures} FAIL`);
process.exitCode = failures === 0 ? 0 : 1;
