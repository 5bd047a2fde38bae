"""The lab seen from the controller: its inventory, its containers, and the questions a test asks it (who leads
PostgreSQL, who holds the VIP, is a tier whole again). Shared by the end-to-end test and tools/bench.sh.
Talks only to the lab's own containers on the lab network (addresses from inventories/lab)."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from phases import record  # noqa: E402

INVENTORY = ROOT / "inventories" / "lab"
# The collection CA tools/lab.sh creates for the lab (the pki role's store beside the inventory).
LAB_CA = ROOT / "inventories" / "pki" / "lab" / "ca.crt"
OUTPUT = ROOT / "tests" / "output" / "lab"


@dataclass
class Lab:
    hosts: dict[str, str]                      # inventory name -> lab address
    groups: dict[str, list[str]]
    vip: str
    network: str = "mlflow-ha-lab"
    # MLflow's login (basic auth, on unless the inventory turns it off): the mlflow role's admin.
    mlflow_username: str = ""
    mlflow_password: str = ""
    # The monitoring login: every exporter, HAProxy's stats port, Prometheus and Alertmanager ask for it (HTTPS).
    monitoring_username: str = "monitoring"
    monitoring_password: str = ""
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
        auth = site.get("mlflow_auth_enabled", True)
        return cls(hosts=hosts, groups=groups, vip=site["mlflow_ha_vip"], network=site["lab_network"]["name"],
                   mlflow_username=site.get("mlflow_auth_admin_username", "admin") if auth else "",
                   mlflow_password=site.get("mlflow_auth_admin_password", "") if auth else "",
                   monitoring_username=site.get("mlflow_ha_monitoring_username", "monitoring"),
                   monitoring_password=site.get("mlflow_ha_monitoring_password", ""))

    def monitoring_headers(self) -> dict[str, str]:
        """The monitoring login's Authorization header."""
        token = base64.b64encode(f"{self.monitoring_username}:{self.monitoring_password}".encode()).decode()
        return {"Authorization": "Basic " + token}

    def monitoring_request(self, url: str, timeout: float = 5, method: str = "GET", body: Optional[bytes] = None,
                           login: bool = True) -> tuple[int, bytes]:
        """(status, body) of a request to a monitoring endpoint (HTTPS, the lab CA), with the monitoring login unless
        ``login`` is false; an HTTP error status is returned, not raised."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if login:
            headers.update(self.monitoring_headers())
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        context = ssl.create_default_context(cafile=self.ca_path)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def monitoring_json(self, url: str, timeout: float = 5) -> dict:
        status, body = self.monitoring_request(url, timeout)
        if status != 200:
            raise OSError(f"GET {url} answered HTTP {status}")
        return json.loads(body)

    def client_env(self) -> dict[str, str]:
        """The official client's CA and login settings (docs/clients.md), for its environment."""
        env = {"MLFLOW_TRACKING_SERVER_CERT_PATH": self.ca_path}
        if self.mlflow_username:
            env.update(MLFLOW_TRACKING_USERNAME=self.mlflow_username, MLFLOW_TRACKING_PASSWORD=self.mlflow_password)
        return env

    # -- containers -------------------------------------------------------------------------------------
    def container(self, host: str) -> str:
        return self.container_prefix + host

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done

    def kill(self, host: str) -> None:
        """Machine death: the container's processes get SIGKILL, nothing shuts down cleanly."""
        self.docker("kill", self.container(host))

    def remove(self, host: str) -> None:
        """The machine is gone for good: its container and everything on its disks (tools/lab/create.yml makes a
        new, empty one with the same name and address)."""
        self.docker("rm", "--force", "--volumes", self.container(host))

    def start(self, host: str) -> None:
        self.docker("start", self.container(host))

    def freeze(self, host: str) -> None:
        """A stalled machine (hypervisor pause, I/O hang): every process stops, sockets stay open; on resume its
        timers have jumped."""
        # Freezing the container's cgroup can fail for a moment (a process the freezer cannot stop yet); the fault
        # is the freeze, so try again briefly before giving up (the error is the engine's own).
        for attempt in range(5):
            paused = self.docker("pause", self.container(host), check=attempt == 4)
            if paused.returncode == 0:
                return
            print(f"docker pause {self.container(host)} failed, trying again: {paused.stderr.strip()}")
            time.sleep(1)

    def thaw(self, host: str) -> None:
        self.docker("unpause", self.container(host))

    def cut(self, host: str) -> None:
        """A cut link: the machine runs on but reaches nobody and nobody reaches it."""
        self.docker("network", "disconnect", self.network, self.container(host))

    def mend(self, host: str) -> None:
        """Reconnect a cut machine with the address it had."""
        self.docker("network", "connect", "--ip", self.hosts[host], self.network, self.container(host))

    def exec(self, host: str, *cmd: str) -> str:
        return self.docker("exec", self.container(host), *cmd, check=False).stdout

    # -- questions --------------------------------------------------------------------------------------
    @property
    def mlflow_url(self) -> str:
        """Plain HTTP on the VIP: the load balancers' health paths (everything else redirects to HTTPS)."""
        return f"http://{self.vip}"

    @property
    def api_url(self) -> str:
        """What clients use: HTTPS on the VIP, the collection CA (ca_path) trusted."""
        return f"https://{self.vip}"

    @property
    def ca_path(self) -> str:
        return str(LAB_CA)

    def patroni_cluster(self) -> Optional[dict]:
        for host in self.groups["postgres"]:
            try:
                return get_json(f"https://{self.hosts[host]}:8008/cluster", timeout=2, context=ca_context())
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
        # Patroni >= 3.0.4 reports a streaming replica as "streaming" ("running": up, but not replicating).
        replicas = [m for m in members if m.get("role") in ("replica", "sync_standby")
                    and m.get("state") == "streaming" and isinstance(m.get("lag"), int)]
        if not (len(leaders) == 1 and len(replicas) == len(self.groups["postgres"]) - 1):
            return False
        # The DCS summary can lag behind a member that is still recovering (a pg_rewind in progress after a freeze
        # showed there as streaming once, and the next fault interrupted the rewind): each replica must also say
        # so itself (Patroni's own /replica check: PostgreSQL running as a replica).
        return all(self.https_up(f"https://{self.hosts[m['name']]}:8008/replica") for m in replicas
                   if m["name"] in self.hosts)

    def patroni_timeline(self) -> Optional[int]:
        cluster = self.patroni_cluster() or {}
        timelines = [m["timeline"] for m in cluster.get("members", [])
                     if m.get("role") == "leader" and isinstance(m.get("timeline"), int)]
        return timelines[0] if timelines else None

    # etcd's own leader, asked of the members with etcdctl inside their containers (client TLS of the etcd role).
    def etcdctl(self, host: str, args: str, only: Optional[str] = None) -> subprocess.CompletedProcess:
        """etcdctl in host's container, against every member (or only the member `only`)."""
        addresses = [self.hosts[h] for h in ([only] if only else self.groups["etcd"])]
        return self.docker("exec", self.container(host), "sh", "-c", etcdctl_command(addresses, args), check=False)

    def etcd_members(self) -> dict[str, dict]:
        """member name -> {'id', 'leader_id'} as each reachable member reports it."""
        for host in self.groups["etcd"]:
            out = self.etcdctl(host, "endpoint status -w json").stdout
            try:
                status = json.loads(out) if out.strip() else []
            except ValueError:
                continue
            members = json.loads(self.etcdctl(host, "member list -w json").stdout or "{}").get("members", [])
            names = {m["ID"]: m["name"] for m in members}
            return {names.get(e["Status"]["header"]["member_id"], "?"): {
                "id": e["Status"]["header"]["member_id"], "leader_id": e["Status"].get("leader", 0)} for e in status}
        return {}

    def etcd_leader(self) -> Optional[str]:
        members = self.etcd_members()
        leaders = {m["leader_id"] for m in members.values()}
        return next((name for name, m in members.items() if m["id"] in leaders), None)

    def move_etcd_leader(self, to: str) -> None:
        """Make `to` the etcd leader (etcdctl move-leader, sent to the current leader)."""
        leader = self.etcd_leader()
        if leader == to:
            return
        target = self.etcd_members()[to]["id"]
        out = self.etcdctl(leader or to, f"move-leader {target:x}", only=leader or to)
        if out.returncode != 0:
            raise RuntimeError(f"etcdctl move-leader to {to} failed: {out.stdout}{out.stderr}")
        wait_until(lambda: self.etcd_leader() == to, 30, f"{to} leading etcd")

    def storage_master_leader(self) -> Optional[str]:
        """The storage host whose SeaweedFS master leads the raft (as the first master that answers says)."""
        by_address = {a: h for h, a in self.hosts.items()}
        for host in self.groups["storage"][:3]:
            try:
                leader = get_json(f"http://{self.hosts[host]}:9333/cluster/status", timeout=2).get("Leader", "")
            except (OSError, ValueError):
                continue
            return by_address.get(leader.split(":")[0])
        return None

    def vip_holders(self) -> list[str]:
        return [h for h in self.groups["lb"] if f" {self.vip}/" in self.exec(h, "ip", "-o", "-4", "addr", "show")]

    def http_ok(self, url: str, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status == 200
        except OSError:
            return False

    def mlflow_whole(self) -> bool:
        # Each server itself (HTTPS with the collection CA while the mlflow role's mlflow_tls is on).
        urls = [mlflow_server_url(self.hosts[h]) + "/health" for h in self.groups["mlflow"]]
        return all(self.https_up(u) if u.startswith("https://") else self.http_ok(u) for u in urls)

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
        try:
            with urllib.request.urlopen(url, timeout=2, context=ca_context()) as resp:
                return resp.status == 200
        except OSError:
            return False

    def lb_whole(self) -> bool:
        return (all(self.https_up(f"https://{self.hosts[h]}:8404/healthz") for h in self.groups["lb"])
                and len(self.vip_holders()) == 1
                and all("active" in self.exec(h, "systemctl", "is-active", "keepalived") for h in self.groups["lb"]))


def etcd_client() -> dict:
    """How a client reaches etcd in the lab, from the etcd role (its defaults, the lab inventory's etcd_* settings
    over them, and the TLS files its vars name): {'scheme', 'port', 'ca', 'cert', 'key'}."""
    role = ROOT / "roles" / "etcd"
    settings = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    for name in ("all.yml", "lab.yml"):
        overrides = yaml.safe_load((INVENTORY / "group_vars" / name).read_text()) or {}
        settings.update({k: v for k, v in overrides.items() if k.startswith("etcd_")})
    files = yaml.safe_load((role / "vars" / "main.yml").read_text())["_etcd_tls_files"]
    tls = {key: path.replace("{{ etcd_cert_dir }}", settings["etcd_cert_dir"]) for key, path in files.items()}
    if any("{{" in path for path in tls.values()):
        raise ValueError(f"roles/etcd/vars/main.yml _etcd_tls_files names more than etcd_cert_dir: {files}")
    return {"scheme": "https" if settings["etcd_tls"] else "http", "port": int(settings["etcd_client_port"]), **tls}


def role_settings(role: str) -> dict:
    """A role's defaults with the lab inventory's settings of that role (<role>_*) over them, as the lab runs it."""
    settings = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    for name in ("all.yml", "lab.yml"):
        overrides = yaml.safe_load((INVENTORY / "group_vars" / name).read_text()) or {}
        settings.update({k: v for k, v in overrides.items() if k.startswith(role + "_")})
    return settings


def mlflow_server_url(address: str) -> str:
    """The base URL of the MLflow server at `address` itself (not through the VIP), as the mlflow role serves it:
    HTTPS while mlflow_tls is on (its default), on mlflow_port."""
    settings = role_settings("mlflow")
    return f"{'https' if settings['mlflow_tls'] else 'http'}://{address}:{int(settings['mlflow_port'])}"


def etcdctl_command(addresses: list[str], args: str) -> str:
    """The shell command that runs `etcdctl args` on a member against the members at `addresses`, with the etcd
    role's client TLS (the one place the lab spells etcdctl's flags)."""
    client = etcd_client()
    endpoints = ",".join(f"{client['scheme']}://{address}:{client['port']}" for address in addresses)
    tls = ""
    if client["scheme"] == "https":
        tls = f"--cacert={client['ca']} --cert={client['cert']} --key={client['key']} "
    return f"ETCDCTL_API=3 etcdctl {tls}--command-timeout=5s --endpoints={endpoints} {args}"


def ca_context() -> ssl.SSLContext:
    """TLS that trusts the lab's collection CA (Patroni's REST API, the storage gateways, the VIP)."""
    return ssl.create_default_context(cafile=str(LAB_CA))


def get_json(url: str, timeout: float = 2, context: Optional[ssl.SSLContext] = None) -> dict:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
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

    def __init__(self, lab: Lab, name: str, workers: int = 4, out: Path = OUTPUT, tracking_uri: Optional[str] = None,
                 client_env: Optional[dict[str, str]] = None):
        """tracking_uri and client_env: another registry than the lab's VIP (make bench's single-server baseline);
        by default the lab's HTTPS VIP with its CA and login."""
        out.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or lab.api_url
        self.client_env = lab.client_env() if client_env is None else client_env
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
            [self.python, str(LOAD_SCRIPT), "run", "--tracking-uri", self.tracking_uri, "--events", str(self.events),
             "--stop-file", str(self.stop_file), "--workers", str(workers), "--prefix", f"lab-{name}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, **self.client_env))

    def events_list(self) -> list[dict]:
        return read_events(self.events)

    def acks_since(self, t: float) -> list[dict]:
        return [e for e in self.events_list() if e["event"] == "ack" and e["start"] >= t]

    def stop(self, abandon: bool = False) -> None:
        """Stop after the registrations in flight (abandon: at once; they were not acknowledged, so nothing that
        counts is lost: the events file is written line by line)."""
        self.stop_file.touch()
        try:
            if abandon:
                self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()

    def verify(self) -> dict:
        out = subprocess.run([self.python, str(LOAD_SCRIPT), "verify", "--tracking-uri", self.tracking_uri,
                              "--events", str(self.events), "--out", str(self.verify_out)],
                             capture_output=True, text=True, check=False, env=dict(os.environ, **self.client_env))
        if not self.verify_out.exists():
            raise RuntimeError(f"verify wrote no result:\n{tail(out.stdout + out.stderr)}")
        return json.loads(self.verify_out.read_text())


@dataclass
class Fault:
    """One fault of the chaos run: what is hit, how, and how to tell its tier is whole again.

    kind: kill (docker kill: machine death; started again once registrations succeed again and after
    `hold` seconds more), freeze (docker pause for `hold` seconds: a stalled machine) or cut (network disconnect
    for `hold` seconds, then reconnect with the same address). `prepare` runs on the victim before the fault
    (e.g. make it the etcd leader too)."""

    what: str
    kind: str
    pick: Callable[[], Optional[str]]
    whole: Callable[[], bool]
    hold: float = 10
    prepare: Optional[Callable[[str], None]] = None
    postgres: bool = False
    storage: bool = False
    # The tier's group and the units whose journals explain a tier that did not become whole again.
    logs: tuple[str, ...] = ()


def dump_journals(lab: "Lab", fault: Fault, victim: str, since: float) -> Path:
    """Write the fault tier's unit journals since the fault to tests/output/lab/ and return the file."""
    group, *units = fault.logs or ("", )
    path = OUTPUT / f"fault-{fault.kind}-{victim}-journals.log"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 5))
    with path.open("w") as out:
        for host in lab.groups.get(group, []):
            for unit in units:
                out.write(f"===== {host} {unit}\n")
                out.write(lab.exec(host, "journalctl", "--no-pager", "--utc", "-o", "short-iso", "-u", unit,
                                   "--since", stamp))
    return path


# (group, units): what dump_journals reads when a tier does not become whole again.
PG_LOGS = ("postgres", "patroni")
STORAGE_LOGS = ("storage", "seaweedfs-master", "seaweedfs-volume", "seaweedfs-filer")
MLFLOW_LOGS = ("mlflow", "mlflow")
LB_LOGS = ("lb", "keepalived", "haproxy")


def faults(lab: Lab, gray: bool = True, cuts: bool = False) -> list[Fault]:
    """The machine deaths, then the gray faults (stalls and cut links) the same tiers meet in production; cuts: also
    cut the link of the machines of the other tiers (`make bench`'s failover timeline: every fault class per tier;
    the end-to-end test cuts the PostgreSQL leader, the tier where a cut link splits the cluster's view)."""
    def first_storage() -> str:  # serves the S3 frontend, the others are HAProxy backups
        return lab.groups["storage"][0]

    def vip_holder() -> Optional[str]:
        return (lab.vip_holders() or [None])[0]

    kills = [
        Fault("postgres leader", "kill", lab.patroni_leader, lab.postgres_whole, postgres=True,
              logs=PG_LOGS),
        Fault("mlflow server", "kill", lambda: lab.groups["mlflow"][0], lab.mlflow_whole, logs=MLFLOW_LOGS),
        Fault("storage node", "kill", first_storage, lab.storage_whole, storage=True,
              logs=STORAGE_LOGS),
        Fault("active load balancer", "kill", vip_holder, lab.lb_whole, logs=LB_LOGS),
    ]
    grays = [
        # The case Debian's Patroni 3.0.2 lost acknowledged writes in: the frozen node held both leaderships.
        Fault("postgres leader that also leads etcd", "freeze", lab.patroni_leader, lab.postgres_whole, hold=40,
              prepare=lab.move_etcd_leader, postgres=True, logs=PG_LOGS),
        Fault("postgres leader", "cut", lab.patroni_leader, lab.postgres_whole, hold=40, postgres=True,
              logs=PG_LOGS),
        Fault("storage node serving S3", "freeze", first_storage, lab.storage_whole, hold=35, storage=True,
              logs=STORAGE_LOGS),
        Fault("mlflow server", "freeze", lambda: lab.groups["mlflow"][0], lab.mlflow_whole, hold=30, logs=MLFLOW_LOGS),
        Fault("active load balancer", "freeze", vip_holder, lab.lb_whole, hold=35, logs=LB_LOGS),
    ]
    more_cuts = [
        Fault("storage node serving S3", "cut", first_storage, lab.storage_whole, hold=35, storage=True,
              logs=STORAGE_LOGS),
        # Whichever storage node leads SeaweedFS's masters (new uploads wait for the next leader's election): the
        # measurement behind seaweedfs_master_election_timeout (docs/performance.md).
        Fault("storage master leader", "cut", lab.storage_master_leader, lab.storage_whole, hold=35, storage=True,
              logs=STORAGE_LOGS),
        Fault("mlflow server", "cut", lambda: lab.groups["mlflow"][0], lab.mlflow_whole, hold=30, logs=MLFLOW_LOGS),
        Fault("active load balancer", "cut", vip_holder, lab.lb_whole, hold=35, logs=LB_LOGS),
    ]
    return kills + (grays if gray else []) + (more_cuts if cuts else [])


def longest_gap(acks: list[dict], start: float, end: float) -> float:
    """The longest time within [start, end] in which no registration completed."""
    times = [start, *sorted(e["t"] for e in acks if start <= e["t"] <= end), end]
    return round(max(b - a for a, b in zip(times, times[1:])), 1)


def run_faults(lab: Lab, load: Load, timeout: float = 300, gray: bool = True, only: str = "",
               repeat: int = 1, cuts: bool = False) -> list[dict]:
    """Inject each fault in turn while the load runs, wait until its tier is whole again, and report what the
    clients saw: seconds until a registration started after the fault succeeded, the longest time without any
    registration completing, failed calls, and for PostgreSQL the leader changes (timeline steps).
    only: run just the faults whose "<kind> <what>" contains one of its comma-separated parts (e.g. "freeze,cut":
    the gray faults); repeat: the chosen list that many times (rare outcomes need many tries)."""
    parts = [part.strip() for part in only.split(",")]
    every = faults(lab, gray, cuts)
    chosen = [f for f in every if any(part in f"{f.kind} {f.what}" for part in parts)]
    if not chosen:
        raise ValueError(f"no fault matches {only!r}: " + ", ".join(f"{f.kind} {f.what}" for f in every))
    report = []
    for fault in chosen * repeat:
        victim = fault.pick()
        if not victim:
            raise RuntimeError(f"could not find the {fault.what} to hit")
        if fault.prepare:
            fault.prepare(victim)
        timeline = lab.patroni_timeline() if fault.postgres else None
        # A storage node that leads SeaweedFS's masters costs a raft election and the new leader's warm-up more.
        led_masters = (lab.storage_master_leader() == victim) if fault.storage else None
        t_fault = time.time()
        {"kill": lab.kill, "freeze": lab.freeze, "cut": lab.cut}[fault.kind](victim)
        if fault.kind == "kill":
            wait_until(lambda t=t_fault: load.acks_since(t), timeout,
                       f"a registration started after killing the {fault.what} ({victim}) to succeed")
        time.sleep(fault.hold)
        t_heal = time.time()
        {"kill": lab.start, "freeze": lab.thaw, "cut": lab.mend}[fault.kind](victim)
        wait_until(lambda t=t_fault: load.acks_since(t), timeout,
                   f"a registration started after the {fault.kind} of the {fault.what} ({victim}) to succeed")
        try:
            rejoin = wait_until(fault.whole, timeout,
                                f"the {fault.what} tier whole again after {victim} came back", interval=2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; journals: {dump_journals(lab, fault, victim, t_fault)}") from exc
        # The next fault follows at once: the tier is whole again (no fixed pause).
        t_end = time.time()
        events = load.events_list()
        first = min(load.acks_since(t_fault), key=lambda e: e["t"])
        window = [e for e in events if t_fault <= e["t"] <= t_end]
        failed = [e for e in window if e["event"] == "fail"]
        entry = {
            "fault": fault.what,
            "kind": fault.kind,
            "victim": victim,
            "hit_at": round(t_fault, 3),
            "healed_at": round(t_heal, 3),
            "recovery_seconds": round(first["t"] - t_fault, 1),
            "longest_gap_seconds": longest_gap([e for e in events if e["event"] == "ack"], t_fault, t_end),
            "failed_calls": len(failed),
            "failed_calls_by_step": {s: sum(1 for e in failed if e["step"] == s)
                                     for s in sorted({e["step"] for e in failed})},
            "registrations_acknowledged": sum(1 for e in window if e["event"] == "ack"),
            # The registrations that ended between the fault and the tier whole again: what users felt meanwhile.
            "registration_seconds_p99_in_window": percentile([e["seconds"] for e in window if e["event"] == "ack"], 99),
            "rejoin_seconds_after_heal": round(rejoin, 1),
        }
        if fault.storage:
            entry["victim_led_storage_masters"] = led_masters
        if fault.postgres:
            after = lab.patroni_timeline()
            entry["leader_changes"] = (after - timeline) if (after is not None and timeline is not None) else None
            entry["leader_after"] = lab.patroni_leader()
        report.append(entry)
        record(f"chaos: {fault.kind} {fault.what}", t_end - t_fault)
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
        **{k: verified.get(k) for k in ("lost", "duplicated", "unreadable", "unacknowledged_versions", "read_retries")},
    }
