"""tests/lab/hops.py without a lab: the seconds per registration in each hop, from two snapshots of HAProxy's and
PgBouncer's counters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

import hops  # noqa: E402


def haproxy(requests: float, s3_requests: float, total: float, response: float, s3_response: float) -> dict:
    return {
        ("haproxy_backend_http_requests_total", (("proxy", "mlflow"),)): requests,
        ("haproxy_backend_http_requests_total", (("proxy", "s3"),)): s3_requests,
        # Total times include kept-alive idle time: never used.
        ("haproxy_backend_total_time_average_seconds", (("proxy", "mlflow"),)): total * 10,
        ("haproxy_backend_response_time_average_seconds", (("proxy", "mlflow"),)): response,
        ("haproxy_backend_total_time_average_seconds", (("proxy", "s3"),)): 9.0,
        ("haproxy_backend_response_time_average_seconds", (("proxy", "s3"),)): s3_response,
        ("haproxy_backend_http_requests_total", (("proxy", "stats"),)): 999.0,
    }


def pgbouncer(xacts: float, xact_s: float, query_s: float, wait_s: float, database: str = "mlflow") -> dict:
    labels = (("database", database),)
    return {("pgbouncer_transactions_total", labels): xacts, ("pgbouncer_transaction_seconds_total", labels): xact_s,
            ("pgbouncer_query_seconds_total", labels): query_s,
            ("pgbouncer_client_wait_seconds_total", labels): wait_s}


def test_each_hop_is_its_counters_delta_per_registration():
    before = {"haproxy": {"lb1": haproxy(100, 10, 0.0, 0.0, 0.0), "lb2": haproxy(7, 0, 0.0, 0.0, 0.0)},
              "pgbouncer": {"pg1": pgbouncer(50, 1.0, 0.5, 0.0), "pg2": pgbouncer(0, 0, 0, 0)}}
    # 10 registrations: lb1 served all 50 MLflow requests (answered in 0.05 s each) and 20 S3 requests (0.02 s);
    # 40 transactions took 1.2 s from BEGIN to COMMIT, 0.8 s of it in queries, 0.1 s waiting for a connection.
    after = {"haproxy": {"lb1": haproxy(150, 30, 0.06, 0.05, 0.02), "lb2": haproxy(7, 0, 0.3, 0.3, 0.3)},
             "pgbouncer": {"pg1": pgbouncer(90, 2.2, 1.3, 0.1), "pg2": pgbouncer(0, 0, 0, 0)}}
    got = hops.per_hop(before, after, 10, 0.4)
    assert got["http_requests_per_registration"] == 5
    assert got["s3_requests_per_registration"] == 2
    assert got["db_transactions_per_registration"] == 4
    seconds = got["seconds_per_registration"]
    assert seconds["mlflow_answering"] == pytest.approx(0.25)
    assert seconds["s3_through_haproxy"] == pytest.approx(0.04)
    assert seconds["database_queries"] == pytest.approx(0.08)
    assert seconds["database_transactions"] == pytest.approx(0.12)
    assert seconds["database_pool_wait"] == pytest.approx(0.01)
    assert seconds["mlflow_own"] == pytest.approx(0.25 - 0.08 - 0.04)
    assert seconds["client_tls_network"] == pytest.approx(0.4 - 0.25)


def test_a_phase_without_registrations_reports_none():
    assert hops.per_hop({}, {}, 0, None) == {"registrations": 0}
