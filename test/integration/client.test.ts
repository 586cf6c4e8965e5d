// The MTA-side client against real daemons: reconnect with backoff and re-declaration after a
// proxy restart.
import { afterEach, describe, expect, it } from 'vitest';
import { ResilientControl } from '../../src/client/index.js';
import { freePort, SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

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
