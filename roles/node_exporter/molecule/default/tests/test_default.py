"""Verify node_exporter against the running service, from inside the host and from the controller.

`make test` runs these checks against a lab host instead (tests/lab/test_lab.py): MLFLOW_HA_NODE_EXPORTER_PASSWORD
then carries the lab's monitoring password and MLFLOW_HA_NODE_EXPORTER_DISABLED (a JSON list) the collectors its
inventory disables; the scenario's own (molecule.yml) otherwise."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

PORT = 9100
# HTTPS with the monitoring login; the CA is the one the role installed beside its certificate.
LOGIN = ("monitoring", os.environ.get("MLFLOW_HA_NODE_EXPORTER_PASSWORD") or "molecule-monitoring")
DISABLED = json.loads(os.environ.get("MLFLOW_HA_NODE_EXPORTER_DISABLED") or '["mdadm"]')
CURL = f"curl -fsS --cacert /etc/prometheus/node-exporter-tls/ca.crt -u {LOGIN[0]}:{LOGIN[1]}"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def families(text: str) -> dict[str, list[str]]:
    """Metric name -> sample lines, from the Prometheus text exposition format."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), []).append(line)
    return out


@pytest.fixture(scope="module")
def metrics(host) -> dict[str, list[str]]:
    cmd = host.run(f"{CURL} https://127.0.0.1:{PORT}/metrics")
    assert cmd.rc == 0, cmd.stderr
    return families(cmd.stdout)


def test_service_running_and_enabled(host):
    svc = host.service("prometheus-node-exporter")
    assert svc.is_running
    assert svc.is_enabled


def test_listens_on_configured_port(host):
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_core_metric_families(metrics):
    for name in ("node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_load1",
                 "node_filesystem_avail_bytes", "node_exporter_build_info"):
        assert name in metrics, f"{name} missing from /metrics"


def test_enabled_collectors_report(metrics):
    # systemd and processes are enabled by the role's defaults; each reports real state.
    units = metrics.get("node_systemd_unit_state", [])
    assert any('name="prometheus-node-exporter.service"' in s and 'state="active"' in s and s.endswith(" 1")
               for s in units), "systemd collector does not see the exporter's own unit as active"
    assert "node_processes_pids" in metrics


def test_collector_flags(metrics):
    success = {re.search(r'collector="([^"]+)"', s).group(1): s.rsplit(" ", 1)[1]
               for s in metrics["node_scrape_collector_success"]}
    assert success.get("systemd") == "1"
    assert DISABLED, "no disabled collector to check"
    for name in DISABLED:
        assert name not in success, f"{name} was disabled through the inventory"


def test_textfile_collector_reads_directory(host):
    prom = "/var/lib/prometheus/node-exporter/molecule.prom"
    host.run(f"printf 'mlflow_ha_molecule_probe 42\\n' > {prom}")
    try:
        cmd = host.run(f"{CURL} https://127.0.0.1:{PORT}/metrics")
        assert "mlflow_ha_molecule_probe 42" in cmd.stdout
    finally:
        host.run(f"rm -f {prom}")


def test_certificate_expiry_is_exported(metrics):
    # The pki role's module run wrote the expiry of the exporter's own certificate and of its CA into the textfile
    # directory (pki_cert_metrics_dir), for the CertificateExpires* alerts.
    samples = metrics.get("mlflow_ha_certificate_expiry_timestamp_seconds", [])
    paths = {re.search(r'path="([^"]+)"', s).group(1) for s in samples}
    assert {"/etc/prometheus/node-exporter-tls/node-exporter.crt", "/etc/prometheus/node-exporter-tls/ca.crt"} <= paths
    assert all(float(s.rsplit(" ", 1)[1]) > time.time() for s in samples)


def test_scrape_from_controller(host):
    # Prometheus scrapes from another machine: the exporter must answer on the host's network address.
    addr = host.interface("eth0").addresses[0]
    cmd = host.run(f"{CURL} https://{addr}:{PORT}/metrics")
    assert cmd.rc == 0, cmd.stderr
    assert "node_exporter_build_info" in families(cmd.stdout)
    # Without the login: 401.
    refused = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /etc/prometheus/node-exporter-tls/ca.crt "
                       f"https://{addr}:{PORT}/metrics")
    assert refused.stdout == "401"
