// The logger's direct path (plain fields handed to the sink without pino's JSON) must give the
// sinks exactly what the JSON path gives them: decodeRecord() of pino's own line.
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { createLogger, decodeRecord, plainRecord, printableText, renderLine, type LogRecord } from '../../src/log/logger.js';

/** What the sink got through pino's JSON (write only) and through the direct path (record). */
function both(call: (log: ReturnType<typeof createLogger>) => void): { viaJson: LogRecord[]; direct: LogRecord[] } {
  const viaJson: LogRecord[] = [];
  const direct: LogRecord[] = [];
  call(createLogger({ write: (line) => viaJson.push(decodeRecord(line)) }, true));
  call(createLogger({ write: (line) => direct.push({ ...decodeRecord(line), viaWrite: true } as LogRecord), record: (r) => direct.push(r) }, true));
  return { viaJson, direct };
}

describe('logger direct path', () => {
  const samples: [Record<string, unknown>, string][] = [
    [{ mtaproxy_event: 'delivery', session: 'proxy-v2', peer: '127.0.0.1:4000', bytes_up: 123, duration_ms: 0, outcome: 'closed' }, 'delivery(proxy-v2): 127.0.0.2:5 -> 127.0.0.1:25 up=123'],
    [{ mtaproxy_event: 'x', evil: 'a\x1b[2Jb\u202e\r\n', 'k\x00ey': 1 }, 'msg with \x07 bell and %s %d'],
    [{ a: undefined, b: null, c: true, d: NaN, e: Infinity, f: -0, g: 1.5e300 }, ''],
  ];
  for (const [fields, msg] of samples) {
    it(`gives the same record as pino's JSON: ${msg.slice(0, 30) || '(empty message)'}`, () => {
      const { viaJson, direct } = both((log) => {
        log.info(fields, msg);
        log.warn(fields, msg);
        log.debug(fields, msg);
      });
      expect(viaJson).toHaveLength(3);
      expect(direct).toEqual(viaJson);
      expect(direct.some((r) => 'viaWrite' in r)).toBe(false);
    });
  }

  it('leaves errors, nested objects, format arguments and other prototypes to pino', () => {
    const err = new Error('boom'); // one stack for both loggers
    const { viaJson, direct } = both((log) => {
      log.info({ err }, 'with an error');
      log.info({ nested: { a: 1 } }, 'nested');
      log.info({ a: 1 }, 'format %s', 'arg');
      log.info('only a message');
      log.info(Object.assign(Object.create({ inherited: 1 }), { own: 2 }), 'prototype');
    });
    expect(direct.map(({ viaWrite: _, ...r }: LogRecord & { viaWrite?: boolean }) => r)).toEqual(viaJson);
    expect(direct.every((r) => 'viaWrite' in r)).toBe(true);
  });

  it('plainRecord refuses what JSON would change', () => {
    expect(plainRecord(30, { a: 1n }, 'x')).toBeNull();
    expect(plainRecord(30, { a: [1] }, 'x')).toBeNull();
    expect(plainRecord(30, { a: () => 1 }, 'x')).toBeNull();
    expect(plainRecord(30, null, 'x')).toBeNull();
    // the same as pino, which is the reference
    const line: string[] = [];
    pino({ base: null }, { write: (l: string) => line.push(l) }).info({ a: 'b' }, 'm');
    expect(plainRecord(30, { a: 'b' }, 'm')).toEqual(decodeRecord(line[0] ?? ''));
  });
});

describe('printableText and renderLine: the same answers as the two regular expressions they replaced', () => {
  // the definitions the one-pass scan replaced (logger.ts before it): what must be escaped, what is a bare value
  const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
  const BARE_VALUE = /^[^\s"=]+$/;
  const escaped = (t: string): string => t.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
  const rendered = (t: string): string => (BARE_VALUE.test(t) ? t : JSON.stringify(t));
  const at = new Date('2026-12-02T00:00:00.000Z');

  it('agrees for every UTF-16 code unit, alone and inside a bare word', () => {
    let checked = 0;
    const wrong: string[] = [];
    for (let c = 0; c <= 0xffff; c++) {
      for (const text of [String.fromCharCode(c), `ab${String.fromCharCode(c)}cd`]) {
        const safe = escaped(text);
        if (printableText(text) !== safe) wrong.push(`printableText U+${c.toString(16)}`);
        if (renderLine({ level: 30, msg: 'm', fields: { k: safe } }, at) !== `2026-12-02T00:00:00.000Z INFO m k=${rendered(safe)}\n`) wrong.push(`renderLine U+${c.toString(16)}`);
        checked++;
      }
    }
    expect(wrong).toEqual([]);
    expect(checked).toBe(2 * 0x10000);
  });

  it('renders a record from the direct path as the one pino serialized, wide records too', () => {
    const wide: Record<string, unknown> = {};
    for (let i = 0; i < 40; i++) wide[`f${i}`] = i % 3 === 0 ? `v ${i}` : i % 3 === 1 ? `v${i}` : i;
    const samples: Record<string, unknown>[] = [
      { mtaproxy_event: 'delivery', session: 'proxy-v2', peer: '127.0.0.1:4000', note: 'a b', empty: '', q: 'x"y', eq: 'a=b', n: 5, t: true, z: null },
      wide,
    ];
    for (const fields of samples) {
      const lines: string[] = [];
      pino({ base: null }, { write: (l: string) => lines.push(l) }).info(fields, 'm s');
      const viaJson = renderLine(decodeRecord(lines[0] ?? ''), at);
      const direct = plainRecord(30, fields, 'm s');
      expect(direct).not.toBeNull();
      expect(renderLine(direct as LogRecord, at)).toBe(viaJson);
    }
  });

  it('quotes the empty string, and leaves a plain record uncopied', () => {
    expect(renderLine({ level: 30, msg: 'm', fields: { k: '' } }, at)).toBe('2026-12-02T00:00:00.000Z INFO m k=""\n');
    const fields = { mtaproxy_event: 'delivery', peer: '127.0.0.1:4000', bytes_up: 5 };
    expect(plainRecord(30, fields, 'm')?.fields).toBe(fields);
    // a field that needs changing is copied, the caller's object left as it was
    const dirty = { a: 'x\x1by', b: -0 };
    const r = plainRecord(30, dirty, 'm');
    expect(r?.fields).not.toBe(dirty);
    expect(r?.fields).toEqual({ a: 'x\\x1by', b: 0 });
    expect(Object.is(r?.fields.b, 0)).toBe(true);
    expect(dirty.a).toBe('x\x1by');
  });
});
