// The delivery record's cost in a loop: the same fields and message as a tunnel's end
// (src/egress/delivery.ts tunnelEnd), through the daemon's logger and its stdout sink into
// /dev/null: ns per record, per round (the first rounds include the JIT's warm-up).
//
//   node bench/log-record.mjs [--records=300000] [--rounds=5] [DIST]   (DIST: another build's dist/, for before/after)
import { openSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const N = Number(arg('records', 300_000));
const ROUNDS = Number(arg('rounds', 5));
const dist = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? new URL('../dist', import.meta.url).pathname;
const { createLogger, createStdoutSink } = await import(pathToFileURL(resolve(dist, 'log/logger.js')).href);
const log = createLogger(createStdoutSink(openSync('/dev/null', 'w')), false);

function record(i) {
  const who = 'proxy-v2';
  const peer = `127.0.0.1:${40000 + (i % 20000)}`;
  const local = `127.0.0.2:${30000 + (i % 30000)}`;
  const destination = '127.0.0.1:2525';
  const throttle = '127.0.0.2>127.0.0.1:2525';
  const r = { bytesUp: 1234 + (i & 7), bytesDown: 567, durationMs: 3.4567 + (i & 3), outcome: 'closed' };
  log.info(
    { mtaproxy_event: 'delivery', session: who, peer, source_ip: '127.0.0.2', destination, throttle, local, host: '127.0.0.1', bytes_up: r.bytesUp, bytes_down: r.bytesDown, duration_ms: Math.round(r.durationMs), outcome: r.outcome },
    `delivery(${who}): ${local} -> ${destination} throttle=${throttle} up=${r.bytesUp} down=${r.bytesDown} ${Math.round(r.durationMs)}ms ${r.outcome}`,
  );
}

console.log(`# log-record: ${N} delivery records per round into /dev/null, logger of ${dist}`);
for (let round = 0; round < ROUNDS; round++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) record(i);
  console.log(`round ${round + 1}: ${(Number(process.hrtime.bigint() - t0) / N).toFixed(0)} ns per record`);
}
