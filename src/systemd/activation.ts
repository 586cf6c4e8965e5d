// Socket activation (sd_listen_fds(3)): systemd passes listening sockets as fds 3.. and names
// them with FileDescriptorName= in the .socket unit, so the daemon needs no privilege to bind 807.

export const SD_LISTEN_FDS_START = 3;

/**
 * The front-ends a passed socket can serve. Without FileDescriptorName= systemd names a socket
 * after its unit ("mtaproxy.socket"), and "unknown" when LISTEN_FDNAMES is missing altogether:
 * both mean the native protocol.
 */
export type FrontEnd = 'native' | 'admin' | 'socks5' | 'proxy-v2' | 'metrics' | 'relay-smtp' | 'relay-lmtp';

export interface PassedSocket {
  readonly fd: number;
  readonly name: string;
  readonly frontEnd: FrontEnd;
}

export type Activation = { ok: true; sockets: PassedSocket[] } | { ok: false; error: string } | null;

const FRONT_ENDS: Readonly<Record<string, FrontEnd>> = { native: 'native', unknown: 'native', admin: 'admin', socks5: 'socks5', 'proxy-v2': 'proxy-v2', metrics: 'metrics', 'relay-smtp': 'relay-smtp', 'relay-lmtp': 'relay-lmtp' };

/** Reads LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES. null: not socket-activated (bind from config). */
export function parseActivation(env: NodeJS.ProcessEnv, pid: number): Activation {
  if (env.LISTEN_FDS === undefined) return null;
  if (env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) !== pid) return null; // meant for another process
  const count = Number(env.LISTEN_FDS);
  if (!Number.isInteger(count) || count < 0 || count > 64) return { ok: false, error: `LISTEN_FDS="${env.LISTEN_FDS}" is not a count` };
  if (count === 0) return null; // nothing passed: bind from the config
  const names = env.LISTEN_FDNAMES === undefined ? [] : env.LISTEN_FDNAMES.split(':');
  if (env.LISTEN_FDNAMES !== undefined && names.length !== count) {
    return { ok: false, error: `LISTEN_FDNAMES names ${names.length} sockets but LISTEN_FDS=${count}` };
  }
  const sockets: PassedSocket[] = [];
  for (let i = 0; i < count; i++) {
    const name = names[i] ?? 'unknown';
    const frontEnd = FRONT_ENDS[name] ?? (name.endsWith('.socket') ? 'native' : undefined);
    if (frontEnd === undefined) {
      return { ok: false, error: `socket ${i + SD_LISTEN_FDS_START} has FileDescriptorName=${name}; this version serves: native, socks5, proxy-v2, admin, metrics, relay-smtp, relay-lmtp` };
    }
    sockets.push({ fd: SD_LISTEN_FDS_START + i, name, frontEnd });
  }
  return { ok: true, sockets };
}

/** sd_listen_fds(unset_environment=1): children must not think the sockets are theirs. */
export function forgetActivation(env: NodeJS.ProcessEnv): void {
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
}
