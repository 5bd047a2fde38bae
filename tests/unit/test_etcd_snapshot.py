"""The etcd snapshot runner (roles/etcd/files/etcd_snapshot_runner.py): the save, the check of a snapshot file (etcd's
digest, the snapshot tool's status), which files it keeps, its state and metrics page; and what the role renders for
it and for a restore. etcdctl and etcdutl are fakes that write and describe files the way etcd 3.6 does (a bbolt
database padded to whole 512-byte pages, its SHA-256 digest appended; `snapshot status -w json`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from fakes import load_program
from role_vars import ROOT, render

from ansible_collections.mlops.mlflow_ha.plugins.module_utils import prometheus

es = load_program(ROOT / "roles" / "etcd" / "files" / "etcd_snapshot_runner.py")
ROLE = ROOT / "roles" / "etcd"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STATUS_36 = {"hash": 3474280699, "revision": 4211, "totalKey": 9, "totalSize": 28672, "version": "3.6.0"}


def snapshot_bytes(pages: int = 7, fill: bytes = b"e") -> bytes:
    body = fill * (512 * pages)
    return body + hashlib.sha256(body).digest()


class FakeEtcd:
    """Answers `etcdctl snapshot save` (writes a snapshot at the path) and `<tool> snapshot status` (JSON)."""

    def __init__(self, save_rc: int = 0, save_stderr: str = "", content: bytes | None = None, status_rc: int = 0,
                 status: dict | None = None, status_stdout: str | None = None):
        self.save_rc = save_rc
        self.save_stderr = save_stderr
        self.content = snapshot_bytes() if content is None else content
        self.status_rc = status_rc
        self.status = STATUS_36 if status is None else status
        self.status_stdout = status_stdout
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []

    def __call__(self, argv, timeout):
        argv = list(argv)
        self.calls.append(argv)
        self.timeouts.append(timeout)
        if argv[-3:-1] == ["snapshot", "save"]:
            if self.save_rc == 0:
                Path(argv[-1]).write_bytes(self.content)
            else:
                Path(argv[-1] + ".part").write_bytes(b"half")
            return subprocess.CompletedProcess(argv, self.save_rc, "", self.save_stderr)
        if argv[-3:-1] == ["snapshot", "status"]:
            out = json.dumps(self.status) if self.status_stdout is None else self.status_stdout
            return subprocess.CompletedProcess(argv, self.status_rc, out if self.status_rc == 0 else "",
                                               "" if self.status_rc == 0 else "Error: invalid database")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "node-exporter").mkdir()
    data = {"member": "pg1", "endpoint": "https://10.0.0.11:2379", "ca": "/etc/etcd/tls/ca.crt",
            "cert": "/etc/etcd/tls/etcd.crt", "key": "/etc/etcd/tls/etcd.key", "etcdctl": "/usr/local/bin/etcdctl",
            "snapshot_tool": "/usr/local/bin/etcdutl", "directory": str(tmp_path / "backups"), "keep": 3,
            "timeout": 300, "state_dir": str(tmp_path / "state"),
            "textfile": str(tmp_path / "node-exporter" / "mlflow_ha_etcd_snapshot.prom")}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return path


def clock_at(start: float = START, step: float = 2.0):
    ticks = iter(start + step * n for n in range(1000))
    return lambda: next(ticks)


def save(settings_path, etcd, start: float = START) -> int:
    return es.main(["--settings", str(settings_path), "save"], run=etcd, clock=clock_at(start))


def directory(settings_path) -> Path:
    return Path(json.loads(Path(settings_path).read_text())["directory"])


def page(settings_path) -> dict:
    text = Path(json.loads(Path(settings_path).read_text())["textfile"]).read_text()
    return {s.name: s.value for s in prometheus.parse(text)}


def state(settings_path) -> dict:
    return json.loads((Path(json.loads(Path(settings_path).read_text())["state_dir"]) / "state.json").read_text())


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# save


def test_a_good_run_keeps_a_checked_snapshot_under_its_stamp_and_says_so(settings, capsys):
    etcd = FakeEtcd()
    assert save(settings, etcd) == es.EXIT_OK
    result = last_json(capsys)
    kept = directory(settings) / "etcd-snapshot-pg1-20270115T080000Z.db"
    assert result["ok"] and result["file"] == str(kept)
    assert (result["size"], result["revision"], result["keys"]) == (len(snapshot_bytes()), 4211, 9)
    assert kept.read_bytes() == snapshot_bytes() and kept.stat().st_mode & 0o777 == 0o600
    # Nothing but the snapshot is left in the directory (the temporary file was renamed).
    assert sorted(p.name for p in directory(settings).iterdir()) == [kept.name]
    values = page(settings)
    assert values["mlflow_ha_etcd_snapshot_last_run_success"] == 1
    assert values["mlflow_ha_etcd_snapshot_last_success_timestamp_seconds"] == values[
        "mlflow_ha_etcd_snapshot_last_run_timestamp_seconds"]
    assert values["mlflow_ha_etcd_snapshot_size_bytes"] == len(snapshot_bytes())
    assert (values["mlflow_ha_etcd_snapshot_revision"], values["mlflow_ha_etcd_snapshot_kept"]) == (4211, 1)


def test_the_save_asks_this_member_alone_with_its_certificate_and_a_deadline(settings):
    etcd = FakeEtcd()
    save(settings, etcd)
    saved, status = etcd.calls
    assert saved[0] == "/usr/local/bin/etcdctl" and saved[-3:-1] == ["snapshot", "save"]
    assert "--endpoints=https://10.0.0.11:2379" in saved
    assert {"--cacert=/etc/etcd/tls/ca.crt", "--cert=/etc/etcd/tls/etcd.crt", "--key=/etc/etcd/tls/etcd.key",
            "--command-timeout=300s"} <= set(saved)
    # Into a hidden file of the snapshot directory, never under its final name.
    assert Path(saved[-1]).parent == directory(settings) and Path(saved[-1]).name.startswith(".")
    assert status == ["/usr/local/bin/etcdutl", "--write-out=json", "snapshot", "status", saved[-1]]
    assert etcd.timeouts[0] > 300


def test_without_tls_no_certificate_flag_is_passed(settings):
    data = json.loads(settings.read_text())
    settings.write_text(json.dumps({**data, "ca": "", "cert": "", "key": "", "endpoint": "http://10.0.0.11:2379"}))
    etcd = FakeEtcd()
    save(settings, etcd)
    assert not [a for a in etcd.calls[0] if a.startswith(("--cacert", "--cert", "--key"))]


def test_only_the_newest_snapshots_are_kept_and_only_ours_are_deleted(settings):
    for hour in range(5):
        assert save(settings, FakeEtcd(), START + 3600 * hour) == es.EXIT_OK
    other = directory(settings) / "notes.txt"
    other.write_text("an operator's file")
    assert save(settings, FakeEtcd(), START + 3600 * 5) == es.EXIT_OK
    names = sorted(p.name for p in directory(settings).iterdir())
    assert names == ["etcd-snapshot-pg1-20270115T110000Z.db", "etcd-snapshot-pg1-20270115T120000Z.db",
                     "etcd-snapshot-pg1-20270115T130000Z.db", "notes.txt"]
    assert page(settings)["mlflow_ha_etcd_snapshot_kept"] == 3


def test_a_failed_save_keeps_nothing_deletes_nothing_and_keeps_the_last_good_run(settings, capsys):
    assert save(settings, FakeEtcd()) == es.EXIT_OK
    good = state(settings)["last_success"]
    capsys.readouterr()
    etcd = FakeEtcd(save_rc=4, save_stderr="Error: context deadline exceeded\n")
    assert save(settings, etcd, START + 3600) == es.EXIT_FAILED
    result = last_json(capsys)
    assert not result["ok"] and "etcdctl snapshot save from https://10.0.0.11:2379 failed (exit 4)" in result["error"]
    assert "context deadline exceeded" in result["error"]
    assert [p.name for p in directory(settings).iterdir()] == [Path(good["file"]).name]
    assert state(settings)["last_success"] == good
    values = page(settings)
    assert values["mlflow_ha_etcd_snapshot_last_run_success"] == 0
    assert values["mlflow_ha_etcd_snapshot_last_success_timestamp_seconds"] == int(good["finished"])


@pytest.mark.parametrize(("etcd", "reason"), [
    (FakeEtcd(content=snapshot_bytes()[:-1] + b"x"), "does not match its content"),
    (FakeEtcd(content=b"e" * 4096), "carries no SHA-256 digest"),
    (FakeEtcd(status_rc=1), "etcdutl snapshot status refused"),
    (FakeEtcd(status_stdout="cf1550fb, 3, 3, 25 kB"), "cannot read"),
], ids=["damaged", "cut-short", "status-refused", "status-garbled"])
def test_a_snapshot_that_fails_its_check_is_not_kept(settings, capsys, etcd, reason):
    for hour in range(3):
        save(settings, FakeEtcd(), START + 3600 * hour)
    before = sorted(p.name for p in directory(settings).iterdir())
    capsys.readouterr()
    assert save(settings, etcd, START + 3600 * 3) == es.EXIT_FAILED
    result = last_json(capsys)
    assert "failed its check, so it was not kept" in result["error"] and reason in result["error"]
    # The bad file is gone and the good ones are all still there (no rotation after a failure).
    assert sorted(p.name for p in directory(settings).iterdir()) == before


def test_leftovers_of_a_killed_run_are_removed(settings):
    directory(settings).mkdir(parents=True)
    left = directory(settings) / ".etcd-snapshot-pg1-20270115T070000Z.db.tmp.part"
    left.write_bytes(b"half")
    save(settings, FakeEtcd())
    assert not left.exists()


def test_the_metrics_command_writes_a_page_before_any_run_and_keeps_its_start(settings):
    assert es.main(["--settings", str(settings), "metrics"], clock=lambda: START) == es.EXIT_OK
    assert page(settings) == {"mlflow_ha_etcd_snapshot_since_timestamp_seconds": START,
                              "mlflow_ha_etcd_snapshot_kept": 0}
    save(settings, FakeEtcd(), START + 7200)
    assert page(settings)["mlflow_ha_etcd_snapshot_since_timestamp_seconds"] == START


def test_last_prints_the_kept_state(settings, capsys):
    es.main(["--settings", str(settings), "last"])
    assert last_json(capsys) == {}
    save(settings, FakeEtcd())
    capsys.readouterr()
    es.main(["--settings", str(settings), "last"])
    assert last_json(capsys)["last_run"]["file"].endswith("etcd-snapshot-pg1-20270115T080000Z.db")


def test_a_page_that_cannot_be_written_does_not_change_the_runs_outcome(settings, tmp_path, capsys):
    data = json.loads(settings.read_text())
    settings.write_text(json.dumps({**data, "textfile": str(tmp_path / "missing" / "page.prom")}))
    assert save(settings, FakeEtcd()) == es.EXIT_OK
    assert "cannot write the metrics page" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# verify


def test_verify_checks_digest_and_status_and_prints_one_json_line(settings, tmp_path, capsys):
    good = tmp_path / "good.db"
    good.write_bytes(snapshot_bytes())
    assert es.main(["--settings", str(settings), "verify", str(good)], run=FakeEtcd()) == es.EXIT_OK
    result = last_json(capsys)
    assert result["ok"] and (result["revision"], result["keys"], result["db_size"]) == (4211, 9, 28672)


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read"),
    (b"", "is empty"),
    (snapshot_bytes()[:1000], "carries no SHA-256 digest"),
    (snapshot_bytes()[:100] + b"X" + snapshot_bytes()[101:], "the file is damaged"),
], ids=["missing", "empty", "cut-short", "damaged"])
def test_verify_refuses_with_the_reason_and_without_any_etcd_tool(tmp_path, capsys, content, reason):
    path = tmp_path / "snapshot.db"
    if content is not None:
        path.write_bytes(content)

    def no_tool(argv, timeout):
        raise AssertionError("--checksum-only must not run a tool")

    # No settings file at all: the controller's check.
    assert es.main(["--settings", str(tmp_path / "none.json"), "verify", "--checksum-only", str(path)],
                   run=no_tool) == es.EXIT_FAILED
    out, err = capsys.readouterr()
    assert not json.loads(out.strip())["ok"] and reason in json.loads(out.strip())["reason"] and reason in err


def test_parse_status_of_etcdutl_36_and_etcdctl_34():
    expected = {"revision": 4211, "keys": 9, "db_size": 28672, "hash": 3474280699}
    assert es.parse_status(json.dumps(STATUS_36)) == expected
    # etcdctl 3.4 prints no version; a warning line before the JSON is tolerated.
    text = ('Deprecated: Use `etcdutl snapshot status` instead.\n'
            '{"hash":1,"revision":2,"totalKey":7,"totalSize":24576}\n')
    assert es.parse_status(text)["keys"] == 7
    with pytest.raises(ValueError):
        es.parse_status("{}")


# ---------------------------------------------------------------------------------------------------------------
# What the role renders

OVERRIDES = {
    "inventory_hostname": "pg1",
    # Derived from facts through the collection's filters in the role; given here.
    "_etcd_client_url": "https://10.0.0.11:2379",
    "_etcd_peer_url": "https://10.0.0.11:2380",
    "_etcd_initial_cluster": "pg1=https://10.0.0.11:2380,pg2=https://10.0.0.12:2380,pg3=https://10.0.0.13:2380",
}


def role_value(name: str, **overrides):
    return render("etcd", name, **{**DEFAULTS, **OVERRIDES, **overrides})


def test_the_runner_settings_load_what_the_role_writes(tmp_path):
    config = role_value("_etcd_snapshot_runner_config", etcd_binaries_src="/srv/etcd-v3.6.16")
    assert (config["etcdctl"], config["snapshot_tool"]) == ("/usr/local/bin/etcdctl", "/usr/local/bin/etcdutl")
    assert config["endpoint"] == "https://10.0.0.11:2379" and config["key"] == "/etc/etcd/tls/etcd.key"
    assert config["textfile"] == "/var/lib/prometheus/node-exporter/mlflow_ha_etcd_snapshot.prom"
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(config))
    loaded = es.Settings.load(str(path))
    assert (loaded.keep, loaded.timeout, loaded.directory) == (24, 300, "/var/backups/etcd")


def test_debians_34_etcdctl_is_the_snapshot_tool_without_binaries():
    config = role_value("_etcd_snapshot_runner_config", etcd_binaries_src="")
    assert config["etcdctl"] == config["snapshot_tool"] == "/usr/bin/etcdctl"
    assert role_value("_etcd_snapshot_textfile", etcd_snapshot_textfile_directory="") == ""
    assert not [v for v in role_value("_etcd_snapshot_runner_config", etcd_tls=False).values() if "tls" in str(v)]


def test_the_restore_writes_a_new_directory_for_this_member_as_the_role_configures_it():
    argv = role_value("_etcd_restore_argv", etcd_binaries_src="/srv/etcd", etcd_restore_snapshot="/var/tmp/s.db",
                      etcd_restore_stamp="20270115T080000Z")
    assert argv == ["/usr/local/bin/etcdutl", "snapshot", "restore", "/var/tmp/s.db", "--name=pg1",
                    "--initial-cluster=" + OVERRIDES["_etcd_initial_cluster"],
                    "--initial-cluster-token=mlflow-ha-etcd", "--initial-advertise-peer-urls=https://10.0.0.11:2380",
                    "--data-dir=/var/lib/etcd/mlflow-ha.restored-20270115T080000Z"]
    assert role_value("_etcd_restore_aside", etcd_restore_stamp="S") == "/var/lib/etcd/mlflow-ha.pre-restore-S"


def test_the_restore_check_reads_the_runners_last_line():
    answer = {"stdout_lines": ["noise", json.dumps({"ok": False, "reason": "damaged"})]}
    assert role_value("_etcd_restore_check", _etcd_restore_verify=answer) == {"ok": False, "reason": "damaged"}
    assert role_value("_etcd_restore_check", _etcd_restore_verify={"stdout_lines": []}) == {}


def test_preflight_names_the_binaries_a_directory_lacks(tmp_path):
    for name in ("etcd", "etcdctl"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    assert role_value("_etcd_binaries_missing", etcd_binaries_src=str(tmp_path)) == ["etcdutl"]
    (tmp_path / "etcdutl").write_text("#!/bin/sh\n")
    assert role_value("_etcd_binaries_missing", etcd_binaries_src=str(tmp_path)) == []


def test_snapshot_now_takes_only_a_run_that_happened():
    before = {"stdout": json.dumps({"last_run": {"started": 1, "ok": True}})}
    after = {"stdout": json.dumps({"last_run": {"started": 2, "ok": False, "error": "x"}})}
    assert role_value("_etcd_snapshot_now_after", _etcd_snapshot_now_state_after=after)["started"] == 2
    assert role_value("_etcd_snapshot_now_before", _etcd_snapshot_now_state_before=before)["started"] == 1
    assert role_value("_etcd_snapshot_now_before", _etcd_snapshot_now_state_before={"stdout": ""}) == {}


def test_snapshot_names_sort_by_their_utc_stamp():
    assert es.snapshot_name("pg1", START) == "etcd-snapshot-pg1-20270115T080000Z.db"
    assert es.STAMPED.match(es.snapshot_name("etcd-1", START)).group(1) == "20270115T080000Z"
