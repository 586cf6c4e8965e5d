// Properties of the "bytes so far in, incomplete | error | ok out" decoders (SOCKS5, PROXY v2):
// the shell concatenates what the socket delivered and parses again after every read, so the
// decision must not depend on where the reads were split.
import { assert, chunksOf, same, show } from './harness.js';

export interface Decided {
  readonly status: string;
}

/** What must not depend on the split: by default the whole answer. */
export type Decision<R> = (r: R) => unknown;
const whole = <R>(r: R): unknown => r;

/**
 * Every prefix of `input` shorter than the point where the decoder decides is "incomplete"; from
 * that point on the answer is the same as for the whole input; an "ok" decides exactly at the
 * end of its message (`okLength`). `positions` restricts the prefixes looked at (default: all).
 */
export function checkPrefixes<R extends Decided>(what: string, parse: (b: Uint8Array) => R, input: Buffer, okLength: (r: R) => number | null, positions?: readonly number[], decision: Decision<R> = whole): void {
  const full = parse(input);
  const fullLength = okLength(full);
  if (fullLength !== null) assert(fullLength >= 1 && fullLength <= input.length, () => `${what}: ok with length ${fullLength} of ${input.length} bytes`);
  const at = positions ?? Array.from({ length: input.length + 1 }, (_, i) => i);
  let decidedAt: number | null = null;
  for (const k of at) {
    if (k < 0 || k > input.length) continue;
    const r = parse(input.subarray(0, k));
    if (r.status === 'incomplete') {
      assert(decidedAt === null || k < decidedAt, () => `${what}: prefix of ${k} bytes is incomplete after a decision at ${decidedAt} bytes`);
      if (fullLength !== null) assert(k < fullLength, () => `${what}: ${k} bytes still incomplete, yet the message is ${fullLength} bytes`);
      continue;
    }
    if (decidedAt === null || k < decidedAt) decidedAt = k;
    assert(full.status !== 'incomplete', () => `${what}: the prefix of ${k} bytes is ${r.status} but the whole input is incomplete`);
    assert(same(decision(r), decision(full)), () => `${what}: the prefix of ${k} bytes says ${show(r)}, the whole input ${show(full)}`);
    if (fullLength !== null) assert(k >= fullLength, () => `${what}: ok after ${k} bytes, before the message's ${fullLength} bytes arrived`);
  }
}

/** Every prefix of a short input; of a long one, the first 40, the last two and those around `lengths`. */
export function samplePositions(n: number, lengths: readonly (number | null)[]): number[] | undefined {
  if (n <= 96) return undefined;
  return [...Array.from({ length: 40 }, (_, i) => i), n - 1, n, ...lengths.flatMap((l) => (l === null ? [] : [l - 1, l, l + 1]))];
}

/** The shell's loop: append each chunk, parse, stop at the first answer that is not "incomplete". */
export function feedChunks<R extends Decided>(parse: (b: Uint8Array) => R, chunks: readonly Buffer[]): R {
  let received = Buffer.alloc(0);
  let last = parse(received);
  for (const chunk of chunks) {
    if (last.status !== 'incomplete') break;
    received = Buffer.concat([received, chunk]);
    last = parse(received);
  }
  return last;
}

export function checkChunking<R extends Decided>(what: string, parse: (b: Uint8Array) => R, input: Buffer, cuts: readonly number[], decision: Decision<R> = whole): void {
  const all = parse(input);
  const streamed = feedChunks(parse, chunksOf(input, cuts));
  assert(same(decision(streamed), decision(all)), () => `${what}: split at ${show(cuts)} gives ${show(streamed)}, whole ${show(all)}`);
}
