// Every event kind the daemon logs (the `mtaproxy_event` field), with its journald MESSAGE_ID and
// the explanation `journalctl -x` shows. The one table: docs/log-codes.md and
// packaging/mtaproxy.catalog are rendered from it (src/log/catalog.ts, `npm run log-codes`), and
// test/unit/message-ids.test.ts checks both match and that every event logged in src/ is here.
// An id never changes once released: a renamed event keeps its id, a new event gets a new one
// (`systemd-id128 new`).

export interface EventInfo {
  /** 128 bits, 32 lower-case hex digits: journald's MESSAGE_ID */
  readonly id: string;
  /** the level it is logged at, as docs/operations.md says */
  readonly level: string;
  /** one line: the catalog's Subject: */
  readonly subject: string;
  /** what it means and what to do; paragraphs separated by blank lines (wrapped when rendered) */
  readonly text: string;
}

export const EVENTS = {
  starting: {
    id: 'c95cdb56862f427ab22b9c38b4902343',
    level: 'INFO',
    subject: 'mtaproxy is starting',
    text: `The mtaproxy process started and is about to read and use its configuration (the CONFIG field names the file, VERSION the version, LOG_SINK where its log goes).

Nothing to do. If "started" does not follow, a "config_error" or "start_failed" entry says why.`,
  },
  heap_growing_factor: {
    id: '0168f11b13b34611989eac1d8bee215b',
    level: 'INFO',
    subject: "mtaproxy changed V8's heap growing factor",
    text: `After a full garbage collection the live heap (LIVE_HEAP_MIB) crossed a line: above 64 MiB the daemon uses V8's own growing factor (HEAP_GROWING_PERCENT=0), below 48 MiB again its fixed factor of 5 (HEAP_GROWING_PERCENT=400), which spares a small heap V8's needless full marks (docs/operations.md, "Limits").

Nothing to do. Starting node with --heap-growing-percent=N of your own turns this off.`,
  },
  config_error: {
    id: '9adeb04aca7d481dbe694c5999443877',
    level: 'ERROR',
    subject: 'The configuration is invalid; the daemon exits',
    text: `The configuration file has an error (one entry per error, as FILE:LINE:COL: KEY: MESSAGE). The daemon does not start and exits with status 1.

Fix the file, check it with "mtaproxy check-config /etc/mtaproxy/mtaproxy.toml", then start the service again. Every directive is described in /usr/share/doc/mtaproxy/configuration.md.`,
  },
  config_warning: {
    id: '1f533e98242d4f3eb79f37dce68f4a63',
    level: 'WARN',
    subject: 'The configuration is valid but questionable',
    text: `The configuration is accepted, but a setting is probably not what was meant (the message says which and why). "mtaproxy check-config" prints the same warnings.

Change the setting if the warning applies; the daemon runs as configured meanwhile.`,
  },
  socket_activation: {
    id: 'ab178480fbef4a639cb7e01e551fc737',
    level: 'INFO',
    subject: 'mtaproxy uses the sockets passed by systemd',
    text: `The daemon was started by socket activation and listens on the sockets systemd passed (SOCKETS lists fd=name). The "listen" directive of the configuration is ignored, at start and at every reload.

To change the listening addresses, edit mtaproxy.socket ("systemctl edit mtaproxy.socket"), not the configuration.`,
  },
  listening: {
    id: '694a82ef7f1143239bb92ec901a593ac',
    level: 'INFO',
    subject: 'mtaproxy listens on a new address',
    text: `A listener is bound, at start or by a reload: FRONT_END names the front-end (native, socks5, proxy-v2, admin), ADDRESS the address.

Nothing to do.`,
  },
  listener_closed: {
    id: 'c1b761a775e44d06b14ab674a6246b95',
    level: 'INFO',
    subject: 'mtaproxy closed a listener that is no longer configured',
    text: `A reload removed a listening address (ADDRESS). Connections already accepted on it stay open; new ones are refused by the kernel.

Nothing to do, unless the address was removed by mistake.`,
  },
  tls_certificate: {
    id: '40f1c4b2bb2248cfafb6fbf043cd2755',
    level: 'INFO',
    subject: 'The TLS certificate of the native listeners',
    text: `The native listeners present this certificate (SUBJECT, FINGERPRINT_SHA256, FILE; FILE is empty for a self-signed pair generated at start, which changes at every restart). Logged at start and when a reload changes the certificate.

MTAs that pin the certificate must know this fingerprint. To keep it across restarts, set tls_certificate_file and tls_key_file ("mtaproxy gen-cert" makes a pair; the packages make one at installation).`,
  },
  tls_disabled: {
    id: 'f8784edcce0f414c9e92b659f72cb91d',
    level: 'WARN',
    subject: 'Native listeners are plaintext (tls = false)',
    text: `The configuration sets tls = false: MTA sessions and deliveries are not encrypted, and the handshake is not bound to a TLS session.

Use this only on a trusted network. Remove "tls = false" to go back to TLS (the default).`,
  },
  plaintext_listener: {
    id: '110d892e16b049229db3b9f3fd9ab15b',
    level: 'WARN',
    subject: 'A plaintext native listener is reachable beyond loopback',
    text: `With tls = false, a native listener (ADDRESS; FD and FD_NAME for a socket passed by systemd) is bound to an address that is not loopback, so the MTA protocol crosses the network unencrypted.

Remove "tls = false", or bind the listener (the "listen" directive, or ListenStream= of mtaproxy.socket) to a loopback address, unless this network is trusted.`,
  },
  no_admin_socket: {
    id: 'cbc45af9d7a24db09591d190ccadb9cf',
    level: 'WARN',
    subject: 'mtaproxy runs without an admin socket',
    text: `None of the default admin socket paths could be bound (TRIED lists them and why). "mtaproxy reload" and "mtaproxy status" cannot reach this daemon; SIGHUP still reloads. Binding is tried again at each reload.

Under systemd, RuntimeDirectory=mtaproxy provides /run/mtaproxy. Otherwise set admin_socket to a writable path, or set XDG_RUNTIME_DIR.`,
  },
  started: {
    id: 'f0f5487a299e4b7c8215804db46e67b1',
    level: 'INFO',
    subject: 'mtaproxy started',
    text: `Every listener is bound and the daemon accepts connections; READY=1 was sent to systemd. MANAGER_ID is random per start: the status lines show it, so a new one means a restart (or a failover to another host).

Nothing to do.`,
  },
  start_failed: {
    id: '96ea50d2d6ab4757800a0a608f466682',
    level: 'ERROR',
    subject: 'mtaproxy could not start',
    text: `The daemon could not start, usually because a listener could not be bound (the message says which address and why: in use, not on this host, permission). It exits with status 1.

Free or fix the address ("ss -ltnp" shows who holds a port), or use socket activation (mtaproxy.socket) for privileged ports, then start it again.`,
  },
  connection: {
    id: 'ffb57410da1b481fb744d1bd311ccdef',
    level: 'DEBUG',
    subject: 'mtaproxy accepted a connection',
    text: `A connection was accepted on a front-end (PEER, FRONT_END). Logged only with log_verbose = true.

Nothing to do.`,
  },
  connection_refused: {
    id: 'a0e5a062d6dd48498d68729fb0b5b8be',
    level: 'WARN',
    subject: 'mtaproxy refused a connection before reading from it',
    text: `A connection was closed before a byte was read: its address (PEER) is not in allow_from (or proxy_v2.allow_from), or the handshake caps were reached (REASON=handshake_cap: max_pending_handshakes or max_pending_handshakes_per_peer connections are still authenticating). Rate-limited: COUNT refusals since the last entry.

If PEER is a legitimate MTA, add its address to allow_from and reload. Many handshake_cap refusals mean a flood or clients that connect and never authenticate; raise the caps only if the MTAs really open that many connections at once.`,
  },
  accept_failed: {
    id: '0da10a58e2514c40a86458f0fab671fe',
    level: 'ERROR',
    subject: 'mtaproxy could not accept connections (file descriptors or memory ran low)',
    text: `Connections were refused because file descriptors ran low (CODE=EMFILE), or accept() failed (CODE names the error). Rate-limited: COUNT failures since the last entry. The listener keeps listening.

Raise LimitNOFILE= ("systemctl edit mtaproxy"), or lower egress.max_tunnels or max_pending_handshakes. The handshakes: status line counts these refusals (refused_fds, accept_errors).`,
  },
  socket_error: {
    id: 'cadec0e70fb246538143fc6a71047fe1',
    level: 'DEBUG',
    subject: 'A connection reported a socket error',
    text: `A connection's socket failed (ERR), e.g. reset by the peer. The connection is closed. Logged only with log_verbose = true.

Nothing to do, unless it happens to every connection of one peer.`,
  },
  handshake_failed: {
    id: 'a2637df95c1642b38eb946ad74f91854',
    level: 'WARN',
    subject: 'An MTA failed the authentication handshake',
    text: `An MTA (PEER; SESSION if its name was readable) connected but did not authenticate: a wrong proof (the shared secret differs, a replayed handshake, or a TLS-intercepting relay in between), a malformed AUTH, no CONTROL, a too long line, or a timeout (handshake_timeout). The connection is closed. Logged once per address and reply per 10 s; COUNT says how many failed since.

A wrong proof: the MTA's secret is not auth_shared_secret (or auth_shared_secret_previous while rotating); copy /etc/mtaproxy/secret to the MTA. The proof is bound to the TLS session, so a relay that terminates TLS between the MTA and the proxy also fails it. Timeouts: the client does not speak the native protocol (a SOCKS5 or SMTP client on the native port?) or handshake_timeout is too short for the network.`,
  },
  session_opened: {
    id: '270357bd5f864453868c811b6784e0e9',
    level: 'INFO',
    subject: 'An MTA opened a control session',
    text: `An MTA authenticated and opened its control session (SESSION is its instance name, PEER its address). Its throttle declarations and backlog reports go through this session.

Nothing to do.`,
  },
  session_replaced: {
    id: 'f1c7ba792be84deb9cbbc7b8677b8dea',
    level: 'WARN',
    subject: 'A new session took over an MTA name',
    text: `A session with the same name (SESSION) as an open one arrived (PEER; the old one from OLD_PEER); the old session is closed. Once, this is an MTA that reconnected before its old connection was noticed dead.

Repeated entries for the same name mean two MTAs share an instance name and keep replacing each other: give each MTA its own name.`,
  },
  session_error: {
    id: 'c8927730147f42a28eeec9f841f94df7',
    level: 'WARN',
    subject: 'mtaproxy closed a control session for an error',
    text: `A control session (SESSION, PEER) was closed because of a protocol error, an over-long line or the ping timeout (silent for more than 2 x ping_interval); the message says which. (At DEBUG: a request the MTA sent without a tag failed.)

A ping timeout means the MTA or the network stalled; protocol errors mean a client library that does not match this version (see /usr/share/doc/mtaproxy/protocol.md). The MTA reconnects by itself.`,
  },
  session_closed: {
    id: 'f4a50cb158514a70aaf2899fe3e8bf78',
    level: 'INFO',
    subject: 'A control session ended',
    text: `A control session (SESSION) ended; REASON says why (client quit, connection closed, replaced, shutdown, or an error). Its declarations and waiting requests go; slots held by its open deliveries stay until they end.

Nothing to do.`,
  },
  throttle_conflict: {
    id: '1dd15b79991746309b116be1e3bcd679',
    level: 'WARN',
    subject: 'MTAs declare a throttle with different mode or source',
    text: `An MTA (SESSION) declared a throttle with a mode (sum/average) or source IP that another MTA's declaration of the same key contradicts. The latest declaration wins, so the effective limit changes with whoever declared last.

Make the MTAs' throttle configuration agree (see /usr/share/doc/mtaproxy/throttling.md). "mtaproxy status --throttles --key=KEY" shows every session's declaration.`,
  },
  delivery: {
    id: 'c8ea47dee29b4e64b0ca08da0a833602',
    level: 'INFO (WARN if refused)',
    subject: 'A delivery ended',
    text: `One entry per delivery (a CONNECT, a SOCKS5 or a PROXY v2 request), on any front-end: SESSION, SOURCE_IP, DESTINATION, THROTTLE, OUTCOME, and for a tunnel its duration and bytes each way; an smtp-mode link has MODE=smtp and TRANSACTIONS. A refused delivery (WARN) has CODE.

Refusals explain themselves in the message: a source IP not in egress.source_ips, a port not in egress.ports, a private destination, a throttle not declared, no slot within throttle_wait_timeout, egress.max_tunnels reached, or a connect failure. Fix the configuration or the MTA's request accordingly.`,
  },
  relay_transaction: {
    id: 'e29c7f9956e24ed8a499b31d7ca439d9',
    level: 'INFO (WARN if 4xx/5xx or failed)',
    subject: 'A relay transaction ended at one destination',
    text: `One entry per destination of a transaction an MTA sent through the relay front-end (FRONT_END relay-smtp or relay-lmtp): the MTA (PEER, ACCOUNT), SENDER, the source IP and the rule that chose it (SOURCE_IP, SOURCE_BY), the MX host (DESTINATION) and the shared connection (CONNECTION, REUSED, TLS), recipients accepted and refused, BYTES, the destination's reply (CODE) and how it ended (END: DATA, MAIL refused, RSET, lost: …).

The destination's replies went to the MTA as they were; it retries or bounces as usual. CODE 451 with END "lost: …" means the destination failed mid-transaction and the MTA was told 451 (it keeps the message).`,
  },
  relay_auth: {
    id: 'dcef0ad70de04b00a4e9a25799438d85',
    level: 'INFO',
    subject: 'An MTA authenticated on the relay front-end',
    text: `An MTA logged in with SMTP AUTH (after STARTTLS) as ACCOUNT, one of relay.accounts; its mail goes from that account's source_ip unless its sender domain has a rule.

Nothing to do.`,
  },
  relay_auth_failed: {
    id: 'c279d2c447e749cfaee892138efd3f32',
    level: 'WARN',
    subject: 'SMTP AUTH failed on the relay front-end',
    text: `A client on the relay front-end gave a username or password that is not in relay.accounts (PEER, FAILURES so far on that connection; after 3 the connection is closed).

Check the MTA's credentials (Postfix: smtp_sasl_password_maps) against relay.accounts. Many failures from one address are someone guessing: tighten allow_from.`,
  },
  relay_no_source: {
    id: 'a8bb3996fe50412f8a3e4342e685bd0c',
    level: 'WARN',
    subject: 'The relay found no source IP for a mail and refused it with 451',
    text: `No rule of [relay] chose a source IP for this mail: its sender domain is not in source_by_sender_domain, the MTA's account has no source_ip (or it did not authenticate), the relay address it connected to is not in source_by_local_address, and relay.source_ip is not set. The MTA was told 451 4.3.5 and keeps the mail.

Add the rule the mail should match (docs/relay.md "Choosing the source IP") and reload.`,
  },
  relay_session: {
    id: '299ca3d510a543d88046d4fe006662a0',
    level: 'DEBUG (ERROR for an internal error)',
    subject: 'A relay front-end connection ended',
    text: `A connection on the relay front-end closed (TRANSACTIONS it carried, OUTCOME why); logged at DEBUG (log_verbose). ERROR with ERR: an internal error ended the connection with 421, which is a bug to report.

Nothing to do for the DEBUG entry.`,
  },
  smtp_transaction: {
    id: 'a992ea8c877a4eff8cf88563315f60d0',
    level: 'INFO (WARN if 4xx/5xx or failed)',
    subject: 'An smtp-mode transaction ended',
    text: `One entry per transaction an MTA sent through smtp mode: which shared destination connection carried it (CONNECTION, REUSED), TLS, recipients accepted and refused, BYTES, the final reply (CODE) and how it ended (END). WARN when the destination answered 4xx/5xx or the transaction failed (CODE 451 when the proxy ended it).

Destination replies are the destination's decision; the MTA retries or bounces as usual. Many "lost:" endings point at the destination or the network.`,
  },
  smtp_link: {
    id: 'ba74ea21fec44b168e959278a6fb193f',
    level: 'ERROR',
    subject: 'Internal error in an smtp-mode link',
    text: `An smtp-mode link (SESSION) failed with an internal error (ERR); the MTA got "421 4.3.0 mtaproxy: internal error" and the link is closed. The MTA retries the message.

This is a bug: report it with the entry (journalctl -o verbose) and the version.`,
  },
  socks5_bind: {
    id: 'a38a8f49579c4aff8ba52b5e2ed95d82',
    level: 'DEBUG',
    subject: 'A SOCKS5 client chose its source address with BIND',
    text: `A SOCKS5 client (PEER, SESSION) chose its source address (SOURCE_IP) with a BIND request, as KumoMTA does; the CONNECT follows. Logged only with log_verbose = true.

Nothing to do.`,
  },
  socks5_refused: {
    id: 'f7e0013988bf40af9b7c6470d26a7aab',
    level: 'WARN',
    subject: 'mtaproxy refused a SOCKS5 request',
    text: `A SOCKS5 client (PEER, SESSION if it authenticated) was refused (CODE is the SOCKS5 reply) and disconnected: a malformed request, failed authentication, an unsupported command, or a timeout; the message says why.

Check the client's SOCKS5 settings (username and password, source address) against the [socks5] table; see /usr/share/doc/mtaproxy/socks5.md.`,
  },
  proxy_v2_header: {
    id: '22104f0a4d254c56a5e1afdd79c36535',
    level: 'DEBUG',
    subject: 'mtaproxy read a PROXY v2 header',
    text: `A PROXY protocol v2 client (PEER) asked for a delivery from SOURCE_IP to DESTINATION. Logged only with log_verbose = true.

Nothing to do.`,
  },
  proxy_v2_refused: {
    id: '07009537ccf54a1c8e2a009def94a7e8',
    level: 'WARN',
    subject: 'mtaproxy refused a PROXY v2 connection',
    text: `A PROXY v2 client (PEER) sent an invalid or unsupported header, or none within handshake_timeout; the connection is closed. BYTES is how much it had sent.

Check the client sends PROXY protocol version 2 with TCP over IPv4 or IPv6; see /usr/share/doc/mtaproxy/proxy-v2.md.`,
  },
  reload: {
    id: '7d5b64c9778a46b7b985cb585abd106e',
    level: 'INFO',
    subject: 'mtaproxy is reloading its configuration',
    text: `A reload started (SIGHUP, "mtaproxy reload" or "systemctl reload mtaproxy"): CONFIG is read and validated, new listeners are bound, and only then is anything switched.

"reload_applied" or "reload_rejected" follows.`,
  },
  reload_applied: {
    id: '7912ea3a442548a9b92efcef9a54f470',
    level: 'INFO',
    subject: 'mtaproxy applied a new configuration',
    text: `The reload succeeded; CHANGED lists the directives that changed (empty: none). New connections use the new configuration; established sessions and tunnels are kept.

Nothing to do. To apply a new allow_from to connected MTAs too, restart the service.`,
  },
  reload_rejected: {
    id: 'bca364eff55c459283f30556dbf4e56c',
    level: 'ERROR',
    subject: 'mtaproxy rejected a new configuration; the old one stays in effect',
    text: `A reload was rejected (one entry per error, as FILE:LINE:COL: KEY: MESSAGE, or a listener that cannot be bound). Nothing changed: the daemon keeps running with its previous configuration, and "systemctl reload mtaproxy" failed.

Fix the file, check it with "mtaproxy check-config /etc/mtaproxy/mtaproxy.toml", and reload again. Until then, a restart would fail to start.`,
  },
  status: {
    id: '835073d77cf74690b0944cc8cec795a0',
    level: 'INFO',
    subject: 'mtaproxy status line',
    text: `A periodic status line (every status_interval): STATUS_LINE names it (listener, handshakes, manager, session, direct_remote_smtp) and its fields carry the numbers. "mtaproxy status" prints the same on demand, "mtaproxy status --json" as JSON.

Nothing to do; see "Status lines" in /usr/share/doc/mtaproxy/operations.md for each field.`,
  },
  stopping: {
    id: '63d8aa56538e4e3b88bf42874f262633',
    level: 'INFO',
    subject: 'mtaproxy is stopping and draining',
    text: `SIGTERM or SIGINT (REASON) was received: listeners are closed, control sessions are told (421) and closed, waiting deliveries are refused, and open tunnels get up to shutdown_timeout to finish (SESSIONS, TUNNELS, CONNECTIONS at that moment).

Nothing to do. "drained" or "shutdown_forced" follows.`,
  },
  drained: {
    id: '83b95826241b4352bbe8df205ab827b3',
    level: 'INFO',
    subject: 'Every connection finished during shutdown',
    text: `Every tunnel and connection ended before shutdown_timeout (DURATION_MS): no delivery was cut.

Nothing to do.`,
  },
  shutdown_forced: {
    id: '3e4ad7f8bb224f4e9b447c40300a9c93',
    level: 'WARN',
    subject: 'mtaproxy cut connections still open at the end of shutdown_timeout',
    text: `Connections (CONNECTIONS, of them TUNNELS tunnels) were still open when shutdown_timeout passed and were cut. A message cut in the middle of DATA is sent again by its MTA, possibly as a duplicate if the destination had accepted it.

If this happens at every restart, MTAs keep SMTP connections open for further messages: raise shutdown_timeout (and TimeoutStopSec= of the unit above it), or accept the retries.`,
  },
  stopped: {
    id: '98c2cce16a934df2b8d76291f447e633',
    level: 'INFO',
    subject: 'mtaproxy stopped',
    text: `Shutdown finished; the process exits with status 0.

Nothing to do.`,
  },
  crash: {
    id: '8b56873f74f54af38832efe34eee0d3a',
    level: 'FATAL',
    subject: 'mtaproxy crashed with an internal error',
    text: `An uncaught internal error (ERR has the stack trace); the process exits with status 70, and systemd restarts it (Restart=on-failure). Sessions and tunnels of the crashed process are gone; MTAs reconnect and retry.

This is a bug: report it with the entry (journalctl -o verbose -u mtaproxy MTAPROXY_EVENT=crash) and the version.`,
  },
} as const satisfies Record<string, EventInfo>;

export type EventName = keyof typeof EVENTS;

/** The MESSAGE_ID of an event kind, or undefined for anything that is not one. */
export function messageIdFor(event: unknown): string | undefined {
  return typeof event === 'string' && Object.hasOwn(EVENTS, event) ? EVENTS[event as EventName].id : undefined;
}
