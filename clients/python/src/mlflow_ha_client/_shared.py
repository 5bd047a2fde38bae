"""The collection's client code under its own import names, without a top-level ``ansible_collections`` package.

``plugins/module_utils/{resilience,http_client,mlflow,mlflow_registration,mlflow_health,haproxy,exposition}.py``
import each other as ``ansible_collections.mlops.mlflow_ha.plugins.module_utils.<name>``. This package does not
carry copies of them: the wheel holds those very files (pyproject.toml's force-include puts them in
``mlflow_ha_client/_module_utils/``), and a checkout has them in ``plugins/module_utils``. ``install()`` appends a
finder to ``sys.meta_path`` that answers for exactly those names, and only when no other finder does: an installed
Ansible's ``ansible_collections`` (or this collection installed with ansible-galaxy and on ``sys.path``) keeps
precedence, and nothing named ``ansible_collections`` is installed into site-packages.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from typing import List, Optional, Sequence

PREFIX = "ansible_collections.mlops.mlflow_ha.plugins.module_utils"
SHARED = ("resilience", "http_client", "mlflow", "mlflow_registration", "mlflow_health", "haproxy", "exposition")
PARENTS = ("ansible_collections", "ansible_collections.mlops", "ansible_collections.mlops.mlflow_ha",
           "ansible_collections.mlops.mlflow_ha.plugins", PREFIX)

_lock = threading.Lock()


def source_dirs() -> List[Path]:
    """Where the shared files are: beside this package in a wheel, or the checkout's plugins/module_utils when the
    package runs from clients/python/src (pip install -e, or PYTHONPATH)."""
    here = Path(__file__).resolve().parent
    dirs = [here / "_module_utils"]
    if len(here.parents) > 3:
        dirs.append(here.parents[3] / "plugins" / "module_utils")
    return [d for d in dirs if (d / "mlflow_registration.py").is_file()]


class _Package(importlib.abc.Loader):
    """An empty package standing for a parent of the shared modules."""

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__path__ = []


class SharedFinder(importlib.abc.MetaPathFinder):
    """Finds the parents and the shared modules by their collection names; nothing else."""

    def __init__(self, dirs: Sequence[Path]):
        self.dirs = list(dirs)

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname in PARENTS:
            return importlib.machinery.ModuleSpec(fullname, _Package(), is_package=True)
        parent, leaf = fullname.rpartition(".")[0], fullname.rpartition(".")[2]
        if parent != PREFIX or leaf not in SHARED:
            return None
        for directory in self.dirs:
            candidate = directory / (leaf + ".py")
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, str(candidate))
        return None


def install() -> None:
    """Make the shared modules importable by their collection names (idempotent)."""
    with _lock:
        if any(isinstance(f, SharedFinder) for f in sys.meta_path):
            return
        dirs = source_dirs()
        if not dirs:
            raise ImportError("mlflow_ha_client: the collection's module_utils files are neither in the package "
                              "(_module_utils) nor in a checkout around it; reinstall the package from the wheel")
        sys.meta_path.append(SharedFinder(dirs))
