"""A server app for test_mlflow_server_guard.py, run by the real `mlflow server --app-name mlflow-ha-stall`: the
collection's app (MLFLOW_HA_TEST_APP, "module:factory", which the test takes from the mlflow role's _mlflow_apps: the
app the role runs without basic auth), with one addition that stands in for a frozen server: when the file named in
MLFLOW_HA_TEST_STALL_FILE exists, the next commit first waits the seconds written in it (and removes it). The stall
listener is registered before the app's own, so the commit guard sees the clock after the stall, as it would after
a VM pause."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

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
    module, factory = os.environ["MLFLOW_HA_TEST_APP"].split(":")
    return getattr(importlib.import_module(module), factory)()
