"""The alertmanager role's configuration (roles/alertmanager/vars/main.yml _alertmanager_config), rendered by Ansible
with the role's defaults and checked by amtool: the configuration is valid, and the dead man's switch (the
always-firing Watchdog) reaches the external heartbeat receiver and no other, whatever routes a site adds.

amtool comes from tools/promtool.sh (Debian's prometheus-alertmanager package, unpacked into .cache/bin); set AMTOOL
to use another one. Without it these tests fail: they are never skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from role_vars import render
from shared_checks import run_cache_tool

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "roles" / "alertmanager" / "defaults" / "main.yml"
URL = "https://hc-ping.example.net/0f6e6d6c-heartbeat"
# A site's routing as inventories/example sets it up: a pager for pages, a catch-all that continues.
SITE = {
    "alertmanager_receivers": [
        {"name": "oncall", "webhook_configs": [{"url": "https://alerts.example.internal/hooks/mlflow-ha"}]},
        {"name": "pager", "webhook_configs": [{"url": "https://pager.example.internal/hook"}]},
        {"name": "audit", "webhook_configs": [{"url": "https://audit.example.internal/hook"}]},
    ],
    "alertmanager_default_receiver": "oncall",
    "alertmanager_routes": [
        {"matchers": ['severity = "page"'], "receiver": "pager"},
        {"matchers": ['alertname =~ ".+"'], "receiver": "audit", "continue": True},
    ],
}


def defaults() -> dict[str, Any]:
    """The role's defaults that the configuration reads (the web login and address read other roles' variables)."""
    values = yaml.safe_load(DEFAULTS.read_text())
    return {key: value for key, value in values.items()
            if not key.startswith(("alertmanager_web_", "alertmanager_address"))}


def config(**variables: Any) -> dict[str, Any]:
    """The configuration as templates/alertmanager.yml.j2 writes it (the same filter), read back."""
    text = render("alertmanager", "_alertmanager_config | to_nice_yaml(indent=2, sort_keys=false)",
                  **{**defaults(), **variables})
    return yaml.safe_load(str(text))


def amtool(*args: str) -> subprocess.CompletedProcess:
    return run_cache_tool("amtool", "AMTOOL", "prometheus-alertmanager", *args, timeout=60)


def write(tmp_path: Path, rendered: dict[str, Any]) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return path


def receivers_for(path: Path, *labels: str) -> list[str]:
    proc = amtool("config", "routes", "test", f"--config.file={path}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()[0].split(",")


WATCHDOG = ("alertname=Watchdog", "severity=heartbeat", "tier=monitoring")


@pytest.mark.parametrize("site", [{}, SITE], ids=["role defaults", "a site's routes"])
@pytest.mark.parametrize("url", ["", URL], ids=["no URL", "URL"])
def test_the_configuration_passes_amtool(tmp_path: Path, site: dict, url: str):
    path = write(tmp_path, config(alertmanager_deadmans_switch_url=url, **site))
    proc = amtool("check-config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("site", [{}, SITE], ids=["role defaults", "a site's routes"])
def test_watchdog_reaches_only_the_heartbeat_service(tmp_path: Path, site: dict):
    rendered = config(alertmanager_deadmans_switch_url=URL, **site)
    path = write(tmp_path, rendered)
    assert receivers_for(path, *WATCHDOG) == ["deadmans-switch"]
    receiver = next(r for r in rendered["receivers"] if r["name"] == "deadmans-switch")
    assert receiver["webhook_configs"] == [{"url": URL, "send_resolved": False}]
    route = rendered["route"]["routes"][0]
    assert (route["receiver"], route["repeat_interval"], route["group_wait"]) == ("deadmans-switch", "1m", "0s")


@pytest.mark.parametrize("site", [{}, SITE], ids=["role defaults", "a site's routes"])
def test_without_a_url_watchdog_notifies_nobody(tmp_path: Path, site: dict):
    """The default route would send an always-firing alert to the default receiver every repeat interval."""
    rendered = config(**site)
    path = write(tmp_path, rendered)
    assert receivers_for(path, *WATCHDOG) == ["deadmans-switch-off"]
    assert next(r for r in rendered["receivers"] if r["name"] == "deadmans-switch-off") == {
        "name": "deadmans-switch-off"}, "a receiver with no integration notifies nobody"


def test_other_alerts_keep_the_sites_routes(tmp_path: Path):
    path = write(tmp_path, config(alertmanager_deadmans_switch_url=URL, **SITE))
    assert receivers_for(path, "alertname=PatroniNoLeader", "severity=page") == ["pager"]
    assert receivers_for(path, "alertname=NodeDown", "severity=ticket", "instance=pg1") == ["audit"]
    (tmp_path / "plain").mkdir()
    plain = write(tmp_path / "plain", config(alertmanager_deadmans_switch_url=URL))
    assert receivers_for(plain, "alertname=NodeDown", "severity=ticket") == ["default"]
    # A heartbeat severity alone (not Watchdog) is not the dead man's switch.
    assert "deadmans-switch" not in receivers_for(path, "alertname=Other", "severity=heartbeat")


def test_credentials_for_the_heartbeat_service(tmp_path: Path):
    http_config = {"authorization": {"type": "GenieKey", "credentials": "secret-key"}}
    rendered = config(alertmanager_deadmans_switch_url=URL, alertmanager_deadmans_switch_http_config=http_config,
                      alertmanager_deadmans_switch_repeat_interval="2m")
    receiver = next(r for r in rendered["receivers"] if r["name"] == "deadmans-switch")
    assert receiver["webhook_configs"] == [{"url": URL, "send_resolved": False, "http_config": http_config}]
    assert rendered["route"]["routes"][0]["repeat_interval"] == "2m"
    proc = amtool("check-config", str(write(tmp_path, rendered)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
