import { describe, expect, it } from 'vitest';
import { changedDirectives, formatConfigError, parseConfig, parseDuration, parseListenAddress, type ConfigResult } from '../../src/config/parse.js';

const SECRET = 'x'.repeat(40);
const LOCAL = new Set(['192.0.2.10', '192.0.2.11', '2001:db8::10']);
const noFiles = {
  readSecretFile: (p: string): string => { throw new Error(`ENOENT: no such file "${p}"`); },
  isLocalAddress: (ip: string): boolean => LOCAL.has(ip),
};
const parse = (text: string, io = noFiles): ConfigResult => parseConfig(text, '/etc/mtaproxy/mtaproxy.toml', io);
const errorsOf = (text: string, io = noFiles): string[] => {
  const r = parse(text, io);
  if (r.ok) throw new Error('expected errors');
  return r.errors.map(formatConfigError);
};

describe('config', () => {
  it('applies defaults', () => {
    const r = parse(`auth_shared_secret = "${SECRET}"\n`);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.listen).toEqual([{ host: '0.0.0.0', port: 807 }]);
    expect(r.config.allowFrom.rules.map((x) => x.text)).toEqual(['127.0.0.0/8', '::1']);
    expect(r.config.logVerbose).toBe(false);
    expect(r.config.statusIntervalMs).toBe(5000);
    expect(r.config.adminSocket).toBe('/run/mtaproxy/admin.sock');
  });

  it('reads every directive', () => {
    const r = parse(
      [
        'listen = ["0.0.0.0:807", "[::]:807", "[2001:db8::1]:25"]',
        'allow_from = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]',
        `auth_shared_secret = "${SECRET}"`,
        `auth_shared_secret_previous = "${'y'.repeat(32)}"`,
        'log_verbose = true',
        'status_interval = "1m30s"',
        'admin_socket = "/run/x.sock"',
        'handshake_timeout = 2.5',
        'ping_interval = "500ms"',
        'shutdown_timeout = "0s"',
      ].join('\n'),
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.listen).toEqual([
      { host: '0.0.0.0', port: 807 },
      { host: '::', port: 807 },
      { host: '2001:db8::1', port: 25 },
    ]);
    expect(r.config.secrets).toHaveLength(2);
    expect(r.config.statusIntervalMs).toBe(90_000);
    expect(r.config.handshakeTimeoutMs).toBe(2500);
    expect(r.config.pingIntervalMs).toBe(500);
    expect(r.config.shutdownTimeoutMs).toBe(0);
    expect(r.config.logVerbose).toBe(true);
  });

  it('names file, line, column and key for unknown keys, with a suggestion', () => {
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\n\n  alow_from = ["10.0.0.0/8"]\n`)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:3:3: alow_from: unknown directive; did you mean "allow_from"?',
    ]);
  });

  it('rejects unknown tables', () => {
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\n[egres]\nx = 1\n`)).toEqual(['/etc/mtaproxy/mtaproxy.toml:2:1: egres: unknown directive; did you mean "egress"?']);
  });

  it('reports wrong types', () => {
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\nlog_verbose = "yes"\nstatus_interval = "5 seconds"\nlisten = 807\n`)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:2:1: log_verbose: must be true or false',
      '/etc/mtaproxy/mtaproxy.toml:3:1: status_interval: must be a duration such as "500ms", "10s", "1m30s" or a number of seconds',
      '/etc/mtaproxy/mtaproxy.toml:4:1: listen: must be a string or an array of strings',
    ]);
  });

  it('locates a bad CIDR inside a multi-line array', () => {
    const text = `auth_shared_secret = "${SECRET}"\nallow_from = [\n  "10.0.0.0/8",\n  "10.1.2.300/24",\n  "10.0.0.1/8",\n]\n`;
    expect(errorsOf(text)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:4:3: allow_from: "10.1.2.300/24" is not an IP address or CIDR',
      '/etc/mtaproxy/mtaproxy.toml:5:3: allow_from: "10.0.0.1/8" has host bits set; did you mean "10.0.0.0/8"?',
    ]);
  });

  it('rejects a short secret without echoing it', () => {
    const errors = errorsOf('auth_shared_secret = "hunter2-hunter2"\n');
    expect(errors).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:1:1: auth_shared_secret: is 15 characters; at least 32 are required (mtaproxy gen-secret makes one)',
    ]);
    expect(errors.join()).not.toContain('hunter2');
  });

  it('requires a secret', () => {
    expect(errorsOf('log_verbose = true\n')[0]).toContain('auth_shared_secret: is required');
  });

  it('reads the secret from a file (first line) and reports unreadable files', () => {
    const r = parse('auth_shared_secret_file = "/etc/mtaproxy/secret"\n', { ...noFiles, readSecretFile: () => `${SECRET}\n` });
    expect(r.ok && r.config.secrets[0]?.key().toString()).toBe(SECRET);
    expect(errorsOf('auth_shared_secret_file = "/nope"\n')).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:1:1: auth_shared_secret_file: cannot read "/nope": ENOENT: no such file "/nope"',
    ]);
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\nauth_shared_secret_file = "/x"\n`)[0]).toContain('not both');
  });

  it('reports TOML syntax errors with their line', () => {
    const errors = errorsOf(`auth_shared_secret = "${SECRET}"\nlisten = [\n"a"\n\nstatus_interval = \n`);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^\/etc\/mtaproxy\/mtaproxy\.toml:\d+:\d+: TOML syntax: /);
  });

  it('parses listen addresses strictly', () => {
    expect(parseListenAddress('127.0.0.1:807')).toEqual({ host: '127.0.0.1', port: 807 });
    expect(parseListenAddress('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListenAddress('localhost:807')).toMatch(/host names are not accepted/);
    expect(parseListenAddress('::1:807')).toMatch(/must be "IP:PORT"/);
    expect(parseListenAddress('1.2.3.4:70000')).toMatch(/port must be/);
    expect(parseListenAddress('1.2.3.4')).toMatch(/must be "IP:PORT"/);
  });

  it('parses durations', () => {
    expect(parseDuration('1h2m3s')).toBe(3_723_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration(3)).toBe(3000);
    expect(parseDuration('3')).toBeNull();
    expect(parseDuration('5s ')).toBeNull();
    expect(parseDuration(-1)).toBeNull();
  });

  it('lists changed directives, never values', () => {
    const a = parse(`auth_shared_secret = "${SECRET}"\n`);
    const b = parse(`auth_shared_secret = "${'z'.repeat(32)}"\nallow_from = ["10.0.0.0/8"]\nlog_verbose = true\n`);
    if (!a.ok || !b.ok) throw new Error('fixtures must parse');
    expect(changedDirectives(a.config, b.config)).toEqual(['allow_from', 'auth_shared_secret', 'log_verbose']);
    expect(changedDirectives(a.config, a.config)).toEqual([]);
  });

  it('never shows the secret when the config is logged or inspected', async () => {
    const r = parse(`auth_shared_secret = "${SECRET}"\n`);
    if (!r.ok) throw new Error('fixture must parse');
    const { inspect } = await import('node:util');
    expect(JSON.stringify(r.config)).not.toContain(SECRET);
    expect(inspect(r.config, { depth: 5 })).not.toContain(SECRET);
    expect(`${String(r.config.secrets[0])}`).toBe('[secret]');
  });

  it('reads the [egress] table with defaults', () => {
    const r = parse(`auth_shared_secret = "${SECRET}"\n`);
    expect(r.ok && r.config.egress).toEqual({
      sourceIps: [], ports: [25, 465, 587], allowPrivateDestinations: false, connectTimeoutMs: 30_000,
      idleTimeoutMs: 300_000, maxTunnels: 10_000, throttleWaitTimeoutMs: 60_000,
    });
    const full = parse(
      `auth_shared_secret = "${SECRET}"\n[egress]\nsource_ips = ["192.0.2.10", "2001:db8::10"]\nports = [25, 2525]\nallow_private_destinations = true\nconnect_timeout = "5s"\nidle_timeout = "1m"\nmax_tunnels = 50\nthrottle_wait_timeout = "2s"\n`,
    );
    expect(full.ok && full.config.egress).toEqual({
      sourceIps: ['192.0.2.10', '2001:db8::10'], ports: [25, 2525], allowPrivateDestinations: true, connectTimeoutMs: 5000,
      idleTimeoutMs: 60_000, maxTunnels: 50, throttleWaitTimeoutMs: 2000,
    });
  });

  it('rejects source IPs that are not on this host, and bad egress values, with their lines', () => {
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\n[egress]\nsource_ips = [\n  "192.0.2.10",\n  "198.51.100.7",\n  "10.0.0.300",\n]\nports = [25, 0]\nmax_tunnels = 1.5\nsource_ip = "x"\n`)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:5:3: egress.source_ips: "198.51.100.7" is not an address of this host (ip -br addr shows them)',
      '/etc/mtaproxy/mtaproxy.toml:6:3: egress.source_ips: "10.0.0.300" is not an IP address',
      '/etc/mtaproxy/mtaproxy.toml:8:1: egress.ports: must be a non-empty array of port numbers (1..65535)',
      '/etc/mtaproxy/mtaproxy.toml:9:1: egress.max_tunnels: must be a whole number from 1 to 1000000',
      '/etc/mtaproxy/mtaproxy.toml:10:1: egress.source_ip: unknown directive; did you mean "egress.source_ips"?',
    ]);
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\negress = 5\n`)).toEqual(['/etc/mtaproxy/mtaproxy.toml:2:1: egress: must be a table: [egress]']);
  });

  it('a host whose addresses cannot be listed makes source_ips a config error with the cause, never an exception', () => {
    // what load.ts's isLocalAddress throws under a unit without AF_NETLINK (a reload used to crash the daemon)
    const io = { ...noFiles, isLocalAddress: (): boolean => { throw new Error("the host's addresses cannot be listed: uv_interface_addresses returned Unknown system error 97"); } };
    expect(errorsOf(`auth_shared_secret = "${SECRET}"\n[egress]\nsource_ips = ["192.0.2.10", "not-an-ip"]\n`, io)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:3:15: egress.source_ips: cannot tell whether "192.0.2.10" is an address of this host: the host\'s addresses cannot be listed: uv_interface_addresses returned Unknown system error 97',
      '/etc/mtaproxy/mtaproxy.toml:3:29: egress.source_ips: "not-an-ip" is not an IP address',
    ]);
  });
});
