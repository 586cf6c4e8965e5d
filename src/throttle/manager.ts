// Cooperative throttling (docs/throttling.md). Pure: the clock is passed in, nothing here touches a
// socket or a timer. The daemon calls it and turns the returned events into replies.
//
// Each MTA session declares its limits for a throttle key; the effective limit is reconciled over
// the sessions that declared it (sum or average) and recomputed whenever one declares, changes or
// leaves. Connection slots are a counting semaphore; message tokens a token bucket. Waiting
// requests are served by start-time fair queuing weighted by each session's reported backlog, so a
// busy MTA can use the whole limit and equal backlogs get equal shares.
//
// Cost: no operation scans all waiters, throttles or leases. Waiting requests sit in a binary heap
// per throttle and kind ordered by (fair-queuing tag, id); all deadlines in one heap; the throttles
// whose message waiters need a token in one heap ordered by when the bucket next holds one; and
// indexes by wait id and by session. So acquire, release, cancel and each grant or timeout cost
// O(log n), nextWakeup O(1), and leave and setBacklog touch only what concerns that session.

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
  /** held by a delivery (a tunnel): survives the leave of its session, ends only with release() */
  readonly heldByDelivery: boolean;
}

export interface AcquireOptions {
  /**
   * The slot is for a delivery (a tunnel), not for the control session's own ACQUIRE: the lease
   * outlives the session that declared the throttle (a disconnect, or a reconnect under a new
   * session id) and keeps counting in the throttle's connections in use until release(leaseId).
   */
  readonly heldByDelivery?: boolean;
}

export type AcquireResult =
  | { status: 'granted'; lease: Lease }
  | { status: 'queued'; waitId: number }
  | { status: 'error'; code: number; message: string };

export type ThrottleEvent =
  | { type: 'granted'; waitId: number; lease: Lease }
  | { type: 'timeout'; waitId: number; session: string; key: string; kind: LeaseKind }
  /** the waiting request's session left (leave): it will never be granted */
  | { type: 'cancelled'; waitId: number; session: string; key: string; kind: LeaseKind };

export interface EffectiveLimits {
  readonly mode: Mode;
  readonly maxConnections: number;
  readonly maxMessagesPerHour: number;
  readonly sourceIp: string;
}

const HOUR_MS = 3_600_000;
/** Waits one tick expires at most (the rest on the next tick, at once): bounds one tick's work. */
const TICK_MAX_TIMEOUTS = 2_000;

/** Burst allowance of the message bucket: one minute's worth of the hourly rate, at least one. */
export function messageBurst(perHour: number): number {
  return Math.max(1, Math.floor(perHour / 60));
}

export function reconcile(declarations: Iterable<Declaration>): EffectiveLimits | null {
  let latest: Declaration | undefined;
  let count = 0;
  let sumConnections = 0;
  let sumMessages = 0;
  for (const d of declarations) {
    latest = d;
    count++;
    sumConnections += d.maxConnections;
    sumMessages += d.maxMessagesPerHour;
  }
  if (latest === undefined) return null;
  const mode = latest.mode;
  return {
    mode,
    sourceIp: latest.sourceIp,
    // average: one cluster-wide limit that every MTA states; the mean tolerates a rollout in progress
    maxConnections: mode === 'sum' ? sumConnections : Math.max(1, Math.round(sumConnections / count)),
    maxMessagesPerHour: mode === 'sum' ? sumMessages : Math.max(1, Math.round(sumMessages / count)),
  };
}

/**
 * A binary min-heap whose items know their own position (through `setIndex`/`getIndex`), so any
 * item can be removed or re-keyed in O(log n) without searching for it. Index -1: not in the heap.
 */
class IndexedHeap<T> {
  readonly #items: T[] = [];
  readonly #less: (a: T, b: T) => boolean;
  readonly #getIndex: (x: T) => number;
  readonly #setIndex: (x: T, i: number) => void;

  constructor(less: (a: T, b: T) => boolean, getIndex: (x: T) => number, setIndex: (x: T, i: number) => void) {
    this.#less = less;
    this.#getIndex = getIndex;
    this.#setIndex = setIndex;
  }

  get size(): number {
    return this.#items.length;
  }

  peek(): T | undefined {
    return this.#items[0];
  }

  has(x: T): boolean {
    const i = this.#getIndex(x);
    return i >= 0 && this.#items[i] === x;
  }

  push(x: T): void {
    this.#items.push(x);
    this.#up(this.#items.length - 1, x);
  }

  pop(): T | undefined {
    const top = this.#items[0];
    if (top !== undefined) this.remove(top);
    return top;
  }

  remove(x: T): boolean {
    if (!this.has(x)) return false;
    const i = this.#getIndex(x);
    const last = this.#items.pop() as T;
    this.#setIndex(x, -1);
    if (last !== x) {
      this.#items[i] = last;
      this.#setIndex(last, i);
      this.#fix(i, last);
    }
    return true;
  }

  /** Restores the order after x's key changed (or inserts it). */
  update(x: T): void {
    if (this.has(x)) this.#fix(this.#getIndex(x), x);
    else this.push(x);
  }

  #fix(i: number, x: T): void {
    const parent = this.#items[(i - 1) >> 1];
    if (i > 0 && parent !== undefined && this.#less(x, parent)) this.#up(i, x);
    else this.#down(i, x);
  }

  #up(i: number, x: T): void {
    const items = this.#items;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = items[p] as T;
      if (!this.#less(x, parent)) break;
      items[i] = parent;
      this.#setIndex(parent, i);
      i = p;
    }
    items[i] = x;
    this.#setIndex(x, i);
  }

  #down(i: number, x: T): void {
    const items = this.#items;
    const n = items.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      let c = l;
      let child = items[l] as T;
      if (r < n) {
        const right = items[r] as T;
        if (this.#less(right, child)) {
          c = r;
          child = right;
        }
      }
      if (!this.#less(child, x)) break;
      items[i] = child;
      this.#setIndex(child, i);
      i = c;
    }
    items[i] = x;
    this.#setIndex(x, i);
  }
}

interface Waiter {
  readonly id: number;
  readonly session: string;
  readonly kind: LeaseKind;
  readonly deadline: number;
  readonly heldByDelivery: boolean;
  readonly throttle: Throttle;
  /** start-time fair queuing tag: served in increasing order (re-tagged when the weight changes) */
  tag: number;
  /** position in the throttle's heap for its kind */
  queueIndex: number;
  /** position in the global deadline heap */
  deadlineIndex: number;
}

/** What one session has to do with one throttle. */
interface Member {
  /** start-time fair queuing: the finish tag of the session's latest request here */
  finish: number;
  /** the session's weight epoch when `finish` was set; an older one means "re-tagged since": ignore it */
  epoch: number;
  /** this session's waiting requests here, in arrival order (both kinds); null: none yet */
  waiters: Set<Waiter> | null;
}

interface Throttle {
  readonly key: string;
  /** creation order: ties in the token heap */
  readonly serial: number;
  /** declarations by session, in declaration order (the latest decides the mode) */
  readonly declarations: Map<string, Declaration>;
  limits: EffectiveLimits;
  connectionsInUse: number;
  /** token bucket for messages */
  tokens: number;
  tokensAt: number;
  /** waiting requests per kind, lowest (tag, id) first */
  readonly connectionQueue: IndexedHeap<Waiter>;
  readonly messageQueue: IndexedHeap<Waiter>;
  readonly members: Map<string, Member>;
  /** the tag of the request served last: the throttle's virtual time */
  virtualTime: number;
  /** when the bucket next holds a token for a waiting message (valid while in the token heap) */
  tokenReadyAt: number;
  tokenIndex: number;
}

interface SessionState {
  /** backlog weight (reported queue size); at least 1 */
  weight: number;
  /** bumped on every weight change: finish tags set under an older epoch are void */
  epoch: number;
  readonly members: Map<Throttle, Member>;
  /** throttles where this session has requests waiting */
  readonly waitingIn: Set<Throttle>;
  /** ids of the connection leases taken by the session's own ACQUIREs (not deliveries') */
  readonly leases: Set<number>;
}

const byTag = (a: Waiter, b: Waiter): boolean => a.tag < b.tag || (a.tag === b.tag && a.id < b.id);
const byDeadline = (a: Waiter, b: Waiter): boolean => a.deadline < b.deadline || (a.deadline === b.deadline && a.id < b.id);
const byTokenReady = (a: Throttle, b: Throttle): boolean =>
  a.tokenReadyAt < b.tokenReadyAt || (a.tokenReadyAt === b.tokenReadyAt && a.serial < b.serial);

const queueIndexOf = (w: Waiter): number => w.queueIndex;
const setQueueIndex = (w: Waiter, i: number): void => {
  w.queueIndex = i;
};

function newQueue(): IndexedHeap<Waiter> {
  return new IndexedHeap<Waiter>(byTag, queueIndexOf, setQueueIndex);
}

export class ThrottleManager {
  readonly #throttles = new Map<string, Throttle>();
  readonly #leases = new Map<number, Lease>();
  readonly #sessions = new Map<string, SessionState>();
  readonly #waiters = new Map<number, Waiter>();
  readonly #deadlines = new IndexedHeap<Waiter>(byDeadline, (w) => w.deadlineIndex, (w, i) => (w.deadlineIndex = i));
  readonly #tokenWakeups = new IndexedHeap<Throttle>(byTokenReady, (t) => t.tokenIndex, (t, i) => (t.tokenIndex = i));
  #nextId = 1;
  #nextSerial = 1;

  get throttleCount(): number {
    return this.#throttles.size;
  }

  get leaseCount(): number {
    return this.#leases.size;
  }

  /** Requests waiting, over all throttles. */
  get waiterCount(): number {
    return this.#waiters.size;
  }

  limits(key: string): EffectiveLimits | null {
    return this.#throttles.get(key)?.limits ?? null;
  }

  inUse(key: string): number {
    return this.#throttles.get(key)?.connectionsInUse ?? 0;
  }

  waiting(key: string): number {
    const t = this.#throttles.get(key);
    return t === undefined ? 0 : t.connectionQueue.size + t.messageQueue.size;
  }

  lease(id: number): Lease | undefined {
    return this.#leases.get(id);
  }

  /** A session's backlog sets its share when several sessions wait on the same throttle. */
  setBacklog(session: string, backlog: number): void {
    const weight = Math.max(1, backlog);
    const s = this.#session(session);
    if (s.weight === weight) return;
    s.weight = weight;
    s.epoch++;
    // Tags are spaced 1/weight apart. Requests that already wait were tagged under the old
    // weight: re-tag them (in their order) from the throttle's virtual time, or an MTA that queued
    // before its first report (weight 1) would wait behind hundreds of grants to the others.
    // Elsewhere the session's finish tag is void (epoch): its next request starts at the
    // throttle's virtual time.
    for (const t of s.waitingIn) {
      const member = t.members.get(session) as Member;
      let finish = t.virtualTime;
      for (const w of member.waiters ?? []) {
        w.tag = finish;
        this.#queue(t, w.kind).update(w);
        finish += 1 / weight;
      }
      member.finish = finish;
      member.epoch = s.epoch;
    }
  }

  /** Declares or changes a session's limits; may grant waiting requests if the limit grew. */
  declare(session: string, d: Declaration, now: number): { events: ThrottleEvent[]; warning: string | null } {
    let t = this.#throttles.get(d.key);
    let warning: string | null = null;
    if (t === undefined) {
      t = {
        key: d.key,
        serial: this.#nextSerial++,
        declarations: new Map(),
        limits: reconcile([d]) as EffectiveLimits,
        connectionsInUse: 0,
        tokens: messageBurst(d.maxMessagesPerHour),
        tokensAt: now,
        connectionQueue: newQueue(),
        messageQueue: newQueue(),
        members: new Map(),
        virtualTime: 0,
        tokenReadyAt: Infinity,
        tokenIndex: -1,
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
    this.#member(session, t);
    this.#refill(t, now);
    t.declarations.delete(session); // re-insert: the latest declaration is last
    t.declarations.set(session, d);
    t.limits = reconcile(t.declarations.values()) as EffectiveLimits;
    t.tokens = Math.min(t.tokens, messageBurst(t.limits.maxMessagesPerHour));
    const events: ThrottleEvent[] = [];
    this.#serve(t, now, events);
    return { events, warning };
  }

  /** Asks for a connection slot or a message token; waits at most until `deadline`. */
  acquire(session: string, key: string, kind: LeaseKind, now: number, deadline: number, opts?: AcquireOptions): AcquireResult {
    const t = this.#throttles.get(key);
    if (t === undefined || !t.declarations.has(session)) {
      return { status: 'error', code: 553, message: `throttle ${key} is not declared on this MTA's control session` };
    }
    this.#refill(t, now);
    const s = this.#session(session);
    const member = this.#member(session, t);
    // The tag is fixed at arrival: a session that queues many requests chains its own tags, so it
    // cannot get more than its weight's share while others wait.
    const tag = Math.max(t.virtualTime, member.epoch === s.epoch ? member.finish : 0);
    const heldByDelivery = opts?.heldByDelivery === true;
    const id = this.#nextId++; // the wait's, if it waits (taken in any case: ids as they always were)
    const queue = this.#queue(t, kind);
    // Fast path only when nobody else waits for this kind: never jump the queue.
    if (queue.size === 0 && this.#available(t, kind)) {
      member.finish = tag + 1 / s.weight;
      member.epoch = s.epoch;
      const lease = this.#grant(t, session, kind, tag, heldByDelivery);
      this.#afterChange(t);
      return { status: 'granted', lease };
    }
    if (deadline <= now) return { status: 'error', code: 451, message: `throttle ${key}: no ${kind} available` };
    member.finish = tag + 1 / s.weight;
    member.epoch = s.epoch;
    const w: Waiter = { id, session, kind, deadline, heldByDelivery, throttle: t, tag, queueIndex: -1, deadlineIndex: -1 };
    queue.push(w);
    this.#deadlines.push(w);
    this.#waiters.set(w.id, w);
    (member.waiters ??= new Set()).add(w);
    s.waitingIn.add(t);
    this.#afterChange(t);
    return { status: 'queued', waitId: w.id };
  }

  /** Returns a connection slot (message tokens are consumed, releasing them is a no-op). */
  release(leaseId: number, now: number): ThrottleEvent[] {
    const lease = this.#leases.get(leaseId);
    if (lease === undefined) return [];
    this.#leases.delete(leaseId);
    this.#sessions.get(lease.session)?.leases.delete(leaseId);
    const t = this.#throttles.get(lease.key);
    if (t === undefined) return [];
    if (lease.kind === 'connection') t.connectionsInUse--;
    const events: ThrottleEvent[] = [];
    this.#serve(t, now, events);
    return events;
  }

  /** Withdraws one declaration (derived throttles nobody uses any more). */
  undeclare(session: string, key: string, now: number): ThrottleEvent[] {
    const t = this.#throttles.get(key);
    if (t === undefined || !t.declarations.delete(session)) return [];
    const limits = reconcile(t.declarations.values());
    const events: ThrottleEvent[] = [];
    if (limits !== null) {
      this.#refill(t, now);
      t.limits = limits;
      t.tokens = Math.min(t.tokens, messageBurst(limits.maxMessagesPerHour));
      this.#serve(t, now, events);
    } else {
      this.#afterChange(t);
    }
    return events;
  }

  /** Cancels a queued request (e.g. its requester went away). */
  cancel(waitId: number): void {
    const w = this.#waiters.get(waitId);
    if (w === undefined) return;
    this.#dropWaiter(w);
    this.#afterChange(w.throttle);
  }

  /**
   * A session disconnected or stopped answering: its own leases, waits and declarations go (each
   * removed wait is reported as a 'cancelled' event). Leases held by deliveries stay until they
   * are released: the tunnel is still open, and its throttle keeps its last limits meanwhile.
   */
  leave(session: string, now: number): ThrottleEvent[] {
    const events: ThrottleEvent[] = [];
    const s = this.#sessions.get(session);
    if (s === undefined) return events;
    const touched = new Set<Throttle>();
    for (const id of s.leases) {
      const lease = this.#leases.get(id);
      if (lease === undefined) continue;
      this.#leases.delete(id);
      const t = this.#throttles.get(lease.key);
      if (t !== undefined && lease.kind === 'connection') {
        t.connectionsInUse--;
        touched.add(t);
      }
    }
    for (const t of s.waitingIn) {
      const member = t.members.get(session) as Member;
      for (const w of member.waiters ?? []) {
        events.push({ type: 'cancelled', waitId: w.id, session, key: t.key, kind: w.kind });
        this.#queue(t, w.kind).remove(w);
        this.#deadlines.remove(w);
        this.#waiters.delete(w.id);
      }
      member.waiters = null;
      touched.add(t);
    }
    for (const t of s.members.keys()) {
      t.members.delete(session);
      if (t.declarations.delete(session)) touched.add(t);
    }
    this.#sessions.delete(session);
    for (const t of touched) {
      const limits = reconcile(t.declarations.values());
      if (limits !== null) {
        this.#refill(t, now);
        t.limits = limits;
        t.tokens = Math.min(t.tokens, messageBurst(limits.maxMessagesPerHour));
        this.#serve(t, now, events);
      } else {
        this.#afterChange(t);
      }
    }
    return events;
  }

  /**
   * Expires overdue waits and grants what the message buckets have refilled. At most
   * TICK_MAX_TIMEOUTS waits expire per call, so one call stays short; if more are due,
   * nextWakeup(now) returns now and the next tick goes on.
   */
  tick(now: number): ThrottleEvent[] {
    const events: ThrottleEvent[] = [];
    const touched = new Set<Throttle>();
    for (let w = this.#deadlines.peek(); w !== undefined && w.deadline <= now && events.length < TICK_MAX_TIMEOUTS; w = this.#deadlines.peek()) {
      this.#dropWaiter(w);
      events.push({ type: 'timeout', waitId: w.id, session: w.session, key: w.throttle.key, kind: w.kind });
      touched.add(w.throttle);
    }
    // take the due throttles off the heap first: serving one puts it back under its next time
    const due: Throttle[] = [];
    for (let t = this.#tokenWakeups.peek(); t !== undefined && t.tokenReadyAt <= now; t = this.#tokenWakeups.peek()) {
      this.#tokenWakeups.pop();
      due.push(t);
    }
    for (const t of due) {
      this.#refill(t, now);
      this.#serve(t, now, events);
      touched.delete(t);
    }
    for (const t of touched) this.#afterChange(t);
    return events;
  }

  /** When the next tick could change something (a deadline, or a token for a waiting message). */
  nextWakeup(now: number): number | null {
    const deadline = this.#deadlines.peek()?.deadline ?? Infinity;
    const token = this.#tokenWakeups.peek()?.tokenReadyAt ?? Infinity;
    const next = Math.min(deadline, token);
    return next === Infinity ? null : Math.max(now, next);
  }

  #session(session: string): SessionState {
    let s = this.#sessions.get(session);
    if (s === undefined) {
      s = { weight: 1, epoch: 0, members: new Map(), waitingIn: new Set(), leases: new Set() };
      this.#sessions.set(session, s);
    }
    return s;
  }

  #member(session: string, t: Throttle): Member {
    let m = t.members.get(session);
    if (m === undefined) {
      const s = this.#session(session);
      m = { finish: 0, epoch: s.epoch, waiters: null };
      t.members.set(session, m);
      s.members.set(t, m);
    }
    return m;
  }

  #queue(t: Throttle, kind: LeaseKind): IndexedHeap<Waiter> {
    return kind === 'connection' ? t.connectionQueue : t.messageQueue;
  }

  /** Takes a waiting request out of every structure (not reported: the caller does that). */
  #dropWaiter(w: Waiter): void {
    const t = w.throttle;
    this.#queue(t, w.kind).remove(w);
    this.#deadlines.remove(w);
    this.#waiters.delete(w.id);
    const member = t.members.get(w.session);
    if (member === undefined) return;
    member.waiters?.delete(w);
    if (member.waiters?.size === 0) {
      member.waiters = null;
      this.#sessions.get(w.session)?.waitingIn.delete(t);
    }
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

  #grant(t: Throttle, session: string, kind: LeaseKind, tag: number, heldByDelivery: boolean): Lease {
    const lease: Lease = { id: this.#nextId++, session, key: t.key, kind, heldByDelivery };
    if (kind === 'connection') {
      t.connectionsInUse++;
      this.#leases.set(lease.id, lease);
      if (!heldByDelivery) this.#session(session).leases.add(lease.id);
    } else {
      t.tokens -= 1;
    }
    t.virtualTime = Math.max(t.virtualTime, tag);
    return lease;
  }

  /**
   * Grants waiting requests while capacity lasts, lowest tag first (FIFO within a session); a
   * request found past its deadline is reported as timed out instead.
   */
  #serve(t: Throttle, now: number, events: ThrottleEvent[]): void {
    for (;;) {
      const c = this.#head(t.connectionQueue, now, events);
      const m = this.#head(t.messageQueue, now, events);
      const cOk = c !== undefined && this.#available(t, 'connection');
      const mOk = m !== undefined && this.#available(t, 'message');
      let w: Waiter;
      if (cOk && mOk) w = byTag(m, c) ? m : c;
      else if (cOk) w = c;
      else if (mOk) w = m;
      else break;
      this.#dropWaiter(w);
      events.push({ type: 'granted', waitId: w.id, lease: this.#grant(t, w.session, w.kind, w.tag, w.heldByDelivery) });
    }
    this.#afterChange(t);
  }

  /** The first request of a queue that is still within its deadline (the others time out). */
  #head(queue: IndexedHeap<Waiter>, now: number, events: ThrottleEvent[]): Waiter | undefined {
    for (let w = queue.peek(); w !== undefined; w = queue.peek()) {
      if (w.deadline > now) return w;
      this.#dropWaiter(w);
      events.push({ type: 'timeout', waitId: w.id, session: w.session, key: w.throttle.key, kind: w.kind });
    }
    return undefined;
  }

  /** Keeps the token heap right for t, and forgets t once nothing refers to it. */
  #afterChange(t: Throttle): void {
    if (t.messageQueue.size > 0) {
      const missing = 1 - t.tokens;
      t.tokenReadyAt = t.tokensAt + Math.max(0, (missing * HOUR_MS) / t.limits.maxMessagesPerHour);
      this.#tokenWakeups.update(t);
    } else {
      this.#tokenWakeups.remove(t);
    }
    if (t.declarations.size === 0 && t.connectionsInUse === 0 && t.connectionQueue.size === 0 && t.messageQueue.size === 0) {
      if (this.#throttles.get(t.key) !== t) return;
      this.#throttles.delete(t.key);
      for (const session of t.members.keys()) this.#sessions.get(session)?.members.delete(t);
      t.members.clear();
    }
  }
}
