// Smoke test of the systemd-in-a-namespace harness: boot, socket activation, a journald record with a
// custom field, shutdown. Skipped (with the reason in its name) where the machine cannot do it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootSystemd, systemdNsAvailable, type SystemdNs } from '../helpers/systemd-ns.js';

const available = systemdNsAvailable();

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function readGreeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = '';
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.setEncoding('utf8').setTimeout(10_000, () => sock.destroy(new Error('no greeting within 10 s')));
    sock.on('data', (d: string) => (data += d)).on('end', () => resolve(data)).on('error', reject);
  });
}

function journal(stdout: string): Record<string, unknown>[] {
  return stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe.skipIf(!available.ok)(`systemd in a PID namespace${available.ok ? '' : ` (skipped: ${available.reason})`}`, () => {
  let workdir = '';
  let ns: SystemdNs | undefined;
  const sd = (): SystemdNs => {
    if (!ns) throw new Error('systemd did not boot');
    return ns;
  };

  beforeAll(async () => {
    workdir = await mkdtemp(join(tmpdir(), 'mtaproxy-systemd-'));
    ns = await bootSystemd(workdir);
  }, 60_000);

  afterAll(async () => {
    await ns?.shutdown();
    if (workdir) await rm(workdir, { recursive: true, force: true });
  }, 60_000);

  it('boots to basic.target', async () => {
    const r = await sd().exec(['systemctl', 'is-system-running']);
    expect(r.stdout.trim()).toMatch(/^(running|degraded)$/);
    expect((await sd().exec(['cat', '/proc/1/comm'])).stdout.trim()).toBe('systemd');
  }, 60_000);

  it('starts a service on the first connection to its socket', async () => {
    const port = await freePort();
    // in the workdir, so this also proves the workdir is visible inside
    await writeFile(
      join(workdir, 'server.cjs'),
      `const net = require('node:net');
console.log('harness server LISTEN_FDS=' + process.env.LISTEN_FDS);
net.createServer((c) => c.end('hello from harness\\n')).listen({ fd: 3 });
`,
    );
    await sd().installUnit('harness.socket', `[Socket]\nListenStream=127.0.0.1:${port}\n`);
    await sd().installUnit(
      'harness.service',
      `[Unit]\nRequires=harness.socket\nAfter=harness.socket\n[Service]\nExecStart=${process.execPath} ${workdir}/server.cjs\n`,
    );
    expect((await sd().exec(['systemctl', 'start', 'harness.socket'])).code).toBe(0);
    expect((await sd().exec(['systemctl', 'is-active', 'harness.service'])).stdout.trim()).toBe('inactive');

    expect(await readGreeting(port)).toBe('hello from harness\n');
    expect((await sd().exec(['systemctl', 'is-active', 'harness.service'])).stdout.trim()).toBe('active');

    // the service's stdout is in the journal, with the unit attached
    await sd().waitFor('the service output in the journal', async () => {
      const r = await sd().exec(['journalctl', '--no-pager', '-o', 'json', '-u', 'harness.service']);
      return journal(r.stdout).some((e) => e.MESSAGE === 'harness server LISTEN_FDS=1');
    });
  }, 60_000);

  it('finds a journald record by a custom field', async () => {
    const w = await sd().exec(['logger', '--journald'], { input: 'MESSAGE=hello\nHARNESS_EVENT=smoke\n' });
    expect(w).toMatchObject({ code: 0, stderr: '' });
    let entries: Record<string, unknown>[] = [];
    await sd().waitFor('the HARNESS_EVENT=smoke record', async () => {
      const r = await sd().exec(['journalctl', '--no-pager', '-o', 'json', 'HARNESS_EVENT=smoke']);
      entries = journal(r.stdout);
      return entries.length > 0;
    });
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ MESSAGE: 'hello', HARNESS_EVENT: 'smoke' });
  }, 60_000);

  it('shuts down completely, and a second shutdown is a no-op', async () => {
    const { pid, cgroup } = sd();
    await sd().shutdown();
    await sd().shutdown();
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(existsSync(cgroup)).toBe(false);
  }, 60_000);
});
