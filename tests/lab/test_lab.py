"""The whole lab end to end (inventories/lab, 12 systemd containers): `tools/lab.sh up` (containers, site.yml,
validate.yml), a second site.yml run that must change nothing, the monitoring host's view of the healthy lab
(every scrape target up, the registration probe succeeding and never failing, every dashboard panel with data, a
log line from pg2 in mon1's central journal, an MLflow server stopped -> MLflowServerDown in Alertmanager ->
resolved after the restart), then registrations with the official MLflow client
through the VIP while, one at a time and recovering in between, the PostgreSQL leader, an MLflow server, a
storage node and the active load balancer die (docker kill: machine death), and then the gray faults: the
PostgreSQL leader that also leads etcd freezes (docker pause), the PostgreSQL leader is cut off (network
disconnect, reconnect with its address), the storage node serving S3, an MLflow server and the VIP holder
freeze. Asserted: every acknowledged
registration exists exactly once with a readable, byte-identical artifact, and the stack validates at the end.
Before the faults, the checks of every molecule scenario run against the lab (postgres_ha, storage_ha, keepalived,
prometheus, node_exporter, journal_remote; etcd's after the faults, with its leader's machine killed and its
snapshot restore): their verify playbooks and testinfra files, so `make test` converges none of those stacks a second
time in molecule. The point-in-time restore drill runs before the faults too (its artifact backup then copies a
few objects, not the chaos load's thousands); the spool test, the loss of every database machine and the external S3
backend after them. The lab itself starts with `site.yml --check` on the empty hosts.
Failed client calls and recovery seconds are reported (tests/output/lab/chaos.json), never asserted: timings
belong to benchmarks (make bench). MLFLOW_HA_KEEP_LAB=1 keeps the lab afterwards; MLFLOW_HA_REUSE_LAB=1 tests a
lab that is already up instead of building a fresh one (developers); MLFLOW_HA_LAB_READY=1 says `make test` has just
built it fresh, with the check, beside lint, unit tests and molecule (tools/test.sh)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_path
import dr_artifacts
import external_s3
from dashboards import all_queries, check_queries
from labctl import (
    OUTPUT,
    ROOT,
    Lab,
    Load,
    get_json,
    mlflow_server_url,
    run_faults,
    run_lab,
    summarize,
    tail,
    wait_until,
)
from observability import Monitoring
from phases import record


def recap(log: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", log, re.M):
        hosts[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                             "failed": int(m.group(5))}
    return hosts


@pytest.fixture(scope="module")
def lab():
    if not os.environ.get("MLFLOW_HA_CLIENT_PYTHON"):
        pytest.fail("MLFLOW_HA_CLIENT_PYTHON is unset: run through `make e2e` (tools/mlflow-venv.sh makes it)")
    lab = Lab.load()
    if os.environ.get("MLFLOW_HA_LAB_READY"):
        # tools/test.sh brought it up in the background (`make lab` with the check first) and stopped on a failure.
        assert lab.http_ok(f"{lab.mlflow_url}/lb-health"), "MLFLOW_HA_LAB_READY is set but the lab does not answer"
    elif not (os.environ.get("MLFLOW_HA_REUSE_LAB") and lab.http_ok(f"{lab.mlflow_url}/lb-health")):
        run_lab("destroy")
        # site.yml --check on the empty hosts first: every role through check mode before anything is installed.
        up = run_lab("up", env={"MLFLOW_HA_LAB_CHECK": "1"})
        assert up.returncode == 0, f"tools/lab.sh up failed (logs in {OUTPUT})\n{tail(up.stdout + up.stderr)}"
    yield lab
    if not os.environ.get("MLFLOW_HA_KEEP_LAB"):
        run_lab("destroy")


def test_a_second_site_run_over_ssh_as_docs_deploy_md_says_changes_nothing(lab, tmp_path):
    """docs/deploy.md on the lab's containers (tests/lab/deploy_path.py): the example inventory copied and edited,
    the vault, the PKI directory from a backup, SSH as the example's `deploy` user with sudo; then the second
    `site.yml` run over the converged lab (changed=0 on every host) and `validate.yml`, both through that path."""
    site = deploy_path.Site(lab, tmp_path)
    try:
        site.write()
        graph = site.ansible("deploy-inventory-graph", "ansible-inventory", "-i", str(site.inventory), "--graph",
                             "mlflow_ha").stdout
        assert set(re.findall(r"\|--([\w-]+)$", graph, re.M)) >= set(lab.hosts), graph
        # Section 3's check: the login (only `deploy` holds the controller's key) and sudo on every host.
        roots = site.ad_hoc("deploy-become", "-m", "ansible.builtin.command", "-a", "id -un", "--become")
        assert roots == {h: "root" for h in lab.hosts}, roots

        rerun = site.playbook("site-rerun", "site.yml")
        hosts = recap(rerun.stdout)
        assert set(hosts) >= set(lab.hosts), f"recap lacks hosts: {sorted(set(lab.hosts) - set(hosts))}"
        changed = {h: r for h, r in hosts.items() if r["changed"] or r["failed"] or r["unreachable"]}
        assert not changed, f"a second site.yml run changed or failed on {changed}; see {OUTPUT / 'site-rerun.log'}"
        site.playbook("deploy-validate", "validate.yml")
    finally:
        site.remove()
        deploy_path.unprovision(lab)


# -- Observability on the healthy lab (before the faults) ---------------------------------------------------

@pytest.fixture(scope="module")
def mon(lab):
    return Monitoring(lab)


def test_every_scrape_target_is_up(lab, mon):
    targets = mon.targets()
    jobs = {t["labels"]["job"] for t in targets}
    expected = {"node", "etcd", "patroni", "postgres", "pgbouncer", "seaweedfs_master", "seaweedfs_volume",
                "seaweedfs_filer", "haproxy", "mlflow", "registration_probe"}
    assert jobs >= expected, f"Prometheus lacks the jobs {sorted(expected - jobs)} (it has {sorted(jobs)})"
    nodes = {t["labels"]["instance"] for t in targets if t["labels"]["job"] == "node"}
    assert nodes == set(lab.hosts), f"node targets {sorted(nodes)} differ from the inventory {sorted(lab.hosts)}"
    try:
        wait_until(lambda: not mon.targets_down(), 180, "every scrape target up")
    except TimeoutError:
        pytest.fail("scrape targets down after 180 s:\n" + "\n".join(mon.targets_down()))


def test_probe_registers_through_the_vip(lab, mon):
    before = mon.probe_counts()
    wait_until(lambda: mon.probe_counts()["successes"] >= before["successes"] + 2, 120,
               "two more successful probe registrations", interval=3)
    after = mon.probe_counts()
    assert after["failures"] == before["failures"], f"probe failures while the VIP is healthy: {before} -> {after}"
    assert after["step_failures"] == before["step_failures"], f"probe step failures: {before} -> {after}"
    # Prometheus has it too, under the probe's job.
    assert mon.query('mlflow_probe_registration_duration_seconds_count{job="registration_probe"} > 0')


def test_every_dashboard_panel_has_data(lab, mon):
    queries = all_queries()
    assert queries, "no dashboard panel queries found"
    problems = check_queries(mon.prometheus, queries, context=ssl.create_default_context(cafile=lab.ca_path),
                             headers=lab.monitoring_headers())
    assert not problems, "dashboard panels without data:\n" + "\n".join(problems)


def test_a_log_line_reaches_the_monitoring_host(lab, mon):
    tag = f"mlflow-ha-lab-test-{int(time.time())}"
    lab.exec("pg2", "logger", "-t", tag, "central log check from pg2")
    wait_until(lambda: "central log check from pg2" in mon.central_log(tag), 120,
               f"the line tagged {tag} in mon1's journal-remote store", interval=2)
    assert " pg2 " in mon.central_log(tag), f"the line is not attributed to pg2: {mon.central_log(tag)!r}"


def test_a_stopped_mlflow_server_alerts_and_resolves(lab, mon):
    victim = lab.groups["mlflow"][-1]
    assert not mon.alertmanager_alerts("MLflowServerDown"), "MLflowServerDown is already active before the test"
    lab.exec(victim, "systemctl", "stop", "mlflow")
    try:
        took = wait_until(lambda: mon.alertmanager_alerts("MLflowServerDown", victim), 400,
                          f"MLflowServerDown for {victim} in Alertmanager")
        print(f"MLflowServerDown for {victim} reached Alertmanager {took:.0f} s after the stop")
        assert not mon.firing("MLflowAllServersDown"), "the other server serves: MLflowAllServersDown must not fire"
    finally:
        lab.exec(victim, "systemctl", "start", "mlflow")
    took = wait_until(lambda: not mon.alertmanager_alerts("MLflowServerDown", victim), 300,
                      f"MLflowServerDown for {victim} resolved in Alertmanager")
    print(f"and resolved {took:.0f} s after the restart")
    wait_until(lab.mlflow_whole, 120, "every MLflow server healthy again")


def test_the_watchdog_reaches_the_dead_mans_switch_receiver(lab, mon):
    """The watchers are watched: Alertmanager posts the always-firing Watchdog, and no other alert, to the external
    receiver (alertmanager_deadmans_switch_url; here a listener on the controller's address of the lab network)."""
    gateway = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())["lab_network"]
    posts: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append({"path": self.path, "body": json.loads(body or b"{}")})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((gateway["gateway"], 18099), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        took = wait_until(lambda: posts, 180, "a post from Alertmanager at the dead man's switch receiver", interval=1)
    finally:
        server.shutdown()
        server.server_close()
    print(f"Watchdog reached the receiver {took:.0f} s after it listened")
    names = {alert["labels"].get("alertname") for post in posts for alert in post["body"].get("alerts", [])}
    assert posts[0]["path"] == "/heartbeat"
    assert names == {"Watchdog"}, f"the dead man's switch receiver got other alerts too: {names}"


# -- Clients --------------------------------------------------------------------------------------------------

def clients_doc_blocks() -> tuple[str, str, str]:
    """The admin's Python block, and the user's shell and Python blocks, that docs/clients.md marks as tested."""
    text = (ROOT / "docs" / "clients.md").read_text()
    admin = re.search(r"```python\n(.*?)```", text[text.index("<!-- tested-admin:"):], re.S).group(1)
    tested = text[text.index("<!-- tested:"):]
    shell = re.search(r"```bash\n(.*?)```", tested, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", tested, re.S).group(1)
    return admin, shell, python


def run_client(python: str, env: dict[str, str], home: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ["MLFLOW_HA_CLIENT_PYTHON"], "-c", python], cwd=home,
                          env={"PATH": os.environ["PATH"], "HOME": home, **env},
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_official_client_works_as_docs_clients_md_says(lab):
    """A user's machine, as docs/clients.md sets it up: the admin creates the user with the page's block, then the
    user's shell settings (the tracking URL, the CA file, the user and password, the client settings the page
    lists; fresh HOME, nothing else) and Python block: a run with a 3 MiB artifact, registered, found, and loaded
    back with download_artifacts("models:/..."), the way mlflow.pyfunc.load_model reads (an anonymous write's
    refusal is test_what_must_be_refused_is_refused's)."""
    admin, shell, python = clients_doc_blocks()
    exported = dict(re.findall(r"^export (\w+)=(\S+)", shell, re.M))
    user, password = f"laptop-{int(time.time())}", f"laptop-password-{os.getpid()}-{int(time.time())}"
    site = {"MLFLOW_TRACKING_URI": f"https://{lab.vip}",
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ROOT / "inventories" / "pki" / "lab" / "ca.crt")}
    if lab.mlflow_username:
        site.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    assert set(site) <= set(exported), f"docs/clients.md no longer sets {sorted(set(site) - set(exported))}"
    context = ssl.create_default_context(cafile=site["MLFLOW_TRACKING_SERVER_CERT_PATH"])

    # The servers proxy every transfer: server-info (public) must not send clients to presigned S3 URLs.
    with urllib.request.urlopen(f"{site['MLFLOW_TRACKING_URI']}/api/3.0/mlflow/server-info", timeout=10,
                                context=context) as answer:
        info = json.load(answer)
    assert not info.get("multipart_downloads_enabled") and not info.get("multipart_uploads_enabled"), info
    with tempfile.TemporaryDirectory() as home:
        if lab.mlflow_username:
            admin_block = admin.replace('"alice"', f'"{user}"').replace('"alice-chooses-12-or-more"', f'"{password}"')
            made = run_client(admin_block, {**site, **lab.client_env()}, home)
            assert made.returncode == 0, f"docs/clients.md's admin block failed:\n{tail(made.stdout + made.stderr)}"
        # The 3 MiB artifact takes the path a file above MLflow's 500 MiB multipart threshold takes.
        run = run_client(python, {**exported, **site, "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(1024 * 1024)},
                         home)
    assert run.returncode == 0, f"docs/clients.md's Python failed:\n{tail(run.stdout + run.stderr)}"
    assert "loaded laptop-check-model" in run.stdout, run.stdout


# -- Refusals ------------------------------------------------------------------------------------------------

# The collection CA where the site playbook installs it on every lab host.
HOST_CA = "/usr/local/share/ca-certificates/mlflow-ha-ca.crt"


def run_python(lab, host: str, script: str, *args: str) -> str:
    """What ``script`` prints, run with ``args`` on the controller (host "controller") or inside a lab host."""
    if host == "controller":
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                              check=False).stdout.strip()
    return lab.exec(host, "python3", "-c", script, *args).strip()


# One request, the HTTP status on stdout (the CA file when it exists there).
STATUS_SCRIPT = """
import base64, os, ssl, sys, urllib.error, urllib.request
method, url, user, password, ca = sys.argv[1:6]
context = ssl.create_default_context(cafile=ca) if os.path.exists(ca) else ssl._create_unverified_context()
headers = {"Content-Type": "application/json"}
if user:
    headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
request = urllib.request.Request(url, method=method, data=b"{}" if method in ("POST", "PUT") else None,
                                 headers=headers)
try:
    print(opener.open(request, timeout=10).status)
except urllib.error.HTTPError as err:
    print(err.code)
except (urllib.error.URLError, ConnectionError) as err:  # a reset or refused connection: the host firewall
    print(0 if isinstance(getattr(err, "reason", err), ConnectionError) else -1)
"""

# The status status_from gives for a connection the host firewall refused (a TCP reset): no HTTP answer at all.
FIREWALLED = 0


def status_from(lab, host: str, method: str, url: str, user: str = "", password: str = "") -> int:
    """The HTTP status a request from ``host`` (a lab host, or "controller") gets, redirects not followed."""
    ca = lab.ca_path if host == "controller" else HOST_CA
    out = run_python(lab, host, STATUS_SCRIPT, method, url, user, password, ca)
    try:
        return int(out.splitlines()[-1])
    except (ValueError, IndexError):
        return -1


# Run inside a lab host (or on the controller): a PostgreSQL startup message to ADDRESS:PORT, in plain TCP or (MODE
# "tls") inside TLS negotiated as libpq does (SSLRequest, then a handshake verifying the certificate against CA and
# ADDRESS); then the first answer's type: "R" (the server asks for a password: the hba rules let the connection in),
# "E" with the message (refused), "X" (a reset: the host firewall) or "N" (the server declined TLS).
PG_STARTUP_SCRIPT = """
import socket, ssl, struct, sys
address, port, mode, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
params = b"user\\0mlflow\\0database\\0mlflow\\0\\0"
try:
    conn = socket.create_connection((address, port), timeout=10)
    if mode == "tls":
        conn.sendall(struct.pack("!II", 8, 80877103))
        if conn.recv(1) != b"S":
            print("N server declined TLS")
            sys.exit(0)
        conn = ssl.create_default_context(cafile=ca).wrap_socket(conn, server_hostname=address)
    conn.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
    answer = conn.recv(4096)
except ConnectionError as err:  # refused or reset: the host firewall
    print("X", type(err).__name__)
    sys.exit(0)
print(answer[:1].decode(), answer[5:].replace(b"\\0", b" ").decode(errors="replace")[:200])
"""


def postgres_answer_from(lab, host: str, address: str, port: int, tls: bool = True, ca: str = "") -> str:
    ca = ca or (lab.ca_path if host == "controller" else HOST_CA)
    return run_python(lab, host, PG_STARTUP_SCRIPT, address, str(port), "tls" if tls else "plain", ca)


def test_postgresql_and_pgbouncer_admit_only_their_clients(lab):
    """The host firewall (roles/firewall) and behind it pg_hba from the inventory (the members and
    patroni_client_networks, the controller in the lab) and PgBouncer's own hba file (the load balancers, the
    members, the same networks): a storage node's connection is reset by the firewall, before any PostgreSQL
    answer; the controller, and for PgBouncer a load balancer, are asked for a password once they speak TLS, with the
    server's certificate verified against the collection CA and the address they connected to (libpq's verify-full),
    and refused in plain TCP (hostssl). The same holds through the VIP's primary port (HAProxy passes the protocol
    through to PgBouncer, whose certificate carries the VIP), which MLflow connects to with verify-full. (The
    firewall admits the same sources as the two hba files, so from the lab's hosts only its refusal is visible; a
    storage node was refused by pg_hba itself before the firewall existed.)"""
    member = lab.hosts[lab.groups["postgres"][0]]
    outsider = lab.groups["storage"][-1]
    balancer = lab.groups["lb"][0]
    for port in (5432, 6432):
        refused = postgres_answer_from(lab, outsider, member, port)
        assert refused.startswith("X") or (refused.startswith("E") and "pg_hba" in refused), \
            f"port {port} from {outsider}: {refused!r}"
    wrong = []
    # (A load balancer keeps the collection CA with HAProxy's certificate, not in the system's trust store.)
    clients = [("controller", member, 5432, ""), ("controller", member, 6432, ""),
               (balancer, member, 6432, "/etc/haproxy/tls/ca.crt"), ("controller", lab.vip, 5000, "")]
    for client, address, port, ca in clients:
        if not (asked := postgres_answer_from(lab, client, address, port, ca=ca)).startswith("R"):
            wrong.append(f"TLS to {address}:{port} from {client}: {asked!r}, expected a password request")
        if not (plain := postgres_answer_from(lab, client, address, port, tls=False, ca=ca)).startswith("E"):
            wrong.append(f"plain TCP to {address}:{port} from {client}: {plain!r}, expected a refusal")
    assert not wrong, "PostgreSQL, PgBouncer or the VIP answered wrongly:\n" + "\n".join(wrong)


# Run inside a lab host: a TCP connection to each ADDRESS:PORT given; prints one line per target, "open", "refused"
# (a reset or refusal: the host firewall, or nothing listening) or "timeout".
CONNECT_SCRIPT = """
import socket, sys
for target in sys.argv[1:]:
    address, port = target.rsplit(":", 1)
    try:
        socket.create_connection((address, int(port)), timeout=5).close()
        print(target, "open")
    except ConnectionError:
        print(target, "refused")
    except OSError:
        print(target, "timeout")
"""


def connections_from(lab, host: str, targets: list[str]) -> dict[str, str]:
    out = run_python(lab, host, CONNECT_SCRIPT, *targets)
    return dict(line.rsplit(" ", 1) for line in out.splitlines() if " " in line)


def test_the_host_firewall_admits_each_port_only_from_its_clients(lab):
    """roles/firewall from docs/ports.md's flows: from an MLflow server and from a storage node, the ports of tiers
    they do not use are refused (etcd, Patroni's API, PostgreSQL and PgBouncer, SeaweedFS's master, volume and
    filer, the other MLflow server, Prometheus, Alertmanager, the probe, HAProxy's stats and database ports), while
    the ports they do use stay open to them (the same runs show the rest of the stack working through them)."""
    h, g = lab.hosts, lab.groups
    pg, s3, app, lb, mon = (h[g[k][0]] for k in ("postgres", "storage", "mlflow", "lb", "monitoring"))
    other_app = h[g["mlflow"][-1]]
    from_app = connections_from(lab, g["mlflow"][0], [
        f"{pg}:2379", f"{pg}:8008", f"{pg}:5432", f"{pg}:6432", f"{s3}:9333", f"{s3}:8080", f"{s3}:8888",
        f"{s3}:8333", f"{other_app}:5000", f"{mon}:9090", f"{mon}:9093", f"{mon}:9109",
        f"{lab.vip}:5000", f"{lab.vip}:9000", f"{lab.vip}:443", f"{lb}:8404", f"{mon}:19532"])
    from_storage = connections_from(lab, g["storage"][-1], [
        f"{pg}:2379", f"{pg}:5432", f"{app}:5000", f"{mon}:9090", f"{mon}:9093", f"{lb}:8404",
        f"{lab.vip}:5000", f"{lab.vip}:9000", f"{lab.vip}:443", f"{s3}:8888", f"{s3}:9333"])
    expected_app = {t: "refused" for t in from_app}
    expected_app.update({f"{lab.vip}:5000": "open", f"{lab.vip}:9000": "open", f"{lab.vip}:443": "open",
                         f"{lb}:8404": "open", f"{mon}:19532": "open"})
    expected_storage = {t: "refused" for t in from_storage}
    expected_storage.update({f"{lab.vip}:443": "open", f"{s3}:8888": "open", f"{s3}:9333": "open"})
    wrong = [f"{target} from {who}: {got}, expected {want}"
             for who, got_all, want_all in (("the MLflow server", from_app, expected_app),
                                            ("the storage node", from_storage, expected_storage))
             for target, want in want_all.items() if (got := got_all.get(target)) != want]
    assert not wrong, "the host firewall let through or refused the wrong connections:\n" + "\n".join(wrong)


def test_what_must_be_refused_is_refused(lab):
    """From the controller and from a storage node (a host with no business in MLflow's API or Prometheus): an
    anonymous or wrongly authenticated MLflow write, a plain-HTTP write (redirected, never served), a user's admin
    action, S3 without keys, presigned transfers, and without the monitoring login (HTTPS everywhere): Prometheus's
    shutdown (the lifecycle API is off as well), an Alertmanager silence, an exporter's and the probe's metrics,
    HAProxy's stats page. The controller is in the lab's admin network, so the services answer it themselves; the
    storage node's S3 and monitoring requests are refused by the host firewall first (FIREWALLED), the rest by the
    services. PostgreSQL, PgBouncer, etcd and the other tiers' ports have tests of their own."""
    api, vip = lab.api_url, lab.vip
    mon = lab.hosts[lab.groups["monitoring"][0]]
    prometheus = f"https://{mon}:9090"
    pg, lb = lab.hosts[lab.groups["postgres"][0]], lab.hosts[lab.groups["lb"][0]]
    site = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
    probe_user = site.get("registration_probe_username", "")
    probe_password = site.get("registration_probe_password", "")
    # (what, method, url, user, password, expected from the controller, expected from the storage node)
    checks = [
        ("anonymous model registration", "POST", f"{api}/api/2.0/mlflow/registered-models/create", "", "", 401, 401),
        ("registration with a wrong password", "POST", f"{api}/api/2.0/mlflow/registered-models/create",
         lab.mlflow_username or "admin", "not-the-password", 401, 401),
        ("plain-HTTP registration (redirected, not served)", "POST",
         f"http://{vip}/api/2.0/mlflow/registered-models/create", "", "", 308, 308),
        ("S3 listing without keys", "GET", f"https://{vip}:9000/mlflow/", "", "", 403, FIREWALLED),
        ("S3 upload without keys", "PUT", f"https://{vip}:9000/mlflow/security-test", "", "", 403, FIREWALLED),
        ("presigned artifact download", "GET", f"{api}/api/2.0/mlflow-artifacts/presigned/0/x/artifacts/y",
         lab.mlflow_username, lab.mlflow_password, 501, 501),
        ("Prometheus shutdown without the monitoring login", "POST", f"{prometheus}/-/quit", "", "", 401, FIREWALLED),
        ("Prometheus shutdown with it (lifecycle API off)", "POST", f"{prometheus}/-/quit",
         lab.monitoring_username, lab.monitoring_password, 403, FIREWALLED),
        ("Alertmanager silence without the monitoring login", "POST", f"https://{mon}:9093/api/v2/silences", "", "",
         401, FIREWALLED),
        ("node_exporter without the monitoring login", "GET", f"https://{pg}:9100/metrics", "", "", 401, FIREWALLED),
        ("postgres_exporter with a wrong password", "GET", f"https://{pg}:9187/metrics",
         lab.monitoring_username, "not-the-password", 401, FIREWALLED),
        ("the probe's metrics without the monitoring login", "GET", f"https://{mon}:9109/metrics", "", "", 401,
         FIREWALLED),
        ("HAProxy stats without the monitoring login", "GET", f"https://{lb}:8404/stats", "", "", 401, FIREWALLED),
        ("HAProxy metrics without the monitoring login", "GET", f"https://{lb}:8404/metrics", "", "", 401,
         FIREWALLED),
    ]
    if probe_user and lab.mlflow_username:
        checks.append(("a user creating users (admins only)", "POST", f"{api}/api/2.0/mlflow/users/create",
                       probe_user, probe_password, 403, 403))
    outsider = lab.groups["storage"][-1]
    wrong = [f"{what} from {where}: HTTP {got}, expected {expected}"
             for what, method, url, user, password, *by_source in checks
             for where, expected in zip(("controller", outsider), by_source)
             if (got := status_from(lab, where, method, url, user, password)) != expected]
    assert not wrong, "requests that should have been refused:\n" + "\n".join(wrong)
    ready, _body = lab.monitoring_request(f"{prometheus}/-/ready")
    assert ready == 200, "Prometheus is not ready after the refused shutdown"


def test_the_mlflow_servers_answer_only_https(lab):
    """mlflow_tls (issue 14, TLS between tiers): from the controller, which the host firewall admits to each server's
    port, a plain-HTTP request to an MLflow server itself gets no HTTP answer at all (uvicorn closes the connection
    at the failed handshake), while HTTPS verified with the collection CA answers /health 200. What HAProxy sends a
    server (basic-auth logins included) therefore crosses the network encrypted; the load balancers' checks pass
    over TLS, or nothing would be served through the VIP in the other tests."""
    wrong = []
    for host in lab.groups["mlflow"]:
        https = mlflow_server_url(lab.hosts[host])
        assert https.startswith("https://"), f"the lab serves MLflow in plain HTTP: {https}"
        plain = "http://" + https.split("://", 1)[1]
        if (got := status_from(lab, "controller", "GET", f"{plain}/health")) > 0:
            wrong.append(f"{host}: plain HTTP {plain}/health answered HTTP {got}, expected no HTTP answer")
        if (got := status_from(lab, "controller", "GET", f"{https}/health")) != 200:
            wrong.append(f"{host}: {https}/health with the collection CA answered {got}, expected 200")
    assert not wrong, "the MLflow servers' own port:\n" + "\n".join(wrong)


# Run on the controller: a TLS handshake with a gRPC port (ALPN h2) presenting the client certificate CERT/KEY, or
# none when they are empty, then the HTTP/2 preface; "ok" when the server answers it, else "refused" and why. Under
# TLS 1.3 the server's refusal of a client certificate arrives as an alert on the first read, hence the preface.
GRPC_HANDSHAKE_SCRIPT = """
import socket, ssl, sys
address, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
context = ssl.create_default_context(cafile=ca)
context.check_hostname = False  # SeaweedFS's certificates name the host, the test dials its address
context.set_alpn_protocols(["h2"])
if cert:
    context.load_cert_chain(cert, key)
try:
    with socket.create_connection((address, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + bytes.fromhex("000000040000000000"))
        print("ok" if tls.recv(9) else "refused: closed")
except (ssl.SSLError, OSError) as err:
    print("refused:", type(err).__name__, err)
"""


def test_seaweedfs_refuses_what_has_no_credential(lab):
    """security.toml, from the controller (in the admin network: the host firewall admits it to every SeaweedFS
    port, so the answers are SeaweedFS's own). A volume server refuses a write and a read without the master's
    token; the filer's HTTP API refuses a write and a listing without a token (HTTP 401 each). Every gRPC port
    (master 19333, volume 18080, filer 18888, S3 18333) refuses a client without a certificate and one with a
    certificate of the collection CA whose name is not a storage host's (pg1's Patroni certificate); the storage
    host's own certificate is let in, so the refusals are about the certificate. Still open: anyone the firewall
    admits to a master's HTTP port can ask it for tokens (/dir/assign) unless seaweedfs_guard_white_list is set."""
    storage = lab.groups["storage"]
    first = lab.hosts[storage[0]]
    # A fresh file id; the master's token (the Authorization header) is dropped.
    assign = get_json(f"http://{first}:9333/dir/assign", timeout=10)
    fid, volume = assign["fid"], assign["url"]
    checks = [
        ("volume write without a token", "POST", f"http://{volume}/{fid}"),
        ("volume read without a token", "GET", f"http://{volume}/{fid}"),
        ("filer write without a token", "POST", f"http://{first}:8888/security-test/"),
        ("filer listing without a token", "GET", f"http://{first}:8888/buckets/"),
    ]
    wrong = [f"{what}: HTTP {got}, expected 401" for what, method, url in checks
             if (got := status_from(lab, "controller", method, url)) != 401]
    hosts_store = ROOT / "inventories" / "pki" / "lab" / "hosts"
    identities = {
        "no certificate": ("", "", "refused"),
        "pg1's Patroni certificate": (str(hosts_store / "pg1" / "patroni.crt"),
                                      str(hosts_store / "pg1" / "patroni.key"), "refused"),
        f"{storage[0]}'s certificate": (str(hosts_store / storage[0] / "seaweedfs.crt"),
                                        str(hosts_store / storage[0] / "seaweedfs.key"), "ok"),
    }
    ports = [(storage[0], 19333), (storage[-1], 18080), (storage[-1], 18888), (storage[-1], 18333)]
    for host, port in ports:
        for name, (cert, key, expected) in identities.items():
            got = run_python(lab, "controller", GRPC_HANDSHAKE_SCRIPT, lab.hosts[host], str(port), lab.ca_path,
                             cert, key)
            if not got.startswith(expected):
                wrong.append(f"gRPC {host}:{port} with {name}: {got or 'no answer'}, expected {expected}")
    assert not wrong, "SeaweedFS let in what has no credential:\n" + "\n".join(wrong)


# Run on the controller: one request to etcd's JSON gateway (POST PATH with BODY) over TLS, etcd's certificate
# verified against CA and the address, presenting the client certificate CERT/KEY (none when empty); "ok <status>"
# when etcd answers, else "refused" and why (under TLS 1.3 a refused client certificate shows on the first read).
ETCD_REQUEST_SCRIPT = """
import http.client, ssl, sys
address, port, ca, cert, key, path, body = sys.argv[1], int(sys.argv[2]), *sys.argv[3:8]
context = ssl.create_default_context(cafile=ca)
if cert:
    context.load_cert_chain(cert, key)
try:
    conn = http.client.HTTPSConnection(address, port, context=context, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    print("ok", answer.status, answer.read()[:120].decode(errors="replace"))
except (ssl.SSLError, OSError, http.client.HTTPException) as err:
    print("refused:", type(err).__name__, err)
"""


def test_etcd_admits_only_its_members_and_patroni(lab):
    """etcd trusts only its own CA (etcd_ca, issue 14: "etcd accepts only Patroni's and its members' identities"),
    asked from the controller (the host firewall admits the admin network to etcd, so the answers are etcd's own): a
    write with no certificate, with a certificate of the collection CA from a database host itself (pg1's Patroni
    certificate, which its REST API and PostgreSQL use) and with a storage host's certificate is refused at the TLS
    handshake, while Patroni's etcd client certificate reads Patroni's keys (so the refusals are about the CA)."""
    pki = ROOT / "inventories" / "pki" / "lab"
    member, storage = lab.groups["etcd"][0], lab.groups["storage"][0]
    address, etcd_ca = lab.hosts[member], str(pki / "etcd" / "ca.crt")
    put = json.dumps({"key": base64.b64encode(b"/security-test").decode(), "value": base64.b64encode(b"x").decode()})
    read = json.dumps({"key": base64.b64encode(b"/service/").decode(),
                       "range_end": base64.b64encode(b"/service0").decode(), "count_only": True})
    checks = [
        ("a write with no certificate", "", put, "refused: SSL"),
        (f"a write with {member}'s Patroni certificate (collection CA)", str(pki / "hosts" / member / "patroni"), put,
         "refused: SSL"),
        (f"a write with {storage}'s SeaweedFS certificate", str(pki / "hosts" / storage / "seaweedfs"), put,
         "refused: SSL"),
        (f"a read with {member}'s Patroni etcd client certificate",
         str(pki / "etcd" / "hosts" / member / "etcd-client"), read, "ok 200"),
    ]
    wrong = []
    for what, stem, body, expected in checks:
        cert, key = (f"{stem}.crt", f"{stem}.key") if stem else ("", "")
        path = "/v3/kv/put" if body == put else "/v3/kv/range"
        got = run_python(lab, "controller", ETCD_REQUEST_SCRIPT, address, "2379", etcd_ca, cert, key, path, body)
        if not got.startswith(expected):
            wrong.append(f"{what}: {got or 'no answer'}, expected {expected}")
    assert not wrong, f"etcd at {address}:2379 let in or refused the wrong clients:\n" + "\n".join(wrong)


# -- The tier scenarios' checks, on the lab ---------------------------------------------------------------------
# molecule/postgres_ha and molecule/storage_ha converge the same database and storage stacks as the lab; `make
# test` runs their verify playbooks here instead of converging second copies (`make molecule` alone still runs
# the scenarios whole). The chaos test below kills, freezes and cuts the PostgreSQL leader and a storage node
# under registration load, so the scenarios' own machine kills are left out here. Both run before the faults: the
# storage checks' backup-and-restore copies the whole artifact bucket, which the chaos load fills with thousands
# of objects (2.5 min after it, seconds before). Run beside the alert test, the PostgreSQL checks saved ~30 s at
# best and slowed both down in the measured runs (docs/harness.md): they run on their own.

def test_the_postgres_ha_scenario_checks_pass_on_the_lab(lab):
    run = run_lab("play", "postgres-ha-verify", str(ROOT / "molecule" / "postgres_ha" / "verify.yml"),
                  "-e", "verify_machine_kill=false")
    assert run.returncode == 0, f"molecule/postgres_ha/verify.yml on the lab failed:\n{tail(run.stdout + run.stderr)}"


def test_the_storage_ha_scenario_checks_pass_on_the_lab(lab):
    run = run_lab("play", "storage-ha-verify", str(ROOT / "molecule" / "storage_ha" / "verify.yml"),
                  "-e", "verify_node_loss=false")
    assert run.returncode == 0, f"molecule/storage_ha/verify.yml on the lab failed:\n{tail(run.stdout + run.stderr)}"


ROLES = ROOT / "roles"


# The keepalived and prometheus roles' scenarios converge two load balancers with a VIP and one monitoring host: the
# lab has both. Their verify playbooks read the VIP, the monitoring login and Alertmanager's group_wait from the
# inventory. The VIP check stops HAProxy on the holder and starts it again (the VIP stays on the other load balancer,
# nopreempt); the chaos test's faults find the holder wherever it is.

def test_the_keepalived_scenario_checks_pass_on_the_lab(lab):
    run = run_lab("play", "keepalived-verify", str(ROLES / "keepalived" / "molecule" / "default" / "verify.yml"))
    assert run.returncode == 0, f"keepalived's verify.yml on the lab failed:\n{tail(run.stdout + run.stderr)}"
    wait_until(lab.lb_whole, 120, "both load balancers healthy again, one holding the VIP")


def test_the_prometheus_scenario_checks_pass_on_the_lab(lab):
    run = run_lab("play", "prometheus-verify", str(ROLES / "prometheus" / "molecule" / "default" / "verify.yml"),
                  "-e", f"prometheus_test_address={lab.hosts[lab.groups['monitoring'][0]]}")
    assert run.returncode == 0, f"prometheus's verify.yml on the lab failed:\n{tail(run.stdout + run.stderr)}"


# The etcd and node_exporter scenarios verify with testinfra files: they run here with testinfra's docker backend
# against a lab host, told the lab's members, containers and login through the environment (each file says which
# variables). The journal_remote scenario's verify playbook takes the lab's sink and sender as extra variables.

def scenario_tests(lab, label: str, tests: list[Path], host: str, env: dict[str, str]) -> None:
    """A role scenario's testinfra files, run by pytest against `host` of the lab; its seconds go into the phase
    table as `lab: <label>`."""
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--hosts=docker://{lab.container(host)}", *map(str, tests)],
                         cwd=tests[0].parent, env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=1200, check=False)
    record(f"lab: {label}", time.monotonic() - started, run.returncode)
    (OUTPUT / f"{label}.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"{label} failed (log: {OUTPUT / f'{label}.log'}):\n{tail(run.stdout + run.stderr)}"


def test_the_node_exporter_scenario_checks_pass_on_the_lab(lab):
    tests = ROLES / "node_exporter" / "molecule" / "default" / "tests"
    lab_vars = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
    scenario_tests(lab, "node-exporter-verify", [tests / "test_default.py"], lab.groups["mlflow"][0],
                   {"MLFLOW_HA_NODE_EXPORTER_PASSWORD": lab.monitoring_password,
                    "MLFLOW_HA_NODE_EXPORTER_DISABLED": json.dumps(lab_vars["node_exporter_collectors_disabled"])})


def test_the_journal_remote_scenario_checks_pass_on_the_lab(lab):
    sink, sender = lab.groups["monitoring"][0], lab.groups["postgres"][1]
    extra = {"journal_remote_test_sink": sink, "journal_remote_test_sender": sender,
             "journal_remote_test_sink_address": lab.hosts[sink],
             "journal_remote_test_sender_address": lab.hosts[sender],
             "journal_remote_test_sink_url": f"https://{lab.hosts[sink]}:19532"}
    verify = ROLES / "journal_remote" / "molecule" / "default" / "verify.yml"
    run = run_lab("play", "journal-remote-verify", str(verify), "-e", json.dumps(extra))
    assert run.returncode == 0, f"journal_remote's verify.yml on the lab failed:\n{tail(run.stdout + run.stderr)}"


# -- Disaster recovery: a point-in-time restore -------------------------------------------------------------------
# docs/postgres-ha.md's restore runbook followed step by step after an operator's error. It rolls the registry back to
# a time T, which no later test minds (each registers models of its own), and it runs before the faults: its artifact
# backup, report and restore then handle the few objects the tests before it wrote, not the chaos load's thousands
# (the backup alone took 46-124 s after them: docs/harness.md, "The PITR drill before the faults"). Registered:
# DR_BEFORE versions, then the time T, then DR_AFTER more, then the registered model deleted. A point-in-time restore
# to T (playbooks/dr/restore_pgbackrest.yml, from the cluster's own repository) must give back exactly the first
# DR_BEFORE versions, their artifacts byte for byte through models:/ URIs. Between the first versions and T the
# artifact backup runs and one version's object is deleted from the bucket: after the restore,
# playbooks/dr/artifact_report.yml must name that version (and the later versions' runs as orphans) and
# playbooks/dr/restore_missing_artifacts.yml must bring the object back from the backup (tests/lab/dr_artifacts.py).

DR_BEFORE, DR_AFTER = 5, 3
# The version whose artifact object is deleted from the bucket after the artifact backup ran.
DR_LOST_ARTIFACT = 3
DR_SCOPE = "mlflow-ha"


def dr_client_env(lab) -> dict[str, str]:
    """The registry's address and the official client's CA and login (docs/clients.md)."""
    return {"MLFLOW_TRACKING_URI": f"https://{lab.vip}", **lab.client_env()}


def dr_client(lab, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": tempfile.gettempdir(), **dr_client_env(lab)}
    return subprocess.run([os.environ["MLFLOW_HA_CLIENT_PYTHON"], str(Path(__file__).parent / "dr_client.py"), *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def read_back(lab, model: str, state: Path, what: str) -> dict:
    """dr_client.py's check of `model` against the versions its state file recorded (which are present, whether each
    one's artifact reads back byte for byte); `what` names the read in the failure message."""
    checked = dr_client(lab, "check", model, str(state))
    assert checked.returncode == 0, f"reading {what} failed:\n{tail(checked.stdout + checked.stderr)}"
    return json.loads(checked.stdout)


def write_report(name: str, report: dict) -> None:
    """A test's figures as tests/output/lab/<name>.json, and on its output."""
    (OUTPUT / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def test_a_point_in_time_restore_undoes_a_deleted_model(lab):
    model, state = f"dr-drill-{int(time.time())}", OUTPUT / "dr.state.json"
    state.unlink(missing_ok=True)
    report: dict = {"model": model}
    made = dr_client(lab, "register", model, str(DR_BEFORE), str(state))
    assert made.returncode == 0, f"registering the first versions failed:\n{tail(made.stdout + made.stderr)}"
    # The artifact backup runs, then one of those versions loses its artifact (an operator's mistake in the bucket):
    # after the restore the report must name it, and the targeted restore must bring it back from the backup.
    backup = run_lab("play", "dr-artifact-backup", str(ROOT / "playbooks" / "dr" / "backup_artifacts.yml"))
    assert backup.returncode == 0, f"the artifact backup failed:\n{tail(backup.stdout + backup.stderr)}"
    lost_entry = next(e for e in json.loads(state.read_text()) if e["version"] == DR_LOST_ARTIFACT)
    lab.exec(dr_artifacts.BACKUP_HOST, *dr_artifacts.delete_object_argv(dr_artifacts.object_key(lost_entry)))
    # T: a whole second after the last acknowledged version, and a second before the next one starts.
    target = int(max(entry["acked"] for entry in json.loads(state.read_text()))) + 2
    time.sleep(max(0.0, target + 1 - time.time()))
    made = dr_client(lab, "register", model, str(DR_AFTER), str(state))
    assert made.returncode == 0, f"registering the later versions failed:\n{tail(made.stdout + made.stderr)}"
    deleted = dr_client(lab, "delete", model)
    assert deleted.returncode == 0, f"deleting the model failed:\n{tail(deleted.stdout + deleted.stderr)}"
    gone = json.loads(dr_client(lab, "check", model, str(state)).stdout)
    assert gone["present"] == [], f"the deleted model still has versions: {gone}"

    # The archive must reach past T: `pgbackrest check` switches WAL and waits until the segment is archived.
    leader = lab.patroni_leader()
    # Checked: when archiving is stuck the drill must say so here, not later as a target past the archive.
    lab.docker("exec", lab.container(leader), "su", "postgres", "-c",
               f"pgbackrest --stanza={DR_SCOPE} --log-level-console=warn check")
    target_text = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(target))
    report["target"] = target_text

    # The runbook: stop the writers, restore, write Patroni's DCS settings again, start the writers, validate.
    for host in lab.groups["mlflow"]:
        lab.exec(host, "systemctl", "stop", "mlflow")
    started = time.monotonic()
    restore = run_lab("play", "dr-restore", str(ROOT / "playbooks" / "dr" / "restore_pgbackrest.yml"),
                      "-e", json.dumps({"restore_confirm": DR_SCOPE, "restore_target_time": target_text,
                                        "restore_margin": 5}))
    report["restore_seconds"] = round(time.monotonic() - started)
    assert restore.returncode == 0, f"the point-in-time restore failed:\n{tail(restore.stdout + restore.stderr)}"
    started = time.monotonic()
    settle = run_lab("converge", "dr-site", "--tags", "postgres,pgbackrest")
    report["site_seconds"] = round(time.monotonic() - started)
    assert settle.returncode == 0, f"site.yml --tags postgres,pgbackrest failed:\n{tail(settle.stdout + settle.stderr)}"
    for host in lab.groups["mlflow"]:
        lab.exec(host, "systemctl", "start", "mlflow")
    wait_until(lab.mlflow_whole, 180, "every MLflow server healthy after the restore")

    # Artifacts and rows together: the report (versions without artifacts, objects without rows), then the restore
    # of exactly the artifacts the rows name, from the artifact backup.
    entries = json.loads(state.read_text())
    report_file, restore_file = OUTPUT / "dr.artifact-report.json", OUTPUT / "dr.artifact-restore.json"
    started = time.monotonic()
    audit = run_lab("play", "dr-artifact-report", *dr_artifacts.report_args(target_text, report_file))
    report["artifact_report_seconds"] = round(time.monotonic() - started)
    assert audit.returncode == 0, f"the artifact report failed:\n{tail(audit.stdout + audit.stderr)}"
    audited = json.loads(report_file.read_text())
    report["artifact_report_counts"] = audited.get("counts")
    problems = dr_artifacts.report_problems(audited, model, entries, DR_BEFORE, DR_LOST_ARTIFACT)
    assert problems == [], problems
    started = time.monotonic()
    put_back = run_lab("play", "dr-artifact-restore", *dr_artifacts.restore_args(target_text, restore_file))
    report["artifact_restore_seconds"] = round(time.monotonic() - started)
    assert put_back.returncode == 0, f"the artifact restore failed:\n{tail(put_back.stdout + put_back.stderr)}"
    problems = dr_artifacts.restore_problems(json.loads(restore_file.read_text()), model, entries, DR_LOST_ARTIFACT)
    assert problems == [], problems

    result = read_back(lab, model, state, "the restored model")
    report["check"] = result
    write_report("dr", report)
    assert result["present"] == list(range(1, DR_BEFORE + 1)), f"versions after the restore to {target_text}: {result}"
    assert all(item["artifact_matches"] for item in result["versions"] if item["present"]), result
    final = run_lab("validate")
    assert final.returncode == 0, f"validate.yml after the restore failed:\n{tail(final.stdout + final.stderr)}"


# -- Faults ---------------------------------------------------------------------------------------------------

def test_registrations_survive_the_loss_of_any_one_machine(lab):
    load = Load(lab, "chaos")
    try:
        wait_until(lambda: load.acks_since(0), 180, "a first registration through the VIP before any fault")
        time.sleep(10)
        faults = run_faults(lab, load)
    finally:
        load.stop()
    started = time.monotonic()
    verified = load.verify()
    report = {"workers": load.workers, "faults": faults, "totals": summarize(load.events_list(), verified),
              "verify_seconds": round(time.monotonic() - started, 1)}
    write_report("chaos", report)
    assert verified["acknowledged"] > 0
    assert verified["lost"] == 0, f"acknowledged registrations lost: {verified['lost_keys']}"
    assert verified["duplicated"] == 0, f"registrations duplicated: {verified['duplicates']}"
    assert verified["unreadable"] == 0, f"artifacts unreadable or changed: {verified['unreadable_detail']}"
    final = run_lab("validate")
    assert final.returncode == 0, f"validate.yml after the faults failed:\n{tail(final.stdout + final.stderr)}"


ETCD_TESTS = ROLES / "etcd" / "molecule" / "default" / "tests"


def etcd_scenario_env(lab) -> dict[str, str]:
    """What the etcd scenario's testinfra files need to check the lab's members (etcd_scenario.py)."""
    members = lab.groups["etcd"]
    return {"MLFLOW_HA_ETCD_MEMBERS": json.dumps({m: lab.hosts[m] for m in members}),
            "MLFLOW_HA_ETCD_CONTAINERS": json.dumps({m: lab.container(m) for m in members})}


def test_the_etcd_scenario_checks_pass_on_the_lab(lab):
    """The etcd scenario's checks (health, the role's binaries, members, replication, mutual TLS, and the leader's
    machine killed: a new leader among the survivors, the machine back as a member) on the lab's members. The etcd
    leader is moved to a PostgreSQL replica first: the chaos test freezes a machine that leads both, this kills one
    that leads etcd only, and the database's own leader keeps serving."""
    leader = lab.patroni_leader()
    replica = next(m for m in lab.groups["etcd"] if m != leader and m in lab.groups["postgres"])
    lab.move_etcd_leader(replica)
    scenario_tests(lab, "etcd-verify", [ETCD_TESTS / "test_default.py"], lab.groups["etcd"][0], etcd_scenario_env(lab))
    wait_until(lab.postgres_whole, 180, f"a leader and streaming replicas after {replica}'s machine came back")
    wait_until(lab.mlflow_whole, 180, "every MLflow server healthy after the etcd leader's machine came back")


def test_etcd_restored_from_a_snapshot_keeps_the_registry_serving(lab):
    """docs/postgres-ha.md's "Restoring etcd from a snapshot" on the lab, as the etcd scenario checks it
    (test_snapshot_restore.py: the snapshot timer's checked snapshot and its metrics page, playbooks/dr/backup_etcd.yml
    fetching one to the controller, playbooks/dr/restore_etcd.yml refusing no confirmation, a damaged file and
    changing nothing in --check, then restoring the timer's snapshot: etcd's keys of the snapshot's time back, later
    ones gone, old data directories moved aside, snapshots taken again), with the registry around it: a version
    registered before the snapshot and one between the snapshot and the restore (the playbook stops Patroni, restores
    etcd on every member, removes the snapshot's Patroni keys and starts Patroni leader first); then the cluster has a
    leader and streaming replicas, and both versions read back byte for byte (the database never depended on etcd's
    keys)."""
    model, state = f"etcd-restore-{int(time.time())}", OUTPUT / "etcd-restore.state.json"
    state.unlink(missing_ok=True)
    report: dict = {}
    made = dr_client(lab, "register", model, "1", str(state))
    assert made.returncode == 0, f"registering before the snapshot failed:\n{tail(made.stdout + made.stderr)}"
    # Between the snapshot and the restore, the scenario's test runs this: one more version (dr_client.py's way).
    register = [os.environ["MLFLOW_HA_CLIENT_PYTHON"], str(Path(__file__).parent / "dr_client.py"), "register", model,
                "1", str(state)]
    env = {**etcd_scenario_env(lab), **dr_client_env(lab),
           "MLFLOW_HA_ETCD_PLAYBOOK": json.dumps(["bash", str(ROOT / "tools" / "lab.sh"), "play"]),
           "MLFLOW_HA_ETCD_AFTER_SNAPSHOT": json.dumps(register)}
    started = time.monotonic()
    scenario_tests(lab, "etcd-snapshot-verify", [ETCD_TESTS / "test_snapshot_restore.py"], lab.groups["etcd"][0], env)
    report["scenario_seconds"] = round(time.monotonic() - started)
    report["whole_after_seconds"] = round(wait_until(lab.postgres_whole, 180, "a leader and streaming replicas"))
    wait_until(lab.mlflow_whole, 180, "every MLflow server healthy after the etcd restore")
    result = read_back(lab, model, state, "after the etcd restore")
    report["check"] = result
    write_report("etcd-restore", report)
    assert result["present"] == [1, 2], result
    assert all(item["artifact_matches"] for item in result["versions"]), result


# -- Registration through the client library while every MLflow server is down (issue 17) ---------------------------
# tests/lab/spool_load.py: 4 workers register through clients/python (mlflow_ha_client) with one spool, each one
# registration every SPOOL_INTERVAL seconds; every MLflow server is stopped for SPOOL_DOWN_SECONDS, then started: every
# acknowledged registration (registered at once or spooled) must be in the registry exactly once with its bytes, and
# the spool empty. At one registration a second each the workers alone kept the lab's MLflow tier saturated (~3.3
# registrations a second in all, 1.5 s each), so the replay of ~75 spooled registrations took 120-140 s beside them;
# at one every 2 s it has room (docs/harness.md, "The spool test's load").
SPOOL_DOWN_SECONDS = 30
SPOOL_INTERVAL = 2.0
SPOOL_LOAD = Path(__file__).parent / "spool_load.py"


def spool_acks(events: Path, status: str) -> int:
    if not events.exists():
        return 0
    return sum(1 for line in events.read_text().splitlines()
               if line.strip() and '"ack"' in line and json.loads(line).get("status") == status)


def test_registrations_through_the_client_library_outlive_every_mlflow_server_down(lab):
    sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))
    from mlflow_ha_client import Spool  # the checkout's package, as spool_load.py uses it

    spool_dir, events, stop_file = OUTPUT / "spool", OUTPUT / "spool.events.jsonl", OUTPUT / "spool.stop"
    verify_out = OUTPUT / "spool.verify.json"
    shutil.rmtree(spool_dir, ignore_errors=True)
    for path in (events, stop_file, verify_out):
        path.unlink(missing_ok=True)
    env = {**os.environ, **lab.client_env(), "MLFLOW_TRACKING_URI": lab.api_url, "MLFLOW_HA_SPOOL_DIR": str(spool_dir)}
    python = os.environ["MLFLOW_HA_CLIENT_PYTHON"]
    report: dict = {"down_seconds": SPOOL_DOWN_SECONDS, "interval_seconds": SPOOL_INTERVAL}
    with (OUTPUT / "spool.load.log").open("w") as log:
        load = subprocess.Popen([python, str(SPOOL_LOAD), "run", "--events", str(events), "--stop-file",
                                 str(stop_file), "--workers", "4", "--interval", str(SPOOL_INTERVAL),
                                 "--prefix", f"lab-spool-{int(time.time())}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: spool_acks(events, "registered") >= 4, 180, "registrations through the library")
            down_at = time.time()
            for host in lab.groups["mlflow"]:
                lab.exec(host, "systemctl", "stop", "mlflow")
            report["first_spooled_after_seconds"] = round(
                wait_until(lambda: spool_acks(events, "spooled") >= 1, 120, "a registration spooled"), 1)
            time.sleep(max(0.0, down_at + SPOOL_DOWN_SECONDS - time.time()))
            for host in lab.groups["mlflow"]:
                lab.exec(host, "systemctl", "start", "mlflow")
            up_at = time.monotonic()
            wait_until(lab.mlflow_whole, 180, "every MLflow server healthy again")
            report["healthy_after_seconds"] = round(time.monotonic() - up_at, 1)
            wait_until(lambda: Spool(spool_dir).status()["entries"].get("pending", 0) == 0, 300, "the spool replayed")
            report["replayed_after_seconds"] = round(time.monotonic() - up_at, 1)
            registered = spool_acks(events, "registered")
            wait_until(lambda: spool_acks(events, "registered") >= registered + 4, 120, "registrations after it")
        finally:
            stop_file.touch()
            load.wait(timeout=180)
    started = time.monotonic()
    checked = subprocess.run([python, str(SPOOL_LOAD), "verify", "--events", str(events), "--out", str(verify_out)],
                             env=env, capture_output=True, text=True, timeout=900, check=False)
    report["verify_seconds"] = round(time.monotonic() - started, 1)
    assert verify_out.exists(), f"spool_load.py verify wrote nothing:\n{tail(checked.stdout + checked.stderr)}"
    summary = json.loads(verify_out.read_text())
    report.update(summary)
    write_report("spool", report)
    assert summary["spooled"] > 0, "nothing was spooled while every MLflow server was down"
    assert summary["lost"] == [] and summary["duplicated"] == [] and summary["unreadable"] == [], summary
    waiting = {k: v for k, v in summary["spool_entries"].items() if k != "done" and v}
    assert not waiting, f"spool entries not done: {waiting}"


# -- Disaster recovery: every database machine lost ------------------------------------------------------------
# The second drill: every database machine lost (containers removed with their disks; etcd ran on them too), new
# empty machines in their place, the cluster restored from the off-site repository (repo2 on mon1) to the end of its
# archive, as docs/postgres-ha.md's "All database machines lost" runbook says. Registrations run until the machines
# go: those acknowledged before the last WAL file the archive had are all there again; those after it are the RPO
# (patroni_pgbackrest_archive_timeout bounds it: 30 s in the lab), counted and reported, not asserted.
def test_the_loss_of_every_database_machine_is_restored_from_the_off_site_repository(lab):
    members = list(lab.groups["postgres"])
    report: dict = {"members": members}
    load = Load(lab, "dr-loss", workers=2)
    try:
        began = time.time()
        wait_until(lambda: len(load.acks_since(0)) >= 10, 180, "registrations through the VIP before the loss")
        # Long enough for archive_timeout (30 s) to close at least one WAL file while registrations run.
        time.sleep(max(0.0, began + 45 - time.time()))
        leader = lab.patroni_leader()
        query = "SELECT extract(epoch FROM last_archived_time) || ' ' || last_archived_wal FROM pg_stat_archiver"
        archived = lab.exec(leader, "su", "postgres", "-c", f'psql -XAt -c "{query}"').split()
        lost_at = time.time()
        for host in members:
            lab.remove(host)
    finally:
        load.stop(abandon=True)
    assert len(archived) == 2, f"pg_stat_archiver on {leader} said nothing archived: {archived}"
    last_archived = float(archived[0])
    report.update(last_archived_wal=archived[1], archived_seconds_before_loss=round(lost_at - last_archived, 1))

    # The runbook: stop the writers, new machines, the roles without a cluster start (mlflow_ha_restore_pending),
    # the restore from the off-site repository, site.yml for the rest, the writers back.
    for host in lab.groups["mlflow"]:
        lab.exec(host, "systemctl", "stop", "mlflow")
    steps = [
        ("machines", ("play", "dr-loss-create", str(ROOT / "tools" / "lab" / "create.yml"))),
        ("site_pending", ("converge", "dr-loss-site-pending", "--tags",
                          "pki,firewall,node_exporter,logs,etcd,patroni,pgbouncer,pgbackrest",
                          "-e", "mlflow_ha_restore_pending=true")),
        ("restore", ("play", "dr-loss-restore", str(ROOT / "playbooks" / "dr" / "restore_pgbackrest.yml"),
                     "-e", json.dumps({"restore_confirm": DR_SCOPE, "restore_repo": 2}))),
        ("site", ("converge", "dr-loss-site", "--tags", "postgres,pgbackrest")),
    ]
    for name, args in steps:
        started = time.monotonic()
        done = run_lab(*args)
        report[f"{name}_seconds"] = round(time.monotonic() - started)
        assert done.returncode == 0, f"{name} ({args[1]}) failed:\n{tail(done.stdout + done.stderr)}"
    for host in lab.groups["mlflow"]:
        lab.exec(host, "systemctl", "start", "mlflow")
    wait_until(lab.mlflow_whole, 180, "every MLflow server healthy after the restore")

    verified = load.verify()
    acks = {e["key"]: e["start"] + e["seconds"] for e in load.events_list() if e["event"] == "ack"}
    lost = {key: acks[key] for key in verified["lost_keys"]}
    # Acknowledged well before the archive's last WAL file was in it (the push itself takes a few seconds): it must
    # be in that file or an earlier one.
    missing = sorted(key for key, acked in lost.items() if acked < last_archived - 10)
    report.update(acknowledged=verified["acknowledged"], lost=len(lost), duplicated=verified["duplicated"],
                  unreadable=verified["unreadable"],
                  rpo_seconds=round(lost_at - min(lost.values()), 1) if lost else 0.0)
    write_report("dr-loss", report)
    assert verified["acknowledged"] >= 10
    assert not missing, f"registrations acknowledged before the last archived WAL are missing: {missing}"
    assert verified["duplicated"] == 0, f"registrations duplicated: {verified['duplicates']}"
    assert verified["unreadable"] == 0, f"artifacts unreadable or changed: {verified['unreadable_detail']}"
    final = run_lab("validate")
    assert final.returncode == 0, f"validate.yml after the restore failed:\n{tail(final.stdout + final.stderr)}"


# -- Last: the external S3 backend (tests/lab/external_s3.py), re-converging MLflow and back --------------------
# Last in this module, so that it changes nothing the other tests see: pytest runs a module's tests in the order
# they appear in it.
def test_mlflow_writes_artifacts_to_an_external_s3_endpoint(lab):
    external_s3.check(lab)
