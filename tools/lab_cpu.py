"""Where a running lab's CPU time goes: each lab container's cgroup usage over a window, and within it each process
(by its command name, threads included), read from the controller's /proc and /sys/fs/cgroup (no docker exec, so the
measurement adds no load inside the lab). Processes that start and end inside the window count in their container's
total only ("short-lived" in the table).

    .venv/bin/python tools/lab_cpu.py [SECONDS] [--prefix mlflow-ha-lab-] [--top N]

docs/harness.md ("Where an idle lab's CPU goes") has the figures this gave and what was changed because of them."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
SCOPE = re.compile(r"docker[-/]([0-9a-f]{64})")


def containers(prefix: str) -> dict[str, str]:
    """Full container id -> name, for the running containers whose name starts with prefix."""
    out = subprocess.run(["docker", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
                         capture_output=True, text=True, check=True).stdout
    return {cid: name for cid, name in (line.split() for line in out.splitlines()) if name.startswith(prefix)}


def cgroup_usage(cid: str) -> float:
    """Seconds of CPU the container's cgroup has used (cgroup v2, or v1's cpuacct controller)."""
    for path in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
                 Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")):
        if path.exists():
            for line in path.read_text().splitlines():
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) / 1e6
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    raise FileNotFoundError(f"no cgroup cpu.stat for container {cid[:12]}")


def processes(ids: set[str]) -> dict[int, tuple[str, str, float]]:
    """pid -> (container id, command name, CPU seconds so far) for every process in one of the containers."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            match = SCOPE.search((entry / "cgroup").read_text())
            if not match or match.group(1) not in ids:
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (match.group(1), comm, (int(fields[11]) + int(fields[12])) / TICK)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("seconds", nargs="?", type=float, default=60.0)
    parser.add_argument("--prefix", default="mlflow-ha-lab-")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    names = containers(args.prefix)
    ids = set(names)
    before_cg = {cid: cgroup_usage(cid) for cid in ids}
    before_ps = processes(ids)
    started = time.monotonic()
    time.sleep(args.seconds)
    window = time.monotonic() - started
    after_cg = {cid: cgroup_usage(cid) for cid in ids}
    after_ps = processes(ids)

    per_process: dict[tuple[str, str], float] = defaultdict(float)
    listed: dict[str, float] = defaultdict(float)  # per container: what the processes alive at the end used
    for pid, (cid, comm, used) in after_ps.items():
        earlier = before_ps.get(pid)
        # A pid new in the window counts from zero; one reused by another process counts from zero too.
        base = earlier[2] if earlier and earlier[1] == comm else 0.0
        per_process[(cid, comm)] += used - base
        listed[cid] += used - base
    by_container = {cid: after_cg[cid] - before_cg[cid] for cid in ids}
    total = sum(by_container.values())
    print(f"lab CPU over {window:.0f} s: {total:.1f} core-s, {total / window:.2f} cores on average")
    print(f"{'container':<28} {'cores':>6}")
    for cid, used in sorted(by_container.items(), key=lambda item: -item[1]):
        print(f"{names[cid]:<28} {used / window:6.3f}   short-lived {max(0.0, used - listed[cid]) / window:.3f}")
    print(f"\n{'container':<28} {'process':<18} {'cores':>6}")
    for (cid, comm), used in sorted(per_process.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{names[cid]:<28} {comm:<18} {used / window:6.3f}")


if __name__ == "__main__":
    main()
