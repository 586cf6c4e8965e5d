// The limits of a derived throttle (one per (source IP, destination host:port), for SOCKS5, PROXY
// v2 and the relay), pure: [derived_throttle]'s first matching `destinations` rule, else its
// defaults. Every front-end declares a derived throttle through this, so the same key always gets
// the same limits whoever uses it first.
import type { DerivedThrottleConfig } from '../config/parse.js';
import type { Declaration } from './manager.js';

/** What "no limit" means to the manager: more messages per hour than any MTA sends. */
export const UNLIMITED_MESSAGES_PER_HOUR = 100_000_000;

export function derivedDeclaration(c: DerivedThrottleConfig, key: string, sourceIp: string, host: string): Declaration {
  const h = host.toLowerCase().replace(/\.$/, '').replace(/^\[|\]$/g, '');
  const rule = c.destinations.find((r) => (r.sourceIp === null || r.sourceIp === sourceIp) && (r.host.startsWith('.') ? h.endsWith(r.host) : h === r.host));
  const maxConnections = rule?.maxConnections ?? c.maxConnections;
  const perHour = rule?.maxMessagesPerHour ?? c.maxMessagesPerHour;
  return { key, sourceIp, maxConnections, maxMessagesPerHour: perHour === 0 ? UNLIMITED_MESSAGES_PER_HOUR : perHour, mode: 'sum' };
}
