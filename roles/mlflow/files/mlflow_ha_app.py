"""MLflow server apps of mlflow-ha: MLflow's own FastAPI app (or its basic-auth app) behind a deadline guard.

A client that says when it stops waiting sends the moment in a request header (epoch milliseconds; the
collection's HTTP client and the lab's MLflow request header provider send X-Request-Deadline-Ms). HAProxy's
MLflow frontend already refuses a request that arrives past it. This module enforces it twice on the server:

- At the door (DeadlineGuard, ASGI): a request read past its deadline is answered 504 without reaching MLflow.
  A server that froze (paused VM, long stall) with a create request unread in its socket would otherwise run it
  on resuming, after the client had given up, searched and created again: the version twice.
- At the commit (CommitGuard, a SQLAlchemy before_commit listener): a request the door let in, that then
  stalled inside MLflow (the server froze mid-request, before its transaction committed), is refused at the
  commit if its deadline has passed by then: the transaction is rolled back and the client gets 504
  DEADLINE_EXCEEDED. The chaos test found this window: a freeze after the door, before the commit, duplicated
  one registration in a few thousand. The request's deadline reaches MLflow's request threads in a context
  variable (Starlette runs the Flask app with anyio, which copies the context into the thread).

What remains open is microseconds wide: a freeze between the commit check and PostgreSQL's commit. A server
that freezes after committing and before answering leaves the client unsure, but the write is then visible,
and a client that searches for its key before creating again (the collection's clients do) finds it.

Entry points (group `mlflow.app`, read by `mlflow server --app-name`): one per factory below, named in the mlflow
role's vars (`_mlflow_apps`), which the role registers: MLflow's app, and MLflow's basic-auth app. Both are
factories: `mlflow server` imports this module in its supervising process to tell whether the entry is a factory,
and MLflow itself is only imported by the workers.

Artifact transfers (ProxiedTransfers, ASGI): MLflow 3.17 serving proxied S3 artifacts advertises multipart
downloads and uploads in /api/3.0/mlflow/server-info, and the official client then fetches every artifact (and
uploads large ones) through presigned URLs of the S3 endpoint, directly: a client outside the cluster that does not
reach or trust that endpoint retries for minutes. The server has no switch for it (docs/notes/
mlflow-presigned-downloads.md). Unless presigned transfers are wanted, the server-info answer says both are off
(every other field is MLflow's own), and the presigned-download and multipart-create endpoints answer 501 with
the message MLflow's client falls back on: every byte goes through the tracking servers, as `--serve-artifacts`
promises, and a user needs only the tracking server's URL, CA and credentials.

Idempotency-key searches on the primary (PrimaryReads, ASGI, and a session maker MLflow's stores get): with a read
replica (mlflow server --read-replica-backend-store-uri, the mlflow role's mlflow_db_read_replica) MLflow runs every
read-only store call there, the key searches a client makes before creating again included. A search of runs or model
versions whose filter names an idempotency-key tag reads from the primary instead: a standby that missed the
create (docs/performance.md, "Read scaling": a change of synchronous standby) would make the client create it twice.

Environment: MLFLOW_HA_DEADLINE_HEADER (header name; empty: no guard), MLFLOW_HA_DEADLINE_GRACE_MS (a request is
still served this many milliseconds past its deadline, for clock skew between client and server; 0 by default:
the server rejects rather than risks a duplicate), MLFLOW_HA_PRESIGNED_TRANSFERS ("true": MLflow's own
advertisement and presigned endpoints, for clients that reach and trust the S3 endpoint; otherwise proxied only),
MLFLOW_READ_REPLICA_BACKEND_STORE_URI (set: the key searches read from the primary, above).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Dict, Optional

LOGGER = logging.getLogger("mlflow_ha.deadline")

# The deadline (epoch ms) of the request this code runs for; None outside requests and for requests without one.
REQUEST_DEADLINE_MS: ContextVar[Optional[int]] = ContextVar("mlflow_ha_request_deadline_ms", default=None)

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
                token = REQUEST_DEADLINE_MS.set(deadline)
                try:
                    await self.app(scope, receive, send)
                finally:
                    REQUEST_DEADLINE_MS.reset(token)
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


class DeadlineExceeded(Exception):
    """Raised by CommitGuard when no error class is given (tests); the server raises MLflow's exception."""


class CommitGuard:
    """SQLAlchemy `before_commit` listener: raises (so the transaction rolls back) when the request it commits for
    is past its deadline. Sessions outside a request, or of a request without a deadline, commit as always."""

    def __init__(self, grace_ms: int = 0, error: Callable[[str], Exception] = DeadlineExceeded,
                 clock: Callable[[], float] = time.time) -> None:
        self.grace_ms = grace_ms
        self.error = error
        self.clock = clock
        self.refused = 0

    def __call__(self, session: Any) -> None:
        deadline = REQUEST_DEADLINE_MS.get()
        if deadline is None:
            return
        late_ms = int(self.clock() * 1000) - deadline
        if late_ms > self.grace_ms:
            self.refused += 1
            LOGGER.warning("rolled back a transaction %d ms past its request's deadline (the client has given up on "
                           "it; committing could duplicate what its retry does)", late_ms)
            raise self.error("The request passed its client's deadline %d ms before its transaction would have "
                             "committed; it was rolled back." % late_ms)


def mlflow_deadline_error(message: str) -> Exception:
    """MLflow's exception for a refused commit: MLflow rolls the session back and answers 504 DEADLINE_EXCEEDED."""
    exceptions = importlib.import_module("mlflow.exceptions")
    codes = importlib.import_module("mlflow.protos.databricks_pb2")
    return exceptions.MlflowException(message, error_code=codes.DEADLINE_EXCEEDED)


def install_commit_guard(grace_ms: int) -> CommitGuard:
    """Listen on every SQLAlchemy session (MLflow's tracking and registry stores) before each commit."""
    event = importlib.import_module("sqlalchemy.event")
    orm = importlib.import_module("sqlalchemy.orm")
    listener = CommitGuard(grace_ms, error=mlflow_deadline_error)
    event.listen(orm.Session, "before_commit", listener)
    return listener


# MLflow registers each REST route under /api/<version>/ and /ajax-api/<version>/, optionally behind a static prefix.
SERVER_INFO_PATH = re.compile(r"^(/.*)?/(api|ajax-api)/3\.0/mlflow/server-info/?$")
PRESIGNED_PATH = re.compile(r"^(/.*)?/(api|ajax-api)/2\.0/mlflow-artifacts/(presigned|mpu/create)/")
MULTIPART_FLAGS = ("multipart_downloads_enabled", "multipart_uploads_enabled")
# The message MLflow's client recognises (mlflow.exceptions._UnsupportedMultipartUploadException.MESSAGE): it then
# uploads through the server instead. A presigned download refused with 501 falls back likewise.
UNSUPPORTED_MESSAGE = "Multipart upload is not supported for the current artifact repository"
REFUSED_MESSAGE = (UNSUPPORTED_MESSAGE + ": this server proxies every artifact transfer (presigned S3 URLs are off; "
                   "mlflow_presigned_transfers in the mlflow role turns them on).")


class ProxiedTransfers:
    """ASGI middleware: artifacts travel through the tracking servers only. The server-info answer says multipart
    (presigned) transfers are off, and the presigned-download and multipart-create endpoints answer 501."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path and SERVER_INFO_PATH.match(path):
            await self.app(scope, receive, self.rewriting(send))
        elif path and PRESIGNED_PATH.match(path):
            await respond_json(send, 501, {"error_code": "NOT_IMPLEMENTED", "message": REFUSED_MESSAGE})
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def rewriting(send: Send) -> Send:
        """A send that holds the response back, and sets the multipart flags off in a successful JSON body."""
        held: Dict[str, Any] = {"start": None, "body": b""}

        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start":
                held["start"] = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            start, body = held["start"], held["body"]
            if start is not None and start.get("status") == 200:
                body = without_multipart(body)
            headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(dict(start or {"type": "http.response.start", "status": 200}, headers=headers))
            await send({"type": "http.response.body", "body": body})

        return rewrite


def without_multipart(body: bytes) -> bytes:
    """The server-info JSON with the multipart flags false (anything that is not such a JSON object unchanged)."""
    try:
        info = json.loads(body)
    except ValueError:
        return body
    if not isinstance(info, dict):
        return body
    for flag in MULTIPART_FLAGS:
        if flag in info:
            info[flag] = False
    return json.dumps(info).encode()


async def respond_json(send: Send, status: int, payload: Dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# The user-store errors of the request this code runs for: a list the outer middleware (UserStoreOutage) gives each
# request, which the credential check (UserStoreCheck) appends to, from whichever task or thread it runs in (both
# see the same list: a copied context holds the same object).
USER_STORE_ERRORS: ContextVar[Optional[list]] = ContextVar("mlflow_ha_user_store_errors", default=None)
AUTH_LOGGER = logging.getLogger("mlflow_ha.auth")
USER_STORE_DOWN_MESSAGE = ("The MLflow user store (the auth database) could not check the login: %s. The login was "
                           "not refused; retry (this server answers 503 until its database answers again).")


def describe(err: BaseException) -> str:
    """An exception's type and the first line of its message (at most 200 characters)."""
    lines = str(err).splitlines()
    return "%s: %s" % (type(err).__name__, lines[0][:200] if lines else "")


class UserStoreCheck:
    """Wraps the basic-auth module's credential check (`_authenticate_cached(username, password)`, User or None).

    MLflow's FastAPI authentication turns any exception of that check into "no user", so a user store that cannot
    answer (its database unreachable, a broken connection) looks like a wrong password: 401, which clients do not
    retry and load balancers do not count as a server error. Here an exception is logged (its type and message,
    never the password), the check is tried once more (a new session from the pool), and a second failure is
    recorded on the request before it is raised again: UserStoreOutage then answers 503 instead of the 401."""

    def __init__(self, check: Callable[[str, str], Any], attempts: int = 2) -> None:
        self.check = check
        self.attempts = attempts
        self.failures = 0

    def __call__(self, username: str, password: str) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return self.check(username, password)
            except Exception as err:  # MLflow's caller swallows every exception, so this catches them all too
                self.failures += 1
                AUTH_LOGGER.warning("checking the login of %r failed (attempt %d of %d): %s", username, attempt,
                                    self.attempts, describe(err))
                if attempt == self.attempts:
                    errors = USER_STORE_ERRORS.get()
                    if errors is not None:
                        errors.append(describe(err))
                    raise
        return None


# What MLflow answers when the check raised: 401 on its FastAPI routes (which swallow the exception), 500 on the
# Flask ones (where it escapes the before-request hook).
REPLACED_STATUSES = (401, 500)


class UserStoreOutage:
    """ASGI middleware: the 401 or 500 answered to a request whose credential check failed with an error (not a
    wrong password) becomes 503 TEMPORARILY_UNAVAILABLE naming the error. Every other answer passes unchanged."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        errors: list = []
        token = USER_STORE_ERRORS.set(errors)
        replaced = {"done": False}

        async def checked(message: Message) -> None:
            if replaced["done"]:
                return  # the 401's body, already replaced
            if message["type"] == "http.response.start" and message.get("status") in REPLACED_STATUSES and errors:
                replaced["done"] = True
                await respond_json(send, 503, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                               "message": USER_STORE_DOWN_MESSAGE % errors[-1]})
                return
            await send(message)

        try:
            await self.app(scope, receive, checked)
        finally:
            USER_STORE_ERRORS.reset(token)


# The searches a client makes before creating again (runs and model versions; GET with the filter in the query string
# or POST with it in the JSON body), under each REST prefix MLflow registers.
KEY_SEARCH_PATH = re.compile(r"^(/.*)?/(api|ajax-api)/2\.0/mlflow/(runs|model-versions)/search/?$")
# Both tag names the collection's clients use (mlflow_ha.idempotency_key, backticked, and idempotency_key): unchanged
# by URL encoding, so found in the raw query string as in the body.
KEY_MARK = b"idempotency_key"
# A search body larger than this is passed on unread (no key search is this large).
KEY_SEARCH_MAX_BODY = 1 << 20
# True while a request that must read from the primary runs (MLflow's request thread gets a copy of the context).
PRIMARY_READS: ContextVar[bool] = ContextVar("mlflow_ha_primary_reads", default=False)


class PrimaryReads:
    """ASGI middleware: marks an idempotency-key search (PRIMARY_READS) so that its reads go to the primary. The
    request's body, read to look for the key, is handed to the app unchanged."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app
        self.pinned = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not KEY_SEARCH_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held: list = []
        if KEY_MARK in scope.get("query_string", b""):
            primary = True
        else:
            size = 0
            while True:
                message = await receive()
                held.append(message)
                size += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body") or size > KEY_SEARCH_MAX_BODY:
                    break
            primary = KEY_MARK in b"".join(m.get("body", b"") for m in held)

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        self.pinned += int(primary)
        token = PRIMARY_READS.set(primary)
        try:
            await self.app(scope, replay, send)
        finally:
            PRIMARY_READS.reset(token)


def primary_aware(routing: Callable[..., Any], managed: Callable[..., Any]) -> Callable[..., Any]:
    """MLflow's routing session maker factory (read-only sessions on the replica) made to hand out primary sessions
    while PRIMARY_READS is set. ``routing`` and ``managed`` are MLflow's _get_routing_session_maker and
    _get_managed_session_maker."""

    def factory(write_session_maker: Any, read_session_maker: Any, db_type: str) -> Callable[..., Any]:
        routed = routing(write_session_maker, read_session_maker, db_type)
        primary = managed(write_session_maker, db_type)

        @contextmanager
        def make_managed_session(read_only: bool = True):
            with (primary if PRIMARY_READS.get() else routed)(read_only=read_only) as session:
                yield session

        return make_managed_session

    return factory


def install_primary_reads() -> None:
    """Give MLflow's tracking and registry stores the primary-aware session makers; before any store exists (they are
    built at a worker's first request)."""
    utils = importlib.import_module("mlflow.store.db.utils")
    registry = importlib.import_module("mlflow.store.model_registry.sqlalchemy_store")
    # pylint: disable=protected-access
    factory = primary_aware(utils._get_routing_session_maker, utils._get_managed_session_maker)
    utils._get_routing_session_maker = factory  # the tracking store looks it up in the module at each build
    registry._get_routing_session_maker = factory  # the registry store imported the name


def read_replica(environ: Optional[Dict[str, str]] = None) -> bool:
    """Whether MLflow runs with a read replica (the option's variable, or the one `mlflow server` hands its workers)."""
    env = os.environ if environ is None else environ
    return bool(env.get("MLFLOW_READ_REPLICA_BACKEND_STORE_URI")
                or env.get("_MLFLOW_SERVER_READ_REPLICA_BACKEND_STORE"))


def primary_reads(app: AsgiApp, environ: Optional[Dict[str, str]] = None) -> AsgiApp:
    """With a read replica, app behind PrimaryReads (install_primary_reads must have run); without one, app as it is."""
    return PrimaryReads(app) if read_replica(environ) else app


def transfers(app: AsgiApp, environ: Optional[Dict[str, str]] = None) -> AsgiApp:
    """Proxied transfers only, unless the environment asks for MLflow's presigned ones."""
    env = os.environ if environ is None else environ
    if env.get("MLFLOW_HA_PRESIGNED_TRANSFERS", "").strip().lower() == "true":
        return app
    return ProxiedTransfers(app)


def guard(app: AsgiApp, environ: Optional[Dict[str, str]] = None) -> AsgiApp:
    """Wrap app in the deadline guard the environment configures (or return it as it is when no header is set)."""
    env = os.environ if environ is None else environ
    header = env.get("MLFLOW_HA_DEADLINE_HEADER", "").strip()
    if not header:
        return app
    return DeadlineGuard(app, header, grace_ms=int(env.get("MLFLOW_HA_DEADLINE_GRACE_MS", "0") or 0))


def guard_server(app: AsgiApp) -> AsgiApp:
    """The guard at the door, and (when it is on) the one at the commit, as the environment configures them; the
    artifact transfer policy outside both (a refused presigned request never reaches MLflow); inside, with a read
    replica, the key searches' reads on the primary."""
    guarded = guard(primary_reads(app))
    if isinstance(guarded, DeadlineGuard):
        install_commit_guard(guarded.grace_ms)
    return transfers(guarded)


def create_app() -> AsgiApp:
    """MLflow's tracking server app (what `mlflow server` runs without --app-name), guarded."""
    if read_replica():
        install_primary_reads()
    return guard_server(importlib.import_module("mlflow.server.fastapi_app").app)


def create_basic_auth_app() -> AsgiApp:
    """MLflow's basic-auth app (`--app-name basic-auth`), guarded, with its credential check made visible."""
    if read_replica():
        install_primary_reads()
    auth = importlib.import_module("mlflow.server.auth")
    app = guard_server(auth.create_app())
    auth._authenticate_cached = UserStoreCheck(auth._authenticate_cached)  # pylint: disable=protected-access
    return UserStoreOutage(app)
