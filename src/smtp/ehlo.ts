// The destination's EHLO reply (RFC 5321 §4.1.1.1), pure: its extensions, and the EHLO reply the
// MTA sees on its virtual session. STARTTLS toward the destination is the proxy's business (the
// MTA's link is TLS already), AUTH is not relayed, and an extension is offered to the MTA only if
// the proxy relays it faithfully.
import type { Reply } from './reply.js';

/** Extension keyword (upper case) → its parameters ("SIZE" → "35882577"). */
export type Extensions = ReadonlyMap<string, string>;

export function parseEhlo(reply: Reply): Extensions {
  const ext = new Map<string, string>();
  for (const line of reply.lines.slice(1)) {
    const m = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?$/.exec(line.trim());
    if (m !== null && m[1] !== undefined) ext.set(m[1].toUpperCase(), (m[2] ?? '').trim());
  }
  return ext;
}

/**
 * Extensions relayed to the MTA when the destination offers them: each changes only what the MTA
 * may send in MAIL/RCPT/DATA/BDAT, which the proxy passes through unchanged. CHUNKING (RFC 3030):
 * the proxy relays BDAT chunks length-delimited, byte for byte; BINARYMIME (MAIL's BODY=BINARYMIME)
 * needs BDAT, so it is offered only with CHUNKING.
 */
export const RELAYED_EXTENSIONS = ['SIZE', '8BITMIME', 'PIPELINING', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'DSN', 'CHUNKING', 'BINARYMIME'] as const;

/** The EHLO reply for the MTA: the destination's first line, then the relayed extensions it offers. */
export function ehloForMta(reply: Reply, ext: Extensions): string[] {
  const lines = [reply.lines[0] ?? 'mtaproxy'];
  for (const name of RELAYED_EXTENSIONS) {
    const params = ext.get(name);
    if (params === undefined) continue;
    if (name === 'BINARYMIME' && !ext.has('CHUNKING')) continue;
    lines.push(params === '' ? name : `${name} ${params}`);
  }
  return lines;
}
