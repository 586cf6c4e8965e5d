// Control-session message codec (docs/protocol.md §3). Pure.
//   request: "<tag> <VERB> [args]"   reply: "<tag> <code> <text>"   notice: "* <code> <text>"
// Tags the MTA chooses are decimal; the proxy's own requests use "s<decimal>", so each side can
// tell a reply from a request by the tag alone. The tag "-" asks for no reply (a fire-and-forget
// RELEASE saves the MTA a round trip per delivery).

export const MAX_CONTROL_LINE = 4096;
/** Requests in flight per direction before the receiver stops reading (docs: forward/back). */
export const WINDOW = 16;

export type ControlMessage =
  | { kind: 'request'; tag: string; verb: string; args: string[] }
  | { kind: 'reply'; tag: string; code: number; text: string }
  | { kind: 'notice'; code: number; text: string }
  | { kind: 'invalid'; reason: string };

/** "-", or an optional "s" and 1-10 decimal digits (was /^(?:s?\d{1,10}|-)$/; by hand: this runs per line) */
export function isTag(s: string): boolean {
  const n = s.length;
  if (n === 1 && s.charCodeAt(0) === 45) return true; // "-"
  const from = n > 0 && s.charCodeAt(0) === 115 ? 1 : 0; // "s"
  if (n - from < 1 || n - from > 10) return false;
  for (let i = from; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/** 1-16 capital letters (was /^[A-Z]{1,16}$/) */
function isVerb(s: string): boolean {
  const n = s.length;
  if (n < 1 || n > 16) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 65 || c > 90) return false;
  }
  return true;
}

/** 3 decimal digits (was /^\d{3}$/) */
function isCode(s: string): boolean {
  if (s.length !== 3) return false;
  for (let i = 0; i < 3; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

export function parseControlLine(line: string): ControlMessage {
  const first = line.indexOf(' ');
  if (first <= 0) return { kind: 'invalid', reason: 'expected "<tag> <VERB|code> ..."' };
  const tag = line.slice(0, first);
  const second = line.indexOf(' ', first + 1);
  const word = second === -1 ? line.slice(first + 1) : line.slice(first + 1, second);
  const tail = second === -1 ? '' : line.slice(second + 1);
  if (isCode(word)) {
    if (tag === '*') return { kind: 'notice', code: Number(word), text: tail };
    if (isTag(tag)) return { kind: 'reply', tag, code: Number(word), text: tail };
    return { kind: 'invalid', reason: 'bad tag' };
  }
  if (!isTag(tag)) return { kind: 'invalid', reason: 'bad tag' };
  if (!isVerb(word)) return { kind: 'invalid', reason: 'verb must be 1-16 capital letters' };
  return { kind: 'request', tag, verb: word, args: tail === '' ? [] : tail.split(' ') };
}

export function formatRequest(tag: string, verb: string, args: readonly (string | number)[] = []): string {
  return args.length === 0 ? `${tag} ${verb}` : `${tag} ${verb} ${args.join(' ')}`;
}

export function formatReply(tag: string, code: number, text: string): string {
  return `${tag} ${code} ${text}`;
}

export interface Backlog {
  readonly ram: number;
  readonly bounce: number;
  readonly disk: number;
}

export const ZERO_BACKLOG: Backlog = { ram: 0, bounce: 0, disk: 0 };

/** Parses "ram=N bounce=N disk=N" (any order, each at most once, all required). */
export function parseBacklog(args: readonly string[]): Backlog | string {
  const seen: Record<string, number> = {};
  for (const arg of args) {
    const m = /^(ram|bounce|disk)=(\d{1,15})$/.exec(arg);
    if (m === null) return `bad backlog field "${arg.slice(0, 40)}" (expected ram=N bounce=N disk=N)`;
    const field = m[1] as string;
    if (field in seen) return `backlog field "${field}" given twice`;
    seen[field] = Number(m[2]);
  }
  const { ram, bounce, disk } = seen;
  if (ram === undefined || bounce === undefined || disk === undefined) return 'backlog needs ram=N bounce=N disk=N';
  return { ram, bounce, disk };
}

export function formatBacklog(b: Backlog): string {
  return `ram=${b.ram} bounce=${b.bounce} disk=${b.disk}`;
}
