#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: seaweedfs_cluster_info
short_description: Check a SeaweedFS cluster's master quorum, volume servers, filers and S3 gateways
version_added: "0.1.0"
description:
  - Asks every master in O(masters) whether it lives (C(GET /healthz)), whether it knows a raft leader
    (C(GET /readyz)) and which leader that is (C(GET /cluster/status)).
  - Reads the topology through a ready master (C(GET /dir/status), served by the leader), that is the
    registered volume servers with their volume counts, the free volume slots and the writable volumes of every
    layout; then probes each registered volume server (C(GET /healthz)), each filer in O(filers) and each S3
    gateway in O(s3).
  - Without a majority of ready masters it always fails. Otherwise it fails with one sentence per problem
    (a master, volume server, filer or gateway down, fewer volume servers than O(expected_volume_servers),
    masters that disagree on the leader, no writable volume and no free slot) unless O(fail_on_degraded=false).
  - With O(wait_timeout), keeps looking until the cluster is healthy, or with O(fail_on_degraded=false) until it
    has quorum, and reports the last look when the time is up.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  masters:
    description:
      - Base URLs of all masters, e.g. V(http://10.0.0.11:9333). Quorum is a majority of this list.
    type: list
    elements: str
    required: true
  filers:
    description: Base URLs of the filers to probe, e.g. V(http://10.0.0.11:8888).
    type: list
    elements: str
    default: []
  s3:
    description: Base URLs of the S3 gateways to probe, e.g. V(http://10.0.0.11:8333).
    type: list
    elements: str
    default: []
  expected_volume_servers:
    description:
      - Volume servers that must at least be registered with the masters; V(0) does not check the count.
    type: int
    default: 0
  check_volume_servers:
    description:
      - Probe every registered volume server at the address it registered with (C(ip:port), scheme of the master
        that answered). Turn off when those addresses are not reachable from where the task runs.
    type: bool
    default: true
  fail_on_degraded:
    description:
      - Fail when the cluster has quorum but a problem (see RV(problems)). With V(false) only a lost quorum fails.
    type: bool
    default: true
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds reading the topology may take over all ready masters, waits between retries included.
    type: float
    default: 30
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.wait
  - mlops.mlflow_ha.info
notes:
  - Runs where the task runs; masters, filers, gateways and (with O(check_volume_servers)) the volume servers'
    registered addresses must be reachable from there.
  - A master forgets a volume server that stops sending heartbeats, so a missing one can only be named when an
    earlier look of the same run saw it; use O(wait_timeout) and O(expected_volume_servers) together.
"""

EXAMPLES = r"""
- name: Masters have quorum, four volume servers are up, filer and S3 answer (waiting up to two minutes)
  mlops.mlflow_ha.seaweedfs_cluster_info:
    masters: ["http://10.0.0.11:9333", "http://10.0.0.12:9333", "http://10.0.0.13:9333"]
    filers: ["http://10.0.0.11:8888"]
    s3: ["http://10.0.0.11:8333"]
    expected_volume_servers: 4
    wait_timeout: 120
  register: weed

- name: During a rolling restart only quorum matters
  mlops.mlflow_ha.seaweedfs_cluster_info:
    masters: ["http://10.0.0.11:9333", "http://10.0.0.12:9333", "http://10.0.0.13:9333"]
    fail_on_degraded: false

- name: There is room to write
  ansible.builtin.assert:
    that: weed.writable_volumes > 0 or weed.free_volume_slots > 0
"""

RETURN = r"""
masters:
  description: Every master in O(masters) with what it answered.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: Base URL as given.
      type: str
    alive:
      description: C(/healthz) answered 200.
      type: bool
    ready:
      description: C(/readyz) answered 200, that is the master knows a raft leader.
      type: bool
    is_leader:
      description: The master says it is the raft leader.
      type: bool
    leader:
      description: HTTP address (C(ip:port)) of the leader this master knows; null when it knows none.
      type: str
    error:
      description: Why the master is not ready, e.g. C(connection refused); null when it is.
      type: str
  sample:
    - {"url": "http://10.0.0.11:9333", "alive": true, "ready": true, "is_leader": true,
       "leader": "10.0.0.11:9333", "error": null}
ready_masters:
  description: Masters that are ready.
  returned: always
  type: int
  sample: 3
quorum:
  description: A majority of O(masters) is ready.
  returned: always
  type: bool
  sample: true
leader:
  description: HTTP address of the leader the ready masters agree on; null when unknown or disputed.
  returned: always
  type: str
  sample: 10.0.0.11:9333
volume_servers:
  description: The volume servers registered with the masters.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: The C(ip:port) the volume server registered with.
      type: str
    public_url:
      description: The public address it registered.
      type: str
    volumes:
      description: Volumes it holds.
      type: int
    ec_shards:
      description: Erasure-coding shards it holds.
      type: int
    max:
      description: Volumes it may hold.
      type: int
    data_center:
      description: Its data center.
      type: str
    rack:
      description: Its rack.
      type: str
    healthy:
      description: Its C(/healthz) answered 200; null when O(check_volume_servers=false).
      type: bool
    error:
      description: What its C(/healthz) answered instead; null when healthy or not probed.
      type: str
  sample:
    - {"url": "10.0.0.31:8080", "volumes": 7, "max": 8, "data_center": "dc1", "rack": "rack1", "healthy": true}
volume_server_count:
  description: Registered volume servers.
  returned: always
  type: int
  sample: 4
free_volume_slots:
  description: Volumes the cluster can still create (C(Topology.Free)); null when the topology was not read.
  returned: always
  type: int
  sample: 9
writable_volumes:
  description: Writable volumes over all layouts; null when the topology was not read.
  returned: always
  type: int
  sample: 7
layouts:
  description: Volume layouts (one per collection, replication, TTL and disk type).
  returned: always
  type: list
  elements: dict
  contains:
    collection:
      description: Collection name (empty for the default one).
      type: str
    replication:
      description: Replication setting, e.g. C(001).
      type: str
    ttl:
      description: TTL of the layout (empty for none).
      type: str
    disk_type:
      description: Disk type, e.g. C(hdd).
      type: str
    writables:
      description: Ids of the writable volumes.
      type: list
      elements: int
filers:
  description: Every filer in O(filers).
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: Base URL as given.
      type: str
    healthy:
      description: C(/healthz) answered 200.
      type: bool
    status:
      description: HTTP status it answered; null when it gave none.
      type: int
    error:
      description: What it answered instead of healthy, e.g. C(connection refused).
      type: str
s3:
  description: Every S3 gateway in O(s3), with the same fields as RV(filers).
  returned: always
  type: list
  elements: dict
degraded:
  description: There is at least one problem.
  returned: always
  type: bool
problems:
  description: One sentence per problem; empty when healthy.
  returned: always
  type: list
  elements: str
  sample: ["volume servers: 3 of 4 expected are registered (10.0.0.31:8080, 10.0.0.32:8080, 10.0.0.33:8080)",
           "filer http://10.0.0.11:8888 is down: connection refused"]
version:
  description: SeaweedFS version the leader reports, e.g. C(30GB 4.53); null when the topology was not read.
  returned: always
  type: str
topology_id:
  description: Id of the cluster's topology; null when not read.
  returned: always
  type: str
topology_from:
  description: The URL that answered C(/dir/status).
  returned: always
  type: str
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
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.seaweedfs import SeaweedClient, check_cluster


def cluster_info(params, transport=None, clock=None, rng=None):
    """Return (result, failure message or None)."""
    client = SeaweedClient(
        endpoint_list(params["masters"]),
        filers=endpoint_list(params["filers"] or []),
        s3=endpoint_list(params["s3"] or []),
        transport=transport or transport_from_params(params),
        clock=clock,
        rng=rng,
        request_timeout=params["timeout"],
        deadline=params["deadline"],
        check_volume_servers=params["check_volume_servers"],
    )
    check = check_cluster(client, expected_volume_servers=params["expected_volume_servers"],
                          wait_timeout=params["wait_timeout"], poll_interval=params["poll_interval"],
                          require_healthy=params["fail_on_degraded"])
    result = dict(changed=False, **check.to_dict())
    if check.quorum and not (check.degraded and params["fail_on_degraded"]):
        return result, None
    problems = "; ".join(check.assessment.problems)
    return result, "SeaweedFS cluster is not healthy%s: %s" % (check.waited_clause(), problems)


def main():
    run_info_module(AnsibleModule, dict(
        masters=dict(type="list", elements="str", required=True),
        filers=dict(type="list", elements="str", default=[]),
        s3=dict(type="list", elements="str", default=[]),
        expected_volume_servers=dict(type="int", default=0),
        check_volume_servers=dict(type="bool", default=True),
        fail_on_degraded=dict(type="bool", default=True),
        timeout=dict(type="float", default=5),
        deadline=dict(type="float", default=30),
    ), cluster_info)


if __name__ == "__main__":
    main()
