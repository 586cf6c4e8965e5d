// The pure SOCKS5 and PROXY v2 codecs, without sockets. PROXY v2 headers come from an independent
// encoder (proxy-protocol-js) as well as from hand-written bytes of the spec's layout.
import {
  Command,
  IPv4Address,
  IPv4ProxyAddress,
  IPv6Address,
  IPv6ProxyAddress,
  TransportProtocol,
  V2ProxyProtocol,
} from 'proxy-protocol-js';
import { describe, expect, it } from 'vitest';
import { crc32c, decodeProxyV2, proxyV2Target, SIGNATURE, type ProxyV2Header } from '../../src/protocol/proxy-v2.js';
import {
  AccountTable,
  chooseMethod,
  domainHost,
  encodeAuthStatus,
  encodeMethodSelection,
  encodeReply,
  METHOD,
  parseCredentials,
  parseGreeting,
  parseRequest,
  printable,
  REP,
  replyForRefusal,
  splitHostPort,
} from '../../src/protocol/socks5.js';

/** Feeds `bytes` one more byte at a time: every proper prefix must be "incomplete". */
function prefixesIncomplete(parse: (b: Uint8Array) => { status: string }, bytes: Uint8Array): void {
  for (let n = 0; n < bytes.length; n++) expect(parse(bytes.subarray(0, n)).status, `prefix of ${n} bytes`).toBe('incomplete');
}

describe('SOCKS5 codec', () => {
  it('parses greetings split anywhere, and names a SOCKS4 client', () => {
    const g = Buffer.from([5, 2, 0, 2, 0xaa]);
    prefixesIncomplete(parseGreeting, g.subarray(0, 4));
    expect(parseGreeting(g)).toEqual({ status: 'ok', value: { methods: [0, 2] }, length: 4 });
    expect(parseGreeting(Buffer.from([4, 1]))).toMatchObject({ status: 'error', reason: expect.stringMatching(/SOCKS4/) });
    expect(parseGreeting(Buffer.from([5, 0]))).toMatchObject({ status: 'error' });
  });

  it('parses RFC 1929 credentials and refuses empty fields', () => {
    const c = Buffer.from([1, 3, ...Buffer.from('bob'), 2, ...Buffer.from('pw')]);
    prefixesIncomplete(parseCredentials, c);
    const ok = parseCredentials(c);
    expect(ok.status).toBe('ok');
    if (ok.status === 'ok') expect([ok.value.username.toString(), ok.value.password.toString(), ok.length]).toEqual(['bob', 'pw', 8]);
    expect(parseCredentials(Buffer.from([1, 0]))).toMatchObject({ status: 'error', reason: 'empty username' });
    expect(parseCredentials(Buffer.from([5, 1]))).toMatchObject({ status: 'error' });
  });

  it('parses CONNECT and BIND with IPv4, IPv6 (mapped IPv4 becomes IPv4) and domain names', () => {
    const v4 = Buffer.from([5, 1, 0, 1, 192, 0, 2, 25, 0, 25]);
    prefixesIncomplete(parseRequest, v4);
    expect(parseRequest(v4)).toEqual({ status: 'ok', value: { command: 'connect', host: '192.0.2.25', kind: 'ipv4', port: 25 }, length: 10 });
    const v6 = Buffer.from([5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1, 0x02, 0x4b]);
    expect(parseRequest(v6)).toMatchObject({ status: 'ok', value: { host: '2001:db8::1', kind: 'ipv6', port: 587 } });
    const mapped = Buffer.from([5, 2, 0, 4, ...new Array(10).fill(0), 0xff, 0xff, 10, 0, 0, 1, 0, 0]);
    expect(parseRequest(mapped)).toMatchObject({ status: 'ok', value: { command: 'bind', host: '10.0.0.1', kind: 'ipv4', port: 0 } });
    const name = Buffer.from('MX.Example.com');
    const domain = Buffer.from([5, 1, 0, 3, name.length, ...name, 0, 25]);
    prefixesIncomplete(parseRequest, domain);
    expect(parseRequest(domain)).toMatchObject({ status: 'ok', value: { host: 'mx.example.com', kind: 'domain' }, length: domain.length });
  });

  it('answers bad requests with the reply RFC 1928 names', () => {
    expect(parseRequest(Buffer.from([5, 9, 0, 1, 1, 2, 3, 4, 0, 25]))).toMatchObject({ status: 'error', reply: REP.commandNotSupported });
    expect(parseRequest(Buffer.from([5, 1, 0, 7]))).toMatchObject({ status: 'error', reply: REP.addressTypeNotSupported });
    // odd IP forms in a DOMAINNAME would reach an address the policy never saw: refused
    for (const odd of ['127.1', '0x7f.0.0.1', '2130706433', 'a..b', '-x.example']) {
      const b = Buffer.from(odd);
      expect(parseRequest(Buffer.from([5, 1, 0, 3, b.length, ...b, 0, 25])), odd).toMatchObject({ status: 'error', reply: REP.hostUnreachable });
    }
    expect(domainHost('10.1.2.3')).toEqual({ host: '10.1.2.3', kind: 'ipv4' });
  });

  it('chooses username/password when accounts exist, no-auth only when allowed', () => {
    expect(chooseMethod([0, 2], { hasUsers: true, allowUnauthenticated: true })).toBe(METHOD.usernamePassword);
    expect(chooseMethod([0], { hasUsers: true, allowUnauthenticated: false })).toBe(METHOD.noAcceptable);
    expect(chooseMethod([0], { hasUsers: true, allowUnauthenticated: true })).toBe(METHOD.noAuth);
    expect(chooseMethod([2], { hasUsers: false, allowUnauthenticated: true })).toBe(METHOD.noAcceptable);
  });

  it('encodes replies with the bound address, and 0.0.0.0:0 on failure', () => {
    expect([...encodeReply(REP.succeeded, { ip: '127.0.0.2', port: 0x1234 })]).toEqual([5, 0, 0, 1, 127, 0, 0, 2, 0x12, 0x34]);
    expect([...encodeReply(REP.notAllowed)]).toEqual([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(encodeReply(REP.succeeded, { ip: '2001:db8::2', port: 25 })).toHaveLength(22);
    expect(splitHostPort('2001:db8::2:2525')).toEqual({ ip: '2001:db8::2', port: 2525 });
    expect(splitHostPort('nonsense')).toBeNull();
  });

  it('encodes the success reply from the delivery\'s "ip:port" text, each a new buffer', () => {
    expect([...encodeReply(REP.succeeded, splitHostPort('127.0.0.2:4660'))]).toEqual([5, 0, 0, 1, 127, 0, 0, 2, 0x12, 0x34]);
    // a reply with an address is new each time (its port differs per connection)
    expect(encodeReply(REP.succeeded, splitHostPort('127.0.0.2:25'))).not.toBe(encodeReply(REP.succeeded, splitHostPort('127.0.0.2:25')));
  });

  it('shares the replies that carry no address, with the same bytes', () => {
    for (const m of [METHOD.noAuth, METHOD.usernamePassword, METHOD.noAcceptable, 0x80]) {
      expect([...encodeMethodSelection(m)]).toEqual([5, m]);
      expect(encodeMethodSelection(m)).toBe(encodeMethodSelection(m));
    }
    expect([...encodeAuthStatus(true)]).toEqual([1, 0]);
    expect([...encodeAuthStatus(false)]).toEqual([1, 1]);
    for (const rep of Object.values(REP)) {
      expect([...encodeReply(rep)]).toEqual([5, rep, 0, 1, 0, 0, 0, 0, 0, 0]);
      expect(encodeReply(rep)).toBe(encodeReply(rep));
    }
  });

  it('maps every delivery refusal to a reply', () => {
    expect([550, 551, 552, 553, 451, 452].map(replyForRefusal)).toEqual(new Array(6).fill(REP.notAllowed));
    expect([442, 443, 444, 421, 454].map(replyForRefusal)).toEqual([REP.connectionRefused, REP.hostUnreachable, REP.ttlExpired, REP.generalFailure, REP.generalFailure]);
  });

  it('matches accounts on both fields and escapes usernames for logs', () => {
    const t = new AccountTable([{ username: 'a', password: 'x' }, { username: 'b', password: 'y' }]);
    const creds = (u: string, p: string) => ({ username: Buffer.from(u), password: Buffer.from(p) });
    expect(t.match(creds('b', 'y'))?.username).toBe('b');
    expect(t.match(creds('a', 'y'))).toBeNull();
    expect(t.match(creds('c', 'x'))).toBeNull();
    expect(printable(Buffer.from('a\nb\\c'))).toBe('a\\x0ab\\x5cc');
  });
});

describe('PROXY v2 codec', () => {
  const v4Header = (src: number[], dst: number[], dstPort: number, command = Command.PROXY) =>
    Buffer.from(new V2ProxyProtocol(command, TransportProtocol.STREAM, new IPv4ProxyAddress(IPv4Address.createFrom(src), 0, IPv4Address.createFrom(dst), dstPort)).build());
  const ok = (bytes: Uint8Array): ProxyV2Header => {
    const r = decodeProxyV2(bytes);
    if (r.status !== 'ok') throw new Error(`expected a header, got ${JSON.stringify(r)}`);
    return r.header;
  };

  it('decodes an IPv4 header from proxy-protocol-js, split anywhere, leaving the data after it', () => {
    const h = v4Header([10, 0, 0, 1], [192, 0, 2, 25], 25);
    prefixesIncomplete(decodeProxyV2, h);
    const withData = Buffer.concat([h, Buffer.from('EHLO x\r\n')]);
    const header = ok(withData);
    expect(header).toMatchObject({ command: 'proxy', family: 'inet', transport: 'stream', source: { address: '10.0.0.1', port: 0 }, destination: { address: '192.0.2.25', port: 25 }, length: 28 });
    expect(withData.subarray(header.length).toString()).toBe('EHLO x\r\n');
    expect(proxyV2Target(header)).toEqual({ sourceIp: '10.0.0.1', host: '192.0.2.25', port: 25 });
  });

  it('decodes IPv6 (mapped IPv4 becomes IPv4) and refuses LOCAL as an egress request', () => {
    const mapped = Buffer.from(new V2ProxyProtocol(Command.PROXY, TransportProtocol.STREAM,
      new IPv6ProxyAddress(IPv6Address.createFrom([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2]), 0, IPv6Address.createFrom([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x25]), 587)).build());
    expect(proxyV2Target(ok(mapped))).toEqual({ sourceIp: '10.0.0.2', host: '2001:db8::25', port: 587 });
    expect(proxyV2Target(ok(v4Header([10, 0, 0, 1], [192, 0, 2, 25], 25, Command.LOCAL)))).toMatchObject({ code: 'local_command' });
    expect(proxyV2Target(ok(v4Header([10, 0, 0, 1], [192, 0, 2, 25], 0)))).toMatchObject({ code: 'bad_port' });
  });

  it('rejects v1, garbage (at its first byte), and every malformed field with a stable code', () => {
    expect(decodeProxyV2(Buffer.from('PROXY TCP4 10.0.0.1 192.0.2.25 0 25\r\n'))).toMatchObject({ status: 'invalid', code: 'proxy_v1' });
    expect(decodeProxyV2(Buffer.from('PROX')).status).toBe('incomplete');
    expect(decodeProxyV2(Buffer.from('E'))).toMatchObject({ status: 'invalid', code: 'not_proxy_v2' });
    const good = v4Header([10, 0, 0, 1], [192, 0, 2, 25], 25);
    const patch = (at: number, value: number, u16 = false): Buffer => {
      const b = Buffer.from(good);
      if (u16) b.writeUInt16BE(value, at);
      else b[at] = value;
      return b;
    };
    expect(decodeProxyV2(patch(12, 0x11))).toMatchObject({ code: 'bad_version' });
    expect(decodeProxyV2(patch(12, 0x2f))).toMatchObject({ code: 'bad_command' });
    expect(decodeProxyV2(patch(13, 0x13))).toMatchObject({ code: 'bad_family' });
    expect(decodeProxyV2(patch(14, 4, true))).toMatchObject({ code: 'short_address' });
    // decided from the 16 fixed bytes: a huge length is refused before its bytes arrive
    expect(decodeProxyV2(patch(14, 60_000, true).subarray(0, 16))).toMatchObject({ code: 'too_long' });
  });

  it('reads TLVs and checks a CRC32C TLV', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283); // the CRC-32C check value
    const body = Buffer.from([10, 0, 0, 1, 192, 0, 2, 25, 0, 0, 0, 25]);
    const tlvs = Buffer.from([0x04, 0x00, 0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]); // NOOP (empty), then CRC32C
    const header = Buffer.concat([SIGNATURE, Buffer.from([0x21, 0x11, 0, body.length + tlvs.length]), body, tlvs]);
    header.writeUInt32BE(crc32c(header), header.length - 4);
    expect(ok(header).tlvs.map((t) => t.type)).toEqual([0x04, 0x03]);
    const corrupt = Buffer.from(header);
    corrupt[17] = (corrupt[17] as number) ^ 1;
    expect(decodeProxyV2(corrupt)).toMatchObject({ code: 'bad_crc32c' });
    const runaway = Buffer.concat([SIGNATURE, Buffer.from([0x21, 0x11, 0, 15]), body, Buffer.from([0x04, 0x00, 0x09])]);
    expect(decodeProxyV2(runaway)).toMatchObject({ code: 'bad_tlv' });
  });
});
