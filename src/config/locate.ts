// smol-toml returns plain values without positions, so validation errors are located by a light
// scan of the source: good enough for the flat, hand-written files operators keep in /etc.

export interface Position {
  line: number;
  column: number;
}

// No \s* around the name: with the name's own [^\]] (which matches spaces too) they made a line
// of "[" and many spaces without "]" (an inner array of a multi-line array) cubic to reject.
// normalizeKey trims the name instead.
const HEADER = /^\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$/;
const KEY = /^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=/;

function normalizeKey(raw: string): string {
  return raw
    .split('.')
    .map((part) => part.trim().replace(/^["']|["']$/g, ''))
    .join('.');
}

/** Maps every dotted key path written in the file to where it is written. */
export function locateKeys(text: string): Map<string, Position> {
  const found = new Map<string, Position>();
  let table = '';
  let inMultiline: string | null = null;
  // "a.b.c = 1" and "[a.b]" also write "a" and "a.b": an error about "a" or "a.b" (unknown
  // directive, not a number) points there, not at line 1. Errors name at most "table.key", so two
  // levels of prefixes are enough (and a key of 100 000 parts stays linear).
  const note = (path: string, at: Position): void => {
    const parts = path.split('.', 3);
    for (const prefix of [parts[0] ?? '', `${parts[0]}.${parts[1]}`].slice(0, parts.length - 1)) if (!found.has(prefix)) found.set(prefix, at);
    if (!found.has(path)) found.set(path, at);
  };
  const lines = text.split(/\r?\n/);
  lines.forEach((line, index) => {
    if (inMultiline !== null) {
      if (line.includes(inMultiline)) inMultiline = null;
      return;
    }
    const header = HEADER.exec(line);
    if (header?.[1] !== undefined) {
      table = normalizeKey(header[1]);
      note(table, { line: index + 1, column: line.indexOf('[') + 1 });
      return;
    }
    const key = KEY.exec(line);
    if (key?.[1] !== undefined) {
      const path = table ? `${table}.${normalizeKey(key[1])}` : normalizeKey(key[1]);
      note(path, { line: index + 1, column: line.search(/\S/) + 1 });
      const rest = line.slice(key[0].length);
      for (const quote of ['"""', "'''"]) {
        const first = rest.indexOf(quote);
        if (first !== -1 && rest.indexOf(quote, first + 3) === -1) inMultiline = quote;
      }
    }
  });
  return found;
}

/**
 * Locates the string entries of array values in `text`. It is called once per entry, in order, so
 * for each array (its key's line) the search goes on from the line of the previous entry instead
 * of from the key, over lines split once: n entries were O(n * file size), then O(n^2) lines.
 */
export function stringLocator(text: string): (from: Position, value: string) => Position {
  const lines = text.split(/\r?\n/);
  const cursor = new Map<number, number>();
  return (from, value) => {
    const quotes = [JSON.stringify(value), `'${value}'`];
    const search = (first: number): Position | null => {
      for (let i = first; i < lines.length; i++) {
        const line = lines[i] ?? '';
        for (const quoted of quotes) {
          const at = line.indexOf(quoted);
          if (at !== -1) {
            cursor.set(from.line, i);
            return { line: i + 1, column: at + 1 };
          }
        }
      }
      return null;
    };
    const resume = cursor.get(from.line);
    // not found after the previous entry (written with escapes, or out of order): from the key, as before
    return (resume === undefined ? null : search(resume)) ?? search(from.line - 1) ?? from;
  };
}
