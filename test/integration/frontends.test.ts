// The SOCKS5 and PROXY v2 front-ends against real peers: curl over SOCKS5 (RFC 1928/1929), a
// KumoMTA-style BIND-then-CONNECT on a raw socket, and PROXY v2 headers built by an independent
// implementation (the npm package proxy-protocol-js), all delivering to a real SMTP server
// (smtp-server) that records the source address it saw.
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { Command, IPv4Address, IPv4ProxyAddress, TransportProtocol, V1ProxyProtocol, V2ProxyProtocol, INETProtocol, Peer } from 'proxy-protocol-js';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type RunningDaemon } from '../helpers/daemon.js';

const seen: { remoteAddress: string; subject: string }[] = [];
const connections: string[] = [];
let smtp: SMTPServer;
let smtpPort = 0;

beforeAll(async () => {
  smtp = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onConnect(session, callback) {
      connections.push(session.remoteAddress);
      callback();
    },
    onData(stream, session, callback) {
      let text = '';
      stream.on('data', (c: Buffer) => (text += c.toString('utf8')));
      stream.on('end', () => {
        seen.push({ remoteAddress: session.remoteAddress, subject: /^Subject: (.*)$/m.exec(text)?.[1]?.trim() ?? '' });
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
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const PASSWORD_A = 'alice-password-7f3e';
async function proxy(extra = '', top = ''): Promise<{ d: RunningDaemon; socks: number; pp2: number }> {
  const d = await startDaemon({
    extra: [
      top,
      '[egress]',
      'source_ips = ["127.0.0.2", "127.0.0.3"]',
      `ports = [${smtpPort}]`,
      'allow_private_destinations = true',
      'throttle_wait_timeout = "1s"',
      '[socks5]',
      'listen = ["127.0.0.1:0"]',
      `users = [{ username = "alice", password = "${PASSWORD_A}", source_ip = "127.0.0.2" }, { username = "bob", password = "bob-password-0912", source_ip = "127.0.0.3" }, { username = "kumo", password = "kumo-password-55" }]`,
      '[proxy_v2]',
      'listen = ["127.0.0.1:0"]',
      extra,
    ].join('\n'),
  });
  running.push(d);
  const port = (frontEnd: string) => Number(/:(\d+)$/.exec(d.lines.find((l) => l.includes(`listener: ${frontEnd} on`)) ?? '')?.[1] ?? 0);
  return { d, socks: port('socks5'), pp2: port('proxy-v2') };
}

function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '10', ...args], (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

function curlMail(d: RunningDaemon, proxyUrl: string, to: string, subject: string) {
  const file = join(d.dir, `${subject}.eml`);
  writeFileSync(file, `From: a@example.com\r\nTo: b@example.com\r\nSubject: ${subject}\r\n\r\nhello over SOCKS5\r\n`);
  return curl(['--proxy', proxyUrl, to, '--mail-from', 'a@example.com', '--mail-rcpt', 'b@example.com', '-T', file]);
}

/** A socket that collects what it reads, with a way to wait for n bytes or a pattern. */
function rawSocket(port: number): Promise<{ s: Socket; read(n: number): Promise<Buffer>; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    let want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
    const check = () => {
      if (want && buf.length >= want.n) {
        const out = buf.subarray(0, want.n);
        buf = buf.subarray(want.n);
        const w = want;
        want = null;
        w.resolve(out);
      }
    };
    const closed = new Promise<void>((r) => s.on('close', () => {
      want?.reject(new Error(`closed with ${buf.length} bytes unread: ${buf.toString('latin1')}`));
      r();
    }));
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      check();
    });
    s.on('error', () => {});
    s.once('connect', () => resolve({ s, closed, read: (n) => new Promise((res, rej) => { want = { n, resolve: res, reject: rej }; check(); }) }));
    s.once('error', reject);
  });
}

const ipv4Request = (cmd: number, ip: string, port: number) => Buffer.from([5, cmd, 0, 1, ...ip.split('.').map(Number), port >> 8, port & 0xff]);
const credentials = (user: string, pass: string) => Buffer.from([1, user.length, ...Buffer.from(user), pass.length, ...Buffer.from(pass)]);

/** Greeting, username/password, then the given requests; returns the socket and each reply. */
async function socksSession(port: number, user: string, pass: string) {
  const r = await rawSocket(port);
  r.s.write(Buffer.from([5, 1, 2]));
  expect([...(await r.read(2))]).toEqual([5, 2]);
  r.s.write(credentials(user, pass));
  expect([...(await r.read(2))]).toEqual([1, 0]);
  return r;
}

/** Connects, sends `bytes`, and resolves with everything read until the proxy closes. */
function exchange(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', () => {});
    s.write(bytes);
  });
}

/** Sends one message with nodemailer's SMTP client over an already connected socket. */
async function sendOver(socket: Socket, subject: string): Promise<void> {
  const conn = new SMTPConnection({ connection: socket, name: 'mta.example', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  await new Promise<void>((resolve, reject) =>
    conn.send({ from: 'a@example.com', to: ['b@example.com'] }, `Subject: ${subject}\r\n\r\nbody\r\n`, (err) => (err ? reject(err) : resolve())),
  );
  conn.quit();
}

describe('SOCKS5 front-end', () => {
  it('delivers curl\'s message from the account\'s source address (socks5 and socks5h)', async () => {
    const { d, socks } = await proxy();
    const a = await curlMail(d, `socks5://alice:${PASSWORD_A}@127.0.0.1:${socks}`, `smtp://127.0.0.1:${smtpPort}`, 'via-alice');
    expect(a.code, a.stderr).toBe(0);
    // socks5h: the proxy resolves the name (ATYP=DOMAINNAME)
    const b = await curlMail(d, `socks5h://bob:bob-password-0912@127.0.0.1:${socks}`, `smtp://localhost:${smtpPort}`, 'via-bob');
    expect(b.code, b.stderr).toBe(0);
    expect(seen.find((m) => m.subject === 'via-alice')?.remoteAddress).toBe('127.0.0.2');
    expect(seen.find((m) => m.subject === 'via-bob')?.remoteAddress).toBe('127.0.0.3');
    // one log record per delivery, naming the account and the source address
    await d.waitForLine(/delivery\(socks5:bob\): 127\.0\.0\.3:\d+ -> 127\.0\.0\.1:\d+ .* closed/);
  });

  it('refuses a wrong password and anonymous clients, and never logs a password', async () => {
    const { d, socks } = await proxy();
    const wrong = await curlMail(d, `socks5://alice:not-the-password@127.0.0.1:${socks}`, `smtp://127.0.0.1:${smtpPort}`, 'wrong');
    expect(wrong.code).not.toBe(0);
    await d.waitForLine(/socks5: 127\.0\.0\.1:\d+: refused: wrong username or password \(username "alice"\)/);
    const anon = await rawSocket(socks);
    anon.s.write(Buffer.from([5, 1, 0]));
    expect([...(await anon.read(2))]).toEqual([5, 0xff]);
    await anon.closed;
    await d.waitForLine(/no acceptable authentication method/);
    expect(d.lines.join('\n')).not.toContain('not-the-password');
    expect(d.lines.join('\n')).not.toContain(PASSWORD_A);
    expect(seen.some((m) => m.subject === 'wrong')).toBe(false);
  });

  // The exchange kumod performs (crates/kumod/src/egress_source.rs): greeting 05 02 00 02 with
  // socks5_proxy_username/password set (05 01 00 without), BIND <source>:0 answered by exactly one
  // reply, then CONNECT <MX IP>:<port> whose reply must carry an IP (not a name) as BND.ADDR.
  it('takes the source address from a KumoMTA-style BIND, then CONNECTs on the same stream', async () => {
    const { socks } = await proxy();
    const r = await rawSocket(socks);
    r.s.write(Buffer.from([5, 2, 0, 2]));
    expect([...(await r.read(2))]).toEqual([5, 2]); // username/password chosen when offered
    r.s.write(credentials('kumo', 'kumo-password-55'));
    expect([...(await r.read(2))]).toEqual([1, 0]);
    r.s.write(ipv4Request(2, '127.0.0.3', 0));
    // one reply to BIND: succeeded, BND.ADDR = the source address
    expect([...(await r.read(10))]).toEqual([5, 0, 0, 1, 127, 0, 0, 3, 0, 0]);
    r.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    const reply = await r.read(10);
    expect([...reply.subarray(0, 8)]).toEqual([5, 0, 0, 1, 127, 0, 0, 3]); // bound from 127.0.0.3
    expect(reply.readUInt16BE(8)).toBeGreaterThan(0); // the outbound connection's local port
    await sendOver(r.s, 'kumo-bind');
    expect(seen.find((m) => m.subject === 'kumo-bind')?.remoteAddress).toBe('127.0.0.3');
  });

  it('serves KumoMTA without credentials where allow_unauthenticated is set', async () => {
    const open = await startDaemon({
      extra: ['[egress]', 'source_ips = ["127.0.0.2"]', `ports = [${smtpPort}]`, 'allow_private_destinations = true', '[socks5]', 'listen = ["127.0.0.1:0"]', 'allow_unauthenticated = true'].join('\n'),
    });
    running.push(open);
    const port = Number(/:(\d+)$/.exec(open.lines.find((l) => l.includes('listener: socks5 on')) ?? '')?.[1] ?? 0);
    const r = await rawSocket(port);
    r.s.write(Buffer.from([5, 1, 0]));
    expect([...(await r.read(2))]).toEqual([5, 0]);
    r.s.write(ipv4Request(2, '127.0.0.2', 0));
    expect((await r.read(10))[1]).toBe(0);
    r.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await r.read(10))[1]).toBe(0);
    await sendOver(r.s, 'kumo-anonymous');
    expect(seen.find((m) => m.subject === 'kumo-anonymous')?.remoteAddress).toBe('127.0.0.2');
    await open.waitForLine(/delivery\(socks5\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+/);
  });

  it('answers refusals with the RFC 1928 reply: unknown source, port, no source, UDP', async () => {
    const { d, socks } = await proxy();
    const bind = await socksSession(socks, 'kumo', 'kumo-password-55');
    bind.s.write(ipv4Request(2, '127.0.0.9', 0));
    expect([...(await bind.read(2))]).toEqual([5, 2]); // not allowed by ruleset
    await bind.closed;
    const port = await socksSession(socks, 'alice', PASSWORD_A);
    port.s.write(ipv4Request(1, '127.0.0.1', 9));
    expect([...(await port.read(2))]).toEqual([5, 2]);
    await d.waitForLine(/delivery\(socks5:alice\): .*refused: 551/);
    const none = await socksSession(socks, 'kumo', 'kumo-password-55');
    none.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect([...(await none.read(2))]).toEqual([5, 2]);
    await d.waitForLine(/no source address: send BIND/);
    // an account with its own source_ip cannot BIND another one
    const pinned = await socksSession(socks, 'alice', PASSWORD_A);
    pinned.s.write(ipv4Request(2, '127.0.0.3', 0));
    expect([...(await pinned.read(2))]).toEqual([5, 2]);
    await d.waitForLine(/BIND to 127\.0\.0\.3: account alice sends from 127\.0\.0\.2 only/);
    const udp = await socksSession(socks, 'alice', PASSWORD_A);
    udp.s.write(ipv4Request(3, '0.0.0.0', 0));
    expect([...(await udp.read(2))]).toEqual([5, 7]); // command not supported
    await udp.closed;
  });

  it('holds a connection slot of the derived throttle for every delivery', async () => {
    const { d, socks } = await proxy('[derived_throttle]\nmax_connections = 1');
    const first = await socksSession(socks, 'alice', PASSWORD_A);
    first.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await first.read(10))[1]).toBe(0);
    // same source and destination: no slot within throttle_wait_timeout (1s) -> not allowed
    const second = await socksSession(socks, 'alice', PASSWORD_A);
    second.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect([...(await second.read(2))]).toEqual([5, 2]);
    await d.waitForLine(/delivery\(socks5:alice\): .*refused: 451/);
    // another source address is another throttle
    const other = await socksSession(socks, 'bob', 'bob-password-0912');
    other.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await other.read(10))[1]).toBe(0);
    // the slot comes back when the first tunnel closes
    first.s.destroy();
    other.s.destroy();
    await d.waitForLine(/delivery\(socks5:alice\): 127\.0\.0\.2:\d+ -> .* (mta )?closed/);
    const third = await socksSession(socks, 'alice', PASSWORD_A);
    third.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await third.read(10))[1]).toBe(0);
    third.s.destroy();
  });
});

describe('deliveries that are given up', () => {
  it('a client that closes (FIN) while waiting for a slot leaves the queue at once', async () => {
    const { d, socks } = await proxy('[derived_throttle]\nmax_connections = 1');
    const first = await socksSession(socks, 'alice', PASSWORD_A);
    first.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await first.read(10))[1]).toBe(0);
    const waiting = await socksSession(socks, 'alice', PASSWORD_A);
    waiting.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    waiting.s.end(); // half-close: the proxy must not wait for its throttle_wait_timeout (1 s)
    await d.waitForLine(/delivery\(socks5:alice\): client closed before the tunnel was open/, 800);
    expect(Date.now() - t0).toBeLessThan(800);
    expect(d.lines.join('\n')).not.toMatch(/refused: 451/);
    // the slot is still the first tunnel's; when it closes, the next client gets it at once
    first.s.destroy();
    const next = await socksSession(socks, 'alice', PASSWORD_A);
    next.s.write(ipv4Request(1, '127.0.0.1', smtpPort));
    expect((await next.read(10))[1]).toBe(0);
    next.s.destroy();
  });
});

describe('PROXY v2 front-end', () => {
  const header = (src: string, dst: string, dstPort: number) =>
    Buffer.from(new V2ProxyProtocol(Command.PROXY, TransportProtocol.STREAM,
      new IPv4ProxyAddress(IPv4Address.createFrom(src.split('.').map(Number)), 0, IPv4Address.createFrom(dst.split('.').map(Number)), dstPort)).build());

  it('delivers from the header\'s source address to its destination (header by proxy-protocol-js)', async () => {
    const { d, pp2 } = await proxy();
    for (const [source, subject] of [['127.0.0.2', 'pp2-a'], ['127.0.0.3', 'pp2-b']] as const) {
      const s = connect({ host: '127.0.0.1', port: pp2 });
      await new Promise((r) => s.once('connect', r));
      s.write(header(source, '127.0.0.1', smtpPort));
      await sendOver(s, subject);
      expect(seen.find((m) => m.subject === subject)?.remoteAddress).toBe(source);
    }
    await d.waitForLine(/delivery\(proxy-v2\): 127\.0\.0\.3:\d+ -> 127\.0\.0\.1:\d+ .* closed/);
  });

  it('answers a refused delivery with a 421 greeting the MTA can log', async () => {
    const { pp2 } = await proxy();
    const text = await exchange(pp2, header('127.0.0.9', '127.0.0.1', smtpPort));
    expect(text).toMatch(/^421 4\.4\.0 mtaproxy refused the connection: 550 .*127\.0\.0\.9/);
  });

  it('takes a slot of the derived throttle before connecting: a second delivery waits, then gets a 421 with the 451', async () => {
    const { d, pp2 } = await proxy('[derived_throttle]\nmax_connections = 1');
    const held = connect({ host: '127.0.0.1', port: pp2 });
    held.on('error', () => {});
    await new Promise((r) => held.once('connect', r));
    held.write(header('127.0.0.2', '127.0.0.1', smtpPort));
    await new Promise((r) => held.once('data', r)); // the MX's greeting: the tunnel holds the slot
    const before = connections.length;
    const started = Date.now();
    const text = await exchange(pp2, header('127.0.0.2', '127.0.0.1', smtpPort));
    expect(text).toMatch(/^421 4\.4\.0 mtaproxy refused the connection: 451 throttle 127\.0\.0\.2>127\.0\.0\.1:\d+: no connection became available in time/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900); // egress.throttle_wait_timeout = 1s
    expect(connections.length).toBe(before); // the MX never saw the second one
    held.destroy();
    await d.waitForLine(/delivery\(proxy-v2\): 127\.0\.0\.2:\d+ -> .* (mta )?closed/);
  });

  it('admits only proxy_v2.allow_from, checked after allow_from, before a byte is read', async () => {
    const { d, pp2 } = await proxy('allow_from = ["127.0.0.9"]');
    const before = connections.length;
    const s = connect({ host: '127.0.0.1', port: pp2 });
    s.on('error', () => {});
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString('latin1')));
    await new Promise((r) => s.once('connect', r));
    s.write(header('127.0.0.2', '127.0.0.1', smtpPort));
    await new Promise((r) => s.once('close', r));
    expect(got).toBe('');
    await d.waitForLine(/listener: refused 127\.0\.0\.1 on proxy-v2: not in proxy_v2\.allow_from/);
    expect(connections.length).toBe(before);
    // a reload that lets 127.0.0.1 in applies to new connections
    d.writeConfig(readFileSync(d.configFile, 'utf8').replace('allow_from = ["127.0.0.9"]', 'allow_from = ["127.0.0.0/8"]'));
    expect((await d.cli(['reload'])).stdout).toMatch(/changed: proxy_v2/);
    const ok = connect({ host: '127.0.0.1', port: pp2 });
    await new Promise((r) => ok.once('connect', r));
    ok.write(header('127.0.0.2', '127.0.0.1', smtpPort));
    await sendOver(ok, 'pp2-after-reload');
    expect(seen.find((m) => m.subject === 'pp2-after-reload')?.remoteAddress).toBe('127.0.0.2');
  });

  it('closes v1, truncated, oversized and garbage headers with a logged reason, without connecting out', async () => {
    const { d, pp2 } = await proxy('', 'handshake_timeout = "500ms"');
    const before = connections.length;
    const send = async (bytes: Buffer, end: boolean): Promise<void> => {
      const s = connect({ host: '127.0.0.1', port: pp2 });
      s.on('error', () => {});
      await new Promise((r) => s.once('connect', r));
      s.write(bytes);
      if (end) s.end();
      await new Promise((r) => s.once('close', r));
    };
    const v1 = new V1ProxyProtocol(INETProtocol.TCP4, new Peer('127.0.0.2', 1234), new Peer('127.0.0.1', smtpPort)).build();
    await send(Buffer.from(v1), false);
    const full = header('127.0.0.2', '127.0.0.1', smtpPort);
    await send(full.subarray(0, 20), true); // truncated, then EOF
    await send(full.subarray(0, 20), false); // truncated, then silence
    const oversized = Buffer.from(full);
    oversized.writeUInt16BE(60_000, 14); // length field far beyond any real header
    await send(oversized, false);
    await send(Buffer.from('EHLO mta.example\r\n'), false);
    const refusals = d.lines.filter((l) => /proxy-v2: 127\.0\.0\.1:\d+: refused: /.test(l));
    expect(refusals.length, refusals.join('\n')).toBe(5);
    expect(refusals.join('\n')).toMatch(/v1/i);
    expect(connections.length).toBe(before);
  });
});
