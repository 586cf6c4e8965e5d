// The metrics' functional core (src/metrics): label bounds, the busiest-throttles choice, outcome folding.
import { readFileSync } from 'node:fs';
import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { deliveryFrontEnd, deliveryOutcome, linkOutcome, type MetricsSnapshot } from '../../src/metrics/hooks.js';
import { busiestThrottles, MAX_SESSION_SERIES, Metrics, replyClass } from '../../src/metrics/metrics.js';

function snapshot(over: Partial<MetricsSnapshot> = {}): MetricsSnapshot {
  return {
    openConnections: { native: 2, socks5: 0, 'proxy-v2': 1 },
    handshakesPending: 0,
    refused: [{ frontEnd: 'native', reason: 'allow_from', count: 3 }],
    handshakeFailures: 1,
    acceptErrors: 0,
    reloads: { applied: 2, rejected: 1 },
    tunnels: 3,
    smtpLinks: 1,
    deliveriesPending: 0,
    remote: { active: 2, cached: 1 },
    throttleWaiters: 0,
    throttles: [],
    sessions: [],
    pool: { active: 0, cached: 1, opening: 0, waiting: 0, opened: 4, reused: 9 },
    ...over,
  };
}

const series = (text: string, name: string): string[] => text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));

describe('metrics', () => {
  it('keeps per-throttle series to the metrics_throttle_series busiest, and says how many were left out', async () => {
    const throttles = Array.from({ length: 50 }, (_, i) => ({ key: `t${String(i).padStart(2, '0')}`, inUse: i % 7, maxConnections: 10, waiting: i === 3 ? 100 : 0 }));
    let n = 20;
    const m = new Metrics({ snapshot: () => snapshot({ throttles }), throttleSeries: () => n, defaultMetrics: false });
    const text = await m.scrape();
    expect(series(text, 'mtaproxy_throttle_connections_in_use')).toHaveLength(20);
    expect(series(text, 'mtaproxy_throttle_connections_limit')).toHaveLength(20);
    expect(text).toContain('mtaproxy_throttle_waiting{throttle="t03"} 100');
    expect(text).toContain('mtaproxy_throttle_series_omitted 30');
    expect(text).toContain('mtaproxy_throttles 50');
    n = 0;
    const none = await m.scrape();
    expect(series(none, 'mtaproxy_throttle_connections_in_use')).toHaveLength(0);
    expect(none).toContain('mtaproxy_throttle_series_omitted 50');
  });

  it('chooses the busiest throttles by slots in use plus waiters, ties by key', () => {
    const t = (key: string, inUse: number, waiting = 0) => ({ key, inUse, maxConnections: 5, waiting });
    expect(busiestThrottles([t('b', 1), t('a', 1), t('c', 0, 3), t('d', 0)], 3).map((x) => x.key)).toEqual(['c', 'a', 'b']);
    expect(busiestThrottles([t('a', 1)], 0)).toEqual([]);
  });

  it(`caps per-session series at ${MAX_SESSION_SERIES}, the largest backlogs first`, async () => {
    const sessions = Array.from({ length: MAX_SESSION_SERIES + 20 }, (_, i) => ({ name: `mta-${i}`, pingRttMs: 1.5, backlog: { ram: i, bounce: 0, disk: 0 }, connectedMs: 61_000 }));
    const m = new Metrics({ snapshot: () => snapshot({ sessions }), throttleSeries: () => 20, defaultMetrics: false });
    const text = await m.scrape();
    expect(series(text, 'mtaproxy_session_ping_rtt_seconds')).toHaveLength(MAX_SESSION_SERIES);
    expect(text).toContain(`mtaproxy_sessions ${MAX_SESSION_SERIES + 20}`);
    expect(text).toContain(`mtaproxy_session_ping_rtt_seconds{session="mta-${MAX_SESSION_SERIES + 19}"} 0.0015`);
    expect(text).not.toContain('session="mta-0"');
    expect(text).toContain(`mtaproxy_session_connected_seconds{session="mta-50"} 61`);
  });

  it('reads the counters the daemon keeps at scrape time and counts hooked events', async () => {
    const m = new Metrics({ snapshot: () => snapshot(), throttleSeries: () => 20, defaultMetrics: false });
    m.delivery({ frontEnd: 'socks5', mode: 'tunnel', outcome: 'completed', sourceIp: '192.0.2.1', bytesUp: 100, bytesDown: 20 });
    m.delivery({ frontEnd: 'socks5', mode: 'tunnel', outcome: 'completed', sourceIp: '192.0.2.1', bytesUp: 1, bytesDown: 2 });
    m.delivery({ frontEnd: 'native', mode: 'smtp', outcome: 'refused' });
    m.transaction({ code: 250, reused: false, tls: { resumed: false }, sourceIp: '192.0.2.1', bytes: 500 });
    m.transaction({ code: null, reused: true, tls: { resumed: false }, sourceIp: '192.0.2.1', bytes: 0 });
    m.throttleWait('connection', 0.3, true);
    const text = await m.scrape();
    expect(text).toContain('mtaproxy_deliveries_total{front_end="socks5",mode="tunnel",outcome="completed"} 2');
    expect(text).toContain('mtaproxy_deliveries_total{front_end="native",mode="smtp",outcome="refused"} 1');
    expect(text).toContain('mtaproxy_tunnel_sent_bytes_total{source_ip="192.0.2.1"} 101');
    expect(text).toContain('mtaproxy_tunnel_received_bytes_total{source_ip="192.0.2.1"} 22');
    expect(text).toContain('mtaproxy_smtp_transactions_total{reply_class="2xx",reused="false",ended_by="destination"} 1');
    expect(text).toContain('mtaproxy_smtp_transactions_total{reply_class="4xx",reused="true",ended_by="proxy"} 1');
    expect(text).toContain('mtaproxy_smtp_tls_handshakes_total{resumed="false"} 1');
    expect(text).toContain('mtaproxy_smtp_body_sent_bytes_total{source_ip="192.0.2.1"} 500');
    expect(text).toContain('mtaproxy_throttle_wait_seconds_bucket{le="0.25",kind="connection",result="granted"} 0');
    expect(text).toContain('mtaproxy_throttle_wait_seconds_bucket{le="1",kind="connection",result="granted"} 1');
    expect(text).toContain('mtaproxy_connections_refused_total{front_end="native",reason="allow_from"} 3');
    expect(text).toContain('mtaproxy_reloads_total{result="applied"} 2');
    expect(text).toContain('mtaproxy_reloads_total{result="rejected"} 1');
    expect(text).toContain('mtaproxy_tunnels_open{mode="tunnel"} 2');
    expect(text).toContain('mtaproxy_smtp_pool_reused_borrows_total 9');
    expect(text).toContain('mtaproxy_open_connections{front_end="proxy-v2"} 1');
  });

  it('renders the throttle-wait histogram it counts in plain numbers as prom-client\'s Histogram would', async () => {
    const m = new Metrics({ snapshot: () => snapshot(), throttleSeries: () => 20, defaultMetrics: false });
    const reference = new Registry();
    const h = new Histogram({
      name: 'mtaproxy_throttle_wait_seconds',
      help: 'Time a throttle request waited for its answer: kind=connection (a slot) or message (a token); result=granted or refused (timeout, session gone)',
      labelNames: ['kind', 'result'],
      buckets: [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 300, 3600],
      registers: [reference],
    });
    const section = (text: string): string => text.split('\n\n').find((s) => s.includes('# TYPE mtaproxy_throttle_wait_seconds '))?.trimEnd() ?? '';
    const observe = (kind: 'connection' | 'message', seconds: number, granted: boolean): void => {
      m.throttleWait(kind, seconds, granted);
      h.observe({ kind, result: granted ? 'granted' : 'refused' }, Math.max(0, seconds));
    };
    expect(section(await m.scrape())).toBe(section(await reference.metrics())); // no label set yet
    const values = [0, 0, 0.0005, 0.001, 0.0011, 0.3, 7, 4000, 1e9, 0.1, 0.1 + 0.2, -1, 3600, 0.025];
    values.forEach((v, i) => observe(i % 2 === 0 ? 'message' : 'connection', v, i % 3 !== 0));
    const text = section(await m.scrape());
    expect(text).toContain('mtaproxy_throttle_wait_seconds_bucket{le="+Inf",kind="connection",result="granted"}');
    expect(text).toBe(section(await reference.metrics()));
    await m.registry.resetMetrics();
    reference.resetMetrics();
    observe('connection', 0.002, true);
    expect(section(await m.scrape())).toBe(section(await reference.metrics()));
  });

  it('folds free-text outcomes into a closed set of labels', () => {
    expect(deliveryOutcome('closed')).toBe('completed');
    expect(deliveryOutcome('idle timeout')).toBe('idle_timeout');
    expect(deliveryOutcome('destination error ECONNRESET')).toBe('error');
    expect(linkOutcome('quit')).toBe('completed');
    expect(linkOutcome('mta closed')).toBe('completed');
    expect(linkOutcome('command line too long')).toBe('error');
    expect(deliveryFrontEnd('server-a', 'sess-1')).toBe('native');
    expect(deliveryFrontEnd('proxy-v2', null)).toBe('proxy-v2');
    expect(deliveryFrontEnd('socks5:alice', null)).toBe('socks5');
    expect([replyClass(250), replyClass(354), replyClass(451), replyClass(550), replyClass(null)]).toEqual(['2xx', '3xx', '4xx', '5xx', '4xx']);
  });

  it('docs/operations.md lists every metric with its type and labels', async () => {
    const docs = readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8');
    const m = new Metrics({ snapshot: () => snapshot(), throttleSeries: () => 20, defaultMetrics: false });
    const metrics = await m.registry.getMetricsAsJSON();
    expect(metrics.length).toBeGreaterThan(25);
    for (const metric of metrics) {
      const row = docs.split('\n').find((l) => l.startsWith(`| \`${metric.name}\` |`));
      expect(row, metric.name).toBeDefined();
      expect(row?.split('|')[2]?.trim(), metric.name).toBe(String(metric.type));
    }
  });
});
