/**
 * Splits a byte stream into "\n"-terminated lines (a preceding "\r" is dropped) with a hard
 * length limit, so a peer that never sends a newline cannot make us buffer without bound.
 */
export class LineSplitter {
  readonly #maxLength: number;
  #pending: Buffer | null = null;

  constructor(maxLength: number) {
    this.#maxLength = maxLength;
  }

  /** Bytes received but not yet part of a complete line. */
  get buffered(): number {
    return this.#pending?.length ?? 0;
  }

  /** Hands over the bytes of an incomplete line (when the stream stops being line-based). */
  takePending(): Buffer {
    const rest = this.#pending ?? Buffer.alloc(0);
    this.#pending = null;
    return rest;
  }

  /** Returns the complete lines in `chunk`, or throws LineTooLongError. */
  push(chunk: Buffer): string[] {
    const data = this.#pending === null ? chunk : Buffer.concat([this.#pending, chunk]);
    const lines: string[] = [];
    const last = data.lastIndexOf(10);
    let start = 0;
    if (last !== -1) {
      // All the complete lines decoded at once, then split as a string: one native call per read
      // instead of one per line. A "\n" byte never sits inside a UTF-8 sequence, so this reads
      // each line as decoding it alone would. With one UTF-16 unit per byte (ASCII: the protocol's
      // lines), lengths in the string are lengths in bytes; otherwise the limit is checked per line
      // on the bytes.
      const text = data.toString('utf8', 0, last + 1);
      if (text.length === last + 1) {
        for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
          const end = nl > start && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
          if (end - start > this.#maxLength) throw new LineTooLongError(this.#maxLength);
          lines.push(text.slice(start, end));
          start = nl + 1;
        }
      } else {
        for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) {
          const end = nl > start && data[nl - 1] === 13 ? nl - 1 : nl;
          if (end - start > this.#maxLength) throw new LineTooLongError(this.#maxLength);
          lines.push(data.toString('utf8', start, end));
          start = nl + 1;
        }
      }
    }
    const rest = data.length - start;
    // a pending "\r" may still turn out to be part of the line's "\r\n"
    const limit = data[data.length - 1] === 13 ? this.#maxLength + 1 : this.#maxLength;
    if (rest > limit) throw new LineTooLongError(this.#maxLength);
    this.#pending = rest === 0 ? null : data.subarray(start);
    return lines;
  }
}

export class LineTooLongError extends Error {
  readonly code = 'MTAPROXY_LINE_TOO_LONG';
  constructor(max: number) {
    super(`line longer than ${max} bytes`);
  }
}
