// Destination connections shared by every MTA, at transaction granularity (design.md §7): a
// connection is borrowed for one transaction and given back right after; an idle one waits for the
// next borrower of its key for at most `idleTimeoutMs`, and is retired by age (time-based, as
// Postfix's smtp_connection_reuse_time_limit), optionally by a count of transactions, on any
// failure, and with QUIT on shutdown. The pool knows nothing of front-ends or throttles: a new
// connection needs a slot that the borrower's `acquireSlot` gets (the throttle's connection slot),
// and the slot stays with the connection, cached or not, until the connection is retired.
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import { DestinationConnection, SmtpConnectionError, type ConnectionSpec, type SmtpTimeouts } from './connection.js';
import { EgressError } from '../egress/tunnel.js';

export interface PoolLimits {
  /** how long an idle connection is kept for the next transaction */
  readonly idleTimeoutMs: number;
  /** a connection is not lent again once this old (Postfix: 300 s) */
  readonly maxAgeMs: number;
  /** transactions per connection, 0 for no limit (time-based by default) */
  readonly maxTransactions: number;
}

export type SlotOutcome = { ok: true; release: () => void } | { ok: false; code: number; message: string };

export interface BorrowRequest {
  /** the pool key: connections are shared only between borrowers of the same key */
  readonly key: string;
  /**
   * connections of one group share a slot budget (the throttle): an idle connection of another
   * key of the group may be retired to free a slot for this one (retireIdle)
   */
  readonly group: string;
  readonly spec: ConnectionSpec;
  /** takes a connection slot for a new connection (waiting if needed); returns a canceller */
  readonly acquireSlot: (done: (outcome: SlotOutcome) => void) => () => void;
  /** skip idle connections (a retry after a cached one died) */
  readonly fresh?: boolean;
}

export type BorrowOutcome = { ok: true; conn: DestinationConnection; reused: boolean } | { ok: false; code: number; message: string };

interface Pooled {
  readonly conn: DestinationConnection;
  readonly key: string;
  readonly group: string;
  releaseSlot: (() => void) | null;
  idleTimer: WheelTimer | null;
}

interface Waiter {
  readonly done: (o: BorrowOutcome) => void;
  settled: boolean;
  cancelSlot: (() => void) | null;
  /** answers the borrower now (shutdown), wherever it is in its wait */
  fail: (code: number, message: string) => void;
}

interface KeyState {
  readonly spec: ConnectionSpec;
  readonly group: string;
  readonly idle: Pooled[];
  readonly active: Set<Pooled>;
  readonly waiters: Waiter[];
  opening: number;
}

export interface PoolSnapshot {
  readonly connections: number;
  readonly active: number;
  readonly cached: number;
  readonly opening: number;
  readonly keys: readonly { key: string; group: string; spec: ConnectionSpec; active: number; opening: number; waiting: number; cached: readonly { id: number; ageMs: number; idleMs: number; transactions: number; tls: string }[] }[];
}

export class SmtpPool {
  readonly #keys = new Map<string, KeyState>();
  readonly #byConn = new Map<DestinationConnection, Pooled>();
  /** borrowers whose new connection is being opened (no longer in their key's waiters) */
  readonly #openingWaiters = new Set<Waiter>();
  readonly #wheel: TimerWheel;
  #limits: PoolLimits;
  #timeouts: SmtpTimeouts;
  #stopping = false;
  /** connections opened, for the status line */
  opened = 0;
  /** borrows served by an idle connection */
  reusedCount = 0;

  constructor(wheel: TimerWheel, limits: PoolLimits, timeouts: SmtpTimeouts) {
    this.#wheel = wheel;
    this.#limits = limits;
    this.#timeouts = timeouts;
  }

  get timeouts(): SmtpTimeouts {
    return this.#timeouts;
  }

  /** New limits (reload): idle connections that no longer fit them are retired at once. */
  configure(limits: PoolLimits, timeouts: SmtpTimeouts): void {
    this.#limits = limits;
    this.#timeouts = timeouts;
    for (const p of [...this.#byConn.values()]) if (p.idleTimer !== null && !this.#reusable(p)) this.#retire(p, true);
  }

  /** Gives `done` a live connection for `req.key` (an idle one, else a new one). Returns a canceller. */
  borrow(req: BorrowRequest, done: (o: BorrowOutcome) => void): () => void {
    if (this.#stopping) {
      done({ ok: false, code: 421, message: 'proxy shutting down' });
      return () => {};
    }
    if (req.fresh !== true) {
      const p = this.#takeIdle(this.#key(req.key, req.spec, req.group));
      if (p !== null) {
        this.reusedCount++;
        done({ ok: true, conn: p.conn, reused: true });
        return () => {};
      }
    }
    // taken only now: retiring unfit idle connections may have dropped the key's state
    const ks = this.#key(req.key, req.spec, req.group);
    const w: Waiter = { done, settled: false, cancelSlot: null, fail: () => {} };
    ks.waiters.push(w);
    const settle = (o: BorrowOutcome): boolean => {
      if (w.settled) return false;
      w.settled = true;
      this.#openingWaiters.delete(w);
      const i = ks.waiters.indexOf(w);
      if (i !== -1) ks.waiters.splice(i, 1);
      w.done(o);
      return true;
    };
    w.fail = (code, message) => settle({ ok: false, code, message });
    w.cancelSlot = req.acquireSlot((slot) => {
      w.cancelSlot = null;
      if (!slot.ok) {
        settle({ ok: false, code: slot.code, message: slot.message });
        this.#gc(req.key);
        return;
      }
      if (w.settled) {
        // served by a connection given back meanwhile
        slot.release();
        return;
      }
      // this waiter now opens its own connection: it no longer takes one given back
      const i = ks.waiters.indexOf(w);
      if (i !== -1) ks.waiters.splice(i, 1);
      this.#openingWaiters.add(w);
      ks.opening++;
      DestinationConnection.open(req.spec, this.#timeouts, this.#wheel).then(
        (conn) => {
          ks.opening--;
          this.opened++;
          const p: Pooled = { conn, key: req.key, group: req.group, releaseSlot: slot.release, idleTimer: null };
          this.#byConn.set(conn, p);
          conn.onDead = () => this.#dead(p);
          if (w.settled || this.#stopping) {
            // the borrower went away: the connection is good, keep it for the next one
            this.#giveBack(p, true);
            return;
          }
          ks.active.add(p);
          settle({ ok: true, conn, reused: false });
        },
        (err: unknown) => {
          ks.opening--;
          slot.release();
          const refusal = err instanceof SmtpConnectionError || err instanceof EgressError ? { code: err.code, message: err.message } : { code: 421, message: String(err) };
          settle({ ok: false, ...refusal });
          this.#gc(req.key);
        },
      );
    });
    return () => {
      if (w.settled) return;
      w.settled = true;
      this.#openingWaiters.delete(w);
      const i = ks.waiters.indexOf(w);
      if (i !== -1) ks.waiters.splice(i, 1);
      w.cancelSlot?.();
      this.#gc(req.key);
    };
  }

  /**
   * The borrower is done with `conn`: `reusable` if its last reply was a normal end of a
   * transaction (final reply of DATA, or RSET answered 250) and nothing went wrong.
   */
  giveBack(conn: DestinationConnection, reusable: boolean): void {
    const p = this.#byConn.get(conn);
    if (p === undefined) return;
    this.#known(p).active.delete(p);
    this.#giveBack(p, reusable);
  }

  #giveBack(p: Pooled, reusable: boolean): void {
    if (!reusable || this.#stopping || !this.#reusable(p)) return this.#retire(p, reusable);
    const ks = this.#known(p);
    const w = ks.waiters.shift();
    if (w !== undefined) {
      w.settled = true;
      w.cancelSlot?.();
      ks.active.add(p);
      this.reusedCount++;
      w.done({ ok: true, conn: p.conn, reused: true });
      return;
    }
    p.conn.lastUsedAt = performance.now();
    ks.idle.push(p);
    p.idleTimer = this.#wheel.add(this.#limits.idleTimeoutMs, () => {
      p.idleTimer = null;
      this.#retire(p, true);
    });
  }

  #reusable(p: Pooled): boolean {
    if (p.conn.dead) return false;
    if (performance.now() - p.conn.openedAt >= this.#limits.maxAgeMs) return false;
    return this.#limits.maxTransactions === 0 || p.conn.transactions < this.#limits.maxTransactions;
  }

  /** The most recently used idle connection that is still fit (LIFO keeps the rest aging out). */
  #takeIdle(ks: KeyState): Pooled | null {
    for (let p = ks.idle.pop(); p !== undefined; p = ks.idle.pop()) {
      p.idleTimer?.cancel();
      p.idleTimer = null;
      if (!this.#reusable(p)) {
        this.#retire(p, true);
        continue;
      }
      ks.active.add(p);
      return p;
    }
    return null;
  }

  #dead(p: Pooled): void {
    // an idle connection that died (the destination's idle timeout): out of the cache now; an
    // active one is given back by its borrower, who saw the failure
    const ks = this.#keys.get(p.key);
    if (ks === undefined) return;
    const i = ks.idle.indexOf(p);
    if (i !== -1) {
      ks.idle.splice(i, 1);
      this.#retire(p, false);
    }
  }

  #retire(p: Pooled, polite: boolean): void {
    p.idleTimer?.cancel();
    p.idleTimer = null;
    const ks = this.#keys.get(p.key);
    if (ks !== undefined) {
      const i = ks.idle.indexOf(p);
      if (i !== -1) ks.idle.splice(i, 1);
      ks.active.delete(p);
    }
    this.#byConn.delete(p.conn);
    if (polite) p.conn.quit();
    else p.conn.destroy('retired');
    p.releaseSlot?.();
    p.releaseSlot = null;
    this.#gc(p.key);
  }

  #key(key: string, spec: ConnectionSpec, group: string): KeyState {
    let ks = this.#keys.get(key);
    if (ks === undefined) this.#keys.set(key, (ks = { spec, group, idle: [], active: new Set(), waiters: [], opening: 0 }));
    return ks;
  }

  /** The state of a connection's key (made again if it was dropped meanwhile: never an error). */
  #known(p: Pooled): KeyState {
    return this.#key(p.key, p.conn.spec, p.group);
  }

  #gc(key: string): void {
    const ks = this.#keys.get(key);
    if (ks !== undefined && ks.idle.length === 0 && ks.active.size === 0 && ks.waiters.length === 0 && ks.opening === 0) this.#keys.delete(key);
  }

  /**
   * QUITs up to `n` idle connections of `group`, those idle longest first: a throttle whose limit
   * shrank, or a borrower of another key of the group waiting for a slot. Returns how many.
   */
  retireIdle(group: string, n: number): number {
    const idle: Pooled[] = [];
    for (const ks of this.#keys.values()) if (ks.group === group) idle.push(...ks.idle);
    idle.sort((a, b) => a.conn.lastUsedAt - b.conn.lastUsedAt);
    const retired = idle.slice(0, Math.max(0, n));
    for (const p of retired) this.#retire(p, true);
    return retired.length;
  }

  /** Groups with connections (for trimming them to their throttles' limits). */
  groups(): Set<string> {
    const g = new Set<string>();
    for (const ks of this.#keys.values()) g.add(ks.group);
    return g;
  }

  /** Idle connections QUIT now; active ones when given back; no new borrows. */
  shutdown(): void {
    this.#stopping = true;
    for (const w of [...this.#openingWaiters]) w.fail(421, 'proxy shutting down');
    for (const ks of [...this.#keys.values()]) {
      for (const w of ks.waiters.splice(0)) {
        w.cancelSlot?.();
        w.fail(421, 'proxy shutting down');
      }
      for (const p of [...ks.idle]) this.#retire(p, true);
    }
  }

  snapshot(): PoolSnapshot {
    const now = performance.now();
    let active = 0;
    let cached = 0;
    let opening = 0;
    const keys: PoolSnapshot['keys'][number][] = [];
    for (const [key, ks] of this.#keys) {
      active += ks.active.size;
      cached += ks.idle.length;
      opening += ks.opening;
      keys.push({
        key,
        group: ks.group,
        spec: ks.spec,
        active: ks.active.size,
        opening: ks.opening,
        waiting: ks.waiters.length,
        cached: ks.idle.map((p) => ({
          id: p.conn.id,
          ageMs: Math.round(now - p.conn.openedAt),
          idleMs: Math.round(now - p.conn.lastUsedAt),
          transactions: p.conn.transactions,
          tls: p.conn.tls === null ? 'none' : p.conn.tls.version,
        })),
      });
    }
    return { connections: active + cached, active, cached, opening, keys };
  }
}
