// sd_notify(3) behind a small interface. Node cannot send AF_UNIX datagrams, hence the native
// sd-notify package; without NOTIFY_SOCKET every call is a no-op and nothing native is loaded.
import { createRequire } from 'node:module';

export interface Notifier {
  ready(status: string): void;
  reloading(): void;
  status(text: string): void;
  /** STOPPING=1; with extendTimeoutMs also EXTEND_TIMEOUT_USEC (systemd waits that long from now, if longer than TimeoutStopSec=) */
  stopping(status: string, extendTimeoutMs?: number): void;
  watchdog(): void;
  /** Watchdog ping period (half of WATCHDOG_USEC) when systemd asked for pings, else null. */
  readonly watchdogIntervalMs: number | null;
}

interface SdNotifyBinding {
  sendState(state: string): void;
}

/** The state strings, exactly as sent (also what tests expect). */
export const notifyMessages = {
  ready: (status: string) => `READY=1\nSTATUS=${status}`,
  reloading: (monotonicUsec: bigint) => `RELOADING=1\nMONOTONIC_USEC=${monotonicUsec}`,
  status: (text: string) => `STATUS=${text}`,
  stopping: (status: string, extendUsec?: number) => `STOPPING=1\nSTATUS=${status}${extendUsec === undefined ? '' : `\nEXTEND_TIMEOUT_USEC=${extendUsec}`}`,
  watchdog: () => 'WATCHDOG=1',
};

/** Half of WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID unset or ours). */
export function watchdogInterval(env: NodeJS.ProcessEnv, pid: number): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return null;
  return Math.max(1, Math.floor(usec / 2000));
}

const noop: Notifier = {
  ready() {}, reloading() {}, status() {}, stopping() {}, watchdog() {}, watchdogIntervalMs: null,
};

export function createNotifier(env: NodeJS.ProcessEnv = process.env): Notifier {
  if (!env.NOTIFY_SOCKET) return noop;
  const binding = createRequire(import.meta.url)('sd-notify') as SdNotifyBinding;
  // one line per field, one datagram per call: systemd applies a datagram's fields together
  const send = (state: string): void => binding.sendState(state);
  return {
    ready: (status) => send(notifyMessages.ready(oneLine(status))),
    // CLOCK_MONOTONIC in µs, which Type=notify-reload (systemd >= 253) requires with RELOADING=1
    reloading: () => send(notifyMessages.reloading(process.hrtime.bigint() / 1000n)),
    status: (text) => send(notifyMessages.status(oneLine(text))),
    stopping: (status, extendMs) => send(notifyMessages.stopping(oneLine(status), extendMs === undefined ? undefined : Math.round(extendMs * 1000))),
    watchdog: () => send(notifyMessages.watchdog()),
    watchdogIntervalMs: watchdogInterval(env, process.pid),
  };
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, '; ');
}
