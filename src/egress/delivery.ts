// One delivery, whatever front-end it came in by (native CONNECT, SOCKS5, PROXY v2): checked
// against the egress policy, a connection slot of its throttle taken (waiting if needed), the
// destination resolved and checked, the outbound connection made from the chosen source address,
// then the tunnel. One log record per delivery.
import { closeSoon } from '../net/close.js';
import { OWNER, type OwnedSocket } from '../net/owner.js';
import { lookup } from 'node:dns/promises';
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { DerivedThrottleConfig, EgressConfig } from '../config/parse.js';
import { derivedDeclaration, derivedThrottleKey, UNLIMITED_MESSAGES_PER_HOUR } from '../throttle/derived.js';
import type { Logger } from '../log/logger.js';
import type { Declaration } from '../throttle/manager.js';
import type { AcquireOutcome, ThrottleService } from '../throttle/service.js';
import { checkDestination, checkRequest, CONNECT_CODES, parseConnect, type ConnectRequest, type Refusal } from './policy.js';
import { openFrom, splice, type EgressError, type TunnelResult } from './tunnel.js';
import { deliverSmtp, type SmtpDeliveryContext } from './smtp-delivery.js';
import { deliveryFrontEnd, deliveryOutcome, type MetricsHooks } from '../metrics/hooks.js';

export interface DeliveryContext {
  egress(): EgressConfig;
  /** the throttle-manager id of the MTA's current control session, if it has one */
  sessionId(name: string): string | undefined;
  /** [derived_throttle]: the limits of the throttles derived for SOCKS5, PROXY v2 and the relay */
  derivedThrottle(): DerivedThrottleConfig;
  throttle: ThrottleService;
  /** open tunnels (MTA side), for the status line and shutdown */
  tunnels: Set<Socket>;
  /**
   * deliveries not yet open (waiting for a slot, resolving, connecting), with a function that
   * refuses one (on shutdown): they count against egress.max_tunnels too
   */
  pending: Map<Socket, (r: Refusal) => void>;
  stopping(): boolean;
  /** the client got past its front-end's handshake: it no longer counts as a pending handshake */
  admitted(socket: Socket): void;
  log: Logger;
  /** smtp-mode deliveries: the shared pool (native front-end only) */
  smtp: SmtpDeliveryContext;
  /** told how each delivery ended */
  metrics?: MetricsHooks;
}

/** How a front-end answers its client: a success line, a SOCKS reply, or just closing. */
export interface DeliveryReplies {
  connected(local: string, remote: string): void;
  /** must end the client connection */
  refused(r: Refusal): void;
}

export interface Delivery {
  /** who asked: an MTA instance name, "socks5:user", "proxy-v2" (for logs) */
  readonly who: string;
  readonly req: ConnectRequest;
  /**
   * The throttle owner: the control session that declared req.throttle (native), or null for a
   * throttle derived from (source, destination) with limits from [derived_throttle].
   */
  readonly owner: string | null;
  /**
   * For owner null: the derived throttle's declaration, when the front-end made it already
   * (derivedDeclaration(); req.throttle is its key). deliver() makes it otherwise.
   */
  readonly derived?: Declaration;
}

/** The throttle-manager session that owns all derived throttles. */
export const DERIVED_OWNER = 'derived';

/** ipaddr.process(address).toString(), remembered ("::ffff:192.0.2.1" -> "192.0.2.1"). */
const canonicalMemo = new Map<string, string>();
function canonical(address: string): string {
  let c = canonicalMemo.get(address);
  if (c === undefined) {
    c = ipaddr.process(address).toString();
    if (canonicalMemo.size >= 4096) canonicalMemo.clear();
    canonicalMemo.set(address, c);
  }
  return c;
}

export { derivedThrottleKey };

/** Bytes a client may send before its tunnel is open (kept for the tunnel); more is a protocol error. */
const MAX_EARLY_BYTES = 64 * 1024;

/**
 * The address to connect to, for the source address's family. getaddrinfo (which reads
 * /etc/hosts, as operators expect) has no timeout of its own: bounded here by timeoutMs.
 */
export function resolveDestination(req: ConnectRequest, timeoutMs: number): Promise<string | Refusal> {
  return isAddress(req.host) ? Promise.resolve(req.host) : resolveName(req, timeoutMs);
}

/** resolveDestination() without a promise for an address (SOCKS5 and PROXY v2 requests name addresses). */
function resolveNow(req: ConnectRequest, timeoutMs: number): string | Promise<string | Refusal> {
  return isAddress(req.host) ? req.host : resolveName(req, timeoutMs);
}

/** Literal addresses seen: ipaddr's parser is a regex cascade, and a delivery asked it 3-6 times. */
const addressMemo = new Map<string, boolean>();
function isAddress(host: string): boolean {
  let ok = addressMemo.get(host);
  if (ok === undefined) {
    ok = ipaddr.isValid(host);
    if (addressMemo.size >= 4096) addressMemo.clear(); // bounded: hosts are client input
    addressMemo.set(host, ok);
  }
  return ok;
}

async function resolveName(req: ConnectRequest, timeoutMs: number): Promise<string | Refusal> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const family = ipaddr.process(req.sourceIp).kind() === 'ipv4' ? 4 : 6;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { code: `ETIMEOUT after ${timeoutMs}ms` })), timeoutMs);
    });
    return (await Promise.race([lookup(req.host, { family }), timeout])).address;
  } catch (err) {
    return { code: CONNECT_CODES.unreachable, message: `cannot resolve ${req.host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  } finally {
    clearTimeout(timer);
  }
}

/** What refuses a delivery before anything is resolved or waited for: policy, shutdown, max_tunnels. */
export function admission(ctx: DeliveryContext, req: ConnectRequest, egress: EgressConfig): Refusal | null {
  const policy = checkRequest(req, egress);
  if (policy !== null) return policy;
  if (ctx.stopping()) return { code: CONNECT_CODES.shuttingDown, message: 'proxy shutting down' };
  if (ctx.tunnels.size + ctx.pending.size >= egress.maxTunnels) {
    return { code: CONNECT_CODES.tooManyTunnels, message: `egress.max_tunnels (${egress.maxTunnels}) reached (${ctx.tunnels.size} open, ${ctx.pending.size} opening)` };
  }
  return null;
}

const ignore = (): void => {};

/** A delivery's connection slot back; a derived throttle nothing uses any more is forgotten. */
function releaseLease(ctx: DeliveryContext, d: Delivery, leaseId: number | null): void {
  if (leaseId !== null) ctx.throttle.release(leaseId);
  // a derived throttle lives only while deliveries use it, unless it limits messages (the relay
  // counts them): forgetting it would refill its bucket (the relay bounds how many it keeps)
  const m = ctx.throttle.manager;
  if (d.owner === null && m.inUse(d.req.throttle) === 0 && m.waiting(d.req.throttle) === 0 && (m.limits(d.req.throttle)?.maxMessagesPerHour ?? UNLIMITED_MESSAGES_PER_HOUR) >= UNLIMITED_MESSAGES_PER_HOUR) {
    ctx.throttle.undeclare(DERIVED_OWNER, d.req.throttle);
  }
}

/**
 * The end of an open tunnel: its slot back, the metrics, the one delivery record. Built outside
 * deliver(), so that the callback an idle tunnel holds keeps these few values, not deliver()'s
 * whole scope (its handshake closures, replies, timers: ~1 KiB a tunnel, bench/idle.mjs).
 */
function tunnelEnd(ctx: DeliveryContext, mta: Socket, d: Delivery, peer: string, leaseId: number | null, local: string, destination: string): (result: TunnelResult) => void {
  return (result) => {
    const { req, who } = d;
    ctx.tunnels.delete(mta);
    releaseLease(ctx, d, leaseId);
    ctx.metrics?.delivery({ frontEnd: deliveryFrontEnd(who, d.owner), mode: 'tunnel', outcome: deliveryOutcome(result.outcome), sourceIp: req.sourceIp, bytesUp: result.bytesUp, bytesDown: result.bytesDown });
    // the fields in the order they always had (destination: where the request's was, now resolved)
    ctx.log.info(
      {
        mtaproxy_event: 'delivery', session: who, peer, source_ip: req.sourceIp, destination, throttle: req.throttle, local, host: req.host,
        bytes_up: result.bytesUp, bytes_down: result.bytesDown, duration_ms: Math.round(result.durationMs), outcome: result.outcome,
      },
      `delivery(${who}): ${local} -> ${destination} throttle=${req.throttle} up=${result.bytesUp} down=${result.bytesDown} ${Math.round(result.durationMs)}ms ${result.outcome}`,
    );
  };
}

type WatchedSocket = OwnedSocket;

/** 'data' while the delivery is opened: kept for the tunnel (`this` is the MTA socket). */
function onWatchData(this: WatchedSocket, chunk: Buffer): void {
  const o = this[OWNER];
  if (o instanceof Opening) o.early(chunk);
}

/** 'end' or 'close' while the delivery is opened: the client gave up. */
function onWatchGone(this: WatchedSocket): void {
  const o = this[OWNER];
  if (o instanceof Opening) o.abandon('client closed before the tunnel was open');
}

/**
 * One delivery from the front-end's request to its tunnel: a class whose methods are shared by
 * every delivery, and module functions as the MTA socket's listeners, not ~20 closures per
 * delivery. Three callbacks (the throttle's grant, the connect's outcome, shutdown's refusal) are
 * made once each.
 */
class Opening {
  readonly ctx: DeliveryContext;
  readonly mta: WatchedSocket;
  readonly d: Delivery;
  readonly replies: DeliveryReplies;
  readonly peer: string;
  readonly started = performance.now();
  readonly egress: EgressConfig;
  cancelWait: (() => void) | null = null;
  leaseId: number | null = null;
  done = false;
  /** an outbound connection is being made: its slot stays taken until that settles */
  opening = false;
  /** what the client sent before the tunnel was open */
  readonly kept: Buffer[];
  keptBytes: number;
  /** the address connected to (canonical) */
  target = '';

  constructor(ctx: DeliveryContext, mta: Socket, d: Delivery, replies: DeliveryReplies, first: Buffer | null, egress: EgressConfig) {
    this.ctx = ctx;
    this.mta = mta;
    this.d = d;
    this.replies = replies;
    this.egress = egress;
    this.peer = `${mta.remoteAddress}:${mta.remotePort}`;
    this.kept = first === null || first.length === 0 ? [] : [first];
    this.keptBytes = first?.length ?? 0;
  }

  /** the fields every record of this delivery starts with (built only for a record) */
  fields(): Record<string, string> {
    const { req, who } = this.d;
    return { mtaproxy_event: 'delivery', session: who, peer: this.peer, source_ip: req.sourceIp, destination: `${req.host}:${req.port}`, throttle: req.throttle };
  }

  releaseSlot(): void {
    releaseLease(this.ctx, this.d, this.leaseId);
    this.leaseId = null;
  }

  refuse(r: Refusal): void {
    this.ctx.pending.delete(this.mta);
    if (this.done) {
      // abandoned while the outbound connect was under way: the slot is free only now
      if (this.opening) this.releaseSlot();
      return;
    }
    this.done = true;
    this.releaseSlot();
    const { req, who } = this.d;
    this.ctx.metrics?.delivery({ frontEnd: deliveryFrontEnd(who, this.d.owner), mode: 'tunnel', outcome: 'refused' });
    this.ctx.log.warn({ ...this.fields(), code: r.code, outcome: 'refused' }, `delivery(${who}): ${req.sourceIp} -> ${req.host}:${req.port} throttle=${req.throttle} refused: ${r.code} ${r.message}`);
    this.replies.refused(r);
  }

  // The client gave up while we waited or connected (FIN, RST or error): give everything back.
  // To notice, keep reading while we wait; what arrives early is kept for the tunnel.
  abandon(why: string): void {
    this.cancelWait?.();
    this.ctx.pending.delete(this.mta);
    if (this.done) return;
    this.done = true;
    if (!this.opening) this.releaseSlot(); // else connected() releases it once the connect settles
    this.ctx.metrics?.delivery({ frontEnd: deliveryFrontEnd(this.d.who, this.d.owner), mode: 'tunnel', outcome: 'abandoned' });
    this.ctx.log.info({ ...this.fields(), outcome: 'abandoned' }, `delivery(${this.d.who}): ${why}`);
    this.mta.destroy();
  }

  early(chunk: Buffer): void {
    this.keptBytes += chunk.length;
    if (this.keptBytes > MAX_EARLY_BYTES) return this.abandon(`client sent over ${MAX_EARLY_BYTES} bytes before the tunnel was open (an SMTP client waits for the greeting); closed`);
    this.kept.push(chunk);
  }

  watch(): void {
    const mta = this.mta;
    mta[OWNER] = this;
    mta.on('data', onWatchData);
    // on, not once (abandon() is idempotent, and stopWatching removes them): no once-wrappers
    mta.on('end', onWatchGone);
    mta.on('close', onWatchGone);
    mta.on('error', ignore);
    mta.resume();
  }

  // the tunnel takes over in the same turn (no read can come between): the socket stays
  // flowing, and what came early is handed to it, not unshifted (a pause, a readStop and a
  // readStart less per delivery)
  stopWatching(): void {
    const mta = this.mta;
    mta.removeListener('data', onWatchData);
    mta.removeListener('end', onWatchGone);
    mta.removeListener('close', onWatchGone);
    mta[OWNER] = undefined; // an idle tunnel's socket keeps nothing of its opening
  }

  /** shutdown refuses a delivery not yet open (ctx.pending) */
  readonly shutdown = (r: Refusal): void => {
    this.cancelWait?.();
    this.refuse(r);
  };

  /** the throttle's answer */
  readonly granted = (outcome: AcquireOutcome): void => {
    this.cancelWait = null;
    if (!outcome.ok) return this.refuse({ code: outcome.code, message: outcome.message });
    this.leaseId = outcome.lease.id;
    if (this.done) return this.releaseSlot();
    this.open();
  };

  open(): void {
    this.opening = true;
    // a literal address (SOCKS5 and PROXY v2 requests name one) goes on in this turn, no promise
    const resolved = resolveNow(this.d.req, this.egress.connectTimeoutMs);
    if (typeof resolved === 'string') return this.connectTo(resolved);
    void resolved.then((address) => this.connectTo(address));
  }

  /** The destination's address is known: checked, then the outbound connection. */
  connectTo(address: string | Refusal): void {
    if (typeof address !== 'string') return this.refuse(address);
    const req = this.d.req;
    const e = this.egress;
    const bad = checkDestination(address, req.sourceIp, e);
    if (bad !== null) return this.refuse(bad);
    // "::ffff:192.0.2.1" is an IPv4 destination: connect to it as one (from an IPv4 source)
    this.target = canonical(address);
    openFrom(req.sourceIp, this.target, req.port, e.connectTimeoutMs, this.ctx.smtp.wheel, this.connected);
  }

  /** the outbound connect's outcome */
  readonly connected = (err: EgressError | null, remote: Socket | null): void => {
    if (remote === null) return this.refuse(err === null ? { code: CONNECT_CODES.unreachable, message: 'connect failed' } : { code: err.code, message: err.message });
    if (this.done) {
      remote.destroy();
      this.releaseSlot();
      return;
    }
    const { ctx, mta, d, target } = this;
    const { req, who } = d;
    this.done = true;
    this.opening = false;
    ctx.pending.delete(mta);
    this.stopWatching();
    const local = `${remote.localAddress}:${remote.localPort}`;
    const destination = target.includes(':') ? `[${target}]:${req.port}` : `${target}:${req.port}`;
    this.replies.connected(local, destination);
    ctx.tunnels.add(mta);
    if (ctx.log.isLevelEnabled('debug')) ctx.log.debug({ ...this.fields(), local, destination, host: req.host }, `delivery(${who}): ${local} -> ${destination} open (waited ${Math.round(performance.now() - this.started)}ms)`);
    // what the tunnel keeps for its lifetime is only what its end needs (tunnelEnd's scope, not this object)
    const lease = this.leaseId;
    this.leaseId = null;
    splice(mta, remote, this.egress.idleTimeoutMs, ctx.smtp.wheel, this.kept.splice(0), tunnelEnd(ctx, mta, d, this.peer, lease, local, destination));
  };
}

/**
 * `first`: bytes the front-end read past its handshake (the MTA's first SMTP bytes), kept for the
 * tunnel as early bytes are. The MTA socket must be flowing or paused with nothing unshifted.
 */
export function deliver(ctx: DeliveryContext, mta: Socket, d0: Delivery, replies: DeliveryReplies, first: Buffer | null = null): void {
  ctx.admitted(mta);
  // a delivery that declares no throttle takes the derived one of its destination, whose key a
  // [derived_throttle] rule may name (shared with native MTAs that declare it)
  const derived = d0.owner === null ? (d0.derived ?? derivedDeclaration(ctx.derivedThrottle(), d0.req.sourceIp, d0.req.host, d0.req.port)) : null;
  const d: Delivery = derived === null || derived.key === d0.req.throttle ? d0 : { ...d0, req: { ...d0.req, throttle: derived.key } };
  const req = d.req;
  const egress = ctx.egress();
  const o = new Opening(ctx, mta, d, replies, first, egress);
  o.watch();
  const refusal = admission(ctx, req, egress);
  if (refusal !== null) return o.refuse(refusal);
  ctx.pending.set(mta, o.shutdown);
  // declared while any delivery uses it (a rule's named key with native declarations too is
  // declared again each time, harmlessly)
  if (derived !== null) ctx.throttle.declareIfChanged(DERIVED_OWNER, derived);
  const waitMs = Math.min(req.waitMs ?? egress.throttleWaitTimeoutMs, egress.throttleWaitTimeoutMs);
  // heldByDelivery: the slot stays taken until this delivery ends, even if the control session
  // that declared the throttle goes away or is replaced meanwhile (the tunnel is still open)
  // every slot taken, some by idle shared connections (smtp mode) of this throttle: one goes, so
  // a tunnel does not wait for the pool's idle timeout
  const m = ctx.throttle.manager;
  const limits = m.limits(req.throttle);
  if (limits !== null && m.inUse(req.throttle) >= limits.maxConnections) ctx.smtp.pool.retireIdle(req.throttle, 1);
  o.cancelWait = ctx.throttle.acquire(d.owner ?? DERIVED_OWNER, req.throttle, 'connection', waitMs, o.granted, { heldByDelivery: true });
}

/** The native front-end's CONNECT line: text replies, then the tunnel. */
export function handleNativeConnect(ctx: DeliveryContext, name: string, line: string, mta: Socket): void {
  const replies: DeliveryReplies = {
    connected: (local, remote) => mta.write(`${CONNECT_CODES.connected} connected ${local} -> ${remote}\n`),
    refused: (r) => {
      mta.end(`${r.code} ${r.message}\n`);
      closeSoon(mta);
    },
  };
  const req = parseConnect(line);
  if ('code' in req) {
    ctx.metrics?.delivery({ frontEnd: 'native', mode: 'tunnel', outcome: 'refused' });
    ctx.log.warn({ mtaproxy_event: 'delivery', session: name, code: req.code, outcome: 'refused' }, `delivery(${name}): refused: ${req.code} ${req.message}`);
    return replies.refused(req);
  }
  const owner = ctx.sessionId(name);
  if (owner === undefined) {
    const r = { code: CONNECT_CODES.throttleUnknown, message: `${name} has no control session: open one and DECLARE ${req.throttle} first` };
    ctx.metrics?.delivery({ frontEnd: 'native', mode: req.smtp === null ? 'tunnel' : 'smtp', outcome: 'refused' });
    ctx.log.warn({ mtaproxy_event: 'delivery', session: name, code: r.code, outcome: 'refused' }, `delivery(${name}): refused: ${r.code} ${r.message}`);
    return replies.refused(r);
  }
  if (req.smtp !== null) return deliverSmtp(ctx, ctx.smtp, mta, { who: name, req, owner }, replies);
  deliver(ctx, mta, { who: name, req, owner }, replies);
}
