// The periodic status lines (seed format) and their structured fields. Pure: a snapshot in,
// records out. Field names become journald fields upper-cased (docs/operations.md).
import type { Backlog } from '../protocol/control.js';

export interface Flow {
  /** requests received (forward) or sent (back) and not yet answered */
  readonly in: number;
  /** messages written but not yet handed to the kernel */
  readonly out: number;
  /** bytes buffered: unparsed input (forward) or unsent output (back) */
  readonly buf: number;
}

export interface SessionSnapshot {
  readonly name: string;
  readonly connectedMs: number;
  /** last measured round trip, or null before the first pong */
  readonly pingRttMs: number | null;
  readonly pingAgeMs: number | null;
  readonly backlog: Backlog;
  readonly forward: Flow;
  readonly back: Flow;
}

export interface StatusSnapshot {
  readonly managerId: string;
  readonly openConnections: number;
  /** connections still in their handshake (counted against max_pending_handshakes) */
  readonly handshaking: number;
  /** since start: connections refused by the handshake caps, and failed accept() calls (EMFILE…) */
  readonly refusedHandshakeCap: number;
  readonly acceptErrors: number;
  /** since start: connections refused because file descriptors ran low */
  readonly refusedFds: number;
  readonly throttles: number;
  readonly window: number;
  readonly sessions: readonly SessionSnapshot[];
  readonly remote: { readonly active: number; readonly cached: number };
  /** the relay front-end, when [relay] is configured: its open connections, those inside a transaction, transactions since start */
  readonly relay?: { readonly connections: number; readonly inTransaction: number; readonly transactions: number } | undefined;
}

export type FieldValue = string | number;

export interface StatusRecord {
  readonly msg: string;
  readonly fields: Readonly<Record<string, FieldValue>>;
}

/** Go-style durations as in the seed: "19s", "5m0s", "1h5m19s". */
export function formatUptime(ms: number): string {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

function flowText(name: string, f: Flow, window: number): string {
  return `${name}(in=${f.in}/${window} out=${f.out}/${window} buf=${f.buf})`;
}

function flowFields(prefix: string, f: Flow): Record<string, number> {
  return { [`${prefix}_in`]: f.in, [`${prefix}_out`]: f.out, [`${prefix}_buf`]: f.buf };
}

function backlogFields(b: Backlog): Record<string, number> {
  return { backlog_ram: b.ram, backlog_bounce: b.bounce, backlog_disk: b.disk };
}

function sumFlows(flows: readonly Flow[]): Flow {
  return flows.reduce((a, f) => ({ in: a.in + f.in, out: a.out + f.out, buf: a.buf + f.buf }), { in: 0, out: 0, buf: 0 });
}

export function statusRecords(s: StatusSnapshot): StatusRecord[] {
  const backlog = s.sessions.reduce(
    (a, x) => ({ ram: a.ram + x.backlog.ram, bounce: a.bounce + x.backlog.bounce, disk: a.disk + x.backlog.disk }),
    { ram: 0, bounce: 0, disk: 0 },
  );
  const forward = sumFlows(s.sessions.map((x) => x.forward));
  const back = sumFlows(s.sessions.map((x) => x.back));
  const records: StatusRecord[] = [
    {
      msg: `listener: open_connections=${s.openConnections}`,
      fields: { mtaproxy_event: 'status', status_line: 'listener', open_connections: s.openConnections },
    },
    {
      // not in the seed: the pre-authentication caps (max_pending_handshakes) and accept(2) failures
      msg: `handshakes: pending=${s.handshaking} refused_cap=${s.refusedHandshakeCap} refused_fds=${s.refusedFds} accept_errors=${s.acceptErrors}`,
      fields: {
        mtaproxy_event: 'status',
        status_line: 'handshakes',
        handshakes_pending: s.handshaking,
        refused_handshake_cap: s.refusedHandshakeCap,
        refused_fds: s.refusedFds,
        accept_errors: s.acceptErrors,
      },
    },
    {
      msg:
        `throttle: manager(${s.managerId}): throttles=${s.throttles} sessions=${s.sessions.length} ` +
        `backlog(ram=${backlog.ram} bounce=${backlog.bounce} disk=${backlog.disk}) ` +
        `${flowText('forward', forward, s.window)} ${flowText('back', back, s.window)}`,
      fields: {
        mtaproxy_event: 'status',
        status_line: 'manager',
        manager_id: s.managerId,
        throttles: s.throttles,
        sessions: s.sessions.length,
        ...backlogFields(backlog),
        ...flowFields('forward', forward),
        ...flowFields('back', back),
      },
    },
  ];
  for (const x of s.sessions) {
    const ping =
      x.pingRttMs === null || x.pingAgeMs === null
        ? 'ping=none'
        : `ping=${x.pingRttMs.toFixed(3)}ms(${Math.floor(x.pingAgeMs / 1000)}s ago)`;
    const pingFields: Record<string, number> =
      x.pingRttMs === null || x.pingAgeMs === null ? {} : { ping_ms: Number(x.pingRttMs.toFixed(3)), ping_age_s: Math.floor(x.pingAgeMs / 1000) };
    records.push({
      msg:
        `throttle: session(${x.name}): timeconnected=${formatUptime(x.connectedMs)} ${ping} ` +
        `backlog(ram=${x.backlog.ram} bounce=${x.backlog.bounce} disk=${x.backlog.disk}) ` +
        `${flowText('forward', x.forward, s.window)} ${flowText('back', x.back, s.window)}`,
      fields: {
        mtaproxy_event: 'status',
        status_line: 'session',
        session: x.name,
        time_connected_s: Math.floor(x.connectedMs / 1000),
        ...pingFields,
        ...backlogFields(x.backlog),
        ...flowFields('forward', x.forward),
        ...flowFields('back', x.back),
      },
    });
  }
  const connections = s.remote.active + s.remote.cached;
  records.push({
    msg: `direct_remote_smtp: connections=${connections}(active=${s.remote.active} cached=${s.remote.cached})`,
    fields: {
      mtaproxy_event: 'status',
      status_line: 'direct_remote_smtp',
      connections,
      connections_active: s.remote.active,
      connections_cached: s.remote.cached,
    },
  });
  if (s.relay !== undefined) {
    records.push({
      msg: `relay: connections=${s.relay.connections}(in_transaction=${s.relay.inTransaction}) transactions=${s.relay.transactions}`,
      fields: { mtaproxy_event: 'status', status_line: 'relay', relay_connections: s.relay.connections, relay_in_transaction: s.relay.inTransaction, relay_transactions: s.relay.transactions },
    });
  }
  return records;
}

/** One shared destination connection key of the pool (smtp mode), for `mtaproxy status`. */
export interface PoolKeyStatus {
  readonly sourceIp: string;
  readonly destination: string;
  readonly ehlo: string;
  readonly tls: string;
  readonly throttle: string;
  readonly active: number;
  readonly opening: number;
  readonly waiting: number;
  readonly cached: readonly { readonly id: number; readonly ageMs: number; readonly idleMs: number; readonly transactions: number; readonly tls: string }[];
}

/**
 * `mtaproxy status` only (not the periodic lines): every destination with pooled connections, and
 * each cached connection with its age, idle time and transactions so far.
 */
export function poolLines(keys: readonly PoolKeyStatus[]): string[] {
  const lines: string[] = [];
  for (const k of keys) {
    lines.push(`smtp_pool: ${k.sourceIp} -> ${k.destination} ehlo=${k.ehlo} tls=${k.tls} throttle=${k.throttle} active=${k.active} cached=${k.cached.length} opening=${k.opening} waiting=${k.waiting}`);
    for (const c of k.cached) {
      lines.push(`smtp_pool:   conn#${c.id} age=${formatUptime(c.ageMs)} idle=${formatUptime(c.idleMs)} transactions=${c.transactions} tls=${c.tls}`);
    }
  }
  return lines;
}

/** The `smtp_pool` part of `mtaproxy status --json` (docs/operations.md): one object per key. */
export interface PoolKeyJson {
  readonly source_ip: string;
  readonly destination: string;
  readonly ehlo: string;
  readonly tls: string;
  readonly throttle: string;
  readonly active: number;
  readonly opening: number;
  readonly waiting: number;
  readonly cached: readonly { readonly id: number; readonly age_ms: number; readonly idle_ms: number; readonly transactions: number; readonly tls: string }[];
}

export function poolJson(keys: readonly PoolKeyStatus[]): PoolKeyJson[] {
  return keys.map((k) => ({
    source_ip: k.sourceIp,
    destination: k.destination,
    ehlo: k.ehlo,
    tls: k.tls,
    throttle: k.throttle,
    active: k.active,
    opening: k.opening,
    waiting: k.waiting,
    cached: k.cached.map((c) => ({ id: c.id, age_ms: Math.round(c.ageMs), idle_ms: Math.round(c.idleMs), transactions: c.transactions, tls: c.tls })),
  }));
}
