// `mtaproxy status --throttles`: the throttle manager's snapshot with each member's session name
// and backlog, as text lines and as the JSON shape of `--json` (docs/operations.md). Pure.
import type { Backlog } from '../protocol/control.js';
import type { Mode, ThrottleSnapshot } from '../throttle/manager.js';

/** Reply bounds of the admin socket: at most this many throttles, and members per throttle. */
export const DEFAULT_THROTTLE_LIMIT = 100;
export const MAX_THROTTLE_LIMIT = 1000;
export const MAX_THROTTLE_MEMBERS = 100;

/** What the daemon knows about a manager session id (null: not a control session, e.g. "derived"). */
export interface SessionInfo {
  readonly name: string;
  readonly backlog: Backlog;
}

export interface ThrottleMemberJson {
  /** the MTA's session name; "derived" for the SOCKS5/PROXY v2 throttles' owner */
  readonly session: string;
  /** the manager's session id: `NAME#N`, unique per connection */
  readonly session_id: string;
  /** null once the session undeclared the throttle */
  readonly declaration: { readonly mode: Mode; readonly source_ip: string; readonly max_connections: number; readonly max_messages_per_hour: number } | null;
  /** the session's last BACKLOG report; null for "derived" or a session no longer connected */
  readonly backlog: { readonly ram: number; readonly bounce: number; readonly disk: number } | null;
  /** the fair-queuing weight: the reported backlog's sum, at least 1 */
  readonly weight: number;
}

export interface ThrottleJson {
  readonly key: string;
  readonly mode: Mode;
  readonly source_ip: string;
  readonly max_connections: number;
  readonly max_messages_per_hour: number;
  readonly declared: number;
  readonly connections_in_use: number;
  readonly messages_left: number;
  readonly message_burst: number;
  readonly waiting_connections: number;
  readonly waiting_messages: number;
  readonly sessions_total: number;
  readonly sessions: readonly ThrottleMemberJson[];
}

export interface ThrottlesJson {
  /** throttles known to the daemon */
  readonly total: number;
  /** of those, the ones matching `key` */
  readonly matched: number;
  /** the filter (empty: none) and the limit applied */
  readonly key: string;
  readonly limit: number;
  readonly throttles: readonly ThrottleJson[];
}

/** Limit from a request: the default when absent, clamped to 0..MAX_THROTTLE_LIMIT. */
export function throttleLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_THROTTLE_LIMIT;
  return Math.min(MAX_THROTTLE_LIMIT, Math.max(0, Math.floor(limit)));
}

export function throttlesJson(s: ThrottleSnapshot, query: { key: string; limit: number }, sessions: (id: string) => SessionInfo | null): ThrottlesJson {
  return {
    total: s.total,
    matched: s.matched,
    key: query.key,
    limit: query.limit,
    throttles: s.throttles.map((t) => ({
      key: t.key,
      mode: t.mode,
      source_ip: t.sourceIp,
      max_connections: t.maxConnections,
      max_messages_per_hour: t.maxMessagesPerHour,
      declared: t.declared,
      connections_in_use: t.connectionsInUse,
      messages_left: t.messagesLeft,
      message_burst: t.messageBurst,
      waiting_connections: t.waitingConnections,
      waiting_messages: t.waitingMessages,
      sessions_total: t.memberCount,
      sessions: t.members.map((m) => {
        const info = sessions(m.session);
        const d = m.declaration;
        return {
          session: info?.name ?? m.session.replace(/#\d+$/, ''),
          session_id: m.session,
          declaration: d === null ? null : { mode: d.mode, source_ip: d.sourceIp, max_connections: d.maxConnections, max_messages_per_hour: d.maxMessagesPerHour },
          backlog: info === null ? null : { ram: info.backlog.ram, bounce: info.backlog.bounce, disk: info.backlog.disk },
          weight: m.weight,
        };
      }),
    })),
  };
}

/**
 * The text of `mtaproxy status --throttles`: one `throttle(KEY):` line per throttle, one indented
 * line per session, and a last line saying what was left out (the reply is bounded).
 */
export function throttleLines(j: ThrottlesJson): string[] {
  const lines: string[] = [];
  for (const t of j.throttles) {
    lines.push(
      `throttle(${t.key}): mode=${t.mode} source=${t.source_ip} connections=${t.connections_in_use}/${t.max_connections} ` +
        `messages_left=${t.messages_left}/${t.message_burst} max_messages_per_hour=${t.max_messages_per_hour} ` +
        `waiting(connections=${t.waiting_connections} messages=${t.waiting_messages}) sessions=${t.declared}`,
    );
    for (const m of t.sessions) {
      const d = m.declaration;
      const declared = d === null ? 'undeclared' : `declared(mode=${d.mode} source=${d.source_ip} max_connections=${d.max_connections} max_messages_per_hour=${d.max_messages_per_hour})`;
      const backlog = m.backlog === null ? 'backlog=none' : `backlog(ram=${m.backlog.ram} bounce=${m.backlog.bounce} disk=${m.backlog.disk})`;
      lines.push(`throttle(${t.key}):   session(${m.session}): ${declared} ${backlog} weight=${m.weight}`);
    }
    if (t.sessions_total > t.sessions.length) lines.push(`throttle(${t.key}):   … ${t.sessions_total - t.sessions.length} more sessions`);
  }
  const filter = j.key === '' ? '' : ` matching "${j.key}"`;
  if (j.matched > j.throttles.length) {
    lines.push(`… ${j.matched - j.throttles.length} more throttles${filter} (${j.throttles.length} of ${j.matched} shown, busiest first; of ${j.total} in all): use --limit=N (at most ${MAX_THROTTLE_LIMIT}) or --key=TEXT`);
  } else {
    lines.push(`throttles: ${j.matched}${filter} shown (of ${j.total} in all)`);
  }
  return lines;
}
