"""SeaweedFS client and judgement, against scripted master, volume server, filer and S3 answers on a fake clock."""

from __future__ import annotations

import pytest
from fakes import RouteTransport, json_ok, ok, refused, timed_out, until

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.seaweedfs import (
    SeaweedClient,
    check_cluster,
    http_address,
    parse_dir_status,
    quorum_of,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules import seaweedfs_cluster_info

M1, M2, M3 = "http://10.0.0.11:9333", "http://10.0.0.12:9333", "http://10.0.0.13:9333"
FILER, S3 = "http://10.0.0.11:8888", "http://10.0.0.11:8333"
V1, V2, V3, V4 = "10.0.0.31:8080", "10.0.0.32:8080", "10.0.0.33:8080", "10.0.0.34:8080"
# Raft knows masters by their server address, which carries the gRPC port after a dot.
LEADER = "10.0.0.11:9333.19333"


def node(url, volumes=2, max_volumes=8):
    return {"Url": url, "PublicUrl": url, "Volumes": volumes, "EcShards": 0, "Max": max_volumes,
            "VolumeIds": " 1-%d" % volumes}


def dir_status(servers=(V1, V2, V3, V4), writables=(1, 2, 3), free=24, max_volumes=32):
    """``GET /dir/status`` as the leader answers it; empty Go slices arrive as null."""
    half = len(servers) // 2
    racks = [{"Id": "rack1", "DataNodes": [node(u) for u in servers[:half]] or None},
             {"Id": "rack2", "DataNodes": [node(u) for u in servers[half:]] or None}]
    return json_ok({"Version": "30GB 4.53 ", "TopologyId": "5f1c0c3e-topology",
                    "Topology": {"Max": max_volumes, "Free": free,
                                 "DataCenters": [{"Id": "dc1", "Racks": racks}] if servers else None,
                                 "Layouts": [{"replication": "001", "ttl": "", "writables": list(writables) or None,
                                              "collection": "", "diskType": "hdd"},
                                             {"replication": "001", "ttl": "", "writables": None,
                                              "collection": "mlflow", "diskType": "hdd"}]}})


def cluster_status(leader=LEADER, is_leader=False):
    doc = {"Peers": ["10.0.0.11:9333.19333", "10.0.0.12:9333.19333", "10.0.0.13:9333.19333"], "MaxVolumeId": 3}
    if leader:
        doc["Leader"] = leader
    if is_leader:
        doc["IsLeader"] = True
    return json_ok(doc)


def master(url, alive=None, ready=200, status=None):
    """The three routes every master is asked, healthy by default; the leader is M1."""
    return {
        "GET %s/healthz" % url: [alive or ok(b"")],
        "GET %s/readyz" % url: [ready if not isinstance(ready, int) else ok(b"", status=ready)],
        "GET %s/cluster/status" % url: [status or cluster_status(is_leader=url == M1)],
    }


def routes(m1=None, m2=None, m3=None, topology=None, volume=None, filer=None, s3=None):
    """A healthy three-master cluster with four volume servers, one filer and one S3 gateway."""
    table = {}
    table.update(m1 or master(M1))
    table.update(m2 or master(M2))
    table.update(m3 or master(M3))
    table["GET %s/dir/status" % M1] = [topology or dir_status()]
    for url in (V1, V2, V3, V4):
        table["GET http://%s/healthz" % url] = [(volume or {}).get(url) or ok(b"")]
    table["GET %s/healthz" % FILER] = [filer or ok(b"")]
    table["GET %s/healthz" % S3] = [s3 or ok(b"")]
    return table


def look(clock, table, expected=0, masters=(M1, M2, M3), filers=(FILER,), s3=(S3,), **kw):
    transport = RouteTransport(clock, table)
    client = SeaweedClient(list(masters), list(filers), list(s3), transport=transport, clock=clock, **kw)
    return check_cluster(client, expected_volume_servers=expected), transport


class TestParse:
    @pytest.mark.parametrize("address, http", [("10.0.0.11:9333.19333", "10.0.0.11:9333"),
                                               ("10.0.0.11:9333", "10.0.0.11:9333"),
                                               ("[fd00::11]:9333.19333", "[fd00::11]:9333"),
                                               ("master-1", "master-1")])
    def test_http_address_drops_the_grpc_port(self, address, http):
        assert http_address(address) == http

    @pytest.mark.parametrize("masters, quorum", [(1, 1), (2, 2), (3, 2), (5, 3)])
    def test_quorum_size(self, masters, quorum):
        assert quorum_of(masters) == quorum

    def test_dir_status(self):
        topo = parse_dir_status(dir_status().json())
        assert (topo.version, topo.topology_id, topo.max, topo.free) == ("30GB 4.53", "5f1c0c3e-topology", 32, 24)
        assert [(s.url, s.rack, s.data_center, s.volumes, s.max) for s in topo.volume_servers] == [
            (V1, "rack1", "dc1", 2, 8), (V2, "rack1", "dc1", 2, 8), (V3, "rack2", "dc1", 2, 8),
            (V4, "rack2", "dc1", 2, 8)]
        assert topo.writable_volumes == 3
        assert [(lay.collection, lay.writables) for lay in topo.layouts] == [("", (1, 2, 3)), ("mlflow", ())]

    def test_go_nil_slices_are_empty(self):
        topo = parse_dir_status({"Version": "30GB 4.53 ", "Topology": {"Max": 0, "Free": 0, "DataCenters": None,
                                                                       "Layouts": None}})
        assert topo.volume_servers == () and topo.layouts == () and topo.writable_volumes == 0
        topo = parse_dir_status({"Topology": {"DataCenters": [{"Id": "dc1", "Racks": None}]}})
        assert topo.volume_servers == ()

    @pytest.mark.parametrize("doc", [[], {"Version": "x"}, {"Topology": {"DataCenters": {}}},
                                     {"Topology": {"DataCenters": ["dc1"]}},
                                     {"Topology": {"DataCenters": [{"Racks": [{"DataNodes": [{"Max": 1}]}]}]}},
                                     {"Topology": {"Free": True}}])
    def test_documents_of_another_shape(self, doc):
        with pytest.raises(ValueError):
            parse_dir_status(doc)


class TestClient:
    def test_asks_each_master_then_the_leader_then_every_server(self, clock):
        check, transport = look(clock, routes())
        assert [r["url"] for r in transport.requests] == [
            M1 + "/healthz", M1 + "/readyz", M1 + "/cluster/status",
            M2 + "/healthz", M2 + "/readyz", M2 + "/cluster/status",
            M3 + "/healthz", M3 + "/readyz", M3 + "/cluster/status",
            M1 + "/dir/status",
            "http://%s/healthz" % V1, "http://%s/healthz" % V2, "http://%s/healthz" % V3, "http://%s/healthz" % V4,
            FILER + "/healthz", S3 + "/healthz",
        ]
        assert all(r["method"] == "GET" for r in transport.requests)
        assert check.look.topology_url == M1 + "/dir/status"
        assert check.checks == 1 and not check.gave_up

    def test_topology_is_read_from_the_leader_first_even_when_listed_last(self, clock):
        table = routes(m1=master(M1, status=cluster_status(leader="10.0.0.13:9333")),
                       m2=master(M2, status=cluster_status(leader="10.0.0.13:9333")),
                       m3=master(M3, status=cluster_status(leader="10.0.0.13:9333", is_leader=True)))
        table["GET %s/dir/status" % M3] = table.pop("GET %s/dir/status" % M1)
        check, transport = look(clock, table)
        assert transport.sent("GET", "/dir/status")[0]["url"] == M3 + "/dir/status"
        assert check.assessment.leader == "10.0.0.13:9333"

    def test_a_proxy_error_fails_over_to_the_next_ready_master(self, clock):
        table = routes()
        table["GET %s/dir/status" % M1] = [ok(b"bad gateway", status=502)]
        table["GET %s/dir/status" % M2] = [dir_status()]
        check, _t = look(clock, table)
        assert check.look.topology_url == M2 + "/dir/status" and check.assessment.problems == []

    def test_masters_that_know_no_leader_are_never_asked_for_the_topology(self, clock):
        # Such a master answers /dir/status from its own empty topology: no route is scripted, so asking fails.
        table = routes(m1=master(M1, ready=503, status=cluster_status(leader=None)),
                       m2=master(M2, ready=503, status=cluster_status(leader=None)),
                       m3=master(M3, ready=503, status=cluster_status(leader=None)))
        del table["GET %s/dir/status" % M1]
        check, transport = look(clock, table)
        assert transport.sent("GET", "/dir/status") == [] and check.look.topology is None
        assert check.to_dict()["volume_servers"] == [] and check.to_dict()["free_volume_slots"] is None

    def test_without_cluster_status_the_leader_is_unknown_and_readyz_decides(self, clock):
        table = routes(m1=master(M1, status=ok(b"404 page not found", status=404)),
                       m2=master(M2, status=ok(b"404 page not found", status=404)),
                       m3=master(M3, status=ok(b"404 page not found", status=404)))
        check, _t = look(clock, table)
        assert check.quorum and check.assessment.leader is None and check.assessment.problems == []

    def test_volume_servers_are_not_probed_when_told_not_to(self, clock):
        table = {k: v for k, v in routes().items() if ":8080/" not in k}
        check, _t = look(clock, table, check_volume_servers=False)
        assert [s["healthy"] for s in check.to_dict()["volume_servers"]] == [None] * 4

    def test_a_refused_probe_is_tried_twice_and_costs_no_more_than_its_deadline(self, clock):
        start = clock.now()
        check, transport = look(clock, routes(filer=refused()), request_timeout=1.0)
        assert len(transport.sent("GET", ":8888/healthz")) == 2
        assert check.look.filers[0].error == "connection refused"
        assert clock.now() - start < 5


class TestAssess:
    def test_healthy_cluster(self, clock):
        check, _t = look(clock, routes(), expected=4)
        a = check.assessment
        assert a.problems == [] and a.quorum and (a.ready_masters, a.masters) == (3, 3)
        assert a.leader == "10.0.0.11:9333"

    def test_one_volume_server_missing(self, clock):
        check, _t = look(clock, routes(topology=dir_status(servers=(V1, V2, V3))), expected=4)
        assert check.assessment.problems == [
            "volume servers: 3 of 4 expected are registered (%s, %s, %s)" % (V1, V2, V3)]
        assert check.quorum and check.degraded

    def test_more_volume_servers_than_expected_are_fine(self, clock):
        check, _t = look(clock, routes(), expected=3)
        assert check.assessment.problems == []

    def test_no_quorum_names_each_master_and_why(self, clock):
        table = routes(m2=master(M2, alive=refused()),
                       m3=master(M3, ready=503, status=cluster_status(leader=None)))
        check, _t = look(clock, table)
        assert not check.quorum
        assert check.assessment.problems == [
            "no quorum: 1 of 3 masters ready (need 2): %s is down: connection refused, %s is not ready: knows no "
            "raft leader (/readyz answered HTTP 503)" % (M2, M3)]

    def test_one_master_down_keeps_quorum_but_is_a_problem(self, clock):
        check, _t = look(clock, routes(m3=master(M3, alive=timed_out())))
        assert check.quorum and check.assessment.problems == ["master %s is down: timed out" % M3]
        facts = check.to_dict()["masters"][2]
        assert facts == {"url": M3, "alive": False, "ready": False, "is_leader": False, "leader": None,
                         "error": "timed out"}

    def test_locked_leader_is_not_ready(self, clock):
        table = routes(m1=master(M1, ready=423))
        table["GET %s/dir/status" % M2] = [dir_status()]
        check, _t = look(clock, table)
        assert check.assessment.problems == [
            "master %s is not ready: leads with its topology locked (/readyz answered HTTP 423)" % M1]

    def test_filer_down(self, clock):
        check, _t = look(clock, routes(filer=refused()))
        assert check.assessment.problems == ["filer %s is down: connection refused" % FILER]
        assert check.to_dict()["filers"] == [{"url": FILER, "healthy": False, "status": None,
                                              "error": "connection refused"}]

    def test_filer_whose_store_fails_and_s3_gateway_down(self, clock):
        check, _t = look(clock, routes(filer=ok(b"", status=503), s3=refused()))
        assert check.assessment.problems == ["filer %s is unhealthy: /healthz answered HTTP 503" % FILER,
                                             "S3 gateway %s is down: connection refused" % S3]

    def test_unhealthy_volume_server(self, clock):
        check, _t = look(clock, routes(volume={V2: ok(b"", status=503)}))
        assert check.assessment.problems == ["volume server %s is unhealthy: /healthz answered HTTP 503" % V2]
        assert check.to_dict()["volume_servers"][1]["error"] == "/healthz answered HTTP 503"

    def test_masters_disagree_on_the_leader(self, clock):
        check, _t = look(clock, routes(m3=master(M3, status=cluster_status(leader="10.0.0.13:9333"))))
        assert check.assessment.leader is None
        assert check.assessment.problems == [
            "masters disagree on the leader: %s, %s follow 10.0.0.11:9333; %s follows 10.0.0.13:9333" % (M1, M2, M3)]

    def test_no_writable_volume_and_no_free_slot(self, clock):
        check, _t = look(clock, routes(topology=dir_status(writables=(), free=0)))
        assert check.assessment.problems == [
            "no writable volume and no free volume slot on 4 volume server(s) (max 32 volumes): writes will fail"]

    def test_a_fresh_cluster_without_volumes_is_healthy(self, clock):
        check, _t = look(clock, routes(topology=dir_status(writables=())))
        assert check.assessment.problems == [] and check.to_dict()["writable_volumes"] == 0

    def test_unreadable_topology_with_quorum(self, clock):
        check, _t = look(clock, routes(topology=ok(b"<html>login</html>")))
        problem = check.assessment.problems[0]
        assert problem.startswith("topology unknown: %s/dir/status answered a document we cannot read" % M1)
        assert problem.endswith("<html>login</html>")


def params(**kw):
    base = dict(masters=[M1, M2, M3], filers=[FILER], s3=[S3], expected_volume_servers=4, check_volume_servers=True,
                fail_on_degraded=True, wait_timeout=0.0, poll_interval=2.0, timeout=5.0, deadline=30.0,
                ca_path=None, client_cert=None, client_key=None, validate_certs=True)
    base.update(kw)
    return base


def run(clock, table, **kw):
    return seaweedfs_cluster_info.cluster_info(params(**kw), RouteTransport(clock, table), clock)


class TestModule:
    def test_healthy_result(self, clock):
        result, failure = run(clock, routes())
        assert failure is None
        assert result["changed"] is False and result["degraded"] is False and result["problems"] == []
        assert result["masters"][0] == {"url": M1, "alive": True, "ready": True, "is_leader": True,
                                        "leader": "10.0.0.11:9333", "error": None}
        assert (result["ready_masters"], result["quorum"], result["leader"]) == (3, True, "10.0.0.11:9333")
        assert result["volume_server_count"] == 4 and result["free_volume_slots"] == 24
        assert result["writable_volumes"] == 3 and result["version"] == "30GB 4.53"
        assert result["volume_servers"][0] == {"url": V1, "public_url": V1, "volumes": 2, "ec_shards": 0, "max": 8,
                                               "data_center": "dc1", "rack": "rack1", "healthy": True,
                                               "error": None}
        assert result["layouts"][0] == {"collection": "", "replication": "001", "ttl": "", "disk_type": "hdd",
                                        "writables": [1, 2, 3]}
        assert result["filers"] == [{"url": FILER, "healthy": True, "status": 200, "error": None}]
        assert result["s3"][0]["healthy"] is True
        assert (result["checks"], result["topology_from"]) == (1, M1 + "/dir/status")

    def test_one_volume_server_missing_fails(self, clock):
        result, failure = run(clock, routes(topology=dir_status(servers=(V1, V2, V3))))
        assert failure == ("SeaweedFS cluster is not healthy: volume servers: 3 of 4 expected are registered "
                           "(%s, %s, %s)" % (V1, V2, V3))
        assert result["degraded"] and result["quorum"]

    def test_degraded_passes_when_told_not_to_fail(self, clock):
        result, failure = run(clock, routes(filer=refused()), fail_on_degraded=False)
        assert failure is None and result["degraded"]
        assert result["problems"] == ["filer %s is down: connection refused" % FILER]

    def test_no_quorum_always_fails(self, clock):
        table = routes(m2=master(M2, alive=refused()), m3=master(M3, alive=refused()))
        result, failure = run(clock, table, fail_on_degraded=False)
        assert failure.startswith("SeaweedFS cluster is not healthy: no quorum: 1 of 3 masters ready (need 2): ")
        assert result["quorum"] is False and result["ready_masters"] == 1

    def test_wait_timeout_that_recovers(self, clock):
        start = clock.now()
        table = routes(filer=until(clock, start + 5, refused(), ok(b"")),
                       topology=until(clock, start + 3, dir_status(servers=(V1, V2, V3)), dir_status()))
        result, failure = run(clock, table, wait_timeout=60.0)
        assert failure is None and result["problems"] == []
        assert result["checks"] >= 2 and 5 <= result["waited"] < 60

    def test_wait_timeout_that_expires_reports_the_last_look(self, clock):
        table = routes(m3=master(M3, alive=refused()), filer=refused())
        result, failure = run(clock, table, wait_timeout=10.0)
        assert result["checks"] > 1 and result["waited"] <= 10.5
        assert failure.startswith("SeaweedFS cluster is not healthy after waiting ")
        assert ("checks; last look: 2 of 3 masters ready, leader 10.0.0.11:9333, 4 volume server(s), 3 writable "
                "volume(s), 24 free volume slot(s), filers 0 of 1 healthy, S3 gateways 1 of 1 healthy): "
                "master %s is down: connection refused; filer %s is down: connection refused" % (M3, FILER)) in failure

    def test_a_volume_server_gone_during_the_wait_is_named(self, clock):
        start = clock.now()
        table = routes(topology=until(clock, start + 1, dir_status(), dir_status(servers=(V1, V2, V3))),
                       filer=refused())
        _result, failure = run(clock, table, wait_timeout=6.0)
        assert failure.endswith("volume servers: 3 of 4 expected are registered (%s, %s, %s); missing since an "
                                "earlier check: %s; filer %s is down: connection refused" % (V1, V2, V3, V4, FILER))

    def test_no_quorum_with_fail_on_degraded_false_waits_only_for_quorum(self, clock):
        start = clock.now()
        table = routes(m2=master(M2, alive=until(clock, start + 3, refused(), ok(b""))),
                       m3=master(M3, alive=refused()), filer=refused())
        result, failure = run(clock, table, wait_timeout=30.0, fail_on_degraded=False)
        assert failure is None and result["quorum"] and result["waited"] < 10
        assert result["problems"] == ["master %s is down: connection refused" % M3,
                                      "filer %s is down: connection refused" % FILER]
