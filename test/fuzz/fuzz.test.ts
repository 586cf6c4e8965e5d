// Fuzzing in the suite: property-based with fast-check, not coverage-guided with Jazzer.js.
// @jazzer.js/core 4.0.0 installs here but its only linux-x64 addon needs glibc 2.38 (Debian 12 has
// 2.36) and ships no sources to rebuild; fast-check is pure JS, replays a seed exactly, shrinks
// failures, runs inside vitest, and generates the structured inputs the round trips need (headers
// with TLVs and a CRC32C, configs with a wrong value on a known line). Details: docs/fuzzing.md.
// Every target first replays its corpus (test/fuzz/corpus/<target>/: the test vectors and the
// inputs that once found a bug), then runs each property with a fixed seed and a bounded number
// of runs, so `npm test` sees the same inputs every time. bench/fuzz.mjs runs the same properties
// with a random seed for as long as asked.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FIXED_SEED, readCorpus, TARGETS } from './targets/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe.each(TARGETS.map((t) => [t.name, t] as const))('fuzz %s', (_name, target) => {
  it('replays its corpus', () => {
    const corpus = readCorpus(ROOT, target.name);
    expect(corpus.length, `test/fuzz/corpus/${target.name}/ is empty`).toBeGreaterThan(0);
    for (const { name, bytes } of corpus) {
      try {
        target.check(bytes);
      } catch (err) {
        throw new Error(`test/fuzz/corpus/${target.name}/${name}: ${(err as Error).message}`);
      }
    }
  });

  target.properties.forEach((p, index) => {
    it(p.name, () => {
      const r = p.run({ seed: FIXED_SEED, numRuns: p.runs });
      if (r.failed) throw new Error(`${target.name} / ${p.name}:\n${r.report ?? ''}\nreplay: node bench/fuzz.mjs --target=${target.name} --property=${index} --seed=${r.seed} --path=${r.path ?? ''}`);
      expect(r.numRuns).toBe(p.runs);
    });
  });
});
