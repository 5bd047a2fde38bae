# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small resilient HTTP client for the collection's modules.

- retries with exponential backoff and full jitter, bounded by attempts and by a total deadline;
- retries only what is safe: connection errors that happened before the request could reach the server,
  429 (the server says it did not process the request; Retry-After honoured), and for idempotent requests
  also 502/503/504 and errors after sending. A non-idempotent request (POST, PATCH) is never repeated once it
  may have reached the server unless the caller says it is idempotent;
- a circuit breaker per endpoint, and failover across a list of endpoints that skips open breakers;
- errors that name the component, the endpoints, what each attempt got, the time spent and every breaker;
- ``ServiceClient``, the base of the service clients: the HttpClients they make share one transport, clock and
  random source and their timeouts, and a server probed for a verdict gets few attempts.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import base64
import http.client
import json
import random
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    OPEN,
    CircuitBreaker,
    Clock,
    RetryPolicy,
)

IDEMPOTENT_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
# Statuses that say "this server cannot serve you right now", worth another try (elsewhere or later).
RETRYABLE_STATUSES = frozenset([502, 503, 504])
TOO_MANY_REQUESTS = 429
EXCERPT_CHARS = 200


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    url: str = ""

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.text)


class TransportError(Exception):
    """The request got no HTTP answer. ``reached_server`` is False only when it certainly did not arrive
    (refused connection, DNS failure, TLS handshake failure): only then is a non-idempotent retry safe."""

    def __init__(self, message: str, reached_server: bool):
        super().__init__(message)
        self.reached_server = reached_server


class Transport:
    """Sends one request; returns a Response for any HTTP status, raises TransportError otherwise."""

    def send(self, method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
             timeout: float) -> Response:
        raise NotImplementedError  # an interface: UrllibTransport and the tests' fakes implement it


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class UrllibTransport(Transport):
    """Standard-library transport with TLS options (CA bundle, client certificate, verification)."""

    def __init__(self, ca_path: Optional[str] = None, client_cert: Optional[str] = None,
                 client_key: Optional[str] = None, validate_certs: bool = True):
        context = ssl.create_default_context(cafile=ca_path)
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def send(self, method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
             timeout: float) -> Response:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return Response(answer.status, answer.read(), dict(answer.headers.items()), url)
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read() or b"", dict(err.headers.items()) if err.headers else {}, url)
        except urllib.error.URLError as err:
            # urllib wraps errors raised while connecting and sending: the request was not received whole.
            raise self._transport_error(err.reason, reached=False, url=url) from err
        except (socket.timeout, ConnectionError, OSError, http.client.HTTPException) as err:
            # Raised while waiting for or reading the answer (a timeout, a reset, a truncated body, a garbled
            # status line): the server may have received and processed the request.
            raise self._transport_error(err, reached=True, url=url) from err

    @staticmethod
    def _transport_error(reason: object, reached: bool, url: str = "") -> TransportError:
        if (isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError))
                and urlsplit(url).scheme == "http"):
            # What a TLS-only server (the MLflow servers with mlflow_tls: uvicorn) does with a plain-HTTP request: it
            # closes the connection at the failed handshake without a word (a reset when the request lay unread).
            text = ("closed the connection without an answer (%s: %s); a port that speaks only HTTPS does that to "
                    "plain HTTP: try https:// with the CA (ca_path)" % (type(reason).__name__, reason))
        elif isinstance(reason, socket.timeout):
            text = "timed out"
        elif isinstance(reason, ConnectionRefusedError):
            text = "connection refused"
        elif isinstance(reason, socket.gaierror):
            text = "name resolution failed (%s)" % (reason,)
        elif isinstance(reason, ssl.SSLError):
            text = "TLS error (%s)" % (reason,)
        else:
            text = "%s: %s" % (type(reason).__name__, reason)
        return TransportError(text, reached_server=reached)


@dataclass
class Attempt:
    endpoint: str
    outcome: str
    elapsed: float


class HttpClientError(Exception):
    """Every attempt failed, or an answer was not one the caller accepts. Carries the whole story."""

    def __init__(self, message: str, attempts: List[Attempt], breakers: Dict[str, str],
                 response: Optional[Response] = None):
        super().__init__(message)
        self.attempts = attempts
        self.breakers = breakers
        self.response = response

    def last_outcome(self) -> str:
        """What the last attempt got ("connection refused", "timed out", "HTTP 503 ..."), else the whole text."""
        if self.attempts:
            return self.attempts[-1].outcome
        return str(self)

    def to_dict(self) -> Dict[str, Any]:
        """Facts for a module's fail_json."""
        return {
            "attempts": [{"endpoint": a.endpoint, "outcome": a.outcome, "elapsed": round(a.elapsed, 3)}
                         for a in self.attempts],
            "breakers": dict(self.breakers),
            "status": self.response.status if self.response is not None else None,
        }


def excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header in its delta-seconds form; None when absent or not a number."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
    return max(0.0, seconds)


class HttpClient:
    """Requests against one logical service served by several endpoints (base URLs).

    ``component`` names the service in error messages ("Patroni REST API", "MLflow tracking server").
    Breakers live as long as the client, so one module run that polls many times learns which endpoints
    are down and stops wasting its deadline on them.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        component: str,
        policy: Optional[RetryPolicy] = None,
        request_timeout: float = 5.0,
        failure_threshold: int = 3,
        reset_timeout: float = 10.0,
        transport: Optional[Transport] = None,
        clock: Optional[Clock] = None,
        rng: Optional[random.Random] = None,
        headers: Optional[Mapping[str, str]] = None,
        deadline_header: Optional[str] = None,
    ):
        if not endpoints:
            raise ValueError("%s: no endpoints given" % component)
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.component = component
        self.policy = policy or RetryPolicy()
        self.request_timeout = request_timeout
        self.transport = transport or UrllibTransport()
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.headers = dict(headers or {})
        # Each attempt says when this client stops waiting for it (epoch milliseconds): a load balancer that
        # honours it (the collection's HAProxy does) answers 504 instead of executing a request that was held up
        # (a frozen load balancer resuming) after the client gave up, retried, and maybe succeeded elsewhere.
        self.deadline_header = deadline_header
        self.breakers = {e: CircuitBreaker(failure_threshold, reset_timeout, self.clock) for e in self.endpoints}
        self._preferred = 0

    # -- public API -------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        json_body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        expected: Sequence[int] = (200,),
        idempotent: Optional[bool] = None,
    ) -> Response:
        """Send ``method path`` to the first endpoint that answers with a status in ``expected``.

        ``idempotent`` defaults to the method's HTTP semantics; pass True for a POST that is safe to repeat.
        Raises HttpClientError when the attempts, the deadline or the endpoints run out, or when an endpoint
        answers a status that is neither expected nor retryable.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        all_headers = dict(self.headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})

        start = self.clock.now()
        attempts: List[Attempt] = []
        tried_this_round: set = set()
        rounds = 0
        wait_hint: Optional[float] = None
        what = "%s %s" % (method, path)

        while True:
            if len(attempts) >= self.policy.max_attempts:
                raise self._error(what, attempts, start, "all %d attempts used" % self.policy.max_attempts)
            endpoint = self._next_endpoint(tried_this_round)
            if endpoint is None:
                # Every endpoint is either tried this round or behind an open breaker: back off, then retry.
                rounds += 1
                delay = self.policy.backoff(rounds, self.rng)
                if wait_hint is not None:
                    delay = max(delay, wait_hint)
                open_wait = self._earliest_trial()
                if not tried_this_round and open_wait is not None:
                    delay = max(delay, open_wait)
                remaining = self.policy.deadline - (self.clock.now() - start)
                if delay >= remaining:
                    raise self._error(what, attempts, start, "the deadline of %.1f s leaves no time for another "
                                      "attempt (next wait %.1f s)" % (self.policy.deadline, delay))
                self.clock.sleep(delay)
                tried_this_round = set()
                wait_hint = None
                continue
            remaining = self.policy.deadline - (self.clock.now() - start)
            timeout = max(0.001, min(self.request_timeout, remaining))
            tried_this_round.add(endpoint)
            breaker = self.breakers[endpoint]
            t0 = self.clock.now()
            if self.deadline_header:
                all_headers[self.deadline_header] = str(int((self.clock.wall() + timeout) * 1000))
            try:
                response = self.transport.send(method, endpoint + path, body, all_headers, timeout)
            except TransportError as err:
                breaker.record_failure()
                attempts.append(Attempt(endpoint, str(err), self.clock.now() - t0))
                if err.reached_server and not idempotent:
                    raise self._error(what, attempts, start, "not retried: the request may have reached the "
                                      "server and %s is not idempotent" % method) from err
                continue
            except BaseException:
                # Not an outcome this client classifies: no verdict on the endpoint, but its trial slot is freed.
                breaker.release()
                raise

            status = response.status
            if status in expected:
                breaker.record_success()
                self._preferred = self.endpoints.index(endpoint)
                return response
            outcome = "HTTP %d %s" % (status, excerpt(response.body))
            attempts.append(Attempt(endpoint, outcome.strip(), self.clock.now() - t0))
            if status == TOO_MANY_REQUESTS:
                # Busy, not broken: no verdict on the breaker (a half-open trial gives its slot back); the server
                # says it did not process the request.
                breaker.release()
                wait_hint = parse_retry_after(response.header("Retry-After"))
                continue
            if status in RETRYABLE_STATUSES:
                breaker.record_failure()
                if not idempotent:
                    raise self._error(what, attempts, start, "not retried: HTTP %d after a non-idempotent %s "
                                      "may have been processed" % (status, method), response)
                if status == 503:
                    wait_hint = parse_retry_after(response.header("Retry-After"))
                continue
            # Any other status is an answer, not an outage: the server is up, the request is wrong or refused.
            breaker.record_success()
            raise self._error(what, attempts, start, "HTTP %d is not an expected answer (%s)"
                              % (status, ", ".join(str(s) for s in expected)), response)

    def get_json(self, path: str, expected: Sequence[int] = (200,)) -> Any:
        return self.decode(self.request("GET", path, expected=expected))

    def decode(self, response: Response, what: Optional[str] = None) -> Any:
        """The JSON document of ``response``; HttpClientError naming the component, the URL and ``what`` was asked
        (default: the status) when it is not JSON."""
        try:
            return response.json()
        except ValueError as err:
            raise HttpClientError("%s: %s answered %s with invalid JSON (%s): %s" % (
                self.component, response.url, what or "HTTP %d" % response.status, err, excerpt(response.body)),
                [], self.breaker_states(), response) from err

    def breaker_states(self) -> Dict[str, str]:
        return {e: b.describe() for e, b in self.breakers.items()}

    # -- internals --------------------------------------------------------------------------------------

    def _next_endpoint(self, tried: set) -> Optional[str]:
        """The preferred endpoint first, then the others in order; skip tried ones and open breakers."""
        n = len(self.endpoints)
        for i in range(n):
            endpoint = self.endpoints[(self._preferred + i) % n]
            if endpoint in tried:
                continue
            if self.breakers[endpoint].allow():
                return endpoint
        return None

    def _earliest_trial(self) -> Optional[float]:
        waits = [b.retry_in() for b in self.breakers.values() if b.state == OPEN]
        return min(waits) if waits and len(waits) == len(self.breakers) else None

    def _error(self, what: str, attempts: List[Attempt], start: float, reason: str,
               response: Optional[Response] = None) -> HttpClientError:
        spent = self.clock.now() - start
        lines = ["%s: %s failed after %d attempt(s) in %.1f s: %s." % (
            self.component, what, len(attempts), spent, reason)]
        if attempts:
            last = attempts[-1]
            lines.append("Last: %s -> %s." % (last.endpoint, last.outcome))
            lines.append("Attempts: " + "; ".join(
                "[%d] %s -> %s" % (i + 1, a.endpoint, a.outcome) for i, a in enumerate(attempts)) + ".")
        lines.append("Breakers: " + ", ".join("%s %s" % (e, s) for e, s in self.breaker_states().items()) + ".")
        return HttpClientError(" ".join(lines), attempts, self.breaker_states(), response)


class ServiceClient:
    """What the collection's service clients (etcd, Patroni, MinIO, SeaweedFS, MLflow) share: one transport, clock
    and random source for every HttpClient they make, a request timeout, a deadline and a number of attempts, and
    the component their errors name (``component``, set by each subclass)."""

    component = "HTTP service"

    def __init__(self, transport: Optional[Transport] = None, clock: Optional[Clock] = None,
                 rng: Optional[random.Random] = None, request_timeout: float = 5.0, deadline: float = 30.0,
                 max_attempts: int = 6):
        self.transport = transport or UrllibTransport()
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.max_attempts = max_attempts

    def client_for(self, endpoints: Sequence[str], component: Optional[str] = None,
                   policy: Optional[RetryPolicy] = None, request_timeout: Optional[float] = None,
                   headers: Optional[Mapping[str, str]] = None, deadline_header: Optional[str] = None) -> HttpClient:
        """An HttpClient over ``endpoints`` on this client's transport, clock and random source; by default with
        its component, request timeout, attempts and deadline."""
        return HttpClient(list(endpoints), component or self.component,
                          policy=policy or RetryPolicy(max_attempts=self.max_attempts, deadline=self.deadline),
                          request_timeout=request_timeout or self.request_timeout, transport=self.transport,
                          clock=self.clock, rng=self.rng, headers=headers, deadline_header=deadline_header)

    def probe_client(self, endpoints: Sequence[str], component: str, attempts: int) -> HttpClient:
        """A client for one server (at its URLs): ``attempts`` tries with short waits, within twice the request
        timeout (at least 1 s, at most the deadline), since a server that does not answer is a fact to report,
        not to wait out."""
        return self.client_for(endpoints, component, RetryPolicy(
            max_attempts=attempts, base_delay=0.2, max_delay=1.0,
            deadline=min(self.deadline, max(self.request_timeout * 2, 1.0))))


def split_url(url: str, default_path: str = "/") -> Tuple[str, str]:
    """(``scheme://host:port``, path) of ``url``: the base an HttpClient takes, and what to ask it."""
    parts = urlsplit(url)
    return "%s://%s" % (parts.scheme, parts.netloc), parts.path or default_path


def base_url(response: Response, path: str) -> str:
    """The endpoint that answered: the response's URL without the request path."""
    return response.url[: -len(path)] if path and response.url.endswith(path) else response.url


def basic_auth(username: Optional[str], password: Optional[str]) -> Dict[str, str]:
    """The Authorization header of HTTP basic auth (MLflow's basic-auth app, Patroni's REST API); empty without a
    username."""
    if not username:
        return {}
    token = base64.b64encode(("%s:%s" % (username, password or "")).encode("utf-8")).decode("ascii")
    return {"Authorization": "Basic " + token}


def endpoint_list(value: Any) -> Tuple[str, ...]:
    """Accept one URL or a list of URLs (module options), return a tuple of base URLs."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip().rstrip("/") for v in value if v and v.strip())


def tls_argument_spec() -> Dict[str, Dict[str, Any]]:
    """Argument spec of the TLS options (documented by the doc fragment mlops.mlflow_ha.tls)."""
    return dict(
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
        validate_certs=dict(type="bool", default=True),
    )


def transport_from_params(params: Mapping[str, Any]) -> UrllibTransport:
    """The transport for a module's TLS options (see tls_argument_spec)."""
    return UrllibTransport(ca_path=params.get("ca_path"), client_cert=params.get("client_cert"),
                           client_key=params.get("client_key"), validate_certs=params.get("validate_certs", True))
