// The admin socket, with real processes: where it goes when admin_socket is left at its default
// (root outside systemd, an ordinary user with and without XDG_RUNTIME_DIR), how an explicit
// admin_socket that cannot be bound fails, and that it is never more than 0600, even for a moment.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, SECRET, collectLines, freePort, tempDir } from '../helpers/daemon.js';

const NOBODY_UID = 65534;
const NOGROUP_GID = 65534;
const isRoot = process.getuid?.() === 0;
/** runs a command as nobody:nogroup with no supplementary groups (the worktree and dist/ are world-readable) */
const AS_NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'];

interface Proc {
  proc: ChildProcess;
  lines: string[];
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

const procs: Proc[] = [];
const cleanups: (() => void)[] = [];
afterEach(async () => {
  await Promise.all(procs.splice(0).map((p) => p.stop()));
  for (const c of cleanups.splice(0).reverse()) c();
});

/** the classic four directives, nothing else (no admin_socket line) */
function fourDirectives(port: number): string {
  return [`listen = "127.0.0.1:${port}"`, 'allow_from = ["127.0.0.0/8"]', `auth_shared_secret = "${SECRET}"`, 'log_verbose = false', ''].join('\n');
}

/** A temp dir the test removes afterwards, readable by nobody (mkdtemp makes it 0700). */
function dir(): string {
  const d = tempDir();
  chmodSync(d, 0o755);
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function run(argv: string[], env: NodeJS.ProcessEnv): Proc {
  const proc = spawn(argv[0] as string, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const { lines, exited, waitForLine } = collectLines(proc);
  const p: Proc = {
    proc,
    lines,
    exited,
    waitFor: (re, timeoutMs = 10_000) => waitForLine(re, timeoutMs),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
  procs.push(p);
  return p;
}

/** the daemon with a minimal environment: no XDG_RUNTIME_DIR unless given */
function daemon(configFile: string, opts: { env?: NodeJS.ProcessEnv; prefix?: string[]; nodeArgs?: string[] } = {}): Proc {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/nonexistent', ...opts.env };
  return run([...(opts.prefix ?? []), process.execPath, ...(opts.nodeArgs ?? []), CLI, `--config-filename=${configFile}`], env);
}

function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; prefix?: string[] } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/nonexistent', ...opts.env };
  const argv = [...(opts.prefix ?? []), process.execPath, CLI, ...args];
  return new Promise((resolve) => {
    execFile(argv[0] as string, argv.slice(1), { env }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('admin socket permissions', () => {
  it('is 0600 from the moment it is bound, even under umask 000', async () => {
    const d = dir();
    const modes = join(d, 'modes');
    // Records the mode of every Unix socket right after listen() returns, before the daemon's
    // own code runs again (Node binds a pipe path synchronously inside listen()).
    const preload = join(d, 'preload.mjs');
    writeFileSync(
      preload,
      [
        "import net from 'node:net';",
        "import { appendFileSync, lstatSync } from 'node:fs';",
        'const listen = net.Server.prototype.listen;',
        'net.Server.prototype.listen = function (...args) {',
        '  const result = listen.apply(this, args);',
        "  const path = typeof args[0] === 'string' ? args[0] : args[0] && typeof args[0] === 'object' ? args[0].path : undefined;",
        "  if (typeof path === 'string') {",
        "    let mode = 'missing';",
        "    try { mode = (lstatSync(path).mode & 0o7777).toString(8); } catch {}",
        `    appendFileSync(${JSON.stringify(modes)}, path + ' ' + mode + '\\n');`,
        '  }',
        '  return result;',
        '};',
        '',
      ].join('\n'),
    );
    const socket = join(d, 'admin.sock');
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(configFile, `${fourDirectives(0)}admin_socket = "${socket}"\n`);
    for (let i = 0; i < 3; i++) {
      rmSync(modes, { force: true });
      const p = daemon(configFile, { prefix: ['sh', '-c', 'umask 000; exec "$@"', 'sh'], nodeArgs: ['--import', preload] });
      await p.waitFor(/mtaproxy started/);
      expect(readFileSync(modes, 'utf8')).toBe(`${socket} 600\n`);
      expect(lstatSync(socket).mode & 0o777).toBe(0o600);
      await p.stop();
      procs.splice(procs.indexOf(p), 1);
    }
  });
});

describe('an explicit admin_socket that cannot be bound', () => {
  async function startFails(configFile: string, prefix: string[] = []): Promise<string> {
    const p = daemon(configFile, { prefix });
    const code = await p.exited;
    expect(code).toBe(1);
    return p.lines.join('\n');
  }

  it('in a directory that does not exist: says so, and nothing about ports', async () => {
    const d = dir();
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(configFile, `${fourDirectives(0)}admin_socket = "${d}/missing/admin.sock"\n`);
    const out = await startFails(configFile);
    expect(out).toContain(`mtaproxy: cannot listen on admin unix ${d}/missing/admin.sock: directory ${d}/missing does not exist`);
    expect(out).not.toMatch(/ports below 1024/);
    expect(existsSync(join(d, 'missing'))).toBe(false); // an explicit path's directory is not made
  });

  it.skipIf(!isRoot)('in a directory the user may not write: names the directory and the user', async () => {
    const d = dir(); // root's, 0755
    const configFile = join(d, 'mtaproxy.toml');
    const port = await freePort();
    writeFileSync(configFile, `${fourDirectives(port)}admin_socket = "${d}/admin.sock"\n`);
    const out = await startFails(configFile, AS_NOBODY);
    expect(out).toContain(`mtaproxy: cannot listen on admin unix ${d}/admin.sock: no permission to create a socket in ${d} (running as nobody)`);
    expect(out).not.toMatch(/ports below 1024/);
  });

  it('on a file that is not a socket: leaves the file alone', async () => {
    const d = dir();
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(join(d, 'notes.txt'), 'keep me\n');
    writeFileSync(configFile, `${fourDirectives(0)}admin_socket = "${d}/notes.txt"\n`);
    const out = await startFails(configFile);
    expect(out).toContain(`mtaproxy: cannot listen on admin unix ${d}/notes.txt: ${d}/notes.txt exists and is not a socket (not removed)`);
    expect(readFileSync(join(d, 'notes.txt'), 'utf8')).toBe('keep me\n');
  });
});

describe('the default admin socket outside systemd', () => {
  const RUN_DIR = '/run/mtaproxy';
  // the real default is tested; a machine where an mtaproxy may be using it is left alone
  const realDefaultFree = isRoot && !existsSync(join(RUN_DIR, 'admin.sock'));

  it.skipIf(!realDefaultFree)('as root, with the four classic directives: makes /run/mtaproxy (0700) and status/reload reach it', async () => {
    const made = !existsSync(RUN_DIR);
    if (made) cleanups.push(() => rmSync(RUN_DIR, { recursive: true, force: true }));
    const d = dir();
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(configFile, fourDirectives(0));
    // a login session's XDG_RUNTIME_DIR does not matter when /run/mtaproxy works
    const env = { HOME: d, XDG_RUNTIME_DIR: d };
    const p = daemon(configFile, { env });
    await p.waitFor(/mtaproxy started/);
    expect(p.lines.join('\n')).toContain(`listener: admin on ${RUN_DIR}/admin.sock`);
    if (made) expect(lstatSync(RUN_DIR).mode & 0o777).toBe(0o700);
    expect(lstatSync(join(RUN_DIR, 'admin.sock')).mode & 0o777).toBe(0o600);
    const status = await cli(['status', `--config-filename=${configFile}`], { env });
    expect(status).toMatchObject({ code: 0 });
    expect(status.stdout).toMatch(/^listener: open_connections=0$/m);
    expect(await cli(['reload', `--config-filename=${configFile}`], { env })).toMatchObject({ code: 0, stdout: 'reload: no changes\n' });
    expect(await p.stop()).toBe(0);
    expect(existsSync(join(RUN_DIR, 'admin.sock'))).toBe(false);
  });

  it.skipIf(!isRoot)('as an ordinary user with XDG_RUNTIME_DIR: the socket goes to $XDG_RUNTIME_DIR/mtaproxy, where status finds it', async () => {
    const d = dir();
    const xdg = join(d, 'xdg');
    mkdirSync(xdg, { mode: 0o700 });
    chownSync(xdg, NOBODY_UID, NOGROUP_GID);
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(configFile, fourDirectives(await freePort()));
    const env = { XDG_RUNTIME_DIR: xdg };
    const p = daemon(configFile, { env, prefix: AS_NOBODY });
    await p.waitFor(/mtaproxy started/);
    const socket = join(xdg, 'mtaproxy', 'admin.sock');
    expect(p.lines.join('\n')).toContain(`listener: admin on ${socket}`);
    expect(p.lines.join('\n')).not.toMatch(/WARN/);
    expect(lstatSync(join(xdg, 'mtaproxy')).mode & 0o777).toBe(0o700);
    expect(lstatSync(socket)).toMatchObject({ uid: NOBODY_UID });
    expect(lstatSync(socket).mode & 0o777).toBe(0o600);
    const status = await cli(['status', `--config-filename=${configFile}`], { env, prefix: AS_NOBODY });
    expect(status).toMatchObject({ code: 0 });
    expect(status.stdout).toMatch(/^listener: open_connections=0$/m);
    // a reload keeps the socket where it is (no rebind, no warning)
    expect(await cli(['reload', `--config-filename=${configFile}`], { env, prefix: AS_NOBODY })).toMatchObject({ code: 0, stdout: 'reload: no changes\n' });
    expect(lstatSync(socket).isSocket()).toBe(true);
    expect(await p.stop()).toBe(0);
    expect(existsSync(socket)).toBe(false);
  });

  it.skipIf(!isRoot)('as an ordinary user without XDG_RUNTIME_DIR: runs without an admin socket, says so, and SIGHUP still reloads', async () => {
    const d = dir();
    const configFile = join(d, 'mtaproxy.toml');
    writeFileSync(configFile, fourDirectives(await freePort()));
    const p = daemon(configFile, { prefix: AS_NOBODY });
    await p.waitFor(/mtaproxy started/);
    const warning = await p.waitFor(/running without an admin socket/);
    expect(warning).toMatch(/WARN running without an admin socket: "mtaproxy reload" and "mtaproxy status" will not work \(SIGHUP still reloads\)/);
    expect(warning).toContain('/run/mtaproxy/admin.sock: ');
    expect(warning).toContain('XDG_RUNTIME_DIR is not set');
    const status = await cli(['status', `--config-filename=${configFile}`], { prefix: AS_NOBODY });
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/^mtaproxy: no mtaproxy daemon answered\. Looked for its admin socket at:\n {2}\/run\/mtaproxy\/admin\.sock: /);
    expect(status.stderr).toContain('XDG_RUNTIME_DIR is not set');
    expect(status.stderr).toContain('still reloads on SIGHUP');
    p.proc.kill('SIGHUP');
    await p.waitFor(/reload: no changes/);
    expect(p.proc.exitCode).toBe(null);
  });
});
