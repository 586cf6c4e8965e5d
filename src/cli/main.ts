#!/usr/bin/env node
// mtaproxy command line: run the daemon, or talk to it, or check a config.
import { randomBytes } from 'node:crypto';
import { lstatSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { parse as parseToml } from 'smol-toml';
import { configWarnings, DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG_PATH, DIRECTIVES, formatConfigError, TABLES } from '../config/parse.js';
import { loadConfigFile } from '../config/load.js';
import { chooseSink, createLogger } from '../log/logger.js';
import type { SharedSecret } from '../config/secret.js';
import { Daemon } from '../server/daemon.js';
import { forgetActivation, parseActivation } from '../systemd/activation.js';
import { createNotifier } from '../systemd/notify.js';
import type { AdminCommand, AdminReply, AdminRequest } from '../protocol/admin.js';
import { adminSocketsToTry, defaultAdminSockets, isDefaultAdminSocket } from '../server/admin-path.js';
import { askDaemon } from './admin-client.js';
import { simulate } from './simulate.js';
import { generateSelfSigned } from '../config/x509.js';
import { startHeapPolicy } from './heap-policy.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const HELP = `mtaproxy ${VERSION} - outbound SMTP egress proxy for clusters of MTAs

Usage:
  mtaproxy [run] [--config-filename=PATH]   run the daemon (default config: ${DEFAULT_CONFIG_PATH})
  mtaproxy check-config [PATH]              validate a config file; prints OK or every error (exit 0/1)
  mtaproxy reload [--config-filename=PATH]  ask the running daemon to reload its config; exit 1 with
                                            the reason if it was rejected (the old config stays)
  mtaproxy status [--config-filename=PATH] [--json]
                                            print the daemon's live status lines (--json: their
                                            fields and the smtp pool, as one JSON object)
  mtaproxy status --throttles [--limit=N] [--key=TEXT] [--json]
                                            every throttle: effective limits and mode, slots in
                                            use, messages left in the bucket, waiting requests,
                                            each session's declaration and backlog; the busiest
                                            N (default 100, at most 1000) whose key contains TEXT
  mtaproxy gen-secret                       print a fresh random auth_shared_secret
  mtaproxy gen-cert CERT_FILE KEY_FILE      write a new self-signed TLS pair for tls_certificate_file
                                            and tls_key_file (key mode 0600); refuses to overwrite;
                                            prints the SHA-256 fingerprint MTAs may pin
  mtaproxy simulate [--config-filename=PATH] [--mtas=3] [--seconds=10] [--max-connections=4]
                    [--mode=sum|average] [--throttle=sim] [--source=IP]
                                            run simulated MTAs with changing backlogs against the
                                            daemon of that config (its first listen address, secret,
                                            first egress.source_ips entry) and print its status
                                            lines and the share each MTA got

Options:
  -c, --config-filename=PATH  config file (TOML)
      --admin-socket=PATH     admin socket for reload/status (default: the config's admin_socket,
                              else ${DEFAULT_ADMIN_SOCKET}, else $XDG_RUNTIME_DIR/mtaproxy/admin.sock)
  -h, --help                  this help
  -V, --version               print the version

Signals: SIGHUP reloads (like "mtaproxy reload"), SIGTERM/SIGINT stop gracefully.
Under systemd the listening sockets may be passed by socket activation (mtaproxy.socket).

Config directives:
${Object.entries(DIRECTIVES).map(([key, d]) => `  ${key.padEnd(33)}${d.help}`).join('\n')}
${Object.entries(TABLES).map(([table, keys]) => `\n[${table}]\n${Object.entries(keys).map(([key, d]) => `  ${key.padEnd(33)}${d.help}`).join('\n')}`).join('\n')}
`;

function fail(message: string, code = 1): never {
  process.stderr.write(`mtaproxy: ${message}\n`);
  process.exit(code);
}

function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

function adminSocketPath(configFile: string, explicit: string | undefined): string {
  if (explicit !== undefined) return explicit;
  let text: string;
  try {
    text = readFileSync(configFile, 'utf8');
  } catch {
    return DEFAULT_ADMIN_SOCKET;
  }
  // Lenient on purpose: the file may be the broken config that reload is about to report, so a
  // TOML syntax error elsewhere must not send us to the wrong socket.
  try {
    const raw = parseToml(text) as Record<string, unknown>;
    return typeof raw.admin_socket === 'string' ? raw.admin_socket : DEFAULT_ADMIN_SOCKET;
  } catch {
    return /^\s*admin_socket\s*=\s*["']([^"']+)["']/m.exec(text)?.[1] ?? DEFAULT_ADMIN_SOCKET;
  }
}

/**
 * Asks the daemon on the first admin socket that answers, in the order the daemon itself tries
 * them (admin-path.ts); when none does, says where it looked.
 */
async function askFirst(configured: string, command: AdminCommand | AdminRequest): Promise<AdminReply> {
  const paths = adminSocketsToTry(configured);
  const looked: string[] = [];
  let firstError: string | null = null;
  for (const path of paths) {
    try {
      lstatSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      looked.push(`${path}: ${code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'permission denied (run as root or the daemon\'s user)' : (err as Error).message}`);
      firstError ??= `cannot reach the daemon's admin socket ${path}: is mtaproxy running?`;
      continue;
    }
    try {
      return await askDaemon(path, command);
    } catch (err) {
      const message = (err as Error).message;
      const prefix = `cannot reach the daemon's admin socket ${path}: `;
      looked.push(message.startsWith(prefix) ? `${path}: ${message.slice(prefix.length)}` : message);
      firstError ??= message;
    }
  }
  // a non-default admin_socket is where the daemon should be: its error says it all
  if (!isDefaultAdminSocket(configured)) fail(firstError ?? `cannot reach the daemon's admin socket ${configured}`);
  if (process.env.XDG_RUNTIME_DIR === undefined) looked.push('($XDG_RUNTIME_DIR/mtaproxy/admin.sock not tried: XDG_RUNTIME_DIR is not set)');
  fail(
    `no mtaproxy daemon answered. Looked for its admin socket at:\n${looked.map((l) => `  ${l}\n`).join('')}` +
      'Is mtaproxy running? Run this as the daemon\'s user or as root. A daemon that started without an admin socket (it logs why) still reloads on SIGHUP.',
  );
}

async function run(configFile: string): Promise<void> {
  const { sink, kind } = chooseSink();
  const log = createLogger(sink, false);
  const loaded = loadConfigFile(configFile);
  if (!loaded.ok) {
    for (const e of loaded.errors) log.error({ mtaproxy_event: 'config_error' }, formatConfigError(e));
    fail(`${configFile} is not valid (${loaded.errors.length} error${loaded.errors.length > 1 ? 's' : ''}):\n${loaded.errors.map(formatConfigError).join('\n')}`);
  }
  const config = loaded.config;
  log.level = config.logVerbose ? 'debug' : 'info';
  const activation = parseActivation(process.env, process.pid);
  if (activation !== null && !activation.ok) fail(`socket activation: ${activation.error}`);
  forgetActivation(process.env);
  const notifier = createNotifier();
  const daemon = new Daemon({ config, log, notifier, passed: activation?.sockets ?? null });

  // Before READY=1: Node's default action for SIGHUP is to exit.
  process.on('SIGHUP', () => {
    void daemon.reload();
  });
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    void daemon.shutdown(signal).then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('uncaughtException', (err) => {
    log.fatal({ mtaproxy_event: 'crash', err: err.stack ?? String(err) }, `internal error: ${err.message}`);
    process.exit(70);
  });

  // the daemon's GC sizing (./heap.ts says why), moved as the live heap grows and shrinks
  const heap = startHeapPolicy((percent, live) => {
    const mib = Math.round(live / 1024 / 1024);
    log.info({ mtaproxy_event: 'heap_growing_factor', heap_growing_percent: percent, live_heap_mib: mib }, percent === 0 ? `heap: ${mib} MiB live after a full collection: V8's own growing factor` : `heap: ${mib} MiB live after a full collection: growing factor ${1 + percent / 100}`);
  });
  log.info({ mtaproxy_event: 'starting', version: VERSION, config: configFile, log_sink: kind, heap_growing_percent: heap.percent() }, `mtaproxy ${VERSION} starting with ${configFile}`);
  try {
    await daemon.start();
  } catch (err) {
    log.error({ mtaproxy_event: 'start_failed' }, (err as Error).message);
    fail((err as Error).message);
  }
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        'config-filename': { type: 'string', short: 'c' },
        'admin-socket': { type: 'string' },
        mtas: { type: 'string' },
        seconds: { type: 'string' },
        'max-connections': { type: 'string' },
        mode: { type: 'string' },
        throttle: { type: 'string' },
        source: { type: 'string' },
        throttles: { type: 'boolean' },
        json: { type: 'boolean' },
        limit: { type: 'string' },
        key: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'V' },
      },
    });
  } catch (err) {
    fail(`${(err as Error).message}\nTry "mtaproxy --help".`, 2);
  }
  const { values, positionals } = parsed;
  if (values.help) return void process.stdout.write(HELP);
  if (values.version) return void process.stdout.write(`${VERSION}\n`);
  const [command = 'run', ...rest] = positionals;
  const configFile = values['config-filename'] ?? DEFAULT_CONFIG_PATH;
  const tooMany = (max: number): void => {
    if (rest.length > max) fail(`unexpected argument "${rest[max]}"\nTry "mtaproxy --help".`, 2);
  };

  switch (command) {
    case 'run':
      tooMany(0);
      return run(configFile);
    case 'check-config': {
      tooMany(1);
      const file = rest[0] ?? configFile;
      const result = loadConfigFile(file);
      if (result.ok) {
        for (const warning of configWarnings(result.config)) process.stdout.write(`${warning}\n`);
        return void process.stdout.write(`${file}: OK\n`);
      }
      process.stderr.write(`${result.errors.map(formatConfigError).join('\n')}\n`);
      process.exit(1);
      return;
    }
    case 'reload':
    case 'status': {
      tooMany(0);
      const statusOnly = (['throttles', 'json', 'limit', 'key'] as const).find((o) => values[o] !== undefined);
      if (command === 'reload' && statusOnly !== undefined) fail(`--${statusOnly} is an option of "mtaproxy status"\nTry "mtaproxy --help".`, 2);
      const throttlesOnly = (['limit', 'key'] as const).find((o) => values[o] !== undefined);
      if (throttlesOnly !== undefined && values.throttles !== true) fail(`--${throttlesOnly} needs --throttles\nTry "mtaproxy --help".`, 2);
      if (values.limit !== undefined && !/^\d+$/.test(values.limit)) fail('--limit must be a whole number', 2);
      const request: AdminRequest =
        command === 'reload' ? { command } :
        values.throttles === true ? { command: 'throttles', ...(values.limit === undefined ? {} : { limit: Number(values.limit) }), ...(values.key === undefined ? {} : { key: values.key }) } :
        { command };
      const explicit = values['admin-socket'];
      const socketPath = adminSocketPath(configFile, explicit);
      const reply = explicit !== undefined ? await askDaemon(explicit, request).catch((err: Error) => fail(err.message)) : await askFirst(socketPath, request);
      if (command === 'status' && reply.ok && values.json === true) {
        if (reply.data === undefined) fail('the daemon sent no structured status (a daemon older than this command? restart it)');
        return void process.stdout.write(`${JSON.stringify(reply.data, null, 2)}\n`);
      }
      if (command === 'status' && reply.ok) return void process.stdout.write(`${(reply.lines ?? []).join('\n')}\n`);
      if (reply.ok) return void process.stdout.write(`${reply.message}\n`);
      process.stderr.write(`mtaproxy: ${reply.message}\n`);
      for (const e of reply.errors ?? []) process.stderr.write(`  ${e}\n`);
      process.exit(1);
      return;
    }
    case 'simulate': {
      tooMany(0);
      const loaded = loadConfigFile(configFile);
      if (!loaded.ok) fail(`${configFile} is not valid:\n${loaded.errors.map(formatConfigError).join('\n')}`);
      const c = loaded.config;
      const listen = c.listen[0];
      const source = values.source ?? c.egress.sourceIps[0];
      if (listen === undefined) fail(`${configFile} has no listen address`);
      if (source === undefined) fail(`${configFile} has no egress.source_ips (or pass --source=IP)`);
      const num = (v: string | undefined, fallback: number, name: string): number => {
        if (v === undefined) return fallback;
        if (!/^\d+$/.test(v) || Number(v) < 1) fail(`--${name} must be a positive whole number`, 2);
        return Number(v);
      };
      const mode = values.mode ?? 'sum';
      if (mode !== 'sum' && mode !== 'average') fail('--mode must be sum or average', 2);
      await simulate({
        host: listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host === '::' ? '::1' : listen.host,
        port: listen.port,
        secret: (c.secrets[0] as SharedSecret).key().toString('utf8'),
        // the same config the daemon reads: its listeners are TLS unless tls = false
        tls: c.tls.enabled,
        mtas: num(values.mtas, 3, 'mtas'),
        seconds: num(values.seconds, 10, 'seconds'),
        source,
        throttle: values.throttle ?? 'sim',
        maxConnections: num(values['max-connections'], 4, 'max-connections'),
        mode,
        adminSocket: values['admin-socket'] ?? (isDefaultAdminSocket(c.adminSocket) ? (defaultAdminSockets().find(isSocket) ?? c.adminSocket) : c.adminSocket),
        out: (line) => process.stdout.write(`${line}\n`),
      });
      return;
    }
    case 'gen-cert': {
      tooMany(2);
      const [certFile, keyFile] = rest;
      if (certFile === undefined || keyFile === undefined) return fail('usage: mtaproxy gen-cert CERT_FILE KEY_FILE', 2);
      const pair = generateSelfSigned(hostname());
      try {
        // 'wx': never overwrite a pair MTAs may have pinned; the key is private from its first byte
        writeFileSync(keyFile, pair.key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
      } catch (err) {
        return fail(`cannot write ${keyFile}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'it exists (remove it to make a new pair)' : (err as Error).message}`, 1);
      }
      try {
        writeFileSync(certFile, pair.cert, { mode: 0o644, flag: 'wx' });
      } catch (err) {
        unlinkSync(keyFile);
        return fail(`cannot write ${certFile}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'it exists (remove it to make a new pair)' : (err as Error).message}`, 1);
      }
      return void process.stdout.write(`${certFile}: sha256 fingerprint ${pair.fingerprint256}\n`);
    }
    case 'gen-secret':
      tooMany(0);
      // 32 random bytes, base64url: 43 characters, safe in TOML strings and shell
      return void process.stdout.write(`${randomBytes(32).toString('base64url')}\n`);
    default:
      fail(`unknown command "${command}"\nTry "mtaproxy --help".`, 2);
  }
}

void main(process.argv.slice(2));
