"""Expressions the roles derive in vars/main.yml, rendered by Ansible: the patroni role's restart order, and HTTPS
between the load balancers and the MLflow servers (the mlflow role's uvicorn options and CA, HAProxy's server
options)."""

from __future__ import annotations

from pathlib import Path

import pytest
from role_vars import render

ROOT = Path(__file__).resolve().parents[2]

# A cluster view as patroni_config / patroni_cluster_info return it (members sorted by name).
MEMBERS = [
    {"name": "pg1", "role": "replica", "pending_restart": True},
    {"name": "pg2", "role": "leader", "pending_restart": True},
    {"name": "pg3", "role": "sync_standby", "pending_restart": False},
    {"name": "pg4", "role": "replica", "pending_restart": True},
]


def names(members):
    return [m["name"] for m in members]


class TestPatroniRestartOrder:
    def test_pending_restarts_replicas_first_in_cluster_order_leader_last(self):
        order = render("patroni", "_patroni_restart_order", patroni_cluster={"members": MEMBERS})
        assert names(order) == ["pg1", "pg4", "pg2"]
        assert order[0] == MEMBERS[0], "whole members: the restart tasks read name and role"

    def test_program_restarts_take_the_stale_members_in_the_same_order(self):
        order = render("patroni", "_patroni_program_restart_order", patroni_cluster={"members": MEMBERS},
                       _patroni_program_stale=["pg2", "pg3"])
        assert names(order) == ["pg3", "pg2"]

    @pytest.mark.parametrize("cluster", [{}, {"skipped": True}, {"members": []}])
    def test_nothing_to_restart_without_a_cluster_view(self, cluster):
        assert render("patroni", "_patroni_restart_order", patroni_cluster=cluster) == []
        assert render("patroni", "_patroni_program_restart_order", patroni_cluster=cluster,
                      _patroni_program_stale=["pg1"]) == []

    def test_a_plan_that_restarts_the_leader_asks_for_a_second_look(self):
        assert render("patroni", "_patroni_restart_includes_leader", patroni_cluster={"members": MEMBERS}) is True
        replicas_only = [dict(m, pending_restart=m["role"] != "leader" and m["pending_restart"]) for m in MEMBERS]
        assert render("patroni", "_patroni_restart_includes_leader",
                      patroni_cluster={"members": replicas_only}) is False
        assert render("patroni", "_patroni_restart_includes_leader", patroni_cluster={"skipped": True}) is False

    def test_the_second_pass_reads_the_newer_view(self):
        # After the leader's restart only the replicas are pending (a lowered max_connections), in the same order.
        after = [dict(m, pending_restart=m["role"] in ("replica", "sync_standby")) for m in MEMBERS]
        order = render("patroni", "_patroni_restart_order", patroni_cluster={"members": MEMBERS},
                       _patroni_cluster_view={"members": after})
        assert names(order) == ["pg1", "pg3", "pg4"]
        assert render("patroni", "_patroni_restart_order", patroni_cluster={"members": MEMBERS},
                      _patroni_cluster_view={"skipped": True}) == []

    def test_the_order_is_written_once(self):
        role = ROOT / "roles" / "patroni"
        texts = [p.read_text() for d in ("vars", "tasks", "handlers") for p in sorted((role / d).glob("*.yml"))]
        assert sum(t.count("'role', 'eq', 'leader'") for t in texts) == 2, "one rejectattr and one selectattr"


# The mlflow role's settings the TLS expressions read.
MLFLOW_SETTINGS = {"mlflow_cert_dir": "/etc/mlflow/tls", "mlflow_keepalive_timeout": 75, "mlflow_graceful_timeout": 30,
                   "mlflow_s3_ca_path": "/usr/local/share/ca-certificates/mlflow-ha-ca.crt"}


class TestMlflowBackendTls:
    """mlflow_tls: uvicorn serves the certificate the pki role installs, and HAProxy verifies it."""

    def test_uvicorn_serves_https_with_the_servers_certificate_and_key(self):
        opts = render("mlflow", "_mlflow_uvicorn_opts", mlflow_tls=True, **MLFLOW_SETTINGS)
        assert opts.split() == ["--timeout-keep-alive", "75", "--timeout-graceful-shutdown", "30",
                                "--ssl-certfile", "/etc/mlflow/tls/mlflow.crt",
                                "--ssl-keyfile", "/etc/mlflow/tls/mlflow.key"]

    def test_without_tls_uvicorn_keeps_only_its_timeouts(self):
        opts = render("mlflow", "_mlflow_uvicorn_opts", mlflow_tls=False, **MLFLOW_SETTINGS)
        assert opts.split() == ["--timeout-keep-alive", "75", "--timeout-graceful-shutdown", "30"]

    @pytest.mark.parametrize(("tls", "scheme", "ca"), [
        (True, "https", "/etc/mlflow/tls/ca.crt"),
        (False, "http", "/usr/local/share/ca-certificates/mlflow-ha-ca.crt")])
    def test_the_roles_own_checks_use_the_scheme_and_the_ca_the_servers_need(self, tls, scheme, ca):
        assert render("mlflow", "_mlflow_scheme", mlflow_tls=tls, **MLFLOW_SETTINGS) == scheme
        assert render("mlflow", "_mlflow_client_ca_path", mlflow_tls=tls, **MLFLOW_SETTINGS) == ca

    def test_haproxy_verifies_each_server_with_the_collection_ca(self):
        options = render("haproxy", "_haproxy_mlflow_server_tls", haproxy_mlflow_backend_tls=True,
                         haproxy_cert_dir="/etc/haproxy/tls")
        assert options == " ssl verify required ca-file /etc/haproxy/tls/ca.crt"
        assert render("haproxy", "_haproxy_mlflow_server_tls", haproxy_mlflow_backend_tls=False,
                      haproxy_cert_dir="/etc/haproxy/tls") == ""

    def test_the_template_names_each_server_for_verifyhost_and_keeps_the_checks_on_the_server_port(self):
        template = (ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2").read_text()
        line = next(t for t in template.splitlines() if "haproxy_mlflow_backend_port" in t and "server " in t)
        assert "_haproxy_mlflow_server_tls" in line and "' verifyhost ' ~ server.name" in line
        # A "port" or "addr" on the check would make HAProxy check in plain TCP, not over the server's TLS.
        assert " port " not in line and " addr " not in line and "check-ssl" not in line
