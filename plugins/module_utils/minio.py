# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the health endpoints of a distributed MinIO, and a pure function that judges quorum.

Facts this relies on (minio/minio ``cmd/healthcheck-router.go``, ``cmd/healthcheck-handler.go``,
``internal/http/headers.go`` and ``docs/metrics/healthcheck/README.md``; the MinIO docs page "Healthcheck API",
docs.min.io/minio/baremetal/monitoring/healthcheck-probe.html). Every endpoint is unauthenticated and answers
GET and HEAD with an empty body; all it says is in the status and the headers:

- ``GET /minio/health/live`` answers 200 while the process serves HTTP, 503 (S3 error ``ServerBusy``) while its
  request queue is over capacity (the AIStor docs give 429 for that). It looks at neither drives nor peers.
- ``GET /minio/health/ready`` answers like ``live``, and also 5xx when a configured KMS or etcd is unreachable.
  Both answer 200 *with* ``X-Minio-Server-Status: offline`` while the node's object layer is not initialised
  yet (a distributed node waits there for its peers at start-up), so such a node is live but not ready.
- ``GET /minio/health/cluster`` is the node's own view of the whole cluster: 200 when every erasure set has
  write quorum, 503 when one lacks it. The header ``X-Minio-Write-Quorum`` carries the write quorum in drives
  (per erasure set) and ``X-Minio-Healing-Drives`` the drives being healed, if any. A node whose object layer,
  bucket metadata or IAM is not initialised answers 503 without those headers and with ``X-Minio-Server-Status:
  offline``, ``bucket-metadata-offline`` or ``iam-offline``.
- ``GET /minio/health/cluster/read`` is the same for read quorum, with ``X-Minio-Read-Quorum``.
- ``?maintenance=true`` on either asks whether the cluster keeps its quorum if *the node asked* goes down, and
  answers 412 instead of 503 when it would not. That is a question about one node before a restart, not about
  the cluster's health, so nothing here sends it.

Every call only reads, so each is retried on the client's rules. No request ever writes.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    TOO_MANY_REQUESTS,
    HttpClient,
    HttpClientError,
    Response,
    ServiceClient,
    Transport,
    base_url,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    Watched,
    watch,
)

COMPONENT = "MinIO"
LIVE = "/minio/health/live"
READY = "/minio/health/ready"
CLUSTER_WRITE = "/minio/health/cluster"
CLUSTER_READ = "/minio/health/cluster/read"
OK = 200
UNAVAILABLE = 503
SERVER_STATUS = "X-Minio-Server-Status"
WRITE_QUORUM = "X-Minio-Write-Quorum"
READ_QUORUM = "X-Minio-Read-Quorum"
HEALING_DRIVES = "X-Minio-Healing-Drives"


def check_expected_nodes(expected_nodes: int, nodes: int) -> int:
    """The number of nodes that must be ready: ``expected_nodes``, or all of them for 0."""
    if nodes < 1:
        raise ValueError("%s: no node URLs given" % COMPONENT)
    if expected_nodes < 0 or expected_nodes > nodes:
        raise ValueError("expected_nodes must be between 0 (all) and %d (the nodes listed), got %d"
                         % (nodes, expected_nodes))
    return expected_nodes or nodes


def _header_int(response: Response, name: str) -> Optional[int]:
    value = response.header(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


# -- what the endpoints answer ----------------------------------------------------------------------------


@dataclass
class NodeState:
    """One node: live (``/minio/health/live``) and ready (``/minio/health/ready``, object layer initialised)."""

    url: str
    live_status: Optional[int] = None
    ready_status: Optional[int] = None
    server_status: Optional[str] = None
    error: Optional[str] = None

    @property
    def live(self) -> bool:
        return self.live_status == OK

    @property
    def ready(self) -> bool:
        return self.live and self.ready_status == OK and not self.server_status

    def cause(self) -> str:
        """Why the node is not ready ("connection refused", "/minio/health/ready answered HTTP 503")."""
        if self.live_status is None:
            return self.error or "no answer"
        if not self.live:
            return "%s answered HTTP %d" % (LIVE, self.live_status)
        if self.server_status:
            return "not initialised yet (%s: %s)" % (SERVER_STATUS, self.server_status)
        if self.ready_status is None:
            return "%s failed: %s" % (READY, self.error or "no answer")
        if self.ready_status != OK:
            return "%s answered HTTP %d" % (READY, self.ready_status)
        return "ready"

    def reason(self) -> str:
        """Why the node is not ready, as the end of a sentence after its URL."""
        return ("is down: " if self.live_status is None else "is not ready: ") + self.cause()

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "live": self.live, "ready": self.ready, "server_status": self.server_status,
                "error": None if self.ready else self.cause()}


@dataclass
class QuorumAnswer:
    """What one node said about the cluster's write or read quorum, or why no node said anything."""

    path: str
    url: Optional[str] = None
    status: Optional[int] = None
    drives: Optional[int] = None
    healing_drives: Optional[int] = None
    server_status: Optional[str] = None
    error: Optional[str] = None

    @property
    def held(self) -> bool:
        return self.status == OK

    def evidence(self, what: str) -> str:
        """What the answer says, for a sentence about a lost quorum ("<url> answered <path> with HTTP 503, write
        quorum 3 drives"), or why there is no answer."""
        if self.status is None:
            return self.error or "no node answered %s" % self.path
        text = "%s answered %s with HTTP %d" % (self.url, self.path, self.status)
        if self.server_status:
            text += " and %s: %s" % (SERVER_STATUS, self.server_status)
        if self.drives is not None:
            text += ", %s quorum %d drives" % (what, self.drives)
        return text


@dataclass
class Look:
    """Everything one look at the cluster saw."""

    nodes: List[NodeState]
    write: QuorumAnswer = field(default_factory=lambda: QuorumAnswer(CLUSTER_WRITE))
    read: QuorumAnswer = field(default_factory=lambda: QuorumAnswer(CLUSTER_READ))


# -- the client -------------------------------------------------------------------------------------------


class MinioClient(ServiceClient):
    """Probes every given node, then asks the live ones (ready first) for the cluster's write and read quorum.
    Nothing raises: every failure is an observation."""

    component = COMPONENT

    def __init__(self, nodes: Sequence[str], transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6, probe_attempts: int = 2):
        if not nodes:
            raise ValueError("%s: no node URLs given" % COMPONENT)
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.nodes = [n.rstrip("/") for n in nodes]
        self.probe_attempts = probe_attempts

    def endpoint_client(self, url: str) -> HttpClient:
        """A client for one node (a down node is a fact to report)."""
        return self.probe_client([url], "%s node %s" % (COMPONENT, url), self.probe_attempts)

    def node_state(self, url: str) -> NodeState:
        client = self.endpoint_client(url)
        state = NodeState(url)
        live = self._get(client, LIVE)
        if not isinstance(live, Response):
            state.live_status, state.error = live
            return state
        state.live_status = live.status
        state.server_status = live.header(SERVER_STATUS)
        if not state.live:
            return state
        ready = self._get(client, READY)
        if not isinstance(ready, Response):
            state.ready_status, state.error = ready
            return state
        state.ready_status = ready.status
        state.server_status = ready.header(SERVER_STATUS) or state.server_status
        return state

    @staticmethod
    def _get(client: HttpClient, path: str) -> Union[Response, Tuple[Optional[int], str]]:
        """The answer to ``GET path``, or (the status of an answer we did not expect, or None; what went wrong).
        A busy node (429, 503) is an answer, not a reason to retry: it is the node's state right now."""
        try:
            return client.request("GET", path, expected=(OK, TOO_MANY_REQUESTS, UNAVAILABLE))
        except HttpClientError as err:
            return (err.response.status if err.response is not None else None), err.last_outcome()

    def quorum(self, nodes: Sequence[NodeState], path: str, header: str) -> QuorumAnswer:
        """``GET path`` on the first live node that answers it (ready nodes first, in the order given)."""
        live = sorted((n for n in nodes if n.live), key=lambda n: not n.ready)
        if not live:
            return QuorumAnswer(path, error="no node is live to answer %s" % path)
        client = self.client_for([n.url for n in live])
        try:
            response = client.request("GET", path, expected=(OK, UNAVAILABLE))
        except HttpClientError as err:
            return QuorumAnswer(path, error="no node answered %s: %s" % (path, err.last_outcome()))
        return QuorumAnswer(path, url=base_url(response, path), status=response.status,
                            drives=_header_int(response, header), healing_drives=_header_int(response, HEALING_DRIVES),
                            server_status=response.header(SERVER_STATUS))

    def look(self) -> Look:
        nodes = [self.node_state(url) for url in self.nodes]
        write = self.quorum(nodes, CLUSTER_WRITE, WRITE_QUORUM)
        # Ask for read quorum where write quorum was answered first: both are then one node's view.
        if write.url is not None:
            nodes_for_read = sorted(nodes, key=lambda n: n.url != write.url)
        else:
            nodes_for_read = nodes
        read = self.quorum(nodes_for_read, CLUSTER_READ, READ_QUORUM)
        return Look(nodes, write, read)


# -- judging a look ---------------------------------------------------------------------------------------


@dataclass
class Assessment:
    nodes: int
    live_nodes: int
    ready_nodes: int
    expected_nodes: int
    write_quorum: bool
    read_quorum: bool
    problems: List[str]

    @property
    def degraded(self) -> bool:
        return bool(self.problems)


def _names(items: Sequence[str]) -> str:
    return ", ".join(items)


def assess(look: Look, expected_nodes: int = 0) -> Assessment:
    """Write and read quorum and the nodes of one look, with a sentence per problem (empty when all is well).

    ``expected_nodes`` is how many nodes must be ready (0: all). Without write quorum the nodes that are not
    ready are named in that one sentence; otherwise each is a sentence of its own when fewer than
    ``expected_nodes`` are ready."""
    total = len(look.nodes)
    expected = expected_nodes or total
    live = [n for n in look.nodes if n.live]
    ready = [n for n in look.nodes if n.ready]
    sick = [n for n in look.nodes if not n.ready]
    problems: List[str] = []
    if not look.write.held:
        text = "no write quorum: %s (%d of %d nodes live)" % (look.write.evidence("write"), len(live), total)
        if sick:
            text += ": " + _names(["%s %s" % (n.url, n.reason()) for n in sick])
        problems.append(text)
    elif len(ready) < expected:
        problems.extend("node %s %s" % (n.url, n.reason()) for n in sick)
    if look.read.status is not None and not look.read.held:
        problems.append("no read quorum: %s" % look.read.evidence("read"))
    elif look.read.status is None and look.write.held:
        problems.append("read quorum unknown: %s" % look.read.evidence("read"))
    return Assessment(nodes=total, live_nodes=len(live), ready_nodes=len(ready), expected_nodes=expected,
                      write_quorum=look.write.held, read_quorum=look.read.held, problems=problems)


# -- waiting for health -----------------------------------------------------------------------------------


@dataclass
class ClusterCheck(Watched):
    """The last look, its judgement, and how it was reached."""

    look: Look
    assessment: Assessment

    @property
    def write_quorum(self) -> bool:
        return self.assessment.write_quorum

    @property
    def degraded(self) -> bool:
        return self.assessment.degraded

    def summary(self) -> str:
        """The look in one line, for a failure message."""
        a, write = self.assessment, self.look.write
        parts = ["%d of %d nodes live" % (a.live_nodes, a.nodes),
                 "%d ready (%d expected)" % (a.ready_nodes, a.expected_nodes)]
        if write.held:
            parts.append("write quorum" + (" (%d drives)" % write.drives if write.drives is not None else ""))
        else:
            parts.append("no write quorum")
        parts.append("read quorum" if a.read_quorum else "no read quorum")
        return ", ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        look, a = self.look, self.assessment
        return {
            "nodes": [n.to_dict() for n in look.nodes],
            "live_count": a.live_nodes,
            "ready_count": a.ready_nodes,
            "expected_nodes": a.expected_nodes,
            "write_quorum": a.write_quorum,
            "read_quorum": a.read_quorum,
            "write_quorum_drives": look.write.drives,
            "read_quorum_drives": look.read.drives,
            "healing_drives": look.write.healing_drives,
            "quorum_from": look.write.url,
            "degraded": a.degraded,
            "problems": list(a.problems),
            "checks": self.checks,
            "waited": round(self.waited, 3),
        }


def check_cluster(client: MinioClient, expected_nodes: int = 0, wait_timeout: float = 0.0,
                  poll_interval: float = 2.0, require_healthy: bool = True) -> ClusterCheck:
    """Look at the cluster until it is healthy (with ``require_healthy`` False: until it has write quorum) or
    ``wait_timeout`` passes; return the last look."""
    expected = check_expected_nodes(expected_nodes, len(client.nodes))

    def observe() -> ClusterCheck:
        look = client.look()
        return ClusterCheck(look, assess(look, expected))

    def done(check: ClusterCheck) -> bool:
        return not check.degraded if require_healthy else check.write_quorum

    return watch(observe, done, wait_timeout, poll_interval, client.clock).stamped()
