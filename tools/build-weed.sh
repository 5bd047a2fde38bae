#!/usr/bin/env bash
# Build the SeaweedFS `weed` binary from its Go module with this machine's Go, and cache it for the role that
# copies it to the storage hosts: tools/build-weed.sh  ->  last line on stdout: the binary's path.
#
# The pin lives in tools/seaweedfs/go.mod (with a complete go.sum): a build-only module of ours that requires
# github.com/seaweedfs/seaweedfs and repeats upstream's `replace` lines (with them, `go install …@version` is
# refused). The Go proxy serves SeaweedFS only as pseudo-versions (its tags, e.g. "4.53", are not semver), so
# go.mod pins a commit and WEED_RELEASE below names the release that commit reports; the check after the build
# keeps the two in step. To move the pin:
#   cd tools/seaweedfs && go get github.com/seaweedfs/seaweedfs@<pseudo-version> && go mod tidy
# then copy upstream's replace lines again (this script refuses to build when they differ) and set WEED_RELEASE.
#
# Cache: ${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}/weed-<release>-<commit> + .sha256, outside the checkout
# so every clone on this machine reuses it; a binary whose checksum file matches is not rebuilt. Go's module and
# build caches stay at their defaults (~/go/pkg/mod, ~/.cache/go-build): a rebuild after a pin move is faster.
# The binary is static (CGO_ENABLED=0), stripped and path-free (-trimpath): it runs on any Linux host (Debian 12).
source "$(dirname "$0")/lib.sh"

WEED_RELEASE=4.53
MODDIR="$ROOT/tools/seaweedfs"
MODULE=github.com/seaweedfs/seaweedfs

# The pinned module version, read from go.mod (no Go needed to find a cached binary).
pin=$(awk -v m="$MODULE" '$1 == m {print $2} $1 == "require" && $2 == m {print $3}' "$MODDIR/go.mod" | head -1)
[ -n "$pin" ] || die "weed: no requirement on $MODULE in $MODDIR/go.mod"
commit=${pin##*-}  # a pseudo-version ends in the commit's 12-character hash
version="$WEED_RELEASE-$commit"

bindir="${MLFLOW_HA_BIN_CACHE:-/var/cache/mlflow-ha/bin}"
bin="$bindir/weed-$version"
mkdir -p "$bindir" 2>/dev/null || die "weed: cannot create the binary cache $bindir (set MLFLOW_HA_BIN_CACHE to a writable directory)"
lock="$bindir/.weed-$version.lock"
# --path / --lock: only the path the binary has (or will have) when built, or the lock its build holds, and nothing
# else: no Go, no lock taken, no build (tools/lab.sh lets a build go on and has the lab inventory wait on its lock).
[ "${1:-}" != --path ] || { echo "$bin"; exit 0; }
[ "${1:-}" != --lock ] || { echo "$lock"; exit 0; }

cached() { [ -x "$bin" ] && [ -f "$bin.sha256" ] && (cd "$bindir" && sha256sum --check --status "weed-$version.sha256" 2>/dev/null); }

# One build at a time per cache (parallel CI jobs on the same machine wait for the first one's binary).
exec 9>"$lock"
flock 9

if cached; then
  log "weed: $bin is current ($pin), skipping build"
  echo "$bin"
  exit 0
fi
[ ! -e "$bin" ] || log "weed: $bin does not match its checksum file, rebuilding"

buildlog="$CACHE/build-weed.log"
go_build_setup weed "$buildlog"
fail() {
  tail -30 "$buildlog" >&2
  die "weed: $1; full log in $buildlog"
}

# Upstream's replace lines must still be ours: compare them as `go mod edit -json` prints them.
replaces() { "$GO" mod edit -json "$1" | sed -n '/^\t"Replace": \[/,/^\t\]/p'; }
upstream_mod=$(cd "$MODDIR" && "$GO" mod download -json "$MODULE" 2>>"$buildlog" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
if [ -z "$upstream_mod" ] || [ ! -f "$upstream_mod" ]; then
  fail "could not download $MODULE@$pin from the Go module proxy"
fi
if [ "$(replaces "$upstream_mod")" != "$(replaces "$MODDIR/go.mod")" ]; then
  log "weed: upstream's replace directives at $pin:"
  grep -E '^\s*replace\b|=>' "$upstream_mod" | grep -v '^\s*//' >&2 || true
  die "weed: tools/seaweedfs/go.mod does not repeat upstream's replace directives; copy them and run 'go mod tidy'"
fi

t0=$(date +%s)
log "weed: building $MODULE/weed $pin with $("$GO" env GOVERSION) (cold Go caches: ~4 min on 2 idle cores, longer beside other work)"
tmp="$bindir/.weed-$version.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
  cd "$MODDIR"
  CGO_ENABLED=0 GOOS=linux "$GO" build -mod=readonly -trimpath -buildvcs=false \
    -ldflags "-s -w -X $MODULE/weed/util/version.COMMIT=$commit" \
    -o "$tmp" "$MODULE/weed"
) >>"$buildlog" 2>&1 || fail "go build failed after $(since "$t0") s"

reported=$("$tmp" version 2>&1) || fail "the new binary does not run: $reported"
reported=${reported%%$'\n'*}  # first line; the rest is an advertisement
case "$reported" in
  *" $WEED_RELEASE $commit"*) ;;
  *) die "weed: the binary built from $pin reports '$reported', not $WEED_RELEASE: set WEED_RELEASE in $0" ;;
esac

mv -f "$tmp" "$bin"
(cd "$bindir" && sha256sum "weed-$version" >"weed-$version.sha256")
log "weed: built $bin ($(du -h "$bin" | cut -f1), $reported) in $(since "$t0") s"
echo "$bin"
