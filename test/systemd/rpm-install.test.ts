// The .rpm installed for real with `rpm -i`, under a real systemd booted in a PID namespace (the
// harness of test/helpers/systemd-ns.ts). The root filesystem is the host's: the package really
// lands on this machine, its scriptlets really run (systemctl talks to the namespaced systemd),
// and everything is erased again at the end. No RPM distribution's repositories are reachable
// here, and Debian's rpm database knows none of the host's packages, so the package's Requires
// (shared libraries, /bin/sh, systemd) cannot be resolved from it: the test installs with
// --nodeps, after checking that the declared Requires are exactly what the README says and that
// this host really provides every one of them. Its own rpm database lives in the test's
// directory (--dbpath), so the host's is not touched either.
// Needs root, rpm (rpmbuild), and what the namespace harness needs; mutually exclusive with
// test/packaging/packages.test.ts (test/helpers/host-install.ts).
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { EVENTS } from '../../src/log/message-ids.js';
import { ROOT } from '../helpers/daemon.js';
import { lockHostInstall } from '../helpers/host-install.js';
import { bootSystemd, systemdNsAvailable, waitFor, type SystemdNs } from '../helpers/systemd-ns.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const RPM = join(ROOT, `dist/packages/mtaproxy-${VERSION}-1.x86_64.rpm`);
const CONFIG = '/etc/mtaproxy/mtaproxy.toml';
const SECRET = '/etc/mtaproxy/secret';
const CATALOG_DB_DIR = '/var/lib/systemd/catalog';
const PORT = 807; // mtaproxy.socket's ListenStream=, as installed
/** every file and directory the package owns or its scriptlets make, on the shared root filesystem */
const PACKAGE_PATHS = ['/usr/lib/mtaproxy', '/usr/bin/mtaproxy', '/usr/lib/systemd/system/mtaproxy.service', '/usr/lib/systemd/system/mtaproxy.socket',
  '/usr/lib/sysusers.d/mtaproxy.conf', '/usr/lib/systemd/catalog/mtaproxy.catalog', '/usr/share/man/man8/mtaproxy.8.gz', '/usr/share/doc/mtaproxy',
  '/usr/share/licenses/mtaproxy', '/etc/systemd/system/sockets.target.wants/mtaproxy.socket'];

function sh(cmd: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, cwd: ROOT });
  return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error?.message ?? '') };
}
const has = (tool: string): boolean => sh('sh', ['-c', `command -v ${tool}`]).code === 0;

// Wait for the .deb test to be done with the machine before looking at it.
const ns = systemdNsAvailable();
const prerequisite = process.arch !== 'x64' ? 'the test names the x86_64 package' : !ns.ok ? ns.reason : ['rpm', 'rpmbuild', 'dpkg-buildpackage', 'ldconfig'].find((t) => !has(t));
const release = prerequisite === undefined ? await lockHostInstall('rpm-install.test.ts') : () => undefined;
const foreign =
  sh('sh', ['-c', `ss -Hltn 'sport = :${PORT}' | grep -q .`]).code === 0 ? `port ${PORT} is in use on this machine`
  : existsSync('/usr/lib/mtaproxy') || existsSync('/etc/mtaproxy') ? 'mtaproxy is installed on this machine (/usr/lib/mtaproxy or /etc/mtaproxy): the test will not touch it'
  : undefined;
const skip = prerequisite === undefined ? foreign : `${prerequisite}${/^(rpm|rpmbuild|dpkg-buildpackage|ldconfig)$/.test(prerequisite) ? ' missing (apt-get install rpm debhelper)' : ''}`;
if (skip !== undefined) release();

/** The newest modification time of what goes into the package (what build-packages.sh copies). */
function newestInput(): number {
  const files = sh('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard']).stdout.split('\0').filter((f) => f !== '' && existsSync(join(ROOT, f)));
  return Math.max(...files.map((f) => statSync(join(ROOT, f)).mtimeMs), statSync(process.execPath).mtimeMs);
}

describe.skipIf(skip !== undefined)(`the .rpm, installed with rpm -i under a real systemd${skip === undefined ? '' : ` (skipped: ${skip})`}`, () => {
  let workdir = '';
  let dbpath = '';
  let sd: SystemdNs | undefined;
  let booting: Promise<SystemdNs> | undefined;
  let abandoned = false;
  let userExisted = false;
  let smtp: SMTPServer | undefined;
  let smtpPort = 0;
  const received: { remoteAddress: string; sha256: string }[] = [];
  const catalogDbExisted = existsSync(CATALOG_DB_DIR);
  const started = Date.now();

  const inside = (cmd: string[], timeoutMs = 60_000) => {
    if (!sd) throw new Error('systemd did not boot');
    return sd.exec(cmd, { timeoutMs });
  };
  // --force-debian: Debian's rpm otherwise prints "RPM should not be used directly install RPM packages, use Alien instead!"
  const rpm = (...args: string[]) => inside(['rpm', '--force-debian', '--dbpath', dbpath, ...args], 180_000);
  const installed = async (): Promise<boolean> => (await rpm('-q', 'mtaproxy')).code === 0;
  const state = async (unit: string): Promise<string> => (await inside(['systemctl', 'is-active', unit])).stdout.trim();
  const show = async (unit: string, prop: string): Promise<string> => (await inside(['systemctl', 'show', unit, '-p', prop, '--value'])).stdout.trim();
  const listening = (): boolean => sh('sh', ['-c', `ss -Hltn 'sport = :${PORT}' | grep -q .`]).code === 0;
  const journal = async (...filters: string[]): Promise<Record<string, string>[]> => {
    const r = await inside(['journalctl', '--no-pager', '-o', 'json', ...filters]);
    return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
  };
  const nextRecord = async (before: number, ...filters: string[]): Promise<Record<string, string> | undefined> => {
    let records: Record<string, string>[] = [];
    await waitFor(`a new journal record ${filters.join(' ')}`, async () => (records = await journal(...filters)).length > before);
    return records.at(-1);
  };
  /** the unit's last journal lines, for failure messages */
  const unitLog = async (): Promise<string> => (await inside(['journalctl', '--no-pager', '-u', 'mtaproxy.service', '-n', '15'])).stdout;
  const secret = (): string => (readFileSync(SECRET, 'utf8').split('\n')[0] ?? '').trim();
  const fingerprint = (): string => /Fingerprint=(\S+)/i.exec(sh('openssl', ['x509', '-in', '/etc/mtaproxy/tls.crt', '-noout', '-fingerprint', '-sha256']).stdout)?.[1] ?? '';
  const session = (name: string): Promise<ControlClient> => ControlClient.connect({ host: '127.0.0.1', port: PORT, name, secret: secret() });
  const modeOwner = (path: string): string => sh('stat', ['-c', '%a %U %G', path]).stdout.trim();

  /** One message through a tunnel of the installed daemon, from 127.0.0.2, to the test's SMTP server. */
  async function deliver(client: ControlClient, name: string): Promise<{ sha256: string; local: string }> {
    await client.declare({ key: 'rpm-test', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 1000, mode: 'sum' });
    const t = await openTunnel({ host: '127.0.0.1', port: PORT, name, secret: secret(), source: '127.0.0.2', destination: { host: '127.0.0.1', port: smtpPort }, throttle: 'rpm-test' });
    const body = Buffer.from(`Subject: through the installed rpm\r\n\r\n${randomBytes(30_000).toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n`);
    await sendOver(t.socket, body);
    return { sha256: createHash('sha256').update(body).digest('hex'), local: t.local };
  }

  beforeAll(async () => {
    userExisted = sh('getent', ['passwd', 'mtaproxy']).code === 0;
    // Reuse the package when nothing that goes into it changed since it was built (the .deb test
    // builds both); otherwise build the .rpm alone, as `npm run package` does.
    if (existsSync(RPM) && statSync(RPM).mtimeMs > newestInput()) console.log(`rpm-install: reusing ${RPM} (newer than every input)`);
    else {
      const t0 = Date.now();
      const build = spawnSync('bash', ['packaging/build-packages.sh'], { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20, env: { ...process.env, ONLY: 'rpm' } });
      if (build.status !== 0) throw new Error(`ONLY=rpm npm run package failed:\n${build.stdout.slice(-4000)}\n${build.stderr.slice(-4000)}`);
      console.log(`rpm-install: ${RPM} built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    smtp = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onData(stream, s, callback) {
        const hash = createHash('sha256');
        stream.on('data', (c: Buffer) => hash.update(c));
        stream.on('end', () => {
          received.push({ remoteAddress: s.remoteAddress, sha256: hash.digest('hex') });
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => smtp?.listen(0, '127.0.0.1', resolve));
    smtpPort = (smtp.server.address() as AddressInfo).port;
    if (abandoned) return; // the hook timed out and afterAll has run: boot nothing it would not stop
    workdir = await mkdtemp(join(tmpdir(), 'mtaproxy-rpm-'));
    dbpath = join(workdir, 'rpmdb');
    booting = bootSystemd(workdir, [ROOT.replace(/\/$/, '')]); // rpm reads dist/packages/*.rpm from inside
    sd = await booting;
    const init = await inside(['rpmdb', '--dbpath', dbpath, '--initdb']);
    expect(init.code, init.stderr).toBe(0);
  }, 240_000);

  afterAll(async () => {
    // Whatever happened: no package, no files, no user this test created, no namespace left.
    // (A beforeAll that timed out keeps running: it must not boot after this, and a boot under way is waited for.)
    abandoned = true;
    sd ??= await booting?.catch(() => undefined);
    try {
      if (sd && (await installed())) await rpm('-e', '--nodeps', 'mtaproxy');
    } finally {
      if (sd && (await installed().catch(() => false))) await rpm('-e', '--nodeps', '--noscripts', 'mtaproxy').catch(() => undefined);
      await sd?.shutdown();
      for (const p of PACKAGE_PATHS) await rm(p, { recursive: true, force: true });
      // what the erase keeps by design (secret, TLS pair, an .rpmsave): this test made it
      await rm('/etc/mtaproxy', { recursive: true, force: true });
      if (!userExisted && sh('getent', ['passwd', 'mtaproxy']).code === 0) sh('userdel', ['mtaproxy']);
      if (!userExisted && sh('getent', ['group', 'mtaproxy']).code === 0) sh('groupdel', ['mtaproxy']);
      if (!catalogDbExisted) await rm(CATALOG_DB_DIR, { recursive: true, force: true });
      else sh('journalctl', ['--update-catalog']);
      if (workdir) await rm(workdir, { recursive: true, force: true });
      if (smtp) await new Promise<void>((resolve) => smtp?.close(() => resolve()));
      release();
      console.log(`rpm-install test: ${((Date.now() - started) / 1000).toFixed(1)} s in all`);
    }
  }, 180_000);

  it('declares only what the README says it needs, and this host provides all of it (so --nodeps hides nothing)', async () => {
    const requires = sh('rpm', ['-qp', '--requires', RPM]).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
    // README "Packages": no nodejs (the runtime is in the package), only shared libraries, and systemd for the scriptlets
    expect(requires.filter((r) => /node/i.test(r))).toEqual([]);
    const sonames = new Set(requires.filter((r) => /\.so\.\d/.test(r)).map((r) => r.replace(/\(.*$/, '')));
    const other = [...new Set(requires.filter((r) => !/\.so\.\d/.test(r) && !r.startsWith('rpmlib(')))].sort();
    expect(other).toEqual(['/bin/sh', `config(mtaproxy) = ${VERSION}-1`, 'rtld(GNU_HASH)', 'systemd']);
    expect([...sonames].sort()).toEqual(['ld-linux-x86-64.so.2', 'libc.so.6', 'libdl.so.2', 'libgcc_s.so.1', 'libm.so.6', 'libpthread.so.0', 'libstdc++.so.6', 'libsystemd.so.0']);
    // systemd is required by the scriptlets only (sysusers, systemctl, journalctl), not at run time
    const scripts = sh('rpm', ['-qp', '--qf', '[%{REQUIRENAME} %{REQUIREFLAGS:deptype}\n]', RPM]).stdout;
    expect(scripts.split('\n').filter((l) => l.startsWith('systemd ')).map((l) => l.split(' ')[1]).sort()).toEqual(['post', 'postun', 'pre', 'preun']);
    // %pre makes the user from the text of the package's own sysusers.d file
    const pre = sh('rpm', ['-qp', '--qf', '%{PREIN}', RPM]).stdout;
    const sysusers = readFileSync(join(ROOT, 'packaging/sysusers.d/mtaproxy.conf'), 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    expect(pre).toContain(`systemd-sysusers --replace=/usr/lib/sysusers.d/mtaproxy.conf - <<'SYSUSERS_EOF' || :\n${sysusers.join('\n')}\nSYSUSERS_EOF`);

    // Without --nodeps, rpm refuses, and for nothing but the unknown dependencies: Debian's rpm
    // database is empty. Every one of them is on this host: the libraries in ld.so's cache, the rest as files.
    const refused = await rpm('-i', '--test', RPM);
    expect(refused.code).not.toBe(0);
    const failed = [...refused.stderr.matchAll(/^\s+(\S+(?: [<>=]+ \S+)?) is needed by mtaproxy/gm)].map((m) => m[1] ?? '');
    expect(failed.length, refused.stderr).toBeGreaterThan(0);
    expect(refused.stderr.replace(/^\s+\S+(?: [<>=]+ \S+)? is needed by \S+\n?/gm, '').trim()).toBe('error: Failed dependencies:');
    const cache = sh('ldconfig', ['-p']).stdout;
    for (const dep of failed) {
      if (dep === '/bin/sh') expect(existsSync('/bin/sh')).toBe(true);
      else if (dep === 'systemd') expect(existsSync('/lib/systemd/systemd') && has('systemd-sysusers') && has('journalctl')).toBe(true);
      else if (dep === 'rtld(GNU_HASH)') expect(cache).toMatch(/ld-linux-x86-64\.so\.2/);
      else {
        const soname = dep.replace(/\(.*$/, '');
        expect(cache, dep).toContain(`${soname} (libc6,x86-64)`);
        const version = /\((\w+_[\d.]+)\)\(64bit\)$/.exec(dep)?.[1];
        if (version !== undefined) {
          const file = /=> (\S+)/.exec(cache.split('\n').find((l) => l.includes(`${soname} (libc6,x86-64)`)) ?? '')?.[1] ?? '';
          expect(sh('sh', ['-c', `objdump -T '${file}' 2>/dev/null || strings '${file}'`]).stdout, `${dep} in ${file}`).toContain(version);
        }
      }
    }
  }, 60_000);

  it('rpm -i: the scriptlets create the user, the secret and the TLS pair, enable and start the socket only', async () => {
    const install = await rpm('-i', '--nodeps', RPM);
    console.log(`rpm -i --nodeps ${RPM}:\n${install.stdout}${install.stderr}`);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    // nothing but systemd-sysusers saying what it made: no scriptlet complained, no "group mtaproxy does not exist"
    expect((install.stdout + install.stderr).split('\n').filter((l) => l !== '' && !/^Creating (group|user) 'mtaproxy' /.test(l))).toEqual([]);
    expect((await rpm('-q', 'mtaproxy')).stdout.trim()).toBe(`mtaproxy-${VERSION}-1.x86_64`);
    // the installed files are what the package says (modes and owners included: the group exists before they are unpacked)
    const verify = await rpm('-V', '--nodeps', 'mtaproxy');
    expect(verify.stdout + verify.stderr, 'rpm -V').toBe('');

    // the system user (sysusers.d), without a login shell
    const user = sh('getent', ['passwd', 'mtaproxy']).stdout.trim().split(':');
    expect(user[0]).toBe('mtaproxy');
    expect(Number(user[2])).toBeLessThan(1000);
    expect(user[6]).toMatch(/nologin$/);
    // a fresh random secret, the TLS pair and the config: readable by the service's group only
    expect(secret()).toMatch(/^\S{32,}$/);
    expect(modeOwner(SECRET)).toBe('640 root mtaproxy');
    expect(modeOwner('/etc/mtaproxy/tls.key')).toBe('640 root mtaproxy');
    expect(modeOwner(CONFIG)).toBe('640 root mtaproxy');
    expect(fingerprint()).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(sh('mtaproxy', ['check-config', CONFIG]).stdout.trim()).toBe(`${CONFIG}: OK`);

    // %post: the socket enabled and listening, the service waiting for the first MTA
    expect((await inside(['systemctl', 'is-enabled', 'mtaproxy.socket'])).stdout.trim()).toBe('enabled');
    expect((await inside(['systemctl', 'is-enabled', 'mtaproxy.service'])).stdout.trim()).toBe('indirect'); // [Install] Also=mtaproxy.socket only
    expect(await state('mtaproxy.socket')).toBe('active');
    expect(await state('mtaproxy.service')).toBe('inactive');
    expect(listening()).toBe(true);
    expect(await show('mtaproxy.socket', 'Listen')).toBe('[::]:807 (Stream)');
    // the unit files systemd loaded are the package's (the %post's systemctl enable reloaded it)
    expect(await show('mtaproxy.service', 'FragmentPath')).toMatch(/^(\/usr)?\/lib\/systemd\/system\/mtaproxy\.service$/); // /lib is /usr/lib here
    expect(await show('mtaproxy.service', 'NeedDaemonReload')).toBe('no');
    // and the journal catalog is indexed
    expect((await inside(['journalctl', '--list-catalog'])).stdout).toContain(`${EVENTS.reload_rejected.id} mtaproxy: ${EVENTS.reload_rejected.subject}`);
  }, 240_000);

  it('the first MTA starts the service through the socket and is served; the daemon runs as mtaproxy, without capabilities', async () => {
    const client = await session('server-a');
    expect(await client.ping()).toBeGreaterThan(0);
    expect(await state('mtaproxy.service')).toBe('active');
    const pid = await show('mtaproxy.service', 'MainPID');
    const status = (await inside(['cat', `/proc/${pid}/status`])).stdout;
    expect(status).toMatch(new RegExp(`^Uid:\\s+${sh('id', ['-u', 'mtaproxy']).stdout.trim()}\\s`, 'm'));
    expect(status).toMatch(/CapEff:\s+0+\n[\s\S]*CapBnd:\s+0+\n/);
    expect((await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=socket_activation')).at(-1)?.SOCKETS).toBe('3=native');
    const live = await inside(['mtaproxy', 'status']);
    expect(live.code, live.stderr).toBe(0);
    expect(live.stdout).toMatch(/throttle: session\(server-a\)/);
    await client.quit();
  }, 60_000);

  it('systemctl reload: a valid change is applied (a delivery gets through); a broken one fails loudly and the old config stays in force', async () => {
    const original = readFileSync(CONFIG, 'utf8');
    const egress = `\n[egress]\nsource_ips = ["127.0.0.2"]\nports = [${smtpPort}]\nallow_private_destinations = true\n`;
    const client = await session('server-b');
    // the installed config allows no delivery: no source address
    await expect(deliver(client, 'server-b')).rejects.toThrow(/550 source 127\.0\.0\.2 is not/);

    writeFileSync(CONFIG, original + egress);
    const applied = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied')).length;
    const ok = await inside(['systemctl', 'reload', 'mtaproxy.service']);
    expect(ok.code, ok.stderr + (await unitLog())).toBe(0);
    expect((await nextRecord(applied, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_applied'))?.CHANGED).toMatch(/egress/);
    const first = await deliver(client, 'server-b');
    expect(first.local).toMatch(/^127\.0\.0\.2:\d+$/);
    expect(received.at(-1)).toEqual({ remoteAddress: '127.0.0.2', sha256: first.sha256 });
    const delivery = (await nextRecord(0, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=delivery', 'SESSION=server-b', 'OUTCOME=closed'));
    expect(delivery).toMatchObject({ SOURCE_IP: '127.0.0.2', DESTINATION: `127.0.0.1:${smtpPort}`, THROTTLE: 'rpm-test', MESSAGE_ID: EVENTS.delivery.id });

    // broken: the egress table gone AND a value the validator refuses; the reload must fail, say why, and change nothing
    writeFileSync(CONFIG, `${original}\nstatus_interval = "forever"\n`);
    const rejectedBefore = (await journal('-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected')).length;
    const pidBefore = await show('mtaproxy.service', 'MainPID');
    const rejected = await inside(['systemctl', 'reload', 'mtaproxy.service']);
    console.log(`systemctl reload mtaproxy (broken config): exit ${rejected.code}\n${rejected.stderr}`);
    expect(rejected.code).not.toBe(0);
    expect(rejected.stderr).toMatch(/^Job for mtaproxy\.service failed\./);
    const reason = (await nextRecord(rejectedBefore, '-u', 'mtaproxy.service', 'MTAPROXY_EVENT=reload_rejected'))?.MESSAGE;
    expect(reason).toMatch(new RegExp(`^reload rejected: ${CONFIG}:\\d+:1: status_interval: `));
    // ExecReload's own output (mtaproxy reload prints the reason) is in the unit's journal too
    await waitFor('mtaproxy reload\'s stderr in the journal', async () => (await journal('-u', 'mtaproxy.service')).some((r) => /^mtaproxy: .*reload rejected|^\s+\/etc\/mtaproxy\/mtaproxy\.toml:\d+:1: status_interval/.test(r.MESSAGE ?? '')));
    expect(await show('mtaproxy.service', 'StatusText')).toMatch(/^reload rejected, old config still in effect: /);
    expect(await state('mtaproxy.service')).toBe('active');
    expect(await show('mtaproxy.service', 'MainPID')).toBe(pidBefore);
    // the old config is in force: the egress table the broken file lacks still lets a delivery through
    expect(await client.ping()).toBeGreaterThan(0);
    const second = await deliver(client, 'server-b');
    expect(received.at(-1)).toEqual({ remoteAddress: '127.0.0.2', sha256: second.sha256 });

    // the administrator's edit (a valid one) stays in the file: the erase below must keep it as .rpmsave
    writeFileSync(CONFIG, `${original + egress}# edited by the administrator\n`);
    expect((await inside(['systemctl', 'reload', 'mtaproxy.service'])).code).toBe(0);
    await client.quit();
  }, 90_000);

  it('rpm -U (the same package again): the running service is restarted, the secret, the TLS pair and the edited config kept', async () => {
    const client = await session('server-c');
    const pidBefore = await show('mtaproxy.service', 'MainPID');
    const secretBefore = secret();
    const fingerprintBefore = fingerprint();
    const upgrade = await rpm('-U', '--replacepkgs', '--nodeps', RPM);
    expect(upgrade.code, upgrade.stdout + upgrade.stderr).toBe(0);
    expect(await client.closed).toBe('421 mtaproxy shutting down');
    await waitFor('the service to be active again', async () => (await state('mtaproxy.service')) === 'active', { timeoutMs: 15_000 }).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${await state('mtaproxy.service')}\n${upgrade.stdout}${upgrade.stderr}\n${await unitLog()}`);
    });
    expect(await show('mtaproxy.service', 'MainPID')).not.toBe(pidBefore);
    expect(secret()).toBe(secretBefore);
    expect(fingerprint()).toBe(fingerprintBefore);
    expect(readFileSync(CONFIG, 'utf8')).toContain('# edited by the administrator');
    expect(existsSync(`${CONFIG}.rpmnew`)).toBe(false); // the package's config did not change
    const again = await session('server-d');
    expect(await again.ping()).toBeGreaterThan(0);
    await again.quit();
  }, 120_000);

  it('rpm -e leaves what the README says: the secret, the TLS pair and the edited config (.rpmsave), and the user; units, program, catalog gone', async () => {
    const client = await session('server-e');
    const secretBefore = secret();
    const fingerprintBefore = fingerprint();
    const uid = sh('id', ['-u', 'mtaproxy']).stdout.trim();
    const erase = await rpm('-e', 'mtaproxy');
    console.log(`rpm -e mtaproxy:\n${erase.stdout}${erase.stderr}`);
    expect(erase.code, erase.stdout + erase.stderr).toBe(0);
    expect(erase.stderr).toBe(`warning: ${CONFIG} saved as ${CONFIG}.rpmsave\n`);
    expect(await client.closed).toBe('421 mtaproxy shutting down');
    expect(await installed()).toBe(false);
    // stopped, disabled, unloaded (%postun's daemon-reload), not listening
    expect(listening()).toBe(false);
    expect(await show('mtaproxy.socket', 'LoadState')).toBe('not-found');
    expect(await show('mtaproxy.service', 'LoadState')).toBe('not-found');
    for (const p of PACKAGE_PATHS) expect(existsSync(p), p).toBe(false);
    expect((await inside(['journalctl', '--list-catalog'])).stdout).not.toContain(EVENTS.reload_rejected.id);
    // kept: the cluster secret, the pinned certificate, the edited config, the user
    expect(sh('ls', ['-A', '/etc/mtaproxy']).stdout.split('\n').filter(Boolean).sort()).toEqual(['mtaproxy.toml.rpmsave', 'secret', 'tls.crt', 'tls.key']);
    expect(readFileSync(`${CONFIG}.rpmsave`, 'utf8')).toContain('# edited by the administrator');
    expect(sh('id', ['-u', 'mtaproxy']).stdout.trim()).toBe(uid);

    // a reinstall takes the kept secret and pair (no new cluster secret, no new fingerprint) and the same user
    const again = await rpm('-i', '--nodeps', RPM);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(secret()).toBe(secretBefore);
    expect(fingerprint()).toBe(fingerprintBefore);
    expect(sh('id', ['-u', 'mtaproxy']).stdout.trim()).toBe(uid);
    expect(readFileSync(CONFIG, 'utf8')).not.toContain('# edited by the administrator'); // the package's own
    const c = await session('server-f');
    expect(await c.ping()).toBeGreaterThan(0);
    await c.quit();
    // an unedited config goes with the package: nothing new is saved
    const erase2 = await rpm('-e', 'mtaproxy');
    expect(erase2.code, erase2.stderr).toBe(0);
    expect(erase2.stdout + erase2.stderr).toBe('');
    expect(sh('ls', ['-A', '/etc/mtaproxy']).stdout.split('\n').filter(Boolean).sort()).toEqual(['mtaproxy.toml.rpmsave', 'secret', 'tls.crt', 'tls.key']);
    for (const p of PACKAGE_PATHS) expect(existsSync(p), p).toBe(false);
  }, 240_000);
});

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
