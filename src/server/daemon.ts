// The daemon: owns the current config, the listeners, the sessions and the timers, and applies
// reloads atomically (everything new is prepared first; on any failure the old state stays).
import { closeSoon } from '../net/close.js';
import { adopt } from '../net/owner.js';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { hostname } from 'node:os';
import { createSecureContext, type SecureContext } from 'node:tls';
import { changedDirectives, configWarnings, formatConfigError, type Config, type RelayConfig } from '../config/parse.js';
import { generateSelfSigned, type CertificatePair } from '../config/x509.js';
import { loadConfigFile } from '../config/load.js';
import type { Logger } from '../log/logger.js';
import { parseAdminQuery, MAX_ADMIN_LINE, type AdminReply } from '../protocol/admin.js';
import { WINDOW } from '../protocol/control.js';
import { LineSplitter, LineTooLongError } from '../protocol/lines.js';
import { poolJson, poolLines, statusRecords, type PoolKeyStatus, type StatusRecord } from '../status/format.js';
import { MAX_THROTTLE_MEMBERS, throttleLimit, throttleLines, throttlesJson, type ThrottlesJson } from '../status/throttles.js';
import type { Notifier } from '../systemd/notify.js';
import type { PassedSocket } from '../systemd/activation.js';
import { closeListening, endpointKey, listen, NoUnixSocketError, plaintextListenerWarnings, type Endpoint, type Listening } from './listeners.js';
import { adminEndpoint, noAdminSocketWarning } from './admin-path.js';
import { serveNative, serveNativeTls, type NativeContext } from './native.js';
import { RefusalLog } from './ratelimit.js';
import { fdReserve, openFileCount, openFileLimit } from './fds.js';
import { LeaveQueue } from './leaves.js';
import type { ControlSession, SessionServices } from './session.js';
import { ThrottleService } from '../throttle/service.js';
import { handleNativeConnect, type DeliveryContext } from '../egress/delivery.js';
import { poolLimits, smtpTimeouts, trimPool, type SmtpDeliveryContext } from '../egress/smtp-delivery.js';
import { TimerWheel } from '../net/wheel.js';
import { SmtpPool } from '../smtp/pool.js';
import { serveSocks5 } from './socks5.js';
import { serveProxyV2 } from './proxy-v2.js';
import { RelaySession, type RelayContext } from '../relay/session.js';
import { RelayDns } from '../relay/dns.js';
import { Metrics } from '../metrics/metrics.js';
import { MetricsHttp } from '../metrics/http.js';
import type { MetricsSnapshot } from '../metrics/hooks.js';
import type { FrontEnd } from '../systemd/activation.js';

export interface ReloadResult {
  ok: boolean;
  message: string;
  errors: string[];
}

export interface DaemonOptions {
  config: Config;
  log: Logger;
  notifier: Notifier;
  /** sockets passed by systemd; when present, `listen` (and admin_socket if passed) are ignored */
  passed: PassedSocket[] | null;
  now?: () => number;
}

/** The TLS identity native listeners present: from the config's files, or generated at start. */
interface TlsIdentity {
  context: SecureContext;
  fingerprint256: string;
  subject: string;
  /** the certificate file, or null for the generated pair */
  file: string | null;
}

export class Daemon {
  readonly managerId = randomBytes(4).toString('hex');
  #config: Config;
  #tls: TlsIdentity | null = null;
  /** generated once per process when no tls_certificate_file is configured; kept across reloads */
  #generated: CertificatePair | null = null;
  /**
   * Session ticket keys, kept across reloads while the certificate stays the same (resumption
   * survives a reload) and new with a new certificate (a resumed session shows the certificate of
   * its full handshake: a client must not be resumed past a renewal it may want to see).
   */
  #ticketKeys = { fingerprint256: '', keys: randomBytes(48) };
  readonly #log: Logger;
  readonly #notifier: Notifier;
  readonly #passed: PassedSocket[] | null;
  readonly #now: () => number;
  readonly #listening = new Map<string, Listening>();
  readonly #connections = new Set<Socket>();
  readonly #sessions = new Map<string, ControlSession>();
  readonly #refusals = new RefusalLog();
  /** failed native handshakes, logged per peer address at most once per interval */
  readonly #handshakeFailures = new RefusalLog();
  /** connections still in their front-end's handshake (native AUTH, SOCKS5 request, PROXY v2 header), by peer address */
  readonly #handshaking = new Map<Socket, string>();
  readonly #handshakingPerPeer = new Map<string, number>();
  /** since start: connections refused by max_pending_handshakes(_per_peer), and failed accept() calls (EMFILE…) */
  #refusedHandshakeCap = 0;
  #acceptErrors = 0;
  /** since start: connections refused because file descriptors ran low (fds.ts) */
  #refusedFds = 0;
  #fdLimit: number | null = null;
  /** descriptors open besides connections, tunnels' outbound sockets and deliveries connecting */
  #fdBase = 32;
  #acceptErrorLoggedAt = -Infinity;
  #acceptErrorsUnlogged = 0;
  readonly #throttle: ThrottleService;
  readonly #tunnels = new Set<Socket>();
  readonly #services: SessionServices;
  readonly #leaves: LeaveQueue;
  readonly #delivery: DeliveryContext;
  readonly #smtp: SmtpDeliveryContext;
  readonly #relay: RelayContext;
  #lastRelay: RelayConfig | null;
  #relayDns: RelayDns;
  #timers: NodeJS.Timeout[] = [];
  #watchdog: NodeJS.Timeout | null = null;
  #reloading: Promise<ReloadResult> | null = null;
  #stopping = false;
  readonly #metrics: Metrics;
  readonly #metricsHttp: MetricsHttp;
  /** for the metrics: the front-end of each connection in #connections (by its accepted socket) */
  readonly #frontEndOf = new Map<Socket, FrontEnd>();
  /** since start, for the metrics: refusals by "front-end reason", failed handshakes, reloads */
  readonly #refused = new Map<string, number>();
  #handshakeFailureCount = 0;
  readonly #reloads = { applied: 0, rejected: 0 };

  constructor(opts: DaemonOptions) {
    this.#config = opts.config;
    const wheel = new TimerWheel();
    this.#smtp = {
      wheel,
      pool: new SmtpPool(wheel, poolLimits(opts.config.smtp), smtpTimeouts(opts.config.smtp, opts.config.egress.connectTimeoutMs)),
      config: () => this.#config.smtp,
      links: new Set(),
    };
    this.#log = opts.log;
    this.#notifier = opts.notifier;
    this.#passed = opts.passed;
    this.#now = opts.now ?? (() => performance.now());
    this.#metrics = new Metrics({ snapshot: () => this.#metricsSnapshot(), throttleSeries: () => this.#config.metricsThrottleSeries });
    this.#metricsHttp = new MetricsHttp({ scrape: () => this.#metrics.scrape() });
    this.#throttle = new ThrottleService(this.#now, (kind, waitedMs, granted) => this.#metrics.throttleWait(kind, waitedMs / 1000, granted));
    this.#leaves = new LeaveQueue(this.#throttle, this.#now);
    this.#services = { throttle: this.#throttle, egress: () => this.#config.egress, leave: (id) => this.#leaves.leave(id) };
    this.#delivery = {
      egress: () => this.#config.egress,
      sessionId: (name) => this.#sessions.get(name)?.id,
      derivedThrottle: () => this.#config.derivedThrottle,
      throttle: this.#throttle,
      tunnels: this.#tunnels,
      pending: new Map(),
      stopping: () => this.#stopping,
      admitted: (socket) => this.#admitted(socket),
      log: this.#log,
      smtp: this.#smtp,
      metrics: this.#metrics,
    };
    this.#relayDns = new RelayDns(opts.config.dnsServers);
    this.#lastRelay = opts.config.relay;
    this.#relay = {
      // a reload that removes [relay] leaves the sessions already open on their config
      config: () => this.#config.relay ?? (this.#lastRelay as RelayConfig),
      egress: () => this.#config.egress,
      dns: () => this.#relayDns,
      derivedThrottle: () => this.#config.derivedThrottle,
      tls: () => this.#tls?.context ?? null,
      pool: this.#smtp.pool,
      throttle: this.#throttle,
      wheel,
      log: this.#log,
      stopping: () => this.#stopping,
      sessions: new Set(),
      stats: { transactions: 0 },
      admitted: (socket) => this.#admitted(socket),
      metrics: this.#metrics,
    };
  }

  get config(): Config {
    return this.#config;
  }

  /** Addresses actually listened on, e.g. for tests using port 0. */
  get bound(): string[] {
    return [...this.#listening.values()].map((l) => `${l.endpoint.frontEnd} ${l.bound}`);
  }

  async start(): Promise<void> {
    if (this.#passed !== null && this.#config.listen.length > 0) {
      this.#log.info(
        { mtaproxy_event: 'socket_activation', sockets: this.#passed.map((p) => `${p.fd}=${p.name}`).join(',') },
        `listener: using ${this.#passed.length} socket(s) passed by systemd; "listen" in ${this.#config.file} is ignored`,
      );
    }
    this.#tls = this.#tlsIdentity(this.#config);
    this.#logTls(this.#tls);
    // `listen` is judged by the addresses actually bound (below): under socket activation it is ignored
    for (const warning of configWarnings(this.#config, { listenIgnored: true })) this.#log.warn({ mtaproxy_event: 'config_warning' }, warning);
    await this.#reconcileListeners(this.#config);
    if (!this.#config.tls.enabled) this.#warnPlaintext(this.#listening.values());
    this.#fdLimit = openFileLimit();
    this.#calibrateFds();
    this.#startTimers();
    const watchdog = this.#notifier.watchdogIntervalMs;
    if (watchdog !== null) this.#watchdog = setInterval(() => this.#notifier.watchdog(), watchdog);
    const summary = this.#summary();
    this.#log.info({ mtaproxy_event: 'started', manager_id: this.managerId, listening: this.bound.join(', ') }, `mtaproxy started: ${summary}`);
    this.#notifier.ready(summary);
  }

  /** SIGHUP and `mtaproxy reload` both end here; concurrent requests share one reload. */
  reload(): Promise<ReloadResult> {
    if (this.#stopping) return Promise.resolve({ ok: false, message: 'shutting down', errors: [] });
    this.#reloading ??= this.#reload().finally(() => {
      this.#reloading = null;
    });
    return this.#reloading;
  }

  async #reload(): Promise<ReloadResult> {
    this.#notifier.reloading();
    const file = this.#config.file;
    this.#log.info({ mtaproxy_event: 'reload', config: file }, `reload: reading ${file}`);
    const loaded = loadConfigFile(file);
    if (!loaded.ok) return this.#rejectReload(loaded.errors.map(formatConfigError));
    let tls: TlsIdentity | null;
    try {
      tls = this.#tlsIdentity(loaded.config);
    } catch (err) {
      return this.#rejectReload([`tls_certificate_file: cannot use the certificate: ${(err as Error).message}`]);
    }
    let added: Listening[];
    try {
      added = await this.#reconcileListeners(loaded.config);
    } catch (err) {
      return this.#rejectReload([(err as Error).message]);
    }
    // plaintext now: every native listener; still plaintext: the ones just bound
    if (!loaded.config.tls.enabled) this.#warnPlaintext(this.#config.tls.enabled ? this.#listening.values() : added);
    // new connections get the new certificate; established ones keep theirs
    if (tls?.fingerprint256 !== this.#tls?.fingerprint256 || tls?.file !== this.#tls?.file) this.#logTls(tls);
    this.#tls = tls;
    // under socket activation `listen` is not used, so a change to it changes nothing
    const changed = changedDirectives(this.#config, loaded.config).filter((d) => d !== 'listen' || this.#passed === null);
    const timersChanged = loaded.config.statusIntervalMs !== this.#config.statusIntervalMs || loaded.config.pingIntervalMs !== this.#config.pingIntervalMs;
    this.#config = loaded.config;
    if (changed.includes('dns_servers')) this.#relayDns = new RelayDns(this.#config.dnsServers);
    if (this.#config.relay !== null) this.#lastRelay = this.#config.relay;
    this.#smtp.pool.configure(poolLimits(this.#config.smtp), smtpTimeouts(this.#config.smtp, this.#config.egress.connectTimeoutMs));
    this.#log.level = loaded.config.logVerbose ? 'debug' : 'info';
    if (timersChanged) this.#startTimers();
    this.#rejectedReload = null;
    this.#reloads.applied++;
    const message = changed.length === 0 ? 'reload: no changes' : `reload: applied (changed: ${changed.join(', ')})`;
    this.#log.info({ mtaproxy_event: 'reload_applied', changed: changed.join(',') }, message);
    this.#notifier.ready(`${this.#summary()}; ${message}`);
    return { ok: true, message, errors: [] };
  }

  /** Builds the SecureContext for a config (throws if OpenSSL refuses the pair); null when tls = false. */
  #tlsIdentity(config: Config): TlsIdentity | null {
    if (!config.tls.enabled) return null;
    const files = config.tls.files;
    const pair = files ?? (this.#generated ??= generateSelfSigned(hostname()));
    if (this.#ticketKeys.fingerprint256 !== pair.fingerprint256) this.#ticketKeys = { fingerprint256: pair.fingerprint256, keys: randomBytes(48) };
    const context = createSecureContext({ cert: pair.cert, key: pair.key.export({ type: 'pkcs8', format: 'pem' }), minVersion: 'TLSv1.2', ticketKeys: this.#ticketKeys.keys });
    const subject = files?.subject ?? `CN=${hostname()}`;
    return { context, fingerprint256: pair.fingerprint256, subject, file: files?.certificateFile ?? null };
  }

  #logTls(tls: TlsIdentity | null): void {
    if (tls === null) {
      this.#log.warn({ mtaproxy_event: 'tls_disabled' }, 'tls: native listeners are plaintext (tls = false): use this only on a trusted network');
      return;
    }
    const origin = tls.file === null ? 'self-signed, generated at start (an MTA may pin this fingerprint; it changes at restart unless tls_certificate_file is set)' : `from ${tls.file}`;
    this.#log.info(
      { mtaproxy_event: 'tls_certificate', fingerprint_sha256: tls.fingerprint256, subject: tls.subject, file: tls.file ?? '' },
      `tls: native listeners present certificate "${tls.subject}" sha256 fingerprint ${tls.fingerprint256} (${origin})`,
    );
  }

  #rejectReload(errors: string[]): ReloadResult {
    const message = `reload rejected, old config still in effect: ${errors[0] ?? 'unknown error'}${errors.length > 1 ? ` (+${errors.length - 1} more)` : ''}`;
    for (const error of errors) this.#log.error({ mtaproxy_event: 'reload_rejected' }, `reload rejected: ${error}`);
    // systemd ends a reload only on READY=1, even a failed one (as HAProxy and Caddy do)
    this.#rejectedReload = message;
    this.#reloads.rejected++;
    this.#notifier.ready(this.#summary());
    return { ok: false, message, errors };
  }

  #wanted(config: Config): Endpoint[] {
    const passed = this.#passed ?? [];
    const endpoints: Endpoint[] = passed.map((p) => ({ kind: 'fd', frontEnd: p.frontEnd, fd: p.fd, name: p.name }));
    if (this.#passed === null) {
      for (const address of config.listen) endpoints.push({ kind: 'tcp', frontEnd: 'native', address });
      for (const address of config.socks5?.listen ?? []) endpoints.push({ kind: 'tcp', frontEnd: 'socks5', address });
      for (const address of config.proxyV2?.listen ?? []) endpoints.push({ kind: 'tcp', frontEnd: 'proxy-v2', address });
      for (const address of config.metricsListen) endpoints.push({ kind: 'tcp', frontEnd: 'metrics', address });
      for (const address of config.relay?.listen ?? []) endpoints.push({ kind: 'tcp', frontEnd: 'relay-smtp', address });
      for (const address of config.relay?.lmtpListen ?? []) endpoints.push({ kind: 'tcp', frontEnd: 'relay-lmtp', address });
    }
    if (!passed.some((p) => p.frontEnd === 'admin')) endpoints.push(adminEndpoint(config.adminSocket));
    return endpoints;
  }

  /** tls = false: a native listener bound to an address that is not loopback is worth a warning. */
  #warnPlaintext(listening: Iterable<Listening>): void {
    for (const w of plaintextListenerWarnings(listening)) this.#log.warn(w.fields, w.message);
  }

  /** Binds what is new first (all or nothing), then closes what is no longer wanted; resolves with what it bound. */
  async #reconcileListeners(config: Config): Promise<Listening[]> {
    const wanted = new Map(this.#wanted(config).map((e) => [endpointKey(e), e]));
    const added: Listening[] = [];
    try {
      for (const [key, endpoint] of wanted) {
        if (this.#listening.has(key)) continue;
        try {
          const l = await listen(endpoint, (socket) => this.#accept(socket, endpoint));
          // accept(2) failures (ENFILE, ENOBUFS…) are per connection: keep listening, say so
          l.server.removeAllListeners('error');
          l.server.on('error', (err: NodeJS.ErrnoException) => this.#acceptError(err, l.bound));
          added.push(l);
        } catch (err) {
          // the default admin socket could go nowhere: run without it (tried again at each reload)
          if (!(err instanceof NoUnixSocketError)) throw err;
          this.#log.warn({ mtaproxy_event: 'no_admin_socket', tried: err.tried.join('; ') }, noAdminSocketWarning(err));
        }
      }
    } catch (err) {
      for (const l of added) closeListening(l);
      throw err;
    }
    for (const l of added) {
      this.#listening.set(endpointKey(l.endpoint), l);
      this.#log.info({ mtaproxy_event: 'listening', front_end: l.endpoint.frontEnd, address: l.bound }, `listener: ${l.endpoint.frontEnd} on ${l.bound}`);
    }
    for (const [key, l] of this.#listening) {
      if (wanted.has(key)) continue;
      closeListening(l);
      this.#listening.delete(key);
      this.#log.info({ mtaproxy_event: 'listener_closed', address: l.bound }, `listener: closed ${l.bound} (no longer configured)`);
    }
    return added;
  }

  // one listener function each for every accepted socket (`this` is the socket), not two closures per connection
  readonly #onSocketError = ((daemon: Daemon) =>
    function onSocketError(err: Error): void {
      daemon.#log.debug({ mtaproxy_event: 'socket_error', err: err.message }, `socket error: ${err.message}`);
    })(this);
  readonly #onConnectionClose = ((daemon: Daemon) =>
    function onConnectionClose(this: Socket): void {
      daemon.#connections.delete(this);
      daemon.#frontEndOf.delete(this);
      daemon.#admitted(this);
    })(this);

  #accept(socket: Socket, endpoint: Endpoint): void {
    // the peer's address first (Node adds its _peername field then), then OWNER, then the
    // listeners: every accepted socket has the same fields when its first listener is added (owner.ts)
    const address = socket.remoteAddress;
    adopt(socket);
    socket.on('error', this.#onSocketError);
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    if (endpoint.frontEnd === 'admin') {
      this.#serveAdmin(socket);
      return;
    }
    const refusal = this.#refusal(endpoint.frontEnd, address);
    if (refusal !== null) {
      socket.destroy(); // paused since accept: nothing was read, nothing is written
      this.#countRefusal(endpoint.frontEnd, refusal.startsWith('not in allow_from') ? 'allow_from' : refusal.startsWith('not in proxy_v2') ? 'proxy_v2_allow_from' : 'not_configured');
      const count = this.#refusals.record(`${endpoint.frontEnd} ${address ?? '?'}`, this.#now());
      if (count > 0) {
        this.#log.warn(
          { mtaproxy_event: 'connection_refused', peer: address ?? '?', front_end: endpoint.frontEnd, count },
          `listener: refused ${address ?? '?'} on ${endpoint.frontEnd}: ${refusal}${count > 1 ? ` (${count} refusals since last logged)` : ''}`,
        );
      }
      return;
    }
    const peerKey = address ?? '?';
    if (this.#fdLimit !== null && this.#fdsInUse() + 1 > this.#fdLimit - fdReserve(this.#fdLimit)) {
      socket.destroy();
      this.#refusedFds++;
      this.#countRefusal(endpoint.frontEnd, 'fds');
      const count = this.#refusals.record('fds', this.#now());
      if (count > 0) {
        this.#log.error(
          { mtaproxy_event: 'accept_failed', code: 'EMFILE', peer: peerKey, front_end: endpoint.frontEnd, count },
          `listener: refusing connections: ${this.#fdsInUse()} of ${this.#fdLimit} file descriptors in use (${this.#connections.size} connections, ${this.#tunnels.size} tunnels); raise LimitNOFILE= or lower egress.max_tunnels / max_pending_handshakes${count > 1 ? ` (${count} refused since last logged)` : ''}`,
        );
      }
      return;
    }
    if (endpoint.frontEnd === 'metrics') return this.#metricsHttp.serve(socket);
    const cap = this.#handshakeCap(peerKey);
    if (cap !== null) {
      socket.destroy();
      this.#refusedHandshakeCap++;
      this.#countRefusal(endpoint.frontEnd, 'handshake_cap');
      const count = this.#refusals.record(`cap ${peerKey}`, this.#now());
      if (count > 0) {
        this.#log.warn(
          { mtaproxy_event: 'connection_refused', peer: peerKey, front_end: endpoint.frontEnd, count, reason: 'handshake_cap' },
          `listener: refused ${peerKey} on ${endpoint.frontEnd}: ${cap}${count > 1 ? ` (${count} refusals since last logged)` : ''}`,
        );
      }
      return;
    }
    this.#connections.add(socket);
    this.#frontEndOf.set(socket, endpoint.frontEnd);
    this.#handshaking.set(socket, peerKey);
    this.#handshakingPerPeer.set(peerKey, (this.#handshakingPerPeer.get(peerKey) ?? 0) + 1);
    socket.on('close', this.#onConnectionClose);
    if (this.#log.isLevelEnabled('debug')) this.#log.debug({ mtaproxy_event: 'connection', peer: address, front_end: endpoint.frontEnd }, `listener: ${endpoint.frontEnd} connection from ${address}:${socket.remotePort}`);
    const { socks5, handshakeTimeoutMs } = this.#config;
    if (endpoint.frontEnd === 'socks5' && socks5 !== null) {
      serveSocks5(socket, { config: socks5, delivery: this.#delivery, log: this.#log, handshakeTimeoutMs });
      socket.resume();
      return;
    }
    if (endpoint.frontEnd === 'relay-smtp' || endpoint.frontEnd === 'relay-lmtp') {
      new RelaySession(this.#relay, socket, endpoint.frontEnd === 'relay-lmtp').start();
      return;
    }
    if (endpoint.frontEnd === 'proxy-v2') {
      serveProxyV2(socket, { delivery: this.#delivery, log: this.#log, handshakeTimeoutMs });
      socket.resume();
      return;
    }
    const native: NativeContext = {
      secrets: () => this.#config.secrets,
      handshakeTimeoutMs: () => this.#config.handshakeTimeoutMs,
      log: this.#log,
      now: this.#now,
      openSession: (session) => this.#openSession(session),
      closeSession: (session, reason) => this.#closeSession(session, reason),
      services: this.#services,
      deliver: (name, line, s) => handleNativeConnect(this.#delivery, name, line, s),
      authenticated: () => this.#admitted(socket),
      handshakeFailed: (peerAddress) => {
        this.#handshakeFailureCount++;
        return this.#handshakeFailures.record(peerAddress, this.#now());
      },
    };
    const tls = this.#tls;
    if (tls === null) {
      serveNative(socket, native);
    } else {
      serveNativeTls(socket, {
        ...native,
        secureContext: () => tls.context,
        // the TLS socket stands for the connection from now on (shutdown, tunnels, fd count)
        wrapped: (tlsSocket) => {
          this.#connections.delete(socket);
          this.#connections.add(tlsSocket);
          tlsSocket.on('close', () => {
            this.#connections.delete(tlsSocket);
            this.#admitted(socket);
          });
        },
      });
    }
    socket.resume();
  }

  #countRefusal(frontEnd: FrontEnd, reason: string): void {
    const key = `${frontEnd} ${reason}`;
    this.#refused.set(key, (this.#refused.get(key) ?? 0) + 1);
  }

  /** What the metrics read at each scrape (metrics/hooks.ts). */
  #metricsSnapshot(): MetricsSnapshot {
    const openConnections: Record<string, number> = { native: 0, socks5: 0, 'proxy-v2': 0, ...(this.#config.relay === null ? {} : { 'relay-smtp': 0, 'relay-lmtp': 0 }) };
    for (const frontEnd of this.#frontEndOf.values()) openConnections[frontEnd] = (openConnections[frontEnd] ?? 0) + 1;
    const m = this.#throttle.manager;
    const pool = this.#smtp.pool.snapshot();
    return {
      openConnections,
      handshakesPending: this.#handshaking.size,
      refused: [...this.#refused].map(([key, count]) => {
        const [frontEnd = '', reason = ''] = key.split(' ');
        return { frontEnd, reason, count };
      }),
      handshakeFailures: this.#handshakeFailureCount,
      acceptErrors: this.#acceptErrors,
      reloads: this.#reloads,
      tunnels: this.#tunnels.size,
      smtpLinks: this.#smtp.links.size,
      deliveriesPending: this.#delivery.pending.size,
      remote: this.#remote(),
      throttleWaiters: m.waiterCount,
      throttles: [...m.keys()].map((key) => ({ key, inUse: m.inUse(key), maxConnections: m.limits(key)?.maxConnections ?? 0, waiting: m.waiting(key) })),
      sessions: [...this.#sessions.values()].map((s) => s.snapshot()),
      pool: { active: pool.active, cached: pool.cached, opening: pool.opening, waiting: pool.keys.reduce((n, k) => n + k.waiting, 0), opened: this.#smtp.pool.opened, reused: this.#smtp.pool.reusedCount },
    };
  }

  /** Why a new connection would exceed the pre-authentication caps, or null. */
  #handshakeCap(peer: string): string | null {
    const { maxPendingHandshakes, maxPendingHandshakesPerPeer } = this.#config;
    if (this.#handshaking.size >= maxPendingHandshakes) return `max_pending_handshakes (${maxPendingHandshakes}) connections are still in their handshake`;
    if ((this.#handshakingPerPeer.get(peer) ?? 0) >= maxPendingHandshakesPerPeer) {
      return `max_pending_handshakes_per_peer (${maxPendingHandshakesPerPeer}) connections from this address are still in their handshake`;
    }
    return null;
  }

  /** The connection authenticated (or closed): it no longer counts against the handshake caps. */
  #admitted(socket: Socket): void {
    const peer = this.#handshaking.get(socket);
    if (peer === undefined) return;
    this.#handshaking.delete(socket);
    const n = (this.#handshakingPerPeer.get(peer) ?? 1) - 1;
    if (n <= 0) this.#handshakingPerPeer.delete(peer);
    else this.#handshakingPerPeer.set(peer, n);
  }

  /** Descriptors in use, estimated without a syscall: calibrated from /proc/self/fd (#calibrateFds). */
  #fdsInUse(): number {
    return this.#fdBase + this.#connections.size + this.#tunnels.size + this.#delivery.pending.size;
  }

  #calibrateFds(): void {
    const open = openFileCount();
    if (open !== null) this.#fdBase = Math.max(0, open - this.#connections.size - this.#tunnels.size - this.#delivery.pending.size);
  }

  /** accept(2) failed: out of file descriptors (EMFILE/ENFILE) or memory. Logged at most every 10 s. */
  #acceptError(err: NodeJS.ErrnoException, where: string): void {
    this.#acceptErrors++;
    this.#acceptErrorsUnlogged++;
    const now = this.#now();
    if (now - this.#acceptErrorLoggedAt < 10_000) return;
    const count = this.#acceptErrorsUnlogged;
    this.#acceptErrorLoggedAt = now;
    this.#acceptErrorsUnlogged = 0;
    const hint = err.code === 'EMFILE' || err.code === 'ENFILE'
      ? `out of file descriptors (${this.#connections.size} connections, ${this.#tunnels.size} tunnels open); raise LimitNOFILE= or lower egress.max_tunnels / max_pending_handshakes`
      : err.message;
    this.#log.error(
      { mtaproxy_event: 'accept_failed', code: err.code ?? '?', address: where, count },
      `listener: accept on ${where} failed: ${err.code ?? err.message}: ${hint}${count > 1 ? ` (${count} failures since last logged)` : ''}`,
    );
  }

  /** Why a new connection on this front-end is refused, or null: checked before a byte is read. */
  #refusal(frontEnd: Endpoint['frontEnd'], address: string | undefined): string | null {
    const c = this.#config;
    if (!c.allowFrom.allows(address)) return 'not in allow_from';
    // sockets systemd passes for a front-end the config does not set up
    if (frontEnd === 'socks5' && c.socks5 === null) return 'no [socks5] table in the config';
    if (frontEnd === 'proxy-v2' && c.proxyV2 === null) return 'no [proxy_v2] table in the config';
    if ((frontEnd === 'relay-smtp' || frontEnd === 'relay-lmtp') && c.relay === null) return 'no [relay] table in the config';
    // PROXY v2 carries no credentials: its own allow list, on top of allow_from
    if (frontEnd === 'proxy-v2' && c.proxyV2?.allowFrom && !c.proxyV2.allowFrom.allows(address)) return 'not in proxy_v2.allow_from';
    return null;
  }

  /**
   * One session per MTA instance name: a newer session replaces the older one. An MTA that lost
   * its connection reconnects before the proxy notices the old one is dead; refusing it would
   * lock it out until the ping timeout. Two MTAs sharing a name show up as repeated warnings.
   */
  #openSession(session: ControlSession): void {
    const old = this.#sessions.get(session.name);
    this.#sessions.set(session.name, session);
    if (old !== undefined) {
      this.#log.warn(
        { mtaproxy_event: 'session_replaced', session: session.name, peer: session.peer, old_peer: old.peer },
        `session(${session.name}): replaced by a new session from ${session.peer} (old one from ${old.peer}); two MTAs with the same name?`,
      );
      old.end('replaced', `421 replaced by a newer session from ${session.peer}`);
      this.#leaves.now(old.id);
    }
    this.#log.info({ mtaproxy_event: 'session_opened', session: session.name, peer: session.peer }, `session(${session.name}): opened from ${session.peer}`);
  }

  #closeSession(session: ControlSession, reason: string): void {
    if (this.#sessions.get(session.name) === session) this.#sessions.delete(session.name);
    this.#log.info({ mtaproxy_event: 'session_closed', session: session.name, reason }, `session(${session.name}): closed: ${reason}`);
  }

  #serveAdmin(socket: Socket): void {
    const splitter = new LineSplitter(MAX_ADMIN_LINE);
    const answer = (reply: AdminReply): void => {
      socket.end(`${JSON.stringify(reply)}\n`);
    };
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        if (err instanceof LineTooLongError) return answer({ ok: false, message: err.message });
        throw err;
      }
      const line = lines[0];
      if (line === undefined) return;
      socket.removeAllListeners('data');
      const request = parseAdminQuery(line);
      if (typeof request === 'string') return answer({ ok: false, message: request });
      if (request.command === 'status') {
        const records = this.status();
        const pool = this.#poolKeys();
        return answer({ ok: true, message: 'status', lines: [...records.map((r) => r.msg), ...poolLines(pool)], data: { records: records.map((r) => r.fields), smtp_pool: poolJson(pool) } });
      }
      if (request.command === 'throttles') {
        const throttles = this.throttles({ limit: request.limit, key: request.key });
        return answer({ ok: true, message: 'throttles', lines: throttleLines(throttles), data: { ...throttles } });
      }
      void this.reload().then((r) => answer({ ok: r.ok, message: r.message, errors: r.errors }));
    });
    socket.resume();
  }

  status(): StatusRecord[] {
    return statusRecords({
      managerId: this.managerId,
      openConnections: this.#connections.size,
      handshaking: this.#handshaking.size,
      refusedHandshakeCap: this.#refusedHandshakeCap,
      acceptErrors: this.#acceptErrors,
      refusedFds: this.#refusedFds,
      throttles: this.#throttle.manager.throttleCount,
      window: WINDOW,
      sessions: [...this.#sessions.values()].map((s) => s.snapshot()),
      remote: this.#remote(),
      relay: this.#config.relay === null ? undefined : { connections: this.#relay.sessions.size, inTransaction: [...this.#relay.sessions].filter((x) => x.busy).length, transactions: this.#relay.stats.transactions },
    });
  }

  /** `mtaproxy status --throttles`: the busiest `limit` throttles (bounded: throttles.ts) whose key contains `key`. */
  throttles(query: { limit?: number | undefined; key?: string | undefined }): ThrottlesJson {
    const limit = throttleLimit(query.limit);
    const key = query.key ?? '';
    const byId = new Map([...this.#sessions.values()].map((s) => [s.id, s]));
    const snapshot = this.#throttle.manager.throttleSnapshot(this.#now(), { limit, key, maxMembers: MAX_THROTTLE_MEMBERS });
    return throttlesJson(snapshot, { limit, key }, (id) => {
      const s = byId.get(id);
      return s === undefined ? null : { name: s.name, backlog: s.backlog };
    });
  }

  #poolKeys(): PoolKeyStatus[] {
    return this.#smtp.pool.snapshot().keys.map((k) => ({
        sourceIp: k.spec.sourceIp,
        destination: k.spec.address.includes(':') ? `[${k.spec.address}]:${k.spec.port}` : `${k.spec.address}:${k.spec.port}`,
        ehlo: k.spec.ehloName,
        tls: k.spec.tls.mode,
        throttle: k.group,
        active: k.active,
        opening: k.opening,
        waiting: k.waiting,
        cached: k.cached,
      }));
  }

  /** Destination connections: tunnels (each has one) and the pool's, busy or cached. */
  #remote(): { active: number; cached: number } {
    const pool = this.#smtp.pool.snapshot();
    return { active: this.#tunnels.size - this.#smtp.links.size + pool.active, cached: pool.cached };
  }

  #summary(): string {
    const summary = `${this.#connections.size} connections, ${this.#sessions.size} sessions, listening on ${[...this.#listening.values()].filter((l) => l.endpoint.frontEnd !== 'admin').map((l) => l.bound).join(' ')}`;
    // A rejected reload stays visible in `systemctl status` until a reload succeeds: the
    // periodic STATUS= must not wipe the reason the operator has not read yet.
    return this.#rejectedReload === null ? summary : `${this.#rejectedReload}; ${summary}`;
  }

  /** The last reload's rejection message, until a reload is applied. */
  #rejectedReload: string | null = null;

  #startTimers(): void {
    for (const t of this.#timers) clearInterval(t);
    const config = this.#config;
    this.#timers = [
      setInterval(() => {
        // a directory read of /proc/self/fd: only once descriptors matter
        if (this.#fdLimit !== null && this.#fdsInUse() > this.#fdLimit / 4) this.#calibrateFds();
        for (const record of this.status()) this.#log.info(record.fields, record.msg);
        this.#notifier.status(this.#summary());
        trimPool(this.#smtp, this.#throttle);
      }, config.statusIntervalMs),
      // one timer for all sessions, not one per session: a tenth of the ping interval, so a
      // session silent for two intervals is closed within 2.1 intervals (docs/throttling.md)
      setInterval(() => {
        for (const session of this.#sessions.values()) session.tick(config.pingIntervalMs);
      }, Math.max(10, Math.floor(config.pingIntervalMs / 10))),
    ];
    for (const t of this.#timers) t.unref();
  }

  /**
   * SIGTERM: a graceful drain. Stop accepting; tell every control session (421) and close it;
   * refuse deliveries still waiting for a slot or connecting; close connections still in their
   * handshake. Open tunnels are left alone until they end (the MTA's or the destination's close)
   * or shutdown_timeout passes: a tunnel cut in the middle of DATA makes the MTA send the message
   * again although the destination may have accepted it. Only then is what remains cut, logged.
   */
  async shutdown(reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    const deadline = this.#config.shutdownTimeoutMs;
    // the unit's TimeoutStopSec= should be above shutdown_timeout; if an operator raised it, ask for the time
    // stop accepting first: by the time the log says "stopping", new connections are refused
    for (const l of this.#listening.values()) closeListening(l);
    this.#listening.clear();
    this.#metricsHttp.close();
    this.#notifier.stopping(`stopping: ${reason}; draining ${this.#tunnels.size} tunnels (at most ${deadline / 1000}s)`, deadline + 5000);
    this.#log.info(
      { mtaproxy_event: 'stopping', reason, sessions: this.#sessions.size, tunnels: this.#tunnels.size, connections: this.#connections.size },
      `mtaproxy stopping (${reason}): ${this.#sessions.size} sessions, ${this.#tunnels.size} tunnels, ${this.#connections.size} connections; open tunnels get up to ${deadline}ms to finish`,
    );
    for (const t of this.#timers) clearInterval(t);
    // the watchdog keeps running while tunnels drain: WatchdogSec= may be shorter than the drain
    for (const session of this.#sessions.values()) session.end('shutdown', '421 mtaproxy shutting down');
    this.#leaves.flush();
    for (const abort of [...this.#delivery.pending.values()]) abort({ code: 421, message: 'proxy shutting down' });
    // smtp links close between transactions; idle destination connections QUIT now, busy ones
    // when their transaction ends
    for (const link of [...this.#smtp.links]) link.shutdown();
    // relay sessions too: a transaction under way finishes first
    for (const session of [...this.#relay.sessions]) session.shutdown();
    this.#smtp.pool.shutdown();
    // connections still in their handshake: closed, not half-closed (a peer that never sends its
    // FIN must not hold the drain open)
    const relayBusy = (socket: Socket): boolean => [...this.#relay.sessions].some((s) => s.raw === socket && s.busy);
    for (const socket of this.#connections) {
      if (!this.#tunnels.has(socket) && !this.#delivery.pending.has(socket) && !relayBusy(socket)) closeSoon(socket);
    }
    // a control session's 421 notice or a refusal that its peer does not read must not hold the
    // drain either: what is not a tunnel is gone a second later
    const grace = setTimeout(() => {
      for (const socket of this.#connections) if (!this.#tunnels.has(socket) && !relayBusy(socket)) socket.destroy();
    }, Math.min(1000, deadline));
    grace.unref();
    const started = this.#now();
    const drained = await new Promise<boolean>((resolve) => {
      const check = setInterval(() => {
        if (this.#tunnels.size === 0 && this.#connections.size === 0) {
          clearInterval(check);
          clearTimeout(timeout);
          resolve(true);
        }
      }, 20);
      const timeout = setTimeout(() => {
        clearInterval(check);
        resolve(false);
      }, deadline);
    });
    clearTimeout(grace);
    this.#throttle.stop();
    if (!drained) {
      this.#log.warn(
        { mtaproxy_event: 'shutdown_forced', tunnels: this.#tunnels.size, connections: this.#connections.size },
        `shutdown: cutting ${this.#connections.size} connections (${this.#tunnels.size} of them tunnels) still open after ${deadline}ms (shutdown_timeout)`,
      );
      for (const socket of this.#connections) socket.destroy();
    } else {
      this.#log.info({ mtaproxy_event: 'drained', duration_ms: Math.round(this.#now() - started) }, `shutdown: all tunnels finished in ${Math.round(this.#now() - started)}ms`);
    }
    if (this.#watchdog !== null) clearInterval(this.#watchdog);
    this.#log.info({ mtaproxy_event: 'stopped' }, 'mtaproxy stopped');
  }
}
