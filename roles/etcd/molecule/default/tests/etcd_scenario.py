"""What both verify files of the etcd scenario use: the members, etcdctl with a member's client certificate, and a
poll with a deadline.

The members are the scenario's unless MLFLOW_HA_ETCD_MEMBERS names others ({"name": "address"}, the lab's when
`make test` runs these checks against the lab: tests/lab/test_lab.py); MLFLOW_HA_ETCD_CONTAINERS then maps each
name to its container ({"name": "container"}; by default the container is named after the member)."""

from __future__ import annotations

import json
import os
import time

import pytest

MEMBERS = json.loads(os.environ.get("MLFLOW_HA_ETCD_MEMBERS") or "null") or {
    "etcd-1": "172.28.78.21", "etcd-2": "172.28.78.22", "etcd-3": "172.28.78.23"}
CONTAINERS = json.loads(os.environ.get("MLFLOW_HA_ETCD_CONTAINERS") or "null") or {name: name for name in MEMBERS}
FIRST = next(iter(MEMBERS))
TLS = "--cacert=/etc/etcd/tls/ca.crt --cert=/etc/etcd/tls/etcd.crt --key=/etc/etcd/tls/etcd.key"
ALL = ",".join(f"https://{ip}:2379" for ip in MEMBERS.values())


def etcdctl(host, args: str, endpoints: str = ALL):
    return host.run(f"ETCDCTL_API=3 etcdctl {TLS} --endpoints={endpoints} --command-timeout=5s {args}")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"{what} did not happen within {timeout} s; last: {last!r}")
