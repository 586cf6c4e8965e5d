// Soak (b): --attackers (default 5 000) slowloris connections against the three front-ends at
// once, from 50 loopback addresses (127.0.0.10–59, 100 each, so max_pending_handshakes_per_peer's
// default of 100 does not stop them): on native they stay silent (the TLS ClientHello never
// comes), on SOCKS5 and PROXY v2 they trickle one byte of their greeting / header every 2 s.
// Whatever the daemon closes (handshake_timeout, the caps) is reopened at once, for --seconds.
// Meanwhile a legitimate MTA (127.0.0.1) opens a new authenticated session every 100 ms and pings
// it, and an established session pings every 100 ms: their latency is the measure.
// PASS: every legitimate attempt succeeded and the attackers held ≥ 90 % of --attackers open.
//   node bench/soak-slowloris.mjs [--attackers=5000] [--seconds=30] [--max-pending=6000]
// --max-pending is the daemon's max_pending_handshakes (default config: 1000). With the default,
// 5 000 slow connections hold the whole budget and new legitimate connections are refused until
// slots free up: run with --max-pending=1000 to see it.
import { connect } from 'node:net';
import { parseArgs } from 'node:util';
import { ControlClient } from '../dist/client/index.js';
import { cpuSeconds, fmt, freePort, machine, percentile, rssKiB, SECRET, sleep, startProxy } from './lib.mjs';
import { finish } from './soak-lib.mjs';

const { values } = parseArgs({ options: { attackers: { type: 'string', default: '5000' }, seconds: { type: 'string', default: '30' }, 'max-pending': { type: 'string', default: '6000' } } });
const N = Number(values.attackers);
const SECONDS = Number(values.seconds);
const MAX_PENDING = Number(values['max-pending']);

console.log(`soak-slowloris: ${N} slow connections (native silent, SOCKS5 and PROXY v2 trickling) for ${SECONDS} s, max_pending_handshakes = ${MAX_PENDING}; ${machine()}`);
const socksPort = await freePort();
const proxyV2Port = await freePort();
const proxy = await startProxy({
  ports: [25],
  extra: `max_pending_handshakes = ${MAX_PENDING}\n[socks5]\nlisten = "127.0.0.1:${socksPort}"\nallow_unauthenticated = true\nsource_ip = "127.0.0.2"\n[proxy_v2]\nlisten = "127.0.0.1:${proxyV2Port}"\n`,
});
const ports = [proxy.port, socksPort, proxyV2Port];
const cpu0 = cpuSeconds(proxy.pid);
const stopAt = Date.now() + SECONDS * 1000;

// the legitimate MTA's session, connected before the attack
const established = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'established', secret: SECRET });

// the attackers
let open = 0;
let peakOpen = 0;
let opened = 0;
let closedByProxy = 0;
const sockets = new Set();
let stopping = false;
const KINDS = ['native (silent)', 'SOCKS5 (trickle)', 'PROXY v2 (trickle)'];
const lifetimes = [[], [], []];
const SOCKS_GREETING = Buffer.from([0x05, 0x01, 0x00]);
const PROXY_V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a2121000c', 'hex');
function attacker(i) {
  if (Date.now() > stopAt) return;
  const kind = i % 3;
  const s = connect({ host: '127.0.0.1', port: ports[kind], localAddress: `127.0.0.${10 + (i % 50)}` });
  sockets.add(s);
  let timer = null;
  let sent = 0;
  let connectedAt = 0;
  s.on('connect', () => {
    connectedAt = performance.now();
    opened++;
    open++;
    peakOpen = Math.max(peakOpen, open);
    if (kind === 0) return; // native: the server speaks first; say nothing, ever
    const bytes = kind === 1 ? SOCKS_GREETING : PROXY_V2_SIGNATURE;
    timer = setInterval(() => { if (sent < bytes.length - 1) s.write(bytes.subarray(sent, ++sent)); }, 2000); // never the last byte
  });
  s.on('data', () => {}); // the native greeting, a SOCKS reply
  s.on('error', () => {});
  s.on('close', () => {
    if (timer) clearInterval(timer);
    sockets.delete(s);
    if (stopping) return;
    if (connectedAt > 0) { open--; closedByProxy++; lifetimes[kind].push(performance.now() - connectedAt); }
    // reopen at once; after a refusal (closed within 100 ms) wait a little, not to spin
    const lived = connectedAt > 0 ? performance.now() - connectedAt : 0;
    setTimeout(() => attacker(i), lived < 100 ? 200 : 0);
  });
}
for (let i = 0; i < N; i++) {
  attacker(i);
  if (i % 500 === 499) await sleep(50);
}

const newSession = [];
const pings = [];
let failures = 0;
const failureSamples = new Set();
const statusSamples = [];
const legit = (async () => {
  let n = 0;
  while (Date.now() < stopAt) {
    const t0 = performance.now();
    try {
      const c = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: `legit-${n++}`, secret: SECRET });
      await c.ping();
      newSession.push(performance.now() - t0);
      await c.quit();
    } catch (err) {
      failures++;
      failureSamples.add(err.message.replace(/\d+/g, 'N'));
    }
    await sleep(100);
  }
})();
const steady = (async () => {
  while (Date.now() < stopAt) {
    try { pings.push(await established.ping()); } catch (err) { failures++; failureSamples.add(`established: ${err.message}`); }
    await sleep(100);
  }
})();
const sampler = (async () => {
  while (Date.now() < stopAt) {
    await sleep(5000);
    const line = proxy.status().split('\n').find((l) => l.startsWith('handshakes:')) ?? '';
    statusSamples.push(line);
    console.log(`  t=${fmt((SECONDS * 1000 - (stopAt - Date.now())) / 1000)} s: attackers open ${open} (peak ${peakOpen}), daemon ${line}, legit sessions ${newSession.length} ok / ${failures} failed`);
  }
})();
await Promise.all([legit, steady, sampler]);
const cpu = cpuSeconds(proxy.pid) - cpu0;
const rss = rssKiB(proxy.pid);
stopping = true;
for (const s of sockets) s.destroy();
await established.quit().catch(() => {});
const lastHandshakes = statusSamples.at(-1) ?? '';
await proxy.stop();

newSession.sort((a, b) => a - b);
pings.sort((a, b) => a - b);
console.log(`attackers: ${opened} connections opened in all, ${peakOpen} open at the peak, ${closedByProxy} closed by the daemon (handshake_timeout, caps) and reopened`);
for (const [k, l] of lifetimes.entries()) {
  l.sort((a, b) => a - b);
  console.log(`  ${KINDS[k]}: ${l.length} closed by the daemon, held p50 ${fmt(percentile(l, 50) / 1000, 2)} s, max ${fmt((l.at(-1) ?? NaN) / 1000, 2)} s`);
}
console.log(`legitimate new sessions (TLS + handshake + PING): ${newSession.length} ok, ${failures} failed${failureSamples.size ? ` (${[...failureSamples].slice(0, 3).join('; ')})` : ''}; p50 ${fmt(percentile(newSession, 50), 1)} ms, p99 ${fmt(percentile(newSession, 99), 1)} ms, max ${fmt(newSession.at(-1), 1)} ms`);
console.log(`established session PING: ${pings.length} answered, p50 ${fmt(percentile(pings, 50), 2)} ms, p99 ${fmt(percentile(pings, 99), 2)} ms, max ${fmt(pings.at(-1), 2)} ms`);
console.log(`daemon: CPU ${fmt(cpu, 1)} s over ${SECONDS} s, RSS ${fmt(rss)} KiB; last ${lastHandshakes}`);
const ok = failures === 0 && newSession.length > 0 && peakOpen >= 0.9 * N;
finish('soak-slowloris', ok, `${peakOpen} slow connections held; legitimate sessions ${newSession.length} ok / ${failures} failed, p99 ${fmt(percentile(newSession, 99), 1)} ms; established PING p99 ${fmt(percentile(pings, 99), 2)} ms`);
