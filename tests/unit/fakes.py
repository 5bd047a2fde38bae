"""Fakes for unit tests: a clock that only moves when asked, and a scripted transport."""

from __future__ import annotations

from collections.abc import Callable

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    Response,
    Transport,
    TransportError,
)


class FakeClock:
    """Time that moves only when slept on (or advanced by a fake transport)."""

    def __init__(self, start: float = 1000.0):
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)


Outcome = Response | TransportError | Callable[[], Response]


class FakeTransport(Transport):
    """Answers from a per-endpoint script; records every call. Each call costs ``latency`` fake seconds."""

    def __init__(self, clock: FakeClock, script: dict[str, list[Outcome]], latency: float = 0.01):
        self.clock = clock
        self.script = {k.rstrip("/"): list(v) for k, v in script.items()}
        self.latency = latency
        self.calls: list[tuple[str, str, float]] = []

    def send(self, method, url, body, headers, timeout):
        self.calls.append((method, url, timeout))
        self.clock.t += self.latency
        base = next(b for b in self.script if url.startswith(b))
        queue = self.script[base]
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(outcome, TransportError):
            raise outcome
        if callable(outcome):
            return outcome()
        return outcome


def ok(body: bytes = b"{}", status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, body, headers or {})


def refused() -> TransportError:
    return TransportError("connection refused", reached_server=False)


def reset_after_send() -> TransportError:
    return TransportError("ConnectionResetError: reset by peer", reached_server=True)
