"""The MLflow server apps of the mlflow role (roles/mlflow/files/mlflow_ha_app.py): the deadline guard answers a
late request itself and passes every other request, unchanged, to MLflow's app; and the entry points the role
registers for them (vars/main.yml _mlflow_apps) load them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from fakes import load_program
from role_vars import render, role_vars

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_VARS = role_vars("mlflow")
app_module = load_program(ROOT / "roles" / "mlflow" / "files" / (MLFLOW_VARS["_mlflow_app_module"] + ".py"))

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


def test_every_app_the_role_registers_is_a_factory_of_the_module():
    apps = MLFLOW_VARS["_mlflow_apps"]
    assert [app["auth"] for app in apps].count(True) == 1 and [app["auth"] for app in apps].count(False) == 1
    for app in apps:
        assert callable(getattr(app_module, app["factory"], None)), app


def test_the_entry_points_the_role_writes_load_the_modules_factories(tmp_path):
    """As on a server: the module and a dist-info holding the role's entry_points.txt in one directory on the
    path; each entry point of group mlflow.app loads the factory it names (without MLflow: the module imports it
    only when a factory runs)."""
    module = MLFLOW_VARS["_mlflow_app_module"]
    (tmp_path / (module + ".py")).write_bytes((ROOT / "roles" / "mlflow" / "files" / (module + ".py")).read_bytes())
    dist = tmp_path / (module + "-1.0.dist-info")
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow-ha-app\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(render("mlflow", "_mlflow_entry_points_txt"))
    code = ("import sys; sys.path.insert(0, %r); from importlib.metadata import entry_points; "
            "print(sorted((e.name, e.load().__module__, e.load().__name__) for e in entry_points(group='mlflow.app')))"
            % str(tmp_path))
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    expected = sorted((app["name"], module, app["factory"]) for app in MLFLOW_VARS["_mlflow_apps"])
    assert done.stdout.strip() == str(expected)


def test_the_server_runs_the_basic_auth_app_exactly_when_auth_is_on():
    by_auth = {app["auth"]: app["name"] for app in MLFLOW_VARS["_mlflow_apps"]}
    assert render("mlflow", "_mlflow_app_name", mlflow_auth_enabled=True) == by_auth[True]
    assert render("mlflow", "_mlflow_app_name", mlflow_auth_enabled=False) == by_auth[False]
    assert render("mlflow", "_mlflow_entry_points_txt") == "[mlflow.app]\n" + "".join(
        "%s = %s:%s\n" % (app["name"], MLFLOW_VARS["_mlflow_app_module"], app["factory"])
        for app in MLFLOW_VARS["_mlflow_apps"])


# -- Artifact transfers: proxied only unless presigned ones are asked for ----------------------------------------

SERVER_INFO = {"store_type": "SqlStore", "workspaces_enabled": False, "multipart_uploads_enabled": True,
               "multipart_downloads_enabled": True, "presigned_upload_run_id_supported": True}


class ServerInfo(Inner):
    """MLflow's server-info answer, in two body chunks with its own content-length."""

    async def __call__(self, scope, receive, send):
        self.seen.append(scope)
        body = json.dumps(SERVER_INFO).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})


def get(app, path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    return sent


def test_server_info_says_multipart_transfers_are_off_and_keeps_every_other_field():
    for path in ("/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info",
                 "/prefix/api/3.0/mlflow/server-info"):
        sent = get(app_module.ProxiedTransfers(ServerInfo()), path)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        info = json.loads(body)
        assert info == dict(SERVER_INFO, multipart_uploads_enabled=False, multipart_downloads_enabled=False), path
        headers = dict(sent[0]["headers"])
        assert headers[b"content-length"] == str(len(body)).encode()
        assert headers[b"content-type"] == b"application/json"


def test_presigned_downloads_and_multipart_uploads_are_refused_with_the_message_the_client_falls_back_on():
    for path in ("/api/2.0/mlflow-artifacts/presigned/1/abc/artifacts/model.pkl",
                 "/ajax-api/2.0/mlflow-artifacts/mpu/create/1/abc/artifacts/big.bin"):
        inner = Inner()
        sent = get(app_module.ProxiedTransfers(inner), path)
        assert sent[0]["status"] == 501
        assert json.loads(sent[1]["body"])["message"].startswith(
            "Multipart upload is not supported for the current artifact repository")
        assert not inner.seen


def test_other_requests_pass_unchanged_including_proxied_artifact_transfers():
    inner = Inner()
    app = app_module.ProxiedTransfers(inner)
    for path in ("/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model.pkl", "/health",
                 "/api/2.0/mlflow/registered-models/create"):
        sent = get(app, path)
        assert sent == [{"type": "http.response.start", "status": 200, "headers": []},
                        {"type": "http.response.body", "body": b"ok"}]
    assert len(inner.seen) == 3


def test_an_error_answer_of_server_info_is_passed_as_it_is():
    class Failing(Inner):
        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b'{"multipart_downloads_enabled": true}'})

    sent = get(app_module.ProxiedTransfers(Failing()), "/api/3.0/mlflow/server-info")
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"multipart_downloads_enabled": True}


def test_the_environment_decides_whether_transfers_are_proxied_only():
    inner = Inner()
    assert isinstance(app_module.transfers(inner, {}), app_module.ProxiedTransfers)
    assert isinstance(app_module.transfers(inner, {"MLFLOW_HA_PRESIGNED_TRANSFERS": "false"}),
                      app_module.ProxiedTransfers)
    assert app_module.transfers(inner, {"MLFLOW_HA_PRESIGNED_TRANSFERS": "true"}) is inner


# -- The user store: an error checking a login is a 503 that names it, never a 401 --------------------------------

class AuthApp(Inner):
    """MLflow's basic-auth middleware, as it behaves: it runs the credential check, and answers 401 when the check
    returns no user or raises (MLflow's FastAPI routes swallow the exception; `flask=True`: its Flask routes answer
    500), 200 otherwise."""

    def __init__(self, check, flask=False):
        super().__init__()
        self.check = check
        self.flask = flask

    async def __call__(self, scope, receive, send):
        try:
            user = self.check("alice", "secret-password")
        except Exception:  # what MLflow's _authenticate_fastapi_request does
            if self.flask:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
                return
            user = None
        if user is None:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"www-authenticate", b"Basic")]})
            await send({"type": "http.response.body", "body": b"You are not authenticated."})
            return
        await super().__call__(scope, receive, send)


class Store:
    """A credential check that raises its first `errors` calls, then answers `user`."""

    def __init__(self, errors=0, user="alice"):
        self.errors = errors
        self.user = user
        self.calls = 0

    def __call__(self, username, password):
        self.calls += 1
        if self.calls <= self.errors:
            raise RuntimeError("(psycopg2.OperationalError) server closed the connection unexpectedly\nmore")
        return self.user


def served(store):
    check = app_module.UserStoreCheck(store)
    return check, call(app_module.UserStoreOutage(AuthApp(check)))


def test_a_store_error_is_retried_once_and_a_second_one_answers_503_naming_it(caplog):
    store = Store(errors=2)
    check, sent = served(store)
    assert store.calls == 2 and check.failures == 2
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503
    body = json.loads(sent[1]["body"])
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "OperationalError" in body["message"] and "more" not in body["message"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "OperationalError" in logged and "'alice'" in logged
    assert "secret-password" not in logged and "secret-password" not in body["message"]


def test_one_store_error_is_absorbed_by_the_retry():
    store = Store(errors=1)
    check, sent = served(store)
    assert store.calls == 2 and check.failures == 1
    assert sent[0]["status"] == 200


def test_a_wrong_password_stays_401():
    store = Store(user=None)
    check, sent = served(store)
    assert store.calls == 1 and check.failures == 0
    assert sent[0]["status"] == 401 and sent[1]["body"] == b"You are not authenticated."


def test_the_error_list_is_the_requests_own():
    served(Store(errors=2))
    assert app_module.USER_STORE_ERRORS.get() is None
    assert served(Store(user=None))[1][0]["status"] == 401


def test_a_store_error_on_a_flask_route_is_a_503_too():
    store = Store(errors=2)
    check = app_module.UserStoreCheck(store)
    sent = call(app_module.UserStoreOutage(AuthApp(check, flask=True)))
    assert sent[0]["status"] == 503 and len(sent) == 2
    assert json.loads(sent[1]["body"])["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_a_500_without_a_store_error_passes_unchanged():
    class Failing(Inner):
        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"boom"})

    sent = call(app_module.UserStoreOutage(Failing()))
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"boom"
