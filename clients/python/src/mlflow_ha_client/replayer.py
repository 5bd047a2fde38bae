"""A background thread that replays the spool while a long-lived process runs (a training service, a notebook
kernel, an API)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Optional

from mlflow_ha_client.client import Registry
from mlflow_ha_client.errors import RegistryError
from mlflow_ha_client.spool import ReplayReport

log = logging.getLogger("mlflow_ha_client.replayer")


class Replayer:
    """Every ``interval`` seconds, when the spool has pending entries and the registry's breakers are not all
    open, one replay pass. ``stop()`` ends the thread within one pass (it waits at most ``join_timeout``)."""

    def __init__(self, registry: Registry, interval: float = 30.0):
        if registry.spool is None:
            raise ValueError("the registry has no spool to replay")
        self.registry = registry
        self.interval = interval
        self.last: Optional[ReplayReport] = None
        self.passes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> Replayer:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mlflow-ha-spool-replayer", daemon=True)
            self._thread.start()
        return self

    def stop(self, join_timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(join_timeout)

    def run_once(self) -> Optional[ReplayReport]:
        """One pass now (what the thread does each interval); None when there was nothing to do."""
        spool = self.registry.spool
        if spool is None or not spool.entries() or self.registry.breakers_open():
            return None
        try:
            self.last = self.registry.replay()
        except RegistryError as err:  # a pass never kills the thread
            log.warning("spool replay failed: %s", err)
            return None
        self.passes += 1
        if self.last.replayed or self.last.stopped:
            log.info("spool replay: %d replayed, %d failed, stopped: %s", len(self.last.replayed),
                     len(self.last.failed), self.last.stopped)
        return self.last

    def status(self) -> Dict[str, Any]:
        return {"running": bool(self._thread and self._thread.is_alive()), "interval": self.interval,
                "passes": self.passes, "last": self.last.to_dict() if self.last else None}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the thread outlives any one pass; the error is logged with its traceback
                log.exception("spool replay pass failed")
            self._stop.wait(self.interval)
