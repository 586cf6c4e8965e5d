import { describe, expect, it } from 'vitest';
import { forgetActivation, parseActivation } from '../../src/systemd/activation.js';
import { journalFieldName, journalFields, journalMethod } from '../../src/systemd/journal.js';
import { notifyMessages, watchdogInterval } from '../../src/systemd/notify.js';
import { decodeRecord, renderLine } from '../../src/log/logger.js';
import { RefusalLog } from '../../src/server/ratelimit.js';

describe('socket activation', () => {
  it('maps fds to front-ends by FileDescriptorName', () => {
    expect(parseActivation({ LISTEN_FDS: '2', LISTEN_PID: '42', LISTEN_FDNAMES: 'native:admin' }, 42)).toEqual({
      ok: true,
      sockets: [
        { fd: 3, name: 'native', frontEnd: 'native' },
        { fd: 4, name: 'admin', frontEnd: 'admin' },
      ],
    });
    expect(parseActivation({ LISTEN_FDS: '1', LISTEN_PID: '42' }, 42)).toEqual({ ok: true, sockets: [{ fd: 3, name: 'unknown', frontEnd: 'native' }] });
    // without FileDescriptorName= systemd uses the unit's name
    expect(parseActivation({ LISTEN_FDS: '1', LISTEN_PID: '42', LISTEN_FDNAMES: 'mtaproxy.socket' }, 42)).toEqual({ ok: true, sockets: [{ fd: 3, name: 'mtaproxy.socket', frontEnd: 'native' }] });
    expect(parseActivation({ LISTEN_FDS: '0', LISTEN_PID: '42' }, 42)).toBeNull();
  });

  it('ignores sockets meant for another process and reports inconsistent variables', () => {
    expect(parseActivation({}, 42)).toBeNull();
    expect(parseActivation({ LISTEN_FDS: '1', LISTEN_PID: '41' }, 42)).toBeNull();
    expect(parseActivation({ LISTEN_FDS: 'x', LISTEN_PID: '42' }, 42)).toEqual({ ok: false, error: 'LISTEN_FDS="x" is not a count' });
    expect(parseActivation({ LISTEN_FDS: '2', LISTEN_PID: '42', LISTEN_FDNAMES: 'native' }, 42)).toEqual({ ok: false, error: 'LISTEN_FDNAMES names 1 sockets but LISTEN_FDS=2' });
    expect(parseActivation({ LISTEN_FDS: '1', LISTEN_PID: '42', LISTEN_FDNAMES: 'socks' }, 42)).toMatchObject({ ok: false });
  });

  it('forgets the variables after adoption', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_FDS: '1', LISTEN_PID: '1', LISTEN_FDNAMES: 'native', PATH: '/bin' };
    forgetActivation(env);
    expect(env).toEqual({ PATH: '/bin' });
  });
});

describe('sd_notify', () => {
  it('watchdog period is half of WATCHDOG_USEC, for our pid only', () => {
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000' }, 7)).toBe(15_000);
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 7)).toBe(15_000);
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '8' }, 7)).toBeNull();
    expect(watchdogInterval({}, 7)).toBeNull();
    expect(watchdogInterval({ WATCHDOG_USEC: 'soon' }, 7)).toBeNull();
  });

  it('message texts', () => {
    expect(notifyMessages.reloading(123n)).toBe('RELOADING=1\nMONOTONIC_USEC=123');
    expect(notifyMessages.ready('ok')).toBe('READY=1\nSTATUS=ok');
    expect(notifyMessages.stopping('bye')).toBe('STOPPING=1\nSTATUS=bye');
  });
});

describe('journald fields', () => {
  it('upper-cases names and drops what journald would refuse', () => {
    expect(journalFieldName('backlog_ram')).toBe('BACKLOG_RAM');
    expect(journalFieldName('mtaproxy_event')).toBe('MTAPROXY_EVENT');
    expect(journalFieldName('front-end')).toBe('FRONT_END');
    expect(journalFieldName('_private')).toBe('PRIVATE');
    expect(journalFieldName('9lives')).toBe('LIVES');
    expect(journalFieldName('x'.repeat(80))).toHaveLength(64);
    expect(journalFieldName('priority')).toBeNull();
    expect(journalFieldName('___')).toBeNull();
    expect(journalFields({ session: 'server-a', ping_ms: 0.25, err: { message: 'x' }, gone: undefined })).toEqual({ SESSION: 'server-a', PING_MS: '0.25', ERR: '{"message":"x"}' });
    expect([journalMethod(50), journalMethod(40), journalMethod(30), journalMethod(20)]).toEqual(['err', 'warning', 'info', 'debug']);
  });
});

describe('stdout log lines', () => {
  it('keep status lines in the seed shape and render other fields as key=value', () => {
    const now = new Date('2026-11-25T13:00:00.000Z');
    const status = decodeRecord('{"level":30,"time":1,"msg":"listener: open_connections=3","mtaproxy_event":"status","open_connections":3}');
    expect(renderLine(status, now)).toBe('2026-11-25T13:00:00.000Z INFO listener: open_connections=3\n');
    const other = decodeRecord('{"level":40,"time":1,"msg":"refused","mtaproxy_event":"connection_refused","peer":"10.0.0.1","note":"a b"}');
    expect(renderLine(other, now)).toBe('2026-11-25T13:00:00.000Z WARN refused peer=10.0.0.1 note="a b"\n');
  });
});

describe('refusal log', () => {
  it('logs the first refusal, then one summary per interval and address', () => {
    const log = new RefusalLog(10_000);
    expect(log.record('10.0.0.1', 0)).toBe(1);
    expect(log.record('10.0.0.1', 1)).toBe(0);
    expect(log.record('10.0.0.1', 2)).toBe(0);
    expect(log.record('10.0.0.2', 3)).toBe(1);
    expect(log.record('10.0.0.1', 10_000)).toBe(3);
    expect(log.record('10.0.0.1', 10_001)).toBe(0);
  });
});
