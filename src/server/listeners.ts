// Listening endpoints: bound from the config or adopted from systemd, reconciled on reload so
// that a new address is bound before anything is committed (a failure rejects the reload).
import { chmodSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { ListenAddress } from '../config/parse.js';
import type { FrontEnd } from '../systemd/activation.js';

export type Endpoint =
  | { kind: 'tcp'; frontEnd: FrontEnd; address: ListenAddress }
  | { kind: 'unix'; frontEnd: FrontEnd; path: string }
  | { kind: 'fd'; frontEnd: FrontEnd; fd: number; name: string };

export function endpointKey(e: Endpoint): string {
  switch (e.kind) {
    case 'tcp':
      return `${e.frontEnd} tcp ${e.address.host.includes(':') ? `[${e.address.host}]` : e.address.host}:${e.address.port}`;
    case 'unix':
      return `${e.frontEnd} unix ${e.path}`;
    case 'fd':
      return `${e.frontEnd} fd ${e.fd} (${e.name})`;
  }
}

export interface Listening {
  readonly endpoint: Endpoint;
  readonly server: Server;
  /** "127.0.0.1:807", "/run/mtaproxy/admin.sock": the actual address, after binding */
  readonly bound: string;
}

function describe(server: Server): string {
  const a = server.address();
  if (a === null) return '?';
  if (typeof a === 'string') return a;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

/** Is something answering on this Unix socket? (so a stale file from a crash can be removed) */
function unixSocketInUse(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Binds one endpoint; rejects with an operator-readable Error. */
export async function listen(endpoint: Endpoint, onConnection: (socket: Socket) => void): Promise<Listening> {
  // pauseOnConnect: not a byte is read before allow_from has been checked. allowHalfOpen: a tunnel
  // passes the MTA's FIN on and still returns the destination's last reply (QUIT -> 221).
  // noDelay: small writes (a CONNECT reply, then the MX greeting; grants) must not wait for the
  // peer's delayed ACK (Nagle) — that stalled every tunnel by ~40 ms (bench/tunnel.mjs).
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, onConnection);
  if (endpoint.kind === 'unix') {
    if (await unixSocketInUse(endpoint.path)) throw new Error(`${endpoint.path} is in use by another process (is mtaproxy already running?)`);
    try {
      unlinkSync(endpoint.path);
    } catch {
      // no stale socket file
    }
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const what = endpointKey(endpoint);
      const hint =
        err.code === 'EADDRINUSE' ? 'address already in use' :
        err.code === 'EACCES' ? 'permission denied (ports below 1024 need root or socket activation)' :
        err.code === 'EADDRNOTAVAIL' ? 'address not available on this host' :
        err.message;
      reject(new Error(`cannot listen on ${what}: ${hint}`));
    });
    if (endpoint.kind === 'tcp') {
      // ipv6Only: "[::]:807" must not also claim IPv4, or "0.0.0.0:807" beside it would fail
      server.listen({ host: endpoint.address.host, port: endpoint.address.port, ipv6Only: endpoint.address.host.includes(':'), backlog: 1024 }, resolve);
    } else if (endpoint.kind === 'unix') {
      server.listen({ path: endpoint.path }, resolve);
    } else {
      server.listen({ fd: endpoint.fd }, resolve);
    }
  });
  server.removeAllListeners('error');
  server.on('error', () => {}); // accept errors (EMFILE…) are per connection; keep listening
  if (endpoint.kind === 'unix') chmodSync(endpoint.path, 0o600);
  return { endpoint, server, bound: endpoint.kind === 'unix' ? endpoint.path : describe(server) };
}

/** Stops accepting; connections already accepted are not affected. */
export function closeListening(l: Listening): void {
  l.server.close();
  if (l.endpoint.kind === 'unix') {
    try {
      unlinkSync(l.endpoint.path);
    } catch {
      // already gone
    }
  }
}
