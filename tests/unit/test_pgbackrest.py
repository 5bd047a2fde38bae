"""pgBackRest on the Patroni members (roles/pgbackrest, and the patroni role's side of it): which member backs up,
what the runner does around `pgbackrest check` and the backups, its metrics page, the configuration the role renders
(every option one pgBackRest 2.45 knows) and what Patroni gets with patroni_pgbackrest on and off. Rendered with
Ansible's own templating as a run would; the filters' results (addresses) are given, as tests/unit/test_addresses.py
tests the filters themselves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from fakes import load_program
from role_vars import ROOT, _trusted, render, role_vars

pr = load_program(ROOT / "roles" / "pgbackrest" / "files" / "pgbackrest_runner.py")
ROLE = ROOT / "roles" / "pgbackrest"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
# `pgbackrest --output=json info` of pgBackRest 2.45 (Debian 12), two repositories, a full and a differential backup in
# each, recorded on the loopback rehearsal of docs/notes/pgbackrest-plan.md.
INFO = json.loads((Path(__file__).parent / "golden" / "pgbackrest-2.45-info.json").read_text())
MEMBERS = {"pg1": "10.0.0.11", "pg2": "10.0.0.12", "pg3": "10.0.0.13"}
REPOS = [
    {"name": "local", "s3_endpoint": "10.0.0.40", "s3_port": 9000, "s3_bucket": "pgbackrest", "s3_key": "local-key",
     "s3_key_secret": "local-secret-value", "cipher_pass": "local-cipher-passphrase-0123456789"},
    {"name": "offsite", "s3_endpoint": "backup.example.net", "s3_bucket": "pgbackrest", "s3_key": "offsite-key",
     "s3_key_secret": "offsite-secret-value", "cipher_pass": "offsite-cipher-passphrase-9876543210",
     "ca_file": "system", "s3_uri_style": "host", "retention_full": 4},
]


# ---------------------------------------------------------------------------------------------------------------
# Which member backs up


def member(name, role, state, lag=0):
    return {"name": name, "role": role, "state": state, "lag": lag}


LEADER = member("pg1", "leader", "running", None)


def test_an_asynchronous_replica_is_chosen_before_the_synchronous_standby():
    cluster = {"members": [LEADER, member("pg2", "sync_standby", "streaming", 0),
                           member("pg3", "replica", "streaming", 4096)]}
    choice = pr.choose_member(cluster, max_lag=16 << 20)
    assert (choice.member, choice.standby) == ("pg3", True)
    assert "pg3 is a streaming replica with a lag of 4096 bytes" in choice.reason


def test_the_synchronous_standby_backs_up_when_it_is_the_only_healthy_replica():
    cluster = {"members": [LEADER, member("pg2", "sync_standby", "streaming"),
                           member("pg3", "replica", "streaming", 64 << 20)]}
    assert pr.choose_member(cluster, max_lag=16 << 20).member == "pg2"


@pytest.mark.parametrize("replica", [
    member("pg2", "replica", "running"),              # runs but does not replicate
    member("pg2", "replica", "streaming", "unknown"),  # Patroni could not tell the lag
    member("pg2", "replica", "streaming", 32 << 20),   # too far behind
    member("pg2", "replica", "stopped"),
])
def test_without_a_healthy_replica_the_leader_backs_up_from_itself(replica):
    choice = pr.choose_member({"members": [LEADER, replica]}, max_lag=16 << 20)
    assert (choice.member, choice.standby) == ("pg1", False)
    assert "no replica streams within 16777216 bytes" in choice.reason


def test_with_standby_backups_off_the_leader_always_backs_up():
    cluster = {"members": [LEADER, member("pg2", "replica", "streaming")]}
    choice = pr.choose_member(cluster, max_lag=16 << 20, backup_standby=False)
    assert (choice.member, choice.standby) == ("pg1", False)
    assert "backups from a standby are off" in choice.reason


def test_the_choice_is_the_same_whatever_the_order_of_the_members():
    members = [LEADER, member("pg3", "replica", "streaming", 10), member("pg2", "replica", "streaming", 10)]
    assert pr.choose_member({"members": members}, 1 << 20).member == "pg2"
    assert pr.choose_member({"members": members[::-1]}, 1 << 20).member == "pg2"


def test_nobody_backs_up_without_a_running_leader_or_streaming_replica():
    cluster = {"members": [member("pg1", "leader", "stopped", None), member("pg2", "replica", "running")]}
    choice = pr.choose_member(cluster, 1 << 20)
    assert choice.member is None
    assert "pg1 leader/stopped, pg2 replica/running" in choice.reason
    assert pr.choose_member({}, 1 << 20).member is None


# ---------------------------------------------------------------------------------------------------------------
# A backup run


class FakeCommands:
    """pgBackRest and psql as the runner calls them: answers by the command's last word, every call recorded."""

    def __init__(self, fail=(), info=INFO):
        self.calls = []
        self.fail = dict(fail)  # {"check": "ERROR: ...", "repo=1": "ERROR: ..."}
        self.info = info

    def __call__(self, argv):
        self.calls.append(list(argv))
        words = " ".join(argv)
        for needle, error in self.fail.items():
            if needle in words:
                return subprocess.CompletedProcess(argv, 1, "", error)
        if argv[-1] == "info":
            return subprocess.CompletedProcess(argv, 0, json.dumps(self.info), "")
        if argv[0].endswith("psql"):
            return subprocess.CompletedProcess(argv, 0, "0|120|2|1796578002.5|1796577000\n", "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def commands(self):
        return [call[-1] for call in self.calls]


def settings(member_name="pg2", **extra):
    return pr.Settings(stanza="mlflow-ha", member=member_name, patroni_url="https://10.0.0.12:8008",
                       repos=[{"index": 1, "name": "local"}, {"index": 2, "name": "offsite"}], **extra)


HEALTHY = {"members": [LEADER, member("pg2", "replica", "streaming")]}
# The run id the golden info's differential backups were annotated with.
RUN_ID = "e44d064c6c544feda18b9cf35f1a1d6a"


def test_a_member_that_is_not_chosen_runs_nothing():
    fake = FakeCommands()
    code, result = pr.Operations(settings("pg1"), fake, clock=lambda: 1000.0).backup("full", HEALTHY)
    assert code == pr.EXIT_OK and fake.calls == []
    assert result["ran"] is False and result["chosen"] == "pg2"


def test_the_chosen_member_checks_then_backs_up_each_repository_from_the_standby():
    fake = FakeCommands()
    code, result = pr.Operations(settings(), fake, clock=lambda: 1000.0).backup(
        "diff", HEALTHY, annotations=["reason=pre-migration"], run_id=RUN_ID)
    assert code == pr.EXIT_OK and result["ok"] and result["check_ok"]
    assert fake.commands() == ["check", "backup", "backup", "info"]
    check, first, second = fake.calls[:3]
    assert check[:2] == ["/usr/bin/pgbackrest", "--stanza=mlflow-ha"] and "--backup-standby" in check
    for call, repo in ((first, "--repo=1"), (second, "--repo=2")):
        assert {repo, "--type=diff", "--backup-standby", "--annotation=mlflow-ha-run=" + RUN_ID,
                "--annotation=reason=pre-migration"} <= set(call)
    assert [(r["repo"], r["label"]) for r in result["repos"]] == [
        ("local", "20261206-172542F_20261206-172635D"), ("offsite", "20261206-172551F_20261206-172639D")]


def test_the_leader_backs_up_without_the_standby_option():
    fake = FakeCommands()
    code, result = pr.Operations(settings("pg1"), fake).backup("full", {"members": [LEADER]})
    assert code == pr.EXIT_OK and result["standby"] is False
    assert all("--no-backup-standby" in call for call in fake.calls[:3])


def test_a_failed_check_backs_up_nothing():
    fake = FakeCommands(fail={" check": "ERROR: [082]: WAL segment 0000000100000000000000A1 was not archived"})
    code, result = pr.Operations(settings(), fake).backup("full", HEALTHY)
    assert code == pr.EXIT_FAILED and fake.commands() == ["check"]
    assert result["check_ok"] is False and result["ok"] is False
    assert "was not archived" in result["error"]


def test_one_repository_failing_does_not_keep_the_next_one_from_its_backup():
    fake = FakeCommands(fail={"--repo=1": "ERROR: [101]: [500] Internal Server Error"})
    code, result = pr.Operations(settings(), fake).backup("full", HEALTHY)
    assert code == pr.EXIT_FAILED and result["ok"] is False
    assert fake.commands() == ["check", "backup", "backup", "info"]
    assert [r["ok"] for r in result["repos"]] == [False, True]
    assert result["repos"][0]["error"] == "ERROR: [101]: [500] Internal Server Error"


def test_nobody_to_back_up_is_an_error_of_its_own():
    code, result = pr.Operations(settings(), FakeCommands()).backup("full", {"members": []})
    assert code == pr.EXIT_NOBODY and result["chosen"] is None


def test_here_backs_up_on_this_member_although_another_would_be_chosen():
    cluster = {"members": [LEADER, member("pg2", "sync_standby", "streaming", 0),
                           member("pg3", "replica", "streaming", 0)]}
    assert pr.choose_member(cluster, 16 << 20).member == "pg3"
    fake = FakeCommands()
    code, result = pr.Operations(settings("pg2"), fake).backup("full", cluster, run_id=RUN_ID, here=True)
    assert code == pr.EXIT_OK and result["ran"] and result["chosen"] == "pg2" and result["standby"] is True
    assert fake.commands() == ["check", "backup", "backup", "info"]
    assert "asked to back up here" in result["reason"]


def test_here_on_the_leader_backs_up_without_the_standby_option():
    fake = FakeCommands()
    code, result = pr.Operations(settings("pg1"), fake).backup("diff", HEALTHY, here=True)
    assert code == pr.EXIT_OK and result["ran"] and result["standby"] is False
    assert all("--no-backup-standby" in call for call in fake.calls[:3])


@pytest.mark.parametrize(("cluster", "why"), [
    ({"members": [LEADER, member("pg2", "replica", "streaming", 64 << 20)]},
     "pg2 cannot back up: it is replica/streaming"),
    ({"members": [LEADER, member("pg2", "replica", "stopped", None)]}, "with a lag of unknown"),
    ({"members": [LEADER]}, "pg2 is not in the cluster view"),
])
def test_here_refuses_a_member_that_cannot_back_up(cluster, why):
    fake = FakeCommands()
    code, result = pr.Operations(settings("pg2"), fake).backup("full", cluster, here=True)
    assert code == pr.EXIT_NOBODY and fake.calls == [] and result["ran"] is False
    assert why in result["reason"]


def test_here_with_standby_backups_off_only_the_leader_may():
    choice = pr.choose_here(HEALTHY, "pg2", 16 << 20, backup_standby=False)
    assert choice.member is None and "with standby backups on" in choice.reason
    assert pr.choose_here(HEALTHY, "pg1", 16 << 20, backup_standby=False).member == "pg1"


@pytest.fixture
def patroni_down(tmp_path, monkeypatch):
    """A settings file (state in tmp_path) for a member whose own Patroni does not answer; its path."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**settings().__dict__, "state_dir": str(tmp_path)}))

    def down(_settings, timeout=5.0):
        raise OSError("connection refused")

    monkeypatch.setattr(pr, "fetch_cluster", down)
    return path


def test_here_fails_when_this_members_patroni_does_not_answer(patroni_down, capsys):
    path = patroni_down
    assert pr.main(["--settings", str(path), "backup", "--type", "full", "--here"]) == pr.EXIT_NOBODY
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ran"] is False


def test_main_here_prints_the_labels_on_its_last_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**settings("pg1").__dict__, "state_dir": str(tmp_path)}))
    monkeypatch.setattr(pr, "run_command", FakeCommands())
    monkeypatch.setattr(pr, "fetch_cluster", lambda s, timeout=5.0: HEALTHY)
    assert pr.main(["--settings", str(path), "backup", "--type", "diff", "--here", "--run-id", RUN_ID,
                    "--annotation", "reason=pre-migration"]) == pr.EXIT_OK
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["member"] == result["chosen"] == "pg1" and result["run_id"] == RUN_ID
    assert [r["label"] for r in result["repos"]] == ["20261206-172542F_20261206-172635D",
                                                     "20261206-172551F_20261206-172639D"]


# ---------------------------------------------------------------------------------------------------------------
# How far a restore can go (the restore playbook's range check)

# `pgbackrest --output=json --recurse repo-ls archive/<stanza>/15-1` of pgBackRest 2.45 (a posix repository on this
# machine): three segments pushed at 1796580353, ..360 and ..361, and the backup's .backup file.
REPO_LS = json.loads((Path(__file__).parent / "golden" / "pgbackrest-2.45-repo-ls.json").read_text())


def test_the_newest_wal_file_of_an_archive_listing():
    path, stamp = pr.newest_wal(REPO_LS)
    assert path.startswith("0000000100000000/000000010000000000000003-") and stamp == 1796580361
    partial_name = "0000000200000000/000000020000000000000005.partial-" + "a" * 40 + ".zst"
    partial = {partial_name: {"type": "file", "time": 1796580400},
               "00000002.history": {"type": "file", "time": 1796580500}}
    assert pr.newest_wal({**REPO_LS, **partial})[1] == 1796580400  # a timeline's history file is no WAL
    assert pr.newest_wal({}) == (None, None)


def test_the_oldest_backup_and_the_archive_ids_per_repository():
    assert pr.oldest_backup_stop(INFO, "mlflow-ha", 1) == 1796577950
    assert pr.oldest_backup_stop(INFO, "mlflow-ha", 2) == 1796577959
    assert pr.oldest_backup_stop(INFO, "mlflow-ha", 3) is None
    assert pr.archive_ids(INFO, "mlflow-ha", 2) == ["15-1"]


@pytest.mark.parametrize(("target", "ok", "words"), [
    (None, True, "the latest state in repository local (backups from 2026-12-06 17:25:50+00)"),
    (1796578000, True, "is within 2026-12-06 17:25:50+00 .. 2026-12-06 18:05:01+00"),
    (1796577949, False, "2026-12-06 17:25:49+00 is before the oldest backup in repository local, which stopped at "
                        "2026-12-06 17:25:50+00"),
    (1796580302, False, "is after the newest WAL in repository local (pushed at 2026-12-06 18:06:01+00, less a margin "
                        "of 60 s): restorable times are 2026-12-06 17:25:50+00 .. 2026-12-06 18:05:01+00"),
])
def test_a_target_is_checked_against_the_oldest_backup_and_the_newest_wal(target, ok, words):
    got_ok, reason = pr.check_target(1796577950, 1796580361, target, 60, "local")
    assert got_ok is ok and words in reason


def test_no_backup_or_no_wal_leaves_nothing_to_restore():
    assert pr.check_target(None, 1796580361, None, 60, "offsite") == (
        False, "repository offsite holds no good backup: nothing to restore from")
    assert not pr.check_target(1796577950, None, 1796578000, 60, "offsite")[0]
    ok, reason = pr.check_target(1796580360, 1796580361, 1796580360, 60, "offsite")
    assert not ok and "no point in time can be restored from repository offsite yet" in reason


@pytest.mark.parametrize(("text", "stamp"), [
    ("2026-12-06 17:55:00+00", 1796579700.0), ("2026-12-06T17:55:00Z", 1796579700.0),
    ("2026-12-06 18:55:00+01:00", 1796579700.0), ("2026-12-06 17:55:00.5+00", 1796579700.5)])
def test_restore_targets_carry_their_zone(text, stamp):
    assert pr.parse_time(text) == stamp


def test_a_target_without_a_zone_is_refused():
    with pytest.raises(ValueError, match="has no time zone"):
        pr.parse_time("2026-12-06 17:55:00")


class FakeRange(FakeCommands):
    def __call__(self, argv):
        if "repo-ls" in argv:
            self.calls.append(list(argv))
            return subprocess.CompletedProcess(argv, 0, json.dumps(REPO_LS), "")
        return super().__call__(argv)


def test_range_asks_info_and_lists_each_archive_of_the_repository():
    fake = FakeRange()
    code, result = pr.Operations(settings(), fake).restore_range({"index": 2, "name": "offsite"}, 1796578000.0)
    assert code == pr.EXIT_OK and result["ok"]
    assert result["oldest_backup_stop"] == 1796577959 and result["newest_wal_time"] == 1796580361
    assert result["latest_target"] == 1796580301 and result["newest_wal"].startswith("15-1/0000000100000000/")
    assert ["--repo=2", "repo-ls", "archive/mlflow-ha/15-1"] == fake.calls[1][-3:]
    code, result = pr.Operations(settings(), FakeRange()).restore_range({"index": 2, "name": "offsite"}, 1.0)
    assert code == pr.EXIT_OUTSIDE and "before the oldest backup in repository offsite" in result["reason"]


def test_range_from_the_command_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**settings().__dict__, "state_dir": str(tmp_path)}))
    monkeypatch.setattr(pr, "run_command", FakeRange())
    assert pr.main(["--settings", str(path), "range", "--target", "2030-01-01 00:00:00+00"]) == pr.EXIT_OUTSIDE
    assert "after the newest WAL in repository local" in json.loads(capsys.readouterr().out)["reason"]
    assert pr.main(["--settings", str(path), "range", "--target", "yesterday"]) == pr.EXIT_OUTSIDE
    assert json.loads(capsys.readouterr().out)["reason"].startswith("restore target ")
    assert pr.main(["--settings", str(path), "range"]) == pr.EXIT_OK


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def samples(page_text):
    found = {}
    for line in page_text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_the_metrics_page_shows_each_repository_and_backup_type():
    page, problems = pr.Operations(settings(), FakeCommands(), clock=lambda: 1796578100.0).metrics({})
    got = samples(page.render())
    assert problems == []
    assert got['mlflow_ha_pgbackrest_up{stanza="mlflow-ha"}'] == 1
    for repo in ("local", "offsite"):
        assert got['mlflow_ha_pgbackrest_repo_status_code{stanza="mlflow-ha",repo="%s"}' % repo] == 0
        assert got['mlflow_ha_pgbackrest_backups{stanza="mlflow-ha",repo="%s",type="full"}' % repo] == 1
    assert got['mlflow_ha_pgbackrest_last_backup_timestamp_seconds{stanza="mlflow-ha",repo="local",type="diff"}'] \
        == 1796577998
    assert got['mlflow_ha_pgbackrest_last_backup_timestamp_seconds{stanza="mlflow-ha",repo="offsite",type="full"}'] \
        == 1796577959
    assert got['mlflow_ha_pgbackrest_oldest_backup_timestamp_seconds{stanza="mlflow-ha",repo="local"}'] == 1796577950
    assert got['mlflow_ha_pgbackrest_archiver_failed_total{stanza="mlflow-ha"}'] == 2
    assert got['mlflow_ha_pgbackrest_archiver_primary{stanza="mlflow-ha"}'] == 1
    assert got['mlflow_ha_pgbackrest_archiver_last_failed_timestamp_seconds{stanza="mlflow-ha"}'] == 1796577000


def test_a_repository_pgbackrest_cannot_read_is_status_99():
    info = json.loads(json.dumps(INFO))
    info[0]["repo"] = [r for r in info[0]["repo"] if r["key"] == 1]  # repo2 missing from the answer
    page, _problems = pr.Operations(settings(), FakeCommands(info=info)).metrics({})
    assert samples(page.render())['mlflow_ha_pgbackrest_repo_status_code{stanza="mlflow-ha",repo="offsite"}'] == 99


def test_when_info_fails_the_page_still_says_so():
    fake = FakeCommands(fail={"info": "ERROR: [037]: unable to read /etc/pgbackrest/pgbackrest.conf"})
    page, problems = pr.Operations(settings(), fake).metrics({})
    got = samples(page.render())
    assert got['mlflow_ha_pgbackrest_up{stanza="mlflow-ha"}'] == 0
    assert not [name for name in got if "repo_status" in name]
    assert any("pgbackrest info failed" in p for p in problems)


def test_the_last_run_on_this_member_is_exported():
    runs = {"full": {"ran": True, "ok": False, "check_ok": False, "time": 1796000000}}
    page, _problems = pr.Operations(settings(), FakeCommands()).metrics(runs)
    got = samples(page.render())
    assert got['mlflow_ha_pgbackrest_run_success{stanza="mlflow-ha",type="full"}'] == 0
    assert got['mlflow_ha_pgbackrest_check_success{stanza="mlflow-ha",type="full"}'] == 0
    assert got['mlflow_ha_pgbackrest_run_timestamp_seconds{stanza="mlflow-ha",type="full"}'] == 1796000000


@pytest.mark.parametrize("row", ["", "1|2|3", "f|1|0|0|0"])
def test_an_unexpected_archiver_row_is_a_problem_not_a_crash(row):
    page = pr.Exposition(whole=True)
    assert "unexpected pg_stat_archiver row" in pr.archiver_metrics(page, row, "mlflow-ha")


def test_main_writes_the_state_of_a_run_and_the_page(tmp_path, monkeypatch, capsys):
    textfile = tmp_path / "pgbackrest.prom"
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**settings().__dict__, "state_dir": str(tmp_path), "textfile": str(textfile),
                                "unknown_key": "ignored"}))
    fake = FakeCommands()
    monkeypatch.setattr(pr, "run_command", fake)
    monkeypatch.setattr(pr, "fetch_cluster", lambda s, timeout=5.0: HEALTHY)
    assert pr.main(["--settings", str(path), "choose"]) == pr.EXIT_OK
    assert json.loads(capsys.readouterr().out)["chosen"] == "pg2"
    assert pr.main(["--settings", str(path), "backup", "--type", "full"]) == pr.EXIT_OK
    state = json.loads((tmp_path / "last-full.json").read_text())
    assert state["ran"] and state["ok"] and len(state["repos"]) == 2
    assert pr.main(["--settings", str(path), "metrics"]) == pr.EXIT_OK
    assert 'mlflow_ha_pgbackrest_run_success{stanza="mlflow-ha",type="full"} 1' in textfile.read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_a_member_whose_patroni_does_not_answer_does_not_back_up(patroni_down, tmp_path, capsys):
    path = patroni_down
    assert pr.main(["--settings", str(path), "backup", "--type", "diff"]) == pr.EXIT_OK
    assert "does not back up" in capsys.readouterr().out
    assert not (tmp_path / "last-diff.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# The role's configuration

# Every option name of pgBackRest 2.45 (its src/build/config/config.yaml, tag release/2.45), indexed options without
# their index (repo1-path is repo-path, pg2-host is pg-host).
PGBACKREST_245_OPTIONS = set("""
config config-include-path config-path dry-run force online output set stanza target target-action target-exclusive
target-timeline type verbose exec-id process remote-type cipher-pass filter ignore-missing raw recurse sort
archive-timeout beta buffer-size cmd cmd-ssh compress compress-level compress-level-network compress-type db-timeout
delta io-timeout job-retry job-retry-interval lock-path neutral-umask process-max protocol-timeout sck-block
sck-keep-alive spool-path tcp-keep-alive-count tcp-keep-alive-idle tcp-keep-alive-interval tls-server-ca-file
tls-server-cert-file tls-server-key-file tls-server-auth tls-server-address tls-server-port log-level-console
log-level-file log-level-stderr log-path log-subprocess log-timestamp archive-async archive-get-queue-max
archive-header-check archive-missing-retry archive-push-queue-max annotation archive-check archive-copy
archive-mode-check backup-standby checksum-page exclude expire-auto manifest-save-threshold resume start-fast stop-auto
archive-mode db-exclude db-include link-all link-map tablespace-map tablespace-map-all recovery-option pg pg-database
pg-local pg-host pg-host-cert-file pg-host-key-file pg-host-ca-file pg-host-ca-path pg-host-cmd pg-host-config
pg-host-config-include-path pg-host-config-path pg-host-port pg-host-user pg-host-type pg-path pg-port pg-socket-path
pg-user pg-version-force repo repo-local repo-type repo-azure-account repo-azure-container repo-azure-endpoint
repo-azure-key repo-azure-key-type repo-azure-uri-style repo-bundle repo-bundle-size repo-bundle-limit repo-block
repo-block-size-map repo-block-age-map repo-block-checksum-size-map repo-block-size-super repo-block-size-super-full
repo-cipher-pass repo-cipher-type repo-gcs-bucket repo-gcs-endpoint repo-gcs-key repo-gcs-key-type repo-hardlink
repo-host-type repo-host repo-host-cert-file repo-host-key-file repo-host-ca-file repo-host-ca-path repo-host-cmd
repo-host-config repo-host-config-include-path repo-host-config-path repo-host-port repo-host-user repo-path
repo-retention-archive repo-retention-archive-type repo-retention-diff repo-retention-full-type repo-retention-full
repo-retention-history repo-s3-bucket repo-s3-endpoint repo-s3-key repo-s3-key-secret repo-s3-key-type
repo-s3-kms-key-id repo-s3-region repo-s3-role repo-s3-token repo-s3-uri-style repo-storage-verify-tls
repo-storage-ca-file repo-storage-ca-path repo-storage-host repo-storage-port repo-storage-upload-chunk-size
""".split())


def templar(host="pg2", **extra):
    variables = {**DEFAULTS, **role_vars("pgbackrest"), "inventory_hostname": host,
                 "groups": {"postgres": list(MEMBERS)}, "hostvars": {}, "ansible_managed": "Ansible managed",
                 "pgbackrest_repos": REPOS, "pgbackrest_address": MEMBERS[host],
                 # What the filters mlops.mlflow_ha.group_addresses and url_host give (tests/unit/test_addresses.py).
                 "_pgbackrest_member_servers": [{"name": h, "address": a} for h, a in MEMBERS.items()],
                 "_pgbackrest_patroni_url": "https://%s:8008" % MEMBERS[host], **extra}
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def value(name, **extra):
    return templar(**extra).template(trust_as_template("{{ %s }}" % name))


def rendered_conf(**extra):
    return templar(**extra).template(trust_as_template((ROLE / "templates" / "pgbackrest.conf.j2").read_text()))


def ini(text):
    """[(section, key, value)] in file order (repeated keys kept, as pgBackRest reads them)."""
    section, entries = None, []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            section = header.group(1)
            continue
        key, _sep, val = line.partition("=")
        entries.append((section, key, val))
    return entries


def options(text, section):
    return {k: v for s, k, v in ini(text) if s == section}


def test_every_option_is_one_pgbackrest_245_knows():
    for section, key, _value in ini(rendered_conf()):
        assert re.sub(r"^(repo|pg)[0-9]+-", r"\1-", key) in PGBACKREST_245_OPTIONS, (section, key)


def test_no_option_is_given_twice_but_the_tls_clients():
    keys = [(s, k) for s, k, _value in ini(rendered_conf()) if k != "tls-server-auth"]
    assert len(keys) == len(set(keys))


def test_this_member_is_pg1_and_the_others_follow_in_inventory_order_over_tls():
    stanza = options(rendered_conf(), "mlflow-ha")
    assert stanza["pg1-path"] == "/var/lib/postgresql/15/mlflow-ha"
    assert stanza["pg1-socket-path"] == "/var/run/postgresql"
    assert "pg1-host" not in stanza, "pg1 is the local PostgreSQL, through its socket"
    assert (stanza["pg2-host"], stanza["pg3-host"]) == ("10.0.0.11", "10.0.0.13")
    for n in (2, 3):
        assert stanza["pg%d-host-type" % n] == "tls"
        assert stanza["pg%d-host-port" % n] == "8432"
        assert stanza["pg%d-host-cert-file" % n] == "/etc/pgbackrest/tls/pgbackrest.crt"
        assert stanza["pg%d-path" % n] == stanza["pg1-path"]
    assert "pg4-host" not in stanza


def test_the_tls_server_admits_the_members_for_this_stanza_only():
    text = rendered_conf()
    glob = options(text, "global")
    assert glob["tls-server-address"] == "10.0.0.12"
    assert [v for s, k, v in ini(text) if k == "tls-server-auth"] == ["pg1=mlflow-ha", "pg2=mlflow-ha", "pg3=mlflow-ha"]
    assert value("_pgbackrest_cert_sans") == ["DNS:pg2", "DNS:10.0.0.12", "IP:10.0.0.12"], \
        "pgBackRest 2.45 matches a peer's address against the DNS names only"


def test_every_repository_is_encrypted_with_its_own_passphrase_and_verified():
    glob = options(rendered_conf(), "global")
    assert glob["repo1-cipher-type"] == glob["repo2-cipher-type"] == "aes-256-cbc"
    assert glob["repo1-cipher-pass"] == REPOS[0]["cipher_pass"]
    assert glob["repo2-cipher-pass"] == REPOS[1]["cipher_pass"]
    assert glob["repo1-storage-ca-file"] == "/etc/pgbackrest/tls/ca.crt", "the collection CA by default"
    assert "repo2-storage-ca-file" not in glob, "ca_file: system leaves OpenSSL's store"
    assert "repo1-storage-verify-tls" not in glob, "verification is never turned off"
    assert (glob["repo1-s3-endpoint"], glob["repo1-storage-port"], glob["repo1-s3-uri-style"]) == \
        ("10.0.0.40", "9000", "path")
    assert (glob["repo2-storage-port"], glob["repo2-s3-uri-style"], glob["repo2-retention-full"]) == \
        ("443", "host", "4")
    assert (glob["repo1-retention-full"], glob["repo1-retention-diff"]) == ("2", "6")


def test_a_repository_ca_file_may_be_a_path():
    glob = options(rendered_conf(pgbackrest_repos=[{**REPOS[0], "ca_file": "/etc/ssl/site-ca.pem"}]), "global")
    assert glob["repo1-storage-ca-file"] == "/etc/ssl/site-ca.pem"


def test_wal_archiving_is_asynchronous_with_a_queue_limit():
    glob = options(rendered_conf(), "global")
    assert (glob["archive-async"], glob["spool-path"], glob["archive-push-queue-max"]) == \
        ("y", "/var/spool/pgbackrest", "4GiB")
    glob = options(rendered_conf(pgbackrest_archive_async=False, pgbackrest_archive_push_queue_max=""), "global")
    assert glob["archive-async"] == "n" and "archive-push-queue-max" not in glob


def test_extra_global_options_are_written_in_order():
    glob = options(rendered_conf(pgbackrest_global_options={"repo1-bundle": "y", "io-timeout": 120}), "global")
    assert (glob["repo1-bundle"], glob["io-timeout"]) == ("y", "120")


def test_the_runner_settings_hold_no_secret():
    config = value("_pgbackrest_runner_config")
    assert config["repos"] == [{"index": 1, "name": "local"}, {"index": 2, "name": "offsite"}]
    assert (config["member"], config["patroni_url"], config["patroni_ca"]) == \
        ("pg2", "https://10.0.0.12:8008", "/etc/patroni/tls/ca.crt")
    assert config["max_lag"] == 16777216 and config["backup_standby"] is True
    dumped = json.dumps(config)
    for repo in REPOS:
        assert repo["cipher_pass"] not in dumped and repo["s3_key_secret"] not in dumped
    assert value("_pgbackrest_runner_config", pgbackrest_patroni_tls=False)["patroni_ca"] == ""


def problems(repos):
    return value("_pgbackrest_repo_problems", pgbackrest_repos=repos)


def test_good_repositories_have_no_problem():
    assert problems(REPOS) == []


def test_missing_settings_are_named_and_no_secret_is_shown():
    found = problems([{"name": "local", "s3_endpoint": "10.0.0.40", "s3_bucket": "b", "s3_key_secret": "x" * 30},
                      {"name": "nas", "type": "posix", "cipher_pass": "short-secret"}])
    assert found == ["repo1 (local): s3_key is not set", "repo1 (local): cipher_pass is not set",
                     "repo2 (nas): path is not set",
                     "repo2 (nas): cipher_pass is shorter than 20 characters (use e.g. openssl rand -base64 48)"]
    assert "short-secret" not in json.dumps(found) and "x" * 30 not in json.dumps(found)


def test_a_second_repository_must_be_a_second_place():
    found = problems([REPOS[0], {**REPOS[0], "name": "again"}])
    assert found == ["two repositories are the same place (endpoint, bucket, path): a second copy needs a second place"]
    assert problems([REPOS[0], {**REPOS[0], "name": "again", "s3_bucket": "other"}]) == []


def test_names_types_and_buckets_are_checked():
    found = problems([{**REPOS[0], "s3_bucket": "pg.backups"}, {**REPOS[1], "name": "local"},
                      {**REPOS[1], "name": "tape", "type": "tape"}])
    assert "repo1 (local): pgBackRest refuses a bucket name with dots when it verifies TLS" in found
    assert "repository names repeat: local, local, tape" in found
    assert "repo3 (tape): type must be s3 or posix, got tape" in found


def test_backup_units_one_per_type():
    units = value("_pgbackrest_backup_units")
    assert units == [{"type": "full", "schedule": "Sun *-*-* 01:00:00"},
                     {"type": "diff", "schedule": "Mon..Sat *-*-* 01:00:00"}]
    timer = templar(_pgbackrest_unit=units[0]).template(trust_as_template(
        (ROLE / "templates" / "mlflow-ha-pgbackrest-backup.timer.j2").read_text()))
    assert "OnCalendar=Sun *-*-* 01:00:00" in timer and "Persistent=false" in timer
    assert "RandomizedDelaySec" not in timer, "every member must decide at the same second"
    service = templar(_pgbackrest_unit=units[0]).template(trust_as_template(
        (ROLE / "templates" / "mlflow-ha-pgbackrest-backup.service.j2").read_text()))
    assert "User=postgres" in service
    assert "pgbackrest_runner.py --settings /etc/pgbackrest/mlflow-ha-runner.json backup --type full" in service


def test_the_metrics_page_reaches_the_textfile_directory_in_one_rename():
    service = templar().template(trust_as_template(
        (ROLE / "templates" / "mlflow-ha-pgbackrest-metrics.service.j2").read_text()))
    post = next(line for line in service.splitlines() if line.startswith("ExecStartPost=+"))
    assert "/var/lib/prometheus/node-exporter/mlflow_ha_pgbackrest.prom.tmp" in post
    assert post.endswith("mv /var/lib/prometheus/node-exporter/mlflow_ha_pgbackrest.prom.tmp "
                         "/var/lib/prometheus/node-exporter/mlflow_ha_pgbackrest.prom'")


def test_every_task_that_touches_a_secret_logs_nothing():
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    conf = next(t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "pgbackrest.conf.j2")
    assert conf["no_log"] is True and conf["diff"] is False
    assert (conf["ansible.builtin.template"]["owner"], conf["ansible.builtin.template"]["group"],
            conf["ansible.builtin.template"]["mode"]) == ("root", "postgres", "0640")


# ---------------------------------------------------------------------------------------------------------------
# The patroni role's side

PATRONI_DEFAULTS = yaml.safe_load((ROOT / "roles" / "patroni" / "defaults" / "main.yml").read_text())


def patroni_templar(**extra):
    variables = {**PATRONI_DEFAULTS, **role_vars("patroni"), "inventory_hostname": "pg1",
                 "ansible_managed": "Ansible managed", "patroni_address": "10.0.0.11",
                 "_patroni_member_servers": [{"name": h, "address": a} for h, a in MEMBERS.items()],
                 "_patroni_etcd_hosts": ["10.0.0.11:2379"], "patroni_restapi_password": "p",
                 "patroni_superuser_password": "p", "patroni_replication_password": "p",
                 "patroni_rewind_password": "p", **extra}
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def patroni_config(**extra):
    text = (ROOT / "roles" / "patroni" / "templates" / "config.yml.j2").read_text()
    return patroni_templar(**extra).template(trust_as_template(text))


def test_with_pgbackrest_off_patroni_gets_nothing_of_it():
    text = patroni_config()
    assert "pgbackrest" not in text and "archive" not in text and "restore_command" not in text
    config = yaml.safe_load(text)
    assert config["postgresql"]["create_replica_methods"] == ["basebackup"]
    assert "recovery_conf" not in config["postgresql"]
    parameters = patroni_templar().template(trust_as_template("{{ _patroni_dynamic_config }}"))["postgresql"][
        "parameters"]
    assert not [name for name in parameters if name.startswith("archive")]


def test_with_pgbackrest_on_the_dcs_archives_and_no_member_reads_the_archive():
    on = {"patroni_pgbackrest": True}
    parameters = patroni_templar(**on).template(trust_as_template("{{ _patroni_dynamic_config }}"))["postgresql"][
        "parameters"]
    assert parameters["archive_mode"] == "on"
    assert parameters["archive_command"] == ("/usr/bin/python3 /usr/local/lib/mlflow-ha/pgbackrest/pgbackrest_runner.py"
                                             " --stanza=mlflow-ha archive-push %p")
    assert parameters["archive_timeout"] == 300
    # The patroni role names the runner the pgbackrest role installs: one path, written in both roles.
    assert parameters["archive_command"].split()[1] == render("pgbackrest", "_pgbackrest_program")
    config = yaml.safe_load(patroni_config(**on))
    pg = config["postgresql"]
    # A former leader's WAL archived before pg_rewind can run past the new timeline's switch point: replicas come
    # from the leader only (docs/postgres-ha.md).
    assert "recovery_conf" not in pg and "pgbackrest" not in pg
    assert pg["create_replica_methods"] == ["basebackup"]
    assert config["bootstrap"]["dcs"]["postgresql"]["parameters"]["archive_mode"] == "on"


def test_the_inventorys_parameters_still_win():
    on = {"patroni_pgbackrest": True, "patroni_postgresql_parameters": {"archive_timeout": 60}}
    parameters = patroni_templar(**on).template(trust_as_template("{{ _patroni_dynamic_config }}"))["postgresql"][
        "parameters"]
    assert parameters["archive_timeout"] == 60


# ---------------------------------------------------------------------------------------------------------------
# archive_command's guard: a former leader's segment past a later timeline's switch point stays out of the archive

# 00000003.history as PostgreSQL writes it: timeline 3 left timeline 2 at 0/C097010 (the lab's case).
HISTORY_3 = "1\t0/3000000\tno recovery target specified\n\n2\t0/C097010\tno recovery target specified\n"


class FakeArchive:
    """archive-get of history files from a dict, archive-push recorded."""

    def __init__(self, histories, get_error=None):
        self.histories = histories
        self.get_error = get_error
        self.pushed = []

    def __call__(self, argv):
        if "archive-get" in argv:
            name, dest = argv[-2], argv[-1]
            if self.get_error:
                return subprocess.CompletedProcess(argv, 45, "", self.get_error)
            if name not in self.histories:
                return subprocess.CompletedProcess(argv, 1, "", "unable to find %s in the archive" % name)
            Path(dest).write_text(self.histories[name])
            return subprocess.CompletedProcess(argv, 0, "", "")
        if "archive-push" in argv:
            self.pushed.append(argv[-1])
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(argv)


def test_segment_names_map_to_their_timeline_and_lsn_range():
    assert pr.segment_span("00000002000000000000000C") == (2, 0x0C000000, 0x0D000000)
    assert pr.segment_span("0000000300000001000000FF") == (3, (1 << 32) | 0xFF000000, 2 << 32)
    for other in ("00000003.history", "00000002000000000000000C.partial", "000000010000000000000002.00000028.backup"):
        assert pr.segment_span(other) is None


def test_the_segment_holding_the_switch_point_or_after_it_is_refused():
    histories = {3: HISTORY_3}
    assert "timeline 3 left timeline 2 at 0/C097010" in pr.past_switch_point("00000002000000000000000C", histories)
    assert pr.past_switch_point("00000002000000000000000D", histories)
    # before the switch point, on the shared history: archived as always
    assert pr.past_switch_point("00000002000000000000000B", histories) is None
    # the new timeline's own segments, and a timeline the history does not name
    assert pr.past_switch_point("00000003000000000000000C", histories) is None
    assert pr.past_switch_point("00000001000000000000000C", {3: "2\t0/C097010\tx\n"}) is None
    # a switch exactly at the segment's end leaves the whole segment on the shared history
    assert pr.past_switch_point("00000002000000000000000B", {3: "2\t0/C000000\tx\n"}) is None


def test_archive_push_refuses_a_former_leaders_segment_and_pushes_the_rest():
    archive = FakeArchive({"00000003.history": HISTORY_3})
    ops = pr.Operations(settings("pg1"), archive)
    code, message = ops.archive_push("pg_wal/00000002000000000000000C")
    assert code == pr.EXIT_FAILED and message.startswith("refused: ") and archive.pushed == []
    for fine in ("pg_wal/00000002000000000000000B", "pg_wal/00000003000000000000000C", "pg_wal/00000003.history",
                 "pg_wal/00000002000000000000000C.partial"):
        assert ops.archive_push(fine) == (0, "")
    assert archive.pushed == ["pg_wal/00000002000000000000000B", "pg_wal/00000003000000000000000C",
                              "pg_wal/00000003.history", "pg_wal/00000002000000000000000C.partial"]


def test_archive_push_skips_a_leftover_of_this_members_own_past_as_the_dead_branchs_leader(tmp_path):
    """CI, 2026-12-07: a former leader rewound during the chaos test kept its refused timeline-3 segment .ready and
    led again on timeline 7 after the etcd restore: refused forever, it blocked every later segment."""
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    (wal / "00000003.history").write_text(HISTORY_3)
    segment = wal / "00000002000000000000000C"
    archive = FakeArchive({"00000003.history": HISTORY_3})
    ops = pr.Operations(settings("pg1"), archive)
    # still on timeline 2 here (no later history file in its pg_wal): two leaders, refused
    (wal / "00000003.history").rename(wal / "elsewhere")
    code, message = ops.archive_push(str(segment))
    assert code == pr.EXIT_FAILED and message.startswith("refused: ")
    # on timeline 3 now: a leftover, answered as done without pushing it
    (wal / "elsewhere").rename(wal / "00000003.history")
    code, message = ops.archive_push(str(segment))
    assert code == 0 and message.startswith("skipped, not archived: ") and "on timeline 3 now" in message
    assert archive.pushed == []
    assert pr.newest_local_timeline(str(wal)) == 3
    assert pr.newest_local_timeline(str(tmp_path / "missing")) is None


def test_archive_push_reads_every_later_timeline_and_stops_at_the_first_missing_one():
    archive = FakeArchive({"00000002.history": "1\t0/3000000\tx\n", "00000003.history": HISTORY_3})
    calls = []
    ops = pr.Operations(settings("pg1"), lambda argv: calls.append(argv) or archive(argv))
    assert ops.archive_push("pg_wal/000000010000000000000002") == (0, "")
    asked = [call[-2] for call in calls if "archive-get" in call]
    assert asked == ["00000002.history", "00000003.history", "00000004.history"]
    assert all("--no-archive-async" in call for call in calls if "archive-get" in call)
    code, message = ops.archive_push("pg_wal/000000010000000000000003")
    assert code == pr.EXIT_FAILED and "timeline 2 left timeline 1 at 0/3000000" in message


def test_archive_push_pushes_nothing_when_the_timelines_cannot_be_read():
    archive = FakeArchive({}, get_error="ERROR: [039]: HTTP request failed")
    code, message = pr.Operations(settings("pg1"), archive).archive_push("pg_wal/00000002000000000000000C")
    assert code == pr.EXIT_FAILED and "could not be read" in message and "HTTP request failed" in message
    assert archive.pushed == []
