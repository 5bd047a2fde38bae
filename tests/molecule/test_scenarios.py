"""Run each molecule scenario end to end (molecule test): converge, idempotence and verify against the
running services in systemd containers. A scenario's full log goes to tests/output/molecule/<id>.log and
its duration to tests/output/molecule/durations.json."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from phases import record  # noqa: E402

OUTPUT = ROOT / "tests" / "output" / "molecule"
TAIL_LINES = 80


def project_dir(scenario: Path) -> Path:
    """molecule runs from the directory that holds molecule/<scenario>: the role, or the repository root."""
    return scenario.parent.parent


def missing_requirements(scenario: Path) -> str | None:
    """A scenario may need inputs the harness cannot make (a user-supplied binary): requires.yml names the
    environment variables and the reason. Returns the reason when any is unset."""
    requires = scenario / "requires.yml"
    if not requires.exists():
        return None
    spec = yaml.safe_load(requires.read_text()) or {}
    unset = [name for name in spec.get("env", []) if not os.environ.get(name)]
    if not unset:
        return None
    return f"NOT RUN: {', '.join(unset)} unset. {' '.join(str(spec.get('reason', '')).split())}"


def test_scenario(scenario: Path):
    reason = missing_requirements(scenario)
    if reason:
        # Reported as skipped with the reason in pytest's summary (-ra): never a silent pass.
        pytest.skip(reason)
    name = str(scenario.relative_to(ROOT))
    scenario_id = name.replace("/", "__")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = OUTPUT / f"{scenario_id}.log"
    env = dict(os.environ, MLFLOW_HA_ROOT=str(ROOT), ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", NO_COLOR="1")
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(["molecule", "test", "--scenario-name", scenario.name], cwd=project_dir(scenario),
                              env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = round(time.monotonic() - start, 1)

    record(f"molecule {name}", seconds, proc.returncode)
    # Two scenarios may finish at the same time (make molecule runs two at a time): one writer at a time.
    durations_file = OUTPUT / "durations.json"
    with (OUTPUT / "durations.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        durations = json.loads(durations_file.read_text()) if durations_file.exists() else {}
        durations[name] = {"seconds": seconds, "passed": proc.returncode == 0}
        durations_file.write_text(json.dumps(durations, indent=2, sort_keys=True) + "\n")

    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        raise AssertionError(f"molecule test failed for {name} (exit {proc.returncode}, "
                             f"{seconds} s); full log: {log}\n--- last {TAIL_LINES} lines ---\n{tail}")
