// The bare Node PROXY v2 forwarder: the floor no Node proxy can go below. It reads a PROXY v2
// header (TCP over IPv4 or IPv6), connects to the header's destination from the header's source
// address, and pumps bytes both ways with a hand-written write/drain loop (half-close passed on).
// Nothing else: no policy, no throttle, no record, no timeouts, no metrics. bench/tunnel.mjs and
// bench/idle.mjs run it as the reference for mtaproxy's front-ends.
//
// --socks5=SOURCE: the same floor for SOCKS5 (RFC 1928) instead: the no-auth method round trip, then
// CONNECT (IPv4 or IPv6 literal) from SOURCE, the success reply (its bound address as IPv4 only: the
// bench connects from 127.0.0.2), the pump. What the protocol's extra
// round trip costs any SOCKS5 proxy, against the PROXY v2 floor.
//
//   node bench/bare-forwarder.mjs [--listen=127.0.0.1:0] [--socks5=SOURCE]    prints "listening HOST:PORT" once bound
import { connect, createServer } from 'node:net';

const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const MAX_HEADER = 16 + 216 + 1024;
const BACKPRESSURE = 128 * 1024; // as mtaproxy's tunnel: pause the reader past this much unsent

/** The header at the start of buf: { length, source, destination, port } | 'incomplete' | null (invalid). */
function parseHeader(buf) {
  if (buf.length < 16) return buf.subarray(0, 12).equals(SIGNATURE.subarray(0, Math.min(12, buf.length))) ? 'incomplete' : null;
  if (!buf.subarray(0, 12).equals(SIGNATURE) || buf[12] !== 0x21) return null; // version 2, command PROXY
  const length = 16 + buf.readUInt16BE(14);
  if (length > MAX_HEADER) return null;
  if (buf.length < length) return 'incomplete';
  if (buf[13] === 0x11 && length >= 16 + 12) {
    const ip = (at) => `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
    return { length, source: ip(16), destination: ip(20), port: buf.readUInt16BE(26) };
  }
  if (buf[13] === 0x21 && length >= 16 + 36) {
    const ip = (at) => Array.from({ length: 8 }, (_, i) => buf.readUInt16BE(at + 2 * i).toString(16)).join(':');
    return { length, source: ip(16), destination: ip(32), port: buf.readUInt16BE(50) };
  }
  return null;
}

/** Writes from `from` to `to` until `from` ends; then half-closes `to`. Calls done() once `to` is finished. */
function pump(from, to, done) {
  from.on('data', (chunk) => {
    to.write(chunk);
    if (to.writableLength >= BACKPRESSURE) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end(done));
}

/** Connects to host:port from source, then (after `connected`, if any) pumps both ways; `rest` goes first. */
function tunnel(client, host, port, source, rest, connected) {
  const remote = connect({ host, port, localAddress: source, allowHalfOpen: true, noDelay: true });
  let finished = 0;
  const close = () => {
    client.destroy();
    remote.destroy();
  };
  remote.once('connect', () => {
    connected?.(remote);
    if (rest.length > 0) remote.write(rest);
    pump(client, remote, () => ++finished === 2 && close());
    pump(remote, client, () => ++finished === 2 && close());
    client.resume();
  });
  remote.on('error', close);
  remote.on('close', close);
  client.on('close', close);
}

function serve(client) {
  let received = null;
  const onData = (chunk) => {
    received = received === null ? chunk : Buffer.concat([received, chunk]);
    const h = parseHeader(received);
    if (h === 'incomplete') return;
    client.removeListener('data', onData);
    if (h === null) return void client.destroy();
    client.pause();
    const rest = received.subarray(h.length);
    received = null;
    tunnel(client, h.destination, h.port, h.source, rest, null);
  };
  client.on('data', onData);
  client.on('error', () => client.destroy());
}

/** SOCKS5: greeting -> [5, 0]; CONNECT -> the tunnel from `source` (no checks but the format). */
function serveSocks5(client, source) {
  let received = null;
  let greeted = false;
  const onData = (chunk) => {
    received = received === null ? chunk : Buffer.concat([received, chunk]);
    if (!greeted) {
      if (received.length < 2 || received.length < 2 + received[1]) return;
      if (received[0] !== 5 || !received.subarray(2, 2 + received[1]).includes(0)) return void client.destroy();
      received = received.length > 2 + received[1] ? received.subarray(2 + received[1]) : null;
      greeted = true;
      client.write(Buffer.from([5, 0]));
      if (received === null) return;
    }
    if (received.length < 5) return;
    const atyp = received[3];
    const length = atyp === 1 ? 10 : atyp === 4 ? 22 : -1;
    if (received[0] !== 5 || received[1] !== 1 || length < 0) return void client.destroy();
    if (received.length < length) return;
    client.removeListener('data', onData);
    client.pause();
    const host = atyp === 1 ? `${received[4]}.${received[5]}.${received[6]}.${received[7]}` : Array.from({ length: 8 }, (_, i) => received.readUInt16BE(4 + 2 * i).toString(16)).join(':');
    const port = received.readUInt16BE(length - 2);
    const rest = received.subarray(length);
    received = null;
    tunnel(client, host, port, source, rest, (remote) => {
      const reply = Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
      const bound = remote.localAddress.split('.').map(Number);
      if (bound.length === 4) reply.set(bound, 4);
      reply.writeUInt16BE(remote.localPort, 8);
      client.write(reply);
    });
  };
  client.on('data', onData);
  client.on('error', () => client.destroy());
}

const socks5Source = process.argv.find((a) => a.startsWith('--socks5='))?.slice(9) ?? null;
const listen = process.argv.find((a) => a.startsWith('--listen='))?.slice(9) ?? '127.0.0.1:0';
const at = listen.lastIndexOf(':');
const server = createServer({ allowHalfOpen: true, noDelay: true }, socks5Source === null ? serve : (client) => serveSocks5(client, socks5Source));
server.on('error', (err) => {
  console.error(`bare-forwarder: ${err.message}`);
  process.exit(1);
});
server.listen({ host: listen.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(listen.slice(at + 1)), backlog: 4096 }, () => {
  const a = server.address();
  console.log(`listening ${a.address}:${a.port}`);
});
process.on('SIGTERM', () => process.exit(0));
