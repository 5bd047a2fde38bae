# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for etcd's v3 JSON gateway, and a pure function that judges quorum and leadership.

Facts this relies on (etcd-io/etcd ``Documentation/dev-guide/api_grpc_gateway.md`` and ``rpc.proto``; Patroni's
own etcd3 DCS speaks to the same gateway, patroni/patroni ``patroni/dcs/etcd3.py``):

- etcd 3.4 serves the gateway under ``[CLIENT-URL]/v3/`` (and still ``/v3beta/``); 3.5 only ``/v3/``. Every
  call is a POST with a JSON body, also the reads.
- The gateway marshals with the protobuf field names (``header.cluster_id``, ``raft_term``,
  ``peerURLs``/``clientURLs``) and follows the proto3 JSON mapping: 64-bit integers (member ids, revisions,
  raft term and index, db size) are JSON *strings* ("12585971608760269493"), and fields with their zero
  value (false, 0, empty lists) are left out.
- ``POST /v3/cluster/member/list`` ``{}`` ->
  ``{"header": {"cluster_id": "...", "member_id": "...", "raft_term": "..."},
  "members": [{"ID": "...", "name": "etcd-1", "peerURLs": [...], "clientURLs": [...], "isLearner": true}]}``;
  a member that was added but never started has an empty name and no clientURLs. In 3.4 the list is served
  from the answering member's own view, so it answers without quorum.
- ``POST /v3/maintenance/status`` ``{}`` answers for the member that receives it: ``version``, ``dbSize``,
  ``leader`` (the id it believes leads, absent/0 when it knows none), ``raftIndex``, ``raftTerm``,
  ``raftAppliedIndex``, ``errors`` (alarms, e.g. NOSPACE), ``dbSizeInUse``, ``isLearner`` (the last four since 3.4).
- The gateway does not authenticate by TLS common name; client certificates still secure the connection.

Both calls only read, so they are sent as idempotent: a retry after a timeout is harmless.
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
    excerpt,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Clock

COMPONENT = "etcd"
API_PREFIX = "/v3"


def uint(value: Any) -> int:
    """A 64-bit integer from the gateway: a JSON string, or a number; absent means 0 (proto3 JSON)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ValueError("expected an integer, got %r" % (value,))
    return int(value)


def hex_id(value: int) -> str:
    """Member ids the way etcdctl prints them."""
    return format(value, "x")


@dataclass(frozen=True)
class EtcdMember:
    id: int
    name: str
    peer_urls: Tuple[str, ...] = ()
    client_urls: Tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def label(self) -> str:
        return self.name or hex_id(self.id)


@dataclass(frozen=True)
class EtcdStatus:
    member_id: int
    leader: int
    raft_term: int
    raft_index: int
    version: str = ""
    db_size: int = 0
    db_size_in_use: Optional[int] = None
    raft_applied_index: Optional[int] = None
    errors: Tuple[str, ...] = ()
    is_learner: bool = False


def parse_member_list(doc: Any) -> Tuple[int, List[EtcdMember]]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("members", []), list):
        raise ValueError("not a member list answer")
    header = doc.get("header") or {}
    members = []
    for raw in doc.get("members", []):
        if not isinstance(raw, Mapping):
            raise ValueError("a member entry is not an object: %r" % (raw,))
        members.append(EtcdMember(id=uint(raw.get("ID")), name=str(raw.get("name") or ""),
                                  peer_urls=tuple(raw.get("peerURLs") or ()),
                                  client_urls=tuple(raw.get("clientURLs") or ()),
                                  is_learner=bool(raw.get("isLearner"))))
    return uint(header.get("cluster_id")), members


def parse_status(doc: Any) -> EtcdStatus:
    if not isinstance(doc, Mapping):
        raise ValueError("not a status answer")
    header = doc.get("header") or {}
    in_use = doc.get("dbSizeInUse")
    applied = doc.get("raftAppliedIndex")
    return EtcdStatus(member_id=uint(header.get("member_id")), leader=uint(doc.get("leader")),
                      raft_term=uint(doc.get("raftTerm")), raft_index=uint(doc.get("raftIndex")),
                      version=str(doc.get("version") or ""), db_size=uint(doc.get("dbSize")),
                      db_size_in_use=uint(in_use) if in_use is not None else None,
                      raft_applied_index=uint(applied) if applied is not None else None,
                      errors=tuple(str(e) for e in doc.get("errors") or ()), is_learner=bool(doc.get("isLearner")))


@dataclass
class MemberState:
    """One member with its status, or why it gave none."""

    member: EtcdMember
    status: Optional[EtcdStatus] = None
    error: Optional[str] = None
    endpoint: Optional[str] = None

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def healthy(self) -> bool:
        return self.status is not None and not self.status.errors and self.error is None

    def reason(self) -> str:
        """Why the member is not healthy, as the end of a sentence after its name."""
        if self.error:
            return self.error
        if self.status is not None and self.status.errors:
            return "reports errors: " + "; ".join(self.status.errors)
        return "healthy"


@dataclass
class EtcdSnapshot:
    cluster_id: int
    members: List[MemberState] = field(default_factory=list)
    listed_by: str = ""

    def by_id(self, member_id: int) -> Optional[MemberState]:
        return next((s for s in self.members if s.member.id == member_id), None)


@dataclass
class QuorumReport:
    voting: int
    quorum: int
    healthy_count: int
    leader: Optional[EtcdMember]
    problems: List[str]


class EtcdClient(ServiceClient):
    """Member list through any of the given endpoints; status from each member at its own client URLs."""

    component = COMPONENT

    def __init__(self, endpoints: Sequence[str], transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6, member_attempts: int = 2, api_prefix: str = API_PREFIX):
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.member_attempts = member_attempts
        self.prefix = api_prefix.rstrip("/")
        self.http = self.client_for(endpoints)

    def _post(self, client: HttpClient, path: str) -> Tuple[Any, str]:
        response = client.request("POST", self.prefix + path, json_body={}, idempotent=True)
        return client.decode(response, "POST %s%s" % (self.prefix, path)), response.url

    def member_list(self) -> Tuple[int, List[EtcdMember], str]:
        """(cluster id, members, URL that answered)."""
        doc, url = self._post(self.http, "/cluster/member/list")
        try:
            cluster_id, members = parse_member_list(doc)
        except ValueError as err:
            raise HttpClientError("%s: %s answered the member list with a document we cannot read (%s): %s" % (
                COMPONENT, url, err, excerpt(repr(doc).encode())), [], self.http.breaker_states()) from err
        return cluster_id, members, url

    def member_client(self, member: EtcdMember) -> HttpClient:
        return self.probe_client(member.client_urls, "etcd member %s" % member.label, self.member_attempts)

    def status(self, member: EtcdMember) -> MemberState:
        """The member's own status; errors become the state's ``error`` text, never an exception."""
        if not member.client_urls:
            return MemberState(member, error="is not started (no client URLs)")
        client = self.member_client(member)
        try:
            doc, url = self._post(client, "/maintenance/status")
            status = parse_status(doc)
        except HttpClientError as err:
            return MemberState(member, error=err.last_outcome())
        except ValueError as err:
            return MemberState(member, error="answered a status we cannot read (%s)" % err)
        state = MemberState(member, status=status, endpoint=url)
        if status.member_id and status.member_id != member.id:
            state.error = "answered as member %s at %s: its client URL points at another member" % (
                hex_id(status.member_id), url)
        return state

    def snapshot(self) -> EtcdSnapshot:
        cluster_id, members, url = self.member_list()
        return EtcdSnapshot(cluster_id, [self.status(m) for m in members], url)


def quorum_of(voting: int) -> int:
    return voting // 2 + 1


def assess_quorum(snapshot: EtcdSnapshot, min_healthy: Optional[int] = None) -> QuorumReport:
    """Quorum and leadership of a snapshot, with a sentence per problem (empty when all is well).

    Learners do not vote, so they count neither for nor against quorum. ``min_healthy`` (default: quorum)
    asks for more healthy voting members than quorum needs, e.g. all of them before a rolling restart."""
    voters = [s for s in snapshot.members if not s.member.is_learner]
    quorum = quorum_of(len(voters))
    healthy = [s for s in voters if s.healthy]
    sick = [s for s in voters if not s.healthy]
    problems: List[str] = []
    sick_text = ", ".join("%s %s" % (s.member.label, s.reason()) for s in sick)

    if len(healthy) < quorum:
        problems.append("no quorum: %d of %d members answer (need %d)%s" % (
            len(healthy), len(voters), quorum, ": " + sick_text if sick_text else ""))
    elif min_healthy is not None and len(healthy) < min_healthy:
        problems.append("only %d of %d members are healthy, %d required: %s" % (
            len(healthy), len(voters), min_healthy, sick_text))
    else:
        # Enough members answer. A member that answers with an alarm (NOSPACE makes the whole cluster refuse
        # writes) or as the wrong member is still a problem; one that is merely down is not, while quorum and
        # min_healthy hold: it shows in the member facts.
        problems.extend("member %s %s" % (s.member.label, s.reason()) for s in snapshot.members
                        if s.answered and not s.healthy)

    answered = [s for s in snapshot.members if s.status is not None]
    views: Dict[int, List[str]] = {}
    for state in answered:
        views.setdefault(state.status.leader if state.status else 0, []).append(state.member.label)
    leader_ids = [lid for lid in views if lid]
    leader: Optional[EtcdMember] = None
    if not answered:
        problems.append("no leader: no member answers")
    elif not leader_ids:
        problems.append("no leader: %s answer%s but report%s no leader" % (
            ", ".join(views[0]), "s" if len(views[0]) == 1 else "", "s" if len(views[0]) == 1 else ""))
    elif len(views) > 1:
        parts = []
        for lid, names in sorted(views.items(), key=lambda item: item[1]):
            known = snapshot.by_id(lid)
            one = len(names) == 1
            target = ("sees" if one else "see") + " no leader" if not lid else \
                ("follows" if one else "follow") + " " + (known.member.label if known else hex_id(lid))
            parts.append("%s %s" % (", ".join(names), target))
        problems.append("members disagree on the leader: " + "; ".join(parts))
    else:
        known = snapshot.by_id(leader_ids[0])
        if known is None:
            problems.append("the leader %s that %s follow%s is not in the member list" % (
                hex_id(leader_ids[0]), ", ".join(views[leader_ids[0]]), "s" if len(views[leader_ids[0]]) == 1 else ""))
        else:
            leader = known.member
    return QuorumReport(voting=len(voters), quorum=quorum, healthy_count=len(healthy), leader=leader,
                        problems=problems)


def member_facts(state: MemberState, leader: Optional[EtcdMember]) -> Dict[str, Any]:
    """A member as a module returns it."""
    member, status = state.member, state.status
    return {
        "name": member.name,
        "id": hex_id(member.id),
        "client_urls": list(member.client_urls),
        "peer_urls": list(member.peer_urls),
        "is_learner": member.is_learner,
        "healthy": state.healthy,
        "is_leader": leader is not None and leader.id == member.id,
        "version": status.version if status else None,
        "db_size": status.db_size if status else None,
        "db_size_in_use": status.db_size_in_use if status else None,
        "raft_term": status.raft_term if status else None,
        "raft_index": status.raft_index if status else None,
        "leader_id": hex_id(status.leader) if status and status.leader else None,
        "errors": list(status.errors) if status else [],
        "error": state.error,
        "endpoint": state.endpoint,
    }
