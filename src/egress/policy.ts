// Egress decisions, pure: is this delivery allowed, and which reply code says why not
// (docs/protocol.md, "Deliveries"). The shell resolves names and connects; this module decides.
import ipaddr from 'ipaddr.js';
import type { EgressConfig } from '../config/parse.js';
import type { TlsMode, TlsPolicy } from '../smtp/client.js';

/** Reply codes of a CONNECT, one per failure an operator or MTA must tell apart. */
export const CONNECT_CODES = {
  connected: 250,
  shuttingDown: 421,
  connectRefused: 442,
  unreachable: 443,
  connectTimeout: 444,
  throttleTimeout: 451,
  tooManyTunnels: 452,
  bindFailed: 454,
  syntax: 501,
  sourceNotAllowed: 550,
  portNotAllowed: 551,
  destinationNotAllowed: 552,
  throttleUnknown: 553,
} as const;

export interface ConnectRequest {
  readonly sourceIp: string;
  /** an IP address or a host name (resolved by the proxy) */
  readonly host: string;
  readonly port: number;
  readonly throttle: string;
  /** how long to wait for the throttle, at most egress.throttle_wait_timeout */
  readonly waitMs: number | null;
  /** smtp mode (the proxy is the SMTP client of the destination), or null for a tunnel */
  readonly smtp: SmtpRequest | null;
}

/** `mode=smtp ehlo=<name> [tls=none|opportunistic|required] [verify=<name>] [sni=<name>]` */
export interface SmtpRequest {
  readonly ehloName: string;
  readonly tls: TlsPolicy;
}

export type Refusal = { code: number; message: string };

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
import { isCanonicalIp, THROTTLE_KEY } from '../protocol/syntax.js';

export { isCanonicalIp, THROTTLE_KEY };

/**
 * A host name, not an IP address in disguise: getaddrinfo (inet_aton) reads "127.1", "0x7f.1" or
 * "017.0.0.1" as addresses, so a name whose last label is a number (decimal, or 0x hex) is
 * refused, as the WHATWG URL parser treats it as IPv4 (RFC 1123 §2.1: a top label is not
 * numeric). Only the canonical a.b.c.d form is an IPv4 address here.
 */
export function isHostName(host: string): boolean {
  if (!HOST_NAME.test(host)) return false;
  const last = host.replace(/\.$/, '').split('.').at(-1) ?? '';
  return !/^(?:\d+|0x[0-9a-f]*)$/i.test(last);
}

const CONNECT_SYNTAX = 'CONNECT <source-ip> <host>:<port> <throttle> [wait=<ms>] [mode=smtp ehlo=<name> [tls=none|opportunistic|required] [verify=<name>] [sni=<name>]]';
const TLS_MODES: readonly TlsMode[] = ['none', 'opportunistic', 'required'];
const OPTIONS = new Set(['wait', 'mode', 'ehlo', 'tls', 'verify', 'sni']);

/** "CONNECT <source-ip> <host>:<port> <throttle> [options]"; "[v6]:port" for IPv6 hosts. */
export function parseConnect(line: string): ConnectRequest | Refusal {
  const parts = line.split(' ');
  const syntax = (why: string): Refusal => ({ code: CONNECT_CODES.syntax, message: `${why}; expected "${CONNECT_SYNTAX}"` });
  if (parts[0] !== 'CONNECT' || parts.length < 4 || parts.length > 10) return syntax('wrong number of fields');
  const [, sourceIp = '', target = '', throttle = ''] = parts;
  if (!isCanonicalIp(sourceIp)) return syntax(`"${sourceIp.slice(0, 60)}" is not an IP address (IPv4 as four decimal numbers, a.b.c.d)`);
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(target);
  if (m === null) return syntax(`"${target.slice(0, 80)}" is not host:port`);
  const host = m[1] ?? m[2] ?? '';
  if (m[1] !== undefined ? !ipaddr.IPv6.isValid(host) : !(ipaddr.IPv4.isValidFourPartDecimal(host) || isHostName(host))) {
    return syntax(`"${host.slice(0, 80)}" is not an IP address (a.b.c.d, [IPv6]) or host name`);
  }
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return syntax(`port ${port} is out of range`);
  if (!THROTTLE_KEY.test(throttle)) return syntax(`throttle key "${throttle.slice(0, 40)}" must be 1-128 of A-Z a-z 0-9 . _ : @ + -, starting with a letter or digit`);
  const options = new Map<string, string>();
  for (const option of parts.slice(4)) {
    const o = /^([a-z]+)=(.{1,253})$/.exec(option);
    if (o === null || !OPTIONS.has(o[1] ?? '')) return syntax(`unknown option "${option.slice(0, 40)}"`);
    if (options.has(o[1] ?? '')) return syntax(`option ${o[1]} given twice`);
    options.set(o[1] ?? '', o[2] ?? '');
  }
  let waitMs: number | null = null;
  const wait = options.get('wait');
  if (wait !== undefined) {
    if (!/^\d{1,9}$/.test(wait)) return syntax(`wait=${wait.slice(0, 20)} is not a number of milliseconds`);
    waitMs = Number(wait);
  }
  const mode = options.get('mode');
  if (mode !== undefined && mode !== 'smtp' && mode !== 'tunnel') return syntax(`mode=${mode.slice(0, 20)}: the modes are tunnel (the default) and smtp`);
  const base = { sourceIp: ipaddr.process(sourceIp).toString(), host, port, throttle, waitMs };
  if (mode !== 'smtp') {
    for (const k of ['ehlo', 'tls', 'verify', 'sni']) if (options.has(k)) return syntax(`option ${k} needs mode=smtp`);
    return { ...base, smtp: null };
  }
  const ehloName = options.get('ehlo');
  if (ehloName === undefined || !(isHostName(ehloName) || /^\[(?:IPv6:)?[0-9A-Fa-f:.]+\]$/.test(ehloName))) {
    return syntax('mode=smtp needs ehlo=<the MTA\'s host name> (a domain, or an address literal such as [192.0.2.1])');
  }
  const tlsMode = (options.get('tls') ?? 'opportunistic') as TlsMode;
  if (!TLS_MODES.includes(tlsMode)) return syntax(`tls=${tlsMode.slice(0, 20)}: expected none, opportunistic or required`);
  const verifyName = options.get('verify') ?? null;
  if (verifyName !== null && (tlsMode !== 'required' || !isHostName(verifyName))) return syntax('verify=<host name> needs tls=required (a certificate is checked only when TLS is required)');
  const sniOption = options.get('sni');
  if (sniOption !== undefined && sniOption !== 'none' && !isHostName(sniOption)) return syntax(`sni=${sniOption.slice(0, 40)} is not a host name (or "none")`);
  // SNI: as asked, else the name verified, else the host if it is a name
  const sni = sniOption === 'none' ? null : (sniOption ?? verifyName ?? (isHostName(host) ? host : null));
  return { ...base, smtp: { ehloName, tls: { mode: tlsMode, verifyName, sni } } };
}

/** Checks what can be checked before resolving the destination. */
export function checkRequest(req: ConnectRequest, egress: EgressConfig): Refusal | null {
  if (!egress.sourceIps.includes(req.sourceIp)) {
    return {
      code: CONNECT_CODES.sourceNotAllowed,
      message: `source ${req.sourceIp} is not in egress.source_ips${egress.sourceIps.length === 0 ? ' (none configured)' : ''}`,
    };
  }
  if (!egress.ports.includes(req.port)) {
    return { code: CONNECT_CODES.portNotAllowed, message: `destination port ${req.port} is not in egress.ports (${egress.ports.join(', ')})` };
  }
  return null;
}

/**
 * Checks the resolved destination address: the same family as the source, and a public unicast
 * address unless egress.allow_private_destinations (checked after DNS, so a name cannot smuggle
 * a private address past the policy).
 */
export function checkDestination(address: string, sourceIp: string, egress: EgressConfig): Refusal | null {
  const dest = addressFacts(address);
  if (dest === null) return { code: CONNECT_CODES.unreachable, message: `"${address}" is not an address` };
  const source = addressFacts(sourceIp);
  if (dest.kind !== source?.kind) {
    return { code: CONNECT_CODES.destinationNotAllowed, message: `destination ${address} is ${dest.kind} but source ${sourceIp} is not` };
  }
  if (!egress.allowPrivateDestinations && dest.range !== 'unicast') {
    return {
      code: CONNECT_CODES.destinationNotAllowed,
      message: `destination ${address} is ${dest.range}; set egress.allow_private_destinations = true to allow it`,
    };
  }
  return null;
}

interface AddressFacts {
  readonly kind: 'ipv4' | 'ipv6';
  readonly range: string;
}

/**
 * ipaddr.process(address)'s family and range, or null if not an address; remembered, as each
 * delivery asks for its source and its destination (ipaddr parses with a cascade of regexes).
 * The memo is bounded: addresses come from clients.
 */
const factsMemo = new Map<string, AddressFacts | null>();
function addressFacts(address: string): AddressFacts | null {
  let f = factsMemo.get(address);
  if (f === undefined) {
    if (ipaddr.isValid(address)) {
      const a = ipaddr.process(address);
      f = { kind: a.kind(), range: a.range() };
    } else {
      f = null;
    }
    if (factsMemo.size >= 4096) factsMemo.clear();
    factsMemo.set(address, f);
  }
  return f;
}
