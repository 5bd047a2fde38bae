#!/usr/bin/env bash
# A deployment controller without Docker or the lab harness (docs/deploy.md, "1. The controller"):
#   tools/controller.sh [--venv DIR] [--no-wheelhouses | --wheelhouses-only] [--binaries] [--check]
# 1. a virtualenv (default .venv of this checkout) from requirements-controller.txt: Ansible, the collection's
#    dependencies and the Python libraries its modules use on the controller, no linters or test tools;
# 2. the paths ansible.cfg names: this checkout as the collection mlops.mlflow_ha, Mitogen's strategy plugins;
# 3. the offline wheelhouses the patroni and mlflow roles install from ($CACHE/wheelhouse/{patroni,mlflow}.tar,
#    tools/wheelhouse.sh): the hosts then need no package index;
# 4. with --binaries, etcd 3.6 (tools/build-etcd.sh) and, in a checkout, SeaweedFS (tools/build-weed.sh) from their
#    Go modules: needs Go; minutes of compiling on a cold machine.
# --wheelhouses-only: step 3 alone, e.g. from a collection installed with ansible-galaxy (whose directory is this
#    script's parent): MLFLOW_HA_CACHE=DIR bash <collection>/tools/controller.sh --wheelhouses-only
# --check: says what would be done and checks the prerequisites, changes nothing.
# Every step is idempotent and skipped when current. Nothing here installs, starts or needs Docker.
source "$(dirname "$0")/lib.sh"

usage() { sed -n '3p' "$0" | sed 's/^#  *//' >&2; exit 2; }

venv="$ROOT/.venv"
do_venv=1 do_wheelhouses=1 do_binaries=0 check=0
while [ $# -gt 0 ]; do
  case $1 in
    --venv) [ $# -ge 2 ] || usage; venv=$2; shift 2 ;;
    --no-wheelhouses) do_wheelhouses=0; shift ;;
    --wheelhouses-only) do_venv=0; shift ;;
    --binaries) do_binaries=1; shift ;;
    --check) check=1; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) log "controller: unknown argument $1"; usage ;;
  esac
done
[ "$do_venv" = 1 ] || [ "$do_wheelhouses" = 1 ] || die "controller: --no-wheelhouses and --wheelhouses-only leave nothing to do"
case $venv in /*) ;; *) venv="$PWD/$venv" ;; esac

# The hosts run Debian 12 (Python 3.11, glibc): wheels built by another Python minor version would not install there.
wheel_python=${MLFLOW_HA_WHEEL_PYTHON:-python3}
check_wheel_python() {
  local version
  version=$("$wheel_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || die "controller: no Python at '$wheel_python' to build the wheelhouses with (set MLFLOW_HA_WHEEL_PYTHON)"
  [ "$version" = 3.11 ] || die "controller: the wheelhouses need Python 3.11 (the Python of the Debian 12 hosts), \
'$wheel_python' is $version. Set MLFLOW_HA_WHEEL_PYTHON to a Python 3.11 on the hosts' CPU architecture (or build on a \
Debian 12 machine), or skip them (--no-wheelhouses) and set patroni_install_source and mlflow_install_source to index."
  [ "$(uname -s)" = Linux ] || die "controller: the wheelhouses must be built on Linux (the hosts' platform), not $(uname -s)"
}

python3 -c 'import venv, ensurepip' 2>/dev/null || [ "$do_venv" = 0 ] \
  || die "controller: python3 cannot create virtualenvs (Debian: apt-get install python3-venv)"
[ "$do_wheelhouses" = 0 ] || check_wheel_python
if [ "$do_binaries" = 1 ]; then
  command -v "${MLFLOW_HA_GO:-go}" >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] \
    || die "controller: --binaries needs Go (set MLFLOW_HA_GO, or supply etcd_binaries_src and the SeaweedFS binary yourself)"
fi

if [ "$check" = 1 ]; then
  [ "$do_venv" = 0 ] || log "controller: would install requirements-controller.txt into $venv and link the collection under $CACHE"
  [ "$do_wheelhouses" = 0 ] || log "controller: would build $CACHE/wheelhouse/patroni.tar and mlflow.tar with $wheel_python"
  [ "$do_binaries" = 0 ] || log "controller: would build etcd$([ -d "$ROOT/tools/seaweedfs" ] && echo ' and SeaweedFS') with Go"
  log "controller: prerequisites present"
  exit 0
fi

if [ "$do_venv" = 1 ]; then
  venv_install "$venv" "$ROOT/requirements-controller.txt"
  link_collection "$venv"
  "$venv/bin/python" "$ROOT/tools/link_dependencies.py" "$CACHE/collections"
fi
if [ "$do_wheelhouses" = 1 ]; then
  for app in patroni mlflow; do
    MLFLOW_HA_WHEEL_PYTHON=$wheel_python bash "$ROOT/tools/wheelhouse.sh" "$app" "$ROOT/roles/$app/files/requirements.txt"
  done
fi
binaries=()
if [ "$do_binaries" = 1 ]; then
  binaries+=("etcd_binaries_src: $(bash "$ROOT/tools/build-etcd.sh" | tail -1)")
  if [ -d "$ROOT/tools/seaweedfs" ]; then
    binaries+=("seaweedfs_binary_src: $(bash "$ROOT/tools/build-weed.sh" | tail -1)")
  else
    log "controller: no tools/seaweedfs here (an installed collection leaves it out): build SeaweedFS in a checkout"
  fi
fi

# What to put into the inventory (group_vars/all) and how to use the virtualenv.
{
  echo "controller ready."
  [ "$do_venv" = 0 ] || echo "  activate: source $venv/bin/activate"
  if [ "$do_wheelhouses" = 1 ]; then
    echo "  patroni_wheelhouse_src: $CACHE/wheelhouse/patroni.tar"
    echo "  mlflow_wheelhouse_src: $CACHE/wheelhouse/mlflow.tar"
  fi
  for line in "${binaries[@]}"; do echo "  $line"; done
} >&2
