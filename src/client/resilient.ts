// A control session that survives proxy restarts: it reconnects with exponential backoff and
// jitter, then re-declares its throttles and re-reports its backlog, so the proxy's soft state is
// rebuilt without the MTA doing anything (design.md §1: all throttle state is soft).
import { ControlClient, ProxyError, type Backlog, type ConnectOptions, type Declaration } from './index.js';

export interface ResilientOptions extends ConnectOptions {
  /** first retry delay (default 100 ms), doubled up to maxBackoffMs (default 10 s), ±20 % jitter */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** told about every (re)connection and disconnection, e.g. for the MTA's own log */
  onEvent?: (event: { type: 'connected' | 'disconnected' | 'error'; detail: string }) => void;
}

export class ResilientControl {
  readonly #opts: ResilientOptions;
  readonly #declarations = new Map<string, Declaration>();
  #backlog: Backlog | null = null;
  #client: ControlClient | null = null;
  #stopped = false;
  #attempt = 0;
  #timer: NodeJS.Timeout | null = null;
  #waiters: ((c: ControlClient) => void)[] = [];

  constructor(opts: ResilientOptions) {
    this.#opts = opts;
  }

  get connected(): boolean {
    return this.#client !== null;
  }

  start(): this {
    void this.#connect();
    return this;
  }

  /** Resolves with the live session, waiting for a (re)connection if needed. */
  ready(): Promise<ControlClient> {
    if (this.#client !== null) return Promise.resolve(this.#client);
    if (this.#stopped) return Promise.reject(new ProxyError('ECONNECTION', 'stopped'));
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Remembered and re-sent after every reconnection. */
  async declare(d: Declaration): Promise<string> {
    this.#declarations.set(d.key, d);
    return (await this.ready()).declare(d);
  }

  async reportBacklog(b: Backlog): Promise<void> {
    this.#backlog = b;
    if (this.#client !== null) await this.#client.reportBacklog(b);
  }

  /** Not retried across a reconnection: a lease belongs to the connection that got it. */
  async acquire(key: string, kind: 'connection' | 'message', waitMs?: number): Promise<number | null> {
    return (await this.ready()).acquire(key, kind, waitMs);
  }

  release(leaseId: number): void {
    this.#client?.releaseNow(leaseId);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    const client = this.#client;
    this.#client = null;
    if (client !== null) await client.quit().catch(() => client.destroy());
  }

  async #connect(): Promise<void> {
    if (this.#stopped) return;
    let client: ControlClient;
    try {
      client = await ControlClient.connect(this.#opts);
      for (const d of this.#declarations.values()) await client.declare(d);
      if (this.#backlog !== null) await client.reportBacklog(this.#backlog);
    } catch (err) {
      this.#opts.onEvent?.({ type: 'error', detail: (err as Error).message });
      return this.#retry();
    }
    if (this.#stopped) {
      client.destroy();
      return;
    }
    this.#attempt = 0;
    this.#client = client;
    this.#opts.onEvent?.({ type: 'connected', detail: `${this.#opts.host}:${this.#opts.port}` });
    for (const w of this.#waiters.splice(0)) w(client);
    void client.closed.then((reason) => {
      if (this.#client === client) this.#client = null;
      if (this.#stopped) return;
      this.#opts.onEvent?.({ type: 'disconnected', detail: reason });
      this.#retry();
    });
  }

  #retry(): void {
    if (this.#stopped) return;
    const min = this.#opts.minBackoffMs ?? 100;
    const max = this.#opts.maxBackoffMs ?? 10_000;
    const base = Math.min(max, min * 2 ** this.#attempt++);
    const delay = base * (0.8 + Math.random() * 0.4);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.#connect();
    }, delay);
    this.#timer.unref();
  }
}
