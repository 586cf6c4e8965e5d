// What a connect "from" a source address costs as TIME_WAIT sockets pile up on that address.
// Node connects from a source by bind(2) with port 0 before connect(2) (net.connect's
// localAddress): the kernel picks the port at bind time, for every destination at once, scanning
// the ephemeral range for a port that no socket on the address holds (TIME_WAIT ones included).
// With a crowded range that scan is the largest cost of a session, on every path that binds: the
// bench/tunnel.mjs runs whose bare forwarder "cost" 500-1,000 µs per session instead of ~220
// were runs after others that had left TIME_WAIT sockets on 127.0.0.2. The peer measured beside
// it: a connect without a bind (the kernel picks the port at connect time, per destination), the
// cost IP_BIND_ADDRESS_NO_PORT gives a bound socket (HAProxy sets it; Node has no way to).
//
//   node bench/bind-scan.mjs [--source=127.0.0.9] [--steps=0,5000,10000,20000,25000] [--connects=1000]
//
// The source must be a loopback address no other bench uses (its TIME_WAIT sockets stay 60 s).
// Each step first adds TIME_WAIT sockets on the source (connections from it that it closes
// first), then times --connects connects from it (bound, as Node does) and as many without a
// bind, each to a local listener that closes first (no TIME_WAIT of the measured ones on the
// source). CPU is this process's (user + system: the syscalls are its own).
import { connect, createServer } from 'node:net';
import { cpuUsage } from 'node:process';
import { readFileSync } from 'node:fs';
import { fmt, printTable, timeWaitOn } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const SOURCE = arg('source', '127.0.0.9');
const STEPS = arg('steps', '0,5000,10000,20000,25000').split(',').map(Number);
const CONNECTS = Number(arg('connects', 1000));

function listen(closeFirst) {
  return new Promise((resolve) => {
    const server = createServer((s) => {
      s.on('error', () => {});
      if (closeFirst) s.end(); // the listener's side takes the TIME_WAIT
      else s.on('end', () => s.end()); // the connecting side closes first: its TIME_WAIT
    });
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

/** one connection; resolves once it is closed (both FINs exchanged) */
function once(port, localAddress, closeFirst) {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress });
    s.on('error', reject);
    s.on('connect', () => {
      if (closeFirst) s.end();
    });
    s.on('end', () => s.end());
    s.on('close', resolve);
  });
}

async function fill(port, target) {
  // 8 at a time: fast, and few enough that the range does not run out while they are open
  // (/proc/net/tcp is read once per step: with tens of thousands of lines it is slow itself)
  for (let missing = target - timeWaitOn(SOURCE); missing > 0; missing -= 8) await Promise.all(Array.from({ length: 8 }, () => once(port, SOURCE, true)));
}

async function timed(port, localAddress) {
  const c0 = cpuUsage();
  for (let i = 0; i < CONNECTS; i++) await once(port, localAddress, false);
  const c = cpuUsage(c0);
  return (c.user + c.system) / CONNECTS;
}

const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'latin1').trim().split(/\s+/).map(Number);
const sink = await listen(false);
const measured = await listen(true);
const start = timeWaitOn(SOURCE);
console.log(`# bind-scan: connects to 127.0.0.1 from ${SOURCE}, ${CONNECTS} per cell; ephemeral range ${lo}-${hi} (${hi - lo + 1} ports); ${start} TIME_WAIT sockets on ${SOURCE} at the start`);
// the JIT's first connects are no cell's: warm both kinds up on a port the source has free
await timed(measured.address().port, SOURCE);
await timed(measured.address().port, undefined);
const rows = [];
for (const step of STEPS) {
  await fill(sink.address().port, step);
  const tw = timeWaitOn(SOURCE);
  const bound = await timed(measured.address().port, SOURCE);
  const unbound = await timed(measured.address().port, undefined);
  rows.push([fmt(tw), fmt(bound, 1), fmt(unbound, 1), `${fmt(bound / unbound, 2)}x`]);
}
printTable([`TIME_WAIT on ${SOURCE}`, 'CPU µs per connect, from the source (bind port 0, as Node)', 'CPU µs per connect, no bind (the port picked at connect)', 'bound vs not'], rows);
sink.close();
measured.close();
