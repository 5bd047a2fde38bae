#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: etcd_cluster_info
short_description: Check an etcd cluster's quorum and leader through the v3 JSON gateway
version_added: "0.1.0"
description:
  - Lists the members through the first of O(endpoints) that answers (C(POST /v3/cluster/member/list)), then
    asks every member at its own client URLs for its status (C(POST /v3/maintenance/status)), that is the
    leader it follows, raft term and index, database size, version and alarms.
  - Fails with a sentence when there is no quorum (naming each member that does not answer and why), when
    fewer than O(min_healthy) members are healthy, when there is no leader or the members disagree on it,
    and when a member reports an alarm.
  - Speaks the gateway of etcd 3.4 and later (the C(/v3/) prefix). Requests are retried with backoff across
    endpoints by the collection's resilient HTTP client.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description:
      - Client URLs of the cluster, e.g. V(https://10.0.0.11:2379). Used for the member list; the status of
        each member is read from the client URLs the member advertises.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds the member list may take over all endpoints, waits between retries included.
    type: float
    default: 30
  min_healthy:
    description:
      - Voting members that must be healthy (answering, without alarms). Defaults to quorum (a majority of
        voting members); set it to the member count before a rolling restart.
    type: int
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.wait
  - mlops.mlflow_ha.info
notes:
  - Runs where the task runs; the advertised client URLs must be reachable from there.
  - Learners are listed but do not count towards quorum.
"""

EXAMPLES = r"""
- name: etcd has quorum and one leader
  mlops.mlflow_ha.etcd_cluster_info:
    endpoints: ["https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"]
    ca_path: /etc/etcd/pki/ca.crt
    client_cert: /etc/etcd/pki/client.crt
    client_key: /etc/etcd/pki/client.key
  register: etcd

- name: Every member is healthy before a rolling restart
  mlops.mlflow_ha.etcd_cluster_info:
    endpoints: ["https://10.0.0.11:2379"]
    ca_path: /etc/etcd/pki/ca.crt
    min_healthy: 3

- name: The leader is known by name
  ansible.builtin.debug:
    msg: "etcd leader is {{ etcd.leader }} ({{ etcd.healthy_count }}/{{ etcd.members | length }} healthy)"
"""

RETURN = r"""
members:
  description: Every member with its status.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Member name (empty when the member was added but never started).
      type: str
    id:
      description: Member id in hex, as C(etcdctl member list) prints it.
      type: str
    client_urls:
      description: Advertised client URLs.
      type: list
      elements: str
    peer_urls:
      description: Advertised peer URLs.
      type: list
      elements: str
    is_learner:
      description: Whether the member is a non-voting learner.
      type: bool
    healthy:
      description: The member answered its status and reports no alarm.
      type: bool
    is_leader:
      description: The member is the leader all answering members agree on.
      type: bool
    version:
      description: etcd version of the member (null when it did not answer).
      type: str
    db_size:
      description: Backend database size in bytes (null when it did not answer).
      type: int
    db_size_in_use:
      description: Bytes of the database logically in use.
      type: int
    raft_term:
      description: Raft term the member is in.
      type: int
    raft_index:
      description: Raft committed index of the member.
      type: int
    leader_id:
      description: Id (hex) of the leader this member follows; null when it knows none.
      type: str
    errors:
      description: Alarms the member reports, e.g. C(NOSPACE).
      type: list
      elements: str
    error:
      description: Why the member gave no usable status, e.g. C(connection refused).
      type: str
    endpoint:
      description: The URL that answered the status.
      type: str
  sample:
    - {"name": "pg1", "id": "8e9e05c52164694d", "healthy": true, "is_leader": true, "version": "3.4.23",
       "db_size": 20480, "raft_term": 2, "error": null}
leader:
  description: Name of the leader (its id when it has no name); null when there is none or members disagree.
  returned: always
  type: str
  sample: pg1
leader_id:
  description: Id (hex) of the leader.
  returned: always
  type: str
healthy_count:
  description: Voting members that are healthy.
  returned: always
  type: int
  sample: 3
member_count:
  description: Voting members (learners excluded).
  returned: always
  type: int
  sample: 3
quorum:
  description: Voting members needed for quorum.
  returned: always
  type: int
  sample: 2
cluster_id:
  description: Cluster id (hex) from the member list.
  returned: always
  type: str
problems:
  description: One sentence per problem; empty on success.
  returned: always
  type: list
  elements: str
  sample: ["no quorum: 1 of 3 members answer (need 2): pg2 connection refused, pg3 timed out"]
checks:
  description: How many times the cluster was looked at.
  returned: always
  type: int
waited:
  description: Seconds spent looking.
  returned: always
  type: float
gave_up:
  description: True when O(wait_timeout) ran out before the cluster was healthy (false when no wait was asked).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.etcd import (
    EtcdClient,
    assess_quorum,
    hex_id,
    member_facts,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
    endpoint_list,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.info_module import run_info_module
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import waited_clause, watch


def cluster_info(params, transport=None, clock=None):
    """Return the module result, after looking until the cluster is healthy or O(wait_timeout) passes; raise
    HttpClientError when, at the last look, no endpoint lists the members."""
    client = EtcdClient(
        endpoint_list(params["endpoints"]),
        transport=transport or transport_from_params(params),
        clock=clock,
        request_timeout=params["timeout"],
        deadline=params["deadline"],
    )

    def observe():
        try:
            snapshot = client.snapshot()
        except HttpClientError as err:  # no member list at all: an observation too, while waiting
            return err
        return snapshot, assess_quorum(snapshot, params["min_healthy"])

    def healthy(look) -> bool:
        return not isinstance(look, HttpClientError) and not look[1].problems

    seen = watch(observe, healthy, params["wait_timeout"], params["poll_interval"], client.clock)
    if isinstance(seen.last, HttpClientError):
        raise seen.last
    snapshot, report = seen.last
    leader = report.leader
    return {
        "changed": False,
        "members": [member_facts(state, leader) for state in snapshot.members],
        "leader": leader.label if leader else None,
        "leader_id": hex_id(leader.id) if leader else None,
        "healthy_count": report.healthy_count,
        "member_count": report.voting,
        "quorum": report.quorum,
        "cluster_id": hex_id(snapshot.cluster_id),
        "problems": report.problems,
        "checks": seen.checks,
        "waited": round(seen.waited, 3),
        "gave_up": seen.gave_up,
    }


def work(params):
    """(result, failure sentence or None), the convention of the collection's *_info modules."""
    try:
        result = cluster_info(params)
    except HttpClientError as err:
        return dict(changed=False, members=[], problems=[str(err)], **err.to_dict()), str(err)
    if not result["problems"]:
        return result, None
    waited = waited_clause(result["gave_up"], result["waited"], result["checks"])
    return result, "etcd cluster is not healthy%s: %s" % (waited, "; ".join(result["problems"]))


def main():
    run_info_module(AnsibleModule, dict(
        endpoints=dict(type="list", elements="str", required=True),
        timeout=dict(type="float", default=5),
        deadline=dict(type="float", default=30),
        min_healthy=dict(type="int"),
    ), work)


if __name__ == "__main__":
    main()
