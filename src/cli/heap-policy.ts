// The shell of src/cli/heap.ts: sets V8's growing factor at start and moves it after full
// collections (a 'gc' PerformanceObserver: a callback per collection, read only for the major ones).
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { growingPercentAfterGc, HEAP_GROWING_PERCENT, ownGrowingFactor } from './heap.js';

export interface HeapPolicy {
  /** the factor in effect: a heap_growing_percent, or 'own' when node was given one */
  readonly percent: () => number | 'own';
  stop(): void;
}

/** `changed` hears of each switch (the live heap in bytes that caused it). */
export function startHeapPolicy(changed: (percent: number, liveBytes: number) => void): HeapPolicy {
  if (ownGrowingFactor(process.execArgv)) return { percent: () => 'own', stop: () => {} };
  let current = HEAP_GROWING_PERCENT;
  setFlagsFromString(`--heap-growing-percent=${current}`);
  const observer = new PerformanceObserver((list) => {
    const major = list.getEntries().some((e) => (e as unknown as { detail?: { kind?: number } | null }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR);
    if (!major) return;
    const live = getHeapStatistics().used_heap_size;
    const next = growingPercentAfterGc(live, current);
    if (next === current) return;
    current = next;
    setFlagsFromString(`--heap-growing-percent=${next}`);
    changed(next, live);
  });
  observer.observe({ entryTypes: ['gc'] });
  return { percent: () => current, stop: () => observer.disconnect() };
}
