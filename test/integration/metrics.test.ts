// The Prometheus metrics (docs/operations.md "Metrics") end to end: the daemon with metrics_listen,
// real work (a control session, a tunnel delivery and an smtp-mode delivery to an smtp-server
// sink, a refused CONNECT), then Debian's promtool checks a scrape, and a real Prometheus server
// (Debian's `prometheus`, started here on loopback with its own config and storage in a temp dir)
// scrapes the daemon; the values are read back through Prometheus's HTTP API.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { createServer as createTcpServer } from 'node:net';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, openTunnel } from '../../src/client/index.js';
import { configText, freePort, SECRET, startDaemon, tempDir, type RunningDaemon } from '../helpers/daemon.js';

let sink: SMTPServer;
let sinkPort = 0;
let received = 0;

beforeAll(async () => {
  sink = new SMTPServer({
    authOptional: true,
    logger: false,
    onData(stream, _session, callback) {
      stream.on('data', () => {});
      stream.on('end', () => {
        received++;
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
  sinkPort = (sink.server.address() as AddressInfo).port;
});
afterAll(async () => {
  await new Promise<void>((resolve) => sink.close(() => resolve()));
});

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(
    children.splice(0).map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((resolve) => p.once('exit', resolve));
      p.kill('SIGTERM');
      await exited;
    }),
  );
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const egress = (ports: number[]) =>
  `[egress]\nsource_ips = ["127.0.0.2"]\nports = [${ports.join(', ')}]\nallow_private_destinations = true\nthrottle_wait_timeout = "10s"\n[smtp]\nidle_timeout = "60s"\n`;

async function sendOver(socket: Socket, to: string): Promise<void> {
  const conn = new SMTPConnection({ connection: socket, name: 'mta.example', ignoreTLS: true } as ConstructorParameters<typeof SMTPConnection>[0]);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  conn.on('error', () => {});
  await new Promise<void>((resolve, reject) => conn.send({ from: 'a@example.com', to: [to] }, 'Subject: metrics\r\n\r\nhello\r\n', (err) => (err ? reject(err) : resolve())));
  conn.quit();
  await new Promise<void>((resolve) => conn.once('end', () => resolve()));
}

/** One HTTP request on a connection of its own (no keep-alive pool: a reload's effect shows at once). */
function request(port: number, opts: { path?: string; method?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: opts.path ?? '/metrics', method: opts.method ?? 'GET', headers: opts.headers ?? {}, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function scrape(port: number): Promise<{ status: number; type: string | undefined; text: string }> {
  const res = await request(port);
  const type = res.headers['content-type'];
  return { status: res.status, type: typeof type === 'string' ? type : undefined, text: res.text };
}

/** The value of one sample in the text exposition, e.g. sample(text, 'mtaproxy_sessions'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function run(cmd: string, args: string[], input: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out }));
    p.stdin.end(input);
  });
}

interface PromResult {
  metric: Record<string, string>;
  value: [number, string];
}

async function promQuery(port: number, query: string): Promise<PromResult[]> {
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(query)}`);
  const body = (await res.json()) as { status: string; data?: { resultType: string; result: PromResult[] } };
  if (body.status !== 'success' || body.data === undefined) throw new Error(`query ${query}: ${JSON.stringify(body)}`);
  return body.data.result;
}

/** Polls until `check` passes (Prometheus scrapes every second); generous, the machine is shared. */
async function eventually<T>(what: string, get: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let error: unknown;
  while (Date.now() < deadline) {
    try {
      last = await get();
      if (check(last)) return last;
    } catch (err) {
      error = err;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: not within ${timeoutMs}ms; last ${JSON.stringify(last)} ${String(error ?? '')}`);
}

/** Debian's Prometheus on loopback, scraping `target` every second; its config and TSDB in a temp dir. */
async function startPrometheus(target: string): Promise<{ port: number; output: () => string }> {
  const dir = tempDir();
  dirs.push(dir);
  mkdirSync(join(dir, 'data'));
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    ['global:', '  scrape_interval: 1s', '  scrape_timeout: 1s', 'scrape_configs:', '  - job_name: mtaproxy', '    static_configs:', `      - targets: ["${target}"]`, ''].join('\n'),
  );
  const port = await freePort();
  const proc = spawn('prometheus', [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  let output = '';
  proc.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  await eventually('prometheus ready', async () => (await fetch(`http://127.0.0.1:${port}/-/ready`)).status, (s) => s === 200);
  return { port, output: () => output };
}

describe('metrics', () => {
  it('serves Prometheus metrics that promtool accepts and a real Prometheus scrapes', async () => {
    const metricsPort = await freePort();
    const d = await startDaemon({ extra: `metrics_listen = "127.0.0.1:${metricsPort}"\nping_interval = "200ms"\n${egress([sinkPort])}` });
    running.push(d);
    await d.waitForLine(new RegExp(`listener: metrics on 127\\.0\\.0\\.1:${metricsPort}`));

    // a control session with a throttle and a backlog
    const c = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    clients.push(c);
    await c.declare({ key: 'dest', sourceIp: '127.0.0.2', maxConnections: 3, maxMessagesPerHour: 100_000, mode: 'sum' });
    await c.reportBacklog({ ram: 5, bounce: 1, disk: 7 });
    await c.ping();

    // a tunnel delivery
    const tunnel = await openTunnel({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port: sinkPort }, throttle: 'dest' });
    await sendOver(tunnel.socket, 'b@example.net');
    const record = await d.waitForLine(/delivery\(server-a\): 127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+ throttle=dest up=\d+ down=\d+ \d+ms closed/, 20_000);
    const up = Number(/ up=(\d+)/.exec(record)?.[1]);
    const down = Number(/ down=(\d+)/.exec(record)?.[1]);
    expect(up).toBeGreaterThan(0);

    // an smtp-mode delivery (one transaction over a pool connection)
    const link = await openTunnel({
      host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET, source: '127.0.0.2',
      destination: { host: '127.0.0.1', port: sinkPort }, throttle: 'dest', smtp: { ehlo: 'mail-2.example' },
    });
    await sendOver(link.socket, 'c@example.net');
    await d.waitForLine(/delivery\(server-a\): smtp 127\.0\.0\.2 -> 127\.0\.0\.1:\d+ throttle=dest transactions=1 \d+ms quit/, 20_000);

    // a refused delivery: a destination port egress.ports does not allow
    await expect(openTunnel({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET, source: '127.0.0.2', destination: { host: '127.0.0.1', port: 26 }, throttle: 'dest' })).rejects.toThrow(/CONNECT refused/);
    await d.waitForLine(/delivery\(server-a\): .*refused/);
    expect(received).toBeGreaterThanOrEqual(2);

    // the proxy's PING is answered within an interval or two; the delivery connections' closes
    // reach the daemon a moment after their records
    const s = await eventually(
      'a ping round trip, deliveries closed',
      () => scrape(metricsPort),
      (r) => sample(r.text, 'mtaproxy_session_ping_rtt_seconds{session="server-a"}') !== undefined && sample(r.text, 'mtaproxy_open_connections{front_end="native"}') === 1,
      20_000,
    );
    expect(s.status).toBe(200);
    expect(s.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(sample(s.text, 'mtaproxy_deliveries_total{front_end="native",mode="tunnel",outcome="completed"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_deliveries_total{front_end="native",mode="smtp",outcome="completed"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_deliveries_total{front_end="native",mode="tunnel",outcome="refused"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_tunnel_sent_bytes_total{source_ip="127.0.0.2"}')).toBe(up);
    expect(sample(s.text, 'mtaproxy_tunnel_received_bytes_total{source_ip="127.0.0.2"}')).toBe(down);
    expect(sample(s.text, 'mtaproxy_smtp_transactions_total{reply_class="2xx",reused="false",ended_by="destination"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_smtp_pool_connections_opened_total')).toBe(1);
    expect(sample(s.text, 'mtaproxy_smtp_pool_connections{state="cached"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_sessions')).toBe(1);
    expect(sample(s.text, 'mtaproxy_open_connections{front_end="native"}')).toBe(1); // the control session
    expect(sample(s.text, 'mtaproxy_session_backlog_messages{session="server-a",queue="disk"}')).toBe(7);
    expect(sample(s.text, 'mtaproxy_session_ping_rtt_seconds{session="server-a"}')).toBeGreaterThan(0);
    expect(sample(s.text, 'mtaproxy_throttles')).toBe(1);
    expect(sample(s.text, 'mtaproxy_throttle_connections_limit{throttle="dest"}')).toBe(3);
    expect(sample(s.text, 'mtaproxy_throttle_connections_in_use{throttle="dest"}')).toBe(1); // the cached pool connection keeps its slot
    expect(sample(s.text, 'mtaproxy_throttle_wait_seconds_count{kind="connection",result="granted"}')).toBe(2); // the tunnel's and the pool connection's slots
    expect(sample(s.text, 'mtaproxy_throttle_wait_seconds_count{kind="message",result="granted"}')).toBe(1); // the transaction's token
    expect(sample(s.text, 'mtaproxy_tunnels_open{mode="tunnel"}')).toBe(0);
    expect(sample(s.text, 'mtaproxy_tunnels_open{mode="smtp"}')).toBe(0);
    expect(sample(s.text, 'mtaproxy_reloads_total{result="applied"}')).toBe(0);
    expect(s.text).toMatch(/^process_resident_memory_bytes \d+/m);

    // (1) promtool, Debian's `prometheus` package
    const check = await run('promtool', ['check', 'metrics'], s.text);
    expect(check.out).toBe('');
    expect(check.code).toBe(0);

    // a reload, so that mtaproxy_reloads_total has something to show in Prometheus
    expect((await d.cli(['reload'])).code).toBe(0);

    // (2) a real Prometheus server scrapes the daemon; read the series back through its HTTP API
    const prom = await startPrometheus(`127.0.0.1:${metricsPort}`);
    const up1 = await eventually('target up', () => promQuery(prom.port, 'up{job="mtaproxy"}'), (r) => r[0]?.value[1] === '1');
    expect(up1).toHaveLength(1);
    const deliveries = await eventually('deliveries', () => promQuery(prom.port, 'mtaproxy_deliveries_total'), (r) => r.length === 3);
    const byLabels = new Map(deliveries.map((r) => [`${r.metric.front_end} ${r.metric.mode} ${r.metric.outcome}`, Number(r.value[1])]));
    expect(Object.fromEntries(byLabels)).toEqual({ 'native tunnel completed': 1, 'native smtp completed': 1, 'native tunnel refused': 1 });
    expect(deliveries[0]?.metric.job).toBe('mtaproxy');
    const sent = await promQuery(prom.port, 'mtaproxy_tunnel_sent_bytes_total');
    expect(sent.map((r) => [r.metric.source_ip, Number(r.value[1])])).toEqual([['127.0.0.2', up]]);
    const reloads = await promQuery(prom.port, 'mtaproxy_reloads_total{result="applied"}');
    expect(Number(reloads[0]?.value[1])).toBe(1);
    const backlog = await promQuery(prom.port, 'sum by (session) (mtaproxy_session_backlog_messages)');
    expect(backlog.map((r) => [r.metric.session, Number(r.value[1])])).toEqual([['server-a', 13]]);
    // Prometheus itself found nothing wrong with the exposition
    const targets = (await (await fetch(`http://127.0.0.1:${prom.port}/api/v1/targets`)).json()) as { data: { activeTargets: { health: string; lastError: string }[] } };
    expect(targets.data.activeTargets.map((t) => [t.health, t.lastError])).toEqual([['up', '']]);
    const samples = await promQuery(prom.port, 'scrape_samples_scraped{job="mtaproxy"}');
    expect(Number(samples[0]?.value[1])).toBeGreaterThan(50);
  }, 120_000);

  it('answers GET /metrics only, and applies allow_from before reading', async () => {
    const metricsPort = await freePort();
    const d = await startDaemon({ extra: `metrics_listen = "127.0.0.1:${metricsPort}"` });
    running.push(d);
    const post = await request(metricsPort, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET');
    expect((await request(metricsPort, { method: 'PUT' })).status).toBe(405);
    expect((await request(metricsPort, { path: '/' })).status).toBe(404);
    expect((await request(metricsPort, { path: '/metrics/x' })).status).toBe(404);
    expect((await request(metricsPort, { path: '/metrics?x=1' })).status).toBe(200);
    // an oversized header is refused, not buffered
    const big = await request(metricsPort, { headers: { 'x-big': 'a'.repeat(20_000) } }).then((r) => r.status, () => 'closed');
    expect(big).toBe(431);

    // allow_from without 127.0.0.1: a scrape from there is closed before a byte is read
    d.writeConfig(configText({ adminSocket: d.adminSocket, extra: `metrics_listen = "127.0.0.1:${metricsPort}"` }).replace('allow_from = ["127.0.0.0/8"]', 'allow_from = ["127.0.0.2"]'));
    expect((await d.cli(['reload'])).code).toBe(0);
    const refused = await request(metricsPort).then((r) => r.status, () => 'closed');
    expect(refused).toBe('closed');
    await d.waitForLine(/listener: refused 127\.0\.0\.1 on metrics: not in allow_from/);
  }, 60_000);

  it('serves a socket passed by systemd as FileDescriptorName=metrics', async () => {
    const port = await freePort();
    const d = await startDaemon({ command: ['systemd-socket-activate', '-l', `127.0.0.1:${port}`, '--fdname=metrics'] });
    running.push(d);
    // systemd-socket-activate execs the daemon at the first connection: that scrape is answered
    const s = await scrape(port);
    expect(s.status).toBe(200);
    expect(s.text).toContain('mtaproxy_sessions 0');
    await d.waitForLine(/sockets="3=metrics"/);
    await d.waitForLine(/listener: metrics on 127\.0\.0\.1:\d+/);
  }, 60_000);

  it('is added and removed by a reload; a metrics port that cannot be bound rejects the reload', async () => {
    const d = await startDaemon({});
    running.push(d);
    const metricsPort = await freePort();
    d.writeConfig(configText({ adminSocket: d.adminSocket, extra: `metrics_listen = "127.0.0.1:${metricsPort}"` }));
    const applied = await d.cli(['reload']);
    expect(applied.code).toBe(0);
    expect(applied.stdout + applied.stderr).toContain('metrics_listen');
    expect((await scrape(metricsPort)).status).toBe(200);

    // a port in use: rejected, the old metrics listener stays
    const blocker = createTcpServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as AddressInfo).port;
    try {
      d.writeConfig(configText({ adminSocket: d.adminSocket, extra: `metrics_listen = ["127.0.0.1:${metricsPort}", "127.0.0.1:${taken}"]` }));
      const rejected = await d.cli(['reload']);
      expect(rejected.code).toBe(1);
      expect(rejected.stdout + rejected.stderr).toContain(`cannot listen on metrics tcp 127.0.0.1:${taken}: address already in use`);
    } finally {
      blocker.close();
    }
    const s = await scrape(metricsPort);
    expect(sample(s.text, 'mtaproxy_reloads_total{result="applied"}')).toBe(1);
    expect(sample(s.text, 'mtaproxy_reloads_total{result="rejected"}')).toBe(1);

    d.writeConfig(configText({ adminSocket: d.adminSocket }));
    expect((await d.cli(['reload'])).code).toBe(0);
    await d.waitForLine(new RegExp(`listener: closed 127\\.0\\.0\\.1:${metricsPort}`));
    await expect(request(metricsPort)).rejects.toThrow(/ECONNREFUSED/);
  }, 60_000);
});
