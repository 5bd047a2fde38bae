# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health of the MLflow tracking servers and of the load balancer's view of them (the mlflow_info module's
work): each server's /health and /version, the VIP's /health, and HAProxy's stats for the backend."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.haproxy import (
    HaproxyServer,
    parse_haproxy_csv,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    Response,
    ServiceClient,
    Transport,
    basic_auth,
    endpoint_list,
    excerpt,
    split_url,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
    COMPONENT,
    HEALTH,
    VERSION,
    describe_failure,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    RetryPolicy,
    Watched,
    watch,
)

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
class InfoCheck(Watched):
    """The last look, how many looks it took, and whether waiting gave up."""

    look: InfoLook
    min_healthy: int

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


class MlflowProber(ServiceClient):
    """Asks each tracking server, and the load balancer, how it is. Nothing raises: a failure is an observation.

    Each look uses fresh clients with few attempts and a short deadline, since a down server is a fact to report,
    not to wait out; the breakers of the last look are reported."""

    component = COMPONENT

    def __init__(self, servers: Sequence[str], lb_url: Optional[str] = None, haproxy_stats_url: Optional[str] = None,
                 haproxy_backend: str = "mlflow", username: Optional[str] = None, password: Optional[str] = None,
                 haproxy_servers: Sequence[str] = (), headers: Optional[Mapping[str, str]] = None,
                 haproxy_stats_username: Optional[str] = None, haproxy_stats_password: Optional[str] = None,
                 transport: Optional[Transport] = None,
                 clock: Optional[Clock] = None, rng: Optional[random.Random] = None, request_timeout: float = 5.0,
                 deadline: float = 15.0, max_attempts: int = 2):
        if not servers:
            raise ValueError("%s: no server URLs given" % COMPONENT)
        super().__init__(transport, clock, rng, request_timeout, deadline, max_attempts)
        self.servers = [s.rstrip("/") for s in servers]
        self.lb_url = lb_url.rstrip("/") if lb_url else None
        self.haproxy_stats_url = haproxy_stats_url
        self.haproxy_backend = haproxy_backend
        # HAProxy server names that must each be up in the backend (a rolling restart's gate: this server is
        # back in every load balancer), besides the count that min_healthy asks.
        self.haproxy_servers = list(haproxy_servers)
        self.headers: Dict[str, str] = dict(basic_auth(username, password))
        self.headers.update(headers or {})
        # The stats page has its own login (the monitoring one): MLflow's is never sent there.
        self.stats_headers: Dict[str, str] = dict(basic_auth(haproxy_stats_username, haproxy_stats_password))

    def _client(self, url: str, component: str, headers: Optional[Mapping[str, str]] = None) -> HttpClient:
        return self.client_for([url], component, RetryPolicy(max_attempts=self.max_attempts, base_delay=0.2,
                                                             max_delay=1.0, deadline=self.deadline), headers=headers)

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
            base, path = split_url(self.haproxy_stats_url)
            if not path.endswith(";csv"):
                path += ";csv"
            client = self._client(base, "HAProxy stats", self.stats_headers)
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
                          haproxy_stats_username=params.get("haproxy_stats_username"),
                          haproxy_stats_password=params.get("haproxy_stats_password"),
                          transport=transport or transport_from_params(params), clock=clock, rng=rng,
                          request_timeout=params["timeout"], deadline=params["deadline"],
                          max_attempts=params["max_attempts"])
    check = check_servers(prober, params.get("min_healthy"), wait_timeout=params.get("wait_timeout") or 0.0,
                          poll_interval=params.get("poll_interval") or 2.0)
    result = dict(changed=False, **check.to_dict())
    if not check.look.problems:
        return result, None
    return result, "MLflow is not healthy%s: %s" % (check.waited_clause(), "; ".join(check.look.problems))
