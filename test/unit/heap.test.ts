import { describe, expect, it } from 'vitest';
import { HEAP_GROWING_PERCENT, heapFlags } from '../../src/cli/heap.js';

describe('heapFlags', () => {
  it('sets the growing factor when node was started without one', () => {
    expect(heapFlags([])).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT}`]);
    expect(heapFlags(['--enable-source-maps', '--max-old-space-size=512'])).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT}`]);
  });
  it("leaves the operator's own factor alone, in either spelling", () => {
    expect(heapFlags(['--heap-growing-percent=50'])).toEqual([]);
    expect(heapFlags(['--heap_growing_percent=50'])).toEqual([]);
    expect(heapFlags(['--heap-growing-percent', '50'])).toEqual([]);
  });
  it('does not mistake a longer flag for it', () => {
    expect(heapFlags(['--heap-growing-percentage=5'])).toHaveLength(1);
  });
});
