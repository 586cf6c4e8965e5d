// The Prometheus metrics (docs/operations.md "Metrics"): one prom-client Registry per daemon.
// Most series are read at scrape time from a snapshot of the daemon (gauges, and the counters the
// daemon already keeps); only what no snapshot can show afterwards (a delivery that ended, a
// transaction, a throttle wait) is counted as it happens, through MetricsHooks.
//
// Every label is bounded (docs/operations.md lists the bound of each):
//   front_end, mode, outcome, reason, kind, result, reply_class, reused, resumed, state: closed sets;
//   source_ip: addresses that passed the egress policy, i.e. in egress.source_ips;
//   throttle: the `metrics_throttle_series` busiest throttles at each scrape;
//   session: connected control sessions (one per MTA name), at most MAX_SESSION_SERIES.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DeliveryEnd, MetricsHooks, MetricsSnapshot, ThrottleView, TransactionEnd } from './hooks.js';

/** Per-session series beyond this many (the sessions with the largest backlog win) are left out. */
export const MAX_SESSION_SERIES = 100;

/** Seconds: from an immediate grant (0) to egress.throttle_wait_timeout's maximum (1 h). */
const WAIT_BUCKETS = [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 300, 3600];

const WAIT_NAME = 'mtaproxy_throttle_wait_seconds';
const WAIT_HELP = 'Time a throttle request waited for its answer: kind=connection (a slot) or message (a token); result=granted or refused (timeout, session gone)';

/** One label set of the throttle-wait histogram, counted in plain numbers between scrapes. */
interface WaitCell {
  readonly kind: 'connection' | 'message';
  readonly result: 'granted' | 'refused';
  /** observations per bucket, not cumulative: [i] counts values in (WAIT_BUCKETS[i-1], WAIT_BUCKETS[i]] */
  readonly buckets: Float64Array;
  sum: number;
  count: number;
}

type WaitValue = { value: number; labels: Record<string, string | number>; metricName: string };

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export interface MetricsOptions {
  /** read at each scrape */
  snapshot(): MetricsSnapshot;
  /** how many throttles get per-throttle series (metrics_throttle_series), read at each scrape */
  throttleSeries(): number;
  /** process_* and nodejs_* metrics of prom-client (default true) */
  defaultMetrics?: boolean;
}

/** The N busiest throttles (connections in use plus waiting requests), ties by key: a stable choice. */
export function busiestThrottles(throttles: readonly ThrottleView[], n: number): ThrottleView[] {
  if (n <= 0) return [];
  return [...throttles].sort((a, b) => b.inUse + b.waiting - (a.inUse + a.waiting) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).slice(0, n);
}

export function replyClass(code: number | null): '2xx' | '3xx' | '4xx' | '5xx' {
  if (code === null) return '4xx';
  if (code >= 500) return '5xx';
  if (code >= 400) return '4xx';
  if (code >= 300) return '3xx';
  return '2xx';
}

/** One label set's count, kept as a plain number between scrapes. */
interface Cell<L extends string> {
  readonly labels: Partial<Record<L, string>>;
  value: number;
}

export class Metrics implements MetricsHooks {
  readonly registry = new Registry();
  readonly #opts: MetricsOptions;
  /** the snapshot of the scrape under way */
  #snap: MetricsSnapshot | null = null;
  /**
   * What delivery() counts (once per delivery, on the hot path): plain numbers by label set, one
   * Map lookup each, read into their counters at a scrape; prom-client's inc() validated and
   * hashed the labels of three counters per delivery. The cells in the order of their first
   * delivery, found by front_end, mode and outcome (constant strings: no key text made per
   * delivery); tunnel bytes by source_ip.
   */
  readonly #deliveryCounts: Cell<'front_end' | 'mode' | 'outcome'>[] = [];
  readonly #deliveryCells = new Map<string, Map<string, Map<string, Cell<'front_end' | 'mode' | 'outcome'>>>>();
  readonly #tunnelBytes = new Map<string, { sent: number; received: number }>();
  readonly #transactions: Counter<'reply_class' | 'reused' | 'ended_by'>;
  readonly #smtpBody: Counter<'source_ip'>;
  readonly #tlsHandshakes: Counter<'resumed'>;
  /**
   * mtaproxy_throttle_wait_seconds (one observation per throttle request: per ACQUIRE, on the hot
   * path): four cells of plain numbers [connection granted, connection refused, message granted,
   * message refused], rendered as prom-client's Histogram renders them only at a scrape;
   * Histogram.observe() validated and hashed the labels and allocated per call.
   */
  readonly #waits: readonly WaitCell[] = (['connection', 'message'] as const).flatMap((kind) =>
    (['granted', 'refused'] as const).map((result) => ({ kind, result, buckets: new Float64Array(WAIT_BUCKETS.length), sum: 0, count: 0 })),
  );
  /** the cells observed since the last reset, in the order of their first observation (as prom-client lists label sets) */
  #waitOrder: WaitCell[] = [];

  constructor(opts: MetricsOptions) {
    this.#opts = opts;
    const registers = [this.registry];
    const snap = (): MetricsSnapshot => (this.#snap ??= this.#opts.snapshot());
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], set: (g: Gauge<L>, s: MetricsSnapshot) => void): void => {
      const g: Gauge<L> = new Gauge<L>({
        name,
        help,
        labelNames,
        registers,
        collect: () => {
          g.reset();
          set(g, snap());
        },
      });
    };
    /** a counter the daemon keeps itself: read, not incremented here */
    const counted = <L extends string>(name: string, help: string, labelNames: readonly L[], set: (c: Counter<L>, s: MetricsSnapshot) => void): void => {
      const c: Counter<L> = new Counter<L>({
        name,
        help,
        labelNames,
        registers,
        collect: () => {
          c.reset();
          set(c, snap());
        },
      });
    };

    gauge('mtaproxy_open_connections', 'Connections accepted on a front-end and not yet closed (handshake, session or delivery)', ['front_end'], (g, s) => {
      for (const [frontEnd, n] of Object.entries(s.openConnections)) g.set({ front_end: frontEnd }, n);
    });
    gauge('mtaproxy_handshakes_pending', 'Connections still in their front-end handshake (max_pending_handshakes bounds them)', [], (g, s) => g.set(s.handshakesPending));
    counted('mtaproxy_connections_refused_total', 'Connections closed before a byte was read: allow_from, front-end not configured, handshake caps, file descriptors', ['front_end', 'reason'], (c, s) => {
      for (const r of s.refused) c.inc({ front_end: r.frontEnd, reason: r.reason }, r.count);
    });
    counted('mtaproxy_handshake_failures_total', 'Native handshakes that failed (wrong proof, malformed AUTH, timeout…)', [], (c, s) => c.inc(s.handshakeFailures));
    counted('mtaproxy_accept_errors_total', 'Failed accept() calls', [], (c, s) => c.inc(s.acceptErrors));
    counted('mtaproxy_reloads_total', 'Reloads (SIGHUP, mtaproxy reload) by result', ['result'], (c, s) => {
      c.inc({ result: 'applied' }, s.reloads.applied);
      c.inc({ result: 'rejected' }, s.reloads.rejected);
    });
    gauge('mtaproxy_tunnels_open', 'Open deliveries: byte tunnels and smtp-mode links', ['mode'], (g, s) => {
      g.set({ mode: 'tunnel' }, s.tunnels - s.smtpLinks);
      g.set({ mode: 'smtp' }, s.smtpLinks);
    });
    gauge('mtaproxy_deliveries_pending', 'Deliveries not yet open: waiting for a throttle slot, resolving or connecting', [], (g, s) => g.set(s.deliveriesPending));
    gauge('mtaproxy_remote_connections', 'Connections from this host to destinations (the direct_remote_smtp status line)', ['state'], (g, s) => {
      g.set({ state: 'active' }, s.remote.active);
      g.set({ state: 'cached' }, s.remote.cached);
    });

    // counters kept in plain numbers here (the hot path), read at the scrape like the daemon's own
    counted('mtaproxy_deliveries_total', 'Deliveries that ended, by front-end, mode and outcome', ['front_end', 'mode', 'outcome'], (c) => {
      for (const cell of this.#deliveryCounts) c.inc(cell.labels, cell.value);
    });
    counted('mtaproxy_tunnel_sent_bytes_total', 'Bytes tunnels sent to destinations (taken by the kernel), by source address; counted when a tunnel ends', ['source_ip'], (c) => {
      for (const [ip, b] of this.#tunnelBytes) c.inc({ source_ip: ip }, b.sent);
    });
    counted('mtaproxy_tunnel_received_bytes_total', 'Bytes tunnels passed from destinations to MTAs (taken by the kernel), by source address; counted when a tunnel ends', ['source_ip'], (c) => {
      for (const [ip, b] of this.#tunnelBytes) c.inc({ source_ip: ip }, b.received);
    });

    gauge('mtaproxy_throttles', 'Throttles currently known (declared, or derived for SOCKS5/PROXY v2)', [], (g, s) => g.set(s.throttles.length));
    gauge('mtaproxy_throttle_waiting_requests', 'Requests waiting for a throttle, over all throttles', [], (g, s) => g.set(s.throttleWaiters));
    gauge('mtaproxy_throttle_series_omitted', 'Throttles left out of the per-throttle series (beyond metrics_throttle_series)', [], (g, s) => {
      g.set(Math.max(0, s.throttles.length - Math.max(0, this.#opts.throttleSeries())));
    });
    const busiest = (s: MetricsSnapshot): ThrottleView[] => busiestThrottles(s.throttles, this.#opts.throttleSeries());
    gauge('mtaproxy_throttle_connections_in_use', 'Connection slots in use, per throttle (the metrics_throttle_series busiest)', ['throttle'], (g, s) => {
      for (const t of busiest(s)) g.set({ throttle: t.key }, t.inUse);
    });
    gauge('mtaproxy_throttle_connections_limit', 'Effective max_connections, per throttle (the metrics_throttle_series busiest)', ['throttle'], (g, s) => {
      for (const t of busiest(s)) g.set({ throttle: t.key }, t.maxConnections);
    });
    gauge('mtaproxy_throttle_waiting', 'Requests waiting for a slot or a message token, per throttle (the metrics_throttle_series busiest)', ['throttle'], (g, s) => {
      for (const t of busiest(s)) g.set({ throttle: t.key }, t.waiting);
    });
    // the same exposition as a prom-client Histogram with these labels and buckets (the registry
    // renders what get() returns: _bucket with le first, then _sum and _count, per label set)
    const waits = {
      name: WAIT_NAME,
      help: WAIT_HELP,
      type: 'histogram',
      aggregator: 'sum',
      get: async () => ({ name: WAIT_NAME, help: WAIT_HELP, type: 'histogram', aggregator: 'sum', values: this.#waitValues() }),
      reset: () => {
        for (const c of this.#waits) {
          c.buckets.fill(0);
          c.sum = 0;
          c.count = 0;
        }
        this.#waitOrder = [];
      },
    };
    // the registry takes any object with get() (it is duck-typed); its types list prom-client's own classes only
    this.registry.registerMetric(waits as unknown as Histogram);

    const sessions = (s: MetricsSnapshot) =>
      [...s.sessions].sort((a, b) => total(b.backlog) - total(a.backlog) || (a.name < b.name ? -1 : 1)).slice(0, MAX_SESSION_SERIES);
    const total = (b: { ram: number; bounce: number; disk: number }): number => b.ram + b.bounce + b.disk;
    gauge('mtaproxy_sessions', 'Control sessions open', [], (g, s) => g.set(s.sessions.length));
    gauge('mtaproxy_session_ping_rtt_seconds', 'Round trip of the last answered proxy PING, per session (absent before the first answer)', ['session'], (g, s) => {
      for (const v of sessions(s)) if (v.pingRttMs !== null) g.set({ session: v.name }, v.pingRttMs / 1000);
    });
    gauge('mtaproxy_session_backlog_messages', "The session's last BACKLOG report, per queue (ram, bounce, disk)", ['session', 'queue'], (g, s) => {
      for (const v of sessions(s)) {
        g.set({ session: v.name, queue: 'ram' }, v.backlog.ram);
        g.set({ session: v.name, queue: 'bounce' }, v.backlog.bounce);
        g.set({ session: v.name, queue: 'disk' }, v.backlog.disk);
      }
    });
    gauge('mtaproxy_session_connected_seconds', 'Age of the control session', ['session'], (g, s) => {
      for (const v of sessions(s)) g.set({ session: v.name }, Math.floor(v.connectedMs / 1000));
    });

    gauge('mtaproxy_smtp_pool_connections', "The shared pool's destination connections: active (lent to a transaction), cached (idle), opening", ['state'], (g, s) => {
      g.set({ state: 'active' }, s.pool.active);
      g.set({ state: 'cached' }, s.pool.cached);
      g.set({ state: 'opening' }, s.pool.opening);
    });
    gauge('mtaproxy_smtp_pool_waiting_borrows', 'Transactions waiting for a pool connection', [], (g, s) => g.set(s.pool.waiting));
    counted('mtaproxy_smtp_pool_connections_opened_total', 'Destination connections the pool opened', [], (c, s) => c.inc(s.pool.opened));
    counted('mtaproxy_smtp_pool_reused_borrows_total', 'Borrows served by an idle pool connection (no new connection)', [], (c, s) => c.inc(s.pool.reused));
    this.#transactions = new Counter({
      name: 'mtaproxy_smtp_transactions_total',
      help: 'Transactions over the shared destination connections (smtp mode; the relay front-end, one per destination) by final reply class, whether the connection carried an earlier one, and who ended it (proxy: 451 from the proxy)',
      labelNames: ['reply_class', 'reused', 'ended_by'],
      registers,
    });
    this.#smtpBody = new Counter({ name: 'mtaproxy_smtp_body_sent_bytes_total', help: 'smtp-mode message body bytes as the MTAs sent them, by source address', labelNames: ['source_ip'], registers });
    this.#tlsHandshakes = new Counter({
      name: 'mtaproxy_smtp_tls_handshakes_total',
      help: 'TLS handshakes toward destinations of pool connections, counted at the first transaction a connection carries; resumed = session resumption',
      labelNames: ['resumed'],
      registers,
    });

    if (opts.defaultMetrics !== false) {
      collectDefaultMetrics({ register: this.registry });
      // gauges named like counters (promtool: non-counter metrics should not have "_total"); the
      // same numbers by type stay as nodejs_active_handles, nodejs_active_requests, nodejs_active_resources
      for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name);
    }
  }

  /** The text exposition of every metric, read from one snapshot of the daemon. */
  async scrape(): Promise<string> {
    this.#snap = null;
    try {
      return await this.registry.metrics();
    } finally {
      this.#snap = null;
    }
  }

  delivery(d: DeliveryEnd): void {
    let byMode = this.#deliveryCells.get(d.frontEnd);
    if (byMode === undefined) this.#deliveryCells.set(d.frontEnd, (byMode = new Map()));
    let byOutcome = byMode.get(d.mode);
    if (byOutcome === undefined) byMode.set(d.mode, (byOutcome = new Map()));
    const cell = byOutcome.get(d.outcome);
    if (cell !== undefined) cell.value++;
    else {
      // bounded: front_end, mode and outcome are the few values of their types
      const added = { labels: { front_end: d.frontEnd, mode: d.mode, outcome: d.outcome }, value: 1 };
      byOutcome.set(d.outcome, added);
      this.#deliveryCounts.push(added);
    }
    // source_ip: only deliveries that passed the egress policy have one (a bounded set)
    if (d.sourceIp === undefined || (d.bytesUp === undefined && d.bytesDown === undefined)) return;
    let bytes = this.#tunnelBytes.get(d.sourceIp);
    if (bytes === undefined) this.#tunnelBytes.set(d.sourceIp, (bytes = { sent: 0, received: 0 }));
    bytes.sent += d.bytesUp ?? 0;
    bytes.received += d.bytesDown ?? 0;
  }

  transaction(t: TransactionEnd): void {
    this.#transactions.inc({ reply_class: replyClass(t.code), reused: String(t.reused), ended_by: t.code === null ? 'proxy' : 'destination' });
    this.#smtpBody.inc({ source_ip: t.sourceIp }, t.bytes);
    if (!t.reused && t.tls !== null) this.#tlsHandshakes.inc({ resumed: String(t.tls.resumed) });
  }

  throttleWait(kind: 'connection' | 'message', seconds: number, granted: boolean): void {
    const cell = this.#waits[(kind === 'connection' ? 0 : 2) + (granted ? 0 : 1)] as WaitCell;
    const v = Math.max(0, seconds);
    if (!Number.isFinite(v)) return; // prom-client threw on these; a wait is never one
    if (cell.count === 0) this.#waitOrder.push(cell);
    cell.count++;
    cell.sum += v;
    // the first bucket whose bound is at least v (prom-client's findBound); past the last: +Inf only
    for (let i = 0; i < WAIT_BUCKETS.length; i++) {
      if (v <= (WAIT_BUCKETS[i] as number)) {
        (cell.buckets[i] as number)++;
        break;
      }
    }
  }

  /** The histogram's samples, cumulative per bucket, as prom-client's Histogram.get() lists them. */
  #waitValues(): WaitValue[] {
    const out: WaitValue[] = [];
    const bucket = `${WAIT_NAME}_bucket`;
    for (const c of this.#waitOrder) {
      let acc = 0;
      for (let i = 0; i < WAIT_BUCKETS.length; i++) {
        acc += c.buckets[i] as number;
        out.push({ value: acc, labels: { le: WAIT_BUCKETS[i] as number, kind: c.kind, result: c.result }, metricName: bucket });
      }
      out.push({ value: c.count, labels: { le: '+Inf', kind: c.kind, result: c.result }, metricName: bucket });
      out.push({ value: c.sum, labels: { kind: c.kind, result: c.result }, metricName: `${WAIT_NAME}_sum` });
      out.push({ value: c.count, labels: { kind: c.kind, result: c.result }, metricName: `${WAIT_NAME}_count` });
    }
    return out;
  }
}
