"""mlflow_job_execution: MLflow 3's server-side job execution (huey consumers) is off unless asked for; on, only the
first server of the group runs the periodic tasks."""

from __future__ import annotations

import pytest
import test_entrypoint
from test_entrypoint import GROUPS, LAB, env

TWO = {**GROUPS, "mlflow": ["app1", "app2"]}


@pytest.fixture(autouse=True)
def second_server(monkeypatch):
    monkeypatch.setitem(test_entrypoint.ADDRESSES, "app2", "10.0.0.32")


def test_the_servers_start_without_job_execution_by_default():
    for host in ("app1", "app2"):
        got = env(LAB, host=host, groups=TWO)
        assert got["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        assert "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS" not in got


def test_on_only_the_first_server_runs_the_periodic_tasks():
    first = env(LAB, host="app1", groups=TWO, mlflow_job_execution=True)
    second = env(LAB, host="app2", groups=TWO, mlflow_job_execution=True)
    assert first["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == second["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert first["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"] == "true"
    assert second["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"] == "false"
