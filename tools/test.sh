#!/usr/bin/env bash
# `make test`: every phase CI runs, in order, each timed (tools/phase.sh); the table of phases and seconds is
# printed at the end, also when a phase fails (the run stops at the first failure).
# The base image, the SeaweedFS and etcd builds and the wheelhouses (minutes of debootstrap, compiling and
# downloading on a fresh machine, needed only from the molecule phase on) run in the background beside lint, sanity and unit tests; their output goes to
# tests/output/prepare.log.
# MLFLOW_HA_PHASES_CONTINUE=1 adds to the record instead of starting a new one (.ci/run times the harness first).
source "$(dirname "$0")/lib.sh"

phase() { bash "$ROOT/tools/phase.sh" "$@"; }
[ -n "${MLFLOW_HA_PHASES_CONTINUE:-}" ] || phase reset
trap 'phase report' EXIT

mkdir -p "$ROOT/tests/output"
phase run "  make image weed etcd wheelhouse (background, beside lint, sanity, unit)" \
  make --no-print-directory -C "$ROOT" image weed etcd wheelhouse >"$ROOT/tests/output/prepare.log" 2>&1 &
prepare=$!

for target in lint sanity unit; do
  phase run "make $target" make --no-print-directory -C "$ROOT" "$target"
done
t0=$(date +%s)
if ! wait "$prepare"; then
  tail -40 "$ROOT/tests/output/prepare.log" >&2
  die "make image weed etcd wheelhouse failed (log: tests/output/prepare.log)"
fi
phase add "waiting for image, weed, etcd and wheelhouse" "$(since "$t0")"
# The postgres_ha and storage_ha scenarios converge the same stacks as the lab: here their verify playbooks run
# against the lab (tests/lab/test_lab.py) and `make molecule` skips them, saying so (docs/harness.md).
export MLFLOW_HA_TIER_CHECKS_IN_LAB=1
for target in molecule e2e; do
  phase run "make $target" make --no-print-directory -C "$ROOT" "$target"
done
