"""What tests/lab/labctl.py derives from the roles without a lab: the etcdctl command line the chaos faults use, and
the URL of an MLflow server itself."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from role_vars import render

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

import labctl  # noqa: E402

ETCD_DEFAULTS = yaml.safe_load((ROOT / "roles" / "etcd" / "defaults" / "main.yml").read_text())


def test_the_etcd_client_settings_are_the_etcd_roles():
    tls = render("etcd", "_etcd_tls_files", etcd_cert_dir=ETCD_DEFAULTS["etcd_cert_dir"])
    assert labctl.etcd_client() == {"scheme": "https" if ETCD_DEFAULTS["etcd_tls"] else "http",
                                    "port": ETCD_DEFAULTS["etcd_client_port"], **tls}


def test_etcdctl_command_names_every_member_and_the_client_tls():
    client = labctl.etcd_client()
    command = labctl.etcdctl_command(["10.0.0.1", "10.0.0.2"], "endpoint status -w json")
    assert command == (
        "ETCDCTL_API=3 etcdctl --cacert=%(ca)s --cert=%(cert)s --key=%(key)s --command-timeout=5s "
        "--endpoints=https://10.0.0.1:%(port)d,https://10.0.0.2:%(port)d endpoint status -w json" % client)


def test_an_mlflow_server_is_reached_as_the_mlflow_role_serves_it():
    defaults = yaml.safe_load((ROOT / "roles" / "mlflow" / "defaults" / "main.yml").read_text())
    assert defaults["mlflow_tls"] is True, "HTTPS between the tiers by default"
    assert labctl.mlflow_server_url("172.28.79.31") == "https://172.28.79.31:%d" % defaults["mlflow_port"]
