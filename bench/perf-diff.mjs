// Where a front-end's CPU per session goes, against its bare Node floor: `perf record` of both
// processes while bench/tunnel.mjs drives them (each in its own turn, each sampled only once it
// has been busy for a few seconds: the JIT's warm-up is not counted), then both profiles per
// session, by group and by symbol, sorted by the difference. What found this stop's items (the
// record's regular expressions, a clock read and two handle accessors per chunk): see
// docs/benchmarks.md.
//
//   node bench/perf-diff.mjs [--paths='bare forwarder,mtaproxy PROXY v2'] [--seconds=10] [--top=30] [--keep=DIR]
//
// --paths: one bare path and one mtaproxy path of bench/tunnel.mjs (PROXY v2 or SOCKS5: the
// daemon that serves them; 'bare SOCKS5 forwarder' for SOCKS5's own floor). --keep=DIR keeps both
// perf.data files and the tunnel bench's output.
// Needs: npm run build; root (or kernel.perf_event_paranoid <= 1) and perf (apt-get install linux-perf).
// JavaScript frames are named through --perf-basic-prof's /tmp/perf-PID.map; a name there can be
// stale where V8 moved or freed code, so a JS line is a hint, the groups are the reading.
import { spawn, execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { printTable, sleep } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const PATHS = arg('paths', 'bare forwarder,mtaproxy PROXY v2').split(',');
const SECONDS = Number(arg('seconds', 10));
const TOP = Number(arg('top', 30));
const KEEP = arg('keep', null);
const BUSY_SECONDS = 5; // busy this long before sampling starts (the window the bench counts has begun)
const HZ = 1999;

const bare = PATHS.find((p) => p.startsWith('bare '));
const proxy = PATHS.find((p) => p.startsWith('mtaproxy '));
if (PATHS.length !== 2 || bare === undefined || proxy === undefined) {
  console.error("perf-diff: --paths takes one bare path and one mtaproxy path, e.g. 'bare forwarder,mtaproxy PROXY v2'");
  process.exit(2);
}
try {
  execFileSync('perf', ['--version'], { stdio: 'ignore' });
} catch {
  console.error('perf-diff: perf is not on PATH (apt-get install linux-perf)');
  process.exit(2);
}

/** utime + stime in clock ticks, or null once the process is gone */
function ticks(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return null;
  }
}

/** pids of `root`'s descendants whose command line matches `re` */
function descendants(root, re) {
  const parent = new Map();
  const cmd = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
      cmd.set(Number(d), readFileSync(`/proc/${d}/cmdline`, 'utf8').replaceAll('\0', ' '));
    } catch {
      // gone meanwhile
    }
  }
  const under = (pid) => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) if (p === root) return true;
    return false;
  };
  return [...cmd].filter(([pid, c]) => re.test(c) && under(pid)).map(([pid]) => pid);
}

const dir = mkdtempSync(join(tmpdir(), 'perf-diff-'));
const tunnel = fileURLToPath(new URL('./tunnel.mjs', import.meta.url));
// one round: direct, then each path's turn of SECONDS + BUSY_SECONDS + a margin, one after the other
const child = spawn(process.execPath, [tunnel, `--paths=${PATHS.join(',')}`, '--bulk-runs=0', '--rounds=1', `--seconds=${SECONDS + BUSY_SECONDS + 4}`, '--daemon-node-args=--perf-basic-prof', '--bare-node-args=--perf-basic-prof'], { stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
child.stdout.on('data', (c) => (out += c));
const exited = new Promise((resolve) => child.on('exit', resolve));

const bareRe = bare === 'bare SOCKS5 forwarder' ? /bare-forwarder\.mjs .*--socks5/ : /bare-forwarder\.mjs --listen=\S+\s*$/;
const recorded = new Map(); // path -> { file: its perf.data, pid }
let done = false;
void exited.then(() => (done = true));
// every second: the candidate processes again (the bench starts its peers as it goes), each one's
// CPU over the last second; the first busy for BUSY_SECONDS in a row is sampled, then the next
const busy = new Map(); // pid -> consecutive busy seconds
const last = new Map(); // pid -> ticks a second ago
while (!done && recorded.size < 2) {
  await sleep(1000);
  const candidates = [
    ...(recorded.has(bare) ? [] : descendants(child.pid, bareRe).map((pid) => [bare, pid])),
    ...(recorded.has(proxy) ? [] : descendants(child.pid, /dist\/cli\/main\.js/).map((pid) => [proxy, pid])),
  ];
  let hit = null;
  for (const [path, pid] of candidates) {
    const t = ticks(pid);
    const d = t === null || !last.has(pid) ? 0 : t - last.get(pid);
    if (t !== null) last.set(pid, t);
    busy.set(pid, d > 40 ? (busy.get(pid) ?? 0) + 1 : 0); // > 40 % of a core (100 ticks a second)
    if (hit === null && busy.get(pid) >= BUSY_SECONDS) hit = [path, pid];
  }
  if (hit === null) continue;
  const [path, pid] = hit;
  const file = join(dir, `${path.replaceAll(' ', '-')}.data`);
  try {
    execFileSync('perf', ['record', '-F', String(HZ), '-g', '-p', String(pid), '-o', file, '--', 'sleep', String(SECONDS)], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    child.kill('SIGTERM');
    console.error(`perf-diff: perf record of ${path} (pid ${pid}) failed: ${String(err.stderr ?? err.message).trim().split('\n').slice(0, 3).join(' ')}\n(run as root, or sysctl kernel.perf_event_paranoid=1)`);
    process.exit(1);
  }
  recorded.set(path, { file, pid });
  last.clear();
  busy.clear();
}
await exited;
if (recorded.size < 2) {
  console.error(`perf-diff: sampled ${[...recorded.keys()].join(', ') || 'nothing'}; the tunnel bench said:\n${out}`);
  process.exit(1);
}

/** sessions/s of a path from the tunnel bench's table b */
function rate(path) {
  const row = out.split('\n').find((l) => l.startsWith(`| ${path} `) && /\|\s+\d[\d,]*\s+\|\s+\d+\s+\|/.test(l));
  return Number(row?.split('|')[2].replaceAll(',', '').trim() ?? NaN);
}

const GROUPS = [
  ['kernel', (s, k) => k],
  ['JavaScript, optimized', (s) => s.startsWith('JS:*')],
  ['JavaScript, interpreted or baseline', (s) => s.startsWith('JS:')],
  ['inline caches (V8 builtins *IC*)', (s) => s.startsWith('Builtins_') && s.includes('IC')],
  ['other V8 builtins', (s) => s.startsWith('Builtins_')],
  ['V8 compiler', (s) => s.includes('compiler::') || s.includes('maglev')],
  ['V8 GC and heap', (s) => /Scaveng|Heap::|MarkCompact|Sweeper|Marking|Evacuat/.test(s)],
  ['V8 runtime (lookups, transitions, …)', (s) => s.startsWith('v8::')],
  ['Node C++', (s) => s.startsWith('node::')],
  ['libuv', (s) => s.startsWith('uv_') || s.startsWith('uv__')],
  ['other (libc, …)', () => true],
];

/** samples per session of every symbol: perf's own per-symbol share of all samples */
function profile(file, sessions) {
  const samples = Number(execFileSync('perf', ['script', '-i', file, '-F', 'tid'], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter((l) => l.trim() !== '').length);
  const report = execFileSync('perf', ['report', '-i', file, '--no-children', '--sort', 'sym', '--stdio', '-g', 'none'], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
  const bySym = new Map();
  for (const line of report.split('\n')) {
    const m = /^\s*([\d.]+)%\s+\[(.)\]\s+(.*\S)\s*$/.exec(line);
    if (m === null) continue;
    bySym.set(m[3], { per: (Number(m[1]) / 100) * (samples / sessions), kernel: m[2] === 'k' });
  }
  return { samples, perSession: samples / sessions, bySym };
}

const us = (perSession) => (perSession * 1e6) / HZ; // samples per session -> µs per session
const B = profile(recorded.get(bare).file, rate(bare) * SECONDS);
const P = profile(recorded.get(proxy).file, rate(proxy) * SECONDS);
console.log(`# perf-diff: ${proxy} against ${bare}, ${SECONDS}s of perf record -F ${HZ} each, after ${BUSY_SECONDS}s busy; sessions from the tunnel bench's rates (${Math.round(rate(bare))}/s and ${Math.round(rate(proxy))}/s)`);
console.log(`# ${bare}: ${B.samples} samples, ${us(B.perSession).toFixed(0)} µs/session; ${proxy}: ${P.samples} samples, ${us(P.perSession).toFixed(0)} µs/session: ${(P.perSession / B.perSession).toFixed(2)}x\n`);

const group = (sym, kernel) => GROUPS.find(([, f]) => f(sym, kernel))[0];
const sums = new Map(GROUPS.map(([g]) => [g, [0, 0]]));
for (const [sym, v] of B.bySym) sums.get(group(sym, v.kernel))[0] += v.per;
for (const [sym, v] of P.bySym) sums.get(group(sym, v.kernel))[1] += v.per;
console.log('## By group, µs per session\n');
printTable(['group', bare, proxy, 'difference'], [...sums].map(([g, [b, p]]) => [g, us(b).toFixed(1), us(p).toFixed(1), `${p >= b ? '+' : ''}${us(p - b).toFixed(1)}`]));

const rows = [...new Set([...B.bySym.keys(), ...P.bySym.keys()])].map((s) => {
  const b = B.bySym.get(s)?.per ?? 0;
  const p = P.bySym.get(s)?.per ?? 0;
  return [s, b, p, p - b];
}).sort((x, y) => y[3] - x[3]);
const fmtRow = ([s, b, p, d]) => [s.length > 110 ? `${s.slice(0, 107)}…` : s, us(b).toFixed(2), us(p).toFixed(2), `${d >= 0 ? '+' : ''}${us(d).toFixed(2)}`];
console.log(`\n## The ${TOP} symbols that cost ${proxy} the most more, µs per session (self time)\n`);
printTable(['symbol', bare, proxy, 'difference'], rows.slice(0, TOP).map(fmtRow));
console.log(`\n## The 10 that cost it less\n`);
printTable(['symbol', bare, proxy, 'difference'], rows.slice(-10).reverse().map(fmtRow));

if (KEEP !== null) {
  mkdirSync(KEEP, { recursive: true });
  for (const [path, { file }] of recorded) copyFileSync(file, join(KEEP, `${path.replaceAll(' ', '-')}.data`));
  // the JavaScript names come from /tmp/perf-PID.map (Node leaves it there): kept beside the data
  for (const [, { pid }] of recorded) {
    try {
      copyFileSync(`/tmp/perf-${pid}.map`, join(KEEP, `perf-${pid}.map`));
    } catch {
      // not written (no --perf-basic-prof) or removed meanwhile
    }
  }
  writeFileSync(join(KEEP, 'tunnel.txt'), out);
}
rmSync(dir, { recursive: true, force: true });
