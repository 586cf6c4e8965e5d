// Shared helpers for the on-demand benchmarks in bench/ (not part of `npm test`).
// Plain ESM JavaScript: the benches import the built daemon and client from ../dist/.
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';

export const ROOT = new URL('../', import.meta.url).pathname;
export const CLI = join(ROOT, 'dist/cli/main.js');
export const SECRET = 'bench-secret-0123456789-abcdefghijklmnop';
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort(host = '127.0.0.1') {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, host, resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves when host:port accepts a TCP connection. */
export async function waitForPort(port, host = '127.0.0.1', timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = connect({ host, port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs}ms`);
    await sleep(30);
  }
}

/** Every process started here, so an exit (normal, error, Ctrl-C) stops them by PID. */
const children = new Set();
function stopAll() {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', stopAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { stopAll(); process.exit(130); });

/** Spawns a peer with stdout/stderr to a log file (so the bench spends no CPU reading it). */
export function spawnPeer(cmd, args, { dir, name, env } = {}) {
  const logFile = join(dir ?? tmpdir(), `${name ?? 'peer'}.log`);
  const fd = openSync(logFile, 'w');
  const proc = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: env ?? process.env });
  closeSync(fd);
  children.add(proc);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => { children.delete(proc); resolve(code ?? signal); }));
  proc.on('error', (err) => { console.error(`${cmd}: ${err.message}`); });
  return {
    proc,
    pid: proc.pid,
    logFile,
    exited,
    log: () => { try { return readFileSync(logFile, 'utf8'); } catch { return ''; } },
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * Starts the built daemon (dist/cli/main.js) with an [egress] table allowing deliveries from
 * `sourceIps` (127.0.0.2) to the given loopback ports. Resolves once it logged "mtaproxy started".
 */
export async function startProxy({ ports = [], extra = '', nodeArgs = [], sourceIps = ['127.0.0.2'], throttleWaitTimeout = '10s', cli = CLI }) {
  const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-bench-'));
  const port = await freePort();
  const configFile = join(dir, 'mtaproxy.toml');
  writeFileSync(configFile, [
    `listen = "127.0.0.1:${port}"`,
    'allow_from = ["127.0.0.0/8"]',
    `auth_shared_secret = "${SECRET}"`,
    `admin_socket = "${join(dir, 'admin.sock')}"`,
    'status_interval = "1h"',
    extra,
    '[egress]',
    `source_ips = [${sourceIps.map((ip) => `"${ip}"`).join(', ')}]`,
    ...(ports.length > 0 ? [`ports = [${ports.join(', ')}]`] : []),
    'allow_private_destinations = true',
    `throttle_wait_timeout = "${throttleWaitTimeout}"`,
    '',
  ].join('\n'));
  const peer = spawnPeer(process.execPath, [...nodeArgs, cli, `--config-filename=${configFile}`], { dir, name: 'mtaproxy' });
  const deadline = Date.now() + 10_000;
  while (!/mtaproxy started/.test(peer.log())) {
    if (peer.proc.exitCode !== null || Date.now() > deadline) throw new Error(`mtaproxy did not start:\n${peer.log()}`);
    await sleep(30);
  }
  return {
    ...peer,
    port,
    dir,
    configFile,
    status: () => execFileSync(process.execPath, [cli, 'status', `--config-filename=${configFile}`]).toString(),
    /** keepLog: a path the daemon's output is copied to before its directory goes */
    async stop(keepLog = null) {
      await peer.stop('SIGTERM');
      if (keepLog !== null) copyFileSync(peer.logFile, keepLog);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** PIDs of pid and all its live descendants (Dante forks its workers). */
export function processTree(pid) {
  const parent = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const f = statFields(Number(entry));
      parent.set(Number(entry), f.ppid);
    } catch { /* exited meanwhile */ }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const [p, pp] of parent) if (pp === tree[i]) tree.push(p);
  return tree;
}

function statFields(pid) {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the command name is in parentheses and may contain spaces: split after the last ')'
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state): field n is rest[n - 3]
  return {
    ppid: Number(rest[1]),
    utime: Number(rest[11]),
    stime: Number(rest[12]),
    cutime: Number(rest[13]),
    cstime: Number(rest[14]),
  };
}

/**
 * CPU seconds used so far by pid and its descendants: utime+stime of each live process, plus
 * the reaped children's cutime+cstime. /proc/PID/stat counts in clock ticks (1/CLK_TCK s).
 */
export function cpuSeconds(pid) {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const f = statFields(p);
      ticks += f.utime + f.stime + f.cutime + f.cstime;
    } catch { /* exited meanwhile */ }
  }
  return ticks / CLK_TCK;
}

/** Resident set size in KiB (VmRSS from /proc/PID/status). */
export function rssKiB(pid) {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? NaN : Number(m[1]);
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Prints rows (arrays of cells) as an aligned Markdown table. */
export function printTable(header, rows) {
  const all = [header, ...rows].map((r) => r.map(String));
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i]?.length ?? 0)));
  const line = (r) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(all[0]));
  console.log(`|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  for (const r of all.slice(1)) console.log(line(r));
}

export function fmt(n, digits = 0) {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function machine() {
  const c = cpus();
  return `${new Date().toISOString().slice(0, 10)}, ${c.length} CPU (${c[0]?.model ?? '?'}), Node ${process.version}, ulimit -n ${fdLimit()}`;
}

export function fdLimit() {
  try {
    return execFileSync('sh', ['-c', 'ulimit -n']).toString().trim();
  } catch {
    return '?';
  }
}

export const verdict = (ok) => (ok ? 'PASS' : 'MISS');
/**
 * TCP sockets in TIME_WAIT whose local address is `ipv4` (/proc/net/tcp; NaN if unreadable).
 * bind(2) of that address with port 0, which is how Node connects "from" a source, scans the
 * ephemeral port range for a port none of them holds: with tens of thousands there, each connect
 * from it costs up to ~1.5 ms of kernel time (bench/bind-scan.mjs), for every path alike.
 */
export function timeWaitOn(ipv4) {
  const hex = ipv4.split('.').map((b) => Number(b).toString(16).padStart(2, '0').toUpperCase()).reverse().join('');
  let text;
  try {
    text = readFileSync('/proc/net/tcp', 'latin1');
  } catch {
    return NaN;
  }
  let n = 0;
  // "  sl  local_address rem_address   st ...": "   0: 0200007F:9C40 0100007F:0019 06 ..."
  for (let i = text.indexOf(`: ${hex}:`); i !== -1; i = text.indexOf(`: ${hex}:`, i + 1)) {
    if (text.startsWith(' 06 ', i + 2 + 8 + 5 + 14)) n++;
  }
  return n;
}


const xmlEscape = (s) => String(s).replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]);

/**
 * Writes a grouped horizontal bar chart of ratios as an SVG file: one group per category (a path),
 * one bar per series, the value printed at its end, dashed lines at 1.0 and at each of `marks`.
 * Non-finite values (a reference that did not run) are drawn as "n/a".
 */
export function writeRatioChart(file, { title, categories, series, marks = [] }) {
  const colors = ['#2b6cb0', '#c05621', '#2f855a', '#6b46c1'];
  const left = 170, right = 60, top = 48, barH = 12, gap = 3, groupGap = 14;
  const finite = series.flatMap((s) => s.values).filter(Number.isFinite);
  const max = Math.max(1.5, ...finite, ...marks) * 1.08;
  const width = 840;
  const plot = width - left - right;
  const groupH = series.length * (barH + gap) + groupGap;
  const height = top + categories.length * groupH + 24;
  const x = (v) => left + (plot * v) / max;
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`, `<text x="8" y="16" font-size="13" font-weight="bold">${xmlEscape(title)}</text>`];
  series.forEach((s, i) => {
    const lx = left + i * 215;
    out.push(`<rect x="${lx}" y="26" width="10" height="10" fill="${colors[i % colors.length]}"/><text x="${lx + 14}" y="35">${xmlEscape(s.label)}</text>`);
  });
  for (const v of [1, ...marks]) {
    out.push(`<line x1="${x(v).toFixed(1)}" y1="${top - 4}" x2="${x(v).toFixed(1)}" y2="${height - 20}" stroke="${v === 1 ? '#333' : '#999'}" stroke-dasharray="${v === 1 ? '' : '4 3'}"/>`);
    out.push(`<text x="${x(v).toFixed(1)}" y="${height - 8}" text-anchor="middle">${v}×</text>`);
  }
  categories.forEach((c, ci) => {
    const gy = top + ci * groupH;
    out.push(`<text x="${left - 6}" y="${gy + (series.length * (barH + gap)) / 2 + 4}" text-anchor="end">${xmlEscape(c)}</text>`);
    series.forEach((s, si) => {
      const v = s.values[ci];
      const y = gy + si * (barH + gap);
      if (!Number.isFinite(v)) return void out.push(`<text x="${left + 4}" y="${y + barH - 2}" fill="#666">n/a</text>`);
      out.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(v) - left).toFixed(1)}" height="${barH}" fill="${colors[si % colors.length]}"/>`);
      out.push(`<text x="${(x(v) + 4).toFixed(1)}" y="${y + barH - 2}">${v.toFixed(2)}×</text>`);
    });
  });
  out.push('</svg>', '');
  writeFileSync(file, out.join('\n'));
}

/**
 * A full garbage collection in another Node process started with --inspect=127.0.0.1:PORT
 * (HeapProfiler.collectGarbage over the inspector protocol, twice), so that its RSS shows what
 * it holds, not the garbage of the moment. Blocks until done (a child with Node's WebSocket).
 */
export function collectGarbage(inspectPort, { memory = false } = {}) {
  const script = `
    const list = await (await fetch('http://127.0.0.1:${inspectPort}/json/list')).json();
    const ws = new WebSocket(list[0].webSocketDebuggerUrl);
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    for (const id of [1, 2]) {
      await new Promise((r) => { ws.onmessage = (m) => JSON.parse(m.data).id === id && r(); ws.send(JSON.stringify({ id, method: 'HeapProfiler.collectGarbage' })); });
    }
    ${memory ? `const usage = await new Promise((r) => {
      ws.onmessage = (m) => { const d = JSON.parse(m.data); if (d.id === 3) r(d.result.result.value); };
      ws.send(JSON.stringify({ id: 3, method: 'Runtime.evaluate', params: { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true } }));
    });
    process.stdout.write(usage);` : ''}
    ws.close();`;
  const out = execFileSync(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', script], { timeout: 30_000, encoding: 'utf8' });
  // memory: the process's own process.memoryUsage() after the collection (rss, heapUsed, external, arrayBuffers: bytes)
  return memory ? JSON.parse(out) : null;
}
