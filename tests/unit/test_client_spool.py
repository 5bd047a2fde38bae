"""The client library in clients/python (mlflow_ha_client): register() through the collection's own client against
the fake tracking server of test_mlflow.py, the spool's crash points (a process dying between each durable step)
and replay exactly once, the tier named when the registry is down, metrics, the health app and the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from fakes import FakeClock, ok, refused, timed_out
from test_mlflow import API, COMMIT_THEN_TIME_OUT, FakeMlflow, mlflow_fail, mlflow_json

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import IDEMPOTENCY_TAG
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import parse

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "clients" / "python" / "src"
if str(CLIENT_SRC) not in sys.path:
    sys.path.insert(0, str(CLIENT_SRC))

from mlflow_ha_client import (  # noqa: E402
    REGISTERED,
    SPOOLED,
    RegistrationRefused,
    Registry,
    RegistryUnavailable,
    Replayer,
    Spool,
    health_app,
)
from mlflow_ha_client import cli as client_cli  # noqa: E402

VIP = "https://10.0.0.100"
S1 = "https://10.0.0.31:5000"
LB_HEALTH = "/lb-health"


class Died(BaseException):
    """A simulated process death: nothing in the library catches it (as nothing runs after a SIGKILL)."""


class FakeRegistry(FakeMlflow):
    """FakeMlflow behind the collection's HAProxy: ``/lb-health`` (503 when no server is up), experiments by name,
    runs in any experiment. ``lb_down``: the VIP refuses connections; ``servers_down``: HAProxy answers 503 for
    everything (no server up)."""

    def __init__(self, clock):
        super().__init__(clock, endpoints=(VIP, S1))
        self.experiments: dict = {}
        self.lb_down = False
        self.servers_down = False

    def send(self, method, url, body, headers, timeout):
        if url.startswith(VIP) and self.lb_down:
            self.requests.append({"method": method, "url": url, "path": url[len(VIP):].split("?")[0]})
            self.clock.t += self.latency
            raise refused()
        if url.startswith(VIP) and self.servers_down:
            self.requests.append({"method": method, "url": url, "path": url[len(VIP):].split("?")[0]})
            self.clock.t += self.latency
            return ok(b"<html><body><h1>503 Service Unavailable</h1></body></html>", 503)
        return super().send(method, url, body, headers, timeout)

    def handle(self, method, path, query, body):
        if (method, path) == ("GET", LB_HEALTH):
            return ok(b"<html><body><h1>200 OK</h1>Service ready.</body></html>")
        if (method, path) == ("GET", API + "/experiments/get-by-name"):
            name = query["experiment_name"][0]
            if name not in self.experiments:
                return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Could not find experiment with name %s" % name, 404)
            return mlflow_json({"experiment": {"experiment_id": self.experiments[name], "name": name,
                                               "lifecycle_stage": "active"}})
        if (method, path) == ("POST", API + "/experiments/create"):
            doc = json.loads(body)
            self.experiments[doc["name"]] = str(len(self.experiments) + 1)
            return mlflow_json({"experiment_id": self.experiments[doc["name"]]})
        return super().handle(method, path, query, body)

    def search_runs(self, _query, doc):
        key = doc["filter"].split(" = ", 1)[1][1:-1]
        runs = [{"info": {"run_id": r, "artifact_uri": uri}} for r, uri in self.runs.items()
                if self.run_tags.get(r, {}).get(IDEMPOTENCY_TAG) == key
                and uri.split("/")[1] in doc["experiment_ids"]]
        return mlflow_json({"runs": runs} if runs else {})

    def versions_of(self, name, key=None):
        return [v for v in self.versions
                if v["name"] == name and (key is None or v["tags"].get(IDEMPOTENCY_TAG) == key)]

    def creates(self):
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == API + "/model-versions/create"]

    def artifact_named(self, basename):
        return {unquote(k): v for k, v in self.artifacts.items() if k.endswith("/" + basename)}


@pytest.fixture
def server(clock):
    return FakeRegistry(clock)


@pytest.fixture
def files(tmp_path):
    made = []
    for name, size in (("model.pkl", 3000), ("conda.yaml", 40)):
        path = tmp_path / "job" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size))
        made.append(path)
    return made


def registry(server, clock, rng, spool_dir, crash=None, **kw):
    kw.setdefault("deadline", 60.0)
    kw.setdefault("request_timeout", 5.0)
    spool = Spool(spool_dir, crash=crash) if crash else Spool(spool_dir)
    return Registry(VIP, username="alice", password="pw", servers=kw.pop("servers", ()), transport=server,
                    clock=clock, rng=rng, spool=spool, **kw)


def crash_at(point):
    def crash(where):
        if where == point:
            raise Died(where)
    return crash


def exactly_once(server, name, key, files):
    """One version with the key, its files in its run's artifacts byte for byte."""
    found = server.versions_of(name, key)
    assert len(found) == 1, found
    source = found[0]["source"]
    for path in files:
        stored = server.artifact_named(path.name)
        assert list(stored.values()) == [path.read_bytes()], (path.name, list(stored))
        assert all(source.split(":/", 1)[1] in k for k in stored)
    return found[0]


# -- the shared code -----------------------------------------------------------------------------------------


def test_the_collection_files_are_imported_not_copies(tmp_path):
    """Outside the unit tests' collection path, the package resolves the collection's import names to
    plugins/module_utils of this checkout, beside an installed Ansible's own ansible_collections (this venv's);
    clients/ holds no copy of any of those files."""
    code = ("import importlib.util, sys; ansible = importlib.util.find_spec('ansible_collections') is not None; "
            "import mlflow_ha_client; "
            "m = sys.modules['ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_registration']; "
            "print(m.__file__); "
            "ansible and importlib.import_module('ansible_collections.community.general'); print(ansible)")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(CLIENT_SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert Path(lines[0]) == ROOT / "plugins" / "module_utils" / "mlflow_registration.py"
    shared = {p.read_bytes() for p in (ROOT / "plugins" / "module_utils").glob("*.py")}
    copies = [p for p in (ROOT / "clients").rglob("*.py") if p.read_bytes() in shared]
    assert copies == []


def test_the_wheel_carries_every_collection_file_the_package_imports():
    """pyproject.toml's force-include, _shared.SHARED and the collection imports of those files (and of the package)
    name the same set: a module_utils file that starts importing another one cannot be left out of the wheel."""
    import ast

    import tomllib
    from mlflow_ha_client import _shared

    prefix = _shared.PREFIX + "."
    utils = ROOT / "plugins" / "module_utils"
    sources = [utils / ("%s.py" % n) for n in _shared.SHARED] + list((CLIENT_SRC / "mlflow_ha_client").glob("*.py"))
    imported = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix):
                imported.add(node.module[len(prefix):])
    assert imported == set(_shared.SHARED)
    project = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())
    included = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert included == {"../../plugins/module_utils/%s.py" % n: "mlflow_ha_client/_module_utils/%s.py" % n
                        for n in _shared.SHARED}


# -- register --------------------------------------------------------------------------------------------------


def test_register_makes_a_run_uploads_every_file_and_one_version(server, clock, rng, tmp_path, files):
    reg = registry(server, clock, rng, tmp_path / "spool")
    result = reg.register("churn", files, alias="champion", tags={"team": "ml"}, run_tags={"job": "nightly"})
    assert result.status == REGISTERED and result.version == 1 and result.created
    version = exactly_once(server, "churn", result.key, files)
    assert version["tags"]["team"] == "ml"
    assert server.aliases[("churn", "champion")] == 1
    assert server.run_tags[result.run_id]["job"] == "nightly"
    assert server.run_status[result.run_id] == "FINISHED"
    again = reg.register("churn", files, alias="champion")
    assert again.status == REGISTERED and again.version == 1 and not again.created
    assert len(server.creates()) == 1
    assert reg.spool.status()["entries"]["pending"] == 0


def test_a_refusal_is_raised_and_never_spooled(server, clock, rng, tmp_path, files):
    reg = registry(server, clock, rng, tmp_path / "spool")
    server.faults["GET %s/experiments/get-by-name" % API] = [mlflow_fail("PERMISSION_DENIED", "no", 403)]
    with pytest.raises(RegistrationRefused, match="PERMISSION_DENIED"):
        reg.register("churn", files)
    assert reg.spool.status()["entries"]["pending"] == 0


def test_bad_arguments(server, clock, rng, tmp_path, files):
    reg = registry(server, clock, rng, tmp_path / "spool")
    with pytest.raises(ValueError, match="distinct names"):
        reg.register("churn", [files[0], files[0]])
    with pytest.raises(ValueError, match="does not exist"):
        reg.register("churn", tmp_path / "missing.bin")


# -- spooled when the registry is down, and which tier ---------------------------------------------------------


def test_load_balancer_down_spools_and_says_so(server, clock, rng, tmp_path, files):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool")
    result = reg.register("churn", files)
    assert result.status == SPOOLED and result.tier == "load balancer"
    assert "does not answer /lb-health (connection refused)" in result.reason
    status = reg.spool.status()
    assert status["entries"]["pending"] == 1 and status["counters"]["spooled"] == 1
    entry = reg.spool.get(result.key)
    assert [f["name"] for f in entry.files] == ["model.pkl", "conda.yaml"]
    assert reg.spool.verify(entry) is None
    with pytest.raises(RegistryUnavailable, match="load balancer tier"):
        reg.register("other", files, spool=False)

    server.lb_down = False
    assert reg.replay().stopped.startswith(result.key)  # the breaker is still open: nothing is sent
    clock.t += 31  # the breaker's reset timeout: a trial goes through
    report = reg.replay()
    assert [r["key"] for r in report.replayed] == [result.key] and report.stopped is None
    exactly_once(server, "churn", result.key, files)
    assert reg.spool.status()["entries"] == {"pending": 0, "done": 1, "failed": 0, "corrupt": 0}
    assert not entry.directory.exists()
    assert reg.replay().replayed == []


def test_no_mlflow_server_behind_the_load_balancer_names_the_mlflow_tier(server, clock, rng, tmp_path, files):
    server.servers_down = True
    server.down.add(S1)
    reg = registry(server, clock, rng, tmp_path / "spool", servers=[S1])
    result = reg.register("churn", files)
    assert result.status == SPOOLED and result.tier == "mlflow"
    assert "answers /lb-health 503: no MLflow server is up in HAProxy" in result.reason
    assert "server %s is down: GET /health: connection refused" % S1 in result.reason


def test_servers_up_but_registration_failing_names_what_is_behind_them(server, clock, rng, tmp_path, files):
    reg = registry(server, clock, rng, tmp_path / "spool", deadline=30.0)
    server.faults["POST %s/runs/search" % API] = [ok(b"database is locked", 500)] * 50
    result = reg.register("churn", files)
    assert result.status == SPOOLED and result.tier == "backend"
    assert "PostgreSQL or the artifact store" in result.reason


def test_an_open_breaker_spools_without_a_request(server, clock, rng, tmp_path, files):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool", failure_threshold=2, reset_timeout=60.0)
    reg.register("churn", files)
    assert reg.breakers_open()
    sent = len(server.requests)
    result = reg.register("churn", [files[1]])
    assert result.status == SPOOLED and "circuit breaker of every endpoint is open" in result.reason
    assert len(server.requests) == sent
    assert reg.spool.status()["entries"]["pending"] == 2


def test_the_deadline_passing_spools_and_the_replay_finds_the_committed_version(server, clock, rng, tmp_path, files):
    """Every create commits and then times out (the answer is lost): the deadline passes, the registration is
    spooled; the replay searches the key first and finds the version instead of creating a second one."""
    reg = registry(server, clock, rng, tmp_path / "spool", deadline=12.0, request_timeout=5.0)
    server.faults["POST %s/model-versions/create" % API] = [COMMIT_THEN_TIME_OUT]
    server.faults["GET %s/model-versions/search" % API] = [None] + [timed_out()] * 20
    result = reg.register("churn", files)
    assert result.status == SPOOLED
    assert len(server.versions_of("churn")) == 1
    server.faults.clear()
    clock.t += 31
    report = reg.replay()
    assert report.replayed[0]["version"] == 1 and report.replayed[0]["created"] is False
    exactly_once(server, "churn", result.key, files)
    assert len(server.creates()) == 1


# -- crash points ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["files_written", "files_moved", "before_commit"])
def test_death_before_the_spool_commit_leaves_nothing_to_replay(server, clock, rng, tmp_path, files, point):
    server.lb_down = True
    with pytest.raises(Died):
        registry(server, clock, rng, tmp_path / "spool", crash=crash_at(point)).register("churn", files)
    spool = Spool(tmp_path / "spool")  # the next process
    assert spool.status()["entries"]["pending"] == 0
    assert list((tmp_path / "spool" / "files").iterdir()) == []
    assert list((tmp_path / "spool" / "staging").iterdir()) == []
    # The job, run again, spools or registers its model once.
    server.lb_down = False
    reg = registry(server, clock, rng, tmp_path / "spool")
    result = reg.register("churn", files)
    assert result.status == REGISTERED
    assert reg.replay().replayed == []
    exactly_once(server, "churn", result.key, files)


KILLED_WRITER = """
import os, random, signal, sys
sys.path[:0] = sys.argv[4].split(os.pathsep)
from fakes import FakeClock
from mlflow_ha_client import Registry, Spool
from test_client_spool import VIP, FakeRegistry

def kill(where):
    if where == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

server = FakeRegistry(FakeClock())
server.lb_down = True
Registry(VIP, transport=server, clock=server.clock, rng=random.Random(1),
         spool=Spool(sys.argv[1], crash=kill)).register("churn", sys.argv[3].split(os.pathsep))
"""


@pytest.mark.parametrize("point, pending", [("files_written", 0), ("files_moved", 0), ("before_commit", 0),
                                            ("after_commit", 1)])
def test_a_writer_killed_with_sigkill_at_each_step(server, clock, rng, tmp_path, files, point, pending):
    """The same crash points with a real death: a process killed by SIGKILL while it spools (no exception
    handler, no rollback, SQLite's WAL as the kernel left it); the next process sees a whole entry or none."""
    paths = [str(ROOT / ".cache" / "collections"), str(Path(__file__).parent), str(CLIENT_SRC)]
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "spool"), point,
                            os.pathsep.join(str(f) for f in files), os.pathsep.join(paths)],
                           capture_output=True, text=True, check=False, timeout=60)
    assert child.returncode == -9, child.stderr
    reg = registry(server, clock, rng, tmp_path / "spool")
    assert reg.spool.status()["entries"]["pending"] == pending
    assert len(list((tmp_path / "spool" / "files").iterdir())) == pending
    assert list((tmp_path / "spool" / "staging").iterdir()) == []
    assert len(reg.replay().replayed) == pending
    if pending:
        exactly_once(server, "churn", reg.spool.entries(None)[0].key, files)
    assert len(server.creates()) == pending


def test_death_after_the_spool_commit_is_replayed_once(server, clock, rng, tmp_path, files):
    server.lb_down = True
    with pytest.raises(Died):
        registry(server, clock, rng, tmp_path / "spool", crash=crash_at("after_commit")).register("churn", files)
    server.lb_down = False
    reg = registry(server, clock, rng, tmp_path / "spool")
    (entry,) = reg.spool.entries()
    assert reg.spool.verify(entry) is None
    # the job ran again before the replay: the key finds the entry's registration once in the registry
    assert reg.register("churn", files).status == REGISTERED
    report = reg.replay()
    assert report.replayed[0]["created"] is False
    assert reg.replay().replayed == []
    exactly_once(server, "churn", entry.key, files)


def test_death_after_the_create_committed_before_the_entry_was_marked_done(server, clock, rng, tmp_path, files):
    server.lb_down = True
    key = registry(server, clock, rng, tmp_path / "spool").register("churn", files).key
    server.lb_down = False
    with pytest.raises(Died):
        registry(server, clock, rng, tmp_path / "spool", crash=crash_at("after_register")).replay()
    assert len(server.versions_of("churn", key)) == 1
    reg = registry(server, clock, rng, tmp_path / "spool")  # the next process
    assert [e.key for e in reg.spool.entries()] == [key]
    report = reg.replay()
    assert report.replayed[0]["version"] == 1 and report.replayed[0]["created"] is False
    exactly_once(server, "churn", key, files)
    assert len(server.creates()) == 1


def test_death_after_the_entry_was_marked_done_cleans_its_files(server, clock, rng, tmp_path, files):
    server.lb_down = True
    key = registry(server, clock, rng, tmp_path / "spool").register("churn", files).key
    server.lb_down = False
    with pytest.raises(Died):
        registry(server, clock, rng, tmp_path / "spool", crash=crash_at("after_mark_done")).replay()
    assert len(list((tmp_path / "spool" / "files").iterdir())) == 1  # done, its files not yet deleted
    reg = registry(server, clock, rng, tmp_path / "spool")
    assert list((tmp_path / "spool" / "files").iterdir()) == []
    assert reg.replay().replayed == []
    exactly_once(server, "churn", key, files)


# -- replay: order, corruption, exclusivity ---------------------------------------------------------------


def test_replay_goes_in_spool_order_per_model_and_stops_while_the_registry_is_down(server, clock, rng, tmp_path):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool", reset_timeout=0.0)
    keys = []
    for i, model in enumerate(["a", "b", "a", "a"]):
        path = tmp_path / ("w%d" % i) / "weights.bin"
        path.parent.mkdir()
        path.write_bytes(b"%d" % i)
        keys.append((model, reg.register(model, path).key))
    report = reg.replay()
    assert report.replayed == [] and report.stopped.startswith(keys[0][1])
    assert reg.spool.get(keys[0][1]).attempts == 1
    server.lb_down = False
    report = reg.replay()
    assert [r["key"] for r in report.replayed] == [pair[1] for pair in keys]
    for model in ("a", "b"):
        versions = sorted(server.versions_of(model), key=lambda v: v["version"])
        assert [v["tags"][IDEMPOTENCY_TAG] for v in versions] == [k for m, k in keys if m == model]


def test_a_changed_spool_file_is_marked_corrupt_and_never_sent(server, clock, rng, tmp_path, files):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool")
    entry = reg.spool.get(reg.register("churn", files).key)
    Path(entry.paths[0]).write_bytes(b"bit rot")
    server.lb_down = False
    report = reg.replay()
    assert report.corrupt == [entry.key] and server.versions_of("churn") == []
    assert reg.spool.status()["entries"]["corrupt"] == 1
    assert "sha256" in reg.spool.get(entry.key).last_error


def test_one_replayer_at_a_time(server, clock, rng, tmp_path, files):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool")
    reg.register("churn", files)
    server.lb_down = False
    clock.t += 31
    other = Spool(tmp_path / "spool")  # another process's handle on the same spool
    seen = []

    def send(entry):
        seen.append(other.replay(lambda e: pytest.fail("a second replayer ran")).busy)
        return reg.send_entry(entry, 30.0)

    assert len(reg.spool.replay(send).replayed) == 1
    assert seen == [True]


def test_replayer_thread_pass(server, clock, rng, tmp_path, files):
    server.lb_down = True
    reg = registry(server, clock, rng, tmp_path / "spool", reset_timeout=0.0)
    key = reg.register("churn", files).key
    replayer = Replayer(reg, interval=3600)
    server.lb_down = False
    assert len(replayer.run_once().replayed) == 1
    assert replayer.run_once() is None  # nothing left
    replayer.start()
    assert replayer.status()["running"]
    replayer.stop(join_timeout=10)
    assert not replayer.status()["running"]
    exactly_once(server, "churn", key, files)


# -- metrics, health, CLI ---------------------------------------------------------------------------------


def test_metrics_health_app_and_cli(server, clock, rng, tmp_path, files, capsys):
    server.servers_down = True
    reg = registry(server, clock, rng, tmp_path / "spool")
    key = reg.register("churn", files).key
    samples = {(s.name, tuple(sorted(s.labels))): s.value for s in parse(reg.spool.metrics())}
    assert samples[("mlflow_ha_spool_entries", (("state", "pending"),))] == 1
    assert samples[("mlflow_ha_spool_spooled_total", ())] == 1
    assert samples[("mlflow_ha_spool_oldest_pending_age_seconds", ())] >= 0

    app = health_app(reg, max_age=0)
    answers = []
    body = b"".join(app({"PATH_INFO": "/health", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()},
                        lambda status, headers: answers.append(status)))
    state = json.loads(body)
    assert answers == ["503 Service Unavailable"] and state["tier_down"] == "mlflow" and not state["up"]
    assert state["spool"]["entries"]["pending"] == 1
    server.servers_down = False
    body = b"".join(app({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda status, headers: answers.append(status)))
    assert answers[-1] == "200 OK" and json.loads(body)["up"]
    metrics = b"".join(app({"PATH_INFO": "/metrics"}, lambda status, headers: answers.append(status)))
    assert b"mlflow_ha_spool_entries" in metrics

    spool_dir = str(tmp_path / "spool")
    assert client_cli.main(["--spool-dir", spool_dir, "spool", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["waiting"][0]["key"] == key
    assert client_cli.main(["--spool-dir", spool_dir, "spool", "drop", key]) == 0
    assert client_cli.main(["--spool-dir", spool_dir, "spool", "drop", key]) == 1
    assert Spool(spool_dir).status()["counters"]["dropped"] == 1
    assert server.versions_of("churn") == []


def test_cli_replay_from_the_environment(tmp_path, monkeypatch, capsys):
    """The CLI's replay against nothing listening: the entry stays, the exit status says so."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    spool_dir = str(tmp_path / "spool")
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    Spool(spool_dir).put("k1", "churn", {"name": "churn", "key": "k1", "artifact_path": None, "alias": None,
                                         "tags": {}, "description": None, "run_tags": {},
                                         "experiment": "e"}, [path], "test")
    assert client_cli.main(["--spool-dir", spool_dir, "spool", "replay", "--deadline", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["stopped"].startswith("k1") and "load balancer" in report["stopped"]
    assert Spool(spool_dir).get("k1").state == "pending"


def test_health_without_credentials_still_reports_the_tier(clock, rng, tmp_path):
    server = FakeRegistry(clock)
    server.faults["GET /health"] = [timed_out()]
    reg = Registry(VIP, transport=server, clock=clock, rng=rng)
    state = reg.health()
    assert state["tier_down"] == "mlflow" and "timed out" in state["summary"]
    assert FakeClock  # the fixture's class, used through ``clock``
