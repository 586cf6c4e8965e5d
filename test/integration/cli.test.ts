import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { configText, freePort, ROOT, runCli, startDaemon, tempDir, type RunningDaemon } from '../helpers/daemon.js';

const running: RunningDaemon[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

describe('mtaproxy CLI', () => {
  it('--help names every command and directive; --version prints the package version', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    for (const word of ['check-config', 'reload', 'status', 'gen-secret', 'gen-cert', 'simulate', '--config-filename', 'allow_from', 'auth_shared_secret_file', 'SIGHUP', '[egress]', 'source_ips', '[socks5]', 'allow_unauthenticated', '[proxy_v2]', '[derived_throttle]', 'max_connections']) {
      expect(help.stdout).toContain(word);
    }
    const { version } = (await import(join(ROOT, 'package.json'), { with: { type: 'json' } })).default as { version: string };
    expect(await runCli(['--version'])).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  it('exits 2 on usage errors', async () => {
    expect(await runCli(['frobnicate'])).toMatchObject({ code: 2, stderr: 'mtaproxy: unknown command "frobnicate"\nTry "mtaproxy --help".\n' });
    expect((await runCli(['--no-such-flag'])).code).toBe(2);
    expect((await runCli(['gen-secret', 'extra'])).code).toBe(2);
  });

  it('gen-cert writes a self-signed pair once, which the daemon presents with the printed fingerprint', async () => {
    const dir = tempDir();
    const cert = join(dir, 'tls.crt');
    const key = join(dir, 'tls.key');
    const made = await runCli(['gen-cert', cert, key]);
    expect(made.code, made.stderr).toBe(0);
    const printed = /sha256 fingerprint (\S+)$/m.exec(made.stdout)?.[1];
    expect(statSync(key).mode & 0o777).toBe(0o600);
    // openssl agrees on the fingerprint, and the key belongs to the certificate
    const openssl = spawnSync('openssl', ['x509', '-in', cert, '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' });
    expect(/Fingerprint=(\S+)/i.exec(openssl.stdout)?.[1]).toBe(printed);
    // never overwrites: a pinned fingerprint must not change by accident
    const before = readFileSync(cert, 'utf8');
    const again = await runCli(['gen-cert', cert, join(dir, 'other.key')]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/tls\.crt: it exists \(remove it to make a new pair\)/);
    expect(readFileSync(cert, 'utf8')).toBe(before);
    expect((await runCli(['gen-cert', cert])).code).toBe(2);
    const d = await startDaemon({ extra: `tls_certificate_file = "${cert}"\ntls_key_file = "${key}"` });
    running.push(d);
    expect(await d.waitForLine(/tls: native listeners present certificate/)).toContain(`fingerprint ${printed}`);
  });

  it('check-config prints OK or every error, exit 0/1', async () => {
    const ok = await runCli(['check-config', join(ROOT, 'examples/mtaproxy.toml')]);
    expect(ok).toMatchObject({ code: 0, stdout: `${join(ROOT, 'examples/mtaproxy.toml')}: OK\n` });
    const dir = tempDir();
    const bad = join(dir, 'bad.toml');
    writeFileSync(bad, 'listen = "localhost:807"\nauth_shared_secret = "short"\nverbose = true\n');
    const r = await runCli(['check-config', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      `${bad}:1:10: listen: "localhost:807": "localhost" is not an IP address (host names are not accepted: they may resolve differently later)`,
      `${bad}:2:1: auth_shared_secret: is 5 characters; at least 32 are required (mtaproxy gen-secret makes one)`,
      `${bad}:3:1: verbose: unknown directive`,
    ]);
    expect(await runCli(['check-config', join(dir, 'missing.toml')])).toMatchObject({ code: 1, stderr: `${join(dir, 'missing.toml')}: cannot read config: no such file\n` });
  });

  it('gen-secret prints a fresh secret the config accepts', async () => {
    const a = (await runCli(['gen-secret'])).stdout.trim();
    const b = (await runCli(['gen-secret'])).stdout.trim();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    const dir = tempDir();
    writeFileSync(join(dir, 'c.toml'), `auth_shared_secret = "${a}"\n`);
    expect((await runCli(['check-config', join(dir, 'c.toml')])).code).toBe(0);
  });

  it('reload and status say clearly when no daemon is running', async () => {
    const dir = tempDir();
    const file = join(dir, 'c.toml');
    writeFileSync(file, configText({ adminSocket: join(dir, 'admin.sock') }));
    const r = await runCli(['reload', `--config-filename=${file}`]);
    expect(r).toMatchObject({ code: 1, stderr: `mtaproxy: cannot reach the daemon's admin socket ${join(dir, 'admin.sock')}: is mtaproxy running?\n` });
  });

  it('reload finds the admin socket even when the new config has a TOML syntax error', async () => {
    const d = await startDaemon();
    running.push(d);
    d.writeConfig(`${configText({ adminSocket: d.adminSocket })}\nlisten = [\n`);
    const r = await d.cli(['reload']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^mtaproxy: reload rejected, old config still in effect: .*mtaproxy\.toml:\d+:\d+: TOML syntax: /);
  });

  it('refuses to start on an invalid config, printing every error', async () => {
    const dir = tempDir();
    const file = join(dir, 'c.toml');
    writeFileSync(file, 'allow_from = ["300.0.0.0/8"]\n');
    const r = await runCli([`--config-filename=${file}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`mtaproxy: ${file} is not valid (2 errors):\n${file}:1:1: auth_shared_secret: is required`);
    expect(r.stderr).toContain(`${file}:1:15: allow_from: "300.0.0.0/8" is not an IP address or CIDR`);
  });

  it('simulate runs MTAs with backlogs against the daemon and prints its live status lines', async () => {
    const d = await startDaemon({ listen: `127.0.0.1:${await freePort()}`, extra: '[egress]\nsource_ips = ["127.0.0.2"]\nports = [25]\n' });
    running.push(d);
    const r = await d.cli(['simulate', '--mtas=3', '--seconds=2', '--max-connections=2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^sim-1: declared sim max_connections=2 max_messages_per_hour=100000 mode=sum$/m);
    expect(r.stdout).toMatch(/^sim-3: declared sim max_connections=6 max_messages_per_hour=300000 mode=sum$/m); // sum: 3 × 2
    // the daemon's own status lines, with the sessions and their reported backlogs
    expect(r.stdout).toMatch(/^throttle: manager\([0-9a-f]{8}\): throttles=1 sessions=3 backlog\(ram=[1-9]\d* /m);
    for (const name of ['sim-1', 'sim-2', 'sim-3']) expect(r.stdout).toMatch(new RegExp(`^throttle: session\\(${name}\\): timeconnected=\\d+s ping=.* backlog\\(ram=\\d+ `, 'm'));
    const shares = [...r.stdout.matchAll(/^ {2}sim-\d: (\d+\.\d)% of (\d+) grants/gm)];
    expect(shares).toHaveLength(3);
    expect(Number(shares[0]?.[2])).toBeGreaterThan(20);
    expect(shares.reduce((a, m) => a + Number(m[1]), 0)).toBeCloseTo(100, 0);
    await expect(runCli(['simulate', '--mtas=0', `--config-filename=${d.configFile}`])).resolves.toMatchObject({ code: 2 });
  }, 20_000);
});
