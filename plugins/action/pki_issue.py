# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin mlops.mlflow_ha.pki_issue (documentation in plugins/modules/pki_issue.py): a host's key and
certificate, signed by the collection CA, made in the controller's store in-process, without a module run."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.mlops.mlflow_ha.plugins.plugin_utils.pki import CURVES, KEY_TYPES, PkiError, issue

ARGUMENT_SPEC = {
    "ca_dir": {"type": "path", "required": True},
    "ca_passphrase": {"type": "str", "default": "", "no_log": True},
    "store_dir": {"type": "path", "required": True},
    "name": {"type": "str", "required": True},
    "common_name": {"type": "str", "required": True},
    "subject_alt_names": {"type": "list", "elements": "str", "required": True},
    "extended_key_usages": {"type": "list", "elements": "str", "default": ["serverAuth", "clientAuth"]},
    "key_type": {"type": "str", "default": "ECC", "choices": list(KEY_TYPES)},
    "key_curve": {"type": "str", "default": "secp384r1", "choices": list(CURVES)},
    "key_size": {"type": "int", "default": 4096},
    "valid_days": {"type": "int", "default": 825},
    "renew_before_days": {"type": "int", "default": 30},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = {}
        try:
            args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
            # The controller's store is filled in check mode too (as the CA is): only the copies to the host obey
            # check mode, so a check run shows the real changes there.
            result.update(issue(
                ca_dir=args["ca_dir"], ca_passphrase=args["ca_passphrase"] or "", store_dir=args["store_dir"],
                name=args["name"], common_name=args["common_name"], subject_alt_names=args["subject_alt_names"],
                extended_key_usages=args["extended_key_usages"], key_type=args["key_type"],
                key_curve=args["key_curve"], key_size=args["key_size"], valid_days=args["valid_days"],
                renew_before_days=args["renew_before_days"]))
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=self._scrub(exc.message, args))
        except PkiError as exc:
            result.update(failed=True, msg=self._scrub(str(exc), args))
        except OSError as exc:
            result.update(failed=True, msg=self._scrub(f"pki_issue: {exc}", args))
        return result

    def _scrub(self, msg: str, args: dict) -> str:
        """No message leaves with the passphrase in it, whatever raised it."""
        for secret in ((args or {}).get("ca_passphrase"), self._task.args.get("ca_passphrase")):
            if isinstance(secret, str) and secret:
                msg = msg.replace(secret, "********")
        return msg
