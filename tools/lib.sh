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

# A virtualenv at VENV with REQUIREMENTS installed (tools/venv.sh: the development one; tools/controller.sh: a
# controller's), reinstalled only when one of the files changes: list every file REQUIREMENTS includes with -r after it.
venv_install() {  # venv_install VENV REQUIREMENTS [INCLUDED...]
  local venv=$1 reqs=$2 stamp t0
  stamp="$venv/.requirements-$(recipe_hash "${@:2}")"
  if [ -f "$stamp" ]; then
    log "venv: $venv is current"
    return 0
  fi
  t0=$(date +%s)
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -r "$reqs"
  rm -f "$venv"/.requirements-*
  touch "$stamp"
  log "venv: installed $(basename "$reqs") into $venv in $(since "$t0") s"
}

# The two paths ansible.cfg names: the checkout linked as $CACHE/collections/ansible_collections/mlops/mlflow_ha (so
# that Ansible, molecule and ansible-test see the collection under its real name, exactly as users do), and Mitogen's
# strategy plugins from VENV at $CACHE/ansible_mitogen (a path that does not name the venv's Python version).
link_collection() {  # link_collection VENV
  local link="$CACHE/collections/ansible_collections/mlops/mlflow_ha" mitogen
  mkdir -p "$(dirname "$link")"
  if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
    ln -sfn "$ROOT" "$link"
  fi
  mitogen="$("$1/bin/python" -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')"
  if [ "$(readlink "$CACHE/ansible_mitogen" 2>/dev/null)" != "$mitogen" ]; then
    ln -sfn "$mitogen" "$CACHE/ansible_mitogen"
  fi
}
