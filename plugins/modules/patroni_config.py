#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: patroni_config
short_description: Keep Patroni's dynamic configuration in the DCS in step with the wanted settings
version_added: "0.1.0"
description:
  - Reads C(GET /config) from the first of O(endpoints) that answers and compares it with O(config), setting by
    setting. Values are compared as text, as PostgreSQL reads them, so V(200) and V("200") are the same setting.
    Nested sections are compared key by key and drifting settings are named by their path, for example
    C(postgresql.parameters.max_connections). Settings the DCS holds and O(config) does not mention are left alone.
  - Sends C(PATCH /config) with the drifting settings only, and nothing when none drifts. A V(null) in O(config)
    means the setting must not be set; the PATCH removes it.
  - With O(apply_timeout), waits after a PATCH until every member has applied it (its C(dcs_last_seen) in
    C(GET /patroni) has moved on three times, so the HA loop that read the change has finished) and takes each
    member's C(pending_restart) from its own status. Members that do not confirm in time are listed in
    RV(unconfirmed) with a warning; the module does not fail for them.
  - Returns the cluster as C(GET /cluster) shows it (the same facts as the patroni_cluster_info module, without
    its health judgement), so a later task can restart the members in RV(pending_restart) without reading it again.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  config:
    description:
      - The wanted dynamic configuration, e.g. C(ttl), C(loop_wait), C(synchronous_mode) and a C(postgresql)
        section with C(parameters). Only the keys given are compared and written.
    type: dict
    required: true
  apply_timeout:
    description:
      - Seconds to wait after a PATCH until every member has applied it; V(0) reads the cluster once right after
        the PATCH, when members may not have applied it yet.
    type: float
    default: 0
  poll_interval:
    description: Seconds between looks while waiting for the members.
    type: float
    default: 1
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds one read or the PATCH may take over all endpoints, waits between retries included.
    type: float
    default: 30
  max_attempts:
    description: Requests per read or PATCH at most, over all endpoints.
    type: int
    default: 6
extends_documentation_fragment:
  - mlops.mlflow_ha.patroni
  - mlops.mlflow_ha.patroni.auth
  - mlops.mlflow_ha.tls
attributes:
  check_mode:
    support: full
    description: Reads the configuration and the cluster and reports the drift and C(changed); writes nothing.
  diff_mode:
    support: full
    description: The drifting settings, before (as the DCS holds them) and after (as wanted).
notes:
  - The PATCH is retried after a timeout or an HTTP 502/503/504 like a read, because merging the same settings
    twice leaves the same configuration.
"""

EXAMPLES = r"""
- name: Keep the DCS settings in step and learn who needs a restart
  mlops.mlflow_ha.patroni_config:
    endpoints: ["https://10.0.0.21:8008", "https://10.0.0.22:8008", "https://10.0.0.23:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    username: patroni
    password: "{{ patroni_restapi_password }}"
    config:
      ttl: 20
      loop_wait: 2
      retry_timeout: 5
      synchronous_mode: true
      postgresql:
        parameters:
          max_connections: 200
    apply_timeout: 60
  register: dcs

- name: Restart the members whose settings need it
  mlops.mlflow_ha.patroni_restart:
    endpoints: ["https://10.0.0.21:8008", "https://10.0.0.22:8008", "https://10.0.0.23:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    member: "{{ item }}"
    username: patroni
    password: "{{ patroni_restapi_password }}"
  loop: "{{ dcs.pending_restart }}"
"""

RETURN = r"""
drift:
  description: Paths of the settings that differed from O(config) (and were written unless in check mode).
  returned: always
  type: list
  elements: str
  sample: [loop_wait, postgresql.parameters.max_connections]
config:
  description: The dynamic configuration after this task (Patroni's answer to the PATCH, else what was read).
  returned: always
  type: dict
pending_restart:
  description: Names of the members with a restart pending.
  returned: always
  type: list
  elements: str
  sample: [pg2]
applied:
  description:
    - Members that confirmed they applied the PATCH; null when the module did not wait (no PATCH, check mode, or
      O(apply_timeout=0)).
  returned: always
  type: list
  elements: str
unconfirmed:
  description: Members that did not confirm within O(apply_timeout); their RV(pending_restart) may be stale.
  returned: always
  type: list
  elements: str
checks:
  description: Looks at the members while waiting (0 without a wait).
  returned: always
  type: int
waited:
  description: Seconds spent waiting for the members.
  returned: always
  type: float
members:
  description:
    - Every member as C(GET /cluster) reports it (see the patroni_cluster_info module), with C(pending_restart)
      from the member's own C(GET /patroni) after a wait.
  returned: always
  type: list
  elements: dict
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
sync_standbys:
  description: Names of the synchronous standbys.
  returned: always
  type: list
  elements: str
timeline:
  description: The leader's timeline.
  returned: always
  type: int
paused:
  description: The cluster is in maintenance mode (no automatic failover).
  returned: always
  type: bool
scheduled_switchover:
  description: A scheduled switchover (C(at), C(from), C(to)), when there is one.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import change_module_kwargs, client_from_params
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni_admin import (
    ChangeError,
    apply_dynamic_config,
)


def configure(params, check_mode, diff_mode=False, transport=None, clock=None):
    """Return the module result; raise ChangeError or HttpClientError."""
    client = client_from_params(params, request_timeout=params["timeout"], deadline=params["deadline"],
                                max_attempts=params["max_attempts"], transport=transport, clock=clock)
    done = apply_dynamic_config(client, params["config"], check_mode=check_mode,
                                apply_timeout=params["apply_timeout"], poll_interval=params["poll_interval"])
    result = done.to_dict()
    if diff_mode:
        result["diff"] = {"before": done.before, "after": done.after}
    return result


def main():
    module = AnsibleModule(**change_module_kwargs(
        options=dict(
            config=dict(type="dict", required=True),
            apply_timeout=dict(type="float", default=0),
            poll_interval=dict(type="float", default=1),
            timeout=dict(type="float", default=5),
            deadline=dict(type="float", default=30),
            max_attempts=dict(type="int", default=6),
        ),
    ))
    try:
        result = configure(module.params, module.check_mode, module._diff)
    except ChangeError as err:
        module.fail_json(msg=str(err), **err.facts)
    except HttpClientError as err:
        module.fail_json(msg=str(err), **err.to_dict())
    if result["unconfirmed"]:
        module.warn("members %s did not confirm within %s s that they applied the new settings; their "
                    "pending_restart may be stale" % (", ".join(result["unconfirmed"]), module.params["apply_timeout"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
