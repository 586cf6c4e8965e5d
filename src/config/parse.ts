// Pure config validation: TOML text in, a Config or a list of located errors out. The only I/O,
// reading auth_shared_secret_file, is injected so this module stays testable without files.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import ipaddr from 'ipaddr.js';
import { parse as parseToml, TomlError } from 'smol-toml';
import { AllowList, parseAllowRule, type AllowRule } from './allow.js';
import { locateKeys, stringLocator, type Position } from './locate.js';
import { MIN_SECRET_LENGTH, SharedSecret } from './secret.js';
import { isCanonicalIp, THROTTLE_KEY } from '../protocol/syntax.js';
import { parseCertificate } from './x509.js';
import type { TlsMode } from '../smtp/client.js';

export const DEFAULT_CONFIG_PATH = '/etc/mtaproxy/mtaproxy.toml';
export const DEFAULT_ADMIN_SOCKET = '/run/mtaproxy/admin.sock';
export const DEFAULT_PORT = 807;
/**
 * Long enough for a large DATA to finish on a slow path (a 50 MB message at 5 Mbit/s takes 80 s,
 * plus the destination's reply to the final dot): a tunnel cut in DATA means a duplicate.
 * The packaged unit's TimeoutStopSec= is above it.
 */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 120_000;

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface EgressConfig {
  /** local addresses MTAs may send from; each was checked to exist on this host */
  readonly sourceIps: readonly string[];
  readonly ports: readonly number[];
  readonly allowPrivateDestinations: boolean;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly maxTunnels: number;
  /** longest a CONNECT or ACQUIRE may wait for its throttle */
  readonly throttleWaitTimeoutMs: number;
}

export interface Socks5User {
  readonly username: string;
  readonly password: string;
  /** the source address this account sends from, unless the client chose one (BIND) */
  readonly sourceIp: string | null;
}

export interface Socks5Config {
  readonly listen: readonly ListenAddress[];
  readonly users: readonly Socks5User[];
  readonly allowUnauthenticated: boolean;
  readonly sourceIp: string | null;
}

export interface ProxyV2Config {
  readonly listen: readonly ListenAddress[];
  /** who may use this front-end, on top of allow_from (PROXY v2 carries no credentials); null: allow_from alone */
  readonly allowFrom: AllowList | null;
}

/** The certificate and key of tls_certificate_file / tls_key_file, read and checked at load. */
export interface TlsFiles {
  readonly certificateFile: string;
  readonly keyFile: string;
  /** PEM as read: the certificate, possibly followed by its chain */
  readonly cert: string;
  readonly key: KeyObject;
  readonly fingerprint256: string;
  readonly subject: string;
}

export interface TlsConfig {
  /** native listeners speak TLS (tls = true, the default) */
  readonly enabled: boolean;
  /** null: a self-signed pair generated at start */
  readonly files: TlsFiles | null;
}

/** [smtp]: smtp-mode deliveries and the pool of shared destination connections. */
export interface SmtpConfig {
  /** an idle destination connection is kept this long for the next transaction */
  readonly idleTimeoutMs: number;
  /** a connection is not reused once this old (Postfix smtp_connection_reuse_time_limit) */
  readonly reuseTimeLimitMs: number;
  /** transactions per connection, 0: no count limit */
  readonly reuseCountLimit: number;
  readonly greetingTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly dataInitTimeoutMs: number;
  readonly dataBlockTimeoutMs: number;
  readonly dataDoneTimeoutMs: number;
}

/** A per-destination rule of [derived_throttle]: the first that matches sets the limits. */
export interface DerivedThrottleRule {
  /** "mx.example.com" (that host) or ".example.com" (any host under it), lower case */
  readonly host: string;
  /** only deliveries from this source, or any */
  readonly sourceIp: string | null;
  readonly maxConnections: number;
  /** 0: no limit */
  readonly maxMessagesPerHour: number;
  /**
   * the throttle key these deliveries use instead of SOURCE>host:port, with "{source_ip}" replaced:
   * a native MTA that declares the same key shares its slots and tokens; null: the derived key
   */
  readonly key: string | null;
  readonly mode: 'sum' | 'average';
}

/** [derived_throttle]: the limits of the throttles per (source IP, destination) (SOCKS5, PROXY v2, the relay). */
export interface DerivedThrottleConfig {
  readonly maxConnections: number;
  /** 0: no limit */
  readonly maxMessagesPerHour: number;
  readonly destinations: readonly DerivedThrottleRule[];
}

/** An account of the relay front-end (SMTP AUTH PLAIN/LOGIN, only over TLS). */
export interface RelayAccount {
  readonly username: string;
  readonly password: string;
  /** the source address this MTA's mail goes from (unless its sender domain has one) */
  readonly sourceIp: string | null;
}

/** [relay]: an SMTP and an LMTP listener any MTA can use as its next hop (docs/relay.md). */
export interface RelayConfig {
  readonly listen: readonly ListenAddress[];
  readonly lmtpListen: readonly ListenAddress[];
  /** the name in the relay's greeting and EHLO reply */
  readonly hostname: string;
  /** the EHLO name toward destinations, per source IP (every source the relay can choose has one) */
  readonly ehloNames: ReadonlyMap<string, string>;
  readonly destinationTls: TlsMode;
  readonly destinationPort: number;
  /** source IP choice, in this order: sender domain, account, local address, source_ip */
  readonly sourceBySenderDomain: ReadonlyMap<string, string>;
  readonly sourceByLocalAddress: ReadonlyMap<string, string>;
  readonly sourceIp: string | null;
  readonly accounts: readonly RelayAccount[];
  /** AUTH is required before MAIL (true when accounts are configured, unless set false) */
  readonly requireAuth: boolean;
  readonly maxRecipients: number;
  /** bytes, advertised as SIZE; 0: no limit advertised */
  readonly maxMessageSize: number;
}

export interface Config {
  readonly file: string;
  /** [relay], or null when there is none */
  readonly relay: RelayConfig | null;
  /** DNS servers for the relay's MX lookups ("IP" or "IP:PORT"); empty: the system's (/etc/resolv.conf) */
  readonly dnsServers: readonly string[];
  readonly smtp: SmtpConfig;
  readonly tls: TlsConfig;
  readonly egress: EgressConfig;
  readonly socks5: Socks5Config | null;
  readonly proxyV2: ProxyV2Config | null;
  /** limits of the throttles derived from (source IP, destination) for SOCKS5/PROXY v2 */
  readonly derivedThrottle: DerivedThrottleConfig;
  readonly listen: readonly ListenAddress[];
  readonly allowFrom: AllowList;
  /** The secret new handshakes are answered with, then an optional previous one (rotation). */
  readonly secrets: readonly SharedSecret[];
  readonly logVerbose: boolean;
  readonly statusIntervalMs: number;
  readonly adminSocket: string;
  readonly handshakeTimeoutMs: number;
  readonly pingIntervalMs: number;
  readonly shutdownTimeoutMs: number;
  /** connections still in their handshake, in total and per peer address, before new ones are refused */
  readonly maxPendingHandshakes: number;
  readonly maxPendingHandshakesPerPeer: number;
  /** the Prometheus metrics listener(s), HTTP GET /metrics; empty: none (ignored under socket activation) */
  readonly metricsListen: readonly ListenAddress[];
  /** per-throttle metric series for at most this many throttles, the busiest */
  readonly metricsThrottleSeries: number;
}

export interface ConfigError {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  readonly key: string;
  readonly message: string;
}

export type ConfigResult = { ok: true; config: Config } | { ok: false; errors: ConfigError[] };

export interface ConfigIo {
  /** Reads auth_shared_secret_file; throws an Error whose message says why it could not. */
  readSecretFile(path: string): string;
  /** Reads tls_certificate_file and tls_key_file (default: readSecretFile). */
  readTlsFile?(path: string): string;
  /**
   * Whether an address belongs to this host (egress.source_ips must). May throw when the host's
   * addresses cannot be listed: the error's message becomes the entry's config error.
   */
  isLocalAddress(ip: string): boolean;
}

export function formatConfigError(e: ConfigError): string {
  const where = e.line > 0 ? `${e.file}:${e.line}:${e.column}` : e.file;
  return `${where}: ${e.key ? `${e.key}: ` : ''}${e.message}`;
}

interface Directive {
  readonly help: string;
}

/** Every key the file may contain; anything else is an error (a typo must not pass silently). */
export const DIRECTIVES: Readonly<Record<string, Directive>> = {
  listen: { help: 'address(es) to listen on, "IP:PORT" or "[IPv6]:PORT"; ignored under socket activation' },
  allow_from: { help: 'IPs and CIDRs allowed to connect; others are closed before a byte is read' },
  auth_shared_secret: { help: `the MTAs' shared secret, at least ${MIN_SECRET_LENGTH} characters` },
  auth_shared_secret_file: { help: 'read the shared secret from this file instead (first line)' },
  auth_shared_secret_previous: { help: 'a second secret still accepted, for rotation' },
  tls: { help: 'native listeners speak TLS, channel-bound to the handshake (default true; false only for a trusted network)' },
  tls_certificate_file: { help: 'PEM certificate (and chain) of the native listeners; default: self-signed, generated at start' },
  tls_key_file: { help: 'PEM private key of tls_certificate_file (both or neither)' },
  log_verbose: { help: 'log every connection and session event (debug level)' },
  status_interval: { help: 'how often the status lines are logged, e.g. "5s"' },
  admin_socket: { help: 'Unix socket for mtaproxy reload/status' },
  handshake_timeout: { help: 'time an MTA has to authenticate, e.g. "10s"' },
  ping_interval: { help: 'control-session ping period; a session silent for two periods is closed' },
  shutdown_timeout: { help: 'on SIGTERM, how long open tunnels get to finish before they are cut (default "2m")' },
  max_pending_handshakes: { help: 'connections still in their handshake (all front-ends) before new ones are refused (default 1000)' },
  max_pending_handshakes_per_peer: { help: 'the same, per client address (default 100)' },
  metrics_listen: { help: 'Prometheus metrics over HTTP (GET /metrics), "IP:PORT" or a list; allow_from applies; default none (socket activation: FileDescriptorName=metrics)' },
  metrics_throttle_series: { help: 'per-throttle metric series only for this many throttles, the busiest (default 20, 0 for none)' },
  egress: { help: 'table [egress]: where deliveries may go and from which addresses' },
  socks5: { help: 'table [socks5]: a SOCKS5 front-end (RFC 1928/1929) for KumoMTA, curl…' },
  proxy_v2: { help: 'table [proxy_v2]: a PROXY protocol v2 front-end (KumoMTA ha_proxy_*, Momentum)' },
  derived_throttle: { help: 'table [derived_throttle]: limits for SOCKS5/PROXY v2 deliveries' },
  smtp: { help: 'table [smtp]: smtp-mode deliveries, the shared destination connections and their timeouts' },
  relay: { help: 'table [relay]: an SMTP and an LMTP listener any MTA can relay through (docs/relay.md)' },
  dns_servers: { help: 'DNS servers for MX lookups of the relay, "IP" or "IP:PORT" (default: /etc/resolv.conf)' },
};

export const RELAY_DIRECTIVES: Readonly<Record<string, Directive>> = {
  listen: { help: 'SMTP relay addresses, "IP:PORT" (socket activation: FileDescriptorName=relay-smtp)' },
  lmtp_listen: { help: 'LMTP relay addresses, "IP:PORT" (socket activation: FileDescriptorName=relay-lmtp); LMTP gives a reply per recipient, so one transaction may span destinations' },
  hostname: { help: "the relay's name in its greeting and EHLO reply (default: ehlo_name when it is one name, else \"mtaproxy\")" },
  ehlo_name: { help: 'EHLO name toward destinations: a name, or a table { "SOURCE-IP" = "name" } naming every source the relay can choose (required)' },
  destination_tls: { help: 'STARTTLS toward destinations: "none", "opportunistic" (default, as Postfix may) or "required"' },
  destination_port: { help: 'the port of the MX hosts (default 25)' },
  source_by_sender_domain: { help: 'table { "example.com" = "SOURCE-IP" }: the envelope sender domain (or a parent domain) chooses the source (first rule)' },
  accounts: { help: 'SMTP AUTH accounts (PLAIN/LOGIN, only after STARTTLS): [{ username = "…", password = "…", source_ip = "…" (optional) }] (second rule)' },
  source_by_local_address: { help: 'table { "RELAY-ADDRESS" = "SOURCE-IP" }: the address the MTA connected to chooses the source (third rule)' },
  source_ip: { help: 'the source when no rule above chooses one; without it, such mail is refused with 451 4.3.5' },
  require_auth: { help: 'MTAs must AUTH before MAIL (default: true when accounts are set)' },
  max_recipients: { help: 'recipients per transaction (default 1000); more get 452 4.5.3' },
  max_message_size: { help: 'bytes, advertised as SIZE (default 52428800, 0 for none advertised)' },
};

export const SMTP_DIRECTIVES: Readonly<Record<string, Directive>> = {
  idle_timeout: { help: 'an idle destination connection is kept this long for the next transaction (default "10s")' },
  reuse_time_limit: { help: 'a destination connection is not reused once this old (default "300s", as Postfix)' },
  reuse_count_limit: { help: 'transactions per destination connection, 0 for no count limit (default 0: time-based)' },
  greeting_timeout: { help: "wait for the destination's 220 greeting (default \"5m\", RFC 5321 §4.5.3.2)" },
  command_timeout: { help: 'wait for the reply to EHLO, STARTTLS, MAIL, RCPT, RSET, NOOP (default "5m")' },
  data_init_timeout: { help: 'wait for the 354 after DATA (default "2m")' },
  data_block_timeout: { help: 'a body write the destination does not take this long fails the transaction (default "3m")' },
  data_done_timeout: { help: 'wait for the final reply after the body (default "10m")' },
};

export const SOCKS5_DIRECTIVES: Readonly<Record<string, Directive>> = {
  listen: { help: 'addresses of the SOCKS5 front-end, "IP:PORT" (socket activation: FileDescriptorName=socks5)' },
  users: { help: 'RFC 1929 accounts: [{ username = "…", password = "…", source_ip = "…" (optional) }]' },
  allow_unauthenticated: { help: 'accept SOCKS5 clients without a username (allow_from still applies; default false)' },
  source_ip: { help: 'source address for clients that do not choose one (no KumoMTA-style BIND, no per-user source_ip)' },
};

export const PROXY_V2_DIRECTIVES: Readonly<Record<string, Directive>> = {
  listen: { help: 'addresses of the PROXY v2 front-end, "IP:PORT" (socket activation: FileDescriptorName=proxy-v2)' },
  allow_from: { help: 'IPs/CIDRs that may use this front-end, on top of allow_from (PROXY v2 carries no credentials: name the MTA hosts)' },
};

export const DERIVED_THROTTLE_DIRECTIVES: Readonly<Record<string, Directive>> = {
  max_connections: { help: 'concurrent connections per (source IP, destination) for SOCKS5/PROXY v2 deliveries and the relay (default 10)' },
  max_messages_per_hour: { help: 'messages per hour per (source IP, destination) for relay deliveries (default 0: no limit)' },
  destinations: { help: 'per-destination limits, first match wins: [{ host = "mx.example.com" or ".example.com", source_ip = "…" (optional), max_connections = N, max_messages_per_hour = N, key = "name@{source_ip}" (optional: a key native MTAs may declare too), mode = "sum"|"average" }]' },
};


export const EGRESS_DIRECTIVES: Readonly<Record<string, Directive>> = {
  source_ips: { help: 'local IPs MTAs may send from; each must exist on this host' },
  ports: { help: 'destination ports deliveries may use (default [25, 465, 587])' },
  allow_private_destinations: { help: 'allow loopback/private/link-local destinations (default false)' },
  connect_timeout: { help: 'outbound TCP connect timeout (default "30s")' },
  idle_timeout: { help: 'a tunnel with no traffic either way this long is closed (default "5m")' },
  max_tunnels: { help: 'cap on concurrent tunnels (default 10000)' },
  throttle_wait_timeout: { help: 'longest a delivery waits for a throttle slot (default "60s")' },
};

/** The tables and their keys (unknown keys in them are errors too; `mtaproxy --help` lists them). */
export const TABLES: Readonly<Record<string, Readonly<Record<string, Directive>>>> = {
  egress: EGRESS_DIRECTIVES,
  socks5: SOCKS5_DIRECTIVES,
  proxy_v2: PROXY_V2_DIRECTIVES,
  derived_throttle: DERIVED_THROTTLE_DIRECTIVES,
  smtp: SMTP_DIRECTIVES,
  relay: RELAY_DIRECTIVES,
};

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1m30s", "500ms", or a number of seconds. Returns milliseconds or null. */
export function parseDuration(value: unknown): number | null {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? Math.round(value * 1000) : null;
  if (typeof value !== 'string' || value === '') return null;
  DURATION_PART.lastIndex = 0;
  let total = 0;
  let end = 0;
  for (let m = DURATION_PART.exec(value); m !== null; m = DURATION_PART.exec(value)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? 's'] ?? 0);
    end = DURATION_PART.lastIndex;
  }
  return end === value.length ? Math.round(total) : null;
}

/** "0.0.0.0:807", "[::]:807", "127.0.0.1:0" (0 = any free port, for tests). */
export function parseListenAddress(text: string): ListenAddress | string {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (m === null) return `"${text}" must be "IP:PORT" or "[IPv6]:PORT"`;
  const host = m[1] ?? m[2] ?? '';
  const port = Number(m[3]);
  if (m[1] !== undefined ? !ipaddr.IPv6.isValid(host) : !ipaddr.IPv4.isValidFourPartDecimal(host)) {
    return `"${text}": "${host}" is not an IP address (host names are not accepted: they may resolve differently later)`;
  }
  if (port > 65535) return `"${text}": port must be 0..65535`;
  return { host, port };
}

export function parseConfig(text: string, file: string, io: ConfigIo): ConfigResult {
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split('\n')[0] ?? err.message;
      return { ok: false, errors: [{ file, line: err.line, column: err.column, key: '', message: `TOML syntax: ${first}` }] };
    }
    throw err;
  }
  const positions = locateKeys(text);
  const locateString = stringLocator(text);
  const errors: ConfigError[] = [];
  const where = (key: string): Position => positions.get(key) ?? { line: 1, column: 1 };
  const fail = (key: string, message: string, at: Position = where(key)): void => {
    errors.push({ file, line: at.line, column: at.column, key, message });
  };

  /** The value at a dotted path ("egress.ports"), or undefined. */
  const get = (key: string): unknown => {
    let value: unknown = raw;
    for (const part of key.split('.')) {
      const table = value as Record<string, unknown> | undefined;
      value = table !== undefined && typeof table === 'object' && table !== null && Object.hasOwn(table, part) ? table[part] : undefined;
    }
    return value;
  };
  const checkKeys = (table: Record<string, unknown>, prefix: string, known: Readonly<Record<string, Directive>>): void => {
    for (const key of Object.keys(table)) {
      // own keys only: "constructor", "toString", "__proto__" are not directives
      if (!Object.hasOwn(known, key)) {
        const hint = Object.keys(known).find((k) => editDistance(k, key) <= 2);
        fail(prefix + key, `unknown directive${hint ? `; did you mean "${prefix}${hint}"?` : ''}`);
      }
    }
  };
  checkKeys(raw, '', DIRECTIVES);
  const isTable = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  for (const [name, known] of Object.entries(TABLES)) {
    const table = raw[name];
    if (table === undefined) continue;
    if (!isTable(table)) fail(name, `must be a table: [${name}]`);
    else checkKeys(table, `${name}.`, known);
  }

  const stringList = (key: string, fallback: string[]): string[] => {
    const value = get(key);
    if (value === undefined) return fallback;
    if (typeof value === 'string') return [value];
    if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value as string[];
    fail(key, 'must be a string or an array of strings');
    return [];
  };

  const listen: ListenAddress[] = [];
  for (const entry of stringList('listen', [`0.0.0.0:${DEFAULT_PORT}`])) {
    const parsed = parseListenAddress(entry);
    if (typeof parsed === 'string') fail('listen', parsed, locateString(where('listen'), entry));
    else listen.push(parsed);
  }
  if (raw.listen !== undefined && listen.length === 0 && !errors.some((e) => e.key === 'listen')) {
    fail('listen', 'must name at least one address');
  }

  const allowRules = (key: string, fallback: string[]): AllowRule[] => {
    const out: AllowRule[] = [];
    for (const entry of stringList(key, fallback)) {
      const parsed = parseAllowRule(entry);
      if (parsed.ok) out.push(parsed.rule);
      else fail(key, parsed.message, locateString(where(key), entry));
    }
    return out;
  };
  const rules = allowRules('allow_from', ['127.0.0.0/8', '::1']);

  const secrets: SharedSecret[] = [];
  const secretValue = (key: string, value: unknown): void => {
    if (typeof value !== 'string') return fail(key, 'must be a string');
    // Never echo the value: only its length.
    const length = [...value].length; // characters, not UTF-16 units
    if (length < MIN_SECRET_LENGTH) {
      return fail(key, `is ${length} characters; at least ${MIN_SECRET_LENGTH} are required (mtaproxy gen-secret makes one)`);
    }
    secrets.push(new SharedSecret(value));
  };
  const inline = raw.auth_shared_secret;
  const fromFile = raw.auth_shared_secret_file;
  if (inline !== undefined && fromFile !== undefined) {
    fail('auth_shared_secret_file', 'set either auth_shared_secret or auth_shared_secret_file, not both');
  } else if (inline !== undefined) {
    secretValue('auth_shared_secret', inline);
  } else if (fromFile !== undefined) {
    if (typeof fromFile !== 'string' || fromFile === '') {
      fail('auth_shared_secret_file', 'must be a file path');
    } else {
      let content: string | null = null;
      try {
        content = io.readSecretFile(fromFile);
      } catch (err) {
        fail('auth_shared_secret_file', `cannot read "${fromFile}": ${(err as Error).message}`);
      }
      if (content !== null) secretValue('auth_shared_secret_file', content.split(/\r?\n/)[0] ?? '');
    }
  } else {
    fail('auth_shared_secret', 'is required (or auth_shared_secret_file); generate one with: mtaproxy gen-secret', { line: 1, column: 1 });
  }
  if (raw.auth_shared_secret_previous !== undefined) {
    const before = secrets.length;
    secretValue('auth_shared_secret_previous', raw.auth_shared_secret_previous);
    if (secrets.length === before + 1 && before === 1 && secrets[0]?.equals(secrets[1] as SharedSecret)) {
      fail('auth_shared_secret_previous', 'is the same as the current secret');
    }
  }

  const bool = (key: string, fallback: boolean): boolean => {
    const value = get(key);
    if (value === undefined) return fallback;
    if (typeof value === 'boolean') return value;
    fail(key, 'must be true or false');
    return fallback;
  };
  const duration = (key: string, fallbackMs: number, minMs: number, maxMs: number): number => {
    const value = get(key);
    if (value === undefined) return fallbackMs;
    const ms = parseDuration(value);
    if (ms === null) {
      fail(key, 'must be a duration such as "500ms", "10s", "1m30s" or a number of seconds');
      return fallbackMs;
    }
    if (ms < minMs || ms > maxMs) {
      fail(key, `must be between ${minMs / 1000}s and ${maxMs / 1000}s`);
      return fallbackMs;
    }
    return ms;
  };
  const path = (key: string, fallback: string): string => {
    const value = get(key);
    if (value === undefined) return fallback;
    if (typeof value === 'string' && value.startsWith('/')) return value;
    fail(key, 'must be an absolute path');
    return fallback;
  };

  const integer = (key: string, fallback: number, min: number, max: number): number => {
    const value = get(key);
    if (value === undefined) return fallback;
    if (typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max) return value;
    fail(key, `must be a whole number from ${min} to ${max}`);
    return fallback;
  };

  const tlsConfig = (enabled: boolean): TlsConfig => {
    const certificateFile = get('tls_certificate_file');
    const keyFile = get('tls_key_file');
    if (certificateFile === undefined && keyFile === undefined) return { enabled, files: null };
    if (!enabled) {
      fail(certificateFile !== undefined ? 'tls_certificate_file' : 'tls_key_file', 'is set but tls = false: remove it, or remove tls = false');
      return { enabled, files: null };
    }
    if (certificateFile === undefined || keyFile === undefined) {
      fail(certificateFile === undefined ? 'tls_key_file' : 'tls_certificate_file', 'set both tls_certificate_file and tls_key_file, or neither (a self-signed pair is then generated at start)');
      return { enabled, files: null };
    }
    const read = (key: string, value: unknown): string | null => {
      if (typeof value !== 'string' || !value.startsWith('/')) {
        fail(key, 'must be an absolute path');
        return null;
      }
      try {
        return (io.readTlsFile ?? io.readSecretFile)(value);
      } catch (err) {
        fail(key, `cannot read "${value}": ${(err as Error).message}`);
        return null;
      }
    };
    const certText = read('tls_certificate_file', certificateFile);
    const keyText = read('tls_key_file', keyFile);
    if (certText === null || keyText === null) return { enabled, files: null };
    const x509 = parseCertificate(certText);
    if (typeof x509 === 'string') {
      fail('tls_certificate_file', `"${String(certificateFile)}" is ${x509}`);
      return { enabled, files: null };
    }
    let key: KeyObject;
    try {
      key = createPrivateKey(keyText);
    } catch (err) {
      // the message is OpenSSL's ("unsupported", "bad decrypt"…): never the key itself
      fail('tls_key_file', `"${String(keyFile)}" is not an unencrypted PEM private key (${(err as Error).message})`);
      return { enabled, files: null };
    }
    if (!x509.checkPrivateKey(key)) {
      fail('tls_key_file', `"${String(keyFile)}" is not the private key of the certificate in "${String(certificateFile)}"`);
      return { enabled, files: null };
    }
    return {
      enabled,
      files: { certificateFile: certificateFile as string, keyFile: keyFile as string, cert: certText, key, fingerprint256: x509.fingerprint256, subject: x509.subject },
    };
  };

  const sourceIps: string[] = [];
  /** why the last isLocal() could not tell (the host's addresses could not be listed) */
  let localError: string | null = null;
  const isLocal = (ip: string): boolean => {
    try {
      return io.isLocalAddress(ip);
    } catch (err) {
      localError = `cannot tell whether "${ip}" is an address of this host: ${(err as Error).message}`;
      return false;
    }
  };
  for (const entry of stringList('egress.source_ips', [])) {
    const at = locateString(where('egress.source_ips'), entry);
    if (!isCanonicalIp(entry)) {
      fail('egress.source_ips', `"${entry}" is not an IP address`, at);
    } else if (!isLocal(entry)) {
      fail('egress.source_ips', localError ?? `"${entry}" is not an address of this host (ip -br addr shows them)`, at);
      localError = null;
    } else {
      sourceIps.push(ipaddr.process(entry).toString());
    }
  }
  let ports: number[] = [25, 465, 587];
  const portsValue = get('egress.ports');
  if (portsValue !== undefined) {
    if (Array.isArray(portsValue) && portsValue.length > 0 && portsValue.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)) {
      ports = portsValue as number[];
    } else {
      fail('egress.ports', 'must be a non-empty array of port numbers (1..65535)');
    }
  }
  const egress: EgressConfig = {
    sourceIps,
    ports,
    allowPrivateDestinations: bool('egress.allow_private_destinations', false),
    connectTimeoutMs: duration('egress.connect_timeout', 30_000, 100, 600_000),
    idleTimeoutMs: duration('egress.idle_timeout', 300_000, 1000, 3_600_000),
    maxTunnels: integer('egress.max_tunnels', 10_000, 1, 1_000_000),
    throttleWaitTimeoutMs: duration('egress.throttle_wait_timeout', 60_000, 0, 3_600_000),
  };

  const listenList = (key: string): ListenAddress[] => {
    const out: ListenAddress[] = [];
    for (const entry of stringList(key, [])) {
      const parsed = parseListenAddress(entry);
      if (typeof parsed === 'string') fail(key, parsed, locateString(where(key), entry));
      else out.push(parsed);
    }
    return out;
  };
  const sourceIp = (key: string): string | null => {
    const value = get(key);
    if (value === undefined) return null;
    if (typeof value !== 'string' || !ipaddr.isValid(value)) {
      fail(key, 'must be an IP address');
      return null;
    }
    const ip = ipaddr.process(value).toString();
    if (!sourceIps.includes(ip)) fail(key, `${ip} is not in egress.source_ips`);
    return ip;
  };

  let socks5: Socks5Config | null = null;
  if (raw.socks5 !== undefined) {
    const users: Socks5User[] = [];
    const usersValue = get('socks5.users');
    if (usersValue !== undefined) {
      if (!Array.isArray(usersValue)) {
        fail('socks5.users', 'must be an array of { username, password, source_ip? } tables');
      } else {
        usersValue.forEach((u: unknown, i) => {
          const at = `socks5.users[${i}]`;
          const entry = u as Record<string, unknown>;
          if (typeof u !== 'object' || u === null || typeof entry.username !== 'string' || typeof entry.password !== 'string') {
            return fail('socks5.users', `${at} needs username and password strings`);
          }
          const extra = Object.keys(entry).filter((k) => !['username', 'password', 'source_ip'].includes(k));
          if (extra.length > 0) return fail('socks5.users', `${at}: unknown key ${extra[0]}`);
          // RFC 1929: each is 1..255 bytes
          if (Buffer.byteLength(entry.username) < 1 || Buffer.byteLength(entry.username) > 255 || Buffer.byteLength(entry.password) < 1 || Buffer.byteLength(entry.password) > 255) {
            return fail('socks5.users', `${at}: username and password must be 1..255 bytes`);
          }
          let userSource: string | null = null;
          if (entry.source_ip !== undefined) {
            if (typeof entry.source_ip !== 'string' || !ipaddr.isValid(entry.source_ip)) return fail('socks5.users', `${at}: source_ip must be an IP address`);
            userSource = ipaddr.process(entry.source_ip).toString();
            if (!sourceIps.includes(userSource)) return fail('socks5.users', `${at}: source_ip ${userSource} is not in egress.source_ips`);
          }
          users.push({ username: entry.username, password: entry.password, sourceIp: userSource });
        });
      }
    }
    const allowUnauthenticated = bool('socks5.allow_unauthenticated', false);
    if (users.length === 0 && !allowUnauthenticated) fail('socks5', 'needs users, or allow_unauthenticated = true');
    socks5 = { listen: listenList('socks5.listen'), users, allowUnauthenticated, sourceIp: sourceIp('socks5.source_ip') };
  }
  const proxyV2: ProxyV2Config | null =
    raw.proxy_v2 === undefined
      ? null
      : { listen: listenList('proxy_v2.listen'), allowFrom: get('proxy_v2.allow_from') === undefined ? null : new AllowList(allowRules('proxy_v2.allow_from', [])) };
  const derivedMax = integer('derived_throttle.max_connections', 10, 1, 1_000_000);
  const derivedMessages = integer('derived_throttle.max_messages_per_hour', 0, 0, 100_000_000);
  const derivedRules: DerivedThrottleRule[] = [];
  const rulesValue = get('derived_throttle.destinations');
  if (rulesValue !== undefined) {
    if (!Array.isArray(rulesValue)) fail('derived_throttle.destinations', 'must be an array of { host, source_ip?, max_connections?, max_messages_per_hour? } tables');
    else {
      rulesValue.forEach((u: unknown, i) => {
        const at = `derived_throttle.destinations[${i}]`;
        const e = u as Record<string, unknown>;
        if (!isTable(u) || typeof e.host !== 'string') return fail('derived_throttle.destinations', `${at} needs host = "mx.example.com" or ".example.com"`);
        const extra = Object.keys(e).filter((k) => !['host', 'source_ip', 'max_connections', 'max_messages_per_hour', 'key', 'mode'].includes(k));
        if (extra.length > 0) return fail('derived_throttle.destinations', `${at}: unknown key ${extra[0]}`);
        const host = e.host.toLowerCase().replace(/\.$/, '');
        if (!/^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(host) && !ipaddr.isValid(host)) return fail('derived_throttle.destinations', `${at}: host "${e.host}" is not a host name, ".domain" or an IP address`);
        const num = (k: string, fallback: number, min: number): number | null => {
          const v = e[k];
          if (v === undefined) return fallback;
          if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= 100_000_000) return v;
          fail('derived_throttle.destinations', `${at}: ${k} must be a whole number from ${min} to 100000000`);
          return null;
        };
        const maxConnections = num('max_connections', derivedMax, 1);
        const maxMessagesPerHour = num('max_messages_per_hour', derivedMessages, 0);
        let ruleSource: string | null = null;
        if (e.source_ip !== undefined) {
          if (typeof e.source_ip !== 'string' || !ipaddr.isValid(e.source_ip)) return fail('derived_throttle.destinations', `${at}: source_ip must be an IP address`);
          ruleSource = ipaddr.process(e.source_ip).toString();
          if (!sourceIps.includes(ruleSource)) return fail('derived_throttle.destinations', `${at}: source_ip ${ruleSource} is not in egress.source_ips`);
        }
        let key: string | null = null;
        if (e.key !== undefined) {
          // the key with the longest source substituted must still be a valid throttle key
          if (typeof e.key !== 'string' || !THROTTLE_KEY.test(e.key.replaceAll('{source_ip}', 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255')) || /[{}]/.test(e.key.replaceAll('{source_ip}', ''))) {
            return fail('derived_throttle.destinations', `${at}: key must be a throttle key (A-Z a-z 0-9 . _ : @ + -, starting with a letter or digit), optionally with {source_ip}`);
          }
          key = e.key;
        }
        const mode = e.mode ?? 'sum';
        if (mode !== 'sum' && mode !== 'average') return fail('derived_throttle.destinations', `${at}: mode must be "sum" or "average"`);
        if (maxConnections === null || maxMessagesPerHour === null) return;
        derivedRules.push({ host: ipaddr.isValid(host) ? ipaddr.process(host).toString() : host, sourceIp: ruleSource, maxConnections, maxMessagesPerHour, key, mode });
      });
    }
  }
  const derivedThrottle: DerivedThrottleConfig = { maxConnections: derivedMax, maxMessagesPerHour: derivedMessages, destinations: derivedRules };

  const dnsServers: string[] = [];
  for (const entry of stringList('dns_servers', [])) {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(entry) ?? (ipaddr.IPv6.isValid(entry) ? [entry, entry] : null);
    const host = m === null ? '' : (m[1] ?? m[2] ?? '');
    const port = m?.[3] === undefined ? 53 : Number(m[3]);
    if (m === null || !ipaddr.isValid(host) || port < 1 || port > 65535) fail('dns_servers', `"${entry}" must be "IP", "IP:PORT" or "[IPv6]:PORT"`, locateString(where('dns_servers'), entry));
    else dnsServers.push(entry);
  }

  let relay: RelayConfig | null = null;
  if (isTable(raw.relay)) {
    const relaySource = (key: string, value: unknown, what: string): string | null => {
      if (typeof value !== 'string' || !ipaddr.isValid(value)) {
        fail(key, `${what} must be an IP address`);
        return null;
      }
      const ip = ipaddr.process(value).toString();
      if (!sourceIps.includes(ip)) {
        fail(key, `${what}: ${ip} is not in egress.source_ips`);
        return null;
      }
      return ip;
    };
    const ipTable = (key: string, keyKind: 'domain' | 'address'): Map<string, string> => {
      const out = new Map<string, string>();
      const value = get(key);
      if (value === undefined) return out;
      if (!isTable(value)) {
        fail(key, `must be a table { "${keyKind === 'domain' ? 'example.com' : '192.0.2.1'}" = "SOURCE-IP" }`);
        return out;
      }
      for (const [k, v] of Object.entries(value)) {
        let name = k.toLowerCase().replace(/\.$/, '');
        if (keyKind === 'address') {
          if (!ipaddr.isValid(k)) {
            fail(key, `"${k}" is not an IP address`);
            continue;
          }
          name = ipaddr.process(k).toString();
        } else if (!/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/.test(name)) {
          fail(key, `"${k}" is not a domain name`);
          continue;
        }
        const ip = relaySource(key, v, `"${k}"`);
        if (ip !== null) out.set(name, ip);
      }
      return out;
    };
    const sourceBySenderDomain = ipTable('relay.source_by_sender_domain', 'domain');
    const sourceByLocalAddress = ipTable('relay.source_by_local_address', 'address');
    const relayDefault = get('relay.source_ip') === undefined ? null : relaySource('relay.source_ip', get('relay.source_ip'), 'source_ip');
    const accounts: RelayAccount[] = [];
    const accountsValue = get('relay.accounts');
    if (accountsValue !== undefined) {
      if (!Array.isArray(accountsValue)) fail('relay.accounts', 'must be an array of { username, password, source_ip? } tables');
      else {
        accountsValue.forEach((u: unknown, i) => {
          const at = `relay.accounts[${i}]`;
          const entry = u as Record<string, unknown>;
          if (!isTable(u) || typeof entry.username !== 'string' || typeof entry.password !== 'string' || entry.username === '' || entry.password === '') {
            return fail('relay.accounts', `${at} needs non-empty username and password strings`);
          }
          const extra = Object.keys(entry).filter((k) => !['username', 'password', 'source_ip'].includes(k));
          if (extra.length > 0) return fail('relay.accounts', `${at}: unknown key ${extra[0]}`);
          if (/[\0\r\n]/.test(entry.username + entry.password)) return fail('relay.accounts', `${at}: username and password cannot hold NUL, CR or LF`);
          if (accounts.some((a) => a.username === entry.username)) return fail('relay.accounts', `${at}: username "${entry.username}" appears twice`);
          const src = entry.source_ip === undefined ? null : relaySource('relay.accounts', entry.source_ip, `${at}: source_ip`);
          accounts.push({ username: entry.username, password: entry.password, sourceIp: src });
        });
      }
    }
    // every source the relay can choose needs an EHLO name
    const choosable = new Set<string>([...sourceBySenderDomain.values(), ...sourceByLocalAddress.values(), ...accounts.flatMap((a) => (a.sourceIp === null ? [] : [a.sourceIp])), ...(relayDefault === null ? [] : [relayDefault])]);
    const ehloNames = new Map<string, string>();
    const ehloValue = get('relay.ehlo_name');
    const EHLO = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
    let single: string | null = null;
    if (typeof ehloValue === 'string') {
      if (!EHLO.test(ehloValue)) fail('relay.ehlo_name', `"${ehloValue}" is not a host name`);
      else {
        single = ehloValue;
        for (const ip of sourceIps) ehloNames.set(ip, ehloValue);
      }
    } else if (isTable(ehloValue)) {
      for (const [k, v] of Object.entries(ehloValue)) {
        const ip = relaySource('relay.ehlo_name', k, `"${k}"`);
        if (ip === null) continue;
        if (typeof v !== 'string' || !EHLO.test(v)) fail('relay.ehlo_name', `"${k}": "${String(v)}" is not a host name`);
        else ehloNames.set(ip, v);
      }
      for (const ip of choosable) if (!ehloNames.has(ip)) fail('relay.ehlo_name', `names no EHLO name for ${ip}, which the relay can send from`);
    } else {
      fail('relay.ehlo_name', ehloValue === undefined ? 'is required: the name the relay gives destinations in EHLO (its sources\' PTR name), or a table per source IP' : 'must be a host name or a table { "SOURCE-IP" = "name" }', ehloValue === undefined ? where('relay') : where('relay.ehlo_name'));
    }
    const hostnameValue = get('relay.hostname');
    let hostname = single ?? 'mtaproxy';
    if (hostnameValue !== undefined) {
      if (typeof hostnameValue !== 'string' || !EHLO.test(hostnameValue)) fail('relay.hostname', 'must be a host name');
      else hostname = hostnameValue;
    }
    const tlsValue = get('relay.destination_tls') ?? 'opportunistic';
    let destinationTls: TlsMode = 'opportunistic';
    if (tlsValue === 'none' || tlsValue === 'opportunistic' || tlsValue === 'required') destinationTls = tlsValue;
    else fail('relay.destination_tls', 'must be "none", "opportunistic" or "required"');
    const lmtpListen = listenList('relay.lmtp_listen');
    const smtpListen = listenList('relay.listen');
    relay = {
      listen: smtpListen,
      lmtpListen,
      hostname,
      ehloNames,
      destinationTls,
      destinationPort: integer('relay.destination_port', 25, 1, 65535),
      sourceBySenderDomain,
      sourceByLocalAddress,
      sourceIp: relayDefault,
      accounts,
      requireAuth: bool('relay.require_auth', accounts.length > 0),
      maxRecipients: integer('relay.max_recipients', 1000, 1, 100_000),
      maxMessageSize: integer('relay.max_message_size', 52_428_800, 0, 2 ** 40),
    };
    if (!ports.includes(relay.destinationPort)) fail(get('relay.destination_port') === undefined ? 'relay' : 'relay.destination_port', `destination port ${relay.destinationPort} is not in egress.ports`);
    if (accounts.length > 0 && !bool('tls', true)) fail('relay.accounts', 'AUTH is offered only after STARTTLS, which needs the listeners\' certificate: remove tls = false');
    if (relay.requireAuth && accounts.length === 0) fail('relay.require_auth', 'is true but relay.accounts is empty: nobody could send');
    if (choosable.size === 0) fail('relay', 'chooses no source IP: set source_by_sender_domain, accounts with source_ip, source_by_local_address or source_ip', where('relay'));
  }

  const tls = tlsConfig(bool('tls', true));
  const smtp: SmtpConfig = {
    idleTimeoutMs: duration('smtp.idle_timeout', 10_000, 100, 3_600_000),
    reuseTimeLimitMs: duration('smtp.reuse_time_limit', 300_000, 1000, 86_400_000),
    reuseCountLimit: integer('smtp.reuse_count_limit', 0, 0, 1_000_000),
    greetingTimeoutMs: duration('smtp.greeting_timeout', 300_000, 100, 3_600_000),
    commandTimeoutMs: duration('smtp.command_timeout', 300_000, 100, 3_600_000),
    dataInitTimeoutMs: duration('smtp.data_init_timeout', 120_000, 100, 3_600_000),
    dataBlockTimeoutMs: duration('smtp.data_block_timeout', 180_000, 100, 3_600_000),
    dataDoneTimeoutMs: duration('smtp.data_done_timeout', 600_000, 100, 3_600_000),
  };

  const config: Config = {
    file,
    relay,
    dnsServers,
    smtp,
    tls,
    egress,
    socks5,
    proxyV2,
    derivedThrottle,
    listen,
    allowFrom: new AllowList(rules),
    secrets,
    logVerbose: bool('log_verbose', false),
    statusIntervalMs: duration('status_interval', 5000, 100, 3_600_000),
    adminSocket: path('admin_socket', DEFAULT_ADMIN_SOCKET),
    handshakeTimeoutMs: duration('handshake_timeout', 10_000, 100, 300_000),
    pingIntervalMs: duration('ping_interval', 10_000, 100, 600_000),
    shutdownTimeoutMs: duration('shutdown_timeout', DEFAULT_SHUTDOWN_TIMEOUT_MS, 0, 3_600_000),
    maxPendingHandshakes: integer('max_pending_handshakes', 1000, 1, 1_000_000),
    maxPendingHandshakesPerPeer: integer('max_pending_handshakes_per_peer', 100, 1, 1_000_000),
    metricsListen: listenList('metrics_listen'),
    metricsThrottleSeries: integer('metrics_throttle_series', 20, 0, 10_000),
  };
  errors.sort((a, b) => a.line - b.line || a.column - b.column);
  return errors.length > 0 ? { ok: false, errors } : { ok: true, config };
}

/** 127.0.0.0/8, ::1, and IPv4-mapped ::ffff:127.x; a wildcard (0.0.0.0, ::) is not loopback. */
export function isLoopbackAddress(host: string): boolean {
  return ipaddr.isValid(host) && ipaddr.process(host).range() === 'loopback';
}

/**
 * Warnings `check-config` prints (and the daemon logs at start): valid, but probably not meant.
 * Today: a plaintext native listener (tls = false) on a `listen` address that is not loopback.
 * `listenIgnored`: leave `listen` out (the daemon checks the addresses it actually bound, which
 * under socket activation are not `listen` at all: server/listeners.ts plaintextListenerWarnings).
 */
export function configWarnings(config: Config, opts: { listenIgnored?: boolean } = {}): string[] {
  const warnings: string[] = [];
  const relay = config.relay;
  if (relay !== null && !relay.requireAuth && opts.listenIgnored !== true) {
    for (const l of [...relay.listen, ...relay.lmtpListen]) {
      if (isLoopbackAddress(l.host)) continue;
      const shown = l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
      warnings.push(
        `${config.file}: warning: relay listener "${shown}" is not a loopback address and AUTH is not required: every host allow_from lets in can send mail from your source IPs through it; narrow allow_from to the MTA hosts, or set relay.accounts`,
      );
    }
  }
  if (config.tls.enabled || opts.listenIgnored === true) return warnings;
  for (const l of config.listen) {
    if (isLoopbackAddress(l.host)) continue;
    const shown = l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
    warnings.push(
      `${config.file}: warning: tls = false and listen "${shown}" is not a loopback address: control sessions and deliveries cross the network in plain text (readable, and a delivery can be hijacked after the handshake); remove tls = false unless this network is trusted`,
    );
  }
  return warnings;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0] ?? 0;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j] ?? 0;
      row[j] = Math.min(above + 1, (row[j - 1] ?? 0) + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length] ?? 0;
}

/** Names the directives whose effective value differs, for the reload log line. */
export function changedDirectives(before: Config, after: Config): string[] {
  const changed: string[] = [];
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  if (!same(before.listen, after.listen)) changed.push('listen');
  if (!same(before.metricsListen, after.metricsListen)) changed.push('metrics_listen');
  if (before.tls.enabled !== after.tls.enabled) changed.push('tls');
  // a renewed certificate in the same file counts as a change (it applies to new connections)
  const certId = (c: Config): string | null => (c.tls.files === null ? null : `${c.tls.files.certificateFile} ${c.tls.files.keyFile} ${c.tls.files.fingerprint256}`);
  if (certId(before) !== certId(after)) changed.push('tls_certificate_file');
  if (!same(before.allowFrom.rules.map((r) => r.text), after.allowFrom.rules.map((r) => r.text))) changed.push('allow_from');
  if (before.secrets.length !== after.secrets.length || before.secrets.some((s, i) => !s.equals(after.secrets[i] as SharedSecret))) {
    changed.push('auth_shared_secret');
  }
  const scalars: [string, keyof Config][] = [
    ['log_verbose', 'logVerbose'],
    ['status_interval', 'statusIntervalMs'],
    ['admin_socket', 'adminSocket'],
    ['handshake_timeout', 'handshakeTimeoutMs'],
    ['ping_interval', 'pingIntervalMs'],
    ['shutdown_timeout', 'shutdownTimeoutMs'],
    ['max_pending_handshakes', 'maxPendingHandshakes'],
    ['max_pending_handshakes_per_peer', 'maxPendingHandshakesPerPeer'],
    ['metrics_throttle_series', 'metricsThrottleSeries'],
  ];
  for (const [name, field] of scalars) if (before[field] !== after[field]) changed.push(name);
  const egressFields: Record<keyof EgressConfig, string> = {
    sourceIps: 'source_ips',
    ports: 'ports',
    allowPrivateDestinations: 'allow_private_destinations',
    connectTimeoutMs: 'connect_timeout',
    idleTimeoutMs: 'idle_timeout',
    maxTunnels: 'max_tunnels',
    throttleWaitTimeoutMs: 'throttle_wait_timeout',
  };
  for (const [field, name] of Object.entries(egressFields) as [keyof EgressConfig, string][]) {
    if (!same(before.egress[field], after.egress[field])) changed.push(`egress.${name}`);
  }
  // SOCKS5 passwords are compared but never shown
  if (!same(before.socks5, after.socks5)) changed.push('socks5');
  const proxyV2 = (c: Config) => c.proxyV2 && { listen: c.proxyV2.listen, allowFrom: c.proxyV2.allowFrom?.rules.map((r) => r.text) ?? null };
  if (!same(proxyV2(before), proxyV2(after))) changed.push('proxy_v2');
  if (!same(before.derivedThrottle, after.derivedThrottle)) changed.push('derived_throttle');
  if (!same(before.smtp, after.smtp)) changed.push('smtp');
  const relay = (c: Config) => c.relay && { ...c.relay, ehloNames: [...c.relay.ehloNames], sourceBySenderDomain: [...c.relay.sourceBySenderDomain], sourceByLocalAddress: [...c.relay.sourceByLocalAddress] };
  if (!same(relay(before), relay(after))) changed.push('relay');
  if (!same(before.dnsServers, after.dnsServers)) changed.push('dns_servers');
  return changed;
}
