// CONNECT … mode=smtp (docs/protocol.md §4.7): checked like a tunnel (egress policy, destination),
// then served from the shared pool: the reply to CONNECT comes once a destination connection of
// the link's key is open (or an idle one was found), and the link becomes a virtual SMTP session
// (smtp-link.ts). The link itself holds no throttle slot: the destination connections do, cached
// or not, so MTAs share a destination's connection limit at transaction granularity.
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { SmtpConfig } from '../config/parse.js';
import type { TimerWheel } from '../net/wheel.js';
import type { ConnectionSpec, SmtpTimeouts } from '../smtp/connection.js';
import type { BorrowRequest, PoolLimits, SlotOutcome, SmtpPool } from '../smtp/pool.js';
import type { Delivery, DeliveryContext, DeliveryReplies } from './delivery.js';
import { admission, resolveDestination } from './delivery.js';
import { SmtpLink } from './smtp-link.js';
import { checkDestination, checkRequest, type Refusal } from './policy.js';
import { linkOutcome } from '../metrics/hooks.js';

export interface SmtpDeliveryContext {
  readonly pool: SmtpPool;
  readonly wheel: TimerWheel;
  readonly config: () => SmtpConfig;
  /** open links (for the status line and the drain) */
  readonly links: Set<SmtpLink>;
}

export function poolLimits(c: SmtpConfig): PoolLimits {
  return { idleTimeoutMs: c.idleTimeoutMs, maxAgeMs: c.reuseTimeLimitMs, maxTransactions: c.reuseCountLimit };
}

export function smtpTimeouts(c: SmtpConfig, connectMs: number): SmtpTimeouts {
  return {
    connectMs,
    greetingMs: c.greetingTimeoutMs,
    commandMs: c.commandTimeoutMs,
    dataInitMs: c.dataInitTimeoutMs,
    dataBlockMs: c.dataBlockTimeoutMs,
    dataDoneMs: c.dataDoneTimeoutMs,
  };
}

/** Connections are shared only within one key: same source, destination, EHLO name, TLS policy and throttle. */
/**
 * Idle connections beyond their throttle's limit (the MTAs declared a lower max_connections, or
 * the declaring sessions left) are QUIT: called on every status tick.
 */
export function trimPool(smtp: SmtpDeliveryContext, throttle: DeliveryContext['throttle']): void {
  const m = throttle.manager;
  for (const group of smtp.pool.groups()) {
    const limits = m.limits(group);
    if (limits === null) continue;
    const excess = m.inUse(group) - limits.maxConnections;
    if (excess > 0) smtp.pool.retireIdle(group, excess);
  }
}

export function poolKey(spec: ConnectionSpec, throttle: string): string {
  const t = spec.tls;
  return `${spec.sourceIp}|${spec.address}:${spec.port}|${spec.ehloName.toLowerCase()}|${t.mode}|${t.verifyName ?? '-'}|${t.sni ?? '-'}|${throttle}`;
}

export function deliverSmtp(ctx: DeliveryContext, smtp: SmtpDeliveryContext, mta: Socket, d: Delivery & { owner: string }, replies: DeliveryReplies): void {
  ctx.admitted(mta);
  const { req, who } = d;
  const opts = req.smtp;
  if (opts === null) throw new Error('deliverSmtp without mode=smtp');
  const peer = `${mta.remoteAddress}:${mta.remotePort}`;
  const fields = { mtaproxy_event: 'delivery', mode: 'smtp', session: who, peer, source_ip: req.sourceIp, destination: `${req.host}:${req.port}`, throttle: req.throttle };
  let done = false;
  let cancel: (() => void) | null = null;
  const refuse = (r: Refusal): void => {
    ctx.pending.delete(mta);
    if (done) return;
    done = true;
    cancel?.();
    ctx.metrics?.delivery({ frontEnd: 'native', mode: 'smtp', outcome: 'refused' });
    ctx.log.warn({ ...fields, code: r.code, outcome: 'refused' }, `delivery(${who}): smtp ${req.sourceIp} -> ${req.host}:${req.port} throttle=${req.throttle} refused: ${r.code} ${r.message}`);
    replies.refused(r);
  };
  const onGone = (): void => {
    ctx.pending.delete(mta);
    if (done) return;
    done = true;
    cancel?.();
    ctx.metrics?.delivery({ frontEnd: 'native', mode: 'smtp', outcome: 'abandoned' });
    ctx.log.info({ ...fields, outcome: 'abandoned' }, `delivery(${who}): client closed before the smtp link was open`);
    mta.destroy();
  };
  mta.once('close', onGone);
  mta.on('error', () => {});

  const egress = ctx.egress();
  const refusal = admission(ctx, req, egress);
  if (refusal !== null) return refuse(refusal);
  ctx.pending.set(mta, refuse);
  const waitMs = Math.min(req.waitMs ?? egress.throttleWaitTimeoutMs, egress.throttleWaitTimeoutMs);

  void resolveDestination(req, egress.connectTimeoutMs).then((address) => {
    if (done) return;
    if (typeof address !== 'string') return refuse(address);
    const bad = checkDestination(address, req.sourceIp, egress);
    if (bad !== null) return refuse(bad);
    const target = ipaddr.process(address).toString();
    const spec: ConnectionSpec = { sourceIp: req.sourceIp, address: target, port: req.port, ehloName: opts.ehloName, tls: opts.tls };
    const destination = target.includes(':') ? `[${target}]:${req.port}` : `${target}:${req.port}`;
    // a new destination connection takes a connection slot of the throttle, held by the
    // connection (heldByDelivery: it survives the control session) until it is retired
    const acquireSlot: BorrowRequest['acquireSlot'] = (cb) => {
      // every slot taken, one by an idle connection of another key of this throttle (another
      // EHLO name or TLS policy): that one goes, so this borrower need not wait for it to time out
      const m = ctx.throttle.manager;
      const limits = m.limits(req.throttle);
      if (limits !== null && m.inUse(req.throttle) >= limits.maxConnections) smtp.pool.retireIdle(req.throttle, 1);
      return ctx.throttle.acquire(
        // the MTA's control session now: a reconnect (§4.5) must not strand its open links
        ctx.sessionId(who) ?? d.owner,
        req.throttle,
        'connection',
        waitMs,
        (outcome) => {
          const slot: SlotOutcome = outcome.ok ? { ok: true, release: () => ctx.throttle.release(outcome.lease.id) } : { ok: false, code: outcome.code, message: outcome.message };
          cb(slot);
        },
        { heldByDelivery: true },
      );
    };
    const borrow = { key: poolKey(spec, req.throttle), group: req.throttle, spec, acquireSlot };
    cancel = smtp.pool.borrow(borrow, (b) => {
      cancel = null;
      if (done) {
        if (b.ok) smtp.pool.giveBack(b.conn, true);
        return;
      }
      if (!b.ok) return refuse({ code: b.code, message: b.message });
      done = true;
      ctx.pending.delete(mta);
      mta.removeListener('close', onGone);
      const conn = b.conn;
      const tls = conn.tls === null ? 'none' : `${conn.tls.version}/${conn.tls.cipher}`;
      replies.connected(conn.local, `${destination} smtp reused=${conn.uses > 0 ? 'yes' : 'no'} tls=${tls}`);
      // the link's transactions borrow again; until then the connection serves others
      const { greeting, ehlo, extensions } = conn;
      smtp.pool.giveBack(conn, true);
      ctx.tunnels.add(mta);
      let link: SmtpLink | null = null;
      const started = performance.now();
      link = new SmtpLink(
        { pool: smtp.pool, throttle: ctx.throttle, wheel: smtp.wheel, log: ctx.log, metrics: ctx.metrics },
        mta,
        {
          who,
          owner: () => ctx.sessionId(who) ?? null,
          // a reload may have taken the destination out of egress policy: checked at every MAIL
          policy: () => checkRequest(req, ctx.egress()) ?? checkDestination(target, req.sourceIp, ctx.egress()),
          throttle: req.throttle, borrow, greeting, ehlo, extensions, waitMs, idleTimeoutMs: egress.idleTimeoutMs, destination, sourceIp: req.sourceIp },
        (result) => {
          ctx.tunnels.delete(mta);
          if (link !== null) smtp.links.delete(link);
          ctx.metrics?.delivery({ frontEnd: 'native', mode: 'smtp', outcome: linkOutcome(result.outcome), sourceIp: req.sourceIp });
          ctx.log.info(
            { ...fields, destination, local: conn.local, transactions: result.transactions, duration_ms: Math.round(performance.now() - started), outcome: result.outcome },
            `delivery(${who}): smtp ${req.sourceIp} -> ${destination} throttle=${req.throttle} transactions=${result.transactions} ${Math.round(performance.now() - started)}ms ${result.outcome}`,
          );
        },
      );
      smtp.links.add(link);
      link.start();
    });
  });
}
