// A control session: one long-lived connection per MTA instance (docs/protocol.md §3).
import { closeSoon } from '../net/close.js';
import type { Socket } from 'node:net';
import type { Logger } from '../log/logger.js';
import {
  formatReply,
  formatRequest,
  isTag,
  parseBacklog,
  parseControlLine,
  WINDOW,
  ZERO_BACKLOG,
  type Backlog,
  type ControlMessage,
} from '../protocol/control.js';
import type { LineSplitter } from '../protocol/lines.js';
import type { SessionSnapshot } from '../status/format.js';
import type { EgressConfig } from '../config/parse.js';
import { parseDeclare, parseAcquire } from '../protocol/throttle.js';
import { THROTTLE_KEY } from '../protocol/syntax.js';
import { decimalString } from '../protocol/decimal.js';
import type { LeaseKind } from '../throttle/manager.js';
import { QueuedAcquire, type ThrottleService } from '../throttle/service.js';

/** What control sessions use of the daemon. */
export interface SessionServices {
  throttle: ThrottleService;
  egress(): EgressConfig;
  /** takes a closed session out of the throttle manager (budgeted per turn: leaves.ts) */
  leave(sessionId: string): void;
}

type Handler = (session: ControlSession, tag: string, args: string[]) => void;

/** ACQUIREs one session may have waiting; past this, ACQUIRE is answered 452 at once. */
export const MAX_WAITING_ACQUIRES = 1024;
/** Throttle keys one session may declare; past this, DECLARE of a new key is answered 452. */
export const MAX_KEYS_PER_SESSION = 10_000;
/**
 * Reply bytes queued for an MTA that does not read them before the session stops reading its
 * requests (resumed on 'drain'). A stuck MTA that keeps writing requests then fills its own
 * socket buffers, not our memory, and its silence closes it after two ping intervals.
 */
export const OUTPUT_HIGH_WATER = 64 * 1024;

let sessionSerial = 0;

const HANDLERS: Readonly<Record<string, Handler>> = {
  PING: (s, tag) => s.reply(tag, 250, 'PONG'),
  BACKLOG: (s, tag, args) => {
    const backlog = parseBacklog(args);
    if (typeof backlog === 'string') return s.reply(tag, 501, backlog);
    s.backlog = backlog;
    s.services.throttle.setBacklog(s.id, backlog.ram + backlog.bounce + backlog.disk);
    s.reply(tag, 250, 'OK');
  },
  DECLARE: (s, tag, args) => {
    const d = parseDeclare(args);
    if (typeof d === 'string') return s.reply(tag, 501, d);
    const egress = s.services.egress();
    if (!egress.sourceIps.includes(d.sourceIp)) return s.reply(tag, 550, `source ${d.sourceIp} is not in egress.source_ips`);
    if (!s.declaredKeys.has(d.key) && s.declaredKeys.size >= MAX_KEYS_PER_SESSION) {
      return s.reply(tag, 452, `too many throttle keys declared on this session (${MAX_KEYS_PER_SESSION}); use fewer, coarser keys`);
    }
    s.declaredKeys.add(d.key);
    const warning = s.services.throttle.declare(s.id, d);
    if (warning !== null) s.warn(warning);
    const limits = s.services.throttle.manager.limits(d.key);
    s.reply(tag, 250, `${d.key} max_connections=${limits?.maxConnections} max_messages_per_hour=${limits?.maxMessagesPerHour} mode=${limits?.mode}`);
  },
  ACQUIRE: (s, tag, args) => {
    const a = parseAcquire(args);
    if (typeof a === 'string') return s.reply(tag, 501, a);
    acquire(s, tag, a.key, a.kind, a.waitMs);
  },
  RELEASE: (s, tag, args) => {
    const id = Number(args[0]);
    release(s, tag, args.length === 1 && Number.isInteger(id) ? id : -1, String(args[0]), 0);
  },
  QUIT: (s, tag) => {
    s.reply(tag, 221, 'bye');
    s.end('client quit');
  },
};

/** ACQUIRE, once parsed (the generic parser's or handleLine's fast path). */
function acquire(s: ControlSession, tag: string, key: string, kind: LeaseKind, waitMs: number | null): void {
  if (s.waitingTags.size >= MAX_WAITING_ACQUIRES) return s.reply(tag, 452, `too many ACQUIREs waiting on this session (${MAX_WAITING_ACQUIRES})`);
  // replies are matched by tag: a second waiting request with the same tag is a client bug
  if (s.waitingTags.size > 0 && s.waitingTags.has(tag)) return s.reply(tag, 501, `tag ${tag} is already used by a waiting ACQUIRE; use a new tag per request`);
  const maxWait = s.services.egress().throttleWaitTimeoutMs;
  const r = s.services.throttle.begin(s.id, key, kind, Math.min(waitMs ?? maxWait, maxWait));
  // a request answered at once (the common case) makes no callback and never enters waitingTags
  if (!(r instanceof QueuedAcquire)) {
    if ('id' in r) s.replyGranted(tag, kind === 'connection' ? r.id : null);
    else s.reply(tag, r.code, r.message);
    return;
  }
  s.waitingTags.add(tag);
  // a session that closes meanwhile needs no canceller: its leave answers the waits to nobody
  // (reply() is a no-op once closed)
  s.services.throttle.wait(r, (outcome) => {
    s.waitingTags.delete(tag);
    if (outcome.ok) s.replyGranted(tag, kind === 'connection' ? outcome.lease.id : null);
    else s.reply(tag, outcome.code, outcome.message);
  });
}

/** RELEASE of lease `id` (-1: not a lease id); `shown` from `at` on: the argument as given, for the error (sliced only then). */
function release(s: ControlSession, tag: string, id: number, shown: string, at: number): void {
  const lease = id >= 0 ? s.services.throttle.manager.lease(id) : undefined;
  // a delivery's slot is released by the delivery's end, never by a RELEASE
  if (lease === undefined || lease.session !== s.id || lease.heldByDelivery) return s.reply(tag, 550, `no lease ${shown.slice(at, at + 20)} held by this session`);
  s.services.throttle.release(id);
  s.reply(tag, 250, 'released');
}

/** Decimal digits from `from` to the end of `line` (1-15 of them: exact as a number), or -1. */
function digitsToEnd(line: string, from: number): number {
  const n = line.length - from;
  if (n < 1 || n > 15) return -1;
  let v = 0;
  for (let i = from; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c < 48 || c > 57) return -1;
    v = v * 10 + (c - 48);
  }
  return v;
}

/**
 * Reading a socket stops for several reasons at once (our replies pile up unread; a batch of
 * requests is being worked through in turns); it restarts only when none holds any more.
 */
export class InputGate {
  readonly #socket: Socket;
  readonly #holds = new Set<string>();
  /** told when a hold ends (the session flushes the replies it kept for the end of a batch) */
  onRelease: ((reason: string) => void) | null = null;

  constructor(socket: Socket) {
    this.#socket = socket;
  }

  hold(reason: string): void {
    this.#holds.add(reason);
    this.#socket.pause();
  }

  holds(reason: string): boolean {
    return this.#holds.has(reason);
  }

  release(reason: string): void {
    if (!this.#holds.delete(reason)) return;
    this.onRelease?.(reason);
    if (this.#holds.size > 0) return;
    if (!this.#socket.destroyed) this.#socket.resume();
  }
}

/**
 * Replies kept while the reader works through one read's requests in several turns ('batch':
 * native.ts handles LINES_PER_TURN lines a turn), so that they leave in one write at the end of
 * the batch rather than one write per turn; past this many, they go at the end of the turn.
 */
export const MAX_BATCH_REPLIES = 1024;

export class ControlSession {
  /** tags of this session's ACQUIREs waiting for a grant (bounded by MAX_WAITING_ACQUIRES) */
  readonly waitingTags = new Set<string>();
  /** throttle keys this session declared (bounded by MAX_KEYS_PER_SESSION) */
  readonly declaredKeys = new Set<string>();
  /** unique per connection: a replacing session with the same name must not share leases */
  readonly id: string;
  readonly name: string;
  readonly services: SessionServices;
  readonly peer: string;
  readonly connectedAt: number;
  backlog: Backlog = ZERO_BACKLOG;
  #socket: Socket;
  #splitter: LineSplitter;
  #log: Logger;
  #now: () => number;
  #lastHeard: number;
  /** a line arrived since the last tick() */
  #heard = false;
  #lastPing: number;
  #rttMs: number | null = null;
  #rttAt: number | null = null;
  #nextTag = 1;
  /** proxy requests awaiting the MTA's reply: tag -> sent at (ms) */
  readonly #pending = new Map<string, number>();
  #forwardIn = 0;
  #forwardOut = 0;
  #backOut = 0;
  #closed = false;
  #gate: InputGate;
  #onClose: (session: ControlSession, reason: string) => void;

  constructor(opts: {
    name: string;
    socket: Socket;
    splitter: LineSplitter;
    log: Logger;
    now: () => number;
    services: SessionServices;
    onClose: (session: ControlSession, reason: string) => void;
    /** who may stop and restart reading this socket (shared with the line reader) */
    gate?: InputGate;
  }) {
    this.name = opts.name;
    this.id = `${opts.name}#${++sessionSerial}`;
    this.services = opts.services;
    this.#socket = opts.socket;
    this.peer = `${opts.socket.remoteAddress}:${opts.socket.remotePort}`;
    this.#splitter = opts.splitter;
    this.#log = opts.log;
    this.#now = opts.now;
    this.connectedAt = opts.now();
    this.#lastHeard = this.connectedAt;
    this.#lastPing = this.connectedAt;
    this.#onClose = opts.onClose;
    opts.socket.on('close', () => this.#closedBy('connection closed'));
    this.#gate = opts.gate ?? new InputGate(opts.socket);
    this.#gate.onRelease = (reason) => {
      if (reason === 'batch') this.#flush();
    };
    // output backpressure: reading stopped in #flush past OUTPUT_HIGH_WATER resumes here
    opts.socket.on('drain', () => {
      if (!this.#closed) this.#gate.release('output');
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Lines read from the socket after the handshake, in order. */
  handleLine(line: string): void {
    if (this.#closed) return;
    // the clock is read by the liveness tick, not per line: heard since the last tick counts as heard then
    this.#heard = true;
    // Every line is handled as it arrives; reading never stops because requests wait. (Holding
    // back waiting ACQUIREs once stopped the RELEASEs behind them, which were what would have
    // freed the slots.) Waiting ACQUIREs are bounded per session instead: MAX_WAITING_ACQUIRES.
    // the two requests of every delivery, "<tag> ACQUIRE <key> connection|message[ wait=<ms>]" and
    // "<tag> RELEASE <id>", without the general parser's slices, argument array and message object;
    // a line of any other shape (errors included) takes the general path below
    const sp = line.indexOf(' ');
    if (sp > 0 && (line.startsWith('ACQUIRE ', sp + 1) ? this.#fastAcquire(line, sp) : line.startsWith('RELEASE ', sp + 1) && this.#fastRelease(line, sp))) return;
    const msg: ControlMessage = parseControlLine(line);
    switch (msg.kind) {
      case 'request': {
        // "-" means "no reply": only RELEASE may use it (a grant nobody reads would leak a lease)
        if (msg.tag === '-' && msg.verb !== 'RELEASE') return this.fail(`protocol error: the tag "-" (no reply) is only for RELEASE, not ${msg.verb.slice(0, 20)}`);
        const handler = HANDLERS[msg.verb];
        this.#forwardIn++;
        if (handler === undefined) this.reply(msg.tag, 500, `unknown command ${msg.verb}`);
        else handler(this, msg.tag, msg.args);
        return;
      }
      case 'reply': {
        const sentAt = this.#pending.get(msg.tag);
        if (sentAt === undefined) return this.fail(`reply to unknown request ${msg.tag}`);
        this.#pending.delete(msg.tag);
        this.#rttMs = this.#now() - sentAt;
        this.#rttAt = this.#now();
        return;
      }
      case 'notice':
        return;
      case 'invalid':
        return this.fail(`protocol error: ${msg.reason}`);
    }
  }

  /** "<tag> ACQUIRE ..." with the verb at `sp` + 1: handled here if it has the usual shape (true). */
  #fastAcquire(line: string, sp: number): boolean {
    const keyAt = sp + 9;
    const keyEnd = line.indexOf(' ', keyAt);
    if (keyEnd === -1) return false;
    const kindAt = keyEnd + 1;
    const kind: LeaseKind | null = line.startsWith('connection', kindAt) ? 'connection' : line.startsWith('message', kindAt) ? 'message' : null;
    if (kind === null) return false;
    const kindEnd = kindAt + kind.length;
    let waitMs: number | null = null;
    if (kindEnd !== line.length) {
      // one " wait=<1-9 digits>" to the end, nothing else
      if (!line.startsWith(' wait=', kindEnd) || line.length - (kindEnd + 6) > 9) return false;
      waitMs = digitsToEnd(line, kindEnd + 6);
      if (waitMs < 0) return false;
    }
    const tag = line.slice(0, sp);
    if (tag === '-' || !isTag(tag)) return false;
    const key = line.slice(keyAt, keyEnd);
    // a key this session declared passed THROTTLE_KEY then (and the Set's hash of it is the one the
    // throttle manager's lookup reuses); any other goes through the check
    if (!this.declaredKeys.has(key) && !THROTTLE_KEY.test(key)) return false;
    this.#forwardIn++;
    acquire(this, tag, key, kind, waitMs);
    return true;
  }

  /** "<tag> RELEASE <id>" with the verb at `sp` + 1: handled here if it has the usual shape (true). */
  #fastRelease(line: string, sp: number): boolean {
    const id = digitsToEnd(line, sp + 9);
    if (id < 0) return false;
    const tag = line.slice(0, sp);
    if (!isTag(tag)) return false;
    this.#forwardIn++;
    release(this, tag, id, line, sp + 9);
    return true;
  }

  /** 250 to an ACQUIRE: "lease <id>" for a connection slot, "message" for a token (null). */
  replyGranted(tag: string, leaseId: number | null): void {
    if (this.#closed) return;
    this.#forwardIn = Math.max(0, this.#forwardIn - 1);
    this.#forwardOut++;
    this.#append(leaseId === null ? `${tag} 250 message\n` : `${tag} 250 lease ${decimalString(leaseId)}\n`, 'reply');
  }

  reply(tag: string, code: number, text: string): void {
    if (this.#closed) return;
    this.#forwardIn = Math.max(0, this.#forwardIn - 1);
    if (tag === '-') {
      if (code >= 400) this.#log.debug({ mtaproxy_event: 'session_error', session: this.name }, `session(${this.name}): unanswered request failed: ${code} ${text}`);
      return;
    }
    this.#forwardOut++;
    this.#write(formatReply(tag, code, text), 'reply');
  }

  /** Sends a proxy->MTA ping; the round trip shows in the status line. */
  ping(): void {
    if (this.#pending.size >= WINDOW) return; // the MTA is not answering: the idle check closes it
    const tag = `s${this.#nextTag++}`;
    this.#pending.set(tag, this.#now());
    this.#backOut++;
    this.#write(formatRequest(tag, 'PING'), 'ping');
  }

  /**
   * Called by the daemon's liveness tick (a fraction of the ping interval): closes a session
   * silent for more than two ping intervals, and pings one not pinged for an interval. Reading
   * stops only while our replies pile up unread (OUTPUT_HIGH_WATER), so silence while paused is
   * the MTA's too: it does not read what we send.
   */
  tick(pingIntervalMs: number): void {
    const now = this.#now();
    if (this.#heard) {
      this.#heard = false;
      this.#lastHeard = now;
    }
    const silent = now - this.#lastHeard;
    if (silent > 2 * pingIntervalMs) {
      this.fail(`no traffic for ${(silent / 1000).toFixed(1)}s (ping timeout)`, 421);
      return;
    }
    if (now - this.#lastPing >= pingIntervalMs) {
      this.#lastPing = now;
      this.ping();
    }
  }

  /** Closes with a notice the MTA can log, e.g. on shutdown or replacement. */
  end(reason: string, notice?: string): void {
    if (this.#closed) return;
    if (notice !== undefined) this.#write(`* ${notice}`, 'notice');
    this.#flush();
    // close once the notice is flushed; do not wait for the MTA's side (no half-open sessions)
    closeSoon(this.#socket);
    this.#closedBy(reason);
  }

  warn(message: string): void {
    this.#log.warn({ mtaproxy_event: 'throttle_conflict', session: this.name }, message);
  }

  fail(reason: string, code = 500): void {
    this.#log.warn({ mtaproxy_event: 'session_error', session: this.name, peer: this.peer }, `session(${this.name}): ${reason}`);
    this.end(reason, `${code} ${reason}`);
  }

  destroy(): void {
    this.#socket.destroy();
  }

  snapshot(): SessionSnapshot {
    const now = this.#now();
    return {
      name: this.name,
      connectedMs: now - this.connectedAt,
      pingRttMs: this.#rttMs,
      pingAgeMs: this.#rttAt === null ? null : now - this.#rttAt,
      backlog: this.backlog,
      forward: { in: this.#forwardIn, out: this.#forwardOut, buf: this.#splitter.buffered },
      back: { in: this.#pending.size, out: this.#backOut, buf: this.#socket.writableLength },
    };
  }

  /**
   * Lines are coalesced until the current burst of work is done (one microtask), so replies to a
   * pipelined batch of requests leave in one write, not one syscall each.
   */
  #write(line: string, kind: 'reply' | 'ping' | 'notice'): void {
    this.#append(`${line}\n`, kind);
  }

  /** #write() of a line that already ends with "\n". */
  #append(text: string, kind: 'reply' | 'ping' | 'notice'): void {
    if (this.#socket.destroyed || !this.#socket.writable) return;
    this.#batch += text;
    this.#batchLines++;
    if (kind === 'reply') this.#batchReplies++;
    else if (kind === 'ping') this.#batchPings++;
    if (this.#batchLines === 1 || this.#batchLines === MAX_BATCH_REPLIES) queueMicrotask(this.#endOfTurn);
  }

  /** The end of a burst of work: flush, unless the reader is in the middle of a batch (see MAX_BATCH_REPLIES). */
  readonly #endOfTurn = (): void => {
    if (this.#gate.holds('batch') && this.#batchLines < MAX_BATCH_REPLIES) return; // flushed by the batch's end (onRelease)
    this.#flush();
  };

  #flush(): void {
    if (this.#batchLines === 0) return;
    const text = this.#batch;
    const replies = this.#batchReplies;
    const pings = this.#batchPings;
    this.#batch = '';
    this.#batchLines = 0;
    this.#batchReplies = 0;
    this.#batchPings = 0;
    if (this.#socket.destroyed || !this.#socket.writable) return;
    // one callback per write (not per line): the counts in the status line come back when the kernel took them
    this.#socket.write(text, () => {
      this.#forwardOut -= replies;
      this.#backOut -= pings;
    });
    if (this.#socket.writableLength > OUTPUT_HIGH_WATER) this.#gate.hold('output');
  }

  #batch = '';
  #batchLines = 0;
  #batchReplies = 0;
  #batchPings = 0;

  #closedBy(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    // its leases, waits and declarations go in one call (its waits are answered 'cancelled' to
    // nobody: reply() is a no-op once closed); the limits are recomputed for the others
    this.waitingTags.clear();
    this.services.leave(this.id);
    this.#onClose(this, reason);
  }
}
