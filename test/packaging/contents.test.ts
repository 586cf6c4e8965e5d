// What both packages ship, checked from the sources: the commented config, the hardened unit.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as parse from '../../src/config/parse.js';
import { CLI, ROOT } from '../helpers/daemon.js';

const config = readFileSync(join(ROOT, 'packaging/mtaproxy.toml'), 'utf8');
const service = readFileSync(join(ROOT, 'packaging/systemd/mtaproxy.service'), 'utf8');

describe('packaged files', () => {
  it('the config explains every directive and is valid as shipped', () => {
    for (const key of Object.keys(parse.DIRECTIVES)) expect(config, key).toMatch(new RegExp(`^# ${key}: \\S`, 'm'));
    // tables: EGRESS_DIRECTIVES -> [egress] …, each key explained in its table's section
    for (const [name, table] of Object.entries(parse as Record<string, unknown>)) {
      const m = /^([A-Z0-9_]+)_DIRECTIVES$/.exec(name);
      if (!m?.[1] || typeof table !== 'object' || table === null) continue;
      const tableName = m[1].toLowerCase();
      const start = config.indexOf(`#[${tableName}]\n`);
      expect(start, `a commented [${tableName}] section`).toBeGreaterThan(0);
      const section = config.slice(start).split(/\n#\[/)[0] ?? '';
      for (const key of Object.keys(table)) expect(section, `[${tableName}] ${key}`).toMatch(new RegExp(`^# ${key}: \\S`, 'm'));
    }
    expect(config).toMatch(/^admin_socket = "\/run\/mtaproxy\/admin\.sock"$/m);
    expect(config).toMatch(/^auth_shared_secret_file = "\/etc\/mtaproxy\/secret"$/m);
    expect(config).toMatch(/ignored under socket activation/i);
    const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-conf-'));
    try {
      writeFileSync(join(dir, 'secret'), 'a-test-secret-that-is-long-enough-0123456789\n');
      // the TLS pair the package scriptlets make with the same command
      const gen = spawnSync(process.execPath, [CLI, 'gen-cert', join(dir, 'tls.crt'), join(dir, 'tls.key')], { encoding: 'utf8' });
      expect(gen.stdout + gen.stderr).toMatch(/tls\.crt: sha256 fingerprint ([0-9A-F]{2}:){31}[0-9A-F]{2}\n$/);
      expect(config).toMatch(/^tls_certificate_file = "\/etc\/mtaproxy\/tls\.crt"$/m);
      expect(config).toMatch(/^tls_key_file = "\/etc\/mtaproxy\/tls\.key"$/m);
      writeFileSync(join(dir, 'mtaproxy.toml'), config.replace('/etc/mtaproxy/secret', join(dir, 'secret')).replace('= "/etc/mtaproxy/tls.crt"', `= "${join(dir, 'tls.crt')}"`).replace('= "/etc/mtaproxy/tls.key"', `= "${join(dir, 'tls.key')}"`));
      const r = spawnSync(process.execPath, [CLI, 'check-config', join(dir, 'mtaproxy.toml')], { encoding: 'utf8' });
      expect(r.stdout + r.stderr).toBe(`${join(dir, 'mtaproxy.toml')}: OK\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the service is sandboxed without breaking Node, and systemd-analyze rates it <= 2.5', () => {
    for (const line of ['CapabilityBoundingSet=', 'AmbientCapabilities=', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', 'PrivateDevices=yes',
      'NoNewPrivileges=yes', 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK', 'SystemCallFilter=@system-service', 'SystemCallArchitectures=native',
      'ProtectKernelTunables=yes', 'ProtectKernelModules=yes', 'ProtectKernelLogs=yes', 'ProtectControlGroups=yes', 'RestrictNamespaces=yes', 'LockPersonality=yes',
      'RestrictRealtime=yes', 'RestrictSUIDSGID=yes', 'ProtectClock=yes', 'ProtectHostname=yes', 'ProtectProc=invisible', 'UMask=0077',
      'Type=notify', 'Requires=mtaproxy.socket', 'ExecReload=/usr/bin/mtaproxy reload --config-filename=/etc/mtaproxy/mtaproxy.toml', 'User=mtaproxy']) {
      expect(service.split('\n'), line).toContain(line);
    }
    expect(service).not.toMatch(/^MemoryDenyWriteExecute=/m); // kills Node's JIT
    expect(service).not.toMatch(/^WantedBy=/m); // only the socket is enabled
    const socket = readFileSync(join(ROOT, 'packaging/systemd/mtaproxy.socket'), 'utf8');
    expect(socket).toMatch(/^ListenStream=807$/m);
    expect(socket).toMatch(/^FileDescriptorName=native$/m);

    const r = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', join(ROOT, 'packaging/systemd/mtaproxy.service')], { encoding: 'utf8' });
    if (r.error) return console.log(`systemd-analyze not available: ${r.error.message}`);
    const score = /Overall exposure level for mtaproxy\.service: (\d+\.\d+)/.exec(r.stdout);
    console.log(`systemd-analyze security --offline=yes packaging/systemd/mtaproxy.service:\n${r.stdout.split('\n').filter((l) => /^(✗|→)/.test(l)).join('\n')}`);
    expect(Number(score?.[1])).toBeLessThanOrEqual(2.5);
  });
});
