#!/bin/bash
# Boot a real systemd as PID 1 of new pid/mount/uts/ipc/cgroup namespaces (root only), for e2e tests.
#   boot.sh WORKDIR [--wait]
# Prints "unshare=<pid> systemd=<host pid> cgroup=<dir>" once systemd has reached basic.target (<= 30 s);
# otherwise stops it, removes its cgroup and exits 1. WORKDIR (absolute, not under /run) stays visible
# inside; systemd's console output (and boot.sh's own, once booted) goes to WORKDIR/systemd-ns.log.
# --wait: after printing, close stdout and stay until stdin reaches EOF (the caller closes it, or dies),
#   then stop systemd and clean up (see stop below). Test helpers use this: nothing outlives them.
# Without --wait, use it from a shell and stop it yourself:
#   nsenter -t <systemd pid> -a systemctl ... / journalctl ...
#   nsenter -t <pid> -a systemctl start --job-mode=replace-irreversibly --no-block poweroff.target
#   then, once <cgroup>/cgroup.events says "populated 0": find <cgroup> -depth -type d -exec rmdir {} +
# The network namespace is the host's: units must listen on free ports.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(cd "${1:?usage: boot.sh WORKDIR [--wait]}" && pwd -P)
case $WORK in /run|/run/*) echo "boot.sh: WORKDIR must not be under /run (a tmpfs hides it)" >&2; exit 2;; esac

# systemd needs a cgroup2 tree it owns. The host is hybrid (cgroup2 at /sys/fs/cgroup/unified) or pure
# cgroup2 (/sys/fs/cgroup); either way make a subtree of our own, which becomes "/" in the cgroup namespace.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then CGROOT=/sys/fs/cgroup; else CGROOT=/sys/fs/cgroup/unified; fi
CG=$CGROOT/systemd-ns-$$
mkdir "$CG"

# Namespaces: pid (systemd must be PID 1), mount (private /run, /tmp, cgroup mount: see inner.sh),
# uts (systemd sets the hostname from /etc/hostname), ipc, cgroup (our subtree looks like the root).
# setsid: a terminal's SIGINT must never reach systemd (SIGINT = ctrl-alt-del = reboot). The shell joins
# the cgroup first so that everything forked from it, systemd included, lives in $CG.
setsid bash -c 'echo $$ > "$1/cgroup.procs"; shift
  exec unshare --pid --fork --mount --mount-proc --uts --ipc --cgroup --propagation private bash "$@"' \
  _ "$CG" "$HERE/inner.sh" "$WORK" </dev/null >"$WORK/systemd-ns.log" 2>&1 &
USH=$!   # bash, then (same pid, exec) unshare; its forked child becomes systemd
SD=

stop() {
  # Power off. Never SIGTERM systemd: for it that means "re-execute". SIGRTMIN+4 = poweroff too.
  [ -n "$SD" ] && { nsenter -t "$SD" -a systemctl start --job-mode=replace-irreversibly --no-block poweroff.target \
    || kill -s SIGRTMIN+4 "$SD"; }
  for _ in $(seq 100); do grep -q 'populated 0' "$CG/cgroup.events" && break; sleep 0.1; done
  echo 1 > "$CG/cgroup.kill"              # whatever is still there after 10 s
  { wait "$USH"; } 2>/dev/null || true    # reap unshare (this VM's PID 1 reaps orphans only now and then)
  find "$CG" -depth -type d -exec rmdir {} +   # cgroupfs: rmdir only, children first
}
fail() { echo "boot.sh: $1 (see $WORK/systemd-ns.log)" >&2; stop; exit 1; }

for _ in $(seq 50); do SD=$(tr -d ' ' < "/proc/$USH/task/$USH/children" 2>/dev/null) && [ -n "$SD" ] && break; sleep 0.1; done
[ -n "$SD" ] || fail "unshare did not fork"
for _ in $(seq 300); do
  case $(nsenter -t "$SD" -a systemctl is-system-running 2>/dev/null) in
    running|degraded)
      echo "unshare=$USH systemd=$SD cgroup=$CG"
      [ "${2:-}" = --wait ] || exit 0
      exec >>"$WORK/systemd-ns.log" 2>&1   # our caller sees EOF on stdout: booted
      cat >/dev/null || true
      stop; exit 0;;
  esac
  kill -0 "$SD" 2>/dev/null || fail "systemd exited"
  sleep 0.1
done
fail "systemd did not reach basic.target in 30 s"
