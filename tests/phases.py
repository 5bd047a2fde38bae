"""Phase timings for the table CI's log ends with: the tests add their steps (each molecule scenario, each chaos
fault) to the record tools/phase.sh keeps and prints (tests/output/phases.tsv, or $MLFLOW_HA_PHASES)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(name: str, seconds: float, returncode: int = 0) -> None:
    """Append one sub-phase (indented under the make target that runs it), in tools/phase.sh's format."""
    path = Path(os.environ.get("MLFLOW_HA_PHASES") or ROOT / "tests" / "output" / "phases.tsv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"  {name}\t{round(seconds)}\t{'ok' if returncode == 0 else f'FAILED ({returncode})'}\n")
