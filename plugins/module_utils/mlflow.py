# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the MLflow tracking server's REST API: health and version of each server, the load balancer's
view of them, and idempotent registration of model versions.

What MLflow 3.17.2 answers, as read in its sources (mlflow/mlflow ``mlflow/server/__init__.py``,
``mlflow/server/handlers.py``, ``mlflow/utils/search_utils.py``, ``mlflow/server/auth/__init__.py``) and
checked against a running 3.17.2 server:

- ``GET /health`` answers 200 ``OK`` (text) and needs no credentials, also with ``--app-name basic-auth``;
  ``GET /version`` answers 200 with the version string (``3.17.2``) and needs them.
- Errors are JSON: ``{"error_code": "RESOURCE_ALREADY_EXISTS", "message": "...", ...}``. A registered model
  that exists already answers ``POST /api/2.0/mlflow/registered-models/create`` with HTTP 400
  ``RESOURCE_ALREADY_EXISTS``; an alias that is not set answers ``GET .../registered-models/alias`` with HTTP 400
  ``INVALID_PARAMETER_VALUE`` ("Registered model alias champion not found."), a missing model with 404
  ``RESOURCE_DOES_NOT_EXIST``.
- ``GET /api/2.0/mlflow/model-versions/search?filter=...`` answers ``{}`` when nothing matches, else
  ``{"model_versions": [{"name", "version": "3", "source", "run_id", "status", "tags": [{"key", "value"}]}],
  "next_page_token"}``. The filter grammar is parsed with sqlparse: a tag key with dots is written in backticks
  (``tags.`mlflow_ha.idempotency_key` = 'k'``); a string value is taken between its outer quotes with no
  unescaping (``'it''s'`` means ``it''s``), so a value is written between the quote character it does not
  contain, and one that contains both, or ends in a backslash, cannot be written at all.
- ``POST /api/2.0/mlflow/model-versions/create`` refuses (HTTP 400 ``INVALID_PARAMETER_VALUE``) a source in
  the tracking server's artifact store (``mlflow-artifacts:/...``), and a local path (``models/x``, ``/srv/x``,
  ``file://...``), unless ``run_id`` names a run whose ``artifact_uri`` contains it. So an uploaded artifact goes
  under a run's artifact root: the caller's run, or a registration run made for it (``POST .../runs/create``,
  found again by its tag through ``POST .../runs/search``, which is a read).
- ``PUT /api/2.0/mlflow-artifacts/artifacts/<path>`` stores the request body at ``<path>`` below the root of
  ``--artifacts-destination`` (overwriting: the PUT is idempotent), ``GET`` of the same path returns it. A run's
  ``artifact_uri`` is ``mlflow-artifacts:/<experiment>/<run>/artifacts`` when the server proxies artifacts
  (``--serve-artifacts``, the default, without ``--default-artifact-root``).
- Housekeeping, as MLflow's REST reference (``docs/api_reference/source/rest-api.rst``) documents it and as its
  own client sends it: ``DELETE .../model-versions/delete`` with the JSON body ``{"name", "version"}``, ``POST
  .../runs/delete`` ``{"run_id"}`` (the run is marked deleted; ``mlflow gc`` removes it later), each answering
  ``RESOURCE_DOES_NOT_EXIST`` for what is not there. ``GET .../experiments/get-by-name?experiment_name=`` answers
  ``RESOURCE_DOES_NOT_EXIST`` for an unknown name and finds a deleted experiment (``lifecycle_stage`` ``deleted``),
  whose name ``POST .../experiments/create`` refuses with ``RESOURCE_ALREADY_EXISTS`` until it is restored
  (``POST .../experiments/restore``).

Creating a model version (or a run) is not idempotent: every accepted request makes a new one. What is made here
carries the tag ``mlflow_ha.idempotency_key``; before any create the key is searched, and after a create that
may have reached a server (a timeout, a reset, a 5xx) the key is searched again before another create is sent.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import csv
import hashlib
import io
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode, urlsplit

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    Response,
    Transport,
    TransportError,
    UrllibTransport,
    basic_auth,
    endpoint_list,
    excerpt,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    RetryPolicy,
    watch,
)

COMPONENT = "MLflow tracking server"
# Sent with every request: when the client stops waiting (epoch ms). The collection's HAProxy answers 504 to a
# request past it instead of letting a held-up create run after the client retried (a duplicate version).
DEADLINE_HEADER = "X-Request-Deadline-Ms"
API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
HEALTH = "/health"
VERSION = "/version"
IDEMPOTENCY_TAG = "mlflow_ha.idempotency_key"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
INVALID_PARAMETER = "INVALID_PARAMETER_VALUE"
ARTIFACT_SCHEME = "mlflow-artifacts"
SEARCH_PAGE_SIZE = 100
SEARCH_MAX_PAGES = 20


class MlflowError(Exception):
    """MLflow answered, but not what we need (a refused request, an artifact that came back different), or the
    attempts ran out. ``facts`` is the result so far, for a module's fail_json."""

    def __init__(self, message: str, facts: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.facts = dict(facts or {})


def mlflow_error(response: Optional[Response]) -> Tuple[Optional[str], str]:
    """(error_code, message) of an MLflow error answer; (None, the body's excerpt) when it is not one."""
    if response is None:
        return None, ""
    try:
        doc = response.json()
    except ValueError:
        return None, excerpt(response.body)
    if isinstance(doc, Mapping) and isinstance(doc.get("error_code"), str):
        return doc["error_code"], str(doc.get("message") or "")
    return None, excerpt(response.body)


def describe_failure(err: HttpClientError) -> str:
    """What a failed request got, short: "HTTP 400 INVALID_PARAMETER_VALUE: ...", "connection refused"."""
    if err.response is not None:
        code, message = mlflow_error(err.response)
        if code:
            return "HTTP %d %s: %s" % (err.response.status, code, message)
        return ("HTTP %d %s" % (err.response.status, excerpt(err.response.body))).strip()
    if err.attempts:
        return err.attempts[-1].outcome
    return str(err)


def may_have_reached(err: HttpClientError) -> bool:
    """Whether a failed non-idempotent request may have been processed: a 5xx answer (the server, or the load
    balancer in front of it, may have acted before failing), or no answer after the request was sent."""
    if err.response is not None:
        return err.response.status >= 500
    cause = err.__cause__
    return isinstance(cause, TransportError) and cause.reached_server


def is_refusal(err: HttpClientError) -> bool:
    """An answer that another try will not change (400, 401, 403, 404, ...): MLflow refused the request."""
    return err.response is not None and 400 <= err.response.status < 500 and err.response.status != 429


def _does_not_exist(err: HttpClientError) -> bool:
    return err.response is not None and mlflow_error(err.response)[0] == DOES_NOT_EXIST


# -- the search filter ----------------------------------------------------------------------------------


def filter_literal(value: str) -> Optional[str]:
    """``value`` as a string literal of MLflow's search grammar, or None when it cannot be written.

    MLflow strips a value's outer quotes and unescapes nothing, and sqlparse reads a backslash before a quote
    as part of the string: so the value goes between the quote it does not contain, and must not end in a
    backslash."""
    if value.endswith("\\"):
        return None
    for quote_char in ("'", '"'):
        if quote_char not in value:
            return quote_char + value + quote_char
    return None


def _equals(field_name: str, value: str) -> str:
    """``field = 'value'`` for a search filter; ValueError when the value cannot be written."""
    literal = filter_literal(value)
    if literal is None:
        raise ValueError("%r cannot be searched for in MLflow's filter grammar: it contains both quote characters "
                         "or ends in a backslash" % (value,))
    return "%s = %s" % (field_name, literal)


def version_filter(name: str, key: str) -> str:
    """The search filter for the versions of ``name`` tagged with idempotency key ``key``.

    A name that cannot be written as a literal is left out (the caller compares names itself); a key that
    cannot be written raises ValueError."""
    key_literal = filter_literal(key)
    if key_literal is None:
        raise ValueError("idempotency_key %r cannot be searched for in MLflow's filter grammar: it contains both "
                         "quote characters or ends in a backslash" % (key,))
    clause = "tags.`%s` = %s" % (IDEMPOTENCY_TAG, key_literal)
    name_literal = filter_literal(name)
    if name_literal is None:
        return clause
    return "name = %s AND %s" % (name_literal, clause)


def derive_idempotency_key(name: str, source: Optional[str] = None, artifact_sha256: Optional[str] = None,
                           run_id: Optional[str] = None) -> str:
    """A key that is the same for the same registration: from the model name and the source (or the artifact's
    SHA-256), and the run. 32 hex digits, so it needs no quoting anywhere."""
    what = ["mlflow_ha/1", name, "artifact" if artifact_sha256 else "source", artifact_sha256 or source or "",
            run_id or ""]
    return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()[:32]


def safe_segment(text: str) -> str:
    """``text`` as one path segment an artifact store and a URL take as is."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def default_artifact_path(name: str, key: str) -> str:
    return "registrations/%s/%s" % (safe_segment(name), key)


def check_artifact_path(path: str) -> str:
    """A relative path below the run's artifact root, as MLflow's ``validate_path_is_safe`` accepts it."""
    clean = path.strip().strip("/")
    parts = clean.split("/")
    if not clean or "\\" in clean or "#" in clean or any(p in ("", ".", "..") for p in parts):
        raise ValueError("artifact_path must be a relative path without '.', '..', '#', backslashes or empty "
                         "segments, got %r" % (path,))
    return clean


def proxy_path(artifact_uri: str) -> Optional[str]:
    """The path below ``/api/2.0/mlflow-artifacts/artifacts`` of an artifact URI the tracking server proxies
    (``mlflow-artifacts:/0/<run>/artifacts`` or its http(s) form); None for any other store."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == ARTIFACT_SCHEME:
        return parts.path.strip("/")
    anchor = ARTIFACTS_API + "/"
    if parts.scheme in ("http", "https") and anchor in parts.path:
        return parts.path.split(anchor, 1)[1].strip("/")
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wall_ms() -> int:
    """Milliseconds since the epoch, for the run timestamps MLflow shows (never used to wait)."""
    return int(time.time() * 1000)


# -- model versions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    source: str = ""
    run_id: str = ""
    status: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


def parse_model_version(doc: Any) -> ModelVersion:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("name"), str):
        raise ValueError("not a model version: %s" % excerpt(repr(doc).encode()))
    try:
        number = int(doc.get("version"))
    except (TypeError, ValueError) as err:
        raise ValueError("model version without a version number: %s" % excerpt(repr(doc).encode())) from err
    tags = {}
    for tag in doc.get("tags") or []:
        if isinstance(tag, Mapping) and isinstance(tag.get("key"), str):
            tags[tag["key"]] = str(tag.get("value") or "")
    return ModelVersion(name=doc["name"], version=number, source=str(doc.get("source") or ""),
                        run_id=str(doc.get("run_id") or ""), status=str(doc.get("status") or ""), tags=tags)


def base_url(response: Response, path: str) -> str:
    """The endpoint that answered: the response URL without the request path."""
    return response.url[: -len(path)] if path and response.url.endswith(path) else response.url


class MlflowClient:
    """Requests against the tracking servers through one HttpClient: the endpoints in order (the load balancer's
    VIP first, then the servers), failing over while connections are refused, with a circuit breaker each.

    Reads and PUTs are retried on the client's rules; the model version create is sent as non-idempotent, so
    HttpClient never repeats it once it may have reached a server (``register_model_version`` decides)."""

    def __init__(self, endpoints: Sequence[str], username: Optional[str] = None, password: Optional[str] = None,
                 headers: Optional[Mapping[str, str]] = None, transport: Optional[Transport] = None,
                 clock: Optional[Clock] = None, rng: Optional[random.Random] = None, request_timeout: float = 10.0,
                 deadline: float = 60.0, max_attempts: int = 5):
        self.transport = transport or UrllibTransport()
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.policy = RetryPolicy(max_attempts=max_attempts, deadline=deadline)
        self.headers: Dict[str, str] = {"Accept": "application/json"}
        self.headers.update(basic_auth(username, password))
        self.headers.update(headers or {})
        self.http = HttpClient(endpoints, COMPONENT, policy=self.policy, request_timeout=request_timeout,
                               transport=self.transport, clock=self.clock, rng=self.rng, headers=self.headers,
                               deadline_header=DEADLINE_HEADER)
        self.end: Optional[float] = None

    @property
    def endpoints(self) -> List[str]:
        return list(self.http.endpoints)

    def limit(self, seconds: float) -> None:
        """End every following request, retries included, within ``seconds`` from now (what is left of a
        deadline), besides the client's own per-request deadline."""
        self.end = self.clock.now() + seconds

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        deadline = self.deadline
        if self.end is not None:
            deadline = max(0.001, min(deadline, self.end - self.clock.now()))
        self.http.policy = RetryPolicy(max_attempts=self.max_attempts, base_delay=self.policy.base_delay,
                                       max_delay=self.policy.max_delay, deadline=deadline)
        return self.http.request(method, path, **kwargs)

    def json(self, response: Response) -> Any:
        try:
            return response.json()
        except ValueError as err:
            raise MlflowError("%s: %s answered HTTP %d with invalid JSON (%s): %s" % (
                COMPONENT, response.url, response.status, err, excerpt(response.body))) from err

    # -- registry ---------------------------------------------------------------------------------------

    def search_versions(self, name: str, key: str) -> Tuple[List[ModelVersion], str]:
        """Versions of ``name`` carrying idempotency key ``key``, lowest first, and the endpoint that answered."""
        versions, endpoint, _complete = self._search_version_pages(version_filter(name, key))
        found = [v for v in versions if v.name == name and v.tags.get(IDEMPOTENCY_TAG) == key]
        return sorted(found, key=lambda v: v.version), endpoint

    def list_versions(self, name: str, tags: Optional[Mapping[str, str]] = None) -> List[ModelVersion]:
        """Every version of ``name`` carrying all of ``tags``, highest first.

        Raises ValueError when the name or a tag cannot be written in MLflow's filter grammar, and MlflowError
        when there are more versions than the search reads (rather than answer with a part of them)."""
        clauses = [_equals("name", name)]
        clauses.extend(_equals("tags.`%s`" % k, v) for k, v in sorted((tags or {}).items()))
        versions, endpoint, complete = self._search_version_pages(" AND ".join(clauses))
        wanted = dict(tags or {})
        if not complete:
            raise MlflowError("%s: %s has more than %d versions of model '%s' with tags %s; not listing a part of "
                              "them" % (COMPONENT, endpoint, SEARCH_PAGE_SIZE * SEARCH_MAX_PAGES, name, wanted))
        found = [v for v in versions if v.name == name and all(v.tags.get(k) == val for k, val in wanted.items())]
        return sorted(found, key=lambda v: v.version, reverse=True)

    def _search_version_pages(self, filter_text: str) -> Tuple[List[ModelVersion], str, bool]:
        """GET model-versions/search page by page: (versions, the endpoint that answered, whether every page was
        read within SEARCH_MAX_PAGES)."""
        query: Dict[str, Any] = {"filter": filter_text, "max_results": SEARCH_PAGE_SIZE}
        found: List[ModelVersion] = []
        endpoint = ""
        for _page in range(SEARCH_MAX_PAGES):
            path = "%s/model-versions/search?%s" % (API, urlencode(query))
            response = self.request("GET", path)
            endpoint = base_url(response, path)
            doc = self.json(response)
            if not isinstance(doc, Mapping):
                raise MlflowError("%s: %s answered the search with something that is not an object: %s"
                                  % (COMPONENT, endpoint, excerpt(response.body)))
            for raw in doc.get("model_versions") or []:
                try:
                    found.append(parse_model_version(raw))
                except ValueError as err:
                    raise MlflowError("%s: %s answered the search with %s" % (COMPONENT, endpoint, err)) from err
            token = doc.get("next_page_token")
            if not token:
                return found, endpoint, True
            query["page_token"] = token
        return found, endpoint, False

    def delete_version(self, name: str, version: int) -> bool:
        """DELETE model-versions/delete (MLflow reads its JSON body); False when there was no such version,
        also when an earlier try of this same call deleted it."""
        try:
            self.request("DELETE", API + "/model-versions/delete", json_body={"name": name, "version": str(version)})
        except HttpClientError as err:
            if _does_not_exist(err):
                return False
            raise
        return True

    def create_registered_model(self, name: str) -> bool:
        """Make sure the registered model exists; True when this call created it. Safe to repeat, since an
        answer of RESOURCE_ALREADY_EXISTS is success."""
        try:
            self.request("POST", API + "/registered-models/create", json_body={"name": name}, idempotent=True)
        except HttpClientError as err:
            if err.response is not None and mlflow_error(err.response)[0] == ALREADY_EXISTS:
                return False
            raise
        return True

    def create_version(self, name: str, source: str, key: str, run_id: Optional[str] = None,
                       description: Optional[str] = None,
                       tags: Optional[Mapping[str, Any]] = None) -> Tuple[ModelVersion, str]:
        """POST model-versions/create once (moved to another endpoint only while connections are refused)."""
        body: Dict[str, Any] = {"name": name, "source": source}
        if run_id:
            body["run_id"] = run_id
        if description:
            body["description"] = description
        all_tags = [{"key": str(k), "value": str(v)} for k, v in sorted((tags or {}).items()) if k != IDEMPOTENCY_TAG]
        all_tags.append({"key": IDEMPOTENCY_TAG, "value": key})
        body["tags"] = all_tags
        path = API + "/model-versions/create"
        response = self.request("POST", path, json_body=body, idempotent=False)
        doc = self.json(response)
        try:
            version = parse_model_version(doc.get("model_version") if isinstance(doc, Mapping) else None)
        except ValueError as err:
            raise MlflowError("%s: %s answered the create with %s" % (COMPONENT, response.url, err)) from err
        return version, base_url(response, path)

    def alias_version(self, name: str, alias: str) -> Optional[int]:
        """The version ``alias`` points at; None when the alias (or the model) does not exist."""
        path = "%s/registered-models/alias?%s" % (API, urlencode({"name": name, "alias": alias}))
        try:
            response = self.request("GET", path)
        except HttpClientError as err:
            code = mlflow_error(err.response)[0]
            if err.response is not None and err.response.status in (400, 404) \
                    and code in (INVALID_PARAMETER, DOES_NOT_EXIST):
                return None
            raise
        doc = self.json(response)
        try:
            return parse_model_version(doc.get("model_version") if isinstance(doc, Mapping) else None).version
        except ValueError as err:
            raise MlflowError("%s: %s answered the alias lookup with %s" % (COMPONENT, response.url, err)) from err

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version``; the same request twice leaves the same state, so it is retried."""
        self.request("POST", API + "/registered-models/alias",
                     json_body={"name": name, "alias": alias, "version": str(version)}, idempotent=True)

    def run_artifact_uri(self, run_id: str) -> str:
        path = "%s/runs/get?%s" % (API, urlencode({"run_id": run_id}))
        response = self.request("GET", path)
        doc = self.json(response)
        info = (doc.get("run") or {}).get("info") if isinstance(doc, Mapping) else None
        uri = info.get("artifact_uri") if isinstance(info, Mapping) else None
        if not isinstance(uri, str) or not uri:
            raise MlflowError("%s: %s answered GET runs/get for run %s without an artifact_uri: %s"
                              % (COMPONENT, base_url(response, path), run_id, excerpt(response.body)))
        return uri

    def search_runs(self, experiment_id: str, key: str) -> List[Tuple[str, str]]:
        """Active runs of ``experiment_id`` tagged with ``key``: (run_id, artifact_uri), oldest first."""
        body = {"experiment_ids": [experiment_id], "filter": "tags.`%s` = %s" % (
            IDEMPOTENCY_TAG, filter_literal(key)), "max_results": SEARCH_PAGE_SIZE, "order_by": ["start_time ASC"]}
        response = self.request("POST", API + "/runs/search", json_body=body, idempotent=True)
        doc = self.json(response)
        runs = []
        for raw in (doc.get("runs") or []) if isinstance(doc, Mapping) else []:
            info = raw.get("info") if isinstance(raw, Mapping) else None
            if isinstance(info, Mapping) and info.get("run_id") and info.get("artifact_uri"):
                runs.append((str(info["run_id"]), str(info["artifact_uri"])))
        return runs

    def create_run(self, experiment_id: str, key: str, run_name: str,
                   tags: Optional[Mapping[str, Any]] = None) -> Tuple[str, str]:
        """POST runs/create once, tagged with ``key`` (and ``tags``): (run_id, artifact_uri). Not idempotent, like
        a version."""
        all_tags = [{"key": str(k), "value": str(v)} for k, v in sorted((tags or {}).items()) if k != IDEMPOTENCY_TAG]
        all_tags.append({"key": IDEMPOTENCY_TAG, "value": key})
        body = {"experiment_id": experiment_id, "run_name": run_name, "start_time": wall_ms(), "tags": all_tags}
        response = self.request("POST", API + "/runs/create", json_body=body, idempotent=False)
        doc = self.json(response)
        info = (doc.get("run") or {}).get("info") if isinstance(doc, Mapping) else None
        if not isinstance(info, Mapping) or not info.get("run_id") or not info.get("artifact_uri"):
            raise MlflowError("%s: %s answered runs/create without a run_id and artifact_uri: %s"
                              % (COMPONENT, response.url, excerpt(response.body)))
        return str(info["run_id"]), str(info["artifact_uri"])

    def finish_run(self, run_id: str) -> None:
        """Mark a run FINISHED; the same request twice leaves the same state."""
        self.request("POST", API + "/runs/update", json_body={"run_id": run_id, "status": "FINISHED",
                                                              "end_time": wall_ms()}, idempotent=True)

    def delete_run(self, run_id: str) -> bool:
        """POST runs/delete (MLflow marks the run deleted; ``mlflow gc`` removes it and its artifacts later);
        False when there was no such run. The same request twice leaves the same state, so it is retried."""
        try:
            self.request("POST", API + "/runs/delete", json_body={"run_id": run_id}, idempotent=True)
        except HttpClientError as err:
            if _does_not_exist(err):
                return False
            raise
        return True

    def recent_runs(self, experiment_id: str, tags: Optional[Mapping[str, str]] = None,
                    max_results: int = SEARCH_PAGE_SIZE) -> List[str]:
        """The ids of the newest ``max_results`` active runs of ``experiment_id`` carrying all of ``tags``, newest
        first (one page). Raises ValueError when a tag cannot be written in MLflow's filter grammar."""
        body: Dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": max_results,
                                "order_by": ["start_time DESC"]}
        if tags:
            body["filter"] = " AND ".join(_equals("tags.`%s`" % k, v) for k, v in sorted(tags.items()))
        response = self.request("POST", API + "/runs/search", json_body=body, idempotent=True)
        doc = self.json(response)
        runs = []
        for raw in (doc.get("runs") or []) if isinstance(doc, Mapping) else []:
            info = raw.get("info") if isinstance(raw, Mapping) else None
            if isinstance(info, Mapping) and info.get("run_id"):
                runs.append(str(info["run_id"]))
        return runs

    # -- experiments ------------------------------------------------------------------------------------

    def experiment_by_name(self, name: str) -> Optional[Tuple[str, str]]:
        """(experiment_id, lifecycle_stage) of the experiment called ``name``; None when there is none."""
        path = "%s/experiments/get-by-name?%s" % (API, urlencode({"experiment_name": name}))
        try:
            response = self.request("GET", path)
        except HttpClientError as err:
            if _does_not_exist(err):
                return None
            raise
        doc = self.json(response)
        experiment = doc.get("experiment") if isinstance(doc, Mapping) else None
        if not isinstance(experiment, Mapping) or not experiment.get("experiment_id"):
            raise MlflowError("%s: %s answered experiments/get-by-name for '%s' without an experiment_id: %s"
                              % (COMPONENT, base_url(response, path), name, excerpt(response.body)))
        return str(experiment["experiment_id"]), str(experiment.get("lifecycle_stage") or "active")

    def create_experiment(self, name: str) -> str:
        """POST experiments/create: the new experiment's id. Names are unique, so a repeat cannot make a second
        one (it is refused with RESOURCE_ALREADY_EXISTS, which is raised as HttpClientError)."""
        response = self.request("POST", API + "/experiments/create", json_body={"name": name}, idempotent=True)
        doc = self.json(response)
        if not isinstance(doc, Mapping) or not doc.get("experiment_id"):
            raise MlflowError("%s: %s answered experiments/create without an experiment_id: %s"
                              % (COMPONENT, response.url, excerpt(response.body)))
        return str(doc["experiment_id"])

    def restore_experiment(self, experiment_id: str) -> None:
        self.request("POST", API + "/experiments/restore", json_body={"experiment_id": experiment_id},
                     idempotent=True)

    def ensure_experiment(self, name: str) -> Tuple[str, bool]:
        """The id of experiment ``name``, made (or restored, when it was deleted) if need be; and whether this
        call changed anything."""
        found = self.experiment_by_name(name)
        if found is None:
            try:
                return self.create_experiment(name), True
            except HttpClientError as err:
                if err.response is None or mlflow_error(err.response)[0] != ALREADY_EXISTS:
                    raise
            found = self.experiment_by_name(name)  # made meanwhile by someone else
            if found is None:
                raise MlflowError("%s: experiment '%s' was refused as existing, and then not found by name"
                                  % (COMPONENT, name))
        experiment_id, stage = found
        if stage == "deleted":
            self.restore_experiment(experiment_id)
            return experiment_id, True
        return experiment_id, False

    # -- artifacts --------------------------------------------------------------------------------------

    @staticmethod
    def artifact_url_path(path: str) -> str:
        return ARTIFACTS_API + "/" + quote(path, safe="/")

    def upload_artifact(self, path: str, data: bytes) -> str:
        """PUT ``data`` at ``path`` below the proxied artifact root; returns the endpoint that stored it."""
        url_path = self.artifact_url_path(path)
        response = self.request("PUT", url_path, body=data, headers={"Content-Type": "application/octet-stream"})
        return base_url(response, url_path)

    def download_artifact(self, path: str) -> Tuple[bytes, str]:
        url_path = self.artifact_url_path(path)
        response = self.request("GET", url_path, headers={"Accept": "application/octet-stream"})
        return response.body, base_url(response, url_path)


# -- idempotent registration ------------------------------------------------------------------------------


@dataclass
class Registration:
    """What ``register_model_version`` did. ``attempts`` counts create requests sent (0 when the version existed;
    one request may be tried on several endpoints while their connections are refused)."""

    name: str
    idempotency_key: str
    version: Optional[int] = None
    created: bool = False
    status: Optional[str] = None
    source: Optional[str] = None
    run_id: Optional[str] = None
    endpoint: Optional[str] = None
    attempts: int = 0
    searches: int = 0
    rounds: int = 0
    seconds: float = 0.0
    duplicates: List[int] = field(default_factory=list)
    registered_model_created: bool = False
    run_created: bool = False
    alias: Optional[str] = None
    alias_previous_version: Optional[int] = None
    alias_changed: bool = False
    artifact_sha256: Optional[str] = None
    artifact_size: Optional[int] = None
    artifact_uri: Optional[str] = None
    artifact_uploaded: bool = False
    artifact_verified: Optional[bool] = None
    failures: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.created or self.alias_changed

    def to_dict(self) -> Dict[str, Any]:
        return {
            "changed": self.changed,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "status": self.status,
            "source": self.source,
            "run_id": self.run_id,
            "idempotency_key": self.idempotency_key,
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "searches": self.searches,
            "seconds": round(self.seconds, 3),
            "duplicates": list(self.duplicates),
            "registered_model_created": self.registered_model_created,
            "run_created": self.run_created,
            "alias": self.alias,
            "alias_previous_version": self.alias_previous_version,
            "alias_changed": self.alias_changed,
            "artifact_sha256": self.artifact_sha256,
            "artifact_size": self.artifact_size,
            "artifact_uri": self.artifact_uri,
            "artifact_uploaded": self.artifact_uploaded,
            "artifact_verified": self.artifact_verified,
            "failures": list(self.failures),
        }


class _Artifact:
    """A local file to upload before the version is created, and where it goes."""

    def __init__(self, local_path: str, data: bytes, artifact_path: str):
        self.local_path = local_path
        self.basename = os.path.basename(local_path)
        self.data = data
        self.sha256 = sha256_hex(data)
        self.artifact_path = artifact_path
        self.run_id: Optional[str] = None
        self.run_artifact_uri: Optional[str] = None
        self.run_uncertain = True  # a registration run with the key may exist: look before creating one
        self.run_creates = 0
        self.upload_path = ""

    def place(self, run_id: str, artifact_uri: str, result: Registration) -> None:
        """Put the file below the run's artifact root; the version's source is the directory holding it."""
        root = proxy_path(artifact_uri)
        if root is None:
            raise MlflowError("run %s keeps its artifacts at %s, which the tracking server does not proxy, so an "
                              "upload through it would land outside the run and MLflow would refuse the version; "
                              "serve artifacts (mlflow server --serve-artifacts without --default-artifact-root) or "
                              "give source instead of artifact" % (run_id, artifact_uri), result.to_dict())
        self.run_id, self.run_artifact_uri = run_id, artifact_uri
        self.upload_path = "/".join(p for p in (root, self.artifact_path, self.basename) if p)
        result.run_id = run_id
        result.source = "%s/%s" % (artifact_uri.rstrip("/"), self.artifact_path)
        result.artifact_uri = "%s/%s" % (result.source, self.basename)


def _read_artifact(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise MlflowError("cannot read the artifact %s: %s" % (path, err)) from err


def register_model_version(client: MlflowClient, name: str, source: Optional[str] = None,
                           artifact: Optional[str] = None, artifact_path: Optional[str] = None,
                           run_id: Optional[str] = None, description: Optional[str] = None,
                           idempotency_key: Optional[str] = None, alias: Optional[str] = None,
                           tags: Optional[Mapping[str, Any]] = None, check_mode: bool = False,
                           deadline: Optional[float] = None, experiment_id: str = "0") -> Registration:
    """Register a version of model ``name`` once per idempotency key, however often this runs or retries.

    Rounds, at most ``client.max_attempts`` of them and all within ``deadline`` seconds (the client's deadline
    by default), with full-jitter backoff between them:

    1. while a version with the key may exist (at the start, and after a create that may have reached a server:
       timeout, reset, 5xx), search for the key; a hit ends the work. A failed search only ends the round: no
       create is sent before a search has said the key is absent. After such a create the round waits at least
       the request timeout, so that a create still running on the server can commit before the search.
    2. for an artifact: find its run, upload it and read it back (once); make sure the registered model exists
       (once); send the create.

    With ``artifact`` (a local file), the file goes to ``<run artifact root>/<artifact_path>/<basename>`` through
    the server's artifact proxy and must read back byte for byte; the source is that directory, since MLflow
    accepts a source in its artifact store only inside the artifact root of the version's run. Without
    ``run_id`` that run is a registration run in ``experiment_id``, tagged with the key and made the same way as
    a version: searched for first, created at most once per key. In check mode only reads are sent.
    Raises MlflowError (with the facts so far), HttpClientError, or ValueError for bad arguments."""
    if not name or not name.strip():
        raise ValueError("name must not be empty")
    if (source is None) == (artifact is None):
        raise ValueError("give exactly one of source and artifact")
    try:
        return _register(client, name, source, artifact, artifact_path, run_id, description, idempotency_key, alias,
                         tags, check_mode, deadline, experiment_id)
    finally:
        client.end = None


def _register(client: MlflowClient, name: str, source: Optional[str], artifact: Optional[str],
              artifact_path: Optional[str], run_id: Optional[str], description: Optional[str],
              idempotency_key: Optional[str], alias: Optional[str], tags: Optional[Mapping[str, Any]],
              check_mode: bool, deadline: Optional[float], experiment_id: str) -> Registration:
    clock = client.clock
    start = clock.now()
    end = start + (deadline if deadline is not None else client.deadline)
    client.limit(end - start)
    upload: Optional[_Artifact] = None
    if artifact is not None:
        data = _read_artifact(artifact)
        key = idempotency_key or derive_idempotency_key(name, artifact_sha256=sha256_hex(data), run_id=run_id)
        upload = _Artifact(artifact, data, check_artifact_path(artifact_path or default_artifact_path(name, key)))
    else:
        key = idempotency_key or derive_idempotency_key(name, source=source, run_id=run_id)
    version_filter(name, key)  # fail now on a key the search cannot express
    result = Registration(name=name, idempotency_key=key, source=source, run_id=run_id, alias=alias)
    if upload is not None:
        result.artifact_sha256 = upload.sha256
        result.artifact_size = len(upload.data)

    def facts() -> Dict[str, Any]:
        result.seconds = clock.now() - start
        return result.to_dict()

    def refused(what: str, err: HttpClientError) -> MlflowError:
        return MlflowError("%s refused %s for model '%s' (idempotency key %s): %s. %s" % (
            COMPONENT, what, name, key, describe_failure(err).rstrip("."), err), facts())

    uncertain = True  # a version with the key may exist: look before creating
    model_ready = False
    while True:
        if result.rounds >= client.max_attempts or clock.now() >= end:
            raise MlflowError(_give_up(result, name, key, uncertain, clock.now() - start, client.max_attempts),
                              facts())
        if result.rounds > 0:
            delay = client.policy.backoff(result.rounds, client.rng)
            if (uncertain and result.attempts) or (upload is not None and upload.run_uncertain and upload.run_creates):
                # A create that timed out may still be running on the server: give it as long again to commit
                # before the search that decides whether to create once more.
                delay = max(delay, client.request_timeout)
            if clock.now() + delay >= end:
                raise MlflowError(_give_up(result, name, key, uncertain, clock.now() - start, client.max_attempts),
                                  facts())
            clock.sleep(delay)
        result.rounds += 1
        if uncertain:
            try:
                found, endpoint = client.search_versions(name, key)
            except HttpClientError as err:
                if is_refusal(err):
                    raise refused("the version search", err) from err
                result.failures.append("[%d] search: %s" % (result.rounds, describe_failure(err)))
                continue
            result.searches += 1
            if found:
                _take_found(result, found, endpoint)
                break
            uncertain = False
        if check_mode:
            result.created = True  # would be
            if upload is not None:
                _find_run(client, upload, run_id, experiment_id, key, result)
            break
        step = "the registration run"
        try:
            if upload is not None and not result.artifact_uploaded:
                if upload.run_id is None:
                    _find_run(client, upload, run_id, experiment_id, key, result)
                if upload.run_id is None:
                    _create_run(client, upload, experiment_id, key, name, result)
                step = "the artifact upload"
                _upload_and_verify(client, upload, result, facts)
            step = "the registered model"
            if not model_ready:
                result.registered_model_created = client.create_registered_model(name)
                model_ready = True
        except HttpClientError as err:
            if is_refusal(err):
                raise refused(step, err) from err
            result.failures.append("[%d] %s: %s" % (result.rounds, step, describe_failure(err)))
            continue
        result.attempts += 1
        try:
            version, endpoint = client.create_version(name, result.source or "", key, run_id=result.run_id,
                                                      description=description, tags=tags)
        except HttpClientError as err:
            if is_refusal(err):
                raise refused("the new version", err) from err
            if may_have_reached(err):
                uncertain = True
            result.failures.append("[%d] create: %s%s" % (
                result.rounds, describe_failure(err), " (may have reached the server)" if uncertain else ""))
            continue
        result.version, result.status, result.endpoint = version.version, version.status, endpoint
        result.source = version.source or result.source
        result.created = True
        break

    if alias:
        client.limit(max(1.0, end - clock.now()))  # the version is there: let the alias have a moment
        try:
            _point_alias(client, result, name, alias, check_mode)
        except HttpClientError as err:
            made = "version %d is registered, but " % result.version if result.version is not None else ""
            raise MlflowError("%s%s could not point alias '%s' of model '%s' at it: %s. %s" % (
                made, COMPONENT, alias, name, describe_failure(err).rstrip("."), err), facts()) from err
    result.seconds = clock.now() - start
    return result


def _take_found(result: Registration, found: List[ModelVersion], endpoint: str) -> None:
    """The lowest version with the key is the one; others with it are duplicates (someone else's)."""
    first = found[0]
    result.version, result.status, result.source = first.version, first.status, first.source
    result.run_id = first.run_id or result.run_id
    result.duplicates = [v.version for v in found[1:]]
    result.endpoint = endpoint
    # Found after a create of ours may have reached a server: that create made it.
    result.created = result.attempts > 0


def _find_run(client: MlflowClient, upload: _Artifact, run_id: Optional[str], experiment_id: str, key: str,
              result: Registration) -> None:
    """The run the artifact goes into: the given one, or the registration run tagged with the key if there is
    one (``upload.run_id`` stays None when there is none yet)."""
    if run_id:
        upload.place(run_id, client.run_artifact_uri(run_id), result)
        return
    if not upload.run_uncertain:
        return
    runs = client.search_runs(experiment_id, key)
    upload.run_uncertain = False
    if runs:
        upload.place(runs[0][0], runs[0][1], result)
        result.run_created = upload.run_creates > 0  # found after a create of ours that may have reached a server


def _create_run(client: MlflowClient, upload: _Artifact, experiment_id: str, key: str, name: str,
                result: Registration) -> None:
    """Create the registration run once; after a create that may have reached a server, the next round searches
    for it again before creating another."""
    upload.run_creates += 1
    try:
        new_run, artifact_uri = client.create_run(experiment_id, key, "mlflow_ha registration of %s" % name)
    except HttpClientError as err:
        upload.run_uncertain = may_have_reached(err)
        raise
    result.run_created = True
    upload.place(new_run, artifact_uri, result)


def _upload_and_verify(client: MlflowClient, upload: _Artifact, result: Registration,
                       facts: Callable[[], Dict[str, Any]]) -> None:
    """PUT the artifact, GET it back, compare SHA-256; a difference ends the registration (nothing created).
    A registration run made here is marked FINISHED afterwards (best effort: a failure is only reported)."""
    client.upload_artifact(upload.upload_path, upload.data)
    back, endpoint = client.download_artifact(upload.upload_path)
    back_sha = sha256_hex(back)
    result.artifact_verified = back_sha == upload.sha256
    if not result.artifact_verified:
        raise MlflowError("%s: the artifact %s came back from %s%s different: %d bytes with sha256 %s, uploaded "
                          "%d bytes with sha256 %s; no model version was created" % (
                              COMPONENT, upload.local_path, endpoint, client.artifact_url_path(upload.upload_path),
                              len(back), back_sha, len(upload.data), upload.sha256), facts())
    result.artifact_uploaded = True
    if result.run_created and upload.run_id:
        try:
            client.finish_run(upload.run_id)
        except HttpClientError as err:
            result.failures.append("[%d] finishing run %s: %s" % (result.rounds, upload.run_id,
                                                                  describe_failure(err)))


def _point_alias(client: MlflowClient, result: Registration, name: str, alias: str, check_mode: bool) -> None:
    if result.version is None:  # check mode, the version would be new: so would the alias
        result.alias_changed = True
        return
    current = client.alias_version(name, alias)
    result.alias_previous_version = current
    if current == result.version:
        return
    result.alias_changed = True
    if not check_mode:
        client.set_alias(name, alias, result.version)


def _give_up(result: Registration, name: str, key: str, uncertain: bool, spent: float, rounds: int) -> str:
    text = "%s: no version of model '%s' registered for idempotency key %s after %d round(s) (at most %d) in " \
           "%.1f s and %d create request(s): %s." % (
               COMPONENT, name, key, result.rounds, rounds, spent, result.attempts,
               "; ".join(result.failures) or "the deadline passed")
    if uncertain and result.attempts:
        text += " A create may have reached a server, so the version may exist; a rerun finds it by its key " \
                "instead of creating another."
    return text


# -- health of the servers and the load balancer ------------------------------------------------------------


@dataclass
class ServerState:
    """One tracking server: ``GET /health`` answered ``OK`` and ``GET /version`` answered a version."""

    url: str
    healthy: bool = False
    version: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0
    health_ok: bool = False

    def reason(self) -> str:
        if self.health_ok:  # it serves, but not us: credentials, or a broken API behind a live process
            return "server %s answers %s but %s" % (self.url, HEALTH, self.error or "no version")
        return "server %s is down: %s" % (self.url, self.error or "no answer")

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "version": self.version, "error": self.error,
                "seconds": round(self.seconds, 3)}


@dataclass
class HaproxyServer:
    """One server row of HAProxy's stats CSV."""

    name: str
    status: str
    check_status: str = ""
    address: str = ""
    last_change_seconds: Optional[int] = None
    last_check: str = ""

    @property
    def serving(self) -> bool:
        """Takes new connections: UP (also "UP 1/3", up and failing checks), or enabled without checks."""
        return self.status == "no check" or self.status.split(" ")[0] == "UP"

    def describe(self) -> str:
        detail = ", ".join(p for p in (self.check_status, self.last_check) if p)
        return "%s %s%s" % (self.name, self.status, " (%s)" % detail if detail else "")

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "serving": self.serving, "check_status": self.check_status,
                "address": self.address, "last_change_seconds": self.last_change_seconds,
                "last_check": self.last_check}


@dataclass
class HaproxyBackend:
    name: str
    status: str = ""
    servers: List[HaproxyServer] = field(default_factory=list)

    @property
    def serving(self) -> List[HaproxyServer]:
        return [s for s in self.servers if s.serving]


def _int_or_none(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse_haproxy_csv(text: str) -> Dict[str, HaproxyBackend]:
    """HAProxy's ``;csv`` stats page as backends by name (listen sections count as backends), in file order.

    Raises ValueError when the text is not HAProxy's CSV (the header starts with ``# pxname,svname``)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# pxname,svname"):
        raise ValueError("not HAProxy's stats CSV (no '# pxname,svname' header): %s" % excerpt(text.encode()))
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    backends: Dict[str, HaproxyBackend] = {}
    for row in reader:
        proxy, server = row.get("pxname") or "", row.get("svname") or ""
        if not proxy or server == "FRONTEND":
            continue
        backend = backends.setdefault(proxy, HaproxyBackend(proxy))
        if server == "BACKEND":
            backend.status = row.get("status") or ""
            continue
        backend.servers.append(HaproxyServer(
            name=server, status=row.get("status") or "", check_status=(row.get("check_status") or "").strip("* "),
            address=row.get("addr") or "", last_change_seconds=_int_or_none(row.get("lastchg")),
            last_check=row.get("last_chk") or ""))
    return {k: v for k, v in backends.items() if v.status or v.servers}


@dataclass
class LoadBalancerView:
    """The VIP's ``/health`` and HAProxy's view of the backend, each optional."""

    url: Optional[str] = None
    healthy: Optional[bool] = None
    error: Optional[str] = None
    seconds: float = 0.0
    stats_url: Optional[str] = None
    backend: Optional[str] = None
    backend_status: Optional[str] = None
    servers: List[HaproxyServer] = field(default_factory=list)
    stats_error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "error": self.error, "seconds": round(self.seconds, 3),
                "haproxy_stats_url": self.stats_url, "haproxy_backend": self.backend,
                "haproxy_backend_status": self.backend_status, "haproxy_servers": [s.to_dict() for s in self.servers],
                "haproxy_error": self.stats_error}


@dataclass
class InfoLook:
    servers: List[ServerState]
    lb: LoadBalancerView
    breakers: Dict[str, str]
    problems: List[str] = field(default_factory=list)


@dataclass
class InfoCheck:
    """The last look, how many looks it took, and whether waiting gave up."""

    look: InfoLook
    min_healthy: int
    checks: int = 0
    waited: float = 0.0
    gave_up: bool = False

    @property
    def healthy(self) -> List[ServerState]:
        return [s for s in self.look.servers if s.healthy]

    def summary(self) -> str:
        return "%d of %d servers healthy (%d required)" % (len(self.healthy), len(self.look.servers), self.min_healthy)

    def to_dict(self) -> Dict[str, Any]:
        look = self.look
        return {
            "servers": [s.to_dict() for s in look.servers],
            "healthy": [s.url for s in look.servers if s.healthy],
            "unhealthy": [s.url for s in look.servers if not s.healthy],
            "healthy_count": len(self.healthy),
            "min_healthy": self.min_healthy,
            "versions": sorted({s.version for s in look.servers if s.version}),
            "lb": look.lb.to_dict(),
            "breakers": dict(look.breakers),
            "problems": list(look.problems),
            "checks": self.checks,
            "waited": round(self.waited, 3),
        }


def check_min_healthy(min_healthy: Optional[int], servers: int) -> int:
    """How many servers must be healthy: ``min_healthy``, or all of them when it is None or 0."""
    if servers < 1:
        raise ValueError("%s: no server URLs given" % COMPONENT)
    if min_healthy is None or min_healthy == 0:
        return servers
    if min_healthy < 0 or min_healthy > servers:
        raise ValueError("min_healthy must be between 1 and %d (the servers listed), got %d" % (servers, min_healthy))
    return min_healthy


class MlflowProber:
    """Asks each tracking server, and the load balancer, how it is. Nothing raises: a failure is an observation.

    Each look uses fresh clients with few attempts and a short deadline, since a down server is a fact to report,
    not to wait out; the breakers of the last look are reported."""

    def __init__(self, servers: Sequence[str], lb_url: Optional[str] = None, haproxy_stats_url: Optional[str] = None,
                 haproxy_backend: str = "mlflow", username: Optional[str] = None, password: Optional[str] = None,
                 haproxy_servers: Sequence[str] = (), headers: Optional[Mapping[str, str]] = None,
                 transport: Optional[Transport] = None,
                 clock: Optional[Clock] = None, rng: Optional[random.Random] = None, request_timeout: float = 5.0,
                 deadline: float = 15.0, max_attempts: int = 2):
        if not servers:
            raise ValueError("%s: no server URLs given" % COMPONENT)
        self.servers = [s.rstrip("/") for s in servers]
        self.lb_url = lb_url.rstrip("/") if lb_url else None
        self.haproxy_stats_url = haproxy_stats_url
        self.haproxy_backend = haproxy_backend
        # HAProxy server names that must each be up in the backend (a rolling restart's gate: this server is
        # back in every load balancer), besides the count that min_healthy asks.
        self.haproxy_servers = list(haproxy_servers)
        self.transport = transport or UrllibTransport()
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.headers: Dict[str, str] = dict(basic_auth(username, password))
        self.headers.update(headers or {})

    def _client(self, url: str, component: str, headers: Optional[Mapping[str, str]] = None) -> HttpClient:
        return HttpClient([url], component,
                          policy=RetryPolicy(max_attempts=self.max_attempts, base_delay=0.2, max_delay=1.0,
                                             deadline=self.deadline),
                          request_timeout=self.request_timeout, transport=self.transport, clock=self.clock,
                          rng=self.rng, headers=headers)

    def probe(self, url: str, client: HttpClient) -> ServerState:
        state = ServerState(url)
        t0 = self.clock.now()
        try:
            state.error = _expect_ok(client.request("GET", HEALTH, headers={"Accept": "text/plain"}))
        except HttpClientError as err:
            state.error = "GET %s: %s" % (HEALTH, describe_failure(err))
        state.health_ok = state.error is None
        if state.health_ok:
            try:
                state.version = client.request("GET", VERSION, headers={"Accept": "text/plain"}).text.strip() or None
            except HttpClientError as err:
                state.error = "GET %s: %s" % (VERSION, describe_failure(err))
            else:
                if state.version is None:
                    state.error = "GET %s answered an empty body" % VERSION
        state.healthy = state.error is None
        state.seconds = self.clock.now() - t0
        return state

    def load_balancer(self, breakers: Dict[str, str]) -> LoadBalancerView:
        view = LoadBalancerView(url=self.lb_url, stats_url=self.haproxy_stats_url,
                                backend=self.haproxy_backend if self.haproxy_stats_url else None)
        if self.lb_url:
            client = self._client(self.lb_url, "MLflow load balancer", self.headers)
            t0 = self.clock.now()
            try:
                view.error = _expect_ok(client.request("GET", HEALTH, headers={"Accept": "text/plain"}))
            except HttpClientError as err:
                view.error = "GET %s: %s" % (HEALTH, describe_failure(err))
            view.healthy = view.error is None
            view.seconds = self.clock.now() - t0
            breakers.update(client.breaker_states())
        if self.haproxy_stats_url:
            parts = urlsplit(self.haproxy_stats_url)
            base = "%s://%s" % (parts.scheme, parts.netloc)
            path = parts.path or "/"
            if not path.endswith(";csv"):
                path += ";csv"
            client = self._client(base, "HAProxy stats")
            try:
                backends = parse_haproxy_csv(client.request("GET", path, headers={"Accept": "text/plain"}).text)
            except HttpClientError as err:
                view.stats_error = "GET %s%s: %s" % (base, path, describe_failure(err))
            except ValueError as err:
                view.stats_error = "%s%s: %s" % (base, path, err)
            else:
                backend = backends.get(self.haproxy_backend)
                if backend is None:
                    view.stats_error = "HAProxy has no backend named '%s' (it has: %s)" % (
                        self.haproxy_backend, ", ".join(backends) or "none")
                else:
                    view.backend_status = backend.status or None
                    view.servers = list(backend.servers)
            breakers.update(client.breaker_states())
        return view

    def look(self, min_healthy: int) -> InfoLook:
        breakers: Dict[str, str] = {}
        servers = []
        for url in self.servers:
            client = self._client(url, COMPONENT, self.headers)
            servers.append(self.probe(url, client))
            breakers.update(client.breaker_states())
        lb = self.load_balancer(breakers)
        look = InfoLook(servers, lb, breakers)
        look.problems = assess(look, min_healthy, self.haproxy_servers)
        return look


def _expect_ok(response: Response) -> Optional[str]:
    """None when ``/health`` said OK, else what it said instead."""
    body = response.text.strip()
    if body == "OK":
        return None
    return "GET %s answered HTTP %d with '%s' instead of OK" % (HEALTH, response.status, excerpt(response.body))


def assess(look: InfoLook, min_healthy: int, required_lb_servers: Sequence[str] = ()) -> List[str]:
    """A sentence per problem; empty when enough servers are healthy and the load balancer (when asked) agrees.

    Each server that is down is named with what it answered, when fewer than ``min_healthy`` are healthy. Each
    name in ``required_lb_servers`` must be up in HAProxy's backend too."""
    problems: List[str] = []
    healthy = [s for s in look.servers if s.healthy]
    if len(healthy) < min_healthy:
        problems.append("%d of %d MLflow tracking servers healthy, %d required" % (
            len(healthy), len(look.servers), min_healthy))
        problems.extend(s.reason() for s in look.servers if not s.healthy)
    lb = look.lb
    if lb.url and not lb.healthy:
        problems.append("load balancer %s is not serving MLflow: %s" % (lb.url, lb.error or "no answer"))
    if lb.stats_url:
        if lb.stats_error:
            problems.append("cannot read HAProxy's view: %s" % lb.stats_error)
        else:
            serving = [s for s in lb.servers if s.serving]
            if len(serving) < min_healthy:
                problems.append("HAProxy backend %s has %d of %d servers up, %d required: %s" % (
                    lb.backend, len(serving), len(lb.servers), min_healthy,
                    ", ".join(s.describe() for s in lb.servers) or "no servers"))
            by_name = {s.name: s for s in lb.servers}
            for name in required_lb_servers:
                server = by_name.get(name)
                if server is None:
                    problems.append("HAProxy backend %s has no server %s (it has: %s)" % (
                        lb.backend, name, ", ".join(by_name) or "none"))
                elif not server.serving:
                    problems.append("HAProxy does not send traffic to %s yet: %s" % (name, server.describe()))
    return problems


def check_servers(prober: MlflowProber, min_healthy: Optional[int] = None, wait_timeout: float = 0.0,
                  poll_interval: float = 2.0) -> InfoCheck:
    """Look until there is no problem or ``wait_timeout`` passes; return the last look."""
    required = check_min_healthy(min_healthy, len(prober.servers))
    return watch(lambda: InfoCheck(prober.look(required), required), lambda c: not c.look.problems, wait_timeout,
                 poll_interval, prober.clock).stamped()


# -- from module parameters -------------------------------------------------------------------------------


def client_from_params(params: Mapping[str, Any], transport: Optional[Transport] = None,
                       clock: Optional[Clock] = None, rng: Optional[random.Random] = None) -> MlflowClient:
    """The registry client for a module's options (endpoints, username, password, timeout, deadline,
    max_attempts and the TLS options)."""
    return MlflowClient(endpoint_list(params["endpoints"]), username=params.get("username"),
                        password=params.get("password"), headers=params.get("headers"),
                        transport=transport or transport_from_params(params), clock=clock, rng=rng,
                        request_timeout=params["timeout"], deadline=params["deadline"],
                        max_attempts=params["max_attempts"])


def mlflow_info(params: Mapping[str, Any], transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                rng: Optional[random.Random] = None) -> Tuple[Dict[str, Any], Optional[str]]:
    """The mlflow_info module's work: (result, failure message or None)."""
    servers = endpoint_list(params["endpoints"])
    try:
        check_min_healthy(params.get("min_healthy"), len(servers))
    except ValueError as err:
        return dict(changed=False), str(err)
    prober = MlflowProber(servers, lb_url=params.get("lb_url"), haproxy_stats_url=params.get("haproxy_stats_url"),
                          haproxy_backend=params.get("haproxy_backend") or "mlflow",
                          haproxy_servers=params.get("haproxy_servers") or (),
                          username=params.get("username"), password=params.get("password"),
                          transport=transport or transport_from_params(params), clock=clock, rng=rng,
                          request_timeout=params["timeout"], deadline=params["deadline"],
                          max_attempts=params["max_attempts"])
    check = check_servers(prober, params.get("min_healthy"), wait_timeout=params.get("wait_timeout") or 0.0,
                          poll_interval=params.get("poll_interval") or 2.0)
    result = dict(changed=False, **check.to_dict())
    if not check.look.problems:
        return result, None
    waited = ""
    if check.gave_up:
        waited = " after waiting %.1f s (%d checks; last look: %s)" % (check.waited, check.checks, check.summary())
    return result, "MLflow is not healthy%s: %s" % (waited, "; ".join(check.look.problems))
