"""The site's entry point (mlflow_ha_entrypoint: vip | cloud_lb, mlflow_ha_endpoint) and the external S3 backend
(mlflow_ha_storage_backend: external), as the roles render them: the lab inventory renders what it rendered before,
a cloud load balancer's DNS name reaches every consumer, an external S3 endpoint replaces the storage tier. Roles'
defaults and vars rendered with Ansible's own templating; site.yml's and the roles' preflight run on the controller."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_vars import ROOT, _trusted

LAB = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
VIP = LAB["mlflow_ha_vip"]
NLB = "mlflow-ha-nlb-0123456789abcdef.elb.eu-west-1.amazonaws.com"
CLOUD = {"mlflow_ha_entrypoint": "cloud_lb", "mlflow_ha_endpoint": NLB}
# A site without a VIP: the lab's settings less the VIP (and the SANs the lab adds for it).
CLOUD_SITE = {**{k: v for k, v in LAB.items() if k not in ("mlflow_ha_vip", "mlflow_ha_vip_prefix",
                                                           "haproxy_cert_sans")}, **CLOUD}
EXTERNAL = {"mlflow_ha_storage_backend": "external"}
COLLECTION_CA = "/usr/local/share/ca-certificates/mlflow-ha-ca.crt"
GROUPS = {"all": ["pg1", "s3-1", "app1", "lb1", "lb2", "mon1"], "etcd": ["pg1"], "postgres": ["pg1"],
          "storage": ["s3-1"], "mlflow": ["app1"], "lb": ["lb1", "lb2"], "monitoring": ["mon1"],
          "artifact_backup": ["mon1"]}
ADDRESSES = {"pg1": "10.0.0.11", "s3-1": "10.0.0.21", "app1": "10.0.0.31", "lb1": "10.0.0.41", "lb2": "10.0.0.42",
             "mon1": "10.0.0.51"}


def _role(role: str) -> dict:
    out: dict = {}
    for part in ("defaults", "vars"):
        path = ROOT / "roles" / role / part / "main.yml"
        if path.is_file():
            out.update(yaml.safe_load(path.read_text()) or {})
    return out


def _facts(host: str) -> dict:
    return {"os_family": "Debian", "all_ipv4_addresses": [ADDRESSES[host]], "all_ipv6_addresses": []}


def templar(role: str, site: dict, host: str = "app1", **extra) -> Templar:
    """The role's defaults and vars under an inventory's site-wide settings (`site`), on `host`."""
    variables = {**_role(role), **site, "inventory_hostname": host, "groups": GROUPS,
                 "group_names": [g for g, hosts in GROUPS.items() if host in hosts and g != "all"],
                 "hostvars": {h: {"ansible_facts": _facts(h)} for h in GROUPS["all"]}, "ansible_facts": _facts(host),
                 "ansible_managed": "Ansible managed", "inventory_dir": str(ROOT / "inventories" / "lab"),
                 # Addresses the roles would learn with a collection filter (not loaded in unit tests).
                 "mlflow_address": ADDRESSES["app1"], "haproxy_address": ADDRESSES.get(host, "10.0.0.41"),
                 "pgbouncer_listen_address": ADDRESSES["pg1"], **extra}
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def value(role: str, name: str, site: dict, **extra):
    return templar(role, site, **extra).template(trust_as_template("{{ %s }}" % name))


def rendered(role: str, template: str, site: dict, **extra) -> str:
    text = (ROOT / "roles" / role / "templates" / template).read_text()
    return templar(role, site, **extra).template(trust_as_template(text))


def env(site: dict, **extra) -> dict[str, str]:
    lines = rendered("mlflow", "mlflow.env.j2", site, **extra).splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def firewall_rules(host: str, site: dict, **extra) -> dict[str, dict]:
    rules = value("firewall", "_firewall_rules", site, host=host, **extra)
    return {rule["name"]: rule for rule in rules}


# --- The lab (mlflow_ha_entrypoint vip, the default; SeaweedFS): every consumer renders what it rendered before ----

class TestTheLabIsUnchanged:
    def test_mlflow_reaches_the_database_and_s3_through_the_vip(self):
        assert value("mlflow", "mlflow_db_host", LAB) == VIP
        assert value("mlflow", "mlflow_s3_endpoint", LAB) == f"https://{VIP}:9000"
        assert value("mlflow", "mlflow_s3_bucket", LAB) == "mlflow"
        assert value("mlflow", "mlflow_s3_region", LAB) == "us-east-1"
        assert value("mlflow", "mlflow_s3_ca_path", LAB) == COLLECTION_CA
        assert value("mlflow", "mlflow_db_ca_path", LAB) == COLLECTION_CA
        assert value("mlflow", "_mlflow_host_names", LAB) == [VIP, "app1", "10.0.0.31", "localhost", "127.0.0.1"]

    def test_the_servers_environment_keeps_its_lines(self):
        got = env(LAB)
        assert got["MLFLOW_S3_ENDPOINT_URL"] == f"https://{VIP}:9000"
        assert got["AWS_ACCESS_KEY_ID"] == LAB["mlflow_s3_access_key"]
        assert got["AWS_SECRET_ACCESS_KEY"] == LAB["mlflow_s3_secret_key"]
        assert got["AWS_DEFAULT_REGION"] == "us-east-1" and got["AWS_CA_BUNDLE"] == COLLECTION_CA
        assert "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE" not in got, "auto: MLflow's own default, nothing written"
        text = rendered("mlflow", "mlflow.env.j2", LAB)
        assert "instance role" not in text

    def test_certificates_and_the_probe_name_the_vip(self):
        assert value("haproxy", "_haproxy_cert_sans", LAB, host="lb1") == [
            "DNS:lb1", "IP:10.0.0.41", f"IP:{VIP}", f"DNS:{VIP}", "DNS:localhost", "IP:127.0.0.1"]
        assert value("pgbouncer", "_pgbouncer_vip_sans", LAB, host="pg1") == [f"IP:{VIP}"]
        assert value("registration_probe", "registration_probe_tracking_uri", LAB, host="mon1") == f"https://{VIP}"
        assert value("keepalived", "keepalived_vip", LAB, host="lb1") == VIP

    def test_haproxy_keeps_its_s3_frontend(self):
        assert value("haproxy", "haproxy_s3_enabled", LAB, host="lb1") is True
        assert value("haproxy", "haproxy_s3_backend", LAB, host="lb1") == "seaweedfs"
        assert value("haproxy", "haproxy_s3_backend_port", LAB, host="lb1") == 8333

    def test_the_load_balancers_firewall_keeps_vrrp_and_s3_and_opens_nothing_new(self):
        rules = firewall_rules("lb1", LAB)
        assert "keepalived VRRP" in rules and "S3 through the load balancers" in rules
        assert "HAProxy health checks of the cloud load balancer" not in rules


# --- mlflow_ha_entrypoint cloud_lb: the cloud load balancer's DNS name everywhere, no keepalived -------------------

class TestCloudLoadBalancer:
    def test_mlflow_reaches_the_database_and_s3_by_the_load_balancers_name(self):
        assert value("mlflow", "mlflow_db_host", CLOUD_SITE) == NLB
        assert value("mlflow", "mlflow_s3_endpoint", CLOUD_SITE) == f"https://{NLB}:9000"
        assert "@%s:5000/mlflow?" % NLB in value("mlflow", "_mlflow_backend_store_uri", CLOUD_SITE)

    def test_mlflow_accepts_the_name_as_host_header(self):
        allowed = value("mlflow", "_mlflow_allowed_hosts", CLOUD_SITE)
        assert NLB in allowed and f"{NLB}:*" in allowed
        assert "" not in allowed, "no VIP: no empty entry"

    def test_certificates_name_it_as_a_dns_name(self):
        sans = value("haproxy", "_haproxy_cert_sans", CLOUD_SITE, host="lb1")
        assert f"DNS:{NLB}" in sans and f"IP:{NLB}" not in sans
        assert value("pgbouncer", "_pgbouncer_vip_sans", CLOUD_SITE, host="pg1") == [f"DNS:{NLB}"]

    def test_an_address_goes_in_as_an_ip_entry(self):
        for address in ("203.0.113.9", "fd00::9"):
            site = {**CLOUD_SITE, "mlflow_ha_endpoint": address}
            assert f"IP:{address}" in value("haproxy", "_haproxy_cert_sans", site, host="lb1")
            assert value("pgbouncer", "_pgbouncer_vip_sans", site, host="pg1") == [f"IP:{address}"]

    def test_the_probe_and_haproxys_published_entry_point_use_it(self):
        assert value("registration_probe", "registration_probe_tracking_uri", CLOUD_SITE, host="mon1") == f"https://{NLB}"
        assert value("haproxy", "_haproxy_vip", CLOUD_SITE, host="lb1") == NLB

    def test_the_load_balancers_admit_the_health_checks_and_no_vrrp(self):
        rules = firewall_rules("lb1", CLOUD_SITE, firewall_cloud_lb_networks=["10.0.100.0/24", "10.0.101.0/24"])
        assert "keepalived VRRP" not in rules
        health = rules["HAProxy health checks of the cloud load balancer"]
        assert health["tcp"] == [8404] and health["networks"] == ["10.0.100.0/24", "10.0.101.0/24"]
        assert health["hosts"] == [], "only the load balancer's subnets"
        # Clients keep their own addresses through the load balancer: the frontends admit the same sources.
        assert rules["PostgreSQL through the load balancers (primary, replicas)"]["hosts"] == ["app1"]
        assert rules["MLflow through the load balancers (HTTP redirect, HTTPS; the registration probe)"][
            "networks"] == ["0.0.0.0/0", "::/0"]
        assert "HAProxy health checks of the cloud load balancer" not in firewall_rules("app1", CLOUD_SITE)

    def test_the_health_check_port_follows_haproxy(self):
        rules = firewall_rules("lb1", CLOUD_SITE, haproxy_stats_port=9404, firewall_cloud_lb_networks=["10.0.9.0/24"])
        assert rules["HAProxy health checks of the cloud load balancer"]["tcp"] == [9404]

    def test_site_yml_leaves_keepalived_out(self):
        plays = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
        lb = next(p for p in plays if p.get("hosts") == "lb")
        keepalived = next(r for r in lb["roles"] if r["role"].endswith(".keepalived"))
        assert keepalived["when"] == "mlflow_ha_entrypoint | default('vip') == 'vip'"

    def test_validate_yml_skips_the_vip_holder_check_and_says_why(self):
        tasks = yaml.safe_load((ROOT / "playbooks" / "validate.yml").read_text())[1]["tasks"]
        holders = [t for t in tasks if "holds the VIP" in t["name"] or "VIP holder" in t["name"]]
        assert len(holders) == 2
        for task in holders:
            assert task["when"] == "entrypoint == 'vip'" and "not with cloud_lb" in task["name"]


# --- mlflow_ha_storage_backend external: the site's own S3 endpoint, no storage tier ------------------------------

class TestExternalS3:
    def test_aws_regional_endpoint_by_default(self):
        site = {**LAB, **EXTERNAL, "mlflow_ha_s3_region": "eu-west-1", "mlflow_ha_s3_bucket": "acme-mlflow"}
        assert value("mlflow", "mlflow_s3_endpoint", site) == "https://s3.eu-west-1.amazonaws.com"
        assert value("mlflow", "mlflow_s3_region", site) == "eu-west-1"
        assert value("mlflow", "mlflow_s3_bucket", site) == "acme-mlflow"
        assert value("mlflow", "_mlflow_artifacts_destination", site) == "s3://acme-mlflow/artifacts"
        assert value("mlflow", "mlflow_s3_ca_path", site) == "", "botocore's own bundle"
        # The database is still PgBouncer behind HAProxy, verified with the collection CA.
        assert value("mlflow", "mlflow_db_ca_path", site) == COLLECTION_CA
        assert value("mlflow", "_mlflow_client_ca_path", site, mlflow_tls=False) == COLLECTION_CA
        assert value("artifact_backup", "artifact_backup_source_region", site, host="mon1") == "eu-west-1"

    def test_an_endpoint_of_the_sites_own_with_a_private_ca_and_path_style(self):
        site = {**LAB, **EXTERNAL, "mlflow_ha_s3_endpoint": "https://s3.corp.example:9443",
                "mlflow_ha_s3_ca_path": "/etc/ssl/corp-ca.pem"}
        got = env(site, mlflow_s3_addressing_style="path")
        assert got["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.corp.example:9443"
        assert got["AWS_CA_BUNDLE"] == "/etc/ssl/corp-ca.pem"
        assert got["MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"] == "path"

    def test_no_keys_means_no_key_in_the_environment(self):
        site = {**LAB, **EXTERNAL, "mlflow_s3_access_key": "", "mlflow_s3_secret_key": ""}
        got = env(site)
        assert not [k for k in got if k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET")]
        assert "AWS_CA_BUNDLE" not in got, "no empty CA bundle either"
        assert got["AWS_DEFAULT_REGION"] == "us-east-1"
        published = value("mlflow", "_mlflow_endpoints.s3", site)
        assert published["instance_credentials"] is True and published["external"] is True

    def test_haproxy_has_no_s3_frontend_even_with_storage_hosts(self):
        site = {**LAB, **EXTERNAL}
        assert value("haproxy", "haproxy_s3_enabled", site, host="lb1") is False
        # The backend's defaults still render (the role's argument validation reads every one).
        assert value("haproxy", "haproxy_s3_backend", site, host="lb1") == "seaweedfs"
        assert value("haproxy", "haproxy_s3_backend_port", site, host="lb1") == 8333
        template = (ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2").read_text()
        assert re.search(r"\{% if haproxy_s3_enabled %\}\n((#[^\n]*)?\n)*listen s3\n", template), "hangs on it"
        assert value("haproxy", "_haproxy_endpoints.s3_url", site, host="lb1",
                     _haproxy_vip="lb.example") == "", "nothing to publish"

    def test_the_firewall_opens_no_storage_port(self):
        site = {**LAB, **EXTERNAL}
        assert not [n for n in firewall_rules("s3-1", site) if "SeaweedFS" in n or "MinIO" in n]
        assert "S3 through the load balancers" not in firewall_rules("lb1", site)
        assert "S3 through the load balancers" in firewall_rules("lb1", {**LAB, "mlflow_ha_storage_backend": "minio"})

    def test_endpoints_yml_learns_no_storage_role(self):
        tasks = yaml.safe_load((ROOT / "playbooks" / "tasks" / "endpoints.yml").read_text())
        storage = next(t for t in tasks if "storage" in t["name"])
        assert "mlflow_ha_storage_backend | default('seaweedfs') != 'external'" in storage["when"]


# --- The mlflow role's S3 preflight (its assert rendered as Ansible would) -----------------------------------------

def s3_preflight(site: dict, **extra) -> tuple[bool, str]:
    tasks = yaml.safe_load((ROOT / "roles" / "mlflow" / "tasks" / "preflight.yml").read_text())
    check = next(t for t in tasks if t["name"] == "Check the S3 settings")["ansible.builtin.assert"]
    t = templar("mlflow", site, **extra)
    ok = all(t.template(trust_as_template("{{ %s }}" % cond)) for cond in check["that"])
    return ok, " ".join(t.template(trust_as_template(check["fail_msg"])).split())


@pytest.mark.parametrize(("site", "extra", "ok", "message"), [
    (LAB, {}, True, None),
    ({**LAB, **EXTERNAL}, {"mlflow_s3_access_key": "", "mlflow_s3_secret_key": ""}, True, None),
    (LAB, {"mlflow_s3_access_key": "", "mlflow_s3_secret_key": ""}, False,
     "mlflow: mlflow_s3_access_key and mlflow_s3_secret_key are empty: set them from a vault (only with "
     "mlflow_ha_storage_backend external may both stay empty, for an instance role)."),
    ({**LAB, **EXTERNAL}, {"mlflow_s3_secret_key": ""}, False,
     "mlflow: set both mlflow_s3_access_key and mlflow_s3_secret_key (from a vault), or neither."),
    (LAB, {"mlflow_s3_addressing_style": "dns"}, False,
     "mlflow: mlflow_s3_addressing_style must be auto, path or virtual, got 'dns'."),
    (LAB, {"mlflow_s3_endpoint": "s3.example"}, False,
     "mlflow: artifacts need mlflow_s3_endpoint, an http(s) URL with a host, got 's3.example'."),
])
def test_the_s3_preflight_says_what_is_wrong(site, extra, ok, message):
    passed, text = s3_preflight(site, **extra)
    assert passed is ok
    if message:
        assert text == message
    assert "lab-mlflow-secret" not in text


# --- Preflight runs (ansible-playbook on the controller, connection local) -----------------------------------------

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PREFLIGHT = ROOT / "tests" / "preflight"


def play(inventory: str, playbook: Path, tags: str, extra: dict) -> str:
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(PREFLIGHT / inventory), str(playbook), "--tags", tags,
           "-e", json.dumps(extra)]
    environ = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=180, check=False)
    return ("ok " if proc.returncode == 0 else "failed ") + " ".join(proc.stdout.split())


needs_ansible = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not in this venv")
SITE = ROOT / "playbooks" / "site.yml"
NO_BACKUPS = {"mlflow_ha_pgbackrest": False, "mlflow_ha_artifact_backup": False}


@needs_ansible
@pytest.mark.parametrize(("extra", "message"), [
    ({"mlflow_ha_entrypoint": "elb"},
     "site: mlflow_ha_entrypoint must be 'vip' (keepalived) or 'cloud_lb' (a cloud network load balancer), got 'elb'."),
    ({"mlflow_ha_entrypoint": "cloud_lb"},
     "site: with mlflow_ha_entrypoint cloud_lb, set mlflow_ha_endpoint to the cloud load balancer's DNS name (the "
     "CloudFormation output EndpointDnsName)."),
    ({"mlflow_ha_entrypoint": "cloud_lb", "mlflow_ha_endpoint": "198.51.100.41", "haproxy_address": "198.51.100.41"},
     "site: mlflow_ha_endpoint (198.51.100.41) is an address of a load balancer host itself; with cloud_lb it must "
     "be the cloud load balancer's DNS name, or nothing survives that host's loss."),
    ({"mlflow_ha_vip": ""}, "site: mlflow_ha_vip is unset: with mlflow_ha_entrypoint vip the load balancers share "
                            "that address."),
])
def test_site_refuses_an_unusable_entry_point(extra, message):
    out = play("inventory_site.yml", SITE, "always", {**NO_BACKUPS, **extra})
    assert out.startswith("failed") and message in out


@needs_ansible
def test_site_accepts_a_cloud_load_balancer_without_a_vip():
    out = play("inventory_site.yml", SITE, "always", {**NO_BACKUPS, **CLOUD, "mlflow_ha_vip": ""})
    assert out.startswith("ok"), out[-2000:]


@needs_ansible
def test_site_needs_no_storage_hosts_with_an_external_s3_endpoint():
    assert play("inventory_site_external_s3.yml", SITE, "always", NO_BACKUPS).startswith("ok")
    out = play("inventory_site_external_s3.yml", SITE, "always",
               {**NO_BACKUPS, "mlflow_ha_storage_backend": "seaweedfs"})
    assert out.startswith("failed") and "site: the inventory group 'storage' is empty or missing" in out
    out = play("inventory_site_external_s3.yml", SITE, "always", {**NO_BACKUPS, "mlflow_ha_s3_endpoint": "s3.corp"})
    assert out.startswith("failed") and "mlflow_ha_s3_endpoint must be an http(s) URL with a host" in out


@needs_ansible
def test_keepalived_refuses_to_run_behind_a_cloud_load_balancer():
    out = play("inventory_site.yml", PREFLIGHT / "keepalived.yml", "keepalived_preflight", CLOUD)
    assert out.startswith("failed")
    assert re.search(r"keepalived: mlflow_ha_entrypoint is 'cloud_lb', so the site is reached through "
                     r"mlflow_ha_endpoint \(%s\), not a VIP: clouds drop VRRP and gratuitous ARP" % re.escape(NLB), out)
