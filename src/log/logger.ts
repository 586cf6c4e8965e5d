// pino is the logging API; where its records go is a sink chosen at start (pino's
// destination/transport split): native journald entries with fields when stderr is the journal,
// readable lines on stdout otherwise.
import { fstatSync, writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { createJournaldSink } from '../systemd/journal.js';

export type { Logger };

export interface LogSink {
  /** Receives one serialized pino record (a JSON line). Must not throw. */
  write(line: string): void;
}

export interface LogRecord {
  level: number;
  msg: string;
  fields: Record<string, unknown>;
}

const LEVEL_NAMES: Readonly<Record<number, string>> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

// C0 controls (NUL, ESC, CR, LF…), DEL, C1 controls, and the bidirectional overrides that can make
// a line read differently from what it holds: a client's bytes quoted in a message must not
// move the cursor, end the line or recolour a terminal.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/** Escapes what must not reach a log line raw: "\x1b", "\x00", "\u202e". */
export function printableText(text: string): string {
  return text.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** One pino record, with every string made printable (both sinks go through here). */
export function decodeRecord(line: string): LogRecord {
  const parsed = JSON.parse(line) as Record<string, unknown>;
  const { level, msg, time: _time, ...raw } = parsed;
  const fields: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) fields[printableText(key)] = typeof value === 'string' ? printableText(value) : value;
  return { level: typeof level === 'number' ? level : 30, msg: typeof msg === 'string' ? printableText(msg) : '', fields };
}

function renderValue(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

/** "2026-11-25T13:04:00.000Z INFO msg key=value ..."; status lines keep the seed's exact shape. */
export function renderLine(record: LogRecord, now: Date): string {
  const level = LEVEL_NAMES[record.level] ?? String(record.level);
  let text = `${now.toISOString()} ${level} ${record.msg}`;
  if (record.fields.mtaproxy_event !== 'status') {
    for (const [key, value] of Object.entries(record.fields)) {
      if (value !== undefined && key !== 'mtaproxy_event') text += ` ${key}=${renderValue(value)}`;
    }
  }
  return `${text}\n`;
}

export function createStdoutSink(fd = 1): LogSink {
  return {
    write(line) {
      try {
        // Synchronous on purpose: log volume is low and nothing may be lost at exit.
        writeSync(fd, renderLine(decodeRecord(line), new Date()));
      } catch {
        // stdout closed: nothing sensible left to do with a log line
      }
    },
  };
}

/** True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env.JOURNAL_STREAM;
  if (!stream) return false;
  const [dev, ino] = stream.split(':');
  try {
    const st = fstatSync(2, { bigint: true });
    return String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    return false;
  }
}

export function chooseSink(env: NodeJS.ProcessEnv = process.env): { sink: LogSink; kind: 'journald' | 'stdout' } {
  if (stderrIsJournal(env)) return { sink: createJournaldSink(), kind: 'journald' };
  return { sink: createStdoutSink(), kind: 'stdout' };
}

export function createLogger(sink: LogSink, verbose: boolean): Logger {
  return pino(
    { base: null, level: verbose ? 'debug' : 'info' },
    { write: (line: string) => sink.write(line) },
  );
}
