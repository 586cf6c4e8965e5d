// The MTA-side client against real daemons: reconnect with backoff and re-declaration after a
// proxy restart; the documented examples (examples/deliver.mjs, examples/transport.mjs,
// docs/client.md) run as they are, against an MX with STARTTLS on a self-signed certificate.
import { execFile } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterEach, describe, expect, it } from 'vitest';
import { ResilientControl } from '../../src/client/index.js';
import { freePort, ROOT, SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

const running: RunningDaemon[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const egress = '[egress]\nsource_ips = ["127.0.0.2"]\nports = [25]\n';

describe('ResilientControl', () => {
  it('reconnects after a proxy restart and re-declares its throttles and backlog', async () => {
    const port = await freePort();
    const first = await startDaemon({ listen: `127.0.0.1:${port}`, extra: egress });
    running.push(first);
    const events: string[] = [];
    const mta = new ResilientControl({
      host: '127.0.0.1', port, name: 'server-a', secret: SECRET, minBackoffMs: 50, maxBackoffMs: 200,
      onEvent: (e) => events.push(e.type),
    }).start();
    expect(await mta.declare({ key: 'gmail', sourceIp: '127.0.0.2', maxConnections: 3, maxMessagesPerHour: 100, mode: 'sum' })).toContain('max_connections=3');
    await mta.reportBacklog({ ram: 10, bounce: 0, disk: 90 });
    expect((await first.cli(['status'])).stdout).toMatch(/throttles=1 sessions=1 backlog\(ram=10 bounce=0 disk=90\)/);

    await first.stop(); // the proxy goes away; the MTA keeps retrying
    await new Promise((r) => setTimeout(r, 300));
    expect(mta.connected).toBe(false);
    const second = await startDaemon({ listen: `127.0.0.1:${port}`, extra: egress });
    running.push(second);
    const client = await mta.ready();
    expect(await client.ping()).toBeGreaterThan(0);
    // the new proxy knows the throttle and the backlog without the MTA doing anything
    const status = await second.cli(['status']);
    expect(status.stdout).toMatch(/throttles=1 sessions=1 backlog\(ram=10 bounce=0 disk=90\)/);
    expect(await mta.acquire('gmail', 'connection', 0)).toBeGreaterThan(0);
    expect(events[0]).toBe('connected');
    expect(events).toContain('disconnected');
    expect(events.at(-1)).toBe('connected');
    await mta.stop();
  });
});

/** An MX that offers STARTTLS with smtp-server's built-in self-signed certificate, as many MXs do. */
async function startTlsMx(): Promise<{ port: number; seen: { remoteAddress: string; to: string[]; secure: boolean }[]; close(): Promise<void> }> {
  const seen: { remoteAddress: string; to: string[]; secure: boolean }[] = [];
  const smtp = new SMTPServer({
    authOptional: true,
    logger: false,
    onRcptTo(address, _session, cb) {
      if (address.address.startsWith('reject')) return cb(Object.assign(new Error('5.1.1 no such user here'), { responseCode: 550 }));
      cb();
    },
    onData(stream, session, callback) {
      stream.resume();
      stream.on('end', () => {
        seen.push({ remoteAddress: session.remoteAddress, to: session.envelope.rcptTo.map((r) => r.address), secure: session.secure });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', resolve));
  return { port: (smtp.server.address() as AddressInfo).port, seen, close: () => new Promise<void>((resolve) => smtp.close(() => resolve())) };
}

function runExample(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, file), ...args], { env: { ...process.env, ...env }, timeout: 15_000 }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout, stderr }));
  });
}

describe('examples/deliver.mjs (the example in docs/client.md)', () => {
  it('delivers a message from the chosen source address through a real daemon, to an MX with a self-signed certificate', async () => {
    const mx = await startTlsMx();
    try {
      const d = await startDaemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${mx.port}]\nallow_private_destinations = true\n` });
      running.push(d);
      const out = await runExample('examples/deliver.mjs', [], { MTAPROXY_PORT: String(d.port), MTAPROXY_SECRET: SECRET, SOURCE_IP: '127.0.0.2', MX_PORT: String(mx.port) });
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toMatch(/^example-mx max_connections=2 max_messages_per_hour=3600 mode=sum$/m);
      expect(out.stdout).toMatch(/^tunnel 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+$/m);
      expect(out.stdout).toMatch(/^starttls: yes$/m);
      expect(out.stdout).toMatch(/^accepted: 250 /m);
      expect(mx.seen).toEqual([{ remoteAddress: '127.0.0.2', to: ['rcpt@example.net'], secure: true }]);
    } finally {
      await mx.close();
    }
  });
});

describe('examples/transport.mjs (the nodemailer transport in docs/client.md)', () => {
  it('sends with nodemailer through smtp mode: the proxy does STARTTLS, each recipient gets its reply', async () => {
    const mx = await startTlsMx();
    try {
      const d = await startDaemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${mx.port}]\nallow_private_destinations = true\n` });
      running.push(d);
      const out = await runExample('examples/transport.mjs', ['rcpt@example.net', 'reject-me@example.net'], {
        MTAPROXY_PORT: String(d.port),
        MTAPROXY_SECRET: SECRET,
        SOURCE_IP: '127.0.0.2',
        EHLO: 'mail.example.com',
        MX: `example.net=127.0.0.1:${mx.port}`,
      });
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toMatch(/^accepted: rcpt@example\.net$/m);
      expect(out.stdout).toMatch(/^rejected: <reject-me@example\.net> 550 5\.1\.1 no such user here$/m);
      expect(out.stdout).toMatch(/^example\.net: mx 127\.0\.0\.1:\d+ from 127\.0\.0\.2:\d+ new connection tls=TLSv1\.[23]\/\S+: 250 OK: message queued$/m);
      // the proxy, not the example, did STARTTLS to the MX, from the source address
      expect(mx.seen).toEqual([{ remoteAddress: '127.0.0.2', to: ['rcpt@example.net'], secure: true }]);
      await d.waitForLine(/delivery\(example-app\): smtp 127\.0\.0\.2 -> 127\.0\.0\.1:\d+ throttle=example\.net@127\.0\.0\.2 transactions=1 /);
    } finally {
      // the daemon first: it QUITs its cached connection, which the MX's close would wait for
      await Promise.all(running.splice(0).map((r) => r.stop()));
      await mx.close();
    }
  });
});
