#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: patroni_cluster_info
short_description: Check a Patroni cluster's leader, replicas, streaming and lag
version_added: "0.1.0"
description:
  - Reads C(GET /cluster) from the first of O(endpoints) that answers and judges it, asking for a running
    leader, enough healthy replicas, replicas streaming from the leader, lag within bounds, a synchronous standby.
  - Fails with one sentence per problem, e.g. C(replica pg3 lags 20971520 bytes, more than the allowed
    1048576), and returns the cluster as observed, so later tasks can assert on leader names and lag.
  - With O(wait_timeout), keeps looking until the cluster is healthy (after a restart or a switchover) and
    reports the last observation when the time is up.
  - Patroni before 3.0.4 reports every healthy replica as C(running); whether a replica streams is then read
    from the leader's C(GET /patroni) (its C(pg_stat_replication)). From 3.0.4 on, replicas say C(streaming).
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  require_leader:
    description: Fail when no member holds the leader lock in state running.
    type: bool
    default: true
  min_replicas:
    description: Healthy replicas (running, and streaming or within lag when those are required) needed.
    type: int
    default: 0
  require_streaming:
    description: Every replica must stream WAL from the leader.
    type: bool
    default: false
  max_lag_bytes:
    description:
      - Largest replication lag in bytes a replica may have. A replica whose lag Patroni reports as unknown
        fails this check. Patroni refreshes the leader's position once per C(loop_wait), so allow some slack.
    type: int
  require_sync_standby:
    description: A healthy synchronous standby must exist (synchronous_mode on).
    type: bool
    default: false
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds one look at the cluster may take over all endpoints, waits between retries included.
    type: float
    default: 30
  max_attempts:
    description: Requests per look at most, over all endpoints.
    type: int
    default: 6
extends_documentation_fragment:
  - mlops.mlflow_ha.patroni
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.wait
  - mlops.mlflow_ha.info
"""

EXAMPLES = r"""
- name: Leader, two streaming replicas, lag under 1 MiB, waiting up to a minute
  mlops.mlflow_ha.patroni_cluster_info:
    endpoints: ["https://10.0.0.21:8008", "https://10.0.0.22:8008", "https://10.0.0.23:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    min_replicas: 2
    require_streaming: true
    max_lag_bytes: 1048576
    wait_timeout: 60
  register: pg

- name: The writer VIP points at the leader
  ansible.builtin.assert:
    that: pg.leader == 'pg1'
"""

RETURN = r"""
members:
  description: Every member as C(GET /cluster) reports it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Member name.
      type: str
    role:
      description: C(leader), C(standby_leader), C(sync_standby) or C(replica).
      type: str
    state:
      description: PostgreSQL state as Patroni sees it, e.g. C(running), C(starting), C(stopped), C(streaming).
      type: str
    host:
      description: PostgreSQL host.
      type: str
    port:
      description: PostgreSQL port.
      type: int
    api_url:
      description: The member's REST API status URL.
      type: str
    timeline:
      description: PostgreSQL timeline.
      type: int
    lag_bytes:
      description: Bytes behind the leader; null on the leader and when Patroni reports the lag as unknown.
      type: int
    pending_restart:
      description: A parameter change waits for a restart.
      type: bool
    tags:
      description: Patroni tags of the member.
      type: dict
  sample:
    - {"name": "pg1", "role": "leader", "state": "running", "host": "10.0.0.21", "port": 5432, "timeline": 3,
       "lag_bytes": null}
leader:
  description: Name of the leader; null when there is none.
  returned: always
  type: str
  sample: pg1
replicas:
  description: Names of the replicas (sync standbys included).
  returned: always
  type: list
  elements: str
  sample: [pg2, pg3]
sync_standbys:
  description: Names of the synchronous standbys.
  returned: always
  type: list
  elements: str
timeline:
  description: The leader's timeline.
  returned: always
  type: int
  sample: 3
paused:
  description: The cluster is in maintenance mode (no automatic failover).
  returned: always
  type: bool
scheduled_switchover:
  description: A scheduled switchover (C(at), C(from), C(to)), when there is one.
  returned: always
  type: dict
replication:
  description:
    - The leader's C(pg_stat_replication) rows (application_name, state, sync_state, client_addr, usename,
      sync_priority); null unless O(require_streaming) is set or when it could not be read.
  returned: always
  type: list
  elements: dict
healthy:
  description: No problem was found.
  returned: always
  type: bool
problems:
  description: One sentence per problem; empty when healthy.
  returned: always
  type: list
  elements: str
  sample: ["replica pg3 lags 20971520 bytes, more than the allowed 1048576"]
endpoint:
  description: The URL that answered the last look.
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
gave_up:
  description: True when O(wait_timeout) ran out before the cluster was healthy (false when no wait was asked).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.info_module import run_info_module
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import (
    check_health,
    client_from_params,
    patroni_argument_spec,
)


def cluster_info(params, transport=None, clock=None):
    """Return (result, failed-with message or None)."""
    client = client_from_params(params, request_timeout=params["timeout"], deadline=params["deadline"],
                                max_attempts=params["max_attempts"], transport=transport, clock=clock)
    look = check_health(client, min_replicas=params["min_replicas"], require_streaming=params["require_streaming"],
                        max_lag_bytes=params["max_lag_bytes"], require_sync=params["require_sync_standby"],
                        require_leader=params["require_leader"], wait_timeout=params["wait_timeout"],
                        poll_interval=params["poll_interval"])
    result = dict(changed=False, **look.to_dict())
    if look.error is not None:
        result.update(look.error.to_dict())
        return result, str(look.error)
    if look.problems:
        return result, "Patroni cluster is not healthy%s: %s" % (look.waited_clause(), "; ".join(look.problems))
    return result, None


def main():
    run_info_module(AnsibleModule, dict(
        **patroni_argument_spec(auth=False),
        require_leader=dict(type="bool", default=True),
        min_replicas=dict(type="int", default=0),
        require_streaming=dict(type="bool", default=False),
        max_lag_bytes=dict(type="int"),
        require_sync_standby=dict(type="bool", default=False),
        timeout=dict(type="float", default=5),
        deadline=dict(type="float", default=30),
        max_attempts=dict(type="int", default=6),
    ), cluster_info)


if __name__ == "__main__":
    main()
