"""Changes through Patroni's REST API (module_utils/patroni_admin.py, modules patroni_config and patroni_restart),
against scripted REST answers on a fake clock."""

from __future__ import annotations

import base64
import importlib
import json

import pytest
import yaml
from fakes import RouteTransport, json_ok, ok, refused, timed_out
from test_patroni import A, B, C, cluster_doc, member

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import PatroniClient
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni_admin import (
    ChangeError,
    apply_dynamic_config,
    config_drift,
    dotted,
    nested,
    restart_member,
    same_setting,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules import patroni_config, patroni_restart, patroni_switchover

AUTH = "Basic " + base64.b64encode(b"patroni:s3cret").decode()
STATUS = {A: "http://10.0.0.21:8008/patroni", B: "http://10.0.0.22:8008/patroni", C: "http://10.0.0.23:8008/patroni"}

# What the patroni role asks for (vars/main.yml _patroni_dynamic_config), with Ansible's types.
WANTED = {
    "ttl": 20, "loop_wait": 2, "retry_timeout": 5, "synchronous_mode": True, "failsafe_mode": True,
    "postgresql": {"use_pg_rewind": True, "use_slots": True,
                   "parameters": {"max_connections": 200, "shared_buffers": "128MB", "hot_standby": "on"}},
}
# The same settings as the DCS keeps them after someone wrote them as text, plus one the role does not manage.
IN_STEP = {
    "ttl": "20", "loop_wait": 2, "retry_timeout": 5, "synchronous_mode": True, "failsafe_mode": True,
    "maximum_lag_on_failover": 1048576,
    "postgresql": {"use_pg_rewind": True, "use_slots": True,
                   "parameters": {"max_connections": "200", "shared_buffers": "128MB", "hot_standby": "on",
                                  "wal_level": "replica"}},
}
HEALTHY = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby"), member("pg3"))


def drifted(**changes):
    doc = json.loads(json.dumps(IN_STEP))
    for path, value in changes.items():
        section = doc
        keys = path.split("__")
        for key in keys[:-1]:
            section = section.setdefault(key, {})
        section[keys[-1]] = value
    return doc


def client_for(clock, routes, **kw):
    transport = RouteTransport(clock, routes)
    kw.setdefault("username", "patroni")
    kw.setdefault("password", "s3cret")
    return PatroniClient([A, B, C], transport=transport, clock=clock, **kw), transport


class TestDrift:
    def test_types_are_compared_as_text(self):
        assert config_drift(WANTED, IN_STEP) == []
        assert same_setting(200, "200") and same_setting(True, "true") and same_setting("on", "on")
        assert not same_setting(True, "on") and not same_setting(0, None)

    def test_nested_settings_are_reported_by_path(self):
        current = drifted(loop_wait=10, postgresql__parameters__max_connections="100", postgresql__use_slots=False)
        assert [dotted(p) for p in config_drift(WANTED, current)] == [
            "loop_wait", "postgresql.use_slots", "postgresql.parameters.max_connections"]

    def test_missing_settings_drift_and_null_means_unset(self):
        current = drifted()
        del current["postgresql"]["parameters"]["shared_buffers"]
        assert [dotted(p) for p in config_drift(WANTED, current)] == ["postgresql.parameters.shared_buffers"]
        assert config_drift({"postgresql": {"parameters": {"archive_command": None}}}, IN_STEP) == []
        assert [dotted(p) for p in config_drift({"postgresql": {"parameters": {"wal_level": None}}}, IN_STEP)] == [
            "postgresql.parameters.wal_level"]
        assert [dotted(p) for p in config_drift(WANTED, {})][:2] == ["ttl", "loop_wait"]

    def test_a_section_that_is_not_a_section_in_the_dcs(self):
        assert [dotted(p) for p in config_drift({"postgresql": {"use_slots": True}}, {"postgresql": "x"})] == [
            "postgresql.use_slots"]

    def test_nested_builds_the_patch_body_from_paths(self):
        paths = [("loop_wait",), ("postgresql", "parameters", "max_connections"), ("postgresql", "parameters", "x")]
        assert nested(paths, WANTED) == {"loop_wait": 2, "postgresql": {"parameters": {"max_connections": 200}}}
        # A custom parameter whose name holds a dot stays one key.
        assert nested([("postgresql", "parameters", "auto_explain.log_min_duration")],
                      {"postgresql": {"parameters": {"auto_explain.log_min_duration": "1s"}}}) == {
            "postgresql": {"parameters": {"auto_explain.log_min_duration": "1s"}}}


def config_routes(current, cluster=None, patched=None, statuses=None):
    routes = {"GET %s/config" % A: [json_ok(current)], "GET %s/cluster" % A: [json_ok(cluster or HEALTHY)],
              "PATCH %s/config" % A: [json_ok(patched if patched is not None else current)]}
    for base, answers in (statuses or {}).items():
        routes["GET %s" % STATUS[base]] = [json_ok(a) for a in answers]
    return routes


class TestApplyDynamicConfig:
    def test_no_drift_sends_no_patch(self, clock):
        client, transport = client_for(clock, config_routes(IN_STEP))
        done = apply_dynamic_config(client, WANTED, apply_timeout=60)
        assert (done.changed, done.drift, done.pending_restart) == (False, [], [])
        assert transport.sent("PATCH", "/config") == []
        assert transport.sent("GET", "/patroni") == [], "no wait without a PATCH"
        assert done.to_dict()["leader"] == "pg1" and done.to_dict()["applied"] is None

    def test_drift_patches_only_the_drifting_settings_with_auth(self, clock):
        current = drifted(loop_wait=10, postgresql__parameters__max_connections="100")
        cluster = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", pending_restart=True),
                              member("pg3"))
        client, transport = client_for(clock, config_routes(current, cluster, patched=IN_STEP))
        done = apply_dynamic_config(client, WANTED)
        assert done.changed
        assert [dotted(p) for p in done.drift] == ["loop_wait", "postgresql.parameters.max_connections"]
        patches = transport.sent("PATCH", "/config")
        assert len(patches) == 1
        wanted_now = {"loop_wait": 2, "postgresql": {"parameters": {"max_connections": 200}}}
        assert json.loads(patches[0]["body"]) == wanted_now
        assert patches[0]["headers"]["Authorization"] == AUTH
        assert done.config == IN_STEP and done.pending_restart == ["pg2"]
        assert done.before == {"loop_wait": 10, "postgresql": {"parameters": {"max_connections": "100"}}}
        assert done.after == wanted_now

    def test_null_removes_a_setting(self, clock):
        client, transport = client_for(clock, config_routes(IN_STEP))
        apply_dynamic_config(client, {"maximum_lag_on_failover": None})
        assert json.loads(transport.sent("PATCH", "/config")[0]["body"]) == {"maximum_lag_on_failover": None}

    def test_an_answer_without_the_configuration_is_merged_here(self, clock):
        routes = config_routes(drifted(ttl=30, postgresql__parameters__max_connections=100))
        routes["PATCH %s/config" % A] = [ok(b"")]
        client, _t = client_for(clock, routes)
        done = apply_dynamic_config(client, dict(WANTED, maximum_lag_on_failover=None))
        assert done.config == {k: v for k, v in drifted(ttl=20, postgresql__parameters__max_connections=200).items()
                               if k != "maximum_lag_on_failover"}

    def test_check_mode_reports_and_writes_nothing(self, clock):
        client, transport = client_for(clock, config_routes(drifted(ttl=30)))
        done = apply_dynamic_config(client, WANTED, check_mode=True, apply_timeout=60)
        assert done.changed and [dotted(p) for p in done.drift] == ["ttl"]
        assert (done.before, done.after) == ({"ttl": 30}, {"ttl": 20})
        assert [r["method"] for r in transport.requests] == ["GET", "GET"]

    def test_waits_until_every_member_applied_and_takes_their_own_pending_flag(self, clock):
        # /cluster still says nothing is pending (the members' DCS keys lag one loop); /patroni knows better.
        statuses = {base: [{"state": "running", "dcs_last_seen": t, "pending_restart": t >= 103 and base == B}
                           for t in (100, 101, 102, 103)] for base in (A, B, C)}
        client, transport = client_for(clock, config_routes(drifted(postgresql__parameters__max_connections=100),
                                                            patched=IN_STEP, statuses=statuses))
        done = apply_dynamic_config(client, WANTED, apply_timeout=60, poll_interval=1)
        assert done.pending_restart == ["pg2"] and done.applied == ["pg1", "pg2", "pg3"] and done.unconfirmed == []
        assert done.checks == 4 and 3 <= done.waited < 4
        assert len(transport.sent("GET", "/patroni")) == 12
        # Serving GET /cluster makes a member read the DCS, which moves its dcs_last_seen: not asked while waiting.
        assert [r["url"].rpartition("/")[2] for r in transport.requests if r["method"] == "GET"] == (
            ["config", "cluster"] + ["patroni"] * 12 + ["cluster"])
        facts = done.to_dict()
        assert [m["pending_restart"] for m in facts["members"]] == [False, True, False]

    def test_a_member_that_never_confirms_is_listed_not_fatal(self, clock):
        statuses = {A: [{"dcs_last_seen": t} for t in range(100, 140)], B: [{"state": "running"}],
                    C: [{"dcs_last_seen": t} for t in range(100, 140)]}
        client, _t = client_for(clock, config_routes(drifted(ttl=30), statuses=statuses))
        done = apply_dynamic_config(client, WANTED, apply_timeout=10, poll_interval=2)
        assert done.applied == ["pg1", "pg3"] and done.unconfirmed == ["pg2"] and done.waited <= 10

    def test_cluster_unreadable_after_the_wait_keeps_the_view_from_before(self, clock):
        statuses = {base: [{"dcs_last_seen": t} for t in (100, 101, 102, 103)] for base in (A, B, C)}
        routes = config_routes(drifted(ttl=30), statuses=statuses)
        routes["GET %s/cluster" % A] = [json_ok(HEALTHY), ok(b"", status=502)]
        client, _t = client_for(clock, routes, max_attempts=1)
        done = apply_dynamic_config(client, WANTED, apply_timeout=60)
        assert done.cluster.leader.name == "pg1" and done.unconfirmed == []

    def test_refused_patch_says_why(self, clock):
        routes = config_routes(drifted(ttl=30))
        routes["PATCH %s/config" % A] = [ok(b"no auth header received", status=401)]
        client, transport = client_for(clock, routes)
        with pytest.raises(ChangeError) as info:
            apply_dynamic_config(client, WANTED)
        assert str(info.value).startswith("Patroni refused to change the dynamic configuration (ttl) (HTTP 401: no "
                                          "auth header received).")
        assert info.value.facts == {"changed": False, "drift": ["ttl"]}
        assert len(transport.sent("PATCH", "/config")) == 1

    def test_patch_is_retried_on_another_member_after_a_timeout(self, clock):
        routes = config_routes(drifted(ttl=30))
        routes["PATCH %s/config" % A] = [timed_out()]
        routes["PATCH %s/config" % B] = [json_ok(IN_STEP)]
        routes["GET %s/cluster" % B] = [json_ok(HEALTHY)]
        client, _t = client_for(clock, routes)
        done = apply_dynamic_config(client, WANTED)
        assert done.changed and done.config == IN_STEP

    def test_patch_that_may_have_arrived_says_so(self, clock):
        routes = config_routes(drifted(ttl=30))
        routes.update({"PATCH %s/config" % e: [timed_out()] for e in (A, B, C)})
        client, _t = client_for(clock, routes, max_attempts=3)
        with pytest.raises(ChangeError) as info:
            apply_dynamic_config(client, WANTED)
        assert str(info.value).startswith("could not change the dynamic configuration (ttl); it may have been "
                                          "written: Patroni REST API: PATCH /config failed after 3 attempt(s)")
        assert info.value.facts["changed"] is True
        routes.update({"PATCH %s/config" % e: [refused()] for e in (A, B, C)})
        client, _t = client_for(clock, routes, max_attempts=3)
        with pytest.raises(ChangeError) as info:
            apply_dynamic_config(client, WANTED)
        assert info.value.facts["changed"] is False and "may have been written" not in str(info.value)

    def test_unreadable_config_writes_nothing(self, clock):
        routes = {"GET %s/config" % e: [refused()] for e in (A, B, C)}
        client, transport = client_for(clock, routes, max_attempts=3)
        with pytest.raises(HttpClientError, match=r"GET /config failed after 3 attempt\(s\)"):
            apply_dynamic_config(client, WANTED)
        assert transport.sent("PATCH", "/config") == []


def restart_routes(cluster=None, status=None, post=None, target=B):
    routes = {"GET %s/cluster" % A: [json_ok(cluster or HEALTHY)]}
    if status is not None:
        routes["GET %s" % STATUS[target]] = status if isinstance(status, list) else [json_ok(status)]
    if post is not None:
        routes["POST %s/restart" % target] = post
    return routes


PENDING = {"state": "running", "pending_restart": True, "postmaster_start_time": "2030-01-01 10:00:00+00:00",
           "pending_restart_reason": {"max_connections": {"old_value": "100", "new_value": "200"}}}
RUNNING = {"state": "running", "postmaster_start_time": "2030-01-01 10:00:00+00:00"}


class TestRestartMember:
    def test_restarts_a_pending_member_on_its_own_api(self, clock):
        client, transport = client_for(clock, restart_routes(status=PENDING, post=[ok(b"restarted successfully")]))
        done = restart_member(client, "pg2")
        assert done.changed and done.answer == "restarted successfully" and done.role == "sync_standby"
        assert done.pending_restart_reason == {"max_connections": {"old_value": "100", "new_value": "200"}}
        posts = transport.sent("POST", "/restart")
        assert [p["url"] for p in posts] == [B + "/restart"]
        assert json.loads(posts[0]["body"]) == {"restart_pending": True}
        assert posts[0]["headers"]["Authorization"] == AUTH
        assert posts[0]["timeout"] == 120.0, "Patroni answers once PostgreSQL is up again"

    def test_nothing_pending_sends_nothing(self, clock):
        client, transport = client_for(clock, restart_routes(status=RUNNING, post=[ok(b"never")]))
        done = restart_member(client, "pg2")
        assert not done.changed and done.answer == "no restart pending"
        assert transport.sent("POST", "/restart") == []

    def test_unconditional_restart_leaves_the_condition_out(self, clock):
        client, transport = client_for(clock, restart_routes(status=RUNNING, post=[ok(b"restarted successfully")]))
        assert restart_member(client, "pg2", restart_pending=False).changed
        assert json.loads(transport.sent("POST", "/restart")[0]["body"]) == {}, "Patroni tests for the key"

    def test_check_mode_reports_what_would_restart(self, clock):
        client, transport = client_for(clock, restart_routes(status=PENDING, post=[ok(b"never")]))
        done = restart_member(client, "pg2", check_mode=True)
        assert done.changed and done.pending_restart and done.answer == ""
        assert transport.sent("POST", "/restart") == []

    def test_unreadable_member_status_falls_back_to_the_cluster_view(self, clock):
        cluster = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", pending_restart=True))
        client, _t = client_for(clock, restart_routes(cluster, status=[refused()]), request_timeout=1)
        done = restart_member(client, "pg2", check_mode=True)
        assert done.changed and done.pending_restart and done.pending_restart_reason is None

    def test_unknown_member_is_named_with_the_members(self, clock):
        client, _t = client_for(clock, restart_routes())
        with pytest.raises(ChangeError) as info:
            restart_member(client, "pg4")
        assert str(info.value) == ("cannot restart PostgreSQL on pg4: it is not a member of the cluster (members: "
                                   "pg1 (leader, running), pg2 (sync_standby, running), pg3 (replica, running))")

    def test_condition_no_longer_met_is_not_a_change(self, clock):
        client, _t = client_for(clock, restart_routes(
            status=PENDING, post=[ok(b"restart conditions are not satisfied", status=503)]))
        done = restart_member(client, "pg2")
        assert not done.changed and "restart conditions are not satisfied" in done.answer

    @pytest.mark.parametrize(("answer", "why"), [
        (b"restart failed", "Patroni could not do it (HTTP 503: restart failed)"),
        (b"reinitialize already in progress",
         "another operation is under way on it (HTTP 503: reinitialize already in progress)")])
    def test_503_names_the_member_and_the_reason(self, clock, answer, why):
        client, transport = client_for(clock, restart_routes(status=PENDING, post=[ok(answer, status=503)]))
        with pytest.raises(ChangeError) as info:
            restart_member(client, "pg2")
        assert str(info.value) == "could not restart PostgreSQL on pg2: " + why
        assert len(transport.sent("POST", "/restart")) == 1, "a failed restart is not repeated"

    def test_401_hints_at_the_credentials(self, clock):
        client, _t = client_for(clock, restart_routes(status=PENDING, post=[ok(b"no auth header received", 401)]))
        with pytest.raises(ChangeError) as info:
            restart_member(client, "pg2")
        assert str(info.value).startswith("could not restart PostgreSQL on pg2: its Patroni refused (HTTP 401: no "
                                          "auth header received); check the REST API username and password.")
        assert info.value.facts == {"member": "pg2", "role": "sync_standby", "changed": False}

    def test_refused_connection_is_retried_then_reported(self, clock):
        client, transport = client_for(clock, restart_routes(status=PENDING, post=[refused()]))
        with pytest.raises(ChangeError) as info:
            restart_member(client, "pg2")
        assert str(info.value).startswith("could not restart PostgreSQL on pg2: its REST API did not take the "
                                          "request. Patroni REST API on pg2: POST /restart failed after 3 attempt(s)")
        assert len(transport.sent("POST", "/restart")) == 3

    def test_lost_answer_is_settled_by_the_postmaster_start_time(self, clock):
        restarted = dict(RUNNING, postmaster_start_time="2030-01-01 10:05:00+00:00")
        status = [json_ok(PENDING), json_ok(dict(PENDING, state="restarting")), json_ok(restarted)]
        client, transport = client_for(clock, restart_routes(status=status, post=[timed_out()]))
        done = restart_member(client, "pg2", poll_interval=2)
        assert done.changed and done.answer.startswith("no answer to the restart request; pg2 was seen running")
        assert len(transport.sent("POST", "/restart")) == 1, "a restart that may be under way is not repeated"

    def test_lost_answer_without_a_restart_fails_with_the_last_look(self, clock):
        client, _t = client_for(clock, restart_routes(status=PENDING, post=[timed_out()]))
        with pytest.raises(ChangeError) as info:
            restart_member(client, "pg2", timeout=10, poll_interval=2)
        assert str(info.value).startswith("could not confirm a restart of PostgreSQL on pg2: the request got no "
                                          "answer, and ")
        assert "pg2 was not running a restarted PostgreSQL (last look: state running)" in str(info.value)
        assert info.value.facts["changed"] is True


# -- the modules ------------------------------------------------------------------------------------------


class Captured(Exception):
    pass


def argument_spec_of(module, monkeypatch):
    seen = {}

    def fake_module(**kwargs):
        seen.update(kwargs)
        raise Captured()

    monkeypatch.setattr(module, "AnsibleModule", fake_module)
    with pytest.raises(Captured):
        module.main()
    return seen


def documented(module):
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = dict(doc["options"])
    for fragment in doc.get("extends_documentation_fragment", []):
        # mlops.mlflow_ha.<fragment>[.<variant>]: a variant is the fragment class's attribute of that name, upper case
        name, _sep, variant = fragment.split(".", 2)[2].partition(".")
        source = importlib.import_module("ansible_collections.mlops.mlflow_ha.plugins.doc_fragments." + name)
        text = getattr(source.ModuleDocFragment, variant.upper() or "DOCUMENTATION")
        options.update(yaml.safe_load(text).get("options", {}))
    return doc, options


TLS = dict(ca_path=None, client_cert=None, client_key=None, validate_certs=True)


def config_params(**kw):
    base = dict(TLS, endpoints=[A, B, C], username="patroni", password="s3cret", config=WANTED, apply_timeout=0.0,
                poll_interval=1.0, timeout=5.0, deadline=30.0, max_attempts=6)
    base.update(kw)
    return base


def restart_params(**kw):
    base = dict(TLS, endpoints=[A, B, C], member="pg2", username="patroni", password="s3cret", restart_pending=True,
                timeout=120.0, request_timeout=5.0, poll_interval=2.0)
    base.update(kw)
    return base


def switchover_params(**kw):
    base = dict(TLS, endpoints=[A, B, C], username="patroni", password="s3cret", leader=None, candidate=None,
                require_healthy_candidate=True, timeout=60.0, poll_interval=1.0, request_timeout=5.0)
    base.update(kw)
    return base


class TestModules:
    @pytest.mark.parametrize(("module", "params"), [(patroni_config, config_params),
                                                    (patroni_restart, restart_params),
                                                    (patroni_switchover, switchover_params)])
    def test_documentation_matches_the_argument_spec(self, monkeypatch, module, params):
        doc, options = documented(module)
        spec = argument_spec_of(module, monkeypatch)
        arguments = spec["argument_spec"]
        assert set(options) == set(arguments) == set(params())
        for name, arg in arguments.items():
            assert options[name]["type"] == arg["type"], name
            assert options[name].get("default") == arg.get("default"), name
            assert options[name].get("required", False) == arg.get("required", False), name
            assert options[name].get("elements") == arg.get("elements"), name
            assert options[name].get("description"), name
        assert arguments["password"]["no_log"] is True
        assert spec["supports_check_mode"] is True and spec["required_together"] == [("username", "password")]
        assert doc["attributes"]["check_mode"]["support"] == "full"
        yaml.safe_load(module.EXAMPLES)

    def test_config_module_result_matches_return_and_diff(self, clock):
        transport = RouteTransport(clock, config_routes(drifted(ttl=30)))
        result = patroni_config.configure(config_params(), True, True, transport, clock)
        assert set(yaml.safe_load(patroni_config.RETURN)) | {"changed", "diff"} == set(result)
        assert result["changed"] and result["drift"] == ["ttl"] and result["leader"] == "pg1"
        assert result["diff"] == {"before": {"ttl": 30}, "after": {"ttl": 20}}
        assert transport.sent("PATCH", "/config") == []

    def test_restart_module_result_matches_return(self, clock):
        transport = RouteTransport(clock, restart_routes(status=PENDING, post=[ok(b"restarted successfully")]))
        result = patroni_restart.restart(restart_params(), False, transport, clock)
        assert set(yaml.safe_load(patroni_restart.RETURN)) | {"changed"} == set(result)
        assert result["changed"] and result["member"] == "pg2" and result["answer"] == "restarted successfully"
