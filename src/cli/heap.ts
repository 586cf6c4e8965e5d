// V8's old-generation growing factor for the daemon. Measured (docs/benchmarks.md, "The bulk
// path's major GCs"): the daemon's live heap (~8–9 MB after start) sits just above V8's 8 MB
// threshold for incremental marking, and with V8's dynamic factor (~2.5 here) the old
// generation's free room (limit - size, ~12 MB) is smaller than the young generation's capacity
// (16 MB once the session path has grown it). V8 then starts a full incremental mark "in case the
// next scavenge promotes everything": during a 10 MiB DATA phase, whose 64 KiB reads allocate
// almost nothing on the JS heap, one full mark per delivery (15–25 per 15 deliveries in
// `--trace-incremental-marking`), which doubled the proxy's CPU per MiB against a bare forwarder
// (whose ~4 MB heap stays below the threshold). A fixed factor of 5 (heap_growing_percent=400)
// leaves the old generation room above the young generation's capacity: 1 mark in the same run,
// CPU per MiB down by a third. A factor of 4 (300) still marked 9 times.
//
// The cost is memory under load: garbage may grow to 5x the live heap before a full collection
// (~45 MB for a 9 MB live heap; an idle daemon's memory reducer still collects it). A node flag
// of the operator's own (`node --heap-growing-percent=N`) wins: this sets none then.
//
// Measured for the throttle path and not set (docs/benchmarks.md, "Throttle, a fourth pass"): a
// smaller young generation cannot be had at run time (--max-semi-space-size is read only when the
// heap is set up; --semi-space-growth-factor=1, which had no effect given on the node command
// line, does hold the young generation at its 1 MiB start when set here: 4x the scavenges, each
// only ~25 % shorter, p99 unchanged); --no-parallel-scavenge (read at each scavenge, so it works
// here) shortened the throttle's scavenges on 2 cores but cost the PROXY v2 session path 5-14 %
// more CPU per session in 3 same-time A/B runs.

export const HEAP_GROWING_PERCENT = 400;

/** The V8 flags to set at start: none when the process was started with its own growing factor. */
export function heapFlags(execArgv: readonly string[]): string[] {
  const own = execArgv.some((a) => /^--heap[-_]growing[-_]percent(=|$)/.test(a));
  return own ? [] : [`--heap-growing-percent=${HEAP_GROWING_PERCENT}`];
}
