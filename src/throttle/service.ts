// The imperative shell around the pure ThrottleManager: one timer for all deadlines and refills,
// and callbacks for queued requests.
import { ThrottleManager, type AcquireOptions, type Declaration, type Lease, type LeaseKind, type ThrottleEvent } from './manager.js';

const NOOP = (): void => {};

export type AcquireOutcome = { ok: true; lease: Lease } | { ok: false; code: number; message: string };

/** A request refused at once (begin()): an undeclared throttle, nothing available and no wait. */
export interface AcquireRefusal {
  readonly code: number;
  readonly message: string;
}

/** A request that waits (begin()): hand it to wait() at once, with the callback for its answer. */
export class QueuedAcquire {
  constructor(
    readonly waitId: number,
    readonly kind: LeaseKind,
    /** when it started waiting (the metrics' wait) */
    readonly since: number,
  ) {}
}

export class ThrottleService {
  readonly manager = new ThrottleManager();
  readonly #now: () => number;
  readonly #waiting = new Map<number, (outcome: AcquireOutcome) => void>();
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;

  /** told each answered request's wait (0 for an immediate grant), e.g. for the metrics */
  readonly #onAnswer: ((kind: LeaseKind, waitedMs: number, granted: boolean) => void) | undefined;

  constructor(now: () => number, onAnswer?: (kind: LeaseKind, waitedMs: number, granted: boolean) => void) {
    this.#now = now;
    this.#onAnswer = onAnswer;
  }

  declare(session: string, d: Declaration): string | null {
    const { events, warning } = this.manager.declare(session, d, this.#now());
    this.#dispatch(events);
    return warning;
  }

  /**
   * declare() unless the throttle's effective limits already are these: a derived throttle is
   * declared again by every delivery that uses it, and an unchanged one costs nothing then.
   */
  declareIfChanged(session: string, d: Declaration): void {
    const c = this.manager.limits(d.key);
    if (c !== null && c.maxConnections === d.maxConnections && c.maxMessagesPerHour === d.maxMessagesPerHour && c.sourceIp === d.sourceIp && c.mode === d.mode) return;
    this.declare(session, d);
  }

  setBacklog(session: string, backlog: number): void {
    this.manager.setBacklog(session, backlog);
  }

  /**
   * Calls `done` once: at once, when granted later, or at the deadline. Returns a canceller.
   * `opts.heldByDelivery`: the slot is a tunnel's, kept until release() even if `session` leaves.
   */
  acquire(session: string, key: string, kind: LeaseKind, waitMs: number, answer: (outcome: AcquireOutcome) => void, opts?: AcquireOptions): () => void {
    const r = this.begin(session, key, kind, waitMs, opts);
    if (r instanceof QueuedAcquire) {
      this.wait(r, answer);
      return () => {
        if (this.#waiting.delete(r.waitId)) this.manager.cancel(r.waitId);
      };
    }
    if ('id' in r) answer({ ok: true, lease: r });
    else answer({ ok: false, code: r.code, message: r.message });
    return NOOP;
  }

  /**
   * acquire() in two steps, for the control session's ACQUIRE (the hot path: an immediate grant
   * makes no callback and no outcome object): the lease granted at once, a refusal at once (no
   * wait to tell the metrics), or a QueuedAcquire that the caller passes to wait() before it
   * returns to the event loop.
   */
  begin(session: string, key: string, kind: LeaseKind, waitMs: number, opts?: AcquireOptions): Lease | AcquireRefusal | QueuedAcquire {
    const now = this.#now();
    const result = this.manager.acquire(session, key, kind, now, now + waitMs, opts);
    if (result.status === 'granted') {
      this.#onAnswer?.(kind, 0, true); // granted at once: a wait of 0
      return result.lease;
    }
    if (result.status === 'error') return { code: result.code, message: result.message };
    return new QueuedAcquire(result.waitId, kind, now);
  }

  /** The answer of a request begin() queued: called once, when granted, at its deadline, or when its session leaves. */
  wait(q: QueuedAcquire, answer: (outcome: AcquireOutcome) => void): void {
    const onAnswer = this.#onAnswer;
    const done = onAnswer === undefined ? answer : (outcome: AcquireOutcome): void => {
      onAnswer(q.kind, this.#now() - q.since, outcome.ok);
      answer(outcome);
    };
    this.#waiting.set(q.waitId, done);
    this.#schedule();
  }

  /** Callbacks waiting for a grant (each has its waiter in the manager). */
  get waitingCount(): number {
    return this.#waiting.size;
  }

  release(leaseId: number): void {
    // nobody waits at its throttle (the usual case): no clock to read, no events to dispatch
    if (this.manager.releaseIfIdle(leaseId)) return;
    this.#dispatch(this.manager.release(leaseId, this.#now()));
  }

  /** A message token back (the destination did not accept the message it was taken for). */
  refundMessage(key: string): void {
    this.#dispatch(this.manager.refundMessage(key, this.#now()));
  }

  undeclare(session: string, key: string): void {
    this.#dispatch(this.manager.undeclare(session, key, this.#now()));
  }

  /** The session's waiting requests are answered 421 (deliveries' included); deliveries' leases stay. */
  leave(session: string): void {
    this.#dispatch(this.manager.leave(session, this.#now()));
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #dispatch(events: readonly ThrottleEvent[]): void {
    for (let i = 0; i < events.length; i++) {
      const e = events[i] as ThrottleEvent;
      const done = this.#waiting.get(e.waitId);
      this.#waiting.delete(e.waitId);
      if (done === undefined) {
        // the requester went away between the grant and now: give the slot straight back
        if (e.type === 'granted') this.#dispatch(this.manager.release(e.lease.id, this.#now()));
        continue;
      }
      if (e.type === 'granted') done({ ok: true, lease: e.lease });
      else if (e.type === 'timeout') done({ ok: false, code: 451, message: `throttle ${e.key}: no ${e.kind} became available in time` });
      else done({ ok: false, code: 421, message: `throttle ${e.key}: the control session that declared it closed while this request waited for a ${e.kind}` });
    }
    this.#schedule();
  }

  /** One timer, set for the earliest moment a tick can change anything. */
  #schedule(): void {
    // the earliest moment, without reading the clock when there is none (the usual case)
    const due = this.manager.nextWakeup(-Infinity);
    if (due === null) {
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = null;
      this.#timerAt = Infinity;
      return;
    }
    const next = Math.max(this.#now(), due);
    if (this.#timer !== null && this.#timerAt <= next) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timerAt = next;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#timerAt = Infinity;
      this.#dispatch(this.manager.tick(this.#now()));
    }, Math.max(0, Math.ceil(next - this.#now())));
    this.#timer.unref();
  }
}
