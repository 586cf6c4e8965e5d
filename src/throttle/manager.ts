// Cooperative throttling (docs/throttling.md). Pure: the clock is passed in, nothing here touches a
// socket or a timer. The daemon calls it and turns the returned events into replies.
//
// Each MTA session declares its limits for a throttle key; the effective limit is reconciled over
// the sessions that declared it (sum or average) and recomputed whenever one declares, changes or
// leaves. Connection slots are a counting semaphore; message tokens a token bucket. Waiting
// requests are served by start-time fair queuing weighted by each session's reported backlog, so a
// busy MTA can use the whole limit and equal backlogs get equal shares.

export type Mode = 'sum' | 'average';
export type LeaseKind = 'connection' | 'message';

export interface Declaration {
  readonly key: string;
  readonly sourceIp: string;
  readonly maxConnections: number;
  readonly maxMessagesPerHour: number;
  readonly mode: Mode;
}

export interface Lease {
  readonly id: number;
  readonly session: string;
  readonly key: string;
  readonly kind: LeaseKind;
}

export type AcquireResult =
  | { status: 'granted'; lease: Lease }
  | { status: 'queued'; waitId: number }
  | { status: 'error'; code: number; message: string };

export type ThrottleEvent =
  | { type: 'granted'; waitId: number; lease: Lease }
  | { type: 'timeout'; waitId: number; session: string; key: string; kind: LeaseKind };

export interface EffectiveLimits {
  readonly mode: Mode;
  readonly maxConnections: number;
  readonly maxMessagesPerHour: number;
  readonly sourceIp: string;
}

interface Waiter {
  readonly id: number;
  readonly session: string;
  readonly kind: LeaseKind;
  readonly deadline: number;
  /** start-time fair queuing tag: served in increasing order (re-tagged when the weight changes) */
  tag: number;
}

interface Throttle {
  readonly key: string;
  /** declarations by session, in declaration order (the latest decides the mode) */
  readonly declarations: Map<string, Declaration>;
  limits: EffectiveLimits;
  connectionsInUse: number;
  /** token bucket for messages */
  tokens: number;
  tokensAt: number;
  readonly waiters: Waiter[];
  /** start-time fair queuing: per session, the finish tag of its latest request */
  readonly finish: Map<string, number>;
  /** the tag of the request served last: the throttle's virtual time */
  virtualTime: number;
}

const HOUR_MS = 3_600_000;

/** Burst allowance of the message bucket: one minute's worth of the hourly rate, at least one. */
export function messageBurst(perHour: number): number {
  return Math.max(1, Math.floor(perHour / 60));
}

export function reconcile(declarations: Iterable<Declaration>): EffectiveLimits | null {
  const all = [...declarations];
  const latest = all.at(-1);
  if (latest === undefined) return null;
  const mode = latest.mode;
  const sumConnections = all.reduce((a, d) => a + d.maxConnections, 0);
  const sumMessages = all.reduce((a, d) => a + d.maxMessagesPerHour, 0);
  return {
    mode,
    sourceIp: latest.sourceIp,
    // average: one cluster-wide limit that every MTA states; the mean tolerates a rollout in progress
    maxConnections: mode === 'sum' ? sumConnections : Math.max(1, Math.round(sumConnections / all.length)),
    maxMessagesPerHour: mode === 'sum' ? sumMessages : Math.max(1, Math.round(sumMessages / all.length)),
  };
}

export class ThrottleManager {
  readonly #throttles = new Map<string, Throttle>();
  readonly #leases = new Map<number, Lease>();
  /** session -> backlog weight (reported queue size); at least 1 */
  readonly #weights = new Map<string, number>();
  #nextId = 1;

  get throttleCount(): number {
    return this.#throttles.size;
  }

  get leaseCount(): number {
    return this.#leases.size;
  }

  limits(key: string): EffectiveLimits | null {
    return this.#throttles.get(key)?.limits ?? null;
  }

  inUse(key: string): number {
    return this.#throttles.get(key)?.connectionsInUse ?? 0;
  }

  waiting(key: string): number {
    return this.#throttles.get(key)?.waiters.length ?? 0;
  }

  lease(id: number): Lease | undefined {
    return this.#leases.get(id);
  }

  /** A session's backlog sets its share when several sessions wait on the same throttle. */
  setBacklog(session: string, backlog: number): void {
    const weight = Math.max(1, backlog);
    if (this.#weights.get(session) === weight) return;
    this.#weights.set(session, weight);
    // Tags are spaced 1/weight apart. Requests that already wait were tagged under the old
    // weight: re-tag them (in their order) from the throttle's virtual time, or an MTA that queued
    // before its first report (weight 1) would wait behind hundreds of grants to the others.
    for (const t of this.#throttles.values()) {
      if (!t.finish.has(session)) continue;
      let finish = t.virtualTime;
      for (const w of t.waiters) {
        if (w.session !== session) continue;
        w.tag = finish;
        finish += 1 / weight;
      }
      t.finish.set(session, finish);
    }
  }

  /** Declares or changes a session's limits; may grant waiting requests if the limit grew. */
  declare(session: string, d: Declaration, now: number): { events: ThrottleEvent[]; warning: string | null } {
    let t = this.#throttles.get(d.key);
    let warning: string | null = null;
    if (t === undefined) {
      t = {
        key: d.key,
        declarations: new Map(),
        limits: reconcile([d]) as EffectiveLimits,
        connectionsInUse: 0,
        tokens: messageBurst(d.maxMessagesPerHour),
        tokensAt: now,
        waiters: [],
        finish: new Map(),
        virtualTime: 0,
      };
      this.#throttles.set(d.key, t);
    } else {
      for (const [other, od] of t.declarations) {
        if (other !== session && (od.mode !== d.mode || od.sourceIp !== d.sourceIp)) {
          warning = `throttle ${d.key}: ${session} declares mode=${d.mode} source=${d.sourceIp} but ${other} declared mode=${od.mode} source=${od.sourceIp}; the latest declaration wins`;
          break;
        }
      }
    }
    this.#refill(t, now);
    t.declarations.delete(session); // re-insert: the latest declaration is last
    t.declarations.set(session, d);
    t.limits = reconcile(t.declarations.values()) as EffectiveLimits;
    t.tokens = Math.min(t.tokens, messageBurst(t.limits.maxMessagesPerHour));
    return { events: this.#serve(t, now), warning };
  }

  /** Asks for a connection slot or a message token; waits at most until `deadline`. */
  acquire(session: string, key: string, kind: LeaseKind, now: number, deadline: number): AcquireResult {
    const t = this.#throttles.get(key);
    if (t === undefined || !t.declarations.has(session)) {
      return { status: 'error', code: 553, message: `throttle ${key} is not declared on this MTA's control session` };
    }
    this.#refill(t, now);
    // The tag is fixed at arrival: a session that queues many requests chains its own tags, so it
    // cannot get more than its weight's share while others wait.
    const tag = Math.max(t.virtualTime, t.finish.get(session) ?? 0);
    const waiter: Waiter = { id: this.#nextId++, session, kind, deadline, tag };
    // Fast path only when nobody else waits for this kind: never jump the queue.
    if (!t.waiters.some((w) => w.kind === kind) && this.#available(t, kind)) {
      t.finish.set(session, tag + 1 / (this.#weights.get(session) ?? 1));
      return { status: 'granted', lease: this.#grant(t, waiter) };
    }
    if (deadline <= now) return { status: 'error', code: 451, message: `throttle ${key}: no ${kind} available` };
    t.finish.set(session, tag + 1 / (this.#weights.get(session) ?? 1));
    t.waiters.push(waiter);
    return { status: 'queued', waitId: waiter.id };
  }

  /** Returns a connection slot (message tokens are consumed, releasing them is a no-op). */
  release(leaseId: number, now: number): ThrottleEvent[] {
    const lease = this.#leases.get(leaseId);
    if (lease === undefined) return [];
    this.#leases.delete(leaseId);
    const t = this.#throttles.get(lease.key);
    if (t === undefined) return [];
    if (lease.kind === 'connection') t.connectionsInUse--;
    const events = this.#serve(t, now);
    this.#forgetIfUnused(t);
    return events;
  }

  /** Withdraws one declaration (derived throttles nobody uses any more). */
  undeclare(session: string, key: string, now: number): ThrottleEvent[] {
    const t = this.#throttles.get(key);
    if (t === undefined || !t.declarations.delete(session)) return [];
    const limits = reconcile(t.declarations.values());
    const events = limits === null ? [] : ((t.limits = limits), this.#serve(t, now));
    this.#forgetIfUnused(t);
    return events;
  }

  /** Cancels a queued request (e.g. its requester went away). */
  cancel(waitId: number): void {
    for (const t of this.#throttles.values()) {
      const i = t.waiters.findIndex((w) => w.id === waitId);
      if (i !== -1) {
        t.waiters.splice(i, 1);
        return;
      }
    }
  }

  /** A session disconnected or stopped answering: its leases, waits and declarations go. */
  leave(session: string, now: number): ThrottleEvent[] {
    const events: ThrottleEvent[] = [];
    const touched = new Set<Throttle>();
    for (const [id, lease] of this.#leases) {
      if (lease.session !== session) continue;
      this.#leases.delete(id);
      const t = this.#throttles.get(lease.key);
      if (t !== undefined && lease.kind === 'connection') {
        t.connectionsInUse--;
        touched.add(t);
      }
    }
    for (const t of this.#throttles.values()) {
      const before = t.waiters.length;
      for (let i = t.waiters.length - 1; i >= 0; i--) if (t.waiters[i]?.session === session) t.waiters.splice(i, 1);
      if (t.declarations.delete(session) || before !== t.waiters.length) touched.add(t);
      t.finish.delete(session);
    }
    this.#weights.delete(session);
    for (const t of touched) {
      const limits = reconcile(t.declarations.values());
      if (limits !== null) {
        t.limits = limits;
        events.push(...this.#serve(t, now));
      }
      this.#forgetIfUnused(t);
    }
    return events;
  }

  /** Expires overdue waits and grants what the message buckets have refilled. */
  tick(now: number): ThrottleEvent[] {
    const events: ThrottleEvent[] = [];
    for (const t of this.#throttles.values()) {
      for (let i = 0; i < t.waiters.length; ) {
        const w = t.waiters[i] as Waiter;
        if (w.deadline <= now) {
          t.waiters.splice(i, 1);
          events.push({ type: 'timeout', waitId: w.id, session: w.session, key: t.key, kind: w.kind });
        } else {
          i++;
        }
      }
      if (t.waiters.length > 0) {
        this.#refill(t, now);
        events.push(...this.#serve(t, now));
      }
    }
    return events;
  }

  /** When the next tick could change something (a deadline, or a token for a waiting message). */
  nextWakeup(now: number): number | null {
    let next: number | null = null;
    const consider = (at: number): void => {
      next = next === null ? at : Math.min(next, at);
    };
    for (const t of this.#throttles.values()) {
      for (const w of t.waiters) {
        consider(w.deadline);
        if (w.kind === 'message') {
          const missing = 1 - t.tokens;
          consider(t.tokensAt + Math.max(0, (missing * HOUR_MS) / t.limits.maxMessagesPerHour));
        }
      }
    }
    return next === null ? null : Math.max(now, next);
  }

  #available(t: Throttle, kind: LeaseKind): boolean {
    // epsilon: a refill computed for exactly one token must not fall short by a rounding error
    return kind === 'connection' ? t.connectionsInUse < t.limits.maxConnections : t.tokens >= 1 - 1e-9;
  }

  #refill(t: Throttle, now: number): void {
    const elapsed = now - t.tokensAt;
    if (elapsed <= 0) return;
    t.tokens = Math.min(messageBurst(t.limits.maxMessagesPerHour), t.tokens + (elapsed * t.limits.maxMessagesPerHour) / HOUR_MS);
    t.tokensAt = now;
  }

  #grant(t: Throttle, w: Waiter): Lease {
    const lease: Lease = { id: this.#nextId++, session: w.session, key: t.key, kind: w.kind };
    if (w.kind === 'connection') {
      t.connectionsInUse++;
      this.#leases.set(lease.id, lease);
    } else {
      t.tokens -= 1;
    }
    t.virtualTime = Math.max(t.virtualTime, w.tag);
    return lease;
  }

  /** Grants waiting requests while capacity lasts, lowest tag first (FIFO within a session). */
  #serve(t: Throttle, now: number): ThrottleEvent[] {
    const events: ThrottleEvent[] = [];
    for (;;) {
      let best = -1;
      let bestTag = Infinity;
      for (let i = 0; i < t.waiters.length; i++) {
        const w = t.waiters[i] as Waiter;
        if (w.deadline <= now || !this.#available(t, w.kind)) continue;
        if (w.tag < bestTag) {
          bestTag = w.tag;
          best = i;
        }
      }
      if (best === -1) return events;
      const [w] = t.waiters.splice(best, 1) as [Waiter];
      events.push({ type: 'granted', waitId: w.id, lease: this.#grant(t, w) });
    }
  }

  #forgetIfUnused(t: Throttle): void {
    if (t.declarations.size === 0 && t.connectionsInUse === 0 && t.waiters.length === 0) this.#throttles.delete(t.key);
  }
}
