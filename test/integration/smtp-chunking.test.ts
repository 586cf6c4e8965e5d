// BDAT (RFC 3030 CHUNKING) in smtp mode (docs/protocol.md §4.7), against the built daemon (dist/):
// a raw SMTP client on the MTA side of the link, and as destinations a BDAT-speaking server of our
// own (records the exact octets of every chunk, misbehaves on cue) and a real Postfix from Debian
// (test/helpers/postfix.ts; Postfix >= 3.4 offers CHUNKING). smtp-server from npm does not
// implement BDAT (its smtp-connection.js says so), so it cannot be the destination here.
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../helpers/postfix.js';

// ---------------------------------------------------------------------------------------------
// a destination that speaks BDAT

interface Received {
  conn: number;
  from: string;
  to: string[];
  /** the chunks' octets, joined */
  data: Buffer;
}

interface BdatOpts {
  ehlo?: (conn: number) => string[];
  /** the reply to a complete chunk (n: its index in the transaction); null: never answer */
  chunkReply?: (info: { conn: number; n: number; size: number; last: boolean; data: Buffer }) => string | null;
  /** destroy the connection once this many octets of chunk data arrived in a transaction */
  dropAfter?: number;
  /** stop reading once this many octets of chunk data arrived in a transaction */
  stallAfter?: number;
  /** send this reply as soon as this many octets of a chunk arrived, before the chunk is complete */
  early?: { at: number; reply: string };
  /** close connection n once its first transaction is done (while idle in the pool) */
  closeAfterFirst?: (conn: number) => boolean;
}

interface BdatDest {
  port: number;
  connections: number;
  open: number;
  /** command lines, "conn: line" (BDAT lines included, chunk octets not) */
  lines: string[];
  messages: Received[];
  /** chunk octets received in all, complete chunks or not */
  octets: number;
  close(): void;
}

async function bdatDest(opts: BdatOpts = {}): Promise<BdatDest> {
  const server: Server = createServer();
  const sockets = new Set<Socket>();
  const d: BdatDest = { port: 0, connections: 0, open: 0, lines: [], messages: [], octets: 0, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
  server.on('connection', (sock: Socket) => {
    const conn = ++d.connections;
    d.open++;
    sockets.add(sock);
    sock.on('close', () => { d.open--; sockets.delete(sock); });
    sock.on('error', () => {});
    const ehlo = opts.ehlo?.(conn) ?? ['bdat.example hello', 'PIPELINING', '8BITMIME', 'BINARYMIME', 'CHUNKING', 'ENHANCEDSTATUSCODES', 'SIZE 100000000'];
    sock.write('220 bdat.example ESMTP\r\n');
    let buf = Buffer.alloc(0);
    let from = '';
    let to: string[] = [];
    let chunks: Buffer[] = [];
    let n = 0;
    let failed = false;
    let txOctets = 0;
    let chunk: { size: number; last: boolean; parts: Buffer[]; got: number } | null = null;
    let done = 0;
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        if (chunk !== null) {
          const take = Math.min(chunk.size - chunk.got, buf.length);
          const part = buf.subarray(0, take);
          chunk.parts.push(part);
          chunk.got += take;
          d.octets += take;
          txOctets += take;
          buf = buf.subarray(take);
          if (opts.dropAfter !== undefined && txOctets >= opts.dropAfter) return void sock.destroy();
          if (opts.stallAfter !== undefined && txOctets >= opts.stallAfter) return void sock.pause();
          if (opts.early !== undefined && chunk.got >= opts.early.at && chunk.got < chunk.size) {
            sock.write(opts.early.reply);
            opts = { ...opts, early: undefined };
          }
          if (chunk.got < chunk.size) return;
          const data = Buffer.concat(chunk.parts);
          const { size, last } = chunk;
          chunk = null;
          const custom = opts.chunkReply?.({ conn, n: n++, size, last, data });
          if (custom === null) return;
          if (custom !== undefined && !custom.startsWith('2')) failed = true;
          if (failed) {
            sock.write(custom ?? '554 5.5.0 earlier chunk failed\r\n');
          } else {
            chunks.push(data);
            if (last) {
              d.messages.push({ conn, from, to, data: Buffer.concat(chunks) });
              sock.write(`250 2.0.0 queued as ${d.messages.length}\r\n`);
              from = '';
              to = [];
              chunks = [];
              n = 0;
              txOctets = 0;
              if (done++ === 0 && opts.closeAfterFirst?.(conn) === true) setTimeout(() => sock.end('421 4.4.2 bye for now\r\n'), 50);
            } else sock.write(`250 2.0.0 ${size} octets received\r\n`);
          }
          continue;
        }
        const i = buf.indexOf('\r\n');
        if (i === -1) return;
        const line = buf.toString('latin1', 0, i);
        buf = buf.subarray(i + 2);
        d.lines.push(`${conn}: ${line}`);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') sock.write(ehlo.map((l, k) => `250${k === ehlo.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'MAIL') { from = line; to = []; chunks = []; n = 0; failed = false; txOctets = 0; sock.write('250 2.1.0 sender ok\r\n'); }
        else if (verb === 'RCPT') { to.push(line); sock.write('250 2.1.5 recipient ok\r\n'); }
        else if (verb === 'BDAT') {
          const m = /^BDAT (\d+)( LAST)?$/i.exec(line);
          if (m === null) { sock.write('501 5.5.4 bad BDAT\r\n'); continue; }
          chunk = { size: Number(m[1]), last: m[2] !== undefined, parts: [], got: 0 };
        } else if (verb === 'RSET') { from = ''; to = []; chunks = []; n = 0; failed = false; txOctets = 0; sock.write('250 2.0.0 reset\r\n'); }
        else if (verb === 'QUIT') return void sock.end('221 2.0.0 bye\r\n');
        else if (verb === 'DATA') sock.write('503 5.5.1 no DATA here\r\n');
        else sock.write('250 2.0.0 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  d.port = (server.address() as AddressInfo).port;
  return d;
}

// ---------------------------------------------------------------------------------------------
// the MTA side: a raw SMTP client that counts complete replies

class Mta {
  readonly sock: Socket;
  replies: { code: number; text: string }[] = [];
  closed = false;
  #partial: string[] = [];
  #buf = '';
  #waiters: (() => void)[] = [];
  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      this.#buf += c.toString('latin1');
      for (let i = this.#buf.indexOf('\n'); i !== -1; i = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, i).replace(/\r$/, '');
        this.#buf = this.#buf.slice(i + 1);
        this.#partial.push(line);
        if (line[3] !== '-') {
          this.replies.push({ code: Number(line.slice(0, 3)), text: this.#partial.join('\n') });
          this.#partial = [];
        }
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    sock.on('close', () => { this.closed = true; for (const w of this.#waiters.splice(0)) w(); });
    sock.on('error', () => {});
  }
  async waitReplies(n: number, timeoutMs = 15_000): Promise<{ code: number; text: string }[]> {
    const end = Date.now() + timeoutMs;
    while (this.replies.length < n && !this.closed && Date.now() < end) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, end - Date.now()));
        this.#waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
    return this.replies;
  }
  send(s: string | Buffer): void {
    this.sock.write(typeof s === 'string' ? Buffer.from(s, 'latin1') : s);
  }
  /** sends and waits for one more reply */
  async cmd(s: string | Buffer, timeoutMs = 15_000): Promise<{ code: number; text: string }> {
    const n = this.replies.length + 1;
    this.send(s);
    const r = await this.waitReplies(n, timeoutMs);
    return r[n - 1] ?? { code: 0, text: this.closed ? '(closed)' : '(no reply)' };
  }
  /** reply number `n` (0-based), waiting for it */
  async reply(n: number, timeoutMs = 15_000): Promise<{ code: number; text: string }> {
    const r = await this.waitReplies(n + 1, timeoutMs);
    return r[n] ?? { code: 0, text: this.closed ? '(closed)' : '(no reply)' };
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(f: () => boolean, timeoutMs = 10_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (f()) return true;
    await sleep(20);
  }
  return f();
}

const bdat = (data: Buffer | string, last = false): Buffer => {
  const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  return Buffer.concat([Buffer.from(`BDAT ${b.length}${last ? ' LAST' : ''}\r\n`), b]);
};

// ---------------------------------------------------------------------------------------------

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
const dests: BdatDest[] = [];
const socks: Socket[] = [];
afterEach(async () => {
  for (const s of socks.splice(0)) s.destroy();
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
  for (const d of dests.splice(0)) d.close();
});

async function proxy(ports: number[], smtpExtra = ''): Promise<RunningDaemon> {
  const d = await startDaemon({
    extra: `[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\nports = [${ports.join(', ')}]\nallow_private_destinations = true\nthrottle_wait_timeout = "5s"\n[smtp]\nidle_timeout = "30s"\n${smtpExtra}`,
  });
  running.push(d);
  return d;
}

async function mtaControl(d: RunningDaemon, name = 'mta1', source = '127.0.0.2', key = 'dest'): Promise<void> {
  const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name, secret: SECRET });
  clients.push(c);
  await c.declare({ key, sourceIp: source, maxConnections: 2, maxMessagesPerHour: 100_000, mode: 'average' });
}

async function mkDest(opts: BdatOpts = {}): Promise<BdatDest> {
  const x = await bdatDest(opts);
  dests.push(x);
  return x;
}

async function link(d: RunningDaemon, host: string, port: number, name = 'mta1', source = '127.0.0.2', key = 'dest'): Promise<Mta> {
  const t = await openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source, destination: { host, port }, throttle: key, smtp: { ehlo: `mail-${source}.example`, tls: 'none' } });
  socks.push(t.socket);
  const m = new Mta(t.socket);
  t.socket.resume();
  await m.waitReplies(1); // the greeting
  return m;
}

/** writes `b` in pieces of 1..`max` octets with a pause between some of them */
async function dribble(m: Mta, b: Buffer, max = 7): Promise<void> {
  for (let at = 0, k = 0; at < b.length; k++) {
    const n = 1 + ((k * 5) % max);
    m.send(b.subarray(at, at + n));
    at += n;
    if (k % 4 === 0) await sleep(2);
  }
}

describe('smtp mode: BDAT relayed to a destination that offers CHUNKING', () => {
  it('EHLO offers CHUNKING and BINARYMIME; a message in chunks split across many reads arrives byte for byte; BDAT 0 LAST; the last chunk and the next MAIL in one write', async () => {
    const x = await mkDest();
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    const e = await m.cmd('EHLO mta.example\r\n');
    expect(e.text).toMatch(/\n250-CHUNKING\n250 BINARYMIME$/);
    expect((await m.cmd('MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n')).code).toBe(250);
    expect((await m.cmd('RCPT TO:<b@example.net>\r\n')).code).toBe(250);
    // what would end a DATA body, dot lines, commands, 8-bit octets, a bare LF and a bare CR, NULs
    const c1 = Buffer.from('Subject: chunks\r\n\r\nline\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<evil@y>\r\n', 'latin1');
    const c2 = Buffer.from('.leading dot\r\n..two\r\nbare\nLF and bare\rCR\r\n\x00\xff\xfe caf\xe9\r\n.\r\nQUIT\r\nBDAT 5 LAST\r\n', 'latin1');
    const c3 = randomBytes(70_000);
    let n = m.replies.length;
    await dribble(m, bdat(c1));
    expect((await m.reply(n)).text).toBe(`250 2.0.0 ${c1.length} octets received`);
    n = m.replies.length;
    await dribble(m, bdat(c2));
    expect((await m.reply(n)).text).toBe(`250 2.0.0 ${c2.length} octets received`);
    // a big chunk and an empty last one, pipelined with the next transaction's MAIL in one write
    m.send(Buffer.concat([bdat(c3), bdat('', true), Buffer.from('MAIL FROM:<second@example.com>\r\n')]));
    const r = await m.waitReplies(m.replies.length + 3);
    expect(r.slice(-3).map((x) => x.text)).toEqual([`250 2.0.0 ${c3.length} octets received`, '250 2.0.0 queued as 1', '250 2.1.0 sender ok']);
    expect(x.messages).toHaveLength(1);
    expect(x.messages[0]?.data.equals(Buffer.concat([c1, c2, c3]))).toBe(true);
    expect(x.messages[0]?.from).toBe('MAIL FROM:<a@example.com> BODY=BINARYMIME');
    // the second transaction: one chunk with LAST, and its last octet arrives alone
    expect((await m.cmd('RCPT TO:<c@example.net>\r\n')).code).toBe(250);
    const one = Buffer.from('Subject: two\r\n\r\nx\r\n');
    m.send(bdat(one, true).subarray(0, -1));
    await sleep(100);
    expect(m.replies.at(-1)?.text).toBe('250 2.1.5 recipient ok');
    expect((await m.cmd(one.subarray(-1))).text).toBe('250 2.0.0 queued as 2');
    expect(x.messages[1]?.data.equals(one)).toBe(true);
    // the destination saw exactly the MTA's command lines, in order, on one connection
    expect(x.lines).toEqual([
      '1: EHLO mail-127.0.0.2.example',
      '1: MAIL FROM:<a@example.com> BODY=BINARYMIME',
      '1: RCPT TO:<b@example.net>',
      `1: BDAT ${c1.length}`,
      `1: BDAT ${c2.length}`,
      `1: BDAT ${c3.length}`,
      '1: BDAT 0 LAST',
      '1: MAIL FROM:<second@example.com>',
      '1: RCPT TO:<c@example.net>',
      `1: BDAT ${one.length} LAST`,
    ]);
    expect((await m.cmd('XMTAPROXY\r\n')).text).toMatch(/reused=yes .* transactions=2$/);
    // one record per transaction, the chunks' octets summed
    expect(await d.waitForLine(new RegExp(`smtp\\(mta1\\): .* bytes=${c1.length + c2.length + c3.length} BDAT -> 250 2\\.0\\.0 queued as 1`))).toMatch(/rcpt=1\/1/);
    await d.waitForLine(new RegExp(`smtp\\(mta1\\): .* reused .* bytes=${one.length} BDAT -> 250 2\\.0\\.0 queued as 2`));
    expect((await m.cmd('QUIT\r\n')).code).toBe(221);
  });

  it('a pipelined MAIL, RCPTs and BDAT in one write: the group ends before BDAT, every reply in order', async () => {
    const x = await mkDest();
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    const n = m.replies.length;
    const body = Buffer.from('Subject: p\r\n\r\nRCPT TO:<not-a-command@x>\r\n.\r\n', 'latin1');
    m.send(Buffer.concat([Buffer.from('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n'), bdat(body.subarray(0, 9)), bdat(body.subarray(9), true), Buffer.from('NOOP\r\n')]));
    const r = await m.waitReplies(n + 6);
    expect(r.slice(n).map((q) => q.text)).toEqual(['250 2.1.0 sender ok', '250 2.1.5 recipient ok', '250 2.1.5 recipient ok', '250 2.0.0 9 octets received', '250 2.0.0 queued as 1', '250 2.0.0 OK']);
    expect(x.messages[0]?.data.equals(body)).toBe(true);
    expect(x.messages[0]?.to).toEqual(['RCPT TO:<b@example.net>', 'RCPT TO:<c@example.net>']);
  });

  it('no reply to a chunk within data_done_timeout: 451 from the proxy, and that connection is not reused', async () => {
    const x = await mkDest({ chunkReply: ({ data }) => (data.includes('hang') ? null : undefined) as string | null });
    const d = await proxy([x.port], 'data_done_timeout = "1s"\n');
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    const t0 = Date.now();
    expect((await m.cmd(bdat('please hang\r\n', true))).text).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed during this transaction \(destination did not answer within 1000ms\)/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(await until(() => x.open === 0)).toBe(true);
    expect((await m.cmd('RSET\r\n')).code).toBe(250);
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('fine\r\n', true))).text).toBe('250 2.0.0 queued as 1');
    expect(x.connections).toBe(2);
  });

  it('outside a transaction 503, a syntax error 501, after the octets: nothing in them is read as a command', async () => {
    const x = await mkDest();
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    expect((await m.cmd(bdat('QUIT\r\nRSET\r\n', true))).text).toBe('503 5.5.1 mtaproxy: no transaction (send MAIL first)');
    for (const bad of ['BDAT', 'BDAT x', 'BDAT -1', 'BDAT 1 FIRST', 'BDAT 99999999999999']) expect((await m.cmd(`${bad}\r\n`)).code, bad).toBe(501);
    expect((await m.cmd('NOOP\r\n')).code).toBe(250);
    expect(m.closed).toBe(false);
    expect(x.lines).toEqual(['1: EHLO mail-127.0.0.2.example']);
    expect((await m.cmd('QUIT\r\n')).code).toBe(221);
  });

  it('a refused chunk: its reply verbatim, the transaction open until RSET; a MAIL after a refused chunk gets an RSET first', async () => {
    const x = await mkDest({ chunkReply: ({ n, data }) => (n === 1 || data.includes('refuse') ? '552-5.3.4 chunk too big\r\n552 5.3.4 for this mailbox\r\n' : undefined) as string | null });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('first\r\n'))).code).toBe(250);
    expect((await m.cmd(bdat('second\r\n'))).text).toBe('552-5.3.4 chunk too big\n552 5.3.4 for this mailbox');
    // the destination answers what it answers to more chunks (RFC 3030 §2): relayed
    expect((await m.cmd(bdat('third\r\n', true))).text).toBe('554 5.5.0 earlier chunk failed');
    expect((await m.cmd('RSET\r\n')).text).toBe('250 2.0.0 reset');
    await d.waitForLine(/smtp\(mta1\): .* bytes=22 RSET after a refused BDAT -> 552 5\.3\.4/);
    // a refused BDAT LAST, then straight to MAIL: the proxy sends RSET first
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('please refuse\r\n', true))).code).toBe(552);
    expect((await m.cmd('MAIL FROM:<again@example.com>\r\n')).code).toBe(250);
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('fine\r\n', true))).text).toBe('250 2.0.0 queued as 1');
    expect(x.lines.slice(-6)).toEqual(['1: RCPT TO:<b@example.net>', '1: BDAT 15 LAST', '1: RSET', '1: MAIL FROM:<again@example.com>', '1: RCPT TO:<b@example.net>', '1: BDAT 6 LAST']);
    expect(x.messages.map((q) => q.data.toString())).toEqual(['fine\r\n']);
    expect(x.connections).toBe(1);
  });

  it('the destination dropping mid-chunk: the rest of the chunk is consumed, 451 never 250, later BDATs 451 too, then a new connection', async () => {
    const x = await mkDest({ dropAfter: 30_000 });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    // chunk data that reads as commands after the drop if it were not consumed
    const evil = Buffer.from('\r\nRSET\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<evil@y>\r\nBDAT 3 LAST\r\nabc'.repeat(2000), 'latin1');
    const n = m.replies.length;
    m.send(Buffer.concat([Buffer.from(`BDAT ${evil.length}\r\n`), evil.subarray(0, 40_000)]));
    await until(() => x.connections === 1 && x.open === 0);
    m.send(Buffer.concat([evil.subarray(40_000), Buffer.from('NOOP\r\n')]));
    const r = await m.waitReplies(n + 2);
    expect(r[n]?.text).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed during this transaction/);
    expect(r[n + 1]?.code).toBe(250);
    expect(r.slice(n).some((q) => /evil|queued/.test(q.text))).toBe(false);
    // a later chunk of that transaction: consumed, the proxy's 451
    expect((await m.cmd(bdat('QUIT\r\n', true))).text).toMatch(/^451 4\.4\.2 mtaproxy: this transaction already failed/);
    expect((await m.cmd('RSET\r\n')).code).toBe(250);
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('ok\r\n', true))).text).toBe('250 2.0.0 queued as 1');
    expect(x.connections).toBe(2);
    expect(x.lines.filter((l) => /evil/.test(l))).toEqual([]);
    await d.waitForLine(/smtp\(mta1\): .* lost: destination/);
  });

  it('a destination that stops reading mid-chunk: the MTA is paused, then 451 after data_block_timeout, the rest consumed', async () => {
    const x = await mkDest({ stallAfter: 1 });
    const d = await proxy([x.port], 'data_block_timeout = "1500ms"\n');
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    const big = Buffer.alloc(40_000_000, 'MAIL FROM:<x@y>\r\n');
    const n = m.replies.length;
    const t0 = Date.now();
    m.send(Buffer.concat([bdat(big, true), Buffer.from('NOOP\r\n')]));
    await sleep(700);
    // the proxy stopped reading the MTA: most of the chunk still waits in the MTA's own buffer
    // (the loopback socket buffers on both sides hold a few MB), nothing buffered for it in the proxy
    expect(m.sock.writableLength).toBeGreaterThan(15_000_000);
    expect(m.replies.length).toBe(n);
    const r = await m.waitReplies(n + 2, 30_000);
    expect(r[n]?.text).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed during this transaction \(destination took no DATA for 1500ms\)/);
    expect(r[n + 1]?.text).toBe('250 2.0.0 OK');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    expect(x.octets).toBeLessThan(big.length / 2);
    expect(x.messages).toEqual([]);
  }, 60_000);

  it('a destination that answers before the chunk is complete broke the protocol: 451 after the chunk, never its 250', async () => {
    const x = await mkDest({ early: { at: 100, reply: '250 2.0.0 queued early\r\n' } });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    const n = m.replies.length;
    const chunk = Buffer.alloc(50_000, 'NOOP\r\n');
    m.send(Buffer.concat([Buffer.from(`BDAT ${chunk.length} LAST\r\n`), chunk.subarray(0, 1000)]));
    await until(() => x.open === 0);
    m.send(Buffer.concat([chunk.subarray(1000), Buffer.from('RSET\r\n')]));
    const r = await m.waitReplies(n + 2);
    expect(r[n]?.text).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed during this transaction \(unexpected reply from the destination: 250 2\.0\.0 queued early\)/);
    expect(r[n + 1]?.text).toBe('250 2.0.0 OK');
    expect(m.replies.length).toBe(n + 2);
  });

  it('a 421 to a chunk ends the transaction: passed back, that connection retired, the rest of the message 451 until RSET', async () => {
    const x = await mkDest({ chunkReply: ({ n }) => (n === 0 ? '421 4.3.2 shutting down\r\n' : undefined) as string | null });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('one\r\n'))).text).toBe('421 4.3.2 shutting down');
    expect((await m.cmd(bdat('two\r\nQUIT\r\n', true))).text).toMatch(/^451 4\.4\.2 mtaproxy: this transaction already failed/);
    expect(await until(() => x.open === 0)).toBe(true);
    expect((await m.cmd('RSET\r\n')).text).toBe('250 2.0.0 OK');
    expect(x.lines.filter((l) => l.startsWith('1: BDAT'))).toEqual(['1: BDAT 5']);
  });

  it('the MTA disconnecting mid-chunk: the destination connection is destroyed and never sees the chunk complete', async () => {
    const x = await mkDest();
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    await m.cmd('EHLO mta.example\r\n');
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    m.send(bdat('Subject: half\r\n\r\n' + 'x'.repeat(1000), true).subarray(0, 500));
    await until(() => x.octets >= 400);
    m.sock.end();
    expect(await until(() => x.open === 0)).toBe(true);
    expect(x.messages).toEqual([]);
    expect(x.lines.at(-1)).toBe('1: BDAT 1017 LAST');
    await d.waitForLine(/smtp\(mta1\): .* mta gone mid-BDAT/);
  });

  it('a borrowed connection without CHUNKING (another server behind the address): 451 from the proxy, octets consumed, nothing sent', async () => {
    // connection 1 offers CHUNKING and closes after its first transaction; connection 2 does not
    const x = await mkDest({ ehlo: (c) => (c === 1 ? ['bdat.example', 'PIPELINING', 'CHUNKING'] : ['other.example', 'PIPELINING']), closeAfterFirst: (c) => c === 1 });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    expect((await m.cmd('EHLO mta.example\r\n')).text).toMatch(/CHUNKING/);
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect((await m.cmd(bdat('one\r\n', true))).code).toBe(250);
    await until(() => x.open === 0);
    await m.cmd('MAIL FROM:<a@example.com>\r\n');
    await m.cmd('RCPT TO:<b@example.net>\r\n');
    expect(x.connections).toBe(2);
    expect((await m.cmd(bdat('RSET\r\nQUIT\r\n', true))).text).toMatch(/^451 4\.3\.3 mtaproxy: the destination connection of this transaction does not offer CHUNKING/);
    expect((await m.cmd('RSET\r\n')).text).toBe('250 2.0.0 reset');
    expect(x.lines.filter((l) => l.startsWith('2: '))).toEqual(['2: EHLO mail-127.0.0.2.example', '2: MAIL FROM:<a@example.com>', '2: RCPT TO:<b@example.net>', '2: RSET']);
  });

  it('a link to a destination without CHUNKING does not offer it, and BDAT stays an unknown command there', async () => {
    const x = await mkDest({ ehlo: () => ['plain.example', 'PIPELINING', 'BINARYMIME'] });
    const d = await proxy([x.port]);
    await mtaControl(d);
    const m = await link(d, '127.0.0.1', x.port);
    expect((await m.cmd('EHLO mta.example\r\n')).text).toBe('250-plain.example\n250 PIPELINING');
    expect((await m.cmd('BDAT 6\r\n')).code).toBe(502);
    // its "octets" are command lines here
    expect((await m.cmd('NOOP\r\n')).code).toBe(250);
  });
});

// ---------------------------------------------------------------------------------------------

const unavailable = postfixUnavailable();
if (unavailable !== null) console.warn(`SKIPPED smtp-chunking Postfix tests: ${unavailable}`);

describe.skipIf(unavailable !== null)('smtp mode: BDAT to a real Postfix', () => {
  let pf: PostfixInstance;
  let d: RunningDaemon;
  beforeAll(async () => {
    pf = await startPostfix({ address: '127.0.0.13', tls: false, maxMessageSize: 30 * 1024 * 1024 });
    d = await startDaemon({
      extra: `[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\nports = [${pf.port}]\nallow_private_destinations = true\nthrottle_wait_timeout = "30s"\n[smtp]\nidle_timeout = "60s"\n`,
    });
  }, 120_000);
  afterAll(async () => {
    await d?.stop();
    await pf?.stop();
  }, 60_000);
  afterEach(() => {
    for (const s of socks.splice(0)) s.destroy();
    for (const c of clients.splice(0)) c.destroy();
  });

  const header = (tag: string): string => `From: <sender@src.test>\r\nTo: <x@dest.test>\r\nSubject: ${tag}\r\nMessage-ID: <${tag}@src.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`;

  it('two MTA links share one Postfix connection with BDAT: a 10 MB message in 1 MB chunks and one with what would end DATA, byte for byte', async () => {
    await mtaControl(d, 'server-a', '127.0.0.3', 'pf');
    await mtaControl(d, 'server-b', '127.0.0.3', 'pf');
    const since = await pf.mark();
    const a = await link(d, pf.host, pf.port, 'server-a', '127.0.0.3', 'pf');
    expect((await a.cmd('EHLO mta.src.test\r\n')).text).toMatch(/CHUNKING/);
    expect((await a.cmd('MAIL FROM:<sender@src.test>\r\n')).code).toBe(250);
    expect((await a.cmd(`RCPT TO:<a@${pf.domain}>\r\n`)).code).toBe(250);
    const tagA = `a-${randomBytes(4).toString('hex')}`;
    const msgA = Buffer.from(`${header(tagA)}line\r\n.\r\n.leading dot\r\n..two dots\r\nMAIL FROM:<evil@x>\r\ncaf\u00e9 \u00fcber\r\n.\r\n`, 'utf8');
    // split inside "\r\n.\r\n"
    const cut = msgA.indexOf('\r\n.\r\n') + 3;
    expect((await a.cmd(bdat(msgA.subarray(0, cut)))).code).toBe(250);
    expect((await a.cmd(bdat(msgA.subarray(cut), true))).text).toMatch(/^250 2\.0\.0 Ok: \d+ bytes queued as/);
    expect((await a.cmd('QUIT\r\n')).code).toBe(221);

    const b = await link(d, pf.host, pf.port, 'server-b', '127.0.0.3', 'pf');
    await b.cmd('EHLO mta.src.test\r\n');
    expect((await b.cmd('MAIL FROM:<sender@src.test>\r\n')).code).toBe(250);
    expect((await b.cmd(`RCPT TO:<b@${pf.domain}>\r\n`)).code).toBe(250);
    const tagB = `b-${randomBytes(4).toString('hex')}`;
    const msgB = Buffer.concat([Buffer.from(header(tagB)), Buffer.from(randomBytes(7_600_000).toString('base64').replace(/.{76}/g, '$&\r\n') + '\r\n.dot after 10 MB\r\n')]);
    expect(msgB.length).toBeGreaterThan(10_000_000);
    const MB = 1024 * 1024;
    for (let at = 0; at < msgB.length; at += MB) {
      const r = await b.cmd(bdat(msgB.subarray(at, at + MB), at + MB >= msgB.length), 60_000);
      expect(r.code, `chunk at ${at}`).toBe(250);
    }
    expect((await b.cmd('XMTAPROXY\r\n')).text).toMatch(/reused=yes .* transactions=2$/);
    expect((await b.cmd('QUIT\r\n')).code).toBe(221);

    const stats = await pf.waitForStats((s) => s.transactions >= 2, { since, timeoutMs: 30_000 });
    expect(stats.byClient['127.0.0.3']?.connections).toBe(1);
    expect(stats.byClient['127.0.0.3']?.transactions).toBe(2);
    const got = await pf.waitForMessages(2, { timeoutMs: 30_000, filter: (q) => q.data.includes(tagA) || q.data.includes(tagB) });
    const byTag = (t: string) => got.find((q) => q.data.includes(`Subject: ${t}`));
    expect(byTag(tagA)?.data.equals(msgA)).toBe(true);
    expect(byTag(tagB)?.data.equals(msgB)).toBe(true);
  }, 180_000);
});
