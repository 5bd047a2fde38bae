#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: prometheus_scrape
short_description: Scrape a Prometheus metrics endpoint and check that metric families are there
version_added: "0.1.0"
description:
  - Fetches the text exposition format from the first of O(endpoints) that answers, through the collection's
    resilient HTTP client (retries with backoff and jitter, circuit breaker per endpoint, failover).
  - Fails when none answers, naming every endpoint and what it said, or when a family in
    O(required_families) is missing.
  - Returns the family names and, for O(select), the samples, so later tasks can assert on values.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description:
      - Base URLs of the exporter, e.g. V(http://10.0.0.5:9100). Tried in order; the first answer wins.
    type: list
    elements: str
    required: true
  path:
    description: Path of the metrics page.
    type: str
    default: /metrics
  component:
    description: Name of the exporter, used in messages (e.g. V(node_exporter on pg1)).
    type: str
    default: metrics endpoint
  required_families:
    description: Metric families that must be present.
    type: list
    elements: str
    default: []
  select:
    description: Families whose samples are returned in RV(samples).
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds the whole scrape may take, waits between retries included.
    type: float
    default: 30
  max_attempts:
    description: Requests to make at most, over all endpoints.
    type: int
    default: 6
  username:
    description:
      - User for HTTP basic auth, for metrics pages behind a login (MLflow's basic-auth app serves C(/metrics) to
        admins only).
    type: str
  password:
    description: Password of O(username).
    type: str
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
  - mlops.mlflow_ha.info
notes:
  - Runs where the task runs; delegate it to the host that Prometheus would scrape from to test reachability.
"""

EXAMPLES = r"""
- name: Check node_exporter from the monitoring host
  mlops.mlflow_ha.prometheus_scrape:
    endpoints: ["http://{{ ansible_host }}:9100"]
    component: "node_exporter on {{ inventory_hostname }}"
    required_families: [node_cpu_seconds_total, node_systemd_unit_state]
    select: [node_systemd_unit_state]
  delegate_to: "{{ groups['monitoring'][0] }}"
  register: scrape

- name: Patroni's unit is active on the host
  ansible.builtin.assert:
    that: >-
      scrape.samples | selectattr('labels.name', 'eq', 'patroni.service') | selectattr('labels.state', 'eq', 'active')
      | map(attribute='value') | list == [1.0]
"""

RETURN = r"""
endpoint:
  description: The base URL that answered.
  returned: success
  type: str
  sample: http://10.0.0.5:9100
families:
  description: Sorted names of every metric family on the page.
  returned: success
  type: list
  elements: str
sample_count:
  description: Number of samples on the page.
  returned: success
  type: int
  sample: 1432
missing:
  description: Families from O(required_families) that are not on the page (empty on success).
  returned: always
  type: list
  elements: str
samples:
  description: Samples of the families in O(select), each with name, labels and value.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "node_load1", "labels": {}, "value": 0.12}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClient,
    HttpClientError,
    base_url,
    basic_auth,
    endpoint_list,
    tls_argument_spec,
    transport_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import ParseError, families, parse
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import RetryPolicy


def scrape(params, transport=None):
    """Return the module result dict; raise HttpClientError or ParseError on failure."""
    client = HttpClient(
        endpoint_list(params["endpoints"]),
        params["component"],
        policy=RetryPolicy(max_attempts=params["max_attempts"], deadline=params["deadline"]),
        request_timeout=params["timeout"],
        transport=transport or transport_from_params(params),
        headers=dict({"Accept": "text/plain"}, **basic_auth(params.get("username"), params.get("password"))),
    )
    response = client.request("GET", params["path"])
    samples = parse(response.text)
    by_family = families(samples)
    missing = [f for f in params["required_families"] if f not in by_family]
    selected = [s.to_dict() for name in params["select"] for s in by_family.get(name, [])]
    return {
        "changed": False,
        "endpoint": base_url(response, params["path"]),
        "families": sorted(by_family),
        "sample_count": len(samples),
        "missing": missing,
        "samples": selected,
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **tls_argument_spec(),
            endpoints=dict(type="list", elements="str", required=True),
            path=dict(type="str", default="/metrics"),
            component=dict(type="str", default="metrics endpoint"),
            required_families=dict(type="list", elements="str", default=[]),
            select=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=5),
            deadline=dict(type="float", default=30),
            max_attempts=dict(type="int", default=6),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
        ),
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    try:
        result = scrape(module.params)
    except HttpClientError as err:
        module.fail_json(msg=str(err), missing=[], **err.to_dict())
    except ParseError as err:
        module.fail_json(msg="%s: the page at %s is not Prometheus text format: %s"
                         % (module.params["component"], module.params["path"], err), missing=[])
    if result["missing"]:
        module.fail_json(msg="%s at %s%s answered, but lacks %s (a collector or exporter feature is off?)" % (
            module.params["component"], result["endpoint"], module.params["path"],
            ", ".join(result["missing"])), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
