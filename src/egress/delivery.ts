// One delivery: CONNECT checked against the egress policy, a connection slot of its throttle
// taken (waiting if needed), the destination resolved and checked, the outbound connection made
// from the chosen source address, then the tunnel. One log record per delivery.
import { lookup } from 'node:dns/promises';
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { EgressConfig } from '../config/parse.js';
import type { Logger } from '../log/logger.js';
import type { ThrottleService } from '../throttle/service.js';
import { checkDestination, checkRequest, CONNECT_CODES, parseConnect, type ConnectRequest, type Refusal } from './policy.js';
import { connectFrom, EgressError, splice } from './tunnel.js';

export interface DeliveryContext {
  egress(): EgressConfig;
  /** the throttle-manager id of the MTA's current control session, if it has one */
  sessionId(name: string): string | undefined;
  throttle: ThrottleService;
  /** open tunnels (MTA side), for the status line and shutdown */
  tunnels: Set<Socket>;
  stopping(): boolean;
  log: Logger;
}

async function resolve(req: ConnectRequest): Promise<string | Refusal> {
  if (ipaddr.isValid(req.host)) return req.host;
  try {
    const family = ipaddr.process(req.sourceIp).kind() === 'ipv4' ? 4 : 6;
    return (await lookup(req.host, { family })).address;
  } catch (err) {
    return { code: CONNECT_CODES.unreachable, message: `cannot resolve ${req.host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
}

export function handleDelivery(ctx: DeliveryContext, name: string, line: string, mta: Socket): void {
  const peer = `${mta.remoteAddress}:${mta.remotePort}`;
  const started = performance.now();
  let cancelWait: (() => void) | null = null;
  let leaseId: number | null = null;
  let done = false;
  const base = { mtaproxy_event: 'delivery', session: name, peer };

  const refuse = (r: Refusal, req?: ConnectRequest): void => {
    if (done) return;
    done = true;
    if (leaseId !== null) ctx.throttle.release(leaseId);
    const where = req === undefined ? '' : ` ${req.sourceIp} -> ${req.host}:${req.port} throttle=${req.throttle}`;
    ctx.log.warn(
      { ...base, ...(req && { source_ip: req.sourceIp, destination: `${req.host}:${req.port}`, throttle: req.throttle }), code: r.code, outcome: 'refused' },
      `delivery(${name}):${where} refused: ${r.code} ${r.message}`,
    );
    mta.end(`${r.code} ${r.message}\n`);
    mta.destroySoon();
  };

  // the MTA gave up while we waited or connected: nothing to report back, give everything back
  mta.once('close', () => {
    cancelWait?.();
    if (!done) {
      done = true;
      if (leaseId !== null) ctx.throttle.release(leaseId);
      ctx.log.info({ ...base, outcome: 'abandoned' }, `delivery(${name}): MTA closed before the tunnel was open`);
    }
  });
  mta.on('error', () => {});

  const req = parseConnect(line);
  if ('code' in req) return refuse(req);
  const egress = ctx.egress();
  const policy = checkRequest(req, egress);
  if (policy !== null) return refuse(policy, req);
  if (ctx.stopping()) return refuse({ code: CONNECT_CODES.shuttingDown, message: 'proxy shutting down' }, req);
  if (ctx.tunnels.size >= egress.maxTunnels) return refuse({ code: CONNECT_CODES.tooManyTunnels, message: `egress.max_tunnels (${egress.maxTunnels}) reached` }, req);
  const sessionId = ctx.sessionId(name);
  if (sessionId === undefined) {
    return refuse({ code: CONNECT_CODES.throttleUnknown, message: `${name} has no control session: open one and DECLARE ${req.throttle} first` }, req);
  }
  const open = async (r: ConnectRequest, e: EgressConfig): Promise<void> => {
    const address = await resolve(r);
    if (typeof address !== 'string') return refuse(address, r);
    const bad = checkDestination(address, r.sourceIp, e);
    if (bad !== null) return refuse(bad, r);
    let remote: Socket;
    try {
      remote = await connectFrom(r.sourceIp, address, r.port, e.connectTimeoutMs);
    } catch (err) {
      return refuse(err instanceof EgressError ? { code: err.code, message: err.message } : { code: CONNECT_CODES.unreachable, message: String(err) }, r);
    }
    if (done) {
      remote.destroy();
      return;
    }
    done = true;
    const local = `${remote.localAddress}:${remote.localPort}`;
    const destination = `${address}:${r.port}`;
    mta.write(`${CONNECT_CODES.connected} connected ${local} -> ${destination}\n`);
    ctx.tunnels.add(mta);
    const fields = { ...base, source_ip: r.sourceIp, local, destination, host: r.host, throttle: r.throttle };
    ctx.log.debug(fields, `delivery(${name}): ${local} -> ${destination} open (waited ${Math.round(performance.now() - started)}ms)`);
    splice(mta, remote, e.idleTimeoutMs, (result) => {
      ctx.tunnels.delete(mta);
      if (leaseId !== null) ctx.throttle.release(leaseId);
      ctx.log.info(
        { ...fields, bytes_up: result.bytesUp, bytes_down: result.bytesDown, duration_ms: Math.round(result.durationMs), outcome: result.outcome },
        `delivery(${name}): ${local} -> ${destination} throttle=${r.throttle} up=${result.bytesUp} down=${result.bytesDown} ${Math.round(result.durationMs)}ms ${result.outcome}`,
      );
    });
  };

  const waitMs = Math.min(req.waitMs ?? egress.throttleWaitTimeoutMs, egress.throttleWaitTimeoutMs);
  cancelWait = ctx.throttle.acquire(sessionId, req.throttle, 'connection', waitMs, (outcome) => {
    cancelWait = null;
    if (!outcome.ok) return refuse({ code: outcome.code, message: outcome.message }, req);
    leaseId = outcome.lease.id;
    if (done) return ctx.throttle.release(outcome.lease.id);
    void open(req, egress);
  });
}
