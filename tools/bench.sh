#!/usr/bin/env bash
# `make bench`: registration load and fault injection against the lab (tests/lab/bench.py).
source "$(dirname "$0")/lib.sh"
MLFLOW_HA_WEED_BINARY="$(bash "$ROOT/tools/build-weed.sh" | tail -1)"
MLFLOW_HA_ETCD_BINARIES="$(bash "$ROOT/tools/build-etcd.sh" | tail -1)"
MLFLOW_HA_CLIENT_PYTHON="$(bash "$ROOT/tools/mlflow-venv.sh" | tail -1)"
export MLFLOW_HA_WEED_BINARY MLFLOW_HA_ETCD_BINARIES MLFLOW_HA_CLIENT_PYTHON
exec "$ROOT/.venv/bin/python" "$ROOT/tests/lab/bench.py"
