// Boot a real systemd (PID 1 of new pid/mount/uts/ipc/cgroup namespaces) for end-to-end tests.
// The shell side lives in test/systemd/boot.sh and inner.sh; see there for what the namespace looks
// like. Needs root. The network namespace and the root filesystem are the host's.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const BOOT_SH = fileURLToPath(new URL('../systemd/boot.sh', import.meta.url));
/** Commands run inside get this environment, not the test runner's. */
const EXEC_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C.UTF-8',
  SYSTEMD_PAGER: '',
  SYSTEMD_COLORS: '0',
};

export interface ExecOptions {
  /** Written to the command's stdin (stdin is empty otherwise). */
  input?: string;
  /** Kill nsenter after this long and reject (default 30 000 ms). */
  timeoutMs?: number;
  /** Added to the clean environment the command gets. */
  env?: Record<string, string>;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface WaitForOptions {
  timeoutMs?: number; // default 10 000
  intervalMs?: number; // default 100
}

export interface SystemdNs {
  /** Host pid of the namespaced systemd. */
  readonly pid: number;
  /** Host pid of the unshare process, parent of systemd. */
  readonly unsharePid: number;
  /** The cgroup2 directory (on the host) that is "/" inside. */
  readonly cgroup: string;
  /** Absolute path, visible at the same place inside; systemd-ns.log there has systemd's console output. */
  readonly workdir: string;
  /** Run a command inside (`nsenter -t PID -a`). Resolves with any exit code; rejects on timeout only. */
  exec(cmd: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Write /run/systemd/system/NAME inside, then `systemctl daemon-reload`. */
  installUnit(name: string, text: string): Promise<void>;
  /** Poll `check` until it returns true; rejects after the timeout, naming `what`. */
  waitFor(what: string, check: () => Promise<boolean>, opts?: WaitForOptions): Promise<void>;
  /** Power off, wait (bounded) until every process is gone, remove the cgroup. Safe to call twice. */
  shutdown(): Promise<void>;
}

/** Whether this machine can boot a namespaced systemd; `reason` says why not. */
export function systemdNsAvailable(): { ok: boolean; reason?: string } {
  if (process.platform !== 'linux') return { ok: false, reason: 'not Linux' };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root' };
  if (!existsSync('/lib/systemd/systemd')) return { ok: false, reason: 'no /lib/systemd/systemd' };
  if (!existsSync('/sys/fs/cgroup/cgroup.controllers') && !existsSync('/sys/fs/cgroup/unified/cgroup.controllers')) {
    return { ok: false, reason: 'no cgroup2 hierarchy' };
  }
  for (const tool of ['nsenter', 'logger']) {
    if (spawnSync(tool, ['--version']).error) return { ok: false, reason: `no ${tool} (util-linux)` };
  }
  const probe = spawnSync('unshare', ['--pid', '--fork', '--mount', '--cgroup', 'true']);
  if (probe.error || probe.status !== 0) {
    return { ok: false, reason: `unshare cannot create namespaces: ${probe.error?.message ?? probe.stderr.toString().trim()}` };
  }
  return { ok: true };
}

/**
 * Boot systemd (up to basic.target) with `workdir` (absolute, not under /run) visible inside, and
 * the directories in `keep` too (the namespace gets a fresh /tmp, which would hide e.g. a checkout
 * cloned under /tmp whose build the units run).
 */
export async function bootSystemd(workdir: string, keep: string[] = []): Promise<SystemdNs> {
  // boot.sh --wait stays our child until its stdin closes: on shutdown(), or when this process dies,
  // however it dies; then it powers systemd off and removes the cgroup. detached: own session, so a
  // terminal's Ctrl-C does not kill it before it has cleaned up.
  const boot = spawn('bash', [BOOT_SH, workdir, '--wait'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, NS_KEEP: keep.join(':') },
  });
  const exited = new Promise<void>((resolve) => boot.once('close', () => resolve()));
  let stdout = '';
  let stderr = '';
  boot.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  boot.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  await new Promise<void>((resolve, reject) => {
    boot.stdout.once('end', resolve); // boot.sh closes its stdout once booted (or when it failed)
    boot.once('error', reject);
  });
  const m = /^unshare=(\d+) systemd=(\d+) cgroup=(\S+)$/m.exec(stdout);
  if (!m) {
    await exited;
    const log = await readFile(`${workdir}/systemd-ns.log`, 'utf8').catch(() => '');
    throw new Error(`boot.sh failed: ${stderr}\n--- systemd-ns.log ---\n${log}`);
  }
  boot.unref(); // a test that forgets shutdown() must not keep the runner alive
  const pid = Number(m[2]);
  const cgroup = m[3] ?? '';
  let stopped: Promise<void> | undefined;

  const exec = (cmd: string[], opts: ExecOptions = {}): Promise<ExecResult> =>
    run('nsenter', ['-t', String(pid), '-a', ...cmd], { ...EXEC_ENV, ...opts.env }, opts.timeoutMs ?? 30_000, opts.input);

  const installUnit = async (name: string, text: string): Promise<void> => {
    if (!/^[\w@.:-]+$/.test(name)) throw new Error(`bad unit name: ${name}`);
    // /run inside is a tmpfs of the namespace's own; the host reaches it through /proc/PID/root.
    await writeFile(`/proc/${pid}/root/run/systemd/system/${name}`, text);
    const r = await exec(['systemctl', 'daemon-reload']);
    if (r.code !== 0) throw new Error(`daemon-reload failed: ${r.stderr}`);
  };

  const stop = async (): Promise<void> => {
    boot.stdin.end(); // boot.sh: poweroff, wait <= 10 s, kill what is left, rmdir the cgroup, exit
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      exited.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(resolve, 20_000, true))),
    ]);
    clearTimeout(timer);
    if (timedOut || existsSync(cgroup)) {
      throw new Error(`namespaced systemd (pid ${pid}) not cleaned up; see ${workdir}/systemd-ns.log`);
    }
  };

  return {
    pid,
    unsharePid: Number(m[1]),
    cgroup,
    workdir,
    exec,
    installUnit,
    waitFor,
    shutdown: () => (stopped ??= stop()),
  };
}

/** Poll `check` until it returns true; rejects after the timeout, naming `what`. */
export async function waitFor(what: string, check: () => Promise<boolean>, opts: WaitForOptions = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(opts.intervalMs ?? 100);
  }
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number, input?: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL'); // nsenter only; what it started inside dies with the namespace at the latest
      reject(new Error(`timed out after ${timeoutMs} ms: ${file} ${args.join(' ')}`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? 128 + (signal ? constants.signals[signal] : 0), stdout, stderr });
    });
    child.stdin.on('error', () => undefined); // the command may exit without reading its input
    child.stdin.end(input ?? '');
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
