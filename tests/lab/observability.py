"""Questions the lab tests ask the monitoring host (mon1): Prometheus's targets and alerts, Alertmanager's
alerts, the registration probe's counters, the central journal. The probe's metrics are read with the
collection's own Prometheus parser (module_utils/prometheus.py, by its FQCN through the link tools/venv.sh makes)."""

from __future__ import annotations

import sys
import urllib.parse
from typing import Optional

from labctl import ROOT, Lab

sys.path.insert(0, str(ROOT / ".cache" / "collections"))
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import Sample, parse


class Monitoring:
    def __init__(self, lab: Lab, host: str = "mon1"):
        self.lab = lab
        self.host = host
        address = lab.hosts[host]
        # HTTPS with the monitoring login (the lab CA): Lab.monitoring_request.
        self.prometheus = f"https://{address}:9090"
        self.alertmanager = f"https://{address}:9093"
        self.probe = f"https://{address}:9109/metrics"

    # -- Prometheus ---------------------------------------------------------------------------------------
    def targets(self) -> list[dict]:
        answer = self.lab.monitoring_json(f"{self.prometheus}/api/v1/targets?state=active", timeout=5)
        return answer["data"]["activeTargets"]

    def targets_down(self) -> list[str]:
        """Every active target that is not up, as 'job/instance: last error' (empty when all are up)."""
        return [f"{t['labels'].get('job')}/{t['labels'].get('instance')}: {t.get('health')} {t.get('lastError', '')}"
                for t in self.targets() if t.get("health") != "up"]

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = self.lab.monitoring_json(url, timeout=10)
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus query {expr!r} failed: {answer}")
        return answer["data"]["result"]

    def firing(self, alertname: str) -> list[dict]:
        alerts = self.lab.monitoring_json(f"{self.prometheus}/api/v1/alerts", timeout=5)["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname and a.get("state") == "firing"]

    # -- Alertmanager -------------------------------------------------------------------------------------
    def alertmanager_alerts(self, alertname: str, instance: Optional[str] = None) -> list[dict]:
        """Alerts Alertmanager holds as active (received from Prometheus and not resolved)."""
        matchers = [f'alertname="{alertname}"'] + ([f'instance="{instance}"'] if instance else [])
        query = urllib.parse.urlencode([("filter", m) for m in matchers] + [("active", "true")])
        return self.lab.monitoring_json(f"{self.alertmanager}/api/v2/alerts?{query}", timeout=5)

    # -- the registration probe ---------------------------------------------------------------------------
    def probe_samples(self) -> list[Sample]:
        """The probe's own /metrics."""
        status, body = self.lab.monitoring_request(self.probe, timeout=5)
        if status != 200:
            raise OSError(f"GET {self.probe} answered HTTP {status}")
        return parse(body.decode())

    def probe_counts(self) -> dict[str, float]:
        """Successful registrations, failed ones, failed steps (all steps summed)."""
        samples = self.probe_samples()

        def total(name: str, required: bool = True) -> float:
            values = [s.value for s in samples if s.name == name]
            if required and not values:
                raise KeyError(f"the probe exposes no {name}")
            return sum(values)

        return {
            "successes": total("mlflow_probe_registration_duration_seconds_count"),
            "failures": total("mlflow_probe_registration_failures_total"),
            "step_failures": total("mlflow_probe_step_failures_total", required=False),
        }

    # -- central logs -------------------------------------------------------------------------------------
    def central_log(self, tag: str) -> str:
        """What the monitoring host's journal-remote store holds for a syslog identifier, with the sender's
        hostname (journalctl -o short shows it)."""
        return self.lab.exec(self.host, "journalctl", "--no-pager", "-o", "short", "-D", "/var/log/journal/remote",
                             "-t", tag)
