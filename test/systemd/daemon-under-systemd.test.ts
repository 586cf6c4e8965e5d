// mtaproxy under a real systemd (booted in a PID namespace): the shipped units, socket activation,
// native journald records found by field, and `systemctl reload` reporting a rejected config.
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/client/index.js';
import { EVENTS } from '../../src/log/message-ids.js';
import { configText, freePort, ROOT, SECRET } from '../helpers/daemon.js';
import { bootSystemd, systemdNsAvailable, waitFor, type SystemdNs } from '../helpers/systemd-ns.js';

const available = systemdNsAvailable();

describe.skipIf(!available.ok)(`mtaproxy under systemd${available.ok ? '' : ` (skipped: ${available.reason})`}`, () => {
  let workdir = '';
  let ns: SystemdNs | undefined;
  let port = 0;
  let configFile = '';
  const sd = (): SystemdNs => {
    if (!ns) throw new Error('systemd did not boot');
    return ns;
  };
  const journal = async (...filters: string[]): Promise<Record<string, string>[]> => {
    const r = await sd().exec(['journalctl', '--no-pager', '-o', 'json', ...filters]);
    return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
  };
  /** journald stores entries asynchronously: wait until more than `before` records match, return the last. */
  const nextRecord = async (before: number, ...filters: string[]): Promise<Record<string, string> | undefined> => {
    let records: Record<string, string>[] = [];
    await waitFor(`a new journal record ${filters.join(' ')}`, async () => (records = await journal(...filters)).length > before);
    return records.at(-1);
  };

  beforeAll(async () => {
    workdir = await mkdtemp(join(tmpdir(), 'mtaproxy-systemd-'));
    port = await freePort();
    configFile = join(workdir, 'mtaproxy.toml');
    await writeFile(configFile, configText({ adminSocket: '/run/mtaproxy/admin.sock', listen: '127.0.0.1:1', extra: 'status_interval = "300ms"' }));
    ns = await bootSystemd(workdir, [ROOT.replace(/\/$/, '')]);
    // The shipped units, pointed at this checkout's build and a test config. The test runs the
    // daemon as root: the mtaproxy system user is created by the packages, not here.
    const program = `${process.execPath} ${join(ROOT, 'dist/cli/main.js')}`;
    const service = (await readFile(join(ROOT, 'packaging/systemd/mtaproxy.service'), 'utf8'))
      .replaceAll('/usr/bin/mtaproxy', program)
      .replaceAll('/etc/mtaproxy/mtaproxy.toml', configFile)
      .replace(/^(User|Group)=.*\n/gm, '')
      // PrivateTmp= hides the host's /tmp, where this test's config lives (and the checkout, when it
      // is cloned under /tmp): let the service see both
      .replace(/^PrivateTmp=yes$/m, `PrivateTmp=yes\nBindReadOnlyPaths=${workdir} ${ROOT.replace(/\/$/, '')}`);
    const socket = (await readFile(join(ROOT, 'packaging/systemd/mtaproxy.socket'), 'utf8')).replace(/^ListenStream=.*$/m, `ListenStream=127.0.0.1:${port}`);
    await sd().installUnit('mtaproxy.service', service);
    await sd().installUnit('mtaproxy.socket', socket);
    const started = await sd().exec(['systemctl', 'start', 'mtaproxy.socket']);
    expect(started).toMatchObject({ code: 0 });
  }, 60_000);

  afterAll(async () => {
    await ns?.shutdown();
    if (workdir) await rm(workdir, { recursive: true, force: true });
  }, 60_000);

  it('is activated by the first MTA connection, and journalctl finds its status records by field', async () => {
    expect((await sd().exec(['systemctl', 'is-active', 'mtaproxy.service'])).stdout.trim()).toBe('inactive');
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-a', secret: SECRET });
    await client.reportBacklog({ ram: 7, bounce: 0, disk: 42 });
    expect((await sd().exec(['systemctl', 'is-active', 'mtaproxy.service'])).stdout.trim()).toBe('active');

    let records: Record<string, string>[] = [];
    await waitFor('a session status record in the journal', async () => {
      records = await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=status', 'SESSION=server-a');
      return records.some((r) => r.BACKLOG_DISK === '42');
    });
    const record = records.find((r) => r.BACKLOG_DISK === '42') as Record<string, string>;
    expect(record.MESSAGE).toMatch(/^throttle: session\(server-a\): timeconnected=\d+s ping=none backlog\(ram=7 bounce=0 disk=42\) forward\(in=0\/16 out=0\/16 buf=0\) back\(in=0\/16 out=0\/16 buf=0\)$/);
    expect(record).toMatchObject({ SYSLOG_IDENTIFIER: 'mtaproxy', PRIORITY: '6', STATUS_LINE: 'session', BACKLOG_RAM: '7', _SYSTEMD_UNIT: 'mtaproxy.service' });

    const listener = await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=status', 'STATUS_LINE=listener');
    expect(listener.at(-1)?.MESSAGE).toBe('listener: open_connections=1');
    expect(listener.at(-1)?.OPEN_CONNECTIONS).toBe('1');

    const status = await sd().exec(['systemctl', 'show', 'mtaproxy.service', '-p', 'StatusText']);
    expect(status.stdout).toMatch(/^StatusText=1 connections, 1 sessions, listening on 127\.0\.0\.1:\d+/);
    const adopted = await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=socket_activation');
    expect(adopted[0]?.SOCKETS).toBe('3=native');
    await client.quit();
  }, 30_000);

  it('systemctl reload applies a valid config and fails with the reason on an invalid one, keeping sessions', async () => {
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-b', secret: SECRET });
    await writeFile(configFile, configText({ adminSocket: '/run/mtaproxy/admin.sock', listen: '127.0.0.1:1', extra: 'status_interval = "300ms"\nlog_verbose = true' }));
    const applied = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied')).length;
    const rejectedBefore = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected')).length;
    expect(await sd().exec(['systemctl', 'reload', 'mtaproxy.service'])).toMatchObject({ code: 0 });
    expect((await nextRecord(applied, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied'))?.CHANGED).toBe('log_verbose');

    await writeFile(configFile, configText({ adminSocket: '/run/mtaproxy/admin.sock', secret: 'too-short' }));
    const rejected = await sd().exec(['systemctl', 'reload', 'mtaproxy.service']);
    expect(rejected.code).not.toBe(0);
    const error = await nextRecord(rejectedBefore, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected');
    expect(error?.MESSAGE).toBe(`reload rejected: ${configFile}:3:1: auth_shared_secret: is 9 characters; at least 32 are required (mtaproxy gen-secret makes one)`);
    expect(error?.PRIORITY).toBe('3');
    const statusText = (await sd().exec(['systemctl', 'show', 'mtaproxy.service', '-p', 'StatusText'])).stdout;
    expect(statusText).toContain('StatusText=reload rejected, old config still in effect:');
    expect((await sd().exec(['systemctl', 'is-active', 'mtaproxy.service'])).stdout.trim()).toBe('active');
    expect(await client.ping()).toBeGreaterThan(0);
    const again = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-c', secret: SECRET });
    await again.quit();
    await client.quit();
  }, 30_000);

  it('every entry has its MESSAGE_ID, and with the catalog installed journalctl -x explains it', async () => {
    // The catalog as the packages install it, in the namespace only: /usr/lib/systemd/catalog
    // (systemd's own catalogs plus mtaproxy.catalog) and the database journalctl --update-catalog
    // writes, both mounted over the host's inside the namespace's private mount namespace.
    const catalogDir = join(workdir, 'catalog');
    await mkdir(catalogDir);
    for (const f of await readdir('/usr/lib/systemd/catalog')) await cp(join('/usr/lib/systemd/catalog', f), join(catalogDir, f));
    await cp(join(ROOT, 'packaging/mtaproxy.catalog'), join(catalogDir, 'mtaproxy.catalog'));
    for (const cmd of [['mount', '--bind', catalogDir, '/usr/lib/systemd/catalog'], ['mount', '-t', 'tmpfs', 'tmpfs', '/var/lib/systemd/catalog'], ['journalctl', '--update-catalog']]) {
      const r = await sd().exec(cmd);
      expect(r.code, `${cmd.join(' ')}: ${r.stderr}`).toBe(0);
    }
    const listed = (await sd().exec(['journalctl', '--list-catalog'])).stdout;
    for (const e of Object.values(EVENTS)) expect(listed).toContain(`${e.id} mtaproxy: ${e.subject}`);

    // the entries of the earlier tests (started, status, reload_rejected) carry their ids
    for (const event of ['started', 'status', 'reload_rejected'] as const) {
      const records = await journal('-u', 'mtaproxy.service', `MTAPROXY_EVENT=${event}`, '-n', '1');
      expect(records.at(-1)?.MESSAGE_ID, event).toBe(EVENTS[event].id);
    }
    // a failed handshake, now
    const before = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=handshake_failed')).length;
    await expect(ControlClient.connect({ host: '127.0.0.1', port, name: 'intruder', secret: 'a-wrong-secret-that-is-long-enough-000000' })).rejects.toThrow();
    expect((await nextRecord(before, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=handshake_failed'))?.MESSAGE_ID).toBe(EVENTS.handshake_failed.id);

    const rejected = await sd().exec(['journalctl', '--no-pager', '-x', '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected', '-n', '1']);
    console.log(`journalctl -x -u mtaproxy.service MTAPROXY_EVENT=reload_rejected -n 1:\n${rejected.stdout}`);
    expect(rejected.stdout).toMatch(/mtaproxy\[\d+\]: reload rejected: .*auth_shared_secret: is 9 characters/);
    expect(rejected.stdout).toContain('░░ Subject: mtaproxy rejected a new configuration; the old one stays in effect');
    expect(rejected.stdout).toContain('░░ Defined-By: mtaproxy');
    expect(rejected.stdout).toContain('░░ Documentation: file:///usr/share/doc/mtaproxy/log-codes.md');
    expect(rejected.stdout).toContain('░░ Fix the file, check it with "mtaproxy check-config');

    const handshake = await sd().exec(['journalctl', '--no-pager', '-x', `MESSAGE_ID=${EVENTS.handshake_failed.id}`, '-n', '1']);
    console.log(`journalctl -x MESSAGE_ID=${EVENTS.handshake_failed.id} -n 1:\n${handshake.stdout}`);
    expect(handshake.stdout).toMatch(/native: handshake from 127\.0\.0\.1:\d+ failed: wrong proof/);
    expect(handshake.stdout).toContain('░░ Subject: An MTA failed the authentication handshake');
    expect(handshake.stdout).toContain('░░ A wrong proof: the MTA\'s secret is not auth_shared_secret');
  }, 60_000);

  it('systemctl stop is graceful: sessions are told, STOPPING is logged, the exit is clean', async () => {
    const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-d', secret: SECRET });
    expect(await sd().exec(['systemctl', 'stop', 'mtaproxy.service'])).toMatchObject({ code: 0 });
    expect(await client.closed).toBe('421 mtaproxy shutting down');
    const show = (await sd().exec(['systemctl', 'show', 'mtaproxy.service', '-p', 'Result', '-p', 'ExecMainStatus'])).stdout;
    expect(show).toContain('Result=success');
    expect(show).toContain('ExecMainStatus=0');
    expect(await nextRecord(0, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=stopped')).toBeDefined();
  }, 30_000);
});
