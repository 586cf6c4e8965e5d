// One SMTP connection from the proxy to a destination (the shell around client.ts): connect from
// the source address, greeting, EHLO, STARTTLS per the TLS policy, EHLO again; then commands with
// their replies, a DATA body with backpressure, QUIT. Every wait is a deadline on the daemon's
// timer wheel. A connection that fails in any way is dead and never used again.
import type { Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { connectFrom } from '../egress/tunnel.js';
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import { openStep, type OpenState, type TlsPolicy } from './client.js';
import type { Extensions } from './ehlo.js';
import { ReplyError, ReplyParser, replySummary, type Reply } from './reply.js';

/** The client timeouts (RFC 5321 §4.5.3.2 are the defaults of the [smtp] table, config/parse.ts). */
export interface SmtpTimeouts {
  readonly connectMs: number;
  /** initial 220: 5 min */
  readonly greetingMs: number;
  /** EHLO, STARTTLS, MAIL, RCPT, RSET, NOOP: 5 min */
  readonly commandMs: number;
  /** DATA initiation (354): 2 min */
  readonly dataInitMs: number;
  /** a body write not taken by the destination: 3 min */
  readonly dataBlockMs: number;
  /** final reply after "<CRLF>.<CRLF>": 10 min */
  readonly dataDoneMs: number;
}

export interface ConnectionSpec {
  readonly sourceIp: string;
  /** the destination's IP address (resolved) */
  readonly address: string;
  readonly port: number;
  readonly ehloName: string;
  readonly tls: TlsPolicy;
}

/** Why a connection could not be opened or used: a reply code for the MTA and a reason. */
export class SmtpConnectionError extends Error {
  readonly code: number;
  /** the destination's own reply, when it gave one */
  readonly reply: Reply | null;
  /** the TLS handshake after STARTTLS failed (not a refusal of STARTTLS) */
  readonly tlsHandshake: boolean;
  constructor(code: number, message: string, reply: Reply | null = null, tlsHandshake = false) {
    super(message);
    this.code = code;
    this.reply = reply;
    this.tlsHandshake = tlsHandshake;
  }
}

export interface TlsInfo {
  readonly version: string;
  readonly cipher: string;
  /** the destination's certificate was verified against the policy's name */
  readonly verified: boolean;
  /** the TLS session was resumed (no full handshake) */
  readonly resumed: boolean;
}

let nextId = 1;

/**
 * TLS sessions toward destinations, for resumption (RFC 8446 tickets / TLS 1.2 session ids): a new
 * connection to the same destination under the same names skips the full handshake. Bounded; the
 * oldest entry goes first. A session is used only under the verification it was made with.
 */
const MAX_TLS_SESSIONS = 10_000;
const tlsSessions = new Map<string, Buffer>();

function tlsSessionKey(spec: ConnectionSpec): string {
  return `${spec.sourceIp}|${spec.address}:${spec.port}|${spec.tls.sni ?? '-'}|${spec.tls.verifyName ?? '-'}`;
}

function rememberTlsSession(key: string, session: Buffer): void {
  tlsSessions.delete(key);
  tlsSessions.set(key, session);
  if (tlsSessions.size > MAX_TLS_SESSIONS) {
    const oldest = tlsSessions.keys().next();
    if (oldest.done !== true) tlsSessions.delete(oldest.value);
  }
}

export class DestinationConnection {
  readonly id = nextId++;
  readonly spec: ConnectionSpec;
  readonly openedAt = performance.now();
  greeting!: Reply;
  ehlo!: Reply;
  extensions!: Extensions;
  tls: TlsInfo | null = null;
  /** the local end (proof of the source address) */
  local = '';
  /** transactions completed (final reply of DATA received) */
  transactions = 0;
  /** transactions begun (MAIL FROM accepted), of any MTA: more than 0 means the next one reuses it */
  uses = 0;
  lastUsedAt = performance.now();
  /** why it died, once it has */
  deadReason: string | null = null;
  /** called once when the connection dies (closed, error, timeout, unexpected reply) */
  onDead: ((why: string) => void) | null = null;

  #socket: Socket;
  readonly #wheel: TimerWheel;
  #parser = new ReplyParser();
  #waiters: { resolve: (r: Reply) => void; reject: (e: SmtpConnectionError) => void; timer: WheelTimer }[] = [];
  #blockTimer: WheelTimer | null = null;
  /** the TLS policy this connection was opened with (opportunistic may fall back to none) */
  #policy: TlsPolicy;

  private constructor(spec: ConnectionSpec, socket: Socket, wheel: TimerWheel) {
    this.spec = spec;
    this.#policy = spec.tls;
    this.#socket = socket;
    this.#wheel = wheel;
    this.#attach(socket);
  }

  get dead(): boolean {
    return this.deadReason !== null;
  }

  /**
   * Opens and greets; rejects with SmtpConnectionError (or EgressError for the TCP connect). With
   * opportunistic TLS, a TLS handshake that fails after the destination said 220 to STARTTLS is
   * followed by one more connection without STARTTLS, as Postfix's `may` level does: a
   * destination with broken TLS still gets its mail, in plaintext as it would without STARTTLS.
   */
  static async open(spec: ConnectionSpec, timeouts: SmtpTimeouts, wheel: TimerWheel): Promise<DestinationConnection> {
    try {
      return await DestinationConnection.#open(spec, spec.tls, timeouts, wheel);
    } catch (err) {
      if (!(err instanceof SmtpConnectionError) || !err.tlsHandshake || spec.tls.mode !== 'opportunistic') throw err;
      return DestinationConnection.#open(spec, { ...spec.tls, mode: 'none' }, timeouts, wheel);
    }
  }

  static async #open(spec: ConnectionSpec, policy: TlsPolicy, timeouts: SmtpTimeouts, wheel: TimerWheel): Promise<DestinationConnection> {
    const socket = await connectFrom(spec.sourceIp, spec.address, spec.port, timeouts.connectMs);
    const c = new DestinationConnection(spec, socket, wheel);
    c.#policy = policy;
    c.local = `${socket.localAddress}:${socket.localPort}`;
    try {
      await c.#handshake(timeouts);
    } catch (err) {
      c.destroy(err instanceof Error ? err.message : String(err));
      throw err;
    }
    return c;
  }

  async #handshake(timeouts: SmtpTimeouts): Promise<void> {
    let state: OpenState = { phase: 'greeting', ehloName: this.spec.ehloName, policy: this.#policy, plainEhlo: null };
    let reply = await this.#expect(timeouts.greetingMs);
    this.greeting = reply;
    for (;;) {
      const step = openStep(state, reply);
      switch (step.do) {
        case 'fail':
          throw new SmtpConnectionError(step.code, step.message, step.reply);
        case 'ready':
          this.ehlo = step.ehlo;
          this.extensions = step.extensions;
          return;
        case 'send':
          if (state.phase === 'ehlo' && step.phase === 'starttls') state = { ...state, plainEhlo: reply };
          state = { ...state, phase: step.phase };
          reply = await this.command(step.line, timeouts.commandMs);
          break;
        case 'starttls':
          await this.#startTls(timeouts.commandMs);
          state = { ...state, phase: 'ehlo-tls' };
          reply = await this.command(`EHLO ${this.spec.ehloName}`, timeouts.commandMs);
          break;
      }
    }
  }

  #startTls(timeoutMs: number): Promise<void> {
    const raw = this.#socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('error');
    raw.removeAllListeners('close');
    // bytes the destination sent after its 220 were not protected by TLS: drop them (RFC 3207
    // §5, the STARTTLS command injection of CVE-2011-0411)
    this.#parser = new ReplyParser();
    const { verifyName, sni } = this.spec.tls;
    const sessionKey = tlsSessionKey(this.spec);
    const session = tlsSessions.get(sessionKey);
    return new Promise((resolve, reject) => {
      const s: TLSSocket = tlsConnect({
        socket: raw,
        ...(session !== undefined ? { session } : {}),
        ...(sni !== null ? { servername: sni } : {}),
        rejectUnauthorized: verifyName !== null,
        ...(verifyName !== null ? { checkServerIdentity: (_host, cert) => checkServerIdentity(verifyName, cert) } : {}),
      });
      const timer = this.#wheel.add(timeoutMs, () => {
        s.destroy();
        reject(new SmtpConnectionError(421, `TLS handshake with the destination timed out after ${timeoutMs}ms`, null, true));
      });
      s.on('session', (ticket: Buffer) => rememberTlsSession(sessionKey, ticket));
      s.once('secureConnect', () => {
        timer.cancel();
        s.removeAllListeners('error');
        const cipher = s.getCipher();
        this.tls = { version: s.getProtocol() ?? cipher.version, cipher: cipher.name, verified: verifyName !== null, resumed: s.isSessionReused() };
        this.#socket = s;
        this.#attach(s);
        resolve();
      });
      s.once('error', (err) => {
        timer.cancel();
        s.destroy();
        reject(new SmtpConnectionError(421, `TLS with the destination failed: ${err.message}`, null, true));
      });
    });
  }

  #attach(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => {
      let replies: Reply[];
      try {
        replies = this.#parser.push(chunk);
      } catch (err) {
        return this.destroy(err instanceof ReplyError ? `destination broke the protocol: ${err.message}` : String(err));
      }
      for (const r of replies) {
        const w = this.#waiters.shift();
        if (w === undefined) {
          // nothing was asked: a 421 while idle ("timeout, closing") or garbage; either way done
          this.destroy(`unexpected reply from the destination: ${replySummary(r)}`);
          return;
        }
        w.timer.cancel();
        w.resolve(r);
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => this.destroy(`destination connection error: ${err.code ?? err.message}`));
    socket.on('close', () => this.destroy('destination closed the connection'));
    socket.on('end', () => this.destroy('destination closed the connection'));
    socket.on('drain', () => {
      this.#blockTimer?.cancel();
      this.#blockTimer = null;
    });
  }

  #expect(timeoutMs: number): Promise<Reply> {
    return new Promise((resolve, reject) => {
      if (this.deadReason !== null) return reject(new SmtpConnectionError(421, this.deadReason));
      const timer = this.#wheel.add(timeoutMs, () => this.destroy(`destination did not answer within ${timeoutMs}ms`));
      this.#waiters.push({ resolve, reject, timer });
    });
  }

  /** Sends one command line and resolves with its reply. Several may be outstanding (PIPELINING). */
  command(line: string, timeoutMs: number): Promise<Reply> {
    if (this.deadReason === null) this.#socket.write(Buffer.from(`${line}\r\n`, 'latin1'));
    return this.#expect(timeoutMs);
  }

  /** True if the destination offered PIPELINING (RFC 2920): commands() may send a group at once. */
  get pipelining(): boolean {
    return this.extensions.has('PIPELINING');
  }

  /** True if the destination offered CHUNKING (RFC 3030): BDAT chunks may be sent with writeBody. */
  get chunking(): boolean {
    return this.extensions.has('CHUNKING');
  }

  /**
   * Sends a group of command lines in one write (RFC 2920 §3.1: only to a destination that
   * offered PIPELINING, and DATA only last) and returns one promise per line for its reply, in
   * order; `timeoutsMs[i]` bounds the wait for reply i. Every promise is settled: with the reply,
   * or with an SmtpConnectionError once the connection dies.
   */
  commands(lines: readonly string[], timeoutsMs: readonly number[]): Promise<Reply>[] {
    if (this.deadReason === null) this.#socket.write(Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1'));
    return lines.map((_, i) => this.#expect(timeoutsMs[i] ?? timeoutsMs[timeoutsMs.length - 1] ?? 0));
  }

  /**
   * Writes body bytes; returns false when the destination's side is full (wait for drainOnce).
   * A write the destination does not take within `blockTimeoutMs` kills the connection.
   */
  writeBody(chunk: Buffer, blockTimeoutMs: number): boolean {
    if (this.deadReason !== null) return true;
    const ok = this.#socket.write(chunk);
    if (!ok && this.#blockTimer === null) {
      this.#blockTimer = this.#wheel.add(blockTimeoutMs, () => this.destroy(`destination took no DATA for ${blockTimeoutMs}ms`));
    }
    return ok;
  }

  /** Calls fn once the destination's side can take more (or the connection died). */
  drainOnce(fn: () => void): void {
    if (this.deadReason !== null || this.#socket.writableLength === 0) return fn();
    const done = (): void => {
      this.#socket.removeListener('drain', done);
      this.#socket.removeListener('close', done);
      fn();
    };
    this.#socket.once('drain', done);
    this.#socket.once('close', done);
  }

  /** The reply to what was written last (the final reply after a body's "<CRLF>.<CRLF>"). */
  awaitReply(timeoutMs: number): Promise<Reply> {
    return this.#expect(timeoutMs);
  }

  /** QUIT politely (RFC 5321 §4.1.1.10), then close; never waits longer than `timeoutMs`. */
  quit(timeoutMs = 5000): void {
    if (this.deadReason !== null) return;
    this.command('QUIT', timeoutMs).then(
      () => this.destroy('quit'),
      () => {},
    );
    this.#socket.end();
  }

  destroy(why: string): void {
    if (this.deadReason !== null) return;
    this.deadReason = why;
    this.#blockTimer?.cancel();
    this.#socket.destroy();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) {
      w.timer.cancel();
      w.reject(new SmtpConnectionError(421, why));
    }
    this.onDead?.(why);
  }
}

