"""Registration load for the lab, with the official MLflow client (run it with the MLflow venv's Python:
tools/mlflow-venv.sh prints it). Used by the end-to-end chaos test (tests/lab) and by `make bench`.

  registration_load.py run    --tracking-uri URI --events FILE --stop-file FILE [--workers N] [--prefix P]
  registration_load.py verify --tracking-uri URI --events FILE --out FILE

run: N workers register model versions continuously until the stop file exists. Each registration is a run, an
artifact uploaded through MLflow's proxied artifact API, and a model version whose tag `idempotency_key`
carries a fresh key. The MLflow client's own retries are switched off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0): they
repeat POSTs, and a repeated create may register a version twice. Instead each step is retried here with
exponential backoff and full jitter, and a create that failed is retried only after a search for its key found
nothing. Every call that fails and every acknowledged registration is one JSON line in the events file.

verify: every acknowledged registration must exist exactly once (one version carrying its key) and its
artifact must read back with the same SHA-256. Writes the counts to --out and exits 1 when any is lost,
duplicated or unreadable.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
from mlflow.tracking.request_header.registry import _request_header_provider_registry

KEY_TAG = "idempotency_key"
EXPERIMENT = "mlflow-ha-load"
BACKOFF_BASE = 0.2
BACKOFF_CAP = 3.0
REGISTRATION_DEADLINE = 120.0


DEADLINE_HEADER = "X-Request-Deadline-Ms"


class DeadlineHeaderProvider(RequestHeaderProvider):
    """Every request says when this client stops waiting for it (now + MLFLOW_HTTP_REQUEST_TIMEOUT, epoch ms):
    the collection's HAProxy answers 504 to a request that reaches it later (held in a frozen load balancer)
    instead of running a create the client has already retried. Users register the same through MLflow's
    `mlflow.request_header_provider` entry point (docs/mlflow-ha.md)."""

    def in_context(self) -> bool:
        return True

    def request_headers(self) -> dict:
        timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
        return {DEADLINE_HEADER: str(int((time.time() + timeout) * 1000))}


_request_header_provider_registry.register(DeadlineHeaderProvider)


class Events:
    """Thread-safe JSON-lines writer."""

    def __init__(self, path: Path):
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **event) -> None:
        event.setdefault("t", time.time())
        with self._lock:
            self._file.write(json.dumps(event, sort_keys=True) + "\n")


def short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def backoff(attempt: int, rng: random.Random, cap: float = BACKOFF_CAP) -> float:
    return rng.uniform(0, min(cap, BACKOFF_BASE * 2 ** attempt))


class Worker(threading.Thread):
    def __init__(self, index: int, client: MlflowClient, experiment_id: str, prefix: str, events: Events,
                 stop_file: Path, workdir: Path):
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.client = client
        self.experiment_id = experiment_id
        self.model = f"{prefix}-w{index}"
        self.events = events
        self.stop_file = stop_file
        self.workdir = workdir / f"w{index}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random()

    def stopped(self) -> bool:
        return self.stop_file.exists()

    def step(self, name: str, key: str, call, deadline: float):
        """Run one idempotent step until it succeeds or the registration's deadline passes."""
        attempt = 0
        while True:
            t0 = time.time()
            try:
                return call()
            except Exception as err:  # every failure is recorded and retried; the cause goes into the event
                self.events.write(event="fail", worker=self.index, key=key, step=name, error=short(err),
                                  seconds=round(time.time() - t0, 3))
                attempt += 1
                if time.time() + 1 > deadline:
                    raise
                time.sleep(backoff(attempt, self.rng))

    def find(self, key: str) -> list:
        return self.client.search_model_versions(f"name = '{self.model}' and tags.{KEY_TAG} = '{key}'")

    def create_version(self, key: str, source: str, run_id: str, deadline: float):
        """Create once: after a failed create, search for the key before trying again."""
        attempt = 0
        while True:
            t0 = time.time()
            try:
                return self.client.create_model_version(self.model, source, run_id=run_id, tags={KEY_TAG: key}), attempt
            except Exception as err:
                self.events.write(event="fail", worker=self.index, key=key, step="create_model_version",
                                  error=short(err), seconds=round(time.time() - t0, 3))
            attempt += 1
            while True:
                if time.time() + 1 > deadline:
                    raise TimeoutError(f"no version for key {key} before the deadline")
                time.sleep(backoff(attempt, self.rng))
                t0 = time.time()
                try:
                    found = self.find(key)
                    break
                except Exception as err:
                    self.events.write(event="fail", worker=self.index, key=key, step="search_model_versions",
                                      error=short(err), seconds=round(time.time() - t0, 3))
                    attempt += 1
            if found:
                return sorted(found, key=lambda v: int(v.version))[0], attempt

    def run(self) -> None:
        self.step("create_registered_model", "-", self.ensure_model, time.time() + 600)
        while not self.stopped():
            key = f"{self.model}-{int(time.time() * 1000)}-{self.rng.getrandbits(32):08x}"
            payload = (key + "\n").encode() + os.urandom(2048)
            sha = hashlib.sha256(payload).hexdigest()
            path = self.workdir / "model.bin"
            path.write_bytes(payload)
            start = time.time()
            deadline = start + REGISTRATION_DEADLINE
            try:
                run = self.step("create_run", key,
                                lambda k=key: self.client.create_run(self.experiment_id, tags={KEY_TAG: k}), deadline)
                run_id = run.info.run_id
                self.step("log_artifact", key,
                          lambda r=run_id, p=str(path): self.client.log_artifact(r, p, "model"), deadline)
                version, retries = self.create_version(key, f"{run.info.artifact_uri}/model", run_id, deadline)
            except Exception as err:
                self.events.write(event="abandoned", worker=self.index, key=key, error=short(err),
                                  start=start, seconds=round(time.time() - start, 3))
                continue
            self.events.write(event="ack", worker=self.index, key=key, model=self.model, version=int(version.version),
                              sha256=sha, start=start, seconds=round(time.time() - start, 3), create_retries=retries)

    def ensure_model(self) -> None:
        try:
            self.client.create_registered_model(self.model)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def ensure_experiment(client: MlflowClient) -> str:
    deadline = time.time() + 300
    while True:
        try:
            found = client.get_experiment_by_name(EXPERIMENT)
            if found:
                return found.experiment_id
            return client.create_experiment(EXPERIMENT)
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)


def cmd_run(args) -> int:
    client = MlflowClient(tracking_uri=args.tracking_uri)
    events = Events(Path(args.events))
    experiment_id = ensure_experiment(client)
    stop_file = Path(args.stop_file)
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(i, client, experiment_id, args.prefix, events, stop_file, Path(tmp))
                   for i in range(args.workers)]
        events.write(event="start", workers=args.workers)
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        events.write(event="stop")
    return 0


# A read is retried as MLflow's client retries a GET (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, on these
# answers and on connection errors, with exponential backoff): a server that answers 503 while its database fails
# over is unavailable for a moment, and what users read with the official client reads through it.
READ_RETRY_STATUSES = (429, 500, 502, 503, 504)
READ_RETRIES = 7
READ_BACKOFF_CAP = 30.0


def read_artifact(tracking_uri: str, uri: str, retried: list | None = None) -> bytes:
    """GET an mlflow-artifacts:/ URI through the tracking server's proxied artifact API (what users read), with the
    official client's retries; each retried failure is appended to `retried`."""
    path = uri.split("mlflow-artifacts:", 1)[1].lstrip("/")
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}"
    request = urllib.request.Request(url, headers=login_header())
    # The CA the official client trusts (MLFLOW_TRACKING_SERVER_CERT_PATH), for an HTTPS tracking URI.
    ca = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    for attempt in range(READ_RETRIES + 1):
        failure = ""
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            if err.code not in READ_RETRY_STATUSES or attempt == READ_RETRIES:
                raise
            failure = f"HTTP {err.code}: {err.read()[:200].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as err:
            if attempt == READ_RETRIES:
                raise
            failure = short(err)
        if retried is not None:
            retried.append(failure)
        time.sleep(backoff(attempt + 3, random, READ_BACKOFF_CAP))
    raise AssertionError("unreachable")


def login_header() -> dict:
    """The basic-auth header of the login the official client uses (MLFLOW_TRACKING_USERNAME/PASSWORD), if any."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_verify(args) -> int:
    client = MlflowClient(tracking_uri=args.tracking_uri)
    events = read_events(Path(args.events))
    acks = [e for e in events if e["event"] == "ack"]
    by_model: dict[str, dict[str, list]] = {}
    for model in sorted({a["model"] for a in acks}):
        versions, token = [], None
        while True:
            page = client.search_model_versions(f"name = '{model}'", max_results=1000, page_token=token)
            versions.extend(page)
            token = page.token
            if not token:
                break
        keyed: dict[str, list] = {}
        for v in versions:
            keyed.setdefault(v.tags.get(KEY_TAG, ""), []).append(v)
        by_model[model] = keyed
    lost, duplicated, unreadable, retried = [], [], [], []
    to_read = []
    for a in acks:
        found = by_model[a["model"]].get(a["key"], [])
        if not found:
            lost.append(a["key"])
            continue
        if len(found) > 1:
            duplicated.append({"key": a["key"], "versions": sorted(int(v.version) for v in found)})
        to_read.append((a, found[0].source + "/model.bin"))

    def check(item) -> dict | None:
        a, uri = item
        try:
            digest = hashlib.sha256(read_artifact(args.tracking_uri, uri, retried)).hexdigest()
        except Exception as err:
            return {"key": a["key"], "error": short(err)}
        return None if digest == a["sha256"] else {"key": a["key"], "error": f"sha256 {digest} != {a['sha256']}"}

    # A few readers at once, as several users would read (one after another took ~3 min for 5000 artifacts).
    with ThreadPoolExecutor(max_workers=args.readers) as pool:
        unreadable.extend(bad for bad in pool.map(check, to_read) if bad)
    # Versions made by registrations that were never acknowledged (abandoned) are not losses; count them apart.
    acked_keys = {a["key"] for a in acks}
    unacked_versions = sum(len(v) for keyed in by_model.values() for k, v in keyed.items() if k not in acked_keys)
    result = {
        "acknowledged": len(acks),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "unreadable": len(unreadable),
        "unacknowledged_versions": unacked_versions,
        # Reads that failed once and were retried (the official client's retries), with the first few answers.
        "read_retries": len(retried),
        "read_retry_detail": retried[:10],
        # Every one: a restore after the loss of every database machine reports what it lost (its RPO).
        "lost_keys": lost,
        "duplicates": duplicated[:20],
        "unreadable_detail": unreadable[:20],
    }
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))
    return 0 if not (lost or duplicated or unreadable) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--tracking-uri", required=True)
    run.add_argument("--events", required=True)
    run.add_argument("--stop-file", required=True)
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--prefix", default="lab-load")
    verify = sub.add_parser("verify")
    verify.add_argument("--tracking-uri", required=True)
    verify.add_argument("--events", required=True)
    verify.add_argument("--out", required=True)
    verify.add_argument("--readers", type=int, default=4, help="artifacts read at once")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
