# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: alert_for
short_description: A Prometheus rule file with the hold durations of some alerts replaced
version_added: "0.1.0"
description:
  - Reads the text of a Prometheus rule file and replaces the C(for) duration of each alert named in O(durations);
    every other rule and field is kept as it is. The result is the file's YAML, written again.
  - An alert name that no rule of the file defines, or a duration that is not a Prometheus duration, is an error
    that names it.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: The rule file's text.
    type: str
    required: true
  durations:
    description: The new durations by alert name, for example C({MLflowServerDown 30s}) as a mapping.
    type: dict
    required: true
"""

EXAMPLES = r"""
content: "{{ lookup('ansible.builtin.file', 'rules.yml') | mlops.mlflow_ha.alert_for({'MLflowServerDown': '30s'}) }}"
"""

RETURN = r"""
_value:
  description: The rule file's text with the new durations.
  type: str
"""

import re

import yaml
from ansible.errors import AnsibleFilterError

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def alert_for(text, durations):
    if not durations:
        return text
    bad = sorted(name for name, value in durations.items() if not _DURATION.match(str(value)))
    if bad:
        raise AnsibleFilterError(
            "alert_for: %s: a duration is a number and a unit (ms, s, m, h, d, w, y), such as 30s or 2m"
            % ", ".join("%s=%r" % (name, durations[name]) for name in bad))
    document = yaml.safe_load(text)
    seen = set()
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if name in durations:
                rule["for"] = str(durations[name])
                seen.add(name)
    unknown = sorted(set(durations) - seen)
    if unknown:
        raise AnsibleFilterError("alert_for: no alert rule of the file is named %s" % ", ".join(unknown))
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


class FilterModule:
    def filters(self):
        return {"alert_for": alert_for}
