#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: patroni_switchover
short_description: Switch the Patroni leader over to a healthy replica and wait for it to run
version_added: "0.1.0"
description:
  - Reads C(GET /cluster), picks the candidate (the given one, or the healthy replica with the least lag; a
    synchronous standby when synchronous_mode is on, because Patroni then switches over to nothing else),
    sends C(POST /switchover) and polls C(GET /cluster) until a new leader is seen in state running.
  - Fails with a sentence when there is no leader, no healthy replica to switch to, when Patroni refuses
    (e.g. HTTP 412 C(candidate name does not match with sync_standby)), or when no new leader runs within
    O(timeout); then the last observed cluster is returned.
  - The switchover request is sent once. It is repeated on another endpoint only when a connection was
    refused before anything was sent, because a switchover is not idempotent.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  leader:
    description: Member to switch over from. Defaults to the current leader; when given, it must be the leader.
    type: str
  candidate:
    description:
      - Member to promote. Defaults to the healthy replica with the least lag (a synchronous standby when
        synchronous_mode is on).
    type: str
  require_healthy_candidate:
    description:
      - Refuse a given O(candidate) that is not running, carries the nofailover tag, or has an unknown lag.
    type: bool
    default: true
  timeout:
    description: Seconds from the switchover request until a new leader must be running.
    type: float
    default: 60
  poll_interval:
    description: Seconds between looks at the cluster while waiting.
    type: float
    default: 1
  request_timeout:
    description: Seconds one read request may take.
    type: float
    default: 5
extends_documentation_fragment:
  - mlops.mlflow_ha.patroni
  - mlops.mlflow_ha.patroni.auth
  - mlops.mlflow_ha.tls
attributes:
  check_mode:
    support: full
    description: Plans the switchover from the current cluster (old leader, chosen candidate) without sending it.
  diff_mode:
    support: none
    description: The change is a role move, reported in RV(old_leader) and RV(new_leader), not as a diff.
"""

EXAMPLES = r"""
- name: Switch over to the best replica
  mlops.mlflow_ha.patroni_switchover:
    endpoints: ["https://10.0.0.21:8008", "https://10.0.0.22:8008", "https://10.0.0.23:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    username: patroni
    password: "{{ patroni_restapi_password }}"
  register: switch

- name: The switchover was fast enough
  ansible.builtin.assert:
    that:
      - switch.new_leader != switch.old_leader
      - switch.seconds < 30
"""

RETURN = r"""
old_leader:
  description: The leader before the switchover.
  returned: always
  type: str
  sample: pg1
candidate:
  description: The member asked to become the leader.
  returned: always
  type: str
  sample: pg2
new_leader:
  description: The leader seen running after the switchover; null in check mode.
  returned: always
  type: str
  sample: pg2
seconds:
  description: Seconds from the switchover request to the new leader seen running; null in check mode.
  returned: always
  type: float
  sample: 4.183
answer:
  description: Patroni's answer to the switchover request, e.g. C(Successfully switched over to "pg2").
  returned: always
  type: str
synchronous_mode:
  description: Whether synchronous_mode is on (null when the dynamic configuration could not be read).
  returned: always
  type: bool
members:
  description: The last observed members (see the patroni_cluster_info module).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import (
    PatroniError,
    change_module_kwargs,
    client_from_params,
    perform_switchover,
)


def switchover(params, check_mode, transport=None, clock=None):
    """Return the module result; raise PatroniError or HttpClientError."""
    client = client_from_params(params, request_timeout=params["request_timeout"],
                                deadline=max(1.0, min(30.0, params["timeout"])), write_timeout=params["timeout"],
                                transport=transport, clock=clock)
    done = perform_switchover(client, leader=params["leader"], candidate=params["candidate"],
                              timeout=params["timeout"], require_healthy_candidate=params["require_healthy_candidate"],
                              check_mode=check_mode, poll_interval=params["poll_interval"])
    result = done.to_dict()
    result["members"] = [m.to_dict() for m in done.cluster.members] if done.cluster else []
    return result


def main():
    module = AnsibleModule(**change_module_kwargs(
        options=dict(
            leader=dict(type="str"),
            candidate=dict(type="str"),
            require_healthy_candidate=dict(type="bool", default=True),
            timeout=dict(type="float", default=60),
            poll_interval=dict(type="float", default=1),
            request_timeout=dict(type="float", default=5),
        ),
    ))
    try:
        result = switchover(module.params, module.check_mode)
    except PatroniError as err:
        members = [m.to_dict() for m in err.cluster.members] if err.cluster else []
        module.fail_json(msg=str(err), members=members)
    except HttpClientError as err:
        module.fail_json(msg=str(err), members=[], **err.to_dict())
    if result["new_leader"] and result["new_leader"] != result["candidate"]:
        module.warn("Patroni promoted %s instead of the candidate %s (%s)"
                    % (result["new_leader"], result["candidate"], result["answer"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
