// What the MTA sends on an smtp-mode link, pure: command lines (RFC 5321 §4.1) and the DATA body up
// to its terminating "<CRLF>.<CRLF>". Bytes are kept as they came (latin1 strings), so addresses
// in UTF-8 (SMTPUTF8) and dot-stuffed body lines reach the destination unchanged.

/** RFC 5321 §4.5.3.1.4: 512 octets, more with extension parameters; lenient but bounded. */
export const MAX_COMMAND_LINE = 2048;

export class CommandLineTooLong extends Error {
  readonly code = 'MTAPROXY_SMTP_LINE_TOO_LONG';
  constructor() {
    super(`command line longer than ${MAX_COMMAND_LINE} bytes`);
  }
}

/** Splits command lines; a line ends in LF (a CR before it is dropped). */
export class CommandReader {
  #pending: Buffer | null = null;

  get buffered(): number {
    return this.#pending?.length ?? 0;
  }

  /** Takes the unread bytes (the DATA body follows a DATA command in the same read). */
  takePending(): Buffer {
    const rest = this.#pending ?? Buffer.alloc(0);
    this.#pending = null;
    return rest;
  }

  /** Returns the next complete line, or null if it has not all arrived. */
  next(chunk?: Buffer): string | null {
    if (chunk !== undefined && chunk.length > 0) this.#pending = this.#pending === null ? chunk : Buffer.concat([this.#pending, chunk]);
    const data = this.#pending;
    if (data === null) return null;
    const nl = data.indexOf(10);
    if (nl === -1) {
      if (data.length > MAX_COMMAND_LINE + 1) throw new CommandLineTooLong();
      return null;
    }
    const end = nl > 0 && data[nl - 1] === 13 ? nl - 1 : nl;
    if (end > MAX_COMMAND_LINE) throw new CommandLineTooLong();
    const line = data.toString('latin1', 0, end);
    this.#pending = nl + 1 === data.length ? null : data.subarray(nl + 1);
    return line;
  }
}

export type Verb = 'EHLO' | 'HELO' | 'MAIL' | 'RCPT' | 'DATA' | 'RSET' | 'NOOP' | 'QUIT' | 'VRFY' | 'EXPN' | 'HELP' | 'STARTTLS' | 'AUTH' | 'BDAT' | 'XMTAPROXY' | 'OTHER';

const VERBS = new Set<string>(['EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'BDAT', 'XMTAPROXY']);

export interface Command {
  readonly verb: Verb;
  /** the line as sent (without CRLF) */
  readonly line: string;
  readonly args: string;
}

export function parseCommand(line: string): Command {
  const m = /^([A-Za-z]+)(?: (.*))?$/s.exec(line);
  const word = (m?.[1] ?? '').toUpperCase();
  const verb = (VERBS.has(word) ? word : 'OTHER') as Verb;
  return { verb, line, args: m?.[2] ?? '' };
}

/** A MAIL or RCPT line the proxy can relay: "MAIL FROM:<...>" / "RCPT TO:<...>" with parameters. */
export function isPathCommand(c: Command): boolean {
  if (c.verb === 'MAIL') return /^FROM:\s?<[^<>]*>(?: .*)?$/is.test(c.args);
  if (c.verb === 'RCPT') return /^TO:\s?<[^<>]*>(?: .*)?$/is.test(c.args);
  return false;
}

const TERMINATOR = Buffer.from('\r\n.\r\n');

/** Finds the end of a DATA body, "<CRLF>.<CRLF>" (the body's start counts as following a CRLF). */
export class DataEndScanner {
  /** the last bytes seen (up to 4), for a terminator split across chunks */
  #tail: Buffer = Buffer.from('\r\n');
  #bytes = 0;

  /** body bytes seen so far, terminator included */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Returns the offset in `chunk` just after the terminator, or -1 if the body goes on. Only
   * CRLF.CRLF ends it: a bare LF before or after the dot does not (RFC 5321 §4.1.1.4).
   */
  push(chunk: Buffer): number {
    // a terminator that starts in the last bytes seen: only those and the chunk's first 4 bytes
    // are joined, so a body's bytes are searched in place and never copied (per byte, hot)
    const head = Buffer.concat([this.#tail, chunk.subarray(0, 4)]);
    const across = head.indexOf(TERMINATOR);
    if (across !== -1 && across < this.#tail.length) {
      const end = across + 5 - this.#tail.length;
      this.#bytes += end;
      return end;
    }
    const at = chunk.indexOf(TERMINATOR);
    if (at !== -1) {
      this.#bytes += at + 5;
      return at + 5;
    }
    this.#bytes += chunk.length;
    this.#tail = chunk.length >= 4 ? Buffer.from(chunk.subarray(chunk.length - 4)) : Buffer.from(head.subarray(Math.max(0, head.length - 4)));
    return -1;
  }
}


/**
 * Makes every line of a DATA body end in CRLF for the destination: a bare LF or a bare CR becomes
 * CRLF (RFC 5321 §2.3.8: they are not line ends in SMTP, and destinations differ in how they read
 * them). The end of the body is found in the MTA's own bytes (DataEndScanner on the raw stream:
 * only its CRLF.CRLF ends it, §4.1.1.4); a line that a bare LF or CR starts for the destination was
 * not a line to the MTA, so it was not dot-stuffed: it is stuffed here ("." becomes ".."). So the
 * proxy and the destination agree on where the body ends, and "<LF>.<LF>", "<CR>.<CR>" and their
 * kin can neither end it early nor smuggle commands onto the connection (SMTP smuggling). A CR at
 * the end of a chunk is held until the next byte says what it is.
 */
export class BodyNormalizer {
  #heldCr = false;
  /** the last output ended in a line break this normalizer made: a leading "." must be stuffed */
  #stuffNext = false;
  /** the output line under way: 0 nothing yet, 1 exactly ".", 2 anything else */
  #line: 0 | 1 | 2 = 0;

  push(chunk: Buffer): Buffer {
    let data = this.#heldCr ? Buffer.concat([CR, chunk]) : chunk;
    this.#heldCr = false;
    if (data.length > 0 && data[data.length - 1] === 13) {
      this.#heldCr = true;
      data = data.subarray(0, data.length - 1);
    }
    if (data.length === 0) return data;
    let parts: Buffer[] | null = null;
    let last = 0;
    /** where the output line under way starts in `data`, and its state before that */
    let lineStart = 0;
    let before = this.#line;
    if (this.#stuffNext) {
      this.#stuffNext = false;
      if (data[0] === 46) {
        parts = [DOT];
        before = 2;
      }
    }
    const lineState = (end: number): 0 | 1 | 2 => {
      if (end === lineStart) return before;
      if (before === 0) return end - lineStart === 1 && data[lineStart] === 46 ? 1 : 2;
      return 2;
    };
    /** a line break is made at `at` (a bare CR or LF): a line that is just "." gets a second dot first */
    const breakAt = (at: number): void => {
      if (lineState(at) === 1) {
        (parts ??= []).push(data.subarray(last, at), DOT);
        last = at;
      }
    };
    /** the line a made break started begins at `at`: a "." there is stuffed */
    const startAt = (at: number): void => {
      lineStart = at;
      before = 0;
      if (at === data.length) this.#stuffNext = true;
      else if (data[at] === 46) {
        (parts ??= []).push(data.subarray(last, at), DOT);
        last = at;
        before = 2;
      }
    };
    let cr = data.indexOf(13);
    let lf = data.indexOf(10);
    while (cr !== -1 || lf !== -1) {
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (data[cr + 1] === 10) {
          // CRLF: a line end as it should be (a "." line here is the MTA's own, dot-stuffed or the end)
          lineStart = cr + 2;
          before = 0;
          lf = data.indexOf(10, cr + 2);
          cr = data.indexOf(13, cr + 2);
          continue;
        }
        // bare CR (never the last byte: that one is held): CR, then an added LF
        breakAt(cr);
        (parts ??= []).push(data.subarray(last, cr + 1), LF);
        last = cr + 1;
        startAt(cr + 1);
        cr = data.indexOf(13, cr + 1);
      } else {
        // bare LF (a CRLF's LF was skipped above): an added CR, then the LF
        breakAt(lf);
        (parts ??= []).push(data.subarray(last, lf), CR, LF);
        last = lf + 1;
        startAt(lf + 1);
        lf = data.indexOf(10, lf + 1);
      }
    }
    this.#line = lineState(data.length);
    if (parts === null) return data;
    parts.push(data.subarray(last));
    return Buffer.concat(parts);
  }

  /** The held CR, if any (the body ended; what follows is commands). */
  takeHeld(): Buffer {
    const held = this.#heldCr ? Buffer.from('\r') : Buffer.alloc(0);
    this.#heldCr = false;
    return held;
  }
}

const CR = Buffer.from('\r');
const LF = Buffer.from('\n');
const DOT = Buffer.from('.');

/**
 * RFC 3030 §2: chunk sizes above this are refused (501) before any octet is read. Far above any
 * destination's message size limit; it only keeps the count an exact integer.
 */
export const MAX_BDAT_CHUNK = 2 ** 40;

export interface BdatArgs {
  /** octets that follow the command line */
  readonly size: number;
  /** "LAST": the chunk ends the message */
  readonly last: boolean;
}

/**
 * The arguments of "BDAT <chunk-size> [LAST]" (RFC 3030 §2: chunk-size is 1*DIGIT, end-marker
 * "LAST", case-insensitive as SMTP keywords are), or null for a syntax error or a size above
 * MAX_BDAT_CHUNK. Exactly one space between the parts, nothing else on the line.
 */
export function parseBdat(args: string): BdatArgs | null {
  // chunk-size ::= 1*DIGIT (RFC 3030 §3): leading zeros are allowed, the bound is on the value
  const m = /^0*([0-9]+)(?: (LAST))?$/i.exec(args);
  if (m === null || m[1] === undefined || m[1].length > 16) return null;
  const size = Number(m[1]);
  if (size > MAX_BDAT_CHUNK) return null;
  return { size, last: m[2] !== undefined };
}

/**
 * Counts the octets of one BDAT chunk as they arrive: each read is split into the part that
 * belongs to the chunk and, once the chunk is complete, what follows it (command lines again).
 * Length-delimited: nothing in the chunk is looked at, so "<CRLF>.<CRLF>" or lines that look like
 * commands are chunk data like any other bytes. Never copies.
 */
export class ChunkCounter {
  readonly size: number;
  #left: number;

  constructor(size: number) {
    this.size = size;
    this.#left = size;
  }

  /** octets of the chunk not yet seen */
  get left(): number {
    return this.#left;
  }

  get done(): boolean {
    return this.#left === 0;
  }

  /** `part`: the chunk's octets in `chunk`; `rest`: what follows the chunk, null while it goes on. */
  take(chunk: Buffer): { part: Buffer; rest: Buffer | null } {
    if (chunk.length < this.#left) {
      this.#left -= chunk.length;
      return { part: chunk, rest: null };
    }
    const n = this.#left;
    this.#left = 0;
    return { part: chunk.subarray(0, n), rest: chunk.subarray(n) };
  }
}
