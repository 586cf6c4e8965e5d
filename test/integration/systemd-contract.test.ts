// The daemon's contract with systemd, against real peers: a NOTIFY_SOCKET datagram receiver and
// systemd-socket-activate passing the listening socket.
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/client/index.js';
import { configText, freePort, SECRET, startDaemon, tempDir, type RunningDaemon } from '../helpers/daemon.js';
import { notifyReceiver, type NotifyReceiver } from '../helpers/notify-socket.js';

const running: RunningDaemon[] = [];
const receivers: NotifyReceiver[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
  for (const r of receivers.splice(0)) r.close();
});

function receiver(): NotifyReceiver {
  const r = notifyReceiver(tempDir());
  receivers.push(r);
  return r;
}

describe('sd_notify', () => {
  it('sends READY, RELOADING+MONOTONIC_USEC then READY (also when rejected), STATUS and STOPPING, in order', async () => {
    const notify = receiver();
    const d = await startDaemon({ env: { NOTIFY_SOCKET: notify.path }, extra: 'status_interval = "200ms"' });
    running.push(d);
    await notify.waitFor(/^READY=1\nSTATUS=0 connections, 0 sessions, listening on 127\.0\.0\.1:\d+$/);
    await notify.waitFor(/^STATUS=0 connections/);

    const beforeReload = process.hrtime.bigint() / 1000n;
    expect((await d.cli(['reload'])).code).toBe(0);
    d.writeConfig(configText({ adminSocket: d.adminSocket }).replace('allow_from = ["127.0.0.0/8"]', 'allow_from = "nonsense"'));
    expect((await d.cli(['reload'])).code).toBe(1);
    // the periodic STATUS= (a datagram of its own, not the READY=1 one) keeps the reason until a
    // reload succeeds
    await notify.waitFor(/^STATUS=reload rejected, old config still in effect: .*; 0 connections, 0 sessions/);
    d.proc.kill('SIGTERM');
    expect(await d.exited).toBe(0);

    const events = notify.messages.filter((m) => !/^STATUS=/.test(m)); // periodic STATUS lines interleave
    expect(events.map((m) => m.split('\n')[0])).toEqual(['READY=1', 'RELOADING=1', 'READY=1', 'RELOADING=1', 'READY=1', 'STOPPING=1']);
    const [, reload1, ready1, reload2, ready2, stopping] = events as [string, string, string, string, string, string];
    const usec = BigInt(/MONOTONIC_USEC=(\d+)$/.exec(reload1)?.[1] ?? '0');
    // CLOCK_MONOTONIC µs: the same clock as this process's hrtime, taken between our two readings
    expect(usec).toBeGreaterThanOrEqual(beforeReload);
    expect(usec).toBeLessThanOrEqual(process.hrtime.bigint() / 1000n);
    expect(reload2).toMatch(/^RELOADING=1\nMONOTONIC_USEC=\d+$/);
    expect(ready1).toMatch(/^READY=1\nSTATUS=.*reload: no changes$/);
    expect(ready2).toMatch(/^READY=1\nSTATUS=reload rejected, old config still in effect: .*mtaproxy\.toml:\d+:\d+: allow_from: /);
    // the default shutdown_timeout (2m) plus 5 s: systemd waits for the drain even if TimeoutStopSec= is shorter
    expect(stopping).toBe('STOPPING=1\nSTATUS=stopping: SIGTERM; draining 0 tunnels (at most 120s)\nEXTEND_TIMEOUT_USEC=125000000');
  });

  it('pings the watchdog at half of WATCHDOG_USEC, and only when WATCHDOG_PID is ours', async () => {
    const notify = receiver();
    const d = await startDaemon({ env: { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000' } });
    running.push(d);
    await new Promise((r) => setTimeout(r, 650));
    const pings = notify.messages.filter((m) => m === 'WATCHDOG=1').length;
    expect(pings).toBeGreaterThanOrEqual(4); // every 100 ms
    expect(pings).toBeLessThanOrEqual(8);

    const other = receiver();
    const d2 = await startDaemon({ env: { NOTIFY_SOCKET: other.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' } });
    running.push(d2);
    await new Promise((r) => setTimeout(r, 400));
    expect(other.messages.filter((m) => m === 'WATCHDOG=1')).toHaveLength(0);
    expect(other.messages[0]).toMatch(/^READY=1/);
  });
});

describe('socket activation', () => {
  it('adopts the socket passed by systemd-socket-activate, ignores listen, and completes a handshake', async () => {
    const port = await freePort();
    const d = await startDaemon({
      // listen names a port nobody connects to: the passed socket must be used instead
      listen: '127.0.0.1:1',
      command: ['systemd-socket-activate', '-l', `127.0.0.1:${port}`, '--fdname=native'],
    });
    running.push(d);
    // systemd-socket-activate execs the daemon only at the first connection
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-a', secret: SECRET });
    expect(await client.ping()).toBeGreaterThan(0);
    await d.waitForLine(/listener: using 1 socket\(s\) passed by systemd; "listen" in .* is ignored sockets="3=native"/);
    await d.waitForLine(/listener: native on 127\.0\.0\.1:\d+/);
    const status = await d.cli(['status']);
    expect(status.stdout).toMatch(/session\(server-a\)/);
    await client.quit();
  });

  // tls = false: the warning follows the sockets systemd passed, not `listen` (ignored under activation)
  const PLAINTEXT_WARNING = /WARN listener: tls = false and native socket 3 \(native\) passed by systemd is bound to 0\.0\.0\.0:(\d+), not a loopback address: .*plain text.*remove tls = false, or bind the socket unit's ListenStream= to a loopback address/;

  it('warns at start about a plaintext (tls = false) socket passed by systemd on a non-loopback address, whatever listen says', async () => {
    const port = await freePort();
    const d = await startDaemon({
      tls: false,
      listen: '127.0.0.1:1', // loopback, but ignored: the passed socket listens on every address
      command: ['systemd-socket-activate', '-l', `0.0.0.0:${port}`, '--fdname=native'],
    });
    running.push(d);
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-a', secret: SECRET, tls: false });
    await d.waitForLine(/mtaproxy started/);
    const line = await d.waitForLine(PLAINTEXT_WARNING);
    expect(PLAINTEXT_WARNING.exec(line)?.[1]).toBe(String(port));
    expect(line).toMatch(/ front_end=native address=0\.0\.0\.0:\d+ fd=3 fd_name=native$/);
    // nothing about the ignored `listen`
    expect(d.lines.filter((l) => /tls = false and listen/.test(l))).toEqual([]);
    await client.quit();
  });

  it('does not warn about a plaintext socket passed by systemd on loopback, even when listen is not loopback', async () => {
    const port = await freePort();
    const d = await startDaemon({
      tls: false,
      listen: '0.0.0.0:1', // not loopback, but ignored
      command: ['systemd-socket-activate', '-l', `127.0.0.1:${port}`, '--fdname=native'],
    });
    running.push(d);
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-a', secret: SECRET, tls: false });
    await d.waitForLine(/mtaproxy started/);
    await client.quit();
    expect(d.lines.filter((l) => / WARN .*(not a loopback|plain text)/.test(l))).toEqual([]);
  });

  it('refuses to start on a socket with an unknown FileDescriptorName', async () => {
    const port = await freePort();
    const d = await startDaemon({ command: ['systemd-socket-activate', '-l', `127.0.0.1:${port}`, '--fdname=smtp'] });
    running.push(d);
    const { connect } = await import('node:net');
    const s = connect({ host: '127.0.0.1', port });
    s.on('error', () => {});
    expect(await d.exited).toBe(1);
    expect(d.lines.join('\n')).toContain('socket activation: socket 3 has FileDescriptorName=smtp; this version serves: native, socks5, proxy-v2, admin');
    s.destroy();
  });
});
