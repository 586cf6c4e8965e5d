// The real-Postfix destination harness (test/helpers/postfix.ts) against real clients: nodemailer
// over STARTTLS, raw sockets, openssl s_client. What its stats() and messages() report must be what
// happened on the wire, so the shared-connection tests and bench/reuse.mjs can rely on them.
import { execFile, spawn } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import nodemailer from 'nodemailer';
import type Mail from 'nodemailer/lib/mailer/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { ROOT } from '../helpers/daemon.js';
import { rawConnect, type RawClient } from '../helpers/raw.js';

const unavailable = postfixUnavailable();
if (unavailable !== null) console.warn(`SKIPPED postfix-destination tests: ${unavailable}`);

const CONNECTION_LIMIT = 2;

/** what nodemailer's SMTP transports resolve with (rejectedErrors is not in the typings) */
interface Sent {
  accepted: string[];
  rejected: string[];
  response: string;
  rejectedErrors?: { recipient?: string; responseCode?: number; response?: string }[];
}
interface Sender {
  sendMail(mail: Mail.Options): Promise<unknown>;
  close(): void;
}
// generous: the machine may be busy
const LINE_MS = 30_000;

describe.skipIf(unavailable !== null)('a real Postfix as SMTP destination', () => {
  let a: PostfixInstance;
  let b: PostfixInstance;

  beforeAll(async () => {
    // two at once, as parallel test files do
    [a, b] = await Promise.all([
      startPostfix({ address: '127.0.0.9', connectionLimit: CONNECTION_LIMIT, maxMessageSize: 20 * 1024 * 1024 }),
      startPostfix({ address: '127.0.0.10' }),
    ]);
  }, 120_000);

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  }, 60_000);

  function transport(p: PostfixInstance, localAddress: string, pooled: boolean, requireTLS = true): Sender {
    const common = { host: p.host, port: p.port, localAddress, name: `mta-${localAddress}.src.test`, tls: { rejectUnauthorized: false }, requireTLS };
    // the pool's maxMessages is how many messages one connection may carry
    return pooled ? nodemailer.createTransport({ ...common, pool: true, maxConnections: 1, maxMessages: 10 }) : nodemailer.createTransport(common);
  }

  /** a raw message as an MTA hands it over: CRLF lines, unstuffed (the client dot-stuffs) */
  function rawMessage(to: string, body: Buffer): Buffer {
    const head = `From: <sender@src.test>\r\nTo: <${to}>\r\nSubject: harness ${randomBytes(4).toString('hex')}\r\nMessage-ID: <${randomBytes(8).toString('hex')}@src.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`;
    return Buffer.concat([Buffer.from(head), body]);
  }

  async function send(t: Sender, to: string[], raw: Buffer): Promise<Sent> {
    // use8BitMime is passed through to MAIL FROM (BODY=8BITMIME) but is not in the typings
    const envelope = { from: 'sender@src.test', to: to.join(', '), use8BitMime: true } as Mail.Envelope;
    return (await t.sendMail({ envelope, raw })) as Sent;
  }

  it('two messages over one pooled nodemailer connection: 1 connection, 1 TLS handshake, 2 transactions', async () => {
    const t = transport(a, '127.0.0.2', true);
    const to = [`pool1-${randomBytes(3).toString('hex')}@dest.test`, `pool2-${randomBytes(3).toString('hex')}@dest.test`];
    const first = await send(t, [to[0] as string], rawMessage(to[0] as string, Buffer.from('first\r\n')));
    const second = await send(t, [to[1] as string], rawMessage(to[1] as string, Buffer.from('second\r\n')));
    t.close();
    expect(first.accepted).toEqual([to[0]]);
    expect(second.accepted).toEqual([to[1]]);
    expect(first.response).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);

    const stats = await a.waitForStats((s) => (s.byClient['127.0.0.2']?.disconnects ?? 0) >= 1);
    expect(stats.byClient['127.0.0.2']).toEqual({ connections: 1, tlsHandshakes: 1, tlsResumed: 0, transactions: 2, disconnects: 1, refused: 0, rejectedRecipients: 0 });
    const [session] = stats.sessions.filter((s) => s.client === '127.0.0.2');
    expect(session?.tls).toMatch(/^TLSv1\.[23] with cipher /);
    expect(session?.commands).toMatchObject({ ehlo: '2', starttls: '1', mail: '2', rcpt: '2', data: '2' });

    const got = await a.waitForMessages(2, { filter: (m) => to.includes(m.recipient) });
    expect(got.map((m) => [m.recipient, m.client, m.sender])).toEqual([
      [to[0], '127.0.0.2', 'sender@src.test'],
      [to[1], '127.0.0.2', 'sender@src.test'],
    ]);
    expect(got.map((m) => m.queueId)).toEqual([first.response.split(' ').pop(), second.response.split(' ').pop()]);
  }, 60_000);

  it('a new connection per message without the pool: 2 connections, 2 TLS handshakes', async () => {
    const t = transport(a, '127.0.0.6', false);
    for (const n of [1, 2]) await send(t, [`single${n}@dest.test`], rawMessage(`single${n}@dest.test`, Buffer.from(`single ${n}\r\n`)));
    t.close();
    const stats = await a.waitForStats((s) => (s.byClient['127.0.0.6']?.disconnects ?? 0) >= 2);
    expect(stats.byClient['127.0.0.6']).toMatchObject({ connections: 2, tlsHandshakes: 2, transactions: 2 });
  }, 60_000);

  it('delivers the exact bytes: dot-leading lines, 8-bit content, long lines', async () => {
    const ehlo = await rawConnect(a.port, { host: a.host, localAddress: '127.0.0.3', tls: false });
    await ehlo.line(/^220 /, LINE_MS);
    ehlo.send('EHLO probe.src.test\r\n');
    const caps = await ehlo.line(/^250 /, LINE_MS);
    expect(ehlo.received()).toMatch(/^250-8BITMIME\r$/m);
    expect(ehlo.received()).toMatch(/^250-STARTTLS\r$/m);
    expect(caps).toBe('250 CHUNKING\r');
    ehlo.send('QUIT\r\n');
    await ehlo.closed;

    const to = `exact-${randomBytes(3).toString('hex')}@dest.test`;
    const body = Buffer.concat([
      Buffer.from('.leading dot\r\n..two dots\r\n.\r\n. \r\nmiddle . dot\r\n'),
      Buffer.from('Grüße, naïve café — 日本語\r\n', 'utf8'),
      Buffer.from([0x38, 0x62, 0x69, 0x74, 0x3a, 0x80, 0xa0, 0xfe, 0xff, 0x0d, 0x0a]), // not even UTF-8
      Buffer.from(`${'x'.repeat(990)}\r\n`),
      Buffer.from('\r\n\r\nlast line\r\n'),
    ]);
    const sent = rawMessage(to, body);
    const t = transport(a, '127.0.0.3', false);
    const info = await send(t, [to], sent);
    t.close();
    expect(info.accepted).toEqual([to]);
    const [m] = await a.waitForMessages(1, { filter: (x) => x.recipient === to });
    expect(m?.data.equals(sent)).toBe(true);
    expect(m?.raw.toString('latin1')).toMatch(/^Received: from mta-127\.0\.0\.3\.src\.test \(unknown \[127\.0\.0\.3\]\)\n\tby mx\.dest\.test \(Postfix\) with ESMTPS id [0-9A-F]+\n/);
    expect(m?.raw.includes('\r')).toBe(false);
  }, 60_000);

  it('delivers a 10 MB message intact', async () => {
    const to = `big-${randomBytes(3).toString('hex')}@dest.test`;
    const lines: string[] = [];
    let size = 0;
    for (let i = 0; size < 10 * 1024 * 1024; i++) {
      const line = `${i % 50 === 0 ? '.' : ''}${randomBytes(57).toString('base64')}\r\n`;
      lines.push(line);
      size += line.length;
    }
    const sent = rawMessage(to, Buffer.from(lines.join('')));
    expect(sent.length).toBeGreaterThan(10 * 1024 * 1024);
    const t = transport(a, '127.0.0.7', false);
    const info = await send(t, [to], sent);
    t.close();
    expect(info.accepted).toEqual([to]);
    const [m] = await a.waitForMessages(1, { filter: (x) => x.recipient === to, timeoutMs: 60_000 });
    expect(m?.data.length).toBe(sent.length);
    expect(m?.data.equals(sent)).toBe(true);
  }, 120_000);

  it('refuses more than the connection limit per client IP with 421 4.7.0, counted per client', async () => {
    const open: RawClient[] = [];
    for (let i = 0; i < CONNECTION_LIMIT; i++) {
      const c = await rawConnect(a.port, { host: a.host, localAddress: '127.0.0.4', tls: false });
      expect(await c.line(/^\d{3} /, LINE_MS)).toBe('220 mx.dest.test ESMTP Postfix\r');
      open.push(c);
    }
    const extra = await rawConnect(a.port, { host: a.host, localAddress: '127.0.0.4', tls: false });
    expect(await extra.line(/^\d{3} /, LINE_MS)).toBe('421 4.7.0 mx.dest.test Error: too many connections from 127.0.0.4\r');
    await extra.closed;
    // the limit is per client IP: another one is still welcome
    const other = await rawConnect(a.port, { host: a.host, localAddress: '127.0.0.5', tls: false });
    expect(await other.line(/^\d{3} /, LINE_MS)).toBe('220 mx.dest.test ESMTP Postfix\r');
    other.send('QUIT\r\n');
    await other.closed;

    // each smtpd process logs on its own: wait for the lines of both clients, not just the first one's
    let stats = await a.waitForStats(
      (s) => (s.byClient['127.0.0.4']?.refused ?? 0) >= 1 && (s.byClient['127.0.0.4']?.disconnects ?? 0) >= 1 && (s.byClient['127.0.0.5']?.disconnects ?? 0) >= 1,
    );
    expect(stats.byClient['127.0.0.4']).toMatchObject({ connections: 3, refused: 1, disconnects: 1 });
    expect(stats.byClient['127.0.0.5']).toMatchObject({ connections: 1, refused: 0 });

    // a slot frees when a connection ends (anvil counts down on disconnect)
    const first = open.shift() as RawClient;
    first.send('QUIT\r\n');
    await first.closed;
    await a.waitForStats((s) => (s.byClient['127.0.0.4']?.disconnects ?? 0) >= 2);
    const again = await rawConnect(a.port, { host: a.host, localAddress: '127.0.0.4', tls: false });
    expect(await again.line(/^\d{3} /, LINE_MS)).toBe('220 mx.dest.test ESMTP Postfix\r');
    for (const c of [again, ...open]) {
      c.send('QUIT\r\n');
      await c.closed;
    }
    stats = await a.waitForStats((s) => (s.byClient['127.0.0.4']?.disconnects ?? 0) >= 4);
    expect(stats.byClient['127.0.0.4']).toMatchObject({ connections: 4, refused: 1, disconnects: 4, transactions: 0 });
  }, 60_000);

  it('answers reject-… recipients 550 5.1.1 and defer-… 450 4.2.0, and delivers to the others', async () => {
    const ok = `ok-${randomBytes(3).toString('hex')}@dest.test`;
    const t = transport(a, '127.0.0.8', false);
    const info = await send(t, [ok, 'reject-me@dest.test', 'defer-me@dest.test'], rawMessage(ok, Buffer.from('partial\r\n')));
    expect(info.accepted).toEqual([ok]);
    expect(info.rejected.sort()).toEqual(['defer-me@dest.test', 'reject-me@dest.test']);
    const codes = (info.rejectedErrors ?? []).map((e) => [e.recipient, e.responseCode, e.response]).sort();
    expect(codes).toEqual([
      ['defer-me@dest.test', 450, '450 4.2.0 <defer-me@dest.test>: Recipient address rejected: Try again later'],
      ['reject-me@dest.test', 550, '550 5.1.1 <reject-me@dest.test>: Recipient address rejected: User unknown'],
    ]);
    // all recipients rejected: the transaction fails with the 550
    const err = await send(t, ['reject-all@dest.test'], rawMessage('reject-all@dest.test', Buffer.from('none\r\n'))).then(
      () => null,
      (e: unknown) => e as { responseCode?: number },
    );
    expect(err?.responseCode).toBe(550);
    // other domains are not relayed
    const relay = await send(t, ['someone@elsewhere.test'], rawMessage('someone@elsewhere.test', Buffer.from('x\r\n'))).then(
      () => null,
      (e: unknown) => e as { responseCode?: number },
    );
    expect(relay).toMatchObject({ responseCode: 554, response: '554 5.7.1 <someone@elsewhere.test>: Relay access denied' });
    t.close();
    await a.waitForMessages(1, { filter: (m) => m.recipient === ok });
    const stats = await a.waitForStats((s) => (s.byClient['127.0.0.8']?.disconnects ?? 0) >= 3);
    expect(stats.byClient['127.0.0.8']).toMatchObject({ transactions: 1, rejectedRecipients: 4 });
    expect((await a.messages()).filter((m) => m.recipient.startsWith('reject-') || m.recipient.startsWith('defer-') || m.recipient.endsWith('elsewhere.test'))).toEqual([]);
  }, 60_000);

  /** s_client sends EHLO and STARTTLS, then our QUIT; -ign_eof: read on until Postfix closes (after its 221) */
  function sClient(...args: string[]): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const child = execFile(
        'openssl',
        ['s_client', '-starttls', 'smtp', '-connect', `${a.host}:${a.port}`, '-servername', a.hostname, '-ign_eof', ...args],
        { timeout: 30_000 },
        (err, stdout) => (err !== null ? reject(new Error(`openssl s_client: ${err.message}\n${stdout}`)) : resolve(stdout)),
      );
      child.stdin?.end('QUIT\r\n');
    });
  }

  it('openssl s_client -starttls smtp sees the harness certificate', async () => {
    const out = await sClient();
    const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(out)?.[0];
    expect(pem).toBeDefined();
    const seen = new X509Certificate(pem as string);
    const mine = new X509Certificate(a.certificatePem);
    expect(seen.fingerprint256).toBe(mine.fingerprint256);
    expect(seen.subject).toBe('CN=mx.dest.test');
    expect(seen.subjectAltName).toContain('DNS:mx.dest.test');
    expect(out).toMatch(/Verification error: self[- ]signed certificate|verify error:num=18:self[- ]signed certificate/);
  }, 60_000);

  it('tells a resumed TLS session from a full handshake', async () => {
    const session = join(tmpdir(), `postfix-test-session-${randomBytes(4).toString('hex')}.pem`);
    try {
      const first = await sClient('-bind', '127.0.0.13:0', '-sess_out', session);
      expect(first).toMatch(/^New, TLSv1\.3, /m);
      expect(first).toMatch(/^221 2\.0\.0 Bye/m);
      const second = await sClient('-bind', '127.0.0.13:0', '-sess_in', session);
      expect(second).toMatch(/^Reused, TLSv1\.3, /m);
    } finally {
      rmSync(session, { force: true });
    }
    const stats = await a.waitForStats((s) => (s.byClient['127.0.0.13']?.disconnects ?? 0) >= 2);
    expect(stats.byClient['127.0.0.13']).toMatchObject({ connections: 2, tlsHandshakes: 2, tlsResumed: 1 });
    expect(stats.sessions.filter((s) => s.client === '127.0.0.13').map((s) => s.tlsResumed)).toEqual([false, true]);
  }, 60_000);

  it('runs several instances at once, each its own: log, mail, address (same port on another address)', async () => {
    const c = await startPostfix({ address: '127.0.0.11', port: a.port, tls: false, delivery: 'discard', keep: false });
    try {
      expect(c.port).toBe(a.port);
      const plain = await rawConnect(c.port, { host: c.host, localAddress: '127.0.0.12', tls: false });
      await plain.line(/^220 /, LINE_MS);
      plain.send('EHLO x.src.test\r\n');
      await plain.line(/^250 /, LINE_MS);
      expect(plain.received()).not.toMatch(/STARTTLS/);
      plain.send('QUIT\r\n');
      await plain.closed;

      const toB = `only-b-${randomBytes(3).toString('hex')}@dest.test`;
      const t = transport(b, '127.0.0.12', false);
      await send(t, [toB], rawMessage(toB, Buffer.from('to b\r\n')));
      t.close();
      await b.waitForMessages(1, { filter: (m) => m.recipient === toB });
      expect((await a.messages()).some((m) => m.recipient === toB)).toBe(false);
      const bs = await b.waitForStats((s) => (s.byClient['127.0.0.12']?.disconnects ?? 0) >= 1);
      expect(bs.byClient['127.0.0.12']).toMatchObject({ connections: 1, tlsHandshakes: 1, transactions: 1 });
      // 'discard' delivery: the transaction counts, nothing is kept
      const plainMta = transport(c, '127.0.0.12', false, false);
      const discarded = await send(plainMta, ['gone@dest.test'], rawMessage('gone@dest.test', Buffer.from('to c\r\n')));
      plainMta.close();
      expect(discarded.accepted).toEqual(['gone@dest.test']);
      const cs = await c.waitForStats((s) => (s.byClient['127.0.0.12']?.disconnects ?? 0) >= 2 && s.transactions >= 1);
      expect(cs.byClient['127.0.0.12']).toMatchObject({ connections: 2, tlsHandshakes: 0, transactions: 1 });
      await c.waitForLogLine(/\/discard\[\d+\]: [0-9A-F]+: to=<gone@dest\.test>, relay=none, .*status=sent/);
      expect(await c.messages()).toEqual([]);
      expect((await a.stats()).byClient['127.0.0.12']).toBeUndefined();
    } finally {
      await c.stop();
    }
    // stop() ends the instance and removes its dir
    expect(existsSync(c.dir)).toBe(false);
    const refused = await rawConnect(c.port, { host: c.host, tls: false }).then(
      () => 'connected',
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(refused).toBe('ECONNREFUSED');
  }, 120_000);

  it('cleans up by itself when the process that started it is killed (SIGKILL: no stop(), no exit handler)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'postfix-orphan-test-'));
    try {
      const bundle = join(tmp, 'postfix.mjs');
      await build({ entryPoints: [join(ROOT, 'test/helpers/postfix.ts')], bundle: true, platform: 'node', format: 'esm', outfile: bundle, logLevel: 'silent' });
      const script = `const { startPostfix } = await import(${JSON.stringify(bundle)}); const p = await startPostfix({ address: '127.0.0.14', keep: false }); console.log(JSON.stringify({ dir: p.dir, port: p.port })); setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      const started = await new Promise<{ dir: string; port: number }>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve(JSON.parse(out) as { dir: string; port: number });
        });
        child.once('exit', (code) => reject(new Error(`child exited (${code}) before starting Postfix: ${out}`)));
      });
      const greeting = await rawConnect(started.port, { host: '127.0.0.14', tls: false });
      expect(await greeting.line(/^\d{3} /, LINE_MS)).toBe('220 mx.dest.test ESMTP Postfix\r');
      greeting.socket.destroy();
      child.kill('SIGKILL');
      const deadline = Date.now() + 60_000;
      let state = '';
      for (;;) {
        const answer = await rawConnect(started.port, { host: '127.0.0.14', tls: false }).then(
          (c) => {
            c.socket.destroy();
            return 'listening';
          },
          (e: NodeJS.ErrnoException) => e.code ?? 'error',
        );
        state = `${answer}, dir ${existsSync(started.dir) ? 'still there' : 'removed'}`;
        if (state === 'ECONNREFUSED, dir removed' || Date.now() > deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(state).toBe('ECONNREFUSED, dir removed');
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 120_000);
});
