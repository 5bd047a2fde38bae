# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove replication end to end: write a marker on the primary, wait until every replica can read it.

psycopg2 is optional at import time (the module reports it with ``missing_required_lib``); the checker takes
a ``connect`` callable so unit tests drive it with a fake connection. Every connection carries TCP keepalives,
``tcp_user_timeout`` and ``connect_timeout``: a frozen server (a paused container, a dead link) must end in an
error within seconds, not hang the task.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import math
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Clock, PollTimeout, poll_until

try:
    import psycopg2

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
    DB_ERRORS: Tuple[type, ...] = (psycopg2.Error,)
except ImportError as import_error:  # the module turns this into missing_required_lib
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = import_error
    DB_ERRORS = ()

DEFAULT_PORT = 5432
DEFAULT_TABLE = "mlflow_ha_replication_check"
APPLICATION_NAME = "mlflow_ha_replication_check"
# An unquoted PostgreSQL identifier, optionally schema-qualified: nothing that needs quoting or escaping.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$")
_HOST_PORT = re.compile(r"^\[(?P<v6>[^\]]+)\](:(?P<v6port>\d+))?$|^(?P<host>[^:]+)(:(?P<port>\d+))?$")

# Standbys as the primary sees them. pg_wal_lsn_diff() is numeric: cast to bigint for a plain integer.
# replay_lsn is NULL until a standby has replayed anything; the columns other than application_name read
# NULL unless the login role is a superuser or a member of pg_read_all_stats (pg_monitor).
STANDBYS_SQL = (
    "SELECT application_name, client_addr::text, state, sync_state, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
    "EXTRACT(EPOCH FROM replay_lag)::float8 "
    "FROM pg_stat_replication ORDER BY application_name, client_addr"
)


class PostgresCheckError(Exception):
    """The check could not run (no connection to the primary, a failing statement)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = DEFAULT_PORT
    name: Optional[str] = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)


def parse_endpoint(value: Any, default_port: int = DEFAULT_PORT) -> Endpoint:
    """``host``, ``host:port``, ``[v6addr]:port`` or a dict with host, port and optional name."""
    if isinstance(value, dict):
        host = value.get("host")
        if not host or not isinstance(host, str):
            raise ValueError("an endpoint needs a host: %r" % (value,))
        try:
            port = int(value.get("port") or default_port)
        except (TypeError, ValueError):
            raise ValueError("port of %s is not a number: %r" % (host, value.get("port"))) from None
        return Endpoint(host.strip(), port, value.get("name"))
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an endpoint is host:port or a dict with host and port, got %r" % (value,))
    match = _HOST_PORT.match(value.strip())
    if not match:
        raise ValueError("cannot read %r as host:port (write IPv6 addresses as [addr]:port)" % value)
    if match.group("v6"):
        return Endpoint(match.group("v6"), int(match.group("v6port") or default_port))
    return Endpoint(match.group("host"), int(match.group("port") or default_port))


def quote_table(name: str) -> str:
    """The table name double-quoted per part, after checking it is a plain lower-case identifier."""
    if not _IDENTIFIER.match(name or ""):
        raise ValueError("table %r is not a plain lower-case identifier ([schema.]name, letters, digits, _)" % name)
    return ".".join('"%s"' % part for part in name.split("."))


def connection_kwargs(endpoint: Endpoint, user: Optional[str], password: Optional[str], database: str,
                      connect_timeout: float, read_write: bool = False, keepalives_idle: int = 5,
                      keepalives_interval: int = 2, keepalives_count: int = 3,
                      statement_timeout: float = 10.0) -> Dict[str, Any]:
    """libpq parameters for one connection.

    - ``connect_timeout``: libpq takes whole seconds and treats anything under 2 as 2;
    - keepalives: a dead peer of an idle connection is noticed after idle + interval * count seconds;
    - ``tcp_user_timeout`` (libpq 12+): the same bound while sent data is unacknowledged, the case keepalives
      do not cover (a frozen server in the middle of a query);
    - ``statement_timeout``: no statement waits on a lock for ever;
    - ``target_session_attrs=read-write`` for the primary: a standby behind the write endpoint is an error,
      not a silent read-only success.
    """
    kwargs: Dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "dbname": database,
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": keepalives_idle,
        "keepalives_interval": keepalives_interval,
        "keepalives_count": keepalives_count,
        "tcp_user_timeout": (keepalives_idle + keepalives_interval * keepalives_count) * 1000,
        "application_name": APPLICATION_NAME,
        "options": "-c statement_timeout=%d" % int(statement_timeout * 1000),
    }
    if user:
        kwargs["user"] = user
    if password:
        kwargs["password"] = password
    if read_write:
        kwargs["target_session_attrs"] = "read-write"
    return kwargs


def error_text(err: BaseException) -> str:
    """One line of a driver error: psycopg2's messages carry newlines and trailing hints."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


@dataclass
class StandbyRow:
    application_name: str
    client_addr: Optional[str]
    state: Optional[str]
    sync_state: Optional[str]
    replay_lag_bytes: Optional[int]
    replay_lag_seconds: Optional[float]

    def to_dict(self) -> Dict[str, Any]:
        return {"application_name": self.application_name, "client_addr": self.client_addr, "state": self.state,
                "sync_state": self.sync_state, "replay_lag_bytes": self.replay_lag_bytes,
                "replay_lag_seconds": self.replay_lag_seconds}


@dataclass
class ReplicaResult:
    replica: str
    visible: bool = False
    seconds_to_visible: Optional[float] = None
    polls: int = 0
    last_error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "visible": self.visible, "seconds_to_visible": self.seconds_to_visible,
                "polls": self.polls, "last_error": self.last_error}


@dataclass
class CheckResult:
    primary: str
    marker: Optional[str] = None
    written_at: Optional[str] = None
    replicas: List[ReplicaResult] = field(default_factory=list)
    standbys: List[StandbyRow] = field(default_factory=list)
    deleted_markers: int = 0
    commit_cancelled: bool = False
    changed: bool = False

    @property
    def missing(self) -> List[ReplicaResult]:
        return [r for r in self.replicas if not r.visible]

    def failure(self, timeout: float) -> Optional[str]:
        """Sentences naming what went wrong (replicas that did not see the marker, a stuck commit), or None."""
        sentences = []
        if self.commit_cancelled:
            sentences.append("the commit on the primary %s still waited for synchronous standbys after %.1f s and "
                             "was cancelled (the marker is committed locally only): writes block without a sync "
                             "standby" % (self.primary, timeout))
        if self.missing:
            sentences.append("marker %s written on %s was not visible within %.1f s on %s" % (
                self.marker, self.primary, timeout, "; ".join(
                    "%s (%s)" % (r.replica, "last error: %s" % r.last_error if r.last_error else
                                 "connected, row not there yet after %d checks" % r.polls)
                    for r in self.missing)))
        return "; ".join(sentences) or None

    def to_dict(self) -> Dict[str, Any]:
        return {"primary": self.primary, "marker": self.marker, "written_at": self.written_at,
                "replicas": [r.to_dict() for r in self.replicas], "standbys": [s.to_dict() for s in self.standbys],
                "deleted_markers": self.deleted_markers, "commit_cancelled": self.commit_cancelled,
                "changed": self.changed}


class ReplicationChecker:
    """Write one marker row on the primary, then poll each replica until it reads the row.

    ``connect`` is called with libpq keyword arguments and returns a DB-API connection (psycopg2.connect by
    default). Time comes from ``clock``; ``timeout`` bounds the wait for the replicas, counted from the commit.
    """

    def __init__(self, primary: Endpoint, replicas: List[Endpoint], user: Optional[str], password: Optional[str],
                 database: str = "postgres", table: str = DEFAULT_TABLE, timeout: float = 30.0,
                 poll_interval: float = 0.5, connect_timeout: float = 5.0,
                 connect: Optional[Callable[..., Any]] = None, clock: Optional[Clock] = None,
                 new_marker: Optional[Callable[[], str]] = None, retention: str = "1 day",
                 timer: Optional[Callable[..., Any]] = None, errors: Optional[Tuple[type, ...]] = None):
        self.primary = primary
        self.replicas = replicas
        self.user = user
        self.password = password
        self.database = database
        self.table = quote_table(table)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self.clock = clock or Clock()
        self.new_marker = new_marker or (lambda: str(uuid.uuid4()))
        self.retention = retention
        self.timer = timer or threading.Timer
        # The driver's error classes; a test with a fake connection passes its own.
        self.errors: Tuple[type, ...] = errors if errors is not None else DB_ERRORS
        if connect is None:
            if not HAS_PSYCOPG2:
                raise PostgresCheckError("psycopg2 is not installed: %s" % PSYCOPG2_IMPORT_ERROR)
            connect = psycopg2.connect
        self._connect = connect
        self._replica_conns: Dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------------------

    def _kwargs(self, endpoint: Endpoint, read_write: bool) -> Dict[str, Any]:
        return connection_kwargs(endpoint, self.user, self.password, self.database, self.connect_timeout,
                                 read_write=read_write,
                                 statement_timeout=max(self.connect_timeout, min(self.timeout, 30.0)))

    def connect_primary(self) -> Any:
        try:
            return self._connect(**self._kwargs(self.primary, read_write=True))
        except self.errors as err:
            raise PostgresCheckError("cannot connect to the primary %s (database %s): %s" % (
                self.primary.label, self.database, error_text(err))) from err

    def _close(self, conn: Any) -> None:
        try:
            conn.close()
        except self.errors:
            pass  # closing a broken connection can fail again; there is nothing left to release

    # -- primary ------------------------------------------------------------------------------------------

    def standbys(self, conn: Any) -> List[StandbyRow]:
        with conn.cursor() as cur:
            cur.execute(STANDBYS_SQL)
            rows = cur.fetchall()
        return [StandbyRow(application_name=r[0], client_addr=r[1], state=r[2], sync_state=r[3],
                           replay_lag_bytes=int(r[4]) if r[4] is not None else None,
                           replay_lag_seconds=float(r[5]) if r[5] is not None else None) for r in rows]

    def write_marker(self, conn: Any) -> Tuple[str, str, int, bool]:
        """Create the table if missing, insert a fresh marker, drop markers older than the retention, commit.

        One transaction: either the marker and the clean-up are both there, or neither. Returns the marker,
        the primary's now() at the insert, the number of old markers deleted, and whether the commit had to be
        cancelled (see ``_bounded_commit``)."""
        marker = self.new_marker()
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS %s (marker text PRIMARY KEY, written_at timestamptz NOT NULL)"
                        % self.table)
            cur.execute("INSERT INTO %s (marker, written_at) VALUES (%%s, now()) RETURNING written_at::text"
                        % self.table, (marker,))
            written_at = cur.fetchone()[0]
            cur.execute("DELETE FROM %s WHERE written_at < now() - %%s::interval" % self.table, (self.retention,))
            deleted = cur.rowcount if cur.rowcount and cur.rowcount > 0 else 0
        cancelled = self._bounded_commit(conn)
        return marker, str(written_at), deleted, cancelled

    def _bounded_commit(self, conn: Any) -> bool:
        """Commit, cancelling the wait when it outlasts ``timeout``; True when it had to be cancelled.

        With synchronous replication a COMMIT waits for a sync standby to acknowledge, and no server timeout
        bounds that wait (statement_timeout does not apply; keepalives see a healthy connection). A cancel
        ends the wait: PostgreSQL then reports "canceling wait for synchronous replication" and the transaction
        stays committed locally, which is exactly what the caller must learn."""
        fired = threading.Event()

        def cancel() -> None:
            fired.set()
            canceller = getattr(conn, "cancel", None)
            if canceller is not None:
                canceller()

        timer = self.timer(self.timeout, cancel)
        timer.daemon = True
        timer.start()
        try:
            conn.commit()
        finally:
            timer.cancel()
        return fired.is_set()

    # -- replicas -----------------------------------------------------------------------------------------

    def _replica_conn(self, endpoint: Endpoint) -> Any:
        conn = self._replica_conns.get(endpoint.label)
        if conn is None or getattr(conn, "closed", 0):
            conn = self._connect(**self._kwargs(endpoint, read_write=False))
            conn.autocommit = True  # each poll sees the latest replayed state, and errors leave no transaction
            self._replica_conns[endpoint.label] = conn
        return conn

    def _poll_replica(self, endpoint: Endpoint, marker: str, result: ReplicaResult) -> None:
        result.polls += 1
        try:
            conn = self._replica_conn(endpoint)
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM %s WHERE marker = %%s" % self.table, (marker,))
                found = cur.fetchone() is not None
        except self.errors as err:
            # Not replayed yet (the table itself may be new), a restart, a refused connection: note it, go on.
            result.last_error = error_text(err)
            stale = self._replica_conns.pop(endpoint.label, None)
            if stale is not None:
                self._close(stale)
            return
        if found:
            result.visible = True
            result.last_error = None

    def wait_for_marker(self, marker: str) -> List[ReplicaResult]:
        results = {e.label: ReplicaResult(e.label) for e in self.replicas}
        start = self.clock.now()

        def observe() -> List[str]:
            for endpoint in self.replicas:
                result = results[endpoint.label]
                if not result.visible:
                    self._poll_replica(endpoint, marker, result)
                    if result.visible:
                        result.seconds_to_visible = round(self.clock.now() - start, 3)
            return [label for label, r in results.items() if not r.visible]

        try:
            poll_until(observe, lambda pending: not pending, self.timeout, self.poll_interval,
                       "marker visible on every replica", self.clock)
        except PollTimeout:
            pass  # the results name who is missing and why
        finally:
            for conn in self._replica_conns.values():
                self._close(conn)
            self._replica_conns.clear()
        return [results[e.label] for e in self.replicas]

    # -- the whole check ----------------------------------------------------------------------------------

    def run(self, check_mode: bool = False) -> CheckResult:
        """In check mode nothing is written: only the primary's view of its standbys is reported."""
        result = CheckResult(primary=self.primary.label)
        conn = self.connect_primary()
        try:
            if not check_mode:
                try:
                    (result.marker, result.written_at, result.deleted_markers,
                     result.commit_cancelled) = self.write_marker(conn)
                except self.errors as err:
                    raise PostgresCheckError("writing the marker into %s on the primary %s failed: %s" % (
                        self.table, self.primary.label, error_text(err))) from err
                result.changed = True
            try:
                result.standbys = self.standbys(conn)
                conn.rollback()
            except self.errors as err:
                raise PostgresCheckError("reading pg_stat_replication on the primary %s failed: %s" % (
                    self.primary.label, error_text(err))) from err
        finally:
            self._close(conn)
        if not check_mode and result.marker:
            result.replicas = self.wait_for_marker(result.marker)
        return result
