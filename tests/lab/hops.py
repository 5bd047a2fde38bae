"""Where a registration's time goes (issue 16, "per-hop latency"), from the counters the stack already exports.

Before and after a load phase, every load balancer's HAProxy metrics (stats port, /metrics) and every database
member's PgBouncer exporter are read; the differences, divided by the registrations the phase completed, give per
registration:
- the HTTP requests it took through HAProxy to MLflow, and the seconds MLflow took to answer them (HAProxy's
  average response time of the mlflow backend, over its last 1024 requests, times the requests);
- the S3 requests MLflow made through HAProxy's s3 proxy to the storage gateways, and their seconds (same way);
HAProxy's average *total* times are kept as reported but not used: they include the time a kept-alive connection
sits idle between requests (the first lab run read 1 s of "S3 time" per 0.26 s registration from them).
- the database transactions PgBouncer pooled for it, the seconds its queries took and the seconds from BEGIN to
  COMMIT (PgBouncer's own microsecond counters: exact deltas), and the seconds clients waited for a pooled server
  connection;
- what is left of the client's own time: the client, TLS and the network between client and HAProxy, and what
  is left of MLflow's: MLflow's own work (Python, serialisation, auth) besides its database queries and S3 calls.
MLflow reaches PostgreSQL through HAProxy's TCP port to PgBouncer: that hop is inside "database" (PgBouncer times
a transaction from the client's BEGIN to its end, on the connection HAProxy relays).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labctl import ROOT, Lab, role_settings

sys.path.insert(0, str(ROOT / ".cache" / "collections"))  # the collection by its FQCN (the link tools/venv.sh makes)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import parse

Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab, url: str) -> Counters:
    status, body = lab.monitoring_request(url, timeout=5)
    if status != 200:
        raise OSError(f"GET {url} answered HTTP {status}")
    return {(s.name, tuple(sorted(s.labels))): s.value for s in parse(body.decode())}


def snapshot(lab: Lab) -> dict[str, dict[str, Counters]]:
    """Every load balancer's HAProxy metrics and every database member's PgBouncer exporter metrics, now."""
    stats_port = role_settings("haproxy").get("haproxy_stats_port", 8404)
    exporter_port = role_settings("pgbouncer_exporter").get("pgbouncer_exporter_port", 9127)
    return {
        "haproxy": {h: scrape(lab, f"https://{lab.hosts[h]}:{stats_port}/metrics") for h in lab.groups["lb"]},
        "pgbouncer": {h: scrape(lab, f"https://{lab.hosts[h]}:{exporter_port}/metrics")
                      for h in lab.groups["postgres"]},
    }


def _pick(counters: Counters, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in counters.items() if n == name and want <= set(lab))


def _delta(before: dict[str, Counters], after: dict[str, Counters], name: str, **labels: str) -> dict[str, float]:
    return {host: _pick(after[host], name, **labels) - _pick(before.get(host, {}), name, **labels) for host in after}


def _weighted(after: dict[str, Counters], requests: dict[str, float], name: str, **labels: str) -> Optional[float]:
    """An average HAProxy keeps per load balancer, weighted by the requests each served in the phase."""
    total = sum(requests.values())
    if total <= 0:
        return None
    return sum(_pick(after[h], name, **labels) * n for h, n in requests.items()) / total


def _per(before: dict[str, Counters], after: dict[str, Counters], name: str, registrations: int,
         **labels: str) -> float:
    return round(sum(_delta(before, after, name, **labels).values()) / registrations, 3)


def per_hop(before: dict, after: dict, registrations: int, client_mean_seconds: Optional[float],
            database: str = "mlflow") -> dict:
    """Seconds per registration in each hop between two snapshot()s (see the module's docstring)."""
    if registrations <= 0:
        return {"registrations": 0}
    ha_b, ha_a = before["haproxy"], after["haproxy"]
    mlflow_requests = _delta(ha_b, ha_a, "haproxy_backend_http_requests_total", proxy="mlflow")
    s3_requests = _delta(ha_b, ha_a, "haproxy_backend_http_requests_total", proxy="s3")
    mlflow_response = _weighted(ha_a, mlflow_requests, "haproxy_backend_response_time_average_seconds",
                                proxy="mlflow")
    mlflow_total = _weighted(ha_a, mlflow_requests, "haproxy_backend_total_time_average_seconds", proxy="mlflow")
    s3_response = _weighted(ha_a, s3_requests, "haproxy_backend_response_time_average_seconds", proxy="s3")
    s3_total = _weighted(ha_a, s3_requests, "haproxy_backend_total_time_average_seconds", proxy="s3")
    pg_b, pg_a = before["pgbouncer"], after["pgbouncer"]
    xacts = sum(_delta(pg_b, pg_a, "pgbouncer_transactions_total", database=database).values())
    xact_seconds = sum(_delta(pg_b, pg_a, "pgbouncer_transaction_seconds_total", database=database).values())
    query_seconds = sum(_delta(pg_b, pg_a, "pgbouncer_query_seconds_total", database=database).values())
    wait_seconds = sum(_delta(pg_b, pg_a, "pgbouncer_client_wait_seconds_total", database=database).values())

    def each(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value / registrations, 4)

    http_per = sum(mlflow_requests.values()) / registrations
    s3_per = sum(s3_requests.values()) / registrations
    mlflow_seconds = None if mlflow_response is None else mlflow_response * http_per
    s3_seconds = None if s3_response is None else s3_response * s3_per
    db_seconds = query_seconds / registrations
    hops = {
        "registrations": registrations,
        "http_requests_per_registration": round(http_per, 2),
        "s3_requests_per_registration": round(s3_per, 2),
        "db_transactions_per_registration": round(xacts / registrations, 2),
        "seconds_per_registration": {
            "client_measured": None if client_mean_seconds is None else round(client_mean_seconds, 4),
            "mlflow_answering": None if mlflow_seconds is None else round(mlflow_seconds, 4),
            "database_queries": round(db_seconds, 4),
            # From BEGIN to COMMIT: the queries plus MLflow's own work while it holds the transaction open.
            "database_transactions": each(xact_seconds),
            "database_pool_wait": each(wait_seconds),
            "s3_through_haproxy": None if s3_seconds is None else round(s3_seconds, 4),
        },
        # TLS handshakes: connections per registration on each TLS leg. The client's to the VIP (HAProxy's frontend);
        # HAProxy's to the MLflow servers and to the S3 gateways: new connections (a handshake each) and requests sent
        # over an idle kept-alive one (HAProxy counts the two apart: `connect` and `reuse` in its stats).
        "connections_per_registration": {
            "client_to_haproxy": _per(ha_b, ha_a, "haproxy_frontend_connections_total", registrations, proxy="mlflow"),
            "haproxy_to_mlflow_new": _per(ha_b, ha_a, "haproxy_backend_connection_attempts_total", registrations,
                                          proxy="mlflow"),
            "haproxy_to_mlflow_reused": _per(ha_b, ha_a, "haproxy_backend_connection_reuses_total", registrations,
                                             proxy="mlflow"),
            "haproxy_to_s3_new": _per(ha_b, ha_a, "haproxy_backend_connection_attempts_total", registrations,
                                      proxy="s3"),
            "haproxy_to_s3_reused": _per(ha_b, ha_a, "haproxy_backend_connection_reuses_total", registrations,
                                         proxy="s3"),
        },
        "haproxy_averages_seconds": {"mlflow_response": mlflow_response, "mlflow_total": mlflow_total,
                                     "s3_response": s3_response, "s3_total": s3_total},
    }
    seconds = hops["seconds_per_registration"]
    if mlflow_seconds is not None:
        # MLflow's own work: its answer time less its database queries and S3 calls (both made while answering).
        seconds["mlflow_own"] = round(mlflow_seconds - db_seconds - (s3_seconds or 0.0), 4)
        if client_mean_seconds is not None:
            seconds["client_tls_network"] = round(client_mean_seconds - mlflow_seconds, 4)
    return hops
