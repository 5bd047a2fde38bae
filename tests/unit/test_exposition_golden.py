"""Before/after proof for the shared exposition writer (plugins/module_utils/exposition.py): the three programs that
serve Prometheus text print, for the same input, the bytes they printed when each wrote the format itself.

tests/unit/golden/*.prom were written by these scenarios run against the programs at commit c50b27c, before they
shared the writer (record again with MLFLOW_HA_RECORD_GOLDEN=1; only ever on purpose, after a deliberate change
of a program's output)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import load_program

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
RECORD = bool(os.environ.get("MLFLOW_HA_RECORD_GOLDEN"))

px = load_program(ROOT / "roles" / "pgbouncer_exporter" / "files" / "pgbouncer_exporter.py")
rp = load_program(ROOT / "roles" / "registration_probe" / "files" / "registration_probe.py")
sf = load_program(ROOT / "roles" / "seaweedfs" / "files" / "storage_fence.py")

# PgBouncer 1.18's admin console (values made up): microsecond columns that scale to awkward floats, a column
# the exporter does not know, a label value that needs every escape, a value that is not a number.
CONSOLE = {
    "SHOW POOLS": [
        {"database": "mlflow", "user": "mlflow", "cl_active": 3, "cl_waiting": 1, "sv_active": 3, "sv_idle": 2,
         "sv_used": 0, "maxwait": 2, "maxwait_us": 5, "pool_mode": "transaction"},
        {"database": 'we"ird\\db\nx', "user": "u", "cl_active": 1, "cl_waiting": None, "sv_active": "n/a"},
        {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0, "sv_active": 0,
         "sv_idle": 0, "sv_used": 0, "maxwait": 0},
    ],
    "SHOW STATS": [
        {"database": "mlflow", "total_xact_count": 10, "total_query_count": 40, "total_received": 1000,
         "total_sent": 2 ** 60, "total_xact_time": 3_000_001, "total_query_time": 1_500_000, "total_wait_time": 7,
         "avg_xact_count": 1},
        {"database": "pgbouncer", "total_xact_count": 0, "total_query_count": 2, "total_xact_time": 0.5},
    ],
    "SHOW DATABASES": [
        {"name": "mlflow", "pool_size": 20, "reserve_pool": 0, "max_connections": 0, "current_connections": 5},
    ],
    "SHOW LISTS": [
        {"list": "databases", "items": 2}, {"list": "used_clients", "items": 4}, {"list": "free_clients", "items": 46},
        {"list": "used_servers", "items": 5}, {"list": "free_servers", "items": 0}, {"list": "login_clients"},
    ],
}


def pgbouncer_scrape(monkeypatch, factory):
    ticks = iter((100.0, 100.0123))
    monkeypatch.setattr(px, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    return px.scrape(factory)


def pgbouncer_ok(monkeypatch):
    def factory():
        return (lambda sql: [dict(row) for row in CONSOLE[sql]]), (lambda: None)
    return pgbouncer_scrape(monkeypatch, factory)


def pgbouncer_down(monkeypatch):
    def factory():
        raise OSError("connection refused")
    return pgbouncer_scrape(monkeypatch, factory)


def probe_fresh(_monkeypatch):
    return rp.Metrics().render()


def probe_busy(_monkeypatch):
    metrics = rp.Metrics()
    for step in rp.STEPS:
        metrics.step_attempted(step)
    metrics.step_attempted("create_run")
    metrics.cycle_failed("log_artifact")
    for seconds in (0.05, 0.1, 0.3, 1.0, 1.5, 45.0, 0.123456789):
        metrics.cycle_succeeded(seconds, 1_700_000_000.25)
    metrics.cycle_succeeded(2.0, 1_700_000_123.5)
    metrics.prune_failed()
    return metrics.render()


def fence_state(_monkeypatch, tmp_path):
    peers = sf.parse_peers("s3-2=10.0.0.2,s3-3=10.0.0.3,s3-4=[fd00::4]")
    peers[0].fenced = True
    out = tmp_path / "fence.prom"
    assert sf.textfile(str(out), peers) is None
    return out.read_text()


SCENARIOS = {
    "pgbouncer_exporter_ok": pgbouncer_ok,
    "pgbouncer_exporter_down": pgbouncer_down,
    "registration_probe_fresh": probe_fresh,
    "registration_probe_busy": probe_busy,
    "storage_fence": fence_state,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_output_is_byte_identical_to_the_programs_own_writers(name, monkeypatch, tmp_path):
    scenario = SCENARIOS[name]
    text = scenario(monkeypatch, tmp_path) if name == "storage_fence" else scenario(monkeypatch)
    golden = GOLDEN / (name + ".prom")
    if RECORD:
        golden.write_bytes(text.encode("utf-8"))
    assert text.encode("utf-8") == golden.read_bytes()
