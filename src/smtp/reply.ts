// SMTP replies (RFC 5321 §4.2), pure: an incremental parser for what a destination sends, and the
// few replies the proxy writes itself. A reply is kept as the destination's bytes (`raw`), so the
// proxy can pass it back to the MTA verbatim, multi-line and enhanced status codes included.

/** One complete reply: "250-a\r\n250 b\r\n" is code 250, lines ["a", "b"]. */
export interface Reply {
  readonly code: number;
  /** the text of each line after "NNN-" / "NNN " (latin1: bytes are kept as they came) */
  readonly lines: readonly string[];
  /** the exact bytes received, CRLFs included */
  readonly raw: Buffer;
}

/** RFC 5321 §4.5.3.1.5 says 512 octets; real servers send longer lines, so be lenient but bounded. */
export const MAX_REPLY_LINE = 4096;
/** Lines in one reply (an EHLO reply has one per extension; RFC 5321 sets no limit, bytes bound it too). */
export const MAX_REPLY_LINES = 4096;
/** Bytes of one reply, all its lines together. */
export const MAX_REPLY_BYTES = 256 * 1024;

export type ReplyErrorCode = 'MTAPROXY_SMTP_REPLY_SYNTAX' | 'MTAPROXY_SMTP_REPLY_TOO_LONG';

export class ReplyError extends Error {
  readonly code: ReplyErrorCode;
  constructor(code: ReplyErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

const isDigit = (b: number | undefined): boolean => b !== undefined && b >= 48 && b <= 57;

/**
 * The code of the reply line `data[start, end)` ("NNN", "NNN text" or "NNN-text", the first digit
 * 2 to 5), or -1 if it is not one: read from the bytes, no regex and no string per line.
 */
function lineCode(data: Buffer, start: number, end: number): number {
  const a = data[start] as number;
  const b = data[start + 1];
  const c = data[start + 2];
  if (end - start < 3 || a < 50 || a > 53 || !isDigit(b) || !isDigit(c)) return -1;
  if (end - start > 3 && data[start + 3] !== 45 && data[start + 3] !== 32) return -1;
  return (a - 48) * 100 + ((b as number) - 48) * 10 + ((c as number) - 48);
}

/** Splits a destination's byte stream into replies; throws ReplyError on garbage or excess. */
export class ReplyParser {
  #pending: Buffer | null = null;
  /** lines of the reply being read (continuation lines seen so far) */
  #lines: string[] = [];
  #code = 0;
  #parts: Buffer[] = [];
  #partBytes = 0;

  /** Bytes held: an incomplete line and the lines of an incomplete multi-line reply. */
  get buffered(): number {
    return (this.#pending?.length ?? 0) + this.#parts.reduce((n, b) => n + b.length, 0);
  }

  /** True between the first line of a multi-line reply and its last line. */
  get inReply(): boolean {
    return this.#lines.length > 0 || (this.#pending?.length ?? 0) > 0;
  }

  push(chunk: Buffer): Reply[] {
    const data = this.#pending === null ? chunk : Buffer.concat([this.#pending, chunk]);
    const replies: Reply[] = [];
    let start = 0;
    for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) {
      const end = nl > start && data[nl - 1] === 13 ? nl - 1 : nl;
      if (end - start > MAX_REPLY_LINE) throw new ReplyError('MTAPROXY_SMTP_REPLY_TOO_LONG', `reply line longer than ${MAX_REPLY_LINE} bytes`);
      const code = lineCode(data, start, end);
      if (code === -1) throw new ReplyError('MTAPROXY_SMTP_REPLY_SYNTAX', `not an SMTP reply line: "${printable(data.toString('latin1', start, end))}"`);
      if (this.#lines.length > 0 && code !== this.#code) {
        throw new ReplyError('MTAPROXY_SMTP_REPLY_SYNTAX', `reply code changed within a multi-line reply (${this.#code} then ${code})`);
      }
      this.#code = code;
      this.#lines.push(end - start > 4 ? data.toString('latin1', start + 4, end) : '');
      if (this.#lines.length > MAX_REPLY_LINES) throw new ReplyError('MTAPROXY_SMTP_REPLY_TOO_LONG', `reply of more than ${MAX_REPLY_LINES} lines`);
      if (end - start > 3 && data[start + 3] === 45) {
        this.#parts.push(data.subarray(start, nl + 1));
        this.#partBytes += nl + 1 - start;
        if (this.#partBytes > MAX_REPLY_BYTES) throw new ReplyError('MTAPROXY_SMTP_REPLY_TOO_LONG', `reply of more than ${MAX_REPLY_BYTES} bytes`);
      } else {
        const raw = this.#parts.length === 0 ? Buffer.from(data.subarray(start, nl + 1)) : Buffer.concat([...this.#parts, data.subarray(start, nl + 1)]);
        replies.push({ code, lines: this.#lines, raw });
        this.#lines = [];
        this.#parts = [];
        this.#partBytes = 0;
      }
      start = nl + 1;
    }
    const rest = data.length - start;
    if (rest > MAX_REPLY_LINE + 1) throw new ReplyError('MTAPROXY_SMTP_REPLY_TOO_LONG', `reply line longer than ${MAX_REPLY_LINE} bytes`);
    // parts of an unfinished multi-line reply point into `data`: copy them before it is dropped
    if (this.#parts.length > 0) this.#parts = [Buffer.concat(this.#parts)];
    this.#pending = rest === 0 ? null : Buffer.from(data.subarray(start));
    return replies;
  }
}

/** The reply as one line of text for logs (first line, bounded, printable). */
export function replySummary(reply: Reply): string {
  const first = reply.lines[0] ?? '';
  return `${reply.code} ${printable(first).slice(0, 200)}${reply.lines.length > 1 ? ` (+${reply.lines.length - 1} lines)` : ''}`;
}

/**
 * A reply the proxy writes itself: only its own 4xx/5xx (never a destination's success), the
 * virtual session's greeting, EHLO, QUIT and local NOOP/RSET; text says it is the proxy's.
 */
export function formatReply(code: number, lines: readonly string[]): Buffer {
  const out = lines.length === 0 ? [''] : lines;
  return Buffer.from(out.map((l, i) => `${code}${i === out.length - 1 ? ' ' : '-'}${l}\r\n`).join(''), 'latin1');
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`).slice(0, 120);
}
