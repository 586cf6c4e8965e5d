// SOCKS5 wire codec, pure (docs/socks5.md): RFC 1928 method selection and requests, RFC 1929
// username/password sub-negotiation, the replies, and the few decisions that need no socket
// (which method to choose, which account matches, which reply code a delivery refusal gets).
// Every parser takes the bytes received so far and says "incomplete", "error" or "ok" with the
// number of bytes the message used, so the shell can handle reads split or coalesced anyhow.
import { createHash, timingSafeEqual } from 'node:crypto';
import ipaddr from 'ipaddr.js';

export const SOCKS_VERSION = 0x05;
/** RFC 1929 sub-negotiation version (not the SOCKS version) */
export const AUTH_VERSION = 0x01;

export const METHOD = {
  noAuth: 0x00,
  gssapi: 0x01,
  usernamePassword: 0x02,
  noAcceptable: 0xff,
} as const;

export const ATYP = { ipv4: 0x01, domain: 0x03, ipv6: 0x04 } as const;

/** RFC 1928 §6 REP values. */
export const REP = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

export type ReplyCode = (typeof REP)[keyof typeof REP];
export type Command = 'connect' | 'bind' | 'udp-associate';

/** Largest message of each kind: every byte count the client sends is bounded by these. */
export const MAX_GREETING = 2 + 255;
export const MAX_AUTH = 1 + 1 + 255 + 1 + 255;
export const MAX_REQUEST = 4 + 1 + 255 + 2;

export type Parsed<T> =
  | { readonly status: 'incomplete' }
  | { readonly status: 'ok'; readonly value: T; /** bytes this message used */ readonly length: number }
  | { readonly status: 'error'; readonly reason: string };

/** A request error also says which reply to send before closing. */
export type ParsedRequest =
  | { readonly status: 'incomplete' }
  | { readonly status: 'ok'; readonly value: Socks5Request; readonly length: number }
  | { readonly status: 'error'; readonly reason: string; readonly reply: ReplyCode };

export interface Greeting {
  readonly methods: readonly number[];
}

export interface Credentials {
  readonly username: Buffer;
  readonly password: Buffer;
}

export interface Socks5Request {
  readonly command: Command;
  /** canonical IP text ("127.0.0.1", "::1"; IPv4-mapped IPv6 becomes IPv4) or a host name */
  readonly host: string;
  readonly kind: 'ipv4' | 'ipv6' | 'domain';
  readonly port: number;
}

const INCOMPLETE = { status: 'incomplete' } as const;

/** +----+----------+----------+  VER=5, NMETHODS 1..255, METHODS */
export function parseGreeting(buf: Uint8Array): Parsed<Greeting> {
  if (buf.length < 1) return INCOMPLETE;
  const ver = buf[0] as number;
  if (ver !== SOCKS_VERSION) return { status: 'error', reason: `not SOCKS5: first byte 0x${hex(ver)}${ver === 0x04 ? ' (a SOCKS4 client?)' : ''}` };
  if (buf.length < 2) return INCOMPLETE;
  const n = buf[1] as number;
  if (n === 0) return { status: 'error', reason: 'greeting offers no authentication method (NMETHODS=0)' };
  if (buf.length < 2 + n) return INCOMPLETE;
  const methods: number[] = [];
  for (let i = 2; i < 2 + n; i++) methods.push(buf[i] as number);
  return { status: 'ok', value: { methods }, length: 2 + n };
}

/** RFC 1929: +----+------+----------+------+----------+  VER=1, ULEN 1..255, UNAME, PLEN 1..255, PASSWD */
export function parseCredentials(buf: Uint8Array): Parsed<Credentials> {
  if (buf.length < 1) return INCOMPLETE;
  const ver = buf[0] as number;
  if (ver !== AUTH_VERSION) return { status: 'error', reason: `username/password sub-negotiation version 0x${hex(ver)}, expected 0x01` };
  if (buf.length < 2) return INCOMPLETE;
  const ulen = buf[1] as number;
  if (ulen === 0) return { status: 'error', reason: 'empty username' };
  if (buf.length < 3 + ulen) return INCOMPLETE;
  const plen = buf[2 + ulen] as number;
  if (plen === 0) return { status: 'error', reason: 'empty password' };
  if (buf.length < 3 + ulen + plen) return INCOMPLETE;
  const username = Buffer.from(buf.subarray(2, 2 + ulen));
  const password = Buffer.from(buf.subarray(3 + ulen, 3 + ulen + plen));
  return { status: 'ok', value: { username, password }, length: 3 + ulen + plen };
}

const HOST_LABEL = '[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?';
const HOST_NAME = new RegExp(`^(?=.{1,253}\\.?$)${HOST_LABEL}(?:\\.${HOST_LABEL})*\\.?$`);

/**
 * The host of a DOMAINNAME request: an IP literal in its usual form becomes an address; anything
 * an address parser would read as an odd IP form ("127.1", "0x7f.1") or that is not a plain host
 * name is refused, so no name can reach a different address than the policy checked.
 */
export function domainHost(name: string): { host: string; kind: 'ipv4' | 'ipv6' | 'domain' } | null {
  if (ipaddr.IPv4.isValidFourPartDecimal(name)) return { host: ipaddr.process(name).toString(), kind: 'ipv4' };
  if (ipaddr.IPv6.isValid(name)) {
    const a = ipaddr.process(name);
    return { host: a.toString(), kind: a.kind() };
  }
  if (ipaddr.isValid(name) || /^[\d.]+$/.test(name) || !HOST_NAME.test(name)) return null;
  return { host: name.toLowerCase(), kind: 'domain' };
}

/** +----+-----+-------+------+----------+----------+  VER=5, CMD, RSV, ATYP, DST.ADDR, DST.PORT */
export function parseRequest(buf: Uint8Array): ParsedRequest {
  if (buf.length < 1) return INCOMPLETE;
  const ver = buf[0] as number;
  if (ver !== SOCKS_VERSION) return { status: 'error', reason: `request version 0x${hex(ver)}, expected 0x05`, reply: REP.generalFailure };
  if (buf.length < 4) return INCOMPLETE;
  const cmd = buf[1] as number;
  // RSV (buf[2]) is ignored, as most servers do
  const atyp = buf[3] as number;
  let addrEnd: number;
  if (atyp === ATYP.ipv4) addrEnd = 8;
  else if (atyp === ATYP.ipv6) addrEnd = 20;
  else if (atyp === ATYP.domain) {
    if (buf.length < 5) return INCOMPLETE;
    addrEnd = 5 + (buf[4] as number);
  } else {
    return { status: 'error', reason: `unknown address type 0x${hex(atyp)}`, reply: REP.addressTypeNotSupported };
  }
  const length = addrEnd + 2;
  if (buf.length < length) return INCOMPLETE;
  const command: Command | null = cmd === 0x01 ? 'connect' : cmd === 0x02 ? 'bind' : cmd === 0x03 ? 'udp-associate' : null;
  if (command === null) return { status: 'error', reason: `unknown command 0x${hex(cmd)}`, reply: REP.commandNotSupported };
  const port = ((buf[addrEnd] as number) << 8) | (buf[addrEnd + 1] as number);
  let host: string;
  let kind: Socks5Request['kind'];
  if (atyp === ATYP.domain) {
    const raw = Buffer.from(buf.subarray(5, addrEnd));
    if (raw.length === 0) return { status: 'error', reason: 'empty domain name', reply: REP.hostUnreachable };
    const name = raw.toString('latin1');
    const parsed = domainHost(name);
    if (parsed === null) return { status: 'error', reason: `"${printable(raw, 80)}" is not a host name`, reply: REP.hostUnreachable };
    ({ host, kind } = parsed);
  } else {
    if (atyp === ATYP.ipv4) {
      // dotted decimal, as ipaddr's IPv4 toString() writes it (no parse, no array per request)
      host = `${buf[4] as number}.${buf[5] as number}.${buf[6] as number}.${buf[7] as number}`;
      kind = 'ipv4';
    } else {
      const processed = ipaddr.process(ipaddr.fromByteArray([...buf.subarray(4, addrEnd)]).toString());
      host = processed.toString();
      kind = processed.kind();
    }
  }
  return { status: 'ok', value: { command, host, kind, port }, length };
}

export interface MethodPolicy {
  /** accounts are configured (RFC 1929 can succeed) */
  readonly hasUsers: boolean;
  readonly allowUnauthenticated: boolean;
}

/**
 * Username/password whenever the client offers it and accounts exist (so the account's source
 * applies even where anonymous access is allowed); no authentication only if allowed.
 */
export function chooseMethod(offered: readonly number[], policy: MethodPolicy): number {
  if (policy.hasUsers && offered.includes(METHOD.usernamePassword)) return METHOD.usernamePassword;
  if (policy.allowUnauthenticated && offered.includes(METHOD.noAuth)) return METHOD.noAuth;
  return METHOD.noAcceptable;
}

// The replies that carry no address are the same bytes every time: made once, shared. A shared
// Buffer handed to socket.write() is only read (by the write, and by a queued write later), so
// the callers must not modify what these functions return.
const METHOD_SELECTIONS: (Buffer | undefined)[] = [];
const AUTH_OK = Buffer.from([AUTH_VERSION, 0x00]);
const AUTH_FAILED = Buffer.from([AUTH_VERSION, 0x01]);
const FAILURE_REPLIES: (Buffer | undefined)[] = [];

/** VER, METHOD (shared: do not modify). */
export function encodeMethodSelection(method: number): Buffer {
  const m = method & 0xff;
  let out = METHOD_SELECTIONS[m];
  if (out === undefined) METHOD_SELECTIONS[m] = out = Buffer.from([SOCKS_VERSION, m]);
  return out;
}

/** RFC 1929 VER, STATUS (shared: do not modify). */
export function encodeAuthStatus(ok: boolean): Buffer {
  return ok ? AUTH_OK : AUTH_FAILED;
}

/**
 * VER, REP, RSV, ATYP, BND.ADDR, BND.PORT; a failure carries 0.0.0.0:0 (as KumoProxy sends). A
 * reply without an address is shared (do not modify); one with an address is new.
 */
export function encodeReply(rep: ReplyCode, bound: { ip: string; port: number } | null = null): Buffer {
  if (bound === null) {
    let out = FAILURE_REPLIES[rep];
    if (out === undefined) FAILURE_REPLIES[rep] = out = replyBytes(rep, addressBytes('0.0.0.0'), 0);
    return out;
  }
  return replyBytes(rep, addressBytes(bound.ip), bound.port);
}

function replyBytes(rep: ReplyCode, address: Uint8Array, port: number): Buffer {
  const out = Buffer.allocUnsafe(4 + address.length + 2);
  out[0] = SOCKS_VERSION;
  out[1] = rep;
  out[2] = 0x00;
  out[3] = address.length === 4 ? ATYP.ipv4 : ATYP.ipv6;
  out.set(address, 4);
  out[4 + address.length] = port >> 8;
  out[5 + address.length] = port & 0xff;
  return out;
}

/**
 * ipaddr.process(ip).toByteArray(), remembered: a reply names the source address the delivery
 * went out from (one of egress.source_ips), so the few addresses are parsed once. Bounded.
 */
const bytesMemo = new Map<string, Uint8Array>();
function addressBytes(ip: string): Uint8Array {
  let bytes = bytesMemo.get(ip);
  if (bytes === undefined) {
    bytes = Uint8Array.from(ipaddr.process(ip).toByteArray());
    if (bytesMemo.size >= 1024) bytesMemo.clear();
    bytesMemo.set(ip, bytes);
  }
  return bytes;
}

/** ipaddr.isValid(ip), remembered (splitHostPort gets the delivery's local address: a few). Bounded. */
const validMemo = new Map<string, boolean>();
function isValidIp(ip: string): boolean {
  let ok = validMemo.get(ip);
  if (ok === undefined) {
    ok = ipaddr.isValid(ip);
    if (validMemo.size >= 1024) validMemo.clear();
    validMemo.set(ip, ok);
  }
  return ok;
}

/** Splits "ip:port" (IPv6 without brackets, as Node's localAddress:localPort gives it). */
export function splitHostPort(text: string): { ip: string; port: number } | null {
  const at = text.lastIndexOf(':');
  if (at < 1) return null;
  let ip = text.slice(0, at);
  if (ip.startsWith('[') && ip.endsWith(']')) ip = ip.slice(1, -1);
  const port = Number(text.slice(at + 1));
  if (!isValidIp(ip) || !Number.isInteger(port) || port < 0 || port > 65535) return null;
  return { ip, port };
}

/**
 * The REP for a delivery refusal (CONNECT_CODES of src/egress/policy.ts): policy and throttle
 * refusals are "not allowed by ruleset", connect failures their RFC 1928 counterparts.
 */
export function replyForRefusal(code: number): ReplyCode {
  switch (code) {
    case 550: // source not in egress.source_ips
    case 551: // port not allowed
    case 552: // destination not allowed
    case 553: // throttle unknown
    case 451: // no throttle slot in time
    case 452: // egress.max_tunnels reached
      return REP.notAllowed;
    case 442:
      return REP.connectionRefused;
    case 443:
      return REP.hostUnreachable;
    case 444:
      return REP.ttlExpired;
    default: // 421 shutting down, 454 bind failed, 501, anything new
      return REP.generalFailure;
  }
}

export const REPLY_TEXT: Readonly<Record<ReplyCode, string>> = {
  0x00: 'succeeded',
  0x01: 'general SOCKS server failure',
  0x02: 'connection not allowed by ruleset',
  0x03: 'network unreachable',
  0x04: 'host unreachable',
  0x05: 'connection refused',
  0x06: 'TTL expired',
  0x07: 'command not supported',
  0x08: 'address type not supported',
};

export interface Account {
  readonly username: string;
  readonly password: string;
}

/** SHA-256 digests of the configured accounts, computed once per config. */
export class AccountTable<A extends Account> {
  readonly #entries: { account: A; user: Buffer; pass: Buffer }[];

  constructor(accounts: readonly A[]) {
    this.#entries = accounts.map((account) => ({ account, user: sha256(Buffer.from(account.username, 'utf8')), pass: sha256(Buffer.from(account.password, 'utf8')) }));
  }

  get size(): number {
    return this.#entries.length;
  }

  /**
   * The account these credentials match, or null. Both fields of every account are compared in
   * constant time over fixed-length digests, with no early exit, so neither the time nor the
   * work done tells which usernames exist or how much of a password was right.
   */
  match(credentials: Credentials): A | null {
    const user = sha256(credentials.username);
    const pass = sha256(credentials.password);
    let found: A | null = null;
    for (const e of this.#entries) {
      const u = timingSafeEqual(user, e.user);
      const p = timingSafeEqual(pass, e.pass);
      if (u && p && found === null) found = e.account;
    }
    return found;
  }
}

/** A username (client bytes) made safe for a log line: printable ASCII, at most `max` characters. */
export function printable(bytes: Uint8Array, max = 64): string {
  let out = '';
  for (const b of bytes.subarray(0, max)) out += b >= 0x21 && b <= 0x7e && b !== 0x5c ? String.fromCharCode(b) : `\\x${hex(b)}`;
  return bytes.length > max ? `${out}…` : out;
}

function sha256(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}
