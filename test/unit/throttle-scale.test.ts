// Correctness at scale (100 000 waiters, 100 000 keys). Timing is bench/stalls.mjs's business.
import { describe, expect, it } from 'vitest';
import { ThrottleManager, type AcquireResult, type Declaration, type ThrottleEvent } from '../../src/throttle/manager.js';

const decl = (key: string, over: Partial<Declaration> = {}): Declaration => ({
  key, sourceIp: '192.0.2.10', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'sum', ...over,
});

function queued(r: AcquireResult): number {
  if (r.status !== 'queued') throw new Error(`not queued: ${JSON.stringify(r)}`);
  return r.waitId;
}

describe('ThrottleManager at scale', () => {
  it('grants 100 000 waiters of 100 sessions in fair order (equal backlogs: round robin, FIFO within a session)', () => {
    const m = new ThrottleManager();
    const sessions = Array.from({ length: 100 }, (_, i) => `s${i}`);
    for (const s of sessions) {
      m.declare(s, decl('gmail', { mode: 'average' }), 0); // one cluster-wide slot
      m.setBacklog(s, 100);
    }
    const first = m.acquire('s0', 'gmail', 'connection', 0, 0);
    if (first.status !== 'granted') throw new Error('first not granted');
    const owner = new Map<number, string>();
    // each session queues its 1000 in one go, one session after the other
    for (const s of sessions) for (let i = 0; i < 1000; i++) owner.set(queued(m.acquire(s, 'gmail', 'connection', 0, 1e12)), s);
    expect(m.waiting('gmail')).toBe(100_000);
    expect(m.waiterCount).toBe(100_000);
    const lastWait = new Map<string, number>();
    let lease = first.lease.id;
    let round = new Set<string>();
    for (let n = 0; n < 100_000; n++) {
      const events = m.release(lease, 1 + n);
      const e = events[0];
      if (events.length !== 1 || e?.type !== 'granted') throw new Error(`release ${n}: ${JSON.stringify(events)}`);
      const s = e.lease.session;
      // the right owner, FIFO within a session, and every block of 100 grants serves each session once
      if (owner.get(e.waitId) !== s || e.waitId <= (lastWait.get(s) ?? 0) || round.has(s)) throw new Error(`grant ${n} out of order: ${s} ${e.waitId}`);
      lastWait.set(s, e.waitId);
      round.add(s);
      if (round.size === 100) round = new Set();
      lease = e.lease.id;
    }
    expect(m.waiting('gmail')).toBe(0);
    expect(m.inUse('gmail')).toBe(1);
    expect(m.nextWakeup(0)).toBeNull();
  });

  it('100 000 waiters on 100 000 keys each time out exactly once, at their deadline, never before', () => {
    const m = new ThrottleManager();
    const keys = 100_000;
    const deadlineOf = new Map<number, number>();
    for (let k = 0; k < keys; k++) {
      const key = `k${k}`;
      m.declare('a', decl(key), 0);
      m.acquire('a', key, 'connection', 0, 0); // takes the only slot
      // deadlines spread over 1..1000, not in key order
      const deadline = 1 + ((k * 7919) % 1000);
      deadlineOf.set(queued(m.acquire('a', key, 'connection', 0, deadline)), deadline);
    }
    expect(m.throttleCount).toBe(keys);
    const seen = new Set<number>();
    const problems: string[] = [];
    const collect = (now: number, events: ThrottleEvent[]): void => {
      for (const e of events) {
        const deadline = deadlineOf.get(e.waitId);
        if (e.type !== 'timeout' || deadline === undefined || deadline > now || seen.has(e.waitId)) problems.push(`${now}: ${JSON.stringify(e)}`);
        seen.add(e.waitId);
      }
    };
    for (let now = 0; now <= 1000; now += 1 + (now % 7)) {
      const next = m.nextWakeup(now);
      collect(now, m.tick(now));
      // nextWakeup names the earliest deadline left: nothing is due just before it
      if (next !== null && next > now) {
        if (m.tick(next - 1e-6).length !== 0) problems.push(`${now}: something due before nextWakeup ${next}`);
        if (m.nextWakeup(now) !== next) problems.push(`${now}: nextWakeup moved`);
      }
    }
    collect(1000, m.tick(1000));
    expect(problems).toEqual([]);
    expect(seen.size).toBe(keys);
    expect(m.waiterCount).toBe(0);
    expect(m.nextWakeup(1000)).toBeNull();
    expect(m.leaseCount).toBe(keys);
  });

  it('a session leaving with 1000 waiters among 100 000 removes exactly its own', () => {
    const m = new ThrottleManager();
    const sessions = Array.from({ length: 100 }, (_, i) => `s${i}`);
    for (const s of sessions) m.declare(s, decl('gmail', { mode: 'average' }), 0);
    m.acquire('s0', 'gmail', 'connection', 0, 0);
    const mine = new Set<number>();
    for (const s of sessions) for (let i = 0; i < 1000; i++) {
      const id = queued(m.acquire(s, 'gmail', 'connection', 0, 1e12));
      if (s === 's42') mine.add(id);
    }
    const events = m.leave('s42', 1);
    const removed = events.filter((e) => e.type === 'cancelled').map((e) => e.waitId);
    expect(new Set(removed)).toEqual(mine);
    expect(m.waiting('gmail')).toBe(99_000);
  });

  it('100 000 waits due at once expire over a few bounded ticks, each exactly once, nextWakeup saying "now" meanwhile', () => {
    const m = new ThrottleManager();
    m.declare('a', decl('gmail'), 0);
    m.acquire('a', 'gmail', 'connection', 0, 0);
    const ids = new Set<number>();
    for (let i = 0; i < 100_000; i++) ids.add(queued(m.acquire('a', 'gmail', 'connection', 0, 500)));
    const seen = new Set<number>();
    let ticks = 0;
    let duplicates = 0;
    do {
      for (const e of m.tick(600)) {
        if (seen.has(e.waitId) || !ids.has(e.waitId)) duplicates++;
        seen.add(e.waitId);
      }
      ticks++;
    } while (m.nextWakeup(600) === 600 && ticks < 1000);
    expect(duplicates).toBe(0);
    expect(seen.size).toBe(100_000);
    expect(ticks).toBeGreaterThan(1);
    expect(m.nextWakeup(600)).toBeNull();
  });
});
