# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An S3 round trip through the stack's one S3 contract (endpoint, CA bundle, bucket, keys, path style):
PUT an object, GET it back and compare its checksum, DELETE it, each step timed and retried by our own rules
(every step is idempotent: the key is unique, GET and DELETE repeat safely). The boto3 client comes in from
the caller, so the logic is tested with a fake."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import hashlib
import os
import uuid
from typing import Any, Dict, Optional

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    Clock,
    RetryPolicy,
    call_with_retry,
)

RETRYABLE_STATUSES = frozenset([429, 500, 502, 503, 504])
RETRYABLE_CODES = frozenset(["SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"])
RETRYABLE_CLASSES = frozenset(["EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                               "ConnectionClosedError", "ProxyConnectionError"])


def is_retryable(err: BaseException) -> bool:
    """Transport failures and "try again" answers; never an authorization or not-found answer."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = (response.get("Error") or {}).get("Code")
        return status in RETRYABLE_STATUSES or code in RETRYABLE_CODES
    return type(err).__name__ in RETRYABLE_CLASSES or isinstance(err, (ConnectionError, TimeoutError))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class S3Check:
    def __init__(self, client: Any, bucket: str, endpoint: str, policy: Optional[RetryPolicy] = None,
                 clock: Optional[Clock] = None):
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint
        self.policy = policy or RetryPolicy(max_attempts=5, deadline=60)
        self.clock = clock or Clock()

    def _step(self, what: str, fn) -> Dict[str, Any]:
        start = self.clock.now()
        value, attempts = call_with_retry(fn, "S3 at %s: %s" % (self.endpoint, what), is_retryable,
                                          self.policy, self.clock)
        return {"value": value, "seconds": round(self.clock.now() - start, 4), "attempts": attempts}

    def put(self, key: str, data: bytes) -> Dict[str, Any]:
        return self._step("PUT s3://%s/%s" % (self.bucket, key),
                          lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))

    def get(self, key: str) -> Dict[str, Any]:
        def read() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return self._step("GET s3://%s/%s" % (self.bucket, key), read)

    def delete(self, key: str) -> Dict[str, Any]:
        return self._step("DELETE s3://%s/%s" % (self.bucket, key),
                          lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def roundtrip(self, size: int, prefix: str, keep: bool = False) -> Dict[str, Any]:
        key = "%s%s" % (prefix, uuid.uuid4().hex)
        data = os.urandom(size)
        expected = sha256(data)
        put = self.put(key, data)
        got = self.get(key)
        actual = sha256(got["value"])
        if actual != expected:
            raise ValueError("S3 at %s: s3://%s/%s came back with sha256 %s, %d bytes; wrote %s, %d bytes"
                             % (self.endpoint, self.bucket, key, actual, len(got["value"]), expected, size))
        result = {"key": key, "size": size, "sha256": expected, "put_seconds": put["seconds"],
                  "get_seconds": got["seconds"], "delete_seconds": None,
                  "attempts": {"put": put["attempts"], "get": got["attempts"], "delete": 0}, "kept": keep}
        if not keep:
            deleted = self.delete(key)
            result["delete_seconds"] = deleted["seconds"]
            result["attempts"]["delete"] = deleted["attempts"]
        return result

    def verify(self, key: str, expected_sha256: str) -> Dict[str, Any]:
        got = self.get(key)
        actual = sha256(got["value"])
        if actual != expected_sha256:
            raise ValueError("S3 at %s: s3://%s/%s has sha256 %s, expected %s"
                             % (self.endpoint, self.bucket, key, actual, expected_sha256))
        return {"key": key, "sha256": actual, "size": len(got["value"]), "get_seconds": got["seconds"],
                "attempts": got["attempts"]}
