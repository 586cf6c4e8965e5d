// A raw client that records everything the server sends, for protocol-level assertions. By
// default it speaks TLS like the real client (native listeners are TLS unless tls = false) and
// exposes the connection's tls-exporter value, so tests can compute bound proofs themselves.
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { tlsExporter } from '../../src/protocol/handshake.js';

export interface RawClient {
  socket: Socket;
  received(): string;
  /** resolves with the first complete line matching `re` */
  line(re: RegExp, timeoutMs?: number): Promise<string>;
  send(text: string): void;
  /** resolves when the server has closed the connection, with how long that took */
  closed: Promise<number>;
  /** the tls-exporter value for the proofs (undefined in plaintext); valid once the greeting arrived */
  readonly binding: Buffer | undefined;
  /** the TLS socket, null in plaintext */
  tls: TLSSocket | null;
}

export async function rawConnect(port: number, opts: { host?: string; localAddress?: string; tls?: boolean } = {}): Promise<RawClient> {
  const target = { host: opts.host ?? '127.0.0.1', port, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) };
  const tls = opts.tls === false ? null : tlsConnect({ ...target, rejectUnauthorized: false });
  const socket: Socket = tls ?? connect(target);
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
  // the TCP connection, not the TLS handshake: a refused peer is closed before any TLS byte
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let binding: Buffer | undefined;
  return {
    socket,
    tls,
    received: () => data,
    line: (re, timeoutMs = 3000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${re}; got ${JSON.stringify(data)}`)), timeoutMs);
        waiters.push({ re, resolve: (l) => { clearTimeout(timer); resolve(l); } });
        check();
      }),
    send: (text) => socket.write(text),
    closed,
    get binding() {
      if (tls === null) return undefined;
      binding ??= tlsExporter(tls);
      return binding;
    },
  };
}
