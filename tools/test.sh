#!/usr/bin/env bash
# `make test`: every phase CI runs, in order, each timed (tools/phase.sh); the table of phases and seconds is
# printed at the end, also when a phase fails (the run stops at the first failure).
# MLFLOW_HA_PHASES_CONTINUE=1 adds to the record instead of starting a new one (.ci/run times the harness first).
source "$(dirname "$0")/lib.sh"

phase() { bash "$ROOT/tools/phase.sh" "$@"; }
[ -n "${MLFLOW_HA_PHASES_CONTINUE:-}" ] || phase reset
trap 'phase report' EXIT

for target in weed wheelhouse lint sanity unit molecule e2e; do
  phase run "make $target" make --no-print-directory -C "$ROOT" "$target"
done
