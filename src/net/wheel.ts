// One timer for many deadlines: entries land in buckets of `resolutionMs`, and a single unref'd
// interval runs only while some are set. SMTP timeouts are seconds to minutes, so a deadline that
// fires up to one resolution late is fine, and thousands of connections cost one timer.

export interface WheelTimer {
  cancel(): void;
}

/** An entry is its own handle: cancel() is a method, not a closure per entry. */
class Entry implements WheelTimer {
  readonly fn: () => void;
  readonly bucket: number;
  readonly wheel: TimerWheel;
  live = true;
  constructor(fn: () => void, bucket: number, wheel: TimerWheel) {
    this.fn = fn;
    this.bucket = bucket;
    this.wheel = wheel;
  }
  cancel(): void {
    if (!this.live) return;
    this.live = false;
    this.wheel.remove(this);
  }
}

export class TimerWheel {
  readonly #resolutionMs: number;
  readonly #now: () => number;
  readonly #auto: boolean;
  readonly #buckets = new Map<number, Set<Entry>>();
  #size = 0;
  #last: number;
  #coarse: number;
  #interval: NodeJS.Timeout | null = null;

  /** `auto: false` for tests: nothing fires until tick() is called. */
  constructor(opts: { resolutionMs?: number; now?: () => number; auto?: boolean } = {}) {
    this.#resolutionMs = opts.resolutionMs ?? 100;
    this.#now = opts.now ?? (() => performance.now());
    this.#auto = opts.auto ?? true;
    this.#coarse = this.#now();
    this.#last = Math.floor(this.#coarse / this.#resolutionMs);
  }

  get size(): number {
    return this.#size;
  }

  get resolutionMs(): number {
    return this.#resolutionMs;
  }

  /**
   * The clock's reading at the wheel's last add() or tick(): while any entry is set, at most one
   * resolution old (more only when the event loop itself is late). For a hot path that needs no
   * more (a tunnel's last activity, per chunk): a field read instead of a clock read.
   */
  get coarseNow(): number {
    return this.#coarse;
  }

  /** Calls fn once, `delayMs` from now (rounded up to the resolution), unless cancelled first. */
  add(delayMs: number, fn: () => void): WheelTimer {
    const now = this.#now();
    this.#coarse = now;
    if (this.#auto && this.#interval === null) this.#last = Math.floor(now / this.#resolutionMs);
    const bucket = Math.max(this.#last + 1, Math.ceil((now + Math.max(0, delayMs)) / this.#resolutionMs));
    const entry = new Entry(fn, bucket, this);
    let set = this.#buckets.get(bucket);
    if (set === undefined) this.#buckets.set(bucket, (set = new Set()));
    set.add(entry);
    this.#size++;
    if (this.#auto && this.#interval === null) {
      this.#interval = setInterval(() => this.tick(), this.#resolutionMs);
      this.#interval.unref();
    }
    return entry;
  }

  /** For Entry.cancel(): a live entry taken out. */
  remove(entry: Entry): void {
    this.#size--;
    const s = this.#buckets.get(entry.bucket);
    s?.delete(entry);
    if (s !== undefined && s.size === 0) this.#buckets.delete(entry.bucket);
    this.#idle();
  }

  /** Fires what is due. */
  tick(): void {
    this.#coarse = this.#now();
    const current = Math.floor(this.#coarse / this.#resolutionMs);
    const due: number[] = [];
    if (current - this.#last <= this.#buckets.size) {
      for (let b = this.#last + 1; b <= current; b++) if (this.#buckets.has(b)) due.push(b);
    } else {
      for (const b of this.#buckets.keys()) if (b <= current) due.push(b);
      due.sort((a, b) => a - b);
    }
    this.#last = current;
    for (const b of due) {
      const set = this.#buckets.get(b);
      this.#buckets.delete(b);
      if (set === undefined) continue;
      for (const e of set) {
        if (!e.live) continue;
        e.live = false;
        this.#size--;
        e.fn();
      }
    }
    this.#idle();
  }

  stop(): void {
    if (this.#interval !== null) clearInterval(this.#interval);
    this.#interval = null;
  }

  #idle(): void {
    if (this.#size === 0) this.stop();
  }
}
