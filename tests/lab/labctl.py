"""The lab seen from the controller: its inventory, its containers, and the questions a test asks it (who leads
PostgreSQL, who holds the VIP, is a tier whole again). Shared by the end-to-end test and tools/bench.sh.
Talks only to the lab's own containers on the lab network (addresses from inventories/lab)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab"
OUTPUT = ROOT / "tests" / "output" / "lab"


@dataclass
class Lab:
    hosts: dict[str, str]                      # inventory name -> lab address
    groups: dict[str, list[str]]
    vip: str
    container_prefix: str = "mlflow-ha-lab-"
    log: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> "Lab":
        inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
        hosts: dict[str, str] = {}
        groups: dict[str, list[str]] = {}
        for name, group in inv["all"]["children"]["lab"]["children"].items():
            groups[name] = list(group["hosts"])
            for host, hv in group["hosts"].items():
                if hv and "lab_address" in hv:
                    hosts[host] = hv["lab_address"]
        site = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
        return cls(hosts=hosts, groups=groups, vip=site["mlflow_ha_vip"])

    # -- containers -------------------------------------------------------------------------------------
    def container(self, host: str) -> str:
        return self.container_prefix + host

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)

    def kill(self, host: str) -> None:
        """Machine death: the container's processes get SIGKILL, nothing shuts down cleanly."""
        self.docker("kill", self.container(host))

    def start(self, host: str) -> None:
        self.docker("start", self.container(host))

    def exec(self, host: str, *cmd: str) -> str:
        return self.docker("exec", self.container(host), *cmd, check=False).stdout

    # -- questions --------------------------------------------------------------------------------------
    @property
    def mlflow_url(self) -> str:
        return f"http://{self.vip}"

    def patroni_cluster(self) -> Optional[dict]:
        for host in self.groups["postgres"]:
            try:
                return get_json(f"http://{self.hosts[host]}:8008/cluster", timeout=2)
            except OSError:
                continue
        return None

    def patroni_leader(self) -> Optional[str]:
        cluster = self.patroni_cluster() or {}
        leaders = [m["name"] for m in cluster.get("members", []) if m.get("role") == "leader"]
        return leaders[0] if leaders else None

    def postgres_whole(self) -> bool:
        cluster = self.patroni_cluster() or {}
        members = cluster.get("members", [])
        leaders = [m for m in members if m.get("role") == "leader"]
        # Patroni 3.0 reports a streaming replica as "running" (3.1+: "streaming"); a lag of "unknown" means
        # it does not replicate.
        replicas = [m for m in members if m.get("role") in ("replica", "sync_standby")
                    and m.get("state") in ("streaming", "running") and isinstance(m.get("lag"), int)]
        return len(leaders) == 1 and len(replicas) == len(self.groups["postgres"]) - 1

    def vip_holders(self) -> list[str]:
        return [h for h in self.groups["lb"] if f" {self.vip}/" in self.exec(h, "ip", "-o", "-4", "addr", "show")]

    def http_ok(self, url: str, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status == 200
        except OSError:
            return False

    def mlflow_whole(self) -> bool:
        return all(self.http_ok(f"http://{self.hosts[h]}:5000/health") for h in self.groups["mlflow"])

    def storage_whole(self) -> bool:
        masters = [self.hosts[h] for h in self.groups["storage"][:3]]
        for m in masters:
            try:
                topo = get_json(f"http://{m}:9333/dir/status", timeout=2)
            except OSError:
                continue
            nodes = [n for dc in topo["Topology"].get("DataCenters") or [] for r in dc.get("Racks") or []
                     for n in r.get("DataNodes") or []]
            gateways = all(self.https_up(f"https://{self.hosts[h]}:8333/healthz") for h in self.groups["storage"])
            return len(nodes) == len(self.groups["storage"]) and gateways
        return False

    def https_up(self, url: str) -> bool:
        ca = ROOT / "inventories" / "pki" / "lab" / "ca.crt"
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return resp.status == 200
        except OSError:
            return False

    def lb_whole(self) -> bool:
        return (all(self.http_ok(f"http://{self.hosts[h]}:8404/healthz") for h in self.groups["lb"])
                and len(self.vip_holders()) == 1
                and all("active" in self.exec(h, "systemctl", "is-active", "keepalived") for h in self.groups["lb"]))


def get_json(url: str, timeout: float = 2) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 1.0) -> float:
    """Poll condition until it is truthy; returns the seconds it took. Raises with `what` on timeout."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def run_lab(step: str, *extra: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """tools/lab.sh <step>, output kept in tests/output/lab/<step>.log by the script itself."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", str(ROOT / "tools" / "lab.sh"), step, *extra], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), check=False)


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def percentile(values: list[float], p: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 3)


LOAD_SCRIPT = Path(__file__).resolve().parent / "registration_load.py"


class Load:
    """The registration load (official MLflow client, several workers) in its own process and Python
    (MLFLOW_HA_CLIENT_PYTHON: the venv tools/mlflow-venv.sh makes)."""

    def __init__(self, lab: Lab, name: str, workers: int = 4, out: Path = OUTPUT):
        out.mkdir(parents=True, exist_ok=True)
        self.events = out / f"{name}.events.jsonl"
        self.stop_file = out / f"{name}.stop"
        self.verify_out = out / f"{name}.verify.json"
        for p in (self.events, self.stop_file, self.verify_out):
            p.unlink(missing_ok=True)
        self.lab = lab
        self.workers = workers
        self.python = os.environ["MLFLOW_HA_CLIENT_PYTHON"]
        self.log = (out / f"{name}.load.log").open("w")
        self.proc = subprocess.Popen(
            [self.python, str(LOAD_SCRIPT), "run", "--tracking-uri", lab.mlflow_url, "--events", str(self.events),
             "--stop-file", str(self.stop_file), "--workers", str(workers), "--prefix", f"lab-{name}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def events_list(self) -> list[dict]:
        return read_events(self.events)

    def acks_since(self, t: float) -> list[dict]:
        return [e for e in self.events_list() if e["event"] == "ack" and e["start"] >= t]

    def stop(self) -> None:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()

    def verify(self) -> dict:
        out = subprocess.run([self.python, str(LOAD_SCRIPT), "verify", "--tracking-uri", self.lab.mlflow_url,
                              "--events", str(self.events), "--out", str(self.verify_out)],
                             capture_output=True, text=True, check=False)
        if not self.verify_out.exists():
            raise RuntimeError(f"verify wrote no result:\n{tail(out.stdout + out.stderr)}")
        return json.loads(self.verify_out.read_text())


def faults(lab: Lab) -> list[tuple[str, Callable[[], Optional[str]], Callable[[], bool]]]:
    """(what, pick the victim at that moment, is the tier whole again)."""
    return [
        ("postgres leader", lab.patroni_leader, lab.postgres_whole),
        ("mlflow server", lambda: lab.groups["mlflow"][0], lab.mlflow_whole),
        # The first storage node serves the S3 frontend (the others are HAProxy backups) and is a master.
        ("storage node", lambda: lab.groups["storage"][0], lab.storage_whole),
        ("active load balancer", lambda: (lab.vip_holders() or [None])[0], lab.lb_whole),
    ]


def run_faults(lab: Lab, load: Load, degraded_seconds: float = 20, timeout: float = 300) -> list[dict]:
    """Kill each kind of machine in turn (docker kill: machine death) while the load runs; after registrations
    succeed again, keep it down for degraded_seconds, start it, wait for its tier to be whole. Returns what the
    clients saw for each fault."""
    report = []
    for what, pick, whole in faults(lab):
        victim = pick()
        if not victim:
            raise RuntimeError(f"could not find the {what} to kill")
        t_fault = time.time()
        lab.kill(victim)
        waited = wait_until(lambda t=t_fault: load.acks_since(t), timeout,
                            f"a registration started after killing the {what} ({victim}) to succeed")
        first = min(load.acks_since(t_fault), key=lambda e: e["t"])
        time.sleep(degraded_seconds)
        t_restart = time.time()
        lab.start(victim)
        rejoin = wait_until(whole, timeout, f"the {what} tier whole again after {victim} restarted", interval=2)
        window = [e for e in load.events_list() if t_fault <= e["t"] <= t_restart]
        failed = [e for e in window if e["event"] == "fail"]
        report.append({
            "fault": what,
            "victim": victim,
            "killed_at": round(t_fault, 3),
            "restarted_at": round(t_restart, 3),
            "recovery_seconds": round(first["t"] - t_fault, 1),
            "seconds_polled_until_recovery": round(waited, 1),
            "failed_calls_while_down": len(failed),
            "failed_calls_by_step": {s: sum(1 for e in failed if e["step"] == s)
                                     for s in sorted({e["step"] for e in failed})},
            "registrations_acknowledged_while_down": sum(1 for e in window if e["event"] == "ack"),
            "rejoin_seconds_after_restart": round(rejoin, 1),
        })
        time.sleep(5)
    return report


def summarize(events: list[dict], verified: dict) -> dict:
    acks = [e for e in events if e["event"] == "ack"]
    return {
        "registrations_acknowledged": len(acks),
        "registrations_abandoned": sum(1 for e in events if e["event"] == "abandoned"),
        "failed_client_calls": sum(1 for e in events if e["event"] == "fail"),
        "creates_resolved_by_search": sum(1 for e in acks if e.get("create_retries")),
        "registration_seconds_p50": percentile([e["seconds"] for e in acks], 50),
        "registration_seconds_p99": percentile([e["seconds"] for e in acks], 99),
        "registration_seconds_max": max((e["seconds"] for e in acks), default=None),
        **{k: verified[k] for k in ("lost", "duplicated", "unreadable", "unacknowledged_versions")},
    }
