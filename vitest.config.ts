import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // removes the temp dirs each test file made (test/helpers/daemon.ts tempDir)
    setupFiles: ['test/helpers/cleanup.ts'],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // integration tests spawn daemons on port 0; two workers fit the 2-core CI machine
    maxWorkers: 2,
  },
});
