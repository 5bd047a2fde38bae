#!/usr/bin/env bash
# Build the lab's Debian 12 systemd base image with debootstrap + `docker import` (no registry exists here).
# (docker 20.10 import takes no STOPSIGNAL: molecule/shared sets stop_signal SIGRTMIN+3 on each container.)
# The tag is a hash of the recipe (this script, lib.sh and packages.txt): an unchanged recipe reuses the image.
# The image is also tagged `mlflow-ha/debian12-systemd:lab`, the name every molecule scenario uses.
source "$(dirname "$0")/lib.sh"

REPO=mlflow-ha/debian12-systemd
SUITE=bookworm
hash=$(recipe_hash "$0" "$ROOT/tools/lib.sh" "$ROOT/tools/image/packages.txt")
image="$REPO:$hash"

# One build at a time (`make test` builds it in the background; a `make molecule` or `make lab` started meanwhile
# waits for that build instead of starting a second one).
mkdir -p "$CACHE"
exec 9>"$CACHE/.base-image.lock"
flock 9

if docker image inspect "$image" >/dev/null 2>&1; then
  docker tag "$image" "$REPO:lab"
  log "base image: $image is current (recipe unchanged), skipping build"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap

# The mirror is the one this machine's apt already uses (override with MLFLOW_HA_DEBIAN_MIRROR).
mirror="${MLFLOW_HA_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $3 == "'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || die "no Debian mirror found in this machine's apt sources; set MLFLOW_HA_DEBIAN_MIRROR"

t0=$(date +%s)
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/mlflow-ha-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
include=$(grep -v '^\s*#' "$ROOT/tools/image/packages.txt" | grep -v '^\s*$' | paste -sd, -)
log "base image: debootstrap $SUITE (minbase + $include)"
debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
  || { tail -30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed; full log in $CACHE/debootstrap.log"; }

# Same apt sources as the controller (main, updates, security) so roles install current packages.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
  rm -f "$rootfs/etc/apt/sources.list"
fi
chroot "$rootfs" apt-get update -q >>"$CACHE/debootstrap.log" 2>&1 || die "apt-get update in the new rootfs failed"
# A container is a VM stand-in: no ttys, no udev, no time sync of its own; machine-id made at first boot.
for unit in getty.target console-getty.service systemd-udevd.service systemd-timesyncd.service \
            systemd-modules-load.service sys-kernel-config.mount; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: >"$rootfs/etc/machine-id"
# sshd as on any Debian VM (tests/lab/deploy_path.py logs in over SSH as docs/deploy.md says); each container makes its
# own host keys at first start, as cloud-init does on a VM, instead of sharing the image's (the drop-in first clears
# Debian's ExecStartPre, `sshd -t`, which fails while no key exists, and runs it again after ssh-keygen).
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' >"$rootfs/etc/systemd/system/ssh.service.d/host-keys.conf"
# Package lists stay, as on a freshly installed VM (check mode cannot refresh them).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change "LABEL org.mlflow-ha.recipe=$hash" \
  - "$image" >/dev/null
docker tag "$image" "$REPO:lab"
log "base image: built $image in $(since "$t0") s"
