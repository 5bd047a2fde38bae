#!/usr/bin/env bash
# Build etcd, etcdctl and etcdutl from their Go modules with this machine's Go, and cache them for the etcd role,
# which copies them to the members when etcd_binaries_src names a directory holding them (an unpacked upstream
# release of 3.5 or later has the same layout): tools/build-etcd.sh  ->  last line on stdout: the directory.
# etcdutl works on data files offline: since 3.6 it alone restores a snapshot (`etcdctl snapshot restore` and
# `snapshot status` are gone), so the role's snapshot timer and playbooks/dr/restore_etcd.yml need it.
#
# Why not Debian's etcd-server: bookworm ships 3.4.23, whose resumed former leader can revoke leases that the new
# leader kept alive (fixed in 3.4.31 and 3.5.13). Patroni's leader key is such a lease: the lab saw a frozen
# PostgreSQL primary that also led etcd come back as leader on its old timeline (docs/postgres-ha.md).
#
# The pin lives in tools/etcd/go.mod: a build-only module of ours whose `tool` lines name the three upstream main
# packages (go.etcd.io/etcd/server/v3 is etcd, go.etcd.io/etcd/etcdctl/v3 is etcdctl, go.etcd.io/etcd/etcdutl/v3
# is etcdutl), so `go mod tidy` keeps them. Upstream's own go.mod files carry replace lines, so `go install
# …@version` is refused. To move the pin (all three alike):
#   cd tools/etcd && go get -tool go.etcd.io/etcd/server/v3@vX go.etcd.io/etcd/etcdctl/v3@vX \
#     go.etcd.io/etcd/etcdutl/v3@vX && go mod tidy
#
# Cache: ${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}/etcd-<version>/{etcd,etcdctl,etcdutl,SHA256SUMS}, outside
# the checkout so every clone on this machine reuses it. A directory that lacks one of the three (built before
# etcdutl was added) is built again whole. Static (CGO_ENABLED=0), stripped, path-free binaries.
source "$(dirname "$0")/lib.sh"

MODDIR="$ROOT/tools/etcd"
MODULE=go.etcd.io/etcd/server/v3
CTL=go.etcd.io/etcd/etcdctl/v3
UTL=go.etcd.io/etcd/etcdutl/v3
BINARIES=(etcd etcdctl etcdutl)

pin=$(awk -v m="$MODULE" '$1 == m && $2 ~ /^v/ {print $2}' "$MODDIR/go.mod" | head -1)
[ -n "$pin" ] || die "etcd: no requirement on $MODULE in $MODDIR/go.mod"
ctl_pin=$(awk -v m="$CTL" '$1 == m && $2 ~ /^v/ {print $2}' "$MODDIR/go.mod" | head -1)
[ "$ctl_pin" = "$pin" ] || die "etcd: $MODDIR/go.mod pins etcd $pin but etcdctl ${ctl_pin:-nothing}; pin all three alike"
utl_pin=$(awk -v m="$UTL" '$1 == m && $2 ~ /^v/ {print $2}' "$MODDIR/go.mod" | head -1)
[ "$utl_pin" = "$pin" ] || die "etcd: $MODDIR/go.mod pins etcd $pin but etcdutl ${utl_pin:-nothing}; pin all three alike"

bindir="${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}"
out="$bindir/etcd-$pin"
mkdir -p "$bindir" 2>/dev/null || die "etcd: cannot create the binary cache $bindir (set MLFLOW_HA_BIN_CACHE to a writable directory)"
lock="$bindir/.etcd-$pin.lock"
# --path / --lock: only the directory the binaries are (or will be) in when built, or the lock their build holds, and
# nothing else: no Go, no lock taken, no build (tools/lab.sh lets a build go on and has the lab inventory wait on it).
[ "${1:-}" != --path ] || { echo "$out"; exit 0; }
[ "${1:-}" != --lock ] || { echo "$lock"; exit 0; }

# Current: every binary listed in SHA256SUMS and matching it.
cached() {
  [ -f "$out/SHA256SUMS" ] || return 1
  local b
  for b in "${BINARIES[@]}"; do
    awk -v f="$b" '$2 == f {found=1} END {exit !found}' "$out/SHA256SUMS" || return 1
  done
  (cd "$out" && sha256sum --check --status SHA256SUMS 2>/dev/null)
}

exec 9>"$lock"
flock 9

if cached; then
  log "etcd: $out is current, skipping build"
  echo "$out"
  exit 0
fi

buildlog="$CACHE/build-etcd.log"
go_build_setup etcd "$buildlog"

t0=$(date +%s)
log "etcd: building etcd, etcdctl and etcdutl $pin with $("$GO" env GOVERSION) (cold Go caches: a few minutes on 2 cores)"
tmp="$bindir/.etcd-$pin.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
build() {
  (cd "$MODDIR" && CGO_ENABLED=0 GOOS=linux "$GO" build -mod=readonly -trimpath -buildvcs=false -ldflags "-s -w" \
    -o "$tmp/$1" "$2") >>"$buildlog" 2>&1 || { tail -30 "$buildlog" >&2; die "etcd: go build of $1 failed; log in $buildlog"; }
}
build etcd "$MODULE"
build etcdctl "$CTL"
build etcdutl "$UTL"

# All of its output first, then the first line: `| head -1` under pipefail failed a fresh CI run when etcd wrote its
# second line after head had exited (SIGPIPE, exit 141).
reported=$("$tmp/etcd" --version 2>&1) || die "etcd: the new binary does not run: $reported"
reported=${reported%%$'\n'*}
[ "$reported" = "etcd Version: ${pin#v}" ] || die "etcd: the binary built from $pin reports '$reported'"
utl_reported=$("$tmp/etcdutl" version 2>&1) || die "etcd: the new etcdutl does not run: $utl_reported"
utl_reported=${utl_reported%%$'\n'*}
[ "$utl_reported" = "etcdutl version: ${pin#v}" ] || die "etcd: the etcdutl built from $pin reports '$utl_reported'"
(cd "$tmp" && sha256sum "${BINARIES[@]}" >SHA256SUMS)
rm -rf "$out"
mv "$tmp" "$out"
log "etcd: built $out ($reported) in $(since "$t0") s"
echo "$out"
