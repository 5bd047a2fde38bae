# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: url_host
short_description: An address or host name as the host part of a URL or a host:port pair
version_added: "0.1.0"
description:
  - An IPv6 address (it contains a colon) is put in brackets, as URLs and C(host:port) listen flags need it.
  - An IPv4 address, a host name or an address already in brackets is returned as it is.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: The address or host name.
    type: str
    required: true
"""

EXAMPLES = r"""
listen: "{{ node_exporter_listen_address | mlops.mlflow_ha.url_host }}:{{ node_exporter_port }}"
# 10.0.0.5 -> 10.0.0.5:9100      fd00::5 -> [fd00::5]:9100
"""

RETURN = r"""
_value:
  description: The host part, IPv6 in brackets.
  type: str
"""


def url_host(address):
    address = str(address)
    if ":" in address and not address.startswith("["):
        return "[%s]" % address
    return address


class FilterModule:
    def filters(self):
        return {"url_host": url_host}
