"""`make bench`: registration load against the lab, then the same faults as the end-to-end test under load.
Writes tests/output/bench/bench-<UTC stamp>.json (and .png: registration latency over time, faults marked).
The lab is created when its VIP does not answer (tools/lab.sh up) and kept afterwards.

Environment: MLFLOW_HA_CLIENT_PYTHON (the Makefile sets it), BENCH_SECONDS (steady load, default 120),
BENCH_WORKERS (default 4), BENCH_FAULTS (1 to inject faults after the steady phase, the default; 0 skips),
BENCH_ONLY (only the faults whose "<kind> <what>" contains one of its comma-separated parts, e.g. "freeze,cut"
for the gray faults), BENCH_REPEAT (run the chosen faults that many times, default 1: a rare loss needs many
tries), BENCH_CUTS (1, the default: also cut the link of the storage node, the MLflow server and the load balancer,
so that every tier meets each fault class; the failover timeline per fault: seconds to the first success, the
longest time without one, failed calls, p99 of the registrations meanwhile).

Side by side (issue 16): before the faults, the same load runs against the lab (HTTPS VIP, login, HA) and against a
single-server baseline on the lab's network (tools/bench/baseline.yml: one MLflow of the same version and worker
count, PostgreSQL, one SeaweedFS; no replication, no load balancer, no TLS, no login), for each client count of
BENCH_SWEEP (default "1,4,16,32"), BENCH_PHASE_SECONDS each (default 45, the first BENCH_WARMUP seconds of each not
counted, default 5), BENCH_ROUNDS times (default 2; the order of the two flips every round so both see the same
machine noise). Reported per client count: registrations/s and p50/p90/p99 for each, the ratios HA/baseline, and
the processes that used the most CPU during the phase (per machine, from /proc), and for the lab where a
registration's seconds go, hop by hop (tests/lab/hops.py). BENCH_BASELINE=0 skips it.

Artifact sizes (BENCH_ARTIFACT_SIZES, default "2K,10M,200M,1G"; empty skips): each uploaded and read back with the
official client through the lab's proxied path and the baseline's (tests/lab/artifact_sizes.py).

Growth (BENCH_GROWTH, default "0,10000,50000"; empty skips): registration latency through the lab with that many
versions already in the registry (seeded into PostgreSQL by tools/registry_seed.py through the VIP's primary port).

Read scaling (BENCH_READ_REPLICA, unset: the lab as it is): 1 converges the lab with mlflow_ha_read_replica on before
the phases (MLflow's reads on the synchronous standbys, Patroni's synchronous_commit remote_apply; docs/performance.md,
"Read scaling"), 0 converges it off (the MLflow servers first). The lab keeps that state afterwards; the result's
"read_replica" says which it was. Run the same BENCH_* once with each to compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hops import per_hop, snapshot
from labctl import ROOT, Lab, Load, percentile, run_faults, run_lab, summarize, tail

OUT = ROOT / "tests" / "output" / "bench"
PLOT = Path(__file__).resolve().parent / "plot_latency.py"
ARTIFACT_SIZES = Path(__file__).resolve().parent / "artifact_sizes.py"


BASELINE_PLAYBOOK = ROOT / "tools" / "bench" / "baseline.yml"


def baseline_address() -> str:
    return yaml.safe_load((ROOT / "tools" / "bench" / "vars.yml").read_text())["bench_baseline_address"]


def stat_ticks(stat: str) -> tuple[str, int]:
    """(command, user + system CPU ticks) from the text of /proc/<pid>/stat."""
    head, _paren, rest = stat.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[11]) + int(fields[12])


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """Every process's CPU ticks so far and a label "<machine>/<command>" (the machine from the process's own
    /etc/hostname: the lab's systemd containers put their processes outside the container's cgroup, so docker
    stats cannot attribute them)."""
    ticks: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, used = stat_ticks((entry / "stat").read_text())
            try:
                host = (entry / "root" / "etc" / "hostname").read_text().strip()
            except OSError:
                host = "?"
            ticks[int(entry.name)] = (used, f"{host}/{comm}")
        except (OSError, IndexError, ValueError):
            continue
    return ticks


def busiest(before: dict[int, tuple[int, str]], after: dict[int, tuple[int, str]], seconds: float,
            top: int = 6) -> list[dict]:
    """The labels that used the most CPU between two cpu_ticks(), in % of one core (2 cores: 200 % at most)."""
    used: dict[str, int] = {}
    for pid, (ticks, label) in after.items():
        used[label] = used.get(label, 0) + ticks - before.get(pid, (0, label))[0]
    hz = os.sysconf("SC_CLK_TCK")
    rows = [{"process": label, "cpu_percent": round(100 * t / hz / max(seconds, 0.1), 1)} for label, t in used.items()]
    return sorted(rows, key=lambda r: -r["cpu_percent"])[:top]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (the load generator: is the client the bottleneck?)."""
    try:
        return stat_ticks(Path(f"/proc/{pid}/stat").read_text())[1] / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def phase(lab: Lab, target: str, workers: int, seconds: float, warmup: float, stamp: str, uri: str,
          env: dict, name: str = "") -> dict:
    """One load phase against one registry: registrations that started after the warm-up and ended in the phase.
    name: the load's name (its models are lab-<name>-w<worker>); by default a new one per phase."""
    load = Load(lab, name or f"bench-{stamp}-{target}-c{workers}-{int(time.time())}", workers=workers, out=OUT,
                tracking_uri=uri, client_env=env)
    cpu0 = process_cpu_seconds(load.proc.pid)
    time.sleep(warmup)
    hops_before = snapshot(lab) if target == "ha" else None
    t0 = time.time()
    ticks0 = cpu_ticks()
    time.sleep(seconds)
    t1 = time.time()
    hot = busiest(ticks0, cpu_ticks(), t1 - t0)
    hops_after = snapshot(lab) if target == "ha" else None
    load_cpu = process_cpu_seconds(load.proc.pid) - cpu0
    load.stop(abandon=True)
    events = load.events_list()
    acks = [e for e in events if e["event"] == "ack" and e["start"] >= t0 and e["start"] + e["seconds"] <= t1]
    # The counters cover every registration that ended in the phase (also those begun in the warm-up).
    ended = [e for e in events if e["event"] == "ack" and t0 <= e["t"] <= t1]
    latencies = [e["seconds"] for e in acks]
    hops = None
    if hops_before and hops_after:
        hops = per_hop(hops_before, hops_after, len(ended),
                       sum(e["seconds"] for e in ended) / len(ended) if ended else None)
    return {"target": target, "workers": workers, "seconds": round(t1 - t0, 1), "registrations": len(acks),
            "failed_calls": sum(1 for e in events if e["event"] == "fail" and t0 <= e["t"] <= t1),
            "latencies": latencies, "busiest": hot, "hops": hops,
            "load_generator_cpu_percent": round(100 * load_cpu / max(1.0, t1 - t0 + warmup), 1)}


def side_by_side(lab: Lab, stamp: str) -> dict:
    """The same load against the lab and the baseline, alternating, per client count; ratios HA/baseline."""
    made = run_lab("play", "bench-baseline", str(BASELINE_PLAYBOOK))
    if made.returncode != 0:
        raise RuntimeError(f"the baseline failed:\n{tail(made.stdout + made.stderr)}")
    sweep = [int(c) for c in os.environ.get("BENCH_SWEEP", "1,4,16,32").split(",") if c.strip()]
    seconds = float(os.environ.get("BENCH_PHASE_SECONDS", "45"))
    warmup = float(os.environ.get("BENCH_WARMUP", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    targets = {"ha": (lab.api_url, lab.client_env()), "baseline": (f"http://{baseline_address()}:5000", {})}
    phases: list[dict] = []
    for r in range(rounds):
        for workers in sweep:
            order = ["ha", "baseline"] if (r + sweep.index(workers)) % 2 == 0 else ["baseline", "ha"]
            for target in order:
                uri, env = targets[target]
                phases.append(phase(lab, target, workers, seconds, warmup, stamp, uri, env))
                done = phases[-1]
                print(f"bench: {target} {workers} clients: {done['registrations']} registrations in "
                      f"{done['seconds']} s", flush=True)
    table = []
    for workers in sweep:
        row: dict = {"workers": workers}
        for target in targets:
            mine = [p for p in phases if p["target"] == target and p["workers"] == workers]
            latencies = [x for p in mine for x in p["latencies"]]
            total = sum(p["seconds"] for p in mine)
            row[target] = {
                "registrations": len(latencies),
                "registrations_per_second": round(len(latencies) / max(1.0, total), 2),
                "failed_calls": sum(p["failed_calls"] for p in mine),
                "latency_seconds": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)},
                "busiest": [p["busiest"] for p in mine],
                "hops": [p["hops"] for p in mine if p.get("hops")],
                "load_generator_cpu_percent": [p["load_generator_cpu_percent"] for p in mine],
            }
        ha, base = row["ha"], row["baseline"]
        row["ratio_ha_to_baseline"] = {
            "throughput": ratio(ha["registrations_per_second"], base["registrations_per_second"]),
            **{q: ratio(ha["latency_seconds"][q], base["latency_seconds"][q]) for q in ("p50", "p90", "p99")},
        }
        table.append(row)
    return {"phase_seconds": seconds, "warmup_seconds": warmup, "rounds": rounds, "sweep": table,
            "baseline": {"address": baseline_address(), "tls": False, "login": False, "replication": False}}


def artifact_sizes(lab: Lab, sizes: str, baseline: bool) -> dict:
    """Each size uploaded and read back through the lab's proxied path (HTTPS VIP, HAProxy, MLflow, the S3 frontend)
    and, when the baseline is up, through the single server's: seconds and MB/s per direction."""
    targets = {"ha": (lab.api_url, lab.client_env())}
    if baseline:
        targets["baseline"] = (f"http://{baseline_address()}:5000", {})
    out: dict = {}
    for target, (uri, env) in targets.items():
        done = subprocess.run([os.environ["MLFLOW_HA_CLIENT_PYTHON"], str(ARTIFACT_SIZES), "--tracking-uri", uri,
                               "--sizes", sizes], capture_output=True, text=True, check=False,
                              env=dict(os.environ, **env))
        if done.returncode != 0:
            raise RuntimeError(f"artifact sizes against {target} failed:\n{tail(done.stdout + done.stderr)}")
        out[target] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"bench: artifact sizes through {target}: {out[target]}", flush=True)
    return out


SEED = ROOT / "tools" / "registry_seed.py"


def lab_store_uri(lab: Lab) -> str:
    """The tracking store's URI as the MLflow servers use it, through the VIP's primary port (TLS, the lab CA)."""
    site = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
    user = site.get("mlflow_db_user", "mlflow")
    password = next(u["password"] for u in site["patroni_users"] if u["name"] == user)
    port = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())[
        "haproxy_postgres_primary_port"]
    return (f"postgresql+psycopg2://{user}:{password}@{lab.vip}:{port}/{site.get('mlflow_db_name', 'mlflow')}"
            f"?sslmode=verify-full&sslrootcert={lab.ca_path}")


def growth(lab: Lab, stamp: str) -> list[dict]:
    """Registration latency through the whole lab at each registry size of BENCH_GROWTH (existing versions, split
    over the load's models, seeded straight into the database by tools/registry_seed.py with their runs and tagged
    keys): a registration's key search then runs against that many versions and tags."""
    sizes = [int(n) for n in os.environ.get("BENCH_GROWTH", "0,10000,50000").split(",") if n.strip()]
    workers = int(os.environ.get("BENCH_WORKERS", "4"))
    seconds = float(os.environ.get("BENCH_PHASE_SECONDS", "45"))
    warmup = float(os.environ.get("BENCH_WARMUP", "5"))
    name = f"growth-{stamp}"
    rows = []
    with tempfile.NamedTemporaryFile("w", prefix="bench-uri-", dir=OUT, delete=True) as uri_file:
        os.chmod(uri_file.name, 0o600)
        uri_file.write(lab_store_uri(lab) + "\n")
        uri_file.flush()
        for size in sizes:
            started = time.monotonic()
            for index in range(workers):
                if size // workers == 0:
                    continue
                seeded = subprocess.run([os.environ["MLFLOW_HA_CLIENT_PYTHON"], str(SEED), "--uri-file",
                                         uri_file.name, "--model", f"lab-{name}-w{index}", "--versions",
                                         str(size // workers), "--experiment", f"lab-{name}-seed"],
                                        capture_output=True, text=True, check=False)
                if seeded.returncode != 0:
                    raise RuntimeError(f"seeding {size} versions failed:\n{tail(seeded.stdout + seeded.stderr)}")
            seed_seconds = round(time.monotonic() - started, 1)
            done = phase(lab, "ha", workers, seconds, warmup, stamp, lab.api_url, lab.client_env(), name=name)
            latencies = done.pop("latencies")
            rows.append({"existing_versions": size, "seed_seconds": seed_seconds, **done,
                         "registrations_per_second": round(done["registrations"] / max(1.0, done["seconds"]), 2),
                         "latency_seconds": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)}})
            print(f"bench: growth at {size} versions: {rows[-1]['latency_seconds']}", flush=True)
    return rows


def read_replica(on: bool) -> None:
    """Converge the lab with mlflow_ha_read_replica on or off. On: the roles in site.yml's order, so that Patroni
    commits with remote_apply before any MLflow server reads from a standby. Off: the MLflow servers first, so that
    none still reads from a standby once commits stop waiting for its replay."""
    switch = ["-e", json.dumps({"mlflow_ha_read_replica": on})]
    steps = [["firewall,patroni,haproxy,mlflow"]] if on else [["mlflow"], ["patroni"]]
    for step, tags in enumerate(steps, 1):
        done = run_lab("converge", f"read-replica-{'on' if on else 'off'}-{step}", *switch, "--tags", *tags)
        if done.returncode != 0:
            raise RuntimeError(f"converging mlflow_ha_read_replica={on} failed:\n{tail(done.stdout + done.stderr)}")
    print(f"bench: the lab converged with mlflow_ha_read_replica {'on' if on else 'off'}", flush=True)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a is not None and b else None


def main() -> int:
    lab = Lab.load()
    if not lab.http_ok(f"{lab.mlflow_url}/lb-health"):
        up = run_lab("up")
        if up.returncode != 0:
            print(tail(up.stdout + up.stderr), file=sys.stderr)
            return 1
    switch = os.environ.get("BENCH_READ_REPLICA", "")
    if switch:
        read_replica(switch == "1")
    seconds = float(os.environ.get("BENCH_SECONDS", "120"))
    workers = int(os.environ.get("BENCH_WORKERS", "4"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with_baseline = os.environ.get("BENCH_BASELINE", "1") == "1"
    compared = side_by_side(lab, stamp) if with_baseline else None
    sizes = os.environ.get("BENCH_ARTIFACT_SIZES", "2K,10M,200M,1G")
    transfers = artifact_sizes(lab, sizes, with_baseline) if sizes else None
    grown = growth(lab, stamp) if os.environ.get("BENCH_GROWTH", "0,10000,50000") else None
    load = Load(lab, f"bench-{stamp}", workers=workers, out=OUT)
    faults: list[dict] = []
    try:
        t0 = time.time()
        time.sleep(seconds)
        t_steady = time.time()
        if os.environ.get("BENCH_FAULTS", "1") == "1":
            faults = run_faults(lab, load, only=os.environ.get("BENCH_ONLY", ""),
                                repeat=int(os.environ.get("BENCH_REPEAT", "1")),
                                cuts=os.environ.get("BENCH_CUTS", "1") == "1")
    finally:
        load.stop()
    events = load.events_list()
    steady = [e for e in events if e["event"] == "ack" and t0 <= e["start"] and e["t"] <= t_steady]
    steady_calls = [e for e in events if e["event"] in ("ack", "fail") and t0 <= e["t"] <= t_steady]
    result = {
        "stamp": stamp,
        "workers": workers,
        # mlflow_ha_read_replica as BENCH_READ_REPLICA converged it (None: the lab as it was, off unless set by hand).
        "read_replica": {"1": True, "0": False}.get(switch),
        "steady": {
            "seconds": round(t_steady - t0, 1),
            "registrations": len(steady),
            "registrations_per_second": round(len(steady) / max(1.0, t_steady - t0), 2),
            "failed_calls": sum(1 for e in steady_calls if e["event"] == "fail"),
            "latency_seconds": {f"p{p}": percentile([e["seconds"] for e in steady], p) for p in (50, 90, 99)},
        },
        "side_by_side": compared,
        "artifact_sizes": transfers,
        "growth": grown,
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
