// The TLS link with real peers: openssl s_client's view of the proxy's certificate, a wrong
// secret, an intercepting TLS relay (channel binding) next to a plain TCP relay, a plaintext
// client on a TLS listener, a TLS client on a plaintext listener, resumption, pinning, and a
// reload with a new certificate.
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect, createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { authenticate, clearTlsSessions, ControlClient, openTunnel, ProxyError } from '../../src/client/index.js';
import { generateSelfSigned, type CertificatePair } from '../../src/config/x509.js';
import { tlsExporter } from '../../src/protocol/handshake.js';
import { configText, freePort, OTHER_SECRET, runCli, SECRET, startDaemon, tempDir, type RunningDaemon } from '../helpers/daemon.js';
import { rawConnect } from '../helpers/raw.js';

const running: RunningDaemon[] = [];
const closers: (() => void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) close();
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

async function daemon(opts: Parameters<typeof startDaemon>[0] = {}): Promise<RunningDaemon> {
  const d = await startDaemon(opts);
  running.push(d);
  return d;
}

const FINGERPRINT = /sha256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})/;
async function loggedFingerprint(d: RunningDaemon, after = 0): Promise<string> {
  const line = await d.waitForLine(FINGERPRINT);
  const all = d.lines.filter((l) => FINGERPRINT.test(l));
  return FINGERPRINT.exec(all[Math.max(after, 0)] ?? line)?.[1] ?? '';
}

function writePair(dir: string, name: string, pair: CertificatePair): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  writeFileSync(cert, pair.cert);
  writeFileSync(key, pair.key.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  return { cert, key };
}

async function listening(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => server.close());
  return (server.address() as AddressInfo).port;
}

function pipeBoth(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
}

const connectOpts = (port: number, extra: Partial<Parameters<typeof ControlClient.connect>[0]> = {}) => ({ host: '127.0.0.1', port, name: 'server-a', secret: SECRET, ...extra });

describe('TLS link', () => {
  it('shows openssl s_client the certificate whose fingerprint the proxy logged (TLS 1.3)', async () => {
    const d = await daemon();
    const fingerprint = await loggedFingerprint(d);
    const out = await new Promise<string>((resolve, reject) => {
      const child = execFile('sh', ['-c', `openssl s_client -connect 127.0.0.1:${d.port} -brief </dev/null 2>&1; openssl s_client -connect 127.0.0.1:${d.port} -showcerts </dev/null 2>/dev/null | openssl x509 -noout -subject -fingerprint -sha256`], (err, stdout) => (err ? reject(err) : resolve(stdout)));
      child.on('error', reject);
    });
    expect(out).toMatch(/Protocol version: TLSv1\.3/);
    expect(out).toMatch(/subject=\s?CN\s?=\s?\S+/);
    expect(out).toContain(`Fingerprint=${fingerprint}`);
    // openssl spoke first and never sent AUTH: the handshake timeout or the EOF ends it, the daemon lives on
    const ok = await ControlClient.connect(connectOpts(d.port));
    await ok.quit();
  });

  it('refuses an MTA with a wrong secret over TLS, and logs it', async () => {
    const d = await daemon();
    const err = await ControlClient.connect(connectOpts(d.port, { secret: OTHER_SECRET })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe('EAUTH');
    expect((err as ProxyError).message).toMatch(/535 authentication failed/);
    await d.waitForLine(/handshake from 127\.0\.0\.1:\d+ failed: wrong proof/);
  });

  it('fails the handshake through an intercepting TLS relay, but works through a plain TCP relay', async () => {
    const d = await daemon();
    // the man in the middle: his own certificate toward the MTA, his own TLS connection to the proxy
    const evil = generateSelfSigned('mtaproxy.example');
    const intercepted: string[] = [];
    const mitm = createTlsServer({ cert: evil.cert, key: evil.key.export({ type: 'pkcs8', format: 'pem' }) }, (fromMta) => {
      const toProxy = tlsConnect({ host: '127.0.0.1', port: d.port, rejectUnauthorized: false });
      fromMta.on('data', (c: Buffer) => intercepted.push(c.toString('utf8')));
      pipeBoth(fromMta, toProxy);
    });
    const mitmPort = await listening(mitm);
    const err = await ControlClient.connect(connectOpts(mitmPort)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe('EAUTH');
    // the relay read the AUTH line in the clear, and still could not use it
    expect(intercepted.join('')).toMatch(/^AUTH server-a [0-9a-f]{64} [0-9a-f]{64}\n/);
    await d.waitForLine(/failed: wrong proof \(shared secret mismatch, replayed handshake, or a TLS-intercepting relay\)/);

    // the client side too: a relay that answers with its own session to the proxy cannot produce a
    // server proof for the MTA's TLS connection (here it authenticates itself with the secret and
    // replays the proxy's OK toward the MTA)
    const replayer = createTlsServer({ cert: evil.cert, key: evil.key.export({ type: 'pkcs8', format: 'pem' }) }, (fromMta) => {
      void authenticate(connectOpts(d.port)).then(({ socket }) => {
        socket.destroy();
        // greeting with a fresh nonce, then an OK computed for some other connection
        fromMta.write(`MTAPROXY 1 ${'ab'.repeat(32)}\n`);
        fromMta.once('data', () => fromMta.write(`OK ${'00'.repeat(32)}\n`));
      });
    });
    const replayPort = await listening(replayer);
    const err2 = await ControlClient.connect(connectOpts(replayPort)).catch((e: unknown) => e);
    expect((err2 as ProxyError).message).toMatch(/could not prove it knows the shared secret for this TLS connection/);

    // no interception: the TLS connection is end to end, the relay only moves bytes
    const tcp = createTcpServer((fromMta) => pipeBoth(fromMta, connect({ host: '127.0.0.1', port: d.port })));
    const tcpPort = await listening(tcp);
    const ok = await ControlClient.connect(connectOpts(tcpPort));
    expect(await ok.ping()).toBeGreaterThan(0);
    await ok.quit();
  });

  it('answers a plaintext client on a TLS listener that TLS is required, within 2 s', async () => {
    const d = await daemon();
    const silent = await rawConnect(d.port, { tls: false });
    const took = await silent.closed;
    expect(silent.received()).toBe("ERR 421 this listener requires TLS: connect with TLS (mtaproxy/client: tls option), or set tls = false in the proxy's config for a trusted network\n");
    expect(took).toBeGreaterThan(1000);
    expect(took).toBeLessThan(2000);
    await d.waitForLine(/failed: sent nothing for 1500ms on a TLS listener \(a plaintext client\?\)/);

    // a client that speaks first in plain text is answered at once
    const talker = await rawConnect(d.port, { tls: false });
    talker.send('AUTH x y z\n');
    expect(await talker.closed).toBeLessThan(1000);
    expect(talker.received()).toMatch(/^ERR 421 this listener requires TLS/);
    await d.waitForLine(/failed: plaintext on a TLS listener \(first bytes "AUTH x y z\."\)/);

    // a TCP health check (connect, close) is closed at once and not logged
    const check = await rawConnect(d.port, { tls: false });
    check.socket.end();
    expect(await check.closed).toBeLessThan(1000);
    expect(check.received()).toBe('');

    // the client library, configured for plaintext, reports it
    const err = await ControlClient.connect(connectOpts(d.port, { tls: false })).catch((e: unknown) => e);
    expect((err as ProxyError).message).toMatch(/proxy refused: 421 this listener requires TLS/);
  });

  it('serves plaintext on a listener with tls = false, and the TLS client says so', async () => {
    const d = await daemon({ tls: false });
    await d.waitForLine(/tls: native listeners are plaintext \(tls = false\)/);
    const ok = await ControlClient.connect(connectOpts(d.port, { tls: false }));
    await ok.quit();
    const err = await ControlClient.connect(connectOpts(d.port)).catch((e: unknown) => e);
    expect((err as ProxyError).code).toBe('ETLS');
    expect((err as ProxyError).message).toMatch(/does not speak TLS \(a listener with tls = false\? then connect with tls: false\)/);
  });

  it('resumes TLS sessions, and checks a pinned fingerprint', async () => {
    const d = await daemon();
    const fingerprint = await loggedFingerprint(d);
    clearTlsSessions();
    const first = await authenticate(connectOpts(d.port));
    // TLS 1.3 tickets arrive after the handshake: give the 'session' event a moment
    await new Promise((r) => setTimeout(r, 50));
    expect((first.socket as TLSSocket).isSessionReused()).toBe(false);
    first.socket.destroy();
    const second = await authenticate(connectOpts(d.port));
    expect((second.socket as TLSSocket).isSessionReused()).toBe(true);
    second.socket.destroy();

    const pinned = await ControlClient.connect(connectOpts(d.port, { tls: { fingerprint256: fingerprint.toLowerCase().replace(/:/g, '') } }));
    await pinned.quit();
    const wrong = await ControlClient.connect(connectOpts(d.port, { tls: { fingerprint256: '00'.repeat(32) } })).catch((e: unknown) => e);
    expect((wrong as ProxyError).code).toBe('ETLS');
    expect((wrong as ProxyError).message).toContain(`presented certificate ${fingerprint}, not the pinned`);
  });

  it('binds resumed TLS sessions too: each has its own exporter, and a relay that resumes on both sides still fails', async () => {
    const d = await daemon();
    clearTlsSessions();
    // a full handshake, then two resumed ones: the proofs (checked by authenticate) cover each
    // connection's own tls-exporter value, which differs although the session is the same
    const first = await authenticate(connectOpts(d.port));
    await new Promise((r) => setTimeout(r, 50)); // the TLS 1.3 tickets arrive after the handshake
    const resumed = [await authenticate(connectOpts(d.port)), await authenticate(connectOpts(d.port))];
    const sockets = [first, ...resumed].map((a) => a.socket as TLSSocket);
    expect(sockets.map((s) => s.isSessionReused())).toEqual([false, true, true]);
    const exporters = new Set(sockets.map((s) => tlsExporter(s).toString('hex')));
    expect(exporters.size).toBe(3);
    for (const s of sockets) s.destroy();

    // the man in the middle resumes too: toward the proxy with a ticket of his own earlier
    // connection, toward the MTA with the ticket he issued it on its first attempt
    const evil = generateSelfSigned('mtaproxy.example');
    let upstreamSession: Buffer | undefined;
    const seen: { mtaResumed: boolean; proxyResumed: boolean }[] = [];
    const mitm = createTlsServer({ cert: evil.cert, key: evil.key.export({ type: 'pkcs8', format: 'pem' }) }, (fromMta) => {
      const toProxy = tlsConnect({ host: '127.0.0.1', port: d.port, rejectUnauthorized: false, ...(upstreamSession === undefined ? {} : { session: upstreamSession }) });
      toProxy.on('session', (t: Buffer) => (upstreamSession = t));
      toProxy.once('secureConnect', () => seen.push({ mtaResumed: fromMta.isSessionReused(), proxyResumed: toProxy.isSessionReused() }));
      pipeBoth(fromMta, toProxy);
    });
    const mitmPort = await listening(mitm);
    for (let attempt = 0; attempt < 2; attempt++) {
      const err = await ControlClient.connect(connectOpts(mitmPort)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ProxyError);
      expect((err as ProxyError).code).toBe('EAUTH');
      await new Promise((r) => setTimeout(r, 50));
    }
    // the second attempt really was resumed on both legs, and still failed
    expect(seen).toEqual([{ mtaResumed: false, proxyResumed: false }, { mtaResumed: true, proxyResumed: true }]);
    await d.waitForLine(/failed: wrong proof \(shared secret mismatch, replayed handshake, or a TLS-intercepting relay\)/);
  });

  it('applies a new certificate at reload to new connections; an established session stays up', async () => {
    const first = generateSelfSigned('proxy-a.example');
    const second = generateSelfSigned('proxy-b.example');
    const d0 = await daemon();
    const files = writePair(d0.dir, 'proxy', first);
    const tlsLines = `tls_certificate_file = "${files.cert}"\ntls_key_file = "${files.key}"`;
    d0.writeConfig(configText({ adminSocket: d0.adminSocket, extra: tlsLines }));
    expect((await d0.cli(['reload'])).stdout).toMatch(/applied \(changed: tls_certificate_file\)/);
    await d0.waitForLine(new RegExp(`fingerprint ${first.fingerprint256} \\(from ${files.cert.replace(/[.]/g, '\\.')}\\)`));

    const session = await ControlClient.connect(connectOpts(d0.port, { tls: { fingerprint256: first.fingerprint256 } }));
    // renewal in place: same file names, new contents
    writePair(d0.dir, 'proxy', second);
    expect((await d0.cli(['reload'])).stdout).toMatch(/applied \(changed: tls_certificate_file\)/);
    await d0.waitForLine(new RegExp(`fingerprint ${second.fingerprint256}`));
    const fresh = await ControlClient.connect(connectOpts(d0.port, { name: 'server-b', tls: { fingerprint256: second.fingerprint256 } }));
    expect(await session.ping()).toBeGreaterThan(0);
    await fresh.quit();
    await session.quit();

    // a broken pair is rejected, the old certificate stays in effect
    writeFileSync(files.key, first.key.export({ type: 'pkcs8', format: 'pem' }) as string);
    const rejected = await d0.cli(['reload']);
    expect(rejected.code).toBe(1);
    expect(rejected.stderr).toMatch(/tls_key_file: .* is not the private key of the certificate/);
    const still = await ControlClient.connect(connectOpts(d0.port, { name: 'server-c', tls: { fingerprint256: second.fingerprint256 } }));
    await still.quit();
  });

  it('check-config warns (exit 0) about a plaintext listener that is not loopback', async () => {
    const dir = tempDir();
    const file = join(dir, 'mtaproxy.toml');
    writeFileSync(file, configText({ adminSocket: join(dir, 'admin.sock'), listen: '0.0.0.0:807', tls: false }));
    const r = await runCli(['check-config', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${file}: warning: tls = false and listen "0.0.0.0:807" is not a loopback address`);
    expect(r.stdout).toMatch(/: OK\n$/);
    writeFileSync(file, configText({ adminSocket: join(dir, 'admin.sock'), listen: '127.0.0.1:807', tls: false }));
    expect((await runCli(['check-config', file])).stdout).toBe(`${file}: OK\n`);
  });

  it('the daemon warns about a plaintext listener on a non-loopback address at start, and when a reload turns TLS off', async () => {
    const listen = `0.0.0.0:${await freePort()}`;
    const warning = /WARN listener: tls = false and native listener 0\.0\.0\.0:\d+ is not a loopback address: .*plain text.*remove tls = false/;
    const d = await daemon({ tls: false, listen });
    await d.waitForLine(warning);
    const count = (): number => d.lines.filter((l) => warning.test(l)).length;
    expect(count()).toBe(1);
    d.writeConfig(configText({ adminSocket: d.adminSocket, listen }));
    expect((await d.cli(['reload'])).code).toBe(0);
    expect(count()).toBe(1);
    d.writeConfig(configText({ adminSocket: d.adminSocket, listen, tls: false }));
    expect((await d.cli(['reload'])).stdout).toMatch(/applied \(changed: tls\)/);
    expect(count()).toBe(2);
  });

  it('carries a tunnel over TLS with half-close: the destination answers after the MTA sent its FIN', async () => {
    const destination = createTcpServer({ allowHalfOpen: true }, (s) => {
      let got = '';
      s.on('data', (c: Buffer) => (got += c.toString('utf8')));
      s.on('end', () => setTimeout(() => s.end(`after your FIN I got ${JSON.stringify(got)}\n`), 100));
    });
    const destPort = await listening(destination);
    const d = await daemon({ extra: `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${destPort}]\nallow_private_destinations = true\n` });
    const control = await ControlClient.connect(connectOpts(d.port));
    await control.declare({ key: 'k', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' });
    const t = await openTunnel({ ...connectOpts(d.port), source: '127.0.0.2', destination: { host: '127.0.0.1', port: destPort }, throttle: 'k' });
    let reply = '';
    t.socket.on('data', (c: Buffer) => (reply += c.toString('utf8')));
    t.socket.resume(); // openTunnel hands the socket over paused
    const ended = new Promise<void>((resolve) => t.socket.once('end', () => resolve()));
    t.socket.end('QUIT\r\n');
    await ended;
    expect(reply).toBe('after your FIN I got "QUIT\\r\\n"\n');
    await d.waitForLine(/delivery\(server-a\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+ throttle=k up=6 down=\d+ \d+ms (remote )?closed/);
    await control.quit();
  });

  it('tells a TLS client refused by allow_from that the proxy closed the connection', async () => {
    const d = await daemon();
    d.writeConfig(configText({ adminSocket: d.adminSocket }).replace('allow_from = ["127.0.0.0/8"]', 'allow_from = ["127.0.0.2"]'));
    expect((await d.cli(['reload'])).code).toBe(0);
    const err = await ControlClient.connect(connectOpts(d.port)).catch((e: unknown) => e);
    expect((err as ProxyError).code).toBe('ECONNECTION');
    expect((err as ProxyError).message).toMatch(/closed the connection during the (TLS )?handshake \(not in allow_from/);
  });

  it('mtaproxy simulate follows the config: plaintext against tls = false', async () => {
    const d = await daemon({ tls: false, listen: `127.0.0.1:${await freePort()}`, extra: '[egress]\nsource_ips = ["127.0.0.2"]\nports = [25]\n' });
    const r = await d.cli(['simulate', '--mtas=2', '--seconds=1', '--max-connections=2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^sim-2: declared sim max_connections=4 /m);
  }, 15_000);

  it('verifies the proxy certificate against a CA when the MTA gives one', async () => {
    const pair = generateSelfSigned('localhost');
    const stranger = generateSelfSigned('localhost');
    const d0 = await daemon();
    const files = writePair(d0.dir, 'proxy', pair);
    d0.writeConfig(configText({ adminSocket: d0.adminSocket, extra: `tls_certificate_file = "${files.cert}"\ntls_key_file = "${files.key}"` }));
    expect((await d0.cli(['reload'])).code).toBe(0);
    const ok = await ControlClient.connect(connectOpts(d0.port, { tls: { ca: pair.cert, servername: 'localhost' } }));
    await ok.quit();
    const err = await ControlClient.connect(connectOpts(d0.port, { name: 'server-b', tls: { ca: stranger.cert, servername: 'localhost' } })).catch((e: unknown) => e);
    expect((err as ProxyError).code).toBe('ETLS');
    expect((err as ProxyError).message).toMatch(/self[- ]signed|unable to verify|certificate/i);
  });
});
