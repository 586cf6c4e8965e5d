// The relay's envelope decisions, pure: the domain of a path (RFC 5321 §4.1.2), which MAIL
// parameters a destination may see, and which source IP a transaction goes from.
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';
import type { RelayConfig } from '../config/parse.js';
import type { Extensions } from '../smtp/ehlo.js';

export type PathDomain =
  | { readonly kind: 'domain'; readonly domain: string }
  /** "[192.0.2.1]" / "[IPv6:2001:db8::1]": delivered to that address, no MX lookup */
  | { readonly kind: 'literal'; readonly address: string }
  /** "<>" (the null reverse-path) or "<postmaster>" without a domain */
  | { readonly kind: 'none' };

export interface ParsedPath {
  /** the mailbox as written, without angle brackets and source route */
  readonly mailbox: string;
  readonly domain: PathDomain;
  /** the ESMTP parameters after the path, as written */
  readonly params: string;
}

/** "FROM:<a@b> SIZE=1" / "TO:<c@d>" (the args of MAIL/RCPT) → the mailbox, its domain and the parameters. */
export function parsePath(args: string, prefix: 'FROM' | 'TO'): ParsedPath | null {
  const m = new RegExp(`^${prefix}:\\s?<([^<>]*)>(?: (.*))?$`, 'is').exec(args);
  if (m === null) return null;
  // a source route "@a,@b:user@d" is ignored (RFC 5321 §4.1.2, Appendix C)
  const mailbox = (m[1] ?? '').replace(/^@[^:]*:/, '');
  const params = (m[2] ?? '').trim();
  if (mailbox === '') return { mailbox, domain: { kind: 'none' }, params };
  const at = mailbox.lastIndexOf('@');
  if (at === -1) return { mailbox, domain: { kind: 'none' }, params };
  const d = mailbox.slice(at + 1);
  if (at === 0 || d === '') return null;
  const lit = /^\[(IPv6:)?([^\]]+)\]$/i.exec(d);
  if (lit !== null) {
    const ip = lit[2] ?? '';
    // RFC 5321 §4.1.3: an IPv6 literal carries the "IPv6:" tag, an IPv4 one none
    if (lit[1] !== undefined ? !ipaddr.IPv6.isValid(ip) : !ipaddr.IPv4.isValidFourPartDecimal(ip)) return null;
    return { mailbox, domain: { kind: 'literal', address: ipaddr.process(ip).toString() }, params };
  }
  // the line is read as latin1 (bytes kept for the destination); a domain in UTF-8 (SMTPUTF8,
  // RFC 6531) is looked up in its ASCII form (A-labels, RFC 5891)
  const ascii = /[\x80-\xff]/.test(d) ? domainToASCII(Buffer.from(d, 'latin1').toString('utf8')) : d;
  if (ascii === '') return null;
  const domain = ascii.toLowerCase().replace(/\.$/, '');
  // A-labels and (SMTPUTF8) U-labels: reject only what cannot be a domain at all
  if (!/^[^\s.@<>()[\]\\,;:"]+(\.[^\s.@<>()[\]\\,;:"]+)*$/.test(domain) || domain.length > 253) return null;
  return { mailbox, domain: { kind: 'domain', domain }, params };
}

/**
 * The MAIL line a destination gets: the MTA's parameters that the destination's EHLO offers
 * (SIZE, BODY=8BITMIME, SMTPUTF8); others are dropped, as an MTA does not send a parameter the
 * server did not announce (RFC 5321 §4.1.1.11). The relay offers no DSN, so RET/ENVID never come.
 */
export function mailLineFor(path: ParsedPath, ext: Extensions): string {
  const kept: string[] = [];
  for (const p of path.params.split(/\s+/).filter((x) => x !== '')) {
    const name = (p.split('=')[0] ?? '').toUpperCase();
    if (name === 'SIZE' && ext.has('SIZE')) kept.push(p);
    else if (name === 'BODY' && ext.has('8BITMIME')) kept.push(p);
    else if (name === 'SMTPUTF8' && ext.has('SMTPUTF8')) kept.push(p);
  }
  return `MAIL FROM:<${path.mailbox}>${kept.length > 0 ? ` ${kept.join(' ')}` : ''}`;
}

/** The RCPT line a destination gets (no parameters: the relay offers none). */
export function rcptLineFor(path: ParsedPath): string {
  return `RCPT TO:<${path.mailbox}>`;
}

export type SourceChoice = { readonly ok: true; readonly sourceIp: string; readonly by: string } | { readonly ok: false; readonly reason: string };

/**
 * The source IP of a transaction (docs/relay.md): the envelope sender's domain or a parent of it
 * (source_by_sender_domain), else the authenticated account's source_ip, else the relay address
 * the MTA connected to (source_by_local_address), else relay.source_ip. None: a refusal.
 */
export function chooseSource(relay: RelayConfig, o: { senderDomain: string | null; account: string | null; localAddress: string | null }): SourceChoice {
  if (o.senderDomain !== null) {
    const labels = o.senderDomain.split('.');
    for (let i = 0; i < labels.length; i++) {
      const d = labels.slice(i).join('.');
      const ip = relay.sourceBySenderDomain.get(d);
      if (ip !== undefined) return { ok: true, sourceIp: ip, by: `sender domain ${d}` };
    }
  }
  if (o.account !== null) {
    const a = relay.accounts.find((x) => x.username === o.account);
    if (a?.sourceIp != null) return { ok: true, sourceIp: a.sourceIp, by: `account ${a.username}` };
  }
  if (o.localAddress !== null && ipaddr.isValid(o.localAddress)) {
    const ip = relay.sourceByLocalAddress.get(ipaddr.process(o.localAddress).toString());
    if (ip !== undefined) return { ok: true, sourceIp: ip, by: `relay address ${ipaddr.process(o.localAddress).toString()}` };
  }
  if (relay.sourceIp !== null) return { ok: true, sourceIp: relay.sourceIp, by: 'relay.source_ip' };
  const tried = [
    `sender domain ${o.senderDomain ?? '(none: null sender)'} is not in source_by_sender_domain`,
    o.account === null ? 'not authenticated' : `account ${o.account} has no source_ip`,
    `relay address ${o.localAddress ?? '?'} is not in source_by_local_address`,
    'relay.source_ip is not set',
  ];
  return { ok: false, reason: `no source IP for this mail: ${tried.join('; ')}` };
}

/** SMTP AUTH PLAIN (RFC 4616): "authzid\0authcid\0passwd", base64. */
export function decodePlain(b64: string): { username: string; password: string; authzid: string } | null {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) return null;
  const parts = Buffer.from(b64, 'base64').toString('utf8').split('\0');
  if (parts.length !== 3) return null;
  const [authzid = '', username = '', password = ''] = parts;
  if (username === '' || password === '') return null;
  return { username, password, authzid };
}
