# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: subject_alt_name
short_description: An address or a DNS name as a certificate's subject alternative name
version_added: "0.1.0"
description:
  - An IPv4 or IPv6 address becomes C(IP:<address>), anything else (a host or load balancer DNS name) C(DNS:<name>).
  - The site's entry point (C(mlflow_ha_endpoint)) is a VIP on premises and a cloud load balancer's DNS name in a
    cloud; the certificates that name it (HAProxy's, PgBouncer's) need the right kind of entry for each.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: The address or DNS name.
    type: str
    required: true
"""

EXAMPLES = r"""
sans: "{{ [mlflow_ha_endpoint] | map('mlops.mlflow_ha.subject_alt_name') | list }}"
# 10.0.0.40 -> IP:10.0.0.40     fd00::40 -> IP:fd00::40     mlflow-nlb-1.elb.eu-west-1.amazonaws.com -> DNS:...
"""

RETURN = r"""
_value:
  description: C(IP:<address>) or C(DNS:<name>).
  type: str
"""

import ipaddress


def subject_alt_name(name):
    name = str(name).strip()
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return "DNS:%s" % name
    return "IP:%s" % name.strip("[]")


class FilterModule:
    def filters(self):
        return {"subject_alt_name": subject_alt_name}
