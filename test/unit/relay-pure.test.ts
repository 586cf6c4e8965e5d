// The relay's pure parts: [relay] config validation, the envelope (paths, MAIL parameters, the
// source IP rules, AUTH PLAIN) and MX planning (RFC 5321 §5.1, RFC 7505).
import { describe, expect, it } from 'vitest';
import { formatConfigError, parseConfig, type ConfigResult, type RelayConfig } from '../../src/config/parse.js';
import { chooseSource, decodePlain, mailLineFor, parsePath, rcptLineFor } from '../../src/relay/envelope.js';
import { mxPlan } from '../../src/smtp/mx.js';

const SECRET = 'x'.repeat(40);
const LOCAL = new Set(['192.0.2.10', '192.0.2.11', '192.0.2.12', '2001:db8::10']);
const io = {
  readSecretFile: (p: string): string => {
    throw new Error(`ENOENT "${p}"`);
  },
  isLocalAddress: (ip: string): boolean => LOCAL.has(ip),
};
const base = `auth_shared_secret = "${SECRET}"\n[egress]\nsource_ips = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]\n`;
const parse = (relay: string, top = ''): ConfigResult => parseConfig(`${top}${base}[relay]\n${relay}`, '/etc/mtaproxy/mtaproxy.toml', io);
const errors = (relay: string, top = ''): string[] => {
  const r = parse(relay, top);
  if (r.ok) throw new Error('expected errors');
  return r.errors.map(formatConfigError);
};
const relayOf = (relay: string, top = ''): RelayConfig => {
  const r = parse(relay, top);
  if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
  if (r.config.relay === null) throw new Error('no relay');
  return r.config.relay;
};

describe('[relay] config', () => {
  it('reads every directive, with the defaults', () => {
    const r = relayOf(
      [
        'listen = "127.0.0.1:2525"',
        'lmtp_listen = ["127.0.0.1:2424"]',
        'ehlo_name = "mta.example.com"',
        'source_ip = "192.0.2.10"',
        'source_by_sender_domain = { "Example.COM" = "192.0.2.11" }',
        'source_by_local_address = { "127.0.0.5" = "192.0.2.12" }',
        'accounts = [{ username = "a", password = "p", source_ip = "192.0.2.12" }]',
      ].join('\n'),
      'dns_servers = ["127.0.0.1:5353", "192.0.2.53", "[::1]:53"]\n',
    );
    expect(r.listen).toEqual([{ host: '127.0.0.1', port: 2525 }]);
    expect(r.lmtpListen).toEqual([{ host: '127.0.0.1', port: 2424 }]);
    expect(r.hostname).toBe('mta.example.com');
    expect(r.ehloNames.get('192.0.2.11')).toBe('mta.example.com');
    expect(r.destinationTls).toBe('opportunistic');
    expect(r.destinationPort).toBe(25);
    expect(r.sourceBySenderDomain.get('example.com')).toBe('192.0.2.11');
    expect(r.sourceByLocalAddress.get('127.0.0.5')).toBe('192.0.2.12');
    expect(r.requireAuth).toBe(true);
    expect(r.maxRecipients).toBe(1000);
    expect(r.maxMessageSize).toBe(52_428_800);
    const c = parse('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"', 'dns_servers = ["127.0.0.1:5353"]\n');
    expect(c.ok && c.config.dnsServers).toEqual(['127.0.0.1:5353']);
  });

  it('refuses a relay that could send from the wrong IP or not at all', () => {
    expect(errors('ehlo_name = "m.example"').join('\n')).toMatch(/relay: chooses no source IP/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "198.51.100.1"').join('\n')).toMatch(/relay\.source_ip: source_ip: 198\.51\.100\.1 is not in egress\.source_ips/);
    expect(errors('source_ip = "192.0.2.10"').join('\n')).toMatch(/:\d+:\d+: relay\.ehlo_name: is required/);
    expect(errors('ehlo_name = { "192.0.2.10" = "a.example" }\nsource_ip = "192.0.2.10"\nsource_by_sender_domain = { "x.example" = "192.0.2.11" }').join('\n')).toMatch(/names no EHLO name for 192\.0\.2\.11/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\nrequire_auth = true').join('\n')).toMatch(/require_auth: is true but relay\.accounts is empty/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\ndestination_port = 2525').join('\n')).toMatch(/destination port 2525 is not in egress\.ports/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\naccounts = [{ username = "a", password = "p" }]', 'tls = false\n').join('\n')).toMatch(/AUTH is offered only after STARTTLS/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\nsource_by_sender_domain = { "not a domain" = "192.0.2.10" }').join('\n')).toMatch(/"not a domain" is not a domain name/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\ndestination_tls = "maybe"').join('\n')).toMatch(/destination_tls: must be "none", "opportunistic" or "required"/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\nlmtp_listn = "127.0.0.1:24"').join('\n')).toMatch(/unknown directive; did you mean "relay\.lmtp_listen"\?/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"\naccounts = [{ username = "a", password = "p" }, { username = "a", password = "q" }]').join('\n')).toMatch(/username "a" appears twice/);
    expect(errors('ehlo_name = "m.example"\nsource_ip = "192.0.2.10"', 'dns_servers = ["ns1.example"]\n').join('\n')).toMatch(/dns_servers: "ns1\.example" must be "IP"/);
  });
});

describe('relay envelope', () => {
  it('parses paths: domain, literal, null sender, source route, parameters', () => {
    expect(parsePath('FROM:<a@Example.COM.> SIZE=100 BODY=8BITMIME', 'FROM')).toEqual({ mailbox: 'a@Example.COM.', domain: { kind: 'domain', domain: 'example.com' }, params: 'SIZE=100 BODY=8BITMIME' });
    expect(parsePath('TO:<u@[192.0.2.1]>', 'TO')?.domain).toEqual({ kind: 'literal', address: '192.0.2.1' });
    expect(parsePath('TO:<u@[IPv6:2001:db8::1]>', 'TO')?.domain).toEqual({ kind: 'literal', address: '2001:db8::1' });
    expect(parsePath('FROM:<>', 'FROM')?.domain).toEqual({ kind: 'none' });
    expect(parsePath('TO:<@relay.example:u@d.example>', 'TO')).toMatchObject({ mailbox: 'u@d.example', domain: { domain: 'd.example' } });
    expect(parsePath('TO:<"a b"@d.example>', 'TO')?.domain).toEqual({ kind: 'domain', domain: 'd.example' });
    expect(parsePath('TO:<u@d.example', 'TO')).toBeNull();
    expect(parsePath('TO:<u@>', 'TO')).toBeNull();
    expect(parsePath('TO:<u@[300.1.1.1]>', 'TO')).toBeNull();
    expect(parsePath('TO:<u@bad domain>', 'TO')).toBeNull();
    expect(rcptLineFor(parsePath('TO:<u@d.example> NOTIFY=NEVER', 'TO') ?? (null as never))).toBe('RCPT TO:<u@d.example>');
  });

  it('sends a destination only the MAIL parameters its EHLO offers', () => {
    const p = parsePath('FROM:<a@b.example> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS', 'FROM') ?? (null as never);
    expect(mailLineFor(p, new Map([['SIZE', '1000'], ['8BITMIME', ''], ['SMTPUTF8', '']]))).toBe('MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME SMTPUTF8');
    expect(mailLineFor(p, new Map())).toBe('MAIL FROM:<a@b.example>');
  });

  it('chooses the source: sender domain (and its parents), account, relay address, default; else a reason', () => {
    const relay = relayOf(
      [
        'ehlo_name = "m.example"',
        'source_by_sender_domain = { "example.com" = "192.0.2.11" }',
        'accounts = [{ username = "a", password = "p", source_ip = "192.0.2.12" }, { username = "b", password = "p" }]',
        'source_by_local_address = { "127.0.0.5" = "192.0.2.10" }',
        'require_auth = false',
      ].join('\n'),
    );
    expect(chooseSource(relay, { senderDomain: 'news.example.com', account: 'a', localAddress: '127.0.0.5' })).toEqual({ ok: true, sourceIp: '192.0.2.11', by: 'sender domain example.com' });
    expect(chooseSource(relay, { senderDomain: 'other.example', account: 'a', localAddress: '127.0.0.5' })).toEqual({ ok: true, sourceIp: '192.0.2.12', by: 'account a' });
    expect(chooseSource(relay, { senderDomain: null, account: 'b', localAddress: '::ffff:127.0.0.5' })).toEqual({ ok: true, sourceIp: '192.0.2.10', by: 'relay address 127.0.0.5' });
    const none = chooseSource(relay, { senderDomain: 'other.example', account: 'b', localAddress: '127.0.0.6' });
    expect(none.ok).toBe(false);
    expect(!none.ok && none.reason).toMatch(/other\.example is not in source_by_sender_domain; account b has no source_ip; relay address 127\.0\.0\.6 is not in source_by_local_address; relay\.source_ip is not set/);
  });

  it('decodes AUTH PLAIN and refuses malformed responses', () => {
    const b64 = (s: string): string => Buffer.from(s).toString('base64');
    expect(decodePlain(b64('\0user\0pa ss'))).toEqual({ authzid: '', username: 'user', password: 'pa ss' });
    expect(decodePlain(b64('user\0user\0pw'))).toEqual({ authzid: 'user', username: 'user', password: 'pw' });
    expect(decodePlain(b64('user\0pw'))).toBeNull();
    expect(decodePlain(b64('\0\0pw'))).toBeNull();
    expect(decodePlain('not base64!')).toBeNull();
  });
});

describe('MX plan', () => {
  const noRandom = (): number => 0.5;
  it('orders by preference, dedups, and lower-cases', () => {
    expect(mxPlan('d.example', [{ exchange: 'MX2.d.example.', priority: 20 }, { exchange: 'mx1.d.example', priority: 10 }, { exchange: 'mx2.d.example', priority: 30 }], noRandom)).toEqual({ kind: 'hosts', hosts: ['mx1.d.example', 'mx2.d.example'] });
  });
  it('a domain without MX is its own MX; a null MX accepts no mail; a null MX beside real ones is ignored', () => {
    expect(mxPlan('D.example', null)).toEqual({ kind: 'hosts', hosts: ['d.example'] });
    expect(mxPlan('d.example', [{ exchange: '', priority: 0 }])).toEqual({ kind: 'null' });
    expect(mxPlan('d.example', [{ exchange: '.', priority: 0 }, { exchange: 'mx.d.example', priority: 10 }])).toEqual({ kind: 'hosts', hosts: ['mx.d.example'] });
  });
  it('shuffles records of equal preference', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) seen.add(JSON.stringify(mxPlan('d', [{ exchange: 'a', priority: 10 }, { exchange: 'b', priority: 10 }])));
    expect(seen.size).toBe(2);
  });
});

describe('derived throttle limits', () => {
  it('the first matching destinations rule sets them, by host or ".domain", optionally per source', async () => {
    const { derivedDeclaration, UNLIMITED_MESSAGES_PER_HOUR } = await import('../../src/throttle/derived.js');
    const r = parseConfig(
      `${base}[derived_throttle]\nmax_connections = 4\ndestinations = [{ host = "mx.a.example", source_ip = "192.0.2.11", max_connections = 1 }, { host = ".a.example", max_messages_per_hour = 600 }, { host = "192.0.2.99", max_connections = 2 }]\n`,
      '/f',
      io,
    );
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    const d = r.config.derivedThrottle;
    expect(derivedDeclaration(d, '192.0.2.11', 'MX.a.example.', 25)).toMatchObject({ key: '192.0.2.11>mx.a.example:25', maxConnections: 1, maxMessagesPerHour: UNLIMITED_MESSAGES_PER_HOUR, mode: 'sum' });
    expect(derivedDeclaration(d, '192.0.2.10', 'mx.a.example', 25)).toMatchObject({ maxConnections: 4, maxMessagesPerHour: 600 });
    expect(derivedDeclaration(d, '192.0.2.10', 'a.example', 25)).toMatchObject({ maxConnections: 4, maxMessagesPerHour: UNLIMITED_MESSAGES_PER_HOUR });
    expect(derivedDeclaration(d, '192.0.2.10', '192.0.2.99', 25)).toMatchObject({ maxConnections: 2 });
    const named = parseConfig(`${base}[derived_throttle]\ndestinations = [{ host = ".google.com", key = "google@{source_ip}", mode = "average", max_connections = 20 }]\n`, '/f', io);
    if (!named.ok) throw new Error(named.errors.map(formatConfigError).join('\n'));
    expect(derivedDeclaration(named.config.derivedThrottle, '192.0.2.10', 'alt1.gmail-smtp-in.l.google.com', 25)).toEqual({ key: 'google@192.0.2.10', sourceIp: '192.0.2.10', maxConnections: 20, maxMessagesPerHour: UNLIMITED_MESSAGES_PER_HOUR, mode: 'average' });
    const badKey = parseConfig(`${base}[derived_throttle]\ndestinations = [{ host = "a.example", key = "has space" }, { host = "a.example", key = "x{other}" }, { host = "a.example", mode = "max" }]\n`, '/f', io);
    const badKeyText = badKey.ok ? '' : badKey.errors.map(formatConfigError).join('\n');
    expect(badKeyText.match(/key must be a throttle key/g)).toHaveLength(2);
    expect(badKeyText).toMatch(/mode must be "sum" or "average"/);
    const bad = parseConfig(`${base}[derived_throttle]\ndestinations = [{ host = "x y" }, { host = "m.example", max_connections = 0 }, { host = "m.example", source_ip = "198.51.100.1" }, { hots = "m" }]\n`, '/f', io);
    expect(bad.ok).toBe(false);
    const text = bad.ok ? '' : bad.errors.map(formatConfigError).join('\n');
    expect(text).toMatch(/host "x y" is not a host name/);
    expect(text).toMatch(/max_connections must be a whole number from 1/);
    expect(text).toMatch(/source_ip 198\.51\.100\.1 is not in egress\.source_ips/);
    expect(text).toMatch(/destinations\[3\] needs host/);
  });
});

describe('relay config warnings', () => {
  it('warns of a relay listener off loopback without AUTH (an open relay for allow_from), not of a loopback one or with AUTH', async () => {
    const { configWarnings } = await import('../../src/config/parse.js');
    const open = parse('listen = "0.0.0.0:2525"\nehlo_name = "m.example"\nsource_ip = "192.0.2.10"');
    if (!open.ok) throw new Error('config');
    expect(configWarnings(open.config).join('\n')).toMatch(/relay listener "0\.0\.0\.0:2525" is not a loopback address and AUTH is not required/);
    const local = parse('listen = "127.0.0.1:2525"\nlmtp_listen = "[::1]:24"\nehlo_name = "m.example"\nsource_ip = "192.0.2.10"');
    if (!local.ok) throw new Error('config');
    expect(configWarnings(local.config)).toEqual([]);
    const authed = parse('listen = "0.0.0.0:2525"\nehlo_name = "m.example"\nsource_ip = "192.0.2.10"\naccounts = [{ username = "a", password = "p" }]');
    if (!authed.ok) throw new Error('config');
    expect(configWarnings(authed.config)).toEqual([]);
  });
});
