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

export function parseAdminReply(line: string): AdminReply | null {
  try {
    const value = JSON.parse(line) as AdminReply;
    return typeof value.ok === 'boolean' && typeof value.message === 'string' ? value : null;
  } catch {
    return null;
  }
}
