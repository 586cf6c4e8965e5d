// The local admin socket's protocol: one JSON request line, one JSON reply line. Pure.

export type AdminCommand = 'reload' | 'status';

export interface AdminReply {
  ok: boolean;
  message: string;
  /** config errors, one "file:line:col: key: message" each (reload) */
  errors?: string[];
  /** the status lines, as the daemon logs them (status) */
  lines?: string[];
}

export const MAX_ADMIN_LINE = 1024;

export function parseAdminRequest(line: string): AdminCommand | string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return 'request is not JSON';
  }
  const command = (value as { command?: unknown } | null)?.command;
  if (command === 'reload' || command === 'status') return command;
  return 'unknown command (expected "reload" or "status")';
}

const isStringList = (v: unknown): boolean => v === undefined || (Array.isArray(v) && v.every((s) => typeof s === 'string'));

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
  if (typeof r.ok !== 'boolean' || typeof r.message !== 'string' || !isStringList(r.errors) || !isStringList(r.lines)) return null;
  return value as AdminReply;
}
