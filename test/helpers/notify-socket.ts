// A real NOTIFY_SOCKET receiver (an AF_UNIX datagram socket, as systemd binds it), so tests see
// exactly the datagrams sd_notify(3) sends.
import { createRequire } from 'node:module';
import { join } from 'node:path';

interface DgramSocket {
  bind(path: string): void;
  close(): void;
  on(event: 'message', cb: (buf: Buffer) => void): void;
  on(event: 'error', cb: (err: Error) => void): void;
}
type UnixDgram = { createSocket(type: 'unix_dgram'): DgramSocket };

export interface NotifyReceiver {
  path: string;
  /** every datagram received, in order */
  messages: string[];
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  close(): void;
}

export function notifyReceiver(dir: string): NotifyReceiver {
  const unix = createRequire(import.meta.url)('unix-dgram') as UnixDgram;
  const path = join(dir, 'notify.sock');
  const socket = unix.createSocket('unix_dgram');
  const messages: string[] = [];
  const waiters: { re: RegExp; resolve(m: string): void }[] = [];
  socket.on('message', (buf) => {
    const m = buf.toString('utf8');
    messages.push(m);
    for (const w of [...waiters]) {
      if (w.re.test(m)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  });
  socket.on('error', () => {});
  socket.bind(path);
  return {
    path,
    messages,
    waitFor: (re, timeoutMs = 5000) => {
      const hit = messages.find((m) => re.test(m));
      if (hit !== undefined) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no notify message matching ${re}; got ${JSON.stringify(messages)}`)), timeoutMs);
        waiters.push({ re, resolve: (m) => { clearTimeout(timer); resolve(m); } });
      });
    },
    close: () => socket.close(),
  };
}
