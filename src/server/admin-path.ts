// Where the admin socket goes, shared by the daemon (which binds it) and `mtaproxy reload|status`
// (which look for it in the same order). An admin_socket left at its default, /run/mtaproxy/admin.sock,
// also works outside systemd (whose RuntimeDirectory= makes /run/mtaproxy): the daemon creates
// the directory when it may, else uses $XDG_RUNTIME_DIR/mtaproxy/admin.sock, else runs without one.
import { join } from 'node:path';
import { DEFAULT_ADMIN_SOCKET } from '../config/parse.js';
import type { Endpoint, NoUnixSocketError } from './listeners.js';

/** The default admin socket is `admin_socket` unset, or set to the default path itself. */
export function isDefaultAdminSocket(path: string): boolean {
  return path === DEFAULT_ADMIN_SOCKET;
}

function xdgRuntimeDir(env: NodeJS.ProcessEnv): string | null {
  const dir = env.XDG_RUNTIME_DIR;
  return dir !== undefined && dir.startsWith('/') ? dir : null;
}

/** The places of the default admin socket, in the order the daemon tries them. */
export function defaultAdminSockets(env: NodeJS.ProcessEnv = process.env): string[] {
  const xdg = xdgRuntimeDir(env);
  const paths = [DEFAULT_ADMIN_SOCKET];
  if (xdg !== null) {
    const path = join(xdg, 'mtaproxy', 'admin.sock');
    if (!paths.includes(path)) paths.push(path);
  }
  return paths;
}

/** The admin endpoint for a configured admin_socket: with fallbacks when it is the default. */
export function adminEndpoint(adminSocket: string, env: NodeJS.ProcessEnv = process.env): Endpoint {
  if (!isDefaultAdminSocket(adminSocket)) return { kind: 'unix', frontEnd: 'admin', path: adminSocket };
  const [path = DEFAULT_ADMIN_SOCKET, ...fallbacks] = defaultAdminSockets(env);
  return { kind: 'unix', frontEnd: 'admin', path, fallbacks };
}

/** What the daemon logs when the default admin socket could be created nowhere. */
export function noAdminSocketWarning(err: NoUnixSocketError, env: NodeJS.ProcessEnv = process.env): string {
  const tried = [...err.tried];
  if (xdgRuntimeDir(env) === null) tried.push('XDG_RUNTIME_DIR is not set, so $XDG_RUNTIME_DIR/mtaproxy/admin.sock was not tried');
  return (
    `running without an admin socket: "mtaproxy reload" and "mtaproxy status" will not work (SIGHUP still reloads). ` +
    `Tried: ${tried.join('; ')}. Set admin_socket to a path in a directory this user may write, or run under systemd (RuntimeDirectory=mtaproxy)`
  );
}

/** Where `mtaproxy reload|status` look for the daemon, in order. */
export function adminSocketsToTry(configured: string, env: NodeJS.ProcessEnv = process.env): string[] {
  // a non-default path first: the file may name a new admin_socket the running daemon has not
  // opened yet, so the default places are tried after it
  const paths = isDefaultAdminSocket(configured) ? [] : [configured];
  for (const p of defaultAdminSockets(env)) if (!paths.includes(p)) paths.push(p);
  return paths;
}
