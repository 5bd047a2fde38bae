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
