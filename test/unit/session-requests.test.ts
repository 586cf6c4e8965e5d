// A control session's ACQUIRE and RELEASE (src/server/session.ts): the usual lines take a fast
// path past the general parser; lines of any other shape must get the general path's answers.
// The session runs over a stand-in socket (it only writes lines and counts; no I/O involved).
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Logger } from '../../src/log/logger.js';
import { LineSplitter } from '../../src/protocol/lines.js';
import { ControlSession } from '../../src/server/session.js';
import { ThrottleService } from '../../src/throttle/service.js';

function session(waitTimeoutMs = 10_000) {
  let written = '';
  const sock = Object.assign(new EventEmitter(), {
    remoteAddress: '127.0.0.1', remotePort: 1, destroyed: false, writable: true, writableLength: 0,
    write(t: string, cb?: () => void) { written += t; cb?.(); return true; },
    pause() {}, resume() {}, destroy() {}, end() {}, destroySoon() {}, setTimeout() {},
  });
  const noop = (): void => {};
  const log = { debug: noop, warn: noop, info: noop, error: noop } as unknown as Logger;
  let now = 0;
  const waits: [string, number, boolean][] = [];
  const throttle = new ThrottleService(() => now, (kind, ms, granted) => waits.push([kind, ms, granted]));
  const s = new ControlSession({
    name: 'mta', socket: sock as unknown as Socket, splitter: new LineSplitter(4096), log, now: () => now, onClose: noop,
    services: { throttle, egress: () => ({ sourceIps: ['192.0.2.1'], throttleWaitTimeoutMs: waitTimeoutMs }) as never, leave: (id) => throttle.leave(id) },
  });
  /** handles the lines, then returns what the session wrote for them (after the microtask flush) */
  const send = async (...lines: string[]): Promise<string[]> => {
    for (const l of lines) s.handleLine(l);
    await null;
    await null;
    const out = written.split('\n').filter((l) => l !== '');
    written = '';
    return out;
  };
  return { s, send, throttle, waits, advance: (ms: number) => (now += ms) };
}

describe('control session ACQUIRE / RELEASE', () => {
  it('answers the usual forms, and every other form as the general parser does', async () => {
    const { send, waits } = session();
    expect(await send('1 DECLARE bench source=192.0.2.1 max_connections=10 max_messages_per_hour=3600 mode=sum')).toEqual([
      '1 250 bench max_connections=10 max_messages_per_hour=3600 mode=sum',
    ]);
    const [granted] = await send('2 ACQUIRE bench connection');
    const id = /^2 250 lease (\d+)$/.exec(granted ?? '')?.[1];
    expect(id).toBeDefined();
    expect(await send('3 ACQUIRE bench connection wait=0', '4 ACQUIRE bench message', '5 ACQUIRE bench message wait=123456789')).toEqual([
      expect.stringMatching(/^3 250 lease \d+$/), '4 250 message', '5 250 message',
    ]);
    expect(waits).toEqual([['connection', 0, true], ['connection', 0, true], ['message', 0, true], ['message', 0, true]]);
    expect(
      await send(
        '6 ACQUIRE bench connection wait=x',
        '7 ACQUIRE bench connection wait=1234567890',
        '8 ACQUIRE bench connection ',
        '9 ACQUIRE bench connectionx',
        '10 ACQUIRE b!d connection',
        '11 ACQUIRE  bench connection',
        '12 ACQUIRE other connection',
        '13 ACQUIRE bench',
        '14 ACQUIRE bench connection wait=1 wait=2',
        '15 ACQUIRE bench connection foo=1',
      ),
    ).toEqual([
      '6 501 wait must be milliseconds',
      '7 501 wait must be milliseconds',
      '8 501 unexpected "" (expected wait=)',
      '9 501 kind must be connection or message',
      '10 501 throttle key "b!d" is not valid',
      '11 501 throttle key "" is not valid',
      "12 553 throttle other is not declared on this MTA's control session",
      '13 501 kind must be connection or message',
      '14 501 wait= given twice',
      '15 501 unexpected "foo=1" (expected wait=)',
    ]);
    expect(
      await send(
        '16 RELEASE 1e3',
        '17 RELEASE 99999',
        '18 RELEASE ',
        '19 RELEASE 1 2',
        `20 RELEASE ${id}`,
        `21 RELEASE ${id}`,
        `22 RELEASE 00${id}`,
        `- RELEASE ${id}`,
        '- RELEASE 12x',
      ),
    ).toEqual([
      '16 550 no lease 1e3 held by this session',
      '17 550 no lease 99999 held by this session',
      '18 550 no lease undefined held by this session',
      '19 550 no lease 1 held by this session',
      '20 250 released',
      `21 550 no lease ${id} held by this session`,
      `22 550 no lease 00${id} held by this session`,
    ]);
  });

  it('refuses the tag "-" on ACQUIRE and a bad tag, closing the session', async () => {
    for (const line of ['- ACQUIRE bench connection', 'x1 ACQUIRE bench connection', 'x1 RELEASE 5', '12345678901 RELEASE 5']) {
      const { s, send } = session();
      await send('1 DECLARE bench source=192.0.2.1 max_connections=10 max_messages_per_hour=3600 mode=sum');
      const out = await send(line);
      expect(out, line).toHaveLength(1);
      expect(out[0], line).toMatch(/^\* 500 protocol error: /);
      expect(s.closed, line).toBe(true);
    }
  });

  it('answers a waiting ACQUIRE when a RELEASE frees the slot, and a timed-out one with 451', async () => {
    const { send, throttle, waits, advance } = session();
    await send('1 DECLARE bench source=192.0.2.1 max_connections=1 max_messages_per_hour=3600 mode=sum');
    const id = /lease (\d+)/.exec((await send('2 ACQUIRE bench connection'))[0] ?? '')?.[1];
    expect(await send('3 ACQUIRE bench connection wait=5000', '3 ACQUIRE bench connection')).toEqual([
      '3 501 tag 3 is already used by a waiting ACQUIRE; use a new tag per request',
    ]);
    advance(7);
    expect(await send(`- RELEASE ${id}`)).toEqual([expect.stringMatching(/^3 250 lease \d+$/)]);
    expect(waits.at(-1)).toEqual(['connection', 7, true]);
    expect(await send('4 ACQUIRE bench connection wait=0')).toEqual(['4 451 throttle bench: no connection available']);
    expect(await send('5 ACQUIRE bench connection wait=10')).toEqual([]);
    advance(20);
    await new Promise((r) => setTimeout(r, 40)); // the service's one timer (set for the deadline, 10 ms) serves it
    expect(await send()).toEqual(['5 451 throttle bench: no connection became available in time']);
    expect(waits.at(-1)).toEqual(['connection', 20, false]);
    throttle.stop();
  });
});
