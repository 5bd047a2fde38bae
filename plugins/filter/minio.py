# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: minio_volumes
short_description: The MINIO_VOLUMES string for a distributed MinIO over a list of hosts
version_added: "0.1.0"
description:
  - Hosts whose names are one prefix followed by consecutive numbers (C(s3-1) ... C(s3-4)) give MinIO's own
    expansion form, C(https://s3-{1...4}:9000/var/lib/minio/data), which MinIO expands identically on every node.
  - Any other set of names is listed in full, separated by spaces, in the order given.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: Host names (as the nodes resolve each other).
    type: list
    elements: str
    required: true
  scheme:
    description: V(http) or V(https).
    type: str
    default: https
  port:
    description: MinIO's API port.
    type: int
    default: 9000
  path:
    description: Data directory on every node.
    type: str
    default: /var/lib/minio/data
"""

EXAMPLES = r"""
minio_volumes: "{{ groups['storage'] | mlops.mlflow_ha.minio_volumes(scheme='https', port=9000) }}"
# ['s3-1', 's3-2', 's3-3', 's3-4'] -> https://s3-{1...4}:9000/var/lib/minio/data
"""

RETURN = r"""
_value:
  description: The value for MINIO_VOLUMES.
  type: str
"""

import re

from ansible.errors import AnsibleFilterError

_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def minio_volumes(hosts, scheme="https", port=9000, path="/var/lib/minio/data"):
    hosts = list(hosts or [])
    if not hosts:
        raise AnsibleFilterError("minio_volumes: no hosts given")
    if len(set(hosts)) != len(hosts):
        raise AnsibleFilterError("minio_volumes: hosts are listed twice: %s" % ", ".join(hosts))
    if scheme not in ("http", "https"):
        raise AnsibleFilterError("minio_volumes: scheme must be http or https, got %r" % (scheme,))
    path = "/" + path.lstrip("/")
    matches = [_NUMBERED.match(h) for h in hosts]
    if len(hosts) > 1 and all(matches):
        prefixes = {(m.group(1), m.group(3)) for m in matches}
        numbers = sorted(int(m.group(2)) for m in matches)
        padded = any(m.group(2).startswith("0") and len(m.group(2)) > 1 for m in matches)
        if len(prefixes) == 1 and not padded and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            prefix, suffix = prefixes.pop()
            return "%s://%s{%d...%d}%s:%d%s" % (scheme, prefix, numbers[0], numbers[-1], suffix, port, path)
    return " ".join("%s://%s:%d%s" % (scheme, h, port, path) for h in hosts)


class FilterModule:
    def filters(self):
        return {"minio_volumes": minio_volumes}
