"""Snapshots and the restore, against the running members: the timer's service takes a checked snapshot and writes
its metrics page, playbooks/dr/backup_etcd.yml fetches one to the controller, and playbooks/dr/restore_etcd.yml
refuses what it must refuse (no confirmation, a damaged file; --check changes nothing) and then brings the cluster
back to the snapshot's keyspace: a key written before the snapshot is there again, one written after it is gone.

The playbooks run as a user runs them, with ansible-playbook against the scenario's inventory (molecule hands the
verifier its inventory and its ansible.cfg in the environment), or through the command MLFLOW_HA_ETCD_PLAYBOOK names
(a JSON list; the lab's `tools/lab.sh play` when `make test` runs these checks against the lab, which also names in
MLFLOW_HA_ETCD_AFTER_SNAPSHOT a command to run between the snapshot and the restore: it registers a model version,
which must outlive the restore)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from etcd_scenario import CONTAINERS, FIRST, MEMBERS, etcdctl, wait_for

testinfra_hosts = [FIRST]
ROOT = Path(os.environ.get("MLFLOW_HA_ROOT") or Path(__file__).resolve().parents[5])
SERVICE = "mlflow-ha-etcd-snapshot.service"
PAGE = "/var/lib/prometheus/node-exporter/mlflow_ha_etcd_snapshot.prom"
STATE = "/var/lib/mlflow-ha-etcd-snapshot/state.json"
TOKEN = "mlflow-ha-etcd"  # etcd_cluster_token's default: what restore_confirm must name
DATA_DIR = "/var/lib/etcd/mlflow-ha"


def value_of(host, key: str) -> str:
    cmd = etcdctl(host, f"get {key} --print-value-only")
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def healthy(host) -> bool:
    cmd = etcdctl(host, "endpoint health -w json")
    return cmd.rc == 0 and len(json.loads(cmd.stdout)) == 3


def page_values(host) -> dict[str, float]:
    values = {}
    for line in host.file(PAGE).content_string.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def playbook(label: str, name: str, *args: str, refusal: bool = False) -> subprocess.CompletedProcess:
    """A playbook of the collection, run against this scenario's inventory as a user would (or through
    MLFLOW_HA_ETCD_PLAYBOOK, with `label` naming the run: the lab keeps each run's log and seconds under
    etcd-<label>). refusal: the run is meant to be refused; the lab's phase table then says "refused", not FAILED
    (MLFLOW_HA_EXPECT_REFUSAL, tools/lab.sh)."""
    path = str(ROOT / "playbooks" / "dr" / name)
    command = json.loads(os.environ.get("MLFLOW_HA_ETCD_PLAYBOOK") or "null")
    env = dict(os.environ)
    if command:
        argv = [*command, f"etcd-{label}", path, *args]
        if refusal:
            env["MLFLOW_HA_EXPECT_REFUSAL"] = "1"
    else:
        binary = Path(sys.executable).parent / "ansible-playbook"
        inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
        argv = [str(binary) if binary.exists() else "ansible-playbook", "-i", inventory, path, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, env=env)


def tail(proc: subprocess.CompletedProcess, lines: int = 60) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-lines:])


def is_snapshot(path: Path) -> bool:
    """etcd's digest at the end of the file matches its content."""
    data = path.read_bytes()
    return len(data) % 512 == 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


def test_a_snapshot_brings_back_the_keyspace_of_its_time(host, tmp_path):
    wait_for(lambda: healthy(host), 90, "every member healthy before the test")
    before_key, before = "/molecule/restore/before", str(uuid.uuid4())
    after_key, after = "/molecule/restore/after", str(uuid.uuid4())
    assert etcdctl(host, f"put {before_key} {before}").rc == 0

    # The timer's own service on etcd-1: a checked snapshot, and the page says so.
    started = int(host.run("date +%s").stdout)
    run = host.run(f"systemctl start {SERVICE}")
    assert run.rc == 0, host.run(f"journalctl -u {SERVICE} -n 30 --no-pager").stdout
    values = page_values(host)
    assert values["mlflow_ha_etcd_snapshot_last_run_success"] == 1
    assert values["mlflow_ha_etcd_snapshot_last_success_timestamp_seconds"] >= started
    assert values["mlflow_ha_etcd_snapshot_size_bytes"] > 0 and values["mlflow_ha_etcd_snapshot_kept"] >= 1
    member_file = json.loads(host.file(STATE).content_string)["last_success"]["file"]
    assert host.file(member_file).exists and host.file(member_file).mode == 0o600

    # The backup playbook: a snapshot now, fetched to the controller.
    fetched_dir = tmp_path / "fetched"
    backup = playbook("backup", "backup_etcd.yml", "-e", f"etcd_snapshot_fetch_dir={fetched_dir}")
    assert backup.returncode == 0, tail(backup)
    fetched = sorted(fetched_dir.glob(f"etcd-snapshot-{FIRST}-*.db"))
    assert len(fetched) == 1 and is_snapshot(fetched[0]), list(fetched_dir.iterdir())

    assert etcdctl(host, f"put {after_key} {after}").rc == 0
    after_snapshot = json.loads(os.environ.get("MLFLOW_HA_ETCD_AFTER_SNAPSHOT") or "[]")
    if after_snapshot:
        done = subprocess.run(after_snapshot, capture_output=True, text=True, check=False, timeout=600)
        assert done.returncode == 0, f"{after_snapshot} failed:\n{tail(done)}"

    # Refusals: no confirmation; a damaged file (one byte changed); --check. None of them changes anything.
    unconfirmed = playbook("refuse-unconfirmed", "restore_etcd.yml", "-e", f"restore_snapshot={fetched[0]}",
                           refusal=True)
    said = unconfirmed.stdout + unconfirmed.stderr
    assert unconfirmed.returncode != 0 and "restore_confirm" in said, tail(unconfirmed)
    damaged = tmp_path / "damaged.db"
    data = bytearray(fetched[0].read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    refused = playbook("refuse-damaged", "restore_etcd.yml", "-e", f"restore_confirm={TOKEN}",
                       "-e", f"restore_snapshot={damaged}", refusal=True)
    assert refused.returncode != 0 and "the file is damaged" in refused.stdout + refused.stderr, tail(refused)
    checked = playbook("restore-check", "restore_etcd.yml", "--check", "-e", f"restore_confirm={TOKEN}",
                       "-e", f"restore_snapshot={member_file}", "-e", f"restore_snapshot_host={FIRST}")
    assert checked.returncode == 0, tail(checked)
    assert value_of(host, after_key) == after, "a refused or checked restore changed the keyspace"
    assert healthy(host)

    # The restore from the timer's snapshot on etcd-1.
    restored = playbook("restore", "restore_etcd.yml", "-e", f"restore_confirm={TOKEN}",
                        "-e", f"restore_snapshot={member_file}", "-e", f"restore_snapshot_host={FIRST}")
    assert restored.returncode == 0, tail(restored)
    wait_for(lambda: healthy(host), 60, "every member healthy after the restore")
    assert value_of(host, before_key) == before, "the key written before the snapshot is not back"
    assert value_of(host, after_key) == "", "the key written after the snapshot survived the restore"
    members = json.loads(etcdctl(host, "member list -w json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)
    # Each member's old data directory was moved aside, not deleted.
    for name in MEMBERS:
        aside = subprocess.run(["docker", "exec", CONTAINERS[name], "sh", "-c", f"ls -d {DATA_DIR}.pre-restore-*"],
                               capture_output=True, text=True, check=False)
        assert aside.returncode == 0 and aside.stdout.strip(), f"{name}: {aside.stderr}"

    # The restored cluster takes snapshots again.
    assert host.run(f"systemctl start {SERVICE}").rc == 0
    assert page_values(host)["mlflow_ha_etcd_snapshot_last_run_success"] == 1
