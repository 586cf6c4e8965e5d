// SOCKS5 front-end (RFC 1928 CONNECT, RFC 1929 username/password, and KumoMTA's BIND-then-CONNECT
// way of choosing the source address). See docs/socks5.md. The byte parsing and every decision
// that needs no socket live in src/protocol/socks5.ts; this is the state machine around them.
import { closeSoon } from '../net/close.js';
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Socks5Config, Socks5User } from '../config/parse.js';
import { deliver, type DeliveryContext, type DeliveryReplies } from '../egress/delivery.js';
import { derivedDeclaration } from '../throttle/derived.js';
import type { Logger } from '../log/logger.js';
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
const ignore = (): void => {};

export function serveSocks5(socket: Socket, ctx: Socks5Context): void {
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  const config = ctx.config;
  let step: Step = 'greeting';
  let received: Buffer = EMPTY;
  let user: Socks5User | null = null;
  /** the source address a KumoMTA-style BIND chose for the CONNECT that follows */
  let boundSource: string | null = null;

  const who = (): string => (user === null ? 'socks5' : `socks5:${user.username}`);

  const stop = (): void => {
    step = 'done';
    timer.cancel();
    socket.removeListener('data', onData);
    socket.removeListener('end', onEnd);
    // nothing of the negotiation's scope stays with the socket (an idle tunnel holds it for hours);
    // the daemon's own 'error' listener stays
    socket.removeListener('close', onClose);
    socket.removeListener('error', ignore);
  };

  /** Ends the negotiation: an optional last message, a log line with the reason, close. */
  const refuse = (code: string, reason: string, last: Buffer | null = null): void => {
    if (step === 'done') return;
    stop();
    ctx.log.warn({ mtaproxy_event: 'socks5_refused', peer, session: who(), code }, `socks5: ${peer}: refused: ${reason}; closing`);
    if (last !== null && !socket.destroyed) {
      socket.end(last);
      closeSoon(socket);
    } else {
      socket.destroy();
    }
  };
  const refuseRequest = (rep: ReplyCode, reason: string): void => refuse(`rep_${rep}`, `${reason} (reply: ${REPLY_TEXT[rep]})`, encodeReply(rep));

  // on the daemon's timer wheel: no timer of its own per connection
  const timer = ctx.delivery.smtp.wheel.add(ctx.handshakeTimeoutMs, () => refuse('timeout', `SOCKS5 negotiation not finished within ${ctx.handshakeTimeoutMs}ms (step: ${step})`));

  const onEnd = (): void => refuse('eof', `client closed the connection during the SOCKS5 ${step}`);

  /** Which address a CONNECT goes out from: BIND's, the account's, the listener's default, or the address the client reached us on. */
  const sourceFor = (): string | null => {
    if (boundSource !== null) return boundSource;
    if (user?.sourceIp) return user.sourceIp;
    if (config.sourceIp !== null) return config.sourceIp;
    const local = socket.localAddress;
    if (local !== undefined && ipaddr.isValid(local)) {
      const ip = ipaddr.process(local).toString();
      if (ctx.delivery.egress().sourceIps.includes(ip)) return ip;
    }
    return null;
  };

  const handleRequest = (): boolean => {
    const parsed = parseRequest(received);
    if (parsed.status === 'incomplete') return false;
    if (parsed.status === 'error') {
      refuseRequest(parsed.reply, parsed.reason);
      return false;
    }
    const request = parsed.value;
    received = received.subarray(parsed.length);
    if (request.command === 'udp-associate') {
      refuseRequest(REP.commandNotSupported, 'UDP ASSOCIATE is not supported');
      return false;
    }
    if (request.command === 'bind') {
      // KumoMTA: BIND names the source address (port 0); one reply, then CONNECT on this stream.
      if (boundSource !== null) {
        refuseRequest(REP.commandNotSupported, 'a second BIND on one connection');
        return false;
      }
      if (request.kind === 'domain') {
        refuseRequest(REP.addressTypeNotSupported, 'BIND needs the source IP address, not a name');
        return false;
      }
      if (!ctx.delivery.egress().sourceIps.includes(request.host)) {
        refuseRequest(REP.notAllowed, `BIND to ${request.host}: not in egress.source_ips`);
        return false;
      }
      // an account pinned to a source address (its reputation, its tenant) cannot pick another
      if (user?.sourceIp && user.sourceIp !== request.host) {
        refuseRequest(REP.notAllowed, `BIND to ${request.host}: account ${user.username} sends from ${user.sourceIp} only`);
        return false;
      }
      boundSource = request.host;
      socket.write(encodeReply(REP.succeeded, { ip: request.host, port: 0 }));
      if (ctx.log.isLevelEnabled('debug')) ctx.log.debug({ mtaproxy_event: 'socks5_bind', peer, session: who(), source_ip: request.host }, `socks5: ${peer}: source ${request.host} chosen by BIND`);
      return true; // the CONNECT follows
    }
    const sourceIp = sourceFor();
    if (sourceIp === null) {
      refuseRequest(REP.notAllowed, 'no source address: send BIND <source-ip> first, or set source_ip for the account or for [socks5]');
      return false;
    }
    stop();
    // the delivery reads from here on (in this turn: nothing is missed); what followed the
    // request in this read is handed to it
    const first = received.length > 0 ? received : null;
    received = EMPTY; // the closure outlives the negotiation (the 'close' listener): keep no bytes
    // the derived throttle's declaration, made once here for deliver() (its key is req.throttle)
    const derived = derivedDeclaration(ctx.delivery.derivedThrottle(), sourceIp, request.host, request.port);
    const req = { sourceIp, host: request.host, port: request.port, throttle: derived.key, waitMs: null, smtp: null };
    const replies: DeliveryReplies = {
      connected: (local) => socket.write(encodeReply(REP.succeeded, splitHostPort(local))),
      refused: (r) => {
        const rep = replyForRefusal(r.code);
        if (socket.destroyed) return;
        socket.end(encodeReply(rep));
        closeSoon(socket);
      },
    };
    deliver(ctx.delivery, socket, { who: who(), req, owner: null, derived }, replies, first);
    return false;
  };

  /** Runs the state machine over what has been received; each step consumes its message. */
  const advance = (): void => {
    for (;;) {
      if (step === 'greeting') {
        const g = parseGreeting(received);
        if (g.status === 'incomplete') return;
        if (g.status === 'error') return refuse('greeting', g.reason);
        received = received.subarray(g.length);
        const method = chooseMethod(g.value.methods, { hasUsers: config.users.length > 0, allowUnauthenticated: config.allowUnauthenticated });
        if (method === METHOD.noAcceptable) {
          const offered = g.value.methods.map((m) => `0x${m.toString(16).padStart(2, '0')}`).join(',');
          return refuse('no_method', `no acceptable authentication method (offered ${offered}; ${config.allowUnauthenticated ? 'username/password or none' : 'username/password required'})`, encodeMethodSelection(METHOD.noAcceptable));
        }
        socket.write(encodeMethodSelection(method));
        step = method === METHOD.usernamePassword ? 'auth' : 'request';
      } else if (step === 'auth') {
        const c = parseCredentials(received);
        if (c.status === 'incomplete') return;
        if (c.status === 'error') return refuse('auth', c.reason, encodeAuthStatus(false));
        received = received.subarray(c.length);
        const account = accountsOf(config).match(c.value);
        // the username is client input: logged escaped, the password never
        if (account === null) return refuse('auth_failed', `wrong username or password (username "${printable(c.value.username)}")`, encodeAuthStatus(false));
        user = account;
        socket.write(encodeAuthStatus(true));
        step = 'request';
      } else if (step === 'request') {
        if (!handleRequest()) return;
      } else {
        return;
      }
    }
  };

  const onData = (chunk: Buffer): void => {
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    // a well-behaved client never has more than greeting + auth + request (≤ 1032 bytes) outstanding here
    if (received.length > 2048) return refuse('oversized', `${received.length} bytes without a complete SOCKS5 message`);
    advance();
  };

  socket.on('data', onData);
  socket.on('end', onEnd);
  const onClose = (): void => timer.cancel();
  socket.on('error', ignore);
  socket.on('close', onClose);
}
