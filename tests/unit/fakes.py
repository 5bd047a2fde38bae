"""Fakes for unit tests: a clock that only moves when asked, and a scripted transport; and a loader for the
stand-alone programs the roles install (they are files, not modules of a package)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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

    def wall(self) -> float:
        return 1.8e9 + self.t

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
        self.headers: list[dict[str, str]] = []

    def send(self, method, url, body, headers, timeout):
        self.calls.append((method, url, timeout))
        self.headers.append(dict(headers))
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


class RouteTransport(Transport):
    """Answers per exact request ("METHOD URL") from a script; records method, URL, body and headers.

    A route's outcomes are used in order and the last one repeats. A request with no route raises an
    AssertionError naming it, so a test never talks to something it did not script."""

    def __init__(self, clock: FakeClock, routes: dict[str, list[Outcome]], latency: float = 0.01):
        self.clock = clock
        self.routes = {k: list(v) for k, v in routes.items()}
        self.latency = latency
        self.requests: list[dict] = []

    def send(self, method, url, body, headers, timeout):
        self.requests.append({"method": method, "url": url, "body": body, "headers": dict(headers),
                              "timeout": timeout})
        self.clock.t += self.latency
        key = "%s %s" % (method, url)
        if key not in self.routes:
            raise AssertionError("unscripted request: %s" % key)
        queue = self.routes[key]
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(outcome, TransportError):
            raise outcome
        if callable(outcome):
            outcome = outcome()
        return Response(outcome.status, outcome.body, outcome.headers, url)

    def sent(self, method: str, url_suffix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["url"].endswith(url_suffix)]


def json_ok(doc, status: int = 200) -> Response:
    import json

    return Response(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})


def timed_out() -> TransportError:
    return TransportError("timed out", reached_server=True)


class FakeDbError(Exception):
    """Stands in for a driver error when a test needs one without psycopg2."""


class FakeCursor:
    def __init__(self, conn: FakePgConnection):
        self.conn = conn
        self.rows: list[tuple] = []
        self.rowcount = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql: str, params: tuple | None = None) -> None:
        self.conn.executed.append((sql, params))
        self.conn.clock.t += self.conn.latency
        for pattern, handler in self.conn.handlers:
            if pattern in sql:
                answer = handler(sql, params) if callable(handler) else handler
                if isinstance(answer, BaseException):
                    raise answer
                self.rows, self.rowcount = (list(answer[0]), answer[1]) if isinstance(answer, tuple) \
                    else (list(answer), len(answer))
                return
        self.rows, self.rowcount = [], 0

    def fetchone(self):
        return self.rows.pop(0) if self.rows else None

    def fetchall(self):
        rows, self.rows = self.rows, []
        return rows


class FakePgConnection:
    """A DB-API connection whose statements answer from ``handlers``: (substring of the SQL, answer) pairs.

    An answer is a list of rows, a (rows, rowcount) tuple, an exception instance to raise, or a callable
    (sql, params) returning one of those. Unmatched statements return no rows."""

    def __init__(self, clock: FakeClock, handlers: list | None = None, latency: float = 0.001):
        self.clock = clock
        self.handlers = list(handlers or [])
        self.latency = latency
        self.executed: list[tuple] = []
        self.commits = 0
        self.rollbacks = 0
        self.cancels = 0
        self.closed = 0
        self.autocommit = False
        self.on_commit = None

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise FakeDbError("connection already closed")
        return FakeCursor(self)

    def commit(self) -> None:
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit()

    def rollback(self) -> None:
        self.rollbacks += 1

    def cancel(self) -> None:
        self.cancels += 1

    def close(self) -> None:
        self.closed = 1


def until(clock: FakeClock, at: float, before: Outcome, after: Outcome) -> Callable[[], Response]:
    """An outcome that is ``before`` until the fake clock reaches ``at`` and ``after`` from then on: a server
    that comes back (or goes away) at a scripted moment, however many requests the client makes meanwhile."""

    def answer() -> Response:
        outcome = before if clock.now() < at else after
        if isinstance(outcome, TransportError):
            raise outcome
        return outcome() if callable(outcome) else outcome

    return answer


# What the roles copy beside their programs, by the plain name the programs import: here that name is the
# collection's own module, the very file the role copies (docs/design-decisions.md, "One exposition writer").
BESIDE_PROGRAMS = {"exposition": "ansible_collections.mlops.mlflow_ha.plugins.module_utils.exposition",
                   "web_auth": "ansible_collections.mlops.mlflow_ha.plugins.module_utils.web_auth"}


def load_program(path: Path) -> ModuleType:
    """Import a role's program (roles/<role>/files/<name>.py) as the module <name>."""
    for name, module_name in BESIDE_PROGRAMS.items():
        sys.modules.setdefault(name, importlib.import_module(module_name))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def web_config_files(directory: Path, users: dict[str, str]) -> tuple[Path, Path]:
    """A CA, a certificate for 127.0.0.1 signed by it, and a web configuration (as the pki role's web_config entry
    point writes it: JSON, paths relative to it, bcrypt hashes) in ``directory``; returns (web config, CA file)."""
    import datetime
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ansible_collections.mlops.mlflow_ha.plugins.filter.bcrypt_hash import bcrypt_hash

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "test.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "test.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    config = {"tls_server_config": {"cert_file": "test.crt", "key_file": "test.key", "min_version": "TLS12"},
              "basic_auth_users": {u: bcrypt_hash(p, "test/" + u, rounds=4) for u, p in users.items()}}
    (directory / "web-config.yml").write_text(json.dumps(config, indent=2))
    return directory / "web-config.yml", directory / "ca.crt"
