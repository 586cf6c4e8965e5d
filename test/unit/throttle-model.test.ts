// Model-based review tests of the throttle bookkeeping: IdMap (the young direct-mapped table and
// its old Map) against a plain Map, and the ThrottleManager against a small reference model of
// its documented public behaviour (docs/protocol.md §4, docs/throttling.md, the doc comments).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IdMap } from '../../src/throttle/idmap.js';
import { reconcile, ThrottleManager, type Declaration, type Lease, type LeaseKind, type ThrottleEvent } from '../../src/throttle/manager.js';

// ---------------------------------------------------------------------------------------------
// IdMap
// ---------------------------------------------------------------------------------------------

type IdOp =
  | { op: 'set'; gap: number }
  | { op: 'get'; pick: number; raw: number | null }
  | { op: 'delete'; pick: number; raw: number | null }
  | { op: 'size' }
  | { op: 'entries' }
  | { op: 'clear' };

/** gaps between consecutive set() ids, biased to the table size and its multiples */
const gapArb = (slots: number): fc.Arbitrary<number> =>
  fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 1, max: 3 }) },
    { weight: 2, arbitrary: fc.constantFrom(slots, slots - 1, slots + 1, 2 * slots, 3 * slots, 2048, 4096) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 8 }).map((k) => k * slots) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 5 * slots }) },
    { weight: 1, arbitrary: fc.constantFrom(2 ** 31, 2 ** 32, 2 ** 40, 2 ** 52) },
  ).map((g) => Math.max(1, g)); // strictly increasing ids

/** ids that were never valid keys, or a position relative to the ids set so far */
const rawArb = fc.option(fc.constantFrom(-1, -2048, Number.NaN, 0.5, 2047.5, 1e300, -0, Infinity, -Infinity), { freq: 4 });

const idOpArb = (slots: number): fc.Arbitrary<IdOp> =>
  fc.oneof(
    { weight: 8, arbitrary: gapArb(slots).map((gap): IdOp => ({ op: 'set', gap })) },
    { weight: 4, arbitrary: fc.record({ pick: fc.nat(), raw: rawArb }).map((r): IdOp => ({ op: 'get', ...r })) },
    { weight: 5, arbitrary: fc.record({ pick: fc.nat(), raw: rawArb }).map((r): IdOp => ({ op: 'delete', ...r })) },
    { weight: 1, arbitrary: fc.constant<IdOp>({ op: 'size' }) },
    { weight: 1, arbitrary: fc.constant<IdOp>({ op: 'entries' }) },
    { weight: 1, arbitrary: fc.constant<IdOp>({ op: 'clear' }) },
  );

/** Runs ops on an IdMap and a Map side by side; every observable result must match. */
function runIdMapModel(slots: number | undefined, firstId: number, ops: readonly IdOp[]): void {
  const map = slots === undefined ? new IdMap<{ id: number }>() : new IdMap<{ id: number }>(slots);
  const model = new Map<number, { id: number }>();
  const everSet: number[] = [];
  let next = firstId;
  const target = (pick: number, raw: number | null): number => {
    // IdMap(1) with id -1 is the known failure of the dedicated test below: left out here so that
    // the random search keeps looking for other bugs
    if (raw !== null) return slots === 1 && raw === -1 ? -3 : raw;
    // an id set before (present or deleted), a never-set id between them, or the next id
    const choice = pick % 4;
    if (everSet.length === 0 || choice === 3) return next + (pick % 3);
    const known = everSet[Math.floor(pick / 4) % everSet.length] as number;
    return choice === 2 ? known + 1 : known;
  };
  for (const o of ops) {
    switch (o.op) {
      case 'set': {
        const id = next;
        const v = { id };
        map.set(id, v);
        model.set(id, v);
        everSet.push(id);
        // ids are safe integers (the manager's and the client's counters): past 2^53 a gap rounds away
        next = Number.isSafeInteger(id + o.gap) ? id + o.gap : id + 1;
        break;
      }
      case 'get': {
        const id = target(o.pick, o.raw);
        expect(map.get(id), `get(${id})`).toBe(model.get(id));
        break;
      }
      case 'delete': {
        const id = target(o.pick, o.raw);
        expect(map.delete(id), `delete(${id})`).toBe(model.delete(id));
        break;
      }
      case 'size':
        break;
      case 'entries':
        expect(map.entries()).toEqual([...model.entries()].sort((a, b) => a[0] - b[0]));
        break;
      case 'clear':
        map.clear();
        model.clear();
        break;
    }
    expect(map.size).toBe(model.size);
  }
  // the end state: every id ever set answers as the model does, entries match exactly
  for (const id of everSet) expect(map.get(id), `final get(${id})`).toBe(model.get(id));
  const entries = map.entries();
  expect(entries).toEqual([...model.entries()].sort((a, b) => a[0] - b[0]));
  for (const [id, v] of entries) expect(v.id).toBe(id);
}

describe('IdMap against a Map (model)', () => {
  it('matches a Map on random set/get/delete/size/entries/clear, small tables', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 3, 4, 7, 8, 16).chain((slots) =>
          fc.tuple(fc.constant(slots), fc.integer({ min: 0, max: 3 * slots }), fc.array(idOpArb(slots), { maxLength: 300 })),
        ),
        ([slots, firstId, ops]) => runIdMapModel(slots, firstId, ops),
      ),
      { numRuns: 1500 },
    );
  });

  it('matches a Map with the default table (2048 slots), gaps of exactly 2048 and its multiples', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 5000 }), fc.array(idOpArb(2048), { maxLength: 600 }), (firstId, ops) =>
        runIdMapModel(undefined, firstId, ops),
      ),
      { numRuns: 300 },
    );
  });

  it('an old entry survives many displacements through its slot, and deletes leave no ghost', () => {
    for (const slots of [1, 2, 5, 2048]) {
      const m = new IdMap<string>(slots);
      const model = new Map<number, string>();
      // ids 0, slots, 2*slots, …: every one lands on slot 0 and displaces the previous one
      for (let k = 0; k < 50; k++) {
        const id = k * slots;
        m.set(id, `v${id}`);
        model.set(id, `v${id}`);
        if (k % 3 === 1) {
          expect(m.delete(id - slots)).toBe(model.delete(id - slots));
        }
        if (k % 7 === 3) {
          expect(m.delete(id)).toBe(true);
          model.delete(id);
          expect(m.delete(id)).toBe(false); // already deleted
          expect(m.get(id)).toBeUndefined();
        }
        expect(m.size).toBe(model.size);
      }
      for (let id = -1; id <= 50 * slots; id++) expect(m.get(id)).toBe(model.get(id));
      expect(m.entries()).toEqual([...model.entries()]);
    }
  });

  it('invalid ids (negative, NaN, fractional, infinite) are absent and delete nothing', () => {
    const m = new IdMap<number>(4);
    for (let id = 0; id < 20; id++) m.set(id, id);
    for (const bad of [-1, -4, Number.NaN, 0.5, 3.5, 4 - 1e-12, Infinity, -Infinity, 1e300]) {
      expect(m.get(bad), `get(${bad})`).toBeUndefined();
      expect(m.delete(bad), `delete(${bad})`).toBe(false);
    }
    expect(m.size).toBe(20);
    expect(m.entries().map(([k]) => k)).toEqual([...Array(20).keys()]);
  });

  // FAILS on 042d6b6: with a table of one slot, -1 % 1 is -0, slot 0's "empty" marker is -1, so
  // delete(-1) on an empty slot reports true and takes size to -1 (tables of 2+ slots are not hit:
  // -1 % n is -1, no array index). Unreachable through the daemon (2048 slots, ids from the
  // parser are non-negative), but the class's own contract is broken.
  it('IdMap(1): delete(-1) deletes nothing and size stays 0', () => {
    const m = new IdMap<string>(1);
    expect(m.delete(-1)).toBe(false);
    expect(m.size).toBe(0);
    m.set(0, 'a');
    expect(m.delete(0)).toBe(true);
    expect(m.delete(-1)).toBe(false);
    expect(m.size).toBe(0);
    expect(m.entries()).toEqual([]);
  });

  it('after clear(), later ids start fresh and nothing old reappears', () => {
    const m = new IdMap<number>(8);
    for (let id = 0; id < 30; id++) m.set(id, id);
    m.clear();
    expect(m.size).toBe(0);
    expect(m.entries()).toEqual([]);
    for (let id = 0; id < 30; id++) expect(m.get(id)).toBeUndefined();
    for (let id = 30; id < 60; id += 3) m.set(id, -id);
    expect(m.size).toBe(10);
    for (let id = 0; id < 60; id++) expect(m.get(id)).toBe(id >= 30 && id % 3 === 0 ? -id : undefined);
  });
});

// ---------------------------------------------------------------------------------------------
// ThrottleManager
// ---------------------------------------------------------------------------------------------

const SESSIONS = ['s0', 's1', 's2', 's3'];
const KEYS = ['k0', 'k1', 'k2'];
const SOURCE = '127.0.0.2';

interface ModelLease { id: number; session: string; key: string; kind: LeaseKind; heldByDelivery: boolean }
interface ModelWait { session: string; key: string; kind: LeaseKind; deadline: number; delivery: boolean }

/** One step: a verb and random numbers that pick its arguments from the model's state. */
type Step = [verb: number, a: number, b: number, c: number];

class Harness {
  readonly m = new ThrottleManager();
  now = 1_000_000;
  /** session -> key -> declaration, and the order of declaring (latest last) */
  readonly decls = new Map<string, Map<string, { d: Declaration; at: number }>>();
  declCounter = 0;
  readonly leases = new Map<number, ModelLease>();
  readonly released = new Set<number>();
  readonly releasedList: number[] = [];
  readonly endedList: number[] = [];
  readonly conn = new Map<string, number>();
  /** delivery leases kept for thousands of steps (they outlive 2048 newer ids: the old Map) */
  readonly pinned = new Set<number>();
  longest = 0;
  maxId = 0;
  readonly waits = new Map<number, ModelWait>();
  readonly endedWaits = new Set<number>();
  /** what release() returned, and a copy to compare later (never mutated afterwards) */
  readonly returned: { list: readonly ThrottleEvent[]; copy: string }[] = [];
  grants = 0;
  nSessions: number;
  nKeys: number;

  constructor(nSessions: number, nKeys: number) {
    this.nSessions = nSessions;
    this.nKeys = nKeys;
  }

  sessionOf(n: number): string { return SESSIONS[n % this.nSessions] as string; }
  keyOf(n: number): string { return KEYS[n % this.nKeys] as string; }

  liveConnections(key: string): number {
    return this.conn.get(key) ?? 0;
  }

  addLease(l: ModelLease): void {
    this.leases.set(l.id, l);
    this.conn.set(l.key, this.liveConnections(l.key) + 1);
  }

  dropLease(id: number): void {
    const l = this.leases.get(id);
    if (l === undefined) return;
    this.leases.delete(id);
    if (this.pinned.delete(id)) this.longest = Math.max(this.longest, this.maxId - id);
    this.released.add(id);
    this.releasedList.push(id);
    this.conn.set(l.key, this.liveConnections(l.key) - 1);
  }

  endWait(id: number): void {
    this.waits.delete(id);
    this.endedWaits.add(id);
    this.endedList.push(id);
  }

  expectedLimits(key: string): ReturnType<typeof reconcile> {
    const ds: { d: Declaration; at: number }[] = [];
    for (const per of this.decls.values()) {
      const e = per.get(key);
      if (e !== undefined) ds.push(e);
    }
    ds.sort((x, y) => x.at - y.at);
    return reconcile(ds.map((e) => e.d));
  }

  /** Applies the events of one call, checking each against the model; `ctx` names the call. */
  apply(events: readonly ThrottleEvent[], ctx: string): void {
    for (const e of events) {
      const w = this.waits.get(e.waitId);
      expect(w, `${ctx}: event ${e.type} for wait ${e.waitId} that is not open (ended before: ${this.endedWaits.has(e.waitId)})`).toBeDefined();
      if (w === undefined) continue;
      this.endWait(e.waitId);
      if (e.type === 'granted') {
        expect(e.lease.session).toBe(w.session);
        expect(e.lease.key).toBe(w.key);
        expect(e.lease.kind).toBe(w.kind);
        expect(e.lease.heldByDelivery).toBe(w.kind === 'connection' && w.delivery);
        this.grant(e.lease, ctx);
      } else {
        expect(e.session).toBe(w.session);
        expect(e.key).toBe(w.key);
        expect(e.kind).toBe(w.kind);
        if (e.type === 'timeout') expect(w.deadline, `${ctx}: wait ${e.waitId} timed out before its deadline`).toBeLessThanOrEqual(this.now);
      }
    }
  }

  grant(l: Lease, ctx: string): void {
    this.grants++;
    if (l.kind !== 'connection') return;
    expect(this.leases.has(l.id) || this.released.has(l.id), `${ctx}: lease id ${l.id} reused`).toBe(false);
    this.addLease({ id: l.id, session: l.session, key: l.key, kind: l.kind, heldByDelivery: l.heldByDelivery });
    this.maxId = Math.max(this.maxId, l.id);
    if (l.heldByDelivery && this.pinned.size < 6 && l.id % 4 === 0) this.pinned.add(l.id);
    const lim = this.m.limits(l.key);
    expect(lim, `${ctx}: a grant on ${l.key} with no limits`).not.toBeNull();
    // a grant never takes the key past its limit (checked as the grants of one call come in)
    expect(this.liveConnections(l.key), `${ctx}: grant of lease ${l.id} past ${l.key}'s limit`).toBeLessThanOrEqual(lim?.maxConnections ?? 0);
  }

  check(ctx: string): void {
    const waiting = new Map<string, number>();
    const connWaits = new Map<string, number>();
    const overdue = new Set<string>();
    for (const x of this.waits.values()) {
      waiting.set(x.key, (waiting.get(x.key) ?? 0) + 1);
      if (x.kind === 'connection') {
        connWaits.set(x.key, (connWaits.get(x.key) ?? 0) + 1);
        if (x.deadline <= this.now) overdue.add(x.key);
      }
    }
    for (const key of KEYS) {
      expect(this.m.inUse(key), `${ctx}: inUse(${key})`).toBe(this.liveConnections(key));
      expect(this.m.waiting(key), `${ctx}: waiting(${key})`).toBe(waiting.get(key) ?? 0);
      const exp = this.expectedLimits(key);
      const lim = this.m.limits(key);
      if (exp !== null) expect(lim, `${ctx}: limits(${key})`).toEqual(exp);
      // work-conserving: nobody waits for a connection while a slot is free (unless overdue)
      const cw = connWaits.get(key) ?? 0;
      if (cw > 0 && lim !== null && !overdue.has(key)) {
        expect(this.m.inUse(key), `${ctx}: ${key} has free slots and ${cw} waiting`).toBeGreaterThanOrEqual(lim.maxConnections);
      }
    }
    expect(this.m.waiterCount, `${ctx}: waiterCount`).toBe(this.waits.size);
  }

  /** Every live lease is known to the manager with its public fields (O(leases): not every step). */
  checkLeases(ctx: string): void {
    for (const l of this.leases.values()) {
      const got = this.m.lease(l.id);
      expect(got, `${ctx}: lease ${l.id} lost`).toBeDefined();
      expect(got === undefined ? undefined : { id: got.id, session: got.session, key: got.key, kind: got.kind, heldByDelivery: got.heldByDelivery }).toEqual(l);
    }
  }

  checkReturned(): void {
    for (const r of this.returned) {
      expect(summary(r.list), 'an event list release() returned was changed later').toBe(r.copy);
    }
    // a list returned more than once is shared: it must be the frozen empty one
    const seen = new Set<readonly ThrottleEvent[]>();
    for (const r of this.returned) {
      if (seen.has(r.list)) {
        expect(r.list, 'a list release() returned twice is not empty').toHaveLength(0);
        expect(Object.isFrozen(r.list), 'a shared list release() returned is not frozen').toBe(true);
        expect(() => (r.list as ThrottleEvent[]).push({ type: 'timeout', waitId: -1, session: 'x', key: 'x', kind: 'connection' })).toThrow(TypeError);
      }
      seen.add(r.list);
    }
  }

  doRelease(id: number, ctx: string): void {
    const before = KEYS.map((k) => this.m.inUse(k));
    const live = this.leases.get(id);
    const events = this.m.release(id, this.now);
    this.returned.push({ list: events, copy: summary(events) });
    if (this.returned.length > 500) this.returned.splice(0, 250);
    if (live === undefined) {
      // twice, unknown, a message token: changes nothing
      expect(events, `${ctx}: release(${id}) of no live lease returned events`).toHaveLength(0);
      expect(KEYS.map((k) => this.m.inUse(k))).toEqual(before);
      return;
    }
    this.dropLease(id);
    this.apply(events, ctx);
  }

  step([verb, a, b, c]: Step, i: number): void {
    const ctx = `step ${i} verb ${verb % 100}`;
    const v = verb % 100;
    const session = this.sessionOf(a);
    const key = this.keyOf(b);
    if (v < 34) {
      // acquire a connection (a delivery's one in a third of the cases) or a message token
      const kind: LeaseKind = v < 30 ? 'connection' : 'message';
      const delivery = kind === 'connection' && c % 3 === 0;
      const wait = [0, 0, 5, 50, 500, 5000, 10_000_000][c % 7] as number;
      const declared = this.decls.get(session)?.has(key) === true;
      const before = KEYS.map((k) => this.m.inUse(k));
      const r = this.m.acquire(session, key, kind, this.now, this.now + wait, delivery ? { heldByDelivery: true } : undefined);
      if (r.status === 'error') {
        if (!declared) expect(r.code).toBe(553);
        expect(KEYS.map((k) => this.m.inUse(k))).toEqual(before);
      } else {
        expect(declared, `${ctx}: acquire on an undeclared key answered ${r.status}`).toBe(true);
        if (r.status === 'granted') {
          expect(r.lease.session).toBe(session);
          expect(r.lease.key).toBe(key);
          expect(r.lease.kind).toBe(kind);
          expect(r.lease.heldByDelivery).toBe(delivery);
          this.grant(r.lease, ctx);
        } else {
          expect(this.waits.has(r.waitId) || this.endedWaits.has(r.waitId), `${ctx}: wait id ${r.waitId} reused`).toBe(false);
          this.waits.set(r.waitId, { session, key, kind, deadline: this.now + wait, delivery });
        }
      }
    } else if (v < 64) {
      // release a live lease: the oldest ones mostly stay (long-held), churn on the newest
      const ids = [...this.leases.keys()].filter((id) => c % 700 === 0 || !this.pinned.has(id));
      if (ids.length > 0) {
        const pick = c % 4 === 0 ? ids[a % ids.length] : ids[ids.length - 1 - (a % Math.min(ids.length, 3))];
        this.doRelease(pick as number, ctx);
      }
    } else if (v < 68) {
      // release an already released id, an unknown one, a negative or a huge one
      const gone = this.releasedList;
      const id = [gone[a % Math.max(1, gone.length)] ?? 0, 999_999_999, -1, 0, a, 2 ** 40][c % 6] as number;
      this.doRelease(id, ctx);
    } else if (v < 72) {
      // releaseIfIdle: true means done (or no such lease), false changes nothing
      const ids = [...this.leases.keys()].filter((id) => !this.pinned.has(id));
      const id = ids.length > 0 && c % 5 !== 0 ? (ids[a % ids.length] as number) : 777_777_777;
      const live = this.leases.get(id);
      const before = KEYS.map((k) => this.m.inUse(k));
      const done = this.m.releaseIfIdle(id);
      if (live === undefined) expect(done).toBe(true);
      if (done && live !== undefined) this.dropLease(id);
      if (!done) {
        expect(KEYS.map((k) => this.m.inUse(k))).toEqual(before);
        expect(this.m.waiting(live?.key ?? '')).toBeGreaterThan(0);
      }
    } else if (v < 76) {
      // cancel an open wait, an ended one, or an unknown id: no event, the wait is gone
      const ids = [...this.waits.keys()];
      const ended = this.endedList;
      const id = (c % 3 === 0 ? ended[a % Math.max(1, ended.length)] : ids[a % Math.max(1, ids.length)]) ?? 123_456_789;
      this.m.cancel(id);
      if (this.waits.has(id)) this.endWait(id);
    } else if (v < 86) {
      // time goes by; overdue waits expire, buckets refill
      this.now += [1, 3, 10, 60, 600, 6000, 60_000][c % 7] as number;
      for (let n = 0; n < 100; n++) {
        this.apply(this.m.tick(this.now), `${ctx} tick`);
        const next = this.m.nextWakeup(this.now);
        if (next === null || next > this.now) break;
      }
      for (const [id, w] of this.waits) expect(w.deadline, `${ctx}: wait ${id} overdue after tick`).toBeGreaterThan(this.now);
    } else if (v < 95) {
      // (re-)declare with other limits and maybe the other mode
      const d: Declaration = { key, sourceIp: SOURCE, maxConnections: 1 + (c % 40 < 20 ? c % 4 : c % 40), maxMessagesPerHour: 60 + (c % 7) * 60, mode: (c >> 3) % 3 === 0 ? 'average' : 'sum' };
      const r = this.m.declare(session, d, this.now);
      let per = this.decls.get(session);
      if (per === undefined) this.decls.set(session, (per = new Map()));
      per.set(key, { d, at: ++this.declCounter });
      this.apply(r.events, ctx);
    } else if (v < 97) {
      this.leave(session, ctx);
    } else {
      this.m.setBacklog(session, c % 1000);
    }
  }

  leave(session: string, ctx: string): void {
    const own = [...this.leases.values()].filter((l) => l.session === session && !l.heldByDelivery).map((l) => l.id);
    const kept = [...this.leases.values()].filter((l) => l.session === session && l.heldByDelivery).map((l) => l.id);
    const waits = [...this.waits].filter(([, w]) => w.session === session).map(([id]) => id);
    this.decls.delete(session);
    const events = this.m.leave(session, this.now);
    const cancelled = events.filter((e) => e.type === 'cancelled').map((e) => e.waitId);
    expect(cancelled.sort((x, y) => x - y), `${ctx}: leave(${session}) cancelled`).toEqual(waits.sort((x, y) => x - y));
    for (const e of events) if (e.type === 'granted') expect(e.lease.session, `${ctx}: leave granted its own session's wait`).not.toBe(session);
    for (const id of own) {
      this.dropLease(id);
      expect(this.m.lease(id), `${ctx}: leave kept own lease ${id}`).toBeUndefined();
    }
    for (const id of kept) expect(this.m.lease(id), `${ctx}: leave freed delivery lease ${id}`).toBeDefined();
    this.apply(events, ctx);
  }

  finish(): void {
    for (let s = 0; s < this.nSessions; s++) this.leave(SESSIONS[s] as string, 'final leave');
    this.check('after everyone left');
    this.checkLeases('after everyone left');
    expect(this.waits.size).toBe(0);
    for (const id of [...this.leases.keys()]) {
      expect(this.leases.get(id)?.heldByDelivery, `lease ${id} survived the leave of its session`).toBe(true);
      this.doRelease(id, 'final release');
    }
    this.now += 10 ** 9;
    this.apply(this.m.tick(this.now), 'final tick');
    for (const key of KEYS) expect(this.m.inUse(key), `final inUse(${key})`).toBe(0);
    expect(this.m.waiterCount).toBe(0);
    expect(this.m.leaseCount).toBe(0);
    this.checkReturned();
  }
}

/** The events' public fields as text (the lease objects may be internal records, with links). */
function summary(events: readonly ThrottleEvent[]): string {
  return JSON.stringify(events.map((e) => (e.type === 'granted' ? ['g', e.waitId, e.lease.id, e.lease.session, e.lease.key] : [e.type, e.waitId, e.session, e.key])));
}

const stepArb: fc.Arbitrary<Step> = fc.tuple(fc.nat(), fc.nat(), fc.nat(), fc.nat());

function runManagerModel(nSessions: number, nKeys: number, steps: readonly Step[]): Harness {
  const h = new Harness(nSessions, nKeys);
  // everyone declares every key first, so that most steps act
  for (let s = 0; s < nSessions; s++) for (let k = 0; k < nKeys; k++) h.step([86, s, k, s + k], -1);
  steps.forEach((st, i) => {
    h.step(st, i);
    h.check(`after step ${i} (${JSON.stringify(st)})`);
    if (i % 97 === 0 || steps.length < 200) {
      h.checkReturned();
      h.checkLeases(`after step ${i}`);
    }
  });
  h.finish();
  return h;
}

describe('ThrottleManager against a model', () => {
  it('short random histories (shrinkable): leases, waits, leave, limits stay consistent', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 4 }), fc.integer({ min: 2, max: 3 }), fc.array(stepArb, { maxLength: 150 }), (ns, nk, steps) => {
        runManagerModel(ns, nk, steps);
      }),
      { numRuns: 1500 },
    );
  });

  it('long histories: thousands of leases, ids cross the 2048-slot boundary many times, long-held leases mixed with churn', () => {
    let maxId = 0;
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 4 }), fc.integer({ min: 2, max: 3 }), fc.array(stepArb, { minLength: 9000, maxLength: 9000 }), (ns, nk, steps) => {
        const h = runManagerModel(ns, nk, steps);
        maxId = Math.max(maxId, ...h.released);
        expect(h.longest, 'no lease outlived 2048 newer ids').toBeGreaterThan(2048);
        expect(h.grants).toBeGreaterThan(2048);
      }),
      { numRuns: 3, endOnFailure: true }, // no shrinking of 9000 steps: the short test above shrinks
    );
    expect(maxId).toBeGreaterThan(2 * 2048); // the ids went round the young table at least twice (random: ~6 000 typical)
  }, 50_000);
});
