"""Molecule scenarios as pytest tests: one test per scenario, so the run ends with pytest's own count.

`make molecule` runs them two at a time (pytest-xdist): each scenario is put in one of two lanes beforehand, longest
first into the lane with less work (xdist's own load scheduling hands out consecutive pairs, which put the two
longest scenarios one after the other in one lane). Measured in docs/harness.md. They share
one Docker network (molecule/shared/platform.yml), created here once before the first scenario and removed
after the last, and each uses its own fixed addresses and container names."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DURATIONS = ROOT / "tests" / "output" / "molecule" / "durations.json"
# Seconds measured here (docs/results/phases-*.tsv); a scenario missing here counts as short. The last run's
# tests/output/molecule/durations.json, when present, takes precedence.
EXPECTED_SECONDS = {
    "molecule/postgres_ha": 550,
    "molecule/storage_ha": 300,
    "roles/journal_remote/molecule/default": 160,
    "roles/keepalived/molecule/default": 125,
    "roles/prometheus/molecule/default": 100,
    "roles/etcd/molecule/default": 90,
    "roles/node_exporter/molecule/default": 60,
}


# Scenarios that converge the same stacks as the lab: `make test` (tools/test.sh sets MLFLOW_HA_TIER_CHECKS_IN_LAB)
# runs their verify playbooks against the lab instead of converging second copies; `make molecule` on its own, and
# `molecule test` in the scenario, still run them whole. What stands in for each step: docs/harness.md.
IN_THE_LAB = {
    "molecule/postgres_ha": "tests/lab/test_lab.py::test_the_postgres_ha_scenario_checks_pass_on_the_lab",
    "molecule/storage_ha": "tests/lab/test_lab.py::test_the_storage_ha_scenario_checks_pass_on_the_lab",
    "roles/keepalived/molecule/default": "tests/lab/test_lab.py::test_the_keepalived_scenario_checks_pass_on_the_lab",
    "roles/prometheus/molecule/default": "tests/lab/test_lab.py::test_the_prometheus_scenario_checks_pass_on_the_lab",
    "roles/node_exporter/molecule/default":
        "tests/lab/test_lab.py::test_the_node_exporter_scenario_checks_pass_on_the_lab",
    "roles/journal_remote/molecule/default":
        "tests/lab/test_lab.py::test_the_journal_remote_scenario_checks_pass_on_the_lab",
    "roles/etcd/molecule/default": "tests/lab/test_lab.py::test_the_etcd_scenario_checks_pass_on_the_lab and "
                                   "::test_etcd_restored_from_a_snapshot_keeps_the_registry_serving",
}


def pytest_addoption(parser):
    parser.addoption("--scenario", action="append", default=[],
                     help="run only these scenarios (path of the scenario directory, relative to the repository)")


def discover() -> list[Path]:
    """Every scenario directory: roles/<role>/molecule/<name> and the collection-level molecule/<name>."""
    found = sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")) + sorted(ROOT.glob("molecule/*/molecule.yml"))
    return [p.parent for p in found]


def expected_seconds() -> dict[str, float]:
    expected = dict(EXPECTED_SECONDS)
    try:
        expected.update({name: d["seconds"] for name, d in json.loads(DURATIONS.read_text()).items()})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return expected


def pytest_generate_tests(metafunc):
    if "scenario" in metafunc.fixturenames:
        wanted = {str((ROOT / s).resolve()) for s in metafunc.config.getoption("scenario")}
        scenarios = [s for s in discover() if not wanted or str(s) in wanted]
        if wanted and len(scenarios) != len(wanted):
            raise ValueError(f"unknown scenario in {sorted(wanted)}; known: "
                             f"{[str(s.relative_to(ROOT)) for s in discover()]}")
        # Longest first, each into the lane with the least expected work so far. Every xdist worker collects the
        # same lanes (the file is read before any scenario of this run finishes).
        expected = expected_seconds()
        in_lab = bool(os.environ.get("MLFLOW_HA_TIER_CHECKS_IN_LAB")) and not wanted
        scenarios.sort(key=lambda s: (-expected.get(str(s.relative_to(ROOT)), 0), str(s)))
        lanes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
        work = [0.0] * lanes
        params = []
        for s in scenarios:
            name = str(s.relative_to(ROOT))
            if in_lab and name in IN_THE_LAB:
                # Reported in pytest's summary (-ra) with where its checks run: never a silent pass.
                reason = (f"run in the lab by `make test`: converge = site.yml, idempotence = its rerun, check = "
                          f"site.yml --check on the empty hosts, verify = {IN_THE_LAB[name]}")
                params.append(pytest.param(s, id=name, marks=pytest.mark.skip(reason=reason)))
                continue
            lane = min(range(lanes), key=work.__getitem__)
            work[lane] += expected.get(str(s.relative_to(ROOT)), 60)
            params.append(pytest.param(s, id=str(s.relative_to(ROOT)), marks=pytest.mark.xdist_group(f"lane{lane}")))
        metafunc.parametrize("scenario", params)


def _network() -> dict:
    return yaml.safe_load((ROOT / "molecule" / "shared" / "platform.yml").read_text())["mlflow_ha_lab_network"]


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


def pytest_configure(config):
    # Once, in the process that hands out the scenarios (not in each xdist worker), before any of them starts.
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    net = _network()
    os.environ["MLFLOW_HA_SHARED_TEST_NETWORK"] = net["name"]
    if _docker("network", "inspect", net["name"]).returncode != 0:
        made = _docker("network", "create", "--subnet", net["subnet"], "--gateway", net["gateway"],
                       "--label", "owner=molecule", net["name"])
        if made.returncode != 0:
            raise RuntimeError(f"cannot create the scenarios' network {net['name']}: {made.stderr.strip()}")


def pytest_unconfigure(config):
    if hasattr(config, "workerinput") or not os.environ.get("MLFLOW_HA_SHARED_TEST_NETWORK"):
        return
    name = os.environ.pop("MLFLOW_HA_SHARED_TEST_NETWORK")
    inspect = _docker("network", "inspect", "--format", "{{len .Containers}}", name)
    if inspect.returncode == 0 and inspect.stdout.strip() == "0":
        _docker("network", "rm", name)
