"""Storage fence: turn a stalled storage peer into a dead one, as seen from this node.

A frozen machine (paused VM, I/O hang) keeps its TCP connections open and its kernel keeps acknowledging, so
SeaweedFS's masters, filers and gateways wait on it: the master drops a volume server only when its heartbeat
stream breaks (gRPC keepalive, about 80 s), a chunk write or read waits 30 s per try, a frozen raft leader keeps
its followers' clients. A dead machine refuses at once and every one of those paths moves on.

Each node runs this program. It checks its own volume server (`/status`) every INTERVAL seconds and answers
`GET /health` on HEALTH_PORT with 200 while that check passes, 503 when it does not. It asks every peer's
`/health` as often. A frozen peer answers nothing (its processes are stopped; a TCP handshake alone proves
nothing, the peer's kernel completes it). After FAIL_AFTER failed probes in a row the peer is fenced on this node:
its address joins the nftables set that rejects, with a TCP reset, every packet SeaweedFS's processes here
(socket owner SEAWEEDFS_USER) send to it (new connections, and the replies on connections the peer opened), and
this node's established connections to it are destroyed (ss -K). After RECOVER_AFTER good probes in a row it is
let in again. The fence programs' own traffic is never rejected (they do not run as SEAWEEDFS_USER), so two
nodes cannot shut each other out for good.

Safety: a node that sees more than MAX_FENCED peers fail at once is more likely the one cut off itself: it fences
no more than MAX_FENCED (a minority of the cluster).

Environment: PEERS (name=address,...), HEALTH_PORT (9339), LOCAL_URL (http://127.0.0.1:8080/status), INTERVAL
(1), TIMEOUT (1), FAIL_AFTER (3), RECOVER_AFTER (2), MAX_FENCED (1), NFT_TABLE (mlflow_ha_fence), NFT_SET
(fenced), LISTEN (0.0.0.0), TEXTFILE (node_exporter textfile path for the state; empty: none). Logs every change
to standard output (the journal). Standard library only, and exposition.py, the collection's Prometheus text
writer (plugins/module_utils/exposition.py), which the role copies beside this file.
"""

from __future__ import annotations

import http.client
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from exposition import Exposition


@dataclass
class Peer:
    name: str
    address: str
    failures: int = 0
    successes: int = 0
    fenced: bool = False
    last_error: str = ""


@dataclass
class Fence:
    """Decides, from probe results, which peers to fence and to let in again (pure logic, no I/O)."""

    peers: List[Peer]
    fail_after: int = 3
    recover_after: int = 2
    max_fenced: int = 1
    events: List[str] = field(default_factory=list)
    held_back: List[str] = field(default_factory=list)

    def observe(self, results: Dict[str, Optional[str]]) -> Dict[str, List[str]]:
        """results: peer name -> None (answered) or the error text. Returns {'fence': [...], 'unfence': [...]}."""
        changes: Dict[str, List[str]] = {"fence": [], "unfence": []}
        for peer in self.peers:
            error = results.get(peer.name)
            if error is None:
                peer.successes += 1
                peer.failures = 0
                peer.last_error = ""
                if peer.fenced and peer.successes >= self.recover_after:
                    peer.fenced = False
                    changes["unfence"].append(peer.name)
            else:
                peer.failures += 1
                peer.successes = 0
                peer.last_error = error
        candidates = [p for p in self.peers if not p.fenced and p.failures >= self.fail_after]
        room = self.max_fenced - sum(1 for p in self.peers if p.fenced)
        for peer in sorted(candidates, key=lambda p: -p.failures)[:max(0, room)]:
            peer.fenced = True
            changes["fence"].append(peer.name)
        held_back = [p.name for p in candidates if not p.fenced]
        if held_back and held_back != self.held_back:
            self.events.append("not fencing %s: %d peer(s) fenced already (MAX_FENCED %d); this node may be the one "
                               "cut off" % (", ".join(held_back), self.max_fenced - room, self.max_fenced))
        self.held_back = held_back
        return changes


def parse_peers(text: str) -> List[Peer]:
    peers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, address = item.split("=", 1) if "=" in item else (item, "")
        if not address:
            raise ValueError("PEERS entry %r is not name=address" % item)
        peers.append(Peer(name=name, address=address))
    return peers


def probe(url: str, timeout: float) -> Optional[str]:
    """None when url answers 200 within timeout, else why not."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        status = conn.getresponse().status
        return None if status == 200 else "HTTP %d" % status
    except (OSError, http.client.HTTPException) as err:
        return "%s: %s" % (type(err).__name__, err)
    finally:
        conn.close()


class LocalHealth:
    """This node's own verdict, served to the peers: is the local volume server answering?"""

    def __init__(self) -> None:
        self.error: Optional[str] = "not checked yet"
        self.lock = threading.Lock()

    def set(self, error: Optional[str]) -> None:
        with self.lock:
            self.error = error

    def get(self) -> Optional[str]:
        with self.lock:
            return self.error


def serve(health: LocalHealth, listen: str, port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            error = health.get() if self.path == "/health" else "no such path"
            body = ("ok\n" if error is None else error + "\n").encode()
            self.send_response(200 if error is None else (404 if self.path != "/health" else 503))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Quiet: the peers ask every second."""

    server = http.server.ThreadingHTTPServer((listen, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


class Enforcer:
    """Applies fence decisions with nft (set elements) and ss (kill established connections)."""

    def __init__(self, table: str, set_name: str, runner: Callable[[List[str]], subprocess.CompletedProcess] = run):
        self.table = table
        self.set_name = set_name
        self.runner = runner

    def fence(self, peer: Peer) -> List[str]:
        problems = []
        added = self.runner(["nft", "add", "element", "inet", self.table, self.set_name, "{ %s }" % peer.address])
        if added.returncode != 0:
            problems.append("nft add %s: %s" % (peer.address, added.stderr.strip()))
        killed = self.runner(["ss", "-K", "dst", peer.address])
        if killed.returncode != 0:
            problems.append("ss -K dst %s: %s" % (peer.address, killed.stderr.strip()))
        return problems

    def unfence(self, peer: Peer) -> List[str]:
        removed = self.runner(["nft", "delete", "element", "inet", self.table, self.set_name,
                               "{ %s }" % peer.address])
        return [] if removed.returncode == 0 else ["nft delete %s: %s" % (peer.address, removed.stderr.strip())]

    def clear(self) -> None:
        """Start with no fence: a restart of this program must not leave a peer shut out."""
        self.runner(["nft", "flush", "set", "inet", self.table, self.set_name])


def textfile(path: str, peers: List[Peer]) -> Optional[str]:
    """Write the state for node_exporter's textfile collector; returns why not, when it could not."""
    if not path:
        return None
    page = Exposition(whole=True)
    name, text = "mlflow_ha_storage_peer_fenced", "1 while this node rejects the peer's storage traffic."
    page.declare(name, "gauge", text)
    for peer in peers:
        page.add(name, "gauge", text, int(peer.fenced), [("peer", peer.name)])
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as out:
            out.write(page.render())
        os.replace(tmp, path)
    except OSError as err:
        return "cannot write %s: %s" % (path, err)
    return None


def main() -> int:
    env = os.environ
    peers = parse_peers(env.get("PEERS", ""))
    if not peers:
        print("storage_fence: PEERS is empty; nothing to watch", flush=True)
        return 2
    port = int(env.get("HEALTH_PORT", "9339"))
    local_url = env.get("LOCAL_URL", "http://127.0.0.1:8080/status")
    interval = float(env.get("INTERVAL", "1"))
    timeout = float(env.get("TIMEOUT", "1"))
    fence = Fence(peers, fail_after=int(env.get("FAIL_AFTER", "3")),
                  recover_after=int(env.get("RECOVER_AFTER", "2")), max_fenced=int(env.get("MAX_FENCED", "1")))
    enforcer = Enforcer(env.get("NFT_TABLE", "mlflow_ha_fence"), env.get("NFT_SET", "fenced"))
    enforcer.clear()
    health = LocalHealth()
    serve(health, env.get("LISTEN", "0.0.0.0"), port)
    out = env.get("TEXTFILE", "")
    problem = textfile(out, peers)
    if problem:
        print("storage_fence: %s (the state is not exported)" % problem, flush=True)
    print("storage_fence: watching %s every %.1f s (fence after %d failed probes, let in after %d good ones)"
          % (", ".join("%s=%s" % (p.name, p.address) for p in peers), interval, fence.fail_after,
             fence.recover_after), flush=True)
    by_name = {p.name: p for p in peers}
    while True:
        started = time.monotonic()
        health.set(probe(local_url, timeout))
        changes = fence.observe({p.name: probe("http://%s:%d/health" % (p.address, port), timeout) for p in peers})
        for name in changes["fence"]:
            peer = by_name[name]
            problems = enforcer.fence(peer)
            print("storage_fence: fenced %s (%s) after %d failed probes, last: %s%s"
                  % (name, peer.address, peer.failures, peer.last_error,
                     ("; " + "; ".join(problems)) if problems else ""), flush=True)
        for name in changes["unfence"]:
            peer = by_name[name]
            problems = enforcer.unfence(peer)
            print("storage_fence: let %s (%s) in again after %d good probes%s"
                  % (name, peer.address, peer.successes, ("; " + "; ".join(problems)) if problems else ""),
                  flush=True)
        for event in fence.events:
            print("storage_fence: " + event, flush=True)
        fence.events.clear()
        if changes["fence"] or changes["unfence"]:
            textfile(out, peers)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
