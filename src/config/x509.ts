// A self-signed X.509 v3 certificate for the native listeners when none is configured. Node core
// verifies and parses certificates but cannot make one, and shelling out to openssl(1) at every
// start would add a runtime dependency and a fork: this is the small DER encoder that a
// self-signed ECDSA P-256 certificate needs (RFC 5280), nothing more. Pure but for the key
// generation and the random serial, both injectable for tests.
import { createHash, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One DER TLV. */
export function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
}

const sequence = (...content: Buffer[]): Buffer => tlv(0x30, ...content);

/** OBJECT IDENTIFIER from dotted text ("1.2.840.10045.4.3.2"). */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const [first = 0, second = 0, ...rest] = arcs;
  const out: number[] = [40 * first + second];
  for (const arc of rest) {
    const groups: number[] = [];
    let v = arc;
    do {
      groups.unshift(v & 0x7f);
      v = Math.floor(v / 128);
    } while (v > 0);
    for (let i = 0; i < groups.length - 1; i++) groups[i] = (groups[i] as number) | 0x80;
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}

/** A positive INTEGER from big-endian bytes (leading zero added when the top bit is set). */
function integer(bytes: Buffer): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const trimmed = bytes.subarray(i);
  return tlv(0x02, (trimmed[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

/** UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5), to the second. */
export function derTime(date: Date): Buffer {
  const iso = date.toISOString(); // 2026-12-01T18:00:00.000Z
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return date.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(digits.slice(2), 'ascii')) : tlv(0x18, Buffer.from(digits, 'ascii'));
}

const ECDSA_WITH_SHA256 = sequence(oid('1.2.840.10045.4.3.2'));
const COMMON_NAME = '2.5.4.3';
const BASIC_CONSTRAINTS = '2.5.29.19';
const KEY_USAGE = '2.5.29.15';
const SUBJECT_ALT_NAME = '2.5.29.17';
/** DNS names in a subjectAltName: letters, digits, hyphens and dots (a hostname(1) that is not one is left out). */
const DNS_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export interface SelfSignedOptions {
  /** subject and issuer CN, and the first subjectAltName DNS entry when it is a DNS name */
  commonName: string;
  notBefore: Date;
  notAfter: Date;
  /** default: 16 random bytes */
  serial?: Buffer;
  /** default: a new P-256 key pair */
  keys?: { privateKey: KeyObject; publicKey: KeyObject };
}

export interface CertificatePair {
  /** PEM */
  cert: string;
  key: KeyObject;
  /** "AB:CD:…", as openssl x509 -fingerprint -sha256 and X509Certificate.fingerprint256 show it */
  fingerprint256: string;
}

/** Builds and signs a self-signed ECDSA P-256 / SHA-256 TLS server certificate. */
export function selfSignedCertificate(opts: SelfSignedOptions): CertificatePair {
  const { privateKey, publicKey } = opts.keys ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const serial = Buffer.from(opts.serial ?? randomBytes(16));
  if (serial.length > 0) serial[0] = ((serial[0] ?? 0) & 0x7f) || 1; // positive, at most 20 bytes, not zero
  const name = sequence(tlv(0x31, sequence(oid(COMMON_NAME), tlv(0x0c, Buffer.from(opts.commonName, 'utf8')))));
  const altNames = [...new Set([opts.commonName, 'localhost'])].filter((n) => DNS_NAME.test(n));
  const extension = (id: string, critical: boolean, value: Buffer): Buffer =>
    sequence(oid(id), ...(critical ? [tlv(0x01, Buffer.from([0xff]))] : []), tlv(0x04, value));
  const extensions = [
    extension(BASIC_CONSTRAINTS, true, sequence()), // cA FALSE
    extension(KEY_USAGE, true, tlv(0x03, Buffer.from([0x07, 0x80]))), // digitalSignature
    extension(SUBJECT_ALT_NAME, false, sequence(...altNames.map((n) => tlv(0x82, Buffer.from(n, 'ascii'))))),
  ];
  const tbs = sequence(
    tlv(0xa0, integer(Buffer.from([2]))), // v3
    integer(serial),
    ECDSA_WITH_SHA256,
    name,
    sequence(derTime(opts.notBefore), derTime(opts.notAfter)),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    tlv(0xa3, sequence(...extensions)),
  );
  const signature = sign('sha256', tbs, privateKey); // DER-encoded ECDSA-Sig-Value
  const der = sequence(tbs, ECDSA_WITH_SHA256, tlv(0x03, Buffer.from([0]), signature));
  const body = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  const cert = `-----BEGIN CERTIFICATE-----\n${body}-----END CERTIFICATE-----\n`;
  return { cert, key: privateKey, fingerprint256: fingerprint256(der) };
}

/** SHA-256 of the DER certificate as "AB:CD:…". */
export function fingerprint256(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex').toUpperCase().replace(/(..)(?!$)/g, '$1:');
}

/** A certificate for `hostname`, valid from an hour ago for ten years. */
export function generateSelfSigned(hostname: string, now = new Date()): CertificatePair {
  const year = 365 * 24 * 3600 * 1000;
  return selfSignedCertificate({ commonName: hostname, notBefore: new Date(now.getTime() - 3600_000), notAfter: new Date(now.getTime() + 10 * year) });
}

/** Parses a PEM certificate, or explains why it is not one (for config errors). */
export function parseCertificate(pem: string): X509Certificate | string {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    return `not a PEM certificate (${(err as Error).message})`;
  }
}
