// PROXY protocol v2 front-end: the client's v2 header names the egress source address and the
// destination (KumoMTA's ha_proxy_*, Momentum's ha_proxy_client). See docs/proxy-v2.md.
// The protocol has no reply channel: a valid header starts the tunnel at once; a refused one is
// logged and the connection closed (after an SMTP 421 greeting when the delivery itself was refused
// and the destination is not the implicit-TLS port 465, so the MTA logs the reason).
import { closeSoon } from '../net/close.js';
import { OWNER, type OwnedSocket } from '../net/owner.js';
import type { Socket } from 'node:net';
import { deliver, type DeliveryContext, type DeliveryReplies } from '../egress/delivery.js';
import { derivedDeclaration } from '../throttle/derived.js';
import type { ConnectRequest, Refusal } from '../egress/policy.js';
import type { Logger } from '../log/logger.js';
import type { WheelTimer } from '../net/wheel.js';
import { decodeProxyV2, proxyV2Target } from '../protocol/proxy-v2.js';

export interface ProxyV2Context {
  delivery: DeliveryContext;
  log: Logger;
  /** time the client has to send a complete header */
  handshakeTimeoutMs: number;
}

/** Port of SMTP over implicit TLS: the client expects a TLS handshake, not an SMTP line. */
const SMTPS_PORT = 465;

/**
 * What the MTA reads in place of the MX's greeting when its delivery is refused: a 421 (RFC 5321
 * §3.1: "service not available, closing"), so it defers the message and logs why. Null (just
 * close) where a text line would not be read as SMTP.
 */
export function refusalGreeting(port: number, r: Refusal): string | null {
  if (port === SMTPS_PORT) return null;
  // one line, printable ASCII only: the message may quote what the client sent
  const text = `${r.code} ${r.message}`.replace(/[^\x20-\x7e]/g, '?').slice(0, 400);
  return `421 4.4.0 mtaproxy refused the connection: ${text}\r\n`;
}

const EMPTY = Buffer.alloc(0);

type HandshakeSocket = OwnedSocket;

function handshakeOf(s: HandshakeSocket): Handshake | undefined {
  const h = s[OWNER];
  return h instanceof Handshake ? h : undefined;
}

function onHeaderData(this: HandshakeSocket, chunk: Buffer): void {
  handshakeOf(this)?.data(chunk);
}

function onHeaderEnd(this: HandshakeSocket): void {
  const h = handshakeOf(this);
  if (h === undefined) return;
  const n = h.received.length;
  h.refuse('eof', `client closed the connection ${n === 0 ? 'before sending anything' : `after ${n} bytes of an incomplete PROXY v2 header`}`);
}

function onHeaderClose(this: HandshakeSocket): void {
  handshakeOf(this)?.finish();
}

/**
 * One connection's wait for its header: a class whose methods every connection shares and module
 * functions as the socket's listeners (no closures per connection but the timeout's and the
 * delivery's replies).
 */
class Handshake {
  readonly socket: HandshakeSocket;
  readonly ctx: ProxyV2Context;
  readonly peer: string;
  // never more than one header (decodeProxyV2 bounds it) plus the rest of the read that ended it
  received: Buffer = EMPTY;
  finished = false;
  readonly timer: WheelTimer;

  constructor(socket: Socket, ctx: ProxyV2Context) {
    this.socket = socket;
    this.ctx = ctx;
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    // on the daemon's timer wheel: no timer of its own per connection
    this.timer = ctx.delivery.smtp.wheel.add(ctx.handshakeTimeoutMs, this.timedOut);
  }

  readonly timedOut = (): void => {
    const timeoutMs = this.ctx.handshakeTimeoutMs;
    const n = this.received.length;
    this.refuse('timeout', n === 0 ? `no PROXY v2 header within ${timeoutMs}ms (nothing received; is the sender configured to send one?)` : `incomplete PROXY v2 header after ${timeoutMs}ms (${n} bytes received)`);
  };

  finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.timer.cancel();
    const socket = this.socket;
    socket.removeListener('data', onHeaderData);
    socket.removeListener('end', onHeaderEnd);
    // nothing of the handshake stays with the socket (an idle tunnel holds it for hours)
    socket.removeListener('close', onHeaderClose);
    socket[OWNER] = undefined;
  }

  /** No delivery was attempted: log why and close at once (nothing can be said to the client). */
  refuse(code: string, reason: string): void {
    if (this.finished) return;
    this.finish();
    this.ctx.log.warn({ mtaproxy_event: 'proxy_v2_refused', peer: this.peer, code, bytes: this.received.length }, `proxy-v2: ${this.peer}: refused: ${reason}; closing`);
    this.socket.destroy();
  }

  data(chunk: Buffer): void {
    const received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
    this.received = received;
    const result = decodeProxyV2(received);
    if (result.status === 'incomplete') return;
    if (result.status === 'invalid') return this.refuse(result.code, result.message);
    const header = result.header;
    const target = proxyV2Target(header);
    if ('code' in target) return this.refuse(target.code, target.message);
    this.finish();
    const { ctx, socket, peer } = this;
    // the delivery reads from here on (in this turn: nothing is missed); what followed the header
    // in this read is handed to it
    // the derived throttle's declaration, made once here for deliver() (its key is req.throttle)
    const derived = derivedDeclaration(ctx.delivery.derivedThrottle(), target.sourceIp, target.host, target.port);
    const req: ConnectRequest = { sourceIp: target.sourceIp, host: target.host, port: target.port, throttle: derived.key, waitMs: null, smtp: null };
    const replies: DeliveryReplies = {
      connected: ignore, // no reply channel: the MX's greeting is the client's "connected"
      refused: (r) => {
        const greeting = refusalGreeting(req.port, r);
        if (greeting === null || socket.destroyed) {
          socket.destroy();
          return;
        }
        socket.end(greeting);
        closeSoon(socket);
      },
    };
    if (ctx.log.isLevelEnabled('debug')) {
      ctx.log.debug(
        { mtaproxy_event: 'proxy_v2_header', peer, source_ip: req.sourceIp, destination: `${req.host}:${req.port}`, tlvs: header.tlvs.length, early_bytes: received.length - header.length },
        `proxy-v2: ${peer}: header ${req.sourceIp} -> ${req.host}:${req.port}`,
      );
    }
    const first = received.length > header.length ? received.subarray(header.length) : null;
    this.received = EMPTY;
    deliver(ctx.delivery, socket, { who: 'proxy-v2', req, owner: null, derived }, replies, first);
  }
}

const ignore = (): void => {};

export function serveProxyV2(socket: Socket, ctx: ProxyV2Context): void {
  const s = socket as HandshakeSocket;
  s[OWNER] = new Handshake(socket, ctx);
  s.on('data', onHeaderData);
  s.on('end', onHeaderEnd);
  s.on('close', onHeaderClose);
}
