"""The nightly artifact backup: `rclone sync` from the artifact bucket to the second target, then `rclone check` of
what it copied, and the outcome for node_exporter's textfile collector.

`run` (the timer's service):
  1. `rclone sync --checksum` source -> target; objects the sync deletes or replaces in the target move to
     HISTORY_PREFIX/<run stamp>/ there (--backup-dir), and that prefix is left out of the sync.
  2. `rclone check --one-way --combined <report>`, the history prefix left out: every source object must be in the
     target with the same size and hash (MD5 where both sides have one; sizes only where not, counted as
     `unhashed`). Objects only in the target are not a difference (the target keeps what the source deleted until
     the next sync, and its history). The check runs after a failed sync too: it says how much is missing.
  3. A difference the check reports for an object written at the source after the sync began is not a failure of
     this run: MLflow writes while the backup runs. Those objects are asked for their time of upload (`rclone
     lsjson --use-server-modtime` on the reported paths only); one uploaded at or after the sync's start (less
     CLOCK_MARGIN seconds for the clocks of this host and of the S3 servers) or deleted since counts as `late`, and
     the next run copies it. Anything else -- a missing or differing object that existed before the sync, an
     object rclone could not read or hash, an error rclone counted but did not attribute to an object, an exit
     status the report does not explain -- fails the check.
  The run is verified when the sync and the check both succeeded. Its result is kept in STATE_DIR/state.json (with
  the time of the last verified run), written to the metrics page, and printed as one JSON line; the exit status is
  0 when verified, 1 when not (the unit fails, and its journal says why).

`metrics` writes the page from the kept state only (the role does it when it installs the backup, so the page
exists before the first run; its `since` timestamp starts the age alert's clock).

The page (Prometheus text format, written to a temporary file beside it and renamed, so node_exporter never reads
half of it) is written also when the run fails; when it cannot be written the run's exit status is unchanged and the
journal says why. Standard library only, and exposition.py, the collection's Prometheus text writer, beside this
file.

Settings: a JSON file the role renders (no secret in it: rclone reads the keys from its own configuration):
  rclone (the binary), rclone_args (--config ... [--ca-cert ...]), source and target ("remote:bucket"), bucket (the
  metrics' label), history_prefix, transfers, state_dir, textfile (the page's path; empty: no page), clock_margin.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from exposition import Exposition

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
EXIT_VERIFIED = 0
EXIT_NOT_VERIFIED = 1
# How many paths of each kind a result names (the counts are complete; the journal is not a listing).
NAMED_PATHS = 10
# rclone check's lines on stderr (fs/operations/check.go and cmd/cmd.go): first its summary, the count of every
# error it counted (each missing, differing or unreadable object, and any listing error); last the error it exits
# with, "Failed to check: ..." (or "Failed: ..." in later versions, "with N errors: last error was: ..." when there
# were several), which names only the missing and differing objects when nothing else went wrong.
COUNTED_ERRORS = re.compile(r"NOTICE: [^\n]*?: (\d+) differences found")
FINAL_DIFFERENCES = re.compile(
    r"Failed(?: to check)?(?: with \d+ errors)?(?:: last error was)?: (\d+) differences found\s*$", re.MULTILINE)
UNHASHED = re.compile(r"NOTICE: .*?: (\d+) hashes could not be checked")
RCLONE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


@dataclass
class Settings:
    rclone: str
    rclone_args: List[str]
    source: str
    target: str
    bucket: str
    history_prefix: str
    transfers: int = 8
    state_dir: str = "/var/lib/mlflow-ha-artifact-backup"
    textfile: str = ""
    clock_margin: int = 60

    @classmethod
    def load(cls, path: str) -> "Settings":
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        settings = cls(**known)
        settings.transfers = int(settings.transfers)
        settings.clock_margin = int(settings.clock_margin)
        return settings

    @property
    def exclude_history(self) -> List[str]:
        return ["--exclude", "/%s/**" % self.history_prefix]


@dataclass
class CheckReport:
    """rclone check's combined report (``--combined``), one list of paths per sigil."""

    identical: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # "+": in the source only
    differ: List[str] = field(default_factory=list)  # "*": in both, size or hash differ
    errors: List[str] = field(default_factory=list)  # "!": could not be read or hashed
    target_only: List[str] = field(default_factory=list)  # "-": never with --one-way

    @property
    def checked(self) -> int:
        return len(self.identical) + len(self.missing) + len(self.differ) + len(self.errors)


def parse_combined(text: str) -> CheckReport:
    """The combined report: "<sigil> <path>" per line; a path may hold spaces, so only the first one splits."""
    report = CheckReport()
    lists = {"=": report.identical, "+": report.missing, "*": report.differ, "!": report.errors,
             "-": report.target_only}
    for line in text.splitlines():
        if len(line) >= 3 and line[1] == " " and line[0] in lists:
            lists[line[0]].append(line[2:])
    return report


def _first_int(pattern: "re.Pattern[str]", text: str) -> Optional[int]:
    found = pattern.findall(text or "")
    return int(found[0]) if found else None


def _last_int(pattern: "re.Pattern[str]", text: str) -> Optional[int]:
    found = pattern.findall(text or "")
    return int(found[-1]) if found else None


def parse_rclone_time(text: str) -> float:
    """An rclone JSON time (RFC 3339, nanoseconds) as seconds since the epoch."""
    match = RCLONE_TIME.match(text.strip())
    if not match:
        raise ValueError("not an rclone time: %r" % text)
    whole, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)


def parse_lsjson(text: str) -> Dict[str, float]:
    """`rclone lsjson` output: path -> modification time (seconds since the epoch)."""
    entries = json.loads(text or "[]")
    if not isinstance(entries, list):
        raise ValueError("lsjson printed no list")
    return {entry["Path"]: parse_rclone_time(entry["ModTime"]) for entry in entries
            if isinstance(entry, dict) and not entry.get("IsDir") and "Path" in entry and "ModTime" in entry}


def tail(text: str, lines: int = 5) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "no output"


def say(message: str) -> None:
    print("artifact_backup: " + message, file=sys.stderr, flush=True)


def run_command(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def utc_stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class Backup:
    """One run: the sync, the check, and the verdict (I/O through ``run`` and ``clock`` only, for the tests)."""

    def __init__(self, settings: Settings, run: Runner = run_command, clock: Callable[[], float] = time.time,
                 workdir: Optional[str] = None) -> None:
        self.settings = settings
        self.run = run
        self.clock = clock
        self.workdir = workdir

    def rclone(self, *args: str) -> List[str]:
        return [self.settings.rclone, *self.settings.rclone_args, *args]

    def sync(self, stamp: str) -> "subprocess.CompletedProcess[str]":
        s = self.settings
        return self.run(self.rclone(
            "sync", "--checksum", "--transfers", str(s.transfers), s.source, s.target, *s.exclude_history,
            "--backup-dir", "%s/%s/%s" % (s.target, s.history_prefix, stamp)))

    def upload_times(self, paths: List[str], directory: str) -> Optional[Dict[str, float]]:
        """When each of ``paths`` was uploaded to the source (absent: deleted since); None when rclone failed."""
        listing = os.path.join(directory, "reported-paths")
        with open(listing, "w", encoding="utf-8") as out:
            out.write("".join(path + "\n" for path in paths))
        proc = self.run(self.rclone("lsjson", "-R", "--files-only", "--no-mimetype", "--use-server-modtime",
                                    "--files-from-raw", listing, self.settings.source))
        if proc.returncode != 0:
            say("rclone lsjson of the reported objects failed (exit %d): %s" % (proc.returncode, tail(proc.stderr)))
            return None
        try:
            return parse_lsjson(proc.stdout)
        except (ValueError, KeyError, TypeError) as err:
            say("rclone lsjson printed what this program cannot read: %s" % err)
            return None

    def check(self, sync_started: float, result: Dict[str, Any]) -> bool:
        """`rclone check` of the target against the source; fills ``result`` and says whether it passed."""
        s = self.settings
        with tempfile.TemporaryDirectory(prefix="check-", dir=self.workdir) as directory:
            report_path = os.path.join(directory, "combined")
            proc = self.run(self.rclone("check", "--one-way", "--combined", report_path, *s.exclude_history,
                                        s.source, s.target))
            if proc.stderr:
                sys.stderr.write(proc.stderr)
            try:
                with open(report_path, encoding="utf-8", errors="replace") as handle:
                    report = parse_combined(handle.read())
            except OSError:
                report = CheckReport()
            reported = report.missing + report.differ
            times = self.upload_times(reported, directory) if reported else {}
        cutoff = sync_started - s.clock_margin
        late = [] if times is None else [p for p in reported if p not in times or times[p] >= cutoff]
        missing = [p for p in report.missing if p not in late]
        differ = [p for p in report.differ if p not in late]
        counted = _first_int(COUNTED_ERRORS, proc.stderr)
        final = _last_int(FINAL_DIFFERENCES, proc.stderr)
        problems: List[str] = []
        if proc.returncode != 0:
            # A failed check is explained when its errors are exactly the objects it reported: anything else (a
            # listing that failed, a bucket not found, a usage error) has no object to forgive.
            explained = (counted is not None and final is not None and final == len(reported)
                         and counted == len(reported) + len(report.errors))
            if not explained:
                problems.append("rclone check failed (exit %d) beyond the objects it reported: %s"
                                % (proc.returncode, tail(proc.stderr, 3)))
        if times is None:
            problems.append("the %d reported objects' upload times are unknown, so none counts as late"
                            % len(reported))
        for label, paths in (("missing in the target", missing), ("different in the target", differ),
                             ("unreadable", report.errors)):
            if paths:
                problems.append("%d object(s) %s: %s%s" % (len(paths), label, ", ".join(paths[:NAMED_PATHS]),
                                                           " ..." if len(paths) > NAMED_PATHS else ""))
        result.update({
            "check_exit": proc.returncode, "checked": report.checked, "identical": len(report.identical),
            "missing": len(missing), "differ": len(differ), "errors": len(report.errors), "late": len(late),
            "unhashed": _last_int(UNHASHED, proc.stderr) or 0,
        })
        result["problems"] += problems
        return not problems

    def backup(self) -> Dict[str, Any]:
        started = self.clock()
        stamp = utc_stamp(started)
        result: Dict[str, Any] = {"started": started, "stamp": stamp, "problems": []}
        sync = self.sync(stamp)
        if sync.stderr:
            sys.stderr.write(sync.stderr)
        result["sync_exit"] = sync.returncode
        result["sync_ok"] = sync.returncode == 0
        if not result["sync_ok"]:
            result["problems"].append("rclone sync failed (exit %d): %s" % (sync.returncode, tail(sync.stderr, 3)))
        result["check_ok"] = self.check(started, result)
        result["verified"] = result["sync_ok"] and result["check_ok"]
        result["finished"] = self.clock()
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


def write_atomically(path: str, text: str) -> None:
    """``text`` at ``path`` in one rename: a reader sees the old file or the new one, never a part."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
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
        if result.get("verified"):
            state["last_verified"] = result["finished"]
    return state


def render_page(state: Dict[str, Any], bucket: str, now: float) -> str:
    page = Exposition(whole=True)
    labels = [("bucket", bucket)]
    page.add("mlflow_ha_artifact_backup_since_timestamp_seconds", "gauge",
             "When the backup was installed on this host (the age alert's start when no run was verified yet).",
             int(state.get("since", now)), labels)
    run = state.get("last_run")
    if isinstance(run, dict):
        page.add("mlflow_ha_artifact_backup_last_run_timestamp_seconds", "gauge",
                 "When the last run (sync and check) finished.", int(run.get("finished", 0)), labels)
        page.add("mlflow_ha_artifact_backup_last_run_duration_seconds", "gauge",
                 "How long the last run took.", int(run.get("finished", 0) - run.get("started", 0)), labels)
        page.add("mlflow_ha_artifact_backup_sync_success", "gauge",
                 "1 when the last run's rclone sync succeeded.", int(bool(run.get("sync_ok"))), labels)
        page.add("mlflow_ha_artifact_backup_check_success", "gauge",
                 "1 when the last run's rclone check found every source object in the target (late ones aside).",
                 int(bool(run.get("check_ok"))), labels)
        page.add("mlflow_ha_artifact_backup_checked_objects", "gauge",
                 "Source objects the last run's check compared with the target.", int(run.get("checked", 0)), labels)
        for kind in ("missing", "differ", "errors"):
            page.add("mlflow_ha_artifact_backup_differences", "gauge",
                     "Source objects the last run's check found missing or different in the target, or could not "
                     "read (kind), written before the sync began.", int(run.get(kind, 0)),
                     [*labels, ("kind", kind)])
        page.add("mlflow_ha_artifact_backup_late_objects", "gauge",
                 "Objects the last check reported that were written or deleted at the source after the sync began "
                 "(the next run copies them; not a failure).", int(run.get("late", 0)), labels)
        page.add("mlflow_ha_artifact_backup_unhashed_objects", "gauge",
                 "Objects the last check compared by size only (no hash common to both sides).",
                 int(run.get("unhashed", 0)), labels)
    if state.get("last_verified") is not None:
        page.add("mlflow_ha_artifact_backup_last_verified_timestamp_seconds", "gauge",
                 "When the last run whose sync and check both succeeded finished.", int(state["last_verified"]),
                 labels)
    page.add("mlflow_ha_artifact_backup_metrics_timestamp_seconds", "gauge", "When this page was written.",
             int(now), labels)
    return page.render()


def publish(settings: Settings, state: Dict[str, Any], now: float) -> bool:
    """Keep the state and write the page; say what failed (the run's outcome stands either way)."""
    done = True
    try:
        os.makedirs(settings.state_dir, exist_ok=True)
        write_atomically(os.path.join(settings.state_dir, "state.json"), json.dumps(state, sort_keys=True) + "\n")
    except OSError as err:
        say("cannot keep the state in %s: %s" % (settings.state_dir, err))
        done = False
    if settings.textfile:
        try:
            write_atomically(settings.textfile, render_page(state, settings.bucket, now))
        except OSError as err:
            say("cannot write the metrics page %s: %s" % (settings.textfile, err))
            done = False
    return done


def main(argv: Optional[Sequence[str]] = None, run: Runner = run_command,
         clock: Callable[[], float] = time.time) -> int:
    parser = argparse.ArgumentParser(description="The artifact bucket's backup: rclone sync, rclone check, metrics.")
    parser.add_argument("--settings", default="/etc/mlflow-ha/artifact-backup.json")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="sync, check, record the outcome (exit 1 when not verified)")
    commands.add_parser("metrics", help="write the metrics page from the kept state")
    args = parser.parse_args(argv)
    settings = Settings.load(args.settings)
    state = read_state(settings.state_dir)
    if args.command == "metrics":
        return EXIT_VERIFIED if publish(settings, record(state, None, clock()), clock()) else EXIT_NOT_VERIFIED
    os.makedirs(settings.state_dir, exist_ok=True)
    result = Backup(settings, run, clock, workdir=settings.state_dir).backup()
    publish(settings, record(state, result, result["finished"]), clock())
    for problem in result["problems"]:
        say(problem)
    say("%s: %d objects checked, %d missing, %d different, %d unreadable, %d late, %d by size only"
        % ("verified" if result["verified"] else "NOT verified", result["checked"], result["missing"],
           result["differ"], result["errors"], result["late"], result["unhashed"]))
    print(json.dumps(result, sort_keys=True), flush=True)
    return EXIT_VERIFIED if result["verified"] else EXIT_NOT_VERIFIED


if __name__ == "__main__":
    sys.exit(main())
