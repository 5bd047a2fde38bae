#!/usr/bin/env bash
# Get Prometheus's `promtool` and Alertmanager's `amtool` on the controller, for the alert-rule unit tests
# (tests/unit/test_alert_rules.py): tools/promtool.sh  ->  last line on stdout: promtool's path.
#
# Both come from Debian 12's own packages (prometheus 2.42, prometheus-alertmanager 0.25), but the packages are never
# installed: installing `prometheus` would create users and try to start daemons, and the controller has no
# systemd. Instead `apt-get download` fetches the .deb files into a temporary directory, `dpkg-deb -x` unpacks
# them there, and only usr/bin/promtool and usr/bin/amtool are kept, in $CACHE/bin (Go binaries that need only
# glibc: they run on the controller, Debian 12 like the hosts).
# `apt-get update` runs only when the download fails (stale or missing package lists).
# Nothing is done when both binaries are already there and run.
# lib.sh is checked on its own; `shellcheck -x` follows it from here.
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
source "$(dirname "$0")/lib.sh"

PACKAGES=(prometheus prometheus-alertmanager)
bindir="$CACHE/bin"
promtool="$bindir/promtool"
amtool="$bindir/amtool"

runs() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

mkdir -p "$bindir"
# One download at a time per cache (parallel CI jobs wait for the first one's binaries).
exec 9>"$bindir/.promtool.lock"
flock 9

if runs "$promtool" && runs "$amtool"; then
  log "promtool: $promtool and $amtool are current, skipping download"
  echo "$promtool"
  exit 0
fi

command -v apt-get >/dev/null || die "promtool: apt-get not found (this script fetches Debian's prometheus packages)"
command -v dpkg-deb >/dev/null || die "promtool: dpkg-deb not found"

t0=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/promtool.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Readable by apt's sandbox user (_apt), or apt downloads unsandboxed and warns.
chmod 0755 "$tmp"

# apt-get download writes into the current directory, as the calling user (no root needed for this part).
download() { (cd "$tmp" && apt-get download -q "${PACKAGES[@]}") >"$tmp/download.log" 2>&1; }
if ! download; then
  log "promtool: apt-get download failed, refreshing the package lists and trying again"
  apt-get update -q >/dev/null 2>>"$tmp/download.log" \
    || { cat "$tmp/download.log" >&2; die "promtool: apt-get update failed (run as root, or check the apt sources)"; }
  download || { cat "$tmp/download.log" >&2; die "promtool: apt-get download ${PACKAGES[*]} failed"; }
fi

for pkg in "${PACKAGES[@]}"; do
  debs=("$tmp/${pkg}_"*.deb)
  [ -f "${debs[0]}" ] || die "promtool: apt-get download left no ${pkg}_*.deb in $tmp"
  mkdir -p "$tmp/$pkg"
  dpkg-deb -x "${debs[0]}" "$tmp/$pkg"
  log "promtool: unpacked $(basename "${debs[0]}")"
done

# Copy under a temporary name, then rename: a test running meanwhile never sees a half-written binary.
install_bin() {
  local src=$1 dest=$2
  [ -f "$src" ] || die "promtool: $(basename "$dest") is not in the package (looked for ${src#"$tmp"/})"
  cp "$src" "$dest.tmp.$$"
  chmod 0755 "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}
install_bin "$tmp/prometheus/usr/bin/promtool" "$promtool"
install_bin "$tmp/prometheus-alertmanager/usr/bin/amtool" "$amtool"

runs "$promtool" || die "promtool: $promtool does not run ('promtool --version' failed)"
runs "$amtool" || die "promtool: $amtool does not run ('amtool --version' failed)"
version=$("$promtool" --version 2>&1)  # not `| head -1`: under pipefail a late second line is a SIGPIPE failure
log "promtool: ${version%%$'\n'*} and amtool in $bindir, in $(since "$t0") s"
echo "$promtool"
