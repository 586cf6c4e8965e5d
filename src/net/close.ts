// Closing a connection after a last message: the message is flushed if the peer reads it, but a
// peer that never reads (its window full of our unread output) must not keep the socket, its
// descriptor and megabytes of kernel buffer forever.
import type { Socket } from 'node:net';

/** How long a last message gets to leave before the connection is destroyed anyway. */
export const CLOSE_GRACE_MS = 2000;

/** Ends the socket once what was written is flushed, or destroys it after CLOSE_GRACE_MS. */
export function closeSoon(socket: Socket, graceMs = CLOSE_GRACE_MS): void {
  socket.destroySoon();
  if (socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), graceMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}
