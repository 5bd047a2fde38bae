"""The alert_for filter (prometheus_alert_for): the named alerts' hold durations replaced, everything else kept, and
the result still a rule file promtool accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from shared_checks import run_cache_tool

from ansible_collections.mlops.mlflow_ha.plugins.filter.alert_for import alert_for

RULES = Path(__file__).resolve().parents[2] / "roles" / "prometheus" / "files" / "rules" / "mlflow_ha.rules.yml"


def rules_by_name(text: str) -> dict:
    return {rule["alert"]: rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]
            if "alert" in rule}


def test_only_the_named_alerts_change():
    shipped = RULES.read_text()
    changed = alert_for(shipped, {"MLflowServerDown": "20s"})
    before, after = rules_by_name(shipped), rules_by_name(changed)
    assert after["MLflowServerDown"]["for"] == "20s"
    assert before["MLflowServerDown"]["for"] != "20s"
    for name, rule in before.items():
        expected = dict(rule, **({"for": "20s"} if name == "MLflowServerDown" else {}))
        assert after[name] == expected, name
    # Prometheus's own templates are kept as text.
    assert "{{ $labels.instance }}" in changed


def test_no_durations_leave_the_file_as_it_is():
    shipped = RULES.read_text()
    assert alert_for(shipped, {}) == shipped


def test_an_unknown_alert_or_a_bad_duration_is_named():
    with pytest.raises(AnsibleFilterError, match="MLflowServerGone"):
        alert_for(RULES.read_text(), {"MLflowServerGone": "20s"})
    with pytest.raises(AnsibleFilterError, match="MLflowServerDown='20 seconds'"):
        alert_for(RULES.read_text(), {"MLflowServerDown": "20 seconds"})


def test_promtool_accepts_the_result(tmp_path):
    path = tmp_path / "mlflow_ha.rules.yml"
    path.write_text(alert_for(RULES.read_text(), {"MLflowServerDown": "20s", "NodeDown": "1m30s"}))
    done = run_cache_tool("promtool", "PROMTOOL", "prometheus", "check", "rules", str(path), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
