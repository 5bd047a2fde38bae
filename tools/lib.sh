# shellcheck shell=bash
# Shared helpers for the lab harness scripts in tools/. Sourced, never run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLFLOW_HA_CACHE:-$ROOT/.cache}"
export ROOT CACHE

log() { printf '[harness %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds since an epoch timestamp, for the step timings in the log.
since() { echo $(( $(date +%s) - $1 )); }

# apt-get install, running `apt-get update` once per harness run.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${_HARNESS_APT_UPDATED:-}" ]; then
    apt-get update -q >/dev/null
    _HARNESS_APT_UPDATED=1
  fi
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# Hash of the given files' contents (order matters), short form.
recipe_hash() { cat "$@" | sha256sum | cut -c1-12; }

# For the builds from Go modules (tools/build-weed.sh, tools/build-etcd.sh): this machine's Go in $GO (never a
# toolchain fetched behind our back: GOTOOLCHAIN=local), and the build log LOG created empty.
go_build_setup() {  # go_build_setup NAME LOG
  GO=${MLFLOW_HA_GO:-$(command -v go || echo /usr/local/go/bin/go)}
  [ -x "$GO" ] || die "$1: Go not found (looked for 'go' on PATH and /usr/local/go/bin/go; set MLFLOW_HA_GO)"
  export GO GOTOOLCHAIN=local
  mkdir -p "$(dirname "$2")"
  : >"$2"
}
