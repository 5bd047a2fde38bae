"""etcd gateway client and quorum judgement, against scripted v3 gateway answers on a fake clock."""

from __future__ import annotations

import pytest
from fakes import RouteTransport, json_ok, ok, refused, timed_out

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.etcd import (
    EtcdClient,
    EtcdMember,
    EtcdSnapshot,
    MemberState,
    assess_quorum,
    parse_member_list,
    parse_status,
    quorum_of,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.modules import etcd_cluster_info

# Member ids as the gateway sends them: uint64 in decimal strings (proto3 JSON mapping).
ID1, ID2, ID3, ID4 = 10276657743932975437, 10501334649042878790, 18249187646912138824, 3101429001258752529
U1, U2, U3, U4 = "https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379", "https://10.0.0.14:2379"
CLUSTER_ID = "12585971608760269493"


def header(member_id, term=4):
    return {"cluster_id": CLUSTER_ID, "member_id": str(member_id), "revision": "212", "raft_term": str(term)}


def member_doc(mid, name, url, learner=False):
    doc = {"ID": str(mid), "name": name, "peerURLs": [url.replace("2379", "2380")], "clientURLs": [url]}
    if learner:
        doc["isLearner"] = True
    return doc


MEMBERS = [member_doc(ID1, "etcd-1", U1), member_doc(ID2, "etcd-2", U2), member_doc(ID3, "etcd-3", U3)]


def member_list(members=None, by=ID1):
    return json_ok({"header": header(by), "members": MEMBERS if members is None else members})


def status(mid, leader=ID1, errors=None, term=4, **extra):
    doc = {"header": header(mid, term), "version": "3.4.23", "dbSize": "24576", "raftIndex": "1201",
           "raftTerm": str(term), "raftAppliedIndex": "1201", "dbSizeInUse": "16384"}
    if leader:
        doc["leader"] = str(leader)
    if errors:
        doc["errors"] = errors
    doc.update(extra)
    return json_ok(doc)


def routes(list_answer=None, s1=None, s2=None, s3=None, more=None):
    table = {
        "POST %s/v3/cluster/member/list" % U1: [list_answer or member_list()],
        "POST %s/v3/maintenance/status" % U1: [s1 or status(ID1)],
        "POST %s/v3/maintenance/status" % U2: [s2 or status(ID2)],
        "POST %s/v3/maintenance/status" % U3: [s3 or status(ID3)],
    }
    table.update(more or {})
    return table


def snapshot_of(clock, table, endpoints=(U1,), **kw):
    transport = RouteTransport(clock, table)
    client = EtcdClient(list(endpoints), transport=transport, clock=clock, **kw)
    return client.snapshot(), transport


class TestParse:
    def test_member_list_ids_are_strings_in_the_gateway(self):
        cluster_id, members = parse_member_list({"header": header(ID1), "members": [
            member_doc(ID1, "etcd-1", U1), {"ID": str(ID4), "peerURLs": ["https://10.0.0.14:2380"]},
            member_doc(ID2, "etcd-2", U2, learner=True)]})
        assert cluster_id == int(CLUSTER_ID)
        assert members[0] == EtcdMember(ID1, "etcd-1", ("https://10.0.0.11:2380",), (U1,), False)
        assert members[1].name == "" and members[1].client_urls == () and members[1].label == "2b0a7d3e9c1f5a11"
        assert members[2].is_learner

    def test_status_fields_and_omitted_zero_values(self):
        st = parse_status({"header": header(ID2), "version": "3.4.23", "dbSize": "24576", "raftIndex": "9",
                           "raftTerm": "4"})
        assert (st.member_id, st.leader, st.raft_term, st.raft_index, st.db_size) == (ID2, 0, 4, 9, 24576)
        assert st.errors == () and st.is_learner is False and st.db_size_in_use is None

    def test_status_with_alarm(self):
        st = parse_status({"header": header(ID2), "leader": str(ID1), "errors": ["memberID:123 alarm:NOSPACE "]})
        assert st.leader == ID1 and st.errors == ("memberID:123 alarm:NOSPACE ",)

    @pytest.mark.parametrize("doc", [[], {"members": {}}, {"members": ["x"]}])
    def test_bad_member_lists(self, doc):
        with pytest.raises(ValueError):
            parse_member_list(doc)

    @pytest.mark.parametrize("voters, quorum", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
    def test_quorum_size(self, voters, quorum):
        assert quorum_of(voters) == quorum


class TestClient:
    def test_requests_are_idempotent_posts_with_an_empty_body_under_v3(self, clock):
        snap, transport = snapshot_of(clock, routes())
        assert [(r["method"], r["url"], r["body"]) for r in transport.requests] == [
            ("POST", U1 + "/v3/cluster/member/list", b"{}"),
            ("POST", U1 + "/v3/maintenance/status", b"{}"),
            ("POST", U2 + "/v3/maintenance/status", b"{}"),
            ("POST", U3 + "/v3/maintenance/status", b"{}"),
        ]
        assert transport.requests[0]["headers"]["Content-Type"] == "application/json"
        assert snap.listed_by == U1 + "/v3/cluster/member/list"
        assert all(s.healthy for s in snap.members)

    def test_status_is_retried_after_a_timeout_because_it_only_reads(self, clock):
        snap, transport = snapshot_of(clock, routes(s2=None, more={
            "POST %s/v3/maintenance/status" % U2: [timed_out(), status(ID2)]}))
        assert snap.members[1].healthy
        assert len(transport.sent("POST", "10.0.0.12:2379/v3/maintenance/status")) == 2

    def test_member_list_fails_over_and_then_names_every_endpoint(self, clock):
        table = routes(more={"POST %s/v3/cluster/member/list" % U2: [refused()]})
        table["POST %s/v3/cluster/member/list" % U1] = [refused()]
        table["POST %s/v3/cluster/member/list" % U3] = [member_list(by=ID3)]
        snap, _t = snapshot_of(clock, table, endpoints=(U1, U2, U3))
        assert snap.listed_by == U3 + "/v3/cluster/member/list"

        dead = {"POST %s/v3/cluster/member/list" % u: [refused()] for u in (U1, U2)}
        with pytest.raises(HttpClientError) as info:
            snapshot_of(clock, dead, endpoints=(U1, U2), max_attempts=2)
        msg = str(info.value)
        assert msg.startswith("etcd: POST /v3/cluster/member/list failed after 2 attempt(s)")
        assert "[1] %s -> connection refused" % U1 in msg and "[2] %s -> connection refused" % U2 in msg

    def test_invalid_json_is_reported(self, clock):
        table = routes()
        table["POST %s/v3/cluster/member/list" % U1] = [ok(b"<html>proxy</html>")]
        with pytest.raises(HttpClientError, match=r"answered POST /v3/cluster/member/list with invalid JSON"):
            snapshot_of(clock, table)

    def test_member_that_never_started_has_no_client_url(self, clock):
        members = [*MEMBERS, {"ID": str(ID4), "peerURLs": ["https://10.0.0.14:2380"]}]
        snap, transport = snapshot_of(clock, routes(list_answer=member_list(members)))
        assert snap.members[3].error == "is not started (no client URLs)"
        assert len(transport.requests) == 4

    def test_client_url_answering_as_another_member(self, clock):
        snap, _t = snapshot_of(clock, routes(s3=status(ID2)))
        assert not snap.members[2].healthy
        assert snap.members[2].error.startswith("answered as member 91bc3c398fb3c146 at %s" % U3)


class TestQuorum:
    def test_healthy_cluster(self, clock):
        snap, _t = snapshot_of(clock, routes())
        report = assess_quorum(snap)
        assert report.problems == []
        assert (report.voting, report.quorum, report.healthy_count) == (3, 2, 3)
        assert report.leader.name == "etcd-1"

    def test_quorum_lost_names_each_missing_member_and_why(self, clock):
        snap, _t = snapshot_of(clock, routes(s2=refused(), s3=timed_out()))
        report = assess_quorum(snap)
        assert report.problems[0] == ("no quorum: 1 of 3 members answer (need 2): etcd-2 connection refused, "
                                      "etcd-3 timed out")
        assert report.healthy_count == 1

    def test_one_member_down_keeps_quorum_and_is_not_a_problem_by_default(self, clock):
        snap, _t = snapshot_of(clock, routes(s3=refused()))
        report = assess_quorum(snap)
        assert report.problems == [] and report.healthy_count == 2 and report.leader.name == "etcd-1"

    def test_min_healthy_asks_for_more_than_quorum(self, clock):
        snap, _t = snapshot_of(clock, routes(s3=refused()))
        assert assess_quorum(snap, min_healthy=3).problems == [
            "only 2 of 3 members are healthy, 3 required: etcd-3 connection refused"]

    def test_no_leader(self, clock):
        snap, _t = snapshot_of(clock, routes(s1=status(ID1, leader=None), s2=status(ID2, leader=None),
                                             s3=status(ID3, leader=None)))
        assert assess_quorum(snap).problems == ["no leader: etcd-1, etcd-2, etcd-3 answer but report no leader"]
        assert assess_quorum(snap).leader is None

    def test_no_member_answers(self, clock):
        snap, _t = snapshot_of(clock, routes(s1=refused(), s2=refused(), s3=refused()))
        problems = assess_quorum(snap).problems
        assert problems == ["no quorum: 0 of 3 members answer (need 2): etcd-1 connection refused, etcd-2 "
                            "connection refused, etcd-3 connection refused", "no leader: no member answers"]

    def test_members_disagree_on_the_leader(self, clock):
        snap, _t = snapshot_of(clock, routes(s3=status(ID3, leader=ID3, term=5)))
        report = assess_quorum(snap)
        assert report.problems == ["members disagree on the leader: etcd-1, etcd-2 follow etcd-1; etcd-3 follows "
                                   "etcd-3"]
        assert report.leader is None

    def test_one_member_sees_no_leader(self, clock):
        snap, _t = snapshot_of(clock, routes(s2=status(ID2, leader=None)))
        assert assess_quorum(snap).problems == [
            "members disagree on the leader: etcd-1, etcd-3 follow etcd-1; etcd-2 sees no leader"]

    def test_leader_outside_the_member_list(self, clock):
        snap, _t = snapshot_of(clock, routes(s1=status(ID1, leader=ID4), s2=status(ID2, leader=ID4),
                                             s3=status(ID3, leader=ID4)))
        assert assess_quorum(snap).problems == [
            "the leader 2b0a7d3e9c1f5a11 that etcd-1, etcd-2, etcd-3 follow is not in the member list"]

    def test_alarm_is_a_problem_even_with_quorum(self, clock):
        snap, _t = snapshot_of(clock, routes(s2=status(ID2, errors=["memberID:%d alarm:NOSPACE " % ID2])))
        report = assess_quorum(snap)
        assert report.healthy_count == 2
        assert report.problems == ["member etcd-2 reports errors: memberID:%d alarm:NOSPACE " % ID2]

    def test_learners_do_not_vote(self, clock):
        members = [*MEMBERS, member_doc(ID4, "etcd-4", U4, learner=True)]
        snap, _t = snapshot_of(clock, routes(list_answer=member_list(members), s3=refused(), more={
            "POST %s/v3/maintenance/status" % U4: [status(ID4, isLearner=True)]}))
        report = assess_quorum(snap)
        assert (report.voting, report.quorum, report.healthy_count) == (3, 2, 2)
        assert report.problems == []

    def test_quorum_judged_on_a_hand_built_snapshot(self):
        members = [EtcdMember(i, "m%d" % i, client_urls=("http://m%d:2379" % i,)) for i in range(1, 6)]
        states = [MemberState(m, parse_status({"header": {"member_id": str(m.id)}, "leader": "1"}))
                  for m in members[:2]] + [MemberState(m, error="timed out") for m in members[2:]]
        report = assess_quorum(EtcdSnapshot(1, states))
        assert report.problems[0] == "no quorum: 2 of 5 members answer (need 3): m3 timed out, m4 timed out, m5 " \
                                     "timed out"
        assert report.leader.name == "m1"


def params(**kw):
    base = dict(endpoints=[U1, U2], ca_path=None, client_cert=None, client_key=None, validate_certs=True,
                timeout=5.0, deadline=30.0, min_healthy=None, wait_timeout=0.0, poll_interval=2.0)
    base.update(kw)
    return base


class TestModule:
    def test_result_shape(self, clock):
        transport = RouteTransport(clock, routes())
        result = etcd_cluster_info.cluster_info(params(), transport, clock)
        assert result["problems"] == [] and result["leader"] == "etcd-1" and result["leader_id"] == "8e9e05c52164694d"
        assert (result["healthy_count"], result["member_count"], result["quorum"]) == (3, 3, 2)
        first = result["members"][0]
        assert first["id"] == "8e9e05c52164694d" and first["is_leader"] and first["healthy"]
        assert first["version"] == "3.4.23" and first["db_size"] == 24576 and first["raft_term"] == 4
        assert first["client_urls"] == [U1] and first["peer_urls"] == ["https://10.0.0.11:2380"]
        assert result["members"][1]["is_leader"] is False and result["members"][1]["leader_id"] == "8e9e05c52164694d"
        assert result["cluster_id"] == format(int(CLUSTER_ID), "x")

    def test_waits_until_the_cluster_is_healthy(self, clock):
        """A member still starting (refused) at the first look and healthy at the second: with a wait, the module
        looks again and reports how long it took; without one, it reports the problem at once."""
        starting = {"POST %s/v3/maintenance/status" % U3: [refused(), refused(), status(ID3)]}
        once = etcd_cluster_info.cluster_info(params(min_healthy=3), RouteTransport(clock, routes(more=starting)),
                                              clock)
        assert once["problems"] and once["checks"] == 1 and once["gave_up"] is False
        starting = {"POST %s/v3/maintenance/status" % U3: [refused(), refused(), status(ID3)]}
        waited = etcd_cluster_info.cluster_info(params(min_healthy=3, wait_timeout=30, poll_interval=2),
                                                RouteTransport(clock, routes(more=starting)), clock)
        assert waited["problems"] == [] and waited["checks"] == 2 and waited["gave_up"] is False
        assert waited["waited"] >= 2

    def test_a_wait_that_runs_out_says_so(self, clock):
        transport = RouteTransport(clock, routes(s3=refused()))
        result = etcd_cluster_info.cluster_info(params(min_healthy=3, wait_timeout=6, poll_interval=2), transport,
                                                clock)
        assert result["problems"] and result["gave_up"] is True
        assert result["checks"] >= 3 and result["waited"] >= 4

    def test_result_names_problems_and_failed_members(self, clock):
        transport = RouteTransport(clock, routes(s2=refused(), s3=refused()))
        result = etcd_cluster_info.cluster_info(params(), transport, clock)
        assert result["problems"][0].startswith("no quorum: 1 of 3 members answer (need 2)")
        assert result["members"][1]["error"] == "connection refused" and result["members"][1]["db_size"] is None
