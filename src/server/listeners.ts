// Listening endpoints: bound from the config or adopted from systemd, reconciled on reload so
// that a new address is bound before anything is committed (a failure rejects the reload).
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { userInfo } from 'node:os';
import { dirname } from 'node:path';
import { isLoopbackAddress, type ListenAddress } from '../config/parse.js';
import type { FrontEnd } from '../systemd/activation.js';

export type Endpoint =
  | { kind: 'tcp'; frontEnd: FrontEnd; address: ListenAddress }
  /**
   * `fallbacks` is set only for the admin socket left at its default: then each directory is
   * created (0700) when missing, the fallbacks are tried in turn after `path`, and if none can be
   * bound listen() rejects with NoUnixSocketError (the daemon runs without an admin socket).
   * Without it, `path` is all there is and a failure is an error naming the cause.
   */
  | { kind: 'unix'; frontEnd: FrontEnd; path: string; fallbacks?: readonly string[] }
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

/** The default admin socket could be created at none of its places; the daemon runs without one. */
export class NoUnixSocketError extends Error {
  /** "PATH: why", one per place tried */
  readonly tried: readonly string[];
  constructor(tried: readonly string[]) {
    super(`no admin socket could be created (${tried.join('; ')})`);
    this.tried = tried;
  }
}

/** A reason one Unix socket path cannot be bound (for the default admin socket: try the next). */
class UnixPathError extends Error {}

function whoAmI(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

function unixHint(err: NodeJS.ErrnoException, path: string): string {
  const dir = dirname(path);
  switch (err.code) {
    case 'ENOENT':
      return `directory ${dir} does not exist`;
    case 'EACCES':
    case 'EPERM': {
      // libuv reports a bind() ENOENT as EACCES (as on Windows): look at the directory itself
      let code: string | undefined;
      try {
        if (!statSync(dir).isDirectory()) code = 'ENOTDIR';
      } catch (e) {
        code = (e as NodeJS.ErrnoException).code;
      }
      if (code === 'ENOENT') return `directory ${dir} does not exist`;
      if (code === 'ENOTDIR') return `${dir} is not a directory`;
      return `no permission to create a socket in ${dir} (running as ${whoAmI()})`;
    }
    case 'EADDRINUSE':
      return `${path} already exists and could not be removed`;
    case 'ENOTDIR':
      return `${dir} is not a directory`;
    case 'EROFS':
      return `${dir} is on a read-only file system`;
    case 'ENAMETOOLONG':
      return 'the path is too long for a Unix socket (at most 107 bytes)';
    default:
      return err.message;
  }
}

/**
 * Binds `path`, never more than 0600 at any moment: the umask is 0177 just around listen(), which
 * binds a path synchronously; the chmod after it is a second guard. A stale socket file nobody
 * answers on is replaced; anything else at the path is left alone.
 */
async function bindUnix(server: Server, path: string, makeDirectory: boolean): Promise<void> {
  if (makeDirectory) {
    try {
      // 0700: only the daemon's user can even reach the socket (systemd's RuntimeDirectory= adopts it)
      mkdirSync(dirname(path), { mode: 0o700 });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code !== 'EEXIST') {
        const why = e.code === 'EACCES' || e.code === 'EPERM' ? `permission denied (running as ${whoAmI()})` : e.code === 'ENOENT' ? `${dirname(dirname(path))} does not exist` : e.message;
        throw new UnixPathError(`cannot create directory ${dirname(path)}: ${why}`);
      }
    }
  }
  if (await unixSocketInUse(path)) throw new Error(`${path} is in use by another process (is mtaproxy already running?)`);
  let existing;
  try {
    existing = lstatSync(path);
  } catch {
    existing = null; // nothing there (or not even the directory: bind says which)
  }
  if (existing !== null && !existing.isSocket()) throw new UnixPathError(`${path} exists and is not a socket (not removed)`);
  if (existing !== null) {
    try {
      unlinkSync(path);
    } catch {
      // bind reports EADDRINUSE
    }
  }
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => reject(new UnixPathError(unixHint(err, path)));
    server.once('error', onError);
    const umask = process.umask(0o177);
    try {
      server.listen({ path }, () => {
        server.removeListener('error', onError);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
  chmodSync(path, 0o600);
}

/** Binds one endpoint; rejects with an operator-readable Error (NoUnixSocketError: see Endpoint). */
export async function listen(endpoint: Endpoint, onConnection: (socket: Socket) => void): Promise<Listening> {
  // pauseOnConnect: not a byte is read before allow_from has been checked. allowHalfOpen: a tunnel
  // passes the MTA's FIN on and still returns the destination's last reply (QUIT -> 221).
  // noDelay: small writes (a CONNECT reply, then the MX greeting; grants) must not wait for the
  // peer's delayed ACK (Nagle) — that stalled every tunnel by ~40 ms (bench/tunnel.mjs).
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, onConnection);
  if (endpoint.kind === 'unix') {
    const fallbacks = endpoint.fallbacks;
    const paths = fallbacks === undefined ? [endpoint.path] : [endpoint.path, ...fallbacks];
    const tried: string[] = [];
    for (const path of paths) {
      try {
        await bindUnix(server, path, fallbacks !== undefined);
      } catch (err) {
        if (!(err instanceof UnixPathError)) throw err;
        if (fallbacks === undefined) throw new Error(`cannot listen on ${endpointKey(endpoint)}: ${err.message}`);
        tried.push(`${path}: ${err.message}`);
        continue;
      }
      server.on('error', () => {}); // accept errors (EMFILE…) are per connection; keep listening
      return { endpoint, server, bound: path };
    }
    throw new NoUnixSocketError(tried);
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
    } else {
      server.listen({ fd: endpoint.fd }, resolve);
    }
  });
  server.removeAllListeners('error');
  server.on('error', () => {}); // accept errors (EMFILE…) are per connection; keep listening
  return { endpoint, server, bound: describe(server) };
}

/** Stops accepting; connections already accepted are not affected. */
export function closeListening(l: Listening): void {
  l.server.close();
  if (l.endpoint.kind === 'unix') {
    try {
      unlinkSync(l.bound); // where it was bound: the default admin socket may have fallen back
    } catch {
      // already gone
    }
  }
}

/** A native listener that serves plain text (tls = false) on an address that is not loopback. */
export interface PlaintextListenerWarning {
  fields: { mtaproxy_event: 'plaintext_listener'; front_end: 'native'; address: string; fd?: number; fd_name?: string };
  message: string;
}

const PLAINTEXT_RISK =
  'control sessions and deliveries cross the network in plain text (readable, and a delivery can be hijacked after the handshake)';

/**
 * One warning per native TCP listener whose bound address is not loopback (a wildcard included),
 * for a daemon with tls = false. Judged by the address the socket is bound to, not by `listen`:
 * under socket activation the sockets come from systemd and `listen` is ignored. A Unix socket
 * passed as native is local: no warning.
 */
export function plaintextListenerWarnings(listening: Iterable<Listening>): PlaintextListenerWarning[] {
  const warnings: PlaintextListenerWarning[] = [];
  for (const l of listening) {
    if (l.endpoint.frontEnd !== 'native') continue;
    const a = l.server.address();
    if (a === null || typeof a === 'string' || isLoopbackAddress(a.address)) continue;
    if (l.endpoint.kind === 'fd') {
      const { fd, name } = l.endpoint;
      warnings.push({
        fields: { mtaproxy_event: 'plaintext_listener', front_end: 'native', address: l.bound, fd, fd_name: name },
        message: `listener: tls = false and native socket ${fd} (${name}) passed by systemd is bound to ${l.bound}, not a loopback address: ${PLAINTEXT_RISK}; remove tls = false, or bind the socket unit's ListenStream= to a loopback address, unless this network is trusted`,
      });
    } else {
      warnings.push({
        fields: { mtaproxy_event: 'plaintext_listener', front_end: 'native', address: l.bound },
        message: `listener: tls = false and native listener ${l.bound} is not a loopback address: ${PLAINTEXT_RISK}; remove tls = false, or listen on a loopback address, unless this network is trusted`,
      });
    }
  }
  return warnings;
}
