"""Molecule scenarios as pytest tests: one test per scenario, so the run ends with pytest's own count."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser):
    parser.addoption("--scenario", action="append", default=[],
                     help="run only these scenarios (path of the scenario directory, relative to the repository)")


def discover() -> list[Path]:
    """Every scenario directory: roles/<role>/molecule/<name> and the collection-level molecule/<name>."""
    found = sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")) + sorted(ROOT.glob("molecule/*/molecule.yml"))
    return [p.parent for p in found]


def pytest_generate_tests(metafunc):
    if "scenario" in metafunc.fixturenames:
        wanted = {str((ROOT / s).resolve()) for s in metafunc.config.getoption("scenario")}
        scenarios = [s for s in discover() if not wanted or str(s) in wanted]
        if wanted and len(scenarios) != len(wanted):
            raise ValueError(f"unknown scenario in {sorted(wanted)}; known: "
                             f"{[str(s.relative_to(ROOT)) for s in discover()]}")
        metafunc.parametrize("scenario", scenarios, ids=[str(s.relative_to(ROOT)) for s in scenarios])
