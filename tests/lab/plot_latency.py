"""plot_latency.py EVENTS RESULT PNG: registration latency over time with the faults marked, and when the result has
the side-by-side sweep, PNG's name with -sweep: throughput and p50/p99 per client count for the HA lab and the
single-server baseline (run with the MLflow venv's Python, which has matplotlib)."""

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
        ax.axvspan(f["hit_at"] - t0, f["healed_at"] - t0, alpha=0.15, color="orange")
        ax.annotate(f"{f['kind']} {f['fault']}", (f["hit_at"] - t0, ax.get_ylim()[1] * 0.9), fontsize=7,
                    rotation=90, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("registration latency (s)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    if (result.get("side_by_side") or {}).get("sweep"):
        plot_sweep(result["side_by_side"]["sweep"], str(Path(png).with_name(Path(png).stem + "-sweep.png")))
    return 0


def plot_sweep(rows: list[dict], png: str) -> None:
    """Registrations/s and p50/p99 latency per client count, HA lab beside the baseline."""
    clients = [row["workers"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target, style in (("ha", "o-"), ("baseline", "s--")):
        left.plot(clients, [row[target]["registrations_per_second"] for row in rows], style, label=target)
        for q in ("p50", "p99"):
            right.plot(clients, [row[target]["latency_seconds"][q] for row in rows], style,
                       label=f"{target} {q}", alpha=1.0 if q == "p99" else 0.6)
    left.set_xlabel("clients")
    left.set_ylabel("registrations/s")
    right.set_xlabel("clients")
    right.set_ylabel("registration latency (s)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
