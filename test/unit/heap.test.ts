import { describe, expect, it } from 'vitest';
import { growingPercentAfterGc, HEAP_GROWING_PERCENT, LARGE_LIVE_HEAP, ownGrowingFactor, SMALL_LIVE_HEAP, V8_OWN_FACTOR } from '../../src/cli/heap.js';

const MiB = 1024 * 1024;

describe('ownGrowingFactor', () => {
  it('is false when node was started without one', () => {
    expect(ownGrowingFactor([])).toBe(false);
    expect(ownGrowingFactor(['--enable-source-maps', '--max-old-space-size=512'])).toBe(false);
  });
  it("sees the operator's own factor, in either spelling, 0 (V8's own) included", () => {
    expect(ownGrowingFactor(['--heap-growing-percent=50'])).toBe(true);
    expect(ownGrowingFactor(['--heap_growing_percent=0'])).toBe(true);
  });
  it('does not mistake a longer flag for it', () => {
    expect(ownGrowingFactor(['--heap-growing-percentage=5'])).toBe(false);
  });
});

describe('growingPercentAfterGc', () => {
  it('keeps the fixed factor for a small live heap', () => {
    expect(growingPercentAfterGc(9 * MiB, HEAP_GROWING_PERCENT)).toBe(HEAP_GROWING_PERCENT);
    expect(growingPercentAfterGc(LARGE_LIVE_HEAP, HEAP_GROWING_PERCENT)).toBe(HEAP_GROWING_PERCENT);
  });
  it("gives a large live heap V8's own factor, and the fixed one back only well below the line", () => {
    expect(growingPercentAfterGc(LARGE_LIVE_HEAP + 1, HEAP_GROWING_PERCENT)).toBe(V8_OWN_FACTOR);
    expect(growingPercentAfterGc(56 * MiB, V8_OWN_FACTOR)).toBe(V8_OWN_FACTOR);
    expect(growingPercentAfterGc(SMALL_LIVE_HEAP, V8_OWN_FACTOR)).toBe(V8_OWN_FACTOR);
    expect(growingPercentAfterGc(SMALL_LIVE_HEAP - 1, V8_OWN_FACTOR)).toBe(HEAP_GROWING_PERCENT);
  });
  it('never switches back and forth on one heap size', () => {
    for (let mib = 1; mib < 200; mib++) {
      const once = growingPercentAfterGc(mib * MiB, HEAP_GROWING_PERCENT);
      expect(growingPercentAfterGc(mib * MiB, once)).toBe(once);
    }
  });
});
