#!/usr/bin/env bash
# The local lab (inventories/lab): tools/lab.sh up | converge | validate | play | destroy | urls
#   up        harness prerequisites side by side (controller venv, base image, weed and etcd binaries, wheelhouses;
#             the Go builds go on beside site.yml's first plays), containers,
#             site.yml, validate.yml, URLs;
#             with MLFLOW_HA_LAB_CHECK=1 (the end-to-end test) `site.yml --check` on the new, empty hosts first;
#             with MLFLOW_HA_LAB_VALIDATE=0 (`make test`) without validate.yml: the end-to-end tests' first one runs
#             it right after (over SSH, as docs/deploy.md says), so the lab job's own run was the same check twice
#   converge [log-name [ansible-playbook options]]  site.yml only (a rerun on a converged lab reports changed=0)
#   validate  playbooks/validate.yml
#   play NAME PLAYBOOK [ansible-playbook options]  any playbook against the lab, logged as NAME
#   destroy   remove the lab's containers and network
# Ansible's output goes to tests/output/lab/<step>.log as well as the terminal.
source "$(dirname "$0")/lib.sh"

INV="$ROOT/inventories/lab"
OUT="$ROOT/tests/output/lab"
mkdir -p "$OUT"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
# Each lab playbook's log ends with its slowest tasks (profile_tasks): where a fresh site.yml or a rerun spends
# its minutes (docs/harness.md).
export ANSIBLE_CALLBACKS_ENABLED="${ANSIBLE_CALLBACKS_ENABLED:-ansible.posix.timer,ansible.posix.profile_tasks}"
export PROFILE_TASKS_TASK_OUTPUT_LIMIT="${PROFILE_TASKS_TASK_OUTPUT_LIMIT:-25}"
export PATH="$ROOT/.venv/bin:$PATH"

vip() { awk '/^mlflow_ha_vip:/ {print $2}' "$INV/group_vars/all.yml"; }
host_address() { awk -v h="$1" '$1 == h":" {for (i = 1; i <= NF; i++) if ($i == "{lab_address:") {sub(/,$/, "", $(i+1)); print $(i+1)}}' "$INV/hosts.yml"; }

# The harness's inputs, built side by side: the SeaweedFS and etcd binaries (Go builds), the two wheelhouses and,
# with `up`, the base image and the controller venv. Each step caches its result (a second call is a check of
# seconds) and holds a lock, so a job tools/test.sh started earlier is waited for, not repeated. On a fresh machine
# they took one after another what the slowest takes now (docs/harness.md, "make lab on a fresh machine").
# With `up`, the Go builds are waited for last: the first plays of site.yml (the PKI, firewall, metrics, logs, and
# for weed etcd and PostgreSQL as well) need neither binary. A build still running then is left running: its path
# is exported (the build scripts' --path) with the build's lock (their --lock: MLFLOW_HA_WEED_LOCK,
# MLFLOW_HA_ETCD_LOCK), and the lab inventory's etcd_binaries_src and seaweedfs_binary_src wait on that lock when
# a play first reads them (inventories/lab/group_vars/all.yml). finish_builds reports how the builds ended.
declare -A build_pids=()
builds_dir=""
prerequisites() {  # prerequisites [up]
  local pids=() names=() i failed="" name var path
  builds_dir=$(mktemp -d)
  [ "${1:-}" != up ] || log "lab: building the controller venv, base image, wheelhouses, etcd and SeaweedFS side by side"
  start_job() { local name=$1; shift; "$@" >"$builds_dir/$name.out" 2>&1 & pids+=("$!"); names+=("$name"); }
  if [ "${1:-}" = up ]; then
    start_job image bash "$ROOT/tools/build-image.sh"
    start_job venv bash "$ROOT/tools/venv.sh"
  fi
  bash "$ROOT/tools/build-weed.sh" >"$builds_dir/weed.out" 2>"$builds_dir/weed.err" & build_pids[weed]=$!
  bash "$ROOT/tools/build-etcd.sh" >"$builds_dir/etcd.out" 2>"$builds_dir/etcd.err" & build_pids[etcd]=$!
  start_job wheelhouse-patroni bash "$ROOT/tools/wheelhouse.sh" patroni "$ROOT/roles/patroni/files/requirements.txt"
  start_job wheelhouse-mlflow bash "$ROOT/tools/wheelhouse.sh" mlflow "$ROOT/roles/mlflow/files/requirements.txt"
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { failed="$failed ${names[$i]}"; cat "$builds_dir/${names[$i]}.out" >&2; }
  done
  [ -z "$failed" ] || { finish_builds; die "lab: building$failed failed (its messages above)"; }
  for name in weed etcd; do
    var=MLFLOW_HA_WEED_BINARY
    [ "$name" = etcd ] && var=MLFLOW_HA_ETCD_BINARIES
    if [ "${1:-}" != up ] || ! kill -0 "${build_pids[$name]}" 2>/dev/null; then
      finish_build "$name" || { finish_builds; die "lab: building $name failed (its messages above)"; }
      export "$var=$(tail -1 "$builds_dir/$name.out")"
    else
      path=$(bash "$ROOT/tools/build-$name.sh" --path)
      log "lab: the $name build goes on beside the first plays; the play that needs $path waits for it"
      export "$var=$path" "${var%_*}_LOCK=$(bash "$ROOT/tools/build-$name.sh" --lock)"
    fi
  done
}
finish_build() {  # finish_build NAME: wait for that Go build; its messages when it failed
  local name=$1 pid=${build_pids[$1]:-}
  [ -n "$pid" ] || return 0
  unset "build_pids[$name]"
  wait "$pid" && return 0
  cat "$builds_dir/$name.err" >&2
  return 1
}
finish_builds() {  # every Go build still running ended, the failures reported; 1 when one failed
  local name rc=0
  for name in "${!build_pids[@]}"; do
    finish_build "$name" || { log "lab: building $name failed (its messages above)"; rc=1; }
  done
  [ -z "$builds_dir" ] || rm -rf "$builds_dir"
  return "$rc"
}
# After a failure: a Go build that failed meanwhile is named with its messages (the play that needed it failed for
# want of its file); one still running is left to finish and cache its binary for the next run.
report_builds() {
  local name
  for name in "${!build_pids[@]}"; do
    kill -0 "${build_pids[$name]}" 2>/dev/null || finish_build "$name" || log "lab: building $name failed (above)"
  done
}
trap '[ $? -eq 0 ] || report_builds' EXIT

playbook() {  # playbook NAME FILE [args...]: run and keep a log
  local name=$1 file=$2; shift 2
  local t0; t0=$(date +%s)
  log "lab: $name ($file)"
  set -o pipefail
  local rc=0
  ansible-playbook -i "$INV" "$file" "$@" 2>&1 | tee "$OUT/$name.log" || rc=$?
  log "lab: $name done in $(since "$t0") s"
  # MLFLOW_HA_EXPECT_REFUSAL=1: the caller runs this to see it refused (its table row says "refused", not FAILED).
  bash "$ROOT/tools/phase.sh" add "  lab: $name" "$(since "$t0")" "$rc" "${MLFLOW_HA_EXPECT_REFUSAL:+refusal}"
  return "$rc"
}

urls() {
  local v; v=$(vip)
  cat <<URLS

  MLflow (through the VIP):   http://$v/        https://$v/  (CA: inventories/pki/lab/ca.crt)
  Monitoring login (HTTPS, same CA): monitoring / mlflow_ha_monitoring_password in inventories/lab/group_vars/all.yml
  HAProxy stats:              https://$v:8404/stats
  Prometheus (mon1):          https://$(host_address mon1):9090/alerts
  Alertmanager (mon1):        https://$(host_address mon1):9093/#/alerts
  Probe metrics (mon1):       https://$(host_address mon1):9109/metrics
  Central logs (mon1):        docker exec mlflow-ha-lab-mon1 journalctl -D /var/log/journal/remote -u patroni
  PostgreSQL (read-write):    $v:5000           read-only: $v:5001
  S3 endpoint:                https://$v:9000
  Tear down:                  make lab-destroy
URLS
}

case "${1:-up}" in
  up)
    prerequisites up
    playbook create "$ROOT/tools/lab/create.yml"
    # What a user runs before a first deploy: every role must get through check mode on hosts where nothing is
    # installed yet (the molecule scenarios' `check` step, for the whole site).
    # On every host: the firewall role refuses a run whose rules would lack the addresses of hosts left out by
    # --limit, so one host per group is not an option (docs/harness.md).
    if [ -n "${MLFLOW_HA_LAB_CHECK:-}" ]; then
      playbook site-check "$ROOT/playbooks/site.yml" --check
    fi
    playbook site "$ROOT/playbooks/site.yml"
    if [ "${MLFLOW_HA_LAB_VALIDATE:-1}" != 0 ]; then
      playbook validate "$ROOT/playbooks/validate.yml"
    fi
    finish_builds
    urls
    ;;
  converge)
    prerequisites
    playbook "${2:-site}" "$ROOT/playbooks/site.yml" "${@:3}"
    finish_builds
    ;;
  validate)
    playbook validate "$ROOT/playbooks/validate.yml"
    ;;
  play)
    [ $# -ge 3 ] || die "usage: tools/lab.sh play NAME PLAYBOOK [ansible-playbook options]"
    prerequisites
    playbook "$2" "$3" "${@:4}"
    finish_builds
    ;;
  destroy)
    playbook destroy "$ROOT/tools/lab/destroy.yml"
    ;;
  urls)
    urls
    ;;
  *)
    die "usage: tools/lab.sh up|converge|validate|play|destroy|urls"
    ;;
esac
