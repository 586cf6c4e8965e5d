// An smtp-mode delivery (docs/protocol.md §4.7): the MTA's link is a virtual SMTP session for
// (source, destination, EHLO name, TLS policy). The proxy answers greeting, EHLO and QUIT itself,
// borrows a destination connection from the shared pool for each transaction (MAIL FROM to the
// final reply of DATA, or RSET) and gives it back right after, relaying every transaction command
// and the destination's replies verbatim. Never a 250 the destination did not give: when the
// destination fails mid-transaction the MTA gets a 4xx from the proxy, which says so.
import type { Socket } from 'node:net';
import { closeSoon } from '../net/close.js';
import type { Logger } from '../log/logger.js';
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import type { ThrottleService } from '../throttle/service.js';
import type { MetricsHooks } from '../metrics/hooks.js';
import { BodyNormalizer, CommandLineTooLong, CommandReader, DataEndScanner, isPathCommand, parseCommand, type Command } from '../smtp/command.js';
import { closesConnection } from '../smtp/client.js';
import { DestinationConnection } from '../smtp/connection.js';
import { ehloForMta } from '../smtp/ehlo.js';
import type { BorrowOutcome, BorrowRequest, SmtpPool } from '../smtp/pool.js';
import { formatReply, replySummary, type Reply } from '../smtp/reply.js';
import type { Refusal } from './policy.js';

export interface SmtpLinkContext {
  readonly pool: SmtpPool;
  readonly throttle: ThrottleService;
  readonly wheel: TimerWheel;
  readonly log: Logger;
  /** told each transaction's end */
  readonly metrics?: MetricsHooks | undefined;
}

export interface SmtpLinkOptions {
  /** the MTA instance name (logs) */
  readonly who: string;
  /** the MTA's control session now (charged for message tokens), null if it has none */
  readonly owner: () => string | null;
  /** the egress policy's answer for this link's destination now (null: allowed) */
  readonly policy: () => Refusal | null;
  readonly throttle: string;
  /** what a new destination connection needs (the pool key and the slot) */
  readonly borrow: Omit<BorrowRequest, 'fresh'>;
  /** greeting and EHLO of the connection the CONNECT was served with */
  readonly greeting: Reply;
  readonly ehlo: Reply;
  readonly extensions: ReadonlyMap<string, string>;
  /** how long a transaction may wait for a message token or a connection */
  readonly waitMs: number;
  /** the MTA's link is closed after this long without a command (RFC 5321 §4.5.3.2.7: 5 min) */
  readonly idleTimeoutMs: number;
  readonly destination: string;
  readonly sourceIp: string;
}

export interface SmtpLinkResult {
  readonly transactions: number;
  readonly outcome: string;
}

/** Bytes of pipelined commands the link buffers before it stops reading the MTA. */
const MAX_PIPELINED = 64 * 1024;
/** Replies the MTA has not read, past which the link stops reading its commands. */
const OUTPUT_HIGH_WATER = 64 * 1024;

const local = {
  ok: (text = '2.0.0 OK'): Buffer => formatReply(250, [text]),
  noTransaction: (): Buffer => formatReply(503, ['5.5.1 mtaproxy: no transaction (send MAIL first)']),
  notOffered: (verb: string): Buffer => formatReply(502, [`5.5.1 mtaproxy: ${verb} is not offered on this link`]),
  syntax: (): Buffer => formatReply(501, ['5.5.4 mtaproxy: syntax error in parameters']),
  lost: (why: string): Buffer => formatReply(451, [`4.4.2 mtaproxy: the destination connection failed during this transaction (${why}); nothing was delivered by this transaction`]),
  broken: (): Buffer => formatReply(451, ['4.4.2 mtaproxy: this transaction already failed at the destination; send RSET']),
  /** the proxy could not start the transaction (no token, no connection): 451, the link stays */
  busy: (message: string): Buffer => formatReply(451, [`4.4.5 mtaproxy: ${message}`]),
};

type Phase = 'command' | 'body' | 'closed';

export class SmtpLink {
  readonly #ctx: SmtpLinkContext;
  readonly #mta: Socket;
  readonly #o: SmtpLinkOptions;
  readonly #onDone: (r: SmtpLinkResult) => void;
  readonly #reader = new CommandReader();
  #phase: Phase = 'command';
  #busy = false;
  #conn: DestinationConnection | null = null;
  #reused = false;
  /** the transaction failed at the destination: 4xx to its commands until RSET, MAIL or EHLO */
  #broken = false;
  #scanner: DataEndScanner | null = null;
  #normalizer = new BodyNormalizer();
  /** the body stream broke (the destination died mid-body): swallow it, then answer 451 */
  #bodyLost: string | null = null;
  #idle: WheelTimer | null = null;
  #transactions = 0;
  #tx: { started: number; rcptOk: number; rcptTotal: number } | null = null;
  #last: { connection: number; reused: boolean; tls: string; cipher: string; local: string; transactions: number } | null = null;
  #pendingChunks: Buffer[] = [];
  #draining = false;
  /** DATA was sent and its 354 may come: the destination may be reading a body */
  #dataSent = false;
  /** the MTA half-closed: its buffered commands are still answered, then the link ends */
  #ended = false;
  #waitingDrain = false;

  constructor(ctx: SmtpLinkContext, mta: Socket, o: SmtpLinkOptions, onDone: (r: SmtpLinkResult) => void) {
    this.#ctx = ctx;
    this.#mta = mta;
    this.#o = o;
    this.#onDone = onDone;
  }

  start(): void {
    const m = this.#mta;
    m.on('data', (chunk: Buffer) => this.#onData(chunk));
    m.on('end', () => {
      // half-close: what the MTA sent before its FIN is still handled and answered (the reply to
      // its last body must reach it, or it sends the message again); mid-body it is an abort
      this.#ended = true;
      if (this.#phase === 'body') return this.#close('mta closed during DATA');
      this.#pump();
    });
    m.on('close', () => this.#close('mta closed'));
    m.on('error', (err: NodeJS.ErrnoException) => this.#close(`mta error ${err.code ?? err.message}`));
    // the destination's greeting, as it gave it (RFC 5321 §4.2: 220 first)
    this.#write(this.#o.greeting.raw);
    this.#touch();
    m.resume();
  }

  /** Shutdown: the link closes with 421 now if no transaction is open, else right after it. */
  shutdown(): void {
    this.#draining = true;
    this.#drainIfIdle();
  }

  #drainIfIdle(): void {
    if (!this.#draining || this.#busy || this.#conn !== null || this.#phase !== 'command') return;
    this.#write(formatReply(421, ['4.3.2 mtaproxy: shutting down, try again later']));
    this.#close('proxy shutting down');
  }

  #isClosed(): boolean {
    return this.#phase === 'closed';
  }

  #write(b: Buffer): void {
    if (this.#phase !== 'closed') this.#mta.write(b);
  }

  #touch(): void {
    this.#idle?.cancel();
    this.#idle = this.#ctx.wheel.add(this.#o.idleTimeoutMs, () => {
      // waiting for the destination (its own timeouts apply) is not the MTA being idle
      if (this.#busy) return this.#touch();
      this.#write(formatReply(421, [`4.4.2 mtaproxy: no command for ${this.#o.idleTimeoutMs}ms, closing`]));
      this.#close('idle timeout');
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#isClosed()) return;
    this.#touch();
    if (this.#phase === 'body') return this.#body(chunk);
    this.#pendingChunks.push(chunk);
    this.#pump();
  }

  /** Handles commands one at a time, in order (pipelined ones wait in the reader). */
  #pump(): void {
    if (this.#busy || this.#phase !== 'command') return;
    for (;;) {
      // an MTA that does not read its replies is not read either (bounded output, as sessions)
      if (this.#mta.writableLength > OUTPUT_HIGH_WATER) {
        this.#mta.pause();
        if (!this.#waitingDrain) {
          this.#waitingDrain = true;
          this.#mta.once('drain', () => {
            this.#waitingDrain = false;
            if (this.#isClosed()) return;
            this.#mta.resume();
            this.#pump();
          });
        }
        return;
      }
      let line: string | null;
      try {
        const chunk = this.#pendingChunks.length === 0 ? undefined : Buffer.concat(this.#pendingChunks.splice(0));
        line = this.#reader.next(chunk);
      } catch (err) {
        if (err instanceof CommandLineTooLong) {
          this.#write(formatReply(500, ['5.5.2 mtaproxy: line too long']));
          return this.#close('command line too long');
        }
        throw err;
      }
      if (line === null) {
        this.#drainIfIdle();
        if (this.#isClosed()) return;
        if (this.#ended) return this.#close('mta closed');
        if (this.#reader.buffered > MAX_PIPELINED) this.#mta.pause();
        else this.#mta.resume();
        return;
      }
      if (/[\r\0]/.test(line)) {
        // a bare CR or a NUL inside a command would be read differently by the destination
        // (command smuggling onto a shared connection): never relayed
        this.#write(formatReply(501, ['5.5.2 mtaproxy: bare CR or NUL in a command line']));
        continue;
      }
      const cmd = parseCommand(line);
      this.#busy = true;
      this.#mta.pause();
      this.#command(cmd).then(
        () => {
          this.#busy = false;
          if (this.#isClosed()) return this.#afterClose();
          this.#mta.resume();
          if (this.#phase === 'body') {
            // the body may have begun in the DATA command's read, or arrived while it waited
            const rest = Buffer.concat([this.#reader.takePending(), ...this.#pendingChunks.splice(0)]);
            if (rest.length > 0) this.#body(rest);
            // the MTA half-closed before (or with) its body: unless that was the whole body, an abort
            if (this.#ended && this.#phase === 'body') this.#close('mta closed during DATA');
            return;
          }
          this.#pump();
        },
        (err: unknown) => {
          this.#ctx.log.error({ mtaproxy_event: 'smtp_link', session: this.#o.who, err: String(err) }, `smtp(${this.#o.who}): internal error ${String(err)}`);
          this.#write(formatReply(421, ['4.3.0 mtaproxy: internal error']));
          this.#close('internal error');
        },
      );
      return;
    }
  }

  async #command(cmd: Command): Promise<void> {
    switch (cmd.verb) {
      case 'EHLO':
      case 'HELO':
        await this.#endTransaction('EHLO');
        this.#broken = false;
        if (cmd.verb === 'HELO') return this.#write(formatReply(250, [this.#o.ehlo.lines[0] ?? 'mtaproxy']));
        return this.#write(formatReply(250, ehloForMta(this.#o.ehlo, this.#o.extensions)));
      case 'MAIL':
        if (!isPathCommand(cmd)) return this.#write(local.syntax());
        if (this.#conn !== null) return this.#relay(cmd);
        return this.#mail(cmd);
      case 'RCPT':
        if (this.#broken) return this.#write(local.broken());
        if (this.#conn === null) return this.#write(local.noTransaction());
        if (this.#tx !== null) this.#tx.rcptTotal++;
        return this.#relay(cmd, (r) => {
          if (r.code >= 200 && r.code < 300 && this.#tx !== null) this.#tx.rcptOk++;
        });
      case 'DATA':
        if (this.#broken) return this.#write(local.broken());
        if (this.#conn === null) return this.#write(local.noTransaction());
        return this.#data(cmd);
      case 'RSET':
        this.#broken = false;
        if (this.#conn === null) return this.#write(local.ok('2.0.0 OK'));
        return this.#relay(cmd, (r) => this.#finish(r, r.code === 250, 'RSET'));
      case 'NOOP':
        if (this.#conn === null) return this.#write(local.ok('2.0.0 OK'));
        return this.#relay(cmd);
      case 'QUIT':
        await this.#endTransaction('QUIT');
        this.#write(formatReply(221, ['2.0.0 mtaproxy: bye']));
        this.#mta.end();
        return this.#close('quit');
      case 'XMTAPROXY':
        return this.#write(this.#info());
      default:
        return this.#write(local.notOffered(cmd.verb === 'OTHER' ? 'that command' : cmd.verb));
    }
  }

  /** What the last transaction's destination connection was (docs/protocol.md §4.7). */
  #info(): Buffer {
    const l = this.#last;
    if (l === null) return formatReply(250, ['2.0.0 mtaproxy: no transaction yet']);
    return formatReply(250, [`2.0.0 connection=${l.connection} reused=${l.reused ? 'yes' : 'no'} tls=${l.tls} cipher=${l.cipher} local=${l.local} transactions=${l.transactions}`]);
  }

  #borrow(fresh: boolean): Promise<BorrowOutcome> {
    return new Promise((resolve) => {
      // the wait is bounded by the slot's: acquireSlot waits at most the delivery's wait
      this.#ctx.pool.borrow({ ...this.#o.borrow, fresh }, resolve);
    });
  }

  #messageToken(): Promise<{ ok: true } | { ok: false; code: number; message: string }> {
    const owner = this.#o.owner();
    if (owner === null) return Promise.resolve({ ok: false, code: 451, message: `${this.#o.who} has no control session now: reconnect it and DECLARE ${this.#o.throttle}` });
    return new Promise((resolve) => {
      this.#ctx.throttle.acquire(owner, this.#o.throttle, 'message', this.#o.waitMs, (outcome) => {
        resolve(outcome.ok ? { ok: true } : { ok: false, code: outcome.code, message: outcome.message });
      });
    });
  }

  /** MAIL outside a transaction: a message token, a connection, then the destination's answer. */
  async #mail(cmd: Command): Promise<void> {
    this.#broken = false;
    const refusal = this.#o.policy();
    if (refusal !== null) {
      // the link would not be opened now (a reload changed egress): it ends, and the MTA's next
      // CONNECT gets the policy's own code
      this.#write(formatReply(421, [`4.3.0 mtaproxy: this link's destination is no longer allowed (${refusal.code} ${refusal.message}), closing`]));
      return this.#close('destination no longer allowed by egress policy');
    }
    const token = await this.#messageToken();
    if (this.#isClosed()) {
      if (token.ok) this.#ctx.throttle.refundMessage(this.#o.throttle);
      return;
    }
    if (!token.ok) return this.#write(local.busy(token.message));
    const started = performance.now();
    // a cached connection may have died since it was given back: then once more on a new one
    for (let attempt = 0; attempt < 2; attempt++) {
      const b = await this.#borrow(attempt > 0);
      if (this.#isClosed()) {
        if (b.ok) this.#ctx.pool.giveBack(b.conn, true);
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        return;
      }
      if (!b.ok) {
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        if (this.#draining || /shutting down/.test(b.message)) {
          this.#write(formatReply(421, ['4.3.2 mtaproxy: shutting down, try again later']));
          return this.#close('proxy shutting down');
        }
        // the CONNECT codes (442 refused, 443, 444, 454…) are not SMTP replies: a 451 that names them
        return this.#write(local.busy(`${b.code} ${b.message}`));
      }
      let reply: Reply;
      try {
        reply = await b.conn.command(cmd.line, this.#ctx.pool.timeouts.commandMs);
      } catch (err) {
        this.#ctx.pool.giveBack(b.conn, false);
        if (b.reused && attempt === 0) continue;
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        return this.#write(local.lost((err as Error).message));
      }
      if (closesConnection(reply) && b.reused && attempt === 0) {
        // "421 idle timeout" from a cached connection is its end, not an answer to this MAIL
        this.#ctx.pool.giveBack(b.conn, false);
        continue;
      }
      if (this.#isClosed()) {
        this.#abandon(b.conn, reply.code === 250);
        if (reply.code !== 250) this.#ctx.throttle.refundMessage(this.#o.throttle);
        return;
      }
      if (reply.code >= 200 && reply.code < 300) {
        this.#conn = b.conn;
        // reused: the connection carried an earlier transaction (the CONNECT's borrow was none)
        this.#reused = b.conn.uses > 0;
        b.conn.uses++;
        this.#tx = { started, rcptOk: 0, rcptTotal: 0 };
      } else {
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        this.#ctx.pool.giveBack(b.conn, !closesConnection(reply));
      }
      return this.#write(reply.raw);
    }
  }

  /** Relays one command of the open transaction and its reply. */
  async #relay(cmd: Command, after?: (r: Reply) => void): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    let reply: Reply;
    try {
      reply = await conn.command(cmd.line, this.#ctx.pool.timeouts.commandMs);
    } catch (err) {
      return this.#lost(err as Error);
    }
    if (this.#isClosed()) return;
    this.#write(reply.raw);
    if (closesConnection(reply)) {
      // the destination ends the connection: the transaction is over, and the rest of it (pipelined
      // RCPTs, DATA) gets the proxy's 451 until RSET, never an invented 5xx
      this.#finish(reply, false, cmd.verb);
      this.#broken = true;
      return;
    }
    after?.(reply);
  }

  async #data(cmd: Command): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    this.#dataSent = true;
    let reply: Reply;
    try {
      reply = await conn.command(cmd.line, this.#ctx.pool.timeouts.dataInitMs);
    } catch (err) {
      return this.#lost(err as Error);
    }
    this.#dataSent = false;
    if (this.#isClosed()) {
      // the MTA left while DATA waited: after a 354 the destination reads a body that will never
      // come, so this connection cannot take an RSET: it is dropped (#afterClose)
      if (reply.code === 354) this.#dataSent = true;
      return;
    }
    this.#write(reply.raw);
    if (reply.code === 354) {
      this.#phase = 'body';
      this.#scanner = new DataEndScanner();
      this.#normalizer = new BodyNormalizer();
      this.#bodyLost = null;
      return;
    }
    if (closesConnection(reply)) {
      this.#finish(reply, false, 'DATA');
      this.#broken = true;
    }
  }

  /** Body bytes from the MTA, passed on as they are (dot-stuffed both ways) until "<CRLF>.<CRLF>". */
  #body(raw: Buffer): void {
    const scanner = this.#scanner;
    const conn = this.#conn;
    if (scanner === null) return;
    // the end is found in the MTA's own bytes (only its CRLF.CRLF ends the body); what goes to the
    // destination has every line ended in CRLF, and a line a bare LF or CR started dot-stuffed, so
    // the destination ends the body exactly there too (SMTP smuggling)
    const end = scanner.push(raw);
    const part = this.#normalizer.push(end === -1 ? raw : raw.subarray(0, end));
    if (this.#bodyLost === null && conn !== null && !conn.dead) {
      if (!conn.writeBody(part, this.#ctx.pool.timeouts.dataBlockMs)) {
        this.#mta.pause();
        conn.drainOnce(() => {
          if (this.#phase !== 'closed' && !this.#busy) this.#mta.resume();
        });
      }
    } else if (this.#bodyLost === null) {
      this.#bodyLost = conn?.deadReason ?? 'destination connection lost';
    }
    if (end === -1) return;
    // the body is complete: the destination's final reply decides
    this.#phase = 'command';
    this.#scanner = null;
    // what follows the body is commands: the MTA's own bytes, not normalized (a bare CR in a
    // command must still be refused)
    const rest = raw.subarray(end);
    if (rest.length > 0) this.#pendingChunks.push(rest);
    this.#busy = true;
    this.#mta.pause();
    void this.#afterBody(scanner.bytes).then(() => {
      this.#busy = false;
      if (this.#isClosed()) return this.#afterClose();
      this.#mta.resume();
      this.#pump();
    });
  }

  async #afterBody(bytes: number): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    if (this.#bodyLost !== null || conn.dead) return this.#lost(new Error(this.#bodyLost ?? conn.deadReason ?? 'destination connection lost'), bytes);
    let reply: Reply;
    try {
      reply = await conn.awaitReply(this.#ctx.pool.timeouts.dataDoneMs);
    } catch (err) {
      return this.#lost(err as Error, bytes);
    }
    this.#write(reply.raw);
    conn.transactions++;
    this.#finish(reply, !closesConnection(reply), 'DATA', bytes);
  }

  /** The transaction ended (final reply of DATA, RSET, or a 421): the connection goes back. */
  #finish(reply: Reply, reusable: boolean, how: string, bytes = 0): void {
    const conn = this.#conn;
    if (conn === null) return;
    this.#record(conn, reply, how, bytes);
    this.#conn = null;
    this.#tx = null;
    this.#ctx.pool.giveBack(conn, reusable);
  }

  /** The destination failed mid-transaction: 451 from the proxy, and that connection is done. */
  #lost(err: Error, bytes = 0): void {
    const conn = this.#conn;
    if (conn === null) return;
    this.#write(local.lost(err.message));
    this.#record(conn, null, `lost: ${err.message}`, bytes);
    this.#conn = null;
    this.#tx = null;
    this.#broken = true;
    this.#ctx.pool.giveBack(conn, false);
  }

  #record(conn: DestinationConnection, reply: Reply | null, how: string, bytes: number): void {
    this.#transactions++;
    const tx = this.#tx;
    const tls = conn.tls === null ? 'none' : conn.tls.version;
    this.#last = { connection: conn.id, reused: this.#reused, tls, cipher: conn.tls?.cipher ?? 'none', local: conn.local, transactions: conn.transactions };
    const code = reply?.code ?? 451;
    const fields = {
      mtaproxy_event: 'smtp_transaction',
      session: this.#o.who,
      source_ip: this.#o.sourceIp,
      local: conn.local,
      destination: this.#o.destination,
      throttle: this.#o.throttle,
      connection: conn.id,
      reused: this.#reused,
      tls,
      tls_resumed: conn.tls?.resumed ?? false,
      recipients: tx?.rcptOk ?? 0,
      recipients_refused: (tx?.rcptTotal ?? 0) - (tx?.rcptOk ?? 0),
      bytes,
      code,
      end: how,
      duration_ms: tx === null ? 0 : Math.round(performance.now() - tx.started),
    };
    const text = `smtp(${this.#o.who}): ${conn.local} -> ${this.#o.destination} conn#${conn.id} ${this.#reused ? 'reused' : 'new'} tls=${tls}${conn.tls?.resumed === true ? '(resumed)' : ''} rcpt=${fields.recipients}/${tx?.rcptTotal ?? 0} bytes=${bytes} ${how} -> ${reply === null ? `451 (${how})` : replySummary(reply)}`;
    this.#ctx.metrics?.transaction({ code: reply?.code ?? null, reused: this.#reused, tls: conn.tls === null ? null : { resumed: conn.tls.resumed }, sourceIp: this.#o.sourceIp, bytes });
    if (reply !== null && reply.code < 400) this.#ctx.log.info(fields, text);
    else this.#ctx.log.warn(fields, text);
  }

  /** Ends an open transaction politely (RSET) before EHLO or QUIT, so the connection can be reused. */
  async #endTransaction(why: string): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    let reply: Reply;
    try {
      reply = await conn.command('RSET', this.#ctx.pool.timeouts.commandMs);
    } catch (err) {
      this.#record(conn, null, `RSET before ${why} failed: ${(err as Error).message}`, 0);
      this.#conn = null;
      this.#tx = null;
      this.#ctx.pool.giveBack(conn, false);
      return;
    }
    this.#finish(reply, reply.code === 250, `RSET before ${why}`);
  }

  /** The MTA went away while `conn` was its: reusable only outside a body, after an RSET. */
  #abandon(conn: DestinationConnection, needsRset: boolean): void {
    if (!needsRset) return this.#ctx.pool.giveBack(conn, true);
    conn.command('RSET', this.#ctx.pool.timeouts.commandMs).then(
      (r) => this.#ctx.pool.giveBack(conn, r.code === 250),
      () => this.#ctx.pool.giveBack(conn, false),
    );
  }

  /** The MTA left while a command was in flight: the transaction's connection goes back now. */
  #afterClose(): void {
    const conn = this.#conn;
    this.#conn = null;
    if (conn === null) return;
    this.#record(conn, null, 'mta gone mid-transaction', 0);
    if (this.#dataSent) {
      conn.destroy('the MTA left during DATA');
      this.#ctx.pool.giveBack(conn, false);
      return;
    }
    this.#abandon(conn, true);
  }

  #close(why: string): void {
    if (this.#phase === 'closed') return;
    const inBody = this.#phase === 'body';
    this.#phase = 'closed';
    this.#idle?.cancel();
    this.#idle = null;
    const conn = this.#conn;
    this.#conn = null;
    if (conn !== null) {
      if (inBody) {
        // half a body went to the destination: it must never see an end of DATA, so the
        // connection is destroyed and the partial message dropped by the destination
        this.#record(conn, null, `mta gone mid-DATA (${why})`, this.#scanner?.bytes ?? 0);
        conn.destroy('the MTA left during DATA');
        this.#ctx.pool.giveBack(conn, false);
      } else if (this.#busy) {
        // a command is in flight on it: when its reply comes, #afterClose gives it back
        this.#conn = conn;
      } else {
        this.#record(conn, null, `mta gone mid-transaction (${why})`, 0);
        this.#abandon(conn, true);
      }
    }
    if (!this.#mta.destroyed) this.#mta.end();
    closeSoon(this.#mta);
    this.#onDone({ transactions: this.#transactions, outcome: why });
  }
}
