import { describe, expect, it } from 'vitest';
import { formatUptime, statusRecords } from '../../src/status/format.js';

const flow = { in: 0, out: 0, buf: 0 };

describe('status lines', () => {
  it('match the seed format exactly, with fields for journald', () => {
    const records = statusRecords({
      managerId: '0543b19c',
      openConnections: 965,
      handshaking: 4,
      refusedHandshakeCap: 17,
      acceptErrors: 2,
      refusedFds: 3,
      throttles: 1758,
      window: 16,
      sessions: [
        { name: 'server-a', connectedMs: 3_919_400, pingRttMs: 0.25, pingAgeMs: 400, backlog: { ram: 0, bounce: 0, disk: 0 }, forward: flow, back: flow },
        { name: 'server-b', connectedMs: 1000, pingRttMs: null, pingAgeMs: null, backlog: { ram: 532, bounce: 0, disk: 1093 }, forward: { in: 2, out: 1, buf: 7 }, back: { in: 1, out: 0, buf: 0 } },
      ],
      remote: { active: 610, cached: 3 },
    });
    expect(records.map((r) => r.msg)).toEqual([
      'listener: open_connections=965',
      'handshakes: pending=4 refused_cap=17 refused_fds=3 accept_errors=2',
      'throttle: manager(0543b19c): throttles=1758 sessions=2 backlog(ram=532 bounce=0 disk=1093) forward(in=2/16 out=1/16 buf=7) back(in=1/16 out=0/16 buf=0)',
      'throttle: session(server-a): timeconnected=1h5m19s ping=0.250ms(0s ago) backlog(ram=0 bounce=0 disk=0) forward(in=0/16 out=0/16 buf=0) back(in=0/16 out=0/16 buf=0)',
      'throttle: session(server-b): timeconnected=1s ping=none backlog(ram=532 bounce=0 disk=1093) forward(in=2/16 out=1/16 buf=7) back(in=1/16 out=0/16 buf=0)',
      'direct_remote_smtp: connections=613(active=610 cached=3)',
    ]);
    expect(records[0]?.fields).toEqual({ mtaproxy_event: 'status', status_line: 'listener', open_connections: 965 });
    expect(records[1]?.fields).toEqual({ mtaproxy_event: 'status', status_line: 'handshakes', handshakes_pending: 4, refused_handshake_cap: 17, refused_fds: 3, accept_errors: 2 });
    expect(records[3]?.fields).toMatchObject({ status_line: 'session', session: 'server-a', time_connected_s: 3919, ping_ms: 0.25, ping_age_s: 0, backlog_ram: 0 });
    expect(records[2]?.fields).toMatchObject({ manager_id: '0543b19c', throttles: 1758, sessions: 2, backlog_ram: 532, backlog_disk: 1093, forward_in: 2, back_in: 1 });
    expect(records[5]?.fields).toMatchObject({ connections: 613, connections_active: 610, connections_cached: 3 });
  });

  it('formats uptimes like Go durations', () => {
    expect(formatUptime(0)).toBe('0s');
    expect(formatUptime(59_999)).toBe('59s');
    expect(formatUptime(300_000)).toBe('5m0s');
    expect(formatUptime(3_600_000)).toBe('1h0m0s');
    expect(formatUptime(90_061_000)).toBe('25h1m1s');
  });
});
