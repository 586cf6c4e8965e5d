import { describe, expect, it } from 'vitest';
import { ThrottleManager, type AcquireResult, type Declaration } from '../../src/throttle/manager.js';

const decl = (over: Partial<Declaration> = {}): Declaration => ({
  key: 'gmail', sourceIp: '192.0.2.10', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'sum', ...over,
});

function leaseId(r: AcquireResult): number {
  if (r.status !== 'granted') throw new Error(`not granted: ${JSON.stringify(r)}`);
  return r.lease.id;
}
function waitId(r: AcquireResult): number {
  if (r.status !== 'queued') throw new Error(`not queued: ${JSON.stringify(r)}`);
  return r.waitId;
}

describe('leases held by deliveries', () => {
  it('survive the leave of the declaring session: a reconnect under a new id sees the slot in use', () => {
    const m = new ThrottleManager();
    m.declare('mta1#1', decl({ maxConnections: 1 }), 0);
    const tunnel = m.acquire('mta1#1', 'gmail', 'connection', 0, 1000, { heldByDelivery: true });
    expect(tunnel).toMatchObject({ status: 'granted', lease: { heldByDelivery: true } });
    expect(m.leave('mta1#1', 10)).toEqual([]);
    // the tunnel is still open: its slot still counts, and the throttle keeps its last limits
    expect(m.inUse('gmail')).toBe(1);
    expect(m.limits('gmail')?.maxConnections).toBe(1);
    expect(m.lease(leaseId(tunnel))).toBeDefined();
    // the MTA reconnects (a new session id) and declares the same key
    m.declare('mta1#2', decl({ maxConnections: 1 }), 20);
    expect(m.inUse('gmail')).toBe(1);
    const second = m.acquire('mta1#2', 'gmail', 'connection', 20, 5000, { heldByDelivery: true });
    const wait = waitId(second);
    expect(m.tick(100)).toEqual([]);
    // only the end of the first tunnel lets the second in
    const events = m.release(leaseId(tunnel), 200);
    expect(events).toEqual([expect.objectContaining({ type: 'granted', waitId: wait, lease: expect.objectContaining({ session: 'mta1#2', heldByDelivery: true }) })]);
    expect(m.inUse('gmail')).toBe(1);
  });

  it('keep the throttle alive with no declaration left, and it goes with the last release', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 2 }), 0);
    const t1 = leaseId(m.acquire('a', 'gmail', 'connection', 0, 0, { heldByDelivery: true }));
    const t2 = leaseId(m.acquire('a', 'gmail', 'connection', 0, 0, { heldByDelivery: true }));
    m.leave('a', 1);
    expect(m.throttleCount).toBe(1);
    expect(m.inUse('gmail')).toBe(2);
    expect(m.release(t1, 2)).toEqual([]);
    expect(m.inUse('gmail')).toBe(1);
    expect(m.throttleCount).toBe(1);
    m.release(t2, 3);
    expect(m.inUse('gmail')).toBe(0);
    expect(m.throttleCount).toBe(0);
    expect(m.leaseCount).toBe(0);
  });

  it("a control session's own leases (no flag) still go when it leaves, its deliveries' stay", () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 3 }), 0);
    const own = m.acquire('a', 'gmail', 'connection', 0, 0);
    expect(own).toMatchObject({ status: 'granted', lease: { heldByDelivery: false } });
    const tunnel = leaseId(m.acquire('a', 'gmail', 'connection', 0, 0, { heldByDelivery: true }));
    expect(m.inUse('gmail')).toBe(2);
    m.leave('a', 1);
    expect(m.lease(leaseId(own))).toBeUndefined();
    expect(m.lease(tunnel)).toBeDefined();
    expect(m.inUse('gmail')).toBe(1);
    expect(m.leaseCount).toBe(1);
  });

  it('a delivery slot granted after waiting is held by the delivery too', () => {
    const m = new ThrottleManager();
    m.declare('a', decl({ maxConnections: 1 }), 0);
    const first = leaseId(m.acquire('a', 'gmail', 'connection', 0, 0));
    const wait = waitId(m.acquire('a', 'gmail', 'connection', 0, 1000, { heldByDelivery: true }));
    const [granted] = m.release(first, 1);
    expect(granted).toMatchObject({ type: 'granted', waitId: wait, lease: { heldByDelivery: true } });
    m.leave('a', 2);
    expect(m.inUse('gmail')).toBe(1);
  });
});

describe('lease bookkeeping under churn', () => {
  // young leases sit in a direct-mapped table and a session's own leases in a linked list: a
  // long-held lease must survive thousands of newer ids (moved to the old table), releases in any
  // order must unlink the right ones, and a leave must return exactly what is still held
  it('keeps every slot accounted for: long-held leases, releases in any order, then a leave', () => {
    const m = new ThrottleManager();
    m.declare('a#1', decl({ maxConnections: 100_000 }), 0);
    m.declare('b#1', decl({ maxConnections: 100_000 }), 0);
    const old = [leaseId(m.acquire('a#1', 'gmail', 'connection', 0, 0)), leaseId(m.acquire('b#1', 'gmail', 'connection', 0, 0))];
    const held = new Map<number, string>();
    let seed = 7;
    const random = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < 20_000; i++) {
      const session = random() < 0.5 ? 'a#1' : 'b#1';
      held.set(leaseId(m.acquire(session, 'gmail', 'connection', 0, 0)), session);
      // release a random held one (not always the newest: the list is unlinked in the middle too)
      if (held.size > 40 || random() < 0.45) {
        const ids = [...held.keys()];
        const id = ids[Math.floor(random() * ids.length)] as number;
        expect(m.lease(id)?.session).toBe(held.get(id));
        expect(m.release(id, 0)).toEqual([]);
        expect(m.lease(id)).toBeUndefined();
        held.delete(id);
      }
    }
    // the two first leases outlived 20 000 newer ids
    expect(m.lease(old[0] as number)?.session).toBe('a#1');
    expect(m.lease(old[1] as number)?.session).toBe('b#1');
    expect(m.inUse('gmail')).toBe(held.size + 2);
    expect(m.leaseCount).toBe(held.size + 2);
    const ofA = [...held.values()].filter((s) => s === 'a#1').length;
    m.leave('a#1', 0);
    expect(m.inUse('gmail')).toBe(held.size - ofA + 1);
    expect(m.leaseCount).toBe(held.size - ofA + 1);
    expect(m.lease(old[0] as number)).toBeUndefined();
    for (const [id, s] of held) expect(m.lease(id)?.session).toBe(s === 'a#1' ? undefined : s);
    // a release of a lease that went with its session changes nothing
    expect(m.release(old[0] as number, 0)).toEqual([]);
    expect(m.inUse('gmail')).toBe(held.size - ofA + 1);
    m.leave('b#1', 0);
    expect(m.leaseCount).toBe(0);
    expect(m.inUse('gmail')).toBe(0);
  });
});
