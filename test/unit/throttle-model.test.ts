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
        next = id + o.gap;
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
