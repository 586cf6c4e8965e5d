// Review tests of the relay's pure parts, from RFC 5321 §4.1.2/§4.1.3 (paths, address literals),
// RFC 5321 §5.1 and RFC 7505 (MX order, null MX), RFC 4616 (PLAIN), RFC 1870/6152/6531 (which MAIL
// parameters a destination may see) and docs/relay.md (source rules, derived throttle rules).
import { describe, expect, it } from 'vitest';
import type { DerivedThrottleConfig, RelayConfig } from '../../src/config/parse.js';
import { chooseSource, decodePlain, mailLineFor, parsePath } from '../../src/relay/envelope.js';
import { mxPlan } from '../../src/smtp/mx.js';
import { derivedDeclaration } from '../../src/throttle/derived.js';

const relay = (o: Partial<RelayConfig>): RelayConfig =>
  ({ sourceBySenderDomain: new Map(), sourceByLocalAddress: new Map(), accounts: [], sourceIp: null, ...o }) as unknown as RelayConfig;

describe('parsePath (RFC 5321 §4.1.2)', () => {
  it('takes the mailbox, its domain (lower case, no trailing dot) and the parameters', () => {
    expect(parsePath('FROM:<Jo@Example.COM.> SIZE=100 BODY=8BITMIME', 'FROM')).toEqual({ mailbox: 'Jo@Example.COM.', domain: { kind: 'domain', domain: 'example.com' }, params: 'SIZE=100 BODY=8BITMIME' });
    expect(parsePath('from:<a@b.test>', 'FROM')?.domain).toEqual({ kind: 'domain', domain: 'b.test' });
  });

  it('the null reverse-path and a source route', () => {
    expect(parsePath('FROM:<>', 'FROM')).toEqual({ mailbox: '', domain: { kind: 'none' }, params: '' });
    // RFC 5321 §4.1.2 / Appendix C: the source route is accepted and ignored
    expect(parsePath('TO:<@relay1.test,@relay2.test:user@dest.test>', 'TO')).toMatchObject({ mailbox: 'user@dest.test', domain: { kind: 'domain', domain: 'dest.test' } });
  });

  it('a quoted local part containing "@" keeps its domain after the last "@"', () => {
    expect(parsePath('TO:<"a@b"@c.test>', 'TO')).toMatchObject({ mailbox: '"a@b"@c.test', domain: { kind: 'domain', domain: 'c.test' } });
  });

  it('address literals: IPv4 and "IPv6:" tagged; bad ones are syntax errors', () => {
    expect(parsePath('TO:<u@[192.0.2.1]>', 'TO')?.domain).toEqual({ kind: 'literal', address: '192.0.2.1' });
    expect(parsePath('TO:<u@[IPv6:2001:db8::1]>', 'TO')?.domain).toEqual({ kind: 'literal', address: '2001:db8::1' });
    expect(parsePath('TO:<u@[300.1.1.1]>', 'TO')).toBeNull();
    expect(parsePath('TO:<u@>', 'TO')).toBeNull();
    expect(parsePath('TO:<@x.test>', 'TO')).toBeNull();
    expect(parsePath('TO:<u@exa mple.test>', 'TO')).toBeNull();
    expect(parsePath('TO:u@x.test', 'TO')).toBeNull();
  });

  // was a bug (fixed): parsePath's literal regex makes the "IPv6:" tag optional, so "[2001:db8::1]" is taken as an address literal; RFC 5321 §4.1.3 IPv6-address-literal = "IPv6:" IPv6-addr (an untagged one is a syntax error, 501)
  it('an IPv6 literal without the "IPv6:" tag is a syntax error (RFC 5321 §4.1.3)', () => {
    expect(parsePath('TO:<u@[2001:db8::1]>', 'TO')).toBeNull();
  });
});

describe('mailLineFor: only the parameters the destination announced (RFC 5321 §4.1.1.11)', () => {
  const p = parsePath('FROM:<s@x.test> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc AUTH=<>', 'FROM');
  it('keeps SIZE, BODY and SMTPUTF8 when offered, drops the rest', () => {
    if (p === null) throw new Error('no path');
    expect(mailLineFor(p, new Map([['SIZE', '100000'], ['8BITMIME', ''], ['SMTPUTF8', ''], ['DSN', '']]))).toBe('MAIL FROM:<s@x.test> SIZE=1234 BODY=8BITMIME SMTPUTF8');
    expect(mailLineFor(p, new Map())).toBe('MAIL FROM:<s@x.test>');
  });
  it('the null sender stays the null sender', () => {
    const n = parsePath('FROM:<>', 'FROM');
    if (n === null) throw new Error('no path');
    expect(mailLineFor(n, new Map())).toBe('MAIL FROM:<>');
  });
});

describe('chooseSource (docs/relay.md "Choosing the source IP")', () => {
  const r = relay({
    sourceBySenderDomain: new Map([['example.com', '192.0.2.11']]),
    accounts: [{ username: 'mta-a', password: 'x', sourceIp: '192.0.2.12' }],
    sourceByLocalAddress: new Map([['127.0.0.5', '192.0.2.13']]),
    sourceIp: '192.0.2.10',
  });
  it('a parent domain matches by labels, never by a suffix of a label', () => {
    expect(chooseSource(r, { senderDomain: 'news.example.com', account: null, localAddress: null })).toMatchObject({ ok: true, sourceIp: '192.0.2.11' });
    expect(chooseSource(r, { senderDomain: 'notexample.com', account: null, localAddress: null })).toMatchObject({ ok: true, sourceIp: '192.0.2.10' });
  });
  it('the rules in order: sender domain, account, local address, source_ip', () => {
    expect(chooseSource(r, { senderDomain: 'example.com', account: 'mta-a', localAddress: '127.0.0.5' })).toMatchObject({ sourceIp: '192.0.2.11' });
    expect(chooseSource(r, { senderDomain: 'other.test', account: 'mta-a', localAddress: '127.0.0.5' })).toMatchObject({ sourceIp: '192.0.2.12' });
    expect(chooseSource(r, { senderDomain: null, account: null, localAddress: '::ffff:127.0.0.5' })).toMatchObject({ sourceIp: '192.0.2.13' });
    expect(chooseSource(r, { senderDomain: null, account: null, localAddress: '127.0.0.6' })).toMatchObject({ sourceIp: '192.0.2.10' });
  });
  it('no rule: a refusal that says why, never a default', () => {
    const c = chooseSource(relay({}), { senderDomain: 'x.test', account: null, localAddress: '127.0.0.1' });
    expect(c.ok).toBe(false);
  });
});

describe('decodePlain (RFC 4616)', () => {
  const enc = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  it('authzid, authcid, password; UTF-8', () => {
    expect(decodePlain(enc('\0mta\0pässwörd'))).toEqual({ authzid: '', username: 'mta', password: 'pässwörd' });
    expect(decodePlain(enc('mta\0mta\0pw'))).toEqual({ authzid: 'mta', username: 'mta', password: 'pw' });
  });
  it('refuses what is not a PLAIN message', () => {
    expect(decodePlain('!!!')).toBeNull();
    expect(decodePlain(enc('mta\0pw'))).toBeNull();
    expect(decodePlain(enc('\0\0pw'))).toBeNull();
    expect(decodePlain(enc('\0mta\0'))).toBeNull();
    expect(decodePlain(enc('\0a\0b\0c'))).toBeNull();
  });
});

describe('mxPlan (RFC 5321 §5.1, RFC 7505)', () => {
  it('by preference, names normalized and deduplicated', () => {
    const plan = mxPlan('d.test', [{ exchange: 'MX2.D.test.', priority: 20 }, { exchange: 'mx1.d.test', priority: 10 }, { exchange: 'mx2.d.test', priority: 30 }, { exchange: 'mx0.d.test', priority: 0 }]);
    expect(plan).toEqual({ kind: 'hosts', hosts: ['mx0.d.test', 'mx1.d.test', 'mx2.d.test'] });
  });
  it('no MX: the domain itself; only a null MX: no mail; a null MX among real ones is ignored', () => {
    expect(mxPlan('D.test', null)).toEqual({ kind: 'hosts', hosts: ['d.test'] });
    expect(mxPlan('d.test', [{ exchange: '', priority: 0 }])).toEqual({ kind: 'null' });
    expect(mxPlan('d.test', [{ exchange: '.', priority: 0 }, { exchange: 'mx.d.test', priority: 10 }])).toEqual({ kind: 'hosts', hosts: ['mx.d.test'] });
  });
  it('equal preferences in random order (both orders happen)', () => {
    const recs = [{ exchange: 'a.d.test', priority: 10 }, { exchange: 'b.d.test', priority: 10 }];
    let i = 0;
    const seq = [0.9, 0.1, 0.1, 0.9];
    const rnd = (): number => seq[i++ % seq.length] ?? 0;
    const first = mxPlan('d.test', recs, rnd);
    const second = mxPlan('d.test', recs, rnd);
    expect(first).toEqual({ kind: 'hosts', hosts: ['b.d.test', 'a.d.test'] });
    expect(second).toEqual({ kind: 'hosts', hosts: ['a.d.test', 'b.d.test'] });
  });
});

describe('derivedDeclaration: the [derived_throttle] rule of an MX host', () => {
  const c: DerivedThrottleConfig = {
    maxConnections: 10,
    maxMessagesPerHour: 0,
    destinations: [
      { host: '.example.com', sourceIp: null, maxConnections: 4, maxMessagesPerHour: 100, key: null, mode: 'sum' },
      { host: 'mx.small.test', sourceIp: '192.0.2.11', maxConnections: 1, maxMessagesPerHour: 5, key: null, mode: 'sum' },
    ] as unknown as DerivedThrottleConfig['destinations'],
  };
  it('".domain" matches hosts under it, not a host that merely ends with its letters', () => {
    expect(derivedDeclaration(c, '192.0.2.10', 'MX1.Example.COM.', 25)).toMatchObject({ maxConnections: 4, maxMessagesPerHour: 100 });
    expect(derivedDeclaration(c, '192.0.2.10', 'mx1.badexample.com', 25)).toMatchObject({ maxConnections: 10 });
  });
  it('a rule for one source applies to that source only', () => {
    expect(derivedDeclaration(c, '192.0.2.11', 'mx.small.test', 25)).toMatchObject({ maxConnections: 1, maxMessagesPerHour: 5 });
    expect(derivedDeclaration(c, '192.0.2.10', 'mx.small.test', 25)).toMatchObject({ maxConnections: 10 });
  });
});

describe('derivedDeclaration: remembered per config', () => {
  it('gives the same object for the same destination, a new one after a reload, and stays bounded', () => {
    const c: DerivedThrottleConfig = { maxConnections: 3, maxMessagesPerHour: 0, destinations: [] };
    const a = derivedDeclaration(c, '192.0.2.10', 'MX.example.', 25);
    expect(derivedDeclaration(c, '192.0.2.10', 'MX.example.', 25)).toBe(a);
    expect(a).toMatchObject({ key: '192.0.2.10>mx.example:25', maxConnections: 3 });
    expect(derivedDeclaration(c, '192.0.2.10', 'MX.example.', 587)).not.toBe(a);
    expect(derivedDeclaration(c, '192.0.2.11', 'MX.example.', 25).key).toBe('192.0.2.11>mx.example:25');
    // a reloaded config is another object: its own limits, not the old ones
    const reloaded: DerivedThrottleConfig = { ...c, maxConnections: 9 };
    expect(derivedDeclaration(reloaded, '192.0.2.10', 'MX.example.', 25)).toMatchObject({ key: a.key, maxConnections: 9 });
    // past the bound the memo starts again: still right, never more than 4096 remembered
    for (let i = 0; i < 5000; i++) expect(derivedDeclaration(c, '192.0.2.10', `198.51.${i >> 8}.${i & 255}`, 25).key).toBe(`192.0.2.10>198.51.${i >> 8}.${i & 255}:25`);
    expect(derivedDeclaration(c, '192.0.2.10', 'MX.example.', 25)).toEqual(a);
  });
});
