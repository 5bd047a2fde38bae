# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the SeaweedFS HTTP endpoints, and a pure function that judges quorum and capacity.

Facts this relies on (seaweedfs/seaweedfs at the version tools/seaweedfs/go.mod pins; ``weed/server/
master_server.go``, ``raft_server_handlers.go``, ``master_server_handlers_admin.go``, ``weed/topology/``):

- every master: ``GET /healthz`` answers 200 while the process lives. ``GET /readyz`` answers 200 when the
  master knows a raft leader, 503 when it knows none, and 423 when it is the leader and its topology is locked.
- every master: ``GET /cluster/status`` -> ``{"IsLeader": true, "Leader": "10.0.0.11:9333", "Peers": [...],
  "MaxVolumeId": 7}`` from its own raft view, without waiting for an election; fields with zero values are
  left out (``IsLeader`` is absent on followers, ``Leader`` when no leader is known). An address may carry the
  gRPC port after a dot (``10.0.0.11:9333.19333``); the HTTP address is the part before it.
- ``GET /dir/status`` is proxied to the leader; a master that knows no leader answers it from its own, empty
  topology, so it is asked only of masters that are ready. It answers ``{"Version": "30GB 4.53 ", "TopologyId":
  "...", "Topology": {"Max": 16, "Free": 9, "DataCenters": [{"Id": "dc1", "Racks": [{"Id": "rack1",
  "DataNodes": [{"Url": "10.0.0.31:8080", "PublicUrl": "...", "Volumes": 7, "EcShards": 0, "Max": 8,
  "VolumeIds": " 1-7"}]}]}], "Layouts": [{"replication": "001", "ttl": "", "writables": [1, 2],
  "collection": "", "diskType": "hdd"}]}}``. Empty lists are sent as ``null`` (Go nil slices).
- volume servers: ``GET /healthz`` answers 200, or 503 while the server is stopping, not heartbeating to a
  master, or holds quarantined storage. Filers: ``GET /healthz`` 200, 503 when the filer store fails.
  S3 gateways: ``GET /healthz`` 200 (also ``/status`` and ``/readyz``).

Every call only reads, so each is retried on the client's rules. No request ever writes.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    ServiceClient,
    Transport,
    excerpt,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    Watched,
    watch,
)

COMPONENT = "SeaweedFS master"
READY = 200
NOT_READY = 503
LOCKED = 423


def quorum_of(masters: int) -> int:
    return masters // 2 + 1


def http_address(server_address: str) -> str:
    """The HTTP address of a SeaweedFS server address: ``10.0.0.11:9333.19333`` -> ``10.0.0.11:9333``."""
    head, sep, ports = server_address.rpartition(":")
    if not sep or "." not in ports:
        return server_address
    return head + sep + ports.rsplit(".", 1)[0]


def netloc(url: str) -> str:
    return urlsplit(url).netloc


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("%s is not a number: %r" % (what, value))
    return int(value)


def _obj(value: Any, what: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("%s is not an object: %r" % (what, value))
    return value


def _list(value: Any, what: str) -> list:
    """A JSON list; ``null`` (a Go nil slice) is an empty one."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("%s is not a list: %r" % (what, value))
    return value


def _objects(value: Any, what: str) -> List[Mapping]:
    """A JSON list of objects; ``null`` is an empty one."""
    return [_obj(item, "an entry of " + what) for item in _list(value, what)]


# -- what the endpoints answer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeServer:
    url: str
    public_url: str = ""
    volumes: int = 0
    ec_shards: int = 0
    max: int = 0
    data_center: str = ""
    rack: str = ""


@dataclass(frozen=True)
class Layout:
    collection: str
    replication: str
    ttl: str
    disk_type: str
    writables: Tuple[int, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"collection": self.collection, "replication": self.replication, "ttl": self.ttl,
                "disk_type": self.disk_type, "writables": list(self.writables)}


@dataclass(frozen=True)
class ClusterTopology:
    version: str
    topology_id: str
    max: int
    free: int
    volume_servers: Tuple[VolumeServer, ...] = ()
    layouts: Tuple[Layout, ...] = ()

    @property
    def writable_volumes(self) -> int:
        return sum(len(layout.writables) for layout in self.layouts)


def parse_dir_status(doc: Any) -> ClusterTopology:
    """The answer of ``GET /dir/status``; raises ValueError for a document of another shape."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("Topology"), Mapping):
        raise ValueError("not a /dir/status answer (no Topology object)")
    topo = doc["Topology"]
    servers = []
    for dc in _objects(topo.get("DataCenters"), "DataCenters"):
        for rack in _objects(dc.get("Racks"), "the Racks of data center %s" % dc.get("Id")):
            for node in _objects(rack.get("DataNodes"), "the DataNodes of rack %s" % rack.get("Id")):
                if not node.get("Url"):
                    raise ValueError("a data node without Url: %r" % (node,))
                servers.append(VolumeServer(url=str(node["Url"]), public_url=str(node.get("PublicUrl") or ""),
                                            volumes=_int(node.get("Volumes"), "Volumes"),
                                            ec_shards=_int(node.get("EcShards"), "EcShards"),
                                            max=_int(node.get("Max"), "Max"), data_center=str(dc.get("Id") or ""),
                                            rack=str(rack.get("Id") or "")))
    layouts = [Layout(collection=str(raw.get("collection") or ""), replication=str(raw.get("replication") or ""),
                      ttl=str(raw.get("ttl") or ""), disk_type=str(raw.get("diskType") or ""),
                      writables=tuple(_int(v, "a writable volume id")
                                      for v in _list(raw.get("writables"), "writables")))
               for raw in _objects(topo.get("Layouts"), "Layouts")]
    return ClusterTopology(version=str(doc.get("Version") or "").strip(), topology_id=str(doc.get("TopologyId") or ""),
                           max=_int(topo.get("Max"), "Max"), free=_int(topo.get("Free"), "Free"),
                           volume_servers=tuple(servers), layouts=tuple(layouts))


@dataclass
class Probe:
    """One health probe: the status a server answered, or why it answered none."""

    url: str
    path: str = "/healthz"
    status: Optional[int] = None
    error: Optional[str] = None

    @property
    def healthy(self) -> bool:
        return self.status == READY

    def cause(self) -> str:
        """What the server answered instead of healthy ("connection refused", "/healthz answered HTTP 503")."""
        if self.error is not None:
            return self.error
        if self.status is not None and self.status != READY:
            return "%s answered HTTP %d" % (self.path, self.status)
        return "healthy"

    def reason(self) -> str:
        """Why the server is not healthy, as the end of a sentence after its name."""
        return ("is down: " if self.error is not None else "is unhealthy: ") + self.cause()

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "status": self.status,
                "error": None if self.healthy else self.cause()}


@dataclass
class MasterState:
    """One master: alive (``/healthz``), ready (``/readyz``), and its raft view (``/cluster/status``)."""

    url: str
    alive: bool = False
    ready_status: Optional[int] = None
    is_leader: bool = False
    leader: Optional[str] = None
    error: Optional[str] = None

    @property
    def ready(self) -> bool:
        return self.alive and self.ready_status == READY

    def cause(self) -> str:
        """Why the master is not ready ("connection refused", "knows no raft leader (...)")."""
        if not self.alive:
            return self.error or "no answer"
        if self.ready_status == NOT_READY:
            return "knows no raft leader (/readyz answered HTTP 503)"
        if self.ready_status == LOCKED:
            return "leads with its topology locked (/readyz answered HTTP 423)"
        if self.ready_status is None:
            return "/readyz failed: %s" % (self.error or "no answer")
        return "ready"

    def reason(self) -> str:
        """Why the master is not ready, as the end of a sentence after its URL."""
        return ("is down: " if not self.alive else "is not ready: ") + self.cause()

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "alive": self.alive, "ready": self.ready, "is_leader": self.is_leader,
                "leader": self.leader, "error": None if self.ready else self.cause()}


@dataclass
class Look:
    """Everything one look at the cluster saw. ``volume_health`` is keyed by the volume server's Url."""

    masters: List[MasterState]
    topology: Optional[ClusterTopology] = None
    topology_url: Optional[str] = None
    topology_error: Optional[str] = None
    volume_health: Dict[str, Probe] = field(default_factory=dict)
    filers: List[Probe] = field(default_factory=list)
    s3: List[Probe] = field(default_factory=list)


# -- the client -------------------------------------------------------------------------------------------


class SeaweedClient(ServiceClient):
    """Probes every given master, reads the topology through a ready one, then probes the registered volume
    servers (optional), the filers and the S3 gateways. Nothing raises: every failure is an observation."""

    component = COMPONENT

    def __init__(self, masters: Sequence[str], filers: Sequence[str] = (), s3: Sequence[str] = (),
                 transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6, probe_attempts: int = 2, check_volume_servers: bool = True):
        if not masters:
            raise ValueError("%s: no master URLs given" % COMPONENT)
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.masters = [m.rstrip("/") for m in masters]
        self.filers = [f.rstrip("/") for f in filers]
        self.s3 = [s.rstrip("/") for s in s3]
        self.probe_attempts = probe_attempts
        self.check_volume_servers = check_volume_servers

    def endpoint_client(self, url: str, component: str) -> HttpClient:
        """A client for one server (a down server is a fact to report)."""
        return self.probe_client([url], component, self.probe_attempts)

    def probe(self, url: str, component: str, path: str = "/healthz",
              answers: Sequence[int] = (READY, NOT_READY)) -> Probe:
        """``GET path`` on one server; a status in ``answers`` is the server's verdict, anything else an error."""
        return self._probe(self.endpoint_client(url, component), url, path, answers)

    @staticmethod
    def _probe(client: HttpClient, url: str, path: str, answers: Sequence[int]) -> Probe:
        try:
            response = client.request("GET", path, expected=answers)
        except HttpClientError as err:
            return Probe(url, path, error=err.last_outcome())
        return Probe(url, path, status=response.status)

    def master_state(self, url: str) -> MasterState:
        client = self.endpoint_client(url, "%s %s" % (COMPONENT, url))
        alive = self._probe(client, url, "/healthz", (READY,))
        if not alive.healthy:
            return MasterState(url, error=alive.cause())
        state = MasterState(url, alive=True)
        ready = self._probe(client, url, "/readyz", (READY, NOT_READY, LOCKED))
        state.ready_status, state.error = ready.status, ready.error
        try:
            response = client.request("GET", "/cluster/status")
            doc = _obj(response.json(), "/cluster/status")
        except (HttpClientError, ValueError):
            return state  # no raft view: the leader stays unknown, /readyz still tells ready from not
        state.is_leader = doc.get("IsLeader") is True
        leader = doc.get("Leader")
        state.leader = http_address(str(leader)) if leader else None
        return state

    def topology(self, masters: Sequence[MasterState]) -> Tuple[Optional[ClusterTopology], Optional[str],
                                                                Optional[str]]:
        """(topology, URL that answered, error text) from the ready masters, the leader first."""
        ready = [m for m in masters if m.ready]
        if not ready:
            return None, None, "no master is ready to answer /dir/status"
        leaders = {m.leader for m in ready if m.leader}
        ready.sort(key=lambda m: not (m.is_leader or netloc(m.url) in leaders))
        client = self.client_for([m.url for m in ready])
        try:
            response = client.request("GET", "/dir/status")
        except HttpClientError as err:
            return None, None, "/dir/status failed: %s" % err.last_outcome()
        try:
            return parse_dir_status(response.json()), response.url, None
        except ValueError as err:
            return None, response.url, "%s answered a document we cannot read (%s): %s" % (
                response.url, err, excerpt(response.body))

    def look(self) -> Look:
        masters = [self.master_state(url) for url in self.masters]
        topology, url, error = self.topology(masters)
        result = Look(masters, topology, url, error)
        if topology is not None and self.check_volume_servers:
            scheme = urlsplit(url or self.masters[0]).scheme or "http"
            for server in topology.volume_servers:
                result.volume_health[server.url] = self.probe("%s://%s" % (scheme, server.url),
                                                              "SeaweedFS volume server %s" % server.url)
        result.filers = [self.probe(u, "SeaweedFS filer %s" % u) for u in self.filers]
        result.s3 = [self.probe(u, "SeaweedFS S3 gateway %s" % u) for u in self.s3]
        return result


# -- judging a look ---------------------------------------------------------------------------------------


@dataclass
class Assessment:
    masters: int
    ready_masters: int
    quorum: bool
    leader: Optional[str]
    problems: List[str]

    @property
    def degraded(self) -> bool:
        return bool(self.problems)


def _names(items: Sequence[str]) -> str:
    return ", ".join(items)


def assess(look: Look, expected_volume_servers: int = 0, gone: Sequence[str] = ()) -> Assessment:
    """Quorum, leader and capacity of one look, with a sentence per problem (empty when all is well).

    ``gone`` names volume servers registered in an earlier look of the same run that this look lacks: the
    master forgets a volume server that stops heartbeating, so an earlier look is the only way to name it."""
    problems: List[str] = []
    total = len(look.masters)
    ready = [m for m in look.masters if m.ready]
    quorum = len(ready) >= quorum_of(total)
    if not quorum:
        sick = [m for m in look.masters if not m.ready]
        problems.append("no quorum: %d of %d masters ready (need %d): %s" % (
            len(ready), total, quorum_of(total), _names(["%s %s" % (m.url, m.reason()) for m in sick])))
    else:
        problems.extend("master %s %s" % (m.url, m.reason()) for m in look.masters if not m.ready)

    views: Dict[str, List[str]] = {}
    for master in ready:
        if master.leader:
            views.setdefault(master.leader, []).append(master.url)
    leader: Optional[str] = None
    if len(views) == 1:
        leader = next(iter(views))
    elif len(views) > 1:
        problems.append("masters disagree on the leader: " + "; ".join(
            "%s follow%s %s" % (_names(urls), "s" if len(urls) == 1 else "", lead)
            for lead, urls in sorted(views.items(), key=lambda item: item[1])))

    topology = look.topology
    if topology is None:
        if quorum:
            problems.append("topology unknown: %s" % look.topology_error)
    else:
        servers = topology.volume_servers
        registered = [s.url for s in servers]
        if expected_volume_servers and len(servers) < expected_volume_servers:
            text = "volume servers: %d of %d expected are registered" % (len(servers), expected_volume_servers)
            if registered:
                text += " (%s)" % _names(registered)
            if gone:
                text += "; missing since an earlier check: %s" % _names(gone)
            problems.append(text)
        for url in registered:
            probe = look.volume_health.get(url)
            if probe is not None and not probe.healthy:
                problems.append("volume server %s %s" % (url, probe.reason()))
        if servers and topology.free <= 0 and topology.writable_volumes == 0:
            problems.append("no writable volume and no free volume slot on %d volume server(s) (max %d volumes): "
                            "writes will fail" % (len(servers), topology.max))
    problems.extend("filer %s %s" % (p.url, p.reason()) for p in look.filers if not p.healthy)
    problems.extend("S3 gateway %s %s" % (p.url, p.reason()) for p in look.s3 if not p.healthy)
    return Assessment(masters=total, ready_masters=len(ready), quorum=quorum, leader=leader, problems=problems)


def volume_server_facts(server: VolumeServer, probe: Optional[Probe]) -> Dict[str, Any]:
    return {"url": server.url, "public_url": server.public_url, "volumes": server.volumes,
            "ec_shards": server.ec_shards, "max": server.max, "data_center": server.data_center,
            "rack": server.rack, "healthy": probe.healthy if probe is not None else None,
            "error": probe.cause() if probe is not None and not probe.healthy else None}


# -- waiting for health -----------------------------------------------------------------------------------


@dataclass
class ClusterCheck(Watched):
    """The last look, its judgement, and how it was reached."""

    look: Look
    assessment: Assessment

    @property
    def quorum(self) -> bool:
        return self.assessment.quorum

    @property
    def degraded(self) -> bool:
        return self.assessment.degraded

    def summary(self) -> str:
        """The look in one line, for a failure message."""
        a, topo = self.assessment, self.look.topology
        parts = ["%d of %d masters ready" % (a.ready_masters, a.masters),
                 "leader %s" % (a.leader or "unknown")]
        if topo is not None:
            parts.append("%d volume server(s), %d writable volume(s), %d free volume slot(s)" % (
                len(topo.volume_servers), topo.writable_volumes, topo.free))
        else:
            parts.append("topology unknown")
        for kind, probes in (("filers", self.look.filers), ("S3 gateways", self.look.s3)):
            if probes:
                parts.append("%s %d of %d healthy" % (kind, sum(1 for p in probes if p.healthy), len(probes)))
        return ", ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        look, a, topo = self.look, self.assessment, self.look.topology
        servers = topo.volume_servers if topo is not None else ()
        return {
            "masters": [m.to_dict() for m in look.masters],
            "ready_masters": a.ready_masters,
            "quorum": a.quorum,
            "leader": a.leader,
            "volume_servers": [volume_server_facts(s, look.volume_health.get(s.url)) for s in servers],
            "volume_server_count": len(servers),
            "free_volume_slots": topo.free if topo is not None else None,
            "writable_volumes": topo.writable_volumes if topo is not None else None,
            "layouts": [layout.to_dict() for layout in topo.layouts] if topo is not None else [],
            "filers": [p.to_dict() for p in look.filers],
            "s3": [p.to_dict() for p in look.s3],
            "degraded": a.degraded,
            "problems": list(a.problems),
            "version": topo.version if topo is not None else None,
            "topology_id": topo.topology_id if topo is not None else None,
            "topology_from": look.topology_url,
            "checks": self.checks,
            "waited": round(self.waited, 3),
        }


def check_cluster(client: SeaweedClient, expected_volume_servers: int = 0, wait_timeout: float = 0.0,
                  poll_interval: float = 2.0, require_healthy: bool = True) -> ClusterCheck:
    """Look at the cluster until it is healthy (with ``require_healthy`` False: until it has quorum) or
    ``wait_timeout`` passes; return the last look. Volume servers seen in one look and missing from a later
    one are named in the later look's problems."""
    seen: Dict[str, None] = {}  # every volume server registered in some look, in order of first sight

    def observe() -> ClusterCheck:
        look = client.look()
        gone: List[str] = []
        if look.topology is not None:
            current = {s.url for s in look.topology.volume_servers}
            gone = [url for url in seen if url not in current]
            seen.update((url, None) for url in sorted(current))
        return ClusterCheck(look, assess(look, expected_volume_servers, gone))

    def done(check: ClusterCheck) -> bool:
        return not check.degraded if require_healthy else check.quorum

    return watch(observe, done, wait_timeout, poll_interval, client.clock).stamped()
