// ThrottleManager.throttleSnapshot() (read-only) and its rendering for `mtaproxy status --throttles`.
import { describe, expect, it } from 'vitest';
import { ThrottleManager, type Declaration } from '../../src/throttle/manager.js';
import { MAX_THROTTLE_LIMIT, throttleLimit, throttleLines, throttlesJson } from '../../src/status/throttles.js';

const decl = (over: Partial<Declaration> = {}): Declaration => ({
  key: 'gmail', sourceIp: '192.0.2.10', maxConnections: 2, maxMessagesPerHour: 3600, mode: 'sum', ...over,
});

describe('ThrottleManager.throttleSnapshot', () => {
  it('shows effective limits, mode, slots in use, tokens left, waiters and every declaration', () => {
    const m = new ThrottleManager();
    m.declare('a#1', decl({ maxConnections: 2, maxMessagesPerHour: 3600 }), 0);
    m.declare('b#2', decl({ maxConnections: 1, maxMessagesPerHour: 2400 }), 0);
    m.setBacklog('b#2', 40);
    expect(m.acquire('a#1', 'gmail', 'connection', 0, 1000).status).toBe('granted');
    expect(m.acquire('a#1', 'gmail', 'connection', 0, 1000).status).toBe('granted');
    expect(m.acquire('b#2', 'gmail', 'connection', 0, 1000).status).toBe('granted');
    expect(m.acquire('b#2', 'gmail', 'connection', 0, 1000).status).toBe('queued');
    for (let i = 0; i < 3; i++) expect(m.acquire('a#1', 'gmail', 'message', 0, 1000).status).toBe('granted');
    // the bucket was filled at the first declaration (burst 60); the larger burst of the sum fills over time
    const snap = m.throttleSnapshot(0, { limit: 10 });
    expect(snap).toMatchObject({ total: 1, matched: 1 });
    expect(snap.throttles).toHaveLength(1);
    expect(snap.throttles[0]).toEqual({
      key: 'gmail', mode: 'sum', sourceIp: '192.0.2.10', maxConnections: 3, maxMessagesPerHour: 6000, declared: 2,
      connectionsInUse: 3, messagesLeft: 60 - 3, messageBurst: 100, waitingConnections: 1, waitingMessages: 0, memberCount: 2,
      members: [
        { session: 'a#1', declaration: decl({ maxConnections: 2, maxMessagesPerHour: 3600 }), weight: 1 },
        { session: 'b#2', declaration: decl({ maxConnections: 1, maxMessagesPerHour: 2400 }), weight: 40 },
      ],
    });
  });

  it('refills the bucket in the view only: the manager is not changed', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxMessagesPerHour: 60 }), 0); // burst 1, one token a minute
    expect(m.acquire('a', 'gmail', 'message', 0, 0).status).toBe('granted');
    expect(m.throttleSnapshot(0, { limit: 1 }).throttles[0]?.messagesLeft).toBe(0);
    expect(m.throttleSnapshot(30_000, { limit: 1 }).throttles[0]?.messagesLeft).toBe(0);
    expect(m.throttleSnapshot(60_000, { limit: 1 }).throttles[0]?.messagesLeft).toBe(1);
    // asking again earlier still shows the bucket as it was: the snapshot wrote nothing
    expect(m.throttleSnapshot(30_000, { limit: 1 }).throttles[0]?.messagesLeft).toBe(0);
    expect(m.acquire('a', 'gmail', 'message', 30_000, 30_000).status).toBe('error');
  });

  it('is bounded: the busiest `limit` first, then by key; a key filter; a member cap', () => {
    const m = new ThrottleManager();
    for (let i = 0; i < 5000; i++) m.declare(`s#${i % 7}`, decl({ key: `k${String(i).padStart(4, '0')}`, maxConnections: 5 }), 0);
    m.acquire('s#0', 'k4998', 'connection', 0, 10); // 1 in use (4998 % 7 == 0)
    for (let i = 0; i < 3; i++) m.acquire('s#1', 'k0001', 'connection', 0, 10); // 3 in use
    const snap = m.throttleSnapshot(0, { limit: 4 });
    expect(snap).toMatchObject({ total: 5000, matched: 5000 });
    expect(snap.throttles.map((t) => t.key)).toEqual(['k0001', 'k4998', 'k0000', 'k0002']);
    const filtered = m.throttleSnapshot(0, { limit: 100, key: 'k49' });
    expect(filtered.matched).toBe(100);
    expect(filtered.throttles).toHaveLength(100);
    expect(filtered.throttles[0]?.key).toBe('k4998');
    expect(m.throttleSnapshot(0, { limit: 0 }).throttles).toEqual([]);

    m.declare('t#1', decl({ key: 'shared' }), 0);
    m.declare('t#2', decl({ key: 'shared' }), 0);
    m.declare('t#3', decl({ key: 'shared' }), 0);
    const capped = m.throttleSnapshot(0, { limit: 1, key: 'shared', maxMembers: 2 }).throttles[0];
    expect(capped?.memberCount).toBe(3);
    expect(capped?.members.map((x) => x.session)).toEqual(['t#1', 't#2']);
  });

  it('shows an undeclared member and a throttle kept alive by a delivery lease only', () => {
    const m = new ThrottleManager();
    m.declare('derived', decl({ key: 'd' }), 0);
    const r = m.acquire('derived', 'd', 'connection', 0, 0, { heldByDelivery: true });
    expect(r.status).toBe('granted');
    m.undeclare('derived', 'd', 0);
    const view = m.throttleSnapshot(0, { limit: 5 }).throttles[0];
    expect(view).toMatchObject({ key: 'd', declared: 0, connectionsInUse: 1, memberCount: 1 });
    expect(view?.members[0]).toEqual({ session: 'derived', declaration: null, weight: 1 });
  });
});

describe('throttle status lines and JSON', () => {
  it('renders sessions by name with their backlog, and says what was left out', () => {
    const m = new ThrottleManager();
    m.declare('server-a#1', decl({ key: 'example.com@192.0.2.10', maxConnections: 4, maxMessagesPerHour: 6000 }), 0);
    m.declare('derived', decl({ key: 'derived:192.0.2.10>198.51.100.7:25' }), 0);
    m.setBacklog('server-a#1', 12);
    const limit = throttleLimit(1);
    const json = throttlesJson(m.throttleSnapshot(0, { limit }), { key: '', limit }, (id) => (id === 'server-a#1' ? { name: 'server-a', backlog: { ram: 2, bounce: 0, disk: 10 } } : null));
    expect(json).toEqual({
      total: 2, matched: 2, key: '', limit: 1,
      throttles: [{
        key: 'derived:192.0.2.10>198.51.100.7:25', mode: 'sum', source_ip: '192.0.2.10', max_connections: 2, max_messages_per_hour: 3600, declared: 1,
        connections_in_use: 0, messages_left: 60, message_burst: 60, waiting_connections: 0, waiting_messages: 0, sessions_total: 1,
        sessions: [{ session: 'derived', session_id: 'derived', declaration: { mode: 'sum', source_ip: '192.0.2.10', max_connections: 2, max_messages_per_hour: 3600 }, backlog: null, weight: 1 }],
      }],
    });
    expect(throttleLines(json)).toEqual([
      'throttle(derived:192.0.2.10>198.51.100.7:25): mode=sum source=192.0.2.10 connections=0/2 messages_left=60/60 max_messages_per_hour=3600 waiting(connections=0 messages=0) sessions=1',
      'throttle(derived:192.0.2.10>198.51.100.7:25):   session(derived): declared(mode=sum source=192.0.2.10 max_connections=2 max_messages_per_hour=3600) backlog=none weight=1',
      `… 1 more throttles (1 of 2 shown, busiest first; of 2 in all): use --limit=N (at most ${MAX_THROTTLE_LIMIT}) or --key=TEXT`,
    ]);
    const all = throttlesJson(m.throttleSnapshot(0, { limit: 10, key: 'example' }), { key: 'example', limit: 10 }, (id) => (id === 'server-a#1' ? { name: 'server-a', backlog: { ram: 2, bounce: 0, disk: 10 } } : null));
    expect(throttleLines(all)).toEqual([
      'throttle(example.com@192.0.2.10): mode=sum source=192.0.2.10 connections=0/4 messages_left=100/100 max_messages_per_hour=6000 waiting(connections=0 messages=0) sessions=1',
      'throttle(example.com@192.0.2.10):   session(server-a): declared(mode=sum source=192.0.2.10 max_connections=4 max_messages_per_hour=6000) backlog(ram=2 bounce=0 disk=10) weight=12',
      'throttles: 1 matching "example" shown (of 2 in all)',
    ]);
  });

  it('clamps the limit', () => {
    expect(throttleLimit(undefined)).toBe(100);
    expect(throttleLimit(5)).toBe(5);
    expect(throttleLimit(10 ** 9)).toBe(MAX_THROTTLE_LIMIT);
    expect(throttleLimit(-3)).toBe(0);
  });
});
