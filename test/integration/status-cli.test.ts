// `mtaproxy status --json`, `mtaproxy status --throttles [--limit --key] [--json]` against a real
// daemon with real control sessions; usage errors and exit codes.
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const egress = '[egress]\nsource_ips = ["127.0.0.2"]\nports = [25]\n';

describe('mtaproxy status --json / --throttles', () => {
  it('prints the status records, the throttles with declarations and backlogs, as text and JSON', async () => {
    const d = await startDaemon({ extra: egress });
    running.push(d);
    const a = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-a', secret: SECRET });
    const b = await ControlClient.connect({ host: '127.0.0.1', port: d.port, name: 'server-b', secret: SECRET });
    clients.push(a, b);
    await a.reportBacklog({ ram: 5, bounce: 1, disk: 7 });
    for (let i = 0; i < 3; i++) await a.declare({ key: `other-${i}.example@127.0.0.2`, sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 60, mode: 'sum' });
    await a.declare({ key: 'gmail@127.0.0.2', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 600, mode: 'sum' });
    await b.declare({ key: 'gmail@127.0.0.2', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 300, mode: 'sum' });
    expect(await a.acquire('gmail@127.0.0.2', 'connection')).toBeGreaterThan(0);
    expect(await a.acquire('gmail@127.0.0.2', 'message')).toBeNull();

    const json = await d.cli(['status', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const status = JSON.parse(json.stdout) as { records: Record<string, unknown>[]; smtp_pool: unknown[] };
    expect(status.smtp_pool).toEqual([]);
    expect(status.records.map((r) => r.status_line)).toEqual(['listener', 'handshakes', 'manager', 'session', 'session', 'direct_remote_smtp']);
    expect(status.records[2]).toMatchObject({ mtaproxy_event: 'status', status_line: 'manager', throttles: 4, sessions: 2, backlog_ram: 5, backlog_disk: 7 });
    expect(status.records.find((r) => r.session === 'server-a')).toMatchObject({ backlog_ram: 5, backlog_bounce: 1, backlog_disk: 7 });

    const text = await d.cli(['status', '--throttles']);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trimEnd().split('\n');
    // busiest first: gmail has a slot in use
    expect(lines[0]).toBe('throttle(gmail@127.0.0.2): mode=sum source=127.0.0.2 connections=1/3 messages_left=9/15 max_messages_per_hour=900 waiting(connections=0 messages=0) sessions=2');
    expect(lines[1]).toBe('throttle(gmail@127.0.0.2):   session(server-a): declared(mode=sum source=127.0.0.2 max_connections=2 max_messages_per_hour=600) backlog(ram=5 bounce=1 disk=7) weight=13');
    expect(lines[2]).toBe('throttle(gmail@127.0.0.2):   session(server-b): declared(mode=sum source=127.0.0.2 max_connections=1 max_messages_per_hour=300) backlog(ram=0 bounce=0 disk=0) weight=1');
    expect(lines.at(-1)).toBe('throttles: 4 shown (of 4 in all)');

    const limited = await d.cli(['status', '--throttles', '--limit=2']);
    expect(limited.stdout.trimEnd().split('\n').at(-1)).toBe('… 2 more throttles (2 of 4 shown, busiest first; of 4 in all): use --limit=N (at most 1000) or --key=TEXT');

    const filtered = await d.cli(['status', '--throttles', '--key=other-1', '--json']);
    expect(filtered.code, filtered.stderr).toBe(0);
    const snap = JSON.parse(filtered.stdout) as { total: number; matched: number; key: string; limit: number; throttles: { key: string; sessions: { session: string; backlog: unknown }[] }[] };
    expect(snap).toMatchObject({ total: 4, matched: 1, key: 'other-1', limit: 100 });
    expect(snap.throttles.map((t) => t.key)).toEqual(['other-1.example@127.0.0.2']);
    expect(snap.throttles[0]?.sessions).toEqual([
      { session: 'server-a', session_id: expect.stringMatching(/^server-a#\d+$/) as unknown, declaration: { mode: 'sum', source_ip: '127.0.0.2', max_connections: 1, max_messages_per_hour: 60 }, backlog: { ram: 5, bounce: 1, disk: 7 }, weight: 13 },
    ]);
  }, 30_000);

  it('usage errors exit 2; an unreachable daemon exits 1 as before', async () => {
    const d = await startDaemon();
    running.push(d);
    for (const [args, message] of [
      [['status', '--limit=5'], /--limit needs --throttles/],
      [['status', '--throttles', '--limit=x'], /--limit must be a whole number/],
      [['reload', '--json'], /--json is an option of "mtaproxy status"/],
    ] as const) {
      const r = await d.cli([...args]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    const gone = await d.cli(['status', '--json', '--admin-socket=/nonexistent/admin.sock']);
    expect(gone.code).toBe(1);
    expect(gone.stdout).toBe('');
  }, 30_000);
});
