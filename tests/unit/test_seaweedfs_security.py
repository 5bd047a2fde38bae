"""The seaweedfs role's security.toml (roles/seaweedfs/templates/security.toml.j2) and the values it is rendered
from (vars/main.yml), with Ansible's own templating as a run would: mutual TLS on every gRPC component limited
to the storage hosts' certificate names, four distinct JWT keys derived from the vault secret, the guard list."""

from __future__ import annotations

import re

import tomllib
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_vars import ROOT, _trusted, role_vars

ROLE = ROOT / "roles" / "seaweedfs"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
STORAGE = ["s3-1", "s3-2", "s3-3", "s3-4"]
ADDRESSES = {"s3-1": "10.0.0.21", "s3-2": "10.0.0.22", "s3-3": "10.0.0.23", "s3-4": "10.0.0.24"}
SECRET = "unit-test-seaweedfs-jwt-key-0123456789"


def templar(host: str = "s3-1", **extra) -> Templar:
    hostvars = {h: {"seaweedfs_address": a} for h, a in ADDRESSES.items()}
    variables = {**DEFAULTS, **role_vars("seaweedfs"), "inventory_hostname": host,
                 "groups": {"all": STORAGE, "storage": STORAGE}, "hostvars": hostvars,
                 "seaweedfs_address": ADDRESSES[host], "seaweedfs_jwt_key": SECRET,
                 "ansible_managed": "Ansible managed",
                 # What the filter mlops.mlflow_ha.group_addresses returns (tests/unit/test_addresses.py).
                 "_seaweedfs_member_addresses": [{"name": h, "address": a} for h, a in ADDRESSES.items()], **extra}
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def value(name: str, **extra):
    return templar(**extra).template(trust_as_template("{{ %s }}" % name))


def security_toml(**extra) -> dict:
    text = (ROLE / "templates" / "security.toml.j2").read_text()
    return tomllib.loads(templar(**extra).template(trust_as_template(text)))


def test_every_grpc_component_serves_and_dials_with_the_nodes_certificate():
    doc = security_toml()
    assert doc["grpc"]["ca"] == "/etc/seaweedfs/tls/ca.crt"
    for component in ["master", "volume", "filer", "s3", "client"]:
        section = doc["grpc"][component]
        assert (section["cert"], section["key"]) == ("/etc/seaweedfs/tls/seaweedfs.crt",
                                                     "/etc/seaweedfs/tls/seaweedfs.key"), component


def test_only_storage_hosts_certificates_pass_either_side():
    doc = security_toml()
    names = "s3-1,s3-2,s3-3,s3-4"
    for component in ["master", "volume", "filer", "s3"]:
        assert doc["grpc"][component]["allowed_commonNames"] == names, component
    assert doc["grpc"]["allowed_server_commonNames"] == names
    assert "allowed_commonNames" not in doc["grpc"]["client"], "the client section serves nothing"


def test_four_distinct_jwt_keys_none_of_them_the_secret():
    doc = security_toml()
    keys = [doc["jwt"]["signing"]["key"], doc["jwt"]["signing"]["read"]["key"],
            doc["jwt"]["filer_signing"]["key"], doc["jwt"]["filer_signing"]["read"]["key"]]
    assert len(set(keys)) == 4, "a read token must not pass as a write token, nor a volume token as a filer one"
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    assert SECRET not in keys
    assert doc["jwt"]["signing"]["expires_after_seconds"] == 10


def test_the_keys_are_the_same_on_every_node_and_follow_the_secret():
    assert value("_seaweedfs_jwt_keys", host="s3-1") == value("_seaweedfs_jwt_keys", host="s3-4")
    other = value("_seaweedfs_jwt_keys", seaweedfs_jwt_key="another-secret-of-at-least-32-chars!")
    assert set(other.values()).isdisjoint(value("_seaweedfs_jwt_keys").values())


def test_no_guard_list_by_default():
    assert security_toml()["guard"]["white_list"] == ""


def test_a_guard_list_always_admits_the_storage_hosts_and_loopback():
    doc = security_toml(seaweedfs_guard_white_list=["10.9.0.0/24"])
    assert doc["guard"]["white_list"].split(",") == [
        "10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24", "127.0.0.1", "10.9.0.0/24"]


def test_every_weed_process_reads_the_roles_directory():
    assert value("_seaweedfs_weed") == "/usr/local/bin/weed -config_dir=/etc/seaweedfs"
    for unit in ["master", "volume", "filer"]:
        text = (ROLE / "templates" / ("seaweedfs-%s.service.j2" % unit)).read_text()
        assert "ExecStart={{ _seaweedfs_weed }} %s " % unit in text
    assert (ROLE / "tasks" / "buckets.yml").read_text().count("{{ _seaweedfs_weed }} shell") == 2
