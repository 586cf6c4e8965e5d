import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Declaration } from '../../src/throttle/manager.js';
import { ThrottleService, type AcquireOutcome } from '../../src/throttle/service.js';

const decl = (over: Partial<Declaration> = {}): Declaration => ({
  key: 'gmail', sourceIp: '192.0.2.10', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'sum', ...over,
});

describe('ThrottleService', () => {
  let now = 0;
  let service: ThrottleService;
  beforeEach(() => {
    vi.useFakeTimers();
    now = 0;
    service = new ThrottleService(() => now);
  });
  afterEach(() => {
    service.stop();
    vi.useRealTimers();
  });
  const advance = (ms: number): void => {
    now += ms;
    vi.advanceTimersByTime(ms);
  };

  it('refuses with 421 the waiting requests (deliveries included) of a session that leaves, and forgets them', () => {
    service.declare('mta1#1', decl());
    const outcomes: AcquireOutcome[] = [];
    service.acquire('mta1#1', 'gmail', 'connection', 10_000, (o) => outcomes.push(o), { heldByDelivery: true });
    service.acquire('mta1#1', 'gmail', 'connection', 10_000, (o) => outcomes.push(o), { heldByDelivery: true });
    service.acquire('mta1#1', 'gmail', 'connection', 10_000, (o) => outcomes.push(o));
    expect(outcomes).toHaveLength(1);
    expect(service.waitingCount).toBe(2);
    service.leave('mta1#1');
    expect(outcomes.slice(1)).toEqual([
      { ok: false, code: 421, message: expect.stringContaining('throttle gmail: the control session that declared it closed') },
      { ok: false, code: 421, message: expect.stringContaining('throttle gmail') },
    ]);
    expect(service.waitingCount).toBe(0);
    expect(service.manager.waiterCount).toBe(0);
    // the delivery's slot is still held
    expect(service.manager.inUse('gmail')).toBe(1);
  });

  it('a reconnected session waits for the slot of a tunnel opened under its previous session', () => {
    service.declare('mta1#1', decl());
    let tunnel = 0;
    service.acquire('mta1#1', 'gmail', 'connection', 1000, (o) => (tunnel = o.ok ? o.lease.id : -1), { heldByDelivery: true });
    service.leave('mta1#1');
    service.declare('mta1#2', decl());
    const second: AcquireOutcome[] = [];
    service.acquire('mta1#2', 'gmail', 'connection', 10_000, (o) => second.push(o), { heldByDelivery: true });
    advance(5000);
    expect(second).toEqual([]);
    service.release(tunnel);
    expect(second).toEqual([expect.objectContaining({ ok: true })]);
    expect(service.waitingCount).toBe(0);
  });

  it('keeps no callback once its waiter is gone: granted, timed out, cancelled or left', () => {
    service.declare('a', decl());
    service.declare('b', decl()); // sum: 2 slots
    const outcomes: AcquireOutcome[] = [];
    const held: number[] = [];
    const take = (o: AcquireOutcome): void => {
      outcomes.push(o);
      if (o.ok) held.push(o.lease.id);
    };
    service.acquire('a', 'gmail', 'connection', 0, take);
    service.acquire('a', 'gmail', 'connection', 0, take);
    const cancellers = Array.from({ length: 300 }, (_, i) => service.acquire(i % 2 === 0 ? 'a' : 'b', 'gmail', 'connection', 100 + i, take));
    expect(service.waitingCount).toBe(300);
    for (let i = 0; i < 300; i += 3) cancellers[i]?.(); // 100 cancelled
    expect(service.waitingCount).toBe(200);
    service.release(held.shift() as number); // one granted
    expect(service.waitingCount).toBe(199);
    advance(150); // the earliest deadlines pass
    const timedOut = outcomes.filter((o) => !o.ok && o.code === 451).length;
    expect(timedOut).toBeGreaterThan(0);
    expect(service.waitingCount).toBe(199 - timedOut);
    service.leave('b'); // b's waits are refused (and its lease goes, granting one of a's)
    expect(outcomes.some((o) => !o.ok && o.code === 421)).toBe(true);
    advance(1000); // the rest time out
    expect(service.waitingCount).toBe(0);
    expect(service.manager.waiterCount).toBe(0);
    // cancelling after the end is harmless
    for (const c of cancellers) c();
    expect(service.waitingCount).toBe(0);
  });
});
