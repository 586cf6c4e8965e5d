// Sessions that closed leave the throttle manager a few at a time: when 80 MTAs with 1024
// waiting ACQUIREs each go away at once (a network blip), doing all their leaves in one turn of
// the event loop held it for a quarter of a second (bench/stalls-daemon.mjs). Each leave stays
// whole (its limits are recomputed at once); only the next one waits for the next turn.
import type { ThrottleService } from '../throttle/service.js';

/** Time one turn may spend on leaves before the rest wait for the next turn. */
export const LEAVE_BUDGET_MS = 10;

export class LeaveQueue {
  readonly #throttle: ThrottleService;
  readonly #now: () => number;
  #queue: string[] = [];
  #scheduled = false;

  constructor(throttle: ThrottleService, now: () => number = () => performance.now()) {
    this.#throttle = throttle;
    this.#now = now;
  }

  /** Sessions waiting to leave. */
  get length(): number {
    return this.#queue.length;
  }

  /** The first leave of a turn runs at once; later ones in the same turn are queued. */
  leave(session: string): void {
    if (!this.#scheduled && this.#queue.length === 0) {
      this.#throttle.leave(session);
      this.#schedule(); // a burst in this same turn goes to the queue
      return;
    }
    this.#queue.push(session);
  }

  /**
   * Runs this session's leave now if it is queued: a replacing session with the same name must
   * not declare while the old declaration still counts (sum mode would briefly double the limit).
   */
  now(session: string): void {
    const i = this.#queue.indexOf(session);
    if (i === -1) return;
    this.#queue.splice(i, 1);
    this.#throttle.leave(session);
  }

  /** Runs every queued leave now (shutdown). */
  flush(): void {
    for (const s of this.#queue.splice(0)) this.#throttle.leave(s);
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.#run());
  }

  #run(): void {
    this.#scheduled = false;
    const until = this.#now() + LEAVE_BUDGET_MS;
    while (this.#queue.length > 0 && this.#now() < until) this.#throttle.leave(this.#queue.shift() as string);
    if (this.#queue.length > 0) this.#schedule();
  }
}
