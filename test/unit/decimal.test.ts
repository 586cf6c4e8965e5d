import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decimalString } from '../../src/protocol/decimal.js';

describe('decimalString', () => {
  it('is String(n) at the edges of its tables', () => {
    for (const n of [0, 1, 9, 10, 99, 100, 999, 1000, 1001, 1010, 1100, 9999, 10_000, 100_000, 999_999, 1_000_000, 1_000_001, 1_234_567_890, 10 ** 12, 10 ** 15 - 1, Number.MAX_SAFE_INTEGER]) {
      expect(decimalString(n)).toBe(String(n));
    }
  });

  it('is String(n) for any non-negative safe integer', () => {
    fc.assert(fc.property(fc.oneof(fc.integer({ min: 0, max: 1_000_000 }), fc.maxSafeNat()), (n) => decimalString(n) === String(n)), { numRuns: 20_000 });
  });

  it('falls back to String(n) for anything else', () => {
    for (const n of [-1, -1000, 0.5, 1000.25, -0, NaN, Infinity, -Infinity, Number.MAX_SAFE_INTEGER + 1, 2 ** 60, 1e21]) {
      expect(decimalString(n)).toBe(String(n));
    }
    fc.assert(fc.property(fc.double(), (n) => decimalString(n) === String(n)), { numRuns: 5_000 });
  });
});
