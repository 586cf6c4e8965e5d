// A raw TCP client that records everything the server sends, for protocol-level assertions.
import { connect, type Socket } from 'node:net';

export interface RawClient {
  socket: Socket;
  received(): string;
  /** resolves with the first complete line matching `re` */
  line(re: RegExp, timeoutMs?: number): Promise<string>;
  send(text: string): void;
  /** resolves when the server has closed the connection, with how long that took */
  closed: Promise<number>;
}

export async function rawConnect(port: number, opts: { host?: string; localAddress?: string } = {}): Promise<RawClient> {
  const socket = connect({ host: opts.host ?? '127.0.0.1', port, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
  let data = '';
  const started = performance.now();
  const waiters: { re: RegExp; resolve(l: string): void }[] = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const hit = data.split('\n').slice(0, -1).find((l) => w.re.test(l));
      if (hit !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  };
  socket.on('data', (c: Buffer) => {
    data += c.toString('utf8');
    check();
  });
  socket.on('error', () => {});
  const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(performance.now() - started)));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return {
    socket,
    received: () => data,
    line: (re, timeoutMs = 3000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${re}; got ${JSON.stringify(data)}`)), timeoutMs);
        waiters.push({ re, resolve: (l) => { clearTimeout(timer); resolve(l); } });
        check();
      }),
    send: (text) => socket.write(text),
    closed,
  };
}
