# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection changes through Patroni's REST API: the dynamic configuration and PostgreSQL restarts.

- ``apply_dynamic_config``: read ``GET /config``, compare it with the wanted settings, ``PATCH /config`` with only
  the settings that differ, and (optionally) wait until every member has applied them, so the ``pending_restart``
  flags it returns are those of the new settings.
- ``restart_member``: ``POST /restart`` on one named member, only when a restart is pending unless told otherwise.

The client (``patroni.PatroniClient``) holds the requests, retries and their error text; this file decides what
to send and what the answers mean. What Patroni answers is described at the top of ``patroni.py``.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import json
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
    TransportError,
    excerpt,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import (
    ClusterView,
    Member,
    PatroniClient,
    PatroniError,
    _int_or_none,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Watched, watch

Path = Tuple[str, ...]

# A member has applied a PATCH once its dcs_last_seen (the time of its last DCS read, whole seconds) has moved on
# this many times after the first look that followed the PATCH: the first move may come from a read that was under
# way while the PATCH was written, the second is a read that certainly saw it, and Patroni applies a new dynamic
# configuration right after the HA loop that read it, so the third proves that loop has finished.
APPLIED_AFTER_MOVES = 3


class ChangeError(PatroniError):
    """A change through the REST API failed; ``facts`` are what the module returns with its failure (what drifted,
    whether something was written before the failure)."""

    def __init__(self, message: str, facts: Optional[Dict[str, Any]] = None, cluster: Optional[ClusterView] = None):
        super().__init__(message, cluster)
        self.facts = dict(facts or {})


# -- comparing settings ----------------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def setting_text(value: Any) -> str:
    """A setting as PostgreSQL and Patroni read it: 200 and "200" are the same, so are true and "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps([setting_text(v) for v in value])
    if isinstance(value, Mapping):
        return json.dumps({str(k): setting_text(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def same_setting(want: Any, have: Any) -> bool:
    """Whether the DCS holds the wanted value. A wanted null means "not set" (a PATCH with null removes it)."""
    if want is None:
        return have is MISSING or have is None
    if have is MISSING or have is None:
        return False
    return setting_text(want) == setting_text(have)


def config_drift(wanted: Mapping[str, Any], current: Any, prefix: Path = ()) -> List[Path]:
    """The paths of every wanted setting the DCS does not hold, in the order of ``wanted``.

    Nested sections (``postgresql``, ``postgresql.parameters``, ...) are compared key by key: a setting the DCS has
    and ``wanted`` does not mention is left alone, as ``PATCH /config`` leaves it."""
    have_section = current if isinstance(current, Mapping) else {}
    drift: List[Path] = []
    for key, want in wanted.items():
        path = (*prefix, str(key))
        have = have_section.get(key, MISSING)
        if isinstance(want, Mapping):
            drift.extend(config_drift(want, have, path))
        elif not same_setting(want, have):
            drift.append(path)
    return drift


def dotted(path: Sequence[str]) -> str:
    """``postgresql.parameters.max_connections``. (A custom parameter such as ``auto_explain.log_min_duration``
    has a dot of its own: the returned names are for people and assertions, the PATCH body is built from paths.)"""
    return ".".join(path)


def value_at(doc: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(doc, Mapping) or key not in doc:
            return MISSING
        doc = doc[key]
    return doc


def nested(paths: Sequence[Path], source: Mapping[str, Any]) -> Dict[str, Any]:
    """The values of ``source`` at ``paths`` as a nested document (paths ``source`` lacks are left out)."""
    doc: Dict[str, Any] = {}
    for path in paths:
        value = value_at(source, path)
        if value is MISSING:
            continue
        section = doc
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    return doc


def merged(doc: Mapping[str, Any], patch: Mapping[str, Any]) -> Dict[str, Any]:
    """``doc`` with ``patch`` merged in as ``PATCH /config`` merges it (sections key by key, a null removes)."""
    out = dict(doc)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# -- applying the dynamic configuration ------------------------------------------------------------------


@dataclass
class ApplyLook(Watched):
    """One look after a PATCH: each member's ``GET /patroni`` answer (or why there is none), and who has applied it."""

    members: List[str]
    statuses: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    applied: List[str] = field(default_factory=list)

    def waiting_for(self) -> List[str]:
        return [name for name in self.members if name not in self.applied]


class ApplyTracker:
    """Counts, per member, how often its ``dcs_last_seen`` moved on since the first look (see APPLIED_AFTER_MOVES)."""

    def __init__(self, moves_needed: int = APPLIED_AFTER_MOVES):
        self.moves_needed = moves_needed
        self.last: Dict[str, int] = {}
        self.moves: Dict[str, int] = {}

    def record(self, name: str, last_seen: Optional[int]) -> None:
        if last_seen is None:
            return
        if name not in self.last:
            self.last[name], self.moves[name] = last_seen, 0
        elif last_seen > self.last[name]:
            self.last[name] = last_seen
            self.moves[name] += 1

    def applied(self, name: str) -> bool:
        return self.moves.get(name, 0) >= self.moves_needed


def _with_live_pending(cluster: ClusterView, statuses: Mapping[str, Mapping[str, Any]]) -> ClusterView:
    """The cluster view with each member's pending_restart from its own ``GET /patroni`` where one was read: the
    flag in ``GET /cluster`` is what the member last wrote to the DCS, one HA loop behind."""
    members = [replace(m, pending_restart=bool(statuses[m.name].get("pending_restart")))
               if m.name in statuses else m for m in cluster.members]
    return replace(cluster, members=members)


def wait_until_applied(client: PatroniClient, members: Sequence[Member], timeout: float,
                       poll_interval: float = 1.0) -> ApplyLook:
    """Look at every member until each has applied the configuration written just before, or ``timeout`` passes;
    returns the last look (its ``gave_up`` says whether the time ran out). Never raises for an unreachable member:
    it stays unconfirmed.

    Only ``GET /patroni`` is asked meanwhile: it reports the member's state without reading the DCS, whereas the
    member that serves ``GET /cluster`` (or ``GET /config``) reads the DCS for it and so moves its own
    ``dcs_last_seen`` without running an HA loop."""
    tracker = ApplyTracker()

    def observe() -> ApplyLook:
        look = ApplyLook([m.name for m in members])
        for member in members:
            try:
                status = client.member_status(member)
            except (HttpClientError, PatroniError) as err:
                look.errors[member.name] = str(err)
                continue
            look.statuses[member.name] = status
            tracker.record(member.name, _int_or_none(status.get("dcs_last_seen")))
        look.applied = [m.name for m in members if tracker.applied(m.name)]
        return look

    return watch(observe, lambda look: not look.waiting_for(), timeout, poll_interval, client.clock).stamped()


@dataclass
class ConfigResult:
    drift: List[Path]
    changed: bool
    before: Dict[str, Any]
    after: Dict[str, Any]
    config: Dict[str, Any]
    cluster: ClusterView
    applied: Optional[List[str]] = None
    unconfirmed: List[str] = field(default_factory=list)
    checks: int = 0
    waited: float = 0.0

    @property
    def pending_restart(self) -> List[str]:
        return [m.name for m in self.cluster.members if m.pending_restart]

    def to_dict(self) -> Dict[str, Any]:
        facts = self.cluster.to_dict()
        facts.update({
            "changed": self.changed,
            "drift": [dotted(p) for p in self.drift],
            "config": self.config,
            "pending_restart": self.pending_restart,
            "applied": self.applied,
            "unconfirmed": list(self.unconfirmed),
            "checks": self.checks,
            "waited": round(self.waited, 3),
        })
        return facts


# Attempt outcomes (http_client.UrllibTransport) of requests that certainly did not arrive, and HTTP answers.
NOT_ARRIVED = ("connection refused", "name resolution failed", "TLS error", "HTTP ")


def _may_have_arrived(err: HttpClientError) -> bool:
    """Whether a request that failed on every attempt may still have reached Patroni (a timeout, a reset)."""
    cause = err.__cause__
    if isinstance(cause, TransportError):
        return cause.reached_server
    return any(not a.outcome.startswith(NOT_ARRIVED) for a in err.attempts)


def apply_dynamic_config(client: PatroniClient, wanted: Mapping[str, Any], check_mode: bool = False,
                         apply_timeout: float = 0.0, poll_interval: float = 1.0) -> ConfigResult:
    """Bring the DCS's dynamic configuration in step with ``wanted``; return what drifted and the cluster after.

    Only drifting settings are PATCHed, and nothing is sent without drift or in check mode. With ``apply_timeout``
    and a PATCH, waits until every member has applied it (``wait_until_applied``) and takes each member's
    pending_restart from its own status; otherwise the cluster is read once. Raises ChangeError (with the facts
    known so far) or HttpClientError when nothing was written yet."""
    current = client.config()
    drift = config_drift(wanted, current)
    before, after = nested(drift, current), nested(drift, wanted)
    if not drift or check_mode:
        return ConfigResult(drift, bool(drift), before, after, current, client.cluster())

    body = nested(drift, wanted)
    # A wanted null removes the setting: nested() keeps None values, so the PATCH carries them.
    try:
        written = client.patch_config(body)
    except HttpClientError as err:
        facts = {"changed": False, "drift": [dotted(p) for p in drift]}
        if err.response is not None:
            raise ChangeError("Patroni refused to change the dynamic configuration (%s) (HTTP %d: %s). %s" % (
                ", ".join(dotted(p) for p in drift), err.response.status, excerpt(err.response.body), err),
                facts) from err
        facts["changed"] = _may_have_arrived(err)  # say so rather than claim nothing happened
        raise ChangeError("could not change the dynamic configuration (%s)%s: %s" % (
            ", ".join(dotted(p) for p in drift), "; it may have been written" if facts["changed"] else "", err),
            facts) from err

    written = written or merged(current, body)  # Patroni answers with the new configuration; this is a fallback
    drifted = [dotted(p) for p in drift]
    try:
        cluster = client.cluster()
    except HttpClientError as err:
        raise ChangeError("the dynamic configuration was changed (%s), but the cluster could not be read afterwards: "
                          "%s" % (", ".join(drifted), err), {"changed": True, "drift": drifted, "config": written}) \
            from err
    if apply_timeout <= 0:
        return ConfigResult(drift, True, before, after, written, cluster)

    look = wait_until_applied(client, cluster.members, apply_timeout, poll_interval)
    try:
        cluster = client.cluster()  # roles may have moved meanwhile (synchronous_node_count, ...)
    except HttpClientError:
        pass  # the view from before the wait still names every member and its role
    return ConfigResult(drift, True, before, after, written, _with_live_pending(cluster, look.statuses),
                        applied=list(look.applied), unconfirmed=look.waiting_for(), checks=look.checks,
                        waited=look.waited)


# -- restarting one member --------------------------------------------------------------------------------


@dataclass
class RestartResult:
    member: str
    role: str
    state: str
    pending_restart: bool
    changed: bool
    pending_restart_reason: Optional[Dict[str, Any]] = None
    answer: str = ""
    seconds: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"member": self.member, "role": self.role, "state": self.state, "pending_restart": self.pending_restart,
                "pending_restart_reason": self.pending_restart_reason, "changed": self.changed, "answer": self.answer,
                "seconds": self.seconds}


NOT_PENDING = "restart conditions are not satisfied"


def _restarted(status: Optional[Mapping[str, Any]], started_before: Any, restart_pending: bool) -> bool:
    """Whether a member's status shows PostgreSQL running again after a restart we may have caused."""
    if not status or status.get("state") != "running":
        return False
    if restart_pending and status.get("pending_restart"):
        return False
    return started_before is None or status.get("postmaster_start_time") != started_before


def restart_member(client: PatroniClient, name: str, restart_pending: bool = True, check_mode: bool = False,
                   timeout: float = 120.0, poll_interval: float = 2.0) -> RestartResult:
    """Restart PostgreSQL on member ``name`` through its own Patroni, which knows how to do it safely.

    With ``restart_pending`` only when the member says a restart is pending (its ``GET /patroni``; the cluster
    view when that cannot be read); ``changed`` is False when none is. Check mode says whether it would restart.
    Raises ChangeError with a sentence that names the member and the reason, or HttpClientError when the cluster
    cannot be read at all."""
    cluster = client.cluster()
    member: Optional[Member] = cluster.member(name)
    if member is None:
        raise ChangeError("cannot restart PostgreSQL on %s: it is not a member of the cluster (members: %s)"
                          % (name, cluster.describe()), {"member": name, "changed": False}, cluster)
    try:
        status: Optional[Dict[str, Any]] = client.member_status(member)
    except (HttpClientError, PatroniError):
        status = None  # the restart request below says why, if one is sent
    pending = bool(status.get("pending_restart")) if status is not None else member.pending_restart
    reason = status.get("pending_restart_reason") if status is not None else None
    result = RestartResult(member=name, role=member.role, state=member.state, pending_restart=pending,
                           changed=pending or not restart_pending,
                           pending_restart_reason=dict(reason) if isinstance(reason, Mapping) else None)
    if not result.changed:
        result.answer = "no restart pending"
        return result
    if check_mode:
        return result

    facts = {"member": name, "role": member.role, "changed": False}
    clock = client.clock
    start = clock.now()
    try:
        code, text = client.restart(member, restart_pending=restart_pending, timeout=timeout)
    except HttpClientError as err:
        if err.response is not None:
            hint = "; check the REST API username and password" if err.response.status in (401, 403) else ""
            raise ChangeError("could not restart PostgreSQL on %s: its Patroni refused (HTTP %d: %s)%s. %s" % (
                name, err.response.status, excerpt(err.response.body), hint, err), facts, cluster) from err
        cause = err.__cause__
        if not (isinstance(cause, TransportError) and cause.reached_server):
            raise ChangeError("could not restart PostgreSQL on %s: its REST API did not take the request. %s"
                              % (name, err), facts, cluster) from err
        # Sent, but no answer in time: the restart may be under way. Look at the member before judging.
        return _confirm_restart(client, member, result, status, restart_pending, err, start, timeout, poll_interval)

    if code == 503:
        if NOT_PENDING in text and restart_pending:
            result.changed, result.answer = False, "no restart pending (Patroni: %s)" % text
            return result
        why = "another operation is under way on it" if "already in progress" in text else "Patroni could not do it"
        raise ChangeError("could not restart PostgreSQL on %s: %s (HTTP 503: %s)" % (name, why, text or "no text"),
                          facts, cluster)
    result.answer = text
    result.seconds = round(clock.now() - start, 3)
    return result


def _confirm_restart(client: PatroniClient, member: Member, result: RestartResult,
                     status: Optional[Mapping[str, Any]], restart_pending: bool, err: HttpClientError, start: float,
                     timeout: float, poll_interval: float) -> RestartResult:
    """After a restart request that got no answer: watch the member until it runs a restarted PostgreSQL (a new
    postmaster start time, no restart pending any more), or fail saying what was last seen."""
    clock = client.clock
    started_before = status.get("postmaster_start_time") if status is not None else None

    def observe() -> Optional[Dict[str, Any]]:
        try:
            return client.member_status(member)
        except (HttpClientError, PatroniError):
            return None

    seen = watch(observe, lambda s: _restarted(s, started_before, restart_pending),
                 max(0.0, timeout - (clock.now() - start)), poll_interval, clock)
    if not seen.held:
        last = seen.last
        raise ChangeError("could not confirm a restart of PostgreSQL on %s: the request got no answer, and %.0f s "
                          "after it %s was not running a restarted PostgreSQL (last look: %s). %s" % (
                              member.name, clock.now() - start, member.name,
                              "state %s" % last.get("state") if last else "no answer", err),
                          {"member": member.name, "role": member.role, "changed": True}) from err
    result.answer = "no answer to the restart request; %s was seen running a restarted PostgreSQL afterwards" \
        % member.name
    result.seconds = round(clock.now() - start, 3)
    return result
