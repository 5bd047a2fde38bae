"""The storage fence (roles/seaweedfs/files/storage_fence.py): which peers it shuts out and lets in again, the
commands it runs for that, and its /health answer on loopback."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakes import load_program

ROOT = Path(__file__).resolve().parents[2]
sf = load_program(ROOT / "roles" / "seaweedfs" / "files" / "storage_fence.py")

DOWN = "TimeoutError: timed out"


def fence(**kw):
    peers = sf.parse_peers("s3-2=10.0.0.2,s3-3=10.0.0.3,s3-4=10.0.0.4")
    return sf.Fence(peers, **kw)


def test_a_peer_is_fenced_after_fail_after_failed_probes_in_a_row():
    f = fence(fail_after=3)
    assert f.observe({"s3-2": DOWN}) == {"fence": [], "unfence": []}
    assert f.observe({"s3-2": DOWN}) == {"fence": [], "unfence": []}
    assert f.observe({"s3-2": DOWN}) == {"fence": ["s3-2"], "unfence": []}
    # Already fenced: no second decision.
    assert f.observe({"s3-2": DOWN}) == {"fence": [], "unfence": []}


def test_one_good_answer_resets_the_count():
    f = fence(fail_after=3)
    f.observe({"s3-2": DOWN})
    f.observe({"s3-2": DOWN})
    f.observe({"s3-2": None})
    f.observe({"s3-2": DOWN})
    assert f.observe({"s3-2": DOWN})["fence"] == []


def test_a_fenced_peer_is_let_in_after_recover_after_good_probes():
    f = fence(fail_after=1, recover_after=2)
    assert f.observe({"s3-3": DOWN})["fence"] == ["s3-3"]
    assert f.observe({"s3-3": None})["unfence"] == []
    assert f.observe({"s3-3": None})["unfence"] == ["s3-3"]
    assert not any(p.fenced for p in f.peers)


def test_no_more_than_max_fenced_peers_and_the_reason_is_said_once():
    f = fence(fail_after=1, max_fenced=1)
    first = f.observe({"s3-2": DOWN, "s3-3": DOWN, "s3-4": DOWN})
    assert len(first["fence"]) == 1
    assert len(f.events) == 1 and "may be the one cut off" in f.events[0]
    f.events.clear()
    assert f.observe({"s3-2": DOWN, "s3-3": DOWN, "s3-4": DOWN})["fence"] == []
    assert f.events == [], "the same held-back peers are not reported again every second"
    assert sum(p.fenced for p in f.peers) == 1


def test_a_slot_frees_when_the_fenced_peer_comes_back():
    f = fence(fail_after=1, recover_after=1, max_fenced=1)
    fenced = f.observe({"s3-2": DOWN, "s3-3": DOWN})["fence"]
    back = fenced[0]
    other = "s3-3" if back == "s3-2" else "s3-2"
    changes = f.observe({back: None, other: DOWN})
    assert changes == {"fence": [other], "unfence": [back]}


def test_bad_peer_lists_are_refused():
    with pytest.raises(ValueError, match="name=address"):
        sf.parse_peers("s3-2")
    assert sf.parse_peers(" s3-2=10.0.0.2 , ") == [sf.Peer("s3-2", "10.0.0.2")]


def test_the_enforcer_adds_the_address_and_kills_its_connections():
    calls = []

    def runner(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    enforcer = sf.Enforcer("mlflow_ha_fence", "fenced", runner)
    peer = sf.Peer("s3-2", "10.0.0.2")
    assert enforcer.fence(peer) == []
    assert enforcer.unfence(peer) == []
    assert calls == [
        ["nft", "add", "element", "inet", "mlflow_ha_fence", "fenced", "{ 10.0.0.2 }"],
        ["ss", "-K", "dst", "10.0.0.2"],
        ["nft", "delete", "element", "inet", "mlflow_ha_fence", "fenced", "{ 10.0.0.2 }"],
    ]


def test_the_enforcer_reports_what_failed():
    def runner(argv):
        return subprocess.CompletedProcess(argv, 1, "", "Error: No such file or directory")

    problems = sf.Enforcer("t", "s", runner).fence(sf.Peer("s3-2", "10.0.0.2"))
    assert len(problems) == 2 and "nft add 10.0.0.2: Error" in problems[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_answers_the_local_verdict_and_probe_reads_it():
    health = sf.LocalHealth()
    port = free_port()
    server = sf.serve(health, "127.0.0.1", port)
    try:
        url = f"http://127.0.0.1:{port}/health"
        assert sf.probe(url, 2) == "HTTP 503", "not checked yet"
        health.set(None)
        assert sf.probe(url, 2) is None
        health.set("ConnectionRefusedError: [Errno 111] Connection refused")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=2)
        assert err.value.code == 503 and b"refused" in err.value.read()
        assert sf.probe(f"http://127.0.0.1:{port}/nothing", 2) == "HTTP 404"
    finally:
        server.shutdown()
    assert sf.probe(f"http://127.0.0.1:{free_port()}/health", 2).startswith("ConnectionRefusedError")


def test_the_state_is_exported_for_node_exporter(tmp_path):
    peers = [sf.Peer("s3-2", "10.0.0.2", fenced=True), sf.Peer("s3-3", "10.0.0.3")]
    out = tmp_path / "fence.prom"
    sf.textfile(str(out), peers)
    text = out.read_text()
    assert 'mlflow_ha_storage_peer_fenced{peer="s3-2"} 1' in text
    assert 'mlflow_ha_storage_peer_fenced{peer="s3-3"} 0' in text
