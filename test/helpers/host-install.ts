// The package tests (test/packaging/packages.test.ts: the .deb; test/systemd/rpm-install.test.ts:
// the .rpm) install mtaproxy for real: the namespaced systemd shares the host's root filesystem,
// so both write /etc/mtaproxy, /usr/lib/mtaproxy, the units, the user, and listen on port 807.
// They must never overlap, whether vitest runs them in two workers or two checkouts run them at
// once. A directory lock (mkdir is atomic) holding the owner's pid; a lock whose owner is dead, or
// is this very process (vitest runs one file at a time per worker: an earlier file's), is stale.
// Take it at module top level, before the file decides whether to skip (a port held by the other
// test would otherwise look like a foreign installation).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const LOCK = '/run/lock/mtaproxy-host-install-test';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Waits (up to `timeoutMs`) until this process holds the lock; resolves with its release. */
export async function lockHostInstall(who: string, timeoutMs = 20 * 60_000): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  let announced = false;
  for (;;) {
    try {
      mkdirSync(LOCK, { recursive: false });
      writeFileSync(join(LOCK, 'owner'), `${process.pid} ${who}\n`);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        rmSync(LOCK, { recursive: true, force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') mkdirSync('/run/lock', { recursive: true });
      else if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let owner = '';
    try {
      owner = readFileSync(join(LOCK, 'owner'), 'utf8').trim();
    } catch {
      // being created or removed right now
    }
    const pid = Number(owner.split(' ')[0]);
    if (owner !== '' && (!alive(pid) || pid === process.pid)) {
      rmSync(LOCK, { recursive: true, force: true }); // stale
      continue;
    }
    if (Date.now() > deadline) throw new Error(`${who}: ${LOCK} is still held by ${owner || 'an unknown process'} after ${timeoutMs / 1000} s`);
    if (!announced && owner !== '') {
      console.log(`${who}: waiting for ${LOCK} (held by ${owner}: the other package test installs mtaproxy on this machine)`);
      announced = true;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
