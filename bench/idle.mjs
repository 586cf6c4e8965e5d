// Idle tunnels: the proxy's resident memory per open, idle tunnel. For each path, a fresh proxy
// process: warm-up (sessions opened and closed, so the JIT and the heap's spaces are in use),
// a full GC (over the inspector: RSS without the garbage of the moment), baseline RSS, then N tunnels opened (each gets the sink's greeting through it, naming the source
// address it came from, which must be the path's own: 127.0.0.2 for the first path, .3 for the next…), held idle, a full GC, and RSS again:
// (RSS - baseline) / N. Paths: the bare forwarder (bench/bare-forwarder.mjs, the floor), mtaproxy's
// PROXY v2 and SOCKS5 front-ends and its native tunnel (plaintext; --tls adds native over TLS).
//
//   node bench/idle.mjs [--tunnels=9500] [--paths=NAME,...] [--tls] [--settle=3] [--cpu-prof=DIR] [--source-base=2]
//
//   --source-base=N: the first path connects from 127.0.0.N (default 2), the next from N+1…: a run
//   within 60 s of another should start where that one ended (its ports are in TIME_WAIT)
//
// Needs: npm run build; ulimit -n above 2 x tunnels + 100 (the proxy holds two sockets a tunnel).
// Target (issue 14): <= 8 KiB of RSS per tunnel over the idle baseline at 9 500 tunnels, no errors.
// (bench/soak-*.mjs, where present, is the long-running soak; this is the memory measurement.)
import { connect, createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { collectGarbage, fdLimit, fmt, freePort, machine, printTable, rssKiB, SECRET, sleep, spawnPeer, startProxy, verdict, waitForPort } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const TUNNELS = Number(arg('tunnels', 9500));
const SETTLE_S = Number(arg('settle', 2));
const ONLY = arg('paths', null)?.split(',') ?? null;
const TLS = process.argv.includes('--tls');
// --cpu-prof=DIR: the proxies run under node --cpu-prof (where opening N tunnels spends its time)
const CPU_PROF = arg('cpu-prof', null);
const SINK_PORT = arg('sink', null); // set only in the sink's child process
// each path connects from its own loopback source (127.0.0.2, .3, …): the previous path's tunnels
// hold their source ports in TIME_WAIT for 60 s after they close, and the kernel's search for a free
// port in bind(source, 0) slows as a source's ports fill (9,500 tunnels took 55 s to open from a
// source the path before had just used, 8 s from a fresh one)
const SOURCE_BASE = Number(arg('source-base', 2));
const sourceOf = (index) => `127.0.0.${SOURCE_BASE + index}`;
const PARALLEL = 50; // tunnels being opened at once (under max_pending_handshakes_per_peer = 100)
const WARMUP = 500;

// ---- the sink (child process): greets with the address the connection came from, then idles ----
if (SINK_PORT !== null) {
  createServer((s) => {
    s.on('error', () => {});
    s.write(`220 idle ${s.remoteAddress.replace(/^::ffff:/, '')}\r\n`);
  }).listen({ host: '127.0.0.1', port: Number(SINK_PORT), backlog: 4096 });
} else {
  main().then(() => process.exit(0), (err) => {
    console.error(err);
    process.exit(1);
  });
}

const ipv4 = (ip) => Buffer.from(ip.split('.').map(Number));
const port16 = (p) => Buffer.from([p >> 8, p & 255]);

function dial(port) {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port }).once('error', reject);
    s.once('connect', () => resolve(s.removeListener('error', reject)));
  });
}

/** Resolves with the first line the socket reads (the sink's greeting through the tunnel). */
function firstLine(s, skip = 0) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error('no greeting in 20 s')), 20_000);
    const done = (err, line) => {
      clearTimeout(timer);
      s.off('data', onData).off('close', onClose);
      if (err) reject(err);
      else resolve(line);
    };
    const onData = (c) => {
      buf = Buffer.concat([buf, c]);
      const nl = buf.indexOf('\n', skip);
      if (nl !== -1) done(null, buf.subarray(skip, nl + 1).toString('latin1'));
    };
    const onClose = () => done(new Error(`closed after ${JSON.stringify(buf.toString('latin1').slice(0, 80))}`));
    s.on('data', onData).on('close', onClose);
    s.resume();
  });
}

/** Opens one tunnel through the path; resolves with the socket once the sink's greeting came through it. */
async function openOne(path) {
  const s = await path.open();
  s.on('error', () => {});
  const line = await firstLine(s, path.skip ?? 0);
  if (!line.startsWith(`220 idle ${path.source}\r`)) throw new Error(`unexpected greeting ${JSON.stringify(line)}`);
  return s;
}

/** Opens n tunnels, PARALLEL at a time; returns the sockets and the failures. */
async function openMany(path, n) {
  const sockets = [];
  let failed = 0;
  let firstError = null;
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      try {
        sockets.push(await openOne(path));
      } catch (err) {
        failed++;
        firstError ??= err.message;
      }
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  return { sockets, failed, firstError };
}

async function closeAll(sockets) {
  await Promise.all(sockets.map((s) => new Promise((resolve) => {
    if (s.destroyed) return resolve();
    s.once('close', resolve);
    s.destroy();
  })));
}

async function startBare(dir, inspect) {
  const peer = spawnPeer(process.execPath, [`--inspect=127.0.0.1:${inspect}`, fileURLToPath(new URL('./bare-forwarder.mjs', import.meta.url)), '--listen=127.0.0.1:0'], { dir, name: 'bare-forwarder' });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = /listening [\d.]+:(\d+)/.exec(peer.log());
    if (m !== null) return { ...peer, port: Number(m[1]) };
    if (peer.proc.exitCode !== null || Date.now() > deadline) throw new Error(`bare forwarder did not start: ${peer.log()}`);
    await sleep(20);
  }
}

/** A fresh proxy process for one path: { pid, open(), stop() }. */
async function startPath(name, sinkPort, dir, source) {
  const header = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a2111000c', 'hex'), ipv4(source), ipv4('127.0.0.1'), port16(0), port16(sinkPort)]);
  // every proxy runs with the inspector on: the bench asks it for a full GC before it reads RSS
  const inspect = await freePort();
  if (name === 'bare forwarder') {
    const bare = await startBare(dir, inspect);
    return { pid: bare.pid, inspect, source: source, open: () => dial(bare.port).then((s) => (s.write(header), s)), stop: () => bare.stop() };
  }
  const socksPort = await freePort();
  const pv2Port = await freePort();
  const plaintext = name !== 'mtaproxy native TLS';
  const extra = [
    ...(plaintext ? ['tls = false'] : []),
    `max_pending_handshakes_per_peer = ${PARALLEL * 2}`,
    '[socks5]', `listen = ["127.0.0.1:${socksPort}"]`, 'allow_unauthenticated = true', `source_ip = "${source}"`,
    '[proxy_v2]', `listen = ["127.0.0.1:${pv2Port}"]`,
    '[derived_throttle]', `max_connections = ${TUNNELS + WARMUP + 100}`,
  ].join('\n');
  const proxy = await startProxy({ ports: [sinkPort], extra, sourceIps: [source], nodeArgs: [`--inspect=127.0.0.1:${inspect}`, ...(CPU_PROF === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`])] });
  const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET, ...(plaintext ? { tls: false } : {}) });
  await control.declare({ key: 'idle', sourceIp: source, maxConnections: TUNNELS + WARMUP + 100, maxMessagesPerHour: 100_000_000, mode: 'sum' });
  const tunnel = { host: '127.0.0.1', port: proxy.port, name: 'bench', secret: SECRET, source: source, destination: { host: '127.0.0.1', port: sinkPort }, throttle: 'idle', ...(plaintext ? { tls: false } : {}) };
  const open = {
    'mtaproxy PROXY v2': () => dial(pv2Port).then((s) => (s.write(header), s)),
    'mtaproxy SOCKS5': async () => {
      // greeting and CONNECT in one write (the replies, 2 + 10 bytes, come before the greeting: skipped)
      const s = await dial(socksPort);
      s.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 1]), ipv4('127.0.0.1'), port16(sinkPort)]));
      return s;
    },
    'mtaproxy native': async () => (await openTunnel(tunnel)).socket,
    'mtaproxy native TLS': async () => (await openTunnel(tunnel)).socket,
  }[name];
  return { pid: proxy.pid, inspect, source: source, open, skip: name === 'mtaproxy SOCKS5' ? 12 : 0, stop: async () => { control.destroy(); await proxy.stop(); } };
}

async function main() {
  console.log(`# idle-tunnel bench: ${machine()}, ${fmt(TUNNELS)} tunnels per path, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const limit = Number(fdLimit());
  if (Number.isFinite(limit) && limit < 2 * TUNNELS + 100) console.log(`# WARNING: ulimit -n ${limit} is below 2 x ${TUNNELS} + 100: expect refusals (raise it, or --tunnels=)`);
  const sinkPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-idle-'));
  const sink = spawnPeer(process.execPath, [fileURLToPath(import.meta.url), `--sink=${sinkPort}`], { dir, name: 'sink' });
  await waitForPort(sinkPort);
  const names = ['bare forwarder', 'mtaproxy PROXY v2', 'mtaproxy SOCKS5', 'mtaproxy native', ...(TLS ? ['mtaproxy native TLS'] : [])].filter((n) => ONLY === null || ONLY.includes(n));
  const rows = [];
  const results = new Map();
  for (const [index, name] of names.entries()) {
    const path = await startPath(name, sinkPort, dir, sourceOf(index));
    // warm-up: tunnels opened, held a moment, closed (the JIT, the heap spaces, the socket pools)
    const warm = await openMany(path, WARMUP);
    await closeAll(warm.sockets);
    await sleep(SETTLE_S * 1000);
    const baseUsage = collectGarbage(path.inspect, { memory: true });
    const base = rssKiB(path.pid);
    const t0 = performance.now();
    const { sockets, failed, firstError } = await openMany(path, TUNNELS);
    const openS = (performance.now() - t0) / 1000;
    let closedEarly = 0;
    for (const s of sockets) s.once('close', () => closedEarly++);
    await sleep(SETTLE_S * 1000);
    const heldUsage = collectGarbage(path.inspect, { memory: true });
    const samples = [];
    for (let i = 0; i < 3; i++) {
      samples.push(rssKiB(path.pid));
      await sleep(500);
    }
    const held = Math.max(...samples); // the worst of three: no credit for a lucky sample
    const perTunnel = (held - base) / sockets.length;
    const errors = failed + closedEarly + warm.failed;
    results.set(name, perTunnel);
    // where a tunnel's bytes are (process.memoryUsage() after each full GC, per tunnel): V8's used
    // heap (JavaScript objects), its reserved heap (used + pages it holds free), the memory it is
    // told of outside (Buffers' and other external bytes), and the RSS left outside the reserved
    // heap (OpenSSL, libuv, malloc's arenas and their free chunks; RSS is the worst of 3, the rest one reading)
    const d = (key) => (heldUsage[key] - baseUsage[key]) / 1024 / sockets.length;
    rows.push([name, fmt(sockets.length), String(errors), fmt(base / 1024, 1), fmt(held / 1024, 1), fmt(perTunnel, 2), fmt(d('heapUsed'), 2), fmt(d('heapTotal'), 2), fmt(d('external'), 2), fmt(perTunnel - d('heapTotal'), 2), fmt(openS, 1)]);
    if (firstError !== null || warm.firstError !== null) console.log(`# ${name}: first failure: ${firstError ?? warm.firstError}`);
    await closeAll(sockets);
    await path.stop();
  }
  console.log(`\n## ${fmt(TUNNELS)} idle tunnels, each path in a fresh process; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}\n`);
  printTable(['path', 'tunnels open', 'errors', 'baseline RSS MiB', 'RSS with tunnels MiB', 'KiB per tunnel', 'V8 heap used KiB', 'V8 heap reserved KiB', 'external KiB', 'RSS outside the V8 heap KiB', 'open time s'], rows);
  const bare = results.get('bare forwarder');
  console.log('\n## Targets\n');
  const targets = names.filter((n) => n.startsWith('mtaproxy') && n !== 'mtaproxy native TLS').map((n) => {
    const r = rows.find((x) => x[0] === n);
    return [`${n}: <= 8 KiB per tunnel, no errors`, `${fmt(results.get(n), 2)} KiB (${bare === undefined ? '-' : `${fmt(results.get(n) / bare, 2)}x bare`}), ${r[2]} errors`, verdict(results.get(n) <= 8 && r[2] === '0')];
  });
  printTable(['target', 'measured', 'verdict'], targets);
  await sink.stop();
  rmSync(dir, { recursive: true, force: true });
}
