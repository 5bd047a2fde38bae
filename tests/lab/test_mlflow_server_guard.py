"""The deadline guard of the mlflow role against the real MLflow server (the official one, from the wheelhouse the
role installs; SQLite backend, on loopback, no lab needed): a create that the server let in before its deadline
and that then stalled before its commit (a server frozen mid-request) is rolled back and answered 504
DEADLINE_EXCEEDED once the deadline has passed, so the client's retry cannot duplicate it; the same create
without a deadline, or one that commits in time, registers the version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEADER = "X-Request-Deadline-Ms"
MODEL = "guard-test"
MLFLOW_VARS = yaml.safe_load((ROOT / "roles" / "mlflow" / "vars" / "main.yml").read_text())
# The app the mlflow role runs without basic auth, as "module:factory" (roles/mlflow/vars/main.yml _mlflow_apps).
APP = "%s:%s" % (MLFLOW_VARS["_mlflow_app_module"],
                 next(app["factory"] for app in MLFLOW_VARS["_mlflow_apps"] if not app["auth"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, path: str, body: dict, deadline_s: float | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if deadline_s is not None:
        headers[HEADER] = str(int((time.time() + deadline_s) * 1000))
    request = urllib.request.Request(url + path, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = os.environ.get("MLFLOW_HA_CLIENT_PYTHON")
    if not python:
        pytest.fail("MLFLOW_HA_CLIENT_PYTHON is unset: run through `make e2e` (tools/mlflow-venv.sh makes it)")
    tmp = tmp_path_factory.mktemp("mlflow-guard")
    dist = tmp / "mlflow_ha_stall-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow-ha-stall\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlflow.app]\nmlflow-ha-stall = stalled_commit_app:create_app\n")
    port = free_port()
    paths = [str(tmp), str(ROOT / "roles/mlflow/files"), str(ROOT / "tests/lab")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths),
               MLFLOW_HA_DEADLINE_HEADER=HEADER, MLFLOW_HA_DEADLINE_GRACE_MS="0",
               MLFLOW_HA_TEST_STALL_FILE=str(tmp / "stall"), MLFLOW_HA_TEST_APP=APP)
    log = (tmp / "server.log").open("w")
    mlflow = str(Path(python).parent / "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--app-name", "mlflow-ha-stall", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                             "--default-artifact-root", str(tmp / "artifacts")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    status, body = call(url, "/api/2.0/mlflow/registered-models/create", {"name": MODEL})
    assert status == 200, body
    yield url, tmp
    proc.terminate()
    proc.wait(timeout=30)


def create(url: str, key: str, deadline_s: float | None = None) -> tuple[int, dict]:
    return call(url, "/api/2.0/mlflow/model-versions/create",
                {"name": MODEL, "source": f"s3://guard-test/{key}", "tags": [{"key": "idempotency_key", "value": key}]},
                deadline_s)


def versions_with(url: str, key: str) -> list:
    query = urllib.parse.urlencode({"filter": f"name = '{MODEL}' and tags.idempotency_key = '{key}'"})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/model-versions/search?{query}", timeout=30) as response:
        return json.loads(response.read()).get("model_versions", [])


def test_a_create_that_stalls_past_its_deadline_before_committing_is_rolled_back(server):
    url, tmp = server
    (tmp / "stall").write_text("3")
    status, body = create(url, "stalled", deadline_s=1.5)
    assert status == 504, body
    assert body.get("error_code") == "DEADLINE_EXCEEDED", body
    assert not versions_with(url, "stalled")
    log = (tmp / "server.log").read_text()
    assert "rolled back a transaction" in log, log[-3000:]


def test_a_stalled_create_without_a_deadline_or_within_it_commits(server):
    url, tmp = server
    (tmp / "stall").write_text("1")
    status, body = create(url, "no-deadline")
    assert status == 200, body
    (tmp / "stall").write_text("1")
    status, body = create(url, "in-time", deadline_s=30)
    assert status == 200, body
    assert len(versions_with(url, "no-deadline")) == 1
    assert len(versions_with(url, "in-time")) == 1


def test_a_request_that_arrives_late_is_refused_at_the_door(server):
    url = server[0]
    status, body = create(url, "late", deadline_s=-1)
    assert status == 504 and body.get("error_code") == "DEADLINE_EXCEEDED", body
    assert not versions_with(url, "late")
