"""Artifacts and rows together after a point-in-time restore (module_utils/artifact_audit.py, the modules
mlflow_artifact_report and mlflow_artifact_restore): the drill's case (a version whose object was deleted, later
versions whose rows the restore took away), the choice among the backup's copies by the target time, and that rclone
is only ever asked to list and to copy without replacing. rclone is a fake that keeps buckets in memory and answers
the commands the code sends, as rclone would."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from role_vars import render
from shared_checks import assert_documented_as_specified

from ansible_collections.mlops.mlflow_ha.plugins.doc_fragments import artifacts as artifacts_fragment
from ansible_collections.mlops.mlflow_ha.plugins.module_utils import artifact_audit as aa
from ansible_collections.mlops.mlflow_ha.plugins.modules import mlflow_artifact_report, mlflow_artifact_restore

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

import dr_artifacts  # noqa: E402

DEST = "s3://mlflow/artifacts"
RCLONE = ["/usr/bin/rclone", "--config", "/etc/mlflow-ha/rclone-artifacts.conf"]


def ts(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()


def rfc3339(seconds: float) -> str:
    whole = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return whole + ".123456789Z"


class FakeRclone:
    """Buckets by remote ("source:mlflow"), objects by key: {size, server (upload time), kept (rclone's metadata
    modification time, or None), data}. Answers lsjson and copy as rclone does; anything else fails the test."""

    def __init__(self, now: float):
        self.now = now
        self.buckets: dict[str, dict[str, dict]] = {"source:mlflow": {}, "target:mlflow-backup": {}}
        self.calls: list[list[str]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        # Folders rclone says do not exist (exit 3), as backends with real directories do.
        self.missing: set[str] = set()
        self.lose_copies = False

    def put(self, remote: str, key: str, data: bytes, server: float, kept: float | None = None) -> None:
        self.buckets[remote][key] = {"size": len(data), "server": server, "kept": kept, "data": data}

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        remote, _sep, rest = path.partition(":")
        bucket, _sep, prefix = rest.partition("/")
        return f"{remote}:{bucket}", prefix.strip("/")

    def under(self, path: str) -> dict[str, dict]:
        bucket, prefix = self.split(path)
        objects = self.buckets[bucket]
        if not prefix:
            return dict(objects)
        return {key[len(prefix) + 1:]: obj for key, obj in objects.items() if key.startswith(prefix + "/")}

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        assert argv[:len(RCLONE)] == RCLONE
        args = argv[len(RCLONE):]
        command = args[0]
        if command in self.fail:
            status, err = self.fail[command]
            return status, "", err
        if args[-1] in self.missing:
            return 3, "", "ERROR : : error listing: directory not found\n"
        files = None
        if "--files-from-raw" in args:
            files = Path(args[args.index("--files-from-raw") + 1]).read_text().splitlines()
        if command == "lsjson":
            assert args[1:4] == ["-R", "--files-only", "--no-mimetype"]
            excluded = [args[i + 1] for i, arg in enumerate(args) if arg == "--exclude"]
            listing = []
            for path, obj in sorted(self.under(args[-1]).items()):
                if files is not None and path not in files:
                    continue
                if any(re.match("^" + re.escape(pattern.strip("/").rstrip("*").rstrip("/")) + "/", path)
                       for pattern in excluded):
                    continue
                server = "--use-server-modtime" in args
                when = obj["server"] if server or obj["kept"] is None else obj["kept"]
                listing.append({"Path": path, "Name": path.rsplit("/", 1)[-1], "Size": obj["size"],
                                "ModTime": rfc3339(when), "IsDir": False})
            return 0, json.dumps(listing), ""
        if command == "copy":
            assert "--ignore-existing" in args and "--no-traverse" in args and files is not None
            origin, dest = args[-2], args[-1]
            source_objects = self.under(origin)
            dest_bucket, dest_prefix = self.split(dest)
            copied = 0
            for path in files:
                key = f"{dest_prefix}/{path}" if dest_prefix else path
                if path not in source_objects or key in self.buckets[dest_bucket] or self.lose_copies:
                    continue
                obj = source_objects[path]
                self.buckets[dest_bucket][key] = {"size": obj["size"], "server": self.now,
                                                  "kept": obj["kept"] or obj["server"], "data": obj["data"]}
                copied += 1
            return 0, "", f"Transferred: {copied} / {copied}, 100%\n"
        raise AssertionError(f"rclone {command} is never to be run: {argv}")

    def subcommands(self) -> set[str]:
        return {argv[len(RCLONE)] for argv in self.calls}


RUN = {i: f"{i:032x}" for i in range(1, 9)}
T_BEFORE = ts("2026-12-06 17:50:00")
TARGET = "2026-12-06 17:55:00+00"
T_AFTER = ts("2026-12-06 17:58:00")
BACKUP_RUN = ts("2026-12-06 17:52:00")


def weights(i: int) -> bytes:
    return bytes([i]) * (256 * 1024)


def version_row(name: str, version: int, run: str, **kw) -> dict:
    row = {"name": name, "version": version, "source": f"mlflow-artifacts:/1/{run}/artifacts/model",
           "storage_location": f"mlflow-artifacts:/1/{run}/artifacts/model", "run_id": run, "status": "READY",
           "current_stage": "None", "workspace": "default"}
    row.update(kw)
    return row


def run_row(run: str, experiment: int = 1) -> dict:
    return {"run_id": run, "experiment_id": experiment,
            "artifact_uri": f"mlflow-artifacts:/{experiment}/{run}/artifacts"}


def drill(now: float = T_AFTER + 600) -> tuple[FakeRclone, dict]:
    """The DR drill: versions 1-5 registered before the target, backed up, version 3's object deleted from the bucket;
    versions 6-8 registered after the target; the database restored to the target (rows of 1-5 only)."""
    fake = FakeRclone(now)
    for i in range(1, 9):
        key = f"artifacts/1/{RUN[i]}/artifacts/model/weights.bin"
        uploaded = (T_BEFORE if i <= 5 else T_AFTER) + i
        fake.put("source:mlflow", key, weights(i), uploaded)
        if i <= 5:
            fake.put("target:mlflow-backup", key, weights(i), BACKUP_RUN, kept=uploaded)
    del fake.buckets["source:mlflow"][f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"]
    rows = {"versions": [version_row("dr-drill", i, RUN[i]) for i in range(1, 6)],
            "runs": [run_row(RUN[i]) for i in range(1, 6)], "logged_models": [], "traces": []}
    return fake, rows


def params(rows: dict, **kw) -> dict:
    base = {"rclone": list(RCLONE), "source": "source:mlflow", "target": "target:mlflow-backup",
            "history_prefix": "_history", "artifacts_destination": DEST, "rows": rows, "target_time": TARGET,
            "scope": "rows", "backup": True, "transfers": 8}
    base.update(kw)
    return base


# -- The drill's case --------------------------------------------------------------------------------------------

def test_the_drill_reports_the_version_whose_object_is_gone_and_the_later_runs_as_orphans():
    fake, rows = drill()
    facts = aa.report(params(rows), fake)
    assert [(v["name"], v["version"], v["run_id"]) for v in facts["missing_versions"]] == [("dr-drill", 3, RUN[3])]
    missing = facts["missing_versions"][0]
    assert missing["location"] == f"1/{RUN[3]}/artifacts/model"
    assert missing["key_prefix"] == f"artifacts/1/{RUN[3]}/artifacts/model"
    assert (missing["backup_objects"], missing["backup_origins"]) == (1, ["mirror"])
    assert [(g["kind"], g["id"], g["objects"], g["whole_prefix"]) for g in facts["orphans"]] == [
        ("run", RUN[i], 1, True) for i in (6, 7, 8)]
    assert facts["orphans"][0]["key_prefix"] == f"artifacts/1/{RUN[6]}"
    assert facts["orphan_keys"] == [f"artifacts/1/{RUN[i]}/artifacts/model/weights.bin" for i in (6, 7, 8)]
    assert facts["counts"]["orphan_bytes"] == 3 * 256 * 1024
    assert [r["key"] for r in facts["restorable"]] == [f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"]
    assert facts["restorable"][0]["owner"] == {"kind": "version", "id": "dr-drill/3", "experiment_id": ""}
    assert facts["unreferenced_before_target"] == [] and facts["unchecked_versions"] == []
    assert facts["target_time"] == "2026-12-06T17:55:00Z"
    assert any("dr-drill version 3: nothing under" in line for line in facts["summary"])
    assert facts["summary"][-1] == "Nothing was changed or deleted."
    assert fake.subcommands() == {"lsjson"}


def test_the_restore_gives_back_the_missing_object_byte_for_byte_and_nothing_else():
    fake, rows = drill()
    before = {key: dict(obj) for key, obj in fake.buckets["source:mlflow"].items()}
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert failure is None, failure
    key = f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"
    assert [r["key"] for r in facts["restored"]] == [key]
    assert fake.buckets["source:mlflow"][key]["data"] == weights(3)
    assert {k: v for k, v in fake.buckets["source:mlflow"].items() if k != key} == before
    assert facts["changed"] is True and facts["not_restored"] == [] and facts["missing_versions_after"] == []
    assert [c["origin"] for c in facts["copies"]] == ["mirror"]
    # The orphans are still there: reported, never deleted.
    assert len(facts["orphans"]) == 3 and all(k in fake.buckets["source:mlflow"] for k in facts["orphan_keys"])
    assert fake.subcommands() == {"lsjson", "copy"}
    copy = next(argv for argv in fake.calls if argv[len(RCLONE)] == "copy")
    assert copy[-2:] == ["target:mlflow-backup/artifacts", "source:mlflow/artifacts"]


def test_a_second_restore_finds_nothing_to_do():
    fake, rows = drill()
    aa.restore(params(rows), fake, check_mode=False)
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert failure is None and facts["changed"] is False and facts["restorable"] == []
    assert "Nothing to copy." in facts["summary"]


def test_check_mode_plans_and_copies_nothing():
    fake, rows = drill()
    facts, failure = aa.restore(params(rows), fake, check_mode=True)
    assert failure is None and facts["changed"] is False
    assert [r["path"] for r in facts["restorable"]] == [f"1/{RUN[3]}/artifacts/model/weights.bin"]
    assert facts["missing_versions_after"] == facts["missing_versions"]
    assert fake.subcommands() == {"lsjson"}


def test_an_object_that_appears_at_the_source_meanwhile_is_not_replaced():
    """--ignore-existing: the copy skips what the bucket has, whatever its content (the fake honours it)."""
    fake, rows = drill()
    key = f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"
    original = fake.__call__

    def racing(argv):
        if argv[len(RCLONE)] == "copy":
            fake.put("source:mlflow", key, b"written by MLflow meanwhile", T_AFTER + 900)
        return original(argv)

    facts, failure = aa.restore(params(rows), racing, check_mode=False)
    assert failure is None
    assert fake.buckets["source:mlflow"][key]["data"] == b"written by MLflow meanwhile"
    assert [r["key"] for r in facts["restored"]] == [key]


def test_a_copy_that_leaves_an_object_absent_fails_with_it_named():
    fake, rows = drill()
    fake.lose_copies = True
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert "1 planned object(s) are not in the bucket after the copy" in failure
    assert RUN[3] in failure and facts["changed"] is False
    assert [f["key"] for f in facts["not_restored"]] == [f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"]


def test_a_failed_copy_fails_with_rclones_words():
    fake, rows = drill()
    fake.fail["copy"] = (1, "ERROR : Attempt 3/3 failed with 1 errors")
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert "rclone copy from target:mlflow-backup/artifacts failed (exit 1): ERROR : Attempt 3/3" in failure
    assert facts["copies"][0]["exit"] == 1


def test_a_failed_listing_is_an_error_that_names_the_remote():
    fake, rows = drill()
    fake.fail["lsjson"] = (3, "Failed to lsjson: directory not found\n")
    with pytest.raises(aa.RcloneError, match=r"rclone lsjson source:mlflow/artifacts failed \(exit 3\): Failed"):
        aa.report(params(rows), fake)


def test_a_backup_without_a_history_folder_yet_is_read_but_a_missing_bucket_is_an_error():
    fake, rows = drill()
    fake.missing.add("target:mlflow-backup/_history")
    facts = aa.report(params(rows), fake)
    assert [r["origin"] for r in facts["restorable"]] == ["mirror"]
    fake.missing.add("target:mlflow-backup/artifacts")
    with pytest.raises(aa.RcloneError, match=r"rclone lsjson target:mlflow-backup/artifacts failed \(exit 3\)"):
        aa.report(params(rows), fake)
    fake.missing.add("source:mlflow/artifacts")
    with pytest.raises(aa.RcloneError, match=r"rclone lsjson source:mlflow/artifacts failed \(exit 3\)"):
        aa.report(params(rows), fake)


# -- The backup's copies and the target time ------------------------------------------------------------------------

def history_case():
    """Run 1's file was replaced at the source after the target and then deleted; each change was moved to a history
    folder by the next backup run. The row is back after the restore, the bucket has nothing."""
    fake = FakeRclone(T_AFTER + 7200)
    key = f"artifacts/1/{RUN[1]}/artifacts/model/weights.bin"
    fake.put("target:mlflow-backup", f"_history/20261206T023000Z/{key}", b"first", ts("2026-12-06 02:30:00"),
             kept=ts("2026-12-05 10:00:00"))
    fake.put("target:mlflow-backup", f"_history/20261207T023000Z/{key}", b"as at the target", ts("2026-12-07 02:30:00"),
             kept=T_BEFORE)
    fake.put("target:mlflow-backup", f"_history/20261208T023000Z/{key}", b"after the target",
             ts("2026-12-08 02:30:00"), kept=T_AFTER)
    # Not a backup run's folder, and a key outside the destination's prefix: both left out.
    fake.put("target:mlflow-backup", f"_history/by-hand/{key}", b"x", T_AFTER)
    fake.put("target:mlflow-backup", "_history/20261208T023000Z/other/file", b"x", T_AFTER)
    rows = {"versions": [version_row("m", 1, RUN[1])], "runs": [run_row(RUN[1])]}
    return fake, rows, key


def test_the_copy_given_back_is_the_newest_written_at_or_before_the_target():
    fake, rows, key = history_case()
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert failure is None
    assert [(r["key"], r["origin"]) for r in facts["restored"]] == [(key, "20261207T023000Z")]
    assert fake.buckets["source:mlflow"][key]["data"] == b"as at the target"
    copy = next(argv for argv in fake.calls if argv[len(RCLONE)] == "copy")
    assert copy[-2] == "target:mlflow-backup/_history/20261207T023000Z/artifacts"


def test_without_a_target_the_newest_copy_is_given_back():
    fake, rows, key = history_case()
    facts, failure = aa.restore(params(rows, target_time=""), fake, check_mode=False)
    assert failure is None and facts["restored"][0]["origin"] == "20261208T023000Z"
    assert fake.buckets["source:mlflow"][key]["data"] == b"after the target"


def test_copies_written_only_after_the_target_are_not_given_back():
    fake, rows, key = history_case()
    for stamp in ("20261206T023000Z", "20261207T023000Z"):
        del fake.buckets["target:mlflow-backup"][f"_history/{stamp}/{key}"]
    facts, failure = aa.restore(params(rows), fake, check_mode=False)
    assert failure is None and facts["restored"] == [] and facts["changed"] is False
    assert [entry["key"] for entry in facts["only_newer_in_backup"]] == [key]
    assert [v["version"] for v in facts["not_found"]] == [1]


def test_the_mirror_wins_over_an_equal_history_copy():
    copies = [aa.Copy("20261207T023000Z", 5, T_AFTER, ts("2026-12-07 02:30:00"), T_BEFORE),
              aa.Copy(aa.MIRROR, 5, T_AFTER, None, T_BEFORE)]
    assert aa.choose(copies, aa.parse_target_time(TARGET))[0].origin == aa.MIRROR


def test_scope_versions_leaves_a_runs_other_missing_files_alone():
    fake, rows = drill()
    other = f"artifacts/1/{RUN[2]}/artifacts/metrics.png"
    fake.put("target:mlflow-backup", other, b"png", BACKUP_RUN, kept=T_BEFORE)
    rows_facts = aa.report(params(rows), fake)
    assert sorted(r["key"] for r in rows_facts["restorable"]) == sorted(
        [other, f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"])
    assert next(r for r in rows_facts["restorable"] if r["key"] == other)["owner"]["kind"] == "run"
    versions_facts = aa.report(params(rows, scope="versions"), fake)
    assert [r["key"] for r in versions_facts["restorable"]] == [f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"]


# -- What the rows name ---------------------------------------------------------------------------------------------

def test_locations_resolve_through_runs_and_model_uris():
    store = aa.Store(DEST)
    rows = aa.Rows({
        "versions": [
            version_row("a", 1, RUN[1], storage_location="", source=f"runs:/{RUN[1]}/model"),
            version_row("a", 2, "", storage_location="", source="models:/m-0123"),
            version_row("a", 3, "", storage_location="", source="models:/a/1"),
            version_row("b", 1, "", storage_location="s3://mlflow/artifacts/4/x/artifacts"),
            version_row("b", 2, "", storage_location="s3://elsewhere/artifacts/4/x"),
            version_row("b", 3, "", storage_location="s3://mlflow/other/4/x"),
            version_row("b", 4, "", storage_location="file:///tmp/model"),
            version_row("b", 5, "", storage_location="", source=f"runs:/{RUN[7]}/model"),
            version_row("b", 6, "", storage_location="mlflow-artifacts://10.0.0.40:443/5/y/artifacts/model"),
            version_row("b", 7, "", current_stage="Deleted_Internal", source="REDACTED-SOURCE-PATH"),
            version_row("b", 8, "", storage_location="", source="models:/a/9"),
        ],
        "runs": [run_row(RUN[1])],
        "logged_models": [{"model_id": "m-0123", "experiment_id": 1,
                           "artifact_location": "mlflow-artifacts:/1/models/m-0123/artifacts"}],
        "traces": [{"trace_id": "tr-1", "location": "mlflow-artifacts:/1/traces/tr-1/artifacts"}],
    })
    roots, versions = rows.roots(store)
    resolved = {(v.name, v.version): (location, reason) for v, location, reason in versions}
    assert resolved[("a", 1)] == (f"1/{RUN[1]}/artifacts/model", "")
    assert resolved[("a", 2)] == ("1/models/m-0123/artifacts", "")
    assert resolved[("a", 3)] == (f"1/{RUN[1]}/artifacts/model", "")
    assert resolved[("b", 1)] == ("4/x/artifacts", "")
    assert resolved[("b", 2)] == (None, "outside s3://mlflow/artifacts")
    assert resolved[("b", 3)] == (None, "outside s3://mlflow/artifacts")
    assert resolved[("b", 4)] == (None, "outside the artifact store (file:)")
    assert resolved[("b", 5)] == (None, f"run {RUN[7]} has no row")
    assert resolved[("b", 8)] == (None, "model URI models:/a/9 names no version or logged model that has a row")
    assert resolved[("b", 6)] == ("5/y/artifacts/model", "")
    assert ("b", 7) not in resolved and rows.deleted_versions == 1
    assert roots["1/traces/tr-1/artifacts"] == aa.Owner("trace", "tr-1")
    assert roots["1/models/m-0123/artifacts"] == aa.Owner("version", "a/2")
    assert roots[f"1/{RUN[1]}/artifacts"] == aa.Owner("run", RUN[1], "1")


def test_orphans_are_grouped_by_the_folder_mlflow_wrote_them_in():
    fake = FakeRclone(T_AFTER)
    late = T_AFTER
    for key in (f"artifacts/2/{RUN[4]}/artifacts/a.txt", f"artifacts/2/{RUN[4]}/artifacts/b/c.txt",
                "artifacts/2/models/m-77/artifacts/MLmodel", "artifacts/2/traces/tr-9/artifacts/traces.json",
                "artifacts/loose/file", "artifacts/3/stray.bin"):
        fake.put("source:mlflow", key, b"12345", late)
    # An old unreferenced object: not this restore's orphan, reported apart.
    fake.put("source:mlflow", f"artifacts/2/{RUN[5]}/artifacts/old.txt", b"1", T_BEFORE - 86400)
    # A run that exists with a file written after the target: referenced, not an orphan.
    fake.put("source:mlflow", f"artifacts/2/{RUN[1]}/artifacts/late.txt", b"1", late)
    rows = {"versions": [], "runs": [run_row(RUN[1], 2)]}
    facts = aa.report(params(rows, backup=False), fake)
    groups = {(g["kind"], g["id"], g["prefix"]): g["objects"] for g in facts["orphans"]}
    assert groups == {("run", RUN[4], f"2/{RUN[4]}"): 2, ("logged_model", "m-77", "2/models/m-77"): 1,
                      ("trace", "tr-9", "2/traces/tr-9"): 1, ("other", "", "loose"): 1, ("other", "", "3"): 1}
    assert [g["id"] for g in facts["unreferenced_before_target"]] == [RUN[5]]
    assert facts["counts"]["newer_referenced_objects"] == 1
    assert "restorable" not in facts
    assert fake.calls == [[*RCLONE, "lsjson", "-R", "--files-only", "--no-mimetype", "--use-server-modtime",
                           "source:mlflow/artifacts"]]


def test_a_folder_with_referenced_objects_is_not_whole():
    fake = FakeRclone(T_AFTER)
    fake.put("source:mlflow", "artifacts/1/models/m-1/artifacts/model.pkl", b"1", T_AFTER)
    fake.put("source:mlflow", "artifacts/1/models/m-1/extra.txt", b"1", T_AFTER)
    rows = {"logged_models": [{"model_id": "m-1", "experiment_id": 1,
                               "artifact_location": "mlflow-artifacts:/1/models/m-1/artifacts"}]}
    facts = aa.report(params(rows, backup=False), fake)
    assert [(g["prefix"], g["objects"], g["whole_prefix"]) for g in facts["orphans"]] == [("1/models/m-1", 1, False)]


def test_without_a_target_every_unreferenced_object_is_an_orphan():
    fake, rows = drill()
    facts = aa.report(params(rows, target_time="", backup=False), fake)
    assert len(facts["orphans"]) == 3 and facts["unreferenced_before_target"] == [] and facts["target_time"] == ""


def test_an_empty_prefix_keeps_the_history_folder_out_of_the_mirror():
    fake = FakeRclone(T_AFTER)
    fake.put("target:mlflow-backup", f"1/{RUN[1]}/artifacts/model/w.bin", b"w", BACKUP_RUN, kept=T_BEFORE)
    fake.put("target:mlflow-backup", f"_history/20261206T023000Z/1/{RUN[1]}/artifacts/model/w.bin", b"old",
             BACKUP_RUN, kept=T_BEFORE - 60)
    rows = {"versions": [version_row("m", 1, RUN[1])], "runs": [run_row(RUN[1])]}
    facts, failure = aa.restore(params(rows, artifacts_destination="s3://mlflow"), fake, check_mode=False)
    assert failure is None and facts["restored"][0]["origin"] == "mirror"
    assert fake.buckets["source:mlflow"][f"1/{RUN[1]}/artifacts/model/w.bin"]["data"] == b"w"
    mirror = next(argv for argv in fake.calls if argv[-1] == "target:mlflow-backup")
    assert mirror[-3:-1] == ["--exclude", "/_history/**"]


# -- Inputs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-06 17:55:00+00", "2026-12-06 17:55:00"),
    ("2026-12-06T17:55:00Z", "2026-12-06 17:55:00"),
    ("2026-12-06 19:55:00+02:00", "2026-12-06 17:55:00"),
    ("2026-12-06 12:55+0500", "2026-12-06 07:55:00"),
    ("2026-12-06 17:55:00 UTC", "2026-12-06 17:55:00"),
])
def test_target_times_are_read_with_their_zone(text, expected):
    assert aa.parse_target_time(text) == ts(expected)


def test_a_target_time_without_a_zone_is_refused():
    with pytest.raises(aa.AuditError, match="with its zone"):
        aa.parse_target_time("2026-12-06 17:55:00")


def test_rclone_times_keep_their_fraction():
    assert aa.parse_rclone_time("2026-12-06T17:55:00.500000000+01:00") == ts("2026-12-06 16:55:00") + 0.5
    with pytest.raises(ValueError):
        aa.parse_rclone_time("yesterday")


def test_the_backups_source_must_be_mlflows_bucket():
    fake, rows = drill()
    with pytest.raises(aa.AuditError, match="not MLflow's bucket mlflow"):
        aa.report(params(rows, source="source:other"), fake)
    with pytest.raises(aa.AuditError, match="is not s3://<bucket>/<prefix>"):
        aa.report(params(rows, artifacts_destination="/var/lib/mlflow"), fake)


# -- The modules and what feeds them --------------------------------------------------------------------------------

def merged_options(module) -> str:
    options = yaml.safe_load(module.DOCUMENTATION).get("options") or {}
    options.update(yaml.safe_load(artifacts_fragment.ModuleDocFragment.DOCUMENTATION)["options"])
    return yaml.safe_dump({"options": options})


@pytest.mark.parametrize(("module", "extra"), [
    (mlflow_artifact_report, {"backup": {"type": "bool", "default": True}}),
    (mlflow_artifact_restore, {"transfers": {"type": "int", "default": 8}}),
])
def test_each_module_documents_its_options_as_specified(module, extra):
    assert_documented_as_specified(merged_options(module), aa.argument_spec(**extra))
    source = Path(module.__file__).read_text()
    assert "argument_spec(%s=dict(" % next(iter(extra)) in source


def test_the_query_builds_every_field_the_rows_are_read_with():
    """tasks/artifact_rows.yml reads the rows; the columns are MLflow 3.17's (model_versions, runs, logged_models,
    trace_tags)."""
    tasks = yaml.safe_load((ROOT / "playbooks" / "tasks" / "artifact_rows.yml").read_text())
    flat = [task for entry in tasks for task in entry.get("block", [entry])]
    query = next(t for t in flat if "ansible.builtin.command" in t)["ansible.builtin.command"]["argv"][-1]
    source = Path(aa.__file__).read_text()
    read = set(re.findall(r'row\.get\("(\w+)"\)', source))
    built = set(re.findall(r"'(\w+)', ", query))
    assert read <= built, read - built
    for table in ("FROM model_versions", "FROM runs", "FROM logged_models", "FROM trace_tags"):
        assert table in query
    assert "mlflow.artifactLocation" in query and "mlflow.trace.archiveLocation" in query


def test_the_roles_publish_what_the_playbooks_pass_the_modules():
    backup_defaults = yaml.safe_load((ROOT / "roles" / "artifact_backup" / "defaults" / "main.yml").read_text())
    argv = render("artifact_backup", "_artifact_backup_endpoints.rclone_argv",
                  **{**backup_defaults, "artifact_backup_ca_path": "/etc/ssl/ca.crt"})
    assert argv == ["/usr/bin/rclone", "--config", "/etc/mlflow-ha/rclone-artifacts.conf",
                    "--ca-cert", "/etc/ssl/ca.crt"]
    mlflow_defaults = yaml.safe_load((ROOT / "roles" / "mlflow" / "defaults" / "main.yml").read_text())
    destination = render("mlflow", "_mlflow_artifacts_destination", **mlflow_defaults)
    assert destination == DEST
    assert aa.Store(destination).prefix == "artifacts"
    unit = (ROOT / "roles" / "mlflow" / "templates" / "mlflow.service.j2").read_text()
    assert "--artifacts-destination {{ _mlflow_artifacts_destination }}" in unit


# -- The lab drill's artifact step (tests/lab/dr_artifacts.py) --------------------------------------------------------

def drill_state(before: int = 5, after: int = 3) -> list[dict]:
    return [{"version": i, "run_id": RUN[i], "artifact_uri": f"mlflow-artifacts:/1/{RUN[i]}/artifacts"}
            for i in range(1, before + after + 1)]


def test_the_drill_deletes_the_key_the_report_names_with_the_backups_rclone():
    entry = drill_state()[2]
    key = dr_artifacts.object_key(entry)
    assert key == f"artifacts/1/{RUN[3]}/artifacts/model/weights.bin"
    assert dr_artifacts.delete_object_argv(key) == [
        "rclone", "--config", "/etc/mlflow-ha/rclone-artifacts.conf", "--ca-cert",
        "/usr/local/share/ca-certificates/mlflow-ha-ca.crt", "deletefile", f"source:mlflow/{key}"]
    assert (dr_artifacts.BACKUP_HOST, dr_artifacts.BACKUP_UNIT) == ("mon1", "mlflow-ha-artifact-backup.service")
    args = dr_artifacts.report_args("2026-12-06 17:55:00+00", Path("/tmp/r.json"))
    assert Path(args[0]) == ROOT / "playbooks" / "dr" / "artifact_report.yml" and Path(args[0]).is_file()
    assert json.loads(args[2]) == {"restore_target_time": "2026-12-06 17:55:00+00",
                                   "artifact_report_file": "/tmp/r.json"}
    assert Path(dr_artifacts.restore_args("x", Path("/tmp/s.json"))[0]).is_file()


def test_the_drills_expectations_hold_for_what_the_modules_return():
    """The drill's assertions against the modules' facts for the drill's case (with a probe's orphan beside it)."""
    fake, rows = drill()
    for version in rows["versions"]:
        version["name"] = "dr-drill-1"
    fake.put("source:mlflow", f"artifacts/2/{'f' * 32}/artifacts/probe.bin", b"probe", T_AFTER)
    report = aa.report(params(rows), fake)
    state = drill_state()
    assert dr_artifacts.report_problems(report, "dr-drill-1", state, 5, 3) == []
    assert dr_artifacts.report_problems(report, "dr-drill-1", state, 5, 2) != []
    result, failure = aa.restore(params(rows), fake, check_mode=False)
    assert failure is None
    assert dr_artifacts.restore_problems(result, "dr-drill-1", state, 3) == []
    second, _failure = aa.restore(params(rows), fake, check_mode=False)
    assert dr_artifacts.restore_problems(second, "dr-drill-1", state, 3) != []
