// The throttle of a delivery that declares none (SOCKS5, PROXY v2, the relay), pure: one per
// (source IP, destination host:port), `SOURCE>host:port`, with its limits from [derived_throttle]:
// the first matching `destinations` rule, else the table's defaults. A rule may name the key
// instead ("google@{source_ip}"): native MTAs that declare that key share the throttle with these
// deliveries. Every front-end declares through this, so a key gets the same limits whoever uses
// it first.
import type { DerivedThrottleConfig } from '../config/parse.js';
import type { Declaration } from './manager.js';

/** What "no limit" means to the manager: more messages per hour than any MTA sends. */
export const UNLIMITED_MESSAGES_PER_HOUR = 100_000_000;

/** The derived key of (source, destination): "MX.example.com." and "mx.example.com" are one destination. */
export function derivedThrottleKey(sourceIp: string, host: string, port: number): string {
  const name = host.toLowerCase().replace(/\.$/, '');
  return `${sourceIp}>${name.includes(':') ? `[${name}]` : name}:${port}`;
}

/**
 * The declaration (key and limits) of the throttle that a delivery from `sourceIp` to `host:port`
 * takes; the same object for the same arguments while `c` is the config (one per reload). Its key
 * is then one string whose hash V8 keeps, for every lookup of the throttle in the manager, and no
 * delivery lowercases, matches and formats the same destination again. Bounded: the destinations
 * are client input.
 */
export function derivedDeclaration(c: DerivedThrottleConfig, sourceIp: string, host: string, port: number): Declaration {
  let memo = memos.get(c);
  if (memo === undefined) memos.set(c, (memo = { size: 0, bySource: new Map() }));
  let byHost = memo.bySource.get(sourceIp);
  if (byHost === undefined) memo.bySource.set(sourceIp, (byHost = new Map()));
  let byPort = byHost.get(host);
  if (byPort === undefined) byHost.set(host, (byPort = new Map()));
  let d = byPort.get(port);
  if (d === undefined) {
    d = declarationOf(c, sourceIp, host, port);
    if (memo.size >= MEMO_ENTRIES) {
      memo.bySource.clear();
      memo.size = 0;
      memo.bySource.set(sourceIp, (byHost = new Map([[host, (byPort = new Map())]])));
    }
    byPort.set(port, d);
    memo.size++;
  }
  return d;
}

/** Declarations made, per config: by source IP, host (as given) and port. */
interface Memo {
  size: number;
  readonly bySource: Map<string, Map<string, Map<number, Declaration>>>;
}
const memos = new WeakMap<DerivedThrottleConfig, Memo>();
const MEMO_ENTRIES = 4096;

function declarationOf(c: DerivedThrottleConfig, sourceIp: string, host: string, port: number): Declaration {
  const h = host.toLowerCase().replace(/\.$/, '').replace(/^\[|\]$/g, '');
  const rule = c.destinations.find((r) => (r.sourceIp === null || r.sourceIp === sourceIp) && (r.host.startsWith('.') ? h.endsWith(r.host) : h === r.host));
  const key = rule?.key == null ? derivedThrottleKey(sourceIp, h, port) : rule.key.replaceAll('{source_ip}', sourceIp);
  const perHour = rule?.maxMessagesPerHour ?? c.maxMessagesPerHour;
  return { key, sourceIp, maxConnections: rule?.maxConnections ?? c.maxConnections, maxMessagesPerHour: perHour === 0 ? UNLIMITED_MESSAGES_PER_HOUR : perHour, mode: rule?.mode ?? 'sum' };
}
