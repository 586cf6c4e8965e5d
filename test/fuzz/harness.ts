// The fuzz harness shared by the vitest suite (test/fuzz/fuzz.test.ts, a fixed seed and a few
// hundred runs per property) and bench/fuzz.mjs (a random seed, for as long as asked). Why
// fast-check and not Jazzer.js: docs/fuzzing.md.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';

/** The seed `npm test` uses: the same inputs on every run and every machine. */
export const FIXED_SEED = 0x6d746170; // "mtap"

export interface RunParams {
  readonly seed: number;
  /** upper bound on runs; the bench passes a huge number and a time limit */
  readonly numRuns: number;
  /** fast-check's counterexample path, to replay one failure (needs the same seed) */
  readonly path?: string;
  /** stop (successfully) after this long */
  readonly timeLimitMs?: number;
}

export interface RunResult {
  readonly failed: boolean;
  readonly numRuns: number;
  readonly seed: number;
  readonly path: string | null;
  /** fast-check's report: the counterexample, the error, how to replay it */
  readonly report: string | null;
  /** the shrunk failing input as corpus bytes, when the property takes raw input */
  readonly corpusBytes: Buffer | null;
}

export interface FuzzProperty {
  readonly name: string;
  /** runs in `npm test`: tuned so the whole suite stays within a few seconds per target */
  readonly runs: number;
  run(params: RunParams): RunResult;
}

export interface FuzzTarget {
  /** also the corpus folder: test/fuzz/corpus/<name>/ */
  readonly name: string;
  readonly description: string;
  /** The invariants every input must satisfy; throws (an Error saying which) when one does not. */
  check(input: Buffer): void;
  readonly properties: readonly FuzzProperty[];
}

/** A property over a structured value; `toCorpus` turns a failing value into corpus bytes. */
export function property<T>(name: string, runs: number, arb: fc.Arbitrary<T>, predicate: (value: T) => void, toCorpus?: (value: T) => Buffer): FuzzProperty {
  const prop = fc.property(arb, (value) => {
    predicate(value);
  });
  return {
    name,
    runs,
    run(params: RunParams): RunResult {
      const options: fc.Parameters<[T]> = { seed: params.seed, numRuns: params.numRuns, includeErrorInReport: true };
      if (params.path !== undefined) options.path = params.path;
      // the option, not the 4.10 plugin: the plugin is typed Plugin<unknown>, which Parameters<[T]> refuses
      if (params.timeLimitMs !== undefined) options.interruptAfterTimeLimit = params.timeLimitMs;
      const details = fc.check(prop, options);
      const example = details.counterexample?.[0];
      return {
        failed: details.failed,
        numRuns: details.numRuns,
        seed: details.seed,
        path: details.counterexamplePath,
        report: details.failed ? (fc.defaultReportMessage(details) ?? 'failed') : null,
        corpusBytes: details.failed && example !== undefined && toCorpus !== undefined ? toCorpus(example) : null,
      };
    },
  };
}

/** The target's own check over arbitrary raw input: the "any bytes" property. */
export function rawProperty(name: string, runs: number, arb: fc.Arbitrary<Buffer>, check: (input: Buffer) => void): FuzzProperty {
  return property(name, runs, arb, check, (b) => b);
}

export class PropertyViolation extends Error {}

export function assert(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new PropertyViolation(message());
}

/** Deep equality of plain data (JSON-able values, Buffers and Uint8Arrays compared by bytes). */
export function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a, bytesAsArrays) === JSON.stringify(b, bytesAsArrays);
}

function bytesAsArrays(this: unknown, _key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return { bytes: [...value] };
  if (typeof value === 'object' && value !== null && (value as { type?: unknown }).type === 'Buffer' && Array.isArray((value as { data?: unknown }).data)) {
    return { bytes: (value as { data: number[] }).data };
  }
  return value;
}

export function show(value: unknown): string {
  return JSON.stringify(value, bytesAsArrays)?.slice(0, 400) ?? String(value);
}

/**
 * Runs `fn` and fails if it took longer than `budgetMs`: a parser must not be super-linear (a
 * regex that backtracks, a loop that does not advance). The budgets are far above what the
 * inputs need (well under a millisecond), so a loaded machine does not make this flaky.
 */
export function timed<R>(what: string, budgetMs: number, fn: () => R): R {
  const start = performance.now();
  const result = fn();
  const took = performance.now() - start;
  assert(took <= budgetMs, () => `${what} took ${took.toFixed(0)} ms (budget ${budgetMs} ms): super-linear on this input?`);
  return result;
}

/** Every file of test/fuzz/corpus/<target>/ (README.md aside), by name. */
export function readCorpus(root: string, target: string): { name: string; bytes: Buffer }[] {
  const dir = join(root, 'test', 'fuzz', 'corpus', target);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n !== 'README.md').sort();
  } catch {
    return [];
  }
  return names.map((name) => ({ name, bytes: readFileSync(join(dir, name)) }));
}

// Arbitraries the targets share.

/** Bytes, biased toward the values parsers branch on. */
export const byte = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 255 }) },
  { weight: 1, arbitrary: fc.constantFrom(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0a, 0x0d, 0x20, 0x2e, 0x3a, 0x7f, 0x80, 0xff) },
);

export const bytes = (maxLength: number): fc.Arbitrary<Buffer> => fc.array(byte, { maxLength }).map((a) => Buffer.from(a));

/** Text of any code points (lone surrogates included), as a UTF-8 Buffer. */
export const anyText = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: 'binary', maxLength });

/** A string made of the given tokens, with separators: closer to what parsers expect than noise. */
export const tokens = (vocabulary: readonly string[], maxTokens: number, separators: readonly string[] = [' ']): fc.Arbitrary<string> =>
  fc
    .array(fc.tuple(fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...vocabulary) }, { weight: 1, arbitrary: anyText(12) }), fc.constantFrom(...separators)), { maxLength: maxTokens })
    .map((parts) => parts.map(([t, s]) => t + s).join(''));

/** Split points for a stream of `length` bytes: the chunks a socket might deliver. */
export function chunksOf(data: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (data.length === 0 ? 0 : c % (data.length + 1))))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let at = 0;
  for (const p of points) {
    out.push(data.subarray(at, p));
    at = p;
  }
  out.push(data.subarray(at));
  return out;
}

export const cuts = fc.array(fc.nat(), { maxLength: 12 });

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
