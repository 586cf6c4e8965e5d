// Soak (a): --sighups SIGHUPs (default 1000, one every --every ms) while --deliveries tunnels
// (default 200) stream a message each, slowly enough that all of them are open through the
// reloads. Every reload changes the config (allow_from gains or loses an extra entry), so each
// one that runs really applies. Zero dropped: every delivery must complete, the destination's
// SHA-256 of each body must equal the sender's, and the daemon must log exactly one `delivery`
// record for each (matched by the tunnel's local address). Stops by itself.
//   node bench/soak-reload.mjs [--sighups=1000] [--every=10] [--deliveries=200] [--kib=256]
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ControlClient, openTunnel } from '../dist/client/index.js';
import { cpuSeconds, fmt, machine, rssKiB, SECRET, sleep, startProxy } from './lib.mjs';
import { finish, hashingSink, messageBody, sendMessage } from './soak-lib.mjs';

const { values } = parseArgs({ options: { sighups: { type: 'string', default: '1000' }, every: { type: 'string', default: '10' }, deliveries: { type: 'string', default: '200' }, kib: { type: 'string', default: '256' } } });
const SIGHUPS = Number(values.sighups);
const EVERY = Number(values.every);
const N = Number(values.deliveries);
const KIB = Number(values.kib);

console.log(`soak-reload: ${SIGHUPS} SIGHUPs every ${EVERY} ms while ${N} deliveries of ${KIB} KiB stream; ${machine()}`);
const sink = await hashingSink();
const proxy = await startProxy({ ports: [sink.port], extra: 'max_pending_handshakes_per_peer = 1000' });
const base = readFileSync(proxy.configFile, 'utf8');
const variants = [base, base.replace('allow_from = ["127.0.0.0/8"]', 'allow_from = ["127.0.0.0/8", "192.0.2.1"]')];
const control = await ControlClient.connect({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET });
await control.declare({ key: 'soak', sourceIp: '127.0.0.2', maxConnections: N, maxMessagesPerHour: 1_000_000, mode: 'sum' });
const cpu0 = cpuSeconds(proxy.pid);

// the reloads: start once every delivery is streaming
let sent = 0;
let streaming = 0;
const reloads = (async () => {
  while (streaming < N) await sleep(5);
  const t0 = performance.now();
  for (; sent < SIGHUPS; sent++) {
    // atomically, as an editor or a config manager should: a reload reading a half-written file rejects it
    writeFileSync(`${proxy.configFile}.new`, variants[(sent + 1) % 2]);
    renameSync(`${proxy.configFile}.new`, proxy.configFile);
    process.kill(proxy.pid, 'SIGHUP');
    await sleep(EVERY);
  }
  return (performance.now() - t0) / 1000;
})();

const results = await Promise.all(Array.from({ length: N }, async (_, i) => {
  const body = messageBody(KIB * 1024, i);
  try {
    const t = await openTunnel({ host: '127.0.0.1', port: proxy.port, name: 'soak', secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port: sink.port }, throttle: 'soak', waitMs: 60_000 });
    streaming++;
    // spread the body over the whole reload period
    const intact = await sendMessage(t.socket, body, { chunks: 64, pauseMs: Math.ceil((SIGHUPS * EVERY * 1.1) / 64) });
    await new Promise((r) => (t.socket.closed ? r() : t.socket.once('close', r)));
    return { ok: true, intact, local: t.local };
  } catch (err) {
    streaming++;
    return { ok: false, error: err.message };
  }
}));
const reloadSeconds = await reloads;
await sleep(500); // the last records
const cpu = cpuSeconds(proxy.pid) - cpu0;
const log = proxy.log();
const applied = (log.match(/reload: applied/g) ?? []).length;
const rejected = (log.match(/reload rejected/g) ?? []).length;
for (const l of log.split('\n').filter((x) => /reload rejected/.test(x)).slice(0, 3)) console.log(`  ${l}`);
const recordsFor = (local) => log.split('\n').filter((l) => l.includes(` INFO delivery(soak): ${local} -> `)).length;
const done = results.filter((r) => r.ok);
const intact = done.filter((r) => r.intact);
const oneRecord = done.filter((r) => recordsFor(r.local) === 1);
const failures = results.filter((r) => !r.ok);
console.log(`SIGHUPs sent: ${sent} in ${fmt(reloadSeconds, 1)} s; reloads applied: ${applied} (SIGHUPs arriving during a reload share it), rejected: ${rejected}`);
console.log(`deliveries: ${done.length}/${N} completed, ${intact.length} with the destination's SHA-256 equal to the sender's, ${oneRecord.length} with exactly one delivery record; sink saw ${sink.connections} connections, ${sink.messages} messages`);
for (const f of failures.slice(0, 5)) console.log(`  failed: ${f.error}`);
console.log(`proxy CPU ${fmt(cpu, 2)} s, RSS ${fmt(rssKiB(proxy.pid))} KiB; control session still answers: ping ${fmt(await control.ping(), 2)} ms`);
await control.quit();
await proxy.stop();
await sink.close();
const ok = sent === SIGHUPS && applied > 0 && rejected === 0 && done.length === N && intact.length === N && oneRecord.length === N;
finish('soak-reload', ok, `${SIGHUPS} SIGHUPs (${applied} reloads applied) during ${N} deliveries: ${N - intact.length} dropped or corrupted, ${N - oneRecord.length} without exactly one record`);
