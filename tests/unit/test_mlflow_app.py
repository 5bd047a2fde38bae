"""The MLflow server apps of the mlflow role (roles/mlflow/files/mlflow_ha_app.py): the deadline guard answers a
late request itself and passes every other request, unchanged, to MLflow's app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fakes import load_program

ROOT = Path(__file__).resolve().parents[2]
app_module = load_program(ROOT / "roles" / "mlflow" / "files" / "mlflow_ha_app.py")

NOW = 1_800_000_000.0  # seconds since the epoch, the guard's clock in these tests
HEADER = "X-Request-Deadline-Ms"


class Inner:
    """The wrapped app: records what reached it and answers 200."""

    def __init__(self):
        self.seen = []

    async def __call__(self, scope, receive, send):
        self.seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app, headers=(), scope_type="http"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": scope_type, "method": "POST", "path": "/api/2.0/mlflow/model-versions/create",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    return sent


def guarded(grace_ms=0):
    inner = Inner()
    return inner, app_module.DeadlineGuard(inner, HEADER, grace_ms=grace_ms, clock=lambda: NOW)


def test_a_request_past_its_deadline_is_answered_504_and_never_reaches_mlflow():
    inner, app = guarded()
    sent = call(app, [(HEADER, str(int(NOW * 1000) - 1))])
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"])["error_code"] == "DEADLINE_EXCEEDED"
    assert not inner.seen
    assert app.rejected == 1


def test_a_request_before_its_deadline_reaches_mlflow():
    inner, app = guarded()
    sent = call(app, [(HEADER, str(int(NOW * 1000) + 5000))])
    assert sent[0]["status"] == 200
    assert len(inner.seen) == 1


def test_requests_without_the_header_or_with_a_malformed_one_reach_mlflow():
    inner, app = guarded()
    assert call(app)[0]["status"] == 200
    assert call(app, [(HEADER, "soon")])[0]["status"] == 200
    assert len(inner.seen) == 2


def test_the_grace_covers_clock_skew():
    inner, app = guarded(grace_ms=500)
    assert call(app, [(HEADER, str(int(NOW * 1000) - 400))])[0]["status"] == 200
    assert call(app, [(HEADER, str(int(NOW * 1000) - 600))])[0]["status"] == 504
    assert len(inner.seen) == 1


def test_lifespan_events_pass_through():
    inner, app = guarded()
    call(app, [(HEADER, "0")], scope_type="lifespan")
    assert len(inner.seen) == 1


def test_the_environment_decides_whether_to_guard():
    inner = Inner()
    assert app_module.guard(inner, {}) is inner
    assert app_module.guard(inner, {"MLFLOW_HA_DEADLINE_HEADER": " "}) is inner
    wrapped = app_module.guard(inner, {"MLFLOW_HA_DEADLINE_HEADER": HEADER, "MLFLOW_HA_DEADLINE_GRACE_MS": "250"})
    assert isinstance(wrapped, app_module.DeadlineGuard)
    assert wrapped.header == b"x-request-deadline-ms" and wrapped.grace_ms == 250


class Recorder(Inner):
    """The wrapped app: records the request deadline its code sees (as MLflow's commit listener would)."""

    async def __call__(self, scope, receive, send):
        self.deadline = app_module.REQUEST_DEADLINE_MS.get()
        await super().__call__(scope, receive, send)


def test_the_request_deadline_is_visible_inside_the_app_and_only_there():
    inner = Recorder()
    app = app_module.DeadlineGuard(inner, HEADER, clock=lambda: NOW)
    deadline = int(NOW * 1000) + 5000
    call(app, [(HEADER, str(deadline))])
    assert inner.deadline == deadline
    assert app_module.REQUEST_DEADLINE_MS.get() is None
    call(app)
    assert inner.deadline is None


def commit_in_request(listener, deadline):
    token = app_module.REQUEST_DEADLINE_MS.set(deadline)
    try:
        listener(object())
    finally:
        app_module.REQUEST_DEADLINE_MS.reset(token)


def test_a_commit_past_the_request_deadline_is_refused():
    listener = app_module.CommitGuard(clock=lambda: NOW)
    try:
        commit_in_request(listener, int(NOW * 1000) - 1)
    except app_module.DeadlineExceeded as err:
        assert "rolled back" in str(err)
    else:
        raise AssertionError("a late commit went through")
    assert listener.refused == 1


def test_commits_before_the_deadline_without_one_or_outside_requests_go_through():
    listener = app_module.CommitGuard(grace_ms=500, clock=lambda: NOW)
    commit_in_request(listener, int(NOW * 1000) + 1)
    commit_in_request(listener, int(NOW * 1000) - 400)
    commit_in_request(listener, None)
    listener(object())
    assert listener.refused == 0
