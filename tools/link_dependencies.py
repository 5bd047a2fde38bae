"""Link the collections mlops.mlflow_ha depends on into a collections path, beside the collection itself.

    VENV/bin/python tools/link_dependencies.py .cache/collections

The dependencies are galaxy.yml's, and theirs in turn (each one's MANIFEST.json), taken from the virtualenv's own
site-packages/ansible_collections (the `ansible` package brings them: no Galaxy access needed). ansible.cfg sets
collections_scan_sys_path = False, so Ansible sees these few collections instead of the ~90 the `ansible` package
installs: Mitogen lists every visible collection, importing each one's package and reading its meta/runtime.yml, for
each collection module a task runs (0.08 core-seconds per task and host here; docs/harness.md, "Collections Ansible
scans"). Run by tools/venv.sh and tools/controller.sh after they link the collection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

import ansible_collections

ROOT = Path(__file__).resolve().parent.parent


def installed(fqcn: str) -> Path:
    """The directory of an installed collection in this Python's ansible_collections packages."""
    namespace, name = fqcn.split(".")
    for base in ansible_collections.__path__:
        candidate = Path(base) / namespace / name
        if (candidate / "MANIFEST.json").exists():
            return candidate
    sys.exit(f"link_dependencies: {fqcn} is not installed in {sys.prefix} (requirements-controller.txt's `ansible` "
             f"package brings it)")


def closure(direct: list[str]) -> dict[str, Path]:
    """Every collection reached from `direct` through MANIFEST.json dependencies, with its directory."""
    found: dict[str, Path] = {}
    todo = list(direct)
    while todo:
        fqcn = todo.pop()
        if fqcn in found:
            continue
        found[fqcn] = installed(fqcn)
        manifest = json.loads((found[fqcn] / "MANIFEST.json").read_text())
        todo.extend((manifest["collection_info"].get("dependencies") or {}).keys())
    return found


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n", 2)[1])
    dest = Path(sys.argv[1]) / "ansible_collections"
    direct = list((yaml.safe_load((ROOT / "galaxy.yml").read_text()).get("dependencies") or {}).keys())
    for fqcn, source in sorted(closure(direct).items()):
        link = dest / fqcn.replace(".", "/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if link.resolve() == source.resolve():
                continue
            link.unlink()
        elif link.exists():
            continue  # a copy installed there on purpose (ansible-galaxy collection install -p) stays
        link.symlink_to(source)


if __name__ == "__main__":
    main()
