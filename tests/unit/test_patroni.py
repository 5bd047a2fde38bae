"""Patroni client, cluster judgement and switchover flow, against scripted REST answers on a fake clock."""

from __future__ import annotations

import base64
import json

import pytest
from fakes import RouteTransport, json_ok, ok, refused, timed_out

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import (
    PatroniClient,
    PatroniError,
    ReplicationRow,
    assess,
    change_module_kwargs,
    check_health,
    choose_candidate,
    client_from_params,
    parse_cluster,
    patroni_argument_spec,
    perform_switchover,
    streaming_status,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules import patroni_cluster_info, patroni_switchover

A = "http://10.0.0.21:8008"
B = "http://10.0.0.22:8008"
C = "http://10.0.0.23:8008"
IP = {"pg1": "10.0.0.21", "pg2": "10.0.0.22", "pg3": "10.0.0.23"}


def member(name, role="replica", state="running", lag=0, timeline=3, **extra):
    doc = {"name": name, "role": role, "state": state, "api_url": "http://%s:8008/patroni" % IP[name],
           "host": IP[name], "port": 5432, "timeline": timeline}
    if role not in ("leader", "standby_leader"):
        doc["lag"] = lag
    doc.update(extra)
    return doc


def cluster_doc(*members, **extra):
    doc = {"members": list(members)}
    doc.update(extra)
    return doc


HEALTHY = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby"), member("pg3", lag=1024))
SWITCHED = cluster_doc(member("pg1", state="running", timeline=4), member("pg2", "leader", timeline=4),
                       member("pg3", timeline=4))


def members_of(doc):
    return parse_cluster(doc).members


def streaming_rows(*names, state="streaming"):
    return [ReplicationRow(application_name=n, state=state, sync_state="async") for n in names]


def client_for(clock, routes, endpoints=(A, B, C), **kw):
    transport = RouteTransport(clock, routes)
    return PatroniClient(list(endpoints), transport=transport, clock=clock, **kw), transport


class TestParse:
    def test_members_roles_lag_and_addresses(self):
        pg1 = member("pg1", "leader", pending_restart=True, tags={"nofailover": True})
        view = parse_cluster(cluster_doc(member("pg3", lag="unknown"), pg1, member("pg2", "sync_standby", lag=16)),
                             endpoint=A + "/cluster")
        assert [m.name for m in view.members] == ["pg1", "pg2", "pg3"]
        pg1, pg2, pg3 = view.members
        assert view.leader == pg1 and pg1.lag is None and not pg1.lag_unknown and pg1.pending_restart
        assert pg1.nofailover
        assert pg2.is_sync and pg2.lag == 16 and pg2.host == "10.0.0.22" and pg2.port == 5432
        assert pg3.lag is None and pg3.lag_unknown
        assert [m.name for m in view.replicas] == ["pg2", "pg3"]
        assert [m.name for m in view.sync_standbys] == ["pg2"]
        facts = view.to_dict()
        assert facts["leader"] == "pg1" and facts["timeline"] == 3 and facts["sync_standbys"] == ["pg2"]
        assert facts["members"][2]["lag_bytes"] is None

    def test_pause_and_scheduled_switchover(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), pause=True,
                                         scheduled_switchover={"at": "2030-01-01T00:00:00+00:00", "from": "pg1"}))
        assert view.paused and view.scheduled_switchover["from"] == "pg1"

    @pytest.mark.parametrize("doc", [[], {"members": "x"}, {"members": [{"role": "leader"}]}])
    def test_bad_documents_are_refused(self, doc):
        with pytest.raises(ValueError):
            parse_cluster(doc)

    def test_client_reports_an_unreadable_cluster_document(self, clock):
        client, _t = client_for(clock, {"GET %s/cluster" % A: [json_ok({"members": [{"x": 1}]})]})
        with pytest.raises(HttpClientError, match=r"answered GET /cluster with a document we cannot read"):
            client.cluster()

    def test_client_fails_over_between_members(self, clock):
        client, transport = client_for(clock, {"GET %s/cluster" % A: [refused()],
                                               "GET %s/cluster" % B: [json_ok(HEALTHY)]})
        view = client.cluster()
        assert view.leader.name == "pg1" and view.endpoint == B + "/cluster"
        assert [r["url"] for r in transport.requests] == [A + "/cluster", B + "/cluster"]

    def test_leader_and_replication_view(self, clock):
        status = {"state": "running", "role": "master", "replication": [
            {"usename": "replicator", "application_name": "pg2", "client_addr": "10.0.0.22", "state": "streaming",
             "sync_state": "sync", "sync_priority": 1}]}
        client, transport = client_for(clock, {"GET %s/cluster" % A: [json_ok(HEALTHY)],
                                               "GET %s/patroni" % A: [json_ok(status)]})
        assert client.leader().name == "pg1"
        rows, error = client.replication(client.cluster())
        assert error is None
        assert rows == [ReplicationRow("pg2", "streaming", "sync", "10.0.0.22", "replicator", 1)]
        assert transport.sent("GET", "/patroni")[0]["url"] == "http://10.0.0.21:8008/patroni"

    def test_replication_view_absent_means_no_wal_sender(self, clock):
        client, _t = client_for(clock, {"GET %s/patroni" % A: [json_ok({"state": "running", "role": "master"})]})
        assert client.replication(parse_cluster(HEALTHY)) == ([], None)

    def test_replication_view_error_is_reported_not_raised(self, clock):
        client, _t = client_for(clock, {"GET %s/patroni" % A: [refused()]})
        rows, error = client.replication(parse_cluster(HEALTHY))
        assert rows is None and "Patroni REST API on pg1" in error and "connection refused" in error


class TestAssess:
    def test_healthy_cluster_has_no_problems(self):
        assert assess(members_of(HEALTHY), min_replicas=2, require_streaming=True, max_lag_bytes=1048576,
                      require_sync=True, replication=streaming_rows("pg2", "pg3")) == []

    def test_no_leader_names_every_member_and_state(self):
        doc = cluster_doc(member("pg1", state="stopped"), member("pg2"), member("pg3"))
        assert assess(members_of(doc)) == ["no leader: members pg1 (stopped), pg2 (running), pg3 (running)",
                                           "replica pg1 is in state 'stopped', not running"]

    def test_no_members_at_all(self):
        assert assess([]) == ["no leader: no member is registered in the DCS"]

    def test_leader_not_required(self):
        assert assess(members_of(cluster_doc(member("pg2"))), require_leader=False) == []

    def test_leader_not_running(self):
        doc = cluster_doc(member("pg1", "leader", state="restarting"), member("pg2"))
        assert assess(members_of(doc)) == ["leader pg1 is in state 'restarting', not running"]

    def test_lagging_replica(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", lag=0), member("pg3", lag=20971520))
        assert assess(members_of(doc), max_lag_bytes=1048576) == [
            "replica pg3 lags 20971520 bytes, more than the allowed 1048576"]

    def test_lag_at_the_limit_is_fine_and_unknown_lag_is_not(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", lag=1048576), member("pg3", lag="unknown"))
        assert assess(members_of(doc), max_lag_bytes=1048576) == [
            "replica pg3 has an unknown lag (Patroni has no WAL position for it), the allowed maximum is "
            "1048576 bytes"]

    def test_lag_is_not_judged_without_a_limit(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", lag=10 ** 12))
        assert assess(members_of(doc)) == []

    def test_replica_not_streaming_because_it_is_starting(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", state="starting"), member("pg3"))
        assert assess(members_of(doc), require_streaming=True, replication=streaming_rows("pg3")) == [
            "replica pg2 is in state 'starting', not streaming"]

    def test_replica_not_running_without_streaming_requirement(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", state="stopped"))
        assert assess(members_of(doc)) == ["replica pg2 is in state 'stopped', not running"]

    def test_running_replica_without_a_wal_sender_row_is_not_streaming(self):
        # Patroni 3.0.2 says "running" even when the replica lost its upstream: the leader's view tells.
        doc = cluster_doc(member("pg1", "leader"), member("pg2"), member("pg3"))
        assert assess(members_of(doc), require_streaming=True, replication=streaming_rows("pg2")) == [
            "replica pg3 is running, but not streaming: the leader's pg_stat_replication has no row for it"]

    def test_running_replica_in_catchup_is_not_streaming(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2"))
        assert assess(members_of(doc), require_streaming=True, replication=streaming_rows("pg2", state="catchup")) \
            == ["replica pg2 is running, but the leader's pg_stat_replication shows it in state 'catchup', "
                "not streaming"]

    def test_streaming_cannot_be_told_without_the_leaders_view(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2"))
        problems = assess(members_of(doc), require_streaming=True, replication_error="connection refused")
        assert problems == ["cannot tell whether replica pg2 streams: it is running, but whether it streams is "
                            "unknown: the leader's replication view could not be read (connection refused)"]

    def test_patroni_304_states_need_no_leader_view(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", state="streaming"),
                          member("pg3", state="in archive recovery"))
        assert assess(members_of(doc), require_streaming=True) == [
            "replica pg3 is in state 'in archive recovery', not streaming"]

    def test_cascading_replica_is_not_judged_by_the_leader(self):
        pg3 = parse_cluster(cluster_doc(member("pg3", tags={"replicatefrom": "pg2"}))).members[0]
        streams, why = streaming_status(pg3, streaming_rows("pg2"))
        assert streams is None and "replicatefrom" in why

    def test_too_few_healthy_replicas(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2"), member("pg3", state="crashed"))
        assert assess(members_of(doc), min_replicas=2) == [
            "replica pg3 is in state 'crashed', not running", "1 healthy replica (pg2), 2 required"]
        assert assess(members_of(cluster_doc(member("pg1", "leader"))), min_replicas=1) == [
            "0 healthy replicas, 1 required"]

    def test_sync_standby_missing(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2"), member("pg3"))
        assert assess(members_of(doc), require_sync=True) == [
            "no synchronous standby: replicas pg2 (replica), pg3 (replica); is synchronous_mode on?"]
        assert assess(members_of(cluster_doc(member("pg1", "leader"))), require_sync=True) == [
            "no synchronous standby: there are no replicas; is synchronous_mode on?"]

    def test_sync_standby_present_but_unhealthy(self):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", state="starting"), member("pg3"))
        assert assess(members_of(doc), require_sync=True) == [
            "replica pg2 is in state 'starting', not running",
            "no healthy synchronous standby: pg2 (sync_standby, starting)"]

    def test_replica_on_an_old_timeline(self):
        doc = cluster_doc(member("pg1", "leader", timeline=4), member("pg2", timeline=4), member("pg3", timeline=3))
        assert assess(members_of(doc)) == ["replica pg3 is on timeline 3, the leader pg1 on timeline 4"]

    def test_several_problems_are_all_reported(self):
        doc = cluster_doc(member("pg1", state="stopped"), member("pg2", lag=5000), member("pg3", state="starting"))
        problems = assess(members_of(doc), min_replicas=1, max_lag_bytes=100)
        assert problems == [
            "no leader: members pg1 (stopped), pg2 (running), pg3 (starting)",
            "replica pg1 is in state 'stopped', not running",
            "replica pg2 lags 5000 bytes, more than the allowed 100",
            "replica pg3 is in state 'starting', not running",
            "0 healthy replicas, 1 required",
        ]


class TestCheckHealth:
    def test_waits_until_healthy(self, clock):
        lagging = cluster_doc(member("pg1", "leader"), member("pg2", lag=9 * 2 ** 20), member("pg3"))
        client, _t = client_for(clock, {"GET %s/cluster" % A: [json_ok(lagging), json_ok(lagging), json_ok(HEALTHY)]})
        look = check_health(client, max_lag_bytes=2 ** 20, wait_timeout=30, poll_interval=2)
        assert look.healthy and look.checks == 3
        assert 4 <= look.waited < 5
        assert clock.sleeps == [2, 2]

    def test_expiry_reports_the_last_observation(self, clock):
        bad = cluster_doc(member("pg1", state="stopped"), member("pg2"))
        client, _t = client_for(clock, {"GET %s/cluster" % A: [json_ok(bad)]})
        look = check_health(client, wait_timeout=10, poll_interval=2)
        assert not look.healthy and look.problems[0] == "no leader: members pg1 (stopped), pg2 (running)"
        assert look.cluster is not None and look.cluster.member("pg1").state == "stopped"
        assert look.checks >= 5 and look.waited <= 10

    def test_zero_wait_looks_once(self, clock):
        client, _t = client_for(clock, {"GET %s/cluster" % A: [json_ok(cluster_doc(member("pg2")))]})
        look = check_health(client)
        assert look.checks == 1 and clock.sleeps == [] and look.problems

    def test_unreachable_api_is_an_observation_with_the_client_error(self, clock):
        client, _t = client_for(clock, {"GET %s/cluster" % e: [refused()] for e in (A, B, C)}, max_attempts=3)
        look = check_health(client)
        assert look.cluster is None and look.error is not None
        assert look.problems[0].startswith("Patroni REST API: GET /cluster failed after 3 attempt(s)")

    def test_streaming_requirement_reads_the_leader(self, clock):
        status = {"replication": [{"application_name": "pg2", "state": "streaming"},
                                  {"application_name": "pg3", "state": "streaming"}]}
        client, transport = client_for(clock, {"GET %s/cluster" % A: [json_ok(HEALTHY)],
                                               "GET %s/patroni" % A: [json_ok(status)]})
        look = check_health(client, require_streaming=True, min_replicas=2)
        assert look.healthy and len(look.replication) == 2
        assert len(transport.sent("GET", "/patroni")) == 1


class TestChooseCandidate:
    def test_least_lag_wins(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", lag=500), member("pg3", lag=20)))
        assert choose_candidate(view, synchronous_mode=False).name == "pg3"

    def test_unhealthy_and_nofailover_replicas_are_skipped(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", lag=0, tags={"nofailover": True}),
                                         member("pg3", state="starting")))
        with pytest.raises(PatroniError) as info:
            choose_candidate(view, synchronous_mode=False)
        assert str(info.value) == ("no healthy replica to switch over to: pg2 (it carries the nofailover tag), "
                                   "pg3 (it is in state 'starting')")

    def test_no_replicas_at_all(self):
        with pytest.raises(PatroniError, match="no healthy replica to switch over to: the cluster has no replicas"):
            choose_candidate(parse_cluster(cluster_doc(member("pg1", "leader"))), synchronous_mode=False)

    def test_synchronous_mode_picks_the_sync_standby_even_with_more_lag(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", lag=900),
                                         member("pg3", lag=0)))
        assert choose_candidate(view, synchronous_mode=True).name == "pg2"

    def test_synchronous_mode_inferred_from_roles_when_config_unknown(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", lag=900),
                                         member("pg3", lag=0)))
        assert choose_candidate(view, synchronous_mode=None).name == "pg2"

    def test_synchronous_mode_without_sync_standby(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2")))
        with pytest.raises(PatroniError, match="synchronous_mode is on and no member is a synchronous standby"):
            choose_candidate(view, synchronous_mode=True)

    def test_requested_candidate_must_be_sync_in_synchronous_mode(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby"), member("pg3")))
        with pytest.raises(PatroniError) as info:
            choose_candidate(view, "pg3", synchronous_mode=True)
        assert "Patroni only switches over to a synchronous standby (sync standbys: pg2)" in str(info.value)

    def test_requested_candidate_checks(self):
        view = parse_cluster(cluster_doc(member("pg1", "leader"), member("pg2", state="stopped"), member("pg3")))
        assert choose_candidate(view, "pg3", synchronous_mode=False).name == "pg3"
        with pytest.raises(PatroniError, match="candidate pg9 is not a member of the cluster"):
            choose_candidate(view, "pg9", synchronous_mode=False)
        with pytest.raises(PatroniError, match="candidate pg1 is already the leader"):
            choose_candidate(view, "pg1", synchronous_mode=False)
        with pytest.raises(PatroniError, match="candidate pg2 is not healthy: it is in state 'stopped'"):
            choose_candidate(view, "pg2", synchronous_mode=False)
        assert choose_candidate(view, "pg2", require_healthy=False, synchronous_mode=False).name == "pg2"


def switchover_routes(before, after, post, config=None, more=None):
    routes = {
        "GET %s/cluster" % A: [json_ok(before), *([json_ok(c) for c in after])],
        "GET %s/config" % A: [json_ok(config if config is not None else {"synchronous_mode": False, "ttl": 30})],
        "POST %s/switchover" % A: post,
    }
    routes.update(more or {})
    return routes


class TestSwitchover:
    def test_check_mode_plans_without_posting(self, clock):
        client, transport = client_for(clock, switchover_routes(HEALTHY, [], [ok(b"never")]))
        done = perform_switchover(client, check_mode=True)
        assert (done.old_leader, done.candidate, done.changed, done.new_leader) == ("pg1", "pg2", True, None)
        assert transport.sent("POST", "/switchover") == []

    def test_switchover_posts_once_with_auth_and_waits_for_the_new_leader(self, clock):
        during = cluster_doc(member("pg1", "leader", state="stopping"), member("pg2"), member("pg3", lag=1024))
        promoting = cluster_doc(member("pg1", state="stopped"), member("pg2", "leader", state="starting"),
                                member("pg3"))
        answer = ok(b'Successfully switched over to "pg2"')
        client, transport = client_for(clock, switchover_routes(HEALTHY, [during, promoting, SWITCHED], [answer]),
                                       username="patroni", password="s3cret")
        done = perform_switchover(client, candidate="pg2", poll_interval=1)
        assert (done.old_leader, done.candidate, done.new_leader) == ("pg1", "pg2", "pg2")
        assert done.answer == 'Successfully switched over to "pg2"'
        assert done.seconds is not None and 2 <= done.seconds < 3
        posts = transport.sent("POST", "/switchover")
        assert len(posts) == 1
        assert json.loads(posts[0]["body"]) == {"leader": "pg1", "candidate": "pg2"}
        assert posts[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"patroni:s3cret").decode()
        assert posts[0]["timeout"] == 60.0, "the POST waits as long as Patroni polls the DCS"

    def test_default_candidate_in_synchronous_mode(self, clock):
        before = cluster_doc(member("pg1", "leader"), member("pg2", "sync_standby", lag=64), member("pg3", lag=0))
        client, transport = client_for(clock, switchover_routes(before, [SWITCHED], [ok(b"ok")],
                                                                config={"synchronous_mode": True}))
        done = perform_switchover(client)
        assert done.candidate == "pg2" and done.synchronous_mode is True
        assert json.loads(transport.sent("POST", "/switchover")[0]["body"])["candidate"] == "pg2"

    def test_412_is_a_refusal_with_patronis_reason(self, clock):
        client, transport = client_for(clock, switchover_routes(
            HEALTHY, [], [ok(b"candidate name does not match with sync_standby", status=412)]))
        with pytest.raises(PatroniError) as info:
            perform_switchover(client, candidate="pg3")
        assert str(info.value).startswith("Patroni refused the switchover from pg1 to pg3 (HTTP 412: candidate name "
                                          "does not match with sync_standby).")
        assert len(transport.sent("POST", "/switchover")) == 1
        assert info.value.cluster.leader.name == "pg1"

    def test_401_names_the_authentication_problem(self, clock):
        client, _t = client_for(clock, switchover_routes(HEALTHY, [], [ok(b"no auth header received", status=401)]))
        with pytest.raises(PatroniError, match=r"HTTP 401: no auth header received"):
            perform_switchover(client)

    def test_503_switchover_failed_is_not_retried(self, clock):
        client, transport = client_for(clock, switchover_routes(HEALTHY, [], [ok(b"Switchover failed", status=503)]))
        with pytest.raises(PatroniError, match="did not switch over from pg1 to pg2: HTTP 503 Switchover failed"):
            perform_switchover(client)
        assert len(transport.sent("POST", "/switchover")) == 1

    def test_503_status_unknown_keeps_watching(self, clock):
        client, _t = client_for(clock, switchover_routes(HEALTHY, [HEALTHY, SWITCHED],
                                                         [ok(b"Switchover status unknown", status=503)]))
        done = perform_switchover(client, candidate="pg2")
        assert done.new_leader == "pg2" and done.answer == "Switchover status unknown"

    def test_timeout_reports_the_last_observed_cluster(self, clock):
        stuck = cluster_doc(member("pg1", "leader", state="stopping"), member("pg2"), member("pg3"))
        unknown = ok(b"Switchover status unknown", status=503)
        client, _t = client_for(clock, switchover_routes(HEALTHY, [stuck], [unknown]))
        with pytest.raises(PatroniError) as info:
            perform_switchover(client, candidate="pg2", timeout=10, poll_interval=2)
        msg = str(info.value)
        assert msg.startswith("no new leader was running ")
        assert "after the switchover request from pg1 to pg2 (Patroni answered: Switchover status unknown)" in msg
        assert msg.endswith("last observed: pg1 (leader, stopping), pg2 (replica, running), pg3 (replica, running)")
        assert info.value.cluster.leader.state == "stopping"
        assert clock.now() - 1000 <= 12

    def test_post_timeout_is_not_repeated_and_the_cluster_decides(self, clock):
        client, transport = client_for(clock, switchover_routes(HEALTHY, [SWITCHED], [timed_out()]))
        done = perform_switchover(client, candidate="pg2")
        assert done.new_leader == "pg2" and "timed out" in done.answer
        assert len(transport.sent("POST", "/switchover")) == 1

    def test_post_timeout_without_a_new_leader_fails_with_both_stories(self, clock):
        client, _t = client_for(clock, switchover_routes(HEALTHY, [HEALTHY], [timed_out()]))
        with pytest.raises(PatroniError) as info:
            perform_switchover(client, candidate="pg2", timeout=4, poll_interval=1)
        assert "may have reached the server and POST is not idempotent" in str(info.value)
        assert "last observed: pg1 (leader, running)" in str(info.value)

    def test_refused_post_moves_to_the_next_endpoint(self, clock):
        routes = switchover_routes(HEALTHY, [SWITCHED], [refused()],
                                   more={"POST %s/switchover" % B: [ok(b'Successfully switched over to "pg2"')]})
        client, transport = client_for(clock, routes)
        done = perform_switchover(client, candidate="pg2")
        assert done.new_leader == "pg2"
        assert [r["url"] for r in transport.requests if r["method"] == "POST"] == [A + "/switchover",
                                                                                   B + "/switchover"]

    def test_post_refused_everywhere_fails_at_once(self, clock):
        routes = switchover_routes(HEALTHY, [SWITCHED], [refused()],
                                   more={"POST %s/switchover" % e: [refused()] for e in (B, C)})
        client, transport = client_for(clock, routes)
        with pytest.raises(PatroniError) as info:
            perform_switchover(client, candidate="pg2")
        assert str(info.value).startswith("the switchover request from pg1 to pg2 reached no member: Patroni REST "
                                          "API: POST /switchover failed after 3 attempt(s)")
        assert len(transport.sent("POST", "/switchover")) == 3
        assert len(transport.sent("GET", "/cluster")) == 1, "no waiting for a switchover that cannot happen"

    def test_wrong_leader_and_no_leader(self, clock):
        client, _t = client_for(clock, switchover_routes(HEALTHY, [], [ok()]))
        with pytest.raises(PatroniError, match="pg2 is not the leader: the leader is pg1"):
            perform_switchover(client, leader="pg2")
        leaderless = cluster_doc(member("pg1", state="stopped"), member("pg2"))
        client, _t = client_for(clock, switchover_routes(leaderless, [], [ok()]))
        with pytest.raises(PatroniError, match=r"no leader to switch over from: members pg1 \(stopped\), pg2"):
            perform_switchover(client)

    def test_no_healthy_replica_is_a_sentence(self, clock):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", state="stopped"), member("pg3", lag="unknown"))
        client, transport = client_for(clock, switchover_routes(doc, [], [ok()]))
        with pytest.raises(PatroniError) as info:
            perform_switchover(client)
        assert str(info.value) == ("no healthy replica to switch over to: pg2 (it is in state 'stopped'), "
                                   "pg3 (its lag is unknown)")
        assert transport.sent("POST", "/switchover") == []

    def test_unreadable_config_falls_back_to_roles(self, clock):
        routes = switchover_routes(HEALTHY, [SWITCHED], [ok(b"ok")])
        routes["GET %s/config" % A] = [ok(b"", status=502)]
        client, _t = client_for(clock, routes, max_attempts=1)
        done = perform_switchover(client)
        assert done.synchronous_mode is None and done.candidate == "pg2"


def module_params(**kw):
    base = dict(endpoints=[A, B, C], ca_path=None, client_cert=None, client_key=None, validate_certs=True,
                require_leader=True, min_replicas=0, require_streaming=False, max_lag_bytes=None,
                require_sync_standby=False, timeout=5.0, deadline=30.0, max_attempts=6, wait_timeout=0.0,
                poll_interval=2.0)
    base.update(kw)
    return base


class TestModules:
    def test_cluster_info_success_shapes_facts(self, clock):
        transport = RouteTransport(clock, {"GET %s/cluster" % A: [json_ok(HEALTHY)]})
        result, failure = patroni_cluster_info.cluster_info(module_params(min_replicas=2), transport, clock)
        assert failure is None
        assert result["leader"] == "pg1" and result["replicas"] == ["pg2", "pg3"] and result["healthy"]
        assert result["changed"] is False and result["timeline"] == 3 and result["problems"] == []

    def test_cluster_info_failure_after_waiting(self, clock):
        doc = cluster_doc(member("pg1", "leader"), member("pg2", lag=20971520))
        transport = RouteTransport(clock, {"GET %s/cluster" % A: [json_ok(doc)]})
        result, failure = patroni_cluster_info.cluster_info(
            module_params(max_lag_bytes=1048576, wait_timeout=6), transport, clock)
        assert failure.startswith("Patroni cluster is not healthy after waiting ")
        assert failure.endswith(": replica pg2 lags 20971520 bytes, more than the allowed 1048576")
        assert result["members"][1]["lag_bytes"] == 20971520

    def test_cluster_info_unreachable_carries_the_client_story(self, clock):
        transport = RouteTransport(clock, {"GET %s/cluster" % e: [refused()] for e in (A, B, C)})
        result, failure = patroni_cluster_info.cluster_info(module_params(max_attempts=3), transport, clock)
        assert failure.startswith("Patroni REST API: GET /cluster failed after 3 attempt(s)")
        assert result["attempts"][0]["outcome"] == "connection refused" and result["leader"] is None

    def test_switchover_module_check_mode(self, clock):
        transport = RouteTransport(clock, switchover_routes(HEALTHY, [], [ok()]))
        params = dict(endpoints=[A], username="patroni", password="x", leader=None, candidate=None,
                      require_healthy_candidate=True, timeout=60.0, poll_interval=1.0, request_timeout=5.0,
                      ca_path=None, client_cert=None, client_key=None, validate_certs=True)
        result = patroni_switchover.switchover(params, True, transport, clock)
        assert result["changed"] is True and result["old_leader"] == "pg1" and result["candidate"] == "pg2"
        assert result["new_leader"] is None and [m["name"] for m in result["members"]] == ["pg1", "pg2", "pg3"]


class TestModuleHelpers:
    def test_argument_spec_with_and_without_auth(self):
        assert patroni_argument_spec(auth=False) == dict(endpoints=dict(type="list", elements="str", required=True))
        spec = patroni_argument_spec()
        assert list(spec) == ["endpoints", "username", "password"]
        assert spec["username"] == dict(type="str") and spec["password"] == dict(type="str", no_log=True)
        assert patroni_argument_spec() is not spec  # a fresh dict each call: a module may change its copy

    def test_client_from_params_takes_endpoints_credentials_and_timeouts(self, clock):
        transport = RouteTransport(clock, {})
        params = dict(endpoints="%s/, %s" % (A, B), username="patroni", password="s3cret")
        client = client_from_params(params, request_timeout=7.0, deadline=12.0, max_attempts=3, write_timeout=90.0,
                                    transport=transport, clock=clock)
        assert isinstance(client, PatroniClient) and client.transport is transport and client.clock is clock
        assert client.http.endpoints == [A, B] and client.writer.endpoints == [A, B]
        assert (client.request_timeout, client.deadline, client.max_attempts) == (7.0, 12.0, 3)
        assert client.writer.request_timeout == 90.0
        assert client.auth == {"Authorization": "Basic " + base64.b64encode(b"patroni:s3cret").decode("ascii")}

    def test_client_from_params_defaults_without_auth_options(self, clock):
        params = dict(endpoints=[A], ca_path=None, client_cert=None, client_key=None, validate_certs=True)
        client = client_from_params(params, request_timeout=5.0, deadline=30.0)
        assert client.auth == {} and client.max_attempts == 6 and client.writer.request_timeout == 60.0
        assert client.http.endpoints == [A]

    def test_change_module_kwargs(self):
        kwargs = change_module_kwargs(dict(member=dict(type="str", required=True)))
        assert set(kwargs["argument_spec"]) == {"ca_path", "client_cert", "client_key", "validate_certs", "endpoints",
                                                "username", "password", "member"}
        assert kwargs["argument_spec"]["password"]["no_log"] is True
        assert kwargs["required_together"] == [("username", "password")]
        assert kwargs["required_by"] == {"client_key": "client_cert"} and kwargs["supports_check_mode"] is True
