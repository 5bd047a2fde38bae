"""The Prometheus rules of the collection: promtool's own checks and unit tests (tests/promtool), and what every
alert must carry (severity, summary, description, a runbook section in docs/alerts.md, a test that fires it and
one that keeps it silent).

promtool comes from tools/promtool.sh (Debian's prometheus package, unpacked into .cache/bin, never installed);
set PROMTOOL to use another one. Without it the promtool tests fail: they are never skipped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
import yaml
from shared_checks import run_cache_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "roles" / "prometheus" / "files" / "rules" / "mlflow_ha.rules.yml"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.test.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
SEVERITIES = {"page", "ticket"}
# Alerts that fire on purpose and reach no person: the dead man's switch (Alertmanager routes it to the external
# heartbeat receiver only, tests/unit/test_alertmanager_config.py).
HEARTBEATS = {"Watchdog": "heartbeat"}
RUNBOOK = re.compile(r"^docs/alerts\.md#(?P<anchor>[a-z0-9_-]+)$")
# A failover takes under 30 s: no alert may fire on a single bad evaluation.
MIN_FOR_SECONDS = 60


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def alert_rules() -> List[Dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> List[str]:
    return sorted({rule["alert"] for rule in alert_rules()})


def alert_cases() -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """Every alert_rule_test entry of every promtool test file."""
    for path in PROMTOOL_TESTS:
        for group in load_yaml(path).get("tests") or []:
            for case in group.get("alert_rule_test") or []:
                yield path, case


def github_anchors(markdown: str) -> Set[str]:
    """Anchors GitHub gives the headings of a Markdown document (lower case, punctuation dropped, spaces to -)."""
    anchors: Set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def duration_seconds(text: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return int(sum(int(n) * units[u] for n, u in parts))


# --- promtool ---------------------------------------------------------------------------------------------------

def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return run_cache_tool("promtool", "PROMTOOL", "prometheus", *args, timeout=600)


def test_rules_pass_promtool_check():
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, f"promtool check rules {RULES.relative_to(ROOT)}:\n{proc.stdout}{proc.stderr}"


def test_promtool_test_files_exist():
    assert PROMTOOL_TESTS, "no tests/promtool/*.test.yml"


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(test_file):
    proc = run_promtool("test", "rules", str(test_file))
    assert proc.returncode == 0, f"promtool test rules {test_file.relative_to(ROOT)}:\n{proc.stdout}{proc.stderr}"


# --- what every alert carries -------------------------------------------------------------------------------------

def test_only_the_heartbeats_fire_unconditionally():
    # A severity of its own keeps Watchdog out of every route that matches on severity; nothing else may use it.
    for rule in alert_rules():
        if (rule.get("labels") or {}).get("severity") in set(HEARTBEATS.values()):
            assert rule["alert"] in HEARTBEATS, f"{rule['alert']}: severity heartbeat is the dead man's switch's"
    assert all(name in alert_names() for name in HEARTBEATS), "the dead man's switch (Watchdog) is gone"


def test_rules_file_has_alerts():
    assert len(alert_names()) >= 20, alert_names()


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_labels_and_annotations(rule):
    name = rule["alert"]
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    if name in HEARTBEATS:
        assert labels.get("severity") == HEARTBEATS[name], f"{name}: severity must be {HEARTBEATS[name]}"
    else:
        assert labels.get("severity") in SEVERITIES, f"{name}: severity must be one of {sorted(SEVERITIES)}"
    for key in ("summary", "description", "runbook"):
        assert str(annotations.get(key) or "").strip(), f"{name}: annotation {key!r} is missing or empty"
    assert RUNBOOK.match(annotations["runbook"]), (
        f"{name}: runbook {annotations['runbook']!r} must be docs/alerts.md#<anchor>")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_waits_out_a_failover(rule):
    assert "for" in rule, f"{rule['alert']}: no `for:`, one bad evaluation would fire it"
    assert duration_seconds(rule["for"]) >= MIN_FOR_SECONDS, (
        f"{rule['alert']}: `for: {rule['for']}` is shorter than a failover may take")


def test_every_runbook_anchor_is_a_heading_of_the_doc():
    anchors = github_anchors(ALERTS_DOC.read_text(encoding="utf-8"))
    missing = sorted({f"{rule['alert']} -> {rule['annotations']['runbook']}" for rule in alert_rules()
                      if RUNBOOK.match(rule["annotations"]["runbook"])["anchor"] not in anchors})
    assert not missing, f"runbook anchors without a heading in {ALERTS_DOC.relative_to(ROOT)}: {missing}"


def test_every_alert_fires_in_a_promtool_test():
    fired = {case["alertname"] for _test_file, case in alert_cases() if case.get("exp_alerts")}
    missing = sorted(set(alert_names()) - fired)
    assert not missing, f"alerts no tests/promtool case expects to fire (exp_alerts): {missing}"


def test_every_alert_stays_silent_in_a_promtool_test():
    silent = {case["alertname"] for _test_file, case in alert_cases() if not case.get("exp_alerts")}
    missing = sorted(set(alert_names()) - silent)
    assert not missing, f"alerts no tests/promtool case expects to stay silent (exp_alerts: []): {missing}"


def test_promtool_cases_name_existing_alerts():
    # promtool passes a case for an alert that does not exist when it expects no alert: catch the typo here.
    known = set(alert_names())
    unknown = sorted({f"{path.name}: {case['alertname']}" for path, case in alert_cases()
                      if case["alertname"] not in known})
    assert not unknown, f"promtool cases for alerts the rules do not define: {unknown}"


def test_github_anchors():
    doc = "# Alerts\n## PatroniNoLeader\n```\n# not a heading\n```\n### Disk: almost full\n## PatroniNoLeader\n"
    assert github_anchors(doc) == {"alerts", "patroninoleader", "disk-almost-full", "patroninoleader-1"}


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m", 60), ("1h30m", 5400), ("3d", 259200)])
def test_duration_seconds(text, seconds):
    assert duration_seconds(text) == seconds


def test_duration_seconds_rejects_garbage():
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        duration_seconds("5 minutes")
