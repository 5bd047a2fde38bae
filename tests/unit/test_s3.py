"""The S3 round trip and the generic retry helper, with a fake S3 client and a fake clock."""

from __future__ import annotations

import io

import pytest

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import RetryError, RetryPolicy, call_with_retry
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.s3 import S3Check, is_retryable, sha256


class ClientError(Exception):
    def __init__(self, status: int, code: str):
        super().__init__(f"{code} ({status})")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": status}, "Error": {"Code": code}}


class EndpointConnectionError(Exception):
    pass


class FakeS3:
    """A bucket in memory; ``failures`` maps an operation to exceptions raised by its next calls."""

    def __init__(self, failures=None, corrupt=False):
        self.objects: dict[str, bytes] = {}
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.corrupt = corrupt
        self.calls: list[str] = []

    def _maybe_fail(self, op):
        self.calls.append(op)
        queue = self.failures.get(op)
        if queue:
            raise queue.pop(0)

    def put_object(self, Bucket, Key, Body):
        self._maybe_fail("put")
        self.objects[Key] = Body

    def get_object(self, Bucket, Key):
        self._maybe_fail("get")
        data = self.objects[Key]
        return {"Body": io.BytesIO(data[:-1] if self.corrupt else data)}

    def delete_object(self, Bucket, Key):
        self._maybe_fail("delete")
        self.objects.pop(Key, None)


def check(s3, clock, **kw):
    return S3Check(s3, "mlflow", "http://lb:9000", policy=RetryPolicy(max_attempts=4, deadline=60, base_delay=0.1),
                   clock=clock, **kw)


def test_roundtrip_puts_gets_compares_and_deletes(clock):
    s3 = FakeS3()
    result = check(s3, clock).roundtrip(1024, "p/")
    assert result["size"] == 1024 and result["key"].startswith("p/")
    assert s3.calls == ["put", "get", "delete"] and s3.objects == {}
    assert result["attempts"] == {"put": 1, "get": 1, "delete": 1}


def test_keep_leaves_the_object_for_a_later_verify(clock):
    s3 = FakeS3()
    kept = check(s3, clock).roundtrip(64, "p/", keep=True)
    assert kept["delete_seconds"] is None and kept["key"] in s3.objects
    assert check(s3, clock).verify(kept["key"], kept["sha256"])["size"] == 64


def test_transient_failures_are_retried(clock):
    s3 = FakeS3(failures={"put": [EndpointConnectionError("down"), ClientError(503, "SlowDown")]})
    result = check(s3, clock).roundtrip(16, "p/")
    assert result["attempts"]["put"] == 3
    assert len(clock.sleeps) == 2


def test_authorization_errors_are_not_retried(clock):
    s3 = FakeS3(failures={"put": [ClientError(403, "AccessDenied")]})
    with pytest.raises(ClientError):
        check(s3, clock).roundtrip(16, "p/")
    assert s3.calls == ["put"]


def test_gives_up_after_max_attempts_with_every_error(clock):
    s3 = FakeS3(failures={"get": [ClientError(503, "ServiceUnavailable")] * 10})
    s3.objects["k"] = b"x"
    with pytest.raises(RetryError) as info:
        check(s3, clock).verify("k", sha256(b"x"))
    msg = str(info.value)
    assert msg.startswith("S3 at http://lb:9000: GET s3://mlflow/k failed after 4 attempt(s)")
    assert msg.count("ClientError: ServiceUnavailable (503)") == 4


def test_checksum_mismatch_is_an_error(clock):
    with pytest.raises(ValueError, match="came back with sha256"):
        check(FakeS3(corrupt=True), clock).roundtrip(32, "p/")


@pytest.mark.parametrize("err, expected", [
    (ClientError(500, "InternalError"), True), (ClientError(404, "NoSuchKey"), False),
    (ClientError(400, "RequestTimeout"), True), (EndpointConnectionError("x"), True),
    (ConnectionResetError(), True), (ValueError("x"), False),
])
def test_is_retryable(err, expected):
    assert is_retryable(err) is expected


def test_call_with_retry_respects_the_deadline(clock):
    def always_down():
        raise ConnectionRefusedError("refused")
    with pytest.raises(RetryError) as info:
        call_with_retry(always_down, "thing", lambda e: True,
                        RetryPolicy(max_attempts=100, base_delay=1, max_delay=4, deadline=10), clock)
    assert clock.now() - 1000 < 10
    assert info.value.attempts[0] == "[1] ConnectionRefusedError: refused"
