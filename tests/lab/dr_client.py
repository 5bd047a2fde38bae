"""The DR drill's client side (tests/lab/test_lab.py), run with the official MLflow client's Python: register model
versions with random artifacts, delete the registered model (the operator's error), and check after a restore which
versions exist and that their artifacts read back byte for byte, the way users read them (models:/ URIs).

  dr_client.py register MODEL COUNT STATE   COUNT new versions, each a run with a 256 KiB artifact; appends
                                            {version, run_id, artifact_uri, sha256, acked} per version to the JSON
                                            list in STATE
  dr_client.py delete MODEL                 delete the registered model (its rows; artifacts stay)
  dr_client.py check MODEL STATE            print JSON: the versions the registry has, and per version of STATE
                                            whether it exists and its artifact matches

Tracking URI, CA file and login come from the environment (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_SERVER_CERT_PATH,
MLFLOW_TRACKING_USERNAME/PASSWORD), as docs/clients.md sets them. The artifact step around the restore (the report of
missing and orphaned artifacts, the targeted restore from the artifact backup) is in dr_artifacts.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ARTIFACT_BYTES = 256 * 1024


def load(state: Path) -> list:
    return json.loads(state.read_text()) if state.exists() else []


def register(model: str, count: int, state: Path) -> None:
    client = MlflowClient()
    mlflow.set_experiment("dr-drill")
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    done = load(state)
    with tempfile.TemporaryDirectory() as scratch:
        for _step in range(count):
            weights = os.urandom(ARTIFACT_BYTES)
            Path(scratch, "weights.bin").write_bytes(weights)
            with mlflow.start_run() as run:
                mlflow.log_artifact(str(Path(scratch, "weights.bin")), artifact_path="model")
            version = client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            done.append({"version": int(version.version), "run_id": run.info.run_id,
                         "artifact_uri": run.info.artifact_uri, "sha256": hashlib.sha256(weights).hexdigest(),
                         "acked": time.time()})
            state.write_text(json.dumps(done))


def delete(model: str) -> None:
    MlflowClient().delete_registered_model(model)


def check(model: str, state: Path) -> dict:
    client = MlflowClient()
    try:
        present = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model}'"))
    except MlflowException as err:
        present = []
        print(f"search failed: {err}", file=sys.stderr)
    versions = []
    for entry in load(state):
        item = {"version": entry["version"], "present": entry["version"] in present, "artifact_matches": False}
        if item["present"]:
            local = mlflow.artifacts.download_artifacts(f"models:/{model}/{entry['version']}")
            item["artifact_matches"] = (
                hashlib.sha256(Path(local, "weights.bin").read_bytes()).hexdigest() == entry["sha256"])
        versions.append(item)
    return {"present": present, "versions": versions}


def main(argv: list[str]) -> int:
    command, model = argv[0], argv[1]
    if command == "register":
        register(model, int(argv[2]), Path(argv[3]))
    elif command == "delete":
        delete(model)
    elif command == "check":
        print(json.dumps(check(model, Path(argv[2]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
