// Decimal text of counters (request tags, lease ids) that bypasses V8's number-string cache. Pure.

/**
 * `String(n)` for a non-negative safe integer, built from two tables of constant strings.
 *
 * Why not `String(n)` or a template literal: V8 keeps the text of recently converted numbers in
 * its number-string cache, a table in the old generation. A counter that only goes up (the tag
 * of every request, the id of every lease) puts a new young string in that table each time, and
 * every entry there survives the next scavenge as a reference from the old generation: on a
 * control session at 64 requests in flight about 270 KB of such strings survived each scavenge,
 * and the pause went from about 0.4 ms to 2 ms (issue 14, docs/benchmarks.md). The strings made
 * here are referenced by nothing old and die young.
 *
 * Anything else (negative, fractional, unsafe, NaN) is `String(n)`.
 */
export function decimalString(n: number): string {
  if (n >= 0 && n < 1000 && Number.isInteger(n)) return SMALL[n] as string;
  if (!Number.isSafeInteger(n) || n < 0) return String(n);
  const low = n % 1000;
  return decimalString((n - low) / 1000) + (PADDED[low] as string);
}

const SMALL: readonly string[] = Array.from({ length: 1000 }, (_, i) => String(i));
const PADDED: readonly string[] = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));
