// The .deb and the .rpm, built as `npm run package` builds them, then the .deb installed for real
// under a real systemd booted in a PID namespace (the root filesystem is the host's: the package
// really gets installed, and is always purged again). Needs root, debhelper, rpm, lintian, rpmlint.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/client/index.js';
import { freePort, ROOT } from '../helpers/daemon.js';
import { lockHostInstall } from '../helpers/host-install.js';
import { notifyReceiver } from '../helpers/notify-socket.js';
import { bootSystemd, systemdNsAvailable, waitFor, type SystemdNs } from '../helpers/systemd-ns.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const OUT = join(ROOT, 'dist/packages');
const DEB = join(OUT, `mtaproxy_${VERSION}_amd64.deb`);
const RPM = join(OUT, `mtaproxy-${VERSION}-1.x86_64.rpm`);
const CONFIG = '/etc/mtaproxy/mtaproxy.toml';
const CATALOG = '/usr/lib/systemd/catalog/mtaproxy.catalog';
/** journalctl --update-catalog (the scriptlets) writes its database here, on the shared root filesystem */
const CATALOG_DB_DIR = '/var/lib/systemd/catalog';
const SECRET = '/etc/mtaproxy/secret';
/** Where debootstrap fetches stock Debian 12 from: this machine's own Debian mirror. */
const MIRROR = /^URIs:\s*(\S+)/m.exec(existsSync('/etc/apt/sources.list.d/debian.sources') ? readFileSync('/etc/apt/sources.list.d/debian.sources', 'utf8') : '')?.[1] ?? 'http://deb.debian.org/debian';
const PORT = 807; // mtaproxy.socket's ListenStream=, unchanged: this is the installed package

function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env });
  return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error?.message ?? '') };
}

function toolsMissing(): string | null {
  if (process.arch !== 'x64') return 'the test names the amd64/x86_64 packages';
  for (const tool of ['dpkg-buildpackage', 'dh', 'rpmbuild', 'lintian', 'rpmlint', 'rpm2cpio', 'cpio', 'debootstrap']) {
    if (sh('sh', ['-c', `command -v ${tool}`]).code !== 0) return `no ${tool} (apt-get install debhelper rpm lintian rpmlint cpio debootstrap)`;
  }
  return null;
}

const ns = systemdNsAvailable();
const missing = ns.ok ? toolsMissing() : ns.reason;
// test/systemd/rpm-install.test.ts installs the .rpm on this machine too: one at a time, and before looking at port 807
const release = missing === null ? await lockHostInstall('packages.test.ts') : () => undefined;
const portBusy = (): boolean => sh('sh', ['-c', `ss -Hltn 'sport = :${PORT}' | grep -q .`]).code === 0;
const skip = missing ?? (portBusy() ? `port ${PORT} is in use on this machine` : null) ?? (installed() ? 'mtaproxy is installed on this machine: the test will not touch it' : null);
if (skip !== null) release();

function installed(): boolean {
  return sh('dpkg-query', ['-W', '-f=${Status}', 'mtaproxy']).stdout.includes('installed');
}

/** Paths in a .deb / .rpm, with the distributions' differences (unit dir, doc compression) folded. */
function normalize(paths: string[]): string[] {
  return paths
    .map((p) => p.replace(/^\.\//, '/').replace(/\/$/, ''))
    .filter((p) => p !== '' && p !== '/')
    .map((p) => p.replace(/^\/lib\/systemd\/system\//, '/usr/lib/systemd/system/').replace(/\.gz$/, ''))
    .sort();
}

describe.skipIf(skip !== null)(`packages${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let workdir = '';
  let sd: SystemdNs | undefined;
  let booting: Promise<SystemdNs> | undefined;
  let abandoned = false;
  let userExisted = false;
  const catalogDbExisted = existsSync(CATALOG_DB_DIR);
  const started = Date.now();
  const inside = (cmd: string[], timeoutMs = 60_000) => {
    if (!sd) throw new Error('systemd did not boot');
    return sd.exec(cmd, { timeoutMs, env: { DEBIAN_FRONTEND: 'noninteractive' } });
  };
  const journal = async (...filters: string[]): Promise<Record<string, string>[]> => {
    const r = await inside(['journalctl', '--no-pager', '-o', 'json', ...filters]);
    return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
  };
  /** journald stores entries asynchronously: wait until more than `before` records match, return the last. */
  const nextRecord = async (before: number, ...filters: string[]): Promise<Record<string, string> | undefined> => {
    let records: Record<string, string>[] = [];
    await waitFor(`a new journal record ${filters.join(' ')}`, async () => (records = await journal(...filters)).length > before);
    return records.at(-1);
  };
  const secret = (): string => (readFileSync(SECRET, 'utf8').split('\n')[0] ?? '').trim();
  /** the installed certificate's SHA-256 fingerprint, as openssl shows it */
  const fingerprint = (): string => /Fingerprint=(\S+)/i.exec(sh('openssl', ['x509', '-in', '/etc/mtaproxy/tls.crt', '-noout', '-fingerprint', '-sha256']).stdout)?.[1] ?? '';
  const connect = async (name: string): Promise<ControlClient> => ControlClient.connect({ host: '127.0.0.1', port: PORT, name, secret: secret() });
  const state = async (unit: string): Promise<string> => (await inside(['systemctl', 'is-active', unit])).stdout.trim();

  beforeAll(async () => {
    userExisted = sh('getent', ['passwd', 'mtaproxy']).code === 0;
    const t0 = Date.now();
    const build = sh('bash', ['packaging/build-packages.sh']);
    if (build.code !== 0) throw new Error(`npm run package failed:\n${build.stdout.slice(-4000)}\n${build.stderr.slice(-4000)}`);
    console.log(`packages built in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${readdirSync(OUT).join(', ')}`);
    if (abandoned) return; // the hook timed out during the build and afterAll has run: boot nothing it would not stop
    workdir = await mkdtemp(join(tmpdir(), 'mtaproxy-pkg-'));
    booting = bootSystemd(workdir, [ROOT.replace(/\/$/, '')]); // apt installs dist/packages/*.deb from inside: keep a checkout under /tmp visible
    sd = await booting;
  }, 600_000); // both packages are built here: over 240 s on a 2-core machine busy with other test files (load 7–12)

  afterAll(async () => {
    // Whatever happened: no package, no namespace, no user this test created, left behind.
    // (A beforeAll that timed out keeps running: it must not boot after this, and a boot under way is waited for.)
    abandoned = true;
    sd ??= await booting?.catch(() => undefined);
    if (installed()) {
      if (sd) await inside(['apt-get', 'purge', '-y', 'mtaproxy'], 120_000).catch(() => undefined);
      if (installed()) sh('dpkg', ['--purge', 'mtaproxy']);
    }
    await sd?.shutdown();
    if (!userExisted && sh('getent', ['passwd', 'mtaproxy']).code === 0) sh('userdel', ['mtaproxy']);
    // the catalog database the scriptlets' journalctl --update-catalog made, if there was none before
    if (!catalogDbExisted) await rm(CATALOG_DB_DIR, { recursive: true, force: true });
    if (!userExisted && sh('getent', ['group', 'mtaproxy']).code === 0) sh('groupdel', ['mtaproxy']);
    if (workdir) await rm(workdir, { recursive: true, force: true });
    release();
    console.log(`packaging test: ${((Date.now() - started) / 1000).toFixed(1)} s in all`);
  }, 180_000);

  it('npm run package made both packages, versioned from package.json, with the same contents', () => {
    expect(existsSync(DEB) && existsSync(RPM)).toBe(true);
    const deb = sh('dpkg-deb', ['-f', DEB, 'Version', 'Depends']).stdout;
    expect(deb).toContain(`Version: ${VERSION}`);
    // the package carries its runtime: no nodejs dependency (stock Debian 12 has Node 18)
    expect(deb).not.toMatch(/nodejs/);
    expect(deb).toMatch(/Depends: .*libsystemd0/);
    expect(deb).toMatch(/libstdc\+\+6/);
    expect(sh('rpm', ['-qp', '--qf', '%{VERSION}', RPM]).stdout).toBe(VERSION);
    const requires = sh('rpm', ['-qp', '--requires', RPM]).stdout;
    expect(requires).not.toMatch(/nodejs/);
    expect(requires).toMatch(/^libsystemd\.so\.0\(\)\(64bit\)$/m);

    const listing = sh('bash', ['-c', `set -o pipefail; dpkg-deb --fsys-tarfile '${DEB}' | tar -t`]);
    expect(listing.code, listing.stderr).toBe(0);
    const debFiles = normalize(listing.stdout.split('\n'));
    const rpmFiles = normalize(sh('rpm', ['-qlp', RPM]).stdout.split('\n'));
    // Packaging metadata differs by design: Debian's changelog/copyright/lintian overrides vs RPM's %license.
    const own = (files: string[]) => files.filter((f) => !/^\/usr\/share\/(doc\/mtaproxy\/(changelog|copyright)|licenses\/|lintian(\/|$))/.test(f) && !/^\/(usr|usr\/lib|usr\/share|usr\/share\/doc|usr\/share\/man|usr\/share\/man\/man8|usr\/bin|etc|lib|lib\/systemd|usr\/lib\/systemd|lib\/systemd\/system|usr\/lib\/systemd\/system|usr\/lib\/systemd\/catalog|usr\/lib\/sysusers\.d)$/.test(f));
    expect(own(rpmFiles)).toEqual(own(debFiles));
    for (const f of ['/usr/bin/mtaproxy', '/usr/lib/mtaproxy/node', '/usr/share/doc/mtaproxy/nodejs-LICENSE', '/usr/lib/mtaproxy/dist/cli/main.js', '/usr/lib/mtaproxy/package.json', CONFIG, '/usr/lib/systemd/system/mtaproxy.service',
      '/usr/lib/systemd/system/mtaproxy.socket', '/usr/lib/sysusers.d/mtaproxy.conf', CATALOG, '/usr/share/doc/mtaproxy/log-codes.md', '/usr/share/man/man8/mtaproxy.8', '/usr/share/doc/mtaproxy/README.md',
      '/usr/lib/mtaproxy/node_modules/sd-notify/build/Release/notify.node', '/usr/lib/mtaproxy/node_modules/systemd-journald/build/Release/journal_send.node']) {
      expect(debFiles).toContain(f);
    }
    // The config is a conffile in both.
    expect(sh('sh', ['-c', `dpkg-deb --ctrl-tarfile '${DEB}' | tar -xO ./conffiles`]).stdout.trim()).toBe(CONFIG);
    expect(sh('rpm', ['-qpc', RPM]).stdout.trim()).toBe(CONFIG);
    // The units are byte for byte packaging/systemd/'s, in both.
    for (const unit of ['mtaproxy.service', 'mtaproxy.socket']) {
      const source = readFileSync(join(ROOT, 'packaging/systemd', unit), 'utf8');
      expect(sh('sh', ['-c', `dpkg-deb --fsys-tarfile '${DEB}' | tar -xO ./lib/systemd/system/${unit}`]).stdout).toBe(source);
      expect(sh('sh', ['-c', `rpm2cpio '${RPM}' | cpio -i --quiet --to-stdout ./usr/lib/systemd/system/${unit}`]).stdout).toBe(source);
    }
    // The journal catalog too (journalctl -x), in both.
    expect(rpmFiles).toContain(CATALOG);
    const catalog = readFileSync(join(ROOT, 'packaging/mtaproxy.catalog'), 'utf8');
    expect(sh('sh', ['-c', `dpkg-deb --fsys-tarfile '${DEB}' | tar -xO .${CATALOG}`]).stdout).toBe(catalog);
    expect(sh('sh', ['-c', `rpm2cpio '${RPM}' | cpio -i --quiet --to-stdout .${CATALOG}`]).stdout).toBe(catalog);
  });

  it('the scriptlets of both do the same things', () => {
    const deb = ['postinst', 'prerm', 'postrm'].map((s) => `## ${s}\n${sh('sh', ['-c', `dpkg-deb --ctrl-tarfile '${DEB}' | tar -xO ./${s}`]).stdout}`).join('\n');
    const rpm = sh('rpm', ['-qp', '--scripts', RPM]).stdout;
    for (const [what, text] of [['deb', deb], ['rpm', rpm]] as const) {
      expect(text, `${what}: creates the system user`).toMatch(/systemd-sysusers .*mtaproxy\.conf/);
      expect(text, `${what}: generates the secret`).toMatch(/if \[ ! -e \/etc\/mtaproxy\/secret \][\s\S]*mtaproxy gen-secret[\s\S]*chown root:mtaproxy[\s\S]*chmod 0640/);
      expect(text, `${what}: generates the TLS pair once`).toMatch(/if \[ ! -e \/etc\/mtaproxy\/tls\.crt \] && \[ ! -e \/etc\/mtaproxy\/tls\.key \][\s\S]*mtaproxy gen-cert[\s\S]*chown root:mtaproxy \/etc\/mtaproxy\/\.tls\.key\.new[\s\S]*chmod 0640/);
      expect(text, `${what}: enables and starts the socket`).toMatch(/enable '?mtaproxy\.socket/);
      expect(text, `${what}: starts the socket`).toMatch(/start '?mtaproxy\.socket/);
      expect(text, `${what}: restarts a running service on upgrade`).toMatch(/try-restart '?mtaproxy\.service'? '?mtaproxy\.socket/);
      // the config (SOCKS5 passwords) is readable by the group only: the .deb's postinst sets it; the
      // .rpm's %pre makes the group so that rpm unpacks the file as root:mtaproxy (rpm -V stays clean)
      if (what === 'deb') expect(text, 'deb: the config is readable by the group only').toMatch(/chgrp mtaproxy \/etc\/mtaproxy\/mtaproxy\.toml\s+chmod 0640 \/etc\/mtaproxy\/mtaproxy\.toml/);
      else expect(sh('rpm', ['-qp', '--qf', '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]', RPM]).stdout, 'rpm: the config is readable by the group only').toContain(`-rw-r----- root mtaproxy ${CONFIG}\n`);
      // Debian's purge removes the secret; RPM has no purge, and an erase keeps it (a reinstall
      // must not silently make a new cluster secret)
      if (what === 'deb') expect(text, 'deb: purge removes the secret and the directory').toMatch(/rm -f \/etc\/mtaproxy\/secret[\s\S]*rmdir \/etc\/mtaproxy/);
      else expect(text, 'rpm: erase keeps the secret').not.toMatch(/rm -f \/etc\/mtaproxy\/secret/);
      // (Debian's `deb-systemd-helper enable mtaproxy.service` only follows its Also=mtaproxy.socket)
      expect(text, `${what}: indexes the journal catalog after installation`).toMatch(/(postinst|postinstall scriptlet)[\s\S]*journalctl --update-catalog[\s\S]*(prerm|preuninstall scriptlet)/);
      expect(text, `${what}: and after removal`).toMatch(/(## postrm|postuninstall scriptlet)[\s\S]*journalctl --update-catalog/);
      expect(text, `${what}: never starts the service itself`).not.toMatch(/(^|\s)(start|restart|enable --now) '?mtaproxy\.service/m);
    }
  });

  it('lintian and rpmlint report no errors', () => {
    const lintian = sh('lintian', ['--pedantic', '-I', DEB]);
    console.log(`lintian ${DEB}:\n${lintian.stdout}${lintian.stderr}`);
    expect(lintian.stdout.split('\n').filter((l) => l.startsWith('E:'))).toEqual([]);
    const rpmlint = sh('rpmlint', ['-r', 'rpm/mtaproxy.rpmlintrc', RPM]);
    console.log(`rpmlint ${RPM}:\n${rpmlint.stdout}${rpmlint.stderr}`);
    expect(rpmlint.stdout).toMatch(/\b0 errors\b/);
  }, 60_000);

  it('apt install: the socket listens, the service waits for the first MTA, which gets through', async () => {
    const install = await inside(['apt-get', 'install', '-y', '--no-install-recommends', DEB], 120_000);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(installed()).toBe(true);
    expect(await state('mtaproxy.socket')).toBe('active');
    expect((await inside(['systemctl', 'is-enabled', 'mtaproxy.socket'])).stdout.trim()).toBe('enabled');
    expect(await state('mtaproxy.service')).toBe('inactive');
    // a fresh random secret, readable by the service's group only
    expect(secret()).toMatch(/^\S{32,}$/);
    expect(sh('stat', ['-c', '%a %U %G', SECRET]).stdout.trim()).toBe('640 root mtaproxy');
    expect(sh('stat', ['-c', '%a %U %G', CONFIG]).stdout.trim()).toBe('640 root mtaproxy');
    // the TLS pair made at installation: the key readable by the service's group only
    expect(sh('stat', ['-c', '%a %U %G', '/etc/mtaproxy/tls.key']).stdout.trim()).toBe('640 root mtaproxy');
    expect(fingerprint()).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(sh('getent', ['passwd', 'mtaproxy']).code).toBe(0);
    expect(sh('mtaproxy', ['--version']).stdout.trim()).toBe(VERSION);
    expect(sh('mtaproxy', ['check-config', CONFIG]).stdout.trim()).toBe(`${CONFIG}: OK`);

    const client = await connect('server-a');
    await client.reportBacklog({ ram: 3, bounce: 0, disk: 11 });
    expect(await state('mtaproxy.service')).toBe('active');
    const show = (await inside(['systemctl', 'show', 'mtaproxy.service', '-p', 'MainPID'])).stdout.trim();
    const pid = show.replace('MainPID=', '');
    // the daemon runs as the mtaproxy user, without capabilities
    const status = readFileSync(`/proc/${hostPid(pid, sd?.pid ?? 0)}/status`, 'utf8');
    const uid = sh('id', ['-u', 'mtaproxy']).stdout.trim();
    expect(status).toMatch(new RegExp(`^Uid:\\s+${uid}\\s`, 'm'));
    expect(status).toMatch(/CapEff:\s+0+\n[\s\S]*CapBnd:\s+0+\n/);

    const security = await inside(['systemd-analyze', 'security', '--no-pager', 'mtaproxy.service']);
    const score = /Overall exposure level for mtaproxy\.service: (\d+\.\d+)/.exec(security.stdout);
    console.log(`systemd-analyze security mtaproxy.service (installed, in the namespace):\n${security.stdout.split('\n').filter((l) => l.startsWith('✗') || l.startsWith('→')).join('\n')}`);
    expect(Number(score?.[1])).toBeLessThanOrEqual(2.5);
    await client.quit();
  }, 180_000);

  it('systemctl reload applies a valid change, rejects an invalid one with the reason, sessions survive', async () => {
    const original = readFileSync(CONFIG, 'utf8');
    const session = await connect('server-b');
    // valid: only 192.0.2.1 may connect now; the established session is kept
    writeFileSync(CONFIG, `${original}\nallow_from = ["192.0.2.1"]\nstatus_interval = "300ms"\n`);
    const applied = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied')).length;
    const rejectedBefore = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected')).length;
    const ok = await inside(['systemctl', 'reload', 'mtaproxy.service']);
    expect(ok.code, ok.stderr).toBe(0);
    expect((await nextRecord(applied, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied'))?.CHANGED).toMatch(/allow_from/);
    await expect(connect('server-refused')).rejects.toThrow(/closed the connection|ECONNRESET|ECONNECTION/);
    expect(await session.ping()).toBeGreaterThan(0);

    // invalid: rejected with file:line and the reason; the old config (allow_from) stays in effect
    writeFileSync(CONFIG, `${original}\nauth_shared_secret_previous = "short"\n`);
    const rejected = await inside(['systemctl', 'reload', 'mtaproxy.service']);
    expect(rejected.code).not.toBe(0);
    const reason = (await nextRecord(rejectedBefore, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected'))?.MESSAGE;
    expect(reason).toMatch(new RegExp(`^reload rejected: ${CONFIG}:\\d+:1: auth_shared_secret_previous: is 5 characters`));
    expect((await inside(['systemctl', 'show', 'mtaproxy.service', '-p', 'StatusText'])).stdout).toContain('reload rejected, old config still in effect');
    // the installed catalog explains the entry (the postinst ran journalctl --update-catalog)
    const explained = await inside(['journalctl', '--no-pager', '-x', '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected', '-n', '1']);
    console.log(`journalctl -x -u mtaproxy.service MTAPROXY_EVENT=reload_rejected -n 1 (installed package):\n${explained.stdout}`);
    expect(explained.stdout).toContain('░░ Subject: mtaproxy rejected a new configuration; the old one stays in effect');
    expect(explained.stdout).toMatch(/░░ Fix the file, check it with "mtaproxy check-config/);
    expect(await state('mtaproxy.service')).toBe('active');
    expect(await session.ping()).toBeGreaterThan(0);
    await expect(connect('server-refused')).rejects.toThrow();

    // back to the installed config: everyone on loopback may connect again
    writeFileSync(CONFIG, original);
    expect((await inside(['systemctl', 'reload', 'mtaproxy.service'])).code).toBe(0);
    const again = await connect('server-c');
    await again.quit();
    await session.quit();
  }, 60_000);

  it('journalctl finds the status records by field', async () => {
    const client = await connect('server-d');
    await client.reportBacklog({ ram: 5, bounce: 1, disk: 7 });
    let records: Record<string, string>[] = [];
    await waitFor('a status record of session server-d', async () => {
      records = await journal('-u', 'mtaproxy', 'MTAPROXY_EVENT=status', 'SESSION=server-d');
      return records.some((r) => r.BACKLOG_DISK === '7');
    }, { timeoutMs: 15_000, intervalMs: 250 });
    expect(records.at(-1)).toMatchObject({ SYSLOG_IDENTIFIER: 'mtaproxy', STATUS_LINE: 'session', _SYSTEMD_UNIT: 'mtaproxy.service' });
    expect(records.at(-1)?.MESSAGE).toMatch(/^throttle: session\(server-d\): /);
    // the README's examples
    const listener = await inside(['journalctl', '-u', 'mtaproxy', 'MTAPROXY_EVENT=status', 'STATUS_LINE=listener', '-o', 'json-pretty', '-n', '1']);
    expect(listener.stdout).toMatch(/"MESSAGE" : "listener: open_connections=\d+"/);
    const live = await inside(['mtaproxy', 'status']);
    expect(live.code, live.stderr).toBe(0);
    expect(live.stdout).toMatch(/throttle: session\(server-d\)/);
    await client.quit();
  }, 30_000);

  it('an upgrade (reinstall) restarts the running service and keeps the secret and the edited config', async () => {
    const client = await connect('server-e');
    const pidBefore = (await inside(['systemctl', 'show', 'mtaproxy.service', '-p', 'MainPID'])).stdout.trim();
    const secretBefore = secret();
    const fingerprintBefore = fingerprint();
    writeFileSync(CONFIG, `${readFileSync(CONFIG, 'utf8')}\n# edited by the administrator\n`);
    const r = await inside(['apt-get', 'install', '-y', '--reinstall', '-o', 'Dpkg::Options::=--force-confold', DEB], 120_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(await client.closed).toBe('421 mtaproxy shutting down');
    await waitFor('the service to be active again', async () => (await state('mtaproxy.service')) === 'active', { timeoutMs: 15_000 });
    expect((await inside(['systemctl', 'show', 'mtaproxy.service', '-p', 'MainPID'])).stdout.trim()).not.toBe(pidBefore);
    expect(secret()).toBe(secretBefore);
    // MTAs may pin the fingerprint: an upgrade keeps the pair
    expect(fingerprint()).toBe(fingerprintBefore);
    expect(readFileSync(CONFIG, 'utf8')).toContain('# edited by the administrator');
    const again = await connect('server-f');
    await again.quit();
  }, 180_000);

  it('systemctl stop is graceful: the session is told, the exit is clean', async () => {
    const client = await connect('server-g');
    const stop = await inside(['systemctl', 'stop', 'mtaproxy']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(await client.closed).toBe('421 mtaproxy shutting down');
    const show = (await inside(['systemctl', 'show', 'mtaproxy.service', '-p', 'Result', '-p', 'ExecMainStatus'])).stdout;
    expect(show).toContain('Result=success');
    expect(show).toContain('ExecMainStatus=0');
  }, 60_000);

  it('apt purge removes what the installation created (the system user stays, as Debian policy has it)', async () => {
    const purge = await inside(['apt-get', 'purge', '-y', 'mtaproxy'], 120_000);
    expect(purge.code, purge.stdout + purge.stderr).toBe(0);
    expect(installed()).toBe(false);
    for (const path of ['/etc/mtaproxy', '/usr/lib/mtaproxy', '/usr/bin/mtaproxy', '/lib/systemd/system/mtaproxy.service', '/lib/systemd/system/mtaproxy.socket',
      '/etc/systemd/system/sockets.target.wants/mtaproxy.socket', '/usr/lib/sysusers.d/mtaproxy.conf']) {
      expect(existsSync(path), path).toBe(false);
    }
    expect(await state('mtaproxy.socket')).not.toBe('active');
    expect(sh('getent', ['passwd', 'mtaproxy']).code).toBe(0);
    // the postrm dropped the catalog's entries
    expect(existsSync(CATALOG)).toBe(false);
    expect((await inside(['journalctl', '--list-catalog'])).stdout).not.toMatch(/^bca364eff55c459283f30556dbf4e56c /m);
  }, 180_000);

  // Stock Debian 12 ships Node.js 18, which cannot run the addons built for Node 20: the package
  // must bring its runtime. Proven on a fresh debootstrap of bookworm, with nothing else added.
  it('installs and runs on a stock Debian 12 (debootstrap), whose own nodejs is 18', async () => {
    const root = join(workdir, 'bookworm');
    const t0 = Date.now();
    const boot = sh('debootstrap', ['--variant=minbase', 'bookworm', root, MIRROR]);
    expect(boot.code, boot.stdout.slice(-2000) + boot.stderr.slice(-2000)).toBe(0);
    sh('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
    const receiver = notifyReceiver(join(root, 'tmp'));
    let daemon: ChildProcess | undefined;
    try {
      const chroot = (args: string[], env: NodeJS.ProcessEnv = {}) => sh('chroot', [root, ...args], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', DEBIAN_FRONTEND: 'noninteractive', ...env } });
      expect(chroot(['apt-get', 'update', '-qq']).code).toBe(0);
      expect(chroot(['apt-cache', 'policy', 'nodejs']).stdout).toMatch(/Candidate: 18\./);
      cpSync(DEB, join(root, 'tmp/mtaproxy.deb'));
      const install = chroot(['apt-get', 'install', '-y', '--no-install-recommends', '/tmp/mtaproxy.deb']);
      expect(install.code, install.stdout.slice(-3000) + install.stderr.slice(-3000)).toBe(0);
      expect(chroot(['dpkg-query', '-W', '-f=${Status}', 'nodejs']).stdout).not.toContain('installed');
      expect(chroot(['mtaproxy', '--version']).stdout.trim()).toBe(VERSION);
      expect(chroot(['mtaproxy', 'check-config', CONFIG]).stdout.trim()).toBe(`${CONFIG}: OK`);
      expect(readFileSync(join(root, SECRET), 'utf8').trim()).toMatch(/^\S{32,}$/); // made by postinst, with the private runtime

      // the daemon itself, with the native sd_notify addon talking to a real NOTIFY_SOCKET
      const port = await freePort();
      writeFileSync(join(root, 'tmp/test.toml'), `listen = "127.0.0.1:${port}"\nallow_from = ["127.0.0.0/8"]\nauth_shared_secret_file = "${SECRET}"\nadmin_socket = "/tmp/admin.sock"\n`);
      daemon = spawn('/usr/sbin/chroot', [root, '/usr/bin/mtaproxy', '--config-filename=/tmp/test.toml'], { env: { PATH: '/usr/bin:/bin', NOTIFY_SOCKET: '/tmp/notify.sock' }, stdio: 'ignore' });
      await receiver.waitFor(/^READY=1$/m, 10_000);
      const client = await ControlClient.connect({ host: '127.0.0.1', port, name: 'server-stock', secret: readFileSync(join(root, SECRET), 'utf8').trim() });
      expect(await client.ping()).toBeGreaterThan(0);
      const exited = new Promise<number | null>((resolve) => daemon?.once('exit', (code) => resolve(code)));
      daemon.kill('SIGTERM');
      expect(await client.closed).toBe('421 mtaproxy shutting down');
      expect(await exited).toBe(0);
      await receiver.waitFor(/^STOPPING=1$/m);
      console.log(`stock Debian 12 check: ${((Date.now() - t0) / 1000).toFixed(1)} s (debootstrap, apt install, daemon up and down)`);
    } finally {
      if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
      receiver.close();
      sh('umount', ['-l', join(root, 'proc')]);
    }
  }, 600_000);
});

/** MainPID inside the namespace of systemd `nsPid` -> the pid on the host (NSpid lists both). */
function hostPid(innerPid: string, nsPid: number): string {
  const pidns = readlinkSync(`/proc/${nsPid}/ns/pid`);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const m = /^NSpid:\s+(\d+)\s+(\d+)\s*$/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'));
      if (m && m[2] === innerPid && readlinkSync(`/proc/${entry}/ns/pid`) === pidns) return entry;
    } catch {
      // the process went away
    }
  }
  throw new Error(`no host process for pid ${innerPid} in the namespace`);
}
