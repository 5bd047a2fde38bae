"""Each end-to-end test's own time goes into the phase table (tests/phases.py), beside the lab playbooks and
the chaos faults that record themselves: the monitoring checks wait for real alerts and scrapes, and their
minutes belong in the table too."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phases import record


def pytest_runtest_logreport(report):
    if report.when == "call":
        record(f"test: {report.nodeid.split('::')[-1]}", report.duration, 0 if report.passed else 1)
