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

import { IdMap } from './idmap.js';

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

/** One session's part in a throttle, as throttleSnapshot() shows it. */
export interface ThrottleMemberView {
  /** the manager's session id (the daemon's ControlSession.id, or "derived") */
  readonly session: string;
  /** its current declaration; null once it undeclared (its fair-queuing state still counts) */
  readonly declaration: Declaration | null;
  /** its backlog weight (the reported backlog, at least 1) */
  readonly weight: number;
}

/** A read-only view of one throttle (throttleSnapshot()). */
export interface ThrottleView {
  readonly key: string;
  readonly mode: Mode;
  readonly sourceIp: string;
  readonly maxConnections: number;
  readonly maxMessagesPerHour: number;
  /** sessions with a declaration now */
  readonly declared: number;
  readonly connectionsInUse: number;
  /** whole message tokens in the bucket now (refilled up to `now`), at most messageBurst */
  readonly messagesLeft: number;
  readonly messageBurst: number;
  readonly waitingConnections: number;
  readonly waitingMessages: number;
  /** every member, or the first `maxMembers` by session id */
  readonly members: readonly ThrottleMemberView[];
  readonly memberCount: number;
}

export interface ThrottleQuery {
  /** at most this many throttles (the busiest first) */
  readonly limit: number;
  /** only throttles whose key contains this text */
  readonly key?: string;
  /** at most this many members per throttle (default: all) */
  readonly maxMembers?: number;
}

export interface ThrottleSnapshot {
  /** throttles known */
  readonly total: number;
  /** throttles matching the query's key filter */
  readonly matched: number;
  /** the first `limit` of those, busiest first: connections in use + waiting requests, then key */
  readonly throttles: readonly ThrottleView[];
}

const HOUR_MS = 3_600_000;
/** Waits one tick expires at most (the rest on the next tick, at once): bounds one tick's work. */
const TICK_MAX_TIMEOUTS = 1_000;

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
 * Binary min-heap operations on plain arrays whose items know their own position (through
 * `setIndex`/`getIndex`), so any item can be removed or re-keyed in O(log n) without searching for
 * it. Index -1: not in a heap. One instance per kind of heap, shared by all heaps of that kind: a
 * throttle's queues are bare arrays, allocated only while something waits there.
 */
class HeapOps<T> {
  readonly #less: (a: T, b: T) => boolean;
  readonly #getIndex: (x: T) => number;
  readonly #setIndex: (x: T, i: number) => void;

  constructor(less: (a: T, b: T) => boolean, getIndex: (x: T) => number, setIndex: (x: T, i: number) => void) {
    this.#less = less;
    this.#getIndex = getIndex;
    this.#setIndex = setIndex;
  }

  has(items: readonly T[], x: T): boolean {
    const i = this.#getIndex(x);
    return i >= 0 && items[i] === x;
  }

  push(items: T[], x: T): void {
    items.push(x);
    this.#up(items, items.length - 1, x);
  }

  remove(items: T[], x: T): boolean {
    if (!this.has(items, x)) return false;
    const i = this.#getIndex(x);
    const last = items.pop() as T;
    this.#setIndex(x, -1);
    if (last !== x) {
      items[i] = last;
      this.#setIndex(last, i);
      this.#fix(items, i, last);
    }
    return true;
  }

  /** Restores the order after x's key changed (or inserts it). */
  update(items: T[], x: T): void {
    if (this.has(items, x)) this.#fix(items, this.#getIndex(x), x);
    else this.push(items, x);
  }

  #fix(items: T[], i: number, x: T): void {
    const parent = items[(i - 1) >> 1];
    if (i > 0 && parent !== undefined && this.#less(x, parent)) this.#up(items, i, x);
    else this.#down(items, i, x);
  }

  #up(items: T[], i: number, x: T): void {
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

  #down(items: T[], i: number, x: T): void {
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

/**
 * A lease as the manager keeps it: a control session's own connection leases are linked into
 * that session's list (for its leave), so taking and returning one adds and removes no entry of a
 * Set (whose table would grow and shrink with the churn).
 */
interface LeaseRecord extends Lease {
  /** the session whose list holds it (null: a delivery's lease, or a message token: in no list) */
  owner: SessionState | null;
  prev: LeaseRecord | null;
  next: LeaseRecord | null;
}

interface Waiter {
  readonly id: number;
  readonly kind: LeaseKind;
  readonly deadline: number;
  readonly heldByDelivery: boolean;
  readonly member: Member;
  /** start-time fair queuing tag: served in increasing order (re-tagged when the weight changes) */
  tag: number;
  /** position in the throttle's heap for its kind */
  queueIndex: number;
  /** position in the global deadline heap */
  deadlineIndex: number;
}

/**
 * What one session has to do with one throttle: its declaration and its fair-queuing state. The
 * member outlives an undeclare (its finish tag still counts) and goes with the throttle or the
 * session.
 */
interface Member {
  readonly session: SessionState;
  readonly throttle: Throttle;
  /** null once undeclared */
  declaration: Declaration | null;
  /** when it declared last (a manager-wide counter): the latest declaration decides the mode */
  declaredAt: number;
  /** start-time fair queuing: the finish tag of the session's latest request here */
  finish: number;
  /** the session's weight epoch when `finish` was set; an older one means "re-tagged since": ignore it */
  epoch: number;
  /** position in the session's member list */
  slot: number;
}

/**
 * One throttle key. Kept small: most keys are declared by few sessions and have nobody waiting, so
 * a lone member is stored inline (a Map only from the second one), the queues are allocated on the
 * first wait and dropped when empty, and the effective limits are plain fields, kept up to date
 * from running sums.
 */
interface Throttle {
  readonly key: string;
  /** creation order: ties in the token heap */
  readonly serial: number;
  /** the members: none, one, or a Map by session id once there are two or more */
  members: Member | Map<string, Member> | null;
  /** members with a declaration, and the sums of their limits */
  declared: number;
  sumConnections: number;
  sumMessages: number;
  /** the member that declared last: its mode and source IP are the throttle's */
  latest: Member | null;
  /** effective limits (the last ones, while no declaration is left) */
  mode: Mode;
  sourceIp: string;
  maxConnections: number;
  maxMessagesPerHour: number;
  connectionsInUse: number;
  /** token bucket for messages */
  tokens: number;
  tokensAt: number;
  /** waiting requests per kind, heaps lowest (tag, id) first; null: nobody waits for that kind */
  connectionQueue: Waiter[] | null;
  messageQueue: Waiter[] | null;
  /** the tag of the request served last: the throttle's virtual time */
  virtualTime: number;
  /** when the bucket next holds a token for a waiting message (valid while in the token heap) */
  tokenReadyAt: number;
  tokenIndex: number;
}

interface SessionState {
  readonly id: string;
  /** backlog weight (reported queue size); at least 1 */
  weight: number;
  /** bumped on every weight change: finish tags set under an older epoch are void */
  epoch: number;
  /** its members, one per throttle it declared (unordered: removal swaps in the last one) */
  readonly members: Member[];
  /** the session's waiting requests, all throttles, in arrival order; null: none */
  waiters: Set<Waiter> | null;
  /** the connection leases taken by the session's own ACQUIREs (not deliveries'), newest first; null: none */
  leases: LeaseRecord | null;
}

const byTag = (a: Waiter, b: Waiter): boolean => a.tag < b.tag || (a.tag === b.tag && a.id < b.id);
const byDeadline = (a: Waiter, b: Waiter): boolean => a.deadline < b.deadline || (a.deadline === b.deadline && a.id < b.id);
const byTokenReady = (a: Throttle, b: Throttle): boolean =>
  a.tokenReadyAt < b.tokenReadyAt || (a.tokenReadyAt === b.tokenReadyAt && a.serial < b.serial);

const queues = new HeapOps<Waiter>(
  byTag,
  (w) => w.queueIndex,
  (w, i) => {
    w.queueIndex = i;
  },
);
const deadlines = new HeapOps<Waiter>(
  byDeadline,
  (w) => w.deadlineIndex,
  (w, i) => {
    w.deadlineIndex = i;
  },
);
const tokenWakeups = new HeapOps<Throttle>(
  byTokenReady,
  (t) => t.tokenIndex,
  (t, i) => {
    t.tokenIndex = i;
  },
);

function memberOf(t: Throttle, session: string): Member | undefined {
  const m = t.members;
  if (m === null) return undefined;
  if (m instanceof Map) return m.get(session);
  return m.session.id === session ? m : undefined;
}

function addMember(t: Throttle, member: Member): void {
  const m = t.members;
  if (m === null) t.members = member;
  else if (m instanceof Map) m.set(member.session.id, member);
  else t.members = new Map([[m.session.id, m], [member.session.id, member]]);
}

function removeMember(t: Throttle, member: Member): void {
  const m = t.members;
  if (m === member) t.members = null;
  else if (m instanceof Map && m.get(member.session.id) === member) {
    m.delete(member.session.id);
    if (m.size === 1) for (const only of m.values()) t.members = only;
  }
}

/** The member that declared last (null: no declaration left). */
function latestDeclared(t: Throttle): Member | null {
  const m = t.members;
  if (m === null || !(m instanceof Map)) return m?.declaration != null ? m : null;
  let latest: Member | null = null;
  for (const other of m.values()) if (other.declaration !== null && (latest === null || other.declaredAt > latest.declaredAt)) latest = other;
  return latest;
}

/** Another session's declaration that disagrees with d on the mode or the source IP. */
function conflicting(t: Throttle, session: string, d: Declaration): Member | null {
  const m = t.members;
  if (m === null) return null;
  for (const other of m instanceof Map ? m.values() : [m]) {
    const od = other.declaration;
    if (od !== null && other.session.id !== session && (od.mode !== d.mode || od.sourceIp !== d.sourceIp)) return other;
  }
  return null;
}

/** Swap-removes a member from its session's list. */
function unlinkFromSession(member: Member): void {
  const list = member.session.members;
  const last = list.pop() as Member;
  if (last !== member) {
    list[member.slot] = last;
    last.slot = member.slot;
  }
  member.slot = -1;
}

/** What an operation that changed nothing for any waiter returns (shared: never to be changed). */
const NO_EVENTS: readonly ThrottleEvent[] = Object.freeze([]);

/** Takes a lease out of its session's list (if in one). */
function unlinkLease(lease: LeaseRecord): void {
  const s = lease.owner;
  if (s === null) return;
  if (lease.prev === null) s.leases = lease.next;
  else lease.prev.next = lease.next;
  if (lease.next !== null) lease.next.prev = lease.prev;
  lease.owner = null;
  lease.prev = null;
  lease.next = null;
}

export class ThrottleManager {
  readonly #throttles = new Map<string, Throttle>();
  readonly #leases = new IdMap<LeaseRecord>();
  readonly #sessions = new Map<string, SessionState>();
  readonly #waiters = new IdMap<Waiter>();
  readonly #deadlines: Waiter[] = [];
  readonly #tokenWakeups: Throttle[] = [];
  #nextId = 1;
  #nextSerial = 1;
  #declarations = 0;

  get throttleCount(): number {
    return this.#throttles.size;
  }

  /** The keys of the throttles currently known. */
  keys(): IterableIterator<string> {
    return this.#throttles.keys();
  }

  get leaseCount(): number {
    return this.#leases.size;
  }

  /** Requests waiting, over all throttles. */
  get waiterCount(): number {
    return this.#waiters.size;
  }

  limits(key: string): EffectiveLimits | null {
    const t = this.#throttles.get(key);
    if (t === undefined) return null;
    return { mode: t.mode, maxConnections: t.maxConnections, maxMessagesPerHour: t.maxMessagesPerHour, sourceIp: t.sourceIp };
  }

  inUse(key: string): number {
    return this.#throttles.get(key)?.connectionsInUse ?? 0;
  }

  waiting(key: string): number {
    const t = this.#throttles.get(key);
    return t === undefined ? 0 : (t.connectionQueue?.length ?? 0) + (t.messageQueue?.length ?? 0);
  }

  /**
   * A read-only view of the throttles (`mtaproxy status --throttles`): does not refill, re-tag or
   * forget anything. Cost O(n + k log k) for n throttles matched and k = limit when the input is
   * ordered, O(n·k) moves at worst; never more than `limit` views are built.
   */
  throttleSnapshot(now: number, query: ThrottleQuery): ThrottleSnapshot {
    const limit = Math.max(0, Math.floor(query.limit));
    const filter = query.key ?? '';
    const busy = (t: Throttle): number => t.connectionsInUse + (t.connectionQueue?.length ?? 0) + (t.messageQueue?.length ?? 0);
    const before = (a: Throttle, b: Throttle): boolean => {
      const x = busy(a);
      const y = busy(b);
      return x > y || (x === y && a.key < b.key);
    };
    // the `limit` first in that order, kept sorted; a throttle not before the last one is skipped
    const top: Throttle[] = [];
    let matched = 0;
    for (const t of this.#throttles.values()) {
      if (filter !== '' && !t.key.includes(filter)) continue;
      matched++;
      if (limit === 0) continue;
      const last = top[top.length - 1];
      if (top.length >= limit && last !== undefined && !before(t, last)) continue;
      let lo = 0;
      let hi = top.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (before(top[mid] as Throttle, t)) lo = mid + 1;
        else hi = mid;
      }
      top.splice(lo, 0, t);
      if (top.length > limit) top.pop();
    }
    return { total: this.#throttles.size, matched, throttles: top.map((t) => this.#view(t, now, query.maxMembers ?? Infinity)) };
  }

  #view(t: Throttle, now: number, maxMembers: number): ThrottleView {
    const burst = messageBurst(t.maxMessagesPerHour);
    const elapsed = Math.max(0, now - t.tokensAt);
    const tokens = Math.min(burst, t.tokens + (elapsed * t.maxMessagesPerHour) / HOUR_MS);
    const all = t.members === null ? [] : t.members instanceof Map ? [...t.members.values()] : [t.members];
    all.sort((a, b) => (a.session.id < b.session.id ? -1 : a.session.id > b.session.id ? 1 : 0));
    return {
      key: t.key,
      mode: t.mode,
      sourceIp: t.sourceIp,
      maxConnections: t.maxConnections,
      maxMessagesPerHour: t.maxMessagesPerHour,
      declared: t.declared,
      connectionsInUse: t.connectionsInUse,
      // the same epsilon as #available: a bucket that holds one token to a rounding error shows 1
      messagesLeft: Math.max(0, Math.floor(tokens + 1e-9)),
      messageBurst: burst,
      waitingConnections: t.connectionQueue?.length ?? 0,
      waitingMessages: t.messageQueue?.length ?? 0,
      members: all.slice(0, maxMembers).map((m) => ({ session: m.session.id, declaration: m.declaration, weight: m.session.weight })),
      memberCount: all.length,
    };
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
    const waiters = s.waiters ?? [];
    for (const w of waiters) {
      w.member.finish = w.member.throttle.virtualTime;
      w.member.epoch = s.epoch;
    }
    for (const w of waiters) {
      const member = w.member;
      w.tag = member.finish;
      queues.update(this.#queueFor(member.throttle, w.kind), w);
      member.finish += 1 / weight;
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
        members: null,
        declared: 0,
        sumConnections: 0,
        sumMessages: 0,
        latest: null,
        mode: d.mode,
        sourceIp: d.sourceIp,
        maxConnections: d.maxConnections,
        maxMessagesPerHour: d.maxMessagesPerHour,
        connectionsInUse: 0,
        tokens: messageBurst(d.maxMessagesPerHour),
        tokensAt: now,
        connectionQueue: null,
        messageQueue: null,
        virtualTime: 0,
        tokenReadyAt: Infinity,
        tokenIndex: -1,
      };
      this.#throttles.set(d.key, t);
    } else {
      const other = conflicting(t, session, d);
      const od = other?.declaration;
      if (other != null && od != null) {
        warning = `throttle ${d.key}: ${session} declares mode=${d.mode} source=${d.sourceIp} but ${other.session.id} declared mode=${od.mode} source=${od.sourceIp}; the latest declaration wins`;
      }
    }
    let member = memberOf(t, session);
    if (member === undefined) {
      const s = this.#session(session);
      member = { session: s, throttle: t, declaration: null, declaredAt: 0, finish: 0, epoch: s.epoch, slot: s.members.length };
      s.members.push(member);
      addMember(t, member);
    }
    this.#refill(t, now);
    this.#withdraw(t, member);
    member.declaration = d;
    member.declaredAt = ++this.#declarations;
    t.declared++;
    t.sumConnections += d.maxConnections;
    t.sumMessages += d.maxMessagesPerHour;
    t.latest = member;
    this.#reconcile(t);
    const events: ThrottleEvent[] = [];
    this.#serve(t, now, events);
    return { events, warning };
  }

  /** Asks for a connection slot or a message token; waits at most until `deadline`. */
  acquire(session: string, key: string, kind: LeaseKind, now: number, deadline: number, opts?: AcquireOptions): AcquireResult {
    const t = this.#throttles.get(key);
    const member = t === undefined ? undefined : memberOf(t, session);
    if (t === undefined || member === undefined || member.declaration === null) {
      return { status: 'error', code: 553, message: `throttle ${key} is not declared on this MTA's control session` };
    }
    this.#refill(t, now);
    const s = member.session;
    // The tag is fixed at arrival: a session that queues many requests chains its own tags, so it
    // cannot get more than its weight's share while others wait.
    const tag = Math.max(t.virtualTime, member.epoch === s.epoch ? member.finish : 0);
    const heldByDelivery = opts?.heldByDelivery === true;
    const id = this.#nextId++; // the wait's, if it waits (taken in any case: ids as they always were)
    // Fast path only when nobody else waits for this kind: never jump the queue.
    if ((kind === 'connection' ? t.connectionQueue : t.messageQueue) === null && this.#available(t, kind)) {
      member.finish = tag + 1 / s.weight;
      member.epoch = s.epoch;
      const lease = this.#grant(t, session, kind, tag, heldByDelivery);
      this.#afterChange(t);
      return { status: 'granted', lease };
    }
    if (deadline <= now) return { status: 'error', code: 451, message: `throttle ${key}: no ${kind} available` };
    member.finish = tag + 1 / s.weight;
    member.epoch = s.epoch;
    const w: Waiter = { id, kind, deadline, heldByDelivery, member, tag, queueIndex: -1, deadlineIndex: -1 };
    queues.push(this.#queueFor(t, kind), w);
    deadlines.push(this.#deadlines, w);
    this.#waiters.set(w.id, w);
    (s.waiters ??= new Set()).add(w);
    this.#afterChange(t);
    return { status: 'queued', waitId: w.id };
  }

  /** Returns a connection slot (message tokens are consumed, releasing them is a no-op). */
  release(leaseId: number, now: number): readonly ThrottleEvent[] {
    const lease = this.#leases.get(leaseId);
    if (lease === undefined) return NO_EVENTS;
    this.#leases.delete(leaseId);
    unlinkLease(lease);
    const t = this.#throttles.get(lease.key);
    if (t === undefined) return NO_EVENTS;
    if (lease.kind === 'connection') t.connectionsInUse--;
    // nobody waits here (the usual case): nothing to serve, and no events array to allocate
    if (t.connectionQueue === null && t.messageQueue === null) {
      this.#afterChange(t);
      return NO_EVENTS;
    }
    const events: ThrottleEvent[] = [];
    this.#serve(t, now, events);
    return events;
  }

  /**
   * release() when nobody waits at the lease's throttle, so that nothing is served and no time is
   * needed (true: done, or no such lease); otherwise changes nothing and returns false: call release().
   */
  releaseIfIdle(leaseId: number): boolean {
    const lease = this.#leases.get(leaseId);
    if (lease === undefined) return true;
    const t = this.#throttles.get(lease.key);
    if (t !== undefined && (t.connectionQueue !== null || t.messageQueue !== null)) return false;
    this.release(leaseId, NaN); // the time is read only to serve waiters: there are none
    return true;
  }

  /**
   * Gives a message token back: the message it was taken for was not accepted (the destination
   * refused MAIL FROM), so it does not count against max_messages_per_hour.
   */
  refundMessage(key: string, now: number): ThrottleEvent[] {
    const t = this.#throttles.get(key);
    if (t === undefined) return [];
    this.#refill(t, now);
    t.tokens = Math.min(messageBurst(t.maxMessagesPerHour), t.tokens + 1);
    const events: ThrottleEvent[] = [];
    this.#serve(t, now, events);
    return events;
  }

  /** Withdraws one declaration (derived throttles nobody uses any more). */
  undeclare(session: string, key: string, now: number): ThrottleEvent[] {
    const t = this.#throttles.get(key);
    const member = t === undefined ? undefined : memberOf(t, session);
    if (t === undefined || member === undefined || member.declaration === null) return [];
    this.#withdraw(t, member);
    const events: ThrottleEvent[] = [];
    this.#settle(t, now, events);
    return events;
  }

  /** Cancels a queued request (e.g. its requester went away). */
  cancel(waitId: number): void {
    const w = this.#waiters.get(waitId);
    if (w === undefined) return;
    this.#dropWaiter(w);
    this.#afterChange(w.member.throttle);
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
    this.#sessions.delete(session);
    // throttles that got slots back; those the session is a member of are settled with its members
    let freed: Set<Throttle> | null = null;
    for (let lease = s.leases, next: LeaseRecord | null; lease !== null; lease = next) {
      // the whole list goes: no unlinking one by one
      next = lease.next;
      lease.owner = null;
      lease.prev = null;
      lease.next = null;
      this.#leases.delete(lease.id);
      const t = this.#throttles.get(lease.key);
      if (t !== undefined && lease.kind === 'connection') {
        t.connectionsInUse--;
        (freed ??= new Set()).add(t);
      }
    }
    s.leases = null;
    // every wait goes before any throttle serves again: none may be granted to this session
    for (const w of s.waiters ?? []) {
      const t = w.member.throttle;
      events.push({ type: 'cancelled', waitId: w.id, session, key: t.key, kind: w.kind });
      const queue = this.#queueFor(t, w.kind);
      queues.remove(queue, w);
      if (queue.length === 0) this.#setQueue(t, w.kind, null);
      deadlines.remove(this.#deadlines, w);
      this.#waiters.delete(w.id);
    }
    s.waiters = null;
    for (const member of s.members) {
      const t = member.throttle;
      removeMember(t, member);
      member.slot = -1;
      this.#withdraw(t, member);
      freed?.delete(t);
      this.#settle(t, now, events);
    }
    s.members.length = 0;
    for (const t of freed ?? []) this.#settle(t, now, events);
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
    const heap = this.#deadlines;
    for (let w = heap[0]; w !== undefined && w.deadline <= now && events.length < TICK_MAX_TIMEOUTS; w = heap[0]) {
      this.#dropWaiter(w);
      const t = w.member.throttle;
      events.push({ type: 'timeout', waitId: w.id, session: w.member.session.id, key: t.key, kind: w.kind });
      touched.add(t);
    }
    // take the due throttles off the heap first: serving one puts it back under its next time
    const due: Throttle[] = [];
    for (let t = this.#tokenWakeups[0]; t !== undefined && t.tokenReadyAt <= now; t = this.#tokenWakeups[0]) {
      tokenWakeups.remove(this.#tokenWakeups, t);
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
    const deadline = this.#deadlines[0]?.deadline ?? Infinity;
    const token = this.#tokenWakeups[0]?.tokenReadyAt ?? Infinity;
    const next = Math.min(deadline, token);
    return next === Infinity ? null : Math.max(now, next);
  }

  #session(session: string): SessionState {
    let s = this.#sessions.get(session);
    if (s === undefined) {
      s = { id: session, weight: 1, epoch: 0, members: [], waiters: null, leases: null };
      this.#sessions.set(session, s);
    }
    return s;
  }

  /** Takes the member's declaration (if any) out of the throttle's sums. */
  #withdraw(t: Throttle, member: Member): void {
    const d = member.declaration;
    if (d === null) return;
    member.declaration = null;
    t.declared--;
    t.sumConnections -= d.maxConnections;
    t.sumMessages -= d.maxMessagesPerHour;
    // the latest one went: the one declared last before it (only now a scan of the members)
    if (t.latest === member) t.latest = latestDeclared(t);
  }

  /** The effective limits from the sums and the latest declaration (see reconcile()). */
  #reconcile(t: Throttle): void {
    const latest = t.latest?.declaration;
    if (latest === undefined || latest === null) return; // none left: the last limits stay
    const mode = latest.mode;
    t.mode = mode;
    t.sourceIp = latest.sourceIp;
    t.maxConnections = mode === 'sum' ? t.sumConnections : Math.max(1, Math.round(t.sumConnections / t.declared));
    t.maxMessagesPerHour = mode === 'sum' ? t.sumMessages : Math.max(1, Math.round(t.sumMessages / t.declared));
  }

  /** After declarations went: new limits and grants if some are left, else maybe forget t. */
  #settle(t: Throttle, now: number, events: ThrottleEvent[]): void {
    if (t.declared > 0) {
      this.#refill(t, now);
      this.#reconcile(t);
      this.#serve(t, now, events);
    } else {
      this.#afterChange(t);
    }
  }

  #queueFor(t: Throttle, kind: LeaseKind): Waiter[] {
    if (kind === 'connection') return (t.connectionQueue ??= []);
    return (t.messageQueue ??= []);
  }

  #setQueue(t: Throttle, kind: LeaseKind, queue: Waiter[] | null): void {
    if (kind === 'connection') t.connectionQueue = queue;
    else t.messageQueue = queue;
  }

  /** Takes a waiting request out of every structure (not reported: the caller does that). */
  #dropWaiter(w: Waiter): void {
    const member = w.member;
    const t = member.throttle;
    const queue = w.kind === 'connection' ? t.connectionQueue : t.messageQueue;
    if (queue !== null) {
      queues.remove(queue, w);
      if (queue.length === 0) this.#setQueue(t, w.kind, null);
    }
    deadlines.remove(this.#deadlines, w);
    this.#waiters.delete(w.id);
    const s = member.session;
    if (s.waiters !== null && s.waiters.delete(w) && s.waiters.size === 0) s.waiters = null;
  }

  #available(t: Throttle, kind: LeaseKind): boolean {
    // epsilon: a refill computed for exactly one token must not fall short by a rounding error
    return kind === 'connection' ? t.connectionsInUse < t.maxConnections : t.tokens >= 1 - 1e-9;
  }

  #refill(t: Throttle, now: number): void {
    const elapsed = now - t.tokensAt;
    if (elapsed <= 0) return;
    t.tokens = Math.min(messageBurst(t.maxMessagesPerHour), t.tokens + (elapsed * t.maxMessagesPerHour) / HOUR_MS);
    t.tokensAt = now;
  }

  #grant(t: Throttle, session: string, kind: LeaseKind, tag: number, heldByDelivery: boolean): Lease {
    const lease: LeaseRecord = { id: this.#nextId++, session, key: t.key, kind, heldByDelivery, owner: null, prev: null, next: null };
    if (kind === 'connection') {
      t.connectionsInUse++;
      this.#leases.set(lease.id, lease);
      if (!heldByDelivery) {
        const s = this.#session(session);
        const head = s.leases;
        lease.owner = s;
        lease.next = head;
        if (head !== null) head.prev = lease;
        s.leases = lease;
      }
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
    // the new limits may have shrunk the bucket
    t.tokens = Math.min(t.tokens, messageBurst(t.maxMessagesPerHour));
    for (;;) {
      const c = this.#head(t, 'connection', now, events);
      const m = this.#head(t, 'message', now, events);
      const cOk = c !== undefined && this.#available(t, 'connection');
      const mOk = m !== undefined && this.#available(t, 'message');
      let w: Waiter;
      if (cOk && mOk) w = byTag(m, c) ? m : c;
      else if (cOk) w = c;
      else if (mOk) w = m;
      else break;
      this.#dropWaiter(w);
      events.push({ type: 'granted', waitId: w.id, lease: this.#grant(t, w.member.session.id, w.kind, w.tag, w.heldByDelivery) });
    }
    this.#afterChange(t);
  }

  /** The first request of a queue that is still within its deadline (the others time out). */
  #head(t: Throttle, kind: LeaseKind, now: number, events: ThrottleEvent[]): Waiter | undefined {
    for (;;) {
      const w = (kind === 'connection' ? t.connectionQueue : t.messageQueue)?.[0];
      if (w === undefined || w.deadline > now) return w;
      this.#dropWaiter(w);
      events.push({ type: 'timeout', waitId: w.id, session: w.member.session.id, key: t.key, kind: w.kind });
    }
  }

  /** Keeps the token heap right for t, and forgets t once nothing refers to it. */
  #afterChange(t: Throttle): void {
    if (t.messageQueue !== null) {
      const missing = 1 - t.tokens;
      t.tokenReadyAt = t.tokensAt + Math.max(0, (missing * HOUR_MS) / t.maxMessagesPerHour);
      tokenWakeups.update(this.#tokenWakeups, t);
    } else if (t.tokenIndex >= 0) {
      tokenWakeups.remove(this.#tokenWakeups, t);
    }
    if (t.declared === 0 && t.connectionsInUse === 0 && t.connectionQueue === null && t.messageQueue === null) {
      if (this.#throttles.get(t.key) !== t) return;
      this.#throttles.delete(t.key);
      const members = t.members;
      t.members = null;
      if (members instanceof Map) {
        for (const member of members.values()) if (member.slot >= 0) unlinkFromSession(member);
      } else if (members !== null && members.slot >= 0) {
        unlinkFromSession(members);
      }
    }
  }
}
