// Soak (d): a destination that accepts TCP and never answers (no greeting, reads nothing) is cut
// by the tunnel idle timeout, `egress.idle_timeout` (default 5m; here --idle=2s). N tunnels are
// opened to it, the MTA side waits for a greeting that never comes; each must be closed by the
// proxy after idle_timeout (not before, not much after), with a `delivery` record whose outcome is
// "idle timeout", and the destination must see its side closed too. Stops by itself.
//   node bench/soak-blackhole.mjs [--tunnels=50] [--idle=2]
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { fmt, machine, percentile, SECRET, sleep, startProxy } from './lib.mjs';
import { finish } from './soak-lib.mjs';

const { values } = parseArgs({ options: { tunnels: { type: 'string', default: '50' }, idle: { type: 'string', default: '2' } } });
const N = Number(values.tunnels);
const IDLE_S = Number(values.idle);

console.log(`soak-blackhole: ${N} tunnels to a destination that never answers, egress.idle_timeout = ${IDLE_S}s; ${machine()}`);
const hole = { accepted: 0, closedByProxy: 0, lifetimes: [], server: createServer() };
hole.server.on('connection', (s) => {
  hole.accepted++;
  const accepted = performance.now();
  s.pause(); // never reads, never writes
  s.on('end', () => {
    hole.closedByProxy++;
    hole.lifetimes.push((performance.now() - accepted) / 1000);
  });
  s.resume(); // only to see the FIN: it never sends anything, so nothing else arrives
  s.on('error', () => {});
});
await new Promise((r) => hole.server.listen(0, '127.0.0.1', r));
const port = hole.server.address().port;
const proxy = await startProxy({ ports: [port], extra: '' });
// idle_timeout lives in [egress]: startProxy writes that table last, so append to it
const { appendFileSync } = await import('node:fs');
appendFileSync(proxy.configFile, `idle_timeout = "${IDLE_S}s"\n`);
process.kill(proxy.pid, 'SIGHUP');
while (!/reload: applied/.test(proxy.log())) await sleep(20);

const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET });
await control.declare({ key: 'hole', sourceIp: '127.0.0.2', maxConnections: N, maxMessagesPerHour: 100000, mode: 'sum' });

const lifetimes = [];
let early = 0;
let errors = 0;
await Promise.all(Array.from({ length: N }, async () => {
  try {
    const t = await openTunnel({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port }, throttle: 'hole' });
    const opened = performance.now();
    t.socket.resume();
    let got = 0;
    t.socket.on('data', (c) => (got += c.length));
    await new Promise((r) => t.socket.once('close', r));
    const life = (performance.now() - opened) / 1000;
    lifetimes.push(life);
    if (got > 0) early++;
  } catch (err) {
    errors++;
    console.error(`tunnel: ${err.message}`);
  }
}));
await sleep(300); // the destination's side: its FIN has arrived by now
const records = proxy.log().split('\n').filter((l) => /INFO delivery\(soak\): .* outcome="idle timeout"/.test(l)).length;
const status = proxy.status();
lifetimes.sort((a, b) => a - b);
const dest = hole.lifetimes.sort((a, b) => a - b);
// the destination's view is the exact one: its connection exists before the proxy arms the timer
early += dest.filter((l) => l < IDLE_S).length;
console.log(`destination side, accept to the proxy's FIN: min ${fmt(dest[0], 3)} s, p50 ${fmt(percentile(dest, 50), 3)} s, max ${fmt(dest.at(-1), 3)} s`);
console.log(`tunnels cut: ${lifetimes.length} of ${N} (errors ${errors}); lifetime after the CONNECT reply: min ${fmt(lifetimes[0], 2)} s, p50 ${fmt(percentile(lifetimes, 50), 2)} s, max ${fmt(lifetimes.at(-1), 2)} s`);
console.log(`delivery records with outcome "idle timeout": ${records}; destination saw ${hole.closedByProxy} of ${hole.accepted} connections closed by the proxy`);
console.log(status.split('\n').find((l) => l.startsWith('direct_remote_smtp')));
await control.quit();
await proxy.stop();
hole.server.close();
const ok = errors === 0 && lifetimes.length === N && early === 0 && (dest.at(-1) ?? Infinity) < IDLE_S + 1.5 && records === N && hole.closedByProxy === N && /connections=0\(/.test(status);
finish('soak-blackhole', ok, `${lifetimes.length}/${N} cut ${fmt(dest[0], 3)}–${fmt(dest.at(-1), 3)} s after the destination accepted (idle_timeout ${IDLE_S} s), ${records} "idle timeout" records, ${early} early`);
