"""The backup before a schema migration, as Ansible runs it: the mlflow role's tasks/backup_before_migration.yml with
the pgbackrest role's backup_now entry point. ansible-playbook on the controller (connection local, three "members"
and one MLflow server that are all this machine): the runner and the schema program are fakes that log their
arguments, so what is checked is the wiring: `choose` on the members, `backup --here` on the chosen one with the
annotations, the record, the migration after it, and a stop with a sentence before the migration when the backup
fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "tests" / "wiring"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not in this venv")

# pgbackrest_runner.py as the role calls it: `--settings <file> choose|backup ...`; the settings file is the scenario.
FAKE_RUNNER = """
import json, sys
args = sys.argv[1:]
scenario = json.load(open(args[args.index("--settings") + 1]))
with open(scenario["log"], "a") as log:
    log.write(json.dumps(args) + "\\n")
step = scenario["choose" if "choose" in args else "backup"]
print("pgbackrest_runner: a line before the result")
print(json.dumps(step["result"]))
sys.exit(step["rc"])
"""

# The schema program as `python -c <text> <mode>` runs it, the URIs on stdin: logs its mode, says it migrated.
FAKE_SCHEMA = """
import json, sys
sys.stdin.read()
open(%r, "a").write(sys.argv[1] + "\\n")
print(json.dumps({"mlflow_version": "3.17.2", "schemas": [], "migrated": ["tracking"], "backup_first": False}))
"""

REPORT = {"mlflow_version": "3.17.2", "backup_first": True, "touches_data": True, "pending": ["tracking"],
          "schemas": [{"schema": "tracking", "current": "75868b020152", "head": "dc11669786a5", "pending": True,
                       "empty": False},
                      {"schema": "auth", "current": "f1a2b3c4d5e6", "head": "f1a2b3c4d5e6", "pending": False,
                       "empty": False}]}
CHOSEN = {"rc": 0, "result": {"member": "pg1", "chosen": "pg3", "standby": True,
                              "reason": "pg3 is a streaming replica"}}
LABELS = {"local": "20261206-180000F", "offsite": "20261206-180100F"}
DONE = {"rc": 0, "result": {"type": "full", "member": "pg3", "chosen": "pg3", "ran": True, "ok": True,
                            "run_id": "abc123", "repos": [{"repo": "local", "index": 1, "ok": True,
                                                           "label": LABELS["local"]},
                                                          {"repo": "offsite", "index": 2, "ok": True,
                                                           "label": LABELS["offsite"]}]}}


def play(tmp_path: Path, choose: dict, backup: dict) -> tuple[subprocess.CompletedProcess, list, list, Path]:
    runner = tmp_path / "runner.py"
    runner.write_text(FAKE_RUNNER)
    runner_log, schema_log, record = tmp_path / "runner.log", tmp_path / "schema.log", tmp_path / "record.log"
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"log": str(runner_log), "choose": choose, "backup": backup}))
    extra = {
        "schema_report": REPORT,
        "_pgbackrest_program": str(runner),
        "_pgbackrest_runner_settings": str(scenario),
        "_mlflow_venv": str(Path(sys.executable).parent.parent),
        "_mlflow_schema_program": FAKE_SCHEMA % str(schema_log),
        "mlflow_pre_migration_backup_log": str(record),
    }
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(PLAYBOOKS / "inventory_backup.yml"),
           str(PLAYBOOKS / "backup_before_migration.yml"), "-e", json.dumps(extra)]
    # The role runs the runner with /usr/bin/python3, as on the members.
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    calls = [json.loads(line) for line in runner_log.read_text().splitlines()] if runner_log.exists() else []
    modes = schema_log.read_text().split() if schema_log.exists() else []
    return proc, calls, modes, record


def test_one_backup_on_the_chosen_member_then_the_record_then_the_migration(tmp_path):
    proc, calls, modes, record = play(tmp_path, CHOSEN, DONE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [call[-1] for call in calls[:3]] == ["choose"] * 3  # every member asked
    backup = calls[3]
    assert backup[2:6] == ["backup", "--type", "full", "--here"] and len(calls) == 4
    assert {"--annotation=reason=pre-migration", "--annotation=mlflow_version=3.17.2",
            "--annotation=schemas=tracking:75868b020152..dc11669786a5"} <= set(backup)
    line = json.loads(record.read_text().splitlines()[-1])
    assert line["labels"] == LABELS and line["member"] == "pg3" and line["run_id"] == "abc123"
    assert line["schemas"] == "tracking:75868b020152..dc11669786a5" and line["mlflow_version"] == "3.17.2"
    assert modes == ["migrate"]
    assert "full backup on pg3, local 20261206-180000F, offsite 20261206-180100F" in " ".join(proc.stdout.split())


def test_no_member_that_can_back_up_stops_the_play_before_the_migration(tmp_path):
    nobody = {"rc": 2, "result": {"member": "pg1", "chosen": None, "reason": "no running leader"}}
    proc, calls, modes, record = play(tmp_path, nobody, DONE)
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert ("pgbackrest: no member of 'postgres' can back up now (pg1: no running leader; pg2: no running leader; "
            "pg3: no running leader)") in out
    assert [call[-1] for call in calls] == ["choose"] * 3 and modes == [] and not record.exists()


def test_a_repository_without_its_backup_stops_the_play_before_the_migration(tmp_path):
    failed = json.loads(json.dumps(DONE))
    failed["rc"] = 1
    failed["result"]["ok"] = False
    failed["result"]["repos"][1] = {"repo": "offsite", "index": 2, "ok": False,
                                    "error": "ERROR: [039]: HTTP request failed"}
    proc, _calls, modes, record = play(tmp_path, CHOSEN, failed)
    assert proc.returncode != 0
    assert ("pgbackrest: the full backup on pg3 failed (exit 1): offsite: ERROR: [039]: HTTP request failed"
            in " ".join(proc.stdout.split()))
    assert modes == [] and not record.exists()


def test_a_failed_check_is_named(tmp_path):
    refused = {"rc": 1, "result": {"type": "full", "member": "pg3", "ran": True, "ok": False, "repos": [],
                                   "error": "pgbackrest check failed: ERROR: [082]: WAL segment was not archived"}}
    proc, _calls, modes, _record = play(tmp_path, CHOSEN, refused)
    assert proc.returncode != 0
    assert "(exit 1): pgbackrest check failed: ERROR: [082]" in " ".join(proc.stdout.split())
    assert modes == []
