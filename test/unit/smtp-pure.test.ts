// The pure parts of smtp mode: reply parser, command reader, DATA end scanner, EHLO filter, the
// client's open sequence, the timer wheel, and CONNECT's smtp options. No sockets.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConnect } from '../../src/egress/policy.js';
import { TimerWheel } from '../../src/net/wheel.js';
import { openStep, type OpenState, type TlsPolicy } from '../../src/smtp/client.js';
import { BodyNormalizer, CommandLineTooLong, CommandReader, DataEndScanner, isPathCommand, parseCommand } from '../../src/smtp/command.js';
import { ehloForMta, parseEhlo } from '../../src/smtp/ehlo.js';
import { formatReply, ReplyError, ReplyParser, type Reply } from '../../src/smtp/reply.js';

const reply = (text: string): Reply => {
  const r = new ReplyParser().push(Buffer.from(text, 'latin1'));
  expect(r).toHaveLength(1);
  return r[0] as Reply;
};

describe('ReplyParser', () => {
  it('joins multi-line replies, keeps the raw bytes, and splits pipelined replies across chunks', () => {
    const p = new ReplyParser();
    expect(p.push(Buffer.from('250-mx.example Hello\r\n250-SIZE 1000\r'))).toEqual([]);
    expect(p.inReply).toBe(true);
    const [ehlo, mail, ...rest] = p.push(Buffer.from('\n250 PIPELINING\r\n250 2.1.0 Ok\r\n550 5.1.1 <x@y>: unknown\r\n'));
    expect(ehlo?.code).toBe(250);
    expect(ehlo?.lines).toEqual(['mx.example Hello', 'SIZE 1000', 'PIPELINING']);
    expect(ehlo?.raw.toString()).toBe('250-mx.example Hello\r\n250-SIZE 1000\r\n250 PIPELINING\r\n');
    expect(mail?.raw.toString()).toBe('250 2.1.0 Ok\r\n');
    expect(rest[0]?.code).toBe(550);
    expect(rest[0]?.lines).toEqual(['5.1.1 <x@y>: unknown']);
    expect(p.buffered).toBe(0);
  });

  it('accepts a bare code and 8-bit text, byte for byte', () => {
    expect(reply('250\r\n').lines).toEqual(['']);
    const r = reply('554 5.7.1 caf\xe9\r\n');
    expect(r.raw).toEqual(Buffer.from('554 5.7.1 caf\xe9\r\n', 'latin1'));
  });

  it('refuses garbage, a code that changes inside a reply, and unbounded lines or replies', () => {
    expect(() => new ReplyParser().push(Buffer.from('hello\r\n'))).toThrow(ReplyError);
    expect(() => new ReplyParser().push(Buffer.from('250-a\r\n251 b\r\n'))).toThrow('reply code changed');
    expect(() => new ReplyParser().push(Buffer.from('199 x\r\n'))).toThrow(ReplyError);
    expect(() => new ReplyParser().push(Buffer.alloc(5000, 0x41))).toThrow('longer than 4096');
    // RFC 5321 sets no line limit: a 300-line EHLO is fine, bytes bound a reply
    expect(new ReplyParser().push(Buffer.from('250-x\r\n'.repeat(300) + '250 y\r\n'))[0]?.lines).toHaveLength(301);
    expect(() => new ReplyParser().push(Buffer.from('250-x\r\n'.repeat(5000)))).toThrow('more than 4096 lines');
    expect(() => new ReplyParser().push(Buffer.from(`250-${'x'.repeat(4000)}\r\n`.repeat(70)))).toThrow('more than 262144 bytes');
  });

  it('formats the proxy’s own replies', () => {
    expect(formatReply(250, ['a', 'b']).toString()).toBe('250-a\r\n250 b\r\n');
    expect(formatReply(451, ['4.4.2 x']).toString()).toBe('451 4.4.2 x\r\n');
  });
});

describe('commands and DATA', () => {
  it('reads lines (CRLF or LF), keeps the rest, and bounds a line', () => {
    const r = new CommandReader();
    expect(r.next(Buffer.from('MAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<c@d>\nDA'))).toBe('MAIL FROM:<a@b> SIZE=10');
    expect(r.next()).toBe('RCPT TO:<c@d>');
    expect(r.next()).toBeNull();
    expect(r.takePending().toString()).toBe('DA');
    expect(() => new CommandReader().next(Buffer.alloc(3000, 0x41))).toThrow(CommandLineTooLong);
  });

  it('parses verbs and checks MAIL/RCPT paths', () => {
    expect(parseCommand('mail FROM:<a@b>').verb).toBe('MAIL');
    expect(parseCommand('XYZZY').verb).toBe('OTHER');
    expect(isPathCommand(parseCommand('MAIL FROM:<> BODY=8BITMIME'))).toBe(true);
    expect(isPathCommand(parseCommand('RCPT TO:<üser@example.com>'))).toBe(true);
    expect(isPathCommand(parseCommand('MAIL FROM:a@b'))).toBe(false);
    expect(isPathCommand(parseCommand('MAIL TO:<a@b>'))).toBe(false);
  });

  it('finds <CRLF>.<CRLF> wherever the chunks split it, and only that', () => {
    const body = 'Subject: x\r\n\r\n..stuffed\r\n.\r\nNEXT';
    const end = body.indexOf('.\r\nNEXT') + 3;
    for (let cut = 0; cut <= body.length; cut++) {
      const s = new DataEndScanner();
      const a = s.push(Buffer.from(body.slice(0, cut)));
      if (a !== -1) {
        expect(a).toBe(end);
        continue;
      }
      expect(s.push(Buffer.from(body.slice(cut))) + cut).toBe(end);
      expect(s.bytes).toBe(end);
    }
    // an empty body; bare LFs around the dot do not end it (SMTP smuggling)
    expect(new DataEndScanner().push(Buffer.from('.\r\n'))).toBe(3);
    expect(new DataEndScanner().push(Buffer.from('a\n.\nb\r\n.\n'))).toBe(-1);
    expect(new DataEndScanner().push(Buffer.from('a\r\n.\nb\n.\r\n'))).toBe(-1);
  });
});

describe('BodyNormalizer', () => {
  /** A destination that takes any of CR, LF, CRLF as a line end: where does it see the body end? */
  const lenientEnd = (out: string): number => {
    const lines = out.split(/\r\n|\n|\r/);
    return lines.findIndex((l) => l === '.');
  };
  const normalize = (input: string, cut: number): string => {
    const n = new BodyNormalizer();
    return Buffer.concat([n.push(Buffer.from(input.slice(0, cut))), n.push(Buffer.from(input.slice(cut))), n.takeHeld()]).toString();
  };

  it('makes every line end in CRLF and dot-stuffs the lines a bare LF or CR starts, whatever the chunking', () => {
    const input = 'a\n.\nMAIL FROM:<x>\r\nb\rc\r\n\r.\r\r\n.\r\n';
    const want = 'a\r\n..\r\nMAIL FROM:<x>\r\nb\r\nc\r\n\r\n..\r\n\r\n.\r\n';
    for (let cut = 0; cut <= input.length; cut++) expect(normalize(input, cut), `cut at ${cut}`).toBe(want);
    // a clean body is passed through as it is (the same buffer)
    const clean = Buffer.from('x\r\ny\r\n');
    expect(new BodyNormalizer().push(clean)).toBe(clean);
  });

  it('SMTP smuggling: only the MTA\'s own CRLF.CRLF ends the body, at the proxy and at any destination', () => {
    const bodies = [
      'hi\n.\nMAIL FROM:<ceo@bank.example>\nRCPT TO:<v@x>\nDATA\nsmuggled\n.\n\r\n.\r\n',
      'hi\r.\rMAIL FROM:<ceo@bank.example>\r\n.\r\n',
      'a\r\n.\nb\n.\r\nc\r.\r\nd\r\n.\r\r\n.\r\n',
      '\n.\r\n\r\n.\r\n',
      '.\r\n',
    ];
    for (const body of bodies) {
      const raw = Buffer.from(body);
      const end = new DataEndScanner().push(raw);
      // the proxy: the end is the raw body's one CRLF.CRLF (here always the last 5 bytes)
      expect(end, JSON.stringify(body)).toBe(raw.length);
      for (let cut = 0; cut <= body.length; cut++) {
        const out = normalize(body, cut);
        // a strict destination ends at the first CRLF.CRLF, a lenient one at the first "." line: both at the very end
        const strictEnd = out.startsWith('.\r\n') ? 3 : out.indexOf('\r\n.\r\n') + 5;
        expect(strictEnd, JSON.stringify({ body, cut, out })).toBe(out.length);
        const lines = out.split(/\r\n|\n|\r/);
        expect(lenientEnd(out), JSON.stringify({ body, cut, out })).toBe(lines.length - 2);
      }
    }
    // any body of a, ".", CR, LF, in any two chunks: the part up to the raw end, normalized, has
    // exactly one "." line for a destination that takes CR, LF or CRLF as line ends: its last
    fc.assert(
      fc.property(fc.array(fc.constantFrom('a', '.', '\r', '\n', '\r\n'), { maxLength: 40 }), fc.nat(), (pieces, c) => {
        const raw = Buffer.from(`${pieces.join('')}\r\n.\r\n`);
        const end = new DataEndScanner().push(raw);
        const part = raw.subarray(0, end).toString();
        const cut = c % (part.length + 1);
        const out = normalize(part, cut);
        const lines = out.split(/\r\n|\n|\r/);
        return end > 0 && lenientEnd(out) === lines.length - 2 && out.endsWith('\r\n.\r\n') === (out.length > 3) && !/(^|[^\r])\n|\r(?!\n)/.test(out);
      }),
      { seed: 42, numRuns: 3000 },
    );
    // what follows the end is the MTA's own bytes (commands), unchanged
    const raw = Buffer.from('a\r\n.\r\nQUIT\r');
    const end = new DataEndScanner().push(raw);
    expect(raw.subarray(end).toString()).toBe('QUIT\r');
    // "<LF>.<LF>" and "<CR>.<CR>" alone never end it
    expect(new DataEndScanner().push(Buffer.from('x\n.\nNOOP\rMAIL\r\n'))).toBe(-1);
    expect(new DataEndScanner().push(Buffer.from('x\r.\rQ\n'))).toBe(-1);
  });
});

describe('EHLO', () => {
  it('offers the MTA only what the proxy relays', () => {
    const r = reply('250-mx.example at your service\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n');
    const ext = parseEhlo(r);
    expect(ext.get('AUTH')).toBe('PLAIN LOGIN');
    expect(ext.get('SIZE')).toBe('35882577');
    expect(ehloForMta(r, ext)).toEqual(['mx.example at your service', 'SIZE 35882577', '8BITMIME', 'PIPELINING', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'CHUNKING']);
  });
});

describe('opening a destination connection', () => {
  const policy = (mode: TlsPolicy['mode']): TlsPolicy => ({ mode, verifyName: null, sni: null });
  const at = (phase: OpenState['phase'], mode: TlsPolicy['mode'], plainEhlo: Reply | null = null): OpenState => ({ phase, ehloName: 'mail.example', policy: policy(mode), plainEhlo });
  const ehloTls = reply('250-mx\r\n250 STARTTLS\r\n');
  const ehloPlain = reply('250-mx\r\n250 SIZE 10\r\n');

  it('greets, EHLOs, and does STARTTLS whenever it is offered unless tls=none', () => {
    expect(openStep(at('greeting', 'opportunistic'), reply('220 mx ESMTP\r\n'))).toEqual({ do: 'send', line: 'EHLO mail.example', phase: 'ehlo' });
    expect(openStep(at('ehlo', 'opportunistic'), ehloTls)).toMatchObject({ do: 'send', line: 'STARTTLS' });
    expect(openStep(at('ehlo', 'none'), ehloTls)).toMatchObject({ do: 'ready' });
    expect(openStep(at('starttls', 'opportunistic'), reply('220 go ahead\r\n'))).toEqual({ do: 'starttls' });
    expect(openStep(at('ehlo-tls', 'required'), ehloPlain)).toMatchObject({ do: 'ready', ehlo: ehloPlain });
  });

  it('required TLS fails without STARTTLS; opportunistic goes on in plaintext', () => {
    expect(openStep(at('ehlo', 'required'), ehloPlain)).toMatchObject({ do: 'fail', code: 421, message: 'TLS is required but the destination does not offer STARTTLS' });
    expect(openStep(at('ehlo', 'opportunistic'), ehloPlain)).toMatchObject({ do: 'ready' });
    expect(openStep(at('starttls', 'required'), reply('454 4.7.0 TLS not available\r\n'))).toMatchObject({ do: 'fail', code: 421 });
    expect(openStep(at('starttls', 'opportunistic', ehloTls), reply('454 4.7.0 TLS not available\r\n'))).toMatchObject({ do: 'ready', ehlo: ehloTls });
  });

  it('keeps the class of a refused greeting, and falls back to HELO for an old server', () => {
    expect(openStep(at('greeting', 'none'), reply('554 5.7.1 go away\r\n'))).toMatchObject({ do: 'fail', code: 554 });
    expect(openStep(at('greeting', 'none'), reply('421 busy\r\n'))).toMatchObject({ do: 'fail', code: 421 });
    expect(openStep(at('ehlo', 'opportunistic'), reply('502 5.5.2 what\r\n'))).toEqual({ do: 'send', line: 'HELO mail.example', phase: 'helo' });
    expect(openStep(at('ehlo', 'required'), reply('502 5.5.2 what\r\n'))).toMatchObject({ do: 'fail' });
  });
});

describe('TimerWheel', () => {
  it('fires each entry once, at or after its deadline, never before; cancel works', () => {
    let now = 1000;
    const w = new TimerWheel({ resolutionMs: 100, now: () => now, auto: false });
    const fired: string[] = [];
    w.add(250, () => fired.push('a'));
    const b = w.add(250, () => fired.push('b'));
    w.add(1000, () => fired.push('c'));
    b.cancel();
    expect(w.size).toBe(2);
    now = 1249;
    w.tick();
    expect(fired).toEqual([]);
    now = 1300;
    w.tick();
    expect(fired).toEqual(['a']);
    now = 100_000; // a long stall: everything due fires, in order
    w.tick();
    expect(fired).toEqual(['a', 'c']);
    expect(w.size).toBe(0);
  });

  it('coarseNow is the clock at the last add() or tick(), not read again in between', () => {
    let now = 5000;
    let reads = 0;
    const w = new TimerWheel({ resolutionMs: 100, now: () => (reads++, now), auto: false });
    expect(w.coarseNow).toBe(5000);
    now = 5070;
    expect(w.coarseNow).toBe(5000); // no clock read: the value of the construction
    w.add(1000, () => {});
    expect(w.coarseNow).toBe(5070);
    const before = reads;
    now = 5150;
    expect(w.coarseNow).toBe(5070);
    w.tick();
    expect(w.coarseNow).toBe(5150);
    expect(reads).toBe(before + 1); // one read per tick, none per coarseNow
    expect(w.resolutionMs).toBe(100);
  });
});

describe('CONNECT smtp options', () => {
  it('parses mode=smtp with its TLS policy and SNI default', () => {
    expect(parseConnect('CONNECT 192.0.2.1 mx.example.net:25 t mode=smtp ehlo=mail.example.com')).toMatchObject({
      smtp: { ehloName: 'mail.example.com', tls: { mode: 'opportunistic', verifyName: null, sni: 'mx.example.net' } },
    });
    expect(parseConnect('CONNECT 192.0.2.1 198.51.100.7:25 t wait=10 mode=smtp ehlo=[192.0.2.1] tls=required verify=mx.example.net sni=none')).toMatchObject({
      waitMs: 10,
      smtp: { ehloName: '[192.0.2.1]', tls: { mode: 'required', verifyName: 'mx.example.net', sni: null } },
    });
    expect(parseConnect('CONNECT 192.0.2.1 198.51.100.7:25 t')).toMatchObject({ smtp: null });
  });

  it('refuses what it cannot honour, with 501 and the syntax', () => {
    const code = (l: string): number | undefined => (parseConnect(l) as { code?: number }).code;
    expect(code('CONNECT 192.0.2.1 mx.example:25 t mode=smtp')).toBe(501);
    expect(code('CONNECT 192.0.2.1 mx.example:25 t ehlo=a.example')).toBe(501);
    expect(code('CONNECT 192.0.2.1 mx.example:25 t mode=smtp ehlo=a.example tls=maybe')).toBe(501);
    expect(code('CONNECT 192.0.2.1 mx.example:25 t mode=smtp ehlo=a.example verify=mx.example')).toBe(501);
    expect(code('CONNECT 192.0.2.1 mx.example:25 t mode=smtp ehlo=a.example ehlo=b.example')).toBe(501);
    expect(code('CONNECT 192.0.2.1 mx.example:25 t mode=bulk')).toBe(501);
  });
});
