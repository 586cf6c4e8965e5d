// The native front-end: the HMAC handshake, then the connection's role (a control session).
import { closeSoon } from '../net/close.js';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { SharedSecret } from '../config/secret.js';
import type { Logger } from '../log/logger.js';
import { MAX_CONTROL_LINE } from '../protocol/control.js';
import { greetingLine, NONCE_BYTES, serverProof, tlsExporter, verifyAuth, type ChannelBinding } from '../protocol/handshake.js';
import { LineSplitter, LineTooLongError } from '../protocol/lines.js';
import { ControlSession, InputGate, type SessionServices } from './session.js';

/**
 * Control-session requests handled per turn of the event loop; the rest of a batch waits for the
 * next turn (reading paused meanwhile), so 80 sessions that each pipeline 1024 requests cannot
 * hold the loop for half a second (bench/stalls-daemon.mjs). A budget over all sessions together
 * was tried: it starves whichever session comes last in a turn (the probe's PING waited 0.5 s).
 */
export const LINES_PER_TURN = 16;

export interface NativeContext {
  /** Read at the moment of each handshake, so a reload applies to the next connection. */
  secrets(): readonly SharedSecret[];
  handshakeTimeoutMs(): number;
  log: Logger;
  now(): number;
  /** Registers the new session (replacing an older one with the same name). */
  openSession(session: ControlSession): void;
  closeSession(session: ControlSession, reason: string): void;
  services: SessionServices;
  /** Takes over the connection for a delivery (CONNECT). */
  deliver(name: string, line: string, socket: Socket): void;
  /** The peer proved it knows the secret: it no longer counts against the handshake caps. */
  authenticated(): void;
  /** Counts a failed handshake (key: peer address and reply): how many to report now, 0 to stay quiet (rate limit). */
  handshakeFailed(key: string): number;
}

type State =
  | { step: 'auth' }
  | { step: 'role'; name: string }
  | { step: 'session'; session: ControlSession }
  | { step: 'delivery' };

/** What a plaintext client on a TLS listener gets, in plain text, before the connection is closed. */
export const PLAINTEXT_REFUSAL =
  "ERR 421 this listener requires TLS: connect with TLS (mtaproxy/client: tls option), or set tls = false in the proxy's config for a trusted network";
/**
 * A TLS client speaks first (ClientHello); an mtaproxy plaintext client waits for the greeting.
 * Silence this long on a TLS listener means a plaintext client.
 */
export const PLAINTEXT_SILENCE_MS = 1500;
/** TLS records start with their content type; a handshake record (ClientHello) is 22. */
const TLS_HANDSHAKE_RECORD = 0x16;

export interface NativeTlsContext extends NativeContext {
  /** read at the moment of each connection, so a reload's new certificate applies to the next one */
  secureContext(): SecureContext;
  /** the TLS socket now carries the connection (the daemon tracks it in place of the TCP socket) */
  wrapped(socket: TLSSocket): void;
}

/**
 * A native connection on a TLS listener: detects a plaintext client (silence, or a first byte
 * that cannot start a ClientHello) and answers it PLAINTEXT_REFUSAL; otherwise runs the TLS
 * handshake within handshake_timeout, then the native handshake over TLS, bound to the
 * connection's tls-exporter value.
 */
export function serveNativeTls(raw: Socket, ctx: NativeTlsContext): void {
  const peer = `${raw.remoteAddress}:${raw.remotePort}`;
  const timeoutMs = ctx.handshakeTimeoutMs();
  const started = ctx.now();
  let settled = false;
  let tls: TLSSocket | null = null;

  /** `kind` keys the rate limit of the log line, per peer address */
  const fail = (kind: string, reason: string, reply: string | null): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    clearTimeout(silence);
    const count = ctx.handshakeFailed(`${raw.remoteAddress ?? '?'} ${kind}`);
    if (count > 0) {
      ctx.log.warn(
        { mtaproxy_event: 'handshake_failed', peer, count },
        `native: handshake from ${peer} failed: ${reason}${count > 1 ? ` (${count} failures from this address since last logged)` : ''}`,
      );
    }
    if (tls !== null) {
      tls.destroy();
    } else if (reply !== null) {
      raw.removeListener('data', onFirstData);
      raw.end(`${reply}\n`);
      closeSoon(raw);
    } else {
      raw.destroy();
    }
  };

  const timer = setTimeout(() => fail('tls-timeout', `no TLS handshake within ${timeoutMs}ms`, tls === null ? PLAINTEXT_REFUSAL : null), timeoutMs);
  timer.unref();
  const silence = setTimeout(
    () => fail('tls-silent', `sent nothing for ${PLAINTEXT_SILENCE_MS}ms on a TLS listener (a plaintext client?); answered that TLS is required`, PLAINTEXT_REFUSAL),
    Math.min(PLAINTEXT_SILENCE_MS, timeoutMs),
  );
  silence.unref();

  const onFirstData = (chunk: Buffer): void => {
    clearTimeout(silence);
    raw.pause();
    if (chunk[0] !== TLS_HANDSHAKE_RECORD) {
      const shown = chunk.subarray(0, 16).toString('latin1').replace(/[^\x20-\x7e]/g, '.');
      return fail('tls-plaintext', `plaintext on a TLS listener (first bytes "${shown}"); answered that TLS is required`, PLAINTEXT_REFUSAL);
    }
    // the TLS socket reads what is buffered first (the ClientHello), then takes over the handle
    raw.unshift(chunk);
    const socket = new TLSSocket(raw, { isServer: true, secureContext: ctx.secureContext() });
    tls = socket;
    ctx.wrapped(socket);
    socket.on('error', (err: Error) => {
      if (!settled) return fail('tls-error', `TLS handshake failed: ${err.message}`, null);
      ctx.log.debug({ mtaproxy_event: 'socket_error', err: err.message }, `socket error: ${err.message}`);
    });
    socket.once('secure', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      serveNative(socket, ctx, { binding: tlsExporter(socket), elapsedMs: ctx.now() - started });
    });
  };
  raw.once('data', onFirstData);
  // a peer that closes before a byte (a TCP health check, a port scan) is not a failed handshake
  raw.once('end', () => {
    if (tls !== null || settled) return;
    settled = true;
    clearTimeout(timer);
    clearTimeout(silence);
    raw.destroy();
  });
  raw.once('close', () => {
    clearTimeout(timer);
    clearTimeout(silence);
  });
}

export interface NativeOptions {
  /** the TLS connection's tls-exporter value; undefined on a plaintext listener (tls = false) */
  binding?: ChannelBinding;
  /** part of handshake_timeout already spent (the TLS handshake) */
  elapsedMs?: number;
}

export function serveNative(socket: Socket, ctx: NativeContext, opts: NativeOptions = {}): void {
  const { binding } = opts;
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  const serverNonce = randomBytes(NONCE_BYTES).toString('hex');
  // one limit for the whole connection: the handshake timeout bounds what a peer can make us hold
  const splitter = new LineSplitter(MAX_CONTROL_LINE);
  let state: State = { step: 'auth' };

  let rejected = false;
  const reject = (reason: string, reply: string, name?: string): void => {
    // once: the rest of a read's lines must not answer again (a write after end() would destroy
    // the socket before a TLS socket has flushed the first reply)
    if (rejected) return;
    rejected = true;
    // one line per peer address and interval: a client failing in a loop must not fill the disk
    const count = ctx.handshakeFailed(`${socket.remoteAddress ?? '?'} ${reply}`);
    if (count > 0) {
      ctx.log.warn(
        { mtaproxy_event: 'handshake_failed', peer, count, ...(name === undefined ? {} : { session: name }) },
        `native: handshake from ${peer} failed: ${reason}${count > 1 ? ` (${count} failures from this address since last logged)` : ''}`,
      );
    }
    socket.end(`${reply}\n`);
    closeSoon(socket);
    state = { step: 'auth' };
    socket.removeListener('data', onData);
  };

  const timeoutMs = ctx.handshakeTimeoutMs();
  const timer = setTimeout(() => {
    if (state.step === 'role') reject(`authenticated but no CONTROL within ${timeoutMs}ms`, 'ERR 421 handshake timeout', state.name);
    else reject(`no authentication within ${timeoutMs}ms`, 'ERR 421 handshake timeout');
  }, Math.max(0, timeoutMs - (opts.elapsedMs ?? 0)));
  timer.unref();

  const onLine = (line: string): void => {
    switch (state.step) {
      case 'auth': {
        const verdict = verifyAuth(line, serverNonce, ctx.secrets(), binding);
        if (!verdict.ok) return reject(verdict.reason, 'ERR 535 authentication failed', verdict.name);
        socket.write(`OK ${serverProof(verdict.secret, serverNonce, verdict.clientNonce, verdict.name, binding)}\n`);
        state = { step: 'role', name: verdict.name };
        ctx.authenticated();
        return;
      }
      case 'role': {
        if (line.startsWith('CONNECT ')) {
          clearTimeout(timer);
          const name = state.name;
          state = { step: 'delivery' };
          socket.removeListener('data', onData);
          // nothing of the handshake's scope stays with the socket (an idle tunnel holds it for hours)
          socket.removeListener('close', onClose);
          socket.removeListener('end', onEnd);
          socket.pause();
          if (splitter.buffered > 0 || pendingLines > 0) {
            return reject('sent data after CONNECT before the reply', '501 send nothing after CONNECT until its reply', name);
          }
          ctx.deliver(name, line, socket);
          return;
        }
        if (line !== 'CONTROL') return reject(`expected CONTROL or CONNECT after authentication, got "${line.slice(0, 40)}"`, 'ERR 500 expected CONTROL or CONNECT', state.name);
        clearTimeout(timer);
        const session = new ControlSession({
          name: state.name,
          socket,
          splitter,
          log: ctx.log,
          now: ctx.now,
          services: ctx.services,
          onClose: (s, reason) => ctx.closeSession(s, reason),
          gate,
        });
        state = { step: 'session', session };
        socket.write(`250 control session ${session.name}\n`);
        ctx.openSession(session);
        return;
      }
      case 'session':
        state.session.handleLine(line);
        return;
      case 'delivery':
        return;
    }
  };
  let pendingLines = 0;

  const onData = (chunk: Buffer): void => {
    let lines: string[];
    try {
      lines = splitter.push(chunk);
    } catch (err) {
      if (!(err instanceof LineTooLongError)) throw err;
      if (state.step === 'session') return state.session.fail(err.message);
      return reject(err.message, 'ERR 500 line too long', state.step === 'role' ? state.name : undefined);
    }
    if (queued.length > 0) {
      for (const l of lines) queued.push(l); // keep the order: the batch before goes first
      return;
    }
    run(lines, 0);
  };
  const gate = new InputGate(socket);
  /** a session's batch not handled yet: its lines from queuedFrom on (at most one read's worth; [] when none) */
  let queued: string[] = [];
  let queuedFrom = 0;
  /** the next turn of a batch (no closure per turn, no copy of the rest of the lines) */
  const nextTurn = (): void => {
    const rest = queued;
    const from = queuedFrom;
    queued = [];
    queuedFrom = 0;
    if (socket.destroyed || state.step !== 'session' || state.session.closed) return;
    run(rest, from);
    if (queued.length === 0) gate.release('batch');
  };
  const run = (lines: string[], from: number): void => {
    let budget = LINES_PER_TURN;
    for (let i = from; i < lines.length; i++) {
      if (state.step === 'session' && budget-- <= 0) {
        queued = lines;
        queuedFrom = i;
        gate.hold('batch');
        setImmediate(nextTurn);
        return;
      }
      pendingLines = lines.length - i - 1;
      onLine(lines[i] as string);
      if (socket.destroyed || rejected || state.step === 'delivery') return;
    }
  };

  const onClose = (): void => clearTimeout(timer);
  // the listener allows half-open connections (for tunnels); before that, a FIN ends it all
  const onEnd = (): void => {
    if (state.step === 'session') state.session.end('MTA closed its side');
    else if (state.step !== 'delivery') socket.end();
  };
  socket.on('data', onData);
  socket.on('close', onClose);
  socket.on('end', onEnd);
  socket.write(`${greetingLine(serverNonce)}\n`);
}
