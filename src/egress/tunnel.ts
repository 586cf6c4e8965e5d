// Outbound connections from a chosen source address, and the byte tunnel between the MTA and the
// destination: a hand-written write/drain loop per direction (half the memory of stream.pipe()
// per idle tunnel, design.md §9), half-close passed through, one idle timeout for both directions.
import { connect, type Socket } from 'node:net';
import { adopt, OWNER, type OwnedSocket } from '../net/owner.js';
import type { TimerWheel, WheelTimer } from '../net/wheel.js';
import { CONNECT_CODES, type Refusal } from './policy.js';

export class EgressError extends Error {
  readonly code: number;
  constructor(refusal: Refusal) {
    super(refusal.message);
    this.code = refusal.code;
  }
}

/** A failed outbound connect as the refusal it is (the source cannot be bound, refused, timed out…). */
function connectError(err: NodeJS.ErrnoException, sourceIp: string, address: string, port: number): EgressError {
  const where = `${address}:${port} from ${sourceIp}`;
  switch (err.code) {
    case 'EADDRNOTAVAIL':
    case 'EADDRINUSE':
      return new EgressError({ code: CONNECT_CODES.bindFailed, message: `cannot bind source ${sourceIp}: ${err.code}` });
    case 'ECONNREFUSED':
      return new EgressError({ code: CONNECT_CODES.connectRefused, message: `${where}: connection refused` });
    case 'ETIMEDOUT':
      return new EgressError({ code: CONNECT_CODES.connectTimeout, message: `${where}: timed out` });
    default:
      return new EgressError({ code: CONNECT_CODES.unreachable, message: `${where}: ${err.code ?? err.message}` });
  }
}

function connectTimedOut(address: string, port: number, timeoutMs: number): EgressError {
  return new EgressError({ code: CONNECT_CODES.connectTimeout, message: `connect to ${address}:${port} timed out after ${timeoutMs}ms` });
}

/** Connects to address:port from sourceIp; rejects with an EgressError naming the cause. */
export function connectFrom(sourceIp: string, address: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port, localAddress: sourceIp, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(connectTimedOut(address, port, timeoutMs));
    }, timeoutMs);
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(connectError(err, sourceIp, address, port));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(socket);
    });
  });
}

/**
 * connectFrom() for a delivery: a callback instead of a promise (no promise, no microtask turn
 * per delivery), the timeout on the daemon's timer wheel instead of a timer of its own. `address`
 * must be an IP literal (net.connect skips the DNS lookup for one). Calls done exactly once.
 */
export function openFrom(sourceIp: string, address: string, port: number, timeoutMs: number, wheel: TimerWheel, done: (err: EgressError | null, socket: Socket | null) => void): void {
  let socket: Socket;
  try {
    // what the destination sends is read into READ_BUFFER and handed to the tunnel (onRemoteRead):
    // the socket must be spliced in the turn of its 'connect' (reading starts right after it)
    socket = connect({ host: address, port, localAddress: sourceIp, allowHalfOpen: true, noDelay: true, onread: ONREAD });
  } catch (err) {
    return done(new EgressError({ code: CONNECT_CODES.unreachable, message: `${address}:${port} from ${sourceIp}: ${(err as Error).message}` }), null);
  }
  adopt(socket); // its one hidden class before its first listener (owner.ts)
  const timer = wheel.add(timeoutMs, () => {
    socket.removeListener('error', onError);
    socket.removeListener('connect', onConnect);
    socket.on('error', ignore); // destroy() without an error emits none; a late one goes nowhere
    socket.destroy();
    done(connectTimedOut(address, port, timeoutMs), null);
  });
  const onError = (err: NodeJS.ErrnoException): void => {
    timer.cancel();
    socket.removeListener('connect', onConnect);
    socket.removeListener('error', onError);
    socket.on('error', ignore); // destroy() may still report a second error
    socket.destroy();
    done(connectError(err, sourceIp, address, port), null);
  };
  const onConnect = (): void => {
    timer.cancel();
    socket.removeListener('error', onError);
    socket.removeListener('connect', onConnect);
    done(null, socket);
  };
  // on, removed by hand: no once-wrappers
  socket.on('error', onError);
  socket.on('connect', onConnect);
}

const ignore = (): void => {};

/** Bytes a tunnel buffers towards one side before it stops reading the other (backpressure). */
export const MAX_BUFFERED = 128 * 1024;

export interface TunnelResult {
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  /** "closed" (both sides finished), "idle timeout", or the first socket error */
  outcome: string;
}

/** The parts of a net.Socket's internals that say how much of what was written the kernel took. */
interface SocketInternals {
  /** bytes handed to libuv (Node's own counter behind socket.bytesWritten) */
  _bytesDispatched?: number;
  _handle?: { writeQueueSize?: number } | null;
}

/**
 * Bytes of this socket's writes that the kernel took, including the written part of a write
 * still in progress (libuv writes a large chunk in pieces; its callback comes only at the end):
 * Node's dispatched count minus what libuv still holds. null once the handle is gone (then the
 * write callbacks' count is what we know).
 */
function kernelAccepted(s: Socket): number | null {
  const internals = s as unknown as SocketInternals;
  const queued = internals._handle?.writeQueueSize;
  const dispatched = internals._bytesDispatched;
  if (typeof queued !== 'number' || typeof dispatched !== 'number') return null;
  return Math.max(0, dispatched - queued);
}

function dispatched(s: Socket): number {
  const n = (s as unknown as SocketInternals)._bytesDispatched;
  return typeof n === 'number' ? n : 0;
}

type TunnelSocket = OwnedSocket;

/**
 * One tunnel's state. Its socket listeners are module functions shared by every tunnel (`this` is
 * the socket, whose OWNER property leads here), not ~20 closures per tunnel: a --cpu-prof
 * profile charged the closures and their garbage (+20–30 µs per session) against a bare forwarder.
 *
 * What the kernel took of the writes to each side. A write that leaves the socket's writable
 * length at 0 completed at once (libuv wrote it all in write()'s own call), so everything sent
 * that way was taken: counted without asking Node's handle anything (its accessors, read per
 * write, were ~2 % of a session in a perf profile). Otherwise a snapshot of kernelAccepted()
 * (exact while the handle lives; the last snapshot once it is gone): after such a write, in the
 * callback of a write queued behind others (it completes later) and on 'drain'. A write on an
 * empty queue gets no callback: any callback costs a process.nextTick per write, which was the
 * largest item of the difference to a bare forwarder in a --cpu-prof profile. A write libuv
 * could not finish at once, to a destination that then closes before any later write or the
 * end, is counted as far as the last snapshot saw it.
 */
class Tunnel {
  readonly client: TunnelSocket;
  readonly remote: TunnelSocket;
  readonly idleTimeoutMs: number;
  readonly wheel: TimerWheel;
  readonly onDone: (result: TunnelResult) => void;
  readonly started: number;
  outcome: string | null = null;
  ended = 0;
  /**
   * when a byte was last read or written on the client side (every byte either way is one), by
   * the wheel's coarse clock: up to one resolution early (idle() allows for that)
   */
  active: number;
  idleTimer: WheelTimer | null = null;
  /** what was written before the tunnel (the MTA side's handshake, greeting and CONNECT reply) is not the tunnel's */
  readonly upBase: number;
  readonly downBase: number;
  up = 0;
  down = 0;
  /** bytes the tunnel wrote to each side (taken by the kernel or not yet) */
  upSent = 0;
  downSent = 0;
  #upWritten: ((err?: Error | null) => void) | null = null;
  #downWritten: ((err?: Error | null) => void) | null = null;

  constructor(client: Socket, remote: Socket, idleTimeoutMs: number, wheel: TimerWheel, onDone: (result: TunnelResult) => void) {
    this.client = client;
    this.remote = remote;
    this.idleTimeoutMs = idleTimeoutMs;
    this.wheel = wheel;
    this.onDone = onDone;
    this.started = performance.now();
    // the exact time here (the wheel's may be as old as this delivery's connect): a tunnel that
    // never carries a byte is not ended before its idle timeout for that
    this.active = this.started;
    this.upBase = dispatched(remote);
    this.downBase = dispatched(client);
  }

  /** `taken` bytes of all written to `to` (before the tunnel too) are known to be delivered */
  taken(to: Socket, taken: number): void {
    if (to === this.remote) {
      if (taken - this.upBase > this.up) this.up = taken - this.upBase;
    } else if (taken - this.downBase > this.down) {
      this.down = taken - this.downBase;
    }
  }

  /** the snapshot of what the kernel took of the writes to `to` */
  snap(to: Socket): void {
    const k = kernelAccepted(to);
    if (k !== null) this.taken(to, k);
  }

  /** a chunk read from `from` goes to the other side; reading stops past MAX_BUFFERED unsent */
  forward(from: Socket, chunk: Buffer): void {
    this.active = this.wheel.coarseNow;
    const to = from === this.client ? this.remote : this.client;
    this.write(to, chunk);
    // A read is up to 64 KiB, the socket's high-water mark 16 KiB: pausing whenever write() says
    // "full" would stop and restart reading on every chunk of a bulk transfer. Pause only past
    // MAX_BUFFERED; 'drain' still comes (write() returned false) once the buffer is empty.
    if (to.writableLength >= MAX_BUFFERED) from.pause();
  }

  write(to: Socket, chunk: Buffer): void {
    const up = to === this.remote;
    if (to.writableLength === 0) to.write(chunk);
    else if (up) to.write(chunk, (this.#upWritten ??= (err) => (err === null || err === undefined) && this.snap(this.remote)));
    else to.write(chunk, (this.#downWritten ??= (err) => (err === null || err === undefined) && this.snap(this.client)));
    if (up) this.upSent += chunk.length;
    else this.downSent += chunk.length;
    // nothing left in the stream: this write and every one before it completed, all was taken
    if (to.writableLength !== 0) this.snap(to);
    else if (up) this.up = this.upSent;
    else this.down = this.downSent;
  }

  finish(why: string): void {
    if (this.outcome !== null) return;
    this.outcome = why;
    this.idleTimer?.cancel();
    // what is not known to be taken yet, as far as the handles (if they are still there) tell
    if (this.up !== this.upSent) this.snap(this.remote);
    if (this.down !== this.downSent) this.snap(this.client);
    this.client.destroy();
    this.remote.destroy();
    // a destroyed socket lingers until a full GC (Node's handle keeps it): it must not keep the
    // tunnel, its record's closure and what that holds (--trace-gc: 15 % less promoted per scavenge)
    this.client[OWNER] = undefined;
    this.remote[OWNER] = undefined;
    this.onDone({ bytesUp: this.up, bytesDown: this.down, durationMs: performance.now() - this.started, outcome: why });
  }

  /**
   * `to` is flushed after its end (the other side's FIN passed on; a failed flush is an 'error'
   * instead): every write to it completed, so all that was dispatched was taken. Not the
   * snapshot: a TLS socket's write queue may still hold its own close_notify (24 bytes), which is
   * no byte of the tunnel's.
   */
  flushed(to: Socket): void {
    this.taken(to, dispatched(to));
    if (++this.ended === 2) this.finish('closed');
  }

  // every byte either way is a read or a write on the client socket, so one deadline covers
  // both: on the daemon's timer wheel (socket.setTimeout would re-arm a timer of its own on every
  // read and write), checked when due and moved on by the time since the last byte
  readonly idle = (): void => {
    this.idleTimer = null;
    if (this.outcome !== null) return;
    // `active` may be up to one resolution early: never end a tunnel before its time for that
    const quiet = performance.now() - this.active - this.wheel.resolutionMs;
    if (quiet >= this.idleTimeoutMs) return this.finish('idle timeout');
    this.idleTimer = this.wheel.add(this.idleTimeoutMs - quiet, this.idle);
  };
}

/**
 * The one buffer every tunnel's destination socket reads into (net.connect's `onread`): what the
 * destination sends goes to the tunnel without the stream machinery of a 'data' event (a
 * Readable.push, a process.nextTick and a turn of the tick queue per read: --cpu-prof charged them
 * against a bare forwarder), and an idle socket holds no buffer of its own. Safe to share: reads
 * happen one at a time on this thread, and onRemoteRead copies what it got before it returns.
 */
const READ_BUFFER = Buffer.allocUnsafeSlow(64 * 1024);
const ONREAD = { buffer: READ_BUFFER, callback: onRemoteRead };

/** `this` (a tunnel's destination socket) read n bytes into buf: a copy goes to the MTA. */
function onRemoteRead(this: TunnelSocket, n: number, buf: Buffer): boolean {
  const t = this[OWNER];
  if (!(t instanceof Tunnel)) {
    // nothing reads before the tunnel is spliced (in the 'connect' turn) or after it finished
    this.destroy();
    return false;
  }
  t.forward(this, Buffer.from(buf.subarray(0, n)));
  return true;
}

// after finish() the sockets own nothing (OWNER undefined): late events are ignored
function onTunnelData(this: TunnelSocket, chunk: Buffer): void {
  const t = this[OWNER];
  if (t instanceof Tunnel) t.forward(this, chunk);
}

/** `this` drained: what it was written from may read again */
function onTunnelDrain(this: TunnelSocket): void {
  const t = this[OWNER];
  if (!(t instanceof Tunnel)) return;
  t.snap(this);
  (this === t.client ? t.remote : t.client).resume();
}

function onTunnelEnd(this: TunnelSocket): void {
  const t = this[OWNER];
  if (!(t instanceof Tunnel)) return;
  // half-close: the other side may still answer (QUIT -> 221). Done once what we wrote to the
  // other side is flushed (its 'finish', onTunnelFinish): destroying earlier would drop the last reply.
  (this === t.client ? t.remote : t.client).end();
}

/** `this` is flushed after its end(): the other side's FIN passed on (a failed flush is an 'error' instead) */
function onTunnelFinish(this: TunnelSocket): void {
  const t = this[OWNER];
  if (t instanceof Tunnel) t.flushed(this);
}

function onTunnelError(this: TunnelSocket, err: NodeJS.ErrnoException): void {
  const t = this[OWNER];
  if (!(t instanceof Tunnel)) return;
  t.finish(`${this === t.client ? 'mta' : 'remote'} error ${err.code ?? err.message}`);
}

function onTunnelClose(this: TunnelSocket): void {
  const t = this[OWNER];
  if (!(t instanceof Tunnel)) return;
  t.finish(t.ended === 2 ? 'closed' : this === t.client ? 'mta closed' : 'remote closed');
}

function listen(s: Socket, data: boolean): void {
  if (data) s.on('data', onTunnelData);
  s.on('drain', onTunnelDrain);
  s.on('end', onTunnelEnd);
  s.on('finish', onTunnelFinish);
  s.on('error', onTunnelError);
  s.on('close', onTunnelClose);
}

/**
 * Pumps bytes both ways until both directions are done or something fails; reports once.
 * `first`: what the client sent before the tunnel was open, written to the remote first.
 * `remote` is a socket from openFrom() (its reads come through onread), spliced in its 'connect' turn.
 */
export function splice(client: Socket, remote: Socket, idleTimeoutMs: number, wheel: TimerWheel, first: readonly Buffer[], onDone: (result: TunnelResult) => void): void {
  const t = new Tunnel(client, remote, idleTimeoutMs, wheel, onDone);
  t.client[OWNER] = t;
  t.remote[OWNER] = t;
  for (const chunk of first) t.write(remote, chunk);
  listen(client, true);
  listen(remote, false); // its reads come to onRemoteRead (openFrom's onread)
  if (idleTimeoutMs > 0) t.idleTimer = wheel.add(idleTimeoutMs, t.idle);
  client.resume(); // flowing already when the delivery watched it; paused by a front-end otherwise
}
