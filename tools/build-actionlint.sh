#!/usr/bin/env bash
# Build actionlint (the GitHub Actions workflow checker) from its Go module with this machine's Go, and cache it for
# `make lint`, which checks the deployment pipeline templates in cloud/pipelines/github/ with it:
# tools/build-actionlint.sh  ->  last line on stdout: the binary's path.
#
# actionlint's go.mod has no replace lines, so `go install …@version` works (unlike SeaweedFS and etcd, which need a
# module of ours). The pin is ACTIONLINT_VERSION below; the newest version the Go module proxy serves:
#   go list -m -versions github.com/rhysd/actionlint
# When shellcheck is on PATH (Debian package `shellcheck`), actionlint also checks the workflows' `run:` scripts
# with it; without it those checks are skipped silently.
#
# Cache: ${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}/actionlint-<version> + .sha256, outside the checkout so
# every clone on this machine reuses it; a binary whose checksum file matches is not rebuilt. Static (CGO_ENABLED=0),
# stripped, path-free. About a minute of compiling on 2 cores with cold Go caches.
source "$(dirname "$0")/lib.sh"

ACTIONLINT_VERSION=v1.7.12
MODULE=github.com/rhysd/actionlint

bindir="${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}"
bin="$bindir/actionlint-$ACTIONLINT_VERSION"
mkdir -p "$bindir" 2>/dev/null || die "actionlint: cannot create the binary cache $bindir (set MLFLOW_HA_BIN_CACHE to a writable directory)"

cached() {
  [ -x "$bin" ] && [ -f "$bin.sha256" ] && (cd "$bindir" && sha256sum --check --status "actionlint-$ACTIONLINT_VERSION.sha256" 2>/dev/null)
}

# One build at a time per cache (parallel jobs on the same machine wait for the first one's binary).
exec 9>"$bindir/.actionlint-$ACTIONLINT_VERSION.lock"
flock 9

if cached; then
  log "actionlint: $bin is current, skipping build"
  echo "$bin"
  exit 0
fi
[ ! -e "$bin" ] || log "actionlint: $bin does not match its checksum file, rebuilding"

buildlog="$CACHE/build-actionlint.log"
go_build_setup actionlint "$buildlog"

t0=$(date +%s)
log "actionlint: building $MODULE $ACTIONLINT_VERSION with $("$GO" env GOVERSION)"
tmp="$bindir/.actionlint-$ACTIONLINT_VERSION.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
# go install outside any module (GOFLAGS=-mod=mod: a GOFLAGS=-mod=vendor in the caller's environment would refuse).
(
  cd "$tmp"
  CGO_ENABLED=0 GOOS=linux GOFLAGS=-mod=mod GOBIN="$tmp" "$GO" install -trimpath -buildvcs=false -ldflags "-s -w" \
    "$MODULE/cmd/actionlint@$ACTIONLINT_VERSION"
) >>"$buildlog" 2>&1 || { tail -30 "$buildlog" >&2; die "actionlint: go install failed after $(since "$t0") s; log in $buildlog"; }

reported=$("$tmp/actionlint" -version 2>&1) || die "actionlint: the new binary does not run: $reported"
reported=${reported%%$'\n'*}
[ "$reported" = "$ACTIONLINT_VERSION" ] || die "actionlint: the binary built from $ACTIONLINT_VERSION reports '$reported'"

mv -f "$tmp/actionlint" "$bin"
(cd "$bindir" && sha256sum "actionlint-$ACTIONLINT_VERSION" >"actionlint-$ACTIONLINT_VERSION.sha256")
log "actionlint: built $bin ($(du -h "$bin" | cut -f1)) in $(since "$t0") s"
echo "$bin"
