// tls, tls_certificate_file, tls_key_file (src/config/parse.ts), check-config's plaintext warning,
// and the daemon's, judged by the addresses its listeners are bound to (src/server/listeners.ts).
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { closeListening, listen, plaintextListenerWarnings, type Endpoint, type Listening } from '../../src/server/listeners.js';
import { changedDirectives, configWarnings, formatConfigError, parseConfig, type ConfigIo, type ConfigResult } from '../../src/config/parse.js';
import { generateSelfSigned } from '../../src/config/x509.js';

const SECRET = 'x'.repeat(40);
const pair = generateSelfSigned('proxy.example');
const other = generateSelfSigned('proxy.example');
const pem = (p: typeof pair): string => p.key.export({ type: 'pkcs8', format: 'pem' }) as string;
const FILES: Record<string, string> = {
  '/etc/mtaproxy/cert.pem': pair.cert,
  '/etc/mtaproxy/key.pem': pem(pair),
  '/etc/mtaproxy/other-key.pem': pem(other),
  '/etc/mtaproxy/garbage.pem': 'not a certificate\n',
  '/etc/mtaproxy/rsa.pem': generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
};
const io: ConfigIo = {
  readSecretFile: (p) => {
    throw new Error(`secret read for "${p}"`);
  },
  readTlsFile: (p) => {
    const text = FILES[p];
    if (text === undefined) throw new Error('ENOENT: no such file or directory');
    return text;
  },
  isLocalAddress: () => true,
};
const parse = (lines: string[]): ConfigResult => parseConfig([`auth_shared_secret = "${SECRET}"`, ...lines].join('\n'), '/etc/mtaproxy/mtaproxy.toml', io);
const errorsOf = (lines: string[]): string[] => {
  const r = parse(lines);
  if (r.ok) throw new Error('expected errors');
  return r.errors.map(formatConfigError);
};

describe('config: tls', () => {
  it('is on by default, with a generated pair (no files)', () => {
    const r = parse([]);
    expect(r.ok && r.config.tls).toEqual({ enabled: true, files: null });
  });

  it('reads and checks tls_certificate_file and tls_key_file', () => {
    const r = parse(['tls_certificate_file = "/etc/mtaproxy/cert.pem"', 'tls_key_file = "/etc/mtaproxy/key.pem"']);
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    expect(r.config.tls.files?.fingerprint256).toBe(pair.fingerprint256);
    expect(r.config.tls.files?.subject).toBe('CN=proxy.example');
    expect(r.config.tls.files?.cert).toBe(pair.cert);
  });

  it('takes tls = false, and rejects files with it', () => {
    const r = parse(['tls = false']);
    expect(r.ok && r.config.tls.enabled).toBe(false);
    expect(errorsOf(['tls = false', 'tls_certificate_file = "/etc/mtaproxy/cert.pem"', 'tls_key_file = "/etc/mtaproxy/key.pem"'])).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:3:1: tls_certificate_file: is set but tls = false: remove it, or remove tls = false',
    ]);
    expect(errorsOf(['tls = "no"'])[0]).toMatch(/:2:1: tls: must be true or false/);
  });

  it('wants both files or neither', () => {
    expect(errorsOf(['tls_certificate_file = "/etc/mtaproxy/cert.pem"'])).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:2:1: tls_certificate_file: set both tls_certificate_file and tls_key_file, or neither (a self-signed pair is then generated at start)',
    ]);
    expect(errorsOf(['tls_key_file = "/etc/mtaproxy/key.pem"'])[0]).toMatch(/:2:1: tls_key_file: set both/);
  });

  it('reports unreadable, malformed and mismatched files with their lines, never the key', () => {
    const cert = (file: string): string => `tls_certificate_file = "${file}"`;
    const key = (file: string): string => `tls_key_file = "${file}"`;
    expect(errorsOf([cert('/etc/mtaproxy/missing.pem'), key('/etc/mtaproxy/key.pem')])).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:2:1: tls_certificate_file: cannot read "/etc/mtaproxy/missing.pem": ENOENT: no such file or directory',
    ]);
    expect(errorsOf([cert('relative.pem'), key('/etc/mtaproxy/key.pem')])[0]).toMatch(/:2:1: tls_certificate_file: must be an absolute path/);
    expect(errorsOf([cert('/etc/mtaproxy/garbage.pem'), key('/etc/mtaproxy/key.pem')])[0]).toMatch(/:2:1: tls_certificate_file: "\/etc\/mtaproxy\/garbage.pem" is not a PEM certificate/);
    expect(errorsOf([cert('/etc/mtaproxy/cert.pem'), key('/etc/mtaproxy/garbage.pem')])[0]).toMatch(/:3:1: tls_key_file: .* is not an unencrypted PEM private key/);
    const mismatch = errorsOf([cert('/etc/mtaproxy/cert.pem'), key('/etc/mtaproxy/other-key.pem')]);
    expect(mismatch).toEqual(['/etc/mtaproxy/mtaproxy.toml:3:1: tls_key_file: "/etc/mtaproxy/other-key.pem" is not the private key of the certificate in "/etc/mtaproxy/cert.pem"']);
    expect(errorsOf([cert('/etc/mtaproxy/cert.pem'), key('/etc/mtaproxy/rsa.pem')])[0]).toMatch(/is not the private key/);
    for (const e of mismatch) expect(e).not.toContain('PRIVATE KEY');
  });

  it('reports a tls change and a renewed certificate as changed directives', () => {
    const a = parse([]);
    const b = parse(['tls = false']);
    const c = parse(['tls_certificate_file = "/etc/mtaproxy/cert.pem"', 'tls_key_file = "/etc/mtaproxy/key.pem"']);
    if (!a.ok || !b.ok || !c.ok) throw new Error('parse failed');
    expect(changedDirectives(a.config, b.config)).toEqual(['tls']);
    expect(changedDirectives(a.config, c.config)).toEqual(['tls_certificate_file']);
    expect(changedDirectives(c.config, c.config)).toEqual([]);
  });
});

describe('configWarnings', () => {
  const warnings = (lines: string[]): string[] => {
    const r = parse(lines);
    if (!r.ok) throw new Error('parse failed');
    return configWarnings(r.config);
  };
  it('warns about plaintext listeners that are not loopback', () => {
    expect(warnings(['tls = false', 'listen = ["127.0.0.1:807", "[::1]:807", "127.0.0.2:808"]'])).toEqual([]);
    const w = warnings(['tls = false', 'listen = ["127.0.0.1:807", "0.0.0.0:807", "[2001:db8::1]:807"]']);
    expect(w).toHaveLength(2);
    expect(w[0]).toMatch(/^\/etc\/mtaproxy\/mtaproxy.toml: warning: tls = false and listen "0\.0\.0\.0:807" is not a loopback address: .*plain text.*remove tls = false/);
    expect(w[1]).toContain('"[2001:db8::1]:807"');
    expect(warnings(['listen = "0.0.0.0:807"'])).toEqual([]);
  });
});

describe('plaintextListenerWarnings (the daemon, from the bound sockets)', () => {
  it('warns about native listeners bound to a wildcard, not about loopback, Unix or other front-ends', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-unit-'));
    const endpoints: Endpoint[] = [
      { kind: 'tcp', frontEnd: 'native', address: { host: '127.0.0.1', port: 0 } },
      { kind: 'tcp', frontEnd: 'native', address: { host: '::1', port: 0 } },
      { kind: 'tcp', frontEnd: 'native', address: { host: '0.0.0.0', port: 0 } },
      { kind: 'tcp', frontEnd: 'socks5', address: { host: '0.0.0.0', port: 0 } },
      { kind: 'unix', frontEnd: 'native', path: join(dir, 'native.sock') },
    ];
    const bound: Listening[] = [];
    try {
      for (const e of endpoints) bound.push(await listen(e, (s) => s.destroy()));
      const warnings = plaintextListenerWarnings(bound);
      expect(warnings).toHaveLength(1);
      const [w] = warnings;
      expect(w?.fields).toEqual({ mtaproxy_event: 'plaintext_listener', front_end: 'native', address: bound[2]?.bound });
      expect(w?.message).toMatch(/^listener: tls = false and native listener 0\.0\.0\.0:\d+ is not a loopback address: .*plain text.*remove tls = false/);
      // without `listenIgnored`, check-config's config-based warning; the daemon passes it and relies on the above
      const r = parse(['tls = false', 'listen = "0.0.0.0:807"']);
      if (!r.ok) throw new Error('parse failed');
      expect(configWarnings(r.config)).toHaveLength(1);
      expect(configWarnings(r.config, { listenIgnored: true })).toEqual([]);
    } finally {
      for (const l of bound) closeListening(l);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
