#!/usr/bin/env bash
# `make test`: every phase CI runs, in order, each timed (tools/phase.sh); the table of phases and seconds is
# printed at the end, also when a phase fails (the run stops at the first failure).
# The base image, the SeaweedFS and etcd builds and the wheelhouses (minutes of debootstrap, compiling and
# downloading on a fresh machine, needed only from the molecule phase on) run in the background: below.
# MLFLOW_HA_PHASES_CONTINUE=1 adds to the record instead of starting a new one (.ci/run times the harness first).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/priority.sh"

phase() { bash "$ROOT/tools/phase.sh" "$@"; }
[ -n "${MLFLOW_HA_PHASES_CONTINUE:-}" ] || phase reset
# At the end, also after a failure: stop what still runs in the background (a failed run must not leave a lab
# converging or lint running behind it), then print the table.
stop_jobs() {
  local pid children
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null || continue
    mapfile -t children < <(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ')
    stop_jobs "${children[@]}"
    kill "$pid" 2>/dev/null || true
  done
}
# A fixed piece of one-core work, timed once everything else has stopped: the same tests ran 15-35 % slower on some
# days on this machine (docs/harness.md, CI run 27), so a run's seconds are compared beside this figure. It is the
# name of the table's last phase.
cpu_probe() {
  local seconds
  seconds=$(python3 -c 'import time; t = time.perf_counter(); sum(i * i for i in range(10_000_000)); print("%.2f" % (time.perf_counter() - t))') || return 0
  phase add "cpu probe after the run: 10^7 squares in $seconds s" 0
}
trap 'stop_jobs "${jobs[@]}"; cpu_probe; phase report' EXIT

mkdir -p "$ROOT/tests/output"
# Background jobs, each its own make call and log (tests/output/prepare-NAME.log): the base image, the etcd and
# SeaweedFS builds (the build scripts hold a lock per binary: when .ci/run started them already, these wait for
# those builds instead of repeating them) and the wheelhouses. Each phase waits only for what it needs: molecule for
# the image and etcd, the lab for the rest. On a fresh machine the SeaweedFS build (4-15 min of Go compiling on
# 2 cores) then runs on beside the unit tests and molecule instead of holding them up (docs/harness.md).
declare -A jobs
background() {  # background NAME TARGET...
  local name=$1; shift
  phase run "  make $* (background)" make --no-print-directory -C "$ROOT" "$@" \
    >"$ROOT/tests/output/prepare-$name.log" 2>&1 &
  jobs[$name]=$!
}
idle_background() {  # idle_background NAME TARGET...: one after another, each timed, at the lowest CPU priority
  local name=$1; shift
  (
    lowest_priority
    for target in "$@"; do
      phase run "  make $target (background, idle priority)" make --no-print-directory -C "$ROOT" "$target"
    done
  ) >"$ROOT/tests/output/prepare-$name.log" 2>&1 &
  jobs[$name]=$!
}
await() {  # await NAME...: wait for those jobs, timed as one phase
  local t0 name; t0=$(date +%s)
  for name in "$@"; do
    if ! wait "${jobs[$name]}"; then
      tail -40 "$ROOT/tests/output/prepare-$name.log" >&2
      die "the background make of $name failed (log: tests/output/prepare-$name.log)"
    fi
  done
  phase add "waiting for $*" "$(since "$t0")"
}
background image image
background etcd etcd
background weed weed
# The lab (tools/lab.sh up, `site.yml --check` on the empty hosts first) comes up in the background too, from as
# soon as its wheelhouses are built, beside the unit tests and molecule instead of after them (docs/harness.md, "the
# lab comes up in the background": ~250 s earlier in CI run 23). The end-to-end tests then test that lab
# (MLFLOW_HA_LAB_READY); the image, weed and etcd builds it needs hold their locks, so it waits for the jobs above
# instead of repeating them. No validate.yml in the lab job: the first end-to-end test runs it after its second
# site.yml run, over SSH as docs/deploy.md says (merged: the same check twice in a row, 16-23 s of the critical path).
MLFLOW_HA_LAB_CHECK=1 MLFLOW_HA_LAB_VALIDATE=0 background lab lab-destroy lab

# Lint and ansible-test sanity (static checks, ~4.5 min of CPU) run from the start at the lowest CPU priority, on
# the cycles the lab, the unit tests and molecule leave (CI run 25: both done before the lab was up, no measurable
# gain or loss: docs/harness.md, "lint and ansible-test sanity as one background job"). `make test` waits for them
# with the lab, before the end-to-end tests (both were done before the lab in CI runs 25 and 26): a failure stops the
# run there with its log, ~12 min in, instead of after the end-to-end tests. The unit tests stay in front: some
# start real servers with deadlines, which a starved process would miss.
idle_background static lint sanity
for target in unit deploy-check cloud; do
  phase run "make $target" make --no-print-directory -C "$ROOT" "$target"
done
# Every scenario converges a stack the lab also has: here their checks (verify playbooks, testinfra files) run
# against the lab (tests/lab/test_lab.py) and `make molecule` skips them, saying so with where each one's checks run
# (docs/harness.md); minio's needs a binary users bring. `make molecule` alone still runs them whole.
export MLFLOW_HA_TIER_CHECKS_IN_LAB=1
await image etcd
phase run "make molecule" make --no-print-directory -C "$ROOT" molecule MOLECULE_NEEDS=etcd
await weed lab static
MLFLOW_HA_LAB_READY=1 phase run "make e2e" make --no-print-directory -C "$ROOT" e2e
