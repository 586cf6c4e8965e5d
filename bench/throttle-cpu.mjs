// The daemon's JavaScript cost of one ACQUIRE + RELEASE, in process and without sockets: a
// ControlSession (src/server/session.ts) over a fake socket, its ThrottleService and (--metrics)
// the daemon's Metrics, 64 ACQUIREs then their 64 fire-and-forget RELEASEs per round, CPU µs per
// operation over 5 runs of 300 000. Steadier than bench/throttle.mjs on a loaded machine (no
// syscalls, no scheduler): for before/after comparisons of the handler path. --wire: each round's
// requests arrive as one Buffer through a LineSplitter (as native.ts reads them), not as strings.
// Also prints this process's scavenges per 10 000 operations over the measured runs (the harness's
// own line building and reply parsing included: compare like with like).
//
//   node bench/throttle-cpu.mjs [DIST=dist] [--metrics] [--wire]     (npm run build first)
import { EventEmitter } from 'node:events';
const dist = new URL(`../${process.argv.slice(2).find((a) => !a.startsWith('--')) ?? 'dist'}/`, import.meta.url).href.replace(/\/$/, '');
const { ControlSession } = await import(`${dist}/server/session.js`);
const { ThrottleService } = await import(`${dist}/throttle/service.js`);
const { LineSplitter } = await import(`${dist}/protocol/lines.js`);
const { Metrics } = await import(`${dist}/metrics/metrics.js`);
const withMetrics = process.argv.includes('--metrics');
const wire = process.argv.includes('--wire');
const { PerformanceObserver } = await import('node:perf_hooks');
let scavenges = 0;
new PerformanceObserver((list) => { for (const e of list.getEntries()) if (e.detail?.kind === 1) scavenges++; }).observe({ entryTypes: ['gc'] });
const splitter = new LineSplitter(4096);
/** the lines as the session gets them: one by one, or (--wire) from one Buffer through the splitter */
const feed = (lines) => {
  if (!wire) for (const l of lines) s.handleLine(l);
  else for (const l of splitter.push(Buffer.from(lines.join('\n') + '\n'))) s.handleLine(l);
};
const metrics = new Metrics({ snapshot: () => ({}), throttleSeries: () => 0 });
const svc = new ThrottleService(() => performance.now(), withMetrics ? (k, w, g) => metrics.throttleWait(k, w / 1000, g) : undefined);
let replies = '';
const sock = Object.assign(new EventEmitter(), { remoteAddress: '127.0.0.1', remotePort: 1, destroyed: false, writable: true, writableLength: 0,
  write(t, cb) { replies = t; cb?.(); return true; }, pause() {}, resume() {}, destroy() {} });
const log = { debug() {}, warn() {}, info() {} };
const s = new ControlSession({ name: 'b', socket: sock, splitter: new LineSplitter(4096), log, now: () => performance.now(), onClose() {},
  services: { throttle: svc, egress: () => ({ sourceIps: ['127.0.0.2'], throttleWaitTimeoutMs: 10000 }), leave() {} } });
s.handleLine('1 DECLARE bench source=127.0.0.2 max_connections=1000000 max_messages_per_hour=1000000 mode=sum');
await new Promise((r) => setTimeout(r, 1));
let tag = 2;
const round = (n) => {
  const lines = [];
  for (let i = 0; i < n; i++) lines.push(`${tag++} ACQUIRE bench connection wait=0`);
  feed(lines);
};
// the replies name the leases: release each one
async function run(ops) {
  let done = 0;
  const t0 = process.cpuUsage();
  while (done < ops) {
    round(64);
    await null; // microtask flush
    const ids = [...replies.matchAll(/lease (\d+)/g)].map((m) => m[1]);
    feed(ids.map((id) => `- RELEASE ${id}`));
    done += 64;
  }
  const c = process.cpuUsage(t0);
  return (c.user + c.system) / ops;
}
await run(200000);
await new Promise((r) => setTimeout(r, 10)); // the warm-up's GC entries
const r = [];
scavenges = 0;
for (let i = 0; i < 5; i++) r.push(await run(300000));
await new Promise((r) => setTimeout(r, 10));
r.sort((a, b) => a - b);
console.log(`${dist.replace(/^.*\//, "")}${withMetrics ? ' +metrics' : ''}${wire ? ' +wire' : ''}: µs/op (ACQUIRE+RELEASE, JS side) median ${r[2].toFixed(3)} min ${r[0].toFixed(3)} max ${r[4].toFixed(3)}; scavenges per 10k ops (this process: the harness's own allocations included) ${((scavenges * 10000) / 1_500_000).toFixed(2)}`);
