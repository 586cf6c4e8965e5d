#!/bin/bash
# Runs as PID 1 of the new namespaces (see boot.sh): prepare the mount namespace, then exec systemd.
# Everything here is private to the namespace; the root filesystem itself is the host's.
set -eu
WORK=$1

# /run: systemd keeps its state, sockets and transient units there; a fresh tmpfs, as at boot.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
# /tmp: a fresh tmpfs (units with PrivateTmp= and the host's files do not mix). WORK, and the
# directories named in NS_KEEP (colon-separated, e.g. a checkout whose build the units run), may
# live under /tmp: park bind mounts of them in /run while /tmp is replaced, then move them back.
keep=("$WORK")
IFS=: read -r -a extra <<< "${NS_KEEP:-}"
for d in "${extra[@]}"; do [ -n "$d" ] && keep+=("$d"); done
i=0
for d in "${keep[@]}"; do mkdir -p "/run/.keep$i" && mount --bind "$d" "/run/.keep$i"; i=$((i + 1)); done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
i=0
for d in "${keep[@]}"; do mkdir -p "$d" && mount --move "/run/.keep$i" "$d" && rmdir "/run/.keep$i"; i=$((i + 1)); done
# /sys/fs/cgroup: replace the host's (hybrid) view by a plain cgroup2 mount; thanks to the cgroup
# namespace its root is boot.sh's subtree, so systemd runs in unified mode inside that subtree only.
umount -R /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# read-only /sys and /proc/sys: systemd then behaves as in a container (no udev, no sysctl writes)
# and cannot change the host's kernel settings (the network namespace is shared with the host).
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
mount -o remount,bind,ro /sys
# /dev is the host's devtmpfs: send systemd's console output to a file instead of the host console.
touch /run/console.log && mount --bind /run/console.log /dev/console
# The image's policy-rc.d exits 101 (package scripts may not start services); allow it in here only,
# so that installing a .deb through nsenter really enables and starts its units.
if [ -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 0\n' > /run/policy-rc.d && chmod +x /run/policy-rc.d
  mount --bind /run/policy-rc.d /usr/sbin/policy-rc.d
fi

# Configuration through /run (so nothing on the shared root filesystem changes):
mkdir -p /run/systemd/system /run/systemd/journald.conf.d
# journald: keep the journal in memory, do not read the host's kernel log.
printf '[Journal]\nStorage=volatile\nReadKMsg=no\n' > /run/systemd/journald.conf.d/ns.conf
# Mask units that would touch shared state (host files, /dev, kernel) or make no sense here.
for u in getty.target console-getty.service getty@tty1.service timers.target \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer man-db.timer systemd-tmpfiles-clean.timer systemd-tmpfiles-setup.service \
  systemd-tmpfiles-setup-dev.service systemd-sysusers.service systemd-random-seed.service \
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
  systemd-udev-trigger.service systemd-udev-settle.service systemd-modules-load.service \
  kmod-static-nodes.service modprobe@.service systemd-sysctl.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount systemd-remount-fs.service systemd-update-utmp.service \
  systemd-update-utmp-runlevel.service systemd-logind.service systemd-pstore.service \
  systemd-timesyncd.service systemd-journald-audit.socket dev-hugepages.mount dev-mqueue.mount \
  sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount; do
  ln -s /dev/null "/run/systemd/system/$u"
done

export container=other  # tell systemd it runs in a container (skips ConditionVirtualization=!container units)
# basic.target, not multi-user.target: otherwise every service enabled on the host starts too.
exec /lib/systemd/systemd --system --unit=basic.target
