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
 * socket it is handed; each hidden class a socket passes through while those sites see it is one
 * more shape there. A socket that got OWNER only after its first listeners went through two
 * classes at those sites, and with the accepted and the outbound sockets, each before and after,
 * they saw five or more: megamorphic (`--log-ic`), a generic lookup at every call. A bare Node
 * forwarder's sites see two.
 */
export function adopt(socket: Socket): void {
  const s = socket as OwnedSocket;
  if (!Object.prototype.hasOwnProperty.call(s, OWNER)) s[OWNER] = undefined;
}
