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
- The gateway does not authenticate by TLS common name; client certificates still secure the connection. With
  ``--client-cert-auth=true`` and auth enabled, etcd 3.6 even refuses (HTTP 400) every gateway request whose
  client certificate has a common name, so the collection runs etcd with ``--client-cert-auth=false`` and a
  trusted CA, which still requires and verifies a client certificate (docs/notes/etcd-rbac.md, proven on
  loopback with 3.6.16).
- Auth (RBAC, etcd 3.6.16 ``server/auth``, ``api/v3rpc/rpctypes/error.go``): ``POST /v3/auth/authenticate``
  ``{"name", "password"}`` answers ``{"token"}``, sent back in the ``Authorization`` header. Errors come as
  ``{"code", "message"}`` with HTTP statuses that overlap, so they are told apart by their message:
  "authentication is not enabled" (auth off: no token needed), "authentication failed" (wrong user or
  password), "invalid auth token" (expired, or the member restarted with simple tokens), "revision of auth
  store is old" (a JWT from before the last user/role change), "user name is empty" (no token sent), and
  "permission denied". A stale token is replaced by one new login, never by a login per request (bcrypt).
- Keys and range ends in the auth API are bytes, base64 in JSON; a permission's type is an enum whose zero
  value (READ) is left out of answers.

The reads are sent as idempotent: a retry after a timeout is harmless. So are the auth calls: each sets a
state (a login, a grant, a password), and repeating one sets the same state.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import base64
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    Response,
    ServiceClient,
    Transport,
    excerpt,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Clock

COMPONENT = "etcd"
API_PREFIX = "/v3"

# etcd's auth errors, by the text of their message (their codes and HTTP statuses overlap).
NOT_ENABLED = "authentication is not enabled"
AUTH_FAILED = "authentication failed"
INVALID_TOKEN = "invalid auth token"
OLD_REVISION = "revision of auth store is old"
USER_EMPTY = "user name is empty"
PERMISSION_DENIED = "permission denied"
USER_NOT_FOUND = "user name not found"
ROLE_NOT_FOUND = "role name not found"
# Answers that a new login cures: the token expired, was lost by a restarted member, predates an auth change,
# or none was sent yet (auth was enabled after the client started).
STALE_TOKEN = (INVALID_TOKEN, OLD_REVISION, USER_EMPTY)
PERM_TYPES = ("READ", "WRITE", "READWRITE")


def gateway_message(response: Optional[Response]) -> str:
    """The message of an etcd gateway error answer (lower case, ``etcdserver: `` dropped); empty when none."""
    if response is None:
        return ""
    try:
        doc = response.json()
    except ValueError:
        return ""
    if not isinstance(doc, Mapping):
        return ""
    message = str(doc.get("message") or doc.get("error") or "").strip().lower()
    return message[len("etcdserver: "):] if message.startswith("etcdserver: ") else message


def error_message(err: HttpClientError) -> str:
    """The gateway message of the answer that ended a request, empty when it got none."""
    return gateway_message(err.response)


class EtcdAuthFailed(Exception):
    """etcd refused a login: the user does not exist or the password is not the one etcd has."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    return base64.b64decode(text or "")


def prefix_range_end(key: bytes) -> bytes:
    """The end of the range holding every key that starts with ``key`` (etcd's ``GetPrefixRangeEnd``)."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # no end: every key from ``key`` on


@dataclass(frozen=True, order=True)
class Permission:
    """A role's permission: read, write or readwrite on the key ``key``, or the range [key, range_end)."""

    key: bytes
    range_end: bytes = b""
    type: str = "READWRITE"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Permission":
        """From a module option: ``{key, prefix (bool), range_end, type}``, type read, write or readwrite."""
        key = str(spec.get("key") or "")
        if not key:
            raise ValueError("a permission needs a key: %r" % (dict(spec),))
        kind = str(spec.get("type") or "readwrite").upper()
        if kind not in PERM_TYPES:
            raise ValueError("permission type %r is not one of read, write, readwrite" % (spec.get("type"),))
        if spec.get("prefix") and spec.get("range_end"):
            raise ValueError("a permission takes prefix or range_end, not both: %r" % (dict(spec),))
        end = prefix_range_end(key.encode()) if spec.get("prefix") else str(spec.get("range_end") or "").encode()
        return cls(key.encode(), end, kind)

    @classmethod
    def from_gateway(cls, doc: Mapping[str, Any]) -> "Permission":
        kind = doc.get("permType", "READ")
        if isinstance(kind, int):
            kind = PERM_TYPES[kind]
        return cls(unb64(doc.get("key")), unb64(doc.get("range_end")), str(kind))

    def to_gateway(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"permType": self.type, "key": b64(self.key)}
        if self.range_end:
            doc["range_end"] = b64(self.range_end)
        return doc

    def describe(self) -> str:
        """As etcdctl would be told: ``readwrite /service/x/ (prefix)``."""
        key = self.key.decode("utf-8", "replace")
        if not self.range_end:
            where = key
        elif self.range_end == prefix_range_end(self.key):
            where = "%s (prefix)" % key
        else:
            where = "[%s, %s)" % (key, self.range_end.decode("utf-8", "replace"))
        return "%s %s" % (self.type.lower(), where)


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
    """Member list through any of the given endpoints; status from each member at its own client URLs.

    With ``username``, the client logs in once (at its first request) and sends the token with every request;
    an answer that says the token is stale gets one new login and the request once more. While etcd has auth
    disabled the login answers "not enabled" and requests go without a token."""

    component = COMPONENT

    def __init__(self, endpoints: Sequence[str], transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6, member_attempts: int = 2, api_prefix: str = API_PREFIX,
                 username: Optional[str] = None, password: Optional[str] = None):
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.member_attempts = member_attempts
        self.prefix = api_prefix.rstrip("/")
        self.http = self.client_for(endpoints)
        self.username = username or None
        self.password = password or ""
        self.token: Optional[str] = None
        # None until the first login tells: True (a token), False ("not enabled").
        self.auth_enabled: Optional[bool] = None
        self.logins = 0

    # -- auth -------------------------------------------------------------------------------------------

    def authenticate(self, name: str, password: str, client: Optional[HttpClient] = None) -> Optional[str]:
        """A token for ``name``; None when etcd has auth disabled. Raises EtcdAuthFailed when etcd refuses the
        login, HttpClientError when no member answers it."""
        client = client or self.http
        path = self.prefix + "/auth/authenticate"
        try:
            response = client.request("POST", path, json_body={"name": name, "password": password}, idempotent=True)
        except HttpClientError as err:
            message = error_message(err)
            if NOT_ENABLED in message:
                return None
            if AUTH_FAILED in message:
                raise EtcdAuthFailed("etcd refused the login of user %r at %s: %s (wrong password, or no such "
                                     "user)" % (name, err.attempts[-1].endpoint if err.attempts else client.endpoints,
                                                message)) from err
            raise
        doc = client.decode(response, "POST " + path)
        token = doc.get("token") if isinstance(doc, Mapping) else None
        if not token:
            raise HttpClientError("%s: %s answered a login without a token: %s" % (
                COMPONENT, response.url, excerpt(response.body)), [], client.breaker_states(), response)
        return str(token)

    def password_works(self, name: str, password: str) -> Optional[bool]:
        """Whether etcd accepts ``password`` for ``name``; None while auth is disabled (etcd cannot tell)."""
        try:
            token = self.authenticate(name, password)
        except EtcdAuthFailed:
            return False
        return True if token is not None else None

    def login(self) -> None:
        """Log in as ``username`` (nothing without one)."""
        if not self.username:
            return
        self.logins += 1
        self.token = self.authenticate(self.username, self.password)
        self.auth_enabled = self.token is not None

    def call(self, client: HttpClient, path: str, body: Optional[Mapping[str, Any]] = None) -> Tuple[Any, str]:
        """POST ``body`` to ``path`` (under the API prefix) with the token; (document, URL that answered)."""
        if self.username and self.auth_enabled is None:
            self.login()
        try:
            return self._send(client, path, body)
        except HttpClientError as err:
            if not self.username or not any(m in error_message(err) for m in STALE_TOKEN):
                raise
        self.login()
        return self._send(client, path, body)

    def _send(self, client: HttpClient, path: str, body: Optional[Mapping[str, Any]]) -> Tuple[Any, str]:
        headers = {"Authorization": self.token} if self.token else None
        response = client.request("POST", self.prefix + path, json_body=dict(body or {}), headers=headers,
                                  idempotent=True)
        return client.decode(response, "POST %s%s" % (self.prefix, path)), response.url

    def _post(self, client: HttpClient, path: str) -> Tuple[Any, str]:
        return self.call(client, path)

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

    # -- auth management (root, or anyone while auth is disabled) ----------------------------------------

    def _admin(self, path: str, body: Mapping[str, Any], missing: Optional[str] = None) -> Optional[Any]:
        """An auth API call; None when etcd answers the ``missing`` message (no such user or role)."""
        try:
            return self.call(self.http, path, body)[0]
        except HttpClientError as err:
            if missing and missing in error_message(err):
                return None
            raise

    def role_get(self, name: str) -> Optional[List[Permission]]:
        """The role's permissions, None when there is no such role."""
        doc = self._admin("/auth/role/get", {"role": name}, ROLE_NOT_FOUND)
        if doc is None:
            return None
        return sorted(Permission.from_gateway(p) for p in (doc.get("perm") or []) if isinstance(p, Mapping))

    def role_add(self, name: str) -> None:
        self._admin("/auth/role/add", {"name": name})

    def role_grant(self, name: str, perm: Permission) -> None:
        self._admin("/auth/role/grant", {"name": name, "perm": perm.to_gateway()})

    def role_revoke(self, name: str, perm: Permission) -> None:
        body: Dict[str, Any] = {"role": name, "key": b64(perm.key)}
        if perm.range_end:
            body["range_end"] = b64(perm.range_end)
        self._admin("/auth/role/revoke", body)

    def user_get(self, name: str) -> Optional[List[str]]:
        """The user's roles, None when there is no such user."""
        doc = self._admin("/auth/user/get", {"name": name}, USER_NOT_FOUND)
        if doc is None:
            return None
        return sorted(str(r) for r in (doc.get("roles") or []))

    def user_add(self, name: str, password: str) -> None:
        self._admin("/auth/user/add", {"name": name, "password": password, "options": {"no_password": False}})

    def user_changepw(self, name: str, password: str) -> None:
        self._admin("/auth/user/changepw", {"name": name, "password": password})

    def user_grant(self, name: str, role: str) -> None:
        self._admin("/auth/user/grant", {"user": name, "role": role})

    def user_revoke(self, name: str, role: str) -> None:
        self._admin("/auth/user/revoke", {"name": name, "role": role})

    def auth_enable(self) -> None:
        """Enable auth (etcd needs the user root with the role root first). Later requests log in again."""
        self._admin("/auth/enable", {})
        self.auth_enabled = None
        self.token = None


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
