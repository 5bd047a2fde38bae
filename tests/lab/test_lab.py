"""The whole lab end to end (inventories/lab, 12 systemd containers): `tools/lab.sh up` (containers, site.yml,
validate.yml), a second site.yml run that must change nothing, then registrations with the official MLflow client
through the VIP while, one at a time and recovering in between, the PostgreSQL leader, an MLflow server, a
storage node and the active load balancer die (docker kill: machine death). Asserted: every acknowledged
registration exists exactly once with a readable, byte-identical artifact, and the stack validates at the end.
Failed client calls and recovery seconds are reported (tests/output/lab/chaos.json), never asserted: timings
belong to benchmarks (make bench). MLFLOW_HA_KEEP_LAB=1 keeps the lab afterwards; MLFLOW_HA_REUSE_LAB=1 tests a
lab that is already up instead of building a fresh one (developers; CI always builds fresh)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labctl import OUTPUT, Lab, Load, run_faults, run_lab, summarize, tail, wait_until


def recap(log: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", log, re.M):
        hosts[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                             "failed": int(m.group(5))}
    return hosts


@pytest.fixture(scope="module")
def lab():
    if not os.environ.get("MLFLOW_HA_CLIENT_PYTHON"):
        pytest.fail("MLFLOW_HA_CLIENT_PYTHON is unset: run through `make e2e` (tools/mlflow-venv.sh makes it)")
    lab = Lab.load()
    if not (os.environ.get("MLFLOW_HA_REUSE_LAB") and lab.http_ok(f"{lab.mlflow_url}/lb-health")):
        run_lab("destroy")
        up = run_lab("up")
        assert up.returncode == 0, f"tools/lab.sh up failed (logs in {OUTPUT})\n{tail(up.stdout + up.stderr)}"
    yield lab
    if not os.environ.get("MLFLOW_HA_KEEP_LAB"):
        run_lab("destroy")


def test_second_site_run_changes_nothing(lab):
    rerun = run_lab("converge", "site-rerun")
    assert rerun.returncode == 0, tail(rerun.stdout + rerun.stderr)
    hosts = recap(rerun.stdout)
    assert set(hosts) >= set(lab.hosts), f"recap lacks hosts: {sorted(set(lab.hosts) - set(hosts))}"
    changed = {h: r for h, r in hosts.items() if r["changed"] or r["failed"] or r["unreachable"]}
    assert not changed, f"a second site.yml run changed or failed on {changed}; see {OUTPUT / 'site-rerun.log'}"


def test_registrations_survive_the_loss_of_any_one_machine(lab):
    load = Load(lab, "chaos")
    try:
        wait_until(lambda: load.acks_since(0), 180, "a first registration through the VIP before any fault")
        time.sleep(10)
        faults = run_faults(lab, load)
    finally:
        load.stop()
    verified = load.verify()
    report = {"workers": load.workers, "faults": faults, "totals": summarize(load.events_list(), verified)}
    (OUTPUT / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    assert verified["acknowledged"] > 0
    assert verified["lost"] == 0, f"acknowledged registrations lost: {verified['lost_keys']}"
    assert verified["duplicated"] == 0, f"registrations duplicated: {verified['duplicates']}"
    assert verified["unreadable"] == 0, f"artifacts unreadable or changed: {verified['unreadable_detail']}"
    final = run_lab("validate")
    assert final.returncode == 0, f"validate.yml after the faults failed:\n{tail(final.stdout + final.stderr)}"
