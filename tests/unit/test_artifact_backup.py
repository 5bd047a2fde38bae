"""The artifact backup's runner (roles/artifact_backup/files/artifact_backup_runner.py): the sync, the check of what it
copied, which differences a run forgives (objects written while it ran), its state and its metrics page; and what
the role renders for it. rclone is a fake that answers as rclone 1.60 does (its combined report, its summary lines
on stderr, lsjson's JSON; their formats as Debian's rclone 1.60.1 wrote them on local directories): no S3 anywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from fakes import load_program
from role_vars import ROOT, _trusted, render, role_vars

from ansible_collections.mlops.mlflow_ha.plugins.module_utils import prometheus

ab = load_program(ROOT / "roles" / "artifact_backup" / "files" / "artifact_backup_runner.py")
ROLE = ROOT / "roles" / "artifact_backup"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
START = 1_800_000_000.0  # the run's start (2027-01-15T08:00:00Z)


class FakeRclone:
    """Answers `rclone sync|check|lsjson` from what a test set; records every argv."""

    def __init__(self, combined: str = "", check_rc: int = 0, check_stderr: str = "", sync_rc: int = 0,
                 sync_stderr: str = "", lsjson: list | None = None, lsjson_rc: int = 0):
        self.combined = combined
        self.check_rc = check_rc
        self.check_stderr = check_stderr
        self.sync_rc = sync_rc
        self.sync_stderr = sync_stderr
        self.lsjson = lsjson or []
        self.lsjson_rc = lsjson_rc
        self.calls: list[list[str]] = []
        self.asked_paths: list[str] = []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        command = next(a for a in argv if a in ("sync", "check", "lsjson"))
        if command == "sync":
            return subprocess.CompletedProcess(argv, self.sync_rc, "", self.sync_stderr)
        if command == "check":
            with open(argv[argv.index("--combined") + 1], "w") as out:
                out.write(self.combined)
            return subprocess.CompletedProcess(argv, self.check_rc, "", self.check_stderr)
        with open(argv[argv.index("--files-from-raw") + 1]) as listed:
            self.asked_paths = listed.read().splitlines()
        return subprocess.CompletedProcess(argv, self.lsjson_rc, json.dumps(self.lsjson), "")


def summary(fs_name: str, differences: int, errors: int | None = None, final: int | None = None,
            unhashed: int = 0, matching: int = 0) -> str:
    """rclone check's stderr: the summary (every counted error) and, when it failed, its last line."""
    lines = [f"2027/01/15 08:05:00 NOTICE: S3 bucket {fs_name}: {differences} differences found"]
    if differences:
        lines.append(f"2027/01/15 08:05:00 NOTICE: S3 bucket {fs_name}: {differences} errors while checking")
    if unhashed:
        lines.append(f"2027/01/15 08:05:00 NOTICE: S3 bucket {fs_name}: {unhashed} hashes could not be checked")
    if matching:
        lines.append(f"2027/01/15 08:05:00 NOTICE: S3 bucket {fs_name}: {matching} matching files")
    if final is not None:
        lines.append(f"2027/01/15 08:05:00 Failed to check with {differences} errors: last error was: "
                     f"{final} differences found")
    return "\n".join(lines) + "\n"


def entry(path: str, modtime: str) -> dict:
    return {"Path": path, "Name": path.rsplit("/", 1)[-1], "Size": 3, "ModTime": modtime, "IsDir": False}


@pytest.fixture
def settings(tmp_path):
    textdir = tmp_path / "node-exporter"
    textdir.mkdir()
    data = {"rclone": "/usr/bin/rclone", "rclone_args": ["--config", "/etc/mlflow-ha/rclone-artifacts.conf"],
            "source": "source:mlflow", "target": "target:mlflow-backup", "bucket": "mlflow",
            "history_prefix": "_history", "transfers": 8, "state_dir": str(tmp_path / "state"),
            "textfile": str(textdir / "mlflow_ha_artifact_backup.prom"), "clock_margin": 60}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return path


def clock_from(start: float = START, step: float = 30.0):
    ticks = iter(start + step * n for n in range(1000))
    return lambda: next(ticks)


def run(settings_path, rclone, clock=None):
    return ab.main(["--settings", str(settings_path), "run"], run=rclone, clock=clock or clock_from())


def page(settings_path) -> dict:
    text = Path(json.loads(Path(settings_path).read_text())["textfile"]).read_text()
    samples = prometheus.parse(text)
    return {(s.name, s.label("kind")): s.value for s in samples}


def state(settings_path) -> dict:
    return json.loads((Path(json.loads(Path(settings_path).read_text())["state_dir"]) / "state.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# What runs


def test_the_sync_keeps_replaced_objects_under_the_run_stamp_and_the_check_is_one_way(settings):
    rclone = FakeRclone(combined="= a\n")
    assert run(settings, rclone) == 0
    sync, check = rclone.calls
    assert sync == ["/usr/bin/rclone", "--config", "/etc/mlflow-ha/rclone-artifacts.conf", "sync", "--checksum",
                    "--transfers", "8", "source:mlflow", "target:mlflow-backup", "--exclude", "/_history/**",
                    "--backup-dir", "target:mlflow-backup/_history/20270115T080000Z"]
    assert check[3:5] == ["check", "--one-way"]
    assert check[-4:] == ["--exclude", "/_history/**", "source:mlflow", "target:mlflow-backup"]


def test_a_clean_run_is_verified_and_its_page_says_so(settings, capsys):
    rclone = FakeRclone(combined="= artifacts/1/a/model.pkl\n= artifacts/1/a/with space.txt\n",
                        check_stderr=summary("mlflow-backup", 0, unhashed=1, matching=2))
    assert run(settings, rclone) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["verified"] and result["checked"] == 2 and result["unhashed"] == 1
    metrics = page(settings)
    assert metrics[("mlflow_ha_artifact_backup_sync_success", "")] == 1
    assert metrics[("mlflow_ha_artifact_backup_check_success", "")] == 1
    assert metrics[("mlflow_ha_artifact_backup_checked_objects", "")] == 2
    assert metrics[("mlflow_ha_artifact_backup_unhashed_objects", "")] == 1
    assert metrics[("mlflow_ha_artifact_backup_differences", "missing")] == 0
    assert metrics[("mlflow_ha_artifact_backup_last_verified_timestamp_seconds", "")] == result["finished"]
    assert metrics[("mlflow_ha_artifact_backup_last_run_timestamp_seconds", "")] == result["finished"]
    assert metrics[("mlflow_ha_artifact_backup_since_timestamp_seconds", "")] == START + 30
    assert state(settings)["last_verified"] == result["finished"]
    assert not rclone.asked_paths, "nothing to explain, nothing asked"


# ---------------------------------------------------------------------------------------------------------------
# Differences: which fail the run, which do not


def test_an_object_missing_in_the_target_fails_the_run(settings, capsys):
    rclone = FakeRclone(combined="= a\n+ artifacts/old.bin\n", check_rc=1,
                        check_stderr=summary("mlflow-backup", 1, final=1),
                        lsjson=[entry("artifacts/old.bin", "2027-01-14T10:00:00.123456789Z")])
    assert run(settings, rclone) == 1
    assert rclone.asked_paths == ["artifacts/old.bin"]
    err = capsys.readouterr().err
    assert "1 object(s) missing in the target: artifacts/old.bin" in err
    assert "NOT verified: 2 objects checked, 1 missing" in err
    metrics = page(settings)
    assert metrics[("mlflow_ha_artifact_backup_check_success", "")] == 0
    assert metrics[("mlflow_ha_artifact_backup_sync_success", "")] == 1
    assert metrics[("mlflow_ha_artifact_backup_differences", "missing")] == 1
    assert ("mlflow_ha_artifact_backup_last_verified_timestamp_seconds", "") not in metrics


def test_a_differing_object_fails_the_run_and_the_last_verified_run_is_kept(settings):
    assert run(settings, FakeRclone(combined="= a\n")) == 0
    verified = state(settings)["last_verified"]
    rclone = FakeRclone(combined="* a\n", check_rc=1, check_stderr=summary("mlflow-backup", 1, final=1),
                        lsjson=[entry("a", "2027-01-01T00:00:00Z")])
    assert run(settings, rclone, clock_from(START + 86400)) == 1
    metrics = page(settings)
    assert metrics[("mlflow_ha_artifact_backup_differences", "differ")] == 1
    assert metrics[("mlflow_ha_artifact_backup_last_verified_timestamp_seconds", "")] == verified
    assert metrics[("mlflow_ha_artifact_backup_last_run_timestamp_seconds", "")] > verified


def test_objects_written_or_deleted_while_the_backup_ran_are_late_not_failures(settings):
    # The sync began at START: one object uploaded after it (missing), one replaced after it (differs), one the
    # check listed and that is gone now. Debian's rclone 1.60.1 exits 1 on differences (measured), as later ones do.
    rclone = FakeRclone(combined="= a\n+ new.bin\n* replaced.bin\n+ gone.bin\n", check_rc=1,
                        check_stderr=summary("mlflow-backup", 3, final=3),
                        lsjson=[entry("new.bin", "2027-01-15T08:00:10.5+00:00"),
                                entry("replaced.bin", "2027-01-15T09:00:10+01:00")])
    assert run(settings, rclone) == 0
    lsjson = rclone.calls[-1]
    assert lsjson[3:8] == ["lsjson", "-R", "--files-only", "--no-mimetype", "--use-server-modtime"]
    assert sorted(rclone.asked_paths) == ["gone.bin", "new.bin", "replaced.bin"]
    metrics = page(settings)
    assert metrics[("mlflow_ha_artifact_backup_late_objects", "")] == 3
    assert metrics[("mlflow_ha_artifact_backup_check_success", "")] == 1
    assert metrics[("mlflow_ha_artifact_backup_differences", "missing")] == 0


def test_the_clock_margin_forgives_a_little_before_the_start_but_no_more(settings):
    just_before = FakeRclone(combined="+ a\n", check_rc=1, check_stderr=summary("b", 1, final=1),
                             lsjson=[entry("a", "2027-01-15T07:59:30Z")])
    assert run(settings, just_before) == 0
    too_early = FakeRclone(combined="+ a\n", check_rc=1, check_stderr=summary("b", 1, final=1),
                           lsjson=[entry("a", "2027-01-15T07:58:59Z")])
    assert run(settings, too_early) == 1


def test_an_error_rclone_counted_beyond_the_reported_objects_fails_the_run(settings, capsys):
    # A listing error besides a late object: 2 counted errors, 1 reported object, the exit error is the listing's.
    stderr = ("2027/01/15 08:05:00 ERROR : artifacts/3: error listing: AccessDenied\n"
              "2027/01/15 08:05:00 NOTICE: S3 bucket mlflow-backup: 2 differences found\n"
              "2027/01/15 08:05:00 Failed to check with 2 errors: last error was: error listing: AccessDenied\n")
    rclone = FakeRclone(combined="+ new.bin\n", check_rc=2, check_stderr=stderr,
                        lsjson=[entry("new.bin", "2027-01-15T08:01:00Z")])
    assert run(settings, rclone) == 1
    assert "rclone check failed (exit 2) beyond the objects it reported" in capsys.readouterr().err


def test_a_check_that_could_not_list_fails_the_run(settings, capsys):
    rclone = FakeRclone(combined="", check_rc=3,
                        check_stderr="2027/01/15 08:05:00 Failed to check: directory not found\n")
    assert run(settings, rclone) == 1
    assert "exit 3" in capsys.readouterr().err
    assert page(settings)[("mlflow_ha_artifact_backup_checked_objects", "")] == 0


def test_an_unreadable_object_fails_the_run(settings):
    rclone = FakeRclone(combined="= a\n! b\n", check_rc=1, check_stderr=summary("mlflow-backup", 1))
    assert run(settings, rclone) == 1
    assert page(settings)[("mlflow_ha_artifact_backup_differences", "errors")] == 1


def test_unknown_upload_times_forgive_nothing(settings, capsys):
    rclone = FakeRclone(combined="+ new.bin\n", check_rc=1, check_stderr=summary("b", 1, final=1), lsjson_rc=3)
    assert run(settings, rclone) == 1
    assert "upload times are unknown" in capsys.readouterr().err


def test_a_failed_sync_fails_the_run_although_the_check_passes(settings, capsys):
    rclone = FakeRclone(combined="= a\n", sync_rc=7, sync_stderr="ERROR : Attempt 3/3 failed with 1 errors\n")
    assert run(settings, rclone) == 1
    assert "rclone sync failed (exit 7)" in capsys.readouterr().err
    metrics = page(settings)
    assert metrics[("mlflow_ha_artifact_backup_sync_success", "")] == 0
    assert metrics[("mlflow_ha_artifact_backup_check_success", "")] == 1
    assert ("mlflow_ha_artifact_backup_last_verified_timestamp_seconds", "") not in metrics


# ---------------------------------------------------------------------------------------------------------------
# State, page, parsing


def test_the_metrics_command_writes_a_page_before_any_run_and_keeps_its_start(settings):
    assert ab.main(["--settings", str(settings), "metrics"], clock=lambda: START) == 0
    first = page(settings)
    assert first[("mlflow_ha_artifact_backup_since_timestamp_seconds", "")] == START
    assert ("mlflow_ha_artifact_backup_last_run_timestamp_seconds", "") not in first
    assert ab.main(["--settings", str(settings), "metrics"], clock=lambda: START + 3600) == 0
    assert page(settings)[("mlflow_ha_artifact_backup_since_timestamp_seconds", "")] == START
    assert page(settings)[("mlflow_ha_artifact_backup_metrics_timestamp_seconds", "")] == START + 3600


def test_the_page_is_replaced_in_one_rename_and_no_temporary_file_stays(settings):
    assert run(settings, FakeRclone(combined="= a\n")) == 0
    directory = Path(json.loads(settings.read_text())["textfile"]).parent
    assert sorted(p.name for p in directory.iterdir()) == ["mlflow_ha_artifact_backup.prom"]
    assert oct(os.stat(directory / "mlflow_ha_artifact_backup.prom").st_mode & 0o777) == "0o644"


def test_a_page_that_cannot_be_written_does_not_change_the_runs_outcome(settings, tmp_path, capsys):
    data = json.loads(settings.read_text())
    data["textfile"] = str(tmp_path / "missing-dir" / "x.prom")
    settings.write_text(json.dumps(data))
    assert run(settings, FakeRclone(combined="= a\n")) == 0
    assert "cannot write the metrics page" in capsys.readouterr().err
    assert state(settings)["last_run"]["verified"]


def test_parse_combined_keeps_spaces_in_paths_and_ignores_other_lines():
    report = ab.parse_combined("= a b\n+ c\n* d\n! e\n- f\ngarbage\n\n")
    assert (report.identical, report.missing, report.differ, report.errors, report.target_only) == (
        ["a b"], ["c"], ["d"], ["e"], ["f"])
    assert report.checked == 4


@pytest.mark.parametrize(("text", "seconds"), [
    ("2027-01-15T08:00:00Z", START),
    ("2027-01-15T08:00:00.123456789Z", START + 0.123456789),
    ("2027-01-15T09:00:00+01:00", START),
])
def test_parse_rclone_time(text, seconds):
    assert ab.parse_rclone_time(text) == pytest.approx(seconds)


def test_parse_rclone_time_refuses_garbage():
    with pytest.raises(ValueError):
        ab.parse_rclone_time("yesterday")


# ---------------------------------------------------------------------------------------------------------------
# What the role renders


def role_value(name: str, **overrides):
    return render("artifact_backup", name, **{**DEFAULTS, **overrides})


def test_the_runner_settings_name_the_remotes_and_the_ca():
    config = role_value("_artifact_backup_runner_config", artifact_backup_ca_path="/etc/ssl/ca.crt")
    assert config["rclone_args"] == ["--config", "/etc/mlflow-ha/rclone-artifacts.conf", "--ca-cert",
                                     "/etc/ssl/ca.crt"]
    assert (config["source"], config["target"], config["history_prefix"]) == (
        "source:mlflow", "target:mlflow-backup", "_history")
    assert config["textfile"] == "/var/lib/prometheus/node-exporter/mlflow_ha_artifact_backup.prom"
    assert int(config["transfers"]) == 8 and int(config["clock_margin"]) == 60
    assert role_value("_artifact_backup_runner_config")["rclone_args"] == [
        "--config", "/etc/mlflow-ha/rclone-artifacts.conf"]
    assert role_value("_artifact_backup_textfile", artifact_backup_textfile_directory="") == ""


def test_the_settings_load_what_the_role_writes(tmp_path):
    config = role_value("_artifact_backup_runner_config")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(config))
    loaded = ab.Settings.load(str(path))
    assert loaded.exclude_history == ["--exclude", "/_history/**"]
    assert (loaded.transfers, loaded.clock_margin) == (8, 60)


# ---------------------------------------------------------------------------------------------------------------
# rclone's remotes and the key checks: keys from a vault, or none and rclone's env_auth (the instance role)

KEYS = {"artifact_backup_source_endpoint": "https://lb.example:9000", "artifact_backup_source_access_key": "src-key",
        "artifact_backup_source_secret_key": "src-secret", "artifact_backup_target_endpoint": "https://s3.example",
        "artifact_backup_target_access_key": "dst-key", "artifact_backup_target_secret_key": "dst-secret"}
NO_SOURCE_KEYS = {"artifact_backup_source_access_key": "", "artifact_backup_source_secret_key": ""}
NO_TARGET_KEYS = {"artifact_backup_target_access_key": "", "artifact_backup_target_secret_key": ""}
EXTERNAL = {"mlflow_ha_storage_backend": "external"}


def role_templar(**overrides) -> Templar:
    variables = {**role_vars("artifact_backup"), **DEFAULTS, **KEYS, "ansible_managed": "Ansible managed", **overrides}
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def remotes(**overrides) -> dict[str, dict[str, str]]:
    """templates/rclone.conf.j2 rendered, read back as rclone reads it (sections of key = value lines)."""
    text = role_templar(**overrides).template(trust_as_template((ROLE / "templates" / "rclone.conf.j2").read_text()))
    sections: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#"):
            key, _sep, value = line.partition(" = ")
            assert key not in current, f"{key} twice"
            current[key] = value
    return sections


def test_with_keys_both_remotes_carry_them_and_no_env_auth():
    conf = remotes()
    assert conf["source"]["access_key_id"] == "src-key" and conf["source"]["secret_access_key"] == "src-secret"
    assert conf["target"]["access_key_id"] == "dst-key" and conf["target"]["secret_access_key"] == "dst-secret"
    assert "env_auth" not in conf["source"] and "env_auth" not in conf["target"]
    assert conf["source"]["endpoint"] == "https://lb.example:9000" and conf["target"]["no_check_bucket"] == "true"


def test_a_side_without_keys_uses_env_auth_and_writes_no_empty_key():
    conf = remotes(**EXTERNAL, **NO_SOURCE_KEYS)
    assert conf["source"]["env_auth"] == "true"
    assert "access_key_id" not in conf["source"] and "secret_access_key" not in conf["source"]
    assert conf["target"]["access_key_id"] == "dst-key" and "env_auth" not in conf["target"]
    conf = remotes(artifact_backup_target_instance_role=True, **NO_TARGET_KEYS)
    assert conf["target"]["env_auth"] == "true" and "access_key_id" not in conf["target"]
    assert conf["source"]["access_key_id"] == "src-key"


def key_check(name: str, **overrides) -> tuple[bool, str]:
    """One assert of tasks/preflight.yml, its conditions and message rendered as Ansible would."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    task = next(t for t in tasks if t["name"] == name)
    assert "no_log" not in task, "no_log would hide the message"
    check = task["ansible.builtin.assert"]
    templar = role_templar(**overrides)
    conditions = check["that"] if isinstance(check["that"], list) else [check["that"]]
    ok = all(templar.template(trust_as_template("{{ %s }}" % cond)) for cond in conditions)
    return ok, " ".join(templar.template(trust_as_template(check["fail_msg"])).split())


SOURCE_EMPTY = ("artifact_backup: artifact_backup_source_access_key and artifact_backup_source_secret_key are empty: "
                "set them from a vault (only with mlflow_ha_storage_backend external may both stay empty: rclone then "
                "reads the bucket with the instance role of the backup host).")
TARGET_EMPTY = ("artifact_backup: artifact_backup_target_access_key and artifact_backup_target_secret_key are empty: "
                "set them from a vault, or set artifact_backup_target_instance_role to true when the target (AWS S3) "
                "accepts the instance role of the backup host (rclone then writes with it).")


@pytest.mark.parametrize(("name", "overrides", "ok", "message"), [
    ("Check the source keys", {}, True, None),
    ("Check the source keys", {**EXTERNAL, **NO_SOURCE_KEYS}, True, None),
    ("Check the source keys", NO_SOURCE_KEYS, False, SOURCE_EMPTY),
    ("Check the source keys", {"mlflow_ha_storage_backend": "seaweedfs", **NO_SOURCE_KEYS}, False, SOURCE_EMPTY),
    ("Check the source keys", {**EXTERNAL, "artifact_backup_source_access_key": ""}, False,
     "artifact_backup: set both artifact_backup_source_access_key and artifact_backup_source_secret_key (from a "
     "vault), or neither."),
    ("Check the target keys", {}, True, None),
    ("Check the target keys", {"artifact_backup_target_instance_role": True, **NO_TARGET_KEYS}, True, None),
    ("Check the target keys", NO_TARGET_KEYS, False, TARGET_EMPTY),
    ("Check the target keys", {**EXTERNAL, **NO_TARGET_KEYS}, False, TARGET_EMPTY),
    ("Check the target keys", {"artifact_backup_target_instance_role": True, "artifact_backup_target_secret_key": ""},
     False, "artifact_backup: set both artifact_backup_target_access_key and artifact_backup_target_secret_key (from "
            "a vault), or neither."),
])
def test_the_key_checks_say_what_is_wrong(name, overrides, ok, message):
    passed, text = key_check(name, **overrides)
    assert passed is ok
    if message:
        assert text == message
    assert "secret" not in text.replace("_secret_key", ""), "no key's value in the message"


def test_the_endpoint_check_names_what_is_missing():
    ok, text = key_check("Check the source and target endpoints", artifact_backup_target_endpoint="")
    assert not ok and text == "artifact_backup: set artifact_backup_target_endpoint."
