// smtp mode against a real Postfix from Debian as the destination (test/helpers/postfix.ts: a
// private instance on loopback with STARTTLS and smtpd_client_connection_count_limit = 2):
// transactions of different MTAs over one TCP connection, bytes intact, per-recipient replies,
// the connection limit shared at transaction granularity, and a destination that dies mid-DATA.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../helpers/postfix.js';

const unavailable = postfixUnavailable();
if (unavailable !== null) console.warn(`SKIPPED smtp-postfix tests: ${unavailable}`);

const LIMIT = 2;
const WAIT = { timeoutMs: 30_000 };

describe.skipIf(unavailable !== null)('smtp mode with Postfix as the destination', () => {
  let pf: PostfixInstance;
  let d: RunningDaemon;
  const clients: ControlClient[] = [];

  beforeAll(async () => {
    // service_throttle_time: Postfix's master stops spawning smtpd for 60 s after one dies
    // abnormally, and the last test kills one on purpose
    pf = await startPostfix({ address: '127.0.0.12', connectionLimit: LIMIT, maxMessageSize: 20 * 1024 * 1024, mainCf: { service_throttle_time: '1s' } });
    d = await startDaemon({
      extra: `[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]\nports = [${pf.port}]\nallow_private_destinations = true\nthrottle_wait_timeout = "30s"\n[smtp]\nidle_timeout = "60s"\n`,
    });
  }, 120_000);
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await d?.stop();
    await pf?.stop();
  }, 60_000);
  const sockets: Socket[] = [];
  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy();
    for (const x of sockets.splice(0)) x.destroy();
  });

  async function mta(name: string, source: string, throttle: string): Promise<void> {
    const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name, secret: SECRET });
    clients.push(c);
    await c.declare({ key: throttle, sourceIp: source, maxConnections: LIMIT, maxMessagesPerHour: 1_000_000, mode: 'average' });
  }

  async function link(name: string, source: string, throttle: string): Promise<{ smtp: SMTPConnection; socket: Socket; reused: boolean | undefined }> {
    const l = await rawLink(name, source, throttle);
    const smtp = new SMTPConnection({ connection: l.socket, name: 'mta.src.test', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
    await new Promise<void>((resolve, reject) => {
      smtp.once('error', reject);
      smtp.connect(() => resolve());
    });
    smtp.on('error', () => {});
    return { smtp, socket: l.socket, reused: l.smtp?.reused };
  }

  async function rawLink(name: string, source: string, throttle: string): ReturnType<typeof openTunnel> {
    const l = await openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source, destination: { host: pf.host, port: pf.port }, throttle, smtp: { ehlo: `mail-${source}.src.test` } });
    sockets.push(l.socket);
    return l;
  }

  type Info = { accepted: string[]; rejected: string[]; response: string; rejectedErrors?: { response?: string; responseCode?: number }[] };
  const send = (c: SMTPConnection, to: string[], body: Buffer | string, from = 'sender@src.test'): Promise<Info> =>
    new Promise((resolve, reject) => c.send({ from, to }, body, (err, info) => (err ? reject(err) : resolve(info as unknown as Info))));
  const quit = async (c: SMTPConnection): Promise<void> => {
    c.quit();
    await new Promise<void>((r) => c.once('end', () => r()));
  };

  const message = (tag: string, body: Buffer): Buffer =>
    Buffer.concat([Buffer.from(`From: <sender@src.test>\r\nTo: <x@${pf.domain}>\r\nSubject: ${tag}\r\nMessage-ID: <${tag}@src.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`), body]);

  it('carries two MTAs’ transactions over one TCP connection and one TLS handshake, bytes intact (dots, 8-bit, 10 MB)', async () => {
    await mta('server-a', '127.0.0.2', 'pf-2');
    await mta('server-b', '127.0.0.2', 'pf-2');
    const since = await pf.mark();
    const a = await link('server-a', '127.0.0.2', 'pf-2');
    const tagA = `a-${randomBytes(4).toString('hex')}`;
    const bodyA = message(tagA, Buffer.from('.leading dot\r\n..two dots\r\n.\r\ncaf\u00e9 \u00fcber \u00e4\u00f6\u00fc\r\n' + 'L'.repeat(990) + '\r\n', 'utf8'));
    expect((await send(a.smtp, [`a@${pf.domain}`], bodyA)).accepted).toEqual([`a@${pf.domain}`]);
    await quit(a.smtp);

    const b = await link('server-b', '127.0.0.2', 'pf-2');
    expect(b.reused).toBe(true);
    const tagB = `b-${randomBytes(4).toString('hex')}`;
    const big = Buffer.from(randomBytes(7_600_000).toString('base64').replace(/.{76}/g, '$&\r\n') + '\r\n.dot after 10 MB\r\n');
    const bodyB = message(tagB, big);
    expect(bodyB.length).toBeGreaterThan(10_000_000);
    expect((await send(b.smtp, [`b@${pf.domain}`], bodyB)).accepted).toEqual([`b@${pf.domain}`]);
    await quit(b.smtp);

    const stats = await pf.waitForStats((s) => s.transactions >= 2, { since, ...WAIT });
    expect(stats.byClient['127.0.0.2']?.connections).toBe(1);
    expect(stats.byClient['127.0.0.2']?.transactions).toBe(2);
    expect(stats.byClient['127.0.0.2']?.tlsHandshakes).toBe(1);
    const got = await pf.waitForMessages(2, { ...WAIT, filter: (m) => m.data.includes(tagA) || m.data.includes(tagB) });
    const byTag = (t: string) => got.find((m) => m.data.includes(`Subject: ${t}`));
    expect(byTag(tagA)?.client).toBe('127.0.0.2');
    expect(byTag(tagA)?.data.equals(bodyA)).toBe(true);
    expect(byTag(tagB)?.data.equals(bodyB)).toBe(true);
  }, 120_000);

  it('passes Postfix’s per-recipient replies back verbatim', async () => {
    await mta('server-a', '127.0.0.2', 'pf-2');
    const a = await link('server-a', '127.0.0.2', 'pf-2');
    const err = (await send(a.smtp, [`reject-me@${pf.domain}`], 'Subject: x\r\n\r\nx\r\n').catch((e: unknown) => e)) as { rejectedErrors?: { response?: string }[]; responseCode?: number; response?: string };
    // nodemailer reports the RCPT's reply: Postfix's own text, enhanced code and all
    expect(err.rejectedErrors?.[0]?.response ?? err.response).toMatch(/^550 5\.1\.1 <reject-me@dest\.test>: Recipient address rejected/);
    // the transaction is still open at Postfix (MAIL was accepted): an MTA sends RSET, as here
    await new Promise<void>((resolve) => a.smtp.reset(() => resolve()));
    const ok = await send(a.smtp, [`reject-too@${pf.domain}`, `defer-me@${pf.domain}`, `fine@${pf.domain}`], 'Subject: y\r\n\r\ny\r\n');
    expect(ok.accepted).toEqual([`fine@${pf.domain}`]);
    expect(ok.rejectedErrors?.map((e) => e.response?.slice(0, 9))).toEqual(['550 5.1.1', '450 4.2.0']);
    await quit(a.smtp);
  }, 60_000);

  it('3 MTAs share a destination that allows 2 connections: never refused, never more than 2 open', async () => {
    const names = ['m1', 'm2', 'm3'];
    for (const n of names) await mta(n, '127.0.0.3', 'pf-3');
    const since = await pf.mark();
    const links = await Promise.all(names.map((n) => link(n, '127.0.0.3', 'pf-3')));
    await Promise.all(links.map(async (l, i) => {
      for (let m = 0; m < 8; m++) await send(l.smtp, [`r${i}-${m}@${pf.domain}`], `Subject: ${i}/${m}\r\n\r\nhello\r\n`);
    }));
    await Promise.all(links.map((l) => quit(l.smtp)));
    const stats = await pf.waitForStats((s) => s.transactions >= 24, { since, ...WAIT });
    const c = stats.byClient['127.0.0.3'];
    expect(c?.transactions).toBe(24);
    expect(c?.refused).toBe(0);
    expect(c?.connections).toBeLessThanOrEqual(LIMIT);
    expect(c?.tlsHandshakes).toBe(c?.connections);
  }, 120_000);

  it('a Postfix smtpd killed mid-DATA gives the MTA a 451 from the proxy, and the next message goes on a new connection', async () => {
    await mta('server-a', '127.0.0.4', 'pf-4');
    const since = await pf.mark();
    // by hand, so the body can stop half-way while the smtpd is killed
    const s = (await rawLink('server-a', '127.0.0.4', 'pf-4')).socket;
    const replies: string[] = [];
    let buf = '';
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n')) !== -1) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!/^\d{3}-/.test(line)) replies.push(line);
      }
    });
    s.resume();
    const next = async (): Promise<string> => {
      for (let t = 0; t < 1500 && replies.length === 0; t++) await new Promise((r) => setTimeout(r, 20));
      return replies.shift() ?? 'timeout';
    };
    const ask = (line: string): Promise<string> => (s.write(`${line}\r\n`), next());
    expect(await next()).toMatch(/^220 /);
    expect(await ask('EHLO mta.src.test')).toMatch(/^250 /);
    expect(await ask('MAIL FROM:<sender@src.test>')).toMatch(/^250 2\.1\.0/);
    expect(await ask(`RCPT TO:<victim@${pf.domain}>`)).toMatch(/^250 2\.1\.5/);
    expect(await ask('DATA')).toMatch(/^354/);
    s.write('Subject: half\r\n\r\nfirst half\r\n');
    const st = await pf.waitForStats((x) => x.sessions.some((q) => q.client === '127.0.0.4' && q.queueIds.length > 0 && q.commands === null), { since, ...WAIT });
    const pid = st.sessions.find((q) => q.client === '127.0.0.4' && q.commands === null)?.pid;
    expect(pid).toBeGreaterThan(0);
    process.kill(pid as number, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    s.write('second half\r\n.\r\n');
    expect(await next()).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed during this transaction/);
    expect(await ask('RSET')).toMatch(/^250/);
    expect(await ask('MAIL FROM:<sender@src.test>')).toMatch(/^250 2\.1\.0/);
    expect(await ask(`RCPT TO:<after@${pf.domain}>`)).toMatch(/^250/);
    expect(await ask('DATA')).toMatch(/^354/);
    expect(await ask('Subject: after\r\n\r\nok\r\n.')).toMatch(/^250 2\.0\.0 Ok: queued/);
    expect(await ask('QUIT')).toMatch(/^221/);
    const stats = await pf.waitForStats((x) => (x.byClient['127.0.0.4']?.transactions ?? 0) >= 1, { since, ...WAIT });
    // the half message never became a transaction; the next one did, on another connection
    expect(stats.byClient['127.0.0.4']?.transactions).toBe(1);
    expect(stats.byClient['127.0.0.4']?.connections).toBe(2);
  }, 120_000);
});
