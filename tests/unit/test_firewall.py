"""The firewall role's rules (roles/firewall): which ports a host opens to whom, from the inventory's groups and
the hosts' gathered addresses, rendered with Ansible's own templating as a run would."""

from __future__ import annotations

import re

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_vars import ROOT, _trusted, role_vars

DEFAULTS = yaml.safe_load((ROOT / "roles" / "firewall" / "defaults" / "main.yml").read_text())
GROUPS = {
    "all": ["pg1", "pg2", "s3-1", "s3-2", "app1", "lb1", "lb2", "mon1"],
    "etcd": ["pg1", "pg2"], "postgres": ["pg1", "pg2"], "storage": ["s3-1", "s3-2"], "mlflow": ["app1"],
    "lb": ["lb1", "lb2"], "monitoring": ["mon1"], "artifact_backup": ["mon1"],
}
ADDRESSES = {"pg1": "10.0.0.11", "pg2": "10.0.0.12", "s3-1": "10.0.0.21", "s3-2": "10.0.0.22",
             "app1": "10.0.0.31", "lb1": "10.0.0.41", "lb2": "10.0.0.42", "mon1": "10.0.0.51"}
VIP = "10.0.0.40"


def facts(host: str) -> dict:
    v4 = [ADDRESSES[host]] + ([VIP] if host == "lb1" else [])  # lb1 holds the VIP when facts are gathered
    return {"os_family": "Debian", "all_ipv4_addresses": v4,
            "all_ipv6_addresses": ["fe80::1", "fd00::%s" % ADDRESSES[host].rsplit(".", 1)[1]]}


def variables(host: str, **extra) -> dict:
    hostvars = {h: {"ansible_facts": facts(h)} for h in GROUPS["all"]}
    return {**DEFAULTS, **role_vars("firewall"), "inventory_hostname": host, "groups": GROUPS,
            "group_names": [g for g, hosts in GROUPS.items() if host in hosts and g != "all"],
            "hostvars": hostvars, "ansible_facts": facts(host), "mlflow_ha_vip": VIP,
            "ansible_managed": "Ansible managed", **extra}


def templar(host: str, **extra) -> Templar:
    return Templar(loader=DataLoader(), variables=_trusted(variables(host, **extra)))


def rules(host: str, **extra) -> dict[str, dict]:
    return {r["name"]: r for r in templar(host, **extra).template(trust_as_template("{{ _firewall_rules }}"))}


def nft(host: str, **extra) -> str:
    text = (ROOT / "roles" / "firewall" / "templates" / "firewall.nft.j2").read_text()
    return templar(host, **extra).template(trust_as_template(text))


def accepted(text: str, port: int) -> set[str]:
    """Every source address or network a rule accepts on TCP `port`."""
    found = set()
    for m in re.finditer(r"ip6? saddr \{ ([^}]*) \} tcp dport \{ ([^}]*) \} accept", text):
        if str(port) in [p.strip() for p in m.group(2).split(",")]:
            found |= {a.strip() for a in m.group(1).split(",")}
    return found


def test_a_database_host_opens_its_tiers_ports_to_their_clients_only():
    got = rules("pg1")
    assert set(got) >= {"etcd peers", "etcd clients (Patroni, member checks)", "node_exporter"}
    patroni = got["Patroni REST API (members, HAProxy checks, Prometheus)"]
    assert sorted(patroni["hosts"]) == sorted(GROUPS["postgres"] + GROUPS["lb"] + GROUPS["monitoring"])
    assert not [name for name in got if "SeaweedFS" in name or "MLflow" in name]


def test_the_storage_rules_follow_the_backend():
    assert any("SeaweedFS" in name for name in rules("s3-1"))
    minio = rules("s3-1", mlflow_ha_storage_backend="minio")
    assert "MinIO (nodes, HAProxy)" in minio and not any("SeaweedFS" in name for name in minio)


def test_ports_follow_the_inventory():
    text = nft("s3-1", seaweedfs_filer_port=7777)
    assert accepted(text, 7777) and accepted(text, 17777) and not accepted(text, 8888)


def test_rendered_rules_admit_the_clients_addresses_without_the_vip_or_link_local_ones():
    text = nft("pg1")
    clients = {"10.0.0.11", "10.0.0.12", "10.0.0.41", "10.0.0.42", "10.0.0.51",
               "fd00::11", "fd00::12", "fd00::41", "fd00::42", "fd00::51"}
    assert accepted(text, 8008) == clients
    assert VIP not in text and "fe80" not in text
    assert accepted(text, 5432) == {"10.0.0.11", "10.0.0.12", "fd00::11", "fd00::12"}
    assert "policy drop" in text and "reject with tcp reset" in text


def test_the_vip_moving_changes_nothing():
    moved = variables("pg1")
    moved["hostvars"]["lb1"]["ansible_facts"]["all_ipv4_addresses"] = ["10.0.0.41"]
    moved["hostvars"]["lb2"]["ansible_facts"]["all_ipv4_addresses"] = ["10.0.0.42", VIP]
    text = (ROOT / "roles" / "firewall" / "templates" / "firewall.nft.j2").read_text()
    again = Templar(loader=DataLoader(), variables=_trusted(moved)).template(trust_as_template(text))
    assert again == nft("pg1")


def test_admin_networks_and_the_ssh_client_reach_every_port():
    text = nft("app1", firewall_admin_networks=["192.0.2.0/24"],
               ansible_facts={**facts("app1"), "env": {"SSH_CLIENT": "198.51.100.7 50000 22"}})
    assert re.search(r"ip saddr \{ 192\.0\.2\.0/24, 198\.51\.100\.7 \}\s+accept", text)
    assert "admin networks" not in nft("app1")


def test_extra_rules_name_groups_or_networks():
    extra = [{"name": "backup agent", "on": "postgres", "tcp": [8432], "from": ["monitoring"],
              "networks": ["203.0.113.0/24"]}]
    text = nft("pg1", firewall_extra_rules=extra)
    assert accepted(text, 8432) == {"10.0.0.51", "fd00::51", "203.0.113.0/24"}
    assert not accepted(nft("app1", firewall_extra_rules=extra), 8432)


def test_a_host_whose_addresses_are_unknown_is_reported():
    limited = variables("pg1")
    del limited["hostvars"]["mon1"]["ansible_facts"]
    missing = Templar(loader=DataLoader(), variables=_trusted(limited)).template(
        trust_as_template("{{ _firewall_hosts_without_addresses }}"))
    assert missing == ["mon1"]
