"""Retry rules, endpoint failover, breaker use and error text of the HTTP client, with no network; and the
standard-library transport against a TLS-only server on loopback (as the MLflow servers are with mlflow_tls)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading

import pytest
from fakes import FakeTransport, ok, refused, reset_after_send, web_config_files

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    Response,
    ServiceClient,
    TransportError,
    UrllibTransport,
    base_url,
    endpoint_list,
    parse_retry_after,
    split_url,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import CLOSED, OPEN, RetryPolicy

A = "http://10.0.0.1:8008"
B = "http://10.0.0.2:8008"
C = "http://10.0.0.3:8008"


def client(clock, rng, script, endpoints=(A,), **kw):
    policy = kw.pop("policy", RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=4, deadline=30))
    transport = FakeTransport(clock, script)
    c = HttpClient(list(endpoints), "Patroni REST API", policy=policy, transport=transport, clock=clock, rng=rng,
                   **kw)
    return c, transport


class TestRetryRules:
    def test_success_first_time_no_sleep(self, clock, rng):
        c, t = client(clock, rng, {A: [ok(b'{"role": "primary"}')]})
        assert c.request("GET", "/cluster").json() == {"role": "primary"}
        assert len(t.calls) == 1 and clock.sleeps == []

    @pytest.mark.parametrize("status", [502, 503, 504])
    def test_get_retries_gateway_statuses(self, clock, rng, status):
        c, t = client(clock, rng, {A: [ok(status=status), ok(status=status), ok()]})
        assert c.request("GET", "/health").status == 200
        assert len(t.calls) == 3
        assert len(clock.sleeps) == 2

    def test_connection_refused_is_retried_even_for_post(self, clock, rng):
        c, t = client(clock, rng, {A: [refused(), ok(status=201)]})
        assert c.request("POST", "/models", json_body={"name": "m"}, expected=(201,)).status == 201
        assert len(t.calls) == 2

    def test_post_not_retried_after_it_may_have_reached_the_server(self, clock, rng):
        c, t = client(clock, rng, {A: [reset_after_send(), ok()]})
        with pytest.raises(HttpClientError) as info:
            c.request("POST", "/models")
        assert len(t.calls) == 1
        assert "may have reached the server and POST is not idempotent" in str(info.value)

    def test_post_not_retried_on_502(self, clock, rng):
        c, t = client(clock, rng, {A: [ok(b"bad gateway", status=502), ok()]})
        with pytest.raises(HttpClientError) as info:
            c.request("POST", "/models")
        assert len(t.calls) == 1
        assert info.value.response.status == 502

    def test_post_declared_idempotent_is_retried(self, clock, rng):
        c, t = client(clock, rng, {A: [reset_after_send(), ok(status=503), ok()]})
        assert c.request("POST", "/query", idempotent=True).status == 200
        assert len(t.calls) == 3

    def test_get_retried_after_reset(self, clock, rng):
        c, _t = client(clock, rng, {A: [reset_after_send(), ok()]})
        assert c.request("GET", "/x").status == 200

    def test_429_retried_for_post_and_honours_retry_after(self, clock, rng):
        c, _t = client(clock, rng, {A: [ok(status=429, headers={"Retry-After": "3"}), ok()]})
        assert c.request("POST", "/models").status == 200
        assert clock.sleeps and clock.sleeps[0] >= 3.0
        assert c.breakers[A].state == CLOSED, "429 is load, not an outage"

    def test_503_retry_after_is_honoured(self, clock, rng):
        c, _t = client(clock, rng, {A: [ok(status=503, headers={"retry-after": "2.5"}), ok()]})
        c.request("GET", "/x")
        assert clock.sleeps[0] >= 2.5

    def test_retry_after_beyond_deadline_fails_at_once(self, clock, rng):
        c, _t = client(clock, rng, {A: [ok(status=429, headers={"Retry-After": "120"}), ok()]},
                       policy=RetryPolicy(deadline=10))
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/x")
        assert clock.sleeps == []
        assert "next wait 120.0 s" in str(info.value)

    def test_other_statuses_are_answers_not_retried(self, clock, rng):
        c, t = client(clock, rng, {A: [ok(b'{"error": "no such model"}', status=404), ok()]})
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/models/x")
        assert len(t.calls) == 1
        assert "HTTP 404 is not an expected answer (200)" in str(info.value)
        assert c.breakers[A].state == CLOSED

    def test_expected_statuses_are_accepted(self, clock, rng):
        # Patroni's /primary answers 503 on a replica: a valid answer when the caller expects it.
        c, t = client(clock, rng, {A: [ok(status=503)]})
        assert c.request("GET", "/primary", expected=(200, 503)).status == 503
        assert len(t.calls) == 1


class TestBounds:
    def test_max_attempts_bounds_the_work(self, clock, rng):
        c, t = client(clock, rng, {A: [refused()]}, policy=RetryPolicy(max_attempts=4, deadline=1000),
                      failure_threshold=100)
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/x")
        assert len(t.calls) == 4
        assert "all 4 attempts used" in str(info.value)

    def test_deadline_bounds_the_work(self, clock, rng):
        c, _t = client(clock, rng, {A: [refused()]},
                       policy=RetryPolicy(max_attempts=1000, base_delay=1, max_delay=2, deadline=10),
                       failure_threshold=1000)
        start = clock.now()
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/x")
        assert clock.now() - start <= 10
        assert "deadline of 10.0 s" in str(info.value)

    def test_request_timeout_shrinks_to_remaining_deadline(self, clock, rng):
        c, t = client(clock, rng, {A: [ok(status=503), ok()]},
                      policy=RetryPolicy(max_attempts=5, base_delay=2, max_delay=2, deadline=6),
                      request_timeout=5)
        t.latency = 2.0  # each call costs 2 s of the 6 s deadline
        c.request("GET", "/x")
        first, second = (call[2] for call in t.calls)
        assert first == 5
        assert second == pytest.approx(6 - 2 - clock.sleeps[0])

    def test_sleeps_follow_capped_backoff(self, clock, rng):
        c, _t = client(clock, rng, {A: [refused()]},
                       policy=RetryPolicy(max_attempts=6, base_delay=1, max_delay=3, deadline=1000),
                       failure_threshold=1000)
        with pytest.raises(HttpClientError):
            c.request("GET", "/x")
        caps = [1, 2, 3, 3, 3]
        assert len(clock.sleeps) == 5
        assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps))


class TestFailover:
    def test_fails_over_to_next_endpoint_without_sleeping(self, clock, rng):
        c, t = client(clock, rng, {A: [refused()], B: [ok(b"b")]}, endpoints=(A, B))
        assert c.request("GET", "/x").body == b"b"
        assert [call[1] for call in t.calls] == [A + "/x", B + "/x"]
        assert clock.sleeps == []

    def test_prefers_the_endpoint_that_last_worked(self, clock, rng):
        c, t = client(clock, rng, {A: [refused(), ok(b"a")], B: [ok(b"b")]}, endpoints=(A, B))
        c.request("GET", "/x")
        c.request("GET", "/y")
        assert t.calls[-1][1] == B + "/y"

    def test_skips_endpoints_with_open_breakers(self, clock, rng):
        c, t = client(clock, rng, {A: [refused()], B: [ok()]}, endpoints=(A, B), failure_threshold=1,
                      reset_timeout=60)
        c.request("GET", "/1")          # A fails once -> open; B answers and becomes preferred
        c._preferred = 0                # even when A would be first again ...
        c.request("GET", "/2")
        assert [call[1] for call in t.calls] == [A + "/1", B + "/1", B + "/2"]   # ... it is skipped

    def test_half_open_endpoint_gets_a_trial_and_recovers(self, clock, rng):
        c, _t = client(clock, rng, {A: [refused(), ok(b"a")], B: [ok(b"b")]}, endpoints=(A, B),
                       failure_threshold=1, reset_timeout=5)
        c.request("GET", "/1")
        assert c.breakers[A].state == OPEN
        clock.t += 5
        c._preferred = 0
        assert c.request("GET", "/2").body == b"a"
        assert c.breakers[A].state == CLOSED

    def test_all_open_waits_for_the_earliest_trial(self, clock, rng):
        c, _t = client(clock, rng, {A: [refused(), ok(b"a")], B: [refused()]}, endpoints=(A, B),
                       failure_threshold=1, reset_timeout=4,
                       policy=RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=0.1, deadline=30))
        assert c.request("GET", "/x").body == b"a"
        assert any(s >= 3.9 for s in clock.sleeps), clock.sleeps

    def test_all_open_and_no_time_left_fails_with_every_breaker(self, clock, rng):
        c, t = client(clock, rng, {A: [refused()], B: [refused()], C: [ok(status=503)]}, endpoints=(A, B, C),
                      failure_threshold=1, reset_timeout=60, policy=RetryPolicy(max_attempts=10, deadline=20))
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/cluster")
        err = info.value
        assert set(err.breakers) == {A, B, C}
        assert all(state.startswith("open") for state in err.breakers.values())
        assert len(t.calls) == 3


class TestErrorText:
    def test_message_names_component_endpoints_statuses_time_and_breakers(self, clock, rng):
        c, _t = client(clock, rng, {A: [refused()], B: [ok(b'{"state": "no leader"}', status=503)]},
                       endpoints=(A, B), policy=RetryPolicy(max_attempts=2, deadline=30))
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/cluster")
        msg = str(info.value)
        assert msg.startswith("Patroni REST API: GET /cluster failed after 2 attempt(s) in ")
        assert f"[1] {A} -> connection refused" in msg
        assert f'[2] {B} -> HTTP 503 {{"state": "no leader"}}' in msg
        assert f"Last: {B} -> HTTP 503" in msg
        assert f"Breakers: {A} closed (1 consecutive failures), {B} closed (1 consecutive failures)." in msg
        facts = info.value.to_dict()
        assert facts["status"] is None
        assert [a["endpoint"] for a in facts["attempts"]] == [A, B]

    def test_long_bodies_are_excerpted(self, clock, rng):
        c, _t = client(clock, rng, {A: [ok(b"x" * 5000, status=500)]})
        with pytest.raises(HttpClientError) as info:
            c.request("GET", "/x")
        assert "x" * 200 + "..." in str(info.value)
        assert "x" * 201 not in str(info.value)

    def test_invalid_json_is_reported_with_url(self, clock, rng):
        c, _t = client(clock, rng, {A: [Response(200, b"<html>", {}, A + "/cluster")]})
        with pytest.raises(HttpClientError) as info:
            c.get_json("/cluster")
        assert f"{A}/cluster answered HTTP 200 with invalid JSON" in str(info.value)


class TestBreakerSlots:
    """A half-open endpoint's trial slot is given back however the trial ends (issue 13: a 429 or an exception
    the client did not classify left it taken, and the endpoint blocked for the rest of the client's life)."""

    def open_then_cool(self, clock, c):
        c.breakers[A].record_failure()
        c.breakers[A].record_failure()
        c.breakers[A].record_failure()
        clock.t += 10
        assert c.breakers[A].state == "half-open"

    def test_a_trial_answered_429_leaves_the_endpoint_usable(self, clock, rng):
        c, t = client(clock, rng, {A: [ok(status=429, headers={"Retry-After": "1"}), ok()]})
        self.open_then_cool(clock, c)
        assert c.request("GET", "/health").status == 200
        assert len(t.calls) == 2
        assert c.breakers[A].state == CLOSED

    def test_an_unclassified_exception_releases_the_trial(self, clock, rng):
        def boom():
            raise http.client.IncompleteRead(b"partial")

        c, t = client(clock, rng, {A: [boom, ok()]})
        self.open_then_cool(clock, c)
        with pytest.raises(http.client.IncompleteRead):
            c.request("GET", "/health")
        assert c.request("GET", "/health").status == 200
        assert len(t.calls) == 2


def test_no_endpoints_is_a_clear_error(clock, rng):
    with pytest.raises(ValueError, match="Patroni REST API: no endpoints given"):
        HttpClient([], "Patroni REST API", clock=clock)


@pytest.mark.parametrize("value, expected", [(None, None), ("5", 5.0), (" 1.5 ", 1.5), ("-3", 0.0),
                                             ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_endpoint_list_accepts_string_or_list():
    assert endpoint_list("http://a:1/, http://b:2") == ("http://a:1", "http://b:2")
    assert endpoint_list(["http://a:1", "", "http://b:2/"]) == ("http://a:1", "http://b:2")


def test_each_attempt_carries_the_deadline_of_its_own_timeout(clock, rng):
    c, t = client(clock, rng, {A: [ok(status=503), ok()]}, deadline_header="X-Request-Deadline-Ms",
                  request_timeout=5.0)
    assert c.request("GET", "/x").status == 200
    first, second = (int(h["X-Request-Deadline-Ms"]) for h in t.headers)
    # The header is wall time (ms) when this attempt's timeout ends; the retry's is later than the first's.
    assert first == int((1.8e9 + 1000.0 + 5.0) * 1000)
    assert second > first


def test_no_deadline_header_unless_asked(clock, rng):
    c, t = client(clock, rng, {A: [ok()]})
    c.request("GET", "/x")
    assert not any(k.lower().startswith("x-request-deadline") for k in t.headers[0])


class Service(ServiceClient):
    component = "Test service"


class TestServiceClient:
    """The base of the service clients: what every HttpClient they make shares, and the probe policy."""

    def test_clients_share_transport_clock_and_rng_and_take_the_defaults(self, clock, rng):
        transport = FakeTransport(clock, {A: [ok()]})
        service = Service(transport=transport, clock=clock, rng=rng, request_timeout=3.0, deadline=20.0,
                          max_attempts=4)
        c = service.client_for([A + "/", B])
        assert (c.transport, c.clock, c.rng) == (transport, clock, rng)
        assert c.component == "Test service" and c.endpoints == [A, B]
        assert (c.policy.max_attempts, c.policy.deadline, c.request_timeout) == (4, 20.0, 3.0)
        assert c.headers == {} and c.deadline_header is None
        other = service.client_for([A], "Test service on a", RetryPolicy(max_attempts=1), request_timeout=9.0,
                                   headers={"Accept": "application/json"}, deadline_header="X-Deadline")
        assert (other.component, other.policy.max_attempts, other.request_timeout) == ("Test service on a", 1, 9.0)
        assert other.headers == {"Accept": "application/json"} and other.deadline_header == "X-Deadline"
        assert other.breakers is not c.breakers, "each client has breakers of its own"

    def test_without_a_transport_it_makes_the_standard_library_one(self):
        service = Service()
        assert isinstance(service.transport, UrllibTransport)
        assert service.client_for([A]).transport is service.transport

    @pytest.mark.parametrize(("timeout", "deadline", "expected"), [(5.0, 30.0, 10.0), (0.2, 30.0, 1.0),
                                                                   (5.0, 4.0, 4.0)])
    def test_a_probe_client_waits_twice_the_request_timeout_at_least_1_s_at_most_the_deadline(
            self, clock, rng, timeout, deadline, expected):
        service = Service(transport=FakeTransport(clock, {A: [ok()]}), clock=clock, rng=rng,
                          request_timeout=timeout, deadline=deadline)
        policy = service.probe_client([A], "Test service node a", 2).policy
        assert (policy.max_attempts, policy.base_delay, policy.max_delay, policy.deadline) == (2, 0.2, 1.0, expected)

    def test_a_probe_client_gives_up_after_its_attempts_and_names_the_server(self, clock, rng):
        transport = FakeTransport(clock, {A: [refused()]})
        service = Service(transport=transport, clock=clock, rng=rng)
        with pytest.raises(HttpClientError) as info:
            service.probe_client([A], "Test service node a", 2).request("GET", "/health")
        assert len(transport.calls) == 2
        assert str(info.value).startswith("Test service node a: GET /health failed after 2 attempt(s)")

    def test_decode_names_the_component_the_url_and_what_was_asked(self, clock, rng):
        service = Service(transport=FakeTransport(clock, {A: [Response(200, b"<html>", {}, A + "/v3/x")]}),
                          clock=clock, rng=rng)
        c = service.client_for([A])
        response = c.request("POST", "/v3/x", json_body={}, idempotent=True)
        with pytest.raises(HttpClientError) as info:
            c.decode(response, "POST /v3/x")
        assert str(info.value).startswith("Test service: %s/v3/x answered POST /v3/x with invalid JSON" % A)
        assert info.value.response is response
        assert c.decode(Response(200, b'{"a": 1}', {}, A)) == {"a": 1}


def test_split_url_gives_the_base_and_the_path():
    assert split_url("http://10.0.0.1:8008/patroni", "/patroni") == ("http://10.0.0.1:8008", "/patroni")
    assert split_url("https://[fd00::1]:8404", "/") == ("https://[fd00::1]:8404", "/")
    assert split_url("http://lb:8404/stats;csv") == ("http://lb:8404", "/stats;csv")


def test_base_url_is_the_endpoint_that_answered():
    assert base_url(Response(200, b"", {}, A + "/metrics"), "/metrics") == A
    assert base_url(Response(200, b"", {}, A + "/other"), "/metrics") == A + "/other"
    assert base_url(Response(200, b"", {}, A), "") == A


def test_last_outcome_is_what_the_last_attempt_got_else_the_whole_text(clock, rng):
    c, _t = client(clock, rng, {A: [refused(), ok(b"busy", status=503)]}, policy=RetryPolicy(max_attempts=2))
    with pytest.raises(HttpClientError) as info:
        c.request("GET", "/x")
    assert info.value.last_outcome() == "HTTP 503 busy"
    assert HttpClientError("no attempt made", [], {}).last_outcome() == "no attempt made"


def serve_https_only(tmp_path, drain=True):
    """A server on 127.0.0.1 that speaks only HTTPS (a certificate of a test CA for 127.0.0.1): like uvicorn with
    --ssl-certfile, it answers GET with 200 and closes a connection whose TLS handshake fails without a word, having
    read the request (drain; uvicorn does) or not (the kernel then resets the connection). Returns (port, CA file,
    stop)."""
    _config, ca = web_config_files(tmp_path, {"monitoring": "pw"})
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tmp_path / "test.crt"), str(tmp_path / "test.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(1, socket.MSG_PEEK) != b"\x16":
                        # Not a TLS handshake (a plain-HTTP request): closed unanswered, read or unread.
                        conn.settimeout(0.2)
                        while drain and conn.recv(65536):
                            pass
                        continue
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(65536)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join(timeout=5)
        listener.close()

    return listener.getsockname()[1], ca, close


class TestUrllibTransportAgainstAnHttpsOnlyServer:
    def test_https_with_the_ca_is_answered(self, tmp_path):
        port, ca, close = serve_https_only(tmp_path)
        try:
            answer = UrllibTransport(ca_path=str(ca)).send("GET", "https://127.0.0.1:%d/health" % port, None, {}, 5)
            assert (answer.status, answer.body) == (200, b"OK")
        finally:
            close()

    @pytest.mark.parametrize(("drain", "error"), [(True, "RemoteDisconnected"), (False, "ConnectionResetError")])
    def test_plain_http_gets_no_answer_and_the_error_says_to_use_https_and_the_ca(self, tmp_path, drain, error):
        port, ca, close = serve_https_only(tmp_path, drain=drain)
        try:
            with pytest.raises(TransportError) as info:
                UrllibTransport(ca_path=str(ca)).send("GET", "http://127.0.0.1:%d/health" % port, None, {}, 5)
            assert str(info.value).startswith("closed the connection without an answer (%s: " % error)
            assert str(info.value).endswith("try https:// with the CA (ca_path)")
            assert info.value.reached_server, "the request was sent: a POST must not be repeated blindly"
        finally:
            close()

    def test_https_without_the_ca_is_a_tls_error(self, tmp_path):
        port, _ca, close = serve_https_only(tmp_path)
        try:
            with pytest.raises(TransportError) as info:
                UrllibTransport().send("GET", "https://127.0.0.1:%d/health" % port, None, {}, 5)
            assert str(info.value).startswith("TLS error (") and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
            assert not info.value.reached_server
        finally:
            close()


def test_a_reset_of_an_https_request_is_reported_as_it_is():
    error = UrllibTransport._transport_error(ConnectionResetError(104, "Connection reset by peer"), reached=True,
                                             url="https://10.0.0.31:5000/health")
    assert str(error) == "ConnectionResetError: [Errno 104] Connection reset by peer"
