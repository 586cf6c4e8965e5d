// The one property the proxy adds to a socket: whoever handles it at the moment (a front-end's
// handshake, a delivery being opened, a tunnel), for listeners that are module functions shared
// by every connection (`this` is the socket) instead of closures per connection. One symbol for
// all of them, so that every socket takes the same one extra hidden class (a property per
// stage would give Node's own socket code a handful of shapes to look its fields up in).
import type { Socket } from 'node:net';

export const OWNER = Symbol('mtaproxy.owner');

export interface OwnedSocket extends Socket {
  [OWNER]?: object | undefined;
}

/**
 * Gives a new socket its OWNER property now, before any listener is added to it. Node's stream
 * and event code (`on`, `emit`, `read`, the `_readableState` getters…) looks fields up on every
 * socket it is handed, and each hidden class a socket passes through while those sites see it is
 * one more shape for them. A socket that got OWNER after its first listeners showed them one
 * class more; past four, a site is megamorphic (a generic lookup at every call). `--log-ic` over
 * a PROXY v2 run: 229 megamorphic sites in the daemon before, 196 with this (a bare Node
 * forwarder, whose sockets get no property of its own: 105).
 */
export function adopt(socket: Socket): void {
  const s = socket as OwnedSocket;
  if (!Object.prototype.hasOwnProperty.call(s, OWNER)) s[OWNER] = undefined;
}
