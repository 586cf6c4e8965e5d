// File descriptors: how many this process may open and has open (Linux /proc). At EMFILE,
// libuv accepts and closes the waiting connections itself (its "EMFILE trick") and tells nobody,
// so the daemon has to watch its own descriptor count to log, count and refuse before that.

import { readdirSync, readFileSync } from 'node:fs';

/** The soft RLIMIT_NOFILE, or null where /proc/self/limits cannot be read. */
export function openFileLimit(limitsText?: string): number | null {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return null;
    }
  }
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(text);
  if (m === null || m[1] === 'unlimited') return null;
  return Number(m[1]);
}

/** Descriptors open now, or null. Costs a directory read: call it rarely. */
export function openFileCount(): number | null {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return null;
  }
}

/**
 * Descriptors kept free for what a connection leads to (a tunnel's outbound socket, a log
 * write, a reload reading the config): a new connection is refused past limit - reserve.
 */
export function fdReserve(limit: number): number {
  return Math.min(1024, Math.max(8, Math.floor(limit / 32)));
}
