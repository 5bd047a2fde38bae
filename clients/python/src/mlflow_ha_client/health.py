"""The registry's health for a user's own API: a function returning a dict, and a WSGI app to mount.

Mount it with any WSGI-capable framework, e.g. werkzeug's ``DispatcherMiddleware(app, {"/registry": app})``,
Flask's ``app.wsgi_app`` the same way, or FastAPI/Starlette's ``WSGIMiddleware(health_app(registry))``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from mlflow_ha_client.client import Registry


def registry_health(registry: Registry) -> Dict[str, Any]:
    """``Registry.health()`` plus the spool's status: ``up`` (bool), ``tier_down``, ``summary``, the load
    balancer's and the servers' answers, the breakers, and ``spool`` (counts, oldest pending age, counters)."""
    state = registry.health()
    if registry.spool is not None:
        status = registry.spool.status()
        status.pop("waiting", None)
        state["spool"] = status
    return state


class HealthApp:
    """WSGI: ``GET /`` or ``/health`` -> the registry_health JSON (200 when the registry is up, 503 when it is
    not), ``GET /metrics`` -> the spool's metrics in the Prometheus text format. A look is cached for
    ``max_age`` seconds, so a busy health check does not probe the registry on every request."""

    def __init__(self, registry: Registry, max_age: float = 5.0):
        self.registry = registry
        self.max_age = max_age
        self._cached: Optional[Tuple[float, Dict[str, Any]]] = None
        self._lock = threading.Lock()

    def state(self) -> Dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.max_age:
                self._cached = (now, registry_health(self.registry))
            return self._cached[1]

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n", "text/plain")
        if path in ("/", "/health"):
            state = self.state()
            body = json.dumps(state, indent=1, sort_keys=True).encode("utf-8") + b"\n"
            return _answer(start_response, "200 OK" if state["up"] else "503 Service Unavailable", body,
                           "application/json")
        if path == "/metrics":
            text = self.registry.spool.metrics() if self.registry.spool is not None else ""
            return _answer(start_response, "200 OK", text.encode("utf-8"), "text/plain; version=0.0.4")
        return _answer(start_response, "404 Not Found", b"not found\n", "text/plain")


def _answer(start_response: Callable[..., Any], status: str, body: bytes, content_type: str) -> List[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def health_app(registry: Registry, max_age: float = 5.0) -> HealthApp:
    return HealthApp(registry, max_age)
