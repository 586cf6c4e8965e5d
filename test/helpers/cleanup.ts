// Setup file (vitest.config.ts): after each test file, the temp dirs its tests made with tempDir()
// are removed, so runs do not pile up /tmp/mtaproxy-test-* (the file's own afterAll hooks, which
// stop daemons using them, run first: hooks run as a stack).
import { rmSync } from 'node:fs';
import { afterAll } from 'vitest';
import { madeTempDirs } from './daemon.js';

afterAll(() => {
  for (const dir of madeTempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
