#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: minio_cluster_info
short_description: Check a distributed MinIO's write and read quorum and the health of each node
version_added: "0.1.0"
description:
  - Asks every node in O(nodes) whether it lives (C(GET /minio/health/live)) and whether it is ready
    (C(GET /minio/health/ready), and no C(X-Minio-Server-Status) header saying its object layer is not yet
    initialised).
  - Then asks the first live node that answers, ready nodes first, whether the cluster has write quorum
    (C(GET /minio/health/cluster)) and read quorum (C(GET /minio/health/cluster/read)), and reads the quorum in
    drives from the C(X-Minio-Write-Quorum) and C(X-Minio-Read-Quorum) headers.
  - Without write quorum it always fails. Otherwise it fails with one sentence per problem (fewer ready nodes
    than O(expected_nodes), no read quorum) unless O(fail_on_degraded=false).
  - With O(wait_timeout), keeps looking until the cluster is healthy, or with O(fail_on_degraded=false) until it
    has write quorum, and reports the last look when the time is up.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  nodes:
    description:
      - Base URLs of every node of the cluster, e.g. V(https://minio-1:9000).
    type: list
    elements: str
    required: true
  expected_nodes:
    description:
      - Nodes that must be ready for the cluster to count as healthy; V(0) means all of O(nodes).
    type: int
    default: 0
  fail_on_degraded:
    description:
      - Fail when the cluster has write quorum but a problem (see RV(problems)). With V(false) only a lost write
        quorum fails.
    type: bool
    default: true
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds asking for the quorum may take over all live nodes, waits between retries included.
    type: float
    default: 30
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.wait
  - mlops.mlflow_ha.info
notes:
  - Runs where the task runs; every node must be reachable from there. The health endpoints need no credentials.
  - The quorum is one node's view of the whole cluster; a node cut off from its peers may see less than the rest.
  - The C(?maintenance=true) form of the cluster check (can this one node be taken down?) is not asked; it is a
    question about a node before its restart, not about the cluster's health.
"""

EXAMPLES = r"""
- name: All four MinIO nodes are ready and the cluster has write quorum (waiting up to two minutes)
  mlops.mlflow_ha.minio_cluster_info:
    nodes: ["https://minio-1:9000", "https://minio-2:9000", "https://minio-3:9000", "https://minio-4:9000"]
    ca_path: /etc/minio/certs/ca.crt
    wait_timeout: 120
  register: minio

- name: During a rolling restart only write quorum matters
  mlops.mlflow_ha.minio_cluster_info:
    nodes: ["https://minio-1:9000", "https://minio-2:9000", "https://minio-3:9000", "https://minio-4:9000"]
    ca_path: /etc/minio/certs/ca.crt
    fail_on_degraded: false

- name: Reads and writes both have quorum
  ansible.builtin.assert:
    that: minio.write_quorum and minio.read_quorum
"""

RETURN = r"""
nodes:
  description: Every node in O(nodes) with what it answered.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: Base URL as given.
      type: str
    live:
      description: C(/minio/health/live) answered 200.
      type: bool
    ready:
      description: C(/minio/health/ready) answered 200 and the node's object layer is initialised.
      type: bool
    server_status:
      description: The C(X-Minio-Server-Status) header the node sent, e.g. C(offline); null when none.
      type: str
    error:
      description: Why the node is not ready, e.g. C(connection refused); null when it is.
      type: str
  sample:
    - {"url": "https://minio-1:9000", "live": true, "ready": true, "server_status": null, "error": null}
    - {"url": "https://minio-3:9000", "live": false, "ready": false, "server_status": null,
       "error": "connection refused"}
live_count:
  description: Nodes that are live.
  returned: always
  type: int
  sample: 3
ready_count:
  description: Nodes that are ready.
  returned: always
  type: int
  sample: 3
expected_nodes:
  description: Nodes that must be ready (O(expected_nodes), or all of O(nodes) for V(0)).
  returned: always
  type: int
  sample: 4
write_quorum:
  description: A live node answered C(/minio/health/cluster) with 200.
  returned: always
  type: bool
  sample: true
read_quorum:
  description: A live node answered C(/minio/health/cluster/read) with 200; false also when none answered.
  returned: always
  type: bool
  sample: true
write_quorum_drives:
  description: Drives per erasure set a write needs (header C(X-Minio-Write-Quorum)); null when not sent.
  returned: always
  type: int
  sample: 3
read_quorum_drives:
  description: Drives per erasure set a read needs (header C(X-Minio-Read-Quorum)); null when not sent.
  returned: always
  type: int
  sample: 2
healing_drives:
  description: Drives being healed (header C(X-Minio-Healing-Drives)); null when none are.
  returned: always
  type: int
quorum_from:
  description: Base URL of the node that answered C(/minio/health/cluster); null when none did.
  returned: always
  type: str
  sample: https://minio-1:9000
degraded:
  description: There is at least one problem.
  returned: always
  type: bool
problems:
  description: One sentence per problem; empty when healthy.
  returned: always
  type: list
  elements: str
  sample: ["node https://minio-3:9000 is down: connection refused"]
checks:
  description: How many times the cluster was looked at.
  returned: always
  type: int
waited:
  description: Seconds spent looking.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    endpoint_list,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.info_module import run_info_module
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.minio import (
    MinioClient,
    check_cluster,
    check_expected_nodes,
)


def cluster_info(params, transport=None, clock=None, rng=None):
    """Return (result, failure message or None)."""
    nodes = endpoint_list(params["nodes"])
    try:
        check_expected_nodes(params["expected_nodes"], len(nodes))
    except ValueError as err:
        return dict(changed=False), str(err)
    client = MinioClient(
        nodes,
        transport=transport or transport_from_params(params),
        clock=clock,
        rng=rng,
        request_timeout=params["timeout"],
        deadline=params["deadline"],
    )
    check = check_cluster(client, expected_nodes=params["expected_nodes"], wait_timeout=params["wait_timeout"],
                          poll_interval=params["poll_interval"], require_healthy=params["fail_on_degraded"])
    result = dict(changed=False, **check.to_dict())
    if check.write_quorum and not (check.degraded and params["fail_on_degraded"]):
        return result, None
    return result, "MinIO cluster is not healthy%s: %s" % (check.waited_clause(), "; ".join(check.assessment.problems))


def main():
    run_info_module(AnsibleModule, dict(
        nodes=dict(type="list", elements="str", required=True),
        expected_nodes=dict(type="int", default=0),
        fail_on_degraded=dict(type="bool", default=True),
        timeout=dict(type="float", default=5),
        deadline=dict(type="float", default=30),
    ), cluster_info)


if __name__ == "__main__":
    main()
