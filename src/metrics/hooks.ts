// What the rest of the daemon tells the metrics, and what the daemon hands them at scrape time.
// Plain types, no prom-client: egress and throttle code depend on these interfaces only.

/** The front-ends a delivery can come in by (label `front_end`). */
export type DeliveryFrontEnd = 'native' | 'socks5' | 'proxy-v2' | 'relay-smtp' | 'relay-lmtp';

/**
 * How a delivery ended (label `outcome`), a closed set: a tunnel's outcome text ("closed",
 * "idle timeout", or a socket error's message) is folded into it by deliveryOutcome().
 */
export type DeliveryOutcome = 'completed' | 'idle_timeout' | 'error' | 'refused' | 'abandoned';

export interface DeliveryEnd {
  readonly frontEnd: DeliveryFrontEnd;
  /** a byte tunnel, an smtp-mode link (CONNECT … mode=smtp), or a relay front-end connection */
  readonly mode: 'tunnel' | 'smtp' | 'relay';
  readonly outcome: DeliveryOutcome;
  /** the source address, only for a delivery that was open (it passed the egress policy) */
  readonly sourceIp?: string;
  /** a tunnel's bytes the destination's / the MTA's socket took (docs/operations.md, `delivery`) */
  readonly bytesUp?: number;
  readonly bytesDown?: number;
}

export interface TransactionEnd {
  /** the final reply's code; null when the proxy ended the transaction (it answered 451) */
  readonly code: number | null;
  /** the destination connection carried an earlier transaction */
  readonly reused: boolean;
  /** the connection's TLS: null for none */
  readonly tls: { readonly resumed: boolean } | null;
  readonly sourceIp: string;
  /** body bytes as the MTA sent them */
  readonly bytes: number;
}

/** The hooks: one call per event that a snapshot cannot show afterwards. Must not throw. */
export interface MetricsHooks {
  delivery(d: DeliveryEnd): void;
  transaction(t: TransactionEnd): void;
  /** a throttle request (connection slot or message token) was answered after `seconds` */
  throttleWait(kind: 'connection' | 'message', seconds: number, granted: boolean): void;
}

/** Tunnel outcome text (tunnel.ts: "closed", "idle timeout", or the first socket error) -> label. */
export function deliveryOutcome(text: string): DeliveryOutcome {
  if (text === 'closed') return 'completed';
  if (text === 'idle timeout') return 'idle_timeout';
  return 'error';
}

/** An smtp-mode link's end (smtp-link.ts #close) -> label: the MTA's QUIT or close is a normal end. */
export function linkOutcome(text: string): DeliveryOutcome {
  if (text === 'quit' || text === 'mta closed') return 'completed';
  if (text === 'idle timeout') return 'idle_timeout';
  return 'error';
}

/** native deliveries have an owner (the control session); SOCKS5 and PROXY v2 ones do not. */
export function deliveryFrontEnd(who: string, owner: string | null): DeliveryFrontEnd {
  if (owner !== null) return 'native';
  return who === 'proxy-v2' ? 'proxy-v2' : 'socks5';
}

export interface ThrottleView {
  readonly key: string;
  readonly inUse: number;
  readonly maxConnections: number;
  readonly waiting: number;
}

export interface SessionView {
  readonly name: string;
  readonly pingRttMs: number | null;
  /** ram + bounce + disk of the last BACKLOG report */
  readonly backlog: { readonly ram: number; readonly bounce: number; readonly disk: number };
  readonly connectedMs: number;
}

/** Everything read from the daemon at scrape time. */
export interface MetricsSnapshot {
  /** open connections per front-end (as the listener status line counts them) */
  readonly openConnections: Readonly<Record<string, number>>;
  readonly handshakesPending: number;
  /** since start, connections closed before a byte was read, by front-end and reason */
  readonly refused: readonly { readonly frontEnd: string; readonly reason: string; readonly count: number }[];
  readonly handshakeFailures: number;
  readonly acceptErrors: number;
  readonly reloads: { readonly applied: number; readonly rejected: number };
  readonly tunnels: number;
  readonly smtpLinks: number;
  readonly deliveriesPending: number;
  readonly remote: { readonly active: number; readonly cached: number };
  readonly throttleWaiters: number;
  readonly throttles: readonly ThrottleView[];
  readonly sessions: readonly SessionView[];
  readonly pool: { readonly active: number; readonly cached: number; readonly opening: number; readonly waiting: number; readonly opened: number; readonly reused: number };
}
