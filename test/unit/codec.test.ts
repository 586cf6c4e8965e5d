import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseAdminReply, parseAdminRequest } from '../../src/protocol/admin.js';
import { formatBacklog, parseBacklog, parseControlLine, type ControlMessage } from '../../src/protocol/control.js';
import { LineSplitter, LineTooLongError } from '../../src/protocol/lines.js';

describe('LineSplitter', () => {
  it('splits across chunks, strips CR, keeps the partial line buffered', () => {
    const s = new LineSplitter(16);
    expect(s.push(Buffer.from('PI'))).toEqual([]);
    expect(s.buffered).toBe(2);
    expect(s.push(Buffer.from('NG\r\n1 X\nrest'))).toEqual(['PING', '1 X']);
    expect(s.buffered).toBe(4);
    expect(s.push(Buffer.from('\n\n'))).toEqual(['rest', '']);
    expect(s.buffered).toBe(0);
  });

  it('refuses lines over the limit, complete or not', () => {
    expect(() => new LineSplitter(4).push(Buffer.from('12345\n'))).toThrow(LineTooLongError);
    expect(() => new LineSplitter(4).push(Buffer.from('12345'))).toThrow('line longer than 4 bytes');
    expect(new LineSplitter(4).push(Buffer.from('1234\r\n'))).toEqual(['1234']);
    const split = new LineSplitter(4);
    expect(split.push(Buffer.from('1234\r'))).toEqual([]); // the "\r" may belong to "\r\n"
    expect(split.push(Buffer.from('\n'))).toEqual(['1234']);
    expect(() => new LineSplitter(4).push(Buffer.from('12345\r'))).toThrow(LineTooLongError);
  });

  it('keeps multi-byte characters split across chunks intact', () => {
    const s = new LineSplitter(64);
    const bytes = Buffer.from('é€\n');
    expect(s.push(bytes.subarray(0, 1))).toEqual([]);
    expect(s.push(bytes.subarray(1))).toEqual(['é€']);
  });

  // the splitter decodes a read's complete lines at once; each line must read as decoding its own
  // bytes did (the reference below), the byte limit must hold for lines with multi-byte and invalid
  // UTF-8, and how the stream is cut into reads must not matter
  it('agrees with decoding each line alone, for any bytes and any cut into reads', () => {
    const reference = (stream: Buffer, max: number): string[] | 'too long' => {
      const out: string[] = [];
      let start = 0;
      for (let nl = stream.indexOf(10); nl !== -1; nl = stream.indexOf(10, start)) {
        const end = nl > start && stream[nl - 1] === 13 ? nl - 1 : nl;
        if (end - start > max) return 'too long';
        out.push(stream.toString('utf8', start, end));
        start = nl + 1;
      }
      return out;
    };
    // bytes biased toward newlines, CR, ASCII, UTF-8 lead and continuation bytes, invalid ones
    const byte = fc.oneof(fc.constantFrom(10, 13, 0x41, 0x20, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0xff), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(fc.array(byte, { maxLength: 80 }), fc.array(fc.integer({ min: 0, max: 80 }), { maxLength: 6 }), fc.integer({ min: 1, max: 12 }), (bytes, cuts, max) => {
        const stream = Buffer.from(bytes);
        const want = reference(stream, max);
        const s = new LineSplitter(max);
        const got: string[] = [];
        const points = [...new Set(cuts.map((c) => Math.min(c, stream.length)))].sort((a, b) => a - b);
        let from = 0;
        try {
          for (const to of [...points, stream.length]) {
            got.push(...s.push(stream.subarray(from, to)));
            from = to;
          }
        } catch (err) {
          expect(err).toBeInstanceOf(LineTooLongError);
          // a line too long is refused once it is complete, or before: while still buffered past the limit
          if (want !== 'too long') expect(stream.length - stream.lastIndexOf(10) - 1).toBeGreaterThan(max);
          return;
        }
        expect(got).toEqual(want);
      }),
      { numRuns: 3000 },
    );
  });
});

/** parseControlLine as it was written with regular expressions: the hand-written one must agree */
function referenceParse(line: string): ControlMessage {
  const TAG = /^(?:s?\d{1,10}|-)$/;
  const first = line.indexOf(' ');
  if (first <= 0) return { kind: 'invalid', reason: 'expected "<tag> <VERB|code> ..."' };
  const tag = line.slice(0, first);
  const rest = line.slice(first + 1);
  const second = rest.indexOf(' ');
  const word = second === -1 ? rest : rest.slice(0, second);
  const tail = second === -1 ? '' : rest.slice(second + 1);
  if (/^\d{3}$/.test(word)) {
    if (tag === '*') return { kind: 'notice', code: Number(word), text: tail };
    if (TAG.test(tag)) return { kind: 'reply', tag, code: Number(word), text: tail };
    return { kind: 'invalid', reason: 'bad tag' };
  }
  if (!TAG.test(tag)) return { kind: 'invalid', reason: 'bad tag' };
  if (!/^[A-Z]{1,16}$/.test(word)) return { kind: 'invalid', reason: 'verb must be 1-16 capital letters' };
  return { kind: 'request', tag, verb: word, args: tail === '' ? [] : tail.split(' ') };
}

describe('control codec', () => {
  it('parses every line as the regular-expression version did', () => {
    const piece = fc.oneof(
      fc.constantFrom('-', '*', 's', 's1', '1', '0123456789', '01234567890', 's0123456789', 's01234567890', 'PING', 'ACQUIRE', 'ABCDEFGHIJKLMNOP', 'ABCDEFGHIJKLMNOPQ', '250', '25', '2500', 'x', '', 'lease', 'é', '٣٣٣', 'Ab'),
      fc.stringMatching(/^[s0-9A-Z*\- ]{0,12}$/),
      fc.string({ maxLength: 6 }),
    );
    const line = fc.array(piece, { maxLength: 5 }).chain((parts) => fc.constantFrom(' ', '  ').map((sep) => parts.join(sep)));
    fc.assert(fc.property(line, (l) => {
      expect(parseControlLine(l)).toEqual(referenceParse(l));
    }), { numRuns: 5000 });
    for (const l of ['1 250 lease 7', '- RELEASE 3', 's1 PING', '* 421 bye', ' 1 PING', '1  PING', '1 PING ', '12345678901 PING', 's 250 x', '- 250', '1 2500 x']) {
      expect(parseControlLine(l)).toEqual(referenceParse(l));
    }
  });

  it('tells requests, replies and notices apart by tag and second word', () => {
    expect(parseControlLine('7 BACKLOG ram=1 bounce=2 disk=3')).toEqual({ kind: 'request', tag: '7', verb: 'BACKLOG', args: ['ram=1', 'bounce=2', 'disk=3'] });
    expect(parseControlLine('s12 PING')).toEqual({ kind: 'request', tag: 's12', verb: 'PING', args: [] });
    expect(parseControlLine('s12 250 PONG')).toEqual({ kind: 'reply', tag: 's12', code: 250, text: 'PONG' });
    expect(parseControlLine('* 421 shutting down')).toEqual({ kind: 'notice', code: 421, text: 'shutting down' });
    expect(parseControlLine('PING').kind).toBe('invalid');
    expect(parseControlLine('x1 PING').kind).toBe('invalid');
    expect(parseControlLine('1 ping').kind).toBe('invalid');
    expect(parseControlLine('* PING').kind).toBe('invalid');
  });

  it('parses backlog reports strictly', () => {
    expect(parseBacklog(['disk=3', 'ram=1', 'bounce=2'])).toEqual({ ram: 1, bounce: 2, disk: 3 });
    expect(parseBacklog(['ram=1', 'bounce=2'])).toMatch(/needs/);
    expect(parseBacklog(['ram=1', 'ram=2', 'bounce=2', 'disk=1'])).toMatch(/twice/);
    expect(parseBacklog(['ram=-1', 'bounce=2', 'disk=1'])).toMatch(/bad backlog field/);
    expect(formatBacklog({ ram: 1, bounce: 2, disk: 3 })).toBe('ram=1 bounce=2 disk=3');
  });
});

describe('admin codec', () => {
  it('accepts only known commands', () => {
    expect(parseAdminRequest('{"command":"reload"}')).toBe('reload');
    expect(parseAdminRequest('{"command":"status"}')).toBe('status');
    expect(parseAdminRequest('{"command":"throttles"}')).toBe('throttles');
    expect(parseAdminRequest('{"command":"rm -rf"}')).toMatch(/unknown command/);
    expect(parseAdminRequest('reload')).toBe('request is not JSON');
    expect(parseAdminRequest('null')).toMatch(/unknown command/);
    expect(parseAdminReply('{"ok":false,"message":"x"}')).toEqual({ ok: false, message: 'x' });
    expect(parseAdminReply('{"ok":"yes"}')).toBeNull();
  });
});
