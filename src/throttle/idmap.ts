// A Map by increasing integer id for short-lived items (leases, waits, a client's pending
// requests) that allocates nothing per entry. Pure.

/**
 * A Map by increasing integer id for items that are mostly short-lived but may be very many. The
 * young ones sit in a direct-mapped table of YOUNG_SLOTS slots (slot = id mod YOUNG_SLOTS); an item
 * still there when a newer id needs its slot moves to the old Map. An ACQUIRE and its RELEASE then
 * touch one array slot and allocate nothing: a Map's deletions leave holes that a rehash clears,
 * and its table grows and shrinks with the churn, each time a new table for the garbage collector
 * (on one Map of 200 000 leases the churn cost about 5x what it costs on a small one). Only items
 * that outlive YOUNG_SLOTS newer ids (a delivery's lease, a long wait) reach the old Map.
 */
const YOUNG_SLOTS = 2048;
export class IdMap<V> {
  readonly #slots: number;
  /** the id in each slot, NaN: empty (equal to no id, whatever slot an odd id maps to) */
  readonly #ids: Float64Array;
  readonly #values: (V | undefined)[];
  #young = 0;
  readonly #old = new Map<number, V>();

  /** `slots`: the size of the young table (ids non-negative safe integers) */
  constructor(slots = YOUNG_SLOTS) {
    this.#slots = slots;
    this.#ids = new Float64Array(slots).fill(NaN);
    this.#values = new Array<V | undefined>(slots).fill(undefined);
  }

  get size(): number {
    return this.#young + this.#old.size;
  }

  get(id: number): V | undefined {
    const i = id % this.#slots; // NaN, a fraction or a negative id: no slot (undefined !== id)
    return this.#ids[i] === id ? this.#values[i] : this.#old.get(id);
  }

  /** `id` must be new (larger than every id set before). */
  set(id: number, v: V): void {
    const i = id % this.#slots;
    const held = this.#ids[i] as number;
    if (held === held) this.#old.set(held, this.#values[i] as V); // not NaN: a slot taken
    else this.#young++;
    this.#ids[i] = id;
    this.#values[i] = v;
  }

  delete(id: number): boolean {
    const i = id % this.#slots;
    if (this.#ids[i] !== id) return this.#old.delete(id);
    this.#ids[i] = NaN;
    this.#values[i] = undefined;
    this.#young--;
    return true;
  }

  /** All entries, in increasing id order (not for a hot path). */
  entries(): [number, V][] {
    const all: [number, V][] = [...this.#old];
    for (let i = 0; i < this.#slots; i++) if (!Number.isNaN(this.#ids[i])) all.push([this.#ids[i] as number, this.#values[i] as V]);
    return all.sort((a, b) => a[0] - b[0]);
  }

  clear(): void {
    this.#ids.fill(NaN);
    this.#values.fill(undefined);
    this.#young = 0;
    this.#old.clear();
  }
}
