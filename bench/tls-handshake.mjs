// The cost of one TLS connection on each side, without the rest of the proxy: a server child
// process accepts the way src/server/native.ts does (pauseOnConnect, the first read put back, a
// TLSSocket over it with one SecureContext holding the proxy's kind of certificate, ECDSA P-256,
// and ticket keys; the tls-exporter value taken), writes one line and ends; the parent connects
// as src/client/index.ts does (one client SecureContext, the last ticket resumed or not).
// Reports CPU µs per connection of the server (process.cpuUsage in the child) and of the client,
// for plaintext, TLS with full handshakes and TLS resumed, in interleaved rounds.
//
//   node bench/tls-handshake.mjs [--connections=1000] [--rounds=3] [--concurrency=8]
//
// Needs: npm run build (the certificate comes from dist/config/x509.js).
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect as tcpConnect, createServer } from 'node:net';
import { connect as tlsConnect, createSecureContext, TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { fmt, machine, median, printTable } from './lib.mjs';

const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const CONNECTIONS = Number(arg('connections', 1000));
const ROUNDS = Number(arg('rounds', 3));
const CONCURRENCY = Number(arg('concurrency', 8));
const SERVER = arg('server', null); // set only in the server's child process: plain | tls

async function runServer(mode) {
  const { generateSelfSigned } = await import('../dist/config/x509.js');
  const pair = generateSelfSigned('bench.example');
  const context = createSecureContext({ cert: pair.cert, key: pair.key.export({ type: 'pkcs8', format: 'pem' }), minVersion: 'TLSv1.2', ticketKeys: randomBytes(48) });
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, (raw) => {
    raw.on('error', () => {});
    if (mode === 'plain') {
      raw.end('MTAPROXY 1 greeting\n');
      raw.resume();
      return;
    }
    raw.once('data', (chunk) => {
      raw.pause();
      raw.unshift(chunk);
      const socket = new TLSSocket(raw, { isServer: true, secureContext: context });
      socket.on('error', () => {});
      socket.once('secure', () => {
        socket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0));
        socket.end('MTAPROXY 1 greeting\n');
      });
    });
    raw.resume();
  });
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
  let start = process.cpuUsage();
  process.on('message', (m) => {
    if (m === 'start') {
      start = process.cpuUsage();
      process.send({ started: true });
    } else process.send({ us: ((u) => u.user + u.system)(process.cpuUsage(start)) });
  });
}

async function measure(mode) {
  const child = fork(fileURLToPath(import.meta.url), [`--server=${mode === 'plain' ? 'plain' : 'tls'}`]);
  const { port } = await new Promise((resolve) => child.once('message', resolve));
  const ask = (m) => new Promise((resolve) => { child.once('message', resolve); child.send(m); });
  const context = createSecureContext({ minVersion: 'TLSv1.2' });
  let session;
  const one = () => new Promise((resolve, reject) => {
    const socket = mode === 'plain'
      ? tcpConnect({ host: '127.0.0.1', port, noDelay: true })
      : tlsConnect({ host: '127.0.0.1', port, secureContext: context, rejectUnauthorized: false, ...(mode === 'resumed' && session !== undefined ? { session } : {}) });
    if (mode !== 'plain') socket.on('session', (s) => (session = s));
    socket.once('error', reject);
    socket.on('data', () => {});
    socket.once('end', () => {
      const reused = mode !== 'plain' && socket.isSessionReused();
      socket.destroy();
      resolve(reused);
    });
  });
  for (let i = 0; i < 200; i++) await one(); // warm-up (JIT), and the ticket to resume
  await ask('start');
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  let reused = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    for (let i = 0; i < CONNECTIONS / CONCURRENCY; i++) if (await one()) reused++;
  }));
  const seconds = (performance.now() - t0) / 1000;
  const client = process.cpuUsage(client0);
  const { us } = await ask('stop');
  child.kill();
  return { serverUs: us / CONNECTIONS, clientUs: (client.user + client.system) / CONNECTIONS, rate: CONNECTIONS / seconds, reused: reused / CONNECTIONS };
}

async function main() {
  console.log(`# tls-handshake bench: ${machine()}, ${CONNECTIONS} connections x ${ROUNDS} rounds, ${CONCURRENCY} at a time`);
  const modes = ['plain', 'full', 'resumed'];
  const results = new Map(modes.map((m) => [m, []]));
  for (let r = 0; r < ROUNDS; r++) for (const m of modes) results.get(m).push(await measure(m));
  const col = (m, k) => median(results.get(m).map((x) => x[k]));
  const each = (m, k) => results.get(m).map((x) => fmt(x[k])).join(' / ');
  console.log(`\n## CPU per connection, median of ${ROUNDS} (each round in parentheses)\n`);
  printTable(['connection', 'server µs', 'client µs', 'connections/s', 'TLS resumed'], modes.map((m) => [
    m === 'plain' ? 'plaintext' : m === 'full' ? 'TLS, full handshake' : 'TLS, resumed',
    `${fmt(col(m, 'serverUs'))} (${each(m, 'serverUs')})`,
    `${fmt(col(m, 'clientUs'))} (${each(m, 'clientUs')})`,
    fmt(col(m, 'rate')),
    m === 'plain' ? '-' : `${fmt(100 * col(m, 'reused'), 1)} %`,
  ]));
}

if (SERVER !== null) void runServer(SERVER);
else main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
