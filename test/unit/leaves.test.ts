import { describe, expect, it } from 'vitest';
import { LeaveQueue } from '../../src/server/leaves.js';
import { ThrottleService } from '../../src/throttle/service.js';

const decl = { key: 'k', sourceIp: '192.0.2.1', maxConnections: 1, maxMessagesPerHour: 100, mode: 'sum' as const };
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('LeaveQueue', () => {
  it('leaves the first session at once and the rest of a burst over the following turns, each whole', async () => {
    let now = 0;
    const svc = new ThrottleService(() => now);
    for (const s of ['a', 'b', 'c']) svc.declare(s, { ...decl, maxConnections: 2 });
    expect(svc.manager.limits('k')?.maxConnections).toBe(6);
    // a clock that says every leave costs 6 ms: one fits in the 10 ms budget of a turn, two do not
    const q = new LeaveQueue(svc, () => (now += 6));
    q.leave('a');
    q.leave('b');
    q.leave('c');
    expect(svc.manager.limits('k')?.maxConnections).toBe(4); // a left at once
    expect(q.length).toBe(2);
    await turn();
    expect(q.length).toBe(1);
    await turn();
    expect(q.length).toBe(0);
    expect(svc.manager.limits('k')).toBeNull();
    svc.stop();
  });

  it('runs a queued leave at once when its session is replaced, and all of them on flush', () => {
    const svc = new ThrottleService(() => 0);
    for (const s of ['a', 'b', 'c']) svc.declare(s, decl);
    const q = new LeaveQueue(svc);
    q.leave('a');
    q.leave('b');
    q.leave('c');
    q.now('c');
    expect(svc.manager.limits('k')?.maxConnections).toBe(1); // b still counts
    q.flush();
    expect(svc.manager.limits('k')).toBeNull();
    svc.stop();
  });
});
