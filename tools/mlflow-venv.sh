#!/usr/bin/env bash
# The official MLflow client on the controller (.cache/mlflow-venv), installed offline from the same
# wheelhouse the mlflow role ships to the servers: the end-to-end test and `make bench` register models with
# it through the VIP, exactly as users do. Prints the venv's python on its last line.
source "$(dirname "$0")/lib.sh"

reqs="$ROOT/roles/mlflow/files/requirements.txt"
bash "$ROOT/tools/wheelhouse.sh" mlflow "$reqs"
venv="$CACHE/mlflow-venv"
# One install at a time (the unit tests and the end-to-end tests both ask for it): a second call waits.
exec 9>"$CACHE/.mlflow-venv.lock"
flock 9
stamp="$venv/.recipe-$(recipe_hash "$reqs" "$0")"
if [ ! -f "$stamp" ]; then
  t0=$(date +%s)
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-index --find-links "$CACHE/wheelhouse/mlflow" -r "$reqs"
  touch "$stamp"
  log "mlflow venv: installed from the wheelhouse in $(since "$t0") s"
fi
echo "$venv/bin/python"
