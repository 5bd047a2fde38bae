"""``Registry.register()``: a run, its artifact files and a model version (+ alias and tags) registered once per
idempotency key through the collection's own client (plugins/module_utils: retries with full-jitter backoff, a
circuit breaker per endpoint, search-first creates), spooled locally when the registry is down."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mlflow_ha_client import _shared

_shared.install()

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (  # noqa: E402
    HttpClientError,
    Transport,
    UrllibTransport,
    endpoint_list,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (  # noqa: E402
    COMPONENT,
    MlflowClient,
    MlflowError,
    check_artifact_path,
    default_artifact_path,
    derive_idempotency_key,
    describe_failure,
    is_refusal,
    may_have_reached,
    proxy_path,
    sha256_hex,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_health import MlflowProber  # noqa: E402
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_registration import (  # noqa: E402
    register_model_version,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import OPEN, Clock  # noqa: E402
from mlflow_ha_client.errors import RegistrationRefused, RegistryUnavailable  # noqa: E402
from mlflow_ha_client.spool import Entry, ReplayReport, Spool  # noqa: E402

REGISTERED, SPOOLED = "registered", "spooled"
LB_HEALTH = "/lb-health"  # HAProxy's monitor-uri on the MLflow frontend (haproxy_mlflow_monitor_uri)
DEFAULT_EXPERIMENT = "mlflow-ha-registrations"
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Result:
    """What ``register()`` did. ``status`` is ``registered`` (the version is in the registry) or ``spooled`` (the
    registration waits in the local spool under ``key``; ``reason`` says why, ``tier`` what was down)."""

    status: str
    name: str
    key: str
    version: Optional[int] = None
    created: bool = False
    run_id: Optional[str] = None
    source: Optional[str] = None
    reason: Optional[str] = None
    tier: Optional[str] = None
    registration: Dict[str, Any] = field(default_factory=dict)

    @property
    def spooled(self) -> bool:
        return self.status == SPOOLED

    def to_dict(self) -> Dict[str, Any]:
        return {"status": self.status, "name": self.name, "key": self.key, "version": self.version,
                "created": self.created, "run_id": self.run_id, "source": self.source, "reason": self.reason,
                "tier": self.tier, "registration": dict(self.registration)}


def files_key(name: str, files: Sequence[PathLike]) -> str:
    """The idempotency key of registering ``files`` (names and contents) as a version of ``name``: the
    collection's derived key over a manifest of the files' names and SHA-256."""
    manifest = []
    for path in files:
        with open(path, "rb") as handle:
            manifest.append([os.path.basename(str(path)), hashlib.sha256(handle.read()).hexdigest()])
    return derive_idempotency_key(name, artifact_sha256=sha256_hex(json.dumps(manifest).encode("utf-8")))


class Registry:
    """The registry behind ``url`` (the load balancers' VIP), optionally with the servers' own URLs as fallback
    endpoints and for the health view, and a spool directory.

    One lock serializes the registrations of one Registry (its client keeps per-call deadlines); threads that
    must register in parallel each make their own Registry on the same spool directory."""

    def __init__(self, url: str, username: Optional[str] = None, password: Optional[str] = None,
                 ca_path: Optional[str] = None, servers: Sequence[str] = (), spool_dir: Optional[PathLike] = None,
                 experiment: str = DEFAULT_EXPERIMENT, deadline: float = 60.0, request_timeout: float = 10.0,
                 max_attempts: int = 5, failure_threshold: int = 3, reset_timeout: float = 30.0,
                 validate_certs: bool = True, transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, spool: Optional[Spool] = None):
        self.url = url.rstrip("/")
        self.servers = list(endpoint_list(list(servers)))
        self.transport = transport or UrllibTransport(ca_path=ca_path, validate_certs=validate_certs)
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.username, self.password = username, password
        self.deadline = deadline
        self.request_timeout = request_timeout
        self.experiment = experiment
        self.client = MlflowClient([self.url, *self.servers], username=username, password=password,
                                   transport=self.transport, clock=self.clock, rng=self.rng,
                                   request_timeout=request_timeout, deadline=deadline, max_attempts=max_attempts)
        for breaker in self.client.http.breakers.values():
            breaker.failure_threshold = failure_threshold
            breaker.reset_timeout = reset_timeout
        self.spool = spool if spool is not None else (Spool(spool_dir) if spool_dir is not None else None)
        self._experiments: Dict[str, str] = {}
        self.last_down: Optional[Dict[str, Any]] = None  # the last health look that found the registry down
        self._lock = threading.RLock()

    @classmethod
    def from_env(cls, **kwargs: Any) -> Registry:
        """The registry of MLflow's own variables (docs/clients.md): MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD,
        MLFLOW_TRACKING_SERVER_CERT_PATH; the spool in MLFLOW_HA_SPOOL_DIR; servers in MLFLOW_HA_SERVERS
        (comma-separated)."""
        env = os.environ
        if not env.get("MLFLOW_TRACKING_URI"):
            raise ValueError("MLFLOW_TRACKING_URI is not set")
        kwargs.setdefault("username", env.get("MLFLOW_TRACKING_USERNAME"))
        kwargs.setdefault("password", env.get("MLFLOW_TRACKING_PASSWORD"))
        kwargs.setdefault("ca_path", env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
        kwargs.setdefault("spool_dir", env.get("MLFLOW_HA_SPOOL_DIR"))
        kwargs.setdefault("servers", endpoint_list(env.get("MLFLOW_HA_SERVERS", "")))
        return cls(env["MLFLOW_TRACKING_URI"], **kwargs)

    # -- registering ----------------------------------------------------------------------------------------

    def register(self, name: str, files: Union[PathLike, Sequence[PathLike]], key: Optional[str] = None,
                 artifact_path: Optional[str] = None, alias: Optional[str] = None,
                 tags: Optional[Mapping[str, Any]] = None, description: Optional[str] = None,
                 run_tags: Optional[Mapping[str, Any]] = None, experiment: Optional[str] = None,
                 deadline: Optional[float] = None, spool: bool = True) -> Result:
        """Register ``files`` (one path or several, with distinct names) as a new version of model ``name``, once
        per ``key`` (default: derived from the name and the files' names and contents): a run tagged with the
        key in ``experiment``, the files uploaded through MLflow's proxied artifact API and read back, the
        version (``tags``, ``description``), then ``alias`` pointed at it.

        Returns a ``registered`` Result, or a ``spooled`` one when the registry is unreachable, every endpoint's
        breaker is open, or ``deadline`` (seconds, the Registry's by default) passes, and the Registry has a
        spool (``spool=False`` raises RegistryUnavailable instead). Raises RegistrationRefused when MLflow refuses
        (never spooled: a replay would be refused the same way), ValueError for bad arguments."""
        paths = [str(files)] if isinstance(files, (str, os.PathLike)) else [str(p) for p in files]
        if not name or not name.strip():
            raise ValueError("name must not be empty")
        if not paths:
            raise ValueError("give at least one artifact file")
        names = [os.path.basename(p) for p in paths]
        if len(set(names)) != len(names):
            raise ValueError("artifact files need distinct names, got %s" % ", ".join(names))
        for path in paths:
            if not Path(path).is_file():
                raise ValueError("artifact file %s does not exist" % path)
        key = key or files_key(name, paths)
        request = {"name": name, "key": key, "artifact_path": artifact_path, "alias": alias,
                   "tags": {str(k): str(v) for k, v in (tags or {}).items()}, "description": description,
                   "run_tags": {str(k): str(v) for k, v in (run_tags or {}).items()},
                   "experiment": experiment or self.experiment}
        check_artifact_path(artifact_path or default_artifact_path(name, key))
        open_breakers = self.breakers_open()
        try:
            if open_breakers:
                raise self._unavailable("the circuit breaker of every endpoint is open (%s)" % "; ".join(
                    open_breakers), key, probe=False)
            facts = self._send(request, paths, deadline if deadline is not None else self.deadline)
        except RegistryUnavailable as err:
            if not spool or self.spool is None:
                raise
            entry = self.spool.put(key, name, request, paths, str(err))
            return Result(SPOOLED, name, key, reason=str(err), tier=err.tier,
                          registration={"spool_seq": entry.seq, "spool_dir": str(self.spool.directory)})
        return Result(REGISTERED, name, key, version=facts.get("version"), created=bool(facts.get("created")),
                      run_id=facts.get("run_id"), source=facts.get("source"), registration=facts)

    def breakers_open(self) -> List[str]:
        """Each endpoint's breaker, when all of them are open (else an empty list)."""
        breakers = self.client.http.breakers
        if all(b.state == OPEN for b in breakers.values()):
            return ["%s %s" % (e, b.describe()) for e, b in breakers.items()]
        return []

    def _send(self, request: Mapping[str, Any], paths: Sequence[str], deadline: float) -> Dict[str, Any]:
        """One registration with the key, through the collection's client; RegistryUnavailable or
        RegistrationRefused when it does not succeed."""
        key, name = request["key"], request["name"]
        with self._lock:
            client = self.client
            end = self.clock.now() + deadline
            try:
                client.limit(deadline)
                experiment_id = self._experiment_id(request["experiment"])
                run_id, artifact_uri = self._ensure_run(experiment_id, key, name, request["run_tags"], end)
                path = check_artifact_path(request["artifact_path"] or default_artifact_path(name, key))
                root = proxy_path(artifact_uri)
                if root is None:
                    raise RegistrationRefused("%s keeps the artifacts of run %s at %s, which it does not proxy: "
                                              "serve artifacts (mlflow server --serve-artifacts)"
                                              % (COMPONENT, run_id, artifact_uri), key)
                for extra in paths[:-1]:
                    self._upload(extra, "/".join(p for p in (root, path, os.path.basename(extra)) if p), key)
                remaining = end - self.clock.now()
                if remaining <= 0:
                    raise self._unavailable("the deadline of %.1f s passed after the artifact uploads" % deadline,
                                            key)
                registration = register_model_version(
                    client, name, artifact=paths[-1], artifact_path=path, run_id=run_id,
                    description=request.get("description"), idempotency_key=key, alias=request.get("alias"),
                    tags=request.get("tags") or None, deadline=remaining)
                facts = registration.to_dict()
                try:
                    client.limit(min(self.request_timeout, 5.0))
                    client.finish_run(run_id)
                except HttpClientError as err:
                    facts.setdefault("failures", []).append("finishing run %s: %s" % (run_id, describe_failure(err)))
                return facts
            except HttpClientError as err:
                if is_refusal(err):
                    raise RegistrationRefused("%s refused the registration of model '%s' (key %s): %s" % (
                        COMPONENT, name, key, describe_failure(err)), key) from err
                raise self._unavailable(str(err), key) from err
            except MlflowError as err:
                cause = err.__cause__
                if isinstance(cause, HttpClientError) and is_refusal(cause):
                    raise RegistrationRefused(str(err), key) from err
                if err.facts.get("artifact_verified") is False:
                    raise RegistrationRefused(str(err), key) from err
                raise self._unavailable(str(err), key) from err
            finally:
                client.end = None

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            self._experiments[name] = self.client.ensure_experiment(name)[0]
        return self._experiments[name]

    def _ensure_run(self, experiment_id: str, key: str, name: str, run_tags: Mapping[str, str],
                    end: float) -> Tuple[str, str]:
        """The registration run tagged with the key: found by a search, or created; a create that may have
        reached a server is never repeated before a search (waiting a request timeout first, so that a create
        still running can commit)."""
        client = self.client
        rounds, uncertain = 0, False
        while True:
            rounds += 1
            try:
                runs = client.search_runs(experiment_id, key)
                if runs:
                    return runs[0]
                return client.create_run(experiment_id, key, "mlflow_ha_client registration of %s" % name,
                                         tags=run_tags)
            except HttpClientError as err:
                if is_refusal(err):
                    raise
                uncertain = uncertain or may_have_reached(err)
                delay = client.policy.backoff(rounds, client.rng)
                if uncertain:
                    delay = max(delay, client.request_timeout)
                if rounds >= client.max_attempts or self.clock.now() + delay >= end:
                    raise
                self.clock.sleep(delay)

    def _upload(self, local: str, upload_path: str, key: str) -> None:
        with open(local, "rb") as handle:
            data = handle.read()
        self.client.upload_artifact(upload_path, data)
        back, endpoint = self.client.download_artifact(upload_path)
        if sha256_hex(back) != sha256_hex(data):
            raise RegistrationRefused("%s: the artifact %s came back from %s different (%d bytes, uploaded %d); no "
                                      "model version was created" % (COMPONENT, local, endpoint, len(back),
                                                                     len(data)), key)

    # -- health ---------------------------------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """The registry's state from the load balancer's view: HAProxy's ``/lb-health`` on the VIP (200: at least
        one MLflow server up; 503: none), MLflow's ``/health`` and ``/version`` through the VIP and on each
        server given; ``tier_down`` names the tier that is down (None when every check passes), ``summary`` says
        it in a sentence, ``breakers`` are the registration client's circuit breakers."""
        prober = MlflowProber([self.url, *self.servers], username=self.username, password=self.password,
                              transport=self.transport, clock=self.clock, rng=self.rng,
                              request_timeout=min(self.request_timeout, 3.0), deadline=6.0, max_attempts=1)
        lb: Dict[str, Any] = {"url": self.url + LB_HEALTH, "status": None, "error": None}
        try:
            answer = prober.probe_client([self.url], "MLflow load balancer", 1).request(
                "GET", LB_HEALTH, headers={"Accept": "text/plain"}, expected=(200, 503))
            lb["status"] = answer.status
        except HttpClientError as err:
            lb["status"] = err.response.status if err.response is not None else None
            lb["error"] = describe_failure(err)
        via_lb = prober.probe(self.url, prober.probe_client([self.url], COMPONENT, 1))
        servers = [prober.probe(s, prober.probe_client([s], COMPONENT, 1)) for s in self.servers]
        tier, summary = _assess(self.url, lb, via_lb, servers)
        return {"url": self.url, "up": tier is None, "tier_down": tier, "summary": summary, "load_balancer": lb,
                "mlflow_via_load_balancer": via_lb.to_dict(), "servers": [s.to_dict() for s in servers],
                "breakers": self.client.http.breaker_states()}

    def _unavailable(self, what: str, key: str, probe: bool = True) -> RegistryUnavailable:
        if probe:
            state = self.health()
            self.last_down = state
        elif self.last_down is not None:  # breakers open: what the look that opened them found
            state = dict(self.last_down, summary="as last seen: %s" % self.last_down["summary"])
        else:
            state = {"tier_down": "unknown", "summary": "not probed while the breakers are open"}
        tier = state.get("tier_down") or "backend"
        if state.get("tier_down") is None:
            summary = ("the load balancer and the MLflow servers answer their health checks, so what failed is "
                       "behind them (PostgreSQL or the artifact store) or the deadline was too short")
        else:
            summary = state["summary"]
        return RegistryUnavailable("registry unavailable, %s tier: %s. Registration (key %s): %s" % (
            tier, summary, key, " ".join(what.split())[:1500]), tier, state, key)

    # -- replay ---------------------------------------------------------------------------------------------

    def replay(self, deadline: Optional[float] = None) -> ReplayReport:
        """Send the spool's pending entries to the registry once each (see Spool.replay)."""
        if self.spool is None:
            raise ValueError("this Registry has no spool")
        budget = deadline if deadline is not None else self.deadline
        return self.spool.replay(lambda entry: self.send_entry(entry, budget))

    def send_entry(self, entry: Entry, deadline: float) -> Dict[str, Any]:
        open_breakers = self.breakers_open()
        if open_breakers:
            raise self._unavailable("the circuit breaker of every endpoint is open (%s)" % "; ".join(open_breakers),
                                    entry.key, probe=False)
        return self._send(entry.request, entry.paths, deadline)


def _assess(url: str, lb: Mapping[str, Any], via_lb: Any, servers: Sequence[Any]) -> Tuple[Optional[str], str]:
    """(tier that is down or None, a sentence) from the observations of Registry.health()."""
    if lb["status"] is None:
        return "load balancer", "the load balancer %s does not answer %s (%s)" % (url, LB_HEALTH, lb["error"])
    if lb["status"] == 503:
        down = "; ".join(s.reason() for s in servers if not s.healthy)
        return "mlflow", "the load balancer %s answers %s 503: no MLflow server is up in HAProxy%s" % (
            url, LB_HEALTH, (" (%s)" % down) if down else "")
    if not via_lb.healthy:
        where = "" if lb["status"] == 200 else " (no %s there: HTTP %s, not the collection's HAProxy)" % (
            LB_HEALTH, lb["status"])
        return "mlflow", "MLflow through %s%s: %s" % (url, where, via_lb.reason())
    return None, "the load balancer and MLflow through it answer (%s)" % (
        "MLflow %s" % via_lb.version if via_lb.version else "no version")
