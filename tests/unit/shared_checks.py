"""Checks several unit-test files share: an action plugin's argument spec against its documentation module, and the
Prometheus tools tools/promtool.sh unpacks into .cache/bin."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# What an option's documentation and its argument spec must agree on.
OPTION_FIELDS = ("type", "required", "default", "choices", "elements", "aliases")


def assert_documented_as_specified(documentation: str, argument_spec: dict[str, dict[str, Any]]) -> None:
    """A documentation-only module (plugins/modules/<name>.py) describes exactly the options of its action plugin's
    argument spec, with the same type, requirement, default, choices, element type and aliases."""
    documented = yaml.safe_load(documentation)["options"]
    assert set(documented) == set(argument_spec)
    for name, spec in argument_spec.items():
        doc = documented[name]
        as_documented = tuple(doc.get(field, False if field == "required" else None) for field in OPTION_FIELDS)
        as_specified = tuple(spec.get(field, False if field == "required" else None) for field in OPTION_FIELDS)
        assert as_documented == as_specified, name


def run_cache_tool(name: str, env_var: str, package: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run promtool or amtool (``env_var`` names another binary); a missing binary fails the calling test (in the
    test, not in a fixture: FAILED, not ERROR)."""
    path = Path(os.environ.get(env_var) or ROOT / ".cache" / "bin" / name)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}: run `bash tools/promtool.sh` first (it unpacks {name} from Debian's "
                    f"{package} package into .cache/bin), or set {env_var} to a {name} binary", pytrace=False)
    return subprocess.run([str(path), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
