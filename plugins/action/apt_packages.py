# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin mlops.mlflow_ha.apt_packages (documentation in plugins/modules/apt_packages.py): ansible.builtin.apt,
asked only when dpkg says a package is missing. On an unchanged host the apt module still opens the whole package
cache (1-2 s of CPU per host and task); dpkg-query answers "installed?" for a fraction of that (docs/harness.md)."""

from __future__ import annotations

import re
import shlex

from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "name": {"type": "list", "elements": "str", "required": True, "aliases": ["pkg", "package"]},
    "state": {"type": "str", "default": "present", "choices": ["present", "latest", "absent", "fixed", "build-dep"]},
    "install_recommends": {"type": "bool"},
    "update_cache": {"type": "bool"},
    "cache_valid_time": {"type": "int", "default": 0},
    "policy_rc_d": {"type": "int"},
}

# What dpkg-query can answer: plain package names (no version pin, no wildcard, no release, no .deb file).
PLAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# ${db:Status-Abbrev} of a package that is installed and wanted: "ii " (desired install, status installed, no error).
INSTALLED = "ii"


def missing_packages(names: list[str], dpkg_output: str) -> list[str]:
    """The names dpkg-query's `${Package} ${db:Status-Abbrev}` lines do not report as installed (pure)."""
    installed = set()
    for line in dpkg_output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].startswith(INSTALLED):
            installed.add(fields[0].split(":")[0])  # an architecture qualifier (pkg:amd64) names the same package
    return [name for name in names if name not in installed]


def shortcut_applies(args: dict) -> bool:
    """Only `state: present` of plain package names can be answered by dpkg alone (pure)."""
    return args["state"] == "present" and bool(args["name"]) and all(PLAIN_NAME.match(name) for name in args["name"])


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        if shortcut_applies(args):
            names = args["name"]
            # A read-only query: it runs in check mode too, as apt's own check would read the cache.
            query = self._low_level_execute_command(
                "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' " + " ".join(shlex.quote(n) for n in names),
                sudoable=False)
            if not missing_packages(names, query.get("stdout", "")):
                result.update(changed=False, cache_updated=False, msg="installed (dpkg): " + ", ".join(names))
                return result
        apt_args = {key: value for key, value in args.items() if value is not None}
        result.update(self._execute_module(module_name="ansible.builtin.apt", module_args=apt_args,
                                           task_vars=task_vars))
        return result
