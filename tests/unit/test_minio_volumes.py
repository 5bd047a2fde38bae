"""MINIO_VOLUMES from inventory host names."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mlops.mlflow_ha.plugins.filter.minio import minio_volumes


def test_consecutive_names_use_minios_expansion():
    assert minio_volumes(["s3-1", "s3-2", "s3-3", "s3-4"]) == "https://s3-{1...4}:9000/var/lib/minio/data"


def test_order_does_not_matter_for_the_expansion():
    assert minio_volumes(["node3", "node1", "node2"], scheme="http", port=9100, path="data") == \
        "http://node{1...3}:9100/data"


def test_suffix_after_the_number_is_kept():
    assert minio_volumes(["s1.lab", "s2.lab"]) == "https://s{1...2}.lab:9000/var/lib/minio/data"


@pytest.mark.parametrize("hosts", [["s3-1", "s3-3"], ["a1", "b2"], ["s3-01", "s3-02"], ["alpha", "beta"]])
def test_other_names_are_listed_in_full(hosts):
    assert minio_volumes(hosts, scheme="http") == " ".join(f"http://{h}:9000/var/lib/minio/data" for h in hosts)


def test_single_host_is_listed():
    assert minio_volumes(["s3-1"]) == "https://s3-1:9000/var/lib/minio/data"


@pytest.mark.parametrize("hosts, scheme, message", [
    ([], "https", "no hosts"), (["a", "a"], "https", "listed twice"), (["a"], "ftp", "scheme must be"),
])
def test_errors(hosts, scheme, message):
    with pytest.raises(AnsibleFilterError, match=message):
        minio_volumes(hosts, scheme=scheme)
