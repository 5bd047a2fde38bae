"""Preflight checks fail fast with a sentence a human understands. Runs ansible-playbook on the controller
itself (connection local, preflight tags only): no containers, nothing installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "tests" / "preflight"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run(playbook: str, tags: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(PREFLIGHT / "inventory_even_etcd.yml"), str(PREFLIGHT / playbook),
           "--tags", tags, "-e", json.dumps(extra or {})]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not in this venv")


def test_even_etcd_member_count_is_refused():
    proc = run("etcd.yml", "etcd_preflight")
    assert proc.returncode != 0
    assert "etcd needs an odd number of members, got 2 (pg1, pg2)" in proc.stdout


def test_missing_passwords_are_named():
    proc = run("patroni.yml", "patroni_preflight", {"patroni_superuser_password": "set"})
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert ("patroni: patroni_replication_password, patroni_rewind_password, patroni_restapi_password must be set"
            in out)
    assert "patroni_superuser_password," not in out, "a password that is set is not named"


def test_short_ca_passphrase_is_refused():
    proc = run("pki.yml", "pki_preflight", {"pki_ca_passphrase": "short"})
    assert proc.returncode != 0
    assert "pki_ca_passphrase is unset or shorter than 12 characters" in " ".join(proc.stdout.split())
    assert "short" not in proc.stdout.replace("shorter", ""), "the passphrase itself must not be printed"


def test_patroni_timing_rules():
    proc = run("patroni.yml", "patroni_preflight", {
        "patroni_superuser_password": "x", "patroni_replication_password": "x", "patroni_rewind_password": "x",
        "patroni_restapi_password": "x", "patroni_ttl": 10})
    assert proc.returncode != 0
    assert "ttl 10 must be >= 20 (Patroni's minimum)" in " ".join(proc.stdout.split())


PGBACKREST_REPO = {"name": "local", "s3_endpoint": "10.0.0.40", "s3_bucket": "pgbackrest", "s3_key": "k",
                   "s3_key_secret": "secret-that-must-not-show", "cipher_pass": "cipher-that-must-not-show-0123"}


def test_pgbackrest_needs_patroni_archiving():
    proc = run("pgbackrest.yml", "pgbackrest_preflight", {"pgbackrest_repos": [PGBACKREST_REPO]})
    assert proc.returncode != 0
    assert "pgbackrest: Patroni does not archive WAL with pgBackRest: set patroni_pgbackrest" in " ".join(
        proc.stdout.split())


def test_pgbackrest_names_what_a_repository_lacks_without_showing_secrets():
    lacking = {k: v for k, v in PGBACKREST_REPO.items() if k != "s3_key"}
    proc = run("pgbackrest.yml", "pgbackrest_preflight", {
        "patroni_pgbackrest": True,
        "pgbackrest_repos": [lacking, {**PGBACKREST_REPO, "name": "offsite", "cipher_pass": "too-short"}]})
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "repo1 (local): s3_key is not set" in out
    assert "repo2 (offsite): cipher_pass is shorter than 20 characters" in out
    for secret in ("secret-that-must-not-show", "cipher-that-must-not-show-0123", "too-short"):
        assert secret not in proc.stdout, "a secret of the inventory was printed"


def test_pgbackrest_without_repositories_is_refused():
    proc = run("pgbackrest.yml", "pgbackrest_preflight", {"patroni_pgbackrest": True})
    assert proc.returncode != 0
    assert "pgbackrest_repos is empty" in " ".join(proc.stdout.split())


def test_patroni_checks_the_pgbackrest_settings_when_they_are_on():
    proc = run("patroni.yml", "patroni_preflight", {
        "patroni_superuser_password": "x", "patroni_replication_password": "x", "patroni_rewind_password": "x",
        "patroni_restapi_password": "x", "patroni_pgbackrest": True, "patroni_pgbackrest_archive_timeout": 5})
    assert proc.returncode != 0
    assert "patroni_pgbackrest_archive_timeout (5) must be 0 (off) or at least 30 seconds" in " ".join(
        proc.stdout.split())


# --- site.yml: backups are on unless the inventory turns them off --------------------------------------------------

def run_site(extra: dict | None = None, with_backup_group: bool = False,
             pgbackrest: bool | None = False) -> subprocess.CompletedProcess:
    """site.yml's first play only (tags: always), on one controller-local host in every tier; mlflow_ha_pgbackrest
    as given (None: not set)."""
    inventories = ["-i", str(PREFLIGHT / "inventory_site.yml")]
    if with_backup_group:
        inventories += ["-i", str(PREFLIGHT / "inventory_site_backup.yml")]
    chosen = {} if pgbackrest is None else {"mlflow_ha_pgbackrest": pgbackrest}
    cmd = [str(ANSIBLE_PLAYBOOK), *inventories, str(ROOT / "playbooks" / "site.yml"), "--tags", "always",
           "-e", json.dumps({**chosen, **(extra or {})})]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def test_site_refuses_an_inventory_without_an_artifact_backup_host():
    proc = run_site()
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "site: no host is in the inventory group 'artifact_backup'" in out
    assert "or set mlflow_ha_artifact_backup to false to run without artifact backups" in out


def test_site_runs_without_artifact_backups_when_they_are_turned_off():
    proc = run_site({"mlflow_ha_artifact_backup": False})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_site_refuses_an_artifact_backup_host_without_a_target():
    proc = run_site(with_backup_group=True)
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "site: the artifact backup on h1 has no target: set artifact_backup_target_endpoint" in out


def test_site_accepts_an_artifact_backup_host_with_a_target():
    proc = run_site({"artifact_backup_target_endpoint": "https://backup.example.net"}, with_backup_group=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_site_refuses_an_inventory_that_says_nothing_about_database_backups():
    proc = run_site({"mlflow_ha_artifact_backup": False}, pgbackrest=None)
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "site: nothing would back up the registry's database: set mlflow_ha_pgbackrest to true" in out
    assert "or to false to run without database backups" in out


def test_a_run_before_a_restore_is_refused_with_tags_that_need_the_database():
    proc = run_site({"mlflow_ha_artifact_backup": False, "mlflow_ha_restore_pending": True})
    assert proc.returncode != 0
    assert "site: with mlflow_ha_restore_pending, run only what the restore needs" in " ".join(proc.stdout.split())


def test_patroni_refuses_an_etcd_ca_other_than_the_members_one():
    proc = run("patroni.yml", "patroni_preflight", {
        "patroni_superuser_password": "x", "patroni_replication_password": "x", "patroni_rewind_password": "x",
        "patroni_restapi_password": "x", "etcd_ca": "collection"})
    assert proc.returncode != 0
    assert "patroni: patroni_etcd_ca is 'etcd' but etcd_ca is 'collection' (pg1), 'collection' (pg2)" in " ".join(
        proc.stdout.split())
