"""Snapshots of this etcd member's keyspace, their check, their rotation, and the outcome for node_exporter's textfile
collector.

`save` (the timer's service, on every member):
  1. `etcdctl snapshot save` from this member's own client URL, with its client certificate (the paths come from the
     settings; no secret is on any command line), into a hidden temporary file in DIRECTORY. etcdctl itself writes
     `<temporary>.part` and renames it when the stream is complete; a temporary file a killed run left is removed
     first.
  2. The check (`verify` below): the SHA-256 digest etcd appends to every snapshot matches the content, and the
     snapshot tool (`etcdutl snapshot status`; etcdctl's own with etcd 3.4, which has no etcdutl) reads the database
     and reports its revision and keys.
  3. Only a checked snapshot is renamed, in one step, to `etcd-snapshot-<member>-<UTC stamp>.db`; then the newest KEEP
     of this member's snapshots stay and older ones are deleted (a failed run deletes nothing).
  The result is kept in STATE_DIR/state.json, written to the metrics page and printed as one JSON line; the exit
  status is 0 when a checked snapshot was kept, 1 when not (the unit fails, and its journal says why).

`verify FILE` checks a snapshot file as step 2 does and prints the result as one JSON line (exit 0 when good, 1 when
not, with the reason): playbooks/dr/restore_etcd.yml refuses a file that fails it. `--checksum-only` checks the
digest alone, without the snapshot tool and without settings (on the controller, which has no etcd).

`metrics` writes the page from the kept state only (the role does it when it installs the timer, so the page exists
before the first run; its `since` timestamp starts the age alert's clock). `last` prints the kept state as JSON (the
role's entry point snapshot_now reads the file the run made from it).

The page (Prometheus text format, written to a temporary file beside it and renamed, so node_exporter never reads
half of it) is written also when the run fails. Standard library only, and exposition.py, the collection's Prometheus
text writer, beside this file.

Settings: a JSON file the role renders (no secret in it: the key is a path): member, endpoint (this member's client
URL), ca, cert, key (empty without TLS), etcdctl, snapshot_tool (etcdutl, or etcdctl 3.4), directory, keep, timeout
(seconds for one save), state_dir, textfile (the page's path; empty: no page).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from exposition import Exposition

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
EXIT_OK = 0
EXIT_FAILED = 1
# etcd appends the SHA-256 digest of the database to the snapshot stream; etcdutl's restore checks it the same way
# (a file whose size is 32 bytes past a multiple of 512 carries one).
DIGEST_SIZE = hashlib.sha256().digest_size
SECTOR = 512
PREFIX = "etcd-snapshot-"
STAMPED = re.compile(r"^etcd-snapshot-.+-(\d{8}T\d{6}Z)\.db$")
TEMPORARY_PREFIX = "." + PREFIX


@dataclass
class Settings:
    member: str
    endpoint: str
    etcdctl: str
    snapshot_tool: str
    directory: str
    keep: int = 24
    timeout: int = 300
    ca: str = ""
    cert: str = ""
    key: str = ""
    state_dir: str = "/var/lib/mlflow-ha-etcd-snapshot"
    textfile: str = ""

    @classmethod
    def load(cls, path: str) -> "Settings":
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        settings = cls(**known)
        settings.keep = int(settings.keep)
        settings.timeout = int(settings.timeout)
        return settings

    def tls_args(self) -> List[str]:
        args = []
        for flag, path in (("--cacert", self.ca), ("--cert", self.cert), ("--key", self.key)):
            if path:
                args.append("%s=%s" % (flag, path))
        return args


def say(message: str) -> None:
    print("etcd_snapshot: " + message, file=sys.stderr, flush=True)


def run_command(argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(list(argv), 124, "", "timed out after %d s: %s" % (timeout, err))
    except OSError as err:
        return subprocess.CompletedProcess(list(argv), 127, "", "cannot run %s: %s" % (argv[0], err))


def tail(text: str, lines: int = 3) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "no output"


def utc_stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def snapshot_name(member: str, seconds: float) -> str:
    return "%s%s-%s.db" % (PREFIX, member, utc_stamp(seconds))


# ---------------------------------------------------------------------------------------------------------------
# The check of a snapshot file


def size_problem(path: str, size: int) -> Optional[str]:
    """Why a file of ``size`` bytes cannot be a snapshot with its digest, or None."""
    if size == 0:
        return "%s is empty" % path
    if size % SECTOR != DIGEST_SIZE:
        return ("%s carries no SHA-256 digest (%d bytes; etcdctl snapshot save writes a multiple of %d plus %d): it "
                "is cut short, or not a snapshot" % (path, size, SECTOR, DIGEST_SIZE))
    return None


def read_digests(path: str, size: int) -> "tuple[bytes, bytes]":
    """The digest stored at the end of the file and the one of its content."""
    digest = hashlib.sha256()
    remaining = size - DIGEST_SIZE
    with open(path, "rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(1 << 20, remaining))
            if not chunk:
                raise OSError("the file ended while it was read")
            digest.update(chunk)
            remaining -= len(chunk)
        return handle.read(DIGEST_SIZE), digest.digest()


def check_digest(path: str) -> Optional[str]:
    """None when the digest etcd appended matches the content; else why not."""
    try:
        size = os.path.getsize(path)
        problem = size_problem(path, size)
        if problem:
            return problem
        stored, computed = read_digests(path, size)
    except OSError as err:
        return "cannot read %s: %s" % (path, err.strerror or err)
    if stored != computed:
        return "the SHA-256 digest at the end of %s does not match its content: the file is damaged" % path
    return None


def parse_status(text: str) -> Dict[str, int]:
    """`snapshot status --write-out=json`: {"hash", "revision", "totalKey", "totalSize"[, "version"]}."""
    doc = json.loads(text.strip().splitlines()[-1] if text.strip() else "")
    if not isinstance(doc, dict) or not isinstance(doc.get("totalSize"), int):
        raise ValueError("no totalSize in %r" % text.strip()[:200])
    return {"revision": int(doc.get("revision") or 0), "keys": int(doc.get("totalKey") or 0),
            "db_size": int(doc["totalSize"]), "hash": int(doc.get("hash") or 0)}


def verify(path: str, tool: Optional[str], run: Runner = run_command, timeout: float = 300) -> Dict[str, Any]:
    """The check of one snapshot file: {ok, file, size, reason[, revision, keys, db_size, hash]}."""
    result: Dict[str, Any] = {"ok": False, "file": path, "size": 0, "reason": ""}
    problem = check_digest(path)
    if problem:
        result["reason"] = problem
        return result
    result["size"] = os.path.getsize(path)
    if tool:
        proc = run([tool, "--write-out=json", "snapshot", "status", path], timeout)
        if proc.returncode != 0:
            result["reason"] = "%s snapshot status refused %s (exit %d): %s" % (
                os.path.basename(tool), path, proc.returncode, tail(proc.stderr))
            return result
        try:
            result.update(parse_status(proc.stdout))
        except ValueError as err:
            result["reason"] = "%s snapshot status printed what this program cannot read: %s" % (
                os.path.basename(tool), err)
            return result
    result["ok"] = True
    result["reason"] = "%s is a good snapshot%s" % (
        path, " (revision %d, %d keys)" % (result["revision"], result["keys"]) if tool else " (digest only)")
    return result


# ---------------------------------------------------------------------------------------------------------------
# One run


def kept_snapshots(directory: str) -> List[str]:
    """The snapshot files in ``directory`` this program made, newest first (by the stamp in their name)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stamped = [(m.group(1), name) for name in names for m in [STAMPED.match(name)] if m]
    return [os.path.join(directory, name) for _stamp, name in sorted(stamped, reverse=True)]


def remove_leftovers(directory: str) -> None:
    """Temporary files of a run that was killed (never a finished snapshot: those have no leading dot)."""
    for name in os.listdir(directory):
        if name.startswith(TEMPORARY_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
                say("removed %s, left by an earlier run" % name)
            except OSError as err:
                say("cannot remove %s: %s" % (name, err))


def prune(directory: str, keep: int) -> List[str]:
    """Delete all but the newest ``keep`` snapshots; returns what was deleted."""
    deleted = []
    for path in kept_snapshots(directory)[max(keep, 1):]:
        try:
            os.unlink(path)
            deleted.append(path)
        except OSError as err:
            say("cannot delete the old snapshot %s: %s" % (path, err))
    return deleted


def save(settings: Settings, run: Runner = run_command, clock: Callable[[], float] = time.time) -> Dict[str, Any]:
    """Take, check, keep and rotate one snapshot; the run's result (never raises for a failed step)."""
    started = clock()
    result: Dict[str, Any] = {"started": started, "ok": False, "member": settings.member}
    final = os.path.join(settings.directory, snapshot_name(settings.member, started))
    temporary = os.path.join(settings.directory, "." + os.path.basename(final) + ".tmp")
    try:
        os.makedirs(settings.directory, mode=0o700, exist_ok=True)
        remove_leftovers(settings.directory)
    except OSError as err:
        result.update(error="cannot use the snapshot directory %s: %s" % (settings.directory, err), finished=clock())
        return result
    proc = run([settings.etcdctl, "--endpoints=%s" % settings.endpoint, *settings.tls_args(), "--dial-timeout=10s",
                "--command-timeout=%ds" % settings.timeout, "snapshot", "save", temporary], settings.timeout + 30)
    if proc.returncode != 0:
        result.update(error="etcdctl snapshot save from %s failed (exit %d): %s"
                      % (settings.endpoint, proc.returncode, tail(proc.stderr + "\n" + proc.stdout)), finished=clock())
        for leftover in (temporary, temporary + ".part"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        return result
    checked = verify(temporary, settings.snapshot_tool, run, settings.timeout)
    if not checked["ok"]:
        os.unlink(temporary)
        result.update(error="the new snapshot failed its check, so it was not kept: " + checked["reason"],
                      finished=clock())
        return result
    os.chmod(temporary, 0o600)
    os.replace(temporary, final)
    result.update(ok=True, file=final, size=checked["size"], revision=checked["revision"], keys=checked["keys"],
                  deleted=prune(settings.directory, settings.keep), finished=clock())
    return result


# ---------------------------------------------------------------------------------------------------------------
# State and metrics


def read_state(state_dir: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(state_dir, "state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    """``text`` at ``path`` in one rename: a reader sees the old file or the new one, never a part."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def record(state: Dict[str, Any], result: Optional[Dict[str, Any]], now: float) -> Dict[str, Any]:
    """The state after a run (``result``) or, without one, as it was (with ``since`` set the first time)."""
    state = dict(state)
    state.setdefault("since", now)
    if result is not None:
        state["last_run"] = result
        if result.get("ok"):
            state["last_success"] = {key: result[key] for key in ("finished", "file", "size", "revision", "keys")}
    return state


def render_page(state: Dict[str, Any], kept: int, now: float) -> str:
    page = Exposition(whole=True)
    page.add("mlflow_ha_etcd_snapshot_since_timestamp_seconds", "gauge",
             "When the snapshot timer was installed on this member (the age alert's start before any success).",
             int(state.get("since", now)))
    run = state.get("last_run")
    if isinstance(run, dict):
        page.add("mlflow_ha_etcd_snapshot_last_run_timestamp_seconds", "gauge", "When the last snapshot run ended.",
                 int(run.get("finished", 0)))
        page.add("mlflow_ha_etcd_snapshot_last_run_success", "gauge",
                 "1 when the last run kept a checked snapshot, 0 when it failed.", int(bool(run.get("ok"))))
        page.add("mlflow_ha_etcd_snapshot_last_run_duration_seconds", "gauge", "How long the last run took.",
                 int(run.get("finished", 0) - run.get("started", 0)))
    good = state.get("last_success")
    if isinstance(good, dict):
        page.add("mlflow_ha_etcd_snapshot_last_success_timestamp_seconds", "gauge",
                 "When the newest checked snapshot was taken and kept.", int(good.get("finished", 0)))
        page.add("mlflow_ha_etcd_snapshot_size_bytes", "gauge", "Size of the newest checked snapshot file.",
                 int(good.get("size", 0)))
        page.add("mlflow_ha_etcd_snapshot_revision", "gauge", "etcd revision of the newest checked snapshot.",
                 int(good.get("revision", 0)))
        page.add("mlflow_ha_etcd_snapshot_keys", "gauge",
                 "Keys in the newest checked snapshot, as the snapshot tool counts them (etcdutl: the keyspace's; "
                 "etcd 3.4's etcdctl: every key of the database).", int(good.get("keys", 0)))
    page.add("mlflow_ha_etcd_snapshot_kept", "gauge", "Snapshot files kept on this member.", kept)
    return page.render()


def publish(settings: Settings, state: Dict[str, Any], now: float) -> bool:
    """Keep the state and write the page; say what failed (the run's outcome stands either way)."""
    done = True
    try:
        os.makedirs(settings.state_dir, exist_ok=True)
        write_atomically(os.path.join(settings.state_dir, "state.json"), json.dumps(state, sort_keys=True) + "\n",
                         0o600)
    except OSError as err:
        say("cannot keep the state in %s: %s" % (settings.state_dir, err))
        done = False
    if settings.textfile:
        try:
            write_atomically(settings.textfile, render_page(state, len(kept_snapshots(settings.directory)), now))
        except OSError as err:
            say("cannot write the metrics page %s: %s" % (settings.textfile, err))
            done = False
    return done


def main(argv: Optional[Sequence[str]] = None, run: Runner = run_command,
         clock: Callable[[], float] = time.time) -> int:
    parser = argparse.ArgumentParser(description="etcd snapshots of this member: save, check, rotate, metrics.")
    parser.add_argument("--settings", default="/etc/mlflow-ha/etcd-snapshot.json")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("save", help="take, check and keep a snapshot, rotate, record (exit 1 when none was kept)")
    check = commands.add_parser("verify", help="check a snapshot file (exit 1 when it is no good snapshot)")
    check.add_argument("file")
    check.add_argument("--checksum-only", action="store_true", help="the digest alone: no settings, no etcd tool")
    commands.add_parser("metrics", help="write the metrics page from the kept state")
    commands.add_parser("last", help="print the kept state as JSON")
    args = parser.parse_args(argv)

    if args.command == "verify":
        tool = None
        timeout = 300
        if not args.checksum_only:
            settings = Settings.load(args.settings)
            tool, timeout = settings.snapshot_tool, settings.timeout
        result = verify(args.file, tool, run, timeout)
        print(json.dumps(result, sort_keys=True), flush=True)
        if not result["ok"]:
            say(result["reason"])
        return EXIT_OK if result["ok"] else EXIT_FAILED

    settings = Settings.load(args.settings)
    state = read_state(settings.state_dir)
    if args.command == "last":
        print(json.dumps(state, sort_keys=True), flush=True)
        return EXIT_OK
    if args.command == "metrics":
        return EXIT_OK if publish(settings, record(state, None, clock()), clock()) else EXIT_FAILED
    result = save(settings, run, clock)
    publish(settings, record(state, result, result["finished"]), clock())
    if result["ok"]:
        say("kept %s (%d bytes, revision %d, %d keys)%s" % (
            result["file"], result["size"], result["revision"], result["keys"],
            "; deleted %s" % ", ".join(result["deleted"]) if result["deleted"] else ""))
    else:
        say("no snapshot kept: " + result["error"])
    print(json.dumps(result, sort_keys=True), flush=True)
    return EXIT_OK if result["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
