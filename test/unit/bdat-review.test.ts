// Independent review of the pure BDAT parts (src/smtp/command.ts), from RFC 3030 §3:
//   bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
//   chunk-size ::= 1*DIGIT ; end-marker ::= "LAST"   (SMTP keywords are case-insensitive, RFC 5321 §2.4)
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ChunkCounter, MAX_BDAT_CHUNK, parseBdat } from '../../src/smtp/command.js';

describe('parseBdat (review)', () => {
  it('takes what real clients send', () => {
    expect(parseBdat('345 LAST')).toEqual({ size: 345, last: true });
    expect(parseBdat('8192')).toEqual({ size: 8192, last: false });
    expect(parseBdat('0 LAST')).toEqual({ size: 0, last: true });
    expect(parseBdat('0')).toEqual({ size: 0, last: false });
    expect(parseBdat('88 last')).toEqual({ size: 88, last: true });
    expect(parseBdat('1 LaSt')).toEqual({ size: 1, last: true });
    expect(parseBdat('007')).toEqual({ size: 7, last: false });
    expect(parseBdat(String(MAX_BDAT_CHUNK))).toEqual({ size: MAX_BDAT_CHUNK, last: false });
  });

  it('refuses what is not the grammar (and sizes it cannot count exactly)', () => {
    for (const bad of ['', ' ', 'LAST', '-1', '+1', '1.0', '1e3', '0x10', ' 1', '1 ', '1  LAST', '1 LAST ', '1 LASTX', '1 LAST x', '1\tLAST', '１２', String(MAX_BDAT_CHUNK + 1), '99999999999999']) {
      expect(parseBdat(bad), JSON.stringify(bad)).toBeNull();
    }
  });

  // was a bug: chunk-size is 1*DIGIT; the limit is on the value, not on 13 digits
  it('takes a valid size written with more than 13 digits (leading zeros)', () => {
    expect(parseBdat('00000000000006 LAST')).toEqual({ size: 6, last: true });
  });
});

describe('ChunkCounter (review)', () => {
  it('splits any sequence of reads exactly at the chunk end, never copying', () => {
    for (let round = 0; round < 50; round++) {
      const size = round * 37;
      const data = randomBytes(size + 100);
      const c = new ChunkCounter(size);
      const parts: Buffer[] = [];
      let rest: Buffer | null = null;
      let at = 0;
      while (rest === null) {
        const step = 1 + ((at * 31 + round) % 53);
        const read = data.subarray(at, at + step);
        at += read.length;
        const r = c.take(read);
        parts.push(r.part);
        rest = r.rest;
        if (read.length === 0) break;
      }
      expect(c.done).toBe(true);
      expect(c.left).toBe(0);
      expect(Buffer.concat(parts).equals(data.subarray(0, size))).toBe(true);
      expect(Buffer.concat([rest ?? Buffer.alloc(0), data.subarray(at)]).equals(data.subarray(size))).toBe(true);
    }
  });

  it('a zero-size chunk is done at once and gives every octet back', () => {
    const c = new ChunkCounter(0);
    const r = c.take(Buffer.from('MAIL FROM:<x@y>\r\n'));
    expect(r.part.length).toBe(0);
    expect(r.rest?.toString()).toBe('MAIL FROM:<x@y>\r\n');
  });
});
