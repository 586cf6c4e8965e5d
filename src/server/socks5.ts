// SOCKS5 front-end (RFC 1928 CONNECT, RFC 1929 username/password, and KumoMTA's BIND-then-CONNECT
// way of choosing the source address). See docs/socks5.md. The byte parsing and every decision
// that needs no socket live in src/protocol/socks5.ts; this is the state machine around them.
import { closeSoon } from '../net/close.js';
import { OWNER, type OwnedSocket } from '../net/owner.js';
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Socks5Config, Socks5User } from '../config/parse.js';
import { deliver, type DeliveryContext, type DeliveryReplies } from '../egress/delivery.js';
import type { ConnectRequest, Refusal } from '../egress/policy.js';
import { derivedDeclaration } from '../throttle/derived.js';
import type { Logger } from '../log/logger.js';
import type { WheelTimer } from '../net/wheel.js';
import {
  AccountTable,
  chooseMethod,
  encodeAuthStatus,
  encodeMethodSelection,
  encodeReply,
  METHOD,
  parseCredentials,
  parseGreeting,
  parseRequest,
  printable,
  REP,
  REPLY_TEXT,
  replyForRefusal,
  splitHostPort,
  type ReplyCode,
} from '../protocol/socks5.js';

export interface Socks5Context {
  /** the [socks5] table in effect when the client connected */
  config: Socks5Config;
  delivery: DeliveryContext;
  log: Logger;
  /** time the client has for the SOCKS negotiation */
  handshakeTimeoutMs: number;
}

// Account digests are computed once per loaded config, not per connection.
const tables = new WeakMap<Socks5Config, AccountTable<Socks5User>>();
function accountsOf(config: Socks5Config): AccountTable<Socks5User> {
  let t = tables.get(config);
  if (t === undefined) {
    t = new AccountTable(config.users);
    tables.set(config, t);
  }
  return t;
}

type Step = 'greeting' | 'auth' | 'request' | 'done';

const EMPTY = Buffer.alloc(0);

type NegotiationSocket = OwnedSocket;

function negotiationOf(s: NegotiationSocket): Negotiation | undefined {
  const n = s[OWNER];
  return n instanceof Negotiation ? n : undefined;
}

function onSocksData(this: NegotiationSocket, chunk: Buffer): void {
  negotiationOf(this)?.data(chunk);
}

function onSocksEnd(this: NegotiationSocket): void {
  const n = negotiationOf(this);
  if (n === undefined) return;
  n.refuse('eof', `client closed the connection during the SOCKS5 ${n.step}`);
}

function onSocksClose(this: NegotiationSocket): void {
  negotiationOf(this)?.stop();
}

/**
 * One connection's SOCKS5 negotiation: a class whose methods every connection shares and module
 * functions as the socket's listeners (no closures per connection but the timeout's). It is also
 * the delivery's replies (connected/refused are its methods), so a delivery costs no object of its
 * own for them; the delivery drops it once the tunnel is open (nothing of it stays with the socket).
 */
class Negotiation implements DeliveryReplies {
  readonly socket: NegotiationSocket;
  readonly ctx: Socks5Context;
  readonly peer: string;
  step: Step = 'greeting';
  // never more than 2048 bytes (data() refuses more)
  received: Buffer = EMPTY;
  user: Socks5User | null = null;
  /** the source address a KumoMTA-style BIND chose for the CONNECT that follows */
  boundSource: string | null = null;
  readonly timer: WheelTimer;

  constructor(socket: Socket, ctx: Socks5Context) {
    this.socket = socket;
    this.ctx = ctx;
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    // on the daemon's timer wheel: no timer of its own per connection
    this.timer = ctx.delivery.smtp.wheel.add(ctx.handshakeTimeoutMs, this.timedOut);
  }

  readonly timedOut = (): void => {
    this.refuse('timeout', `SOCKS5 negotiation not finished within ${this.ctx.handshakeTimeoutMs}ms (step: ${this.step})`);
  };

  who(): string {
    return this.user === null ? 'socks5' : `socks5:${this.user.username}`;
  }

  stop(): void {
    if (this.step === 'done') return;
    this.step = 'done';
    this.timer.cancel();
    const socket = this.socket;
    socket.removeListener('data', onSocksData);
    socket.removeListener('end', onSocksEnd);
    // nothing of the negotiation stays with the socket (an idle tunnel holds it for hours); the
    // daemon's own 'error' listener stays
    socket.removeListener('close', onSocksClose);
    socket[OWNER] = undefined;
  }

  /** Ends the negotiation: an optional last message, a log line with the reason, close. */
  refuse(code: string, reason: string, last: Buffer | null = null): void {
    if (this.step === 'done') return;
    this.stop();
    const { socket, peer } = this;
    this.ctx.log.warn({ mtaproxy_event: 'socks5_refused', peer, session: this.who(), code }, `socks5: ${peer}: refused: ${reason}; closing`);
    if (last !== null && !socket.destroyed) {
      socket.end(last);
      closeSoon(socket);
    } else {
      socket.destroy();
    }
  }

  refuseRequest(rep: ReplyCode, reason: string): void {
    this.refuse(`rep_${rep}`, `${reason} (reply: ${REPLY_TEXT[rep]})`, encodeReply(rep));
  }

  /** Which address a CONNECT goes out from: BIND's, the account's, the listener's default, or the address the client reached us on. */
  sourceFor(): string | null {
    if (this.boundSource !== null) return this.boundSource;
    const user = this.user;
    if (user?.sourceIp) return user.sourceIp;
    const configured = this.ctx.config.sourceIp;
    if (configured !== null) return configured;
    const local = this.socket.localAddress;
    if (local !== undefined && ipaddr.isValid(local)) {
      const ip = ipaddr.process(local).toString();
      if (this.ctx.delivery.egress().sourceIps.includes(ip)) return ip;
    }
    return null;
  }

  /** The delivery's "connected": the reply names the address it went out from. */
  connected(local: string): void {
    this.socket.write(encodeReply(REP.succeeded, splitHostPort(local)));
  }

  /** The delivery's refusal: its reply, then close. */
  refused(r: Refusal): void {
    const rep = replyForRefusal(r.code);
    const socket = this.socket;
    if (socket.destroyed) return;
    socket.end(encodeReply(rep));
    closeSoon(socket);
  }

  handleRequest(): boolean {
    const parsed = parseRequest(this.received);
    if (parsed.status === 'incomplete') return false;
    if (parsed.status === 'error') {
      this.refuseRequest(parsed.reply, parsed.reason);
      return false;
    }
    const request = parsed.value;
    this.received = this.received.subarray(parsed.length);
    if (request.command === 'udp-associate') {
      this.refuseRequest(REP.commandNotSupported, 'UDP ASSOCIATE is not supported');
      return false;
    }
    const { ctx, user } = this;
    if (request.command === 'bind') {
      // KumoMTA: BIND names the source address (port 0); one reply, then CONNECT on this stream.
      if (this.boundSource !== null) {
        this.refuseRequest(REP.commandNotSupported, 'a second BIND on one connection');
        return false;
      }
      if (request.kind === 'domain') {
        this.refuseRequest(REP.addressTypeNotSupported, 'BIND needs the source IP address, not a name');
        return false;
      }
      if (!ctx.delivery.egress().sourceIps.includes(request.host)) {
        this.refuseRequest(REP.notAllowed, `BIND to ${request.host}: not in egress.source_ips`);
        return false;
      }
      // an account pinned to a source address (its reputation, its tenant) cannot pick another
      if (user?.sourceIp && user.sourceIp !== request.host) {
        this.refuseRequest(REP.notAllowed, `BIND to ${request.host}: account ${user.username} sends from ${user.sourceIp} only`);
        return false;
      }
      this.boundSource = request.host;
      this.socket.write(encodeReply(REP.succeeded, { ip: request.host, port: 0 }));
      if (ctx.log.isLevelEnabled('debug')) ctx.log.debug({ mtaproxy_event: 'socks5_bind', peer: this.peer, session: this.who(), source_ip: request.host }, `socks5: ${this.peer}: source ${request.host} chosen by BIND`);
      return true; // the CONNECT follows
    }
    const sourceIp = this.sourceFor();
    if (sourceIp === null) {
      this.refuseRequest(REP.notAllowed, 'no source address: send BIND <source-ip> first, or set source_ip for the account or for [socks5]');
      return false;
    }
    this.stop();
    // the delivery reads from here on (in this turn: nothing is missed); what followed the
    // request in this read is handed to it
    const first = this.received.length > 0 ? this.received : null;
    this.received = EMPTY; // this object is the delivery's replies until the tunnel opens: keep no bytes
    // the derived throttle's declaration, made once here for deliver() (its key is req.throttle)
    const derived = derivedDeclaration(ctx.delivery.derivedThrottle(), sourceIp, request.host, request.port);
    const req: ConnectRequest = { sourceIp, host: request.host, port: request.port, throttle: derived.key, waitMs: null, smtp: null };
    deliver(ctx.delivery, this.socket, { who: this.who(), req, owner: null, derived }, this, first);
    return false;
  }

  /** Runs the state machine over what has been received; each step consumes its message. */
  advance(): void {
    const config = this.ctx.config;
    for (;;) {
      const step = this.step;
      if (step === 'greeting') {
        const g = parseGreeting(this.received);
        if (g.status === 'incomplete') return;
        if (g.status === 'error') return this.refuse('greeting', g.reason);
        this.received = this.received.subarray(g.length);
        const method = chooseMethod(g.value.methods, { hasUsers: config.users.length > 0, allowUnauthenticated: config.allowUnauthenticated });
        if (method === METHOD.noAcceptable) {
          const offered = g.value.methods.map((m) => `0x${m.toString(16).padStart(2, '0')}`).join(',');
          return this.refuse('no_method', `no acceptable authentication method (offered ${offered}; ${config.allowUnauthenticated ? 'username/password or none' : 'username/password required'})`, encodeMethodSelection(METHOD.noAcceptable));
        }
        this.socket.write(encodeMethodSelection(method));
        this.step = method === METHOD.usernamePassword ? 'auth' : 'request';
      } else if (step === 'auth') {
        const c = parseCredentials(this.received);
        if (c.status === 'incomplete') return;
        if (c.status === 'error') return this.refuse('auth', c.reason, encodeAuthStatus(false));
        this.received = this.received.subarray(c.length);
        const account = accountsOf(config).match(c.value);
        // the username is client input: logged escaped, the password never
        if (account === null) return this.refuse('auth_failed', `wrong username or password (username "${printable(c.value.username)}")`, encodeAuthStatus(false));
        this.user = account;
        this.socket.write(encodeAuthStatus(true));
        this.step = 'request';
      } else if (step === 'request') {
        if (!this.handleRequest()) return;
      } else {
        return;
      }
    }
  }

  data(chunk: Buffer): void {
    const received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
    this.received = received;
    // a well-behaved client never has more than greeting + auth + request (≤ 1032 bytes) outstanding here
    if (received.length > 2048) return this.refuse('oversized', `${received.length} bytes without a complete SOCKS5 message`);
    this.advance();
  }
}

export function serveSocks5(socket: Socket, ctx: Socks5Context): void {
  const s = socket as NegotiationSocket;
  s[OWNER] = new Negotiation(socket, ctx);
  s.on('data', onSocksData);
  s.on('end', onSocksEnd);
  s.on('close', onSocksClose);
}
