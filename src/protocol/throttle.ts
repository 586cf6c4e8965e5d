// Control-session throttle requests (docs/protocol.md, "Throttles"). Pure.
import ipaddr from 'ipaddr.js';
import { isCanonicalIp, THROTTLE_KEY } from './syntax.js';
import type { Declaration, LeaseKind } from '../throttle/manager.js';

const MAX_LIMIT = 100_000_000;
const WAIT_MS = /^\d{1,9}$/;

function fields(args: readonly string[], allowed: readonly string[]): Record<string, string> | string {
  const out: Record<string, string> = {};
  for (const arg of args) {
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (eq === -1 || !allowed.includes(name)) return `unexpected "${arg.slice(0, 40)}" (expected ${allowed.map((a) => `${a}=`).join(' ')})`;
    if (name in out) return `${name}= given twice`;
    out[name] = arg.slice(eq + 1);
  }
  return out;
}

function count(value: string | undefined, name: string): number | string {
  if (value === undefined) return `${name}= is required`;
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1 || Number(value) > MAX_LIMIT) return `${name} must be a whole number from 1 to ${MAX_LIMIT}`;
  return Number(value);
}

/** "DECLARE <key> source=<ip> max_connections=<n> max_messages_per_hour=<n> mode=sum|average" */
export function parseDeclare(args: readonly string[]): Declaration | string {
  const [key = '', ...rest] = args;
  if (!THROTTLE_KEY.test(key)) return `throttle key "${key.slice(0, 40)}" must be 1-128 of A-Z a-z 0-9 . _ : @ + -, starting with a letter or digit`;
  const f = fields(rest, ['source', 'max_connections', 'max_messages_per_hour', 'mode']);
  if (typeof f === 'string') return f;
  if (f.source === undefined || !isCanonicalIp(f.source)) {
    return 'source=<ip> is required (IPv4 as a.b.c.d, or IPv6)';
  }
  const maxConnections = count(f.max_connections, 'max_connections');
  if (typeof maxConnections === 'string') return maxConnections;
  const maxMessagesPerHour = count(f.max_messages_per_hour, 'max_messages_per_hour');
  if (typeof maxMessagesPerHour === 'string') return maxMessagesPerHour;
  if (f.mode !== 'sum' && f.mode !== 'average') return 'mode must be sum or average';
  return { key, sourceIp: ipaddr.process(f.source).toString(), maxConnections, maxMessagesPerHour, mode: f.mode };
}

/** "ACQUIRE <key> connection|message [wait=<ms>]" */
export function parseAcquire(args: readonly string[]): { key: string; kind: LeaseKind; waitMs: number | null } | string {
  const [key = '', kind = '', ...rest] = args;
  if (!THROTTLE_KEY.test(key)) return `throttle key "${key.slice(0, 40)}" is not valid`;
  if (kind !== 'connection' && kind !== 'message') return 'kind must be connection or message';
  // the usual forms, without the general field parser: nothing, or one wait=<ms>
  if (rest.length === 0) return { key, kind, waitMs: null };
  if (rest.length === 1) {
    const only = rest[0] as string;
    if (only.startsWith('wait=')) {
      const wait = only.slice(5);
      return WAIT_MS.test(wait) ? { key, kind, waitMs: Number(wait) } : 'wait must be milliseconds';
    }
  }
  const f = fields(rest, ['wait']);
  if (typeof f === 'string') return f;
  if (f.wait !== undefined && !WAIT_MS.test(f.wait)) return 'wait must be milliseconds';
  return { key, kind, waitMs: f.wait === undefined ? null : Number(f.wait) };
}
