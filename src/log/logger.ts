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
  /**
   * Optional: receives a record directly, as decodeRecord() would have made it from the line
   * (createLogger hands over plain records this way: no JSON round trip). Must not throw.
   */
  record?(record: LogRecord): void;
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
/** UNSAFE without the g flag: test() then keeps no lastIndex state (and is faster) */
const HAS_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

/** Escapes what must not reach a log line raw: "\x1b", "\x00", "\u202e". */
export function printableText(text: string): string {
  if (!HAS_UNSAFE.test(text)) return text; // nearly always: no copy
  return text.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** scan(): printable, and a bare value of a line (no space, quote or "="; not empty) */
const BARE_TEXT = 0;
/** scan(): printable, but quoted in a line */
const QUOTED_TEXT = 1;
/** scan(): holds what printableText() escapes (UNSAFE) */
const UNSAFE_TEXT = 2;

/** a bare value (/^[^\s"=]+$/) that holds nothing of UNSAFE: nearly every field, in one test */
const SAFE_BARE = /^[^\s"=\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]+$/;

/**
 * What a text needs: one regular-expression test for a bare, printable value (nearly every field
 * of a record), a second only for the others.
 */
function scan(text: string): number {
  if (SAFE_BARE.test(text)) return BARE_TEXT;
  return HAS_UNSAFE.test(text) ? UNSAFE_TEXT : QUOTED_TEXT;
}

/**
 * A record straight from a log call's arguments (a plain object of primitive fields and a
 * message string), the same as decodeRecord() of what pino would have serialized: undefined
 * fields left out, numbers JSON cannot hold (NaN, Infinity) as null, every string printable.
 * Null for anything else (nested objects, errors…): those take pino's path.
 */
export function plainRecord(level: number, obj: unknown, msg: string): LogRecord | null {
  if (typeof obj !== 'object' || obj === null || Object.getPrototypeOf(obj) !== Object.prototype) return null;
  // nearly every record needs nothing changed: its own object is the record's fields (no copy)
  const fields = obj as Record<string, unknown>;
  let bare = 0;
  let i = 0;
  for (const key in fields) {
    const value = fields[key];
    const type = typeof value;
    let ok: boolean;
    if (type === 'string') {
      const need = scan(value as string);
      ok = need !== UNSAFE_TEXT;
      if (need === BARE_TEXT && i < 31) bare |= 1 << i;
    } else {
      ok = type === 'number' ? Number.isFinite(value) && !Object.is(value, -0) : type === 'boolean' || value === null;
    }
    if (!ok || printableKey(key) !== key) return copiedRecord(level, fields, msg);
    i++;
  }
  scanned = fields;
  scannedBare = bare;
  return { level, msg: printableText(msg), fields };
}

/**
 * What plainRecord() found of the fields it passed last: which of the first 31 are bare strings,
 * so that renderLine(), called with them next (the stdout sink, in the same call), does not test
 * them again. Only for that very object: anything else is tested as before.
 */
let scanned: object | null = null;
let scannedBare = 0;

/** plainRecord() of a record that needs something changed: a copy, made printable. */
function copiedRecord(level: number, obj: Record<string, unknown>, msg: string): LogRecord | null {
  const fields: Record<string, unknown> = {};
  for (const key in obj) {
    const value = obj[key];
    const type = typeof value;
    if (type === 'string') fields[printableKey(key)] = printableText(value as string);
    else if (type === 'number') fields[printableKey(key)] = Number.isFinite(value) ? (value as number) + 0 : null; // -0 + 0 is 0, as JSON has it
    else if (type === 'boolean' || value === null) fields[printableKey(key)] = value;
    else if (type !== 'undefined') return null;
  }
  return { level, msg: printableText(msg), fields };
}

/**
 * printableText() of a field name, remembered: the names are the code's own few identifiers
 * (a record has ~12 of them, the same each time), so a name is checked once. Bounded anyway.
 */
const keyMemo = new Map<string, string>();
function printableKey(key: string): string {
  let k = keyMemo.get(key);
  if (k === undefined) {
    k = printableText(key);
    if (keyMemo.size >= 1024) keyMemo.clear();
    keyMemo.set(key, k);
  }
  return k;
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
  // a finite number's JSON is its String() and never needs quotes (most fields of a delivery record)
  if (typeof value === 'number' && Number.isFinite(value)) return String(value + 0);
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return scan(text) === BARE_TEXT ? text : JSON.stringify(text);
}

/** "2026-11-25T13:04:00.000Z INFO msg key=value ..."; status lines keep the seed's exact shape. */
export function renderLine(record: LogRecord, now: Date | number): string {
  const level = LEVEL_NAMES[record.level] ?? String(record.level);
  let text = `${isoTime(now)} ${level} ${record.msg}`;
  const fields = record.fields;
  const bare = fields === scanned ? scannedBare : 0;
  scanned = null;
  if (fields.mtaproxy_event !== 'status') {
    let i = 0;
    for (const key in fields) {
      const value = fields[key];
      if (value !== undefined && key !== 'mtaproxy_event') text += ` ${key}=${i < 31 && (bare & (1 << i)) !== 0 ? (value as string) : renderValue(value)}`;
      i++;
    }
  }
  return `${text}\n`;
}

/**
 * toISOString() of a time: the text up to the seconds made once a second, the milliseconds
 * appended (a Date and its formatting per record was ~2 µs of a delivery's record in a profile).
 */
let lastSecond = NaN;
let secondPrefix = '';
const MS_DIGITS = Array.from({ length: 1000 }, (_, i) => `.${String(i).padStart(3, '0')}Z`);
export function isoTime(now: Date | number): string {
  const ms = Math.floor(typeof now === 'number' ? now : now.getTime());
  const second = Math.floor(ms / 1000);
  if (second !== lastSecond || !Number.isFinite(second)) {
    const iso = new Date(ms).toISOString(); // throws for an invalid time, as before
    lastSecond = second;
    secondPrefix = iso.slice(0, -5);
  }
  return secondPrefix + (MS_DIGITS[ms - second * 1000] as string);
}

/** Rendered lines not yet written: past this many characters they are written at once. */
const STDOUT_BATCH_CHARS = 64 * 1024;
/** The longest a line waits for the lines after it before it is written. */
export const STDOUT_FLUSH_MS = 5;

/**
 * Lines are written synchronously (a slow reader must not grow a buffer without bound), batched:
 * one write(2) for the lines of up to STDOUT_FLUSH_MS, at once past STDOUT_BATCH_CHARS or for a
 * warning or an error (a crash may end the process before the timer: the lines before it go with
 * it), and whatever is left when the process exits. A write(2) per delivery record was the
 * largest item of mtaproxy's own CPU per delivery against a bare forwarder in a --cpu-prof
 * profile (~13 µs of ~450); one per 5 ms is nothing at any rate. A line is at most 5 ms late,
 * and only a SIGKILL loses the lines of its last 5 ms.
 */
export function createStdoutSink(fd = 1, flushMs = STDOUT_FLUSH_MS): LogSink {
  let pending = '';
  let timer: ReturnType<typeof setTimeout> | null = null;
  const flush = (): void => {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    if (pending === '') return;
    const text = pending;
    pending = '';
    try {
      writeSync(fd, text);
    } catch {
      // stdout closed: nothing sensible left to do with a log line
    }
  };
  process.on('exit', flush);
  const add = (record: LogRecord): void => {
    pending += renderLine(record, Date.now());
    if (pending.length >= STDOUT_BATCH_CHARS || record.level >= 40) return flush();
    if (timer === null) {
      timer = setTimeout(flush, flushMs);
      // a pending line does not keep the process alive: 'exit' writes it
      timer.unref();
    }
  };
  return {
    write(line) {
      add(decodeRecord(line));
    },
    record: add,
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
  const direct = sink.record?.bind(sink);
  return pino(
    {
      base: null,
      level: verbose ? 'debug' : 'info',
      // a log call with plain fields and a message skips pino's JSON and the sink's JSON.parse
      // (the delivery record, once per delivery: ~1/3 of its cost in a profile); the rest
      // (errors, nested objects, format arguments) goes through pino as before
      hooks: direct === undefined ? {} : {
        logMethod(args, method, level) {
          if (args.length === 2 && typeof args[1] === 'string') {
            const record = plainRecord(level, args[0], args[1]);
            if (record !== null) return direct(record);
          }
          method.apply(this, args);
        },
      },
    },
    { write: (line: string) => sink.write(line) },
  );
}
