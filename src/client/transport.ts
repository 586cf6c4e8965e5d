// A nodemailer transport that delivers like an MTA, through mtaproxy's smtp mode (docs/client.md):
//
//   import nodemailer from 'nodemailer';
//   import { MtaproxyTransport } from 'mtaproxy/client';
//   const transporter = nodemailer.createTransport(new MtaproxyTransport({ proxy, source: '192.0.2.10', ehlo: 'mail.example.com' }));
//   const info = await transporter.sendMail({ from, to, subject, text });
//
// For each message the recipients are grouped by domain; each domain's MX hosts are resolved
// (RFC 5321 §5.1, RFC 7505 null MX) and tried in order on connection-level failures; the message
// travels over an smtp-mode link (docs/protocol.md §4.7) with nodemailer's own SMTP client, so
// the destination connection is the proxy's (shared, reused, STARTTLS by the proxy). The info
// holds every recipient's result as the destination (or the proxy) answered it.
//
// nodemailer is loaded only when a message is sent: `mtaproxy/client` stays usable without it.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { Resolver } from 'node:dns/promises';
import type { Readable } from 'node:stream';
import type { Transport } from 'nodemailer';
import type MailMessage from 'nodemailer/lib/mailer/mail-message.js';
import type SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { ControlClient, openTunnel, ProxyError, type ConnectOptions, type SmtpModeInfo } from './index.js';
import { ResilientControl } from './resilient.js';
import { isNullMx, orderMx, type MxRecord } from '../smtp/mx.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export type { MxRecord } from '../smtp/mx.js';

export interface ThrottleLimits {
  maxConnections: number;
  maxMessagesPerHour: number;
  mode: 'sum' | 'average';
}

/** What the transport asks about one message's envelope, for `source`. */
export interface TransportEnvelope {
  from: string | false;
  to: string[];
}

type OrPromise<T> = T | Promise<T>;

export interface MtaproxyTransportOptions {
  /** the proxy: host, port, the MTA instance name, the shared secret, TLS to the proxy (as openTunnel takes them) */
  proxy: ConnectOptions;
  /**
   * The control session that declares the throttles (the proxy refuses a delivery whose throttle
   * this MTA name did not declare). Omitted: the transport owns a ResilientControl with the
   * `proxy` options, started at the first message and stopped by `close()`. Given: it must be
   * a session of the same `proxy.name`; its lifetime is yours.
   */
  control?: ResilientControl | ControlClient;
  /** the source IP (one of the proxy's egress.source_ips), or a choice per domain and message */
  source: string | ((domain: string, envelope: TransportEnvelope) => OrPromise<string>);
  /**
   * The EHLO name toward destinations, or a function of the source IP. Default: the source's PTR
   * name (looked up once per source), else its address literal (`[192.0.2.10]`).
   */
  ehlo?: string | ((source: string) => OrPromise<string>);
  /** the throttle key of a delivery (default: `<domain>@<source>`) */
  throttle?: string | ((source: string, domain: string) => string);
  /**
   * What the transport declares for each throttle key before its first use. Default: { 2
   * connections, 3600 messages/h, 'sum' } when the transport owns its control session; with your
   * own `control`, nothing is declared unless you pass limits (declare the keys yourself).
   * `false`: never declare.
   */
  limits?: ThrottleLimits | ((key: string, source: string, domain: string) => ThrottleLimits) | false;
  /**
   * STARTTLS toward the destination, done by the proxy. 'opportunistic' (default): when offered,
   * without certificate checks, as MTAs deliver (Postfix `may`); 'required': no delivery without
   * it; 'none': never.
   */
  tls?: 'opportunistic' | 'required' | 'none';
  /**
   * Verify the destination's certificate (implies tls 'required'): `true` against the MX host
   * name (Postfix `verify`), or a fixed name.
   */
  verify?: true | string;
  /** SNI sent to the destination ('none' for none); default: the verify name, else the MX host name */
  sni?: string;
  /** the destination port (default 25) */
  port?: number;
  /** longest wait for a connection slot of the throttle, ms (the proxy caps it) */
  waitMs?: number;
  /** MX resolution (default: the system's DNS). Throw an error with code ENOTFOUND for a domain that does not exist, ENODATA for one without MX. */
  resolveMx?: (domain: string) => Promise<MxRecord[]>;
  /** static MX per domain (case-insensitive), checked before resolveMx: records, or "host[:port]" */
  mx?: Record<string, readonly MxRecord[] | string>;
  /** longest wait for the control session when it is not connected (default 30 s) */
  controlTimeoutMs?: number;
}

/** Where a recipient's failure came from: the destination's reply, the proxy's reply, or the transport (DNS, the link). */
export type FailureOrigin = 'destination' | 'proxy' | 'transport';

/** One recipient's failure, as in nodemailer's `info.rejectedErrors`. */
export class RecipientError extends Error {
  /** EENVELOPE (refused at MAIL/RCPT/DATA), EMESSAGE (the final reply to the body), EPROXY, EDNS, ECONNECTION */
  readonly code: string;
  readonly recipient: string;
  readonly domain: string;
  /** the reply line(s), e.g. "550 5.1.1 no such user here" */
  readonly response: string;
  readonly responseCode: number;
  /** the SMTP command it answered (MAIL FROM, RCPT TO, DATA), or CONNECT, DNS */
  readonly command: string;
  readonly origin: FailureOrigin;
  /** a 4xx: retry later; a 5xx: bounce */
  get temporary(): boolean {
    return this.responseCode < 500;
  }
  constructor(f: { code: string; recipient: string; domain: string; response: string; command: string; origin: FailureOrigin; message: string }) {
    super(`${f.message}: ${f.response}`);
    this.name = 'RecipientError';
    this.code = f.code;
    this.recipient = f.recipient;
    this.domain = f.domain;
    this.response = f.response;
    this.responseCode = Number(/^\d{3}/.exec(f.response)?.[0] ?? 0);
    this.command = f.command;
    this.origin = f.origin;
  }
}

/** One domain's delivery: which MX, from where, over what connection, and the outcome. */
export interface DestinationResult {
  domain: string;
  recipients: string[];
  accepted: string[];
  rejected: string[];
  /** the MX host:port the message went to (or the last one tried), null if none was tried */
  mx: string | null;
  /** MX hosts that failed at connection level before, with the proxy's reply */
  attempts: { mx: string; response: string }[];
  source: string | null;
  /** the proxy's local address toward the destination, ip:port (the source address in use) */
  local: string | null;
  /** the destination connection carried an earlier transaction (of any MTA) */
  reused: boolean | null;
  /** "TLSv1.3/TLS_AES_256_GCM_SHA384" or "none" toward the destination */
  tls: string | null;
  /** the proxy's id of the destination connection that carried the transaction */
  connection: number | null;
  /** the final reply: the destination's to the body, or the failure's */
  response: string;
}

/** nodemailer's info, with every field the destinations' (or the proxy's) replies. */
export interface MtaproxySentMessageInfo {
  envelope: TransportEnvelope;
  messageId: string;
  accepted: string[];
  /** refused recipients, 4xx and 5xx alike (as nodemailer's SMTP transport): see rejectedErrors[].responseCode */
  rejected: string[];
  rejectedErrors: RecipientError[];
  /** always empty: a temporary failure is in rejected, with its 4xx */
  pending: string[];
  /** the destinations' final replies, one line per domain that accepted */
  response: string;
  mtaproxy: DestinationResult[];
}

/** sendMail's error when no recipient was accepted (nodemailer's SMTP transport does the same). */
export class DeliveryError extends Error {
  readonly code = 'EENVELOPE';
  readonly response: string;
  readonly responseCode: number;
  readonly rejected: string[];
  readonly rejectedErrors: RecipientError[];
  /** every failure was a 4xx */
  readonly temporary: boolean;
  readonly info: MtaproxySentMessageInfo;
  constructor(info: MtaproxySentMessageInfo) {
    const first = info.rejectedErrors[0];
    super(`no recipient was accepted: ${info.rejectedErrors.map((e) => `<${e.recipient}> ${e.response}`).join('; ')}`);
    this.name = 'DeliveryError';
    this.response = first?.response ?? '';
    this.responseCode = first?.responseCode ?? 0;
    this.rejected = info.rejected;
    this.rejectedErrors = info.rejectedErrors;
    this.temporary = info.rejectedErrors.every((e) => e.temporary);
    this.info = info;
  }
}

/** A CONNECT refusal that says this MX host is unusable, not the delivery: try the next one. */
const NEXT_MX_CODES = new Set([421, 442, 443, 444, 552, 554]);

const DEFAULT_LIMITS: ThrottleLimits = { maxConnections: 2, maxMessagesPerHour: 3600, mode: 'sum' };

export { orderMx };

type Route = { ok: true; hosts: { host: string; port: number }[] } | { ok: false; response: string; code: string };

function parseStaticMx(value: string): MxRecord[] {
  return value.split(',').map((part, i) => {
    const s = part.trim();
    const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
    if (m === null) return { exchange: s, priority: i };
    return { exchange: m[1] ?? '', priority: i, ...(m[2] === undefined ? {} : { port: Number(m[2]) }) };
  });
}

function addressLiteral(ip: string): string {
  return isIP(ip) === 6 ? `[IPv6:${ip}]` : `[${ip}]`;
}

const HOSTNAME = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$/i;

/** The parts of nodemailer's SMTPConnection this transport uses beyond its typed API (stable since nodemailer 1). */
interface SmtpConnectionInternals {
  _sendCommand?: (command: string) => void;
  _responseActions?: ((reply: string) => void)[];
  _envelope?: { rejectedErrors?: (SMTPConnection.SMTPError & { recipient?: string })[] };
}

type SmtpErrorWithRecipients = SMTPConnection.SMTPError & { recipient?: string; rejectedErrors?: (SMTPConnection.SMTPError & { recipient?: string })[] };

export class MtaproxyTransport implements Transport<MtaproxySentMessageInfo> {
  readonly name = 'mtaproxy';
  readonly version = VERSION;
  readonly #o: MtaproxyTransportOptions;
  readonly #control: ResilientControl | ControlClient;
  readonly #ownsControl: boolean;
  #started = false;
  readonly #declared = new Map<string, Promise<void>>();
  readonly #ptr = new Map<string, Promise<string>>();
  #smtpConnection: Promise<typeof SMTPConnection> | null = null;

  constructor(options: MtaproxyTransportOptions) {
    if (options.verify !== undefined && options.tls !== undefined && options.tls !== 'required') {
      throw new TypeError(`MtaproxyTransport: verify needs tls 'required' (got tls '${options.tls}')`);
    }
    this.#o = options;
    this.#ownsControl = options.control === undefined;
    this.#control = options.control ?? new ResilientControl(options.proxy);
  }

  /** nodemailer's transport API: called by transporter.sendMail. */
  send(mail: MailMessage<MtaproxySentMessageInfo>, callback: (err: Error | null, info: MtaproxySentMessageInfo) => void): void {
    this.deliver(mail).then(
      (info) => (info.accepted.length === 0 ? callback(new DeliveryError(info), info) : callback(null, info)),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err)), undefined as unknown as MtaproxySentMessageInfo),
    );
  }

  /** Resolves when the control session is up and answers (transporter.verify()). */
  verify(): Promise<true>;
  verify(callback: (err: Error | null, success: true) => void): void;
  verify(callback?: (err: Error | null, success: true) => void): Promise<true> | void {
    const p = this.#session().then(async (c) => {
      await c.ping();
      return true as const;
    });
    if (callback === undefined) return p;
    p.then(
      (ok) => callback(null, ok),
      (err: unknown) => callback(err as Error, true),
    );
  }

  /** Stops the control session if the transport owns it (transporter.close()). */
  close(): void {
    if (this.#ownsControl && this.#control instanceof ResilientControl) void this.#control.stop();
  }

  /** One message: every domain's delivery, in parallel; resolves with the info even if nothing was accepted. */
  async deliver(mail: MailMessage<MtaproxySentMessageInfo>): Promise<MtaproxySentMessageInfo> {
    const envelope = mail.message.getEnvelope();
    const messageId = mail.message.messageId();
    const to = [...new Set(envelope.to)];
    if (to.length === 0) throw Object.assign(new Error('No recipients defined'), { code: 'EENVELOPE' });
    const byDomain = new Map<string, string[]>();
    for (const rcpt of to) {
      const domain = (rcpt.slice(rcpt.lastIndexOf('@') + 1) || rcpt).toLowerCase();
      const list = byDomain.get(domain) ?? [];
      list.push(rcpt);
      byDomain.set(domain, list);
    }
    // a stream can be read once: several destinations share one built message
    let body: () => Readable | Buffer;
    if (byDomain.size > 1) {
      const built = await mail.message.build();
      body = () => built;
    } else {
      body = () => mail.message.createReadStream();
    }
    const dsn = (mail.data as { dsn?: SMTPConnection.DSNOptions }).dsn; // as nodemailer's SMTP transport
    const smtpEnvelope = { from: envelope.from, ...(dsn === undefined ? {} : { dsn }) };
    const results = await Promise.all(
      [...byDomain].map(([domain, rcpts]) => this.#deliverDomain(domain, rcpts, { from: envelope.from, to }, smtpEnvelope, body)),
    );
    const accepted = new Set<string>();
    const errors = new Map<string, RecipientError>();
    for (const r of results) for (const a of r.result.accepted) accepted.add(a);
    for (const r of results) for (const e of r.errors) errors.set(e.recipient, e);
    const info: MtaproxySentMessageInfo = {
      envelope: { from: envelope.from, to },
      messageId,
      accepted: to.filter((t) => accepted.has(t)),
      rejected: to.filter((t) => errors.has(t)),
      rejectedErrors: to.flatMap((t) => errors.get(t) ?? []),
      pending: [],
      response: results.filter((r) => r.result.accepted.length > 0).map((r) => r.result.response).join('\n'),
      mtaproxy: results.map((r) => r.result),
    };
    return info;
  }

  async #session(): Promise<ControlClient> {
    const c = this.#control;
    if (c instanceof ControlClient) return c;
    if (this.#ownsControl && !this.#started) {
      this.#started = true;
      c.start();
    }
    const ms = this.#o.controlTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        c.ready(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new ProxyError('ECONNECTION', `no control session to ${this.#o.proxy.host}:${this.#o.proxy.port} within ${ms}ms`)), ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  #limits(key: string, source: string, domain: string): ThrottleLimits | null {
    const l = this.#o.limits;
    if (l === false) return null;
    if (l === undefined) return this.#ownsControl ? DEFAULT_LIMITS : null;
    return typeof l === 'function' ? l(key, source, domain) : l;
  }

  /** Declares a throttle once (a ResilientControl re-declares it after reconnections). */
  #declare(key: string, source: string, domain: string): Promise<void> {
    const limits = this.#limits(key, source, domain);
    if (limits === null) return Promise.resolve();
    let p = this.#declared.get(key);
    if (p === undefined) {
      const d = { key, sourceIp: source, ...limits };
      p = (async () => {
        if (this.#control instanceof ResilientControl) {
          await this.#session();
          await this.#control.declare(d);
        } else {
          await this.#control.declare(d);
        }
      })();
      this.#declared.set(key, p);
      p.catch(() => this.#declared.delete(key)); // declared again at the next message
    }
    return p;
  }

  #ehlo(source: string): Promise<string> {
    const e = this.#o.ehlo;
    if (typeof e === 'string') return Promise.resolve(e);
    if (typeof e === 'function') return Promise.resolve(e(source));
    let p = this.#ptr.get(source);
    if (p === undefined) {
      const resolver = new Resolver({ timeout: 3000, tries: 2 });
      p = resolver.reverse(source).then(
        (names) => names.find((n) => HOSTNAME.test(n)) ?? addressLiteral(source),
        () => addressLiteral(source),
      );
      this.#ptr.set(source, p);
    }
    return p;
  }

  async #route(domain: string): Promise<Route> {
    // RFC 5321 §5.1: an address literal is the host itself
    const literal = /^\[(?:IPv6:)?([^\]]+)\]$/i.exec(domain)?.[1];
    if (literal !== undefined && isIP(literal) !== 0) return { ok: true, hosts: [{ host: literal, port: this.#o.port ?? 25 }] };
    const staticMx = this.#o.mx === undefined ? undefined : Object.entries(this.#o.mx).find(([d]) => d.toLowerCase() === domain)?.[1];
    let records: MxRecord[];
    if (staticMx !== undefined) {
      records = typeof staticMx === 'string' ? parseStaticMx(staticMx) : [...staticMx];
    } else {
      try {
        records = await (this.#o.resolveMx ?? ((d: string) => new Resolver({ timeout: 5000, tries: 2 }).resolveMx(d)))(domain);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENODATA') {
          records = [];
        } else if (code === 'ENOTFOUND') {
          return { ok: false, code: 'EDNS', response: `550 5.1.2 mtaproxy transport: domain ${domain} does not exist (MX lookup: ${code})` };
        } else {
          return { ok: false, code: 'EDNS', response: `451 4.4.3 mtaproxy transport: MX lookup for ${domain} failed (${code ?? (err as Error).message}), try again later` };
        }
      }
    }
    const port = this.#o.port ?? 25;
    // RFC 5321 §5.1: no MX, the domain itself (the proxy resolves its A/AAAA)
    if (records.length === 0) return { ok: true, hosts: [{ host: domain, port }] };
    const real = records.filter((r) => !isNullMx(r));
    // RFC 7505 §3: a null MX says the domain accepts no mail
    if (real.length === 0) return { ok: false, code: 'EENVELOPE', response: `556 5.1.10 mtaproxy transport: ${domain} accepts no mail (null MX, RFC 7505)` };
    return { ok: true, hosts: orderMx(real).map((r) => ({ host: r.exchange.replace(/\.$/, '').toLowerCase(), port: r.port ?? port })) };
  }

  #loadSmtp(): Promise<typeof SMTPConnection> {
    this.#smtpConnection ??= import('nodemailer/lib/smtp-connection/index.js').then(
      (m) => m.default,
      (err: unknown) => {
        this.#smtpConnection = null;
        throw new Error(`MtaproxyTransport needs nodemailer (npm install nodemailer): ${(err as Error).message}`);
      },
    );
    return this.#smtpConnection;
  }

  async #deliverDomain(
    domain: string,
    rcpts: string[],
    envelope: TransportEnvelope,
    smtpEnvelope: Omit<SMTPConnection.Envelope, 'to'>,
    body: () => Readable | Buffer,
  ): Promise<{ result: DestinationResult; errors: RecipientError[] }> {
    const result: DestinationResult = { domain, recipients: rcpts, accepted: [], rejected: [], mx: null, attempts: [], source: null, local: null, reused: null, tls: null, connection: null, response: '' };
    const errors: RecipientError[] = [];
    const failAll = (response: string, f: { code: string; command: string; origin: FailureOrigin; message: string }, only: string[] = rcpts): void => {
      for (const recipient of only) {
        if (result.accepted.includes(recipient) || result.rejected.includes(recipient)) continue;
        errors.push(new RecipientError({ ...f, recipient, domain, response }));
        result.rejected.push(recipient);
      }
      result.response ||= response;
    };
    const fromProxy = (err: unknown, command: string): void => {
      if (err instanceof ProxyError && err.responseCode !== null) {
        failAll(err.message.replace(/^(CONNECT refused|\w+): /, ''), { code: 'EPROXY', command, origin: 'proxy', message: `mtaproxy refused ${command}` });
      } else {
        failAll(`451 4.4.1 mtaproxy transport: ${(err as Error).message}`, { code: 'ECONNECTION', command, origin: 'transport', message: `no delivery to ${domain}` });
      }
    };

    let source: string;
    let ehlo: string;
    let throttle: string;
    try {
      source = typeof this.#o.source === 'string' ? this.#o.source : await this.#o.source(domain, envelope);
      ehlo = await this.#ehlo(source);
      const t = this.#o.throttle;
      throttle = t === undefined ? `${domain}@${source}` : typeof t === 'string' ? t : t(source, domain);
    } catch (err) {
      failAll(`451 4.3.0 mtaproxy transport: ${(err as Error).message}`, { code: 'ECONNECTION', command: 'API', origin: 'transport', message: 'no source' });
      return { result, errors };
    }
    result.source = source;
    try {
      await this.#declare(throttle, source, domain);
    } catch (err) {
      fromProxy(err, 'DECLARE');
      return { result, errors };
    }
    const route = await this.#route(domain);
    if (!route.ok) {
      failAll(route.response, { code: route.code, command: 'DNS', origin: 'transport', message: `no delivery to ${domain}` });
      return { result, errors };
    }

    const tls = this.#o.verify !== undefined ? 'required' : (this.#o.tls ?? 'opportunistic');
    let link: Awaited<ReturnType<typeof openTunnel>> | null = null;
    let lastError: unknown = null;
    let lastTemporary: unknown = null;
    let where = '';
    for (const mx of route.hosts) {
      where = mx.host.includes(':') ? `[${mx.host}]:${mx.port}` : `${mx.host}:${mx.port}`;
      result.mx = where;
      const verify = this.#o.verify === true ? mx.host : this.#o.verify;
      try {
        link = await openTunnel({
          ...this.#o.proxy,
          source,
          destination: mx,
          throttle,
          ...(this.#o.waitMs === undefined ? {} : { waitMs: this.#o.waitMs }),
          smtp: { ehlo, tls, ...(verify === undefined ? {} : { verify }), ...(this.#o.sni === undefined ? {} : { sni: this.#o.sni }) },
        });
        break;
      } catch (err) {
        lastError = err;
        const code = err instanceof ProxyError ? err.responseCode : null;
        if (code !== null && code < 500) lastTemporary = err;
        result.attempts.push({ mx: where, response: err instanceof Error ? err.message : String(err) });
        if (code === null || !NEXT_MX_CODES.has(code)) break;
      }
    }
    if (link === null) {
      // a temporary failure at any MX makes the domain's failure temporary (a later try may reach it)
      fromProxy(lastTemporary ?? lastError, 'CONNECT');
      return { result, errors };
    }
    result.attempts = result.attempts.filter((a) => a.mx !== result.mx);
    result.local = link.local || null;
    const info: SmtpModeInfo | null = link.smtp;
    result.reused = info?.reused ?? null;
    result.tls = info?.tls ?? null;

    const SMTPConnectionClass = await this.#loadSmtp();
    // ignoreTLS: the link is TLS to the proxy, and STARTTLS toward the destination is the proxy's
    const conn = new SMTPConnectionClass({ connection: link.socket, name: ehlo, ignoreTLS: true });
    const socket = link.socket;
    try {
      await new Promise<void>((resolve, reject) => {
        conn.once('error', reject);
        conn.connect((err) => (err ? reject(err) : resolve()));
      });
    } catch (err) {
      socket.destroy();
      const e = err as SMTPConnection.SMTPError;
      if (e.response !== undefined && /^[45]\d\d/.test(e.response)) failAll(e.response, { code: 'ECONNECTION', command: e.command ?? 'GREETING', origin: 'destination', message: `${where} refused the session` });
      else failAll(`451 4.4.2 mtaproxy transport: the smtp-mode link to the proxy failed (${e.message})`, { code: 'ECONNECTION', command: 'CONNECT', origin: 'transport', message: `no delivery to ${domain}` });
      return { result, errors };
    }
    let lost: SMTPConnection.SMTPError | null = null;
    // a link that fails mid-transaction is reported by 'error' or 'end', not always by send's callback
    const sent = await new Promise<{ err: SmtpErrorWithRecipients | null; info: SMTPConnection.SentMessageInfo | null }>((resolve) => {
      conn.on('error', (err) => {
        lost ??= err;
        resolve({ err, info: null });
      });
      conn.once('end', () => setImmediate(() => resolve({ err: Object.assign(new Error('the link closed'), { code: 'ECONNECTION' }), info: null })));
      conn.send({ ...smtpEnvelope, to: rcpts }, body(), (err, info) => resolve({ err, info: err === null ? info : null }));
    });
    const rcptErrors = (list: readonly (SMTPConnection.SMTPError & { recipient?: string })[] | undefined): void => {
      for (const e of list ?? []) {
        if (e.recipient === undefined || e.response === undefined) continue;
        failAll(e.response, { code: 'EENVELOPE', command: 'RCPT TO', origin: 'destination', message: `${where} refused <${e.recipient}>` }, [e.recipient]);
      }
    };
    if (sent.err === null && sent.info !== null) {
      rcptErrors(sent.info.rejectedErrors as (SMTPConnection.SMTPError & { recipient?: string })[] | undefined);
      result.accepted.push(...sent.info.accepted);
      result.response = sent.info.response;
    } else if (sent.err !== null) {
      const e = sent.err;
      // refusals of single recipients stand, whatever failed after them (nodemailer keeps them in its envelope)
      rcptErrors(e.rejectedErrors ?? (conn as unknown as SmtpConnectionInternals)._envelope?.rejectedErrors);
      if (e.response !== undefined && /^[45]\d\d/.test(e.response)) {
        const command = e.command ?? 'DATA';
        // the proxy's own replies in a transaction say so (docs/protocol.md §4.7: "never a false success")
        const origin = e.response.includes('mtaproxy:') ? 'proxy' : 'destination';
        failAll(e.response, { code: e.code ?? 'EENVELOPE', command, origin, message: `${where} refused ${command}` });
      } else {
        failAll(`451 4.4.2 mtaproxy transport: the smtp-mode link failed during the transaction (${e.message}); the message may not have been delivered`, {
          code: 'ECONNECTION',
          command: e.command ?? 'DATA',
          origin: 'transport',
          message: `no delivery to ${domain}`,
        });
      }
      result.response = e.response ?? result.response;
    }
    if (lost === null && !conn.destroyed) {
      // the connection the transaction actually used (the link borrows per transaction)
      const x = await xmtaproxy(conn);
      const m = x === null ? null : /connection=(\d+) reused=(yes|no) tls=(\S+) cipher=(\S+) local=(\S+) transactions=(\d+)/.exec(x);
      if (m !== null) {
        result.connection = Number(m[1]);
        // reused = the connection carried a transaction before this one. Counted from its
        // transactions (those that reached the final reply to the body, this one included if it
        // did), not from "reused=": the proxy says yes also for the first transaction of a
        // connection it opened for this link's CONNECT
        const bodyDone = sent.err === null || sent.err.code === 'EMESSAGE';
        result.reused = Number(m[6]) - (bodyDone ? 1 : 0) > 0;
        result.tls = m[3] === 'none' ? 'none' : `${m[3]}/${m[4]}`;
        result.local = m[5] ?? result.local;
      }
      conn.quit();
    } else {
      conn.close();
    }
    return { result, errors };
  }
}

/** XMTAPROXY (docs/protocol.md §4.7) over nodemailer's connection; null if it is not answered 250. */
function xmtaproxy(conn: SMTPConnection): Promise<string | null> {
  const c = conn as unknown as SmtpConnectionInternals;
  if (typeof c._sendCommand !== 'function' || !Array.isArray(c._responseActions)) return Promise.resolve(null);
  const send = c._sendCommand.bind(conn);
  const actions = c._responseActions;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 10_000);
    conn.once('end', () => resolve(null));
    actions.push((reply) => {
      clearTimeout(timer);
      resolve(/^250 /.test(reply) ? reply : null);
    });
    send('XMTAPROXY');
  });
}
