"""A role's derived variables (roles/<role>/vars/main.yml) rendered with Ansible's own templating, for tests of
the expressions the roles compute. Variables given to ``render`` replace the role's (as extra vars would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]


def _trusted(value: Any) -> Any:
    """Strings marked as templates Ansible may render (ansible-core 2.19 renders only trusted ones, as it trusts
    a role's own files)."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


def role_vars(role: str) -> dict[str, Any]:
    """roles/<role>/vars/main.yml as written (nothing rendered)."""
    return yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())


def render(role: str, name: str, **variables: Any) -> Any:
    """The value of the role's variable ``name`` with ``variables`` set (they win over the role's vars)."""
    templar = Templar(loader=DataLoader(), variables=_trusted({**role_vars(role), **variables}))
    return templar.template(trust_as_template("{{ %s }}" % name))
