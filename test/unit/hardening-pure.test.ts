// Pure checks behind the hardening review: config keys that are Object.prototype names,
// non-canonical addresses in CONNECT and DECLARE, and control bytes on their way to a log line.
import { describe, expect, it } from 'vitest';
import { formatConfigError, parseConfig } from '../../src/config/parse.js';
import { decodeRecord, printableText, renderLine } from '../../src/log/logger.js';
import { isHostName, parseConnect } from '../../src/egress/policy.js';
import { parseDeclare } from '../../src/protocol/throttle.js';

const SECRET = 'x'.repeat(40);
const io = { readSecretFile: (): string => '', isLocalAddress: (): boolean => true };

describe('config keys named like Object.prototype members', () => {
  it('are unknown directives, at the top level and in tables', () => {
    const text = [
      `auth_shared_secret = "${SECRET}"`,
      'constructor = 1',
      'toString = "x"',
      '__proto__ = 2',
      'valueOf = 3',
      '[egress]',
      'hasOwnProperty = true',
      '__proto__ = 4',
      '[socks5]',
      'allow_unauthenticated = true',
      'toString = 5',
    ].join('\n');
    const r = parseConfig(text, 'm.toml', io);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors.map(formatConfigError)).toEqual([
      'm.toml:2:1: constructor: unknown directive',
      'm.toml:3:1: toString: unknown directive',
      'm.toml:4:1: __proto__: unknown directive',
      'm.toml:5:1: valueOf: unknown directive',
      'm.toml:7:1: egress.hasOwnProperty: unknown directive',
      'm.toml:8:1: egress.__proto__: unknown directive',
      'm.toml:11:1: socks5.toString: unknown directive',
    ]);
  });
});

describe('addresses in CONNECT and DECLARE', () => {
  it('accept only canonical IPv4 (a.b.c.d): "127.2" and "0x7f.1" are not addresses nor names', () => {
    expect(parseConnect('CONNECT 127.2 192.0.2.1:25 k')).toMatchObject({ code: 501 });
    expect(parseConnect('CONNECT 127.0.0.2 0x7f.1:25 k')).toMatchObject({ code: 501 });
    expect(parseConnect('CONNECT 127.0.0.2 127.1:25 k')).toMatchObject({ code: 501 });
    expect(parseConnect('CONNECT 127.0.0.2 017.0.0.1:25 k')).toMatchObject({ code: 501 });
    expect(parseConnect('CONNECT 0177.0.0.2 192.0.2.1:25 k')).toMatchObject({ code: 501 });
    expect(parseConnect('CONNECT 127.0.0.2 mx.example.com:25 k')).toMatchObject({ host: 'mx.example.com', sourceIp: '127.0.0.2' });
    expect(parseConnect('CONNECT 127.0.0.2 192.0.2.1:25 k')).toMatchObject({ host: '192.0.2.1' });
    expect(parseConnect('CONNECT 2001:db8::1 [2001:db8::25]:25 k')).toMatchObject({ host: '2001:db8::25', sourceIp: '2001:db8::1' });
    expect(parseDeclare(['k', 'source=127.2', 'max_connections=1', 'max_messages_per_hour=1', 'mode=sum'])).toMatch(/source=<ip> is required/);
    expect(parseDeclare(['k', 'source=127.0.0.2', 'max_connections=1', 'max_messages_per_hour=1', 'mode=sum'])).toMatchObject({ sourceIp: '127.0.0.2' });
  });

  it('tells host names from numbers in disguise', () => {
    expect(isHostName('mx1.example.com')).toBe(true);
    expect(isHostName('123.example.com')).toBe(true);
    expect(isHostName('example.com.')).toBe(true);
    expect(isHostName('0x7f.1')).toBe(false);
    expect(isHostName('10.0x1')).toBe(false);
    expect(isHostName('2130706433')).toBe(false);
    expect(isHostName('mail.0x')).toBe(false);
  });
});

describe('log lines', () => {
  it('escape control bytes and bidirectional overrides from client input, in messages and fields', () => {
    expect(printableText('a\x00b\x1b[31mc\rd\ne\x7f\u0085\u202e')).toBe('a\\x00b\\x1b[31mc\\x0dd\\x0ae\\x7f\\x85\\u202e');
    const record = decodeRecord(JSON.stringify({ level: 40, time: 1, msg: 'delivery(x): "\x1b[2J"', mtaproxy_event: 'delivery', line: 'CONNECT \x00\r' }));
    const line = renderLine(record, new Date('2026-12-01T00:00:00.000Z'));
    expect(line).toBe('2026-12-01T00:00:00.000Z WARN delivery(x): "\\x1b[2J" line="CONNECT \\\\x00\\\\x0d"\n');
    expect(line.slice(0, -1)).not.toMatch(/[\x00-\x1f\x7f]/);
  });
});
