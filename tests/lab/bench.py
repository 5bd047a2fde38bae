"""`make bench`: registration load against the lab, then the same faults as the end-to-end test under load.
Writes tests/output/bench/bench-<UTC stamp>.json (and .png: registration latency over time, faults marked).
The lab is created when its VIP does not answer (tools/lab.sh up) and kept afterwards.

Environment: MLFLOW_HA_CLIENT_PYTHON (the Makefile sets it), BENCH_SECONDS (steady load, default 120),
BENCH_WORKERS (default 4), BENCH_FAULTS (1 to inject faults after the steady phase, the default; 0 skips),
BENCH_ONLY (only the faults whose "<kind> <what>" contains one of its comma-separated parts, e.g. "freeze,cut"
for the gray faults), BENCH_REPEAT (run the chosen faults that many times, default 1: a rare loss needs many
tries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labctl import ROOT, Lab, Load, percentile, run_faults, run_lab, summarize, tail

OUT = ROOT / "tests" / "output" / "bench"
PLOT = Path(__file__).resolve().parent / "plot_latency.py"


def main() -> int:
    lab = Lab.load()
    if not lab.http_ok(f"{lab.mlflow_url}/lb-health"):
        up = run_lab("up")
        if up.returncode != 0:
            print(tail(up.stdout + up.stderr), file=sys.stderr)
            return 1
    seconds = float(os.environ.get("BENCH_SECONDS", "120"))
    workers = int(os.environ.get("BENCH_WORKERS", "4"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load = Load(lab, f"bench-{stamp}", workers=workers, out=OUT)
    faults: list[dict] = []
    try:
        t0 = time.time()
        time.sleep(seconds)
        t_steady = time.time()
        if os.environ.get("BENCH_FAULTS", "1") == "1":
            faults = run_faults(lab, load, only=os.environ.get("BENCH_ONLY", ""),
                                repeat=int(os.environ.get("BENCH_REPEAT", "1")))
    finally:
        load.stop()
    events = load.events_list()
    steady = [e for e in events if e["event"] == "ack" and t0 <= e["start"] and e["t"] <= t_steady]
    steady_calls = [e for e in events if e["event"] in ("ack", "fail") and t0 <= e["t"] <= t_steady]
    result = {
        "stamp": stamp,
        "workers": workers,
        "steady": {
            "seconds": round(t_steady - t0, 1),
            "registrations": len(steady),
            "registrations_per_second": round(len(steady) / max(1.0, t_steady - t0), 2),
            "failed_calls": sum(1 for e in steady_calls if e["event"] == "fail"),
            "latency_seconds": {f"p{p}": percentile([e["seconds"] for e in steady], p) for p in (50, 90, 99)},
        },
        "faults": faults,
        "totals": summarize(events, load.verify()),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    subprocess.run([os.environ["MLFLOW_HA_CLIENT_PYTHON"], str(PLOT), str(load.events), str(out),
                    str(out.with_suffix(".png"))], check=False)
    print(json.dumps(result, indent=2))
    print(f"bench: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
