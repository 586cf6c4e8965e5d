// The handshake test vectors of docs/protocol.md §8, checked against src/protocol/handshake.ts and
// against openssl(1) as an independent HMAC-SHA256 implementation. The vectors are parsed out of
// the doc, so the doc and the code cannot drift apart.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MIN_SECRET_LENGTH, SharedSecret } from '../../src/config/secret.js';
import {
  authLine,
  clientProof,
  greetingLine,
  parseGreeting,
  proofInput,
  serverProof,
  verifyAuth,
  verifyServerProof,
} from '../../src/protocol/handshake.js';

const DOC = new URL('../../docs/protocol.md', import.meta.url);
const KEYS = [
  'secret',
  'secret_length',
  'server_nonce',
  'client_nonce',
  'name',
  'greeting',
  'client_hmac_input',
  'client_proof',
  'auth_line',
  'server_hmac_input',
  'server_proof',
  'ok_line',
  'tls_exporter',
  'tls_client_hmac_input',
  'tls_client_proof',
  'tls_auth_line',
  'tls_server_hmac_input',
  'tls_server_proof',
  'tls_ok_line',
] as const;
type Vectors = Record<(typeof KEYS)[number], string>;

function readVectors(): Vectors {
  const text = readFileSync(DOC, 'utf8');
  const block = /^```mtaproxy-test-vectors\n([\s\S]*?)^```$/m.exec(text);
  if (block?.[1] === undefined) throw new Error('docs/protocol.md has no ```mtaproxy-test-vectors block');
  const values: Record<string, string> = {};
  for (const line of block[1].split('\n')) {
    if (line === '') continue;
    const m = /^([a-z_]+): (.+)$/.exec(line);
    if (m === null) throw new Error(`bad vector line: ${JSON.stringify(line)}`);
    const [, key = '', value = ''] = m;
    if (key in values) throw new Error(`vector "${key}" given twice`);
    values[key] = value;
  }
  for (const key of KEYS) if (values[key] === undefined) throw new Error(`vector "${key}" missing`);
  return values as Vectors;
}

/** HMAC-SHA256 by openssl(1): the key as a command-line string, the message on stdin. */
function opensslHmac(key: string, message: string): string {
  let out: string;
  try {
    out = execFileSync('openssl', ['dgst', '-sha256', '-hmac', key], { input: message, encoding: 'utf8' });
  } catch (err) {
    throw new Error(`openssl is needed for this test (apt-get install openssl): ${(err as Error).message}`);
  }
  // OpenSSL 3: "SHA2-256(stdin)= <hex>"; 1.1: "(stdin)= <hex>"
  const m = /= ([0-9a-f]{64})\s*$/.exec(out);
  if (m?.[1] === undefined) throw new Error(`unexpected openssl output: ${JSON.stringify(out)}`);
  return m[1];
}

const v = readVectors();
const secret = new SharedSecret(v.secret);
const other = new SharedSecret('another-secret-that-is-long-enough-0123456789');
const HEX64 = /^[0-9a-f]{64}$/;

describe('docs/protocol.md test vectors', () => {
  it('are well-formed', () => {
    expect(v.secret.length).toBe(Number(v.secret_length));
    expect(v.secret.length).toBeGreaterThanOrEqual(MIN_SECRET_LENGTH);
    expect(Buffer.byteLength(v.secret, 'utf8')).toBe(v.secret.length); // ASCII: key bytes = characters
    for (const hex of [v.server_nonce, v.client_nonce, v.client_proof, v.server_proof]) expect(hex).toMatch(HEX64);
    expect(v.server_nonce).not.toBe(v.client_nonce);
    // the HMAC inputs are exactly the strings §3.2 describes
    expect(v.client_hmac_input).toBe(`mtaproxy-1 client ${v.server_nonce} ${v.client_nonce} ${v.name}`);
    expect(v.server_hmac_input).toBe(`mtaproxy-1 server ${v.server_nonce} ${v.client_nonce} ${v.name}`);
    expect(v.greeting).toBe(`MTAPROXY 1 ${v.server_nonce}`);
    expect(v.auth_line).toBe(`AUTH ${v.name} ${v.client_nonce} ${v.client_proof}`);
    expect(v.ok_line).toBe(`OK ${v.server_proof}`);
    expect(v.tls_exporter).toMatch(HEX64);
    for (const hex of [v.tls_client_proof, v.tls_server_proof]) expect(hex).toMatch(HEX64);
    expect(v.tls_client_hmac_input).toBe(`${v.client_hmac_input} tls-exporter=${v.tls_exporter}`);
    expect(v.tls_server_hmac_input).toBe(`${v.server_hmac_input} tls-exporter=${v.tls_exporter}`);
    expect(v.tls_auth_line).toBe(`AUTH ${v.name} ${v.client_nonce} ${v.tls_client_proof}`);
    expect(v.tls_ok_line).toBe(`OK ${v.tls_server_proof}`);
  });

  describe('src/protocol/handshake.ts', () => {
    it('formats and parses the greeting', () => {
      expect(greetingLine(v.server_nonce)).toBe(v.greeting);
      expect(parseGreeting(v.greeting)).toEqual({ version: 1, serverNonce: v.server_nonce });
    });

    it('computes the client proof, the AUTH line and the server proof', () => {
      expect(clientProof(secret, v.server_nonce, v.client_nonce, v.name)).toBe(v.client_proof);
      expect(authLine(secret, v.server_nonce, v.client_nonce, v.name)).toBe(v.auth_line);
      expect(serverProof(secret, v.server_nonce, v.client_nonce, v.name)).toBe(v.server_proof);
    });

    it('verifyAuth accepts the AUTH line', () => {
      const verdict = verifyAuth(v.auth_line, v.server_nonce, [secret]);
      expect(verdict.ok).toBe(true);
      if (!verdict.ok) return;
      expect(verdict.name).toBe(v.name);
      expect(verdict.clientNonce).toBe(v.client_nonce);
      expect(verdict.secret.equals(secret)).toBe(true);
    });

    it('verifyServerProof accepts the OK line', () => {
      expect(verifyServerProof(v.ok_line, secret, v.server_nonce, v.client_nonce, v.name)).toBe(true);
    });
  });

  describe('channel binding (tls-exporter)', () => {
    const ex = Buffer.from(v.tls_exporter, 'hex');
    it('computes the bound HMAC inputs, proofs and lines', () => {
      expect(proofInput('client', v.server_nonce, v.client_nonce, v.name, ex)).toBe(v.tls_client_hmac_input);
      expect(proofInput('server', v.server_nonce, v.client_nonce, v.name, ex)).toBe(v.tls_server_hmac_input);
      expect(proofInput('client', v.server_nonce, v.client_nonce, v.name)).toBe(v.client_hmac_input);
      expect(clientProof(secret, v.server_nonce, v.client_nonce, v.name, ex)).toBe(v.tls_client_proof);
      expect(serverProof(secret, v.server_nonce, v.client_nonce, v.name, ex)).toBe(v.tls_server_proof);
      expect(authLine(secret, v.server_nonce, v.client_nonce, v.name, ex)).toBe(v.tls_auth_line);
    });

    it('verifyAuth and verifyServerProof accept the bound lines with the same exporter', () => {
      expect(verifyAuth(v.tls_auth_line, v.server_nonce, [secret], ex).ok).toBe(true);
      expect(verifyServerProof(v.tls_ok_line, secret, v.server_nonce, v.client_nonce, v.name, ex)).toBe(true);
    });

    it('reject them with another exporter value (an intercepting relay) or with none, and vice versa', () => {
      const relayed = Buffer.from(ex);
      relayed[0] = (relayed[0] ?? 0) ^ 1;
      const verdict = verifyAuth(v.tls_auth_line, v.server_nonce, [secret], relayed);
      expect(verdict.ok).toBe(false);
      if (!verdict.ok) expect(verdict.reason).toMatch(/wrong proof .*TLS-intercepting relay/);
      expect(verifyServerProof(v.tls_ok_line, secret, v.server_nonce, v.client_nonce, v.name, relayed)).toBe(false);
      // a plaintext proof on a TLS link, and a bound proof on a plaintext link
      expect(verifyAuth(v.auth_line, v.server_nonce, [secret], ex).ok).toBe(false);
      expect(verifyAuth(v.tls_auth_line, v.server_nonce, [secret]).ok).toBe(false);
      expect(verifyServerProof(v.ok_line, secret, v.server_nonce, v.client_nonce, v.name, ex)).toBe(false);
    });

    it('refuses an exporter value that is not 32 bytes', () => {
      expect(() => clientProof(secret, v.server_nonce, v.client_nonce, v.name, Buffer.alloc(16))).toThrow(/32 bytes/);
    });
  });

  describe('openssl (independent implementation)', () => {
    it('computes the same client and server proofs', () => {
      expect(opensslHmac(v.secret, v.client_hmac_input)).toBe(v.client_proof);
      expect(opensslHmac(v.secret, v.server_hmac_input)).toBe(v.server_proof);
      expect(opensslHmac(v.secret, v.tls_client_hmac_input)).toBe(v.tls_client_proof);
      expect(opensslHmac(v.secret, v.tls_server_hmac_input)).toBe(v.tls_server_proof);
    });

    it('agrees with handshake.ts on other inputs', () => {
      const sn = 'f'.repeat(64);
      const cn = '0123456789abcdef'.repeat(4);
      const name = 'mx1.example-cluster_2';
      const key = 'a-different-secret-with-more-than-32-characters';
      const s = new SharedSecret(key);
      expect(clientProof(s, sn, cn, name)).toBe(opensslHmac(key, `mtaproxy-1 client ${sn} ${cn} ${name}`));
      expect(serverProof(s, sn, cn, name)).toBe(opensslHmac(key, `mtaproxy-1 server ${sn} ${cn} ${name}`));
    });
  });

  describe('verifyAuth rejects', () => {
    const rejects = (line: string, serverNonce: string, secrets: readonly SharedSecret[]): string => {
      const verdict = verifyAuth(line, serverNonce, secrets);
      expect(verdict.ok).toBe(false);
      return verdict.ok ? '' : verdict.reason;
    };

    it('a wrong secret', () => {
      expect(rejects(v.auth_line, v.server_nonce, [other])).toMatch(/wrong proof/);
      const verdict = verifyAuth(v.auth_line, v.server_nonce, [other]);
      if (!verdict.ok) expect(verdict.name).toBe(v.name);
    });

    it('the AUTH line replayed against a different server nonce', () => {
      const fresh = `${v.server_nonce.slice(0, 63)}${v.server_nonce.endsWith('0') ? '1' : '0'}`;
      expect(rejects(v.auth_line, fresh, [secret])).toMatch(/wrong proof/);
    });

    it('a client nonce that echoes the server nonce', () => {
      const line = authLine(secret, v.server_nonce, v.server_nonce, v.name);
      expect(rejects(line, v.server_nonce, [secret])).toMatch(/echoes/);
    });

    it.each([
      ['empty', ''],
      ['no fields', 'AUTH'],
      ['missing proof', `AUTH ${v.name} ${v.client_nonce}`],
      ['extra field', `${v.auth_line} x`],
      ['double space', v.auth_line.replace(' ', '  ')],
      ['lower-case verb', v.auth_line.replace('AUTH', 'auth')],
      ['trailing CR (must be stripped by the framing)', `${v.auth_line}\r`],
    ])('a malformed line (%s)', (_what, line) => {
      expect(rejects(line, v.server_nonce, [secret])).not.toBe('');
    });

    it('upper-case hex in the nonce or proof', () => {
      expect(rejects(`AUTH ${v.name} ${v.client_nonce.toUpperCase()} ${v.client_proof}`, v.server_nonce, [secret])).toMatch(/nonce/);
      expect(rejects(`AUTH ${v.name} ${v.client_nonce} ${v.client_proof.toUpperCase()}`, v.server_nonce, [secret])).toMatch(/proof/);
    });

    it.each([
      ['starts with "-"', '-server-a'],
      ['starts with "."', '.server-a'],
      ['has "/"', 'server/a'],
      ['has ":"', 'server:a'],
      ['is 65 characters', `a${'b'.repeat(64)}`],
      ['is not ASCII', 'sérver-a'],
    ])('an invalid name that %s', (_what, name) => {
      // a correct proof for that name: only the name rule can reject it
      const line = authLine(secret, v.server_nonce, v.client_nonce, name);
      expect(rejects(line, v.server_nonce, [secret])).toBe('invalid instance name');
    });

    it('but accepts a 64-character name and the name characters . _ -', () => {
      for (const name of [`a${'b'.repeat(63)}`, 'A9._-z']) {
        expect(verifyAuth(authLine(secret, v.server_nonce, v.client_nonce, name), v.server_nonce, [secret]).ok).toBe(true);
      }
    });
  });

  describe('secret rotation', () => {
    it('verifyAuth accepts the previous secret and reports which secret matched', () => {
      // config order: [auth_shared_secret, auth_shared_secret_previous]
      const verdict = verifyAuth(v.auth_line, v.server_nonce, [other, secret]);
      expect(verdict.ok).toBe(true);
      if (!verdict.ok) return;
      expect(verdict.secret.equals(secret)).toBe(true);
      expect(verdict.secret.equals(other)).toBe(false);
      // the proxy answers with the matched secret, so an MTA on the previous secret can verify it
      expect(serverProof(verdict.secret, v.server_nonce, verdict.clientNonce, verdict.name)).toBe(v.server_proof);
    });

    it('verifyAuth accepts the current secret while a previous one is configured', () => {
      const line = authLine(other, v.server_nonce, v.client_nonce, v.name);
      const verdict = verifyAuth(line, v.server_nonce, [other, secret]);
      expect(verdict.ok && verdict.secret.equals(other)).toBe(true);
    });
  });

  describe('verifyServerProof rejects', () => {
    it.each([
      ['a proof made with another secret', `OK ${serverProof(other, v.server_nonce, v.client_nonce, v.name)}`],
      ['the client proof echoed back', `OK ${v.client_proof}`],
      ['a proof for another name', `OK ${serverProof(secret, v.server_nonce, v.client_nonce, 'server-b')}`],
      ['a proof for another client nonce', `OK ${serverProof(secret, v.server_nonce, 'e'.repeat(64), v.name)}`],
      ['upper-case hex', v.ok_line.toUpperCase()],
      ['an ERR line', 'ERR 535 authentication failed'],
      ['a missing proof', 'OK'],
    ])('%s', (_what, line) => {
      expect(verifyServerProof(line, secret, v.server_nonce, v.client_nonce, v.name)).toBe(false);
    });
  });
});
