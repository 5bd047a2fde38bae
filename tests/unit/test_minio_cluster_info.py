"""MinIO health client, judgement and module, against scripted node answers on a fake clock."""

from __future__ import annotations

import pytest
import yaml
from fakes import RouteTransport, ok, refused, timed_out, until

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.minio import (
    MinioClient,
    check_cluster,
    check_expected_nodes,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules import minio_cluster_info

N1, N2, N3, N4 = ("https://minio-%d:9000" % i for i in range(1, 5))
NODES = (N1, N2, N3, N4)
LIVE, READY = "/minio/health/live", "/minio/health/ready"
WRITE, READ = "/minio/health/cluster", "/minio/health/cluster/read"


def answer(status=200, **headers):
    """An empty-bodied health answer; ``X_Minio_Write_Quorum=3`` becomes the header ``X-Minio-Write-Quorum: 3``."""
    return ok(b"", status=status, headers={k.replace("_", "-"): str(v) for k, v in headers.items()})


def write_ok(drives=3, **headers):
    return answer(200, X_Minio_Write_Quorum=drives, X_Minio_Storage_Class_Defaults="true", **headers)


def read_ok(drives=2):
    return answer(200, X_Minio_Read_Quorum=drives, X_Minio_Storage_Class_Defaults="true")


def node(url, live=None, ready=None):
    """The two routes every node is asked, healthy by default."""
    return {"GET %s%s" % (url, LIVE): [live or answer()], "GET %s%s" % (url, READY): [ready or answer()]}


def down(url, outcome=None):
    return node(url, live=outcome or refused())


def routes(n1=None, n2=None, n3=None, n4=None, write=None, read=None, asked=N1):
    """A healthy four-node cluster (one erasure set of four drives: write quorum 3, read quorum 2); the quorum
    routes are scripted on ``asked``, the node expected to answer them."""
    table = {}
    for url, given in zip(NODES, (n1, n2, n3, n4)):
        table.update(given or node(url))
    table["GET %s%s" % (asked, WRITE)] = [write or write_ok()]
    table["GET %s%s" % (asked, READ)] = [read or read_ok()]
    return table


def look(clock, table, expected=0, nodes=NODES, **kw):
    transport = RouteTransport(clock, table)
    client = MinioClient(list(nodes), transport=transport, clock=clock, **kw)
    return check_cluster(client, expected_nodes=expected), transport


class TestClient:
    def test_asks_each_node_then_one_node_for_both_quorums(self, clock):
        check, transport = look(clock, routes())
        assert [r["url"] for r in transport.requests] == [
            N1 + LIVE, N1 + READY, N2 + LIVE, N2 + READY, N3 + LIVE, N3 + READY, N4 + LIVE, N4 + READY,
            N1 + WRITE, N1 + READ]
        assert all(r["method"] == "GET" for r in transport.requests)
        assert check.checks == 1 and not check.gave_up

    def test_a_down_node_is_asked_nothing_more_and_the_quorum_comes_from_the_next(self, clock):
        check, transport = look(clock, routes(n1=down(N1), asked=N2))
        assert transport.sent("GET", N1 + READY) == [] and transport.sent("GET", N1 + WRITE) == []
        assert check.look.write.url == N2 and check.write_quorum

    def test_ready_nodes_are_asked_for_the_quorum_before_live_ones(self, clock):
        # minio-1 serves but waits for its peers: its answer about the cluster would say nothing.
        table = routes(n1=node(N1, live=answer(X_Minio_Server_Status="offline"),
                               ready=answer(X_Minio_Server_Status="offline")), asked=N2)
        check, _t = look(clock, table, expected=3)
        assert check.look.write.url == N2
        assert check.to_dict()["nodes"][0] == {"url": N1, "live": True, "ready": False, "server_status": "offline",
                                               "error": "not initialised yet (X-Minio-Server-Status: offline)"}

    def test_a_busy_node_is_an_answer_and_not_retried(self, clock):
        check, transport = look(clock, routes(n3=node(N3, live=answer(503))), expected=3)
        assert len(transport.sent("GET", N3 + LIVE)) == 1 and transport.sent("GET", N3 + READY) == []
        assert check.look.nodes[2].reason() == "is not ready: /minio/health/live answered HTTP 503"

    def test_a_refused_probe_is_tried_twice_and_costs_no_more_than_its_deadline(self, clock):
        start = clock.now()
        check, transport = look(clock, routes(n4=down(N4)), request_timeout=1.0)
        assert len(transport.sent("GET", N4 + LIVE)) == 2
        assert check.look.nodes[3].error == "connection refused"
        assert clock.now() - start < 5

    def test_something_else_at_the_port_is_named(self, clock):
        check, _t = look(clock, routes(n2=node(N2, live=ok(b"404 page not found", status=404))))
        assert check.assessment.problems == ["node %s is not ready: /minio/health/live answered HTTP 404" % N2]

    def test_quorum_headers(self, clock):
        check, _t = look(clock, routes(write=write_ok(X_Minio_Healing_Drives=1), read=read_ok()))
        facts = check.to_dict()
        assert (facts["write_quorum_drives"], facts["read_quorum_drives"], facts["healing_drives"]) == (3, 2, 1)
        assert facts["quorum_from"] == N1

    def test_quorum_headers_absent_or_unreadable_are_null(self, clock):
        check, _t = look(clock, routes(write=answer(200), read=answer(200, X_Minio_Read_Quorum="two")))
        facts = check.to_dict()
        assert (facts["write_quorum_drives"], facts["read_quorum_drives"], facts["healing_drives"]) == (
            None, None, None)
        assert facts["write_quorum"] and facts["read_quorum"] and facts["problems"] == []

    def test_a_proxy_error_on_the_quorum_fails_over_to_the_next_live_node(self, clock):
        table = routes()
        table["GET %s%s" % (N1, WRITE)] = [ok(b"bad gateway", status=502)]
        table["GET %s%s" % (N2, WRITE)] = [write_ok()]
        table["GET %s%s" % (N2, READ)] = [read_ok()]
        del table["GET %s%s" % (N1, READ)]
        check, transport = look(clock, table)
        assert check.look.write.url == N2 and check.look.read.url == N2
        assert transport.sent("GET", READ) == [transport.requests[-1]]
        assert check.assessment.problems == []


class TestAssess:
    def test_healthy_cluster(self, clock):
        check, _t = look(clock, routes())
        a = check.assessment
        assert a.problems == [] and a.write_quorum and a.read_quorum
        assert (a.nodes, a.live_nodes, a.ready_nodes, a.expected_nodes) == (4, 4, 4, 4)

    def test_one_node_down_keeps_write_quorum_but_is_a_problem(self, clock):
        check, _t = look(clock, routes(n3=down(N3)))
        assert check.write_quorum and check.degraded
        assert check.assessment.problems == ["node %s is down: connection refused" % N3]

    def test_one_node_down_is_fine_when_three_are_expected(self, clock):
        check, _t = look(clock, routes(n3=down(N3, timed_out())), expected=3)
        assert check.assessment.problems == [] and check.to_dict()["nodes"][2]["error"] == "timed out"

    def test_write_quorum_lost_names_each_node_and_why(self, clock):
        table = routes(n3=down(N3), n4=down(N4), write=answer(503, X_Minio_Write_Quorum=3))
        check, _t = look(clock, table)
        assert not check.write_quorum and check.assessment.read_quorum
        assert check.assessment.problems == [
            "no write quorum: %s answered /minio/health/cluster with HTTP 503, write quorum 3 drives (2 of 4 nodes "
            "live): %s is down: connection refused, %s is down: connection refused" % (N1, N3, N4)]

    def test_no_node_live(self, clock):
        check, transport = look(clock, {k: [refused()] for k in routes() if k.endswith(LIVE)})
        assert transport.sent("GET", WRITE) == [] and not check.write_quorum and not check.assessment.read_quorum
        assert check.assessment.problems == [
            "no write quorum: no node is live to answer /minio/health/cluster (0 of 4 nodes live): "
            + ", ".join("%s is down: connection refused" % n for n in NODES)]

    def test_a_node_that_cannot_initialise_says_why(self, clock):
        # Alone, minio-1 waits for its peers; before that it answers every question about the cluster with 503.
        waiting, offline = answer(X_Minio_Server_Status="offline"), answer(503, X_Minio_Server_Status="offline")
        table = routes(n1=node(N1, live=waiting, ready=waiting), n2=down(N2), n3=down(N3), n4=down(N4),
                       write=offline, read=offline)
        check, _t = look(clock, table)
        assert check.assessment.problems == [
            "no write quorum: %s answered /minio/health/cluster with HTTP 503 and X-Minio-Server-Status: offline "
            "(1 of 4 nodes live): %s is not ready: not initialised yet (X-Minio-Server-Status: offline), "
            "%s is down: connection refused, %s is down: connection refused, %s is down: connection refused"
            % (N1, N1, N2, N3, N4),
            "no read quorum: %s answered /minio/health/cluster/read with HTTP 503 and X-Minio-Server-Status: offline"
            % N1]

    def test_read_quorum_lost(self, clock):
        table = routes(n2=down(N2), n3=down(N3), n4=down(N4), write=answer(503, X_Minio_Write_Quorum=3),
                       read=answer(503, X_Minio_Read_Quorum=2))
        check, _t = look(clock, table)
        assert check.assessment.problems[1] == (
            "no read quorum: %s answered /minio/health/cluster/read with HTTP 503, read quorum 2 drives" % N1)

    def test_a_release_without_the_read_check_leaves_read_quorum_unknown(self, clock):
        check, _t = look(clock, routes(read=ok(b"<Error><Code>XMinioInvalidObjectName</Code></Error>", status=400)))
        assert check.write_quorum and not check.assessment.read_quorum
        assert check.assessment.problems == [
            "read quorum unknown: no node answered /minio/health/cluster/read: HTTP 400 "
            "<Error><Code>XMinioInvalidObjectName</Code></Error>"]

    @pytest.mark.parametrize("expected, nodes, message", [
        (5, 4, "expected_nodes must be between 0 (all) and 4 (the nodes listed), got 5"),
        (-1, 4, "expected_nodes must be between 0 (all) and 4 (the nodes listed), got -1"),
        (0, 0, "MinIO: no node URLs given"),
    ])
    def test_expected_nodes_out_of_range(self, expected, nodes, message):
        with pytest.raises(ValueError, match=r"^%s$" % message.replace("(", r"\(").replace(")", r"\)")):
            check_expected_nodes(expected, nodes)


def params(**kw):
    base = dict(nodes=list(NODES), expected_nodes=0, fail_on_degraded=True, wait_timeout=0.0, poll_interval=2.0,
                timeout=5.0, deadline=30.0, ca_path=None, client_cert=None, client_key=None, validate_certs=True)
    base.update(kw)
    return base


def run(clock, table, **kw):
    transport = RouteTransport(clock, table)
    result, failure = minio_cluster_info.cluster_info(params(**kw), transport, clock)
    return result, failure, transport


class TestModule:
    def test_healthy_result(self, clock):
        result, failure, transport = run(clock, routes())
        assert failure is None
        assert result == {
            "changed": False,
            "nodes": [{"url": n, "live": True, "ready": True, "server_status": None, "error": None} for n in NODES],
            "live_count": 4, "ready_count": 4, "expected_nodes": 4, "write_quorum": True, "read_quorum": True,
            "write_quorum_drives": 3, "read_quorum_drives": 2, "healing_drives": None, "quorum_from": N1,
            "degraded": False, "problems": [], "checks": 1, "waited": result["waited"]}
        # Check mode runs the same: the module only ever reads.
        assert {r["method"] for r in transport.requests} == {"GET"}

    def test_one_node_down_fails(self, clock):
        result, failure, _t = run(clock, routes(n3=down(N3)))
        assert failure == "MinIO cluster is not healthy: node %s is down: connection refused" % N3
        assert result["write_quorum"] and result["degraded"] and result["live_count"] == 3
        assert result["nodes"][2] == {"url": N3, "live": False, "ready": False, "server_status": None,
                                      "error": "connection refused"}

    def test_one_node_down_passes_when_told_not_to_fail(self, clock):
        result, failure, _t = run(clock, routes(n3=down(N3)), fail_on_degraded=False)
        assert failure is None and result["degraded"]
        assert result["problems"] == ["node %s is down: connection refused" % N3]

    def test_write_quorum_lost_always_fails(self, clock):
        table = routes(n3=down(N3), n4=down(N4), write=answer(503, X_Minio_Write_Quorum=3))
        result, failure, _t = run(clock, table, fail_on_degraded=False)
        assert failure.startswith("MinIO cluster is not healthy: no write quorum: %s answered /minio/health/cluster "
                                  "with HTTP 503, write quorum 3 drives (2 of 4 nodes live): " % N1)
        assert result["write_quorum"] is False and result["write_quorum_drives"] == 3 and result["live_count"] == 2

    def test_expected_nodes_out_of_range_fails_before_asking(self, clock):
        result, failure, transport = run(clock, routes(), expected_nodes=5)
        assert failure == "expected_nodes must be between 0 (all) and 4 (the nodes listed), got 5"
        assert result == {"changed": False} and transport.requests == []

    def test_wait_timeout_that_recovers(self, clock):
        start = clock.now()
        table = routes(n3=down(N3, until(clock, start + 5, refused(), answer())),
                       write=until(clock, start + 3, answer(503, X_Minio_Write_Quorum=3), write_ok()))
        result, failure, _t = run(clock, table, wait_timeout=60.0)
        assert failure is None and result["problems"] == [] and result["write_quorum"]
        assert result["checks"] >= 2 and 5 <= result["waited"] < 60

    def test_wait_timeout_that_expires_reports_the_last_look(self, clock):
        result, failure, _t = run(clock, routes(n3=down(N3)), wait_timeout=10.0)
        assert result["checks"] > 1 and result["waited"] <= 10.5
        assert failure.startswith("MinIO cluster is not healthy after waiting ")
        assert failure.endswith("checks; last look: 3 of 4 nodes live, 3 ready (4 expected), write quorum (3 drives), "
                                "read quorum): node %s is down: connection refused" % N3)

    def test_wait_for_write_quorum_only_when_degraded_is_allowed(self, clock):
        start = clock.now()
        table = routes(n3=down(N3), write=until(clock, start + 3, answer(503, X_Minio_Write_Quorum=3), write_ok()))
        result, failure, _t = run(clock, table, wait_timeout=30.0, fail_on_degraded=False)
        assert failure is None and result["write_quorum"] and 3 <= result["waited"] < 10
        assert result["problems"] == ["node %s is down: connection refused" % N3]

    def test_documentation_matches_the_options_and_the_result(self, clock):
        doc = yaml.safe_load(minio_cluster_info.DOCUMENTATION)
        assert set(doc["options"]) == set(params()) - {"ca_path", "client_cert", "client_key", "validate_certs",
                                                       "wait_timeout", "poll_interval"}  # doc fragments tls, wait
        assert "mlops.mlflow_ha.info" in doc["extends_documentation_fragment"]  # read-only attributes
        assert "attributes" not in doc
        result, _failure, _t = run(clock, routes())
        assert set(yaml.safe_load(minio_cluster_info.RETURN)) | {"changed"} == set(result)
