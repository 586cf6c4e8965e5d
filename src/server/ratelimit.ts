/**
 * Keeps refused-connection logging useful under a flood: the first refusal from an address is
 * logged at once, later ones are counted and summarized at most once per interval.
 */
export class RefusalLog {
  readonly #intervalMs: number;
  readonly #maxTracked: number;
  readonly #seen = new Map<string, { lastLogged: number; suppressed: number }>();

  constructor(intervalMs = 10_000, maxTracked = 10_000) {
    this.#intervalMs = intervalMs;
    this.#maxTracked = maxTracked;
  }

  /** Returns how many refusals to report now (this one included), or 0 to stay quiet. */
  record(address: string, now: number): number {
    const entry = this.#seen.get(address);
    if (entry === undefined || now - entry.lastLogged >= this.#intervalMs) {
      const count = (entry?.suppressed ?? 0) + 1;
      if (entry === undefined && this.#seen.size >= this.#maxTracked) this.#seen.clear(); // bounded memory
      this.#seen.set(address, { lastLogged: now, suppressed: 0 });
      return count;
    }
    entry.suppressed++;
    return 0;
  }
}
