# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the MLflow tracking server's REST API. Idempotent registration of model versions built on it is
in ``mlflow_registration.py``, the health of the servers and of the load balancer's view of them in
``mlflow_health.py`` (HAProxy's stats CSV in ``haproxy.py``). This file stays self-contained (with
``http_client.py`` and ``resilience.py``): the registration probe ships exactly these three.

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

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode, urlsplit

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
    Response,
    ServiceClient,
    Transport,
    TransportError,
    base_url,
    basic_auth,
    endpoint_list,
    excerpt,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    RetryPolicy,
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
    return err.last_outcome()


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


class MlflowClient(ServiceClient):
    """Requests against the tracking servers through one HttpClient: the endpoints in order (the load balancer's
    VIP first, then the servers), failing over while connections are refused, with a circuit breaker each.

    Reads and PUTs are retried on the client's rules; the model version create is sent as non-idempotent, so
    HttpClient never repeats it once it may have reached a server (``register_model_version`` decides)."""

    component = COMPONENT

    def __init__(self, endpoints: Sequence[str], username: Optional[str] = None, password: Optional[str] = None,
                 headers: Optional[Mapping[str, str]] = None, transport: Optional[Transport] = None,
                 clock: Optional[Clock] = None, rng: Optional[random.Random] = None, request_timeout: float = 10.0,
                 deadline: float = 60.0, max_attempts: int = 5):
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.headers: Dict[str, str] = {"Accept": "application/json"}
        self.headers.update(basic_auth(username, password))
        self.headers.update(headers or {})
        self.http = self.client_for(endpoints, headers=self.headers, deadline_header=DEADLINE_HEADER)
        self.policy = self.http.policy
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
