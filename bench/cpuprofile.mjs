// Summarizes a V8 .cpuprofile (node --cpu-prof): self time per function and per category, so a
// bench run can say where the proxy's CPU went (bench/tunnel.mjs --cpu-prof=DIR writes them).
//
//   node bench/cpuprofile.mjs FILE.cpuprofile [--top=25]
//   node bench/cpuprofile.mjs FILE.cpuprofile --per=N --vs=OTHER.cpuprofile --vs-per=M [--top=40]
// The second form compares two profiles per unit of work (N and M sessions each, e.g. mtaproxy's
// and the bare forwarder's from one bench/tunnel.mjs --bulk-runs=0 --cpu-prof run): self µs per
// session of each function in both, sorted by the difference: where the extra cost goes.
import { readFileSync } from 'node:fs';

const file = process.argv[2];
if (file === undefined) {
  console.error('usage: node bench/cpuprofile.mjs FILE.cpuprofile [--top=25]');
  process.exit(2);
}
const opt = (name) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const top = Number(opt('top') ?? 25);
if (opt('vs') !== undefined) {
  compare(file, Number(opt('per') ?? 1), opt('vs'), Number(opt('vs-per') ?? 1));
  process.exit(0);
}

/** Self time per function (µs), not idle. */
function selfByFunction(path) {
  const p = JSON.parse(readFileSync(path, 'utf8'));
  const nodes = new Map(p.nodes.map((n) => [n.id, n]));
  const m = new Map();
  for (let i = 0; i < p.samples.length; i++) {
    const cf = nodes.get(p.samples[i]).callFrame;
    if (cf.functionName === '(idle)') continue;
    const k = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*\/(dist|node_modules)\//, '$1/').replace(/^node:/, '')}:${cf.lineNumber + 1}`;
    m.set(k, (m.get(k) ?? 0) + (p.timeDeltas[i + 1] ?? 0));
  }
  return m;
}

function compare(a, perA, b, perB) {
  const A = selfByFunction(a);
  const B = selfByFunction(b);
  const rows = [...new Set([...A.keys(), ...B.keys()])].map((k) => [k, (A.get(k) ?? 0) / perA, (B.get(k) ?? 0) / perB]);
  const sum = (i) => rows.reduce((t, r) => t + r[i], 0);
  console.log(`# self µs per unit, not idle: ${a}: ${sum(1).toFixed(0)}; ${b}: ${sum(2).toFixed(0)}\n`);
  console.log('      A        B    A - B  function');
  rows.sort((x, y) => y[1] - y[2] - (x[1] - x[2]));
  for (const [k, x, y] of rows.slice(0, top)) console.log(`${x.toFixed(1).padStart(7)}  ${y.toFixed(1).padStart(7)}  ${(x - y).toFixed(1).padStart(7)}  ${k}`);
}
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// self time per node: the sample intervals (timeDeltas[i] is the time before sample i)
const selfUs = new Map();
for (let i = 0; i < profile.samples.length; i++) {
  const dt = profile.timeDeltas[i + 1] ?? 0; // the interval a sample stands for ends at the next one
  selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt);
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);

const where = (cf) => {
  const url = cf.url.replace(/^file:\/\/.*\/(dist|src)\//, '$1/').replace(/^node:/, '');
  return `${cf.functionName || '(anonymous)'} ${url ? `${url}:${cf.lineNumber + 1}` : ''}`.trim();
};
/** the nearest JavaScript frame at or above a node (native and (program) nodes have no url) */
const category = (id) => {
  for (let n = byId.get(id); n !== undefined; n = byId.get(parent.get(n.id))) {
    const { functionName, url } = n.callFrame;
    if (functionName === '(garbage collector)') return 'GC';
    if (functionName === '(idle)') return 'idle';
    if (functionName === '(program)') return '(program): native code outside JS (libuv, OpenSSL callbacks not attributed)';
    if (/_tls_wrap|_tls_common|tls\.js/.test(url)) return 'node:tls (TLSSocket JS, handshake callbacks)';
    if (/internal\/crypto|crypto/.test(url)) return 'node:crypto';
    if (/\/(dist|src)\//.test(url)) return `mtaproxy ${url.replace(/^.*\/(dist|src)\//, '')}`;
    if (/^node:net|^net\.js/.test(url)) return 'node:net';
    if (url.startsWith('node:internal/streams') || url.startsWith('node:stream')) return 'node:streams';
    if (url.startsWith('node:')) return `node:${url.slice(5).split('/').slice(0, 2).join('/')}`;
  }
  return '(root)';
};

const self = new Map();
const cats = new Map();
for (const [id, us] of selfUs) {
  const n = byId.get(id);
  const k = where(n.callFrame);
  self.set(k, (self.get(k) ?? 0) + us);
  const c = category(id);
  cats.set(c, (cats.get(c) ?? 0) + us);
}
const pct = (us) => `${((100 * us) / total).toFixed(1)}%`;
const busy = total - (cats.get('idle') ?? 0);
console.log(`# ${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s not idle`);
console.log('\n## by category (self time, % of all samples)\n');
for (const [c, us] of [...cats].sort((a, b) => b[1] - a[1])) console.log(`${pct(us).padStart(6)}  ${c}`);
console.log(`\n## top ${top} functions (self time)\n`);
for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us).padStart(6)}  ${k}`);
