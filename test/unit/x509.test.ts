// The self-signed certificate encoder (src/config/x509.ts), checked by Node's X.509 parser, by
// openssl(1), and by a real TLS handshake.
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { connect, createServer } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { derTime, generateSelfSigned, oid, selfSignedCertificate, tlv } from '../../src/config/x509.js';

describe('DER primitives', () => {
  it('encodes lengths, OIDs and times', () => {
    expect(tlv(0x04, Buffer.alloc(3)).toString('hex')).toBe('0403000000');
    expect(tlv(0x04, Buffer.alloc(200)).subarray(0, 3).toString('hex')).toBe('0481c8');
    expect(tlv(0x04, Buffer.alloc(300)).subarray(0, 4).toString('hex')).toBe('0482012c');
    expect(oid('1.2.840.10045.4.3.2').toString('hex')).toBe('06082a8648ce3d040302');
    expect(oid('2.5.4.3').toString('hex')).toBe('0603550403');
    expect(derTime(new Date('2026-12-01T18:05:09Z')).toString()).toBe('\x17\x0d261201180509Z');
    expect(derTime(new Date('2051-01-02T03:04:05Z')).toString()).toBe('\x18\x0f20510102030405Z');
  });
});

describe('selfSignedCertificate', () => {
  const keys = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const pair = selfSignedCertificate({
    commonName: 'proxy-1.example',
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2056-01-01T00:00:00Z'),
    serial: Buffer.from('ff0102030405060708090a0b0c0d0e0f', 'hex'),
    keys,
  });

  it('is a valid self-signed certificate for Node', () => {
    const x = new X509Certificate(pair.cert);
    expect(x.subject).toBe('CN=proxy-1.example');
    expect(x.issuer).toBe('CN=proxy-1.example');
    expect(x.subjectAltName).toBe('DNS:proxy-1.example, DNS:localhost');
    expect(x.serialNumber).toBe('7F0102030405060708090A0B0C0D0E0F');
    expect(x.ca).toBe(false);
    expect(x.verify(keys.publicKey)).toBe(true);
    expect(x.checkPrivateKey(pair.key)).toBe(true);
    expect(x.fingerprint256).toBe(pair.fingerprint256);
    expect(new Date(x.validTo).toISOString()).toBe('2056-01-01T00:00:00.000Z');
  });

  it('is read by openssl x509 with the same fingerprint', () => {
    const text = execFileSync('openssl', ['x509', '-noout', '-text', '-fingerprint', '-sha256'], { input: pair.cert, encoding: 'utf8' });
    expect(text).toMatch(/Version: 3 \(0x2\)/);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toMatch(/Subject: CN\s?=\s?proxy-1\.example/);
    expect(text).toMatch(/Not After : Jan  1 00:00:00 2056 GMT/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/DNS:proxy-1\.example, DNS:localhost/);
    expect(text).toContain(`Fingerprint=${pair.fingerprint256}`);
    // and openssl agrees that it verifies against itself
    const dir = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
    execFileSync('sh', ['-c', `cat > ${dir}/c.pem`], { input: pair.cert });
    expect(execFileSync('openssl', ['verify', '-CAfile', `${dir}/c.pem`, '-check_ss_sig', '-partial_chain', `${dir}/c.pem`], { encoding: 'utf8' })).toMatch(/OK/);
    execFileSync('rm', ['-r', dir]);
  });

  it('serves a TLS 1.3 handshake that a verifying client accepts with it as CA', async () => {
    const generated = generateSelfSigned('localhost');
    const server = createServer({ cert: generated.cert, key: generated.key.export({ type: 'pkcs8', format: 'pem' }) }, (s) => s.end('hi'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    const socket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca: generated.cert });
    await once(socket, 'secureConnect');
    expect(socket.authorized).toBe(true);
    expect(socket.getProtocol()).toBe('TLSv1.3');
    expect(socket.getPeerX509Certificate()?.fingerprint256).toBe(generated.fingerprint256);
    socket.destroy();
    server.close();
    expect(createPrivateKey(generated.key.export({ type: 'pkcs8', format: 'pem' })).asymmetricKeyType).toBe('ec');
  });
});
