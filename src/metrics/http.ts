// The HTTP shell of the metrics: connections come from the daemon's `metrics` listener (bound from
// metrics_listen or passed by systemd as FileDescriptorName=metrics), already checked against
// allow_from before a byte was read. GET /metrics only; bounded in header size, time per
// connection and concurrent connections.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { CONTENT_TYPE } from './metrics.js';

export interface MetricsHttpOptions {
  scrape(): Promise<string>;
  /** connections served at once; more are closed at once (default 8: Prometheus keeps one per target) */
  maxConnections?: number;
  /** a connection idle this long is closed (default 10 s) */
  idleTimeoutMs?: number;
  /** a connection is closed this long after it was accepted, busy or not (default 60 s) */
  maxConnectionMs?: number;
  /** request line and headers, bytes (default 8 KiB) */
  maxHeaderSize?: number;
}

export class MetricsHttp {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #max: number;
  readonly #idleMs: number;
  readonly #lifeMs: number;
  /** connections closed because maxConnections were already open */
  refused = 0;

  constructor(opts: MetricsHttpOptions) {
    this.#max = opts.maxConnections ?? 8;
    this.#idleMs = opts.idleTimeoutMs ?? 10_000;
    this.#lifeMs = opts.maxConnectionMs ?? 60_000;
    this.#server = createServer({ maxHeaderSize: opts.maxHeaderSize ?? 8192, requestTimeout: 10_000, headersTimeout: 5000, keepAliveTimeout: 5000 }, (req, res) => {
      void this.#handle(req, res, opts.scrape);
    });
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      // an oversized or malformed request: a short answer if the socket still takes one
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      else socket.destroy();
    });
  }

  get connections(): number {
    return this.#sockets.size;
  }

  /** Serves one accepted (paused) connection. */
  serve(socket: Socket): void {
    if (this.#sockets.size >= this.#max) {
      this.refused++;
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    const life = setTimeout(() => socket.destroy(), this.#lifeMs);
    life.unref();
    socket.once('close', () => {
      clearTimeout(life);
      this.#sockets.delete(socket);
    });
    socket.on('error', () => {});
    socket.setTimeout(this.#idleMs, () => socket.destroy());
    this.#server.emit('connection', socket);
    socket.resume();
  }

  /** Closes every connection (shutdown). */
  close(): void {
    for (const s of this.#sockets) s.destroy();
  }

  async #handle(req: IncomingMessage, res: ServerResponse, scrape: () => Promise<string>): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET') {
      res.writeHead(405, { Allow: 'GET', 'Content-Type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
      return;
    }
    let body: string;
    try {
      body = await scrape();
    } catch (err) {
      res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`metrics: ${(err as Error).message}\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }
}
