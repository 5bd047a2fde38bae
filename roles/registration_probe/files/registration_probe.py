# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Synthetic registration probe: every PROBE_INTERVAL seconds it registers a model version through the MLflow
VIP the way a user does, and serves what happened as Prometheus metrics.

Run it as ``python3 registration_probe.py`` with ``<dir>`` on PYTHONPATH, where ``<dir>`` holds the collection's
``ansible_collections/mlops/mlflow_ha/plugins/module_utils/`` (``mlflow.py``, ``http_client.py``,
``resilience.py``, ``exposition.py``, ``web_auth.py``, and an empty ``__init__.py`` at each level): the probe talks
to MLflow with the collection's own client, writes its metrics with the collection's writer and serves them behind
the collection's TLS and basic auth. Nothing else besides the standard library.

Configuration, from the environment (the credentials from a systemd EnvironmentFile; they are never logged):

==================== =====================================================================================
PROBE_TRACKING_URI   the MLflow VIP, e.g. ``https://mlflow.example.com`` (required; without credentials in it)
PROBE_INTERVAL       seconds from the start of one cycle to the start of the next (default 15)
PROBE_TIMEOUT        seconds each request may take (default 5): one attempt, no retry
PROBE_MODEL          the registered model the probe adds versions to (default mlflow-ha-probe)
PROBE_EXPERIMENT     the experiment holding the probe's runs (default mlflow-ha-probe; made when missing)
PROBE_KEEP_VERSIONS  probe versions kept (default 20); older ones and their runs are deleted after each success
PROBE_LISTEN         where /metrics and /health are served: host:port or [v6 address]:port (default 0.0.0.0:9109)
PROBE_CA_PATH        CA bundle that verifies an https PROBE_TRACKING_URI (default: the system's)
PROBE_USERNAME       user for MLflow's basic-auth app (optional)
PROBE_PASSWORD       its password (optional)
PROBE_WEB_CONFIG     the web configuration file the Prometheus exporters read (--web.config.file): HTTPS and basic
                     auth for /metrics and /health (module_utils/web_auth.py); unset serves plain HTTP to anyone
==================== =====================================================================================

A cycle is four steps, each one request with one attempt and the PROBE_TIMEOUT, no retry, no failover and no
circuit breaker carried over from an earlier cycle, so the probe sees what a user's script sees:

1. ``create_run``: a run in the probe experiment (the experiment is looked up, made or restored once, then its id
   is remembered);
2. ``log_artifact``: ``PUT`` of a few hundred random bytes and a timestamp through MLflow's proxied artifact API,
   below the run's artifact root;
3. ``create_model_version``: a version of the probe model from that directory, tagged with an idempotency key as
   the ``mlflow_model_version`` module tags its versions (the registered model is made once);
4. ``read_artifact``: ``GET`` of the file below the version's source; its SHA-256 must match.

The first step that fails ends the cycle (the later ones are not attempted) and is logged to stderr as one
sentence: the step, the request and what it answered. After a success the run is marked finished, and the probe
versions beyond the newest PROBE_KEEP_VERSIONS are deleted with their runs, as are runs no version uses beyond the
newest PROBE_KEEP_VERSIONS runs (those of failed cycles); at most PRUNE_BATCH (10) of each per cycle, and the first
failed request ends the pruning until the next cycle. Only what carries the probe's tag ``mlflow_ha.probe`` is
ever deleted. A failed clean-up request is counted and logged, never failing the registration. Successes are logged
only the first time and after failures.

Metrics (text format 0.0.4) on ``GET /metrics``; ``GET /health`` answers ``ok``; both ask for the login of
PROBE_WEB_CONFIG when it has users:

- ``mlflow_probe_registrations_total`` (counter): cycles finished, failed ones included;
- ``mlflow_probe_registration_failures_total`` (counter): cycles that failed;
- ``mlflow_probe_step_attempts_total{step}``, ``mlflow_probe_step_failures_total{step}`` (counters), step one of
  create_run, log_artifact, create_model_version, read_artifact, each exported from the start;
- ``mlflow_probe_registration_duration_seconds`` (histogram): seconds of the four steps, successful cycles only;
- ``mlflow_probe_last_success_timestamp_seconds`` (gauge): Unix time of the last success, 0 before the first;
- ``mlflow_probe_prune_failures_total`` (counter): clean-up requests that failed (finishing the run, pruning);
- ``mlflow_probe_up`` (gauge): 1.

SIGTERM (or SIGINT) stops it within a second; a request in flight is abandoned.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar
from urllib.parse import urlsplit

try:
    from ansible_collections.mlops.mlflow_ha.plugins.module_utils.exposition import Exposition
    from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
        HttpClientError,
        Response,
        Transport,
        UrllibTransport,
    )
    from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
        MlflowClient,
        MlflowError,
        ModelVersion,
        derive_idempotency_key,
        describe_failure,
        filter_literal,
        is_refusal,
        proxy_path,
        sha256_hex,
    )
    from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Clock
    from ansible_collections.mlops.mlflow_ha.plugins.module_utils.web_auth import (
        SecureServerMixin,
        WebConfig,
        WebConfigError,
        authorized,
    )
except ImportError as err:  # the role puts them there: say what is missing instead of a traceback
    sys.stderr.write("registration probe: cannot import the collection's module_utils (%s): put the directory "
                     "holding ansible_collections/mlops/mlflow_ha/plugins/module_utils on PYTHONPATH\n" % err)
    sys.exit(2)

T = TypeVar("T")

LOGGER = "registration_probe"
STEPS = ("create_run", "log_artifact", "create_model_version", "read_artifact")
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
PROBE_TAG = "mlflow_ha.probe"
PROBE_TAGS = {PROBE_TAG: "registration_probe"}
ARTIFACT_DIR = "probe"
ARTIFACT_NAME = "probe.bin"
PAYLOAD_BYTES = 256
PRUNE_BATCH = 10
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULTS = {
    "PROBE_INTERVAL": "15",
    "PROBE_TIMEOUT": "5",
    "PROBE_MODEL": "mlflow-ha-probe",
    "PROBE_EXPERIMENT": "mlflow-ha-probe",
    "PROBE_KEEP_VERSIONS": "20",
    "PROBE_LISTEN": "0.0.0.0:9109",
}


# -- configuration ----------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A setting the probe cannot start with; the message names the variable."""


@dataclass(frozen=True)
class Config:
    tracking_uri: str
    interval: float = 15.0
    timeout: float = 5.0
    model: str = DEFAULTS["PROBE_MODEL"]
    experiment: str = DEFAULTS["PROBE_EXPERIMENT"]
    keep_versions: int = 20
    listen: Tuple[str, int] = ("0.0.0.0", 9109)
    ca_path: Optional[str] = None
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    web_config: Optional[str] = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        def get(name: str) -> str:
            return (env.get(name) or DEFAULTS.get(name) or "").strip()

        uri = get("PROBE_TRACKING_URI").rstrip("/")
        if not uri:
            raise ConfigError("PROBE_TRACKING_URI is not set: give the MLflow VIP's URL, e.g. https://mlflow.example.com")
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("PROBE_TRACKING_URI must be an http(s) URL with a host, got %r" % (uri,))
        if parts.username is not None or parts.password is not None:
            raise ConfigError("PROBE_TRACKING_URI must not carry credentials: set PROBE_USERNAME and PROBE_PASSWORD")
        if parts.query or parts.fragment:
            raise ConfigError("PROBE_TRACKING_URI must not have a query or a fragment, got %r" % (uri,))
        model, experiment = get("PROBE_MODEL"), get("PROBE_EXPERIMENT")
        if filter_literal(model) is None or not model:
            raise ConfigError("PROBE_MODEL must be a name MLflow's search can express (not empty, not containing both "
                              "quote characters, not ending in a backslash), got %r" % (model,))
        if not experiment:
            raise ConfigError("PROBE_EXPERIMENT must not be empty")
        ca_path = get("PROBE_CA_PATH") or None
        if ca_path is not None and not os.path.isfile(ca_path):
            raise ConfigError("PROBE_CA_PATH %s is not a file" % ca_path)
        username = env.get("PROBE_USERNAME") or None
        password = env.get("PROBE_PASSWORD") or None
        if password is not None and username is None:
            raise ConfigError("PROBE_PASSWORD is set but PROBE_USERNAME is not")
        web_config = get("PROBE_WEB_CONFIG") or None
        if web_config is not None and not os.path.isfile(web_config):
            raise ConfigError("PROBE_WEB_CONFIG %s is not a file" % web_config)
        return cls(tracking_uri=uri, interval=_number(get, "PROBE_INTERVAL", float, 0.1),
                   timeout=_number(get, "PROBE_TIMEOUT", float, 0.1), model=model, experiment=experiment,
                   keep_versions=int(_number(get, "PROBE_KEEP_VERSIONS", int, 1)),
                   listen=parse_listen(get("PROBE_LISTEN")), ca_path=ca_path, username=username, password=password,
                   web_config=web_config)

    def secrets(self) -> List[str]:
        """What must never reach a log: the password and the Authorization token made from it."""
        if not self.password:
            return []
        token = base64.b64encode(("%s:%s" % (self.username or "", self.password)).encode("utf-8")).decode("ascii")
        return [self.password, token]


def _number(get: Callable[[str], str], name: str, kind: Callable[[str], Any], minimum: float) -> float:
    text = get(name)
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError("%s must be %s, got %r" % (name, "a whole number" if kind is int else "a number",
                                                     text)) from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError("%s must be at least %s, got %s" % (name, minimum, text))
    return value


def parse_listen(text: str) -> Tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` as (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port.isdigit() or int(port) > 65535 or (":" in host and not text.startswith("[")):
        raise ConfigError("PROBE_LISTEN must be host:port or [v6 address]:port, got %r" % (text,))
    return host, int(port)


# -- metrics ----------------------------------------------------------------------------------------------


class Metrics:
    """The probe's registry: updated by the probe thread, rendered by the HTTP server's threads, one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.registrations = 0
        self.failures = 0
        self.step_attempts: Dict[str, int] = dict.fromkeys(STEPS, 0)
        self.step_failures: Dict[str, int] = dict.fromkeys(STEPS, 0)
        self.bucket_counts = [0] * len(BUCKETS)  # cumulative, like the exposition
        self.duration_sum = 0.0
        self.duration_count = 0
        self.last_success = 0.0
        self.prune_failures = 0

    def step_attempted(self, step: str) -> None:
        with self._lock:
            self.step_attempts[step] += 1

    def cycle_failed(self, step: str) -> None:
        with self._lock:
            self.registrations += 1
            self.failures += 1
            self.step_failures[step] += 1

    def cycle_succeeded(self, seconds: float, wall: float) -> None:
        with self._lock:
            self.registrations += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1
            self.duration_sum += seconds
            self.duration_count += 1
            self.last_success = wall

    def prune_failed(self) -> None:
        with self._lock:
            self.prune_failures += 1

    def render(self) -> str:
        page = Exposition(whole=True)
        with self._lock:
            page.add("mlflow_probe_registrations_total", "counter",
                     "Registration cycles the probe finished, failed ones included.", self.registrations)
            page.add("mlflow_probe_registration_failures_total", "counter",
                     "Registration cycles that failed at one of their steps.", self.failures)
            for step in STEPS:
                page.add("mlflow_probe_step_attempts_total", "counter",
                         "Steps of a registration cycle that were started.", self.step_attempts[step],
                         [("step", step)])
            for step in STEPS:
                page.add("mlflow_probe_step_failures_total", "counter",
                         "Steps that failed, ending their registration cycle.", self.step_failures[step],
                         [("step", step)])
            page.histogram("mlflow_probe_registration_duration_seconds",
                           "Seconds a successful registration took, from the run to the read-back.",
                           zip(BUCKETS, self.bucket_counts), self.duration_sum, self.duration_count)
            page.add("mlflow_probe_last_success_timestamp_seconds", "gauge",
                     "Unix time of the last successful registration (0 before the first).", self.last_success)
            page.add("mlflow_probe_prune_failures_total", "counter",
                     "Clean-up requests that failed (finishing the run, deleting old probe versions and runs).",
                     self.prune_failures)
            page.add("mlflow_probe_up", "gauge", "1 while the probe runs.", 1)
        return page.render()


# -- the probe --------------------------------------------------------------------------------------------


class ProbeError(Exception):
    """A step got an answer, but not the one a user needs (an artifact store the server does not proxy, an
    artifact that came back different)."""


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


class LastRequest(Transport):
    """Passes requests on and remembers the last one sent, so a failure can name the request it was."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.last: Optional[Tuple[str, str]] = None

    def send(self, method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
             timeout: float) -> Response:
        self.last = (method, url.split("?", 1)[0])
        return self.inner.send(method, url, body, headers, timeout)


@dataclass
class Cycle:
    """What one cycle did: ``step`` and ``error`` name the failure, if any."""

    ok: bool
    step: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0
    run_id: Optional[str] = None
    version: Optional[int] = None
    pruned_versions: List[int] = field(default_factory=list)
    pruned_runs: List[str] = field(default_factory=list)
    cleanup_errors: List[str] = field(default_factory=list)


class Probe:
    """The cycle logic; time, randomness and the transport come in, so tests drive it with fakes."""

    def __init__(self, config: Config, transport: Transport, metrics: Optional[Metrics] = None,
                 clock: Optional[Clock] = None, wall: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = os.urandom, log: Optional[logging.Logger] = None):
        self.config = config
        self.transport = LastRequest(transport)
        self.metrics = metrics or Metrics()
        self.clock = clock or Clock()
        self.wall = wall
        self.random_bytes = random_bytes
        self.log = log or logging.getLogger(LOGGER)
        self.experiment_id: Optional[str] = None
        self.model_ready = False
        self.failed_in_a_row = 0
        self.succeeded = False

    def client(self) -> MlflowClient:
        """A new client each cycle: one endpoint (the VIP), one attempt per request within PROBE_TIMEOUT, and
        circuit breakers that remember nothing of earlier cycles, so every step sends its request."""
        timeout = self.config.timeout
        return MlflowClient([self.config.tracking_uri], username=self.config.username, password=self.config.password,
                            transport=self.transport, clock=self.clock, request_timeout=timeout, deadline=timeout,
                            max_attempts=1)

    def payload(self) -> bytes:
        stamp = datetime.fromtimestamp(self.wall(), timezone.utc).isoformat()
        return self.random_bytes(PAYLOAD_BYTES) + ("\nmlflow-ha registration probe %s\n" % stamp).encode("ascii")

    # -- one cycle ------------------------------------------------------------------------------------------

    def run_once(self) -> Cycle:
        client = self.client()
        payload = self.payload()
        sha = sha256_hex(payload)
        key = derive_idempotency_key(self.config.model, artifact_sha256=sha)
        start = self.clock.now()
        cycle = Cycle(ok=False)
        try:
            run_id, artifact_uri = self._step("create_run", lambda: self._create_run(client, key))
            cycle.run_id = run_id
            upload = self._step("log_artifact", lambda: self._log_artifact(client, run_id, artifact_uri, payload))
            version = self._step("create_model_version",
                                 lambda: self._create_version(client, key, run_id, artifact_uri))
            cycle.version = version.version
            self._step("read_artifact", lambda: self._read_artifact(client, version, upload, payload))
        except StepFailed as failed:
            cycle.seconds = self.clock.now() - start
            cycle.step, cycle.error = failed.step, str(failed)
            self.metrics.cycle_failed(failed.step)
            self.failed_in_a_row += 1
            later = STEPS[STEPS.index(failed.step) + 1:]
            self.log.error("registration probe: step %s failed: %s; %s", failed.step, failed,
                           "not attempted: %s" % ", ".join(later) if later else "no step left")
            return cycle
        cycle.ok = True
        cycle.seconds = self.clock.now() - start
        self.metrics.cycle_succeeded(cycle.seconds, self.wall())
        if self.failed_in_a_row or not self.succeeded:
            self.log.info("registration probe: registered version %d of model '%s' in %.2f s%s", cycle.version,
                          self.config.model, cycle.seconds,
                          " after %d failed cycle(s)" % self.failed_in_a_row if self.failed_in_a_row else "")
        self.failed_in_a_row, self.succeeded = 0, True
        self._cleanup("finishing run %s" % run_id, lambda: client.finish_run(run_id), cycle)
        self._cleanup("pruning old probe versions and runs", lambda: self._prune(client, cycle), cycle)
        return cycle

    def _step(self, step: str, action: Callable[[], T]) -> T:
        self.metrics.step_attempted(step)
        self.transport.last = None
        t0 = self.clock.now()
        try:
            return action()
        except HttpClientError as err:
            self._forget(step, err)
            raise StepFailed(step, "%s (%.2f s)" % (self._request_failure(err), self.clock.now() - t0)) from err
        except (MlflowError, ProbeError) as err:
            raise StepFailed(step, str(err)) from err
        except Exception as err:  # an answer nobody foresaw is still a failed step: the probe keeps going
            raise StepFailed(step, "unexpected %s: %s" % (type(err).__name__, err)) from err

    def _request_failure(self, err: HttpClientError) -> str:
        """"POST https://vip/api/2.0/mlflow/runs/create answered HTTP 503 ...", or "... got no answer: timed out"."""
        if not err.attempts or self.transport.last is None:
            return str(err)
        target = "%s %s" % self.transport.last
        if err.response is not None:
            return "%s answered %s" % (target, describe_failure(err))
        return "%s got no answer: %s" % (target, describe_failure(err))

    def _forget(self, step: str, err: HttpClientError) -> None:
        """MLflow refused: what was remembered may be gone (a deleted experiment or model); look again next time."""
        if not is_refusal(err):
            return
        if step == "create_run":
            self.experiment_id = None
        elif step == "create_model_version":
            self.model_ready = False

    def _cleanup(self, what: str, action: Callable[[], None], cycle: Cycle) -> None:
        try:
            action()
        except (HttpClientError, MlflowError, ValueError) as err:
            message = self._request_failure(err) if isinstance(err, HttpClientError) else str(err)
            cycle.cleanup_errors.append("%s: %s" % (what, message))
            self.metrics.prune_failed()
            self.log.warning("registration probe: %s failed (the registration itself succeeded): %s", what, message)

    # -- the steps --------------------------------------------------------------------------------------------

    def _create_run(self, client: MlflowClient, key: str) -> Tuple[str, str]:
        if self.experiment_id is None:
            experiment_id, changed = client.ensure_experiment(self.config.experiment)
            if changed:
                self.log.info("registration probe: experiment '%s' (id %s) made ready", self.config.experiment,
                              experiment_id)
            self.experiment_id = experiment_id
        name = "registration-probe-%s" % datetime.fromtimestamp(self.wall(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return client.create_run(self.experiment_id, key, name, tags=PROBE_TAGS)

    @staticmethod
    def _log_artifact(client: MlflowClient, run_id: str, artifact_uri: str, payload: bytes) -> str:
        root = proxy_path(artifact_uri)
        if root is None:
            raise ProbeError("run %s keeps its artifacts at %s, which the tracking server does not proxy, so a "
                             "user's upload through it cannot reach them (mlflow server --serve-artifacts without "
                             "--default-artifact-root)" % (run_id, artifact_uri))
        path = "%s/%s/%s" % (root, ARTIFACT_DIR, ARTIFACT_NAME)
        client.upload_artifact(path, payload)
        return path

    def _create_version(self, client: MlflowClient, key: str, run_id: str, artifact_uri: str) -> ModelVersion:
        if not self.model_ready:
            client.create_registered_model(self.config.model)
            self.model_ready = True
        source = "%s/%s" % (artifact_uri.rstrip("/"), ARTIFACT_DIR)
        version, _endpoint = client.create_version(self.config.model, source, key, run_id=run_id, tags=PROBE_TAGS)
        return version

    def _read_artifact(self, client: MlflowClient, version: ModelVersion, upload: str, payload: bytes) -> None:
        """Read the file where the registry says the version is, as a user loading it would."""
        root = proxy_path(version.source) if version.source else None
        path = "%s/%s" % (root, ARTIFACT_NAME) if root else upload
        back, endpoint = client.download_artifact(path)
        if sha256_hex(back) != sha256_hex(payload):
            raise ProbeError("GET %s%s returned %d bytes with sha256 %s, but version %d of model '%s' was registered "
                             "from %d bytes with sha256 %s" % (
                                 endpoint, client.artifact_url_path(path), len(back), sha256_hex(back),
                                 version.version, self.config.model, len(payload), sha256_hex(payload)))

    # -- clean-up ---------------------------------------------------------------------------------------------

    def _prune(self, client: MlflowClient, cycle: Cycle) -> None:
        """Delete the probe's versions beyond the newest PROBE_KEEP_VERSIONS (oldest first) with their runs, then
        runs no version uses beyond the newest PROBE_KEEP_VERSIONS runs; at most PRUNE_BATCH of each. The first
        failed request ends the pruning of this cycle."""
        keep = self.config.keep_versions
        versions = client.list_versions(self.config.model, PROBE_TAGS)
        for version in list(reversed(versions[keep:]))[:PRUNE_BATCH]:
            client.delete_version(self.config.model, version.version)
            cycle.pruned_versions.append(version.version)
            if version.run_id:
                client.delete_run(version.run_id)
                cycle.pruned_runs.append(version.run_id)
        if self.experiment_id is None:
            return
        used = {v.run_id for v in versions} | set(cycle.pruned_runs)
        recent = client.recent_runs(self.experiment_id, PROBE_TAGS, max_results=min(1000, 2 * keep + PRUNE_BATCH))
        for run_id in [r for r in recent[keep:] if r not in used][:PRUNE_BATCH]:
            client.delete_run(run_id)
            cycle.pruned_runs.append(run_id)

    # -- the loop ---------------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """A cycle every PROBE_INTERVAL seconds (start to start; a longer cycle is followed at once by the next)
        until ``stop`` is set; the wait between cycles ends as soon as it is."""
        next_start = self.clock.now()
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bug in one cycle must not end the probe; it shows in the log
                self.log.exception("registration probe: the cycle ended with an unexpected error")
            next_start = max(next_start + self.config.interval, self.clock.now())
            stop.wait(next_start - self.clock.now())


# -- serving ----------------------------------------------------------------------------------------------


class MetricsHandler(BaseHTTPRequestHandler):
    server_version = "mlflow-ha-registration-probe"
    server: MetricsServer
    timeout = 30  # a client that stalls (in the TLS handshake too) frees its thread

    def do_GET(self) -> None:
        if not authorized(self):
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, ctype, body = 200, CONTENT_TYPE, self.server.metrics.render().encode("utf-8")
        elif path == "/health":
            status, ctype, body = 200, "text/plain; charset=utf-8", b"ok\n"
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Scrapes every few seconds would fill the journal: not logged."""


class MetricsServer(SecureServerMixin, ThreadingHTTPServer):
    """Serves the metrics; with a web configuration, over TLS and behind its basic-auth logins."""

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], metrics: Metrics, web_config: Optional[WebConfig] = None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        super().__init__(address, MetricsHandler)
        self.secure(web_config)


# -- logging and main ------------------------------------------------------------------------------------


class RedactingFormatter(logging.Formatter):
    """Replaces every secret in the formatted record (message and traceback) with ***; with systemd's
    JOURNAL_STREAM set, prefixes the syslog priority so journald files errors as errors."""

    PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self, secrets: Sequence[str], journald: bool = False):
        super().__init__("%(levelname)s %(message)s")
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if self.journald:
            priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
            text = "\n".join("<%d>%s" % (priority, line) for line in text.splitlines())
        return text


def setup_logging(config: Config, stream: Any = None, journald: Optional[bool] = None) -> logging.Logger:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(RedactingFormatter(config.secrets(), journald))
    log = logging.getLogger(LOGGER)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def main(environ: Optional[Mapping[str, str]] = None) -> int:
    try:
        config = Config.from_env(os.environ if environ is None else environ)
    except ConfigError as err:
        sys.stderr.write("registration probe: %s\n" % err)
        return 2
    log = setup_logging(config)
    try:
        transport = UrllibTransport(ca_path=config.ca_path)
    except OSError as err:
        log.error("registration probe: cannot load the CA bundle PROBE_CA_PATH=%s: %s", config.ca_path, err)
        return 2
    metrics = Metrics()
    try:
        web_config = WebConfig.load(config.web_config) if config.web_config else None
        server = MetricsServer(config.listen, metrics, web_config)
    except WebConfigError as err:
        log.error("registration probe: PROBE_WEB_CONFIG: %s", err)
        return 2
    except OSError as err:
        log.error("registration probe: cannot serve metrics on %s port %d (PROBE_LISTEN): %s", *config.listen, err)
        return 2
    if config.username and urlsplit(config.tracking_uri).scheme == "http":
        log.warning("registration probe: basic auth over plain http: the password crosses the network readable")
    probe = Probe(config, transport, metrics, log=log)
    stop = threading.Event()
    signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked here and in the threads started below (they inherit the mask): the signals wait for sigtimedwait.
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics",
                               daemon=True)
    probing = threading.Thread(target=probe.run_forever, args=(stop,), name="probe", daemon=True)
    serving.start()
    probing.start()
    host, port = server.server_address[:2]
    log.info("registration probe: registering in model '%s' (experiment '%s') through %s every %g s, %g s per "
             "request, keeping %d versions; metrics on %s port %d (%s); basic auth %s", config.model,
             config.experiment, config.tracking_uri, config.interval, config.timeout, config.keep_versions, host, port,
             "https, login required" if config.web_config else "plain http, open", "on" if config.username else "off")
    code = 0
    while True:
        received = signal.sigtimedwait(signals, 1.0)
        if received is not None:
            log.info("registration probe: %s received, stopping", signal.Signals(received.si_signo).name)
            break
        if not (serving.is_alive() and probing.is_alive()):
            log.error("registration probe: the %s thread ended; exiting so that systemd starts the probe again",
                      "metrics" if not serving.is_alive() else "probe")
            code = 1
            break
    stop.set()
    server.shutdown()  # serve_forever notices within its poll interval
    server.server_close()
    probing.join(0.3)  # a request in flight is abandoned: the thread is a daemon
    return code


if __name__ == "__main__":
    sys.exit(main())
