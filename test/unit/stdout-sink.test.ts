// The stdout sink batches lines for up to STDOUT_FLUSH_MS into one write(2), writes a warning
// (and everything before it) at once, and what is pending when the process exits. A real pipe:
// each read() returns what one or more write(2)s put there.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createStdoutSink, STDOUT_FLUSH_MS, type LogRecord } from '../../src/log/logger.js';

const info = (n: number): LogRecord => ({ level: 30, msg: `line ${n}`, fields: { mtaproxy_event: 'delivery', n } });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function withFile<T>(run: (fd: number, read: () => string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-sink-'));
  const file = join(dir, 'out.log');
  const fd = openSync(file, 'w');
  return run(fd, () => readFileSync(file, 'utf8')).finally(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
}

describe('stdout sink', () => {
  it('holds lines for at most the flush interval, then writes them together and in order', async () => {
    await withFile(async (fd, read) => {
      const sink = createStdoutSink(fd);
      for (let n = 0; n < 5; n++) sink.record?.(info(n));
      expect(read()).toBe(''); // nothing written yet: one write(2) for the batch
      await sleep(STDOUT_FLUSH_MS + 50);
      const lines = read().trimEnd().split('\n');
      expect(lines).toHaveLength(5);
      expect(lines.map((l) => / n=(\d+)$/.exec(l)?.[1])).toEqual(['0', '1', '2', '3', '4']);
      expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO line 0 n=0$/);
    });
  });

  it('writes a warning at once, with the lines before it', async () => {
    await withFile(async (fd, read) => {
      const sink = createStdoutSink(fd);
      sink.record?.(info(1));
      sink.record?.({ level: 40, msg: 'refused', fields: { mtaproxy_event: 'refused' } });
      expect(read()).toMatch(/INFO line 1 n=1\n.* WARN refused\n$/);
    });
  });

  it('writes a line that comes after a flush in a later batch', async () => {
    await withFile(async (fd, read) => {
      const sink = createStdoutSink(fd, 20);
      sink.record?.(info(1));
      await sleep(60);
      expect(read()).toMatch(/line 1/);
      sink.record?.(info(2));
      expect(read()).not.toMatch(/line 2/);
      await sleep(60);
      expect(read()).toMatch(/line 1 n=1\n.*line 2 n=2\n$/);
    });
  });

  it('writes what is pending when the process exits, and its timer does not keep the process alive', () => {
    const logger = fileURLToPath(new URL('../../dist/log/logger.js', import.meta.url));
    const script = `import { createStdoutSink } from ${JSON.stringify(logger)};
      const sink = createStdoutSink(1, 60_000);
      sink.record({ level: 30, msg: 'last words', fields: { n: 1 } });`;
    const started = Date.now();
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/INFO last words n=1\n$/);
    expect(Date.now() - started).toBeLessThan(15_000); // not held for the 60 s interval
  });
});

describe('isoTime', () => {
  it('is toISOString() for any time, in any order', async () => {
    const { isoTime } = await import('../../src/log/logger.js');
    const times = [0, 1, 999, 1000, 1001, Date.UTC(2026, 11, 2, 3, 44, 59, 999), Date.UTC(2026, 11, 2, 3, 45, 0, 0), Date.now(), -1, -1000, -1001, 253402300799999, 1e12 + 0.7];
    for (let i = 0; i < 2000; i++) times.push(Math.floor(Math.random() * 4e12) - 1e12);
    for (const t of [...times, ...times.reverse()]) expect(isoTime(t)).toBe(new Date(Math.floor(t)).toISOString());
    expect(isoTime(new Date(1234567890123))).toBe('2009-02-13T23:31:30.123Z');
  });
});
