# The mlops.mlflow_ha PgBouncer exporter (run by systemd as: python3 pgbouncer_exporter.py).
"""PgBouncer metrics for Prometheus, read from the local PgBouncer's admin console.

Why the collection carries this program: Debian 12's prometheus-pgbouncer-exporter (1.7) reads the SHOW STATS
column `total_requests`, which PgBouncer renamed in 1.8; against Debian 12's PgBouncer 1.18 it dies at start
(KeyError). This program reads SHOW POOLS, SHOW STATS, SHOW LISTS and SHOW DATABASES by column name and exports
whatever columns the running PgBouncer has, so a renamed column costs a metric, never the exporter.

Environment: PGBOUNCER_HOST (127.0.0.1), PGBOUNCER_PORT (6432), PGBOUNCER_USER, PGPASSWORD (libpq reads it),
EXPORTER_LISTEN (0.0.0.0:9127), EXPORTER_CONNECT_TIMEOUT (3 seconds), EXPORTER_WEB_CONFIG (the web configuration
file the Prometheus exporters read with --web.config.file: TLS and basic auth; unset serves plain HTTP to anyone).
Uses psycopg2 (python3-psycopg2, which the patroni role installs as well), and exposition.py and web_auth.py, the
collection's Prometheus text writer and web configuration reader (plugins/module_utils), which the role copies
beside this file. One short connection per scrape: nothing stale between scrapes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from exposition import Exposition
from web_auth import SecureServerMixin, WebConfig, WebConfigError, authorized


class Metric(NamedTuple):
    name: str
    help: str
    scale: float = 1.0  # PgBouncer counts time in microseconds; Prometheus wants seconds


class View(NamedTuple):
    """One SHOW command: its label columns (label, column) and its value columns (column -> metric)."""
    command: str
    kind: str
    labels: Tuple[Tuple[str, str], ...]
    metrics: Dict[str, Metric]


VIEWS = (
    View("SHOW POOLS", "gauge", (("database", "database"), ("user", "user")), {
        "cl_active": Metric("pgbouncer_active_clients", "Client connections linked to a server connection."),
        "cl_waiting": Metric("pgbouncer_waiting_clients", "Client connections waiting for a server connection."),
        "sv_active": Metric("pgbouncer_active_servers", "Server connections linked to a client."),
        "sv_idle": Metric("pgbouncer_idle_servers", "Server connections idle and ready for a client."),
        "sv_used": Metric("pgbouncer_pool_used_servers", "Server connections idle longer than server_check_delay."),
        "maxwait": Metric("pgbouncer_max_wait_seconds", "Seconds the oldest waiting client has waited."),
    }),
    # Counters since PgBouncer started.
    View("SHOW STATS", "counter", (("database", "database"),), {
        "total_xact_count": Metric("pgbouncer_transactions_total", "Transactions pooled."),
        "total_query_count": Metric("pgbouncer_queries_total", "Queries pooled."),
        "total_received": Metric("pgbouncer_received_bytes_total", "Bytes received from clients."),
        "total_sent": Metric("pgbouncer_sent_bytes_total", "Bytes sent to clients."),
        "total_xact_time": Metric("pgbouncer_transaction_seconds_total", "Seconds spent in transactions.", 1e-6),
        "total_query_time": Metric("pgbouncer_query_seconds_total", "Seconds spent in queries.", 1e-6),
        "total_wait_time": Metric("pgbouncer_client_wait_seconds_total", "Seconds clients waited for a server.",
                                  1e-6),
    }),
    View("SHOW DATABASES", "gauge", (("database", "name"),), {
        "pool_size": Metric("pgbouncer_database_pool_size", "Configured server connections per user."),
        "reserve_pool": Metric("pgbouncer_database_reserve_pool", "Extra server connections when clients wait."),
        "max_connections": Metric("pgbouncer_database_max_connections", "Maximum server connections (0: unlimited)."),
        "current_connections": Metric("pgbouncer_database_current_connections", "Server connections open now."),
    }),
)
# SHOW LISTS has one row per list (list, items): list name -> metric. Whole process.
LISTS = {
    "used_clients": Metric("pgbouncer_used_clients", "Client connections in use."),
    "free_clients": Metric("pgbouncer_free_clients", "Client connection slots free."),
    "used_servers": Metric("pgbouncer_used_servers", "Server connections in use (all pools)."),
    "free_servers": Metric("pgbouncer_free_servers", "Server connection slots free."),
    "login_clients": Metric("pgbouncer_login_clients", "Clients logging in."),
}

Rows = List[Dict[str, Any]]
Query = Callable[[str], Rows]


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def collect(query: Query, out: Exposition) -> None:
    """Read the admin console through `query` (SHOW ... -> rows as dicts) into `out`."""
    # PgBouncer lists a pool once a client used it (the admin console's pseudo-database "pgbouncer" always:
    # its rows are kept, so the families exist on an idle node too; filter database!="pgbouncer" for traffic).
    for view in VIEWS:
        for row in query(view.command):
            labels = [(label, row.get(column, "")) for label, column in view.labels]
            for column, metric in view.metrics.items():
                value = _number(row.get(column))
                if value is not None:
                    out.add(metric.name, view.kind, metric.help, value * metric.scale, labels)
    for row in query("SHOW LISTS"):
        metric = LISTS.get(str(row.get("list")))
        value = _number(row.get("items"))
        if metric and value is not None:
            out.add(metric.name, "gauge", metric.help, value)


def scrape(query_factory: Callable[[], Tuple[Query, Callable[[], None]]]) -> str:
    """One scrape: connect, read everything, close. pgbouncer_up says whether it worked; the reason goes to
    the journal (never to the metrics: it may name hosts or users)."""
    out = Exposition()
    started = time.monotonic()
    up = 1.0
    close: Optional[Callable[[], None]] = None
    try:
        query, close = query_factory()
        collect(query, out)
    except Exception as exc:  # any failure to read PgBouncer: pgbouncer_up 0, reason logged
        up = 0.0
        out = Exposition()
        print("pgbouncer_exporter: scrape failed: %s: %s" % (type(exc).__name__, exc), file=sys.stderr, flush=True)
    finally:
        if close is not None:
            try:
                close()
            except Exception as exc:  # closing a broken connection may fail too
                print("pgbouncer_exporter: close failed: %s" % exc, file=sys.stderr, flush=True)
    out.add("pgbouncer_up", "gauge", "1 when PgBouncer's admin console answered this scrape.", up)
    out.add("pgbouncer_exporter_scrape_duration_seconds", "gauge", "Seconds this scrape took.",
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


def serve(listen: str, factory: Callable[[], Tuple[Query, Callable[[], None]]],
          web_config: Optional[WebConfig] = None) -> None:
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]") or "0.0.0.0"

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a client that stalls (in the TLS handshake too) frees its thread

        def do_GET(self) -> None:
            if not authorized(self):
                return
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

    class Server(SecureServerMixin, ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, int(port)), Handler)
    server.secure(web_config)
    server.serve_forever()


def main() -> int:
    user = os.environ.get("PGBOUNCER_USER", "")
    if not user:
        print("pgbouncer_exporter: PGBOUNCER_USER is unset", file=sys.stderr)
        return 2
    factory = psycopg2_factory(os.environ.get("PGBOUNCER_HOST", "127.0.0.1"),
                               int(os.environ.get("PGBOUNCER_PORT", "6432")), user,
                               int(os.environ.get("EXPORTER_CONNECT_TIMEOUT", "3")))
    web_config = None
    if os.environ.get("EXPORTER_WEB_CONFIG"):
        try:
            web_config = WebConfig.load(os.environ["EXPORTER_WEB_CONFIG"])
            web_config.ssl_context()  # a missing or unreadable key fails here, at start
        except (WebConfigError, OSError) as err:
            print("pgbouncer_exporter: %s" % err, file=sys.stderr)
            return 2
    serve(os.environ.get("EXPORTER_LISTEN", "0.0.0.0:9127"), factory, web_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
