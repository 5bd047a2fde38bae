#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# The documentation of the action plugin plugins/action/apt_packages.py.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apt_packages
short_description: Debian packages through ansible.builtin.apt, asked only when dpkg says one is missing
version_added: "0.1.0"
description:
  - For O(state=present) of plain package names, asks C(dpkg-query) first whether every package is installed
    (status C(ii)); when all are, the task is unchanged and C(ansible.builtin.apt) does not run (it opens the whole
    package cache even when nothing is to be done, 1-2 s of CPU per host and task).
  - Otherwise, and for every other O(state) or a name with a version, wildcard or release, runs
    C(ansible.builtin.apt) with the same options and returns its result.
  - The query is read-only and runs in check mode too, so a check run reports what apt would change.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  name:
    description: Package names (as for C(ansible.builtin.apt)).
    type: list
    elements: str
    required: true
    aliases: [pkg, package]
  state:
    description: As for C(ansible.builtin.apt); only V(present) takes the C(dpkg-query) shortcut.
    type: str
    default: present
    choices: [present, latest, absent, fixed, build-dep]
  install_recommends:
    description: Passed to C(ansible.builtin.apt).
    type: bool
  update_cache:
    description: Passed to C(ansible.builtin.apt); not done when every package is installed already.
    type: bool
  cache_valid_time:
    description: Passed to C(ansible.builtin.apt).
    type: int
    default: 0
  policy_rc_d:
    description: Passed to C(ansible.builtin.apt) (V(101) installs without starting the package's services).
    type: int
extends_documentation_fragment:
  - action_common_attributes
  - action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: The dpkg query runs in check mode too; apt then runs in its own check mode.
  diff_mode:
    support: none
  platform:
    platforms: debian
notes:
  - An installed package at an older version than the archive's counts as present, as with C(ansible.builtin.apt).
seealso:
  - module: ansible.builtin.apt
"""

EXAMPLES = r"""
- name: Install HAProxy
  mlops.mlflow_ha.apt_packages:
    name: [haproxy]
    install_recommends: false
    update_cache: true
    cache_valid_time: 3600
"""

RETURN = r"""
msg:
  description: With the shortcut, the packages dpkg reported installed.
  returned: when every package was installed already
  type: str
  sample: "installed (dpkg): haproxy"
cache_updated:
  description: Whether the package lists were updated (never with the shortcut).
  returned: always
  type: bool
"""
