// The native protocol's mutual HMAC-SHA256 challenge-response (docs/protocol.md). Pure: nonces
// and the TLS channel binding are passed in, so the test vectors in the docs can be checked by any
// implementation.
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { SharedSecret } from '../config/secret.js';

export const PROTOCOL_VERSION = 1;
export const NONCE_BYTES = 32;
const NONCE = /^[0-9a-f]{64}$/;
const PROOF = /^[0-9a-f]{64}$/;
/** Instance names appear in logs and journald fields: keep them printable and short. */
export const INSTANCE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** RFC 9266 tls-exporter: label, length, and an empty (not absent) context. */
export const EXPORTER_LABEL = 'EXPORTER-Channel-Binding';
export const EXPORTER_BYTES = 32;

/**
 * The connection's channel binding: both proofs cover it, so a man in the middle who terminates
 * TLS with his own certificate (two TLS sessions, two exporter values) cannot relay a handshake.
 * `undefined` on a plaintext link (tls = false): the proofs then use the version-1 input unchanged.
 */
export type ChannelBinding = Buffer | undefined;

/** The tls-exporter value of an established TLS connection (call after 'secure'). */
export function tlsExporter(socket: TLSSocket): Buffer {
  return socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
}

/** The HMAC message of a proof (docs/protocol.md §3.2): exported for the test vectors. */
export function proofInput(role: 'client' | 'server', serverNonce: string, clientNonce: string, name: string, binding?: ChannelBinding): string {
  const base = `mtaproxy-${PROTOCOL_VERSION} ${role} ${serverNonce} ${clientNonce} ${name}`;
  if (binding === undefined) return base;
  if (binding.length !== EXPORTER_BYTES) throw new RangeError(`tls-exporter value must be ${EXPORTER_BYTES} bytes, got ${binding.length}`);
  return `${base} tls-exporter=${binding.toString('hex')}`;
}

export function greetingLine(serverNonce: string): string {
  return `MTAPROXY ${PROTOCOL_VERSION} ${serverNonce}`;
}

export function parseGreeting(line: string): { version: number; serverNonce: string } | null {
  const m = /^MTAPROXY (\d+) ([0-9a-f]{64})$/.exec(line);
  return m === null ? null : { version: Number(m[1]), serverNonce: m[2] as string };
}

function proof(secret: SharedSecret, role: 'client' | 'server', serverNonce: string, clientNonce: string, name: string, binding: ChannelBinding): string {
  return createHmac('sha256', secret.key()).update(proofInput(role, serverNonce, clientNonce, name, binding)).digest('hex');
}

export function clientProof(secret: SharedSecret, serverNonce: string, clientNonce: string, name: string, binding?: ChannelBinding): string {
  return proof(secret, 'client', serverNonce, clientNonce, name, binding);
}

export function serverProof(secret: SharedSecret, serverNonce: string, clientNonce: string, name: string, binding?: ChannelBinding): string {
  return proof(secret, 'server', serverNonce, clientNonce, name, binding);
}

export function authLine(secret: SharedSecret, serverNonce: string, clientNonce: string, name: string, binding?: ChannelBinding): string {
  return `AUTH ${name} ${clientNonce} ${clientProof(secret, serverNonce, clientNonce, name, binding)}`;
}

export type AuthVerdict =
  | { ok: true; name: string; clientNonce: string; secret: SharedSecret }
  | { ok: false; reason: string; name?: string };

/**
 * Checks a client's AUTH line against every accepted secret (current, then previous). The reason
 * is safe to log: it never contains the secret nor the proof.
 */
export function verifyAuth(line: string, serverNonce: string, secrets: readonly SharedSecret[], binding?: ChannelBinding): AuthVerdict {
  const parts = line.split(' ');
  if (parts.length !== 4 || parts[0] !== 'AUTH') return { ok: false, reason: 'expected "AUTH <name> <nonce> <proof>"' };
  const [, name = '', clientNonce = '', given = ''] = parts;
  if (!INSTANCE_NAME.test(name)) return { ok: false, reason: 'invalid instance name' };
  if (!NONCE.test(clientNonce)) return { ok: false, reason: 'client nonce must be 64 lowercase hex digits', name };
  if (clientNonce === serverNonce) return { ok: false, reason: 'client nonce echoes the server nonce', name };
  if (!PROOF.test(given)) return { ok: false, reason: 'proof must be 64 lowercase hex digits', name };
  const givenBytes = Buffer.from(given, 'hex');
  for (const secret of secrets) {
    const expected = Buffer.from(clientProof(secret, serverNonce, clientNonce, name, binding), 'hex');
    if (timingSafeEqual(expected, givenBytes)) return { ok: true, name, clientNonce, secret };
  }
  const why = binding === undefined ? 'shared secret mismatch or replayed handshake' : 'shared secret mismatch, replayed handshake, or a TLS-intercepting relay';
  return { ok: false, reason: `wrong proof (${why})`, name };
}

/** The client's check that the server knows the secret too. */
export function verifyServerProof(line: string, secret: SharedSecret, serverNonce: string, clientNonce: string, name: string, binding?: ChannelBinding): boolean {
  const m = /^OK ([0-9a-f]{64})$/.exec(line);
  if (m === null) return false;
  const expected = Buffer.from(serverProof(secret, serverNonce, clientNonce, name, binding), 'hex');
  return timingSafeEqual(expected, Buffer.from(m[1] as string, 'hex'));
}
