// The config parser (docs/configuration.md) and its value parsers, and the admin socket's codec.
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { parseAllowRule } from '../../../src/config/allow.js';
import { DIRECTIVES, formatConfigError, parseConfig, parseDuration, parseListenAddress, TABLES, type ConfigIo, type ConfigResult } from '../../../src/config/parse.js';
import { MAX_ADMIN_KEY, MAX_ADMIN_LINE, parseAdminReply, parseAdminRequest, type AdminReply } from '../../../src/protocol/admin.js';
import { LineSplitter, LineTooLongError } from '../../../src/protocol/lines.js';
import { anyText, assert, property, rawProperty, same, show, timed, tokens, type FuzzTarget } from '../harness.js';

const FILE = '/etc/mtaproxy/fuzz.toml';
const SECRET = 'fuzz-secret-0123456789-abcdefghijklmnop';
const LOCAL = new Set(['127.0.0.1', '127.0.0.2', '192.0.2.10', '::1', '2001:db8::10']);
const IO: ConfigIo = {
  readSecretFile: (path) => {
    if (path === '/etc/mtaproxy/secret') return `${SECRET}\n`;
    throw new Error(`ENOENT: no such file "${path}"`);
  },
  isLocalAddress: (ip) => LOCAL.has(ip),
};
/** A config of a few KB is parsed in well under a millisecond: this only catches super-linear work. */
const BUDGET_MS = 1000;

/** Every key path the file may contain. */
const KNOWN_KEYS = new Set<string>([...Object.keys(DIRECTIVES), ...Object.entries(TABLES).flatMap(([t, keys]) => Object.keys(keys).map((k) => `${t}.${k}`))]);

function checkConfigText(text: string): ConfigResult {
  const r = timed('parseConfig', BUDGET_MS, () => parseConfig(text, FILE, IO));
  const lineCount = text.split(/\r?\n/).length;
  if (r.ok) {
    const c = r.config;
    assert(c.listen.length >= 1 && c.secrets.length >= 1 && c.egress.ports.length >= 1, () => `config without listen, secret or ports: ${show(c.listen)}`);
    for (const l of c.listen) assert(ipaddr.isValid(l.host) && l.port >= 0 && l.port <= 65535, () => `listen ${show(l)}`);
    for (const ip of c.egress.sourceIps) assert(LOCAL.has(ip), () => `source ${ip} is not local`);
    return r;
  }
  assert(r.errors.length >= 1, () => 'not ok, yet no error');
  for (const e of r.errors) {
    assert(e.file === FILE, () => `error names file ${show(e.file)}`);
    assert(Number.isInteger(e.line) && e.line >= 1 && e.line <= lineCount + 1 && Number.isInteger(e.column) && e.column >= 1, () => `error at ${e.line}:${e.column} of ${lineCount} lines: ${show(e)}`);
    const formatted = formatConfigError(e);
    assert(formatted.startsWith(`${FILE}:${e.line}:${e.column}: `), () => `formatted ${show(formatted)}`);
    if (e.key === '') {
      assert(e.message.startsWith('TOML syntax: ') && r.errors.length === 1, () => `error without key: ${show(e)}`);
    } else {
      // a known directive, or an unknown one the file itself wrote
      assert(KNOWN_KEYS.has(e.key) || e.message.startsWith('unknown directive'), () => `error for key ${show(e.key)}: ${e.message}`);
      assert(formatted.includes(` ${e.key}: `), () => `formatted error does not name its key: ${show(formatted)}`);
    }
    // a secret's own errors give its length, never its value
    if (e.key.startsWith('auth_shared_secret')) assert(!formatted.includes(SECRET), () => `an error shows the secret: ${show(formatted)}`);
  }
  return r;
}

// TOML-ish text: directives of every table, values right and wrong, and the whitespace, comments,
// quoting and nesting a hand-written file has.
const KEYS = [...KNOWN_KEYS].map((k) => k.split('.').pop() as string).concat(['alow_from', 'egres', 'x', '"quoted"', "'lit'", 'a.b', 'listen.x', '__proto__', 'constructor']);
const HEADERS = [...Object.keys(TABLES).map((t) => `[${t}]`), '[[socks5.users]]', '[ egress ]', '[egres]', '[listen]', '["egress"]', '[a.b]'];
const VALUES = [
  `"${SECRET}"`, '"short"', '"127.0.0.1:807"', '["127.0.0.1:807", "[::1]:807"]', '"localhost:807"', '["10.0.0.0/8", "::1"]', '"10.0.0.1/8"', '["192.0.2.10"]', '["127.1"]',
  '"5s"', '"1m30s"', '"500ms"', '"5 seconds"', '2.5', '-1', '0', '1e400', '1_000', '0x10', 'true', 'false', '"yes"', '[]', '[25, 465]', '[0]', '[70000]', '"/run/x.sock"', '"relative"',
  '{ username = "u", password = "p" }', '[{ username = "u", password = "p", source_ip = "127.0.0.1" }]', '[{ username = 1 }]', '"""multi\nline"""', "'''lit\n'''", '[\n  "a",\n  [ "b",\n  "c" ],\n]',
  '"/etc/mtaproxy/secret"', '"/nope"', '1979-05-27T07:32:00Z', 'inf', 'nan', '"\\u00e9"', '"\\x"', '[[[[1]]]]',
];
const space = fc.oneof({ weight: 8, arbitrary: fc.constantFrom('', ' ', '  ', '\t') }, { weight: 1, arbitrary: fc.integer({ min: 100, max: 1500 }).map((n) => ' '.repeat(n)) });
/** A multi-line array whose inner lines start with "[" or "{": whitespace anywhere in them. */
const multiLineArray = fc
  .tuple(space, space, space, fc.constantFrom('"b"', '1', '{ x = 1 }', '[]'))
  .map(([a, b, c, v]) => `[\n${a}[${b}${v},\n${c}${v} ],\n]`);
const tomlLine = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(space, fc.constantFrom(...KEYS), space, fc.constantFrom('=', '= ', ' = ', ''), space, fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...VALUES) }, { weight: 1, arbitrary: multiLineArray }, { weight: 1, arbitrary: anyText(16) })).map((p) => p.join('')) },
  { weight: 2, arbitrary: fc.tuple(space, fc.constantFrom(...HEADERS), space).map((p) => p.join('')) },
  { weight: 1, arbitrary: fc.tuple(space, fc.constantFrom('[', '[[', '# comment', '"', ']', '[ "x",', '  "y" ],')).map((p) => p.join('')) },
  { weight: 1, arbitrary: anyText(30) },
);
/** Text TOML accepts (mostly: a key may clash with a table), so the checks after the TOML parser run. */
const BARE_KEYS = KEYS.filter((k) => /^[A-Za-z0-9_-]+$/.test(k));
const VALID_VALUES = VALUES.filter((v) => v !== '"\\x"');
const tomlSection = fc.tuple(
  fc.constantFrom('', ...HEADERS.filter((h) => !h.startsWith('[['))),
  fc.uniqueArray(fc.tuple(fc.constantFrom(...BARE_KEYS), space, space, fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...VALID_VALUES) }, { weight: 1, arbitrary: multiLineArray })), { maxLength: 6, selector: ([k]) => k }),
);
const validTomlText = fc
  .tuple(fc.boolean(), fc.uniqueArray(tomlSection, { maxLength: 4, selector: ([h]) => h }), fc.constantFrom('\n', '\r\n'))
  .map(([secret, sections, eol]) =>
    [
      ...(secret ? [`auth_shared_secret = "${SECRET}"`] : []),
      ...sections.sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : 0)).flatMap(([header, keys]) => [...(header === '' ? [] : [header]), ...keys.map(([k, a, b, v]) => `${a}${k}${b}= ${v}`)]),
    ].join(eol),
  );
const tomlText = fc.tuple(fc.boolean(), fc.array(tomlLine, { maxLength: 14 }), fc.constantFrom('\n', '\r\n')).map(([secret, lines, eol]) => [...(secret ? [`auth_shared_secret = "${SECRET}"`] : []), ...lines].join(eol));

interface GoodConfig {
  readonly listen: string[];
  readonly allow: string[];
  readonly statusMs: number;
  readonly pingMs: number;
  readonly ports: number[];
  readonly maxTunnels: number;
  readonly verbose: boolean;
  readonly sources: string[];
}

const v4 = fc.array(fc.nat({ max: 255 }), { minLength: 4, maxLength: 4 }).map((b) => b.join('.'));
const listenArb = fc.oneof(fc.tuple(v4, fc.nat({ max: 65535 })).map(([h, p]) => `${h}:${p}`), fc.tuple(fc.ipV6(), fc.nat({ max: 65535 })).map(([h, p]) => `[${h}]:${p}`));
const cidrArb = fc.tuple(fc.boolean(), fc.array(fc.nat({ max: 255 }), { minLength: 16, maxLength: 16 }), fc.nat({ max: 128 })).map(([isV4, b, bits]) => network(isV4 ? b.slice(0, 4) : b, isV4 ? bits % 33 : bits));
function network(addressBytes: number[], bits: number): string {
  const masked = addressBytes.map((x, i) => x & ((0xff << (8 - Math.max(0, Math.min(8, bits - i * 8)))) & 0xff));
  return `${ipaddr.fromByteArray(masked).toString()}/${bits}`;
}
const goodConfig: fc.Arbitrary<GoodConfig> = fc.record({
  listen: fc.array(listenArb, { minLength: 1, maxLength: 3 }),
  allow: fc.array(cidrArb, { maxLength: 4 }),
  statusMs: fc.integer({ min: 100, max: 3_600_000 }),
  pingMs: fc.integer({ min: 100, max: 600_000 }),
  ports: fc.array(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 4 }),
  maxTunnels: fc.integer({ min: 1, max: 1_000_000 }),
  verbose: fc.boolean(),
  sources: fc.subarray([...LOCAL]),
});

/** Writes a config as lines (top-level directives, then [egress]): index = line - 1. */
function writeConfig(g: GoodConfig): string[] {
  return [
    `auth_shared_secret = "${SECRET}"`,
    `listen = ${JSON.stringify(g.listen)}`,
    `allow_from = ${JSON.stringify(g.allow)}`,
    `status_interval = "${g.statusMs}ms"`,
    `ping_interval = "${g.pingMs}ms"`,
    `log_verbose = ${g.verbose}`,
    '[egress]',
    `ports = ${JSON.stringify(g.ports)}`,
    `max_tunnels = ${g.maxTunnels}`,
    `source_ips = ${JSON.stringify(g.sources)}`,
  ];
}

/** One wrong value per directive, the line it goes on (in writeConfig) and its key path. */
/** `quoted`: the error points at the quoted entry of the array, not at the key. */
const BAD_VALUES: readonly { line: number; key: string; value: string; quoted?: true }[] = [
  { line: 2, key: 'listen', value: 'listen = ["localhost:807"]', quoted: true },
  { line: 2, key: 'listen', value: 'listen = 807' },
  { line: 3, key: 'allow_from', value: 'allow_from = ["10.0.0.1/8"]', quoted: true },
  { line: 3, key: 'allow_from', value: 'allow_from = ["127.1"]', quoted: true },
  { line: 4, key: 'status_interval', value: 'status_interval = "5 seconds"' },
  { line: 4, key: 'status_interval', value: 'status_interval = "2h"' },
  { line: 5, key: 'ping_interval', value: 'ping_interval = -1' },
  { line: 6, key: 'log_verbose', value: 'log_verbose = "yes"' },
  { line: 6, key: 'lg_verbose', value: 'lg_verbose = true' },
  { line: 6, key: 'lg_verbose', value: 'lg_verbose.on = true' },
  { line: 9, key: 'egress.max_tunel', value: 'max_tunel.x = 1' },
  { line: 9, key: 'egress.max_tunnels', value: 'max_tunnels.x = 1' },
  { line: 8, key: 'egress.ports', value: 'ports = [0]' },
  { line: 8, key: 'egress.ports', value: 'ports = []' },
  { line: 9, key: 'egress.max_tunnels', value: 'max_tunnels = 1.5' },
  { line: 10, key: 'egress.source_ips', value: 'source_ips = ["192.0.2.99"]', quoted: true },
  { line: 10, key: 'egress.source_ip', value: 'source_ip = ["127.0.0.1"]' },
];

function checkAdmin(input: Buffer): void {
  const line = input.toString('utf8');
  const req = timed('parseAdminRequest', 250, () => parseAdminRequest(line));
  assert(
    req === 'reload' || req === 'status' || req === 'throttles' || req === 'request is not JSON' || req === 'unknown command (expected "reload", "status" or "throttles")' ||
      req === 'limit must be a whole number >= 0' || req === `key must be a string of at most ${MAX_ADMIN_KEY} characters`,
    () => `parseAdminRequest = ${show(req)}`,
  );
  const reply = timed('parseAdminReply', 250, () => parseAdminReply(line));
  if (reply !== null) {
    assert(typeof reply.ok === 'boolean' && typeof reply.message === 'string', () => `reply ${show(reply)}`);
    for (const list of [reply.errors, reply.lines]) {
      assert(list === undefined || (Array.isArray(list) && list.every((s) => typeof s === 'string')), () => `reply ${show(reply)}: errors and lines must be arrays of strings`);
    }
    assert(reply.data === undefined || (typeof reply.data === 'object' && reply.data !== null && !Array.isArray(reply.data)), () => `reply ${show(reply)}: data must be an object`);
  }
  // the daemon reads a request with LineSplitter(MAX_ADMIN_LINE)
  const splitter = new LineSplitter(MAX_ADMIN_LINE);
  try {
    splitter.push(input);
    assert(splitter.buffered <= MAX_ADMIN_LINE + 1, () => `admin splitter holds ${splitter.buffered} bytes`);
  } catch (err) {
    assert(err instanceof LineTooLongError, () => `admin splitter threw ${String(err)}`);
  }
}

const JSON_WORDS = ['{', '}', '[', ']', ',', ':', '"command"', '"reload"', '"status"', '"ok"', 'true', 'false', 'null', '"message"', '"x"', '"errors"', '"lines"', '1', '"__proto__"', '{"ok":true,"message":"m"', '"\\u2028"'];

const admin: FuzzTarget = {
  name: 'admin',
  description: 'the admin socket: requests are "reload", "status", "throttles" or an error; a reply is an AdminReply (errors/lines arrays of strings) or null; replies round-trip',
  check: checkAdmin,
  properties: [
    rawProperty('any text', 900, anyText(60).map((s) => Buffer.from(s)), checkAdmin),
    rawProperty('JSON-like text', 2400, tokens(JSON_WORDS, 12, ['', ' ']).map((s) => Buffer.from(s)), checkAdmin),
    rawProperty('any JSON value', 1500, fc.json({ maxDepth: 3 }).map((s) => Buffer.from(s)), checkAdmin),
    rawProperty(
      'reply-shaped JSON',
      1500,
      fc.record({ ok: fc.oneof(fc.boolean(), fc.jsonValue({ maxDepth: 1 })), message: fc.oneof(fc.string(), fc.jsonValue({ maxDepth: 1 })), errors: fc.option(fc.jsonValue({ maxDepth: 2 }), { nil: undefined }), lines: fc.option(fc.jsonValue({ maxDepth: 2 }), { nil: undefined }) }, { requiredKeys: ['ok', 'message'] }).map((v) => Buffer.from(JSON.stringify(v))),
      checkAdmin,
    ),
    property(
      'requests and replies round-trip, a reply as one line whatever its text',
      1200,
      fc.tuple(fc.constantFrom('reload' as const, 'status' as const, 'throttles' as const), fc.record(
        { ok: fc.boolean(), message: fc.string({ unit: 'binary', maxLength: 40 }), errors: fc.array(fc.string({ unit: 'binary', maxLength: 30 }), { maxLength: 4 }), lines: fc.array(fc.string({ unit: 'binary', maxLength: 30 }), { maxLength: 4 }) },
        { requiredKeys: ['ok', 'message'] },
      )),
      ([command, reply]: [string, AdminReply]) => {
        assert(parseAdminRequest(JSON.stringify({ command })) === command, () => command);
        // what the daemon writes (JSON.stringify + "\n") and the CLI reads back (the first line)
        const wire = `${JSON.stringify(reply)}\n`;
        const line = wire.split('\n')[0] ?? '';
        assert(line.length === wire.length - 1, () => `the reply is not one line: ${show(wire)}`);
        assert(same(parseAdminReply(line), reply), () => `parseAdminReply(${show(line)}) = ${show(parseAdminReply(line))}`);
      },
    ),
  ],
};

const config: FuzzTarget = {
  name: 'config',
  description: 'parseConfig on TOML-ish text: a config, or errors that name file:line:column and the key; in bounded time. Also allow_from rules, listen addresses and durations',
  check(input: Buffer): void {
    checkConfigText(input.toString('utf8'));
  },
  properties: [
    rawProperty('TOML-ish text', 600, tomlText.map((s) => Buffer.from(s)), (b) => config.check(b)),
    rawProperty('valid TOML, right and wrong values', 750, validTomlText.map((s) => Buffer.from(s)), (b) => config.check(b)),
    rawProperty('any text', 300, anyText(200).map((s) => Buffer.from(s)), (b) => config.check(b)),
    property('a valid config round-trips', 300, goodConfig, (g) => {
      const r = checkConfigText(writeConfig(g).join('\n'));
      assert(r.ok, () => `valid config refused: ${r.ok ? '' : r.errors.map(formatConfigError).join('; ')}`);
      const c = r.config;
      const expected = {
        listen: g.listen.map((l) => parseListenAddress(l)),
        allow: g.allow,
        status: g.statusMs,
        ping: g.pingMs,
        ports: g.ports,
        tunnels: g.maxTunnels,
        verbose: g.verbose,
        sources: g.sources.map((s) => ipaddr.process(s).toString()),
      };
      const got = { listen: c.listen, allow: c.allowFrom.rules.map((x) => x.text), status: c.statusIntervalMs, ping: c.pingIntervalMs, ports: c.egress.ports, tunnels: c.egress.maxTunnels, verbose: c.logVerbose, sources: c.egress.sourceIps };
      assert(same(got, expected), () => `parsed ${show(got)}, expected ${show(expected)}`);
    }),
    property('one wrong value is reported at its line, with its key', 900, fc.record({ g: goodConfig, bad: fc.constantFrom(...BAD_VALUES), eol: fc.constantFrom('\n', '\r\n'), indent: fc.constantFrom('', '  ', '\t') }), ({ g, bad, eol, indent }) => {
      const lines = writeConfig(g);
      lines[bad.line - 1] = indent + bad.value;
      const r = checkConfigText(lines.join(eol));
      assert(!r.ok, () => `accepted ${show(bad.value)}`);
      const errors = r.ok ? [] : r.errors;
      assert(errors.length === 1 && errors[0]?.line === bad.line && errors[0].key === bad.key && errors[0].column === indent.length + 1 + (bad.quoted ? bad.value.indexOf('"') : 0), () => `errors ${show(errors.map(formatConfigError))} for ${show(bad)}`);
    }),
    property(
      'allow_from rules, listen addresses, durations: a value or a message',
      1500,
      fc.oneof(tokens(['10.0.0.0', '/8', '/33', '/129', '::', '::ffff:', '1.2.3.4', '2001:db8::', '127.1', '0x7f', ':', '[', ']', ':807', '65536', '1h', '30m', '5s', '500ms', '.5', '1.5'], 4, ['']), anyText(20)),
      (s) => {
        const rule = parseAllowRule(s);
        if (rule.ok) {
          const max = rule.rule.address.kind() === 'ipv4' ? 32 : 128;
          assert(rule.rule.bits >= 0 && rule.rule.bits <= max && rule.rule.text === s, () => `rule ${show(rule)}`);
        } else assert(rule.message.includes(s), () => `message ${show(rule.message)} does not quote the rule`);
        const l = parseListenAddress(s);
        if (typeof l !== 'string') assert(ipaddr.isValid(l.host) && Number.isInteger(l.port) && l.port <= 65535, () => `listen ${show(l)}`);
        const d = parseDuration(s);
        assert(d === null || (Number.isFinite(d) && d >= 0 && Number.isInteger(d)), () => `duration ${show(d)}`);
      },
    ),
    property(
      'a long array with bad entries is located in bounded time',
      12,
      fc.record({ n: fc.integer({ min: 1, max: 3000 }), every: fc.integer({ min: 1, max: 4 }), key: fc.constantFrom('allow_from', 'listen') }),
      ({ n, every, key }) => {
        const entry = (i: number): string => (key === 'listen' ? (i % every === 0 ? `"h${i}:25"` : `"10.0.${(i >> 8) & 255}.${i & 255}:25"`) : i % every === 0 ? `"10.${(i >> 8) & 255}.${i & 255}.1/8"` : `"10.${(i >> 8) & 255}.${i & 255}.0/24"`);
        const text = `auth_shared_secret = "${SECRET}"\n${key} = [\n${Array.from({ length: n }, (_, i) => `  ${entry(i)},`).join('\n')}\n]\n`;
        const r = checkConfigText(text);
        const bad = Math.floor((n - 1) / every) + 1;
        assert(!r.ok && r.errors.length === bad && r.errors.every((e) => e.key === key && e.column === 3), () => `${r.ok ? 0 : r.errors.length} errors, expected ${bad}`);
        const last = r.ok ? undefined : r.errors.at(-1);
        assert(last?.line === 3 + (bad - 1) * every, () => `last error at line ${last?.line}, expected ${3 + (bad - 1) * every}`);
      },
    ),
    property('CIDRs round-trip', 900, cidrArb, (cidr) => {
      const r = parseAllowRule(cidr);
      assert(r.ok && r.rule.text === cidr, () => `parseAllowRule(${cidr}) = ${show(r)}`);
    }),
  ],
};

export const CONFIG_TARGETS: readonly FuzzTarget[] = [config, admin];
