"""The collection's PgBouncer exporter (roles/pgbouncer_exporter/files/pgbouncer_exporter.py) against an admin
console that answers like PgBouncer 1.18 (Debian 12), and its HTTP endpoint on loopback."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakes import load_program, web_config_files

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import families, parse

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "roles" / "pgbouncer_exporter" / "files" / "pgbouncer_exporter.py"


px = load_program(PROGRAM)

# Rows as PgBouncer 1.18 returns them (column names taken from its SHOW output; values made up).
CONSOLE = {
    "SHOW POOLS": [
        {"database": "mlflow", "user": "mlflow", "cl_active": 3, "cl_waiting": 1, "cl_active_cancel_req": 0,
         "sv_active": 3, "sv_idle": 2, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 2,
         "maxwait_us": 5, "pool_mode": "transaction"},
        {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0, "sv_active": 0,
         "sv_idle": 0, "sv_used": 0, "maxwait": 0, "pool_mode": "statement"},
    ],
    "SHOW STATS": [
        {"database": "mlflow", "total_xact_count": 10, "total_query_count": 40, "total_received": 1000,
         "total_sent": 2000, "total_xact_time": 3_000_000, "total_query_time": 1_500_000, "total_wait_time": 250_000,
         "avg_xact_count": 1},
    ],
    "SHOW DATABASES": [
        {"name": "mlflow", "host": "127.0.0.1", "port": 5432, "database": "mlflow", "pool_size": 20,
         "reserve_pool": 0, "max_connections": 0, "current_connections": 5, "paused": 0, "disabled": 0},
    ],
    "SHOW LISTS": [
        {"list": "databases", "items": 2}, {"list": "used_clients", "items": 4}, {"list": "free_clients", "items": 46},
        {"list": "used_servers", "items": 5}, {"list": "free_servers", "items": 0}, {"list": "dns_names", "items": 0},
    ],
}


def console(answers=None, closed=None):
    answers = CONSOLE if answers is None else answers

    def factory():
        def query(sql):
            return [dict(row) for row in answers[sql]]
        return query, (lambda: closed.append(True)) if closed is not None else (lambda: None)
    return factory


def values(text):
    return {(s.name, tuple(sorted(s.labels))): s.value for s in parse(text)}


def test_every_console_view_becomes_metrics_with_seconds_for_microseconds():
    closed = []
    text = px.scrape(console(closed=closed))
    v = values(text)
    assert v[("pgbouncer_up", ())] == 1
    assert v[("pgbouncer_active_clients", (("database", "mlflow"), ("user", "mlflow")))] == 3
    assert v[("pgbouncer_waiting_clients", (("database", "mlflow"), ("user", "mlflow")))] == 1
    assert v[("pgbouncer_queries_total", (("database", "mlflow"),))] == 40
    assert v[("pgbouncer_query_seconds_total", (("database", "mlflow"),))] == pytest.approx(1.5)
    assert v[("pgbouncer_database_current_connections", (("database", "mlflow"),))] == 5
    assert v[("pgbouncer_used_servers", ())] == 5
    assert v[("pgbouncer_free_clients", ())] == 46
    # The admin console's own pool is kept: the families exist on an idle node too.
    assert ("pgbouncer_active_clients", (("database", "pgbouncer"), ("user", "pgbouncer"))) in v
    assert closed == [True], "the connection is closed after every scrape"
    # One HELP/TYPE per family, every sample parseable, counters typed as counters.
    assert text.count("# TYPE pgbouncer_active_clients gauge") == 1
    assert "# TYPE pgbouncer_queries_total counter" in text
    assert set(families(parse(text))) >= {"pgbouncer_up", "pgbouncer_active_clients", "pgbouncer_queries_total"}


def test_a_column_this_pgbouncer_lacks_costs_one_metric_not_the_exporter():
    answers = dict(CONSOLE, **{"SHOW STATS": [{"database": "mlflow", "total_requests": 7}]})  # PgBouncer < 1.8
    v = values(px.scrape(console(answers)))
    assert v[("pgbouncer_up", ())] == 1
    assert not any(key[0] == "pgbouncer_queries_total" for key in v)
    assert v[("pgbouncer_active_clients", (("database", "mlflow"), ("user", "mlflow")))] == 3


def test_an_unreachable_pgbouncer_is_up_0_with_the_reason_in_the_log(capsys):
    def refused():
        raise OSError("connection to 127.0.0.1:6432 refused")
    v = values(px.scrape(refused))
    assert v == {("pgbouncer_up", ()): 0, ("pgbouncer_exporter_scrape_duration_seconds", ()): pytest.approx(0, abs=1)}
    assert "connection to 127.0.0.1:6432 refused" in capsys.readouterr().err


def test_label_values_are_escaped():
    answers = dict(CONSOLE, **{"SHOW POOLS": [{"database": 'we"ird\\db', "user": "u", "cl_active": 1}]})
    key = ("pgbouncer_active_clients", (("database", 'we"ird\\db'), ("user", "u")))
    assert values(px.scrape(console(answers)))[key] == 1


def test_http_endpoint_on_loopback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    thread = threading.Thread(target=px.serve, args=(f"127.0.0.1:{port}", console()), daemon=True)
    thread.start()
    for _attempt in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
            break
        except OSError:
            threading.Event().wait(0.1)
    else:
        pytest.fail("the exporter did not answer on loopback")
    assert "pgbouncer_up 1.0" in body
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=2)
    assert err.value.code == 404


def test_https_and_basic_auth_from_the_web_configuration(tmp_path):
    import base64
    import ssl

    path, ca = web_config_files(tmp_path, {"monitoring": "pw"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = px.WebConfig.load(str(path))
    threading.Thread(target=px.serve, args=(f"127.0.0.1:{port}", console(), web), daemon=True).start()
    context = ssl.create_default_context(cafile=str(ca))
    login = {"Authorization": "Basic " + base64.b64encode(b"monitoring:pw").decode()}
    for _attempt in range(50):
        try:
            request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers=login)
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                body = resp.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            threading.Event().wait(0.1)
    else:
        pytest.fail("the exporter did not answer over HTTPS on loopback")
    assert "pgbouncer_up 1.0" in body
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=2, context=context)
    assert err.value.code == 401


def test_a_web_configuration_it_cannot_read_stops_it_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGBOUNCER_USER", "postgres_exporter")
    monkeypatch.setenv("EXPORTER_WEB_CONFIG", str(tmp_path / "missing.yml"))
    assert px.main() == 2
    assert "missing.yml" in capsys.readouterr().err
