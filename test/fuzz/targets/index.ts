// Every fuzz target, in the order `npm test` and bench/fuzz.mjs run them.
import type { FuzzTarget } from '../harness.js';
import { CONFIG_TARGETS } from './config.js';
import { FRONTEND_TARGETS } from './frontends.js';
import { NATIVE_TARGETS } from './native.js';

export const TARGETS: readonly FuzzTarget[] = [...NATIVE_TARGETS, ...FRONTEND_TARGETS, ...CONFIG_TARGETS];

export { FIXED_SEED, readCorpus, type FuzzProperty, type FuzzTarget, type RunParams, type RunResult } from '../harness.js';
