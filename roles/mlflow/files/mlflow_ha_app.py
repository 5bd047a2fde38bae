"""MLflow server apps of mlflow-ha: MLflow's own FastAPI app (or its basic-auth app) behind a deadline guard.

A client that says when it stops waiting sends the moment in a request header (epoch milliseconds; the
collection's HTTP client and the lab's MLflow request header provider send X-Request-Deadline-Ms). HAProxy's
MLflow frontend already refuses a request that arrives past it. This guard does the same on the server, at the
moment the server reads the request: a server that froze (paused VM, long stall) with a create request unread
in its socket would otherwise run it on resuming, after the client had given up and retried elsewhere, and the
registry would hold the model version twice. A request past its deadline is answered 504 without reaching
MLflow, and logged.

What it cannot close: a server that freezes after committing and before answering still leaves the client
unsure (the transaction is kept; a retry duplicates it). A server frozen inside an open transaction loses it
to PostgreSQL's idle_in_transaction_session_timeout, so that case is safe.

Entry points (group `mlflow.app`, read by `mlflow server --app-name`): `mlflow-ha` (MLflow's app) and
`mlflow-ha-basic-auth` (MLflow's basic-auth app). Both are factories: `mlflow server` imports this module in its
supervising process to tell whether the entry is a factory, and MLflow itself is only imported by the workers.

Environment: MLFLOW_HA_DEADLINE_HEADER (header name; empty: no guard), MLFLOW_HA_DEADLINE_GRACE_MS (a request is
still served this many milliseconds past its deadline, for clock skew between client and server; 0 by default:
the server rejects rather than risks a duplicate).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable, Dict, Optional

LOGGER = logging.getLogger("mlflow_ha.deadline")

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header_deadline_ms(headers, name: bytes) -> Optional[int]:
    """The deadline in the request's headers (ASGI: a list of lowercase-name, value byte pairs), or None when the
    header is absent or not a number (a malformed header is ignored: the request is served as without one)."""
    for key, value in headers:
        if key == name:
            try:
                return int(value.decode("latin-1").strip())
            except ValueError:
                return None
    return None


class DeadlineGuard:
    """ASGI middleware: answers 504 to an HTTP request whose deadline header lies in the past, before the wrapped
    app sees it. Other requests, and non-HTTP scopes (lifespan), pass through unchanged."""

    def __init__(self, app: AsgiApp, header: str, grace_ms: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.header = header.strip().lower().encode("latin-1")
        self.grace_ms = grace_ms
        self.clock = clock
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and self.header:
            deadline = header_deadline_ms(scope.get("headers", []), self.header)
            if deadline is not None:
                late_ms = int(self.clock() * 1000) - deadline
                if late_ms > self.grace_ms:
                    await self.reject(scope, send, late_ms)
                    return
        await self.app(scope, receive, send)

    async def reject(self, scope: Scope, send: Send, late_ms: int) -> None:
        self.rejected += 1
        LOGGER.warning("rejected %s %s: it arrived %d ms past the client's deadline (the client has given up on it; "
                       "running it could duplicate what its retry does)", scope.get("method", "?"),
                       scope.get("path", "?"), late_ms)
        body = json.dumps({
            "error_code": "DEADLINE_EXCEEDED",
            "message": "The request reached the server %d ms after the client's deadline; it was not run." % late_ms,
        }).encode()
        await send({"type": "http.response.start", "status": 504,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def guard(app: AsgiApp, environ: Optional[Dict[str, str]] = None) -> AsgiApp:
    """Wrap app in the deadline guard the environment configures (or return it as it is when no header is set)."""
    env = os.environ if environ is None else environ
    header = env.get("MLFLOW_HA_DEADLINE_HEADER", "").strip()
    if not header:
        return app
    return DeadlineGuard(app, header, grace_ms=int(env.get("MLFLOW_HA_DEADLINE_GRACE_MS", "0") or 0))


def create_app() -> AsgiApp:
    """`mlflow-ha`: MLflow's tracking server app (what `mlflow server` runs without --app-name), guarded."""
    return guard(importlib.import_module("mlflow.server.fastapi_app").app)


def create_basic_auth_app() -> AsgiApp:
    """`mlflow-ha-basic-auth`: MLflow's basic-auth app (`--app-name basic-auth`), guarded."""
    return guard(importlib.import_module("mlflow.server.auth").create_app())
