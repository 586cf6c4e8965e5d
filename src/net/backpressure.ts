// An MTA that does not read its replies is not read either: its socket is paused while the
// replies it has not taken exceed OUTPUT_HIGH_WATER, and read again once they drain (smtp-mode
// links and relay sessions; control sessions bound their output the same way).
import type { Socket } from 'node:net';

export const OUTPUT_HIGH_WATER = 64 * 1024;

export class OutputGate {
  #waiting = false;

  /** True while `socket`'s unsent output is over the mark: it is paused, and `resume` runs once it drains. */
  full(socket: Socket, resume: () => void): boolean {
    if (socket.writableLength <= OUTPUT_HIGH_WATER) return false;
    socket.pause();
    if (!this.#waiting) {
      this.#waiting = true;
      socket.once('drain', () => {
        this.#waiting = false;
        resume();
      });
    }
    return true;
  }
}
