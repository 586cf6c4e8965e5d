// V8's old-generation growing factor for the daemon. Measured (docs/benchmarks.md, "The bulk
// path's full marks"): the daemon's live heap (~8–9 MB after start) sits just above V8's 8 MB
// threshold for incremental marking, and with V8's dynamic factor (~2.5 here) the old
// generation's free room (limit - size, ~12 MB) is smaller than the young generation's capacity
// (16 MB once the session path has grown it). V8 then starts a full incremental mark "in case the
// next scavenge promotes everything": during a 10 MiB DATA phase, whose 64 KiB reads allocate
// almost nothing on the JS heap, one full mark per delivery (15–25 per 15 deliveries in
// `--trace-incremental-marking`), which made the proxy's CPU per MiB 1.1–1.5x what it was without
// them (same-run A/Bs). A fixed factor of 5 (heap_growing_percent=400) leaves the old generation
// room above the young generation's capacity: 1–2 marks in the same run. A factor of 4 (300)
// still marked 9 times.
//
// The problem is a small heap's: with 64 MiB live, V8's own factor leaves far more room than the
// young generation needs, and a fixed 5 would let a large heap's garbage grow to 4x its live size.
// So the fixed factor holds only while the live heap (the heap right after a full collection) is
// under LARGE_LIVE_HEAP: then V8's own again, and the fixed one back below SMALL_LIVE_HEAP (the gap
// keeps a heap near the line from switching at every collection). At most the heap reaches
// 5 x 64 MiB. A node flag of the operator's own (`node --heap-growing-percent=N`) wins: the
// daemon sets none and never changes it then.
//
// Measured for the throttle path and not set (docs/benchmarks.md, "Throttle, a fourth pass"): a
// smaller young generation cannot be had at run time (--max-semi-space-size is read only when the
// heap is set up; --semi-space-growth-factor=1, which had no effect given on the node command
// line, does hold the young generation at its 1 MiB start when set here: 4x the scavenges, each
// only ~25 % shorter, p99 unchanged); --no-parallel-scavenge (read at each scavenge, so it works
// here) shortened the throttle's scavenges on 2 cores but cost the PROXY v2 session path 5-14 %
// more CPU per session in 3 same-time A/B runs.

export const HEAP_GROWING_PERCENT = 400;
/** heap_growing_percent = 0 is V8's own dynamic factor */
export const V8_OWN_FACTOR = 0;
export const LARGE_LIVE_HEAP = 64 * 1024 * 1024;
export const SMALL_LIVE_HEAP = 48 * 1024 * 1024;

/** The growing percent to use after a full collection left `liveBytes` on the heap. */
export function growingPercentAfterGc(liveBytes: number, current: number): number {
  if (current === HEAP_GROWING_PERCENT && liveBytes > LARGE_LIVE_HEAP) return V8_OWN_FACTOR;
  if (current === V8_OWN_FACTOR && liveBytes < SMALL_LIVE_HEAP) return HEAP_GROWING_PERCENT;
  return current;
}

/** True when node was started with a growing factor of the operator's own (the daemon leaves it alone). */
export function ownGrowingFactor(execArgv: readonly string[]): boolean {
  return execArgv.some((a) => /^--heap[-_]growing[-_]percent(=|$)/.test(a));
}
