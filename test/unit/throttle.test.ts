import { describe, expect, it } from 'vitest';
import { messageBurst, reconcile, ThrottleManager, type Declaration, type Lease, type ThrottleEvent } from '../../src/throttle/manager.js';

const decl = (over: Partial<Declaration> = {}): Declaration => ({
  key: 'gmail', sourceIp: '192.0.2.10', maxConnections: 2, maxMessagesPerHour: 3600, mode: 'sum', ...over,
});
const HOUR = 3_600_000;

/** A deterministic pseudo-random generator, so a failing run can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

describe('reconcile', () => {
  it('sum adds the per-server limits', () => {
    expect(reconcile([decl({ maxConnections: 2, maxMessagesPerHour: 100 }), decl({ maxConnections: 3, maxMessagesPerHour: 50 })])).toMatchObject({
      mode: 'sum', maxConnections: 5, maxMessagesPerHour: 150,
    });
  });
  it('average is one cluster-wide limit (the mean of what the MTAs state)', () => {
    expect(reconcile([decl({ mode: 'average', maxConnections: 4, maxMessagesPerHour: 1000 }), decl({ mode: 'average', maxConnections: 4, maxMessagesPerHour: 1000 })])).toMatchObject({
      mode: 'average', maxConnections: 4, maxMessagesPerHour: 1000,
    });
    expect(reconcile([decl({ mode: 'average', maxConnections: 2 }), decl({ mode: 'average', maxConnections: 5 })])?.maxConnections).toBe(4); // round(3.5)
  });
  it('the latest declaration decides the mode', () => {
    expect(reconcile([decl({ mode: 'sum', maxConnections: 2 }), decl({ mode: 'average', maxConnections: 4 })])).toMatchObject({ mode: 'average', maxConnections: 3 });
    expect(reconcile([])).toBeNull();
  });
});

describe('ThrottleManager', () => {
  it('recomputes the limit when sessions declare, change and leave', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 2 }), 0);
    m.declare('b', decl({ maxConnections: 3 }), 0);
    expect(m.limits('gmail')?.maxConnections).toBe(5);
    m.declare('a', decl({ maxConnections: 10 }), 0);
    expect(m.limits('gmail')?.maxConnections).toBe(13);
    m.leave('b', 0);
    expect(m.limits('gmail')?.maxConnections).toBe(10);
    m.leave('a', 0);
    expect(m.limits('gmail')).toBeNull();
    expect(m.throttleCount).toBe(0);
  });

  it('refuses requests for a throttle the session did not declare', () => {
    const m = new ThrottleManager();
    m.declare('a', decl(), 0);
    expect(m.acquire('b', 'gmail', 'connection', 0, 1000)).toMatchObject({ status: 'error', code: 553 });
    expect(m.acquire('a', 'yahoo', 'connection', 0, 1000)).toMatchObject({ status: 'error', code: 553 });
  });

  it('queues past the limit, grants on release, times out at the deadline', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 1 }), 0);
    const first = m.acquire('a', 'gmail', 'connection', 0, 100);
    expect(first.status).toBe('granted');
    const second = m.acquire('a', 'gmail', 'connection', 0, 100);
    const third = m.acquire('a', 'gmail', 'connection', 0, 50);
    expect(second.status).toBe('queued');
    expect(m.nextWakeup(0)).toBe(50);
    expect(m.tick(50)).toEqual([{ type: 'timeout', waitId: (third as { waitId: number }).waitId, session: 'a', key: 'gmail', kind: 'connection' }]);
    const events = m.release((first as { lease: Lease }).lease.id, 60);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'granted', waitId: (second as { waitId: number }).waitId });
    expect(m.inUse('gmail')).toBe(1);
    expect(m.acquire('a', 'gmail', 'connection', 70, 70)).toMatchObject({ status: 'error', code: 451 });
  });

  it('returns every lease and wait of a session that leaves, and serves the others', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 1 }), 0);
    m.declare('b', decl({ maxConnections: 1 }), 0);
    m.acquire('a', 'gmail', 'connection', 0, 1000);
    m.acquire('a', 'gmail', 'connection', 0, 1000);
    const own = m.acquire('a', 'gmail', 'connection', 0, 1000); // queued
    const waiting = m.acquire('b', 'gmail', 'connection', 0, 1000);
    expect(waiting.status).toBe('queued');
    const events = m.leave('a', 10);
    // a's wait is reported cancelled; the limit drops to b's 1; a's two slots are back, b's wait is granted
    expect(events).toEqual([
      { type: 'cancelled', waitId: (own as { waitId: number }).waitId, session: 'a', key: 'gmail', kind: 'connection' },
      expect.objectContaining({ type: 'granted', waitId: (waiting as { waitId: number }).waitId }),
    ]);
    expect(m.inUse('gmail')).toBe(1);
    expect(m.waiting('gmail')).toBe(0);
    expect(m.leaseCount).toBe(1);
  });

  it('rate-limits messages with a one-minute burst', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxMessagesPerHour: 600 }), 0); // 10 a minute, one per 6 s
    expect(messageBurst(600)).toBe(10);
    for (let i = 0; i < 10; i++) expect(m.acquire('a', 'gmail', 'message', 0, HOUR).status).toBe('granted');
    const next = m.acquire('a', 'gmail', 'message', 0, HOUR);
    expect(next.status).toBe('queued');
    expect(m.nextWakeup(0)).toBe(6000);
    expect(m.tick(5999)).toEqual([]);
    expect(m.tick(6000)).toEqual([expect.objectContaining({ type: 'granted' })]);
    // over an hour, never more than the rate plus the burst
    let granted = 11;
    for (let t = 6000; t <= HOUR; t += 1000) {
      if (m.acquire('a', 'gmail', 'message', t, t).status === 'granted') granted++;
    }
    expect(granted).toBeLessThanOrEqual(600 + 10);
    expect(granted).toBeGreaterThanOrEqual(600);
  });

  it('a lone busy MTA can use the whole cluster limit', () => {
    const m = new ThrottleManager();
    for (const s of ['a', 'b', 'c']) m.declare(s, decl({ maxConnections: 4 }), 0); // sum: 12
    m.setBacklog('a', 5000);
    const results = Array.from({ length: 20 }, () => m.acquire('a', 'gmail', 'connection', 0, 1000));
    expect(results.filter((r) => r.status === 'granted')).toHaveLength(12);
    expect(m.inUse('gmail')).toBe(12);
  });

  function shares(backlogs: Record<string, number>, rounds: number): Record<string, number> {
    const m = new ThrottleManager();
    const sessions = Object.keys(backlogs);
    for (const s of sessions) {
      m.declare(s, decl({ maxConnections: 2 }), 0);
      m.setBacklog(s, backlogs[s] as number);
    }
    const got: Record<string, number> = Object.fromEntries(sessions.map((s) => [s, 0]));
    const held: number[] = [];
    const owner = new Map<number, string>();
    const take = (r: ReturnType<ThrottleManager['acquire']> | ThrottleEvent, s: string): void => {
      const lease = 'lease' in r ? r.lease : undefined;
      if (lease !== undefined) {
        got[lease.session] = (got[lease.session] ?? 0) + 1;
        held.push(lease.id);
      }
      if ('waitId' in r && !('lease' in r)) owner.set(r.waitId, s);
    };
    // every session always keeps 8 requests waiting; each round one slot is released
    for (const s of sessions) for (let i = 0; i < 8; i++) take(m.acquire(s, 'gmail', 'connection', 0, 1e12), s);
    for (let round = 0; round < rounds; round++) {
      const id = held.shift() as number;
      const events = m.release(id, round);
      for (const e of events) {
        take(e, '');
        if (e.type === 'granted') take(m.acquire(e.lease.session, 'gmail', 'connection', round, 1e12), e.lease.session);
      }
    }
    return got;
  }

  it('equal backlogs get equal shares (±10 %)', () => {
    const got = shares({ a: 100, b: 100, c: 100 }, 3000);
    const total = Object.values(got).reduce((x, y) => x + y, 0);
    for (const n of Object.values(got)) expect(Math.abs(n / total - 1 / 3)).toBeLessThan(0.1 / 3);
  });

  it('shares follow reported backlog', () => {
    const got = shares({ a: 300, b: 100 }, 4000);
    expect((got.a as number) / (got.b as number)).toBeGreaterThan(2.7);
    expect((got.a as number) / (got.b as number)).toBeLessThan(3.3);
  });

  it('a new backlog report re-tags requests already waiting (no starvation under a stale weight)', () => {
    const m = new ThrottleManager();
    for (const s of ['a', 'b']) m.declare(s, decl({ maxConnections: 1 }), 0); // sum: 2
    const first = m.acquire('x', 'gmail', 'connection', 0, 0);
    expect(first.status).toBe('error'); // (x declared nothing)
    const held = [m.acquire('a', 'gmail', 'connection', 0, 1e9), m.acquire('b', 'gmail', 'connection', 0, 1e9)];
    // a queues 8 before it has reported any backlog (weight 1), then both report the same backlog
    const waitOwner = new Map<number, string>();
    for (let i = 0; i < 8; i++) {
      const r = m.acquire('a', 'gmail', 'connection', 0, 1e9);
      if (r.status === 'queued') waitOwner.set(r.waitId, 'a');
    }
    m.setBacklog('a', 100);
    m.setBacklog('b', 100);
    for (let i = 0; i < 8; i++) {
      const r = m.acquire('b', 'gmail', 'connection', 0, 1e9);
      if (r.status === 'queued') waitOwner.set(r.waitId, 'b');
    }
    // release one slot at a time: equal weights must alternate, not serve b's 8 first
    let lease = held.map((h) => (h.status === 'granted' ? h.lease.id : 0))[0] as number;
    const order: string[] = [];
    for (let i = 0; i < 8; i++) {
      const granted = m.release(lease, 1).find((e) => e.type === 'granted');
      if (granted?.type !== 'granted') throw new Error('nothing granted');
      order.push(granted.lease.session);
      lease = granted.lease.id;
    }
    expect(order.filter((s) => s === 'a')).toHaveLength(4);
  });

  it('never exceeds the effective limit under random concurrent use by several sessions', () => {
    const random = rng(20261125);
    const m = new ThrottleManager();
    const sessions = ['a', 'b', 'c', 'd'];
    const leases: Lease[] = [];
    let now = 0;
    const check = (events: readonly ThrottleEvent[] | ReturnType<ThrottleManager['acquire']>): void => {
      for (const e of Array.isArray(events) ? events : [events]) {
        if ('lease' in e && e.lease !== undefined) {
          leases.push(e.lease);
          const limit = m.limits('gmail')?.maxConnections ?? 0;
          expect(m.inUse('gmail')).toBeLessThanOrEqual(limit);
        }
      }
    };
    for (let step = 0; step < 20_000; step++) {
      now += Math.floor(random() * 5);
      const s = sessions[Math.floor(random() * sessions.length)] as string;
      const op = random();
      if (op < 0.05) check(m.declare(s, decl({ maxConnections: 1 + Math.floor(random() * 4), mode: random() < 0.5 ? 'sum' : 'average' }), now).events);
      else if (op < 0.5) {
        if (m.limits('gmail') !== null) check(m.acquire(s, 'gmail', 'connection', now, now + Math.floor(random() * 50)));
      } else if (op < 0.9) {
        const lease = leases.splice(Math.floor(random() * leases.length), 1)[0];
        if (lease !== undefined) check(m.release(lease.id, now));
      } else if (op < 0.92) {
        check(m.leave(s, now));
        for (let i = leases.length - 1; i >= 0; i--) if (leases[i]?.session === s) leases.splice(i, 1);
      } else {
        check(m.tick(now));
      }
      const held = leases.filter((l) => m.lease(l.id) !== undefined).length;
      expect(m.inUse('gmail')).toBe(held);
    }
  });
});
