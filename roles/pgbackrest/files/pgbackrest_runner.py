"""pgBackRest on the members of a Patroni cluster: which member backs up, the health gate, one backup per
repository, and the state for node_exporter's textfile collector.

Every member runs the same timers; each asks its own Patroni (GET /cluster, the cluster as the DCS holds it) which
member should run this backup and proceeds only when that is itself:
  - a replica that streams with a lag of at most MAX_LAG bytes: asynchronous replicas before the synchronous standby
    (a backup's reads must not slow the standby that acknowledges commits), then the smallest lag, then the name;
    pgBackRest then copies the files from this standby (--backup-standby) and only asks the primary to start and
    stop the backup;
  - else the leader, without --backup-standby (pgBackRest 2.45 refuses --backup-standby without a running standby);
  - else nobody (no running leader): every member says so and exits 2.
All members ask at the same second and read the same DCS view, so one of them proceeds. The view can change in
between (a failover at that second): then none or, rarely, two run; the age alert of the backups covers the first,
pgBackRest's own checks the second (the later one fails on the lock held in the repository, or both complete).

The chosen member runs `pgbackrest check` first (every repository reachable, WAL archiving works end to end) and
backs up nothing when it fails. Then one `pgbackrest backup` per repository (2.45 writes one repository per run), the
next repository tried even when one failed. Each run is annotated (mlflow-ha-run=<run id> and the caller's
--annotation pairs), so a caller finds its backup's label in `pgbackrest info` (playbooks: a backup before a schema
migration records which one). The result is printed as one JSON line and kept in STATE_DIR/last-<type>.json.

`backup --here` skips the choice among the members: this member backs up now if it can (a streaming replica within
MAX_LAG, from itself as a standby; or the running leader), else it says why not and exits 2. A caller that backs up
once, on purpose (a playbook: `choose` on any member, then `backup --here` on the member it named), gets exactly one
run instead of every member deciding on its own.

`range` says how far back and forward a point-in-time restore from a repository can go (for the restore playbook):
from the oldest good backup's stop time (pgBackRest restores to a time only from a backup that stopped before it)
to the push time of the newest WAL file in the repository's archive (`repo-ls`), less a margin: a target after the
last commit in the archive makes PostgreSQL stop with "recovery ended before configured recovery target was
reached", and the newest file's push time is an upper bound of that commit. With --target it checks a time and exits
3 when the time is outside, with the sentence to refuse with.

`archive-push PATH` is Patroni's archive_command: pgBackRest's archive-push, behind a guard. A full WAL segment of
timeline N is kept out of the archive when the archive holds the history file of a later timeline that left N before
the segment's end: that segment then holds a former leader's records after the switch point, which the new timeline
never had. When this PostgreSQL is on a later timeline itself (a history file above N in its pg_wal), the file is a
leftover of its own time as that branch's leader: skipped with exit 0 (logged), so that PostgreSQL marks it done;
refused, it would block every later segment for good once this member leads again (found in CI, 2026-12-07). Else
(this PostgreSQL still on timeline N beside a later one: two leaders) it is refused (exit 1, PostgreSQL retries and
the archiving alert fires). Patroni archives such segments on purpose before
pg_rewind (patroni/patroni#2384); a recovery towards the latest timeline takes the old timeline's full file when the
new timeline's copy of that segment is not archived yet, and replays records nobody acknowledged on the new
timeline (found in the lab, docs/postgres-ha.md). The later timelines' history files are fetched with
`archive-get`, N+1 upwards until one is missing. History files, partial segments and backup labels pass unchecked.

`metrics` writes the page for the textfile collector: pgBackRest's view of every repository (`info --output=json`),
the last run and check on this member, and PostgreSQL's archiver statistics (pg_stat_archiver, meaningful on the
primary). Standard library only, and exposition.py, the collection's Prometheus text writer, beside this file.

Settings: a JSON file (the role renders it; no secret in it: pgBackRest reads its own configuration):
  stanza, member, patroni_url, patroni_ca (empty: plain HTTP), max_lag, backup_standby, repos ([{index, name}]),
  pgbackrest, psql, pg_port, pg_socket, pg_user, state_dir, textfile.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from exposition import Exposition

REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")
LEADER_ROLES = ("leader", "primary", "master")
BACKUP_TYPES = ("full", "diff", "incr")
RUN_ANNOTATION = "mlflow-ha-run"
# pgBackRest's exit codes are its error codes; these are ours.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOBODY = 2
EXIT_OUTSIDE = 3
# A full WAL segment's file name: timeline, log and segment numbers (8 hex digits each); the size is PostgreSQL's
# default (16 MiB), which the patroni role does not change.
SEGMENT_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
WAL_SEGMENT_SIZE = 16 * 1024 * 1024
# archive-get's exit code when the file is in no repository.
ARCHIVE_GET_MISSING = 1
# A WAL segment (or a timeline's partial one) in an archive listing: 24 hex digits, then pgBackRest's checksum suffix.
WAL_FILE = re.compile(r"(^|/)[0-9A-F]{24}(\.partial)?-[0-9a-f]{40}(\.[a-z0-9]+)?$")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass
class Choice:
    """Who backs up, whether from a standby, and why (a sentence for the journal)."""

    member: Optional[str]
    standby: bool
    reason: str


def _lag(member: Dict[str, Any]) -> Optional[int]:
    lag = member.get("lag")
    if isinstance(lag, bool) or not isinstance(lag, int):
        return None  # "unknown", or absent
    return lag


def choose_member(cluster: Dict[str, Any], max_lag: int, backup_standby: bool = True) -> Choice:
    """The member that should run the backup, from Patroni's GET /cluster (pure: no I/O)."""
    members = [m for m in cluster.get("members") or [] if isinstance(m, dict) and m.get("name")]
    if backup_standby:
        healthy = [m for m in members if m.get("role") in REPLICA_ROLES and m.get("state") == "streaming"
                   and _lag(m) is not None and _lag(m) <= max_lag]
        if healthy:
            best = min(healthy, key=lambda m: (m.get("role") != "replica", _lag(m), m["name"]))
            return Choice(best["name"], True, "%s is a streaming %s with a lag of %d bytes"
                          % (best["name"], best["role"], _lag(best)))
    leaders = [m for m in members if m.get("role") in LEADER_ROLES and m.get("state") == "running"]
    if leaders:
        why = ("no replica streams within %d bytes" % max_lag) if backup_standby else "backups from a standby are off"
        return Choice(leaders[0]["name"], False, "%s is the running leader (%s)" % (leaders[0]["name"], why))
    return Choice(None, False, "no running leader and no streaming replica in the cluster view (members: %s)"
                  % (", ".join("%s %s/%s" % (m.get("name"), m.get("role"), m.get("state")) for m in members)
                     or "none"))


def choose_here(cluster: Dict[str, Any], name: str, max_lag: int, backup_standby: bool = True) -> Choice:
    """Whether member ``name`` can back up now, the caller having chosen it (pure: no I/O)."""
    me = next((m for m in cluster.get("members") or [] if isinstance(m, dict) and m.get("name") == name), None)
    if me is None:
        return Choice(None, False, "%s is not in the cluster view" % name)
    lag = _lag(me)
    if (backup_standby and me.get("role") in REPLICA_ROLES and me.get("state") == "streaming" and lag is not None
            and lag <= max_lag):
        return Choice(name, True, "%s is a streaming %s with a lag of %d bytes (asked to back up here)"
                      % (name, me.get("role"), lag))
    if me.get("role") in LEADER_ROLES and me.get("state") == "running":
        return Choice(name, False, "%s is the running leader (asked to back up here)" % name)
    return Choice(None, False, "%s cannot back up: it is %s/%s with a lag of %s (a streaming replica within %d bytes%s "
                  "or the running leader can)" % (name, me.get("role"), me.get("state"),
                                                  "unknown" if lag is None else "%d bytes" % lag, max_lag,
                                                  "" if backup_standby else ", with standby backups on,"))


def newest_backups(info: Any, stanza: str) -> Dict[Tuple[int, str], Dict[str, Any]]:
    """The newest backup of each (repository, type) in `pgbackrest info --output=json`."""
    found: Dict[Tuple[int, str], Dict[str, Any]] = {}
    for entry in info if isinstance(info, list) else []:
        if entry.get("name") != stanza:
            continue
        for backup in entry.get("backup") or []:
            repo = (backup.get("database") or {}).get("repo-key")
            stop = (backup.get("timestamp") or {}).get("stop")
            if not isinstance(repo, int) or not isinstance(stop, int) or backup.get("error"):
                continue
            key = (repo, str(backup.get("type")))
            if key not in found or stop > found[key]["timestamp"]["stop"]:
                found[key] = backup
    return found


def backup_label(info: Any, stanza: str, repo: int, run_id: str) -> Optional[str]:
    """The label of the backup a run annotated with ``run_id`` in ``repo``."""
    for entry in info if isinstance(info, list) else []:
        if entry.get("name") != stanza:
            continue
        for backup in entry.get("backup") or []:
            if ((backup.get("database") or {}).get("repo-key") == repo
                    and (backup.get("annotation") or {}).get(RUN_ANNOTATION) == run_id):
                return backup.get("label")
    return None


def archive_ids(info: Any, stanza: str, repo: int) -> List[str]:
    """The archive ids ("15-1": PostgreSQL version and database id) the repository holds WAL under."""
    found: List[str] = []
    for entry in info if isinstance(info, list) else []:
        if entry.get("name") != stanza:
            continue
        for archive in entry.get("archive") or []:
            if (archive.get("database") or {}).get("repo-key") == repo and archive.get("id"):
                found.append(str(archive["id"]))
    return found


def oldest_backup_stop(info: Any, stanza: str, repo: int) -> Optional[int]:
    stops = [(b.get("timestamp") or {}).get("stop") for entry in (info if isinstance(info, list) else [])
             if entry.get("name") == stanza for b in entry.get("backup") or []
             if (b.get("database") or {}).get("repo-key") == repo and not b.get("error")]
    stops = [s for s in stops if isinstance(s, int)]
    return min(stops) if stops else None


def newest_wal(listing: Any) -> Tuple[Optional[str], Optional[int]]:
    """The newest WAL file of a `repo-ls --output=json --recurse` listing of an archive, and its push time."""
    best: Tuple[Optional[str], Optional[int]] = (None, None)
    for path, entry in (listing.items() if isinstance(listing, dict) else []):
        stamp = entry.get("time") if isinstance(entry, dict) else None
        if entry.get("type") == "file" and isinstance(stamp, int) and WAL_FILE.search(path) and (
                best[1] is None or stamp > best[1]):
            best = (path, stamp)
    return best


def check_target(oldest: Optional[int], newest: Optional[int], target: Optional[float], margin: int,  # noqa: PLR0911
                 repo: str) -> Tuple[bool, str]:
    """Whether a restore to ``target`` (None: the latest state) can work, and the sentence that says why not."""
    def when(stamp: float) -> str:
        return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")

    if oldest is None:
        return False, "repository %s holds no good backup: nothing to restore from" % repo
    if target is None:
        return True, "the latest state in repository %s (backups from %s)" % (repo, when(oldest))
    if newest is None:
        return False, "repository %s holds no WAL: a point in time cannot be restored" % repo
    if newest - margin < oldest:
        return False, ("no point in time can be restored from repository %s yet: its newest WAL (pushed at %s, less "
                       "a margin of %d s) is not after its oldest backup (stopped at %s); restore the latest state "
                       "without a target" % (repo, when(newest), margin, when(oldest)))
    if target < oldest:
        return False, ("%s is before the oldest backup in repository %s, which stopped at %s: restorable times "
                       "are %s .. %s" % (when(target), repo, when(oldest), when(oldest), when(newest - margin)))
    if target > newest - margin:
        return False, ("%s is after the newest WAL in repository %s (pushed at %s, less a margin of %d s): "
                       "restorable times are %s .. %s; for the newest state restore without a target"
                       % (when(target), repo, when(newest), margin, when(oldest), when(newest - margin)))
    return True, "%s is within %s .. %s in repository %s" % (when(target), when(oldest), when(newest - margin), repo)


def segment_span(name: str, size: int = WAL_SEGMENT_SIZE) -> Optional[Tuple[int, int, int]]:
    """(timeline, first LSN, LSN after the end) of a full segment's file name; None for any other file (pure)."""
    match = SEGMENT_NAME.match(name)
    if not match:
        return None
    timeline, log, segment = (int(group, 16) for group in match.groups())
    start = (log * (0x100000000 // size) + segment) * size
    return timeline, start, start + size


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return "%X/%X" % (lsn >> 32, lsn & 0xFFFFFFFF)


def switch_points(history: str) -> Dict[int, int]:
    """A timeline history file's lines (parent timeline, switch LSN, reason) as {parent timeline: switch LSN}."""
    points: Dict[int, int] = {}
    for line in history.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            points[int(fields[0])] = parse_lsn(fields[1])
    return points


def past_switch_point(name: str, histories: Dict[int, str]) -> Optional[str]:
    """Why the segment ``name`` must not be archived, or None: a later timeline (its history file's text in
    ``histories``, by timeline) left the segment's timeline before the segment's end (pure)."""
    span = segment_span(name)
    if span is None:
        return None
    timeline, start, end = span
    for later in sorted(histories):
        point = switch_points(histories[later]).get(timeline) if later > timeline else None
        if point is not None and point < end:
            return ("%s is a full segment of timeline %d (%s to %s), but timeline %d left timeline %d at %s: its "
                    "records after that point are a former leader's, which timeline %d never had"
                    % (name, timeline, format_lsn(start), format_lsn(end), later, timeline, format_lsn(point),
                       later))
    return None


def parse_time(text: str) -> float:
    """A restore target with its time zone ("2026-12-06 17:55:00+00", ISO 8601), as seconds since the epoch."""
    value = text.strip()
    if re.search(r"[+-]\d\d$", value):
        value += ":00"
    stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        raise ValueError("%r has no time zone (write e.g. '2026-12-06 17:55:00+00')" % text)
    return stamp.timestamp()


def info_metrics(page: Exposition, info: Any, stanza: str, repos: Sequence[Dict[str, Any]]) -> None:
    """pgBackRest's view of each repository: its status, and per backup type the newest backup and the count."""
    names = {int(r["index"]): str(r.get("name") or r["index"]) for r in repos}
    entry = next((e for e in info if isinstance(e, dict) and e.get("name") == stanza), None) if isinstance(
        info, list) else None
    status_help = "pgBackRest's status code of the stanza in the repository (0 ok, 1 missing stanza path, " \
                  "2 no valid backups, 3 missing stanza data, 4 different cipher, 99 other)."
    page.declare("mlflow_ha_pgbackrest_repo_status_code", "gauge", status_help)
    statuses = {r.get("key"): (r.get("status") or {}).get("code") for r in (entry or {}).get("repo") or []}
    for index, name in names.items():
        code = statuses.get(index)
        page.add("mlflow_ha_pgbackrest_repo_status_code", "gauge", status_help,
                 code if isinstance(code, int) else 99, [("stanza", stanza), ("repo", name)])
    counts: Dict[Tuple[int, str], int] = {}
    oldest: Dict[int, int] = {}
    for backup in (entry or {}).get("backup") or []:
        repo = (backup.get("database") or {}).get("repo-key")
        stop = (backup.get("timestamp") or {}).get("stop")
        if repo not in names or not isinstance(stop, int) or backup.get("error"):
            continue
        counts[(repo, str(backup.get("type")))] = counts.get((repo, str(backup.get("type"))), 0) + 1
        oldest[repo] = min(oldest.get(repo, stop), stop)
    newest = newest_backups(info, stanza)
    for (repo, kind), backup in sorted(newest.items()):
        if repo not in names:
            continue
        labels = [("stanza", stanza), ("repo", names[repo]), ("type", kind)]
        stamp = backup["timestamp"]
        page.add("mlflow_ha_pgbackrest_last_backup_timestamp_seconds", "gauge",
                 "When the newest good backup of this type in the repository completed.", stamp["stop"], labels)
        page.add("mlflow_ha_pgbackrest_last_backup_duration_seconds", "gauge",
                 "How long the newest good backup of this type took.",
                 stamp["stop"] - stamp.get("start", stamp["stop"]), labels)
        size = ((backup.get("info") or {}).get("repository") or {}).get("delta")
        if isinstance(size, int):
            page.add("mlflow_ha_pgbackrest_last_backup_repository_bytes", "gauge",
                     "Bytes the newest backup of this type added to the repository (compressed).", size, labels)
    for (repo, kind), count in sorted(counts.items()):
        page.add("mlflow_ha_pgbackrest_backups", "gauge", "Good backups of this type in the repository.", count,
                 [("stanza", stanza), ("repo", names[repo]), ("type", kind)])
    for repo, stop in sorted(oldest.items()):
        page.add("mlflow_ha_pgbackrest_oldest_backup_timestamp_seconds", "gauge",
                 "When the oldest backup in the repository completed: the earliest time it can restore to.", stop,
                 [("stanza", stanza), ("repo", names[repo])])


ARCHIVER_QUERY = ("SELECT pg_is_in_recovery()::int, archived_count, failed_count, "
                  "coalesce(extract(epoch FROM last_archived_time), 0), "
                  "coalesce(extract(epoch FROM last_failed_time), 0) FROM pg_stat_archiver")


def newest_local_timeline(wal_dir: str) -> Optional[int]:
    """The highest timeline whose history file is in ``wal_dir`` (this PostgreSQL's pg_wal: it keeps the history of
    every timeline it followed or created), or None when there is none (timeline 1, or not a pg_wal)."""
    try:
        names = os.listdir(wal_dir)
    except OSError:
        return None
    timelines = [int(name[:8], 16) for name in names if re.fullmatch(r"[0-9A-F]{8}\.history", name)]
    return max(timelines) if timelines else None


def archiver_metrics(page: Exposition, row: str, stanza: str) -> Optional[str]:
    """pg_stat_archiver as `psql -At` prints ARCHIVER_QUERY's row; returns why not, when the row is not one."""
    parts = row.strip().split("|")
    if len(parts) != 5:
        return "unexpected pg_stat_archiver row %r" % row.strip()
    try:
        recovery, archived, failed = int(parts[0]), int(parts[1]), int(parts[2])
        last_archived, last_failed = float(parts[3]), float(parts[4])
    except ValueError:
        return "unexpected pg_stat_archiver row %r" % row.strip()
    labels = [("stanza", stanza)]
    page.add("mlflow_ha_pgbackrest_archiver_primary", "gauge",
             "1 on the member whose PostgreSQL is the primary (the one that archives WAL).", 1 - recovery, labels)
    page.add("mlflow_ha_pgbackrest_archiver_archived_total", "counter",
             "WAL files this PostgreSQL archived since its statistics were reset (pg_stat_archiver).", archived, labels)
    page.add("mlflow_ha_pgbackrest_archiver_failed_total", "counter",
             "Failed archive_command runs since the statistics were reset (pg_stat_archiver).", failed, labels)
    page.add("mlflow_ha_pgbackrest_archiver_last_archived_timestamp_seconds", "gauge",
             "When the last WAL file was archived (0: never).", last_archived, labels)
    page.add("mlflow_ha_pgbackrest_archiver_last_failed_timestamp_seconds", "gauge",
             "When archiving last failed (0: never).", last_failed, labels)
    return None


def run_metrics(page: Exposition, runs: Dict[str, Dict[str, Any]], stanza: str) -> None:
    """The last run of each backup type on this member (kept in STATE_DIR/last-<type>.json by `backup`)."""
    for kind, run in sorted(runs.items()):
        if not run.get("ran"):
            continue
        labels = [("stanza", stanza), ("type", kind)]
        page.add("mlflow_ha_pgbackrest_run_timestamp_seconds", "gauge",
                 "When this member last ran a backup of this type (it was the chosen member).", run.get("time", 0),
                 labels)
        page.add("mlflow_ha_pgbackrest_run_success", "gauge",
                 "1 when this member's last backup run of this type passed the check and every repository's backup.",
                 int(bool(run.get("ok"))), labels)
        if "check_ok" in run:
            page.add("mlflow_ha_pgbackrest_check_success", "gauge",
                     "1 when `pgbackrest check` passed before this member's last backup run of this type.",
                     int(bool(run["check_ok"])), labels)


@dataclass
class Settings:
    stanza: str
    member: str
    patroni_url: str
    patroni_ca: str = ""
    max_lag: int = 16 * 1024 * 1024
    backup_standby: bool = True
    repos: List[Dict[str, Any]] = field(default_factory=list)
    pgbackrest: str = "/usr/bin/pgbackrest"
    psql: str = "/usr/bin/psql"
    pg_port: int = 5432
    pg_socket: str = "/var/run/postgresql"
    pg_user: str = "postgres"
    state_dir: str = "/var/lib/mlflow-ha-pgbackrest"
    textfile: str = ""

    @classmethod
    def load(cls, path: str) -> Settings:
        with open(path) as handle:
            data = json.load(handle)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def fetch_cluster(settings: Settings, timeout: float = 5.0) -> Dict[str, Any]:
    """GET /cluster from this member's Patroni (HTTPS verified with the CA when one is given)."""
    context = ssl.create_default_context(cafile=settings.patroni_ca) if settings.patroni_ca else None
    with urllib.request.urlopen(settings.patroni_url.rstrip("/") + "/cluster", timeout=timeout,
                                context=context) as answer:
        return json.loads(answer.read().decode())


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def say(text: str) -> None:
    print("pgbackrest_runner: " + text, flush=True)


def last_line(process: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (process.stderr + "\n" + process.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "exit %d" % process.returncode


class Operations:
    """What a member does: back up, write the metrics page (a class so that tests give it a fake runner and clock)."""

    def __init__(self, settings: Settings, runner: Runner = run_command, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.run = runner
        self.clock = clock

    def pgbackrest(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([self.settings.pgbackrest, "--stanza=" + self.settings.stanza, *args])

    def backup(self, kind: str, cluster: Dict[str, Any], annotations: Sequence[str] = (),
               run_id: Optional[str] = None, here: bool = False) -> Tuple[int, Dict[str, Any]]:
        settings = self.settings
        if here:
            choice = choose_here(cluster, settings.member, settings.max_lag, settings.backup_standby)
        else:
            choice = choose_member(cluster, settings.max_lag, settings.backup_standby)
        result: Dict[str, Any] = {"type": kind, "member": settings.member, "chosen": choice.member,
                                  "standby": choice.standby, "reason": choice.reason, "ran": False,
                                  "time": int(self.clock())}
        if choice.member is None:
            say("nobody can back up: " + choice.reason)
            return EXIT_NOBODY, result
        if choice.member != settings.member:
            say("%s runs this %s backup: %s" % (choice.member, kind, choice.reason))
            return EXIT_OK, result
        run_id = run_id or uuid.uuid4().hex
        result.update({"ran": True, "run_id": run_id, "repos": []})
        say("this member runs the %s backup: %s" % (kind, choice.reason))
        standby_flag = "--backup-standby" if choice.standby else "--no-backup-standby"
        check = self.pgbackrest(standby_flag, "--log-level-console=warn", "check")
        result["check_ok"] = check.returncode == 0
        if check.returncode != 0:
            result.update({"ok": False, "error": "pgbackrest check failed: " + last_line(check)})
            say("no backup: pgbackrest check failed (exit %d): %s" % (check.returncode, last_line(check)))
            return EXIT_FAILED, result
        notes = ["--annotation=%s=%s" % (RUN_ANNOTATION, run_id)] + ["--annotation=" + a for a in annotations]
        ok = True
        for repo in settings.repos:
            index, name = int(repo["index"]), str(repo.get("name") or repo["index"])
            started = self.clock()
            done = self.pgbackrest("--repo=%d" % index, "--type=" + kind, standby_flag, "--log-level-console=warn",
                                   *notes, "backup")
            entry: Dict[str, Any] = {"repo": name, "index": index, "ok": done.returncode == 0,
                                     "seconds": round(self.clock() - started, 1)}
            if done.returncode != 0:
                ok = False
                entry["error"] = last_line(done)
                say("%s backup to repo%d (%s) failed (exit %d): %s" % (kind, index, name, done.returncode,
                                                                       entry["error"]))
            result["repos"].append(entry)
        info = self.pgbackrest("--output=json", "info")
        try:
            parsed = json.loads(info.stdout) if info.returncode == 0 else None
        except ValueError:
            parsed = None
        for entry in result["repos"]:
            if entry["ok"] and parsed is not None:
                entry["label"] = backup_label(parsed, settings.stanza, entry["index"], run_id)
            if entry["ok"]:
                say("%s backup to repo%d (%s) done in %.1f s: %s"
                    % (kind, entry["index"], entry["repo"], entry["seconds"], entry.get("label")))
        result["ok"] = ok
        return (EXIT_OK if ok else EXIT_FAILED), result

    def history(self, timeline: int) -> Tuple[Optional[str], Optional[str]]:
        """(text of the timeline's history file, None), (None, None) when no repository has it, or (None, error)."""
        with tempfile.TemporaryDirectory(prefix="mlflow-ha-history-") as scratch:
            dest = os.path.join(scratch, "history")
            got = self.pgbackrest("--no-archive-async", "--log-level-console=warn", "archive-get",
                                  "%08X.history" % timeline, dest)
            if got.returncode == ARCHIVE_GET_MISSING:
                return None, None
            if got.returncode != 0:
                why = last_line(got)
                return None, "archive-get %08X.history failed (exit %d): %s" % (timeline, got.returncode, why)
            with open(dest) as handle:
                return handle.read(), None

    def archive_push(self, path: str) -> Tuple[int, str]:
        """archive-push ``path`` unless it is a full segment past a later timeline's switch point."""
        span = segment_span(os.path.basename(path))
        if span is not None:
            histories: Dict[int, str] = {}
            later = span[0] + 1
            while True:
                text, error = self.history(later)
                if error:
                    return EXIT_FAILED, "not archived, the timelines could not be read: " + error
                if text is None:
                    break
                histories[later] = text
                later += 1
            reason = past_switch_point(os.path.basename(path), histories)
            if reason:
                local = newest_local_timeline(os.path.dirname(path) or ".")
                if local is not None and local > span[0]:
                    # This PostgreSQL has moved on to a later timeline: the file is a leftover of its time as the
                    # dead branch's leader (Patroni marked it .ready before pg_rewind). Answering success lets
                    # PostgreSQL mark it done; refusing would block every later segment behind it for good.
                    return 0, ("skipped, not archived: %s; this member is on timeline %d now, the file is a "
                               "leftover of its time on timeline %d" % (reason, local, span[0]))
                return EXIT_FAILED, "refused: " + reason
        pushed = self.pgbackrest("archive-push", path)
        return pushed.returncode, "" if pushed.returncode == 0 else last_line(pushed)

    def restore_range(self, repo: Dict[str, Any], target: Optional[float] = None,
                      margin: int = 60) -> Tuple[int, Dict[str, Any]]:
        """How far a restore from ``repo`` can go, and whether ``target`` is within (the restore playbook)."""
        settings = self.settings
        index, name = int(repo["index"]), str(repo.get("name") or repo["index"])
        result: Dict[str, Any] = {"repo": name, "index": index, "target": target, "margin": margin}
        info = self.pgbackrest("--output=json", "--repo=%d" % index, "info")
        try:
            parsed = json.loads(info.stdout) if info.returncode == 0 else None
        except ValueError:
            parsed = None
        if parsed is None:
            result.update({"ok": False, "reason": "pgbackrest info failed on repository %s: %s"
                           % (name, last_line(info))})
            return EXIT_FAILED, result
        oldest = oldest_backup_stop(parsed, settings.stanza, index)
        newest: Tuple[Optional[str], Optional[int]] = (None, None)
        for archive_id in archive_ids(parsed, settings.stanza, index):
            listing = self.pgbackrest("--output=json", "--recurse", "--repo=%d" % index, "repo-ls",
                                      "archive/%s/%s" % (settings.stanza, archive_id))
            try:
                found = newest_wal(json.loads(listing.stdout)) if listing.returncode == 0 else (None, None)
            except ValueError:
                found = (None, None)
            if found[1] is not None and (newest[1] is None or found[1] > newest[1]):
                newest = ("%s/%s" % (archive_id, found[0]), found[1])
        ok, reason = check_target(oldest, newest[1], target, margin, name)
        result.update({"ok": ok, "reason": reason, "oldest_backup_stop": oldest, "newest_wal": newest[0],
                       "newest_wal_time": newest[1],
                       "latest_target": None if newest[1] is None else newest[1] - margin})
        return (EXIT_OK if ok else EXIT_OUTSIDE), result

    def metrics(self, runs: Dict[str, Dict[str, Any]]) -> Tuple[Exposition, List[str]]:
        settings = self.settings
        page = Exposition(whole=True)
        problems: List[str] = []
        info = self.pgbackrest("--output=json", "info")
        parsed: Any = None
        if info.returncode == 0:
            try:
                parsed = json.loads(info.stdout)
            except ValueError as err:
                problems.append("pgbackrest info printed no JSON: %s" % err)
        else:
            problems.append("pgbackrest info failed (exit %d): %s" % (info.returncode, last_line(info)))
        page.add("mlflow_ha_pgbackrest_up", "gauge",
                 "1 when `pgbackrest info` answered on this member (configuration readable, repositories asked).",
                 int(parsed is not None), [("stanza", settings.stanza)])
        if parsed is not None:
            info_metrics(page, parsed, settings.stanza, settings.repos)
        row = self.run([settings.psql, "-XAt", "-h", settings.pg_socket, "-p", str(settings.pg_port),
                        "-U", settings.pg_user, "-d", "postgres", "-c", ARCHIVER_QUERY])
        if row.returncode == 0:
            problem = archiver_metrics(page, row.stdout, settings.stanza)
            if problem:
                problems.append(problem)
        else:
            problems.append("pg_stat_archiver not read (exit %d): %s" % (row.returncode, last_line(row)))
        run_metrics(page, runs, settings.stanza)
        page.add("mlflow_ha_pgbackrest_metrics_timestamp_seconds", "gauge",
                 "When this page was written.", int(self.clock()), [("stanza", settings.stanza)])
        return page, problems


def write_atomically(path: str, text: str) -> None:
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def read_runs(state_dir: str) -> Dict[str, Dict[str, Any]]:
    runs: Dict[str, Dict[str, Any]] = {}
    for kind in BACKUP_TYPES:
        try:
            with open(os.path.join(state_dir, "last-%s.json" % kind)) as handle:
                runs[kind] = json.load(handle)
        except (OSError, ValueError):
            continue
    return runs


def archive_push_command(runner: Operations, path: str) -> int:
    code, message = runner.archive_push(path)
    if message:
        # PostgreSQL's log keeps it (the archiver's stderr), beside "archive command failed with exit code".
        print("pgbackrest_runner: " + message, file=sys.stderr, flush=True)
    return code


def range_command(runner: Operations, settings: Settings, args: argparse.Namespace) -> int:
    repo = next((r for r in settings.repos if int(r["index"]) == args.repo), {"index": args.repo})
    try:
        target = parse_time(args.target) if args.target else None
    except ValueError as err:
        print(json.dumps({"ok": False, "reason": "restore target %s" % err}), flush=True)
        return EXIT_OUTSIDE
    code, result = runner.restore_range(repo, target, args.margin)
    print(json.dumps(result), flush=True)
    return code


def metrics_command(runner: Operations, settings: Settings) -> int:
    page, problems = runner.metrics(read_runs(settings.state_dir))
    for problem in problems:
        say(problem)
    if settings.textfile:
        write_atomically(settings.textfile, page.render())
    else:
        sys.stdout.write(page.render())
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="pgBackRest backups from the right Patroni member, and metrics.")
    parser.add_argument("--settings", default="/etc/pgbackrest/mlflow-ha-runner.json")
    parser.add_argument("--stanza", default=None, help="the stanza instead of the settings' (archive_command names it)")
    commands = parser.add_subparsers(dest="command", required=True)
    backup = commands.add_parser("backup", help="back up if this member is the chosen one")
    backup.add_argument("--type", choices=BACKUP_TYPES, required=True)
    backup.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    backup.add_argument("--run-id", default=None, help="the annotation mlflow-ha-run (default: a new id)")
    backup.add_argument("--here", action="store_true",
                        help="back up on this member now if it can (the caller chose it), without the choice among "
                             "the members")
    commands.add_parser("choose", help="print which member would back up now, and why")
    span = commands.add_parser("range", help="the times a restore from a repository can reach (exit 3: outside)")
    span.add_argument("--repo", type=int, default=1, help="the repository's index (default 1)")
    span.add_argument("--target", default=None, help="a time to check, with its zone ('2026-12-06 17:55:00+00')")
    span.add_argument("--margin", type=int, default=60,
                      help="seconds before the newest WAL's push time a target must be (default 60)")
    commands.add_parser("metrics", help="write the textfile collector's page")
    push = commands.add_parser("archive-push", help="archive_command: archive-push unless past a later timeline's "
                                                    "switch point")
    push.add_argument("path", help="the WAL file (%%p)")
    args = parser.parse_args(argv)
    settings = Settings.load(args.settings)
    if args.stanza:
        settings.stanza = args.stanza
    runner = Operations(settings, run_command)

    commands_without_patroni = {
        "archive-push": lambda: archive_push_command(runner, args.path),
        "range": lambda: range_command(runner, settings, args),
        "metrics": lambda: metrics_command(runner, settings),
    }
    if args.command in commands_without_patroni:
        return commands_without_patroni[args.command]()

    try:
        cluster = fetch_cluster(settings)
    except (OSError, ValueError, urllib.error.URLError) as err:
        say("this member's Patroni did not answer %s/cluster (%s): it does not back up" % (settings.patroni_url, err))
        print(json.dumps({"member": settings.member, "chosen": None, "ran": False,
                          "reason": "local Patroni unreachable: %s" % err}), flush=True)
        # The timers' run on every member: another member backs up. A backup asked of this member: it did not.
        return EXIT_OK if args.command == "backup" and not args.here else EXIT_NOBODY
    if args.command == "choose":
        choice = choose_member(cluster, settings.max_lag, settings.backup_standby)
        print(json.dumps({"member": settings.member, "chosen": choice.member, "standby": choice.standby,
                          "reason": choice.reason}), flush=True)
        return EXIT_OK if choice.member else EXIT_NOBODY
    code, result = runner.backup(args.type, cluster, args.annotation, args.run_id, here=args.here)
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if result.get("ran"):
        try:
            write_atomically(os.path.join(settings.state_dir, "last-%s.json" % args.type), json.dumps(result))
        except OSError as err:
            say("cannot keep the run's state in %s: %s" % (settings.state_dir, err))
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
