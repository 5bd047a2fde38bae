"""plot_latency.py EVENTS RESULT PNG: registration latency over time with the faults marked (run with the MLflow
venv's Python, which has matplotlib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(events_path: str, result_path: str, png: str) -> int:
    events = [json.loads(line) for line in Path(events_path).read_text().splitlines() if line.strip()]
    result = json.loads(Path(result_path).read_text())
    acks = [e for e in events if e["event"] == "ack"]
    fails = [e for e in events if e["event"] == "fail"]
    if not acks:
        return 0
    t0 = min(e["start"] for e in acks)
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.scatter([e["t"] - t0 for e in acks], [e["seconds"] for e in acks], s=4, label="registration (s)")
    ax.scatter([e["t"] - t0 for e in fails], [0] * len(fails), s=8, marker="x", color="red", label="failed call")
    for f in result.get("faults", []):
        ax.axvspan(f["killed_at"] - t0, f["restarted_at"] - t0, alpha=0.15, color="orange")
        ax.annotate(f["fault"], (f["killed_at"] - t0, ax.get_ylim()[1] * 0.9), fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("registration latency (s)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
