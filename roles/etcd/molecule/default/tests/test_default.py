"""Verify the etcd cluster against the running members: health, replication across members, mutual TLS,
and that the cluster survives losing its leader."""

from __future__ import annotations

import json
import subprocess
import uuid

from etcd_scenario import ALL, CONTAINERS, FIRST, MEMBERS, TLS, etcdctl, wait_for

testinfra_hosts = [FIRST]


def status(host, endpoints: str = ALL) -> list[dict]:
    cmd = etcdctl(host, "endpoint status -w json", endpoints)
    return json.loads(cmd.stdout) if cmd.stdout.strip() else []


def leader_of(entries: list) -> str | None:
    """The member that says it leads, from `etcdctl endpoint status -w json`. During an election a member reports
    no leader: its JSON then has no "leader" field at all (zero)."""
    for entry in entries:
        leader = entry["Status"].get("leader")
        if leader and leader == entry["Status"]["header"]["member_id"]:
            ip = entry["Endpoint"].split("//")[1].split(":")[0]
            return next(n for n, a in MEMBERS.items() if a == ip)
    return None


def leader_name(host, endpoints: str = ALL) -> str | None:
    return leader_of(status(host, endpoints))


def test_every_member_healthy(host):
    cmd = etcdctl(host, "endpoint health -w json")
    assert cmd.rc == 0, cmd.stderr
    health = json.loads(cmd.stdout)
    assert len(health) == 3 and all(h["health"] for h in health)


def test_every_member_runs_the_binaries_the_role_installed(host):
    """The scenario installs etcd from etcd_binaries_src (tools/build-etcd.sh): the unit runs /usr/local/bin/etcd as
    user etcd, and each member reports that binary's version (not Debian's 3.4)."""
    installed = host.run("/usr/local/bin/etcd --version").stdout.splitlines()[0].split()[-1]
    assert not installed.startswith("3.4"), installed
    assert {entry["Status"]["version"] for entry in status(host)} == {installed}
    unit = host.run("systemctl show -p ExecStart -p User etcd").stdout
    assert "/usr/local/bin/etcd" in unit and "User=etcd" in unit, unit
    assert host.file("/usr/local/bin/etcdctl").mode == 0o755
    # etcdutl reads and restores snapshots (3.6's etcdctl cannot): the same version as the server.
    assert host.run("/usr/local/bin/etcdutl version").stdout.split()[2] == installed


def test_three_members_listed(host):
    members = json.loads(etcdctl(host, "member list -w json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)


def test_write_on_one_member_is_read_on_another(host):
    key, value = f"/molecule/{uuid.uuid4()}", "replicated"
    last = list(MEMBERS)[-1]
    assert etcdctl(host, f"put {key} {value}", f"https://{MEMBERS[FIRST]}:2379").rc == 0
    got = etcdctl(host, f"get {key} --print-value-only --consistency=s", f"https://{MEMBERS[last]}:2379")
    assert got.stdout.strip() == value


def test_clients_without_certificate_are_refused(host):
    second = MEMBERS[list(MEMBERS)[1]]
    cmd = host.run(f"ETCDCTL_API=3 etcdctl --cacert=/etc/etcd/tls/ca.crt --endpoints=https://{second}:2379 "
                   "--command-timeout=3s get /x")
    assert cmd.rc != 0
    plain = host.run(f"curl -sS -m 3 http://{second}:2379/health")
    assert plain.rc != 0 or "true" not in plain.stdout


def docker_etcdctl(member: str, args: str, endpoints: str) -> subprocess.CompletedProcess:
    """etcdctl inside a member's container, for when the testinfra host itself may be the one that died."""
    return subprocess.run(["docker", "exec", CONTAINERS[member], "sh", "-c",
                           f"ETCDCTL_API=3 etcdctl {TLS} --endpoints={endpoints} --command-timeout=5s {args}"],
                          capture_output=True, text=True, check=False)


def test_cluster_survives_losing_its_leader(host):
    old = leader_name(host)
    assert old, "no leader before the test"
    survivors = [n for n in MEMBERS if n != old]
    alive = ",".join(f"https://{MEMBERS[n]}:2379" for n in survivors)

    def survivors_leader():
        out = docker_etcdctl(survivors[0], "endpoint status -w json", alive).stdout
        return leader_of(json.loads(out) if out.strip() else [])

    # The leader's machine dies (docker kill: no systemd restart brings etcd back before the election).
    subprocess.run(["docker", "kill", CONTAINERS[old]], check=True, capture_output=True)
    try:
        elected = wait_for(survivors_leader, 30, "election of a new leader among the survivors")
        assert elected in survivors
        key = f"/molecule/after-failover/{uuid.uuid4()}"
        assert docker_etcdctl(survivors[0], f"put {key} ok", alive).returncode == 0
    finally:
        subprocess.run(["docker", "start", CONTAINERS[old]], check=True, capture_output=True)
    wait_for(lambda: docker_etcdctl(survivors[0], "endpoint health", ALL).returncode == 0, 90,
             f"{old} rejoining after its machine came back")
