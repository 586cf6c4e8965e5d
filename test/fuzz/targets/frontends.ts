// The SOCKS5 (docs/socks5.md) and PROXY v2 (docs/proxy-v2.md) decoders. The encoders here follow
// the RFC 1928/1929 and proxy-protocol.txt layouts byte by byte, independently of src/.
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { Command as PpCommand, IPv4Address, IPv4ProxyAddress, IPv6Address, IPv6ProxyAddress, TransportProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { crc32c, decodeProxyV2, MAX_HEADER_BYTES, MAX_TLV_BYTES, PP2_TYPE_CRC32C, proxyV2Target, SIGNATURE, type DecodeResult, type ProxyV2ErrorCode } from '../../../src/protocol/proxy-v2.js';
import {
  encodeAuthStatus,
  encodeMethodSelection,
  encodeReply,
  MAX_AUTH,
  MAX_GREETING,
  MAX_REQUEST,
  parseCredentials,
  parseGreeting,
  parseRequest,
  REP,
  type ParsedRequest,
  type ReplyCode,
} from '../../../src/protocol/socks5.js';
import { assert, byte, bytes, cuts, property, rawProperty, same, show, timed, type FuzzTarget } from '../harness.js';
import { checkChunking, checkPrefixes, samplePositions } from '../incremental.js';

const BUDGET_MS = 500;
const MAX_REASON = 400;

// ---------------------------------------------------------------------------------------------
// socks5

const REPLY_CODES = new Set<number>(Object.values(REP));
const LOWER_HOST = /^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?)*\.?$/;

function checkSocks5Request(r: ParsedRequest, input: Buffer): void {
  if (r.status === 'error') {
    assert(r.reason.length > 0 && r.reason.length < MAX_REASON && REPLY_CODES.has(r.reply) && r.reply !== REP.succeeded, () => `request error ${show(r)}`);
  } else if (r.status === 'ok') {
    const v = r.value;
    assert(r.length <= MAX_REQUEST && r.length <= input.length && Number.isInteger(v.port) && v.port >= 0 && v.port <= 65535, () => `request ${show(r)}`);
    if (v.kind === 'ipv4') assert(ipaddr.IPv4.isValidFourPartDecimal(v.host), () => `ipv4 host ${show(v.host)}`);
    else if (v.kind === 'ipv6') assert(ipaddr.IPv6.isValid(v.host) && !ipaddr.IPv6.parse(v.host).isIPv4MappedAddress() && ipaddr.parse(v.host).toString() === v.host, () => `ipv6 host ${show(v.host)}`);
    else assert(LOWER_HOST.test(v.host) && !ipaddr.isValid(v.host) && v.host.length <= 254, () => `domain host ${show(v.host)}`);
  }
}

function checkSocks5(input: Buffer): void {
  timed('SOCKS5 parsers', BUDGET_MS, () => {
    const g = parseGreeting(input);
    const c = parseCredentials(input);
    const q = parseRequest(input);
    const at = samplePositions(input.length, [g, c, q].map((r) => (r.status === 'ok' ? r.length : null)));
    checkPrefixes('parseGreeting', parseGreeting, input, (r) => (r.status === 'ok' ? r.length : null), at);
    if (g.status === 'ok') assert(g.length <= MAX_GREETING && g.value.methods.length === g.length - 2 && g.value.methods.length >= 1, () => `greeting ${show(g)}`);
    if (g.status === 'error') assert(g.reason.length < MAX_REASON, () => `greeting error ${show(g)}`);

    checkPrefixes('parseCredentials', parseCredentials, input, (r) => (r.status === 'ok' ? r.length : null), at);
    if (c.status === 'ok') {
      const { username, password } = c.value;
      assert(c.length <= MAX_AUTH && username.length >= 1 && password.length >= 1 && c.length === 3 + username.length + password.length, () => `credentials ${show(c)}`);
      assert(username.equals(input.subarray(2, 2 + username.length)) && password.equals(input.subarray(3 + username.length, c.length)), () => 'credentials are not the bytes sent');
    }
    if (c.status === 'error') assert(c.reason.length < MAX_REASON, () => `credentials error ${show(c)}`);

    checkPrefixes('parseRequest', parseRequest, input, (r) => (r.status === 'ok' ? r.length : null), at);
    checkSocks5Request(q, input);
    // the shell buffers while "incomplete": never past the largest message
    for (const [what, r, max] of [['greeting', g, MAX_GREETING], ['credentials', c, MAX_AUTH], ['request', q, MAX_REQUEST]] as const) {
      assert(r.status !== 'incomplete' || input.length < max, () => `${what} still incomplete after ${input.length} bytes (largest message: ${max})`);
    }
  });
}

interface RequestModel {
  readonly cmd: number;
  readonly address: { kind: 'ipv4' | 'ipv6'; bytes: number[] } | { kind: 'domain'; name: string };
  readonly port: number;
}

function encodeRequest(m: RequestModel): Buffer {
  const port = [m.port >> 8, m.port & 0xff];
  if (m.address.kind === 'domain') {
    const name = Buffer.from(m.address.name, 'latin1');
    return Buffer.from([0x05, m.cmd, 0x00, 0x03, name.length, ...name, ...port]);
  }
  return Buffer.from([0x05, m.cmd, 0x00, m.address.kind === 'ipv4' ? 0x01 : 0x04, ...m.address.bytes, ...port]);
}

const socksLabel = fc.stringMatching(/^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,14}[A-Za-z0-9])?$/);
const socksTop = fc.stringMatching(/^[A-Za-z](?:[A-Za-z0-9-]{0,8}[A-Za-z])?$/);
const requestModel: fc.Arbitrary<RequestModel> = fc.record({
  cmd: fc.constantFrom(1, 2, 3),
  address: fc.oneof(
    fc.array(fc.nat({ max: 255 }), { minLength: 4, maxLength: 4 }).map((b) => ({ kind: 'ipv4' as const, bytes: b })),
    fc.array(fc.nat({ max: 255 }), { minLength: 16, maxLength: 16 }).map((b) => ({ kind: 'ipv6' as const, bytes: b })),
    // IPv4-mapped IPv6: must come out as IPv4
    fc.array(fc.nat({ max: 255 }), { minLength: 4, maxLength: 4 }).map((b) => ({ kind: 'ipv6' as const, bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...b] })),
    fc.tuple(fc.array(socksLabel, { maxLength: 5 }), socksTop).map(([ls, top]) => ({ kind: 'domain' as const, name: [...ls, top].join('.') })),
  ),
  port: fc.integer({ min: 0, max: 65535 }),
});

/** What parseRequest must return for an encoded request (an independent reading of RFC 1928). */
function expectedRequest(m: RequestModel): { command: string; host: string; kind: string; port: number } {
  const command = m.cmd === 1 ? 'connect' : m.cmd === 2 ? 'bind' : 'udp-associate';
  const a = m.address;
  if (a.kind === 'domain') return { command, host: a.name.toLowerCase(), kind: 'domain', port: m.port };
  const mapped = a.kind === 'ipv6' && a.bytes.slice(0, 10).every((b) => b === 0) && a.bytes[10] === 0xff && a.bytes[11] === 0xff;
  if (a.kind === 'ipv4' || mapped) return { command, host: a.bytes.slice(-4).join('.'), kind: 'ipv4', port: m.port };
  return { command, host: ipaddr.fromByteArray(a.bytes).toString(), kind: 'ipv6', port: m.port };
}

/** RFC 1928 §6 reply layout, read back. */
function decodeReply(b: Buffer): { rep: number; ip: string; port: number } {
  assert(b[0] === 0x05 && b[2] === 0x00, () => `reply header ${show(b)}`);
  const atyp = b[3];
  const size = atyp === 0x01 ? 4 : atyp === 0x04 ? 16 : -1;
  assert(size !== -1 && b.length === 4 + size + 2, () => `reply length ${b.length} for ATYP ${atyp}`);
  return { rep: b[1] as number, ip: ipaddr.fromByteArray([...b.subarray(4, 4 + size)]).toString(), port: b.readUInt16BE(4 + size) };
}

/** `head`, then filler up to around `size` bytes: what a peer that never completes a message sends. */
const nearSize = (heads: readonly number[][], size: number): fc.Arbitrary<Buffer> =>
  fc.tuple(fc.constantFrom(...heads), fc.integer({ min: -3, max: 3 }), byte).map(([h, d, fill]) => Buffer.concat([Buffer.from(h), Buffer.alloc(Math.max(0, size + d - h.length), fill)]));

const socks5Stream = fc.oneof(
  bytes(80),
  nearSize([[5, 255], [1, 255], [1, 255, ...new Array(255).fill(0x61), 255], [5, 1, 0, 3, 255], [5, 1, 0, 3, 254]], MAX_REQUEST),
  nearSize([[5, 255], [1, 255], [1, 255, ...new Array(255).fill(0x61), 255]], MAX_AUTH),
  nearSize([[5, 255]], MAX_GREETING),
  // a plausible start, then anything
  fc.tuple(fc.constantFrom([5], [5, 1], [5, 1, 0], [5, 1, 0, 3], [1], [1, 3], [5, 2, 0, 4]), bytes(300)).map(([h, t]) => Buffer.concat([Buffer.from(h), t])),
  requestModel.chain((m) => fc.tuple(fc.constant(encodeRequest(m)), fc.nat(), byte)).map(([b, at, v]) => {
    const copy = Buffer.from(b);
    copy[at % copy.length] = v;
    return copy;
  }),
);

const socks5: FuzzTarget = {
  name: 'socks5',
  description: 'SOCKS5 greeting, RFC 1929 credentials and requests: the same answer at any split, typed errors with a reply code, replies round-trip',
  check: checkSocks5,
  properties: [
    rawProperty('any bytes, every prefix', 1500, socks5Stream, checkSocks5),
    property('requests round-trip, whatever the chunking', 1800, fc.record({ m: requestModel, tail: bytes(8), cuts }), ({ m, tail, cuts: c }) => {
      const wire = encodeRequest(m);
      const input = Buffer.concat([wire, tail]);
      const r = parseRequest(input);
      const expected = { status: 'ok', value: expectedRequest(m), length: wire.length };
      assert(same(r, expected), () => `parseRequest(${show(wire)}) = ${show(r)}, expected ${show(expected)}`);
      checkChunking('parseRequest', parseRequest, input, c);
    }),
    property(
      'greetings and credentials round-trip, whatever the chunking',
      1200,
      fc.record({
        methods: fc.array(fc.nat({ max: 255 }), { minLength: 1, maxLength: 255 }),
        user: fc.uint8Array({ minLength: 1, maxLength: 255 }),
        pass: fc.uint8Array({ minLength: 1, maxLength: 255 }),
        cuts,
      }),
      ({ methods, user, pass, cuts: c }) => {
        const greeting = Buffer.from([5, methods.length, ...methods]);
        assert(same(parseGreeting(greeting), { status: 'ok', value: { methods }, length: greeting.length }), () => `greeting ${show(methods)}`);
        checkChunking('parseGreeting', parseGreeting, greeting, c);
        const creds = Buffer.from([1, user.length, ...user, pass.length, ...pass]);
        const r = parseCredentials(creds);
        assert(r.status === 'ok' && r.length === creds.length && r.value.username.equals(user) && r.value.password.equals(pass), () => `credentials ${show(r)}`);
        checkChunking('parseCredentials', parseCredentials, creds, c);
      },
    ),
    property(
      'replies round-trip (IPv4-mapped becomes IPv4; a failure carries 0.0.0.0:0)',
      1200,
      fc.record({ rep: fc.constantFrom(...(Object.values(REP) as ReplyCode[])), bound: fc.option(fc.record({ ip: fc.oneof(fc.ipV4(), fc.ipV6()), port: fc.integer({ min: 0, max: 65535 }) }), { nil: null }) }),
      ({ rep, bound }) => {
        const got = decodeReply(encodeReply(rep, bound));
        const expected = bound === null ? { rep, ip: '0.0.0.0', port: 0 } : { rep, ip: ipaddr.process(bound.ip).toString(), port: bound.port };
        assert(same(got, expected), () => `encodeReply(${rep}, ${show(bound)}) read back as ${show(got)}`);
        assert(same([...encodeMethodSelection(rep)], [5, rep]) && same([...encodeAuthStatus(rep === 0)], [1, rep === 0 ? 0 : 1]), () => 'method selection / auth status');
      },
    ),
  ],
};

// ---------------------------------------------------------------------------------------------
// proxy-v2

const FAMILY_BYTES: Readonly<Record<number, { family: string; transport: string; size: number }>> = {
  0x00: { family: 'unspec', transport: 'unspec', size: 0 },
  0x11: { family: 'inet', transport: 'stream', size: 12 },
  0x12: { family: 'inet', transport: 'dgram', size: 12 },
  0x21: { family: 'inet6', transport: 'stream', size: 36 },
  0x22: { family: 'inet6', transport: 'dgram', size: 36 },
  0x31: { family: 'unix', transport: 'stream', size: 216 },
  0x32: { family: 'unix', transport: 'dgram', size: 216 },
};
const CODES = new Set<ProxyV2ErrorCode>(['not_proxy_v2', 'proxy_v1', 'bad_version', 'bad_command', 'bad_family', 'short_address', 'too_long', 'bad_tlv', 'bad_crc32c']);
const TARGET_CODES = new Set(['local_command', 'unsupported_family', 'bad_port']);

/** An invalid header is decided by its code: the message quotes the bytes so far (a v1 line grows). */
const proxyDecision = (r: DecodeResult): unknown => (r.status === 'invalid' ? { status: r.status, code: r.code } : r);

function okLength(r: DecodeResult): number | null {
  return r.status === 'ok' ? r.header.length : null;
}

function checkDecoded(r: DecodeResult, input: Buffer): void {
  if (r.status === 'invalid') {
    assert(CODES.has(r.code) && r.message.length > 0 && r.message.length < MAX_REASON, () => `invalid ${show(r)}`);
    return;
  }
  if (r.status === 'incomplete') return;
  const h = r.header;
  assert(h.length >= 16 && h.length <= MAX_HEADER_BYTES && h.length <= input.length, () => `header length ${h.length} of ${input.length}`);
  const fam = FAMILY_BYTES[input[13] as number];
  assert(fam !== undefined && fam.family === h.family && fam.transport === h.transport, () => `family ${show([h.family, h.transport])} for byte ${input[13]}`);
  assert(h.length === 16 + input.readUInt16BE(14) && h.length - 16 >= fam.size && h.length - 16 <= fam.size + MAX_TLV_BYTES, () => `length field ${input.readUInt16BE(14)}`);
  let tlvBytes = 0;
  for (const t of h.tlvs) tlvBytes += 3 + t.value.length;
  assert(h.family === 'unspec' ? h.tlvs.length === 0 : fam.size + tlvBytes === h.length - 16, () => `TLVs cover ${tlvBytes} of ${h.length - 16 - fam.size} bytes`);
  const target = proxyV2Target(h);
  if ('code' in target) assert(TARGET_CODES.has(target.code) && target.message.length < MAX_REASON, () => `target ${show(target)}`);
  else {
    assert(ipaddr.isValid(target.sourceIp) && ipaddr.isValid(target.host) && target.port >= 1 && target.port <= 65535, () => `target ${show(target)}`);
    for (const ip of [target.sourceIp, target.host]) assert(ipaddr.process(ip).toString() === ip, () => `target address ${ip} is not canonical`);
  }
}

function checkProxyV2(input: Buffer): void {
  timed('decodeProxyV2', BUDGET_MS, () => {
    const r = decodeProxyV2(input);
    checkDecoded(r, input);
    assert(r.status !== 'incomplete' || input.length < MAX_HEADER_BYTES, () => `still incomplete after ${input.length} bytes (largest header: ${MAX_HEADER_BYTES})`);
    checkPrefixes('decodeProxyV2', decodeProxyV2, input, okLength, samplePositions(input.length, [okLength(r)]), proxyDecision);
  });
}

interface HeaderModel {
  readonly command: 0 | 1;
  readonly fam: number;
  /** the address block (unspec: opaque bytes, of any length) */
  readonly address: number[];
  readonly tlvs: readonly { type: number; value: number[] }[];
  readonly crc: boolean;
}

function encodeHeader(m: HeaderModel): Buffer {
  const tlvs = m.fam === 0x00 ? [] : [...m.tlvs, ...(m.crc ? [{ type: PP2_TYPE_CRC32C, value: [0, 0, 0, 0] }] : [])];
  const body = Buffer.from([...m.address, ...tlvs.flatMap((t) => [t.type, t.value.length >> 8, t.value.length & 0xff, ...t.value])]);
  const header = Buffer.concat([SIGNATURE, Buffer.from([0x20 | m.command, m.fam, body.length >> 8, body.length & 0xff]), body]);
  if (m.fam !== 0x00 && m.crc) header.writeUInt32BE(crc32c(header), header.length - 4);
  return header;
}

const tlvArb = fc.record({ type: fc.nat({ max: 255 }).filter((t) => t !== PP2_TYPE_CRC32C), value: fc.array(fc.nat({ max: 255 }), { maxLength: 40 }) });
const headerModel: fc.Arbitrary<HeaderModel> = fc
  .record({ command: fc.constantFrom(0 as const, 1 as const), fam: fc.constantFrom(...Object.keys(FAMILY_BYTES).map(Number)), tlvs: fc.array(tlvArb, { maxLength: 6 }), crc: fc.boolean(), opaque: fc.nat({ max: 64 }), fill: fc.array(fc.nat({ max: 255 }), { minLength: 216, maxLength: 216 }) })
  .map(({ command, fam, tlvs, crc, opaque, fill }) => ({ command, fam, tlvs, crc, address: fill.slice(0, fam === 0x00 ? opaque : (FAMILY_BYTES[fam] as { size: number }).size) }));

function expectedHeader(m: HeaderModel, length: number): unknown {
  const fam = FAMILY_BYTES[m.fam] as { family: string; transport: string };
  const a = m.address;
  const port = (at: number): number => ((a[at] as number) << 8) | (a[at + 1] as number);
  const v6 = (at: number): string => ipaddr.fromByteArray(a.slice(at, at + 16)).toString();
  const endpoints =
    fam.family === 'inet'
      ? { source: { address: a.slice(0, 4).join('.'), port: port(8) }, destination: { address: a.slice(4, 8).join('.'), port: port(10) } }
      : fam.family === 'inet6'
        ? { source: { address: v6(0), port: port(32) }, destination: { address: v6(16), port: port(34) } }
        : { source: null, destination: null };
  const tlvs = m.fam === 0x00 ? [] : [...m.tlvs, ...(m.crc ? [{ type: PP2_TYPE_CRC32C, value: null }] : [])];
  return { command: m.command === 0 ? 'local' : 'proxy', family: fam.family, transport: fam.transport, ...endpoints, tlvs: tlvs.map((t) => ({ type: t.type, value: t.value })), length };
}

/** Corrupts an encoded header: a byte changed, bytes cut or inserted. */
const mutation = fc.array(fc.record({ op: fc.constantFrom('set', 'cut', 'insert', 'xor'), at: fc.nat(), value: byte }), { minLength: 1, maxLength: 3 });
function mutate(b: Buffer, ops: readonly { op: string; at: number; value: number }[]): Buffer {
  let out = Buffer.from(b);
  for (const { op, at, value } of ops) {
    const i = out.length === 0 ? 0 : at % out.length;
    if (op === 'set') out[i] = value;
    else if (op === 'xor') out[i] = (out[i] as number) ^ (1 << (value % 8));
    else if (op === 'cut') out = out.subarray(0, i);
    else out = Buffer.concat([out.subarray(0, i), Buffer.from([value]), out.subarray(i)]);
  }
  return out;
}

const proxyV2Stream = fc.oneof(
  bytes(64),
  // a length field at or near the largest accepted, and not all of its bytes
  fc.tuple(fc.constantFrom(0x11, 0x21, 0x31, 0x00), fc.integer({ min: -2, max: 2 }), fc.integer({ min: -3, max: 0 })).map(([fam, d, short]) => {
    const block = { 0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216 }[fam] ?? 0;
    const len = block + MAX_TLV_BYTES + d;
    return Buffer.concat([SIGNATURE, Buffer.from([0x21, fam, len >> 8, len & 0xff]), Buffer.alloc(Math.max(0, len + short), 0x04)]);
  }),
  bytes(64).map((t) => Buffer.concat([SIGNATURE, t])),
  fc.tuple(fc.constantFrom(0x20, 0x21, 0x22, 0x10, 0x2f), byte, fc.nat({ max: 0xffff }), bytes(80)).map(([vc, fam, len, t]) => Buffer.concat([SIGNATURE, Buffer.from([vc, fam, len >> 8, len & 0xff]), t])),
  fc.tuple(headerModel, mutation).map(([m, ops]) => mutate(encodeHeader(m), ops)),
  fc.constantFrom('PROXY TCP4 10.0.0.1 192.0.2.25 0 25\r\n', 'PROXY ', 'PROX', 'PROXY UNKNOWN\r\n').map((s) => Buffer.from(s)),
);

const proxyV2: FuzzTarget = {
  name: 'proxy-v2',
  description: 'decodeProxyV2 and proxyV2Target: a header or one of the nine documented codes, decided at the same byte whatever the chunking; headers round-trip',
  check: checkProxyV2,
  properties: [
    rawProperty('any bytes, mutated headers, every prefix', 1500, proxyV2Stream, checkProxyV2),
    property('headers round-trip (TLVs, CRC32C), whatever the chunking', 1200, fc.record({ m: headerModel, data: bytes(16), cuts }), ({ m, data, cuts: c }) => {
      const wire = encodeHeader(m);
      const input = Buffer.concat([wire, data]);
      const r = decodeProxyV2(input);
      assert(r.status === 'ok', () => `decodeProxyV2(${show(wire)}) = ${show(r)}`);
      const crcValue = r.header.tlvs.find((t) => t.type === PP2_TYPE_CRC32C);
      const got = { ...r.header, tlvs: r.header.tlvs.map((t) => ({ type: t.type, value: t === crcValue ? null : [...t.value] })) };
      assert(same(got, expectedHeader(m, wire.length)), () => `decoded ${show(got)}, expected ${show(expectedHeader(m, wire.length))}`);
      assert(input.subarray(r.header.length).equals(data), () => 'the bytes after the header are not the client data');
      checkChunking('decodeProxyV2', decodeProxyV2, input, c, proxyDecision);
      if (m.crc && m.fam !== 0x00) {
        // any byte after the fixed 16 but the CRC TLV's type (without it there is no checksum to fail)
        const crcType = wire.length - 7;
        const pick = 16 + ((c[0] ?? 0) % (wire.length - 17));
        const at = pick >= crcType ? pick + 1 : pick;
        const corrupt = Buffer.from(wire);
        corrupt[at] = (corrupt[at] as number) ^ 0x01;
        const bad = decodeProxyV2(corrupt);
        // a flipped length or family byte may fail earlier; a flipped address or TLV byte must fail the CRC
        assert(bad.status !== 'ok', () => `a header with byte ${at} flipped passed its CRC32C`);
      }
    }),
    property(
      'headers from proxy-protocol-js (an independent encoder) decode to their egress target',
      900,
      fc.record({ v6: fc.boolean(), src: fc.array(fc.nat({ max: 255 }), { minLength: 16, maxLength: 16 }), dst: fc.array(fc.nat({ max: 255 }), { minLength: 16, maxLength: 16 }), sport: fc.integer({ min: 0, max: 65535 }), dport: fc.integer({ min: 1, max: 65535 }) }),
      ({ v6, src, dst, sport, dport }) => {
        const address = v6
          ? new IPv6ProxyAddress(IPv6Address.createFrom(src), sport, IPv6Address.createFrom(dst), dport)
          : new IPv4ProxyAddress(IPv4Address.createFrom(src.slice(0, 4)), sport, IPv4Address.createFrom(dst.slice(0, 4)), dport);
        const wire = Buffer.from(new V2ProxyProtocol(PpCommand.PROXY, TransportProtocol.STREAM, address).build());
        const r = decodeProxyV2(wire);
        assert(r.status === 'ok', () => `decodeProxyV2 = ${show(r)}`);
        const text = (b: number[]): string => ipaddr.process(ipaddr.fromByteArray(v6 ? b : b.slice(0, 4)).toString()).toString();
        const target = proxyV2Target(r.header);
        assert(same(target, { sourceIp: text(src), host: text(dst), port: dport }), () => `target ${show(target)}`);
      },
    ),
  ],
};

export const FRONTEND_TARGETS: readonly FuzzTarget[] = [socks5, proxyV2];
