// Deliveries through the proxy to a real SMTP server (smtp-server), sent by a real SMTP client
// (nodemailer's SMTPConnection) over the tunnel, from the source address the MTA chose.
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel, ProxyError } from '../../src/client/index.js';
import { SharedSecret } from '../../src/config/secret.js';
import { authLine, parseGreeting } from '../../src/protocol/handshake.js';
import { freePort, SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { rawConnect } from '../helpers/raw.js';

interface Received {
  remoteAddress: string;
  sha256: string;
  size: number;
}

let smtp: SMTPServer;
let smtpPort = 0;
const received: Received[] = [];

beforeAll(async () => {
  smtp = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    size: 50 * 1024 * 1024,
    logger: false,
    onData(stream, session, callback) {
      const hash = createHash('sha256');
      let size = 0;
      stream.on('data', (c: Buffer) => {
        hash.update(c);
        size += c.length;
      });
      stream.on('end', () => {
        received.push({ remoteAddress: session.remoteAddress, sha256: hash.digest('hex'), size });
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
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

/**
 * A daemon for these tests. The ping interval is short only where a test is about liveness: with
 * 200 ms, a test process busy for 400 ms (building a 10 MB body on a loaded CI machine) misses
 * two pings and its session is rightly closed.
 */
async function proxy(extra = '', pingInterval = '2s'): Promise<RunningDaemon> {
  const d = await startDaemon({
    extra: `ping_interval = "${pingInterval}"\n[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\nports = [${smtpPort}, 25]\nallow_private_destinations = true\nthrottle_wait_timeout = "5s"\n${extra}`,
  });
  running.push(d);
  return d;
}

async function session(d: RunningDaemon, name: string): Promise<ControlClient> {
  const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name, secret: SECRET });
  clients.push(c);
  return c;
}

const tunnel = (d: RunningDaemon, name: string, source: string, throttle: string, port = smtpPort, waitMs?: number) =>
  openTunnel({ host: '127.0.0.1', port: d.port, name, secret: SECRET, source, destination: { host: '127.0.0.1', port }, throttle, ...(waitMs === undefined ? {} : { waitMs }) });

/** Sends one message over an open tunnel with nodemailer's SMTP client. */
async function sendOver(socket: Socket, body: Buffer): Promise<void> {
  const conn = new SMTPConnection({ connection: socket, name: 'mta.example', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  await new Promise<void>((resolve, reject) => {
    conn.send({ from: 'a@example.com', to: ['b@example.net'] }, body, (err) => (err ? reject(err) : resolve()));
  });
  conn.quit();
  await new Promise<void>((resolve) => conn.once('end', () => resolve()));
}

describe('deliveries', () => {
  it('connects from the chosen source address and carries a 10 MB message byte-identical', async () => {
    const d = await proxy();
    const a = await session(d, 'server-a');
    expect(await a.declare({ key: 'local-2', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 1000, mode: 'sum' })).toBe('local-2 max_connections=2 max_messages_per_hour=1000 mode=sum');
    await a.declare({ key: 'local-3', sourceIp: '127.0.0.3', maxConnections: 2, maxMessagesPerHour: 1000, mode: 'sum' });

    const body = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.from(randomBytes(7_500_000).toString('base64').replace(/.{76}/g, '$&\r\n')), Buffer.from('\r\n.leading dot\r\n')]);
    expect(body.length).toBeGreaterThan(10_000_000);
    const t = await tunnel(d, 'server-a', '127.0.0.2', 'local-2');
    expect(t.local).toMatch(/^127\.0\.0\.2:\d+$/);
    expect(t.remote).toBe(`127.0.0.1:${smtpPort}`);
    const status = await d.cli(['status']);
    expect(status.stdout).toMatch(/throttles=2 sessions=1 /);
    expect(status.stdout).toContain('direct_remote_smtp: connections=1(active=1 cached=0)');
    await sendOver(t.socket, body);
    const got = received.at(-1) as Received;
    expect(got.remoteAddress).toBe('127.0.0.2');
    expect(got.size).toBe(body.length);
    expect(got.sha256).toBe(createHash('sha256').update(body).digest('hex'));
    await d.waitForLine(/delivery\(server-a\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+ throttle=local-2 up=\d{8} down=\d+ \d+ms closed/);

    const t3 = await tunnel(d, 'server-a', '127.0.0.3', 'local-3');
    await sendOver(t3.socket, Buffer.from('Subject: small\r\n\r\nhello\r\n'));
    expect(received.at(-1)?.remoteAddress).toBe('127.0.0.3');
  });

  it('answers each failure with its own code and a reason', async () => {
    const d = await proxy();
    const a = await session(d, 'server-a');
    await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
    const closedPort = await freePort();
    const refused = async (p: Promise<unknown>): Promise<string> => {
      const err = await p.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ProxyError);
      return (err as ProxyError).message;
    };
    expect(await refused(tunnel(d, 'server-a', '127.0.0.9', 'k'))).toBe('CONNECT refused: 550 source 127.0.0.9 is not in egress.source_ips');
    expect(await refused(tunnel(d, 'server-a', '127.0.0.2', 'k', 2626))).toBe(`CONNECT refused: 551 destination port 2626 is not in egress.ports (${smtpPort}, 25)`);
    expect(await refused(tunnel(d, 'server-a', '127.0.0.2', 'nope'))).toBe("CONNECT refused: 553 throttle nope is not declared on this MTA's control session");
    expect(await refused(tunnel(d, 'server-z', '127.0.0.2', 'k'))).toBe('CONNECT refused: 553 server-z has no control session: open one and DECLARE k first');
    expect(await refused(tunnel(d, 'server-a', '127.0.0.2', 'k', 25))).toMatch(/^CONNECT refused: 442 127\.0\.0\.1:25 from 127\.0\.0\.2: connection refused$/);
    expect(closedPort).toBeGreaterThan(0);

    const held = await tunnel(d, 'server-a', '127.0.0.2', 'k');
    const started = performance.now();
    expect(await refused(tunnel(d, 'server-a', '127.0.0.2', 'k', smtpPort, 200))).toBe('CONNECT refused: 451 throttle k: no connection became available in time');
    expect(performance.now() - started).toBeGreaterThanOrEqual(190);
    held.socket.destroy();
    // the slot comes back when the tunnel closes
    const next = await tunnel(d, 'server-a', '127.0.0.2', 'k', smtpPort, 2000);
    next.socket.destroy();
    await d.waitForLine(/delivery\(server-a\): 127\.0\.0\.2 -> 127\.0\.0\.1:\d+ throttle=k refused: 451/);
  });

  it('refuses private destinations unless allowed, after resolving names', async () => {
    const d = await startDaemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${smtpPort}]\n` });
    running.push(d);
    const a = await session(d, 'server-a');
    await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 5, maxMessagesPerHour: 100, mode: 'sum' });
    for (const host of ['127.0.0.1', 'localhost']) {
      const err = await openTunnel({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET, source: '127.0.0.2', destination: { host, port: smtpPort }, throttle: 'k' }).catch((e: unknown) => e);
      expect((err as ProxyError).message).toBe('CONNECT refused: 552 destination 127.0.0.1 is loopback; set egress.allow_private_destinations = true to allow it');
    }
  });

  it('waits in line for a slot and gets it when another delivery ends', async () => {
    const d = await proxy();
    const a = await session(d, 'server-a');
    await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
    const first = await tunnel(d, 'server-a', '127.0.0.2', 'k');
    const second = tunnel(d, 'server-a', '127.0.0.2', 'k', smtpPort, 3000);
    await new Promise((r) => setTimeout(r, 150));
    await sendOver(first.socket, Buffer.from('Subject: one\r\n\r\n1\r\n'));
    const t = await second;
    await sendOver(t.socket, Buffer.from('Subject: two\r\n\r\n2\r\n'));
  });
});

/** A daemon that may deliver to 127.0.0.1:port, an MTA session that declared throttle k, and a tunnel there. */
async function tunnelTo(port: number): Promise<{ d: RunningDaemon; t: Awaited<ReturnType<typeof openTunnel>> }> {
  const d = await startDaemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${port}]\nallow_private_destinations = true\n` });
  running.push(d);
  const a = await session(d, 'server-a');
  await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
  const t = await openTunnel({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port }, throttle: 'k' });
  return { d, t };
}

describe('the destination side of a tunnel', () => {
  // The destination's bytes reach the proxy through net.connect's onread (one shared buffer,
  // copied per read): what matters is that none is lost, reordered or overwritten when the MTA
  // is slow, and that the proxy stops reading the destination instead of buffering for it.
  it('stops reading a destination the MTA does not keep up with, then gives the MTA every byte in order', async () => {
    const total = 48 * 1024 * 1024;
    const payload = randomBytes(total);
    let destination: Socket | null = null;
    const server = createServer((s) => {
      destination = s;
      s.on('error', () => {});
      s.end(payload); // all of it at once: only TCP and the proxy's reading hold it back
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const { d, t } = await tunnelTo(port);
      // the MTA reads nothing for a second (openTunnel hands the socket over paused)
      await new Promise((r) => setTimeout(r, 1000));
      expect(destination).not.toBeNull();
      // loopback's socket buffers hold up to ~20 MB between the four ends; the rest is still the
      // destination's: the proxy read no more than its own bound (128 KiB) past them
      const held = (destination as unknown as Socket).writableLength;
      expect(held).toBeGreaterThan(16 * 1024 * 1024);
      const hash = createHash('sha256');
      let got = 0;
      t.socket.on('data', (c: Buffer) => {
        hash.update(c);
        got += c.length;
      });
      await new Promise<void>((resolve) => {
        t.socket.once('end', () => {
          t.socket.end();
          resolve();
        });
        t.socket.resume();
      });
      expect(got).toBe(total);
      expect(hash.digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
      await d.waitForLine(new RegExp(`delivery\\(server-a\\): 127\\.0\\.0\\.2:\\d+ -> 127\\.0\\.0\\.1:${port} throttle=k up=0 down=${total} \\d+ms closed`));
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('carries a reply that arrives in the same read as the destination\'s end, and many small replies in order', async () => {
    const lines = Array.from({ length: 2000 }, (_, i) => `250-line ${i} ${'x'.repeat(i % 97)}\r\n`).join('');
    const server = createServer((s) => {
      s.on('error', () => {});
      // many small writes (each may be its own read in the proxy), then the last bytes with the FIN
      let i = 0;
      const step = (): void => {
        for (let k = 0; k < 50 && i < lines.length; k++, i += 37) s.write(lines.slice(i, i + 37));
        if (i < lines.length) setImmediate(step);
        else s.end('221 bye\r\n');
      };
      step();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const { d, t } = await tunnelTo(port);
      const chunks: Buffer[] = [];
      t.socket.on('data', (c: Buffer) => chunks.push(c));
      await new Promise<void>((resolve) => {
        t.socket.once('end', () => {
          t.socket.end();
          resolve();
        });
        t.socket.resume();
      });
      expect(Buffer.concat(chunks).toString()).toBe(`${lines}221 bye\r\n`);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('cooperative throttling over control sessions', () => {
  it('average mode: one cluster-wide limit; a killed MTA\'s lease returns within two ping intervals', async () => {
    const d = await proxy('', '200ms');
    // a raw MTA that takes the only slot, then stops answering pings (as a frozen or killed process)
    const mute = await rawConnect(d.port);
    const greeting = parseGreeting(await mute.line(/^MTAPROXY /));
    if (greeting === null) throw new Error('no greeting');
    mute.send(`${authLine(new SharedSecret(SECRET), greeting.serverNonce, 'cd'.repeat(32), 'frozen', mute.binding)}\nCONTROL\n`);
    mute.send('1 DECLARE k source=127.0.0.2 max_connections=1 max_messages_per_hour=100 mode=average\n2 ACQUIRE k connection\n');
    expect(await mute.line(/^2 /)).toMatch(/^2 250 lease \d+$/);

    const b = await session(d, 'server-b');
    expect(await b.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'average' })).toContain('max_connections=1 ');
    const started = performance.now();
    const lease = await b.acquire('k', 'connection', 5000);
    const waited = performance.now() - started;
    expect(lease).toBeGreaterThan(0);
    // ping_interval is 200 ms: silent for 2 intervals -> closed, its lease returned
    expect(waited).toBeGreaterThan(250);
    expect(waited).toBeLessThan(2 * 200 + 400);
    await d.waitForLine(/session\(frozen\): closed: no traffic/);
    await b.release(lease as number);
  });

  it('sum mode adds the MTAs\' limits and enforces them on ACQUIRE; messages are rate-limited', async () => {
    const d = await proxy();
    const a = await session(d, 'server-a');
    const b = await session(d, 'server-b');
    await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 60, mode: 'sum' });
    expect(await b.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 60, mode: 'sum' })).toBe('k max_connections=3 max_messages_per_hour=120 mode=sum');
    const leases = [await a.acquire('k', 'connection', 0), await a.acquire('k', 'connection', 0), await b.acquire('k', 'connection', 0)];
    await expect(b.acquire('k', 'connection', 0)).rejects.toThrow(/451 throttle k: no connection available/);
    await a.release(leases[0] as number);
    expect(await b.acquire('k', 'connection', 0)).toBeGreaterThan(0);
    await expect(b.release(leases[0] as number)).rejects.toThrow(/550 no lease/);
    // 120/hour = one token every 30 s: the bucket started with server-a's burst of 1
    expect(await a.acquire('k', 'message', 0)).toBeNull();
    await expect(b.acquire('k', 'message', 100)).rejects.toThrow(/451 throttle k: no message became available in time/);
    await expect(a.declare({ key: 'x', sourceIp: '127.0.0.9', maxConnections: 1, maxMessagesPerHour: 1, mode: 'sum' })).rejects.toThrow('550 source 127.0.0.9 is not in egress.source_ips');
  });
});

describe('waiting requests', () => {
  it('never stop the session: other keys, RELEASE and pings get through; past 1024 waiting, 452', async () => {
    const d = await proxy('', '200ms');
    const a = await session(d, 'server-a');
    await a.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
    await a.declare({ key: 'other', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
    const held = await a.acquire('k', 'connection', 0);
    // 40 requests that must wait on k, more than the advised window of 16
    const waiting = Array.from({ length: 40 }, () => a.acquire('k', 'connection', 5000).catch((e: Error) => e));
    // another throttle is not held up behind them
    const started = performance.now();
    const other = await a.acquire('other', 'connection', 0);
    expect(performance.now() - started).toBeLessThan(500);
    await new Promise((r) => setTimeout(r, 700)); // > 2 ping intervals of 200 ms: the MTA stays alive
    const status = await d.cli(['status']);
    expect(status.stdout).toMatch(/session\(server-a\): timeconnected=\d+s ping=\d+\.\d{3}ms\(0s ago\) .* forward\(in=40\/16 out=0\/16 buf=0\)/);
    await a.release(other as number);
    await a.release(held as number);
    // the slot passes along the queue: each grant is released at once (no reply), the next one gets it
    const results = await Promise.all(waiting.map(async (p) => {
      const r = await p;
      if (typeof r === 'number') a.releaseNow(r);
      return r;
    }));
    expect(results.filter((r) => typeof r === 'number')).toHaveLength(40);
    expect(d.lines.join('\n')).not.toMatch(/session\(server-a\): closed/);

    // bounded: with 1024 waiting, the next ACQUIRE is refused at once
    const blocker = await a.acquire('k', 'connection', 0);
    const many = Array.from({ length: 1024 }, () => a.acquire('k', 'connection', 5000).catch((e: Error) => e.message));
    await expect(a.acquire('k', 'connection', 5000)).rejects.toThrow('452 too many ACQUIREs waiting on this session (1024)');
    await a.release(blocker as number);
    const first = await many[0];
    expect(typeof first).toBe('number');
    a.destroy(); // the session's leases and waits go with it
  });

  it('accepts the no-reply tag "-" only on RELEASE', async () => {
    const d = await proxy();
    const raw = await rawConnect(d.port);
    const greeting = parseGreeting(await raw.line(/^MTAPROXY /));
    if (greeting === null) throw new Error('no greeting');
    raw.send(`${authLine(new SharedSecret(SECRET), greeting.serverNonce, 'ab'.repeat(32), 'server-r', raw.binding)}\nCONTROL\n`);
    await raw.line(/^250 control session/);
    raw.send('- ACQUIRE k connection\n');
    await raw.closed;
    await d.waitForLine(/session\(server-r\): .*the tag "-" \(no reply\) is only for RELEASE, not ACQUIRE/);
  });
});
