// The native protocol (docs/protocol.md): the line framer, the control-session codec, the
// handshake, the throttle requests and CONNECT.
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { SharedSecret } from '../../../src/config/secret.js';
import { parseConnect, CONNECT_CODES, type ConnectRequest } from '../../../src/egress/policy.js';
import { formatBacklog, formatReply, formatRequest, MAX_CONTROL_LINE, parseBacklog, parseControlLine, type ControlMessage } from '../../../src/protocol/control.js';
import { authLine, clientProof, greetingLine, INSTANCE_NAME, parseGreeting, PROTOCOL_VERSION, serverProof, verifyAuth, verifyServerProof } from '../../../src/protocol/handshake.js';
import { LineSplitter, LineTooLongError } from '../../../src/protocol/lines.js';
import { isCanonicalIp, THROTTLE_KEY } from '../../../src/protocol/syntax.js';
import { parseAcquire, parseDeclare } from '../../../src/protocol/throttle.js';
import { anyText, assert, bytes, chunksOf, cuts, hex, property, rawProperty, same, show, timed, tokens, type FuzzTarget } from '../harness.js';

/** Error texts quote at most a slice of the input: bounded whatever the input's size. */
const MAX_MESSAGE = 400;
const BUDGET_MS = 250;

const text = (b: Buffer): string => b.toString('utf8');
const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

// ---------------------------------------------------------------------------------------------
// lines: LineSplitter

interface LineModel {
  readonly lines: string[];
  readonly tooLong: boolean;
  readonly rest: number;
}

/** What the framer must do with a stream, whatever its chunking: an independent model. */
function lineModel(data: Buffer, max: number): LineModel {
  const lines: string[] = [];
  let start = 0;
  for (let nl = data.indexOf(10); nl !== -1; nl = data.indexOf(10, start)) {
    let end = nl;
    if (end > start && data[end - 1] === 13) end -= 1;
    if (end - start > max) return { lines, tooLong: true, rest: 0 };
    lines.push(data.toString('utf8', start, end));
    start = nl + 1;
  }
  const rest = data.length - start;
  const allowed = rest > 0 && data[data.length - 1] === 13 ? max + 1 : max;
  return { lines, tooLong: rest > allowed, rest };
}

function checkSplitter(data: Buffer, max: number, chunks: readonly Buffer[]): void {
  const model = lineModel(data, max);
  const splitter = new LineSplitter(max);
  const got: string[] = [];
  let threw: unknown = null;
  for (const chunk of chunks) {
    try {
      got.push(...splitter.push(chunk));
    } catch (err) {
      threw = err;
      break;
    }
    assert(splitter.buffered <= max + 1, () => `buffered ${splitter.buffered} bytes with a limit of ${max}`);
  }
  assert(got.length <= model.lines.length && same(got, model.lines.slice(0, got.length)), () => `lines ${show(got)}, expected a prefix of ${show(model.lines)}`);
  if (model.tooLong) {
    assert(threw instanceof LineTooLongError, () => `expected LineTooLongError, got ${threw === null ? 'none' : String(threw)} (limit ${max})`);
    assert((threw as LineTooLongError).code === 'MTAPROXY_LINE_TOO_LONG', () => 'LineTooLongError without its code');
  } else {
    assert(threw === null, () => `threw ${String(threw)} on a stream whose lines fit in ${max} bytes`);
    assert(same(got, model.lines), () => `lines ${show(got)}, expected ${show(model.lines)}`);
    assert(splitter.buffered === model.rest, () => `buffered ${splitter.buffered}, expected ${model.rest}`);
  }
}

/** A stream of short lines: "\n", "\r\n", lone "\r", multi-byte characters. */
const lineStream = fc
  .array(
    fc.oneof(
      { weight: 3, arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }) },
      { weight: 1, arbitrary: fc.constantFrom('\n', '\r\n', '\r', 'é', '€', '\u{1f600}', '\r\r\n', '\n\n') },
    ),
    { maxLength: 16 },
  )
  .map((parts) => utf8(parts.join('')));

const lines: FuzzTarget = {
  name: 'lines',
  description: 'LineSplitter: the same lines whatever the chunking; refuses a line over the limit and never buffers more than it',
  check(input: Buffer): void {
    // the first byte picks the limit and the chunk size, so a corpus file is a whole test case
    const max = ((input[0] ?? 0) % 40) + 1;
    const step = ((input[1] ?? 0) % 7) + 1;
    const data = input.subarray(2);
    const chunks: Buffer[] = [];
    for (let i = 0; i < data.length; i += step) chunks.push(data.subarray(i, i + step));
    timed('LineSplitter', BUDGET_MS, () => {
      checkSplitter(data, max, [data]);
      checkSplitter(data, max, chunks);
    });
  },
  properties: [
    rawProperty('any bytes, any chunking', 1200, bytes(120), (b) => lines.check(b)),
    property(
      'same lines whatever the chunking',
      1500,
      fc.record({ data: lineStream, max: fc.integer({ min: 1, max: 48 }), cuts }),
      ({ data, max, cuts: c }) => {
        checkSplitter(data, max, [data]);
        checkSplitter(data, max, chunksOf(data, c));
        checkSplitter(data, max, [...data].map((x) => Buffer.from([x])));
      },
    ),
    property(
      'a line without newline is refused at the documented 4096 bytes, with at most that buffered',
      120,
      fc.record({ total: fc.integer({ min: 1, max: 3 * MAX_CONTROL_LINE }), chunk: fc.integer({ min: 1, max: 9000 }), cr: fc.boolean() }),
      ({ total, chunk, cr }) => {
        const splitter = new LineSplitter(MAX_CONTROL_LINE);
        const data = Buffer.alloc(total, 0x61);
        if (cr) data[total - 1] = 13;
        let fed = 0;
        let refusedAt: number | null = null;
        while (fed < total) {
          const piece = data.subarray(fed, Math.min(total, fed + chunk));
          try {
            assert(splitter.push(piece).length === 0, () => 'a line came out of a stream without newline');
          } catch (err) {
            if (!(err instanceof LineTooLongError)) throw err;
            refusedAt = fed + piece.length;
            break;
          }
          fed += piece.length;
          assert(splitter.buffered === fed && fed <= MAX_CONTROL_LINE + 1, () => `buffered ${splitter.buffered} after ${fed} bytes`);
        }
        const allowed = cr ? MAX_CONTROL_LINE + 1 : MAX_CONTROL_LINE;
        if (total <= allowed) assert(refusedAt === null, () => `refused ${total} bytes (limit ${MAX_CONTROL_LINE})`);
        else assert(refusedAt !== null && refusedAt > MAX_CONTROL_LINE && refusedAt - chunk <= MAX_CONTROL_LINE + 1, () => `refused at ${refusedAt} of ${total} bytes, chunks of ${chunk}`);
      },
    ),
  ],
};

// ---------------------------------------------------------------------------------------------
// control: parseControlLine, parseBacklog

const CONTROL_TAG = /^(?:s?\d{1,10}|-)$/;

function checkControlLine(line: string): void {
  const m: ControlMessage = timed('parseControlLine', BUDGET_MS, () => parseControlLine(line));
  switch (m.kind) {
    case 'invalid':
      assert(m.reason.length > 0 && m.reason.length < MAX_MESSAGE, () => `reason ${show(m.reason)}`);
      return;
    case 'request': {
      assert(CONTROL_TAG.test(m.tag) && /^[A-Z]{1,16}$/.test(m.verb) && m.args.every((a) => !a.includes(' ')), () => `request ${show(m)}`);
      const again = formatRequest(m.tag, m.verb, m.args);
      assert(again === line || `${again} ` === line, () => `formatRequest(parse(${show(line)})) = ${show(again)}`);
      assert(same(parseControlLine(again), m), () => `parse(format(${show(m)})) differs`);
      const b = parseBacklog(m.args);
      if (typeof b === 'string') assert(b.length < MAX_MESSAGE, () => `backlog error ${show(b)}`);
      else {
        assert([b.ram, b.bounce, b.disk].every((n) => Number.isSafeInteger(n) && n >= 0), () => `backlog ${show(b)}`);
        assert(same(parseBacklog(formatBacklog(b).split(' ')), b), () => `backlog round trip of ${show(b)}`);
      }
      return;
    }
    case 'reply':
    case 'notice': {
      const tag = m.kind === 'reply' ? m.tag : '*';
      assert(m.kind === 'notice' || CONTROL_TAG.test(tag), () => `reply tag ${show(tag)}`);
      assert(Number.isInteger(m.code) && m.code >= 0 && m.code <= 999, () => `code ${m.code}`);
      const again = formatReply(tag, m.code, m.text).replace(/^(\S+) (\d+)/, (_all, t: string, c: string) => `${t} ${c.padStart(3, '0')}`);
      assert(again === line || again === `${line} `, () => `formatReply(parse(${show(line)})) = ${show(again)}`);
      return;
    }
  }
}

const VERBS = ['PING', 'BACKLOG', 'DECLARE', 'ACQUIRE', 'RELEASE', 'CONNECT', 'QUIT', 'ping'];
const CONTROL_WORDS = ['1', 's2', '-', '*', '250', '421', '007', 'ram=1', 'bounce=2', 'disk=3', 'ram=99999999999999999', 'x=1', '', ...VERBS];

const tagArb = fc.oneof(fc.stringMatching(/^\d{1,10}$/), fc.stringMatching(/^s\d{1,10}$/), fc.constant('-'));
const wordArb = fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).filter((s) => !s.includes(' ') && !s.includes('\n'));

const control: FuzzTarget = {
  name: 'control',
  description: 'parseControlLine, parseBacklog: a message or "invalid", and format(parse(line)) gives the line back',
  check(input: Buffer): void {
    for (const line of text(input).split('\n')) checkControlLine(line);
  },
  properties: [
    rawProperty('any text', 1500, anyText(80).map(utf8), (b) => control.check(b)),
    rawProperty('control-like lines', 2400, tokens(CONTROL_WORDS, 8).map(utf8), (b) => control.check(b)),
    property('requests round-trip', 1200, fc.record({ tag: tagArb, verb: fc.stringMatching(/^[A-Z]{1,16}$/), args: fc.array(wordArb, { maxLength: 6 }) }), ({ tag, verb, args }) => {
      const m = parseControlLine(formatRequest(tag, verb, args));
      assert(same(m, { kind: 'request', tag, verb, args }), () => `got ${show(m)}`);
    }),
    property(
      'replies and notices round-trip',
      1200,
      fc.record({ tag: fc.oneof(tagArb, fc.constant('*')), code: fc.integer({ min: 100, max: 999 }), text: fc.string({ unit: 'binary', maxLength: 40 }).filter((s) => !s.includes('\n')) }),
      ({ tag, code, text: t }) => {
        const m = parseControlLine(formatReply(tag, code, t));
        const expected = tag === '*' ? { kind: 'notice', code, text: t } : { kind: 'reply', tag, code, text: t };
        assert(same(m, expected), () => `got ${show(m)}, expected ${show(expected)}`);
      },
    ),
    property('backlogs round-trip in any order', 900, fc.record({ ram: fc.nat({ max: 1e15 - 1 }), bounce: fc.nat({ max: 1e15 - 1 }), disk: fc.nat({ max: 1e15 - 1 }), order: fc.nat() }), (b) => {
      const fields = formatBacklog(b).split(' ');
      const rotated = [...fields.slice(b.order % 3), ...fields.slice(0, b.order % 3)];
      assert(same(parseBacklog(rotated), { ram: b.ram, bounce: b.bounce, disk: b.disk }), () => `parseBacklog(${show(rotated)})`);
    }),
  ],
};

// ---------------------------------------------------------------------------------------------
// handshake: the greeting, AUTH and the server's proof

const FIXED_SECRET = new SharedSecret('fuzz-secret-0123456789-abcdefghijklmnop');
const FIXED_NONCE = 'ab'.repeat(32);

function checkHandshakeLine(line: string): void {
  const g = timed('parseGreeting', BUDGET_MS, () => parseGreeting(line));
  if (g !== null) {
    assert(/^[0-9a-f]{64}$/.test(g.serverNonce) && typeof g.version === 'number' && !Number.isNaN(g.version), () => `greeting ${show(g)}`);
    if (g.version === PROTOCOL_VERSION && line === greetingLine(g.serverNonce)) assert(same(parseGreeting(greetingLine(g.serverNonce)), g), () => 'greeting round trip');
  }
  for (const binding of [undefined, Buffer.alloc(32, 7)]) {
    const v = timed('verifyAuth', BUDGET_MS, () => verifyAuth(line, FIXED_NONCE, [FIXED_SECRET], binding));
    if (v.ok) {
      // only the holder of the secret can write this line
      assert(line === authLine(FIXED_SECRET, FIXED_NONCE, v.clientNonce, v.name, binding), () => `verifyAuth accepted ${show(line)}`);
    } else {
      assert(v.reason.length > 0 && v.reason.length < MAX_MESSAGE && (v.name === undefined || INSTANCE_NAME.test(v.name)), () => `verdict ${show(v)}`);
    }
    const proofOk = verifyServerProof(line, FIXED_SECRET, FIXED_NONCE, 'cd'.repeat(32), 'mta1', binding);
    assert(!proofOk || line === `OK ${serverProof(FIXED_SECRET, FIXED_NONCE, 'cd'.repeat(32), 'mta1', binding)}`, () => `verifyServerProof accepted ${show(line)}`);
  }
}

const nonceArb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(hex);
const HANDSHAKE_WORDS = ['MTAPROXY', '1', '01', 'AUTH', 'OK', 'mta1', FIXED_NONCE, 'cd'.repeat(32), 'AB'.repeat(32), '0'.repeat(63), '9'.repeat(400)];

const handshake: FuzzTarget = {
  name: 'handshake',
  description: 'parseGreeting, verifyAuth, verifyServerProof: never throw, accept only what the secret signed',
  check(input: Buffer): void {
    for (const line of text(input).split('\n')) checkHandshakeLine(line);
  },
  properties: [
    rawProperty('any text', 900, anyText(100).map(utf8), (b) => handshake.check(b)),
    rawProperty('handshake-like lines', 1500, tokens(HANDSHAKE_WORDS, 5).map(utf8), (b) => handshake.check(b)),
    property(
      'AUTH and the server proof round-trip, bound to the secret, the nonces and the channel binding',
      450,
      fc.record({
        secret: fc.string({ minLength: 32, maxLength: 64 }),
        other: fc.string({ minLength: 32, maxLength: 64 }),
        serverNonce: nonceArb,
        clientNonce: nonceArb,
        name: fc.stringMatching(INSTANCE_NAME),
        binding: fc.option(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => Buffer.from(u)), { nil: undefined }),
      }),
      ({ secret: s, other, serverNonce, clientNonce, name, binding }) => {
        fc.pre(serverNonce !== clientNonce && s !== other);
        const secret = new SharedSecret(s);
        const wrong = new SharedSecret(other);
        assert(same(parseGreeting(greetingLine(serverNonce)), { version: PROTOCOL_VERSION, serverNonce }), () => 'greeting round trip');
        const line = authLine(secret, serverNonce, clientNonce, name, binding);
        const v = verifyAuth(line, serverNonce, [wrong, secret], binding);
        assert(v.ok && v.name === name && v.clientNonce === clientNonce && v.secret === secret, () => `verifyAuth(authLine) = ${show(v)}`);
        assert(!verifyAuth(line, serverNonce, [wrong], binding).ok, () => 'accepted under another secret');
        const otherBinding = binding === undefined ? Buffer.alloc(32) : undefined;
        assert(!verifyAuth(line, serverNonce, [secret], otherBinding).ok, () => 'accepted under another channel binding');
        const proof = serverProof(secret, serverNonce, clientNonce, name, binding);
        assert(verifyServerProof(`OK ${proof}`, secret, serverNonce, clientNonce, name, binding), () => 'server proof refused');
        assert(!verifyServerProof(`OK ${clientProof(secret, serverNonce, clientNonce, name, binding)}`, secret, serverNonce, clientNonce, name, binding), () => "the client's proof passed as the server's");
      },
    ),
  ],
};

// ---------------------------------------------------------------------------------------------
// throttle: DECLARE and ACQUIRE arguments

function checkThrottleArgs(args: readonly string[]): void {
  const d = timed('parseDeclare', BUDGET_MS, () => parseDeclare(args));
  if (typeof d === 'string') assert(d.length > 0 && d.length < MAX_MESSAGE, () => `declare error ${show(d)}`);
  else {
    assert(THROTTLE_KEY.test(d.key) && isCanonicalIp(d.sourceIp) && ipaddr.process(d.sourceIp).toString() === d.sourceIp, () => `declaration ${show(d)}`);
    for (const n of [d.maxConnections, d.maxMessagesPerHour]) assert(Number.isInteger(n) && n >= 1 && n <= 100_000_000, () => `limit ${n}`);
    assert(d.mode === 'sum' || d.mode === 'average', () => `mode ${show(d.mode)}`);
  }
  const a = timed('parseAcquire', BUDGET_MS, () => parseAcquire(args));
  if (typeof a === 'string') assert(a.length > 0 && a.length < MAX_MESSAGE, () => `acquire error ${show(a)}`);
  else {
    assert(THROTTLE_KEY.test(a.key) && (a.kind === 'connection' || a.kind === 'message'), () => `acquire ${show(a)}`);
    assert(a.waitMs === null || (Number.isInteger(a.waitMs) && a.waitMs >= 0 && a.waitMs <= 999_999_999), () => `wait ${a.waitMs}`);
  }
}

const ipArb = fc.oneof(fc.ipV4(), fc.ipV6());
const keyArb = fc.stringMatching(THROTTLE_KEY);
const THROTTLE_WORDS = ['mx.example', 'source=192.0.2.1', 'source=2001:db8::1', 'source=127.1', 'source=::ffff:10.0.0.1', 'max_connections=1', 'max_connections=0', 'max_messages_per_hour=100000000', 'max_messages_per_hour=100000001', 'mode=sum', 'mode=average', 'connection', 'message', 'wait=0', 'wait=1000000000', '='];

const throttle: FuzzTarget = {
  name: 'throttle',
  description: 'parseDeclare, parseAcquire: a request within the documented ranges, or an error text',
  check(input: Buffer): void {
    for (const line of text(input).split('\n')) checkThrottleArgs(line.split(' '));
  },
  properties: [
    rawProperty('any text', 900, anyText(80).map(utf8), (b) => throttle.check(b)),
    rawProperty('throttle-like arguments', 2400, tokens(THROTTLE_WORDS, 6).map(utf8), (b) => throttle.check(b)),
    property(
      'DECLARE round-trips, fields in any order',
      900,
      fc.record({ key: keyArb, ip: ipArb, c: fc.integer({ min: 1, max: 1e8 }), m: fc.integer({ min: 1, max: 1e8 }), mode: fc.constantFrom('sum' as const, 'average' as const), order: fc.nat() }),
      ({ key, ip, c, m, mode, order }) => {
        const fields = [`source=${ip}`, `max_connections=${c}`, `max_messages_per_hour=${m}`, `mode=${mode}`];
        const r = order % 4;
        const d = parseDeclare([key, ...fields.slice(r), ...fields.slice(0, r)]);
        const expected = { key, sourceIp: ipaddr.process(ip).toString(), maxConnections: c, maxMessagesPerHour: m, mode };
        assert(same(d, expected), () => `got ${show(d)}, expected ${show(expected)}`);
      },
    ),
    property('ACQUIRE round-trips', 900, fc.record({ key: keyArb, kind: fc.constantFrom('connection' as const, 'message' as const), wait: fc.option(fc.integer({ min: 0, max: 999_999_999 }), { nil: null }) }), ({ key, kind, wait }) => {
      const a = parseAcquire([key, kind, ...(wait === null ? [] : [`wait=${wait}`])]);
      assert(same(a, { key, kind, waitMs: wait }), () => `got ${show(a)}`);
    }),
  ],
};

// ---------------------------------------------------------------------------------------------
// connect: CONNECT lines (src/egress/policy.ts)

function checkConnectLine(line: string): void {
  const r = timed('parseConnect', BUDGET_MS, () => parseConnect(line));
  if ('code' in r) {
    assert(r.code === CONNECT_CODES.syntax && r.message.length < MAX_MESSAGE, () => `refusal ${show(r)}`);
    return;
  }
  assert(isCanonicalIp(r.sourceIp) && ipaddr.process(r.sourceIp).toString() === r.sourceIp, () => `source ${show(r.sourceIp)}`);
  assert(Number.isInteger(r.port) && r.port >= 1 && r.port <= 65535 && THROTTLE_KEY.test(r.throttle), () => `request ${show(r)}`);
  assert(r.host.length > 0 && !/[\s[\]]/.test(r.host), () => `host ${show(r.host)}`);
  assert(same(parseConnect(formatConnect(r)), r), () => `parse(format(${show(r)})) differs`);
}

function formatConnect(r: ConnectRequest): string {
  const host = r.host.includes(':') ? `[${r.host}]` : r.host;
  const words = [`CONNECT ${r.sourceIp} ${host}:${r.port} ${r.throttle}${r.waitMs === null ? '' : ` wait=${r.waitMs}`}`];
  if (r.smtp !== null) {
    const t = r.smtp.tls;
    words.push(`mode=smtp ehlo=${r.smtp.ehloName} tls=${t.mode}`, ...(t.verifyName === null ? [] : [`verify=${t.verifyName}`]), `sni=${t.sni ?? 'none'}`);
  }
  return words.join(' ');
}

const label = fc.stringMatching(/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,12}[A-Za-z0-9])?$/);
const topLabel = fc.stringMatching(/^[A-Za-z](?:[A-Za-z0-9-]{0,8}[A-Za-z])?$/).filter((s) => !/^0x/i.test(s));
const hostNameArb = fc.tuple(fc.array(label, { maxLength: 4 }), topLabel, fc.boolean()).map(([ls, top, dot]) => `${[...ls, top].join('.')}${dot ? '.' : ''}`);
const CONNECT_WORDS = ['CONNECT', '192.0.2.1', '127.1', '0x7f.0.0.1', '2001:db8::1', 'mx.example.com:25', '[2001:db8::25]:25', '[::ffff:10.0.0.1]:587', 'mx.example:0', 'mx.example:65536', 'a.b.123:25', 'x.0x7f:25', 'mx.example', 'wait=5', 'wait=-1', 'mode=smtp', 'mode=tunnel', 'ehlo=mail.example', 'ehlo=[192.0.2.1]', 'tls=none', 'tls=required', 'tls=opportunistic', 'verify=mx.example', 'sni=none', 'sni=mx.example'];

const connect: FuzzTarget = {
  name: 'connect',
  description: 'parseConnect: a request (sources canonical, ports 1..65535) or a 501 with a bounded message; requests round-trip',
  check(input: Buffer): void {
    for (const line of text(input).split('\n')) checkConnectLine(line);
  },
  properties: [
    rawProperty('any text', 900, anyText(100).map(utf8), (b) => connect.check(b)),
    rawProperty('CONNECT-like lines', 2400, tokens(CONNECT_WORDS, 6).map((s) => utf8(`CONNECT ${s}`)), (b) => connect.check(b)),
    property(
      'requests round-trip',
      1200,
      fc.record({
        source: ipArb,
        host: fc.oneof(fc.ipV4(), fc.ipV6().map((h) => `[${h}]`), hostNameArb),
        port: fc.integer({ min: 1, max: 65535 }),
        throttle: keyArb,
        wait: fc.option(fc.integer({ min: 0, max: 999_999_999 }), { nil: null }),
        smtp: fc.option(
          fc.record({ ehlo: hostNameArb, mode: fc.constantFrom('none', 'opportunistic', 'required' as const), verify: fc.option(hostNameArb, { nil: null }), sni: fc.option(hostNameArb, { nil: null }) }),
          { nil: null },
        ),
      }),
      ({ source, host, port, throttle: t, wait, smtp }) => {
        // verify= only with tls=required (anything else is a 501, checked by the 'any text' properties)
        const verify = smtp !== null && smtp.mode === 'required' ? smtp.verify : null;
        const options = smtp === null ? '' : ` mode=smtp ehlo=${smtp.ehlo} tls=${smtp.mode}${verify === null ? '' : ` verify=${verify}`} sni=${smtp.sni ?? 'none'}`;
        const line = `CONNECT ${source} ${host}:${port} ${t}${wait === null ? '' : ` wait=${wait}`}${options}`;
        const r = parseConnect(line);
        const expectedSmtp = smtp === null ? null : { ehloName: smtp.ehlo, tls: { mode: smtp.mode, verifyName: verify, sni: smtp.sni } };
        const expected = { sourceIp: ipaddr.process(source).toString(), host: host.replace(/^\[(.*)\]$/, '$1'), port, throttle: t, waitMs: wait, smtp: expectedSmtp };
        assert(same(r, expected), () => `parseConnect(${show(line)}) = ${show(r)}, expected ${show(expected)}`);
      },
    ),
  ],
};

export const NATIVE_TARGETS: readonly FuzzTarget[] = [lines, control, handshake, throttle, connect];
