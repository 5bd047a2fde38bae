"""A durable local spool of registrations: SQLite (WAL, synchronous FULL) for the entries, files for the artifacts.

Writing an entry, in this order (each step durable before the next):

1. the artifact files are copied into ``staging/<id>/<n>/<basename>`` and their SHA-256 computed while copying;
   each file and directory is fsync'd;
2. ``staging/<id>`` is renamed to ``files/<id>`` and both parent directories are fsync'd;
3. one SQLite transaction inserts the entry (state ``pending``, the request, each file's SHA-256) and commits.

A process that dies before 3 commits leaves a directory that no entry names: ``recover()`` (run on every open
and before every replay, under an exclusive lock that writers hold shared) deletes it. The caller never got a
"spooled" answer for it, so nothing acknowledged is lost. After the commit the entry is whole and is replayed.

Replaying an entry: its files are checked against their SHA-256 (a mismatch marks it ``corrupt``, never sent),
the registration runs with the entry's idempotency key, then the entry is marked ``done`` in one commit and its
files are deleted. A replay that dies after MLflow committed the version but before the ``done`` commit leaves the
entry pending: the next replay searches the key first (the collection's rule, mlflow_registration.py) and finds
the version instead of creating a second one. Replays hold an exclusive lock (one replayer per spool at a time,
across threads and processes) and go in spool order; an entry that cannot be sent now holds back the later
entries of the same model, so versions are created in the order their registrations were spooled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from mlflow_ha_client import _shared

_shared.install()

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.exposition import Exposition  # noqa: E402
from mlflow_ha_client.errors import RegistrationRefused, RegistryUnavailable  # noqa: E402

PENDING, DONE, FAILED, CORRUPT = "pending", "done", "failed", "corrupt"
STATES = (PENDING, DONE, FAILED, CORRUPT)
COUNTERS = ("spooled", "replayed", "replay_failures", "dropped")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    dir TEXT NOT NULL,
    request TEXT NOT NULL,
    files TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    version INTEGER,
    finished REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(source: Path, dest: Path) -> Dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(dest, "xb") as out:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "size": size}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Entry:
    """One spooled registration: the request for ``register()`` and its files (copies inside the spool)."""

    seq: int
    key: str
    model: str
    state: str
    directory: Path
    request: Dict[str, Any]
    files: List[Dict[str, Any]]
    reason: Optional[str]
    created: float
    attempts: int = 0
    last_error: Optional[str] = None
    version: Optional[int] = None
    finished: Optional[float] = None

    @property
    def paths(self) -> List[str]:
        return [str(self.directory / f["path"]) for f in self.files]

    def to_dict(self, now: Optional[float] = None) -> Dict[str, Any]:
        doc = {"seq": self.seq, "key": self.key, "model": self.model, "state": self.state,
               "files": [{"name": f["name"], "sha256": f["sha256"], "size": f["size"]} for f in self.files],
               "reason": self.reason, "created": self.created, "attempts": self.attempts,
               "last_error": self.last_error, "version": self.version}
        if now is not None:
            doc["age_seconds"] = round(max(0.0, now - self.created), 3)
        return doc


@dataclass
class ReplayReport:
    """What one replay pass did. ``busy``: another replayer held the spool, nothing was done."""

    replayed: List[Dict[str, Any]] = field(default_factory=list)
    failed: List[Dict[str, Any]] = field(default_factory=list)
    corrupt: List[str] = field(default_factory=list)
    held_back: List[str] = field(default_factory=list)
    stopped: Optional[str] = None
    busy: bool = False
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"replayed": self.replayed, "failed": self.failed, "corrupt": self.corrupt,
                "held_back": self.held_back, "stopped": self.stopped, "busy": self.busy,
                "seconds": round(self.seconds, 3)}


def _no_crash(point: str) -> None:
    """Crash points for tests: they set ``Spool.crash`` to raise where a process could die."""


class Spool:
    """The spool in ``directory`` (made if missing). Safe to share between threads and processes."""

    def __init__(self, directory: os.PathLike, wall: Callable[[], float] = time.time,
                 crash: Callable[[str], None] = _no_crash):
        self.directory = Path(directory)
        self.files_dir = self.directory / "files"
        self.staging_dir = self.directory / "staging"
        self.db_path = self.directory / "spool.db"
        self.wall = wall
        self.crash = crash
        self._thread_lock = threading.RLock()
        for path in (self.directory, self.files_dir, self.staging_dir):
            path.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)
        self.recover()

    # -- plumbing -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(str(self.db_path), timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any exception (a simulated death included) rolls back."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int, wait: bool = True) -> Iterator[bool]:
        """A lock file shared by every process using the spool; yields whether the lock was taken."""
        with open(self.directory / name, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), mode | (0 if wait else fcntl.LOCK_NB))
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def _entry(self, row: sqlite3.Row) -> Entry:
        return Entry(seq=row["seq"], key=row["key"], model=row["model"], state=row["state"],
                     directory=self.files_dir / row["dir"], request=json.loads(row["request"]),
                     files=json.loads(row["files"]), reason=row["reason"], created=row["created"],
                     attempts=row["attempts"], last_error=row["last_error"], version=row["version"],
                     finished=row["finished"])

    def _select(self, where: str = "", args: Sequence[Any] = ()) -> List[Entry]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM entries %s ORDER BY seq" % where, tuple(args)).fetchall()
        return [self._entry(r) for r in rows]

    # -- writing --------------------------------------------------------------------------------------------

    def put(self, key: str, model: str, request: Dict[str, Any], files: Sequence[os.PathLike],
            reason: str) -> Entry:
        """Spool a registration durably and return its entry. A key already pending is not spooled twice: its
        entry is returned as it is."""
        existing = self.get(key)
        if existing is not None and existing.state == PENDING:
            return existing
        entry_id = uuid.uuid4().hex
        stage = self.staging_dir / entry_id
        with self._flock("write.lock", fcntl.LOCK_SH):
            stage.mkdir()
            stored = []
            for index, given in enumerate(files):
                source = Path(given)
                slot = stage / str(index)
                slot.mkdir()
                facts = _copy_durably(source, slot / source.name)
                _fsync_dir(slot)
                stored.append({"name": source.name, "path": "%d/%s" % (index, source.name), **facts})
            _fsync_dir(stage)
            self.crash("files_written")
            os.rename(stage, self.files_dir / entry_id)
            _fsync_dir(self.files_dir)
            _fsync_dir(self.staging_dir)
            self.crash("files_moved")
            replaced: Optional[str] = None
            with self._transaction() as db:
                row = db.execute("SELECT state, dir FROM entries WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] == PENDING:  # spooled meanwhile by another process
                    shutil.rmtree(self.files_dir / entry_id, ignore_errors=True)
                    found = True
                else:
                    found = False
                    if row is not None:  # done, failed or corrupt before: this registration starts over
                        replaced = row[1]
                        db.execute("DELETE FROM entries WHERE key = ?", (key,))
                    db.execute("INSERT INTO entries(key, model, state, dir, request, files, reason, created) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (key, model, PENDING, entry_id, json.dumps(request, sort_keys=True),
                                json.dumps(stored), reason, self.wall()))
                    self._bump(db, "spooled")
                    self.crash("before_commit")
            if not found:
                self.crash("after_commit")
            if replaced:
                shutil.rmtree(self.files_dir / replaced, ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        return entry

    def recover(self) -> List[str]:
        """Delete what a process that died mid-write left (staging directories, file directories no entry names,
        files of finished entries); returns what was deleted. Skipped while another process is writing."""
        removed: List[str] = []
        with self._flock("write.lock", fcntl.LOCK_EX, wait=False) as taken:
            if not taken:
                return removed
            for leftover in sorted(self.staging_dir.iterdir()):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append("staging/" + leftover.name)
            with self._db() as db:
                keep = {r[0] for r in db.execute("SELECT dir FROM entries WHERE state != ?", (DONE,))}
            for directory in sorted(self.files_dir.iterdir()):
                if directory.name not in keep:
                    shutil.rmtree(directory, ignore_errors=True)
                    removed.append("files/" + directory.name)
            if removed:
                _fsync_dir(self.files_dir)
                _fsync_dir(self.staging_dir)
        return removed

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, key: str) -> Optional[Entry]:
        found = self._select("WHERE key = ?", (key,))
        return found[0] if found else None

    def entries(self, state: Optional[str] = PENDING) -> List[Entry]:
        return self._select("WHERE state = ?", (state,)) if state else self._select()

    def counters(self) -> Dict[str, int]:
        with self._db() as db:
            found = dict(db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(found.get(name, 0)) for name in COUNTERS}

    def status(self) -> Dict[str, Any]:
        """Counts by state, the oldest pending entry's age, the counters, and the entries not done."""
        now = self.wall()
        with self._db() as db:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
        waiting = self._select("WHERE state != ?", (DONE,))
        pending = [e for e in waiting if e.state == PENDING]
        return {
            "directory": str(self.directory),
            "entries": {state: int(counts.get(state, 0)) for state in STATES},
            "oldest_pending_age_seconds": round(now - pending[0].created, 3) if pending else 0.0,
            "counters": self.counters(),
            "waiting": [e.to_dict(now) for e in waiting],
        }

    def metrics(self) -> str:
        """The spool in the Prometheus text format (for a /metrics endpoint or the node exporter's textfile)."""
        status = self.status()
        page = Exposition(whole=True)
        for state in STATES:
            page.add("mlflow_ha_spool_entries", "gauge", "Spooled registrations by state (pending: not yet in "
                     "the registry; failed: refused by it; corrupt: files changed on disk).",
                     status["entries"][state], [("state", state)])
        page.add("mlflow_ha_spool_oldest_pending_age_seconds", "gauge", "Age of the oldest registration waiting "
                 "for the registry (0 when none).", status["oldest_pending_age_seconds"])
        helps = {"spooled": "Registrations written to the spool.",
                 "replayed": "Spooled registrations that reached the registry.",
                 "replay_failures": "Replays of an entry that failed (registry still down, or refused).",
                 "dropped": "Entries removed by hand (spool drop)."}
        for name in COUNTERS:
            page.add("mlflow_ha_spool_%s_total" % name, "counter", helps[name], status["counters"][name])
        return page.render()

    # -- replay ---------------------------------------------------------------------------------------------

    def verify(self, entry: Entry) -> Optional[str]:
        """None when every file of the entry is there with its SHA-256, else what is wrong."""
        for stored in entry.files:
            path = entry.directory / stored["path"]
            if not path.is_file():
                return "%s is missing" % path
            actual = file_sha256(path)
            if actual != stored["sha256"]:
                return "%s has sha256 %s, spooled with %s" % (path, actual, stored["sha256"])
        return None

    def replay(self, send: Callable[[Entry], Dict[str, Any]], wait: bool = False) -> ReplayReport:
        """One pass over the pending entries in spool order. ``send`` registers an entry (with its key) and
        returns the registration's facts; it raises RegistryUnavailable (the pass stops: the registry is down)
        or RegistrationRefused (the entry is marked failed). Only one replay runs at a time per spool."""
        report = ReplayReport()
        start = time.monotonic()
        with self._thread_lock, self._flock("replay.lock", fcntl.LOCK_EX, wait=wait) as taken:
            if not taken:
                report.busy = True
                return report
            self.recover()
            held: set = set()
            for entry in self.entries(PENDING):
                if entry.model in held:
                    report.held_back.append(entry.key)
                    continue
                problem = self.verify(entry)
                if problem:
                    self._finish(entry, CORRUPT, error=problem, failure=True)
                    report.corrupt.append(entry.key)
                    continue
                try:
                    facts = send(entry)
                except RegistryUnavailable as err:
                    self._attempted(entry, str(err))
                    report.stopped = "%s: %s" % (entry.key, err)
                    held.add(entry.model)
                    break
                except RegistrationRefused as err:
                    self._finish(entry, FAILED, error=str(err), failure=True)
                    report.failed.append({"key": entry.key, "model": entry.model, "error": str(err)})
                    continue
                self.crash("after_register")
                self._finish(entry, DONE, version=facts.get("version"))
                self.crash("after_mark_done")
                shutil.rmtree(entry.directory, ignore_errors=True)
                report.replayed.append({"key": entry.key, "model": entry.model, "version": facts.get("version"),
                                        "created": facts.get("created"),
                                        "spooled_seconds": round(self.wall() - entry.created, 3)})
            # Entries after the stop are not counted as held back: they were not looked at.
        report.seconds = time.monotonic() - start
        return report

    def _attempted(self, entry: Entry, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE entries SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                       (error[:2000], entry.seq))
            self._bump(db, "replay_failures")

    def _finish(self, entry: Entry, state: str, version: Optional[int] = None, error: Optional[str] = None,
                failure: bool = False) -> None:
        with self._transaction() as db:
            db.execute("UPDATE entries SET state = ?, version = ?, last_error = ?, attempts = attempts + 1, "
                       "finished = ? WHERE seq = ?", (state, version, error and error[:2000], self.wall(),
                                                      entry.seq))
            self._bump(db, "replay_failures" if failure else "replayed")

    def drop(self, key: str) -> bool:
        """Remove an entry (any state) and its files; False when there is none. Waits for a running replay."""
        with self._thread_lock, self._flock("replay.lock", fcntl.LOCK_EX):
            with self._transaction() as db:
                row = db.execute("SELECT dir FROM entries WHERE key = ?", (key,)).fetchone()
                if row is None:
                    return False
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._bump(db, "dropped")
            shutil.rmtree(self.files_dir / row[0], ignore_errors=True)
        return True
