# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The adapter every ``*_info`` module uses: the same TLS and wait options, check mode, and one way to end.

A module passes its own options and a ``work(params) -> (result, failure)`` function: ``failure`` is None when
every check passed, else the sentence the module fails with; ``result`` always holds the facts of the last look
(so a failed task still shows them). The module class comes in as an argument, so a module's unit tests can
capture its argument spec by replacing its ``AnsibleModule``.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import tls_argument_spec
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import wait_argument_spec

Work = Callable[[Mapping[str, Any]], Tuple[Dict[str, Any], Optional[str]]]


def run_info_module(module_class: Any, options: Dict[str, Any], work: Work, **module_kwargs: Any) -> None:
    """Build the module (``options`` plus the TLS and wait options; a client key only with a certificate; check
    mode supported), run ``work`` on its parameters, and fail with its failure sentence or exit with its facts."""
    kwargs: Dict[str, Any] = dict(required_by={"client_key": "client_cert"}, supports_check_mode=True)
    kwargs.update(module_kwargs)
    module = module_class(argument_spec=dict(**tls_argument_spec(), **options, **wait_argument_spec()), **kwargs)
    result, failure = work(module.params)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)
