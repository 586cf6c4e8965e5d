// smtp-mode deliveries (docs/protocol.md §4.7) against a real SMTP server (smtp-server, STARTTLS
// with its built-in self-signed certificate) and real SMTP clients (nodemailer's SMTPConnection)
// on the MTA side: transactions of different MTAs share the proxy's destination connections.
import { createHash } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel, type SmtpModeOptions } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { fakeMx } from '../helpers/fake-mx.js';

interface Seen {
  connections: number;
  open: number;
  maxOpen: number;
  secure: number;
  transactions: { connection: string; remoteAddress: string; from: string; to: string[]; sha256: string; size: number; body: Buffer }[];
}

const seen: Seen = { connections: 0, open: 0, maxOpen: 0, secure: 0, transactions: [] };
let smtp: SMTPServer;
let smtpPort = 0;

beforeAll(async () => {
  smtp = new SMTPServer({
    authOptional: true,
    size: 50 * 1024 * 1024,
    logger: false,
    onConnect(_session, cb) {
      seen.connections++;
      seen.open++;
      seen.maxOpen = Math.max(seen.maxOpen, seen.open);
      cb();
    },
    onClose() {
      seen.open--;
    },
    onSecure(_socket, _session, cb) {
      seen.secure++;
      cb();
    },
    onRcptTo(address, _session, cb) {
      if (address.address.startsWith('reject')) return cb(Object.assign(new Error('5.1.1 no such user here'), { responseCode: 550 }));
      cb();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const body = Buffer.concat(chunks);
        seen.transactions.push({
          connection: session.id,
          remoteAddress: session.remoteAddress,
          from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map((r) => r.address),
          sha256: createHash('sha256').update(body).digest('hex'),
          size: body.length,
          body,
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', resolve));
  smtpPort = (smtp.server.address() as AddressInfo).port;
});
afterAll(async () => {
  await new Promise<void>((resolve) => smtp.close(() => resolve()));
});

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
const servers: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
  for (const s of servers.splice(0)) s.close();
});

async function proxy(ports: number[], extra = ''): Promise<RunningDaemon> {
  const d = await startDaemon({
    extra: `[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\nports = [${ports.join(', ')}]\nallow_private_destinations = true\nthrottle_wait_timeout = "10s"\n[smtp]\nidle_timeout = "30s"\n${extra}`,
  });
  running.push(d);
  return d;
}

async function mta(d: RunningDaemon, name: string, maxConnections = 2): Promise<ControlClient> {
  const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name, secret: SECRET });
  clients.push(c);
  await c.declare({ key: 'dest', sourceIp: '127.0.0.2', maxConnections, maxMessagesPerHour: 100_000, mode: 'average' });
  return c;
}

const link = (d: RunningDaemon, name: string, port = smtpPort, smtpOpts: SmtpModeOptions = { ehlo: 'mail-2.example' }) =>
  openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port }, throttle: 'dest', smtp: smtpOpts });

/** nodemailer's SMTP client over the link: the MTA's ordinary SMTP code. */
async function smtpClient(socket: Socket): Promise<SMTPConnection> {
  const conn = new SMTPConnection({ connection: socket, name: 'mta.example', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  conn.on('error', () => {});
  return conn;
}

type SendInfo = { accepted: string[]; rejected: string[]; response: string; rejectedErrors?: { response: string; responseCode: number }[] };
function send(conn: SMTPConnection, from: string, to: string[], body: Buffer | string): Promise<SendInfo> {
  return new Promise((resolve, reject) => conn.send({ from, to }, body, (err, info) => (err ? reject(err) : resolve(info as unknown as SendInfo))));
}

async function quit(conn: SMTPConnection): Promise<void> {
  conn.quit();
  await new Promise<void>((resolve) => conn.once('end', () => resolve()));
}

describe('smtp mode', () => {
  it('carries transactions of two MTAs over one destination connection, STARTTLS on, bytes intact', async () => {
    const d = await proxy([smtpPort]);
    await mta(d, 'server-a');
    await mta(d, 'server-b');
    const before = { connections: seen.connections, secure: seen.secure, tx: seen.transactions.length };

    const la = await link(d, 'server-a');
    expect(la.local).toMatch(/^127\.0\.0\.2:\d+$/);
    expect(la.smtp?.reused).toBe(false);
    expect(la.smtp?.tls).toMatch(/^TLSv1\.[23]\//);
    const a = await smtpClient(la.socket);
    const body = Buffer.concat([
      Buffer.from('Subject: dots and 8 bits\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nx\r\n', 'latin1'),
      Buffer.from('caf\u00e9 \u00fcber 8-bit\r\n', 'utf8'),
    ]);
    const info = await send(a, 'a@example.com', ['b@example.net'], body);
    expect(info.accepted).toEqual(['b@example.net']);
    await quit(a);

    const lb = await link(d, 'server-b');
    expect(lb.smtp?.reused).toBe(true);
    const b = await smtpClient(lb.socket);
    await send(b, 'c@example.com', ['d@example.net', 'e@example.net'], 'Subject: second\r\n\r\nhello\r\n');
    await quit(b);

    expect(seen.connections - before.connections).toBe(1);
    expect(seen.secure - before.secure).toBe(1);
    const tx = seen.transactions.slice(before.tx);
    expect(tx).toHaveLength(2);
    expect(tx[0]?.connection).toBe(tx[1]?.connection);
    expect(tx[0]?.remoteAddress).toBe('127.0.0.2');
    expect(tx[0]?.from).toBe('a@example.com');
    expect(tx[1]?.to).toEqual(['d@example.net', 'e@example.net']);
    // the MTA dot-stuffed, the destination un-stuffed: what arrives is the message as written
    // (nodemailer ends it with CRLF), every byte
    expect(tx[0]?.body.equals(body)).toBe(true);

    // the first transaction on a connection is "new", the next one (another MTA's) "reused"
    await d.waitForLine(/smtp\(server-a\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+ conn#\d+ new tls=/);
    await d.waitForLine(/smtp\(server-b\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+ conn#\d+ reused tls=TLSv1\.\d rcpt=2\/2 bytes=\d+ DATA -> 250/);
    const status = await d.cli(['status']);
    expect(status.stdout).toContain('direct_remote_smtp: connections=1(active=0 cached=1)');
    expect(status.stdout).toContain(`smtp_pool: 127.0.0.2 -> 127.0.0.1:${smtpPort} ehlo=mail-2.example tls=opportunistic throttle=dest active=0 cached=1 opening=0 waiting=0`);
    expect(status.stdout).toMatch(/smtp_pool: {3}conn#\d+ age=\d+s idle=\d+s transactions=2 tls=TLSv1\.[23]/);
  });

  it('passes per-recipient replies verbatim and answers XMTAPROXY with the connection used', async () => {
    const d = await proxy([smtpPort]);
    await mta(d, 'server-a');
    const l = await link(d, 'server-a');
    // a raw SMTP conversation, pipelined as an MTA with PIPELINING would
    const s = l.socket;
    s.resume();
    const replies: string[] = [];
    let buf = '';
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n')) !== -1) {
        replies.push(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
    });
    const until = async (n: number): Promise<void> => {
      for (let t = 0; t < 200 && replies.length < n; t++) await new Promise((r) => setTimeout(r, 25));
    };
    await until(1);
    expect(replies[0]).toMatch(/^220 /);
    s.write('EHLO mta.example\r\n');
    await until(2);
    const ehlo = replies.slice(1);
    expect(ehlo.join('\n')).toContain('PIPELINING');
    expect(ehlo.join('\n')).not.toContain('STARTTLS');
    expect(ehlo.join('\n')).not.toContain('AUTH');
    const afterEhlo = replies.length;
    s.write('MAIL FROM:<a@example.com>\r\nRCPT TO:<reject-me@example.net>\r\nRCPT TO:<ok@example.net>\r\nDATA\r\n');
    await until(afterEhlo + 4);
    const tx = replies.slice(afterEhlo);
    expect(tx[0]).toMatch(/^250 /);
    expect(tx[1]).toBe('550 5.1.1 no such user here');
    expect(tx[2]).toMatch(/^250 /);
    expect(tx[3]).toMatch(/^354 /);
    s.write('Subject: x\r\n\r\nbody\r\n.\r\nXMTAPROXY\r\nNOOP\rMAIL FROM:<x@y>\r\nQUIT\r\n');
    await until(afterEhlo + 8);
    expect(replies[afterEhlo + 4]).toMatch(/^250 /);
    expect(replies[afterEhlo + 5]).toMatch(/^250 2\.0\.0 connection=\d+ reused=no tls=TLSv1\.[23] cipher=\S+ local=127\.0\.0\.2:\d+ transactions=1$/);
    expect(replies[afterEhlo + 6]).toBe('501 5.5.2 mtaproxy: bare CR or NUL in a command line');
    expect(replies[afterEhlo + 7]).toMatch(/^221 /);
  });

  it('shares the destination limit at transaction granularity: 3 MTAs, 2 connections', async () => {
    const d = await proxy([smtpPort]);
    const names = ['mta-1', 'mta-2', 'mta-3'];
    for (const n of names) await mta(d, n, 2);
    const before = { connections: seen.connections, tx: seen.transactions.length };
    seen.maxOpen = seen.open;
    const conns = await Promise.all(names.map(async (n) => smtpClient((await link(d, n)).socket)));
    await Promise.all(
      conns.map(async (c, i) => {
        for (let m = 0; m < 5; m++) await send(c, `from${i}@example.com`, [`to${m}@example.net`], `Subject: ${i}/${m}\r\n\r\nhi\r\n`);
      }),
    );
    await Promise.all(conns.map((c) => quit(c)));
    expect(seen.transactions.length - before.tx).toBe(15);
    expect(seen.connections - before.connections).toBeLessThanOrEqual(2);
    expect(seen.maxOpen).toBeLessThanOrEqual(2);
  });

  it('a destination that drops mid-DATA gives the MTA a 4xx, and that connection is not reused', async () => {
    // a destination that accepts one transaction, then closes during the second's body
    const mx = await fakeMx();
    servers.push(mx);
    const port = mx.port;
    const d = await proxy([port]);
    await mta(d, 'server-a');
    const c = await smtpClient((await link(d, 'server-a', port, { ehlo: 'a.example', tls: 'opportunistic' })).socket);
    await send(c, 'a@example.com', ['b@example.net'], 'Subject: one\r\n\r\nfine\r\n');
    const err = (await send(c, 'a@example.com', ['b@example.net'], `Subject: two\r\n\r\n${'x'.repeat(1000)}\r\nDROP\r\nmore\r\n`).catch((e: unknown) => e)) as { responseCode?: number; response?: string };
    expect(err.responseCode).toBe(451);
    expect(err.response).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed/);
    // the next transaction is served on a new connection
    await send(c, 'a@example.com', ['b@example.net'], 'Subject: three\r\n\r\nfine\r\n');
    expect(mx.connections).toBe(2);
    await quit(c);
    await d.waitForLine(/smtp\(server-a\): .* bytes=\d+ lost: .* -> 451/);
  });

  it('drops a cached connection the destination closed, and sends the next transaction on a new one', async () => {
    const d = await proxy([smtpPort]);
    await mta(d, 'server-a');
    const before = seen.connections;
    const c = await smtpClient((await link(d, 'server-a')).socket);
    await send(c, 'a@example.com', ['b@example.net'], 'Subject: one\r\n\r\nx\r\n');
    // the destination drops its idle connections (as an MX's idle timeout does)
    for (const conn of (smtp as unknown as { connections: Set<{ close(): void }> }).connections) conn.close();
    await new Promise((r) => setTimeout(r, 200));
    const info = await send(c, 'a@example.com', ['b@example.net'], 'Subject: two\r\n\r\ny\r\n');
    expect(info.accepted).toEqual(['b@example.net']);
    expect(seen.connections - before).toBe(2);
    await quit(c);
  });

  it('a cached connection that answers MAIL with 421 is replaced without the MTA seeing it', async () => {
    // the first connection closes with 421 at its second MAIL (as an MX whose idle timer fired
    // just as the proxy reused it); later connections behave
    const mx = await fakeMx({ closeAtMail: (connection, mail) => connection === 1 && mail === 2 });
    servers.push(mx);
    const port = mx.port;
    const d = await proxy([port]);
    await mta(d, 'server-a');
    const c = await smtpClient((await link(d, 'server-a', port)).socket);
    await send(c, 'a@example.com', ['b@example.net'], 'Subject: one\r\n\r\nx\r\n');
    const info = await send(c, 'a@example.com', ['b@example.net'], 'Subject: two\r\n\r\ny\r\n');
    expect(info.accepted).toEqual(['b@example.net']);
    expect(info.response).toBe('250 2.0.0 queued');
    expect(mx.connections).toBe(2);
    await quit(c);
  });

  it('refuses bad smtp-mode CONNECT options with 501 and says how', async () => {
    const d = await proxy([smtpPort]);
    await mta(d, 'server-a');
    const err = await link(d, 'server-a', smtpPort, { ehlo: 'a.example', tls: 'opportunistic', verify: 'mx.example' }).catch((e: unknown) => e);
    expect(String(err)).toContain('501 verify=<host name> needs tls=required');
  });
});
