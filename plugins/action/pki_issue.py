# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin mlops.mlflow_ha.pki_issue (documentation in plugins/modules/pki_issue.py): a host's key and
certificate, signed by the collection CA, made in the controller's store in-process, without a module run; with
dest_dir, installed on the host with the CA certificates by one run of the module mlops.mlflow_ha.pki_files."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.mlops.mlflow_ha.plugins.plugin_utils.pki import (
    CURVES,
    KEY_TYPES,
    PkiError,
    certificate_expiries,
    issue,
    metrics_file_name,
)

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
    "passphrase_min_length": {"type": "int", "default": 0},
    "dest_dir": {"type": "path"},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "ca_bundle": {"type": "list", "elements": "path"},
    "extra_files": {"type": "list", "elements": "dict", "default": [], "options": {
        "name": {"type": "str", "required": True},
        "content": {"type": "str", "required": True, "no_log": True},
        "mode": {"type": "str", "default": "0640"}}},
    "metrics_dir": {"type": "path"},
}

PASSPHRASE_MESSAGE = ("pki: pki_ca_passphrase is unset or shorter than {length} characters. Set it in a vault "
                      "(ansible-vault encrypt_string) for the hosts of this play; it protects the CA key in {ca_dir}.")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = {}
        try:
            args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
            if len(args["ca_passphrase"] or "") < args["passphrase_min_length"]:
                raise PkiError(PASSPHRASE_MESSAGE.format(length=args["passphrase_min_length"], ca_dir=args["ca_dir"]))
            # The controller's store is filled in check mode too (as the CA is): only the copies to the host obey
            # check mode, so a check run shows the real changes there.
            issued = issue(
                ca_dir=args["ca_dir"], ca_passphrase=args["ca_passphrase"] or "", store_dir=args["store_dir"],
                name=args["name"], common_name=args["common_name"], subject_alt_names=args["subject_alt_names"],
                extended_key_usages=args["extended_key_usages"], key_type=args["key_type"],
                key_curve=args["key_curve"], key_size=args["key_size"], valid_days=args["valid_days"],
                renew_before_days=args["renew_before_days"])
            result.update(issued)
            if args["dest_dir"]:
                result.update(self._install(issued, args, task_vars))
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=self._scrub(exc.message, args))
        except PkiError as exc:
            result.update(failed=True, msg=self._scrub(str(exc), args))
        except OSError as exc:
            result.update(failed=True, msg=self._scrub(f"pki_issue: {exc}", args))
        return result

    def _install(self, issued: dict, args: dict, task_vars: dict) -> dict:
        """The CA certificates (ca.crt), the certificate and the key in dest_dir on the host, in one module run;
        changed is then whether the host's files changed, and the fact pki_host_cert_changed says the same."""
        bundle = args["ca_bundle"] or [issued["ca_cert_path"]]
        files = [{"name": "ca.crt", "content": "".join(_read(path) for path in bundle), "mode": "0644"},
                 {"name": args["name"] + ".crt", "content": _read(issued["cert_path"]), "mode": "0644"},
                 {"name": args["name"] + ".key", "content": _read(issued["key_path"]), "mode": "0640"}]
        files += [{"name": extra["name"], "content": extra["content"], "mode": extra["mode"]}
                  for extra in args["extra_files"]]
        module_args = {"dir": args["dest_dir"], "owner": args["owner"], "group": args["group"], "files": files}
        if args["metrics_dir"]:
            # notAfter of the certificate and of each CA certificate of ca.crt, read here (the host may lack
            # cryptography); the module writes them for node_exporter's textfile collector if that directory exists.
            dest = args["dest_dir"].rstrip("/") or "/"
            module_args.update(
                metrics_dir=args["metrics_dir"], metrics_file=metrics_file_name(dest, args["name"]),
                certificates=(certificate_expiries(files[1]["content"], f"{dest}/{files[1]['name']}")
                              + certificate_expiries(files[0]["content"], f"{dest}/{files[0]['name']}")))
        installed = self._execute_module(module_name="mlops.mlflow_ha.pki_files", task_vars=task_vars,
                                         module_args=module_args)
        if installed.get("failed"):
            raise PkiError(installed.get("msg") or f"pki_files failed in {args['dest_dir']}")
        # The fact (what calling roles restart their service on) is about the TLS files only: a metrics file that
        # is new (node_exporter installed later, or this collection upgraded) restarts nothing.
        files_changed = bool(installed.get("changed_files"))
        metrics_changed = bool(installed.get("metrics_changed"))
        return {"changed": files_changed or metrics_changed, "store_changed": issued["changed"],
                "changed_files": installed.get("changed_files", []), "metrics_changed": metrics_changed,
                "metrics_path": installed.get("metrics_path", ""),
                "ansible_facts": {"pki_host_cert_changed": files_changed}}

    def _scrub(self, msg: str, args: dict) -> str:
        """No message leaves with the passphrase in it, whatever raised it."""
        for secret in ((args or {}).get("ca_passphrase"), self._task.args.get("ca_passphrase")):
            if isinstance(secret, str) and secret:
                msg = msg.replace(secret, "********")
        return msg


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()
