// An smtp-mode delivery (docs/protocol.md §4.7): the MTA's link is a virtual SMTP session for
// (source, destination, EHLO name, TLS policy). The proxy answers greeting, EHLO and QUIT itself,
// borrows a destination connection from the shared pool for each transaction (MAIL FROM to the
// final reply of DATA or BDAT LAST, or RSET) and gives it back right after, relaying every transaction command
// and the destination's replies verbatim. Never a 250 the destination did not give: when the
// destination fails mid-transaction the MTA gets a 4xx from the proxy, which says so.
import type { Socket } from 'node:net';
import { closeSoon } from '../net/close.js';
import { OutputGate } from '../net/backpressure.js';
import type { Logger } from '../log/logger.js';
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import type { ThrottleService } from '../throttle/service.js';
import type { MetricsHooks } from '../metrics/hooks.js';
import { BodyNormalizer, ChunkCounter, CommandLineTooLong, CommandReader, DataEndScanner, isPathCommand, parseBdat, parseCommand, type Command } from '../smtp/command.js';
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

const local = {
  ok: (text = '2.0.0 OK'): Buffer => formatReply(250, [text]),
  noTransaction: (): Buffer => formatReply(503, ['5.5.1 mtaproxy: no transaction (send MAIL first)']),
  notOffered: (verb: string): Buffer => formatReply(502, [`5.5.1 mtaproxy: ${verb} is not offered on this link`]),
  syntax: (): Buffer => formatReply(501, ['5.5.4 mtaproxy: syntax error in parameters']),
  bdatSyntax: (): Buffer => formatReply(501, ['5.5.4 mtaproxy: syntax: BDAT <chunk-size> [LAST]']),
  /** the borrowed connection's EHLO has no CHUNKING (another server behind the address): octets consumed, nothing sent */
  noChunking: (): Buffer => formatReply(451, ['4.3.3 mtaproxy: the destination connection of this transaction does not offer CHUNKING; the chunk was not sent, send RSET and retry']),
  lost: (why: string): Buffer => formatReply(451, [`4.4.2 mtaproxy: the destination connection failed during this transaction (${why}); nothing was delivered by this transaction`]),
  broken: (): Buffer => formatReply(451, ['4.4.2 mtaproxy: this transaction already failed at the destination; send RSET']),
  /** the proxy could not start the transaction (no token, no connection): 451, the link stays */
  busy: (message: string): Buffer => formatReply(451, [`4.4.5 mtaproxy: ${message}`]),
};

type Phase = 'command' | 'body' | 'chunk' | 'closed';

/** A BDAT chunk being read from the MTA (RFC 3030): relayed to `conn`, or consumed and answered `reply`. */
interface Chunk {
  readonly counter: ChunkCounter;
  readonly last: boolean;
  /** the destination connection the command line and octets go to; null: consumed, then `reply` */
  readonly conn: DestinationConnection | null;
  readonly reply: Buffer | null;
  /** the destination's side is full: the MTA is paused until it drains */
  blocked: boolean;
}

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
  #tx: { started: number; rcptOk: number; rcptTotal: number; bytes: number } | null = null;
  /** the BDAT chunk being read (phase 'chunk') */
  #chunk: Chunk | null = null;
  /** the destination refused a BDAT chunk of the open transaction (RFC 3030 §2: RSET before anything else) */
  #chunkFailed: Reply | null = null;
  /** the MTA's last hello was HELO: no extensions were offered, so no BDAT */
  #helo = false;
  #last: { connection: number; reused: boolean; tls: string; cipher: string; local: string; transactions: number } | null = null;
  #pendingChunks: Buffer[] = [];
  #draining = false;
  /** DATA was sent and its 354 may come: the destination may be reading a body */
  #dataSent = false;
  /** the MTA half-closed: its buffered commands are still answered, then the link ends */
  #ended = false;
  readonly #output = new OutputGate();
  readonly #resumeAfterDrain = (): void => {
    if (this.#isClosed()) return;
    this.#mta.resume();
    this.#pump();
  };
  /** command lines read ahead for a pipelined group but not part of it: handled next, in order */
  #held: string[] = [];
  /** replies written in this turn of the event loop go out together (one write, one TLS record) */
  #corked = false;

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
      if (this.#phase === 'chunk') return this.#close('mta closed during BDAT');
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
    if (this.#phase === 'closed') return;
    if (!this.#corked) {
      // the replies of one destination read (a pipelined group's) and the proxy's own that follow
      // in the same turn leave in one write; end() uncorks too
      this.#corked = true;
      this.#mta.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#mta.uncork();
      });
    }
    this.#mta.write(b);
  }

  /** The next complete command line: one read ahead first, then the reader. */
  #nextLine(): string | null {
    const held = this.#held.shift();
    if (held !== undefined) return held;
    const chunk = this.#pendingChunks.length === 0 ? undefined : this.#pendingChunks.length === 1 ? this.#pendingChunks.pop() : Buffer.concat(this.#pendingChunks.splice(0));
    return this.#reader.next(chunk);
  }

  /**
   * RFC 2920 §3.1: after a MAIL or RCPT that can start a group, the RCPTs and the DATA the MTA
   * sent with it (already read, complete lines only) go to the destination in one write, when
   * the destination offered PIPELINING. The group ends after DATA (its 354 is awaited before any
   * body) or before any other line, which is handled after it, in order.
   */
  #group(first: Command): Command[] {
    const group = [first];
    if (!this.#o.extensions.has('PIPELINING')) return group;
    if (first.verb === 'MAIL') {
      if (!isPathCommand(first) || (this.#conn !== null && !this.#conn.pipelining)) return group;
    } else if (first.verb === 'RCPT') {
      if (this.#broken || this.#conn === null || !this.#conn.pipelining) return group;
    } else return group;
    for (;;) {
      let line: string | null;
      try {
        line = this.#nextLine();
      } catch {
        // an over-long line: the next turn of #pump reads it again and answers it
        break;
      }
      if (line === null) break;
      const cmd = /[\r\0]/.test(line) ? null : parseCommand(line);
      if (cmd === null || !((cmd.verb === 'RCPT' && isPathCommand(cmd)) || cmd.verb === 'DATA')) {
        this.#held.unshift(line);
        break;
      }
      group.push(cmd);
      if (cmd.verb === 'DATA') break;
    }
    return group;
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
    // a chunk's first octets may still wait in the reader (until #chunkBegin): these come after them
    if (this.#phase === 'chunk' && !this.#busy) return this.#chunkData(chunk);
    this.#pendingChunks.push(chunk);
    this.#pump();
  }

  /** Handles commands one at a time, in order (pipelined ones wait in the reader). */
  #pump(): void {
    if (this.#busy || this.#phase !== 'command') return;
    for (;;) {
      // an MTA that does not read its replies is not read either (bounded output, as sessions)
      if (this.#output.full(this.#mta, this.#resumeAfterDrain)) return;
      let line: string | null;
      try {
        line = this.#nextLine();
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
      const group = this.#group(cmd);
      this.#busy = true;
      this.#mta.pause();
      (group.length > 1 ? this.#pipelined(group) : this.#command(cmd)).then(
        () => {
          this.#busy = false;
          if (this.#isClosed()) return this.#afterClose();
          if (this.#phase === 'chunk') return this.#chunkBegin();
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
        // HELO offers no extensions (RFC 5321 §4.1.1.1): BDAT is not offered after it
        this.#helo = cmd.verb === 'HELO';
        if (cmd.verb === 'HELO') return this.#write(formatReply(250, [this.#o.ehlo.lines[0] ?? 'mtaproxy']));
        return this.#write(formatReply(250, ehloForMta(this.#o.ehlo, this.#o.extensions)));
      case 'MAIL':
        if (!isPathCommand(cmd)) return this.#write(local.syntax());
        if (this.#chunkFailed !== null) await this.#endTransaction('MAIL after a refused BDAT');
        if (this.#conn !== null) return this.#relay(cmd);
        return this.#mail([cmd]);
      case 'RCPT':
        if (this.#broken) return this.#write(local.broken());
        if (this.#conn === null) return this.#write(local.noTransaction());
        return this.#relay(cmd);
      case 'DATA':
        if (this.#broken) return this.#write(local.broken());
        if (this.#conn === null) return this.#write(local.noTransaction());
        return this.#data(cmd);
      case 'BDAT':
        // only on a link that offered CHUNKING; elsewhere BDAT is an unknown command (its octets are commands)
        if (!this.#o.extensions.has('CHUNKING') || this.#helo) return this.#write(local.notOffered('BDAT'));
        return this.#bdat(cmd);
      case 'RSET':
        this.#broken = false;
        if (this.#conn === null) return this.#write(local.ok('2.0.0 OK'));
        // after a refused chunk the transaction's record keeps the refusal's code
        return this.#relay(cmd, (r) => this.#finish(this.#chunkFailed ?? r, r.code === 250, this.#chunkFailed === null ? 'RSET' : 'RSET after a refused BDAT', this.#tx?.bytes ?? 0));
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

  /** A pipelined group (#group): MAIL opens a transaction, or the open one's commands are relayed. */
  async #pipelined(group: readonly Command[]): Promise<void> {
    const first = group[0];
    if (first === undefined) return;
    if (first.verb === 'MAIL' && this.#chunkFailed !== null) await this.#endTransaction('MAIL after a refused BDAT');
    if (first.verb === 'MAIL' && this.#conn === null) return this.#mail(group);
    const conn = this.#conn;
    if (conn === null) return;
    if (group.some((c) => c.verb === 'DATA')) this.#dataSent = true;
    return this.#relayReplies(conn, group, this.#send(conn, group), 0, true);
  }

  /** Sends commands in one write; each outcome is settled (a reply, or the error that killed the connection). */
  #send(conn: DestinationConnection, cmds: readonly Command[]): Promise<Reply | Error>[] {
    const t = this.#ctx.pool.timeouts;
    return conn
      .commands(
        cmds.map((c) => c.line),
        cmds.map((c) => (c.verb === 'DATA' ? t.dataInitMs : t.commandMs)),
      )
      .map((p) => p.catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))));
  }

  /**
   * MAIL outside a transaction: a message token, a connection, then the destination's answer;
   * `cmds` is MAIL and the RCPTs/DATA pipelined with it, sent together if the connection offers
   * PIPELINING (else one by one, after MAIL's reply, like unpipelined commands).
   */
  async #mail(cmds: readonly Command[]): Promise<void> {
    const cmd = cmds[0];
    if (cmd === undefined) return;
    this.#broken = false;
    const refusal = this.#o.policy();
    if (refusal !== null) {
      // the link would not be opened now (a reload changed egress): it ends, and the MTA's next
      // CONNECT gets the policy's own code
      this.#write(formatReply(421, [`4.3.0 mtaproxy: this link's destination is no longer allowed (${refusal.code} ${refusal.message}), closing`]));
      return this.#close('destination no longer allowed by egress policy');
    }
    const hold = (from: number): void => {
      this.#held.unshift(...cmds.slice(from).map((c) => c.line));
    };
    const token = await this.#messageToken();
    if (this.#isClosed()) {
      if (token.ok) this.#ctx.throttle.refundMessage(this.#o.throttle);
      return;
    }
    if (!token.ok) {
      hold(1);
      return this.#write(local.busy(token.message));
    }
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
        hold(1);
        return this.#write(local.busy(`${b.code} ${b.message}`));
      }
      const conn = b.conn;
      const sent = conn.pipelining ? cmds : cmds.slice(0, 1);
      const outcomes = this.#send(conn, sent);
      const first = await (outcomes[0] as Promise<Reply | Error>);
      if (first instanceof Error) {
        this.#ctx.pool.giveBack(conn, false);
        if (b.reused && attempt === 0) continue;
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        // what was pipelined with it is answered as without a transaction
        hold(1);
        return this.#write(local.lost(first.message));
      }
      const reply = first;
      if (closesConnection(reply) && b.reused && attempt === 0) {
        // "421 idle timeout" from a cached connection is its end, not an answer to this MAIL
        this.#ctx.pool.giveBack(conn, false);
        continue;
      }
      hold(sent.length);
      const accepted = reply.code >= 200 && reply.code < 300;
      if (this.#isClosed()) {
        if (!accepted) this.#ctx.throttle.refundMessage(this.#o.throttle);
        // with DATA pipelined the destination may be reading a body now: that connection is done
        if (sent.some((c) => c.verb === 'DATA')) {
          conn.destroy('the MTA left during a pipelined DATA');
          return this.#ctx.pool.giveBack(conn, false);
        }
        return this.#abandon(conn, accepted);
      }
      if (accepted) {
        this.#conn = conn;
        // reused: the connection carried an earlier transaction (the CONNECT's borrow was none)
        this.#reused = conn.uses > 0;
        conn.uses++;
        this.#tx = { started, rcptOk: 0, rcptTotal: 0, bytes: 0 };
        if (sent.some((c) => c.verb === 'DATA')) this.#dataSent = true;
      } else {
        this.#ctx.throttle.refundMessage(this.#o.throttle);
        if (sent.length === 1) this.#ctx.pool.giveBack(conn, !closesConnection(reply));
      }
      this.#write(reply.raw);
      if (sent.length > 1) return this.#relayReplies(conn, sent, outcomes, 1, accepted);
      return;
    }
  }

  /**
   * The replies to pipelined commands `cmds[from…]`, in order. In the open transaction (`open`)
   * each is the transaction's, as #relay and #data take them; after a MAIL the destination
   * refused, the destination's own replies (503 …) pass through and the connection goes back.
   */
  async #relayReplies(conn: DestinationConnection, cmds: readonly Command[], outcomes: readonly Promise<Reply | Error>[], from: number, open: boolean): Promise<void> {
    let reusable = true;
    for (let i = from; i < cmds.length; i++) {
      const cmd = cmds[i] as Command;
      const out = await (outcomes[i] as Promise<Reply | Error>);
      if (this.#isClosed()) {
        // an open transaction's connection goes back in #afterClose (#dataSent says if it must die)
        if (!open) {
          if (cmds.slice(i).some((c) => c.verb === 'DATA')) conn.destroy('the MTA left during a pipelined DATA');
          this.#ctx.pool.giveBack(conn, false);
        }
        return;
      }
      if (!open) {
        if (out instanceof Error) {
          reusable = false;
          this.#write(local.noTransaction());
        } else if (cmd.verb === 'DATA' && out.code === 354) {
          // a destination that reads a body without a transaction: nothing is relayed to it
          reusable = false;
          conn.destroy('the destination answered DATA with 354 after refusing MAIL');
          this.#write(local.lost('the destination answered DATA with 354 after refusing MAIL'));
        } else {
          if (closesConnection(out)) reusable = false;
          this.#write(out.raw);
        }
        continue;
      }
      if (this.#conn !== conn) {
        // the transaction ended earlier in this group (a 421, or the connection failed)
        this.#write(local.broken());
        continue;
      }
      if (out instanceof Error) {
        this.#lost(out);
        continue;
      }
      if (cmd.verb === 'DATA') this.#dataReply(out);
      else this.#txReply(cmd, out);
    }
    if (!open) this.#ctx.pool.giveBack(conn, reusable && !conn.dead);
  }

  /** A reply to MAIL, RCPT, RSET or NOOP in the open transaction, passed back. */
  #txReply(cmd: Command, reply: Reply): void {
    this.#write(reply.raw);
    if (closesConnection(reply)) {
      // the destination ends the connection: the transaction is over, and the rest of it (pipelined
      // RCPTs, DATA) gets the proxy's 451 until RSET, never an invented 5xx
      this.#finish(reply, false, cmd.verb);
      this.#broken = true;
      return;
    }
    if (cmd.verb === 'RCPT' && this.#tx !== null) {
      this.#tx.rcptTotal++;
      if (reply.code >= 200 && reply.code < 300) this.#tx.rcptOk++;
    }
  }

  /** The reply to DATA in the open transaction: 354 starts the body. */
  #dataReply(reply: Reply): void {
    this.#dataSent = false;
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
    this.#txReply(cmd, reply);
    if (this.#conn === conn) after?.(reply);
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
    if (this.#isClosed()) {
      // the MTA left while DATA waited: after a 354 the destination reads a body that will never
      // come, so this connection cannot take an RSET: it is dropped (#afterClose)
      this.#dataSent = reply.code === 354;
      return;
    }
    this.#dataReply(reply);
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
    this.#awaitThenPump(this.#afterBody(scanner.bytes));
  }

  /**
   * The MTA is not read while `work` (a final reply) is awaited; then the commands that came
   * after the body or chunk are handled. An unexpected error ends the link with 421.
   */
  #awaitThenPump(work: Promise<void>): void {
    this.#busy = true;
    this.#mta.pause();
    work.then(
      () => {
        this.#busy = false;
        if (this.#isClosed()) return this.#afterClose();
        this.#mta.resume();
        this.#pump();
      },
      (err: unknown) => {
        this.#ctx.log.error({ mtaproxy_event: 'smtp_link', session: this.#o.who, err: String(err) }, `smtp(${this.#o.who}): internal error ${String(err)}`);
        this.#write(formatReply(421, ['4.3.0 mtaproxy: internal error']));
        this.#close('internal error');
      },
    );
  }

  /**
   * The destination's reply to a complete body or chunk, written to the MTA; null if the
   * connection died (`lostWhy`, or before or while the reply was awaited): the MTA got the
   * proxy's 451 instead, never a reply of the destination's.
   */
  async #finalReply(conn: DestinationConnection, bytes: number, lostWhy: string | null): Promise<Reply | null> {
    if (lostWhy !== null || conn.dead) {
      this.#lost(new Error(lostWhy ?? conn.deadReason ?? 'destination connection lost'), bytes);
      return null;
    }
    let reply: Reply;
    try {
      reply = await conn.awaitReply(this.#ctx.pool.timeouts.dataDoneMs);
    } catch (err) {
      this.#lost(err as Error, bytes);
      return null;
    }
    this.#write(reply.raw);
    return reply;
  }

  /**
   * BDAT (RFC 3030): the command line as the MTA sent it and exactly <chunk-size> octets after it
   * go to the destination unchanged (length-delimited: no dot-stuffing, no end to look for), then
   * its reply comes back. What the proxy answers itself (no transaction, a failed one, a
   * connection without CHUNKING) comes after the chunk's octets were read and dropped, so they
   * are never read as commands. One BDAT at a time: the next command is read after the reply.
   */
  #bdat(cmd: Command): Promise<void> | void {
    const args = parseBdat(cmd.args);
    if (args === null) return this.#write(local.bdatSyntax());
    // a line read ahead of a BDAT would be chunk data read as a command: never
    if (this.#held.length > 0) throw new Error('command lines were read past a BDAT command');
    const conn = this.#conn;
    const reply = this.#broken ? local.broken() : conn === null ? local.noTransaction() : !conn.chunking ? local.noChunking() : null;
    const c: Chunk = { counter: new ChunkCounter(args.size), last: args.last, conn: reply === null ? conn : null, reply, blocked: false };
    this.#chunk = c;
    if (c.conn !== null) this.#chunkOut(c, c.conn, Buffer.from(`${cmd.line}\r\n`, 'latin1'));
    if (args.size === 0) return this.#chunkEnd(c);
    this.#phase = 'chunk';
  }

  /** The chunk's octets that came with (or while) its BDAT command line, then the rest as it comes. */
  #chunkBegin(): void {
    const rest = Buffer.concat([this.#reader.takePending(), ...this.#pendingChunks.splice(0)]);
    if (rest.length > 0) this.#chunkData(rest);
    // complete already: #chunkData went on to the reply
    if (this.#phase !== 'chunk') return;
    if (this.#ended) return this.#close('mta closed during BDAT');
    if (this.#chunk?.blocked !== true) this.#mta.resume();
  }

  /** Octets from the MTA in phase 'chunk': the chunk's go on, what follows it is commands again. */
  #chunkData(raw: Buffer): void {
    const c = this.#chunk;
    if (c === null) return;
    const { part, rest } = c.counter.take(raw);
    if (c.conn !== null && part.length > 0) this.#chunkOut(c, c.conn, part);
    if (rest === null) return;
    this.#phase = 'command';
    if (rest.length > 0) this.#pendingChunks.push(rest);
    this.#awaitThenPump(this.#chunkEnd(c));
  }

  /** Writes to the destination; while its side is full the MTA is not read (the DATA body's backpressure). */
  #chunkOut(c: Chunk, conn: DestinationConnection, part: Buffer): void {
    if (conn.dead) return;
    if (conn.writeBody(part, this.#ctx.pool.timeouts.dataBlockMs) || c.blocked) return;
    c.blocked = true;
    this.#mta.pause();
    // on drain, or once the connection died (dataBlockMs): the rest of the chunk is still read
    conn.drainOnce(() => {
      c.blocked = false;
      if (this.#phase === 'chunk' && this.#chunk === c && !this.#busy) this.#mta.resume();
    });
  }

  /** The chunk is all read: the proxy's own answer, or the destination's reply to it. */
  async #chunkEnd(c: Chunk): Promise<void> {
    if (this.#chunk === c) this.#chunk = null;
    const conn = c.conn;
    if (conn === null) return this.#write(c.reply ?? local.noTransaction());
    const tx = this.#tx;
    if (tx !== null) tx.bytes += c.counter.size;
    const bytes = tx?.bytes ?? c.counter.size;
    // the destination died, stalled or timed out during the chunk: never a reply of its own
    const reply = await this.#finalReply(conn, bytes, null);
    if (reply === null) return;
    if (closesConnection(reply)) {
      if (c.last) conn.transactions++;
      this.#finish(reply, false, 'BDAT', bytes);
      // the rest of the message (more chunks) gets the proxy's 451 until RSET
      if (!c.last) this.#broken = true;
      return;
    }
    if (reply.code < 200 || reply.code >= 300) {
      // RFC 3030 §2: the transaction failed and its state at the destination is indeterminate;
      // it stays open until the MTA's RSET (or MAIL, EHLO, QUIT: the proxy sends RSET first)
      // the first refusal is the transaction's cause; later chunks' replies (503 bad sequence) are not
      this.#chunkFailed ??= reply;
      return;
    }
    if (!c.last) return;
    conn.transactions++;
    this.#finish(reply, true, 'BDAT', bytes);
  }

  async #afterBody(bytes: number): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    const reply = await this.#finalReply(conn, bytes, this.#bodyLost);
    if (reply === null) return;
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
    this.#chunkFailed = null;
    this.#ctx.pool.giveBack(conn, reusable);
  }

  /** The destination failed mid-transaction: 451 from the proxy, and that connection is done. */
  #lost(err: Error, bytes = 0): void {
    const conn = this.#conn;
    if (conn === null) return;
    this.#write(local.lost(err.message));
    this.#dataSent = false;
    this.#record(conn, null, `lost: ${err.message}`, bytes);
    this.#conn = null;
    this.#tx = null;
    this.#chunkFailed = null;
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
      this.#record(conn, null, `RSET before ${why} failed: ${(err as Error).message}`, this.#tx?.bytes ?? 0);
      this.#conn = null;
      this.#tx = null;
      this.#chunkFailed = null;
      this.#ctx.pool.giveBack(conn, false);
      return;
    }
    this.#finish(this.#chunkFailed ?? reply, reply.code === 250, `RSET before ${why}`, this.#tx?.bytes ?? 0);
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
    const chunk = this.#phase === 'chunk' ? this.#chunk : null;
    this.#chunk = null;
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
      } else if (chunk !== null && chunk.conn === conn) {
        // the same for half a BDAT chunk: the destination must never count its last octet
        this.#record(conn, null, `mta gone mid-BDAT (${why})`, (this.#tx?.bytes ?? 0) + chunk.counter.size - chunk.counter.left);
        conn.destroy('the MTA left during a BDAT chunk');
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
