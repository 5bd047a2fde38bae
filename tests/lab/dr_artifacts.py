"""The DR drill's artifact step (issue 15, "artifacts and rows together"), for tests/lab/test_lab.py: what to run and
what to expect around the point-in-time restore, without MLflow (the drill's client side, dr_client.py, needs the
official client's Python; this runs in the test's).

The drill, extended:
  1. dr_client.py register MODEL 5 STATE (each entry now keeps its run's artifact_uri);
  2. the artifact backup now, on the backup host (BACKUP_HOST): `systemctl start BACKUP_UNIT` (a oneshot: it returns
     when the run is over; its exit status says whether sync and check passed), or playbooks/dr/backup_artifacts.yml;
  3. one of those versions loses its artifact: lab.exec(BACKUP_HOST, *delete_object_argv(object_key(entry)));
  4. T, 3 more versions, the model deleted, the restore to T, site.yml --tags postgres,pgbackrest, MLflow started
     (as before);
  5. run_lab("play", "dr-artifact-report", *report_args(target_text, OUTPUT / "dr.artifact-report.json")), then
     report_problems(json.loads(that file), model, state, DR_BEFORE, deleted_version) must be [];
  6. run_lab("play", "dr-artifact-restore", *restore_args(target_text, OUTPUT / "dr.artifact-restore.json")), then
     restore_problems(json.loads(that file), model, state, deleted_version) must be [];
  7. dr_client.py check MODEL STATE: versions 1-5, every artifact byte for byte through models:/ (as before: this is
     what proves the restored object identical).

The lab's settings are read where they are written (the roles' vars and defaults, the lab inventory), never repeated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab"
PLAYBOOKS = ROOT / "playbooks" / "dr"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _role_vars(role: str) -> dict:
    return _yaml(ROOT / "roles" / role / "vars" / "main.yml")


def _lab_vars() -> dict:
    return _yaml(INVENTORY / "group_vars" / "all.yml")


def _backup_hosts() -> list[str]:
    groups = _yaml(INVENTORY / "hosts.yml")["all"]["children"]["lab"]["children"]
    return list(groups["artifact_backup"]["hosts"])


BACKUP_HOST = _backup_hosts()[0]
BACKUP_UNIT = _role_vars("artifact_backup")["_artifact_backup_service"] + ".service"


def artifacts_prefix() -> str:
    """The key prefix MLflow's artifacts live under in the bucket (mlflow_s3_prefix, the lab's or the role's)."""
    lab = _lab_vars()
    if "mlflow_s3_prefix" in lab:
        return str(lab["mlflow_s3_prefix"]).strip("/")
    return str(_yaml(ROOT / "roles" / "mlflow" / "defaults" / "main.yml")["mlflow_s3_prefix"]).strip("/")


def source_bucket() -> str:
    lab = _lab_vars()
    return str(lab.get("artifact_backup_source_bucket")
               or _yaml(ROOT / "roles" / "artifact_backup" / "defaults" / "main.yml")["artifact_backup_source_bucket"])


def object_key(entry: dict[str, Any], artifact: str = "model/weights.bin") -> str:
    """The bucket key of a drill version's artifact, from its state entry's artifact_uri
    (mlflow-artifacts:/<experiment>/<run>/artifacts, dr_client.py register)."""
    uri = entry["artifact_uri"]
    scheme, _sep, path = uri.partition(":")
    assert scheme == "mlflow-artifacts", f"the drill's runs keep their artifacts behind the server: {uri}"
    parts = [artifacts_prefix(), path.strip("/"), artifact]
    return "/".join(part for part in parts if part)


def delete_object_argv(key: str) -> list[str]:
    """`rclone deletefile` of one key of the artifact bucket, with the artifact backup's configuration and CA, to run
    on BACKUP_HOST (lab.exec): the operator's mistake the drill makes."""
    conf = _role_vars("artifact_backup")["_artifact_backup_rclone_conf"]
    ca = _lab_vars().get("artifact_backup_ca_path") or ""
    return ["rclone", "--config", conf, *(["--ca-cert", ca] if ca else []), "deletefile",
            f"source:{source_bucket()}/{key}"]


def report_args(target_text: str, out: Path) -> list[str]:
    """tools/lab.sh play arguments after the step name: the report, its result as JSON in ``out``."""
    return [str(PLAYBOOKS / "artifact_report.yml"), "-e",
            json.dumps({"restore_target_time": target_text, "artifact_report_file": str(out)})]


def restore_args(target_text: str, out: Path) -> list[str]:
    """tools/lab.sh play arguments after the step name: the targeted restore, its result as JSON in ``out``."""
    return [str(PLAYBOOKS / "restore_missing_artifacts.yml"), "-e",
            json.dumps({"restore_target_time": target_text, "restore_artifacts_file": str(out)})]


def report_problems(report: dict, model: str, state: list[dict], before: int, deleted: int) -> list[str]:
    """What is wrong with the report after the drill's restore: the deleted version (and only it, of the drill's
    model) missing, with one object in the backup; every later version's run an orphan folder; no earlier run one.
    Other orphans are expected (the registration probe registers all along, and its runs after T are gone)."""
    problems = []
    missing = [v for v in report.get("missing_versions", []) if v["name"] == model]
    expected = [(e["version"], e["run_id"]) for e in state if e["version"] == deleted]
    if [(v["version"], v["run_id"]) for v in missing] != expected:
        problems.append(f"missing versions of {model}: {missing}, expected only version {deleted}")
    elif missing[0].get("backup_objects") != 1 or missing[0].get("backup_origins") != ["mirror"]:
        problems.append(f"the backup should hold the deleted object in its mirror: {missing[0]}")
    orphan_runs = {g["id"] for g in report.get("orphans", []) if g["kind"] == "run"}
    later = {e["run_id"] for e in state if e["version"] > before}
    earlier = {e["run_id"] for e in state if e["version"] <= before}
    if not later <= orphan_runs:
        problems.append(f"later runs that are not orphans: {sorted(later - orphan_runs)}")
    if earlier & orphan_runs:
        problems.append(f"runs of the restored versions reported as orphans: {sorted(earlier & orphan_runs)}")
    keys = {e["run_id"]: object_key(e) for e in state if e["version"] > before}
    for group in report.get("orphans", []):
        if group["id"] in keys and not (group["whole_prefix"] and keys[group["id"]] in group["keys"]):
            problems.append(f"a later run's folder should be all orphan, its weights included: {group}")
    return problems


def restore_problems(result: dict, model: str, state: list[dict], deleted: int) -> list[str]:
    """What is wrong with the targeted restore: the deleted version's object must be the one restored (from the
    mirror), and no version of the drill's model missing afterwards."""
    problems = []
    entry = next(e for e in state if e["version"] == deleted)
    restored = [f for f in result.get("restored", []) if f["owner"]["kind"] == "version"
                and f["owner"]["id"].startswith(model + "/")]
    if [f["key"] for f in restored] != [object_key(entry)] or restored[0]["origin"] != "mirror":
        problems.append(f"restored for {model}: {restored}, expected {object_key(entry)} from the mirror")
    after = [v for v in result.get("missing_versions_after", []) if v["name"] == model]
    if after:
        problems.append(f"versions of {model} still missing after the restore: {after}")
    if result.get("not_restored"):
        problems.append(f"planned objects still absent: {result['not_restored']}")
    return problems
