// The client's pending-request table (an IdMap by tag) under thousands of requests in flight on one
// control session, against a real daemon: every reply reaches the request whose tag it carries
// (requests of different kinds interleaved, waits answered out of order), none is lost, and every
// lease is released at the end (the daemon's own status says 0 in use, nothing waiting).
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient, ProxyError } from '../../src/client/index.js';
import { freePort, SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

const running: RunningDaemon[] = [];
const clients: ControlClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(running.splice(0).map((d) => d.stop()));
});

const egress = '[egress]\nsource_ips = ["127.0.0.2"]\nports = [25]\n';

/** A fresh daemon and one control session to it (both closed after the test). */
async function daemonAndSession(name: string): Promise<{ d: RunningDaemon; c: ControlClient }> {
  const port = await freePort();
  const d = await startDaemon({ listen: `127.0.0.1:${port}`, extra: egress });
  running.push(d);
  const c = await ControlClient.connect({ host: '127.0.0.1', port, name, secret: SECRET });
  clients.push(c);
  return { d, c };
}

interface ThrottleJson { key: string; connections_in_use: number; max_connections: number; waiting_connections: number; waiting_messages: number }

async function throttles(d: RunningDaemon): Promise<Map<string, ThrottleJson>> {
  const r = await d.cli(['status', '--throttles', '--json']);
  expect(r.code, r.stderr).toBe(0);
  const view = JSON.parse(r.stdout) as { throttles: ThrottleJson[] };
  return new Map(view.throttles.map((t) => [t.key, t]));
}

/** what a request must come back with: its own kind of answer, never another request's */
type Outcome = { kind: 'lease'; id: number } | { kind: 'message' } | { kind: 'pong' } | { kind: 'refused'; code: number | null };

async function outcome(p: Promise<unknown>, kind: 'acquire' | 'message' | 'ping'): Promise<Outcome> {
  try {
    const v = await p;
    if (kind === 'ping') return { kind: 'pong' };
    if (kind === 'message') {
      expect(v).toBeNull();
      return { kind: 'message' };
    }
    expect(typeof v).toBe('number');
    return { kind: 'lease', id: v as number };
  } catch (err) {
    expect(err).toBeInstanceOf(ProxyError);
    return { kind: 'refused', code: (err as ProxyError).responseCode };
  }
}

describe('ControlClient: thousands of requests in flight on one session', () => {
  it('5000 concurrent ACQUIREs interleaved with other requests: each reply reaches its own request; all released, 0 in use', async () => {
    const { d, c } = await daemonAndSession('churn-a');
    expect(await c.declare({ key: 'wide', sourceIp: '127.0.0.2', maxConnections: 100_000, maxMessagesPerHour: 100_000_000, mode: 'sum' })).toContain('max_connections=100000');

    for (let round = 0; round < 3; round++) {
      // 5000 ACQUIREs, with a PING, a message token and an ACQUIRE of an undeclared key between them
      const kinds: ('acquire' | 'message' | 'ping' | 'undeclared')[] = [];
      const pending: Promise<Outcome>[] = [];
      for (let i = 0; i < 5000; i++) {
        kinds.push('acquire');
        pending.push(outcome(c.acquire('wide', 'connection', 0), 'acquire'));
        if (i % 7 === 3) {
          const k = (['message', 'ping', 'undeclared'] as const)[i % 3] as 'message' | 'ping' | 'undeclared';
          kinds.push(k);
          if (k === 'message') pending.push(outcome(c.acquire('wide', 'message', 0), 'message'));
          else if (k === 'ping') pending.push(outcome(c.ping(), 'ping'));
          else pending.push(outcome(c.acquire('nowhere', 'connection', 0), 'acquire'));
        }
      }
      const got = await Promise.all(pending);
      const ids: number[] = [];
      got.forEach((o, i) => {
        const k = kinds[i];
        if (k === 'acquire') {
          expect(o.kind, `request ${i} (ACQUIRE wide)`).toBe('lease');
          if (o.kind === 'lease') ids.push(o.id);
        } else if (k === 'message') expect(o, `request ${i} (ACQUIRE message)`).toEqual({ kind: 'message' });
        else if (k === 'ping') expect(o, `request ${i} (PING)`).toEqual({ kind: 'pong' });
        else expect(o, `request ${i} (ACQUIRE undeclared)`).toEqual({ kind: 'refused', code: 553 });
      });
      expect(ids).toHaveLength(5000);
      expect(new Set(ids).size).toBe(5000);
      expect((await throttles(d)).get('wide')?.connections_in_use).toBe(5000);

      // release them all at once, with RELEASEs of ids that are not leases between them
      const rel: Promise<Outcome>[] = [];
      const expectOk: boolean[] = [];
      ids.forEach((id, i) => {
        rel.push(outcome(c.release(id).then(() => 'ok'), 'ping'));
        expectOk.push(true);
        if (i % 11 === 5) {
          rel.push(outcome(c.release(id), 'ping')); // released just before: refused
          expectOk.push(false);
          rel.push(outcome(c.release(999_000_000 + i), 'ping'));
          expectOk.push(false);
        }
      });
      const relGot = await Promise.all(rel);
      relGot.forEach((o, i) => expect(o, `RELEASE ${i}`).toEqual(expectOk[i] === true ? { kind: 'pong' } : { kind: 'refused', code: 550 }));
      const t = (await throttles(d)).get('wide');
      expect(t?.connections_in_use).toBe(0);
    }
    await c.quit();
  }, 60_000);

  it('1000 waiting ACQUIREs on a one-slot throttle, answered out of order between immediate replies: each grant reaches a waiter once', async () => {
    const { d, c } = await daemonAndSession('churn-b');
    await c.declare({ key: 'narrow', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 100_000_000, mode: 'sum' });
    await c.declare({ key: 'wide', sourceIp: '127.0.0.2', maxConnections: 100_000, maxMessagesPerHour: 100_000_000, mode: 'sum' });

    const holder = await c.acquire('narrow', 'connection', 0);
    expect(holder).toBeGreaterThan(0);
    let granted = 0;
    const seen = new Set<number>();
    const waiters: Promise<void>[] = [];
    for (let i = 0; i < 1000; i++) {
      waiters.push(
        c.acquire('narrow', 'connection', 15_000).then(async (id) => {
          expect(typeof id).toBe('number');
          expect(seen.has(id as number), `lease ${id} granted twice`).toBe(false);
          seen.add(id as number);
          granted++;
          await c.release(id as number); // frees the slot for the next waiter
        }),
      );
    }
    // while they wait: 3000 immediate ACQUIREs and RELEASEs on another key cross the tag table
    const wide: number[] = [];
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all(Array.from({ length: 1000 }, () => c.acquire('wide', 'connection', 0)));
      for (const id of got) expect(typeof id).toBe('number');
      wide.push(...(got as number[]));
      await Promise.all((got as number[]).map((id) => c.release(id)));
    }
    expect(new Set(wide).size).toBe(3000);
    expect(granted).toBe(0); // nobody was granted while the holder kept the slot
    const mid = (await throttles(d)).get('narrow');
    expect(mid?.connections_in_use).toBe(1);
    expect(mid?.waiting_connections).toBe(1000);
    await c.release(holder as number);
    await Promise.all(waiters);
    expect(granted).toBe(1000);
    const end = await throttles(d);
    for (const key of ['narrow', 'wide']) {
      expect(end.get(key)?.connections_in_use, key).toBe(0);
      expect(end.get(key)?.waiting_connections, key).toBe(0);
    }
    await c.quit();
  }, 60_000);
});
