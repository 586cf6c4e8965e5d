// The MTA-side client against real daemons: reconnect with backoff and re-declaration after a
// proxy restart; the documented example (examples/deliver.mjs, docs/client.md) run as it is.
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

describe('examples/deliver.mjs (the example in docs/client.md)', () => {
  it('delivers a message from the chosen source address through a real daemon', async () => {
    const seen: string[] = [];
    const smtp = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onData(stream, session, callback) {
        stream.resume();
        stream.on('end', () => {
          seen.push(session.remoteAddress);
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', resolve));
    const mxPort = (smtp.server.address() as AddressInfo).port;
    try {
      const d = await startDaemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${mxPort}]\nallow_private_destinations = true\n` });
      running.push(d);
      const env = { ...process.env, MTAPROXY_PORT: String(d.port), MTAPROXY_SECRET: SECRET, SOURCE_IP: '127.0.0.2', MX_PORT: String(mxPort) };
      const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile(process.execPath, [join(ROOT, 'examples/deliver.mjs')], { env, timeout: 15_000 }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout, stderr }));
      });
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toMatch(/^example-mx max_connections=2 max_messages_per_hour=3600 mode=sum$/m);
      expect(out.stdout).toMatch(/^tunnel 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+$/m);
      expect(out.stdout).toMatch(/^accepted: 250 /m);
      expect(seen).toEqual(['127.0.0.2']);
    } finally {
      await new Promise<void>((resolve) => smtp.close(() => resolve()));
    }
  });
});
