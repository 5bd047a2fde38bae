"""Every role's public variables are declared twice on purpose: defaults/main.yml (values) and
meta/argument_specs.yml (type, description, validation). This check keeps the two in step:
same keys, same defaults, every key prefixed with the role's name. Roles named _* are internal and skipped."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def check_role(role: Path) -> list[str]:
    name = role.name
    problems: list[str] = []
    spec_file = role / "meta" / "argument_specs.yml"
    defaults_file = role / "defaults" / "main.yml"
    if not spec_file.is_file():
        return [f"{name}: meta/argument_specs.yml is missing"]
    specs = yaml.safe_load(spec_file.read_text()) or {}
    # Options of every entry point (main, and e.g. pki's host_cert) share the role's defaults file.
    options: dict = {}
    for entry in (specs.get("argument_specs") or {}).values():
        options.update((entry or {}).get("options") or {})
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.is_file() else {}
    defaults = defaults or {}

    for key in sorted(set(defaults) - set(options)):
        problems.append(f"{name}: {key} is in defaults/main.yml but not in meta/argument_specs.yml")
    for key in sorted(set(options) - set(defaults)):
        if not options[key].get("required"):
            problems.append(f"{name}: {key} is in meta/argument_specs.yml but has no value in defaults/main.yml "
                            "(give it one, or mark it required: true)")
    for key in sorted(set(options) & set(defaults)):
        if "default" in options[key] and options[key]["default"] != defaults[key]:
            problems.append(f"{name}: {key} defaults to {defaults[key]!r} in defaults/main.yml but "
                            f"{options[key]['default']!r} in meta/argument_specs.yml")
        if not options[key].get("description"):
            problems.append(f"{name}: {key} has no description in meta/argument_specs.yml")
    for key in sorted(set(options) | set(defaults)):
        if not key.startswith(f"{name}_"):
            problems.append(f"{name}: {key} does not start with '{name}_'")
    return problems


def main() -> int:
    roles = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir() and not p.name.startswith("_"))
    problems = [p for role in roles for p in check_role(role)]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"argument specs: {len(roles)} role(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
