"""mlflow_ha_client against a real MLflow tracking server (the wheelhouse's MLflow in .cache/mlflow-venv, made by
tools/mlflow-venv.sh, or MLFLOW_HA_MLFLOW_VENV): registered through a TCP gate standing for the load balancer,
spooled while the gate refuses connections, replayed exactly once (a replay that dies after the create committed
included) when it is open again. Skipped when that venv is absent. The server starts once (9 s on an idle 2-core
machine, 15-35 s beside a running lab); the test's own steps take a few seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import MlflowClient
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import poll_until

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))
from mlflow_ha_client import REGISTERED, SPOOLED, Registry, Spool  # noqa: E402

VENV = Path(os.environ.get("MLFLOW_HA_MLFLOW_VENV") or ROOT / ".cache" / "mlflow-venv")
MLFLOW = VENV / "bin" / "mlflow"

pytestmark = pytest.mark.skipif(not MLFLOW.is_file(), reason="no MLflow venv at %s (tools/mlflow-venv.sh)" % VENV)


class Died(BaseException):
    """A simulated death of the replaying process."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """``mlflow server`` on 127.0.0.1 (SQLite backend, proxied local artifacts), startable again on its port."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.process = None

    def start(self) -> None:
        with open(self.workdir / "server.log", "ab") as log:  # the server keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", "sqlite:///%s" % (self.workdir / "mlflow.db"), "--serve-artifacts",
                 "--artifacts-destination", str(self.workdir / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(self.workdir), start_new_session=True)
        poll_until(lambda: healthy(self.url) or self.process.poll(), bool, 45.0, 0.3, "mlflow server /health")
        assert self.process.poll() is None, (self.workdir / "server.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and its workers
            self.process.wait(10)
        self.process = None


class Gate:
    """A TCP forwarder on its own port to the server: the test's load balancer. ``close()`` makes connections to
    it refused (a registry unreachable from the client), ``open()`` serves again on the same port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.listener = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def server(tmp_path):
    made = Server(tmp_path)
    made.start()
    yield made
    made.stop()


def test_registered_spooled_while_stopped_and_replayed_exactly_once(server, tmp_path):
    started = time.monotonic()
    files = []
    for i in range(3):
        path = tmp_path / ("job%d" % i) / "weights.bin"
        path.parent.mkdir()
        path.write_bytes(os.urandom(50_000 + i))
        files.append(path)
    spool_dir = tmp_path / "spool"
    gate = Gate(server.port)
    gate.open()
    registry = Registry(gate.url, spool_dir=spool_dir, deadline=30.0, request_timeout=10.0, max_attempts=3,
                        reset_timeout=1.0)
    first = registry.register("spool-it", files[0], alias="champion")
    assert first.status == REGISTERED and first.version == 1
    assert registry.health()["up"]

    gate.close()
    spooled = [registry.register("spool-it", path, deadline=3.0) for path in files[1:]]
    assert [r.status for r in spooled] == [SPOOLED, SPOOLED]
    assert spooled[0].tier == "load balancer" and "connection refused" in spooled[0].reason

    gate.open()
    time.sleep(1.0)  # the breakers' reset timeout
    dying = Registry(gate.url, spool=Spool(spool_dir, crash=_die_at("after_register")), deadline=20.0)
    with pytest.raises(Died):
        dying.replay()
    report = Registry(gate.url, spool_dir=spool_dir, deadline=20.0).replay()
    assert [r["key"] for r in report.replayed] == [r.key for r in spooled]
    assert report.replayed[0]["created"] is False  # the dead replay's version, found by its key

    client = MlflowClient([server.url])
    for result, path in zip([first, *spooled], files):
        found = client.search_versions("spool-it", result.key)[0]
        assert len(found) == 1, (result.key, found)
        run_root = client.run_artifact_uri(found[0].run_id).split(":/", 1)[1]
        relative = found[0].source.split(":/", 1)[1][len(run_root):].strip("/")
        data = client.download_artifact("/".join(p for p in (run_root, relative, path.name) if p))[0]
        assert data == path.read_bytes()
    assert sorted(v.version for v in client.list_versions("spool-it")) == [1, 2, 3]
    assert Spool(spool_dir).status()["entries"]["pending"] == 0
    gate.close()
    print("registered, spooled, replayed in %.1f s (the server's start not counted)" % (time.monotonic() - started))


def _die_at(point):
    def crash(where):
        if where == point:
            raise Died(where)
    return crash
