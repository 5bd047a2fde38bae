"""Read scaling (mlflow_ha_read_replica, docs/performance.md "Read scaling"): one switch turns on MLflow's read-only
engine on the load balancers' port of the synchronous standbys and synchronous_commit remote_apply in Patroni. That
port (HAProxy's postgres_sync listener) is there either way, so that turning the option off closes nothing under the
MLflow servers; off (the default, the lab) MLflow and Patroni render what they rendered before."""

from __future__ import annotations

import asyncio
import contextlib
import re
from urllib.parse import parse_qs, urlsplit

import jinja2
import pytest
import yaml
from ansible.template import trust_as_template
from role_vars import ROOT, render
from test_entrypoint import CLOUD, LAB, NO_BACKUPS, SITE, VIP, env, firewall_rules, needs_ansible, play, templar, value
from test_mlflow_app import app_module as APP_MODULE  # the role's program, loaded once there

ON = {**LAB, "mlflow_ha_read_replica": True}
HAPROXY_TEMPLATE = (ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2").read_text()
MEMBERS = [{"name": "pg1", "address": "10.0.0.11"}, {"name": "pg2", "address": "10.0.0.12"},
           {"name": "pg3", "address": "10.0.0.13"}]


def postgres_listeners(**variables) -> str:
    """The template's PostgreSQL block rendered with plain Jinja (the collection's filters stubbed: the unit tests do
    not load the collection), the haproxy role's defaults under ``variables``."""
    block = re.search(r"\{% if haproxy_postgres_enabled %\}.*?(?=\{% if haproxy_s3_enabled %\})", HAPROXY_TEMPLATE,
                      re.S).group(0)
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)  # as the template module
    environment.filters["mlops.mlflow_ha.url_host"] = lambda address: address
    defaults = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())
    plain = {k: v for k, v in defaults.items() if not (isinstance(v, str) and "{{" in v)}
    return environment.from_string(block).render(
        {**plain, "haproxy_bind_address": "*", "haproxy_postgres_enabled": True,
         "_haproxy_postgres_servers": MEMBERS, "_haproxy_postgres_check_tls": "", "haproxy_postgres_restapi_tls": False,
         **variables})


def listener(config: str, name: str) -> list[str]:
    found = re.search(r"^listen %s\n((?:    .*\n?)*)" % name, config, re.M)
    return [] if found is None else [line.strip() for line in found.group(1).splitlines()]


def preflight(role: str, task: str, site: dict, **extra) -> bool:
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "preflight.yml").read_text())
    check = next(t for t in tasks if t["name"] == task)["ansible.builtin.assert"]
    t = templar(role, site, **extra)
    that = [check["that"]] if isinstance(check["that"], str) else check["that"]
    return all(t.template(trust_as_template("{{ %s }}" % cond)) for cond in that)


class TestOffByDefault:
    def test_the_lab_leaves_it_off(self):
        assert "mlflow_ha_read_replica" not in LAB
        assert value("mlflow", "mlflow_db_read_replica", LAB) is False
        assert value("haproxy", "haproxy_postgres_sync_enabled", LAB, host="lb1") is True, "see the next class"
        assert value("patroni", "patroni_synchronous_commit", LAB, host="pg1") == "on"

    def test_mlflow_gets_no_read_replica_uri(self):
        assert "MLFLOW_READ_REPLICA_BACKEND_STORE_URI" not in env(LAB)
        assert value("mlflow", "_mlflow_db_pools_per_worker", LAB) == 2

    def test_haproxy_keeps_the_synchronous_listener_so_that_turning_the_option_off_cuts_no_read(self):
        config = postgres_listeners()  # the role's defaults
        assert listener(config, "postgres_primary") and listener(config, "postgres_replicas")
        assert listener(config, "postgres_sync")
        assert "postgres_sync" not in postgres_listeners(haproxy_postgres_sync_enabled=False)

    def test_patroni_writes_postgresqls_default(self):
        parameters = value("patroni", "_patroni_dynamic_config", LAB, host="pg1")["postgresql"]["parameters"]
        assert parameters["synchronous_commit"] == "on" and parameters["hot_standby_feedback"] == "off"


class TestOn:
    def test_mlflow_reads_through_the_synchronous_port_with_the_primarys_tls_and_options(self):
        got = env(ON)
        primary = urlsplit(got["MLFLOW_BACKEND_STORE_URI"])
        replica = urlsplit(got["MLFLOW_READ_REPLICA_BACKEND_STORE_URI"])
        assert (primary.hostname, primary.port) == (VIP, 5000)
        assert (replica.hostname, replica.port) == (VIP, 5002)
        assert (replica.scheme, replica.username, replica.password, replica.path) == (
            primary.scheme, primary.username, primary.password, primary.path)
        assert parse_qs(replica.query) == parse_qs(primary.query)
        assert parse_qs(replica.query)["sslmode"] == ["verify-full"]

    def test_the_user_store_stays_on_the_primary(self):
        auth = value("mlflow", "_mlflow_auth_db_uri", ON)
        assert urlsplit(auth).port == 5000
        assert "read_database_uri" not in (ROOT / "roles" / "mlflow" / "templates" / "basic_auth.ini.j2").read_text()

    def test_the_read_pool_counts_against_the_budget(self):
        assert value("mlflow", "_mlflow_db_pools_per_worker", ON) == 3
        assert value("mlflow", "_mlflow_db_pools_per_worker", {**ON, "mlflow_auth_enabled": False}) == 2

    def test_preflight_refuses_the_read_write_port_for_reads(self):
        task = "Check the read replica port (mlflow_db_read_replica)"
        assert preflight("mlflow", task, ON)
        assert not preflight("mlflow", task, {**ON, "mlflow_db_read_replica_port": 5000})

    def test_haproxy_sends_reads_to_synchronous_standbys_and_falls_back_to_the_primary(self):
        lines = listener(postgres_listeners(haproxy_postgres_sync_enabled=True), "postgres_sync")
        assert "bind *:5002" in lines
        assert "http-check send meth GET uri /sync?lag=1MB&replication_state=streaming" in lines
        assert any(line.startswith("default-server ") and "on-marked-down shutdown-sessions" in line for line in lines)
        servers = [line for line in lines if line.startswith("server ")]
        assert servers[:3] == [f"server {m['name']} {m['address']}:6432 check port 8008" for m in MEMBERS]
        backups = [f"server {m['name']}_primary {m['address']}:6432 backup track postgres_primary/{m['name']}"
                   for m in MEMBERS]
        assert servers[3:] == backups

    def test_the_tracked_servers_exist_in_the_read_write_listener(self):
        config = postgres_listeners(haproxy_postgres_sync_enabled=True)
        primary = {line.split()[1] for line in listener(config, "postgres_primary") if line.startswith("server ")}
        tracked = {m.group(1) for m in re.finditer(r"track postgres_primary/(\S+)", config)}
        assert tracked and tracked <= primary
        assert any(line == "http-check send meth GET uri /primary" for line in listener(config, "postgres_primary"))

    def test_haproxy_checks_the_synchronous_standbys_over_tls_like_the_other_listeners(self):
        tls = " check-ssl verify required ca-file /etc/haproxy/tls/ca.crt"
        config = postgres_listeners(haproxy_postgres_sync_enabled=True, haproxy_postgres_restapi_tls=True,
                                    _haproxy_postgres_check_tls=tls)
        sync = [line for line in listener(config, "postgres_sync") if line.startswith("server pg1 ")]
        replicas = [line for line in listener(config, "postgres_replicas") if line.startswith("server pg1 ")]
        assert sync == replicas and "verifyhost pg1" in sync[0]

    def test_the_ports_stay_distinct_in_haproxys_preflight(self):
        tasks = yaml.safe_load((ROOT / "roles" / "haproxy" / "tasks" / "preflight.yml").read_text())
        ports = next(t for t in tasks if t["name"] == "Check that the ports differ")["vars"]["_haproxy_ports"]
        assert "haproxy_postgres_sync_port" in ports

    def test_the_load_balancers_admit_the_mlflow_hosts_on_the_port(self):
        rule = firewall_rules("lb1", ON)["PostgreSQL through the load balancers (primary, replicas)"]
        assert [str(p) for p in rule["tcp"]] == ["5000", "5001", "5002"] and rule["hosts"] == ["app1"]

    def test_patroni_commits_with_remote_apply(self):
        parameters = value("patroni", "_patroni_dynamic_config", ON, host="pg1")["postgresql"]["parameters"]
        assert parameters["synchronous_commit"] == "remote_apply" and parameters["hot_standby_feedback"] == "on"

    def test_a_users_own_parameter_does_not_silently_win(self):
        combined = render("patroni", "_patroni_dynamic_config.postgresql.parameters.synchronous_commit",
                          patroni_synchronous_commit="remote_apply", patroni_pgbackrest=False,
                          patroni_postgresql_parameters={"synchronous_commit": "on"})
        assert combined == "on", "the inventory's parameters are combined last"
        task = "Check the commit level (synchronous_commit)"
        assert not preflight("patroni", task, ON, host="pg1",
                             patroni_postgresql_parameters={"synchronous_commit": "on"})


@pytest.mark.parametrize("extra, ok", [
    ({}, True),
    ({"patroni_synchronous_mode": False}, False),
    ({"patroni_synchronous_node_count": 0}, False),
    ({"patroni_synchronous_commit": "remote_write"}, False),
])
def test_patroni_preflight_needs_a_synchronous_standby_for_remote_apply(extra, ok):
    assert preflight("patroni", "Check the commit level (synchronous_commit)", ON, host="pg1", **extra) is ok


def test_without_the_option_patroni_needs_no_synchronous_mode():
    assert preflight("patroni", "Check the commit level (synchronous_commit)", LAB, host="pg1",
                     patroni_synchronous_mode=False)


@needs_ansible
def test_site_accepts_the_switch_behind_the_vip():
    out = play("inventory_site.yml", SITE, "always", {**NO_BACKUPS, "mlflow_ha_read_replica": True})
    assert out.startswith("ok"), out[-2000:]


@needs_ansible
def test_site_refuses_it_behind_a_cloud_load_balancer_without_the_port():
    out = play("inventory_site.yml", SITE, "always",
               {**NO_BACKUPS, **CLOUD, "mlflow_ha_vip": "", "mlflow_ha_read_replica": True})
    assert out.startswith("failed") and "that the cloud load balancer template does not have" in out


# --- The key searches read from the primary (roles/mlflow/files/mlflow_ha_app.py: PrimaryReads, primary_aware) -----

class Recorder:
    """The wrapped app: what it received, and whether PRIMARY_READS was set while it ran."""

    def __init__(self, app_module):
        self.app_module, self.received, self.primary = app_module, [], None

    async def __call__(self, scope, receive, send):
        self.primary = self.app_module.PRIMARY_READS.get()
        while True:
            message = await receive()
            self.received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})


def search(app, path, query=b"", bodies=(b"",)):
    messages = [{"type": "http.request", "body": b, "more_body": i < len(bodies) - 1} for i, b in enumerate(bodies)]
    pending = list(messages)

    async def receive():
        return pending.pop(0)

    async def send(message):
        return None

    scope = {"type": "http", "method": "POST" if bodies != (b"",) else "GET", "path": path, "query_string": query,
             "headers": []}
    asyncio.run(app(scope, receive, send))
    return messages


@pytest.fixture(name="app_module")
def fixture_app_module():
    return APP_MODULE


def test_a_version_key_search_in_the_query_string_is_pinned(app_module):
    inner = Recorder(app_module)
    search(app_module.PrimaryReads(inner), "/api/2.0/mlflow/model-versions/search",
           b"filter=name+%3D+%27m%27+and+tags.%60mlflow_ha.idempotency_key%60+%3D+%27k%27")
    assert inner.primary is True
    assert app_module.PRIMARY_READS.get() is False, "reset after the request"


def test_a_run_key_search_in_a_split_body_is_pinned_and_the_body_passes_unchanged(app_module):
    inner = Recorder(app_module)
    sent = search(app_module.PrimaryReads(inner), "/ajax-api/2.0/mlflow/runs/search",
                  bodies=(b'{"experiment_ids": ["1"], "filter": "tags.idem', b'potency_key = \'k\'"}'))
    assert inner.primary is True, "the tag's name split between two messages is still found"
    assert inner.received == sent


@pytest.mark.parametrize("path, bodies", [
    ("/api/2.0/mlflow/runs/search", (b'{"filter": "attributes.status = \'RUNNING\'"}',)),
    ("/api/2.0/mlflow/runs/get", (b'{"run_id": "idempotency_key"}',)),
    ("/api/2.0/mlflow/model-versions/get", (b"",)),
])
def test_other_reads_are_not_pinned(app_module, path, bodies):
    inner = Recorder(app_module)
    sent = search(app_module.PrimaryReads(inner), path, bodies=bodies)
    assert inner.primary is False and inner.received == sent


def test_pinned_reads_take_the_primary_session_and_the_others_mlflows_routing(app_module):
    used = []

    def routing(write, read, db_type):
        return lambda read_only=True: session_of(used, "routed", read_only)

    def managed(write, db_type):
        return lambda read_only=True: session_of(used, "primary", read_only)

    make = app_module.primary_aware(routing, managed)("write", "read", "postgresql")
    with make(read_only=True):
        pass
    token = app_module.PRIMARY_READS.set(True)
    try:
        with make(read_only=True):
            pass
    finally:
        app_module.PRIMARY_READS.reset(token)
    with make(read_only=False):
        pass
    assert used == [("routed", True), ("primary", True), ("routed", False)]


def session_of(used, name, read_only):
    @contextlib.contextmanager
    def session():
        used.append((name, read_only))
        yield name
    return session()


def test_only_a_server_with_a_read_replica_gets_the_middleware(app_module):
    inner = Recorder(app_module)
    assert app_module.primary_reads(inner, {}) is inner
    assert isinstance(app_module.primary_reads(inner, {"MLFLOW_READ_REPLICA_BACKEND_STORE_URI": "postgresql://x"}),
                      app_module.PrimaryReads)
    assert isinstance(app_module.primary_reads(inner, {"_MLFLOW_SERVER_READ_REPLICA_BACKEND_STORE": "postgresql://x"}),
                      app_module.PrimaryReads)
