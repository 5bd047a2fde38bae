# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Wait options of the modules that look at a cluster until it is healthy (module_utils/resilience.py
    poll_until; argument spec: resilience.wait_argument_spec)."""

    DOCUMENTATION = r"""
options:
  wait_timeout:
    description:
      - Seconds to keep looking until every check passes before failing; V(0) looks once. When the time is up the
        module fails with what the last look found.
    type: float
    default: 0
  poll_interval:
    description: Seconds between looks while waiting.
    type: float
    default: 2
"""
