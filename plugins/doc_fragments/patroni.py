# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Options of the Patroni modules (module_utils/patroni.py, patroni_argument_spec): the members' REST API
    endpoints; mlops.mlflow_ha.patroni.auth adds the REST API user of the modules that change the cluster."""

    DOCUMENTATION = r"""
options:
  endpoints:
    description:
      - Base URLs of the members' REST APIs, e.g. V(https://10.0.0.21:8008) (HTTPS, verified with O(ca_path), when
        the patroni role serves TLS, its default). Any member answers for the whole cluster; they are tried in order.
    type: list
    elements: str
    required: true
"""

    AUTH = r"""
options:
  username:
    description:
      - REST API user (Patroni's C(restapi.authentication.username)); the unsafe endpoints (C(PATCH /config),
        C(POST /restart), C(POST /switchover)) need it when it is set.
    type: str
  password:
    description: Password of O(username).
    type: str
"""
