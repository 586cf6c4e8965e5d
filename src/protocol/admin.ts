// The local admin socket's protocol: one JSON request line, one JSON reply line. Pure.

export type AdminCommand = 'reload' | 'status' | 'throttles';

/** A request: `{"command":"throttles","limit":100,"key":"example.com"}` (limit and key optional). */
export type AdminRequest =
  | { readonly command: 'reload' }
  | { readonly command: 'status' }
  | { readonly command: 'throttles'; readonly limit?: number; readonly key?: string };

export interface AdminReply {
  ok: boolean;
  message: string;
  /** config errors, one "file:line:col: key: message" each (reload) */
  errors?: string[];
  /** the status lines, as the daemon logs them (status, throttles) */
  lines?: string[];
  /**
   * the same, structured (`--json`): status: `{records, smtp_pool}`; throttles: the snapshot
   * (docs/operations.md "mtaproxy status --json")
   */
  data?: Record<string, unknown>;
}

export const MAX_ADMIN_LINE = 1024;
/** longest `key` filter of a throttles request */
export const MAX_ADMIN_KEY = 256;

const UNKNOWN = 'unknown command (expected "reload", "status" or "throttles")';

export function parseAdminQuery(line: string): AdminRequest | string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return 'request is not JSON';
  }
  if (typeof value !== 'object' || value === null) return UNKNOWN;
  const r = value as Record<string, unknown>;
  const command = r.command;
  if (command === 'reload' || command === 'status') return { command };
  if (command !== 'throttles') return UNKNOWN;
  const { limit, key } = r;
  if (limit !== undefined && (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 0)) return 'limit must be a whole number >= 0';
  if (key !== undefined && (typeof key !== 'string' || key.length > MAX_ADMIN_KEY)) return `key must be a string of at most ${MAX_ADMIN_KEY} characters`;
  return { command, ...(limit === undefined ? {} : { limit }), ...(key === undefined ? {} : { key }) };
}

/** The command of a request, or why it is not one. */
export function parseAdminRequest(line: string): AdminCommand | string {
  const q = parseAdminQuery(line);
  return typeof q === 'string' ? q : q.command;
}

const isStringList = (v: unknown): boolean => v === undefined || (Array.isArray(v) && v.every((s) => typeof s === 'string'));
const isObject = (v: unknown): boolean => v === undefined || (typeof v === 'object' && v !== null && !Array.isArray(v));

/** An AdminReply, or null for anything else (the CLI then says "unexpected answer"). */
export function parseAdminReply(line: string): AdminReply | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const r = value as Record<string, unknown>;
  // errors and lines are checked too: the CLI joins and iterates them
  if (typeof r.ok !== 'boolean' || typeof r.message !== 'string' || !isStringList(r.errors) || !isStringList(r.lines) || !isObject(r.data)) return null;
  return value as AdminReply;
}
