# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for Patroni's REST API, and pure functions that judge a cluster snapshot.

What Patroni 3.0.2 (Debian 12's package) answers, as read in Patroni's own sources (patroni/patroni,
``patroni/api.py`` and ``patroni/utils.py`` of the 3.0 line) and release notes (``docs/releases.rst``):

``GET /cluster`` (``cluster_as_json``)::

    {"members": [{"name": "pg1", "role": "leader", "state": "running",
                  "api_url": "http://10.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432,
                  "timeline": 3, "tags": {...}, "pending_restart": true},
                 {"name": "pg2", "role": "sync_standby" | "replica", "state": "running", ..., "lag": 0},
                 {"name": "pg3", ..., "lag": "unknown"}],
     "pause": true,                                              # only when paused
     "scheduled_switchover": {"at": "...", "from": "pg1", "to": "pg2"}}   # only when scheduled

- ``role`` is ``leader`` (``standby_leader`` in a standby cluster), ``sync_standby`` or ``replica``;
  Patroni 4 adds ``quorum_standby``.
- ``state`` is the member's PostgreSQL state as Patroni sees it: ``running``, ``starting``, ``stopped``,
  ``stopping``, ``restarting``, ``crashed``, ``creating replica``, ... In 3.0.2 a healthy replica says
  ``running``: the ``streaming`` / ``in archive recovery`` replica states only appeared in Patroni 3.0.4
  ("Make the replication status of standby nodes visible"). So on 3.0.2 whether a replica streams is read
  from the leader's ``GET /patroni``, whose ``replication`` list is the leader's ``pg_stat_replication``
  (``usename``, ``application_name``, ``client_addr``, ``state``, ``sync_state``, ``sync_priority``); Patroni
  sets ``application_name`` in ``primary_conninfo`` to the member name.
- ``lag`` (not on the leader) is in bytes: the leader's last WAL position in the DCS minus the member's
  ``xlog_location``, 0 when the member is ahead, the string ``"unknown"`` when the member has not published
  a position. The leader's position in the DCS is refreshed once per ``loop_wait``, so lag is approximate.
- ``host``/``port`` come from ``postgresql.connect_address``; ``api_url`` from ``restapi.connect_address``
  and already ends in ``/patroni``.

``POST /switchover`` with ``{"leader": ..., "candidate": ..., "scheduled_at": ...}`` (``do_POST_failover``):

- 400 ``Switchover could be performed only from a specific leader`` when ``leader`` is missing;
- 412 when the switchover is not possible: ``leader name does not match``, ``candidate does not exists``,
  ``candidate name does not match with sync_standby`` (synchronous_mode on: a given candidate must be a sync
  standby; without a candidate Patroni picks among sync standbys and answers ``switchover is not possible:
  can not find sync_standby`` when there is none), ``... no good candidates have been found``;
- 401/403 when basic auth or the allowlist refuse us;
- otherwise Patroni writes the ``/failover`` key and polls the DCS for up to ``2 * max(10, loop_wait)`` s:
  200 ``Successfully switched over to "pg2"`` (or ``Switched over to "pg3" instead of "pg2"``),
  503 ``Switchover failed`` (the key vanished, the leader did not change), 503 ``Switchover status unknown``
  (still in progress when Patroni stopped polling), 503 ``failed to write switchover key into DCS``;
  with ``scheduled_at``: 202 ``Switchover scheduled``.

``PATCH /config`` (``do_PATCH_config``) merges the body into the dynamic configuration in the DCS (a ``null``
removes a key) and answers 200 with the whole new configuration; 409 when the DCS key changed under it. Members
apply it in their next HA loop; a parameter that needs a restart then shows as ``pending_restart`` (in a
member's ``GET /patroni`` at once, in ``GET /cluster`` after the member's next loop).

``POST /restart`` (``do_POST_restart``) is served by the member it restarts and answers when PostgreSQL is up
again: 200 ``restarted successfully``; 503 ``restart conditions are not satisfied`` (the body asked for
``restart_pending`` and none is pending: Patroni tests for the key's presence, not its value), ``restart
already in progress`` / ``reinitialize already in progress``, ``restart failed``, ``postgres is still
starting``; 400 for a bad body; 401/403 when authentication or the allowlist refuse us.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    ServiceClient,
    Transport,
    TransportError,
    basic_auth,
    endpoint_list,
    excerpt,
    split_url,
    tls_argument_spec,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    PollTimeout,
    RetryPolicy,
    Watched,
    poll_until,
    watch,
)

COMPONENT = "Patroni REST API"
ACCEPT_JSON = {"Accept": "application/json"}
LEADER_ROLES = ("leader", "standby_leader")
SYNC_ROLES = ("sync_standby", "quorum_standby")
REPLICA_ROLES = ("replica", *SYNC_ROLES)
# "running" is what every healthy member reports up to 3.0.3; from 3.0.4 a streaming replica says "streaming".
RUNNING_STATES = ("running", "streaming")
NOT_STREAMING_STATES = ("in archive recovery",)
TRUE_STRINGS = ("on", "true", "yes", "1", "quorum")


class PatroniError(Exception):
    """Patroni answered, but not what we need (bad document, refused switchover, no new leader).

    ``cluster`` is the last cluster view observed, when there is one, so a module can report it."""

    def __init__(self, message: str, cluster: Optional[ClusterView] = None):
        super().__init__(message)
        self.cluster = cluster


# -- the /cluster document ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    state: str
    api_url: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    timeline: Optional[int] = None
    lag: Optional[int] = None  # bytes behind the leader; None on the leader and when Patroni says "unknown"
    lag_unknown: bool = False
    pending_restart: bool = False
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def is_replica(self) -> bool:
        return self.role in REPLICA_ROLES

    @property
    def is_sync(self) -> bool:
        return self.role in SYNC_ROLES

    @property
    def is_running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def nofailover(self) -> bool:
        return _truthy(self.tags.get("nofailover"))

    def describe(self) -> str:
        return "%s (%s)" % (self.name, self.state or "no state")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "host": self.host,
            "port": self.port,
            "api_url": self.api_url,
            "timeline": self.timeline,
            "lag_bytes": self.lag,
            "pending_restart": self.pending_restart,
            "tags": dict(self.tags),
        }


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in TRUE_STRINGS
    return bool(value)


def _int_or_none(value: Any) -> Optional[int]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_member(raw: Any) -> Member:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ValueError("a member entry without a name: %r" % (raw,))
    lag_value = raw.get("lag")
    lag = _int_or_none(lag_value)
    tags = raw.get("tags")
    return Member(
        name=raw["name"],
        role=str(raw.get("role") or ""),
        state=str(raw.get("state") or ""),
        api_url=raw.get("api_url"),
        host=raw.get("host"),
        port=_int_or_none(raw.get("port")),
        timeline=_int_or_none(raw.get("timeline")),
        lag=lag,
        lag_unknown="lag" in raw and lag is None,
        pending_restart=bool(raw.get("pending_restart")),
        tags=dict(tags) if isinstance(tags, Mapping) else {},
    )


@dataclass
class ClusterView:
    members: List[Member]
    paused: bool = False
    scheduled_switchover: Optional[Dict[str, Any]] = None
    endpoint: str = ""

    @property
    def leader(self) -> Optional[Member]:
        return next((m for m in self.members if m.is_leader), None)

    @property
    def replicas(self) -> List[Member]:
        return [m for m in self.members if m.is_replica]

    @property
    def sync_standbys(self) -> List[Member]:
        return [m for m in self.members if m.is_sync]

    def member(self, name: str) -> Optional[Member]:
        return next((m for m in self.members if m.name == name), None)

    def describe(self) -> str:
        if not self.members:
            return "no members"
        return ", ".join("%s (%s, %s)" % (m.name, m.role or "no role", m.state or "no state") for m in self.members)

    def to_dict(self) -> Dict[str, Any]:
        leader = self.leader
        return {
            "members": [m.to_dict() for m in self.members],
            "leader": leader.name if leader else None,
            "replicas": [m.name for m in self.replicas],
            "sync_standbys": [m.name for m in self.sync_standbys],
            "timeline": leader.timeline if leader else None,
            "paused": self.paused,
            "scheduled_switchover": self.scheduled_switchover,
        }


def parse_cluster(doc: Any, endpoint: str = "") -> ClusterView:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("members", []), list):
        raise ValueError("not a Patroni /cluster document (no members list): %s" % excerpt(repr(doc).encode()))
    members = [parse_member(m) for m in doc.get("members", [])]
    scheduled = doc.get("scheduled_switchover")
    return ClusterView(members=sorted(members, key=lambda m: m.name), paused=bool(doc.get("pause")),
                       scheduled_switchover=dict(scheduled) if isinstance(scheduled, Mapping) else None,
                       endpoint=endpoint)


@dataclass(frozen=True)
class ReplicationRow:
    """One row of the leader's pg_stat_replication, as the leader's ``GET /patroni`` reports it."""

    application_name: str
    state: str
    sync_state: str = ""
    client_addr: Optional[str] = None
    usename: Optional[str] = None
    sync_priority: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"application_name": self.application_name, "state": self.state, "sync_state": self.sync_state,
                "client_addr": self.client_addr, "usename": self.usename, "sync_priority": self.sync_priority}


def parse_replication(status_doc: Any) -> List[ReplicationRow]:
    """The ``replication`` list of a member's ``GET /patroni`` answer (absent when no WAL sender runs)."""
    if not isinstance(status_doc, Mapping):
        raise ValueError("not a Patroni status document")
    rows = status_doc.get("replication") or []
    return [ReplicationRow(application_name=str(r.get("application_name") or ""), state=str(r.get("state") or ""),
                           sync_state=str(r.get("sync_state") or ""), client_addr=r.get("client_addr"),
                           usename=r.get("usename"), sync_priority=_int_or_none(r.get("sync_priority")))
            for r in rows if isinstance(r, Mapping)]


# -- judging a snapshot ---------------------------------------------------------------------------------


def streaming_status(member: Member, replication: Optional[Sequence[ReplicationRow]],
                     replication_error: Optional[str] = None) -> Tuple[Optional[bool], str]:
    """Whether ``member`` streams WAL from the leader: (True/False/None for "cannot tell", why not)."""
    if member.state != "running":
        streams = member.state == "streaming"
        return streams, "" if streams else "is in state '%s', not streaming" % (member.state or "no state")
    # Patroni < 3.0.4 says "running" for every healthy replica: ask the leader's pg_stat_replication.
    if replication is None:
        return None, "is running, but whether it streams is unknown: the leader's replication view could not " \
                     "be read (%s)" % (replication_error or "no leader to ask")
    rows = [r for r in replication if r.application_name == member.name]
    upstream = member.tags.get("replicatefrom")
    if any(r.state == "streaming" for r in rows):
        verdict: Tuple[Optional[bool], str] = (True, "")
    elif rows:
        verdict = (False, "is running, but the leader's pg_stat_replication shows it in state '%s', not streaming"
                   % rows[0].state)
    elif upstream:
        verdict = (None, "replicates from %s (tag replicatefrom), so the leader's pg_stat_replication cannot "
                         "confirm it streams" % upstream)
    else:
        verdict = (False, "is running, but not streaming: the leader's pg_stat_replication has no row for it")
    return verdict


def replica_problems(member: Member, leader: Optional[Member], require_streaming: bool = False,
                     max_lag_bytes: Optional[int] = None,
                     replication: Optional[Sequence[ReplicationRow]] = None,
                     replication_error: Optional[str] = None) -> List[str]:
    """Sentences for what is wrong with one replica (empty when it is healthy)."""
    problems: List[str] = []
    if not member.is_running:
        problems.append("replica %s is in state '%s', not %s" % (
            member.name, member.state or "no state", "streaming" if require_streaming else "running"))
        return problems
    if require_streaming:
        streams, why = streaming_status(member, replication, replication_error)
        if not streams:
            prefix = "cannot tell whether replica %s streams: it " if streams is None else "replica %s "
            problems.append((prefix % member.name) + why)
    if max_lag_bytes is not None:
        if member.lag is None:
            problems.append("replica %s has an unknown lag (Patroni has no WAL position for it), the allowed "
                            "maximum is %d bytes" % (member.name, max_lag_bytes))
        elif member.lag > max_lag_bytes:
            problems.append("replica %s lags %d bytes, more than the allowed %d"
                            % (member.name, member.lag, max_lag_bytes))
    if leader is not None and leader.timeline is not None and member.timeline is not None \
            and member.timeline != leader.timeline:
        problems.append("replica %s is on timeline %d, the leader %s on timeline %d"
                        % (member.name, member.timeline, leader.name, leader.timeline))
    return problems


def assess(members: Sequence[Member], min_replicas: int = 0, require_streaming: bool = False,
           max_lag_bytes: Optional[int] = None, require_sync: bool = False, require_leader: bool = True,
           replication: Optional[Sequence[ReplicationRow]] = None,
           replication_error: Optional[str] = None) -> List[str]:
    """Every problem of a cluster snapshot as a sentence a human understands; empty means healthy.

    ``replication`` is the leader's pg_stat_replication (see ``streaming_status``), needed on Patroni < 3.0.4
    to tell a streaming replica from one that only runs; ``replication_error`` says why it is missing."""
    problems: List[str] = []
    leader = next((m for m in members if m.is_leader), None)
    if leader is None:
        if require_leader:
            if members:
                problems.append("no leader: members " + ", ".join(m.describe() for m in members))
            else:
                problems.append("no leader: no member is registered in the DCS")
    elif leader.state != "running":
        problems.append("leader %s is in state '%s', not running" % (leader.name, leader.state or "no state"))

    replicas = [m for m in members if m.is_replica]
    healthy: List[Member] = []
    for member in replicas:
        found = replica_problems(member, leader, require_streaming, max_lag_bytes, replication, replication_error)
        problems.extend(found)
        if not found:
            healthy.append(member)

    if len(healthy) < min_replicas:
        problems.append("%d healthy replica%s%s, %d required" % (
            len(healthy), "" if len(healthy) == 1 else "s",
            " (%s)" % ", ".join(m.name for m in healthy) if healthy else "", min_replicas))

    if require_sync:
        sync = [m for m in replicas if m.is_sync]
        if not sync:
            problems.append("no synchronous standby: %s; is synchronous_mode on?" % (
                "replicas " + ", ".join("%s (%s)" % (m.name, m.role) for m in replicas) if replicas
                else "there are no replicas"))
        elif not any(m in healthy for m in sync):
            problems.append("no healthy synchronous standby: " + ", ".join(
                "%s (%s, %s)" % (m.name, m.role, m.state or "no state") for m in sync))
    return problems


# -- switchover planning ----------------------------------------------------------------------------------


def candidate_problem(member: Member) -> Optional[str]:
    """Why ``member`` is not a healthy switchover target, or None when it is one."""
    if not member.is_replica:
        return "it is the %s" % (member.role or "member without a role")
    if not member.is_running:
        return "it is in state '%s'" % (member.state or "no state")
    if member.nofailover:
        return "it carries the nofailover tag"
    if member.lag_unknown:
        return "its lag is unknown"
    return None


def choose_candidate(cluster: ClusterView, requested: Optional[str] = None, require_healthy: bool = True,
                     synchronous_mode: Optional[bool] = None) -> Member:
    """The member to switch over to; raises PatroniError with a sentence when there is none.

    Without ``requested``: the healthy replica with the smallest lag (a sync standby when synchronous mode
    is on, since Patroni 3.0 only switches over to one then). ``synchronous_mode`` None means the dynamic
    configuration could not be read: then it is taken as on when any member is a sync standby."""
    leader = cluster.leader
    sync_on = synchronous_mode if synchronous_mode is not None else bool(cluster.sync_standbys)
    if requested:
        member = cluster.member(requested)
        if member is None:
            raise PatroniError("candidate %s is not a member of the cluster: %s" % (requested, cluster.describe()),
                               cluster)
        if leader is not None and member.name == leader.name:
            raise PatroniError("candidate %s is already the leader" % requested, cluster)
        if sync_on and not member.is_sync:
            raise PatroniError(
                "candidate %s is a %s, but synchronous_mode is on and Patroni only switches over to a synchronous "
                "standby (sync standbys: %s)" % (requested, member.role or "member without a role",
                                                 ", ".join(m.name for m in cluster.sync_standbys) or "none"), cluster)
        why = candidate_problem(member)
        if why and require_healthy:
            raise PatroniError("candidate %s is not healthy: %s" % (requested, why), cluster)
        return member

    pool = cluster.sync_standbys if sync_on else cluster.replicas
    healthy = [m for m in pool if candidate_problem(m) is None]
    if not healthy:
        if sync_on and not pool:
            raise PatroniError("no healthy replica to switch over to: synchronous_mode is on and no member is a "
                               "synchronous standby (%s)" % cluster.describe(), cluster)
        raise PatroniError("no healthy replica to switch over to: %s" % (", ".join(
            "%s (%s)" % (m.name, candidate_problem(m)) for m in pool) or "the cluster has no replicas"), cluster)
    return sorted(healthy, key=lambda m: (m.lag if m.lag is not None else 2 ** 63, m.name))[0]


@dataclass
class SwitchoverResult:
    old_leader: str
    candidate: str
    changed: bool
    new_leader: Optional[str] = None
    seconds: Optional[float] = None
    answer: str = ""
    synchronous_mode: Optional[bool] = None
    cluster: Optional[ClusterView] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"old_leader": self.old_leader, "candidate": self.candidate, "new_leader": self.new_leader,
                "seconds": self.seconds, "changed": self.changed, "answer": self.answer,
                "synchronous_mode": self.synchronous_mode}


# -- the client -----------------------------------------------------------------------------------------


class PatroniClient(ServiceClient):
    """Reads through a resilient HttpClient over every member's REST API; one POST for switchover.

    ``write_timeout`` bounds the switchover POST: Patroni answers it only after it has polled the DCS for
    the new leader (up to ``2 * max(10, loop_wait)`` seconds), so it needs far longer than a read."""

    component = COMPONENT

    def __init__(self, endpoints: Sequence[str], username: Optional[str] = None, password: Optional[str] = None,
                 transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6, write_timeout: float = 60.0):
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.http = self.client_for(endpoints, headers=ACCEPT_JSON)
        # Writes: one attempt per endpoint at most, and only while a connection is refused (see switchover()).
        self.writer = self.client_for(endpoints, policy=RetryPolicy(max_attempts=len(endpoints), base_delay=0.2,
                                                                    max_delay=1.0, deadline=write_timeout + 5.0),
                                      request_timeout=write_timeout, headers=ACCEPT_JSON)
        self.auth: Dict[str, str] = basic_auth(username, password)

    def cluster(self) -> ClusterView:
        response = self.http.request("GET", "/cluster")
        try:
            return parse_cluster(response.json(), response.url)
        except ValueError as err:
            raise HttpClientError("%s: %s answered GET /cluster with a document we cannot read (%s): %s" % (
                COMPONENT, response.url, err, excerpt(response.body)), [], self.http.breaker_states(),
                response) from err

    def leader(self) -> Optional[Member]:
        return self.cluster().leader

    def config(self) -> Dict[str, Any]:
        """The dynamic configuration (``GET /config``): synchronous_mode, ttl, loop_wait, ..."""
        doc = self.http.get_json("/config")
        return dict(doc) if isinstance(doc, Mapping) else {}

    def synchronous_mode(self) -> Optional[bool]:
        """Whether synchronous_mode is on; None when the dynamic configuration cannot be read."""
        try:
            return _truthy(self.config().get("synchronous_mode"))
        except HttpClientError:
            return None

    def _member_http(self, member: Member, policy: RetryPolicy,
                     request_timeout: Optional[float] = None) -> Tuple[HttpClient, str]:
        """A client for one member's own REST API (its ``api_url``), and the path of its status document."""
        if not member.api_url:
            raise PatroniError("member %s publishes no api_url" % member.name)
        base, path = split_url(member.api_url, "/patroni")
        return self.client_for([base], "%s on %s" % (COMPONENT, member.name), policy, request_timeout,
                               ACCEPT_JSON), path

    def member_status(self, member: Member) -> Dict[str, Any]:
        """``GET /patroni`` on one member, through its ``api_url`` (which already ends in /patroni)."""
        client, path = self._member_http(member, RetryPolicy(max_attempts=3, deadline=min(self.deadline, 15.0)))
        doc = client.get_json(path)
        if not isinstance(doc, Mapping):
            raise PatroniError("member %s answered GET /patroni with something that is not an object" % member.name)
        return dict(doc)

    def patch_config(self, changes: Mapping[str, Any]) -> Dict[str, Any]:
        """PATCH /config with ``changes``; returns the dynamic configuration Patroni answers with.

        Sent like a read (any member, retried after a timeout or a 502/503/504): merging the same values twice
        leaves the same configuration, so a repeat cannot do harm. Other statuses raise HttpClientError."""
        response = self.http.request("PATCH", "/config", json_body=dict(changes), headers=self.auth,
                                     idempotent=True)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        return dict(doc) if isinstance(doc, Mapping) else {}

    def restart(self, member: Member, restart_pending: bool = True, timeout: float = 120.0) -> Tuple[int, str]:
        """POST /restart on ``member`` itself; returns (status, Patroni's text) for 200 and 503.

        ``restart_pending`` restarts only when the member has a restart pending (Patroni tests for the key, so it
        is left out of the body otherwise). Repeated only when the connection was refused before anything was
        sent: a restart whose answer was lost may be under way. Other statuses raise HttpClientError."""
        client, _path = self._member_http(
            member, RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, deadline=timeout + 10.0),
            request_timeout=timeout)
        body: Dict[str, Any] = {"restart_pending": True} if restart_pending else {}
        response = client.request("POST", "/restart", json_body=body, headers=self.auth, expected=(200, 503),
                                  idempotent=False)
        return response.status, " ".join(response.text.split())

    def replication(self, cluster: ClusterView) -> Tuple[Optional[List[ReplicationRow]], Optional[str]]:
        """The leader's pg_stat_replication rows, or (None, why not)."""
        leader = cluster.leader
        if leader is None:
            return None, "there is no leader"
        try:
            return parse_replication(self.member_status(leader)), None
        except (HttpClientError, PatroniError, ValueError) as err:
            return None, str(err)

    def switchover(self, leader: str, candidate: Optional[str] = None,
                   scheduled_at: Optional[str] = None) -> Tuple[int, str]:
        """POST /switchover; returns (status, Patroni's text) for 200, 202 and 503.

        Not idempotent, deliberately: Patroni writes a /failover key into the DCS and every HA loop acts on it.
        Sent twice, a second request could demote the leader we just promoted, or be refused (412 "leader name
        does not match") after the first one worked. So the request is repeated only when the connection was
        refused before anything was sent, never after a timeout, a reset or a 502/503/504. A 503 is still
        returned to the caller: its text says whether the switchover failed or is merely unconfirmed. Any other
        status (400, 401, 403, 412, 422, ...) raises HttpClientError with Patroni's reason in it."""
        body: Dict[str, Any] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        if scheduled_at:
            body["scheduled_at"] = scheduled_at
        response = self.writer.request("POST", "/switchover", json_body=body, headers=self.auth,
                                       expected=(200, 202, 503), idempotent=False)
        return response.status, " ".join(response.text.split())


def patroni_argument_spec(auth: bool = True) -> Dict[str, Dict[str, Any]]:
    """Argument spec of the options every Patroni module shares: ``endpoints`` (doc fragment
    mlops.mlflow_ha.patroni) and, with ``auth``, ``username`` and ``password`` (mlops.mlflow_ha.patroni.auth)."""
    spec: Dict[str, Dict[str, Any]] = dict(endpoints=dict(type="list", elements="str", required=True))
    if auth:
        spec.update(username=dict(type="str"), password=dict(type="str", no_log=True))
    return spec


def change_module_kwargs(options: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """AnsibleModule's keyword arguments for a Patroni module that changes the cluster: the TLS options,
    patroni_argument_spec() and the module's own ``options``; a username only with a password, a client key only
    with a certificate; check mode supported."""
    return dict(
        argument_spec=dict(**tls_argument_spec(), **patroni_argument_spec(), **options),
        required_together=[("username", "password")],
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )


def client_from_params(params: Mapping[str, Any], request_timeout: float, deadline: float, max_attempts: int = 6,
                       write_timeout: float = 60.0, transport: Optional[Transport] = None,
                       clock: Optional[Clock] = None) -> PatroniClient:
    """The PatroniClient for a module's parameters (patroni_argument_spec and the TLS options); the timeouts come
    from the module, whose options for them differ. Without ``auth`` options the client sends no credentials."""
    return PatroniClient(
        endpoint_list(params["endpoints"]),
        username=params.get("username"),
        password=params.get("password"),
        transport=transport or transport_from_params(params),
        clock=clock,
        request_timeout=request_timeout,
        deadline=deadline,
        max_attempts=max_attempts,
        write_timeout=write_timeout,
    )


def _new_leader_running(cluster: Optional[ClusterView], old_leader: str) -> bool:
    if cluster is None or cluster.leader is None:
        return False
    return cluster.leader.name != old_leader and cluster.leader.state == "running"


def perform_switchover(client: PatroniClient, leader: Optional[str] = None, candidate: Optional[str] = None,
                       timeout: float = 60.0, require_healthy_candidate: bool = True, check_mode: bool = False,
                       poll_interval: float = 1.0) -> SwitchoverResult:
    """Plan a switchover from the current snapshot, ask Patroni for it, wait until the new leader runs.

    ``seconds`` is the time from sending the POST to the first /cluster view with a new leader in state
    running. Raises PatroniError (with the last observed cluster) or HttpClientError."""
    cluster = client.cluster()
    current = cluster.leader
    if current is None:
        raise PatroniError("no leader to switch over from: members %s" % (
            ", ".join(m.describe() for m in cluster.members) or "none"), cluster)
    if leader and leader != current.name:
        raise PatroniError("%s is not the leader: the leader is %s" % (leader, current.name), cluster)
    sync_mode = client.synchronous_mode()
    target = choose_candidate(cluster, candidate, require_healthy_candidate, sync_mode)
    result = SwitchoverResult(old_leader=current.name, candidate=target.name, changed=True,
                              synchronous_mode=sync_mode, cluster=cluster)
    if check_mode:
        return result

    clock = client.clock
    start = clock.now()
    last_error: List[str] = []
    try:
        status, text = client.switchover(current.name, target.name)
    except HttpClientError as err:
        if err.response is not None:
            raise PatroniError("Patroni refused the switchover from %s to %s (HTTP %d: %s). %s" % (
                current.name, target.name, err.response.status, excerpt(err.response.body), err), cluster) from err
        cause = err.__cause__
        if not (isinstance(cause, TransportError) and cause.reached_server):
            # Every attempt failed before the request was sent (refused, DNS, TLS): nothing can have happened.
            raise PatroniError("the switchover request from %s to %s reached no member: %s" % (
                current.name, target.name, err), cluster) from err
        # Sent, but no answer (timeout, reset): the switchover may or may not run. Look before judging.
        status, text = 0, str(err)
        last_error.append(text)
    result.answer = text
    if status == 503 and "unknown" not in text.lower():
        raise PatroniError("Patroni did not switch over from %s to %s: HTTP 503 %s" % (
            current.name, target.name, text), cluster)

    def observe() -> Optional[ClusterView]:
        try:
            return client.cluster()
        except HttpClientError as err:
            last_error.append(str(err))
            return None

    remaining = max(0.0, timeout - (clock.now() - start))
    try:
        seen, _waited = poll_until(observe, lambda c: _new_leader_running(c, current.name), remaining,
                                   poll_interval, "a new leader running", clock)
    except PollTimeout as err:
        last = err.last if isinstance(err.last, ClusterView) else None
        if last is not None:
            seen_text = last.describe()
        else:
            seen_text = "no answer (%s)" % (last_error[-1] if last_error else "none")
        raise PatroniError("no new leader was running %.1f s after the switchover request from %s to %s "
                           "(Patroni answered: %s); last observed: %s" % (
                               clock.now() - start, current.name, target.name, text or "nothing", seen_text),
                           last or cluster) from err
    result.cluster = seen
    result.new_leader = seen.leader.name if seen and seen.leader else None
    result.seconds = round(clock.now() - start, 3)
    return result


# -- waiting for health -----------------------------------------------------------------------------------


@dataclass
class HealthCheck(Watched):
    """One look at the cluster: the view (None when no endpoint answered), its problems, and how we got it."""

    cluster: Optional[ClusterView]
    problems: List[str]
    replication: Optional[List[ReplicationRow]] = None
    error: Optional[HttpClientError] = None

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> Dict[str, Any]:
        facts = self.cluster.to_dict() if self.cluster is not None else ClusterView([]).to_dict()
        facts.update({
            "healthy": self.healthy,
            "problems": list(self.problems),
            "replication": [r.to_dict() for r in self.replication] if self.replication is not None else None,
            "endpoint": self.cluster.endpoint if self.cluster is not None else None,
            "checks": self.checks,
            "waited": round(self.waited, 3),
            "gave_up": self.gave_up,
        })
        return facts


def check_health(client: PatroniClient, min_replicas: int = 0, require_streaming: bool = False,
                 max_lag_bytes: Optional[int] = None, require_sync: bool = False, require_leader: bool = True,
                 wait_timeout: float = 0.0, poll_interval: float = 2.0) -> HealthCheck:
    """Look at the cluster until it is healthy or ``wait_timeout`` passes; return the last look.

    An unreachable REST API is an observation too (its error text is the problem), so a wait survives
    Patroni restarting. The leader's replication view is read only when streaming is required."""

    def observe() -> HealthCheck:
        try:
            cluster = client.cluster()
        except HttpClientError as err:
            return HealthCheck(None, [str(err)], error=err)
        replication, replication_error = client.replication(cluster) if require_streaming else (None, None)
        problems = assess(cluster.members, min_replicas=min_replicas, require_streaming=require_streaming,
                          max_lag_bytes=max_lag_bytes, require_sync=require_sync, require_leader=require_leader,
                          replication=replication, replication_error=replication_error)
        return HealthCheck(cluster, problems, replication)

    return watch(observe, lambda h: h.healthy, wait_timeout, poll_interval, client.clock).stamped()
