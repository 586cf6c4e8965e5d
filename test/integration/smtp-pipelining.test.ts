// smtp mode relays a pipelined group (RFC 2920 §3.1: MAIL, RCPTs, DATA) to the destination in one
// write when the destination offered PIPELINING, and passes the destination's replies back in
// order, each verbatim. Against a destination that answers only once it has read the whole group
// (so a proxy that waited for each reply before sending the next command would hang), against
// smtp-server, and against a real Postfix (test/helpers/postfix.ts). The MTA is a raw socket.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../helpers/postfix.js';

/** The MTA side: a raw socket that counts complete replies. */
class Mta {
  readonly sock: Socket;
  replies: { code: number; text: string }[] = [];
  /** how many socket reads brought replies (one read per turn when the proxy coalesces) */
  reads = 0;
  closed = false;
  #partial: string[] = [];
  #buf = '';
  #waiters: { n: number; resolve: () => void }[] = [];
  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      this.reads++;
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
      this.#wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    sock.on('error', () => {});
    sock.resume();
  }
  #wake(): void {
    for (const w of [...this.#waiters]) {
      if (this.replies.length >= w.n || this.closed) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }
  /** the next `n` replies after the `from` first ones (fails the test on a timeout) */
  async next(from: number, n: number, timeoutMs = 10_000): Promise<{ code: number; text: string }[]> {
    if (this.replies.length < from + n && !this.closed) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${this.replies.length - from} of ${n} replies after ${timeoutMs}ms: ${JSON.stringify(this.replies.slice(from))}`)), timeoutMs);
        this.#waiters.push({ n: from + n, resolve: () => { clearTimeout(t); resolve(); } });
      });
    }
    return this.replies.slice(from, from + n);
  }
  async send(text: string | Buffer, n: number): Promise<{ code: number; text: string }[]> {
    const from = this.replies.length;
    this.sock.write(text);
    return this.next(from, n);
  }
}

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
const socks: Socket[] = [];
const closers: (() => void)[] = [];
afterEach(async () => {
  for (const s of socks.splice(0)) s.destroy();
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
  for (const c of closers.splice(0)) c();
});

async function proxy(port: number): Promise<RunningDaemon> {
  const d = await startDaemon({
    extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${port}]\nallow_private_destinations = true\nthrottle_wait_timeout = "10s"\n[smtp]\nidle_timeout = "30s"\n`,
  });
  running.push(d);
  const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'mta1', secret: SECRET });
  clients.push(c);
  await c.declare({ key: 'dest', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 100_000, mode: 'average' });
  return d;
}

async function link(d: RunningDaemon, host: string, port: number, ehlo = 'mail-2.example'): Promise<Mta> {
  const t = await openTunnel({ host: '127.0.0.1', port: d.port, name: 'mta1', secret: SECRET, source: '127.0.0.2', destination: { host, port }, throttle: 'dest', smtp: { ehlo, tls: 'opportunistic' } });
  socks.push(t.socket);
  const m = new Mta(t.socket);
  await m.next(0, 1); // the greeting
  const [e] = await m.send('EHLO mta.example\r\n', 1);
  expect(e?.text).toMatch(/PIPELINING/);
  return m;
}

/**
 * A destination that offers PIPELINING and answers as RFC 2920 §3.2 lets a server: the replies to
 * what one read brought leave together, once it has no more input (or at DATA). It records the
 * TCP read in which each command line came, so a test sees how the proxy wrote them.
 */
interface GroupDest {
  port: number;
  /** per command line, the number of the read it arrived in */
  lines: { line: string; read: number }[];
  bodies: string[];
  server: Server;
}
async function groupDest(): Promise<GroupDest> {
  const server = createServer();
  const d: GroupDest = { port: 0, lines: [], bodies: [], server };
  const sockets = new Set<Socket>();
  server.on('connection', (sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
    sock.write('220 group.example ESMTP\r\n');
    let buf = '';
    let reads = 0;
    let held: string[] = [];
    let inBody = false;
    let rcpts = 0;
    sock.on('data', (c: Buffer) => {
      reads++;
      buf += c.toString('latin1');
      for (;;) {
        if (inBody) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end === -1) return;
          d.bodies.push(buf.slice(0, end + 2));
          buf = buf.slice(end + 5);
          inBody = false;
          sock.write('250 2.0.0 group.example queued\r\n');
          continue;
        }
        const i = buf.indexOf('\r\n');
        if (i === -1) {
          // no more input: flush
          if (held.length > 0) sock.write(held.join(''));
          held = [];
          break;
        }
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        d.lines.push({ line, read: reads });
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') sock.write('250-group.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
        else if (verb === 'MAIL') {
          rcpts = 0;
          held.push('250 2.1.0 sender ok\r\n');
        } else if (verb === 'RCPT') {
          if (line.includes('reject')) held.push('550-5.1.1 no such user\r\n550 5.1.1 here\r\n');
          else {
            rcpts++;
            held.push('250 2.1.5 recipient ok\r\n');
          }
        } else if (verb === 'DATA') {
          held.push(rcpts > 0 ? '354 go ahead\r\n' : '554 5.5.1 no valid recipients\r\n');
          inBody = rcpts > 0;
          sock.write(held.join(''));
          held = [];
        } else if (verb === 'QUIT') return void sock.end('221 bye\r\n');
        else {
          sock.write(held.join('') + '250 2.0.0 ok\r\n');
          held = [];
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  d.port = (server.address() as AddressInfo).port;
  closers.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return d;
}

describe('smtp mode: pipelined groups go to the destination in one write (RFC 2920)', () => {
  it('MAIL + 3 RCPT + DATA in one write: the destination reads them in one read and answers them at once; 5 replies in order, then the body', async () => {
    const x = await groupDest();
    const d = await proxy(x.port);
    const m = await link(d, '127.0.0.1', x.port);
    const before = m.reads;
    const r = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<one@dest.example>\r\nRCPT TO:<reject-two@dest.example>\r\nRCPT TO:<three@dest.example>\r\nDATA\r\n', 5);
    expect(r.map((y) => y.code)).toEqual([250, 250, 550, 250, 354]);
    expect(r[2]?.text).toBe('550-5.1.1 no such user\n550 5.1.1 here');
    // the five replies reached the MTA together (one write of the proxy)
    expect(m.reads - before).toBe(1);
    const group = x.lines.filter((l) => /^(MAIL|RCPT|DATA)/.test(l.line));
    expect(group).toHaveLength(5);
    expect(new Set(group.map((l) => l.read)).size).toBe(1);
    const [done] = await m.send('Subject: g\r\n\r\n.dot\r\n.\r\n', 1);
    expect(done?.text).toBe('250 2.0.0 group.example queued');
    expect(x.bodies).toEqual(['Subject: g\r\n\r\n.dot\r\n']);
    // and the next transaction, pipelined again on the same connection
    const r2 = await m.send('MAIL FROM:<b@src.example>\r\nRCPT TO:<four@dest.example>\r\nDATA\r\n', 3);
    expect(r2.map((y) => y.code)).toEqual([250, 250, 354]);
    expect((await m.send('second\r\n.\r\nQUIT\r\n', 2)).map((y) => y.code)).toEqual([250, 221]);
  });

  it('a line that cannot be in the group (NOOP) ends it: the group goes first, NOOP after, every reply in order', async () => {
    const x = await groupDest();
    const d = await proxy(x.port);
    const m = await link(d, '127.0.0.1', x.port);
    const r = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<one@dest.example>\r\nNOOP\r\nRCPT TO:<two@dest.example>\r\nDATA\r\n', 5);
    expect(r.map((y) => y.code)).toEqual([250, 250, 250, 250, 354]);
    expect(x.lines.map((l) => l.line.split(':')[0])).toEqual(['EHLO mail-2.example', 'MAIL FROM', 'RCPT TO', 'NOOP', 'RCPT TO', 'DATA']);
    expect((await m.send('b\r\n.\r\n', 1))[0]?.code).toBe(250);
  });

  it('a group with every RCPT refused: DATA gets the destination\'s own 554, and the link goes on', async () => {
    const x = await groupDest();
    const d = await proxy(x.port);
    const m = await link(d, '127.0.0.1', x.port);
    const r = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<reject-1@dest.example>\r\nDATA\r\n', 3);
    expect(r.map((y) => y.code)).toEqual([250, 550, 554]);
    expect(r[2]?.text).toBe('554 5.5.1 no valid recipients');
    expect((await m.send('RSET\r\n', 1))[0]?.code).toBe(250);
    const r2 = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<ok@dest.example>\r\nDATA\r\n', 3);
    expect(r2.map((y) => y.code)).toEqual([250, 250, 354]);
  });
});

describe('smtp mode pipelining against smtp-server', () => {
  let srv: SMTPServer;
  let port = 0;
  const got: { from: string; to: string[]; sha256: string; size: number }[] = [];
  beforeAll(async () => {
    srv = new SMTPServer({
      authOptional: true,
      size: 50 * 1024 * 1024,
      logger: false,
      onMailFrom(address, _session, cb) {
        if (address.address.startsWith('refused')) return cb(Object.assign(new Error('5.7.1 sender refused'), { responseCode: 550 }));
        cb();
      },
      onRcptTo(address, _session, cb) {
        if (address.address.startsWith('reject')) return cb(Object.assign(new Error('5.1.1 no such user here'), { responseCode: 550 }));
        cb();
      },
      onData(stream, session, cb) {
        const h = createHash('sha256');
        let size = 0;
        stream.on('data', (c: Buffer) => {
          h.update(c);
          size += c.length;
        });
        stream.on('end', () => {
          got.push({ from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address, to: session.envelope.rcptTo.map((r) => r.address), sha256: h.digest('hex'), size });
          cb();
        });
      },
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    port = (srv.server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => srv.close(() => r()));
  });

  it('a refused RCPT in the middle of a group; then a refused MAIL with RCPTs and DATA pipelined behind it: the destination\'s own replies, in order', async () => {
    const d = await proxy(port);
    const m = await link(d, '127.0.0.1', port);
    const r = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<one@dest.example>\r\nRCPT TO:<reject@dest.example>\r\nRCPT TO:<three@dest.example>\r\nDATA\r\n', 5);
    expect(r.map((y) => y.code)).toEqual([250, 250, 550, 250, 354]);
    expect(r[2]?.text).toMatch(/^550 5\.1\.1 no such user here/);
    expect((await m.send('Subject: x\r\n\r\nhello\r\n.\r\n', 1))[0]?.code).toBe(250);
    expect(got.at(-1)?.to).toEqual(['one@dest.example', 'three@dest.example']);
    const n = got.length;
    const r2 = await m.send('MAIL FROM:<refused@src.example>\r\nRCPT TO:<one@dest.example>\r\nDATA\r\n', 3);
    expect(r2[0]?.code).toBe(550);
    expect(r2[0]?.text).toMatch(/sender refused/);
    // smtp-server's own "503 Error: need MAIL command" to RCPT and DATA: the proxy invents nothing
    expect(r2.slice(1).map((y) => y.code)).toEqual([503, 503]);
    expect(r2[1]?.text).toMatch(/MAIL/);
    expect(got.length).toBe(n);
    // the link and the connection go on
    const r3 = await m.send('MAIL FROM:<a@src.example>\r\nRCPT TO:<four@dest.example>\r\nDATA\r\n', 3);
    expect(r3.map((y) => y.code)).toEqual([250, 250, 354]);
    expect((await m.send('again\r\n.\r\nXMTAPROXY\r\n', 2)).map((y) => y.code)).toEqual([250, 250]);
    expect(m.replies.at(-1)?.text).toMatch(/reused=yes/);
  });

  it('a 10 MB body behind a pipelined group arrives intact', async () => {
    const d = await proxy(port);
    const m = await link(d, '127.0.0.1', port);
    const r = await m.send('MAIL FROM:<big@src.example>\r\nRCPT TO:<big@dest.example>\r\nDATA\r\n', 3);
    expect(r.map((y) => y.code)).toEqual([250, 250, 354]);
    // base64 lines (76 chars), some starting with a dot (dot-stuffed by the MTA)
    const lines: string[] = ['Subject: big', ''];
    const raw = randomBytes(7.5 * 1024 * 1024).toString('base64');
    for (let i = 0; i < raw.length; i += 76) lines.push((i % 7600 === 0 ? '.' : '') + raw.slice(i, i + 76));
    const text = `${lines.join('\r\n')}\r\n`;
    const stuffed = text.replace(/^\./gm, '..');
    const [done] = await m.send(`${stuffed}.\r\n`, 1);
    expect(done?.code).toBe(250);
    const last = got.at(-1);
    expect(last?.from).toBe('big@src.example');
    expect(last?.size).toBe(Buffer.byteLength(text));
    expect(last?.sha256).toBe(createHash('sha256').update(text).digest('hex'));
    expect(last?.size).toBeGreaterThan(10 * 1024 * 1024);
  }, 60_000);
});

const unavailable = postfixUnavailable();
if (unavailable !== null) console.warn(`SKIPPED smtp-pipelining Postfix tests: ${unavailable}`);

describe.skipIf(unavailable !== null)('smtp mode pipelining against Postfix', () => {
  let pf: PostfixInstance;
  let maps: string;
  beforeAll(async () => {
    maps = mkdtempSync(join(tmpdir(), 'mtaproxy-pipelining-'));
    writeFileSync(join(maps, 'senders'), '/^refused@/ REJECT 5.7.1 sender refused here\n');
    // smtpd_delay_reject = no: the sender is refused at MAIL FROM, not at the first RCPT
    pf = await startPostfix({ address: '127.0.0.15', maxMessageSize: 20 * 1024 * 1024, mainCf: { smtpd_delay_reject: 'no', smtpd_sender_restrictions: `check_sender_access regexp:${join(maps, 'senders')}` } });
  }, 120_000);
  afterAll(async () => {
    await pf?.stop();
    if (maps !== undefined) rmSync(maps, { recursive: true, force: true });
  }, 60_000);

  it('MAIL + 3 RCPT (one refused) + DATA in one write, then a refused MAIL with pipelined RCPT and DATA (Postfix\'s own 503s), then a 10 MB message: replies in order, bytes intact', async () => {
    const d = await proxy(pf.port);
    const m = await link(d, pf.host, pf.port, 'mail-2.src.test');
    const since = await pf.mark();
    const r = await m.send(`MAIL FROM:<a@src.test>\r\nRCPT TO:<one@${pf.domain}>\r\nRCPT TO:<reject-two@${pf.domain}>\r\nRCPT TO:<three@${pf.domain}>\r\nDATA\r\n`, 5);
    expect(r.map((y) => y.code)).toEqual([250, 250, 550, 250, 354]);
    expect(r[2]?.text).toMatch(/^550 5\.1\.1 <reject-two@/);
    const [q1] = await m.send(`From: <a@src.test>\r\nSubject: pipelined\r\nMessage-ID: <p1@src.test>\r\n\r\n.leading dot\r\n`.replace(/^\./gm, '..') + '.\r\n', 1);
    expect(q1?.code).toBe(250);

    const r2 = await m.send(`MAIL FROM:<refused@src.test>\r\nRCPT TO:<one@${pf.domain}>\r\nDATA\r\n`, 3);
    expect(r2.map((y) => y.code)).toEqual([554, 503, 503]);
    expect(r2[0]?.text).toMatch(/sender refused here/);
    expect(r2[1]?.text).toMatch(/^503 5\.5\.1 Error: need MAIL command/);

    const body = randomBytes(7.6 * 1024 * 1024).toString('base64').replace(/.{76}/g, '$&\r\n');
    const big = `From: <a@src.test>\r\nSubject: big\r\nMessage-ID: <p2@src.test>\r\n\r\n${body}\r\n`;
    const r3 = await m.send(`MAIL FROM:<big@src.test>\r\nRCPT TO:<big@${pf.domain}>\r\nDATA\r\n`, 3);
    expect(r3.map((y) => y.code)).toEqual([250, 250, 354]);
    const [q3] = await m.send(`${big}.\r\n`, 1);
    expect(q3?.code).toBe(250);

    // p1 had two accepted recipients (the harness delivers one copy per recipient), p2 one
    const msgs = await pf.waitForMessages(3, { timeoutMs: 30_000, filter: (x) => /Message-ID: <p[12]@src\.test>/.test(x.raw.toString('latin1')) });
    const p1 = msgs.filter((x) => x.raw.includes('<p1@src.test>'));
    expect(p1.map((x) => x.recipient).sort()).toEqual([`one@${pf.domain}`, `three@${pf.domain}`]);
    for (const x of p1) expect(x.data.toString('latin1')).toBe('From: <a@src.test>\r\nSubject: pipelined\r\nMessage-ID: <p1@src.test>\r\n\r\n.leading dot\r\n');
    const p2 = msgs.find((x) => x.raw.includes('<p2@src.test>'));
    expect(p2?.data.length).toBe(Buffer.byteLength(big));
    expect(p2?.data.equals(Buffer.from(big, 'latin1'))).toBe(true);
    const s = await pf.stats(since);
    // one connection carried the transactions (and the refused MAIL)
    expect(s.connections).toBeLessThanOrEqual(1);
    expect((await m.send('QUIT\r\n', 1))[0]?.code).toBe(221);
  }, 120_000);
});
