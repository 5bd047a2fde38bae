#!/usr/bin/env bash
# Phase timings of a harness or test run, for the table CI's log ends with.
#   tools/phase.sh reset                 start a new record (tests/output/phases.tsv)
#   tools/phase.sh run NAME CMD [ARGS]   run CMD, record NAME and its seconds (and whether it failed), keep its exit
#   tools/phase.sh add NAME SECONDS [RC [refusal]]  record a phase measured elsewhere, with its exit code (0 if
#                                        omitted; the tests add theirs in the same format: tests/phases.py); with
#                                        `refusal` the run was meant to be refused (a test that checks a playbook
#                                        refuses bad input): a non-zero code is recorded as "refused (RC)", not FAILED
#   tools/phase.sh report                print the table, in the order the phases ran, with the total
source "$(dirname "$0")/lib.sh"

FILE="${MLFLOW_HA_PHASES:-$ROOT/tests/output/phases.tsv}"
mkdir -p "$(dirname "$FILE")"

# One line of the record: name, seconds, "ok", "FAILED (exit code)" or, for a run meant to be refused (4th argument
# `refusal`), "refused (exit code)".
record() {
  local result=ok
  if [ "$3" -ne 0 ]; then
    result="FAILED ($3)"
    [ "${4:-}" != refusal ] || result="refused ($3)"
  fi
  printf '%s\t%s\t%s\n' "$1" "$2" "$result" >>"$FILE"
}

case "${1:-report}" in
  reset)
    : >"$FILE"
    ;;
  run)
    name=${2:?usage: phase.sh run NAME CMD [ARGS]}
    shift 2
    t0=$(date +%s)
    rc=0
    "$@" || rc=$?
    record "$name" "$(since "$t0")" "$rc"
    exit "$rc"
    ;;
  add)
    record "${2:?name}" "${3:?seconds}" "${4:-0}" "${5:-}"
    ;;
  report)
    [ -s "$FILE" ] || { echo "no phase timings recorded ($FILE)"; exit 0; }
    awk -F '\t' '
      BEGIN { printf "\n%-52s %8s  %s\n", "phase", "seconds", "result"; print "-----------------------------------------------------------------------" }
      { printf "%-52s %8d  %s\n", $1, $2, $3 }
      $1 !~ /^  / { total += $2 }
      END { print "-----------------------------------------------------------------------"; printf "%-52s %8d\n", "total (top-level phases)", total }
    ' "$FILE"
    ;;
  *)
    die "usage: tools/phase.sh reset | run NAME CMD [ARGS] | add NAME SECONDS [RC [refusal]] | report"
    ;;
esac
