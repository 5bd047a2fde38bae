"""The registration probe (roles/registration_probe/files/registration_probe.py), loaded by path as the role runs it,
against test_mlflow's fake tracking server, extended here with what the probe also asks for: experiments, deletes,
and searches by name and tag. One test runs the program itself behind a real socket and stops it with SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from fakes import FakeClock, load_program, refused, timed_out, web_config_files
from test_mlflow import API, ARTIFACTS, FakeMlflow, mlflow_fail, mlflow_json

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import Response
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import IDEMPOTENCY_TAG
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import families, parse

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "roles" / "registration_probe" / "files" / "registration_probe.py"
# What the role copies onto the probe host, read from the role.
MODULE_UTILS = yaml.safe_load((ROOT / "roles" / "registration_probe" / "vars" / "main.yml").read_text())[
    "_registration_probe_utils"]


rp = load_program(PROGRAM)

VIP = "https://10.0.0.100"
SECRET = "pr0be-S3cret!"
TOKEN = base64.b64encode(("probe:" + SECRET).encode()).decode()
WALL = 1_700_000_000.25
MODEL = "mlflow-ha-probe"
CREATE_VERSION = "POST %s/model-versions/create" % API
DELETE_VERSION = "DELETE %s/model-versions/delete" % API
DELETE_RUN = "POST %s/runs/delete" % API
CLAUSE = re.compile(r"^(name|tags\.`([^`]+)`) = ('[^']*'|\"[^\"]*\")$")
FAMILIES = {
    "mlflow_probe_registrations_total": "counter",
    "mlflow_probe_registration_failures_total": "counter",
    "mlflow_probe_step_attempts_total": "counter",
    "mlflow_probe_step_failures_total": "counter",
    "mlflow_probe_registration_duration_seconds": "histogram",
    "mlflow_probe_last_success_timestamp_seconds": "gauge",
    "mlflow_probe_prune_failures_total": "counter",
    "mlflow_probe_up": "gauge",
}


def parse_filter(text):
    """(name or None, {tag: value}) of a filter of ``field = 'value'`` clauses joined by AND, as MLflow reads it."""
    name, tags = None, {}
    for clause in text.split(" AND "):
        match = CLAUSE.match(clause)
        assert match, "a filter MLflow's grammar would not read: %r" % text
        value = match.group(3)[1:-1]
        if match.group(1) == "name":
            name = value
        else:
            tags[match.group(2)] = value
    return name, tags


class ProbeMlflow(FakeMlflow):
    """FakeMlflow plus experiments, model version and run deletion, searches by name and tags, run search by
    experiment in start order, and the check that a version's source lies in its run's artifact root."""

    def __init__(self, clock, endpoints=(VIP,), latency=0.01):
        super().__init__(clock, endpoints, latency)
        self.experiments = {"Default": {"id": "0", "stage": "active"}}
        self.run_meta = {"r1": {"experiment_id": "0", "order": 0, "deleted": False}}
        self.order = 0
        self.timeouts: list = []

    def send(self, method, url, body, headers, timeout):
        self.timeouts.append(timeout)
        return super().send(method, url, body, headers, timeout)

    def handle(self, method, path, query, body):
        route = {
            ("GET", API + "/experiments/get-by-name"): self.get_experiment,
            ("POST", API + "/experiments/create"): self.create_experiment,
            ("POST", API + "/experiments/restore"): self.restore_experiment,
            ("DELETE", API + "/model-versions/delete"): self.delete_version,
            ("POST", API + "/runs/delete"): self.delete_run,
        }.get((method, path))
        if route is None:
            return super().handle(method, path, query, body)
        return route(query, json.loads(body) if body else {})

    # -- helpers for tests ----------------------------------------------------------------------------------

    def active_runs(self):
        return [r for r in self.runs if not self.run_meta.get(r, {}).get("deleted")]

    def version_numbers(self, name=MODEL):
        return sorted(v["version"] for v in self.versions if v["name"] == name)

    def paths(self):
        return ["%s %s" % (r["method"], r["path"]) for r in self.requests]

    # -- experiments ----------------------------------------------------------------------------------------

    def get_experiment(self, query, _doc):
        name = query["experiment_name"][0]
        if name not in self.experiments:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Could not find experiment with name '%s'" % name, 404)
        found = self.experiments[name]
        return mlflow_json({"experiment": {"experiment_id": found["id"], "name": name,
                                           "lifecycle_stage": found["stage"]}})

    def create_experiment(self, _query, doc):
        if doc["name"] in self.experiments:
            return mlflow_fail("RESOURCE_ALREADY_EXISTS", "Experiment '%s' already exists." % doc["name"])
        number = str(len(self.experiments))
        self.experiments[doc["name"]] = {"id": number, "stage": "active"}
        return mlflow_json({"experiment_id": number})

    def restore_experiment(self, _query, doc):
        for found in self.experiments.values():
            if found["id"] == doc["experiment_id"]:
                found["stage"] = "active"
        return mlflow_json({})

    # -- runs -----------------------------------------------------------------------------------------------

    def create_run(self, _query, doc):
        active = {e["id"] for e in self.experiments.values() if e["stage"] == "active"}
        if doc["experiment_id"] not in active:
            return mlflow_fail("INVALID_PARAMETER_VALUE", "The experiment %s must be in the 'active' state."
                               % doc["experiment_id"])
        self.order += 1
        run = "run%d" % self.order
        self.runs[run] = "mlflow-artifacts:/%s/%s/artifacts" % (doc["experiment_id"], run)
        self.run_tags[run] = {t["key"]: t["value"] for t in doc.get("tags", [])}
        self.run_status[run] = "RUNNING"
        self.run_meta[run] = {"experiment_id": doc["experiment_id"], "order": self.order, "deleted": False}
        return mlflow_json({"run": {"info": {"run_id": run, "experiment_id": doc["experiment_id"],
                                             "artifact_uri": self.runs[run], "status": "RUNNING"}}})

    def search_runs(self, _query, doc):
        tags = parse_filter(doc["filter"])[1] if doc.get("filter") else {}
        order = doc.get("order_by") or ["start_time ASC"]
        assert order in (["start_time ASC"], ["start_time DESC"]), order
        runs = [r for r in self.active_runs() if self.run_meta[r]["experiment_id"] in doc["experiment_ids"]
                and all(self.run_tags.get(r, {}).get(k) == v for k, v in tags.items())]
        runs.sort(key=lambda r: self.run_meta[r]["order"], reverse=order == ["start_time DESC"])
        runs = runs[: doc.get("max_results", 1000)]
        return mlflow_json({"runs": [{"info": {"run_id": r, "artifact_uri": self.runs[r]}} for r in runs]}
                           if runs else {})

    def delete_run(self, _query, doc):
        if doc["run_id"] not in self.runs:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Run '%s' not found" % doc["run_id"], 404)
        self.run_meta[doc["run_id"]]["deleted"] = True
        return mlflow_json({})

    # -- model versions -------------------------------------------------------------------------------------

    def search_versions(self, query, _doc):
        name, tags = parse_filter(query["filter"][0])
        found = [self.version_doc(v) for v in self.versions if (name is None or v["name"] == name)
                 and all(v["tags"].get(k) == value for k, value in tags.items())]
        return mlflow_json({"model_versions": found} if found else {})

    def create_version(self, query, doc):
        run = doc.get("run_id")
        if doc["source"].startswith("mlflow-artifacts:") and (
                run not in self.active_runs() or not doc["source"].startswith(self.runs[run] + "/")):
            return mlflow_fail("INVALID_PARAMETER_VALUE", "Invalid model version source: '%s'." % doc["source"])
        return super().create_version(query, doc)

    def delete_version(self, _query, doc):
        found = [v for v in self.versions if v["name"] == doc["name"] and v["version"] == int(doc["version"])]
        if not found:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Model Version (name=%s, version=%s) not found"
                               % (doc["name"], doc["version"]), 404)
        self.versions.remove(found[0])
        return mlflow_json({})


def config(**kw):
    kw.setdefault("tracking_uri", VIP)
    kw.setdefault("username", "probe")
    kw.setdefault("password", SECRET)
    return rp.Config(**kw)


def probe_for(clock, server=None, **kw):
    """A probe on the fake server, logging into a string; the wall clock stands still at WALL."""
    server = server or ProbeMlflow(clock)
    cfg = config(**kw)
    stream = io.StringIO()
    log = rp.setup_logging(cfg, stream=stream, journald=False)
    probe = rp.Probe(cfg, server, clock=clock, wall=lambda: WALL, random_bytes=lambda n: b"\x07" * n, log=log)
    return probe, server, stream


def samples(metrics):
    """{(name, labels as a tuple): value} of the rendered page."""
    return {(s.name, s.labels): s.value for s in parse(metrics.render())}


def value(metrics, name, **labels):
    return samples(metrics)[(name, tuple(labels.items()))]


class TestCycle:
    def test_a_successful_cycle_registers_as_a_user_does_and_counts(self, clock):
        probe, server, log = probe_for(clock)
        cycle = probe.run_once()
        assert cycle.ok and cycle.step is None and cycle.version == 1 and cycle.run_id == "run1"
        assert server.paths() == [
            "GET %s/experiments/get-by-name" % API, "POST %s/experiments/create" % API, "POST %s/runs/create" % API,
            "PUT %s/1/run1/artifacts/probe/probe.bin" % ARTIFACTS, "POST %s/registered-models/create" % API,
            CREATE_VERSION, "GET %s/1/run1/artifacts/probe/probe.bin" % ARTIFACTS, "POST %s/runs/update" % API,
            "GET %s/model-versions/search" % API, "POST %s/runs/search" % API]
        assert all(r["headers"]["Authorization"] == "Basic " + TOKEN for r in server.requests)
        version = server.versions[0]
        assert version["source"] == "mlflow-artifacts:/1/run1/artifacts/probe" and version["run_id"] == "run1"
        assert version["tags"]["mlflow_ha.probe"] == "registration_probe"
        assert re.fullmatch(r"[0-9a-f]{32}", version["tags"][IDEMPOTENCY_TAG])
        assert server.run_tags["run1"][IDEMPOTENCY_TAG] == version["tags"][IDEMPOTENCY_TAG]
        assert server.run_status["run1"] == "FINISHED"
        payload = server.artifacts["1/run1/artifacts/probe/probe.bin"]
        assert payload.startswith(b"\x07" * 256) and payload.endswith(b"probe 2023-11-14T22:13:20.250000+00:00\n")
        m = probe.metrics
        assert value(m, "mlflow_probe_registrations_total") == 1
        assert value(m, "mlflow_probe_registration_failures_total") == 0
        for step in rp.STEPS:
            assert value(m, "mlflow_probe_step_attempts_total", step=step) == 1
            assert value(m, "mlflow_probe_step_failures_total", step=step) == 0
        assert value(m, "mlflow_probe_registration_duration_seconds_count") == 1
        assert value(m, "mlflow_probe_registration_duration_seconds_sum") == pytest.approx(0.07)  # 7 requests
        assert value(m, "mlflow_probe_registration_duration_seconds_bucket", le="0.1") == 1
        assert value(m, "mlflow_probe_last_success_timestamp_seconds") == WALL
        assert value(m, "mlflow_probe_prune_failures_total") == 0
        assert "registered version 1 of model 'mlflow-ha-probe' in 0.07 s" in log.getvalue()

    def test_the_next_cycle_remembers_the_experiment_and_the_model(self, clock):
        probe, server, log = probe_for(clock)
        probe.run_once()
        server.requests.clear()
        cycle = probe.run_once()
        assert cycle.ok and cycle.version == 2 and cycle.run_id == "run2"
        assert "GET %s/experiments/get-by-name" % API not in server.paths()
        assert "POST %s/registered-models/create" % API not in server.paths()
        assert value(probe.metrics, "mlflow_probe_registrations_total") == 2
        assert value(probe.metrics, "mlflow_probe_registration_duration_seconds_bucket", le="+Inf") == 2
        assert log.getvalue().count("registered version") == 1, "a success is logged only first and after failures"

    def test_each_request_is_one_attempt_with_the_timeout(self, clock):
        probe, server, _log = probe_for(clock, timeout=3.0)
        server.faults["POST %s/runs/create" % API] = [refused()]
        cycle = probe.run_once()
        assert not cycle.ok and cycle.step == "create_run"
        assert len(server.sent("POST", API + "/runs/create")) == 1, "no retry, no failover"
        assert server.timeouts and all(0 < t <= 3.0 for t in server.timeouts)
        assert clock.sleeps == [], "no hidden waits"

    @pytest.mark.parametrize(("fault", "said"), [
        (mlflow_fail("INTERNAL_ERROR", "database is restarting", 500),
         "answered HTTP 500 INTERNAL_ERROR: database is restarting"),
        (Response(503, b"<html><body><h1>503 Service Unavailable</h1>No server is available</body></html>"),
         "answered HTTP 503 <html><body><h1>503 Service Unavailable</h1>No server is available</body></html>"),
        (timed_out(), "got no answer: timed out"),
    ])
    def test_a_failing_create_model_version_ends_the_cycle_there(self, clock, fault, said):
        probe, server, log = probe_for(clock)
        server.faults[CREATE_VERSION] = [fault]
        cycle = probe.run_once()
        assert not cycle.ok and cycle.step == "create_model_version"
        assert len(server.sent("POST", API + "/model-versions/create")) == 1
        assert server.paths()[-1] == CREATE_VERSION, "no read-back, no finish, no pruning after a failed step"
        m = probe.metrics
        assert value(m, "mlflow_probe_registrations_total") == 1
        assert value(m, "mlflow_probe_registration_failures_total") == 1
        assert value(m, "mlflow_probe_step_failures_total", step="create_model_version") == 1
        assert value(m, "mlflow_probe_step_attempts_total", step="create_model_version") == 1
        assert value(m, "mlflow_probe_step_attempts_total", step="read_artifact") == 0
        assert value(m, "mlflow_probe_step_failures_total", step="read_artifact") == 0
        assert value(m, "mlflow_probe_registration_duration_seconds_count") == 0
        assert value(m, "mlflow_probe_last_success_timestamp_seconds") == 0
        text = log.getvalue()
        assert "ERROR registration probe: step create_model_version failed: POST %s%s/model-versions/create %s (" % (
            VIP, API, said) in text
        assert text.rstrip().endswith("s); not attempted: read_artifact")

    def test_the_first_failed_step_is_the_one_counted(self, clock):
        probe, server, log = probe_for(clock)
        server.down = {VIP}
        cycle = probe.run_once()
        assert cycle.step == "create_run" and server.paths() == ["GET %s/experiments/get-by-name" % API]
        assert "step create_run failed: GET %s%s/experiments/get-by-name got no answer: connection refused" % (
            VIP, API) in log.getvalue()
        assert "not attempted: log_artifact, create_model_version, read_artifact" in log.getvalue()
        m = probe.metrics
        assert [value(m, "mlflow_probe_step_attempts_total", step=s) for s in rp.STEPS] == [1, 0, 0, 0]
        assert [value(m, "mlflow_probe_step_failures_total", step=s) for s in rp.STEPS] == [1, 0, 0, 0]
        server.down = set()
        assert probe.run_once().ok
        assert "registered version 1 of model 'mlflow-ha-probe' in " in log.getvalue()
        assert log.getvalue().rstrip().endswith("after 1 failed cycle(s)")

    def test_an_artifact_that_comes_back_different_is_a_read_artifact_failure(self, clock):
        probe, server, log = probe_for(clock)
        server.corrupt_readback = True
        cycle = probe.run_once()
        assert not cycle.ok and cycle.step == "read_artifact" and cycle.version == 1
        assert value(probe.metrics, "mlflow_probe_step_failures_total", step="read_artifact") == 1
        assert value(probe.metrics, "mlflow_probe_registration_failures_total") == 1
        assert value(probe.metrics, "mlflow_probe_last_success_timestamp_seconds") == 0
        size = len(server.artifacts["1/run1/artifacts/probe/probe.bin"])
        assert re.search(r"step read_artifact failed: GET %s%s/1/run1/artifacts/probe/probe\.bin returned %d bytes "
                         r"with sha256 [0-9a-f]{64}, but version 1 of model 'mlflow-ha-probe' was registered from %d "
                         r"bytes with sha256 [0-9a-f]{64}; no step left" % (re.escape(VIP), ARTIFACTS, size, size),
                         log.getvalue())

    def test_a_failed_upload_is_a_log_artifact_failure(self, clock):
        probe, server, _log = probe_for(clock)
        server.faults["PUT %s/1/run1/artifacts/probe/probe.bin" % ARTIFACTS] = [
            mlflow_fail("INTERNAL_ERROR", "S3 unreachable", 500)]
        cycle = probe.run_once()
        assert cycle.step == "log_artifact" and len(server.sent("PUT", ARTIFACTS)) == 1
        assert server.sent("POST", API + "/model-versions/create") == []

    def test_artifacts_the_server_does_not_proxy_fail_log_artifact_with_the_reason(self, clock):
        probe, server, log = probe_for(clock)
        server.faults["POST %s/runs/create" % API] = [mlflow_json(
            {"run": {"info": {"run_id": "s3run", "artifact_uri": "s3://mlflow/1/s3run/artifacts"}}})]
        cycle = probe.run_once()
        assert cycle.step == "log_artifact" and server.sent("PUT", ARTIFACTS) == []
        assert "run s3run keeps its artifacts at s3://mlflow/1/s3run/artifacts, which the tracking server does " \
               "not proxy" in log.getvalue()

    def test_a_deleted_experiment_is_restored(self, clock):
        probe, server, _log = probe_for(clock)
        server.experiments[MODEL] = {"id": "7", "stage": "deleted"}
        assert probe.run_once().ok and server.experiments[MODEL]["stage"] == "active"
        assert server.runs["run1"].startswith("mlflow-artifacts:/7/")

    def test_an_experiment_deleted_later_is_looked_up_again_after_the_refusal(self, clock):
        probe, server, _log = probe_for(clock)
        assert probe.run_once().ok
        server.experiments[MODEL]["stage"] = "deleted"
        assert probe.run_once().step == "create_run"
        assert probe.run_once().ok and server.experiments[MODEL]["stage"] == "active"

    def test_a_model_deleted_later_is_made_again_after_the_refusal(self, clock):
        probe, server, _log = probe_for(clock)
        assert probe.run_once().ok
        server.models.clear()
        assert probe.run_once().step == "create_model_version"
        assert probe.run_once().ok and MODEL in server.models


class TestPruning:
    def test_only_probe_versions_beyond_the_newest_n_are_deleted_with_their_runs(self, clock):
        probe, server, _log = probe_for(clock, keep_versions=3)
        server.add_version(MODEL, key="someone-else")  # version 1, not the probe's: never touched
        for _cycle in range(5):
            assert probe.run_once().ok
        assert server.version_numbers() == [1, 4, 5, 6]
        kept_runs = [v["run_id"] for v in server.versions if v["run_id"]]
        assert kept_runs == ["run3", "run4", "run5"]
        assert [r for r in server.active_runs() if r.startswith("run")] == kept_runs
        assert value(probe.metrics, "mlflow_probe_prune_failures_total") == 0

    def test_the_newest_n_stay_and_one_cycle_deletes_at_most_a_batch(self, clock):
        probe, server, _log = probe_for(clock, keep_versions=2)
        server.models.add(MODEL)
        for number in range(1, 16):
            server.add_version(MODEL, key="k%d" % number, **{"mlflow_ha.probe": "registration_probe"})
        cycle = probe.run_once()
        assert cycle.pruned_versions == list(range(1, 11)), "oldest first, PRUNE_BATCH of them"
        assert server.version_numbers() == [11, 12, 13, 14, 15, 16]
        assert probe.run_once().pruned_versions == [11, 12, 13, 14, 15]
        assert server.version_numbers() == [16, 17]

    def test_runs_of_failed_cycles_are_deleted_beyond_the_newest_n(self, clock):
        probe, server, _log = probe_for(clock, keep_versions=2)
        server.faults["PUT %s/1/run1/artifacts/probe/probe.bin" % ARTIFACTS] = [
            mlflow_fail("INTERNAL_ERROR", "S3 unreachable", 500)]
        assert probe.run_once().step == "log_artifact"  # leaves run1 without a version
        assert probe.run_once().ok
        assert "run1" in server.active_runs(), "still among the 2 newest runs"
        cycle = probe.run_once()
        assert (cycle.pruned_versions, cycle.pruned_runs) == ([], ["run1"])
        cycle = probe.run_once()
        assert (cycle.pruned_versions, cycle.pruned_runs) == ([1], ["run2"])
        assert [r for r in server.active_runs() if r.startswith("run")] == ["run3", "run4"]
        assert "r1" in server.active_runs(), "a run outside the probe's tag is never deleted"

    def test_a_failed_delete_counts_only_as_a_prune_failure(self, clock):
        probe, server, log = probe_for(clock, keep_versions=1)
        assert probe.run_once().ok
        server.faults[DELETE_VERSION] = [mlflow_fail("INTERNAL_ERROR", "database is restarting", 500)]
        cycle = probe.run_once()
        assert cycle.ok and cycle.pruned_versions == []
        assert server.sent("POST", API + "/runs/delete") == [], "the first failed request ends pruning"
        m = probe.metrics
        assert value(m, "mlflow_probe_prune_failures_total") == 1
        assert value(m, "mlflow_probe_registration_failures_total") == 0
        assert value(m, "mlflow_probe_registrations_total") == 2
        assert value(m, "mlflow_probe_last_success_timestamp_seconds") == WALL
        assert sum(value(m, "mlflow_probe_step_failures_total", step=s) for s in rp.STEPS) == 0
        assert "WARNING registration probe: pruning old probe versions and runs failed (the registration itself " \
               "succeeded): DELETE %s%s/model-versions/delete answered HTTP 500 INTERNAL_ERROR: database is " \
               "restarting" % (VIP, API) in log.getvalue()
        assert probe.run_once().pruned_versions == [1, 2], "the next cycle catches up"

    def test_a_failed_finish_counts_as_a_clean_up_failure(self, clock):
        probe, server, _log = probe_for(clock)
        server.faults["POST %s/runs/update" % API] = [timed_out()]
        cycle = probe.run_once()
        assert cycle.ok and cycle.cleanup_errors[0].startswith("finishing run run1: POST ")
        assert value(probe.metrics, "mlflow_probe_prune_failures_total") == 1
        assert value(probe.metrics, "mlflow_probe_registration_failures_total") == 0


class TestMetrics:
    @staticmethod
    def types(text):
        return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))

    def test_every_family_from_the_start(self):
        text = rp.Metrics().render()
        assert self.types(text) == FAMILIES
        fams = families(parse(text))
        assert set(FAMILIES) <= set(fams)
        for name in ("mlflow_probe_step_attempts_total", "mlflow_probe_step_failures_total"):
            assert [(s.label("step"), s.value) for s in fams[name]] == [(s, 0) for s in rp.STEPS]
        assert value(rp.Metrics(), "mlflow_probe_up") == 1
        assert value(rp.Metrics(), "mlflow_probe_last_success_timestamp_seconds") == 0

    def test_histogram_buckets_are_cumulative_and_end_in_inf(self):
        metrics = rp.Metrics()
        for seconds in (0.05, 0.3, 0.3, 1.5, 45.0):
            metrics.cycle_succeeded(seconds, WALL)
        buckets = [s for s in parse(metrics.render()) if s.name.endswith("_bucket")]
        assert [(s.label("le"), s.value) for s in buckets] == [
            ("0.1", 1), ("0.25", 1), ("0.5", 3), ("1.0", 3), ("2.0", 4), ("5.0", 4), ("10.0", 4), ("30.0", 4),
            ("+Inf", 5)]
        assert value(metrics, "mlflow_probe_registration_duration_seconds_count") == 5
        assert value(metrics, "mlflow_probe_registration_duration_seconds_sum") == pytest.approx(47.15)

    def test_page_after_cycles_parses_with_the_collections_parser(self, clock):
        probe, server, _log = probe_for(clock)
        probe.run_once()
        server.faults["POST %s/runs/create" % API] = [refused()]
        probe.run_once()
        text = probe.metrics.render()
        assert self.types(text) == FAMILIES
        assert all(line.startswith(("# HELP ", "# TYPE ")) for line in text.splitlines() if line.startswith("#"))
        fams = families(parse(text))
        assert [s.value for s in fams["mlflow_probe_registrations_total"]] == [2]
        assert [s.value for s in fams["mlflow_probe_registration_failures_total"]] == [1]
        assert {s.name for s in fams["mlflow_probe_registration_duration_seconds"]} == {
            "mlflow_probe_registration_duration_seconds_bucket", "mlflow_probe_registration_duration_seconds_sum",
            "mlflow_probe_registration_duration_seconds_count"}
        assert text.endswith("mlflow_probe_up 1\n")

    def test_served_over_http_with_health(self):
        metrics = rp.Metrics()
        server = rp.MetricsServer(("127.0.0.1", 0), metrics)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        base = "http://127.0.0.1:%d" % server.server_address[1]
        try:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
                assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                assert self.types(answer.read().decode()) == FAMILIES
            with urllib.request.urlopen(base + "/health", timeout=5) as answer:
                assert answer.read() == b"ok\n"
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + "/other", timeout=5)
            assert info.value.code == 404
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def test_served_over_https_behind_the_login(self, tmp_path):
        path, ca = web_config_files(tmp_path, {"monitoring": "pw"})
        server = rp.MetricsServer(("127.0.0.1", 0), rp.Metrics(), rp.WebConfig.load(str(path)))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        base = "https://127.0.0.1:%d" % server.server_address[1]
        context = ssl.create_default_context(cafile=str(ca))
        login = {"Authorization": "Basic " + base64.b64encode(b"monitoring:pw").decode()}
        try:
            request = urllib.request.Request(base + "/metrics", headers=login)
            with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                assert self.types(answer.read().decode()) == FAMILIES
            for path_ in ("/metrics", "/health"):
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(base + path_, timeout=5, context=context)
                assert info.value.code == 401
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def test_updates_from_many_threads_are_all_counted(self):
        metrics = rp.Metrics()

        def work():
            for _round in range(500):
                metrics.step_attempted("create_run")
                metrics.cycle_failed("create_run")
                metrics.render()

        threads = [threading.Thread(target=work) for _thread in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert value(metrics, "mlflow_probe_step_attempts_total", step="create_run") == 2000
        assert value(metrics, "mlflow_probe_registrations_total") == 2000


class TestSecrets:
    def test_neither_password_nor_token_reach_the_log(self, clock):
        probe, server, log = probe_for(clock)
        # A proxy that echoes the request, Authorization header included, in its error page.
        server.faults["POST %s/runs/create" % API] = [Response(502, (
            "Bad gateway for POST /runs/create (Authorization: Basic %s, user probe:%s)" % (TOKEN, SECRET)).encode())]
        probe.run_once()
        server.faults[CREATE_VERSION] = [mlflow_fail("PERMISSION_DENIED", "password %s is wrong" % SECRET, 403)]
        probe.run_once()
        text = log.getvalue()
        assert "step create_run failed" in text and "step create_model_version failed" in text
        assert SECRET not in text and TOKEN not in text and "***" in text
        assert SECRET not in repr(probe.config)

    def test_a_traceback_is_redacted_too(self):
        stream = io.StringIO()
        log = rp.setup_logging(config(), stream=stream, journald=False)
        try:
            raise RuntimeError("boom with " + SECRET)
        except RuntimeError:
            log.exception("failed")
        assert "boom with ***" in stream.getvalue() and SECRET not in stream.getvalue()

    def test_journald_priorities(self):
        stream = io.StringIO()
        log = rp.setup_logging(config(), stream=stream, journald=True)
        log.error("bad")
        log.warning("meh")
        log.info("fine")
        assert stream.getvalue().splitlines() == ["<3>ERROR bad", "<4>WARNING meh", "<6>INFO fine"]


class TestConfig:
    def test_defaults(self):
        cfg = rp.Config.from_env({"PROBE_TRACKING_URI": "https://mlflow.example.com/"})
        assert cfg == rp.Config(tracking_uri="https://mlflow.example.com", interval=15.0, timeout=5.0,
                                model="mlflow-ha-probe", experiment="mlflow-ha-probe", keep_versions=20,
                                listen=("0.0.0.0", 9109), ca_path=None, username=None, password=None)

    def test_everything_set(self, tmp_path):
        ca = tmp_path / "ca.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        cfg = rp.Config.from_env({
            "PROBE_TRACKING_URI": "https://10.0.0.100:443", "PROBE_INTERVAL": "30", "PROBE_TIMEOUT": "2.5",
            "PROBE_MODEL": "probe-model", "PROBE_EXPERIMENT": "probe-exp", "PROBE_KEEP_VERSIONS": "5",
            "PROBE_LISTEN": "[::]:9200", "PROBE_CA_PATH": str(ca), "PROBE_USERNAME": "probe",
            "PROBE_PASSWORD": SECRET})
        assert (cfg.interval, cfg.timeout, cfg.model, cfg.experiment, cfg.keep_versions, cfg.listen) == (
            30.0, 2.5, "probe-model", "probe-exp", 5, ("::", 9200))
        assert (cfg.ca_path, cfg.username, cfg.password) == (str(ca), "probe", SECRET)
        assert cfg.secrets() == [SECRET, TOKEN]

    @pytest.mark.parametrize(("env", "message"), [
        ({}, "PROBE_TRACKING_URI is not set"),
        ({"PROBE_TRACKING_URI": "mlflow.example.com"}, "must be an http(s) URL with a host"),
        ({"PROBE_TRACKING_URI": "https://u:p@vip"}, "must not carry credentials"),
        ({"PROBE_INTERVAL": "often"}, "PROBE_INTERVAL must be a number, got 'often'"),
        ({"PROBE_TIMEOUT": "0"}, "PROBE_TIMEOUT must be at least 0.1, got 0"),
        ({"PROBE_KEEP_VERSIONS": "2.5"}, "PROBE_KEEP_VERSIONS must be a whole number"),
        ({"PROBE_KEEP_VERSIONS": "0"}, "PROBE_KEEP_VERSIONS must be at least 1"),
        ({"PROBE_LISTEN": "9109"}, "PROBE_LISTEN must be host:port"),
        ({"PROBE_LISTEN": ":::9109"}, "PROBE_LISTEN must be host:port"),
        ({"PROBE_MODEL": "a'b\"c"}, "PROBE_MODEL must be a name MLflow's search can express"),
        ({"PROBE_CA_PATH": "/nonexistent/ca.pem"}, "PROBE_CA_PATH /nonexistent/ca.pem is not a file"),
        ({"PROBE_PASSWORD": SECRET}, "PROBE_PASSWORD is set but PROBE_USERNAME is not"),
        ({"PROBE_WEB_CONFIG": "/nonexistent/web.yml"}, "PROBE_WEB_CONFIG /nonexistent/web.yml is not a file"),
    ])
    def test_refused_with_a_sentence(self, env, message):
        if env and "PROBE_TRACKING_URI" not in env:
            env = {"PROBE_TRACKING_URI": "https://vip", **env}
        with pytest.raises(rp.ConfigError) as info:
            rp.Config.from_env(env)
        assert message in str(info.value) and SECRET not in str(info.value)


# -- the program itself, behind real sockets -------------------------------------------------------------------


class FakeMlflowHttp(ThreadingHTTPServer):
    """The fake server's handlers behind a real HTTP socket."""

    daemon_threads = True

    def __init__(self, fake):
        self.fake = fake
        self.lock = threading.Lock()
        self.unscripted: list = []
        super().__init__(("127.0.0.1", 0), _FakeHandler)


class _FakeHandler(BaseHTTPRequestHandler):
    def _answer(self):
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.fake.requests.append({"method": self.command, "path": parts.path,
                                              "headers": dict(self.headers.items())})
            try:
                answer = self.server.fake.handle(self.command, parts.path, parse_qs(parts.query), body)
            except AssertionError as err:
                self.server.unscripted.append(str(err))
                answer = Response(500, str(err).encode())
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    with urllib.request.urlopen(url, timeout=2) as answer:
        return {(s.name, s.labels): s.value for s in parse(answer.read().decode())}


def probe_host_layout(base):
    """<base>/ansible_collections/mlops/mlflow_ha/plugins/module_utils/ with the files the role copies and an empty
    __init__.py at each level, as on the probe host."""
    package = base
    for part in ("ansible_collections", "mlops", "mlflow_ha", "plugins", "module_utils"):
        package = package / part
        package.mkdir()
        (package / "__init__.py").write_text("")
    for name in MODULE_UTILS:
        (package / name).write_bytes((ROOT / "plugins" / "module_utils" / name).read_bytes())
    return base


def test_the_program_registers_serves_metrics_and_stops_on_sigterm(tmp_path):
    fake = ProbeMlflow(FakeClock(), endpoints=())
    mlflow = FakeMlflowHttp(fake)
    threading.Thread(target=mlflow.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_") and k != "JOURNAL_STREAM"}
    env.update(PYTHONPATH=str(probe_host_layout(tmp_path)),
               PROBE_TRACKING_URI="http://127.0.0.1:%d" % mlflow.server_address[1], PROBE_INTERVAL="0.2",
               PROBE_TIMEOUT="2", PROBE_KEEP_VERSIONS="2", PROBE_LISTEN="127.0.0.1:%d" % port,
               PROBE_USERNAME="probe", PROBE_PASSWORD=SECRET)
    # -S: no site-packages, so the standard library and the copied module_utils are all it has.
    proc = subprocess.Popen([sys.executable, "-S", str(PROGRAM)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = {}
        deadline = time.monotonic() + 15
        while seen.get(("mlflow_probe_registrations_total", ())) is None or \
                seen[("mlflow_probe_registrations_total", ())] < 4:
            assert time.monotonic() < deadline, "no 4 registrations within 15 s; last scrape: %r" % (seen,)
            assert proc.poll() is None, proc.communicate()
            try:
                seen = scrape("http://127.0.0.1:%d/metrics" % port)
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        assert seen[("mlflow_probe_registration_failures_total", ())] == 0
        assert seen[("mlflow_probe_up", ())] == 1
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as answer:
            assert answer.read() == b"ok\n"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - t0 < 1.0 and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
        mlflow.shutdown()
        mlflow.server_close()
    log = err.decode()
    assert "INFO registration probe: registering in model 'mlflow-ha-probe'" in log
    assert "INFO registration probe: SIGTERM received, stopping" in log and "ERROR" not in log
    assert SECRET not in log and TOKEN not in log and out == b""
    assert mlflow.unscripted == []
    with mlflow.lock:
        assert len(fake.versions) <= 3, "pruned down to PROBE_KEEP_VERSIONS (and the newest, not yet pruned)"
        assert fake.sent("DELETE", API + "/model-versions/delete"), "a real DELETE with a JSON body"
        assert all(r["headers"].get("Authorization") == "Basic " + TOKEN for r in fake.requests)


def test_sigterm_ends_the_program_within_a_second_while_a_request_hangs(tmp_path):
    with socket.socket() as silent:  # takes connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_") and k != "JOURNAL_STREAM"}
        env.update(PYTHONPATH=str(probe_host_layout(tmp_path)), PROBE_TIMEOUT="30",
                   PROBE_TRACKING_URI="http://127.0.0.1:%d" % silent.getsockname()[1],
                   PROBE_LISTEN="127.0.0.1:%d" % port)
        proc = subprocess.Popen([sys.executable, "-S", str(PROGRAM)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while True:  # until the first step's request is in flight
                assert time.monotonic() < deadline and proc.poll() is None
                try:
                    if scrape("http://127.0.0.1:%d/metrics" % port)[
                            ("mlflow_probe_step_attempts_total", (("step", "create_run"),))] == 1:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            time.sleep(0.2)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
            assert time.monotonic() - t0 < 1.0 and proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            _out, err = proc.communicate()
    assert "SIGTERM received, stopping" in err.decode()
