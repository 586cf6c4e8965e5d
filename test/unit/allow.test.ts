import { describe, expect, it } from 'vitest';
import { AllowList, parseAllowRule, type AllowRule } from '../../src/config/allow.js';

const list = (...rules: string[]): AllowList =>
  new AllowList(
    rules.map((text) => {
      const r = parseAllowRule(text);
      if (!r.ok) throw new Error(r.message);
      return r.rule as AllowRule;
    }),
  );

describe('allow_from', () => {
  it('matches IPv4 peers, plain and IPv4-mapped', () => {
    const allow = list('10.0.0.0/8', '192.0.2.7');
    expect(allow.allows('10.200.1.1')).toBe(true);
    expect(allow.allows('::ffff:10.200.1.1')).toBe(true);
    expect(allow.allows('192.0.2.7')).toBe(true);
    expect(allow.allows('::ffff:192.0.2.8')).toBe(false);
    expect(allow.allows('11.0.0.1')).toBe(false);
  });

  it('matches IPv6 peers only against IPv6 rules', () => {
    const allow = list('2001:db8::/32', '::1');
    expect(allow.allows('2001:db8:1::5')).toBe(true);
    expect(allow.allows('::1')).toBe(true);
    expect(allow.allows('2001:db9::1')).toBe(false);
    expect(allow.allows('127.0.0.1')).toBe(false);
  });

  it('turns IPv4-mapped IPv6 rules into IPv4 rules', () => {
    const allow = list('::ffff:10.0.0.0/104');
    expect(allow.allows('10.1.2.3')).toBe(true);
    expect(allow.allows('::ffff:10.1.2.3')).toBe(true);
    expect(allow.allows('11.1.2.3')).toBe(false);
  });

  it('refuses everything when empty and on unparseable peers', () => {
    expect(list().allows('127.0.0.1')).toBe(false);
    expect(list('0.0.0.0/0').allows(undefined)).toBe(false);
    expect(list('0.0.0.0/0').allows('nonsense')).toBe(false);
  });

  it('rejects sloppy rules', () => {
    for (const bad of ['10', '0x0a.0.0.1', '10.0.0.0/33', '10.0.0.0/', '2001:db8::/129', 'example.com', '10.0.0.1/8', '']) {
      expect(parseAllowRule(bad).ok, bad).toBe(false);
    }
  });
});
