"""A server app for test_mlflow_server_guard.py, run by the real `mlflow server --app-name mlflow-ha-stall`: the
collection's app (roles/mlflow/files/mlflow_ha_app.py, as the mlflow role installs it), with one addition that
stands in for a frozen server: when the file named in MLFLOW_HA_TEST_STALL_FILE exists, the next commit first
waits the seconds written in it (and removes it). The stall listener is registered before the app's own, so the
commit guard sees the clock after the stall, as it would after a VM pause."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow_ha_app
from sqlalchemy import event
from sqlalchemy.orm import Session


def stall(_session) -> None:
    flag = Path(os.environ["MLFLOW_HA_TEST_STALL_FILE"])
    try:
        seconds = float(flag.read_text())
        flag.unlink()
    except FileNotFoundError:
        return
    time.sleep(seconds)


def create_app():
    event.listen(Session, "before_commit", stall)
    return mlflow_ha_app.create_app()
