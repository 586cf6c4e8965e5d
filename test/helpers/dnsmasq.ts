// A private DNS server for the relay tests: Debian's dnsmasq (`dnsmasq-base`, no service, no
// config file) in the foreground on a free loopback UDP/TCP port, authoritative for the names it
// is given and NXDOMAIN for anything else under `localDomain` (default "test"); no upstream.
// MX records: { "a.test": [[10, "mx-a.test"]] }; a null MX (RFC 7505) is [[0, "."]].
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createSocket } from 'node:dgram';

const DNSMASQ = '/usr/sbin/dnsmasq';

export function dnsmasqUnavailable(): string | null {
  if (!existsSync(DNSMASQ)) return `dnsmasq is not installed (${DNSMASQ}); apt-get install dnsmasq-base (see README's test command)`;
  if (spawnSync(DNSMASQ, ['--version']).status !== 0) return 'dnsmasq does not run';
  return null;
}

export interface DnsServer {
  /** "127.0.0.1:PORT", for dns_servers */
  readonly server: string;
  readonly port: number;
  stop(): Promise<void>;
}

async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

type DnsOptions = { mx?: Record<string, [number, string][]>; hosts?: Record<string, string>; localDomain?: string };

/** Starts dnsmasq; a port found free for UDP may be taken for TCP (dnsmasq binds both): then another. */
export async function startDns(o: DnsOptions): Promise<DnsServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(o, await freeUdpPort());
    } catch (err) {
      if (attempt >= 5) throw err;
    }
  }
}

async function startOnce(o: DnsOptions, port: number): Promise<DnsServer> {
  const args = ['-k', `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv', '--no-hosts', '--conf-file=/dev/null', '--pid-file=', `--local=/${o.localDomain ?? 'test'}/`, '--log-facility=-', '--cache-size=0'];
  for (const [domain, records] of Object.entries(o.mx ?? {})) for (const [pref, host] of records) args.push(`--mx-host=${domain},${host},${pref}`);
  for (const [name, ip] of Object.entries(o.hosts ?? {})) args.push(`--host-record=${name},${ip}`);
  // under a tiny sh supervisor holding a pipe from this process: if the test worker dies without
  // stop(), the pipe closes and dnsmasq is killed (it must not outlive the tests)
  const supervisor = `exec 3<&0; "$0" "$@" </dev/null & pid=$!; (read -r _ <&3; kill "$pid" 2>/dev/null) & wait "$pid"`;
  const proc: ChildProcess = spawn('/bin/sh', ['-c', supervisor, DNSMASQ, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      clearInterval(check);
      proc.stdin?.end();
      reject(new Error(`dnsmasq did not start: ${out}`));
    }, 5000);
    const check = setInterval(() => {
      if (/started, version/.test(out)) {
        clearInterval(check);
        clearTimeout(t);
        resolve();
      }
    }, 20);
    proc.once('exit', (code) => {
      clearInterval(check);
      clearTimeout(t);
      reject(new Error(`dnsmasq exited ${code}: ${out}`));
    });
  });
  return {
    server: `127.0.0.1:${port}`,
    port,
    async stop() {
      // closing the pipe makes the supervisor kill dnsmasq; the supervisor then exits
      proc.stdin?.end();
      await exited;
    },
  };
}
