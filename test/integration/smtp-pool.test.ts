// The pool's limits with a scriptable destination (every command and QUIT it saw is recorded):
// idle connections QUIT after smtp.idle_timeout, reuse_count_limit, stalls answered with the
// proxy's 451, message tokens per MAIL FROM, trimming to a shrunk throttle, the drain on SIGTERM,
// and TLS resumption toward a destination (smtp-server) when a connection is replaced.
import type { AddressInfo } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { SMTPServer } from 'smtp-server';
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { fakeMx } from '../helpers/fake-mx.js';

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
const servers: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
  for (const s of servers.splice(0)) s.close();
});

async function proxy(port: number, smtp = '', extra = ''): Promise<RunningDaemon> {
  const d = await startDaemon({
    extra: `status_interval = "200ms"\n${extra}\n[egress]\nsource_ips = ["127.0.0.2"]\nports = [${port}]\nallow_private_destinations = true\nthrottle_wait_timeout = "10s"\n[smtp]\n${smtp}`,
  });
  running.push(d);
  return d;
}

async function mta(d: RunningDaemon, name: string, maxConnections = 2, maxMessagesPerHour = 100_000): Promise<ControlClient> {
  const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name, secret: SECRET });
  clients.push(c);
  await c.declare({ key: 'dest', sourceIp: '127.0.0.2', maxConnections, maxMessagesPerHour, mode: 'sum' });
  return c;
}

async function client(d: RunningDaemon, name: string, port: number, waitMs?: number): Promise<SMTPConnection> {
  const l = await openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port }, throttle: 'dest', smtp: { ehlo: 'mail-2.example' }, ...(waitMs === undefined ? {} : { waitMs }) });
  const conn = new SMTPConnection({ connection: l.socket, name: 'mta.example', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  conn.on('error', () => {});
  return conn;
}

type Failure = { responseCode?: number; response?: string };
function send(conn: SMTPConnection, body = 'Subject: x\r\n\r\nhi\r\n'): Promise<{ response: string }> {
  return new Promise((resolve, reject) => conn.send({ from: 'a@example.com', to: ['b@example.net'] }, body, (err, info) => (err ? reject(err) : resolve(info as unknown as { response: string }))));
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
};

describe('smtp pool limits', () => {
  it('QUITs an idle connection after smtp.idle_timeout, and opens a new one afterwards', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port, 'idle_timeout = "1s"');
    await mta(d, 'a');
    const c = await client(d, 'a', mx.port);
    await send(c);
    // every connection opened so far goes idle and is QUIT (on a busy machine the CONNECT's own
    // connection may already have been, before the transaction opened another)
    await until(() => mx.connections > 0 && mx.quits === mx.connections && mx.open === 0);
    expect(mx.quits).toBe(mx.connections);
    expect(mx.open).toBe(0);
    const before = mx.connections;
    await send(c);
    expect(mx.connections).toBe(before + 1);
  });

  it('reuse_count_limit retires a connection after that many transactions', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port, 'reuse_count_limit = 2');
    await mta(d, 'a');
    const c = await client(d, 'a', mx.port);
    for (let i = 0; i < 5; i++) await send(c);
    // 2 + 2 + 1 transactions; the CONNECT's borrow opened the first connection
    expect(mx.connections).toBe(3);
    await until(() => mx.quits === 2);
    expect(mx.quits).toBe(2);
  });

  it('a destination that stalls after the body gives the MTA the proxy’s 451, and its connection is dropped', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port, 'data_done_timeout = "500ms"');
    await mta(d, 'a');
    const c = await client(d, 'a', mx.port);
    const err = (await send(c, 'Subject: x\r\n\r\nSTALL\r\n').catch((e: unknown) => e)) as Failure;
    expect(err.responseCode).toBe(451);
    expect(err.response).toContain('mtaproxy: the destination connection failed during this transaction (destination did not answer within 500ms)');
    expect((await send(c)).response).toBe('250 2.0.0 queued');
    expect(mx.connections).toBe(2);
  });

  it('a link waiting for a slow destination is not idle: egress.idle_timeout does not cut it', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await startDaemon({
      extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${mx.port}]\nallow_private_destinations = true\nidle_timeout = "1s"\n`,
    });
    running.push(d);
    await mta(d, 'a');
    const c = await client(d, 'a', mx.port);
    expect((await send(c, 'Subject: x\r\n\r\nSLOW\r\n')).response).toBe('250 2.0.0 queued slowly');
    // and an MTA that really says nothing is cut after it
    const end = new Promise<void>((r) => c.once('end', () => r()));
    const started = Date.now();
    await end;
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('every MAIL FROM takes a message token: past max_messages_per_hour the MTA gets 4xx from the proxy', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port);
    // 60 per hour: a burst of one, then one a minute
    await mta(d, 'a', 2, 60);
    const c = await client(d, 'a', mx.port, 300);
    await send(c);
    const err = (await send(c).catch((e: unknown) => e)) as Failure;
    expect(err.responseCode).toBe(451);
    expect(err.response).toMatch(/^451 4\.4\.5 mtaproxy: throttle dest: no message became available in time/);
    expect(mx.mails).toBe(1);
  });

  it('QUITs idle connections beyond a throttle limit that shrank', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port);
    const ctl = await mta(d, 'a', 3);
    // three transactions open at once (MAIL accepted) hold three destination connections; RSET
    // ends them, and all three are cached
    const links = [];
    for (let i = 0; i < 3; i++) links.push(await rawLink(d, 'a', mx.port));
    for (const l of links) expect(await l.ask('MAIL FROM:<a@example.com>')).toBe('250 2.1.0 ok');
    expect(mx.connections).toBe(3);
    for (const l of links) expect(await l.ask('RSET')).toMatch(/^250/);
    await ctl.declare({ key: 'dest', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100_000, mode: 'sum' });
    // the destination counts a QUIT when it reads it, an open socket until its close comes
    await until(() => mx.quits === 2 && mx.open === 1);
    expect(mx.quits).toBe(2);
    expect(mx.open).toBe(1);
  });

  it('on SIGTERM, an idle link gets 421, a link mid-transaction finishes it, and cached connections QUIT', async () => {
    const mx = await fakeMx();
    servers.push(mx);
    const d = await proxy(mx.port, '', 'shutdown_timeout = "10s"');
    await mta(d, 'a');
    const idle = await rawLink(d, 'a', mx.port);
    const busy = await rawLink(d, 'a', mx.port);
    expect(await busy.ask('EHLO mta.example')).toMatch(/^250/);
    expect(await busy.ask('MAIL FROM:<a@example.com>')).toBe('250 2.1.0 ok');
    d.proc.kill('SIGTERM');
    // the idle link is told at once
    expect(await idle.next()).toBe('421 4.3.2 mtaproxy: shutting down, try again later');
    // the busy one completes its transaction, then is told
    expect(await busy.ask('RCPT TO:<b@example.net>')).toBe('250 2.1.0 ok');
    expect(await busy.ask('DATA')).toBe('354 go');
    expect(await busy.ask('Subject: x\r\n\r\nbody\r\n.')).toBe('250 2.0.0 queued');
    expect(await busy.next()).toBe('421 4.3.2 mtaproxy: shutting down, try again later');
    expect(await d.exited).toBe(0);
    expect(mx.quits).toBeGreaterThanOrEqual(1);
    await until(() => mx.open === 0);
    expect(mx.open).toBe(0);
  });
});

/** An smtp-mode link read line by line (replies' last lines), for exact conversations. */
async function rawLink(d: RunningDaemon, name: string, port: number): Promise<{ ask(line: string): Promise<string>; next(): Promise<string> }> {
  const l = await openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port }, throttle: 'dest', smtp: { ehlo: 'mail-2.example' } });
  const lines: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  let buf = '';
  l.socket.on('data', (c: Buffer) => {
    buf += c.toString('latin1');
    let i: number;
    while ((i = buf.indexOf('\r\n')) !== -1) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (/^\d{3}-/.test(line)) continue; // only a reply's last line
      const w = waiting.shift();
      if (w !== undefined) w(line);
      else lines.push(line);
    }
  });
  l.socket.resume();
  const next = (): Promise<string> => {
    const line = lines.shift();
    return line !== undefined ? Promise.resolve(line) : new Promise((r) => waiting.push(r));
  };
  expect(await next()).toMatch(/^220 /);
  return {
    next,
    ask: (line: string) => {
      l.socket.write(`${line}\r\n`);
      return next();
    },
  };
}

describe('TLS toward destinations', () => {
  it('resumes the TLS session when a connection to the same destination is replaced', async () => {
    let secure = 0;
    const srv = new SMTPServer({ authOptional: true, logger: false, onSecure: (_s, _ss, cb) => (secure++, cb()), onData: (s, _ss, cb) => (s.resume(), s.on('end', () => cb())) });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    servers.push({ close: () => srv.close() });
    const port = (srv.server.address() as AddressInfo).port;
    const d = await proxy(port, 'reuse_count_limit = 1');
    await mta(d, 'a');
    const c = await client(d, 'a', port);
    await send(c);
    await send(c);
    expect(secure).toBe(2);
    await d.waitForLine(/smtp\(a\): .* new tls=TLSv1\.3\(resumed\) rcpt=1\/1/);
  });
});
