// The MTA side of the native protocol: handshake and control session (docs/protocol.md).
//
//   import { ControlClient } from 'mtaproxy/client';
//   const session = await ControlClient.connect({ host: '10.0.0.5', port: 807, name: 'server-a', secret });
//   await session.reportBacklog({ ram: 12, bounce: 0, disk: 340 });
//   console.log('rtt', await session.ping(), 'ms');
//   await session.quit();
import { randomBytes } from 'node:crypto';
import { connect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { SharedSecret } from '../config/secret.js';
import type { Declaration } from '../throttle/manager.js';
import { formatBacklog, formatReply, formatRequest, MAX_CONTROL_LINE, parseControlLine, type Backlog } from '../protocol/control.js';
import { authLine, NONCE_BYTES, parseGreeting, PROTOCOL_VERSION, tlsExporter, verifyServerProof, type ChannelBinding } from '../protocol/handshake.js';
import { LineSplitter } from '../protocol/lines.js';
import { decimalString } from '../protocol/decimal.js';
import { IdMap } from '../throttle/idmap.js';

export type { Backlog, Declaration };

export interface TunnelOptions extends ConnectOptions {
  /** local address of the proxy host to send from (one of its egress.source_ips) */
  source: string;
  /** destination host (IP or name) and port, e.g. the MX */
  destination: { host: string; port: number };
  /** throttle key this MTA declared on its control session */
  throttle: string;
  /** longest wait for a connection slot, ms (capped by the proxy's egress.throttle_wait_timeout) */
  waitMs?: number;
  /**
   * smtp mode (docs/protocol.md §4.7): the proxy is the SMTP client of the destination and the
   * socket speaks SMTP to a virtual session whose transactions share the proxy's connections.
   * Without it the socket is a raw tunnel.
   */
  smtp?: SmtpModeOptions;
}

export interface SmtpModeOptions {
  /** the MTA's EHLO name, used toward the destination */
  ehlo: string;
  /** STARTTLS toward the destination: "opportunistic" (default, no certificate check), "none", "required" */
  tls?: 'none' | 'opportunistic' | 'required';
  /** with tls "required": the destination's certificate must be valid for this name */
  verify?: string;
  /** SNI sent to the destination ("none" for none); default: verify, else the host if it is a name */
  sni?: string;
}

/** What the proxy said of the destination connection an smtp-mode delivery was opened with. */
export interface SmtpModeInfo {
  reused: boolean;
  /** "TLSv1.3/TLS_AES_256_GCM_SHA384" or "none" */
  tls: string;
}

function connectLine(opts: TunnelOptions): string {
  const host = opts.destination.host.includes(':') ? `[${opts.destination.host}]` : opts.destination.host;
  const words = ['CONNECT', opts.source, `${host}:${opts.destination.port}`, opts.throttle];
  if (opts.waitMs !== undefined) words.push(`wait=${opts.waitMs}`);
  const smtp = opts.smtp;
  if (smtp !== undefined) {
    words.push('mode=smtp', `ehlo=${smtp.ehlo}`, `tls=${smtp.tls ?? 'opportunistic'}`);
    if (smtp.verify !== undefined) words.push(`verify=${smtp.verify}`);
    if (smtp.sni !== undefined) words.push(`sni=${smtp.sni}`);
  }
  return `${words.join(' ')}\n`;
}

/**
 * Reads one "\n"-terminated line at the byte level and puts whatever follows it back into the
 * socket, byte-exact: after a CONNECT reply the destination's bytes may share the same read.
 */
function readReplyLine(socket: Socket, pending: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = pending;
    const finish = (err: Error | null, line = ''): void => {
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      if (err !== null) return reject(err);
      resolve(line);
    };
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const nl = buffered.indexOf(10);
      if (nl === -1) {
        if (buffered.length > MAX_CONTROL_LINE) finish(new ProxyError('EPROTOCOL', 'CONNECT reply too long'));
        return;
      }
      socket.pause();
      if (nl + 1 < buffered.length) socket.unshift(buffered.subarray(nl + 1));
      finish(null, buffered.toString('utf8', 0, nl).replace(/\r$/, ''));
    };
    const onClose = (): void => finish(new ProxyError('ECONNECTION', 'proxy closed the connection before replying to CONNECT'));
    socket.on('data', onData);
    socket.on('close', onClose);
    if (pending.length > 0) onData(Buffer.alloc(0));
  });
}

/**
 * Opens a delivery: resolves with a socket connected to the destination through the proxy,
 * from the chosen source address (the reply names both ends), or rejects with the reply code.
 */
export async function openTunnel(opts: TunnelOptions): Promise<{ socket: Socket; local: string; remote: string; smtp: SmtpModeInfo | null }> {
  const { socket, splitter, leftover } = await authenticate(opts);
  socket.write(connectLine(opts));
  const reply = leftover[0] ?? (await readReplyLine(socket, splitter.takePending()));
  const m = /^(\d{3}) (.*)$/.exec(reply);
  const code = Number(m?.[1] ?? 0);
  if (code !== 250) {
    socket.destroy();
    throw new ProxyError(code >= 500 ? 'EPOLICY' : 'ETEMPFAIL', `CONNECT refused: ${reply}`, code || null);
  }
  const ends = /^connected (\S+) -> (\S+)(?: smtp reused=(yes|no) tls=(\S+))?$/.exec(m?.[2] ?? '');
  const smtp = ends?.[3] === undefined ? null : { reused: ends[3] === 'yes', tls: ends[4] ?? 'none' };
  return { socket, local: ends?.[1] ?? '', remote: ends?.[2] ?? '', smtp };
}

export interface ConnectOptions {
  host: string;
  port: number;
  /** the MTA instance name, shown in the proxy's status lines as session(NAME) */
  name: string;
  secret: string;
  /** handshake deadline (default 10 s) */
  timeoutMs?: number;
  /**
   * TLS to the proxy (default: on). The handshake's proofs are bound to the TLS connection, so the
   * proxy's certificate need not be verified: a relay that terminates TLS cannot pass the
   * handshake. Pin it (fingerprint256) or verify it (ca) if you want to. `false`: plaintext, for
   * a listener with tls = false.
   */
  tls?: false | TlsClientOptions;
}

export interface TlsClientOptions {
  /** verify the proxy's certificate against these CA certificates (PEM); implies rejectUnauthorized */
  ca?: string | Buffer | (string | Buffer)[];
  /** SNI and the name checked with ca (default: host, unless it is an IP address) */
  servername?: string;
  /** refuse a certificate that does not verify (default: true when ca is given, else false) */
  rejectUnauthorized?: boolean;
  /** the proxy's certificate SHA-256 fingerprint, "AB:CD:…" as logged at the proxy's start (colons and case optional) */
  fingerprint256?: string;
  /** resume the last TLS session to this proxy (default true; false: a full handshake every time, e.g. to measure it) */
  resumption?: boolean;
}

/** The last TLS session per proxy, for resumption (tickets): reconnects and deliveries skip the full handshake. */
const SESSIONS = new Map<string, { session: Buffer; fingerprint256: string }>();
const MAX_SESSIONS = 256;

function rememberSession(key: string, session: Buffer, fingerprint256: string): void {
  SESSIONS.delete(key);
  SESSIONS.set(key, { session, fingerprint256 });
  if (SESSIONS.size > MAX_SESSIONS) SESSIONS.delete(SESSIONS.keys().next().value as string);
}

/** Forgets the cached TLS sessions (tests, benchmarks of full handshakes). */
export function clearTlsSessions(): void {
  SESSIONS.clear();
}

/** How to learn a TLS socket's peer certificate fingerprint, also for a resumed session. */
const fingerprints = new WeakMap<Socket, () => string>();

/**
 * Client SecureContexts, one per CA setting: tls.connect without one builds a new OpenSSL context
 * per connection, which cost about as much CPU as the rest of a resumed TLS handshake.
 */
const CONTEXTS = new Map<string, SecureContext>();
const MAX_CONTEXTS = 16;

const caKey = (ca: TlsClientOptions['ca']): string => (ca === undefined ? '' : (Array.isArray(ca) ? ca : [ca]).map((c) => c.toString()).join('\n'));

function clientContext(ca: TlsClientOptions['ca']): SecureContext {
  const key = caKey(ca);
  let context = CONTEXTS.get(key);
  if (context === undefined) {
    context = createSecureContext({ minVersion: 'TLSv1.2', ...(ca === undefined ? {} : { ca }) });
    if (CONTEXTS.size >= MAX_CONTEXTS) CONTEXTS.delete(CONTEXTS.keys().next().value as string);
    CONTEXTS.set(key, context);
  }
  return context;
}

const normalizeFingerprint = (f: string): string => f.replace(/:/g, '').toLowerCase();

function openSocket(opts: ConnectOptions): Socket {
  // noDelay: requests and the tunnel's first bytes are small; Nagle would hold them for the proxy's delayed ACK
  if (opts.tls === false) return connect({ host: opts.host, port: opts.port, noDelay: true });
  const t = opts.tls ?? {};
  const servername = t.servername ?? (isIP(opts.host) === 0 ? opts.host : undefined);
  const rejectUnauthorized = t.rejectUnauthorized ?? t.ca !== undefined;
  // a session is resumed only under the verification it was made with: a resumed session skips
  // the certificate check, so one made without a CA (or with another) must not stand in for it
  const key = `${opts.host}:${opts.port} ${servername ?? ''} ${rejectUnauthorized ? `ca:${caKey(t.ca)}` : 'unverified'}`;
  const cached = SESSIONS.get(key);
  const session = t.resumption === false ? undefined : cached?.session;
  const socket = tlsConnect({
    host: opts.host,
    port: opts.port,
    secureContext: clientContext(t.ca),
    rejectUnauthorized,
    ...(servername === undefined ? {} : { servername }),
    ...(session === undefined ? {} : { session }),
  });
  socket.setNoDelay(true);
  // a resumed session has no peer certificate of its own: remember the full handshake's. A TLS 1.3
  // ticket ('session') may arrive before or after 'secureConnect'; the cache is written once both are known.
  let fingerprint: string | null = null;
  const tickets: Buffer[] = [];
  const peerFingerprint = (): string => {
    fingerprint ??= socket.getPeerX509Certificate()?.fingerprint256 ?? (socket.isSessionReused() ? (cached?.fingerprint256 ?? '') : '');
    return fingerprint;
  };
  socket.once('secureConnect', () => {
    const f = peerFingerprint();
    for (const t of tickets.splice(0)) rememberSession(key, t, f);
  });
  socket.on('session', (s: Buffer) => {
    if (fingerprint === null) tickets.push(s);
    else rememberSession(key, s, fingerprint);
  });
  fingerprints.set(socket, peerFingerprint);
  return socket;
}

/** A reply with a 4xx/5xx code, or a closed session. */
export class ProxyError extends Error {
  readonly code: string;
  readonly responseCode: number | null;
  constructor(code: string, message: string, responseCode: number | null = null) {
    super(message);
    this.name = 'ProxyError';
    this.code = code;
    this.responseCode = responseCode;
  }
}

/** How a request's reply settles its promise: the raw reply, a lease id (ACQUIRE), nothing (RELEASE). */
const RAW = 0;
const LEASE = 1;
const VOID = 2;
type ReplyShape = typeof RAW | typeof LEASE | typeof VOID;

/**
 * The young table of pending requests by tag (the tags count up from 1): a request and its reply
 * add and remove no Map entry (whose table would grow and shrink with the churn); one still
 * unanswered after this many newer requests moves to a Map.
 */
const PENDING_SLOTS = 1024;

/** One request waiting for its reply: no closure of its own (the hot path allocates little). */
interface Pending {
  readonly verb: string;
  readonly shape: ReplyShape;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/**
 * The reply text from `at` to the end: "lease <digits>" -> the id, anything else (a message
 * token's "message") -> null, as /^lease (\d+)$/ did (a number past 15 digits via Number(), as then).
 */
function leaseAt(line: string, at: number): number | null {
  if (line.length <= at + 6 || !line.startsWith('lease ', at)) return null;
  const v = decimal(line, at + 6, line.length);
  if (v >= 0) return v;
  for (let i = at + 6; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c < 48 || c > 57) return null;
  }
  return Number(line.slice(at + 6));
}

/** The decimal digits of line[from, to) as a number (1-15 of them: exact), or -1. */
function decimal(line: string, from: number, to: number): number {
  if (to - from < 1 || to - from > 15) return -1;
  let v = 0;
  for (let i = from; i < to; i++) {
    const c = line.charCodeAt(i);
    if (c < 48 || c > 57) return -1;
    v = v * 10 + (c - 48);
  }
  return v;
}

/** Connects and authenticates; resolves with the socket and the lines already received after OK. */
export async function authenticate(opts: ConnectOptions): Promise<{ socket: Socket; splitter: LineSplitter; leftover: string[] }> {
  const secret = new SharedSecret(opts.secret);
  const socket = openSocket(opts);
  const tls = opts.tls === false ? null : (socket as TLSSocket);
  let binding: ChannelBinding;
  const splitter = new LineSplitter(MAX_CONTROL_LINE);
  const clientNonce = randomBytes(NONCE_BYTES).toString('hex');
  return new Promise((resolve, reject) => {
    let serverNonce: string | null = null;
    const timer = setTimeout(() => done(new ProxyError('ETIMEDOUT', `handshake with ${opts.host}:${opts.port} timed out`)), opts.timeoutMs ?? 10_000);
    const done = (err: Error | null, leftover: string[] = []): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      if (err !== null) {
        socket.destroy();
        reject(err);
      } else {
        resolve({ socket, splitter, leftover });
      }
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      // the proxy closes a peer it refuses before reading a byte: for TLS, an error before 'secureConnect'
      if (tls !== null && serverNonce === null && err.code === 'ECONNRESET') {
        return done(new ProxyError('ECONNECTION', `${opts.host}:${opts.port} closed the connection during the TLS handshake (not in allow_from, or too many handshakes pending?)`));
      }
      if (tls !== null && (err.code === 'ERR_SSL_WRONG_VERSION_NUMBER' || err.code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG')) {
        return done(new ProxyError('ETLS', `${opts.host}:${opts.port} does not speak TLS (a listener with tls = false? then connect with tls: false): ${err.message}`));
      }
      const code = tls !== null && err.code !== undefined && /^ERR_SSL|CERT|UNABLE_TO|SELF_SIGNED|ERR_TLS/.test(err.code) ? 'ETLS' : 'ECONNECTION';
      done(new ProxyError(code, `cannot connect to ${opts.host}:${opts.port}: ${err.message}`));
    };
    const onClose = (): void => done(new ProxyError('ECONNECTION', `${opts.host}:${opts.port} closed the connection during the handshake (not in allow_from?)`));
    const onData = (chunk: Buffer): void => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        return done(new ProxyError('EPROTOCOL', (err as Error).message));
      }
      for (let i = 0; i < lines.length; i++) {
        const line = lines[i] as string;
        if (serverNonce === null) {
          // e.g. "ERR 421 this listener requires TLS…" to a plaintext client
          if (line.startsWith('ERR ')) return done(new ProxyError('EAUTH', `proxy refused: ${line.slice(4)}`, Number(line.slice(4, 7)) || null));
          const greeting = parseGreeting(line);
          if (greeting === null) return done(new ProxyError('EPROTOCOL', `not an mtaproxy greeting: ${JSON.stringify(line.slice(0, 60))}`));
          if (greeting.version !== PROTOCOL_VERSION) return done(new ProxyError('EPROTOCOL', `proxy speaks protocol ${greeting.version}, this client ${PROTOCOL_VERSION}`));
          serverNonce = greeting.serverNonce;
          binding = tls === null ? undefined : tlsExporter(tls);
          socket.write(`${authLine(secret, serverNonce, clientNonce, opts.name, binding)}\n`);
        } else if (line.startsWith('ERR ')) {
          return done(new ProxyError('EAUTH', `proxy refused: ${line.slice(4)}`, Number(line.slice(4, 7)) || null));
        } else if (verifyServerProof(line, secret, serverNonce, clientNonce, opts.name, binding)) {
          return done(null, lines.slice(i + 1));
        } else {
          const why = tls === null ? '' : ' for this TLS connection (a different secret, or a relay that terminates TLS in between)';
          return done(new ProxyError('EAUTH', `the proxy could not prove it knows the shared secret${why}`));
        }
      }
    };
    const pinned = tls !== null && opts.tls !== false ? opts.tls?.fingerprint256 : undefined;
    if (tls !== null && pinned !== undefined) {
      tls.once('secureConnect', () => {
        const actual = fingerprints.get(tls)?.() ?? '';
        if (normalizeFingerprint(actual) !== normalizeFingerprint(pinned)) {
          done(new ProxyError('ETLS', `${opts.host}:${opts.port} presented certificate ${actual || '(none)'}, not the pinned ${pinned}`));
        }
      });
    }
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}

export class ControlClient {
  readonly name: string;
  readonly #socket: Socket;
  /** by tag: the tags this client chooses are decimal */
  readonly #pending = new IdMap<Pending>(PENDING_SLOTS);
  #nextTag = 1;
  #closeReason: string | null = null;
  readonly closed: Promise<string>;
  /** Notices ("* 421 …") the proxy sent, most recent last. */
  readonly notices: string[] = [];

  private constructor(name: string, socket: Socket, splitter: LineSplitter, leftover: string[]) {
    this.name = name;
    this.#socket = socket;
    let onClosed: (reason: string) => void = () => {};
    this.closed = new Promise((resolve) => (onClosed = resolve));
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const line of splitter.push(chunk)) this.#onLine(line);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#closeReason ??= 'connection closed';
      const err = new ProxyError('ECONNECTION', `session closed: ${this.#closeReason}`);
      for (const [, p] of this.#pending.entries()) p.reject(err);
      this.#pending.clear();
      onClosed(this.#closeReason);
    });
    for (const line of leftover) this.#onLine(line);
  }

  static async connect(opts: ConnectOptions): Promise<ControlClient> {
    const { socket, splitter, leftover } = await authenticate(opts);
    socket.write('CONTROL\n');
    const client = new ControlClient(opts.name, socket, splitter, []);
    // the first line after CONTROL is "250 control session NAME"
    await new Promise<void>((resolve, reject) => {
      client.#awaitingStart = { resolve, reject };
      for (const line of leftover) client.#onLine(line);
    });
    return client;
  }

  #awaitingStart: { resolve(): void; reject(err: Error): void } | null = null;

  #onLine(line: string): void {
    // the usual line, a reply to one of our requests: "<decimal tag> <3 digits> <text>", read
    // without parseControlLine's slices and message object (any other line takes the general path)
    const sp = line.indexOf(' ');
    if (sp > 0 && sp <= 10 && line.length > sp + 4 && line.charCodeAt(sp + 4) === 32 && this.#awaitingStart === null) {
      const tag = decimal(line, 0, sp);
      const code = decimal(line, sp + 1, sp + 4);
      if (tag >= 0 && code >= 0) {
        const p = this.#pending.get(tag);
        if (p === undefined) return;
        this.#pending.delete(tag);
        if (code >= 400) p.reject(new ProxyError('EREPLY', `${p.verb}: ${code} ${line.slice(sp + 5)}`, code));
        else if (p.shape === LEASE) p.resolve(leaseAt(line, sp + 5));
        else if (p.shape === VOID) p.resolve(undefined);
        else p.resolve({ code, text: line.slice(sp + 5) });
        return;
      }
    }
    if (this.#awaitingStart !== null) {
      const start = this.#awaitingStart;
      this.#awaitingStart = null;
      if (line.startsWith('250 ')) start.resolve();
      else start.reject(new ProxyError('EPROTOCOL', `proxy refused the control session: ${line}`));
      return;
    }
    const msg = parseControlLine(line);
    if (msg.kind === 'reply') {
      const tag = Number(msg.tag);
      const p = this.#pending.get(tag);
      if (p === undefined) return;
      this.#pending.delete(tag);
      if (msg.code >= 400) p.reject(new ProxyError('EREPLY', `${p.verb}: ${msg.code} ${msg.text}`, msg.code));
      else if (p.shape === LEASE) p.resolve(leaseAt(msg.text, 0));
      else if (p.shape === VOID) p.resolve(undefined);
      else p.resolve({ code: msg.code, text: msg.text });
    } else if (msg.kind === 'request') {
      // the proxy's own requests (PING) are answered at once; that round trip is its RTT
      if (msg.verb === 'PING') this.#send(`${formatReply(msg.tag, 250, 'PONG')}\n`);
      else this.#send(`${formatReply(msg.tag, 500, `unknown command ${msg.verb}`)}\n`);
    } else if (msg.kind === 'notice') {
      this.notices.push(`${msg.code} ${msg.text}`);
      if (msg.code >= 400) this.#closeReason = `${msg.code} ${msg.text}`;
    }
  }

  /** Sends a request; resolves with the reply, rejects on a 4xx/5xx reply or a closed session. */
  request(verb: string, args: readonly (string | number)[] = []): Promise<{ code: number; text: string }> {
    return this.#request(verb, args.length === 0 ? '' : ` ${args.join(' ')}`, RAW) as Promise<{ code: number; text: string }>;
  }

  /** `rest`: the request's arguments, each after a space ("" for none) */
  #request(verb: string, rest: string, shape: ReplyShape): Promise<unknown> {
    if (this.#socket.destroyed) return Promise.reject(new ProxyError('ECONNECTION', `session closed: ${this.#closeReason ?? 'not connected'}`));
    const tag = this.#nextTag++;
    return new Promise((resolve, reject) => {
      this.#pending.set(tag, { verb, shape, resolve, reject });
      this.#send(`${decimalString(tag)} ${verb}${rest}\n`);
    });
  }

  /** Sends a request that gets no reply (tag "-"): for RELEASE on a hot path. */
  notify(verb: string, args: readonly (string | number)[] = []): void {
    if (!this.#socket.destroyed) this.#send(`${formatRequest('-', verb, args)}\n`);
  }

  /**
   * Coalesces the lines of one burst of calls into one write (pipelined requests). The write
   * waits for process.nextTick, which runs once the microtasks of the moment have all run: the
   * calls that awaiting code makes when a batch of replies arrives (each RELEASE and the next
   * ACQUIRE, several promise hops apart) leave in one write instead of one per hop.
   */
  #send(text: string): void {
    if (this.#outbox === '') process.nextTick(this.#flush);
    this.#outbox += text;
  }

  readonly #flush = (): void => {
    const text = this.#outbox;
    this.#outbox = '';
    if (!this.#socket.destroyed) this.#socket.write(text);
  };

  #outbox = '';

  /** Round trip to the proxy, in milliseconds. */
  async ping(): Promise<number> {
    const start = performance.now();
    await this.request('PING');
    return performance.now() - start;
  }

  async reportBacklog(backlog: Backlog): Promise<void> {
    await this.request('BACKLOG', [formatBacklog(backlog)]);
  }

  /** Declares this MTA's limits for a throttle; resolves with the cluster-wide effective limits. */
  async declare(d: Declaration): Promise<string> {
    const reply = await this.request('DECLARE', [
      d.key,
      `source=${d.sourceIp}`,
      `max_connections=${d.maxConnections}`,
      `max_messages_per_hour=${d.maxMessagesPerHour}`,
      `mode=${d.mode}`,
    ]);
    return reply.text;
  }

  /** Takes a connection slot (resolves with its lease id) or a message token (resolves with null). */
  acquire(key: string, kind: 'connection' | 'message', waitMs?: number): Promise<number | null> {
    return this.#request('ACQUIRE', waitMs === undefined ? ` ${key} ${kind}` : ` ${key} ${kind} wait=${waitMs}`, LEASE) as Promise<number | null>;
  }

  release(leaseId: number): Promise<void> {
    return this.#request('RELEASE', ` ${decimalString(leaseId)}`, VOID) as Promise<void>;
  }

  /** Releases without waiting for (or getting) a reply. */
  releaseNow(leaseId: number): void {
    if (!this.#socket.destroyed) this.#send(`- RELEASE ${decimalString(leaseId)}\n`);
  }

  async quit(): Promise<void> {
    await this.request('QUIT');
    this.#socket.end();
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

export { ResilientControl, type ResilientOptions } from './resilient.js';
export {
  DeliveryError,
  MtaproxyTransport,
  orderMx,
  RecipientError,
  type DestinationResult,
  type FailureOrigin,
  type MtaproxySentMessageInfo,
  type MtaproxyTransportOptions,
  type MxRecord,
  type ThrottleLimits,
  type TransportEnvelope,
} from './transport.js';
