// BDAT (RFC 3030) pure parts: the command's arguments and the chunk's octet count.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChunkCounter, MAX_BDAT_CHUNK, parseBdat, parseCommand } from '../../src/smtp/command.js';
import { ehloForMta, parseEhlo } from '../../src/smtp/ehlo.js';
import { ReplyParser } from '../../src/smtp/reply.js';

describe('BDAT arguments', () => {
  it('takes "<digits> [LAST]" and nothing else', () => {
    expect(parseBdat('0 LAST')).toEqual({ size: 0, last: true });
    expect(parseBdat('1000')).toEqual({ size: 1000, last: false });
    expect(parseBdat('86 last')).toEqual({ size: 86, last: true });
    expect(parseBdat('007')).toEqual({ size: 7, last: false });
    expect(parseCommand('bdat 12 LAST')).toMatchObject({ verb: 'BDAT', args: '12 LAST' });
    for (const bad of ['', ' 1', '1 ', '-1', '+1', '1.5', '1e3', '0x10', '1  LAST', '1 LASTX', '1 END', 'LAST', '1 LAST x', '1\tLAST', '١٢']) expect(parseBdat(bad), JSON.stringify(bad)).toBeNull();
  });

  it('bounds the size', () => {
    expect(parseBdat(String(MAX_BDAT_CHUNK))).toEqual({ size: MAX_BDAT_CHUNK, last: false });
    expect(parseBdat(String(MAX_BDAT_CHUNK + 1))).toBeNull();
    expect(parseBdat('9'.repeat(14))).toBeNull();
    expect(parseBdat('9'.repeat(400))).toBeNull();
  });
});

describe('ChunkCounter', () => {
  it('splits a read into the chunk and what follows, wherever the reads split it', () => {
    // a chunk whose data holds "<CRLF>.<CRLF>" and lines that look like commands, then a command
    const chunk = Buffer.from('a\r\n.\r\nMAIL FROM:<x@y>\r\n..\nQUIT\r\n\xff', 'latin1');
    const after = Buffer.from('MAIL FROM:<next@example>\r\n');
    const stream = Buffer.concat([chunk, after]);
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: stream.length }), { maxLength: 8 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        const reads: Buffer[] = [];
        let at = 0;
        for (const p of [...points, stream.length]) {
          reads.push(stream.subarray(at, p));
          at = p;
        }
        const c = new ChunkCounter(chunk.length);
        const parts: Buffer[] = [];
        let rest: Buffer[] | null = null;
        for (const r of reads) {
          if (rest !== null) {
            rest.push(r);
            continue;
          }
          const t = c.take(r);
          parts.push(t.part);
          if (t.rest !== null) rest = [t.rest];
          expect(c.left).toBe(t.rest === null ? chunk.length - Buffer.concat(parts).length : 0);
        }
        expect(c.done).toBe(true);
        expect(Buffer.concat(parts).equals(chunk)).toBe(true);
        expect(Buffer.concat(rest ?? []).equals(after)).toBe(true);
      }),
    );
  });

  it('a chunk that ends exactly at a read gives an empty rest; size 0 is done at once', () => {
    const c = new ChunkCounter(3);
    expect(c.take(Buffer.from('ab'))).toMatchObject({ rest: null });
    const t = c.take(Buffer.from('c'));
    expect(t.part.toString()).toBe('c');
    expect(t.rest?.length).toBe(0);
    expect(new ChunkCounter(0).done).toBe(true);
  });
});

describe('EHLO with CHUNKING', () => {
  const reply = (s: string) => {
    const r = new ReplyParser().push(Buffer.from(s, 'latin1'))[0];
    if (r === undefined) throw new Error('no reply');
    return r;
  };
  it('offers CHUNKING when the destination does, BINARYMIME only with CHUNKING', () => {
    const both = reply('250-mx.example\r\n250-PIPELINING\r\n250-BINARYMIME\r\n250 CHUNKING\r\n');
    expect(ehloForMta(both, parseEhlo(both))).toEqual(['mx.example', 'PIPELINING', 'CHUNKING', 'BINARYMIME']);
    const binaryOnly = reply('250-mx.example\r\n250 BINARYMIME\r\n');
    expect(ehloForMta(binaryOnly, parseEhlo(binaryOnly))).toEqual(['mx.example']);
    const none = reply('250-mx.example\r\n250 8BITMIME\r\n');
    expect(ehloForMta(none, parseEhlo(none))).toEqual(['mx.example', '8BITMIME']);
  });
});
