# The mlops.mlflow_ha PgBouncer exporter (run by systemd as: python3 pgbouncer_exporter.py).
"""PgBouncer metrics for Prometheus, read from the local PgBouncer's admin console.

Why the collection carries this program: Debian 12's prometheus-pgbouncer-exporter (1.7) reads the SHOW STATS
column `total_requests`, which PgBouncer renamed in 1.8; against Debian 12's PgBouncer 1.18 it dies at start
(KeyError). This program reads SHOW POOLS, SHOW STATS, SHOW LISTS and SHOW DATABASES by column name and exports
whatever columns the running PgBouncer has, so a renamed column costs a metric, never the exporter.

Environment: PGBOUNCER_HOST (127.0.0.1), PGBOUNCER_PORT (6432), PGBOUNCER_USER, PGPASSWORD (libpq reads it),
EXPORTER_LISTEN (0.0.0.0:9127), EXPORTER_CONNECT_TIMEOUT (3 seconds). Uses psycopg2 (python3-psycopg2, which
Debian's patroni package already depends on). One short connection per scrape: nothing stale between scrapes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

# SHOW POOLS columns -> (metric, help). Per database and user.
POOLS = {
    "cl_active": ("pgbouncer_active_clients", "Client connections linked to a server connection."),
    "cl_waiting": ("pgbouncer_waiting_clients", "Client connections waiting for a server connection."),
    "sv_active": ("pgbouncer_active_servers", "Server connections linked to a client."),
    "sv_idle": ("pgbouncer_idle_servers", "Server connections idle and ready for a client."),
    "sv_used": ("pgbouncer_pool_used_servers", "Server connections idle longer than server_check_delay."),
    "maxwait": ("pgbouncer_max_wait_seconds", "Seconds the oldest waiting client has waited."),
}
# SHOW STATS columns -> (metric, help, scale). Per database; counters since PgBouncer started.
STATS = {
    "total_xact_count": ("pgbouncer_transactions_total", "Transactions pooled.", 1.0),
    "total_query_count": ("pgbouncer_queries_total", "Queries pooled.", 1.0),
    "total_received": ("pgbouncer_received_bytes_total", "Bytes received from clients.", 1.0),
    "total_sent": ("pgbouncer_sent_bytes_total", "Bytes sent to clients.", 1.0),
    "total_xact_time": ("pgbouncer_transaction_seconds_total", "Seconds spent in transactions.", 1e-6),
    "total_query_time": ("pgbouncer_query_seconds_total", "Seconds spent in queries.", 1e-6),
    "total_wait_time": ("pgbouncer_client_wait_seconds_total", "Seconds clients waited for a server.", 1e-6),
}
# SHOW DATABASES columns -> (metric, help). Per database.
DATABASES = {
    "pool_size": ("pgbouncer_database_pool_size", "Configured server connections per user."),
    "reserve_pool": ("pgbouncer_database_reserve_pool", "Extra server connections when clients wait."),
    "max_connections": ("pgbouncer_database_max_connections", "Maximum server connections (0: unlimited)."),
    "current_connections": ("pgbouncer_database_current_connections", "Server connections open now."),
}
# SHOW LISTS rows (list name -> metric). Whole process.
LISTS = {
    "used_clients": ("pgbouncer_used_clients", "Client connections in use."),
    "free_clients": ("pgbouncer_free_clients", "Client connection slots free."),
    "used_servers": ("pgbouncer_used_servers", "Server connections in use (all pools)."),
    "free_servers": ("pgbouncer_free_servers", "Server connection slots free."),
    "login_clients": ("pgbouncer_login_clients", "Clients logging in."),
}

Rows = List[Dict[str, Any]]
Query = Callable[[str], Rows]


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _labels(pairs: Sequence[Tuple[str, Any]]) -> str:
    return "{" + ",".join('%s="%s"' % (k, _escape(v)) for k, v in pairs) + "}" if pairs else ""


class Families:
    """Prometheus text exposition, one HELP/TYPE block per metric family."""

    def __init__(self) -> None:
        self._order: List[str] = []
        self._meta: Dict[str, Tuple[str, str]] = {}
        self._samples: Dict[str, List[str]] = {}

    def add(self, name: str, kind: str, text: str, labels: Sequence[Tuple[str, Any]], value: float) -> None:
        if name not in self._meta:
            self._order.append(name)
            self._meta[name] = (kind, text)
            self._samples[name] = []
        self._samples[name].append("%s%s %s" % (name, _labels(labels), repr(float(value))))

    def render(self) -> str:
        lines: List[str] = []
        for name in self._order:
            kind, text = self._meta[name]
            lines += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)] + self._samples[name]
        return "\n".join(lines) + "\n"


def _columns(out: Families, rows: Rows, spec: Dict[str, tuple], keys: Iterable[str], kind: str) -> None:
    keys = list(keys)
    for row in rows:
        labels = [(k, row.get(k, "")) for k in keys]
        for column, meta in spec.items():
            value = _number(row.get(column))
            if value is None:
                continue
            scale = meta[2] if len(meta) > 2 else 1.0
            out.add(meta[0], kind, meta[1], labels, value * scale)


def collect(query: Query, out: Families) -> None:
    """Read the admin console through `query` (SHOW ... -> rows as dicts) into `out`."""
    # PgBouncer lists a pool once a client used it (the admin console's pseudo-database "pgbouncer" always:
    # its rows are kept, so the families exist on an idle node too; filter database!="pgbouncer" for traffic).
    _columns(out, query("SHOW POOLS"), POOLS, ("database", "user"), "gauge")
    _columns(out, query("SHOW STATS"), STATS, ("database",), "counter")
    databases = query("SHOW DATABASES")
    for row in databases:
        row["database"] = row.get("name")
    _columns(out, databases, DATABASES, ("database",), "gauge")
    for row in query("SHOW LISTS"):
        meta = LISTS.get(str(row.get("list")))
        value = _number(row.get("items"))
        if meta and value is not None:
            out.add(meta[0], "gauge", meta[1], [], value)


def scrape(query_factory: Callable[[], Tuple[Query, Callable[[], None]]]) -> str:
    """One scrape: connect, read everything, close. pgbouncer_up says whether it worked; the reason goes to
    the journal (never to the metrics: it may name hosts or users)."""
    out = Families()
    started = time.monotonic()
    up = 1.0
    close: Optional[Callable[[], None]] = None
    try:
        query, close = query_factory()
        collect(query, out)
    except Exception as exc:  # any failure to read PgBouncer: pgbouncer_up 0, reason logged
        up = 0.0
        out = Families()
        print("pgbouncer_exporter: scrape failed: %s: %s" % (type(exc).__name__, exc), file=sys.stderr, flush=True)
    finally:
        if close is not None:
            try:
                close()
            except Exception as exc:  # closing a broken connection may fail too
                print("pgbouncer_exporter: close failed: %s" % exc, file=sys.stderr, flush=True)
    out.add("pgbouncer_up", "gauge", "1 when PgBouncer's admin console answered this scrape.", [], up)
    out.add("pgbouncer_exporter_scrape_duration_seconds", "gauge", "Seconds this scrape took.", [],
            time.monotonic() - started)
    return out.render()


def psycopg2_factory(host: str, port: int, user: str, timeout: int) -> Callable[[], Tuple[Query, Callable[[], None]]]:
    def factory() -> Tuple[Query, Callable[[], None]]:
        import psycopg2  # noqa: PLC0415 - imported late: the unit tests run without it

        conn = psycopg2.connect(host=host, port=port, user=user, dbname="pgbouncer", connect_timeout=timeout,
                                application_name="mlflow-ha-pgbouncer-exporter")
        conn.autocommit = True  # the admin console knows no transactions

        def query(sql: str) -> Rows:
            with conn.cursor() as cur:
                cur.execute(sql)
                names = [d[0] for d in cur.description or []]
                return [dict(zip(names, row)) for row in cur.fetchall()]

        return query, conn.close
    return factory


def serve(listen: str, factory: Callable[[], Tuple[Query, Callable[[], None]]]) -> None:
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]") or "0.0.0.0"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "metrics are at /metrics")
                return
            body = scrape(factory).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    Server((host, int(port)), Handler).serve_forever()


def main() -> int:
    user = os.environ.get("PGBOUNCER_USER", "")
    if not user:
        print("pgbouncer_exporter: PGBOUNCER_USER is unset", file=sys.stderr)
        return 2
    factory = psycopg2_factory(os.environ.get("PGBOUNCER_HOST", "127.0.0.1"),
                               int(os.environ.get("PGBOUNCER_PORT", "6432")), user,
                               int(os.environ.get("EXPORTER_CONNECT_TIMEOUT", "3")))
    serve(os.environ.get("EXPORTER_LISTEN", "0.0.0.0:9127"), factory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
