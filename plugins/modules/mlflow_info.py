#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mlflow_info
short_description: Check the health and version of each MLflow tracking server and the load balancer's view
version_added: "0.1.0"
description:
  - Asks every server in O(endpoints) for C(GET /health) (which must answer C(OK)) and C(GET /version), and
    reports each server's version, how long it took to answer, and what it answered when it is not healthy.
  - With O(lb_url), asks the load balancer's VIP for C(GET /health) too. With O(haproxy_stats_url), reads HAProxy's
    stats CSV and reports the state of each server of the backend O(haproxy_backend) (C(UP), C(DOWN), C(MAINT),
    ...) as HAProxy's health checks see it.
  - Fails with one sentence per problem when fewer than O(min_healthy) servers are healthy (naming each server that
    is down and what it answered), when the VIP does not answer C(OK), or when HAProxy has fewer than O(min_healthy)
    servers of the backend up.
  - With O(wait_timeout), keeps looking until there is no problem (after a restart, HAProxy needs its C(rise)
    checks before it sends traffic again) and reports the last look when the time is up.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description: Base URLs of the tracking servers themselves (not the VIP), e.g. V(https://10.0.0.31:5000).
    type: list
    elements: str
    required: true
  lb_url:
    description: Base URL of the load balancer's MLflow frontend, e.g. V(https://10.0.0.100:5000).
    type: str
  haproxy_stats_url:
    description: HAProxy's stats page, e.g. V(https://10.0.0.100:8404/stats); C(;csv) is appended.
    type: str
  haproxy_stats_username:
    description:
      - User of the stats page's basic-auth login (the collection's monitoring login); O(username) is never sent
        there.
    type: str
  haproxy_stats_password:
    description: Password of O(haproxy_stats_username).
    type: str
  haproxy_backend:
    description: The backend (or listen section) in HAProxy's stats that serves MLflow.
    type: str
    default: mlflow
  haproxy_servers:
    description:
      - Names of HAProxy servers (as in the backend, e.g. V(app1)) that must each be up in O(haproxy_backend),
        besides the count O(min_healthy) asks. A rolling restart waits on this until the restarted server takes
        traffic again in every load balancer.
    type: list
    elements: str
    default: []
  min_healthy:
    description:
      - Servers that must be healthy (and, with O(haproxy_stats_url), up in HAProxy); V(0) or unset means all of
        O(endpoints).
    type: int
  username:
    description: User of MLflow's basic-auth app (C(--app-name basic-auth)); C(/version) needs it there.
    type: str
  password:
    description: Password of O(username).
    type: str
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds one request to one server may take, retries included.
    type: float
    default: 15
  max_attempts:
    description: Tries per request to one server at most; a server that is down is reported, not waited for.
    type: int
    default: 2
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.wait
  - mlops.mlflow_ha.info
notes:
  - Runs where the task runs; every server, the VIP and the stats page must be reachable from there.
"""

EXAMPLES = r"""
- name: All three tracking servers answer, and HAProxy sends traffic to each (waiting up to two minutes)
  mlops.mlflow_ha.mlflow_info:
    endpoints: ["https://10.0.0.31:5000", "https://10.0.0.32:5000", "https://10.0.0.33:5000"]
    lb_url: "https://{{ lb_vip }}:5000"
    haproxy_stats_url: "https://{{ lb_vip }}:8404/stats"
    haproxy_stats_username: monitoring
    haproxy_stats_password: "{{ vault_mlflow_monitoring_password }}"
    ca_path: /etc/ssl/certs/mlflow-ha-ca.crt
    username: admin
    password: "{{ vault_mlflow_admin_password }}"
    wait_timeout: 120
  register: mlflow

- name: Every server runs the same MLflow
  ansible.builtin.assert:
    that: mlflow.versions == ['3.17.2']

- name: During a rolling restart two of three are enough
  mlops.mlflow_ha.mlflow_info:
    endpoints: ["https://10.0.0.31:5000", "https://10.0.0.32:5000", "https://10.0.0.33:5000"]
    lb_url: "https://{{ lb_vip }}:5000"
    min_healthy: 2
"""

RETURN = r"""
servers:
  description: Every server in O(endpoints) with what it answered.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: Base URL as given.
      type: str
    healthy:
      description: C(/health) answered C(OK) and C(/version) answered a version.
      type: bool
    version:
      description: The MLflow version it runs; null when it did not say.
      type: str
    error:
      description: "Why it is not healthy, e.g. C(GET /health: connection refused); null when it is."
      type: str
    seconds:
      description: Seconds its answers took, retries included.
      type: float
  sample:
    - {"url": "https://10.0.0.31:5000", "healthy": true, "version": "3.17.2", "error": null, "seconds": 0.012}
    - {"url": "https://10.0.0.32:5000", "healthy": false, "version": null,
       "error": "GET /health: connection refused", "seconds": 0.4}
healthy:
  description: URLs of the healthy servers.
  returned: always
  type: list
  elements: str
unhealthy:
  description: URLs of the servers that are not healthy.
  returned: always
  type: list
  elements: str
healthy_count:
  description: Servers that are healthy.
  returned: always
  type: int
  sample: 3
min_healthy:
  description: Servers that must be healthy (O(min_healthy), or all of O(endpoints)).
  returned: always
  type: int
  sample: 3
versions:
  description: The distinct MLflow versions the servers report; more than one during a rolling upgrade.
  returned: always
  type: list
  elements: str
  sample: ["3.17.2"]
lb:
  description: The load balancer's view.
  returned: always
  type: dict
  contains:
    url:
      description: O(lb_url).
      type: str
    healthy:
      description: The VIP's C(/health) answered C(OK); null without O(lb_url).
      type: bool
    error:
      description: What the VIP answered instead.
      type: str
    seconds:
      description: Seconds the VIP took to answer.
      type: float
    haproxy_stats_url:
      description: O(haproxy_stats_url).
      type: str
    haproxy_backend:
      description: The backend looked at; null without O(haproxy_stats_url).
      type: str
    haproxy_backend_status:
      description: The backend's status in HAProxy (C(UP), C(DOWN)).
      type: str
    haproxy_servers:
      description:
        - The backend's servers (name, status such as C(UP), C(UP 1/3), C(DOWN), C(MAINT), serving, check_status
          such as C(L7OK) or C(L4CON), address, last_change_seconds, last_check).
      type: list
      elements: dict
    haproxy_error:
      description: Why HAProxy's view could not be read.
      type: str
breakers:
  description: State of the circuit breaker of every endpoint asked in the last look.
  returned: always
  type: dict
problems:
  description: One sentence per problem; empty when healthy.
  returned: always
  type: list
  elements: str
  sample: ["2 of 3 MLflow tracking servers healthy, 3 required",
           "server https://10.0.0.32:5000 is down: GET /health: connection refused"]
checks:
  description: How many times the servers were looked at.
  returned: always
  type: int
waited:
  description: Seconds spent looking.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.info_module import run_info_module
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_health import mlflow_info


def info(params, transport=None, clock=None, rng=None):
    """Return (result, failure message or None)."""
    return mlflow_info(params, transport=transport, clock=clock, rng=rng)


def main():
    run_info_module(AnsibleModule, dict(
        endpoints=dict(type="list", elements="str", required=True),
        lb_url=dict(type="str"),
        haproxy_stats_url=dict(type="str"),
        haproxy_stats_username=dict(type="str"),
        haproxy_stats_password=dict(type="str", no_log=True),
        haproxy_backend=dict(type="str", default="mlflow"),
        haproxy_servers=dict(type="list", elements="str", default=[]),
        min_healthy=dict(type="int"),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        timeout=dict(type="float", default=5),
        deadline=dict(type="float", default=15),
        max_attempts=dict(type="int", default=2),
    ), info, required_together=[("username", "password"), ("haproxy_stats_username", "haproxy_stats_password")])


if __name__ == "__main__":
    main()
