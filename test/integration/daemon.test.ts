// The daemon as a real process on real sockets: handshake, sessions, allow_from, reload, shutdown.
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient, ProxyError } from '../../src/client/index.js';
import { SharedSecret } from '../../src/config/secret.js';
import { authLine, parseGreeting } from '../../src/protocol/handshake.js';
import { configText, OTHER_SECRET, SECRET, startDaemon, freePort, type RunningDaemon } from '../helpers/daemon.js';
import { rawConnect } from '../helpers/raw.js';

const running: RunningDaemon[] = [];
async function daemon(opts: Parameters<typeof startDaemon>[0] = {}): Promise<RunningDaemon> {
  const d = await startDaemon(opts);
  running.push(d);
  return d;
}
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const NONCE = 'ab'.repeat(32);

describe('native handshake', () => {
  it('authenticates, opens a control session and reports backlog in mtaproxy status', async () => {
    const d = await daemon();
    const client = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await client.reportBacklog({ ram: 532, bounce: 1, disk: 1093 });
    expect(await client.ping()).toBeGreaterThan(0);
    const status = await d.cli(['status']);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^listener: open_connections=1$/m);
    expect(status.stdout).toMatch(/^throttle: manager\([0-9a-f]{8}\): throttles=0 sessions=1 backlog\(ram=532 bounce=1 disk=1093\) forward\(in=0\/16 out=0\/16 buf=0\) back\(in=0\/16 out=0\/16 buf=0\)$/m);
    expect(status.stdout).toMatch(/^throttle: session\(server-a\): timeconnected=\d+s ping=none backlog\(ram=532 bounce=1 disk=1093\)/m);
    expect(status.stdout).toMatch(/^direct_remote_smtp: connections=0\(active=0 cached=0\)$/m);
    await client.quit();
    expect(await client.closed).toBe('connection closed');
  });

  it('refuses a wrong secret, logs why, and never logs a secret', async () => {
    const d = await daemon();
    const err = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-b', secret: OTHER_SECRET }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe('EAUTH');
    await d.waitForLine(/handshake from 127\.0\.0\.1:\d+ failed: wrong proof .* session=server-b/);
    await d.stop();
    const log = d.lines.join('\n');
    expect(log).not.toContain(SECRET);
    expect(log).not.toContain(OTHER_SECRET);
  });

  it('refuses a handshake replayed on another connection', async () => {
    const d = await daemon();
    const first = await rawConnect(d.port);
    const greeting = parseGreeting(await first.line(/^MTAPROXY /));
    if (greeting === null) throw new Error('no greeting');
    const auth = authLine(new SharedSecret(SECRET), greeting.serverNonce, NONCE, 'server-a', first.binding);
    first.send(`${auth}\n`);
    expect(await first.line(/^OK /)).toMatch(/^OK [0-9a-f]{64}$/);
    const second = await rawConnect(d.port);
    await second.line(/^MTAPROXY /);
    second.send(`${auth}\n`);
    expect(await second.line(/^ERR /)).toBe('ERR 535 authentication failed');
    await second.closed;
    await d.waitForLine(/failed: wrong proof \(shared secret mismatch, replayed handshake, or a TLS-intercepting relay\)/);
    first.socket.destroy();
  });

  it('closes garbage, oversized lines and silent clients with a logged reason', async () => {
    const d = await daemon({ extra: 'handshake_timeout = "300ms"' });
    const garbage = await rawConnect(d.port);
    garbage.send('GET / HTTP/1.1\r\n\r\n');
    expect(await garbage.line(/^ERR /)).toBe('ERR 535 authentication failed');
    await garbage.closed;
    await d.waitForLine(/failed: expected "AUTH <name> <nonce> <proof>"/);

    const huge = await rawConnect(d.port);
    huge.send('A'.repeat(100_000));
    expect(await huge.line(/^ERR /)).toBe('ERR 500 line too long');
    await huge.closed;
    await d.waitForLine(/failed: line longer than 4096 bytes/);

    const silent = await rawConnect(d.port);
    const took = await silent.closed;
    expect(silent.received()).toMatch(/^MTAPROXY 1 [0-9a-f]{64}\nERR 421 handshake timeout\n$/);
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(3000);
    await d.waitForLine(/failed: no authentication within 300ms/);

    // still serving after all that
    const ok = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await ok.quit();
  });
});

describe('control sessions', () => {
  it('measures ping RTT and closes an MTA that stops answering', async () => {
    const d = await daemon({ extra: 'ping_interval = "200ms"\nstatus_interval = "100ms"' });
    const good = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await d.waitForLine(/throttle: session\(server-a\): timeconnected=\d+s ping=\d+\.\d{3}ms\(0s ago\)/);

    // a raw client that authenticates and then never says anything again
    const mute = await rawConnect(d.port);
    const greeting = parseGreeting(await mute.line(/^MTAPROXY /));
    if (greeting === null) throw new Error('no greeting');
    mute.send(`${authLine(new SharedSecret(SECRET), greeting.serverNonce, NONCE, 'mute', mute.binding)}\nCONTROL\n`);
    await mute.line(/^250 control session mute$/);
    expect(await mute.line(/^s\d+ PING$/)).toMatch(/^s\d+ PING$/);
    const took = await mute.closed;
    expect(took).toBeLessThan(3000);
    expect(mute.received()).toMatch(/\* 421 no traffic for \d+\.\ds \(ping timeout\)\n$/);
    await d.waitForLine(/session\(mute\): closed: no traffic/);
    expect(await good.ping()).toBeGreaterThan(0); // the answering session is unaffected
    await good.quit();
  });

  it('replaces an older session with the same name', async () => {
    const d = await daemon();
    const first = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    const second = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    expect(await first.closed).toMatch(/^421 replaced by a newer session from 127\.0\.0\.1:\d+$/);
    await d.waitForLine(/session\(server-a\): replaced by a new session/);
    expect(await second.ping()).toBeGreaterThan(0);
    const status = await d.cli(['status']);
    expect(status.stdout).toMatch(/sessions=1 /);
    await second.quit();
  });

  it('answers bad requests without dropping the session, and closes on protocol errors', async () => {
    const d = await daemon();
    const client = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await expect(client.request('FROB')).rejects.toThrow('FROB: 500 unknown command FROB');
    await expect(client.request('BACKLOG', ['ram=1'])).rejects.toThrow(/501 backlog needs ram=N bounce=N disk=N/);
    expect(await client.ping()).toBeGreaterThan(0);
    const raw = await rawConnect(d.port);
    const greeting = parseGreeting(await raw.line(/^MTAPROXY /));
    if (greeting === null) throw new Error('no greeting');
    raw.send(`${authLine(new SharedSecret(SECRET), greeting.serverNonce, NONCE, 'raw', raw.binding)}\nCONTROL\nthis is not a request\n`);
    expect(await raw.line(/^\* /)).toBe('* 500 protocol error: bad tag');
    await raw.closed;
    await client.quit();
  });
});

describe('allow_from', () => {
  it('closes refused peers before a byte is read or written, logs them rate-limited, and follows reload', async () => {
    const d = await daemon();
    d.writeConfig(configText({ adminSocket: d.adminSocket }).replace('allow_from = ["127.0.0.0/8"]', 'allow_from = ["127.0.0.2"]'));
    expect((await d.cli(['reload'])).code).toBe(0);
    for (let i = 0; i < 3; i++) {
      const refused = await rawConnect(d.port, { localAddress: '127.0.0.1' });
      await refused.closed;
      expect(refused.received()).toBe('');
    }
    await d.waitForLine(/listener: refused 127\.0\.0\.1 on native: not in allow_from/);
    expect(d.lines.filter((l) => /refused 127\.0\.0\.1/.test(l))).toHaveLength(1);
    const allowed = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET }).catch((e: unknown) => e);
    expect(allowed).toBeInstanceOf(ProxyError); // connecting from 127.0.0.1 is refused now
    const fromTwo = await rawConnect(d.port, { localAddress: '127.0.0.2' });
    expect(await fromTwo.line(/^MTAPROXY /)).toMatch(/^MTAPROXY 1 /);
    fromTwo.socket.destroy();
  });
});

describe('reload', () => {
  it('applies a valid config without dropping sessions (SIGHUP and mtaproxy reload)', async () => {
    const d = await daemon();
    const session = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    d.writeConfig(configText({ adminSocket: d.adminSocket, secret: OTHER_SECRET }));
    d.proc.kill('SIGHUP');
    await d.waitForLine(/reload: applied \(changed: auth_shared_secret\)/);
    expect(await session.ping()).toBeGreaterThan(0);
    await expect(ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'x', secret: SECRET })).rejects.toThrow(/refused/);
    const fresh = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-b', secret: OTHER_SECRET });

    d.writeConfig(configText({ adminSocket: d.adminSocket, secret: OTHER_SECRET, extra: 'log_verbose = true' }));
    const r = await d.cli(['reload']);
    expect(r).toMatchObject({ code: 0, stdout: 'reload: applied (changed: log_verbose)\n' });
    expect(await session.ping()).toBeGreaterThan(0);
    await session.quit();
    await fresh.quit();
  });

  it('rejects an invalid config with file:line reasons and keeps the old one fully in effect', async () => {
    const d = await daemon();
    const session = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    const newPort = await freePort();
    d.writeConfig(
      [`listen = "127.0.0.1:${newPort}"`, 'allow_from = ["127.0.0.0/8", "10.0.0.1/8"]', `auth_shared_secret = "${OTHER_SECRET}"`, `admin_socket = "${d.adminSocket}"`, 'status_intervall = "1s"'].join('\n'),
    );
    const r = await d.cli(['reload']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`mtaproxy: reload rejected, old config still in effect: ${d.configFile}:2:`);
    expect(r.stderr).toContain(`  ${d.configFile}:2:30: allow_from: "10.0.0.1/8" has host bits set; did you mean "10.0.0.0/8"?`);
    expect(r.stderr).toContain(`  ${d.configFile}:5:1: status_intervall: unknown directive; did you mean "status_interval"?`);
    await d.waitForLine(/ERROR reload rejected: .*status_intervall: unknown directive/);
    // old secret still works, the new listen address was not opened, the session survived
    const again = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-b', secret: SECRET });
    await expect(rawConnect(newPort)).rejects.toThrow(/ECONNREFUSED/);
    expect(await session.ping()).toBeGreaterThan(0);

    // SIGHUP takes the same path
    d.proc.kill('SIGHUP');
    await d.waitForLine(/reload rejected: .*has host bits set/);
    expect(await again.ping()).toBeGreaterThan(0);
    await again.quit();
    await session.quit();
  });

  it('rejects a reload whose new listen address cannot be bound', async () => {
    const d = await daemon();
    const other = await startDaemon();
    running.push(other);
    d.writeConfig(configText({ adminSocket: d.adminSocket, listen: `127.0.0.1:${other.port}` }));
    const r = await d.cli(['reload']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot listen on native tcp 127.0.0.1:${other.port}: address already in use`);
    const still = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await still.quit();
  });
});

describe('shutdown', () => {
  it('SIGTERM tells sessions, closes them and exits 0 promptly', async () => {
    const d = await daemon();
    const a = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    const b = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-b', secret: SECRET });
    const started = performance.now();
    d.proc.kill('SIGTERM');
    expect(await a.closed).toBe('421 mtaproxy shutting down');
    expect(await b.closed).toBe('421 mtaproxy shutting down');
    expect(await d.exited).toBe(0);
    expect(performance.now() - started).toBeLessThan(3000);
    await d.waitForLine(/mtaproxy stopped/);
  });

  it('closes a connection still in its handshake at once, even one that never sends its FIN', async () => {
    const d = await daemon({ extra: 'shutdown_timeout = "20s"' });
    const stubborn = await rawConnect(d.port);
    stubborn.socket.allowHalfOpen = true; // never answer the daemon's FIN
    await stubborn.line(/^MTAPROXY /);
    const started = performance.now();
    d.proc.kill('SIGTERM');
    expect(await d.exited).toBe(0);
    expect(performance.now() - started).toBeLessThan(3000); // not the 20 s of shutdown_timeout
    await d.waitForLine(/shutdown: all tunnels finished/);
  });
});

describe('bad input', () => {
  it('answers garbage on the admin socket with an error and keeps running', async () => {
    const d = await daemon();
    const { connect } = await import('node:net');
    const ask = (payload: string): Promise<string> =>
      new Promise((resolve) => {
        const s = connect(d.adminSocket);
        let data = '';
        s.on('data', (c: Buffer) => (data += c.toString()));
        s.on('close', () => resolve(data));
        s.on('error', () => resolve(data));
        s.write(payload);
      });
    expect(await ask('hello\n')).toBe('{"ok":false,"message":"request is not JSON"}\n');
    expect(await ask('{"command":"shutdown"}\n')).toBe('{"ok":false,"message":"unknown command (expected \\"reload\\", \\"status\\" or \\"throttles\\")"}\n');
    expect(await ask('x'.repeat(5000))).toBe('{"ok":false,"message":"line longer than 1024 bytes"}\n');
    expect((await d.cli(['status'])).code).toBe(0);
  });

  it('survives random bytes on the native port', async () => {
    const d = await daemon();
    const { randomBytes } = await import('node:crypto');
    for (let i = 0; i < 50; i++) {
      const c = await rawConnect(d.port);
      c.send(randomBytes(1 + (i * 97) % 3000).toString('latin1'));
      if (i % 2 === 0) c.send('\n');
      c.socket.end();
      await c.closed;
    }
    const ok = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    await ok.quit();
    expect(d.proc.exitCode).toBeNull();
  });
});
