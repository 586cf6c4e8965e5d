// The relay front-end (docs/relay.md): an SMTP or LMTP server any MTA can use as its next hop.
// For each transaction it chooses the source IP (envelope.ts), resolves the recipients' MX hosts
// (dns.ts), and delivers synchronously through the throttles and the shared destination pool,
// answering the MTA only with the destinations' own replies: no queue, nothing stored, never a
// 250 the destination did not give. The replies it makes itself are 4xx/5xx that say "mtaproxy
// relay" (no route, no source, a destination lost mid-transaction) or the session's own
// (greeting, EHLO, AUTH, the 250 to MAIL FROM, which the destination's answer follows at RCPT).
// SMTP: one destination per transaction (recipients of another get 452 4.5.3, and the MTA sends
// them in a next transaction). LMTP: a reply per recipient after the body, so a transaction may
// span destinations.
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import ipaddr from 'ipaddr.js';
import type { DerivedThrottleConfig, EgressConfig, RelayConfig } from '../config/parse.js';
import { derivedDeclaration } from '../throttle/derived.js';
import type { Logger } from '../log/logger.js';
import { closeSoon } from '../net/close.js';
import { OutputGate } from '../net/backpressure.js';
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import { closesConnection } from '../smtp/client.js';
import { BodyNormalizer, CommandLineTooLong, CommandReader, DataEndScanner, parseCommand, type Command } from '../smtp/command.js';
import type { DestinationConnection } from '../smtp/connection.js';
import type { SlotOutcome, SmtpPool } from '../smtp/pool.js';
import { formatReply, replySummary, type Reply } from '../smtp/reply.js';
import type { ThrottleService } from '../throttle/service.js';
import { linkOutcome, type MetricsHooks } from '../metrics/hooks.js';
import { checkDestination } from '../egress/policy.js';
import { DERIVED_OWNER } from '../egress/delivery.js';
import type { Declaration } from '../throttle/manager.js';
import { poolKey } from '../egress/smtp-delivery.js';
import type { RelayDns, Route } from './dns.js';
import { chooseSource, decodePlain, mailLineFor, parsePath, rcptLineFor, type ParsedPath } from './envelope.js';

export interface RelayContext {
  config(): RelayConfig;
  egress(): EgressConfig;
  dns(): RelayDns;
  /** limits of the throttles per (source IP, MX host) ([derived_throttle]) */
  derivedThrottle(): DerivedThrottleConfig;
  /** the listeners' certificate, for STARTTLS; null: STARTTLS not offered */
  tls(): SecureContext | null;
  readonly pool: SmtpPool;
  readonly throttle: ThrottleService;
  readonly wheel: TimerWheel;
  readonly log: Logger;
  stopping(): boolean;
  readonly sessions: Set<RelaySession>;
  /** counted since start, for the status line */
  readonly stats: { transactions: number };
  readonly metrics?: MetricsHooks | undefined;
  /** the MTA got past the pre-authentication stage (its first EHLO/LHLO): out of the handshake caps */
  admitted(raw: Socket): void;
}

/** Bytes of pipelined commands buffered before the session stops reading the MTA. */
const MAX_PIPELINED = 64 * 1024;
const MAX_AUTH_FAILURES = 3;
/** throttles the relay keeps declared (each (source IP, MX host) it delivered to) */
const MAX_RELAY_THROTTLES = 100_000;

const r = (code: number, text: string): Buffer => formatReply(code, [text]);

interface Dest {
  /** MX host names (the route), or "[address]" for a domain literal */
  readonly key: string;
  readonly route: Route & { ok: true };
  conn: DestinationConnection | null;
  /** the host this transaction's connection went to */
  host: string;
  throttle: string;
  /** a reply every later recipient of this destination gets (its MAIL was refused, it could not be reached) */
  failure: Buffer | null;
  readonly accepted: number[];
  /** the destination said 354 */
  open: boolean;
  /** its reply to DATA when not 354, or its final reply, or the proxy's 451 */
  outcome: Buffer | null;
  outcomeReply: Reply | null;
  reused: boolean;
  rcptTotal: number;
}

interface Tx {
  readonly sender: ParsedPath;
  readonly sourceIp: string;
  readonly by: string;
  readonly dests: Map<string, Dest>;
  /** domain → destination (or a failure reply for recipients of that domain) */
  readonly domains: Map<string, Dest | Buffer>;
  /** every accepted recipient, in RCPT order, with its destination */
  readonly accepted: { mailbox: string; dest: Dest }[];
  rcpts: number;
  readonly started: number;
}

type Phase = 'command' | 'body' | 'closed';

export class RelaySession {
  readonly #ctx: RelayContext;
  #socket: Socket;
  readonly #lmtp: boolean;
  readonly #peer: string;
  readonly #local: string;
  #reader = new CommandReader();
  #pending: Buffer[] = [];
  #phase: Phase = 'command';
  #busy = false;
  #greeted = false;
  #tls = false;
  #account: string | null = null;
  #authFailures = 0;
  #tx: Tx | null = null;
  #scanner: DataEndScanner | null = null;
  #normalizer = new BodyNormalizer();
  #bodyOpen: Dest[] = [];
  #idle: WheelTimer | null = null;
  #draining = false;
  #ended = false;
  #transactions = 0;
  readonly #output = new OutputGate();
  readonly #resumeAfterDrain = (): void => {
    if (this.#isClosed()) return;
    this.#socket.resume();
    this.#pump();
  };
  /** an AUTH exchange waits for the MTA's next line */
  #authWaiter: ((line: string | null) => void) | null = null;
  /** the raw socket this session was accepted on (the daemon's handle for it) */
  readonly raw: Socket;

  constructor(ctx: RelayContext, socket: Socket, lmtp: boolean) {
    this.#ctx = ctx;
    this.#socket = socket;
    this.raw = socket;
    this.#lmtp = lmtp;
    this.#peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.#local = ipaddr.isValid(socket.localAddress ?? '') ? ipaddr.process(socket.localAddress ?? '').toString() : '';
  }

  /** a transaction is open: the session must not be cut at shutdown */
  get busy(): boolean {
    return this.#tx !== null || this.#phase === 'body';
  }

  start(): void {
    this.#ctx.sessions.add(this);
    this.#attach(this.#socket);
    const name = this.#ctx.config().hostname;
    if (this.#ctx.stopping()) {
      this.#write(r(421, `4.3.2 ${name} mtaproxy relay shutting down`));
      return this.#close('proxy shutting down');
    }
    this.#write(r(220, `${name} ${this.#lmtp ? 'LMTP' : 'ESMTP'} mtaproxy relay`));
    this.#touch();
    this.#socket.resume();
  }

  shutdown(): void {
    this.#draining = true;
    this.#drainIfIdle();
  }

  #drainIfIdle(): void {
    if (!this.#draining || this.#busy || this.#tx !== null || this.#phase !== 'command') return;
    this.#write(r(421, '4.3.2 mtaproxy relay: shutting down, try again later'));
    this.#close('proxy shutting down');
  }

  /** this session's listeners on its current socket (the daemon has its own on the raw one) */
  #detach: (() => void) | null = null;

  #attach(s: Socket): void {
    const onData = (chunk: Buffer): void => this.#onData(chunk);
    const onEnd = (): void => {
      this.#ended = true;
      if (this.#phase === 'body') return this.#close('mta closed during DATA');
      this.#pump();
    };
    const onClose = (): void => this.#close('mta closed');
    const onError = (err: NodeJS.ErrnoException): void => this.#close(`mta error ${err.code ?? err.message}`);
    s.on('data', onData);
    s.on('end', onEnd);
    s.on('close', onClose);
    s.on('error', onError);
    this.#detach = () => {
      s.removeListener('data', onData);
      s.removeListener('end', onEnd);
      s.removeListener('close', onClose);
      s.removeListener('error', onError);
    };
  }

  #isClosed(): boolean {
    return this.#phase === 'closed';
  }

  #write(b: Buffer): void {
    if (this.#phase !== 'closed') this.#socket.write(b);
  }

  #touch(): void {
    this.#idle?.cancel();
    const ms = this.#ctx.egress().idleTimeoutMs;
    this.#idle = this.#ctx.wheel.add(ms, () => {
      if (this.#busy) return this.#touch();
      this.#write(r(421, `4.4.2 mtaproxy relay: no command for ${ms}ms, closing`));
      this.#close('idle timeout');
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#isClosed()) return;
    // the idle timer counts complete commands (a line trickled byte by byte is no activity),
    // and any body bytes
    if (this.#phase === 'body') {
      this.#touch();
      return this.#body(chunk);
    }
    this.#pending.push(chunk);
    if (this.#authWaiter !== null) return this.#authLine();
    this.#pump();
  }

  #pump(): void {
    if (this.#busy || this.#phase !== 'command') return;
    for (;;) {
      if (this.#output.full(this.#socket, this.#resumeAfterDrain)) return;
      let line: string | null;
      try {
        line = this.#reader.next(this.#pending.length === 0 ? undefined : Buffer.concat(this.#pending.splice(0)));
      } catch (err) {
        if (!(err instanceof CommandLineTooLong)) throw err;
        this.#write(r(500, '5.5.2 mtaproxy relay: line too long'));
        return this.#close('command line too long');
      }
      if (line === null) {
        this.#drainIfIdle();
        if (this.#isClosed()) return;
        if (this.#ended) return this.#close('mta closed');
        if (this.#reader.buffered > MAX_PIPELINED) this.#socket.pause();
        else this.#socket.resume();
        return;
      }
      this.#touch();
      if (/[\r\0]/.test(line)) {
        this.#write(r(501, '5.5.2 mtaproxy relay: bare CR or NUL in a command line'));
        continue;
      }
      this.#busy = true;
      this.#socket.pause();
      this.#command(parseCommand(line)).then(
        () => {
          this.#busy = false;
          if (this.#isClosed()) return this.#abandon('mta gone');
          this.#socket.resume();
          if (this.#phase === 'body') {
            const rest = Buffer.concat([this.#reader.takePending(), ...this.#pending.splice(0)]);
            if (rest.length > 0) this.#body(rest);
            if (this.#ended && this.#phase === 'body') this.#close('mta closed during DATA');
            return;
          }
          this.#pump();
        },
        (err: unknown) => {
          this.#ctx.log.error({ mtaproxy_event: 'relay_session', peer: this.#peer, err: String(err) }, `relay(${this.#peer}): internal error ${String(err)}`);
          this.#write(r(421, '4.3.0 mtaproxy relay: internal error'));
          this.#close('internal error');
        },
      );
      return;
    }
  }

  async #command(cmd: Command): Promise<void> {
    const relay = this.#ctx.config();
    const hello = cmd.line.slice(0, 4).toUpperCase();
    if (hello === 'LHLO' || cmd.verb === 'EHLO' || cmd.verb === 'HELO') {
      if (this.#lmtp !== (hello === 'LHLO')) return this.#write(r(500, `5.5.1 mtaproxy relay: this is ${this.#lmtp ? 'LMTP: send LHLO' : 'SMTP: send EHLO'}`));
      await this.#reset();
      this.#greeted = true;
      this.#ctx.admitted(this.raw);
      if (cmd.verb === 'HELO') return this.#write(r(250, relay.hostname));
      const lines = [relay.hostname, 'PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES'];
      if (relay.maxMessageSize > 0) lines.push(`SIZE ${relay.maxMessageSize}`);
      if (!this.#tls && this.#ctx.tls() !== null) lines.push('STARTTLS');
      if (this.#tls && relay.accounts.length > 0) lines.push('AUTH PLAIN LOGIN');
      return this.#write(formatReply(250, lines));
    }
    switch (cmd.verb) {
      case 'STARTTLS':
        return this.#starttls();
      case 'AUTH':
        return this.#auth(cmd);
      case 'MAIL':
        return this.#mail(cmd, relay);
      case 'RCPT':
        return this.#rcpt(cmd, relay);
      case 'DATA':
        return this.#data();
      case 'RSET':
        await this.#reset();
        return this.#write(r(250, '2.0.0 OK'));
      case 'NOOP':
        return this.#write(r(250, '2.0.0 OK'));
      case 'QUIT':
        await this.#reset();
        this.#write(r(221, '2.0.0 mtaproxy relay: bye'));
        this.#socket.end();
        return this.#close('quit');
      case 'VRFY':
        return this.#write(r(252, '2.5.2 mtaproxy relay: cannot verify, send the mail'));
      default:
        return this.#write(r(502, `5.5.1 mtaproxy relay: ${cmd.verb === 'OTHER' ? 'command' : cmd.verb} not implemented`));
    }
  }

  #starttls(): void {
    const context = this.#ctx.tls();
    if (context === null) return this.#write(r(502, '5.5.1 mtaproxy relay: STARTTLS not offered'));
    if (this.#tls) return this.#write(r(503, '5.5.1 mtaproxy relay: TLS already active'));
    if (this.#tx !== null) return this.#write(r(503, '5.5.1 mtaproxy relay: STARTTLS inside a transaction'));
    this.#write(r(220, '2.0.0 ready to start TLS'));
    // what the MTA pipelined after STARTTLS was sent in the clear: dropped (RFC 3207 §5, CVE-2011-0411)
    this.#reader = new CommandReader();
    this.#pending = [];
    const raw = this.#socket;
    this.#detach?.();
    raw.on('error', () => {});
    const s = new TLSSocket(raw, { isServer: true, secureContext: context });
    this.#socket = s;
    this.#tls = true;
    this.#greeted = false;
    this.#account = null;
    this.#attach(s);
    s.once('secure', () => this.#touch());
  }

  async #auth(cmd: Command): Promise<void> {
    const relay = this.#ctx.config();
    if (relay.accounts.length === 0) return this.#write(r(502, '5.5.1 mtaproxy relay: AUTH not offered'));
    if (!this.#tls) return this.#write(r(538, '5.7.11 mtaproxy relay: encryption required for AUTH (STARTTLS first)'));
    if (this.#account !== null) return this.#write(r(503, '5.5.1 mtaproxy relay: already authenticated'));
    if (this.#tx !== null) return this.#write(r(503, '5.5.1 mtaproxy relay: AUTH inside a transaction'));
    const [mech = '', initial] = cmd.args.split(' ');
    let username: string;
    let password: string;
    if (mech.toUpperCase() === 'PLAIN') {
      const b64 = initial ?? (await this.#ask(''));
      if (b64 === null) return;
      if (b64 === '*') return this.#write(r(501, '5.0.0 AUTH cancelled'));
      const p = decodePlain(b64 === '=' ? '' : b64);
      if (p === null) return this.#write(r(501, '5.5.2 mtaproxy relay: malformed AUTH PLAIN response'));
      if (p.authzid !== '' && p.authzid !== p.username) return this.#authFailed('an authorization identity other than the username');
      ({ username, password } = p);
    } else if (mech.toUpperCase() === 'LOGIN') {
      const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
      const u = initial ?? (await this.#ask('VXNlcm5hbWU6'));
      if (u === null) return;
      // RFC 4954 §4: "*" cancels, a response that is not base64 is a 501
      if (u === '*') return this.#write(r(501, '5.0.0 AUTH cancelled'));
      if (!B64.test(u)) return this.#write(r(501, '5.5.2 mtaproxy relay: malformed AUTH LOGIN response (not base64)'));
      const pw = await this.#ask('UGFzc3dvcmQ6');
      if (pw === null) return;
      if (pw === '*') return this.#write(r(501, '5.0.0 AUTH cancelled'));
      if (!B64.test(pw)) return this.#write(r(501, '5.5.2 mtaproxy relay: malformed AUTH LOGIN response (not base64)'));
      username = Buffer.from(u, 'base64').toString('utf8');
      password = Buffer.from(pw, 'base64').toString('utf8');
    } else {
      return this.#write(r(504, '5.5.4 mtaproxy relay: unrecognized authentication mechanism (PLAIN, LOGIN)'));
    }
    const account = relay.accounts.find((a) => a.username === username);
    if (account === undefined || !equalSecret(account.password, password)) return this.#authFailed(`account ${JSON.stringify(username.slice(0, 64))}`);
    this.#account = account.username;
    this.#ctx.log.info({ mtaproxy_event: 'relay_auth', peer: this.#peer, account: account.username }, `relay(${this.#peer}): authenticated as ${account.username}`);
    this.#write(r(235, '2.7.0 Authentication successful'));
  }

  #authFailed(what: string): void {
    this.#authFailures++;
    this.#ctx.log.warn({ mtaproxy_event: 'relay_auth_failed', peer: this.#peer, failures: this.#authFailures }, `relay(${this.#peer}): AUTH failed (${what})`);
    this.#write(r(535, '5.7.8 Authentication credentials invalid'));
    if (this.#authFailures >= MAX_AUTH_FAILURES) {
      this.#write(r(421, '4.7.0 mtaproxy relay: too many failed AUTH attempts, closing'));
      this.#close('too many failed AUTH attempts');
    }
  }

  /** One line of an AUTH exchange (334 challenge): resolves with it, or null if the session ended. */
  #ask(challenge: string): Promise<string | null> {
    this.#write(r(334, challenge));
    return new Promise((resolve) => {
      this.#authWaiter = resolve;
      this.#authLine();
      if (this.#authWaiter !== null) this.#socket.resume();
    });
  }

  #authLine(): void {
    const w = this.#authWaiter;
    if (w === null) return;
    let line: string | null;
    try {
      line = this.#reader.next(this.#pending.length === 0 ? undefined : Buffer.concat(this.#pending.splice(0)));
    } catch {
      this.#authWaiter = null;
      this.#write(r(500, '5.5.2 mtaproxy relay: line too long'));
      this.#close('AUTH line too long');
      return w(null);
    }
    if (line === null) return;
    this.#touch();
    this.#authWaiter = null;
    this.#socket.pause();
    w(line.trim());
  }

  #mail(cmd: Command, relay: RelayConfig): void {
    if (!this.#greeted) return this.#write(r(503, `5.5.1 mtaproxy relay: send ${this.#lmtp ? 'LHLO' : 'EHLO'} first`));
    if (this.#tx !== null) return this.#write(r(503, '5.5.1 mtaproxy relay: nested MAIL command'));
    if (relay.requireAuth && this.#account === null) return this.#write(r(530, '5.7.0 mtaproxy relay: authentication required'));
    const path = parsePath(cmd.args, 'FROM');
    if (path === null) return this.#write(r(501, '5.1.7 mtaproxy relay: bad sender address syntax'));
    const size = /(?:^|\s)SIZE=(\d+)/i.exec(path.params);
    if (size !== null && relay.maxMessageSize > 0 && Number(size[1]) > relay.maxMessageSize) {
      return this.#write(r(552, `5.3.4 mtaproxy relay: message size exceeds the limit of ${relay.maxMessageSize} bytes`));
    }
    const choice = chooseSource(relay, { senderDomain: path.domain.kind === 'domain' ? path.domain.domain : null, account: this.#account, localAddress: this.#local });
    if (!choice.ok) {
      this.#ctx.log.warn({ mtaproxy_event: 'relay_no_source', peer: this.#peer, sender: path.mailbox }, `relay(${this.#peer}): MAIL FROM:<${path.mailbox}> refused: ${choice.reason}`);
      // temporary: a missing rule is a configuration matter, and the MTA keeps the mail until it is fixed
      return this.#write(r(451, `4.3.5 mtaproxy relay: ${choice.reason}`));
    }
    this.#tx = { sender: path, sourceIp: choice.sourceIp, by: choice.by, dests: new Map(), domains: new Map(), accepted: [], rcpts: 0, started: performance.now() };
    this.#write(r(250, `2.1.0 sender ok, from ${choice.sourceIp} (${choice.by}); each recipient gets its destination's answer`));
  }

  async #rcpt(cmd: Command, relay: RelayConfig): Promise<void> {
    const tx = this.#tx;
    if (tx === null) return this.#write(r(503, '5.5.1 mtaproxy relay: send MAIL first'));
    const path = parsePath(cmd.args, 'TO');
    if (path === null) return this.#write(r(501, '5.1.3 mtaproxy relay: bad recipient address syntax'));
    if (tx.rcpts >= relay.maxRecipients) return this.#write(r(452, `4.5.3 mtaproxy relay: too many recipients (relay.max_recipients = ${relay.maxRecipients})`));
    tx.rcpts++;
    if (path.domain.kind === 'none') return this.#write(r(550, '5.1.3 mtaproxy relay: a recipient needs a domain'));
    const domainKey = path.domain.kind === 'domain' ? path.domain.domain : `[${path.domain.address}]`;
    let dest = tx.domains.get(domainKey);
    if (dest === undefined) {
      const family = ipaddr.process(tx.sourceIp).kind() === 'ipv4' ? 4 : 6;
      let route: Route;
      if (path.domain.kind === 'literal') {
        const a = path.domain.address;
        route = ipaddr.process(a).kind() === (family === 4 ? 'ipv4' : 'ipv6') ? { ok: true, hosts: [{ name: `[${a}]`, addresses: [a] }] } : { ok: false, code: 550, text: `5.1.2 mtaproxy relay: ${a} is not reachable from source ${tx.sourceIp}` };
      } else {
        route = await this.#ctx.dns().route(path.domain.domain, family);
        if (this.#isClosed()) return;
      }
      if (!route.ok) {
        const failure = r(route.code, route.text);
        tx.domains.set(domainKey, failure);
        dest = failure;
      } else {
        // the same MX hosts are one destination, whatever order equal preferences were shuffled in
        const key = route.hosts.map((h) => h.name).sort().join(',');
        const known = tx.dests.get(key);
        if (known !== undefined) dest = known;
        else if (!this.#lmtp && tx.dests.size > 0) {
          // SMTP: one destination per transaction; the MTA sends these in a next transaction
          return this.#write(r(452, `4.5.3 mtaproxy relay: ${domainKey} is another destination than this transaction's; send its recipients in another transaction`));
        } else {
          dest = { key, route, conn: null, host: '', throttle: '', failure: null, accepted: [], open: false, outcome: null, outcomeReply: null, reused: false, rcptTotal: 0 };
          tx.dests.set(key, dest);
          await this.#open(tx, dest);
          if (this.#isClosed()) return;
        }
        tx.domains.set(domainKey, dest);
      }
    }
    if (Buffer.isBuffer(dest)) return this.#write(dest);
    if (dest.failure !== null) return this.#write(dest.failure);
    const conn = dest.conn;
    if (conn === null) return this.#write(r(451, '4.4.1 mtaproxy relay: no connection to the destination'));
    dest.rcptTotal++;
    let reply: Reply;
    try {
      reply = await conn.command(rcptLineFor(path), this.#ctx.pool.timeouts.commandMs);
    } catch (err) {
      return this.#lostDest(dest, (err as Error).message);
    }
    if (this.#isClosed()) return;
    if (reply.code >= 200 && reply.code < 300) {
      dest.accepted.push(tx.accepted.length);
      tx.accepted.push({ mailbox: path.mailbox, dest });
    } else if (closesConnection(reply)) {
      dest.failure = reply.raw;
      this.#record(tx, dest, reply, 'RCPT 421', 0);
      this.#ctx.pool.giveBack(conn, false);
      dest.conn = null;
    }
    this.#write(reply.raw);
  }

  /** A connection to `dest` (MX hosts and their addresses in order), a message token, then the MAIL. */
  async #open(tx: Tx, dest: Dest): Promise<void> {
    const relay = this.#ctx.config();
    const egress = this.#ctx.egress();
    const port = relay.destinationPort;
    const ehloName = relay.ehloNames.get(tx.sourceIp) ?? relay.hostname;
    const failures: string[] = [];
    for (const host of dest.route.hosts) {
      for (const address of host.addresses) {
        const bad = checkDestination(address, tx.sourceIp, egress);
        if (bad !== null) {
          failures.push(`${host.name} ${address}: ${bad.message}`);
          continue;
        }
        const declaration = derivedDeclaration(this.#ctx.derivedThrottle(), tx.sourceIp, host.name, port);
        const throttle = declaration.key;
        const declared = this.#declare(declaration);
        if (declared !== null) {
          dest.failure = r(451, `4.3.2 mtaproxy relay: ${declared}`);
          return;
        }
        const spec = { sourceIp: tx.sourceIp, address: ipaddr.process(address).toString(), port, ehloName, tls: { mode: relay.destinationTls, verifyName: null, sni: host.name.startsWith('[') ? null : host.name } };
        let slotFailure: string | null = null;
        const waitMs = egress.throttleWaitTimeoutMs;
        const b = await new Promise<import('../smtp/pool.js').BorrowOutcome>((resolve) => {
          this.#ctx.pool.borrow(
            {
              key: poolKey(spec, throttle),
              group: throttle,
              spec,
              acquireSlot: (cb) => {
                const m = this.#ctx.throttle.manager;
                const limits = m.limits(throttle);
                if (limits !== null && m.inUse(throttle) >= limits.maxConnections) this.#ctx.pool.retireIdle(throttle, 1);
                return this.#ctx.throttle.acquire(DERIVED_OWNER, throttle, 'connection', waitMs, (o) => {
                  if (!o.ok) slotFailure = `${o.code} ${o.message}`;
                  const slot: SlotOutcome = o.ok ? { ok: true, release: () => this.#ctx.throttle.release(o.lease.id) } : { ok: false, code: o.code, message: o.message };
                  cb(slot);
                }, { heldByDelivery: true });
              },
            },
            resolve,
          );
        });
        if (this.#isClosed()) {
          if (b.ok) this.#ctx.pool.giveBack(b.conn, true);
          return;
        }
        if (!b.ok) {
          if (slotFailure !== null) {
            // the throttle is full for this host: waiting longer is the MTA's retry, not another MX
            dest.failure = r(451, `4.4.5 mtaproxy relay: throttle ${throttle} is busy (${slotFailure}); try again later`);
            return;
          }
          failures.push(`${host.name} ${address}: ${b.code} ${b.message}`);
          continue;
        }
        const token = await new Promise<{ ok: true } | { ok: false; message: string }>((resolve) => {
          this.#ctx.throttle.acquire(DERIVED_OWNER, throttle, 'message', waitMs, (o) => resolve(o.ok ? { ok: true } : { ok: false, message: `${o.code} ${o.message}` }));
        });
        if (this.#isClosed()) {
          if (token.ok) this.#ctx.throttle.refundMessage(throttle);
          this.#ctx.pool.giveBack(b.conn, true);
          return;
        }
        if (!token.ok) {
          this.#ctx.pool.giveBack(b.conn, true);
          dest.failure = r(451, `4.4.5 mtaproxy relay: message rate of ${throttle} reached (${token.message}); try again later`);
          return;
        }
        let reply: Reply;
        try {
          reply = await b.conn.command(mailLineFor(tx.sender, b.conn.extensions), this.#ctx.pool.timeouts.commandMs);
        } catch (err) {
          this.#ctx.throttle.refundMessage(throttle);
          this.#ctx.pool.giveBack(b.conn, false);
          failures.push(`${host.name} ${address}: ${(err as Error).message}`);
          continue;
        }
        if (closesConnection(reply) && b.reused) {
          // a cached connection's "421 idle timeout": not an answer to this MAIL; once more
          this.#ctx.throttle.refundMessage(throttle);
          this.#ctx.pool.giveBack(b.conn, false);
          failures.push(`${host.name} ${address}: cached connection closed`);
          continue;
        }
        dest.host = host.name;
        dest.throttle = throttle;
        if (reply.code >= 200 && reply.code < 300) {
          dest.conn = b.conn;
          dest.reused = b.conn.uses > 0;
          b.conn.uses++;
          return;
        }
        // the destination refused the sender: that is every recipient's answer
        this.#ctx.throttle.refundMessage(throttle);
        this.#ctx.pool.giveBack(b.conn, !closesConnection(reply));
        dest.failure = reply.raw;
        this.#record(tx, dest, reply, 'MAIL refused', 0, b.conn);
        return;
      }
    }
    dest.failure = r(451, `4.4.1 mtaproxy relay: no MX host of this destination answered (${failures.slice(0, 3).join('; ') || 'no usable address'})`);
  }

  #declare(declaration: Declaration): string | null {
    const throttle = declaration.key;
    const m = this.#ctx.throttle.manager;
    // declared again (if changed) each time, as SOCKS5 deliveries are: a reload's new limits apply at once
    if (m.limits(throttle) === null && m.throttleCount >= MAX_RELAY_THROTTLES) {
      // idle per-destination throttles go first (their message counts start again if used later)
      for (const key of [...m.keys()]) if (key.includes('>') && m.inUse(key) === 0 && m.waiting(key) === 0) this.#ctx.throttle.undeclare(DERIVED_OWNER, key);
      if (m.throttleCount >= MAX_RELAY_THROTTLES) return `too many throttles (${MAX_RELAY_THROTTLES}) are in use; try again later`;
    }
    this.#ctx.throttle.declareIfChanged(DERIVED_OWNER, declaration);
    return null;
  }

  async #data(): Promise<void> {
    const tx = this.#tx;
    if (tx === null) return this.#write(r(503, '5.5.1 mtaproxy relay: send MAIL first'));
    if (tx.accepted.length === 0) return this.#write(r(this.#lmtp ? 503 : 554, '5.5.1 mtaproxy relay: no valid recipients'));
    // a destination that accepted none of its recipients takes no body: RSET, and its connection goes back
    for (const d of tx.dests.values()) {
      const conn = d.conn;
      if (d.accepted.length > 0 || conn === null) continue;
      d.conn = null;
      this.#ctx.throttle.refundMessage(d.throttle);
      this.#record(tx, d, null, 'no recipient accepted', 0, conn);
      conn.command('RSET', this.#ctx.pool.timeouts.commandMs).then(
        (reply) => this.#ctx.pool.giveBack(conn, reply.code === 250),
        () => this.#ctx.pool.giveBack(conn, false),
      );
    }
    const dests = [...tx.dests.values()].filter((d) => d.accepted.length > 0 && d.conn !== null);
    const replies = await Promise.all(
      dests.map(async (d) => {
        try {
          return await (d.conn as DestinationConnection).command('DATA', this.#ctx.pool.timeouts.dataInitMs);
        } catch (err) {
          this.#lostDest(d, (err as Error).message, false);
          return null;
        }
      }),
    );
    if (this.#isClosed()) {
      // the destinations that said 354 wait for a body that never comes: never reused
      dests.forEach((d, i) => {
        if (replies[i]?.code === 354 && d.conn !== null) d.conn.destroy('the MTA left during DATA');
      });
      return;
    }
    const open: Dest[] = [];
    dests.forEach((d, i) => {
      const reply = replies[i];
      if (reply === null || reply === undefined) return;
      if (reply.code === 354) {
        d.open = true;
        open.push(d);
      } else {
        d.outcome = reply.raw;
        d.outcomeReply = reply;
        this.#endDest(tx, d, reply, 'DATA refused', 0);
      }
    });
    if (open.length === 0) {
      // nothing takes the body: the (first) refusal of DATA answers it
      const first = dests.map((d) => d.outcome).find((x) => x !== null) ?? r(451, '4.4.2 mtaproxy relay: the destination connection failed before DATA');
      this.#write(first);
      return this.#endTx();
    }
    const single = !this.#lmtp && open.length === 1 ? replies[dests.indexOf(open[0] as Dest)] : null;
    this.#write(single?.raw ?? r(354, 'mtaproxy relay: send the message, end with <CRLF>.<CRLF>'));
    this.#bodyOpen = open;
    this.#phase = 'body';
    this.#scanner = new DataEndScanner();
    this.#normalizer = new BodyNormalizer();
  }

  #body(raw: Buffer): void {
    const scanner = this.#scanner;
    if (scanner === null) return;
    // the end is found in the MTA's own bytes (only its CRLF.CRLF ends the body); what goes to the
    // destinations has every line ended in CRLF, and a line a bare LF or CR started dot-stuffed
    // (smtp/command.ts BodyNormalizer), so they end the body exactly there too (SMTP smuggling)
    const end = scanner.push(raw);
    const part = this.#normalizer.push(end === -1 ? raw : raw.subarray(0, end));
    let full = 0;
    for (const d of this.#bodyOpen) {
      const conn = d.conn;
      if (conn === null || conn.dead) continue;
      if (!conn.writeBody(part, this.#ctx.pool.timeouts.dataBlockMs)) {
        full++;
        conn.drainOnce(() => {
          if (--full === 0 && this.#phase !== 'closed' && !this.#busy) this.#socket.resume();
        });
      }
    }
    if (full > 0) this.#socket.pause();
    if (end === -1) return;
    this.#phase = 'command';
    this.#scanner = null;
    const rest = raw.subarray(end);
    if (rest.length > 0) this.#pending.push(rest);
    this.#busy = true;
    this.#socket.pause();
    void this.#afterBody(scanner.bytes).then(() => {
      this.#busy = false;
      if (this.#isClosed()) return;
      this.#socket.resume();
      this.#pump();
    });
  }

  async #afterBody(bytes: number): Promise<void> {
    const tx = this.#tx;
    if (tx === null) return;
    const open = this.#bodyOpen;
    this.#bodyOpen = [];
    await Promise.all(
      open.map(async (d) => {
        const conn = d.conn;
        if (conn === null || conn.dead) return this.#lostDest(d, conn?.deadReason ?? 'destination connection lost', false, bytes);
        let reply: Reply;
        try {
          reply = await conn.awaitReply(this.#ctx.pool.timeouts.dataDoneMs);
        } catch (err) {
          return this.#lostDest(d, (err as Error).message, false, bytes);
        }
        conn.transactions++;
        d.outcome = reply.raw;
        d.outcomeReply = reply;
        this.#endDest(tx, d, reply, 'DATA', bytes);
      }),
    );
    if (this.#isClosed()) return;
    if (this.#lmtp) {
      // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order
      const out: Buffer[] = [];
      for (const a of tx.accepted) out.push(a.dest.outcome ?? r(451, '4.4.2 mtaproxy relay: no reply from the destination'));
      this.#write(Buffer.concat(out));
    } else {
      const d = open[0];
      this.#write(d?.outcome ?? r(451, '4.4.2 mtaproxy relay: no reply from the destination'));
    }
    this.#transactions++;
    this.#ctx.stats.transactions++;
    this.#endTx();
  }

  /** The destination failed mid-transaction: its recipients get the proxy's 451, and it is not reused. */
  #lostDest(d: Dest, why: string, answerNow = true, bytes = 0): void {
    const conn = d.conn;
    const text = `4.4.2 mtaproxy relay: the destination connection failed during this transaction (${why}); nothing was delivered to ${d.host || 'it'}`;
    d.outcome = r(451, text);
    d.failure = d.outcome;
    if (conn !== null) {
      const tx = this.#tx;
      if (tx !== null) this.#record(tx, d, null, `lost: ${why}`, bytes);
      this.#ctx.pool.giveBack(conn, false);
      d.conn = null;
    }
    if (answerNow) this.#write(d.outcome);
  }

  #endDest(tx: Tx, d: Dest, reply: Reply, how: string, bytes: number): void {
    const conn = d.conn;
    if (conn === null) return;
    this.#record(tx, d, reply, how, bytes);
    d.conn = null;
    this.#ctx.pool.giveBack(conn, !closesConnection(reply));
  }

  #endTx(): void {
    this.#tx = null;
    this.#drainIfIdle();
  }

  /** RSET, EHLO, QUIT: every destination of the open transaction gets RSET and goes back. */
  async #reset(): Promise<void> {
    const tx = this.#tx;
    if (tx === null) return;
    this.#tx = null;
    await Promise.all(
      [...tx.dests.values()].map(async (d) => {
        const conn = d.conn;
        if (conn === null) return;
        d.conn = null;
        // the MAIL was accepted but no message went: its token is given back
        this.#ctx.throttle.refundMessage(d.throttle);
        try {
          const reply = await conn.command('RSET', this.#ctx.pool.timeouts.commandMs);
          this.#record(tx, d, reply, 'RSET', 0, conn);
          this.#ctx.pool.giveBack(conn, reply.code === 250);
        } catch {
          this.#ctx.pool.giveBack(conn, false);
        }
      }),
    );
  }

  /** The MTA left: connections of the open transaction go back (after RSET), never mid-body. */
  #abandon(why: string): void {
    const tx = this.#tx;
    this.#tx = null;
    if (tx === null) return;
    for (const d of tx.dests.values()) {
      const conn = d.conn;
      if (conn === null) continue;
      d.conn = null;
      this.#record(tx, d, null, why, 0, conn);
      this.#ctx.throttle.refundMessage(d.throttle);
      if (d.open) {
        conn.destroy('the MTA left during DATA');
        this.#ctx.pool.giveBack(conn, false);
        continue;
      }
      conn.command('RSET', this.#ctx.pool.timeouts.commandMs).then(
        (reply) => this.#ctx.pool.giveBack(conn, reply.code === 250),
        () => this.#ctx.pool.giveBack(conn, false),
      );
    }
  }

  #record(tx: Tx, d: Dest, reply: Reply | null, how: string, bytes: number, connection: DestinationConnection | null = d.conn): void {
    const conn = connection;
    const tls = conn?.tls === null || conn === null ? 'none' : conn.tls.version;
    const fields = {
      mtaproxy_event: 'relay_transaction',
      front_end: this.#lmtp ? 'relay-lmtp' : 'relay-smtp',
      peer: this.#peer,
      account: this.#account ?? '',
      sender: tx.sender.mailbox,
      source_ip: tx.sourceIp,
      source_by: tx.by,
      destination: d.host,
      local: conn?.local ?? '',
      throttle: d.throttle,
      connection: conn?.id ?? 0,
      reused: d.reused,
      tls,
      recipients: d.accepted.length,
      recipients_refused: d.rcptTotal - d.accepted.length,
      bytes,
      code: reply?.code ?? 451,
      end: how,
      duration_ms: Math.round(performance.now() - tx.started),
    };
    const text = `relay(${this.#peer}${this.#account === null ? '' : ` ${this.#account}`}): <${tx.sender.mailbox}> ${conn?.local ?? tx.sourceIp} -> ${d.host} conn#${conn?.id ?? 0} ${d.reused ? 'reused' : 'new'} tls=${tls} rcpt=${d.accepted.length}/${d.rcptTotal} bytes=${bytes} ${how} -> ${reply === null ? `451 (${how})` : replySummary(reply)}`;
    this.#ctx.metrics?.transaction({ code: reply?.code ?? null, reused: d.reused, tls: conn?.tls == null ? null : { resumed: conn.tls.resumed }, sourceIp: tx.sourceIp, bytes });
    if (reply !== null && reply.code < 400) this.#ctx.log.info(fields, text);
    else this.#ctx.log.warn(fields, text);
  }

  #close(why: string): void {
    if (this.#phase === 'closed') return;
    const inBody = this.#phase === 'body';
    this.#phase = 'closed';
    this.#idle?.cancel();
    this.#idle = null;
    this.#ctx.sessions.delete(this);
    const auth = this.#authWaiter;
    this.#authWaiter = null;
    auth?.(null);
    if (inBody) {
      // half a body went to the destinations: they must never see its end
      const tx = this.#tx;
      this.#tx = null;
      for (const d of this.#bodyOpen) {
        const conn = d.conn;
        if (conn === null) continue;
        d.conn = null;
        if (tx !== null) this.#record(tx, d, null, `mta gone mid-DATA (${why})`, this.#scanner?.bytes ?? 0, conn);
        conn.destroy('the MTA left during DATA');
        this.#ctx.pool.giveBack(conn, false);
      }
      this.#bodyOpen = [];
      if (tx !== null) for (const d of tx.dests.values()) if (d.conn !== null) this.#ctx.pool.giveBack(d.conn, false);
    } else if (!this.#busy) {
      this.#abandon(`mta gone (${why})`);
    }
    if (!this.#socket.destroyed) this.#socket.end();
    closeSoon(this.#socket);
    this.#ctx.metrics?.delivery({ frontEnd: this.#lmtp ? 'relay-lmtp' : 'relay-smtp', mode: 'relay', outcome: linkOutcome(why) });
    this.#ctx.log.debug({ mtaproxy_event: 'relay_session', peer: this.#peer, transactions: this.#transactions, outcome: why }, `relay(${this.#peer}): closed after ${this.#transactions} transactions: ${why}`);
  }
}

/** Compares a password without leaking its length or content through timing (as SharedSecret). */
function equalSecret(expected: string, given: string): boolean {
  const a = Buffer.from(expected, 'utf8');
  const b = Buffer.from(given, 'utf8');
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) diff |= (a[i] ?? 0) ^ (b[i % Math.max(1, b.length)] ?? 0);
  return diff === 0;
}
