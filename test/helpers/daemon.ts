// Runs the built daemon (dist/) as a child process with a temporary config, the way an operator
// would, and reads its stdout log lines.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const CLI = join(ROOT, 'dist/cli/main.js');
export const SECRET = 'test-secret-0123456789-abcdefghijklmnop';
export const OTHER_SECRET = 'other-secret-0123456789-abcdefghijklmn';

export interface RunningDaemon {
  proc: ChildProcess;
  dir: string;
  configFile: string;
  adminSocket: string;
  port: number;
  /** every stdout line so far */
  lines: string[];
  /** resolves with the first line (now or later) matching `re` */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  writeConfig(text: string): void;
  cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/** The daemon's native listeners speak TLS (the default) unless `tls: false`. */
export function configText(opts: { listen?: string; secret?: string; extra?: string; adminSocket: string; tls?: boolean }): string {
  return [
    ...(opts.tls === false ? ['tls = false'] : []),
    `listen = "${opts.listen ?? '127.0.0.1:0'}"`,
    'allow_from = ["127.0.0.0/8"]',
    `auth_shared_secret = "${opts.secret ?? SECRET}"`,
    `admin_socket = "${opts.adminSocket}"`,
    opts.extra ?? '',
  ].join('\n');
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Temp dirs made by tempDir() in this test file; test/helpers/cleanup.ts removes them after it. */
export const madeTempDirs: string[] = [];

/** A fresh temp dir, removed after the test file (a daemon's stop() removes its own at once). */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mtaproxy-test-'));
  madeTempDirs.push(dir);
  return dir;
}

/** Collects a child's stdout and stderr lines; waitForLine resolves with the first (now or later) matching line. */
export function collectLines(proc: ChildProcess): {
  lines: string[];
  exited: Promise<number | null>;
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
} {
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  let partial = '';
  const onOutput = (chunk: Buffer): void => {
    partial += chunk.toString('utf8');
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.re.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  };
  proc.stdout?.on('data', onOutput);
  proc.stderr?.on('data', onOutput);
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const waitForLine = (re: RegExp, timeoutMs = 5000): Promise<string> => {
    const found = lines.find((l) => re.test(l));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no log line matching ${re} within ${timeoutMs}ms; got:\n${lines.join('\n')}`)), timeoutMs);
      exited.then(() => setTimeout(() => reject(new Error(`exited before a line matching ${re}; got:\n${lines.join('\n')}`)), 100)).catch(() => {});
      waiters.push({ re, resolve: (l) => { clearTimeout(timer); resolve(l); } });
    });
  };
  return { lines, exited, waitForLine };
}

/**
 * `command`: a socket-activating wrapper (systemd-socket-activate …): the daemon starts only at the
 * first connection. `prefix`: a plain wrapper (prlimit …) that execs the daemon at once.
 */
export async function startDaemon(opts: { extra?: string; secret?: string; listen?: string; tls?: boolean; env?: NodeJS.ProcessEnv; command?: string[]; prefix?: string[] } = {}): Promise<RunningDaemon> {
  const dir = tempDir();
  const configFile = join(dir, 'mtaproxy.toml');
  const adminSocket = join(dir, 'admin.sock');
  writeFileSync(configFile, configText({ ...opts, adminSocket }));
  const argv = [...(opts.command ?? opts.prefix ?? []), process.execPath, CLI, `--config-filename=${configFile}`];
  const proc = spawn(argv[0] as string, argv.slice(1), { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const { lines, exited, waitForLine } = collectLines(proc);
  // under systemd-socket-activate the daemon is exec'd only at the first connection
  const startedOrFailed = await Promise.race([
    waitForLine(opts.command ? /^Listening on / : /mtaproxy started|not valid|cannot listen|socket activation/, 10_000),
    exited.then((code) => `exited ${code}`),
  ]);
  if (!/mtaproxy started/.test(startedOrFailed) && !opts.command) throw new Error(`daemon did not start: ${startedOrFailed}\n${lines.join('\n')}`);
  const portLine = lines.find((l) => / listener: native on /.test(l));
  const port = Number(/:(\d+) /.exec(portLine ?? '')?.[1] ?? 0);
  return {
    proc,
    dir,
    configFile,
    adminSocket,
    port,
    lines,
    waitForLine,
    writeConfig: (text) => writeFileSync(configFile, text),
    cli: (args) => runCli([...args, `--config-filename=${configFile}`]),
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const code = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}
