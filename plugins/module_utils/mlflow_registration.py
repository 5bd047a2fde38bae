# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idempotent registration of a model version through MLflow's REST API: search the key, upload the artifact
through MLflow's proxied artifact API, create once, search again after an uncertain create, point an alias."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
    COMPONENT,
    MlflowClient,
    MlflowError,
    ModelVersion,
    check_artifact_path,
    default_artifact_path,
    derive_idempotency_key,
    describe_failure,
    is_refusal,
    may_have_reached,
    proxy_path,
    sha256_hex,
    version_filter,
)

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


# -- removal ---------------------------------------------------------------------------------------------------


def remove_model_versions(client: MlflowClient, name: str, key: str, experiment_id: str = "0",
                          check_mode: bool = False) -> Dict[str, Any]:
    """``state: absent``: delete every version of ``name`` carrying ``key`` and the registration runs made for it
    (runs of ``experiment_id`` tagged with the key; MLflow marks them deleted, ``mlflow gc`` removes them and their
    artifacts later). Deletes are idempotent: what is gone already counts as removed by someone else, not as a
    failure. In check mode, reports what it would delete."""
    versions, endpoint = client.search_versions(name, key)
    numbers = sorted({v.version for v in versions})
    runs = [run_id for run_id, _uri in client.search_runs(experiment_id, key)]
    if not check_mode:
        numbers = [n for n in numbers if client.delete_version(name, n)]
        runs = [r for r in runs if client.delete_run(r)]
    return {"changed": bool(numbers or runs), "name": name, "idempotency_key": key, "removed_versions": numbers,
            "removed_runs": runs, "endpoint": endpoint}
