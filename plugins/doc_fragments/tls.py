# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """TLS options of the modules that talk HTTP through module_utils/http_client.py."""

    DOCUMENTATION = r"""
options:
  ca_path:
    description: CA bundle to verify HTTPS endpoints with (the collection CA for etcd, Patroni and storage).
    type: path
  client_cert:
    description: Client certificate for endpoints that require one (etcd with client-certificate auth).
    type: path
  client_key:
    description: Key of O(client_cert).
    type: path
  validate_certs:
    description: Verify TLS certificates and host names.
    type: bool
    default: true
"""
