// Soak (c): --tunnels (default 9 500) concurrent idle tunnels, each through its own native
// connection (TLS, the default), to a destination that greets and then waits. Reports the daemon's
// RSS per tunnel over its idle baseline (design target ≤ 8 KiB), checks a sample of the tunnels
// still carries bytes after the idle period, and that everything closes. Stops by itself.
//   node bench/soak-idle-tunnels.mjs [--tunnels=9500] [--batch=50] [--idle-seconds=10] [--tls=true|false] [--max-kib=8]
// PASS: every tunnel opened, held and closed, and the RSS per tunnel ≤ --max-kib (design.md §9).
//
// File descriptors: the daemon needs two per tunnel and keeps a reserve of limit/32 (at most
// 1024) below its soft RLIMIT_NOFILE; this sandbox's hard limit is 20 000 (no process may raise it),
// which allows ≈ 9 690 tunnels. The bench raises nothing it cannot: it checks the daemon's limit
// and says how far it reaches. The destination runs in a child process, so the bench's own
// process holds only the MTA side (one descriptor per tunnel). Daemon caps that apply:
// egress.max_tunnels (default 10 000) and max_pending_handshakes(_per_peer) (1000 / 100): the
// tunnels are opened in batches of --batch handshakes at a time.
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { cpuSeconds, fdLimit, fmt, freePort, machine, rssKiB, SECRET, sleep, spawnPeer, startProxy, waitForPort } from './lib.mjs';
import { finish } from './soak-lib.mjs';

const { values } = parseArgs({ options: { tunnels: { type: 'string', default: '9500' }, batch: { type: 'string', default: '50' }, 'idle-seconds': { type: 'string', default: '10' }, tls: { type: 'string', default: 'true' }, 'max-kib': { type: 'string', default: '8' } } });
const MAX_KIB = Number(values['max-kib']);
const N = Number(values.tunnels);
const BATCH = Number(values.batch);
const IDLE = Number(values['idle-seconds']);
const TLS = values.tls !== 'false';

console.log(`soak-idle-tunnels: ${N} idle tunnels (native, ${TLS ? 'TLS' : 'tls = false'}), opened ${BATCH} at a time; ${machine()}`);
const destPort = await freePort();
const dest = spawnPeer(process.execPath, ['-e', `
  const net = require('node:net');
  let open = 0;
  net.createServer((s) => { open++; s.on('close', () => open--); s.on('error', () => {}); s.write('220 idle ESMTP\\r\\n');
    s.on('data', (d) => { for (const l of d.toString().split('\\r\\n').slice(0, -1)) s.write('250 ok\\r\\n'); }); })
    .listen(${destPort}, '127.0.0.1');
  setInterval(() => process.stdout.write('open=' + open + '\\n'), 1000);
`], { name: 'destination' });
await waitForPort(destPort);
const proxy = await startProxy({ ports: [destPort], extra: TLS ? '' : 'tls = false' });
// a tunnel with no traffic is closed after egress.idle_timeout (default 5m): longer than this soak
appendFileSync(proxy.configFile, 'idle_timeout = "1h"\nmax_tunnels = 10000\n');
process.kill(proxy.pid, 'SIGHUP');
while (!/reload: applied/.test(proxy.log())) await sleep(20);
const limit = Number(/^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${proxy.pid}/limits`, 'utf8'))?.[1]);
const reserve = Math.min(1024, Math.max(8, Math.floor(limit / 32)));
console.log(`daemon RLIMIT_NOFILE ${limit} (this shell: ${fdLimit()}): reserve ${reserve}, room for ≈ ${Math.floor((limit - reserve - 40) / 2)} tunnels; egress.max_tunnels = 10000`);

const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET, tls: TLS });
await control.declare({ key: 'idle', sourceIp: '127.0.0.2', maxConnections: 10000, maxMessagesPerHour: 1_000_000, mode: 'sum' });

const open1 = (tunnels) => openTunnel({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET, tls: TLS, source: '127.0.0.2', destination: { host: '127.0.0.1', port: destPort }, throttle: 'idle' })
  .then(async (t) => {
    // the destination's greeting: the tunnel is open end to end
    await new Promise((resolve, reject) => {
      t.socket.once('data', (c) => (String(c).startsWith('220') ? resolve() : reject(new Error(`greeting: ${c}`))));
      t.socket.once('close', () => reject(new Error('closed before the greeting')));
      t.socket.resume();
    });
    t.socket.pause();
    t.socket.on('error', () => {});
    tunnels.push(t.socket);
  });

// warm-up: the code paths, TLS contexts, JIT; then the idle baseline
const warm = [];
for (let i = 0; i < 4; i++) await Promise.all(Array.from({ length: BATCH }, () => open1(warm)));
for (const s of warm) s.destroy();
await sleep(2000);
const baseline = rssKiB(proxy.pid);
const cpu0 = cpuSeconds(proxy.pid);

const tunnels = [];
let errors = 0;
const errorSamples = new Set();
const t0 = performance.now();
for (let i = 0; i < N; i += BATCH) {
  await Promise.all(Array.from({ length: Math.min(BATCH, N - i) }, () => open1(tunnels).catch((err) => { errors++; errorSamples.add(err.message); })));
  if ((i / BATCH) % 40 === 0) process.stdout.write(`  ${tunnels.length} open, RSS ${fmt(rssKiB(proxy.pid))} KiB\n`);
}
const openSeconds = (performance.now() - t0) / 1000;
const cpuOpen = cpuSeconds(proxy.pid) - cpu0;
console.log(`${tunnels.length} tunnels open in ${fmt(openSeconds, 1)} s (errors ${errors}${errorSamples.size ? `: ${[...errorSamples].slice(0, 3).join('; ')}` : ''}); proxy CPU ${fmt(cpuOpen, 1)} s = ${fmt((cpuOpen * 1e6) / Math.max(1, tunnels.length))} µs per tunnel opened`);
console.log(`idle for ${IDLE} s …`);
const cpuIdle0 = cpuSeconds(proxy.pid);
await sleep(IDLE * 1000);
const held = rssKiB(proxy.pid);
const cpuIdle = cpuSeconds(proxy.pid) - cpuIdle0;
const status = proxy.status();
const remote = status.split('\n').find((l) => l.startsWith('direct_remote_smtp')) ?? '';
const fds = readdirSync(`/proc/${proxy.pid}/fd`).length;
const perTunnel = (held - baseline) / Math.max(1, tunnels.length);
console.log(`daemon RSS: idle baseline ${fmt(baseline)} KiB, with ${tunnels.length} tunnels ${fmt(held)} KiB: ${fmt(perTunnel, 2)} KiB per tunnel (target ≤ ${MAX_KIB}); ${fds} fds; ${remote}; CPU while idle ${fmt(cpuIdle, 2)} s`);

// a sample still carries bytes both ways after the idle period
const sample = tunnels.filter((_, i) => i % Math.max(1, Math.floor(tunnels.length / 100)) === 0);
let alive = 0;
await Promise.all(sample.map((s) => new Promise((resolve) => {
  s.once('data', (c) => { if (String(c).startsWith('250')) alive++; resolve(); });
  s.once('close', resolve);
  s.resume();
  s.write('NOOP\r\n');
})));
console.log(`after ${IDLE} s idle: ${alive} of ${sample.length} sampled tunnels answered NOOP`);
for (const s of tunnels) s.destroy();
let after = '';
for (let i = 0; i < 100; i++) {
  await sleep(200);
  after = proxy.status().split('\n').find((l) => l.startsWith('direct_remote_smtp')) ?? '';
  if (/connections=0\(/.test(after)) break;
}
console.log(`after closing: ${after}`);
await control.quit();
await proxy.stop();
await dest.stop();
const ok = perTunnel <= MAX_KIB && errors === 0 && tunnels.length === N && alive === sample.length && new RegExp(`connections=${N}\\(active=${N} `).test(remote) && /connections=0\(/.test(after);
finish('soak-idle-tunnels', ok, `${tunnels.length}/${N} idle tunnels held, ${fmt(perTunnel, 2)} KiB RSS per tunnel over the idle baseline (${TLS ? 'TLS' : 'plaintext'}; target ≤ ${MAX_KIB}), ${errors} errors`);
