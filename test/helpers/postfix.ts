// A private, throwaway Postfix (Debian's `postfix` package, >= 3.4 for postlogd) as an SMTP
// *destination* on loopback, for the tests and benchmarks of shared SMTP connections (issue 11).
//
// Each instance lives in its own temp dir (config, queue, data, log, delivered mail, a self-signed
// certificate made with openssl) and never touches /etc/postfix, the system instance or port 25:
// `postfix -c DIR/etc start-fg` runs its own master(8) with its own anvil, qmgr and postlogd, and
// the only listener is the smtpd service `ADDRESS:PORT` in its master.cf, so any number of
// instances run at once, each on its own 127.0.0.x:port. Root is needed (Postfix starts as root).
// The instance is started by a small sh supervisor holding a pipe from this process: stop() asks it
// to SIGTERM the master (which takes all its children with it) and then removes the dir; if this
// process dies without stop() (a crashed or killed test worker), the pipe closes and the supervisor
// stops Postfix and removes the dir by itself.
//
// Postfix is configured as a plain MX for `domains` (default dest.test): any recipient is accepted
// except `reject-*@` (550 5.1.1) and `defer-*@` (450 4.2.0), other domains get 554 5.7.1 Relay access denied;
// STARTTLS is offered (`tls: false` turns it off); `smtpd_client_connection_count_limit` is
// `connectionLimit` (0 = none) and, importantly, `smtpd_client_event_limit_exceptions` is emptied:
// by default it is $mynetworks, which includes 127.0.0.0/8, so loopback clients would be exempt
// from the limit. At the limit Postfix greets the extra connection with
// `421 4.7.0 <hostname> Error: too many connections from <ip>` and closes it. Accepted mail goes
// through a pipe(8) transport to a script that writes each message (one per recipient) into a
// maildir-like dir; messages() reads them back: `raw` is what Postfix delivered (its Received:
// header first, LF line ends, no dot-stuffing), `data` is what the client sent inside DATA (that
// Received: header removed, lines ended with CRLF again). Postfix stores lines, not bytes, so a bare
// CR or LF the client sent is not reproduced; everything else is (dot-leading lines, 8-bit bytes,
// long lines, 10 MB). `delivery: 'discard'` drops accepted mail instead (for benchmarks).
// Logging goes to DIR/maillog through postlogd (`maillog_file`), and stats() counts, per client IP
// and per SMTP session, the lines of that log (see parseLog):
//   smtpd[pid]: connect from unknown[127.0.0.1]
//   smtpd[pid]: Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher ...
//     (a resumed session is logged the same but without `server-digest ...`: no certificate signature)
//   smtpd[pid]: 5F1A62104F2: client=unknown[127.0.0.1]
//   qmgr[pid]: 5F1A62104F2: from=<a@src.test>, size=312, nrcpt=1 (queue active)   <- a transaction
//   smtpd[pid]: NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 <reject-x@dest.test>: ...
//     (`5F1A62104F2: reject: ...` once the transaction has an accepted recipient)
//   smtpd[pid]: warning: Connection concurrency limit exceeded: 3 from unknown[127.0.0.1] for service ...
//   smtpd[pid]: disconnect from unknown[127.0.0.1] ehlo=2 starttls=1 mail=2 rcpt=2 data=2 quit=1 commands=10
// A readiness probe (EHLO, STARTTLS, QUIT) runs before startPostfix() resolves; its lines are not
// counted. Log lines arrive asynchronously: wait with waitForStats()/waitForMessages(), never sleep.
// Set MTAPROXY_KEEP_POSTFIX=1 to keep the dir after stop() for a post-mortem.
// Only node: imports, so a plain-JS bench can load it through esbuild (a devDependency):
//   await (await import('esbuild')).build({ entryPoints: ['test/helpers/postfix.ts'], bundle: true,
//     platform: 'node', format: 'esm', outfile: '/tmp/x/postfix.mjs' }); then import() that file.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, writeFileSync, chmodSync, chownSync, rmSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

const POSTFIX = '/usr/sbin/postfix';
const MASTER = '/usr/lib/postfix/sbin/master';

/** Why startPostfix() cannot work here, or null if it can (postfix installed, running as root). */
export function postfixUnavailable(): string | null {
  if (!existsSync(POSTFIX) || !existsSync(MASTER)) return `postfix is not installed (${POSTFIX}); apt-get install postfix (see README's test command)`;
  if (process.getuid?.() !== 0) return 'the Postfix test destination needs root';
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    return 'openssl is not installed';
  }
  return null;
}

export interface PostfixOptions {
  /** loopback address smtpd listens on; default 127.0.0.1 */
  address?: string;
  /** default: a free port on `address` */
  port?: number;
  /** smtpd_client_connection_count_limit (per client IP, enforced by anvil); default 0 = no limit */
  connectionLimit?: number;
  /** offer STARTTLS with a self-signed certificate; default true */
  tls?: boolean;
  /** message_size_limit in bytes; default 50 MiB */
  maxMessageSize?: number;
  /** domains accepted for any recipient; default ['dest.test'] */
  domains?: string[];
  /** myhostname (greeting, EHLO, certificate name); default `mx.${domains[0]}` */
  hostname?: string;
  /** 'capture' (default) writes every delivered message for messages(); 'discard' drops it */
  delivery?: 'capture' | 'discard';
  /** more main.cf parameters, applied last */
  mainCf?: Record<string, string>;
  /** keep the dir after stop() (also MTAPROXY_KEEP_POSTFIX=1) */
  keep?: boolean;
}

export interface DeliveredMessage {
  queueId: string;
  /** envelope sender, '' for <> */
  sender: string;
  recipient: string;
  /** IP address of the SMTP client that sent it */
  client: string;
  /** the message as Postfix delivered it: its Received: header first, LF line ends */
  raw: Buffer;
  /** the message as the client sent it in DATA: Postfix's Received: header removed, CRLF line ends */
  data: Buffer;
  file: string;
}

export interface SmtpSession {
  /** smtpd process id */
  pid: number;
  client: string;
  /** 'TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ...', null without STARTTLS */
  tls: string | null;
  /** the handshake resumed a TLS session (inferred: no certificate signature, so no `server-digest`) */
  tlsResumed: boolean;
  /** refused by the connection count limit (421 4.7.0) */
  refused: boolean;
  /** queue ids created in this session (a MAIL..RCPT accepted) */
  queueIds: string[];
  /** queue ids of those that were committed (DATA accepted) */
  transactions: number;
  /** recipients rejected in this session, as logged: '550 5.1.1 <reject-x@dest.test>: ...' */
  rejects: string[];
  /** the counters of the `disconnect from` line (`ehlo: '2'`, `rcpt: '1/2'`, ...), null while open */
  commands: Record<string, string> | null;
}

export interface ClientStats {
  connections: number;
  /** every STARTTLS handshake, full or resumed */
  tlsHandshakes: number;
  /** of which resumed a session (no certificate sent) */
  tlsResumed: number;
  transactions: number;
  disconnects: number;
  refused: number;
  rejectedRecipients: number;
}

export interface PostfixStats extends ClientStats {
  byClient: Record<string, ClientStats>;
  sessions: SmtpSession[];
}

/** A point in the log; stats(since) counts only what was logged after it. */
export interface LogMark {
  readonly offset: number;
}

export interface PostfixInstance {
  host: string;
  port: number;
  hostname: string;
  /** first of the accepted domains */
  domain: string;
  dir: string;
  /** the self-signed certificate smtpd presents (PEM), '' without TLS */
  certificatePem: string;
  stop(): Promise<void>;
  /** the whole maillog so far */
  log(): Promise<string>;
  mark(): Promise<LogMark>;
  stats(since?: LogMark): Promise<PostfixStats>;
  waitForStats(done: (s: PostfixStats) => boolean, opts?: { since?: LogMark; timeoutMs?: number }): Promise<PostfixStats>;
  /** resolves with the first log line (after `since`, default the start) matching `re` */
  waitForLogLine(re: RegExp, opts?: { since?: LogMark; timeoutMs?: number }): Promise<string>;
  /** delivered messages in delivery order ('capture' delivery) */
  messages(): Promise<DeliveredMessage[]>;
  /** resolves once at least `n` delivered messages (matching `filter`) are there */
  waitForMessages(n: number, opts?: { timeoutMs?: number; filter?: (m: DeliveredMessage) => boolean }): Promise<DeliveredMessage[]>;
}

export async function freeLoopbackPort(host: string): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

function idOf(user: string, flag: '-u' | '-g'): number {
  return Number(execFileSync('id', [flag, user], { encoding: 'utf8' }).trim());
}

const DELIVER_SH = `#!/bin/sh
# pipe(8) argv: OUTDIR QUEUE_ID SENDER RECIPIENT CLIENT_ADDRESS; the message on stdin.
set -eu
PATH=/usr/bin:/bin
umask 022
out="$1"
name="$(date +%s%N)-$2-$$"
printf 'queue_id=%s\\nsender=%s\\nrecipient=%s\\nclient=%s\\n' "$2" "$3" "$4" "$5" > "$out/tmp/$name.env"
cat > "$out/tmp/$name.eml"
mv "$out/tmp/$name.env" "$out/new/$name.env"
mv "$out/tmp/$name.eml" "$out/new/$name.eml"
`;

// Runs `postfix start-fg` and stops it when told on stdin ("stop") or when stdin closes (the
// harness's process died: then it also removes the instance dir).
const SUPERVISOR_SH = `
dir="$1"
cfg="$dir/etc"
pidfile="$dir/queue/pid/master.pid"
exec 3<&0
${POSTFIX} -c "$cfg" start-fg </dev/null >>"$dir/start-fg.out" 2>&1 &
fg=$!
(
  if read -r _ <&3; then :; else : > "$dir/orphaned"; fi
  while [ ! -s "$pidfile" ] && kill -0 "$fg" 2>/dev/null; do sleep 0.1; done
  pid=$(sed 1q "$pidfile" 2>/dev/null | tr -d ' ')
  [ -n "$pid" ] || exit 0
  kill -TERM "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL -- "-$pid" 2>/dev/null
  exit 0
) <&3 &
watch=$!
wait "$fg"
rc=$?
kill "$watch" 2>/dev/null
if [ -e "$dir/orphaned" ]; then rm -rf "$dir"; fi
exit $rc
`;

function mainCf(dir: string, o: Required<Omit<PostfixOptions, 'port' | 'keep' | 'mainCf'>> & { mainCf: Record<string, string> }): string {
  const p: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    syslog_name: `pf-${(dir.split('/').pop() ?? 'test').replace(/^mtaproxy-postfix-/, '')}`,
    maillog_file: join(dir, 'maillog'),
    // postlogd writes only under these prefixes (default /var, /dev/stdout)
    maillog_file_prefixes: dir,
    myhostname: o.hostname,
    mydomain: o.domains[0] ?? 'dest.test',
    myorigin: '$mydomain',
    mydestination: '',
    relay_domains: o.domains.join(', '),
    relay_recipient_maps: '',
    mynetworks: '',
    // inet_interfaces must name interface addresses (127.0.0.9 is not one, though it routes to lo):
    // the listener's own address is in master.cf
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    // deterministic logs and no DNS: "connect from unknown[127.0.0.1]"
    smtpd_peername_lookup: 'no',
    // never edit the client's headers (no added Date/Message-Id/From, no address rewriting)
    local_header_rewrite_clients: '',
    always_add_missing_headers: 'no',
    smtpd_banner: '$myhostname ESMTP Postfix',
    smtpd_relay_restrictions: 'permit_auth_destination, reject_unauth_destination',
    smtpd_recipient_restrictions: `check_recipient_access regexp:${join(dir, 'etc/recipient_access')}`,
    smtpd_client_connection_count_limit: String(o.connectionLimit),
    smtpd_client_connection_rate_limit: '0',
    smtpd_client_message_rate_limit: '0',
    smtpd_client_recipient_rate_limit: '0',
    smtpd_client_new_tls_session_rate_limit: '0',
    // the default is $mynetworks, which would exempt 127.0.0.0/8 from the limits above
    smtpd_client_event_limit_exceptions: '',
    smtpd_error_sleep_time: '0',
    in_flow_delay: '0',
    message_size_limit: String(o.maxMessageSize),
    mailbox_size_limit: '0',
    default_transport: o.delivery === 'capture' ? 'capture' : 'discard',
    relay_transport: o.delivery === 'capture' ? 'capture' : 'discard',
    capture_destination_recipient_limit: '1',
    smtpd_tls_security_level: o.tls ? 'may' : 'none',
    ...(o.tls ? { smtpd_tls_chain_files: `${join(dir, 'etc/key.pem')}, ${join(dir, 'etc/cert.pem')}` } : {}),
    smtpd_tls_loglevel: '1',
    ...o.mainCf,
  };
  return Object.entries(p).map(([k, v]) => `${k} = ${v}\n`).join('');
}

function masterCf(dir: string, address: string, port: number): string {
  const out = join(dir, 'out');
  return [
    `${address}:${port} inet n - n - - smtpd`,
    'cleanup   unix n - n - 0 cleanup',
    'qmgr      unix n - n 300 1 qmgr',
    'tlsmgr    unix - - n 1000? 1 tlsmgr',
    'rewrite   unix - - n - - trivial-rewrite',
    'bounce    unix - - n - 0 bounce',
    'defer     unix - - n - 0 bounce',
    'trace     unix - - n - 0 bounce',
    'verify    unix - - n - 1 verify',
    'flush     unix n - n 1000? 0 flush',
    'proxymap  unix - - n - - proxymap',
    'smtp      unix - - n - - smtp',
    'relay     unix - - n - - smtp',
    'lmtp      unix - - n - - lmtp',
    'showq     unix n - n - - showq',
    'error     unix - - n - - error',
    'retry     unix - - n - - error',
    'discard   unix - - n - - discard',
    'anvil     unix - - n - 1 anvil',
    'scache    unix - - n - 1 scache',
    'postlog   unix-dgram n - n - 1 postlogd',
    `capture   unix - n n - - pipe flags= null_sender= user=nobody argv=${join(out, 'deliver.sh')} ${out} \${queue_id} \${sender} \${recipient} \${client_address}`,
    '',
  ].join('\n');
}

const LINE = /^\S+ +\d+ [\d:]+ \S+ [^/\s]+\/([\w-]+)\[(\d+)\]: (.*)$/;
const PEER = '[^\\s\\[]*\\[([^\\]]+)\\]';
const CONNECT = new RegExp(`^connect from ${PEER}$`);
const DISCONNECT = new RegExp(`^disconnect from ${PEER}(.*)$`);
const TLS = new RegExp(`^\\w+ TLS connection established from ${PEER}: (.*)$`);
const CLIENT = new RegExp(`^([0-9A-F]+): client=${PEER}`);
const LIMIT = new RegExp(`^warning: Connection concurrency limit exceeded: \\d+ from ${PEER}`);
const REJECT = new RegExp(`^(?:NOQUEUE|[0-9A-F]+): reject: RCPT from ${PEER}: (\\d{3} .*?); from=`);
const COMMITTED = /^([0-9A-F]+): from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)$/;

function emptyClient(): ClientStats {
  return { connections: 0, tlsHandshakes: 0, tlsResumed: 0, transactions: 0, disconnects: 0, refused: 0, rejectedRecipients: 0 };
}

/** Counts connections, TLS handshakes, transactions, ... in a Postfix maillog (see the header). */
export function parseLog(text: string): PostfixStats {
  const sessions: SmtpSession[] = [];
  const open = new Map<number, SmtpSession>();
  const committed = new Set<string>();
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (m === null) continue;
    const [, program, pidText, msg] = m as unknown as [string, string, string, string];
    const pid = Number(pidText);
    if (program === 'qmgr') {
      const c = COMMITTED.exec(msg);
      if (c !== null) committed.add(c[1] as string);
      continue;
    }
    if (program !== 'smtpd') continue;
    let r: RegExpExecArray | null;
    if ((r = CONNECT.exec(msg)) !== null) {
      const s: SmtpSession = { pid, client: r[1] as string, tls: null, tlsResumed: false, refused: false, queueIds: [], transactions: 0, rejects: [], commands: null };
      sessions.push(s);
      open.set(pid, s);
      continue;
    }
    const s = open.get(pid);
    if (s === undefined) continue;
    if ((r = DISCONNECT.exec(msg)) !== null) {
      s.commands = Object.fromEntries((r[2] as string).trim().split(/\s+/).filter((w) => w.includes('=')).map((w) => w.split('=', 2) as [string, string]));
      open.delete(pid);
    } else if ((r = TLS.exec(msg)) !== null) {
      s.tls = r[2] as string;
      s.tlsResumed = !/ server-digest /.test(`${s.tls} `);
    }
    else if ((r = CLIENT.exec(msg)) !== null) s.queueIds.push(r[1] as string);
    else if (LIMIT.test(msg)) s.refused = true;
    else if ((r = REJECT.exec(msg)) !== null) s.rejects.push(r[2] as string);
  }
  const total = emptyClient();
  const byClient: Record<string, ClientStats> = {};
  for (const s of sessions) {
    s.transactions = s.queueIds.filter((q) => committed.has(q)).length;
    const c = (byClient[s.client] ??= emptyClient());
    for (const t of [total, c]) {
      t.connections += 1;
      t.tlsHandshakes += s.tls === null ? 0 : 1;
      t.tlsResumed += s.tlsResumed ? 1 : 0;
      t.transactions += s.transactions;
      t.disconnects += s.commands === null ? 0 : 1;
      t.refused += s.refused ? 1 : 0;
      t.rejectedRecipients += s.rejects.length;
    }
  }
  return { ...total, byClient, sessions };
}

/** The DATA content the client sent: Postfix's own first Received: header removed, CRLF line ends. */
export function clientData(raw: Buffer, hostname: string): Buffer {
  let text = raw.toString('latin1'); // byte-preserving
  const received = new RegExp(`^Received: [^\\n]*\\n(?:[ \\t][^\\n]*\\n)*`);
  const m = received.exec(text);
  if (m !== null && m[0].includes(`by ${hostname} (Postfix)`)) text = text.slice(m[0].length);
  return Buffer.from(text.replace(/\n/g, '\r\n'), 'latin1');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One SMTP session: greeting, EHLO, STARTTLS (if offered and wanted), EHLO, QUIT. */
async function probe(host: string, port: number, hostname: string, tls: boolean): Promise<void> {
  let socket: Socket = await new Promise<Socket>((resolve, reject) => {
    const s = netConnect({ host, port }, () => resolve(s));
    s.once('error', reject);
  });
  try {
    let buffer = '';
    let waiter: (() => void) | null = null;
    const onData = (d: Buffer): void => {
      buffer += d.toString('latin1');
      waiter?.();
    };
    const reply = async (): Promise<string> => {
      for (;;) {
        const m = /(?:^|\n)(\d{3}) [^\n]*\n/.exec(buffer);
        if (m !== null) {
          const all = buffer.slice(0, m.index + m[0].length);
          buffer = buffer.slice(m.index + m[0].length);
          return all;
        }
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`probe: no reply from ${host}:${port}, got ${JSON.stringify(buffer)}`)), 30_000);
          waiter = () => {
            clearTimeout(t);
            waiter = null;
            resolve();
          };
          socket.once('close', () => reject(new Error(`probe: ${host}:${port} closed, got ${JSON.stringify(buffer)}`)));
        });
      }
    };
    socket.on('data', onData);
    const expect = async (code: string, what: string): Promise<string> => {
      const r = await reply();
      if (!r.startsWith(code)) throw new Error(`probe: ${what}: ${r}`);
      return r;
    };
    await expect('220', 'greeting');
    socket.write('EHLO probe.invalid\r\n');
    const ehlo = await expect('250', 'EHLO');
    if (tls !== /\bSTARTTLS\b/.test(ehlo)) throw new Error(`probe: STARTTLS ${tls ? 'not ' : ''}offered: ${ehlo}`);
    if (tls) {
      socket.write('STARTTLS\r\n');
      await expect('220', 'STARTTLS');
      socket.off('data', onData);
      const plain = socket;
      socket = await new Promise<Socket>((resolve, reject) => {
        const t = tlsConnect({ socket: plain, servername: hostname, rejectUnauthorized: false }, () => resolve(t));
        t.once('error', reject);
      });
      socket.on('data', onData);
      socket.write('EHLO probe.invalid\r\n');
      await expect('250', 'EHLO after STARTTLS');
    }
    socket.write('QUIT\r\n');
    await expect('221', 'QUIT');
  } finally {
    socket.destroy();
  }
}

interface Started {
  proc: ChildProcess;
  exited: Promise<number | null>;
}

function launch(dir: string): Started {
  const proc = spawn('/bin/sh', ['-c', SUPERVISOR_SH, 'postfix-supervisor', dir], { detached: true, stdio: ['pipe', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  proc.stdin?.on('error', () => {});
  // a forgotten stop() must not keep the test process alive: its exit closes the pipe, and the
  // supervisor cleans up
  proc.unref();
  (proc.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  (proc.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  return { proc, exited };
}

async function readLog(dir: string): Promise<string> {
  try {
    return await readFile(join(dir, 'maillog'), 'utf8');
  } catch {
    return '';
  }
}

export async function startPostfix(options: PostfixOptions = {}): Promise<PostfixInstance> {
  const unavailable = postfixUnavailable();
  if (unavailable !== null) throw new Error(unavailable);
  const address = options.address ?? '127.0.0.1';
  const domains = options.domains ?? ['dest.test'];
  const o = {
    address,
    connectionLimit: options.connectionLimit ?? 0,
    tls: options.tls ?? true,
    maxMessageSize: options.maxMessageSize ?? 50 * 1024 * 1024,
    domains,
    hostname: options.hostname ?? `mx.${domains[0] ?? 'dest.test'}`,
    delivery: options.delivery ?? 'capture',
    mainCf: options.mainCf ?? {},
  };
  const keep = options.keep ?? process.env.MTAPROXY_KEEP_POSTFIX === '1';

  const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-postfix-'));
  chmodSync(dir, 0o755); // pipe(8) runs deliver.sh as nobody
  const etc = join(dir, 'etc');
  const out = join(dir, 'out');
  for (const d of [etc, join(dir, 'queue'), join(dir, 'data'), out, join(out, 'tmp'), join(out, 'new')]) mkdirSync(d, { recursive: true });
  chownSync(join(dir, 'data'), idOf('postfix', '-u'), idOf('postfix', '-g'));
  const nobody = [idOf('nobody', '-u'), idOf('nobody', '-g')] as const;
  for (const d of [out, join(out, 'tmp'), join(out, 'new')]) chownSync(d, nobody[0], nobody[1]);
  writeFileSync(join(out, 'deliver.sh'), DELIVER_SH, { mode: 0o755 });
  writeFileSync(join(etc, 'recipient_access'), '/^reject-/ 550 5.1.1 User unknown\n/^defer-/ 450 4.2.0 Try again later\n');
  let certificatePem = '';
  if (o.tls) {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '7',
      '-keyout', join(etc, 'key.pem'), '-out', join(etc, 'cert.pem'),
      '-subj', `/CN=${o.hostname}`, '-addext', `subjectAltName=DNS:${o.hostname},IP:${address}`,
    ], { stdio: 'ignore' });
    chmodSync(join(etc, 'key.pem'), 0o600);
    certificatePem = await readFile(join(etc, 'cert.pem'), 'utf8');
  }
  writeFileSync(join(etc, 'main.cf'), mainCf(dir, o));

  const cleanup = (): void => {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  };
  let started: Started | null = null;
  let port = 0;
  try {
    for (let attempt = 1; ; attempt++) {
      port = options.port ?? (await freeLoopbackPort(address));
      writeFileSync(join(etc, 'master.cf'), masterCf(dir, address, port));
      const s = launch(dir);
      started = s;
      const failure = await waitReady(s, dir, address, port, o.hostname, o.tls);
      if (failure === null) break;
      await stopSupervisor(s, dir);
      started = null;
      // someone took the free port between our probe bind and master's bind: try another one
      if (options.port === undefined && attempt < 3 && /Address already in use/.test(failure)) continue;
      throw new Error(`Postfix test instance in ${dir} did not start: ${failure}`);
    }
  } catch (e) {
    if (started !== null) await stopSupervisor(started, dir);
    cleanup();
    throw e;
  }
  const running = started;

  // the probe's session is not counted: start counting after its disconnect line
  const baseline: LogMark = { offset: Buffer.byteLength(await waitForLogLine(dir, /smtpd\[\d+\]: disconnect from /, 30_000)) };

  let stopping: Promise<void> | null = null;
  const instance: PostfixInstance = {
    host: address,
    port,
    hostname: o.hostname,
    domain: domains[0] ?? 'dest.test',
    dir,
    certificatePem,
    stop: () => {
      stopping ??= (async () => {
        await stopSupervisor(running, dir);
        cleanup();
      })();
      return stopping;
    },
    log: () => readLog(dir),
    mark: async () => ({ offset: Buffer.byteLength(await readLog(dir)) }),
    stats: async (since = baseline) => parseLog(Buffer.from(await readLog(dir)).subarray(since.offset).toString()),
    waitForStats: async (done, opts = {}) => {
      const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
      for (;;) {
        const s = await instance.stats(opts.since);
        if (done(s)) return s;
        if (Date.now() > deadline) throw new Error(`Postfix stats did not reach the expected state: ${JSON.stringify({ ...s, sessions: s.sessions.length })}`);
        await sleep(100);
      }
    },
    waitForLogLine: async (re, opts = {}) => {
      const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
      for (;;) {
        const text = Buffer.from(await readLog(dir)).subarray(opts.since?.offset ?? 0).toString();
        const hit = text.split('\n').find((l) => re.test(l));
        if (hit !== undefined) return hit;
        if (Date.now() > deadline) throw new Error(`no log line ${re} in ${dir}/maillog:\n${text.slice(-3000)}`);
        await sleep(100);
      }
    },
    messages: () => readMessages(out, o.hostname),
    waitForMessages: async (n, opts = {}) => {
      const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
      for (;;) {
        const all = await readMessages(out, o.hostname);
        const got = opts.filter === undefined ? all : all.filter(opts.filter);
        if (got.length >= n) return got;
        if (Date.now() > deadline) throw new Error(`${got.length} of ${n} messages delivered by Postfix in ${dir}; log:\n${(await readLog(dir)).slice(-3000)}`);
        await sleep(100);
      }
    },
  };
  return instance;
}

async function waitForLogLine(dir: string, re: RegExp, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readLog(dir);
    const lines = text.split('\n');
    const i = lines.findIndex((l) => re.test(l));
    if (i >= 0) return lines.slice(0, i + 1).join('\n') + '\n';
    if (Date.now() > deadline) throw new Error(`no log line ${re} in ${dir}/maillog:\n${text.slice(-3000)}`);
    await sleep(50);
  }
}

/** null when smtpd answers (and the probe passed), else why not */
async function waitReady(s: Started, dir: string, host: string, port: number, hostname: string, tls: boolean): Promise<string | null> {
  let exitCode: number | null | undefined;
  void s.exited.then((c) => (exitCode = c));
  const deadline = Date.now() + 60_000;
  let last = '';
  for (;;) {
    if (exitCode !== undefined) break;
    try {
      // the race: if master could not bind, someone else may be answering on the port
      await Promise.race([probe(host, port, hostname, tls), s.exited.then((c) => Promise.reject(new Error(`postfix start-fg exited (${c})`)))]);
      return null;
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
      // a refused connection means master has not bound yet; anything else is a real answer
      if (!/ECONNREFUSED/.test(last)) break;
    }
    if (Date.now() > deadline) break;
    await sleep(100);
  }
  let startOut = '';
  try {
    startOut = await readFile(join(dir, 'start-fg.out'), 'utf8');
  } catch {
    /* none */
  }
  return `${exitCode !== undefined ? `postfix start-fg exited (${exitCode})` : last}\n${startOut}${await readLog(dir)}`;
}

async function stopSupervisor(s: Started, dir: string): Promise<void> {
  const { proc } = s;
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.stdin?.end('stop\n');
    const timedOut = await Promise.race([s.exited.then(() => false), sleep(20_000).then(() => true)]);
    if (timedOut) {
      // last resort: the master's process group, then the supervisor's
      try {
        const pid = Number((await readFile(join(dir, 'queue/pid/master.pid'), 'utf8')).trim());
        if (pid > 1) process.kill(-pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      try {
        if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await s.exited;
    }
  }
}

async function readMessages(out: string, hostname: string): Promise<DeliveredMessage[]> {
  const dir = join(out, 'new');
  const names = (await readdir(dir)).filter((n) => n.endsWith('.eml')).sort((a, b) => {
    const [x, y] = [BigInt(a.split('-')[0] ?? '0'), BigInt(b.split('-')[0] ?? '0')];
    return x < y ? -1 : x > y ? 1 : a < b ? -1 : 1;
  });
  return Promise.all(
    names.map(async (name) => {
      const file = join(dir, name);
      const env = Object.fromEntries(
        (await readFile(file.replace(/\.eml$/, '.env'), 'utf8')).split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as [string, string]),
      );
      const raw = await readFile(file);
      return { queueId: env.queue_id ?? '', sender: env.sender ?? '', recipient: env.recipient ?? '', client: env.client ?? '', raw, data: clientData(raw, hostname), file };
    }),
  );
}
