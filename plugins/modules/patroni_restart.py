#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: patroni_restart
short_description: Restart PostgreSQL on one Patroni member through its REST API
version_added: "0.1.0"
description:
  - Reads C(GET /cluster) from the first of O(endpoints) that answers, finds O(member) and sends C(POST /restart)
    to that member's own REST API (its C(api_url)). Patroni restarts PostgreSQL and answers when it is up again;
    on the leader it keeps the leader lock meanwhile.
  - With O(restart_pending) (the default) only when the member reports a restart pending (its C(GET /patroni),
    else the cluster view); otherwise C(changed) is false and nothing is sent.
  - Fails with a sentence that names the member and the reason, for example a member that is not in the cluster,
    Patroni refusing the request (HTTP 401, a restart already in progress) or a restart that failed.
  - The request is repeated only when the connection was refused before anything was sent. When it was sent and
    no answer came, the module watches the member until it runs a restarted PostgreSQL (a new postmaster start
    time) or O(timeout) passes.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  member:
    description: Name of the member to restart, as C(GET /cluster) lists it.
    type: str
    required: true
  restart_pending:
    description: Restart only when the member has a restart pending (Patroni's C(restart_pending) condition).
    type: bool
    default: true
  timeout:
    description: Seconds the restart may take, from the request until PostgreSQL runs again.
    type: float
    default: 120
  request_timeout:
    description: Seconds one read request may take.
    type: float
    default: 5
  poll_interval:
    description: Seconds between looks at the member when the restart request got no answer.
    type: float
    default: 2
extends_documentation_fragment:
  - mlops.mlflow_ha.patroni
  - mlops.mlflow_ha.patroni.auth
  - mlops.mlflow_ha.tls
attributes:
  check_mode:
    support: full
    description: Reports whether the member would be restarted (C(changed)) and why (RV(pending_restart_reason)).
  diff_mode:
    support: none
    description: A restart changes no settings; RV(pending_restart_reason) lists the ones it puts into effect.
"""

EXAMPLES = r"""
- name: Restart PostgreSQL on pg2 if a settings change waits for it
  mlops.mlflow_ha.patroni_restart:
    endpoints: ["https://10.0.0.21:8008", "https://10.0.0.22:8008", "https://10.0.0.23:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    member: pg2
    username: patroni
    password: "{{ patroni_restapi_password }}"
  register: restart

- name: Restart PostgreSQL on pg3 whatever is pending
  mlops.mlflow_ha.patroni_restart:
    endpoints: ["https://10.0.0.21:8008"]
    ca_path: /etc/patroni/tls/ca.crt
    member: pg3
    username: patroni
    password: "{{ patroni_restapi_password }}"
    restart_pending: false
"""

RETURN = r"""
member:
  description: The member named in O(member).
  returned: always
  type: str
  sample: pg2
role:
  description: Its role before the restart (C(leader), C(sync_standby), C(replica), ...).
  returned: always
  type: str
  sample: sync_standby
state:
  description: Its state before the restart, as C(GET /cluster) shows it.
  returned: always
  type: str
  sample: streaming
pending_restart:
  description: Whether it had a restart pending before this task.
  returned: always
  type: bool
pending_restart_reason:
  description:
    - The settings waiting for the restart (C(old_value), C(new_value) per parameter) when the member's Patroni
      reports them (4.x does); null when it does not say.
  returned: always
  type: dict
  sample: {"max_connections": {"old_value": "100", "new_value": "200"}}
answer:
  description: Patroni's answer to the restart request, e.g. C(restarted successfully); empty in check mode.
  returned: always
  type: str
seconds:
  description: Seconds from the restart request until Patroni answered (or the member was seen running again).
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni import change_module_kwargs, client_from_params
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.patroni_admin import ChangeError, restart_member


def restart(params, check_mode, transport=None, clock=None):
    """Return the module result; raise ChangeError or HttpClientError."""
    client = client_from_params(params, request_timeout=params["request_timeout"],
                                deadline=max(1.0, min(30.0, params["timeout"])), transport=transport, clock=clock)
    return restart_member(client, params["member"], restart_pending=params["restart_pending"],
                          check_mode=check_mode, timeout=params["timeout"],
                          poll_interval=params["poll_interval"]).to_dict()


def main():
    module = AnsibleModule(**change_module_kwargs(
        options=dict(
            member=dict(type="str", required=True),
            restart_pending=dict(type="bool", default=True),
            timeout=dict(type="float", default=120),
            request_timeout=dict(type="float", default=5),
            poll_interval=dict(type="float", default=2),
        ),
    ))
    try:
        result = restart(module.params, module.check_mode)
    except ChangeError as err:
        module.fail_json(msg=str(err), **err.facts)
    except HttpClientError as err:
        module.fail_json(msg=str(err), member=module.params["member"], **err.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
