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
