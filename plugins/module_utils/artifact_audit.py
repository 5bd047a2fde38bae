# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifacts and rows together, after a point-in-time restore of the MLflow database.

The database went back to a time T; the artifact bucket did not. This compares the two:

* the registry's rows that name artifacts (model versions' ``storage_location``/``source``, runs' ``artifact_uri``,
  logged models' ``artifact_location``, traces' location tags), each resolved to a path under MLflow's
  ``--artifacts-destination`` (``s3://<bucket>/<prefix>``, which ``mlflow-artifacts:/<path>`` URIs point into);
* the bucket's objects under that prefix with their upload times (``rclone lsjson``).

It finds model versions with no object under their location (*missing*), objects newer than T that no row's location
contains (*orphans*, grouped by the run, logged model or trace folder MLflow wrote them in), and, from the artifact
backup (the mirror that ``rclone sync`` keeps, and the history folders ``<history_prefix>/<run stamp>/`` where each
backup run moved what it deleted or replaced), the copies that would give back what the rows name and the bucket
lacks. ``restore`` copies those back with ``rclone copy --ignore-existing``: an object the bucket has is never
replaced, and nothing is ever deleted. Orphans are only reported.

rclone runs through a ``runner`` (argv -> (exit status, stdout, stderr)), so everything here is tested without a
store.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import bisect
import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Runner = Callable[[List[str]], Tuple[int, str, str]]

# How many entries of each kind the readable summary names (the facts are complete).
SUMMARY_NAMED = 20
# A model URI may name another version, which names a run: this many hops at most.
MAX_RESOLVE_DEPTH = 5
# The stage MLflow gives a deleted model version (its row stays, with its source redacted).
STAGE_DELETED = "Deleted_Internal"
# The artifact backup runner's history folder names (artifact_backup_runner.py: utc_stamp).
HISTORY_STAMP = "%Y%m%dT%H%M%SZ"
# Where MLflow 3 writes, under an experiment's artifact location (its SQL store's layout).
FOLDER_KINDS = {"models": "logged_model", "traces": "trace"}

RCLONE_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
TARGET_TIME = re.compile(
    r"^\s*(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?\s*(Z|UTC|[+-]\d\d(?::?\d\d)?)\s*$", re.IGNORECASE)


class AuditError(Exception):
    """A sentence for the operator: what was asked or answered, and why it cannot be used."""


# ---------------------------------------------------------------------------------------------------------------
# Times


def _zone(text: str) -> datetime.timezone:
    if text.upper() in ("Z", "UTC"):
        return datetime.timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
    return datetime.timezone(sign * datetime.timedelta(minutes=minutes))


def _epoch(date: str, clock: str, fraction: Optional[str], zone: str) -> float:
    if clock.count(":") == 1:
        clock += ":00"
    stamp = datetime.datetime.strptime(date + "T" + clock, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_zone(zone))
    return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)


def parse_rclone_time(text: str) -> float:
    """An rclone JSON time (RFC 3339, up to nanoseconds) as seconds since the epoch."""
    match = RCLONE_TIME.match((text or "").strip())
    if not match:
        raise ValueError("not an rclone time: %r" % text)
    return _epoch(*match.groups())


def parse_target_time(text: str) -> float:
    """The restore's target as the restore playbook takes it (pgBackRest's ``--target``), e.g.
    ``2026-12-06 17:55:00+00``; the zone is required (without one pgBackRest reads the database host's local time,
    which this cannot know)."""
    match = TARGET_TIME.match(text or "")
    if not match:
        raise AuditError("target time %r is not 'YYYY-MM-DD HH:MM:SS+00' (with its zone, as restore_pgbackrest.yml "
                         "takes it)" % text)
    return _epoch(*match.groups())


def utc_text(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_history_stamp(text: str) -> Optional[float]:
    try:
        return datetime.datetime.strptime(text, HISTORY_STAMP).replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def size_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % count


# ---------------------------------------------------------------------------------------------------------------
# Listings


@dataclass(frozen=True)
class Obj:
    """An object of a listing: its size and its time (upload time, or rclone's kept modification time)."""

    size: int
    mtime: float


def parse_lsjson(text: str) -> Dict[str, Obj]:
    """``rclone lsjson -R --files-only`` output: path -> object."""
    entries = json.loads(text or "[]")
    if not isinstance(entries, list):
        raise ValueError("lsjson printed no list")
    listing: Dict[str, Obj] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("IsDir"):
            continue
        listing[str(entry["Path"])] = Obj(int(entry.get("Size") or 0), parse_rclone_time(entry["ModTime"]))
    return listing


class Keys:
    """A listing's paths, sorted, to ask which lie under a folder."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = sorted(paths)
        self.known = set(self.paths)

    def under(self, location: str) -> List[str]:
        """The paths equal to ``location`` or inside it (as a folder)."""
        if not location:
            return list(self.paths)
        found = [location] if location in self.known else []
        start = bisect.bisect_left(self.paths, location + "/")
        for path in self.paths[start:]:
            if not path.startswith(location + "/"):
                break
            found.append(path)
        return found

    def has_any(self, location: str) -> bool:
        if not location:
            return bool(self.paths)
        if location in self.known:
            return True
        start = bisect.bisect_left(self.paths, location + "/")
        return start < len(self.paths) and self.paths[start].startswith(location + "/")


def ancestors(path: str) -> List[str]:
    """``a/b/c`` -> ``["a/b/c", "a/b", "a", ""]``: the path and every folder it lies in, deepest first (the last,
    ``""``, is the destination itself)."""
    parts = path.split("/") if path else []
    return ["/".join(parts[:end]) for end in range(len(parts), 0, -1)] + [""]


# ---------------------------------------------------------------------------------------------------------------
# The artifact store and the registry's rows


def _clean_path(path: str) -> Optional[str]:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def _split_uri(uri: str) -> Tuple[str, str, str]:
    """``scheme:[//authority]/path`` -> (scheme, authority, path); no percent-decoding (MLflow writes none)."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", scheme):
        return "", "", uri
    authority = ""
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
    return scheme.lower(), authority, rest


class Store:
    """MLflow's ``--artifacts-destination``, ``s3://<bucket>[/<prefix>]``: what its URIs point to in the bucket."""

    def __init__(self, destination: str) -> None:
        scheme, bucket, path = _split_uri(destination or "")
        if scheme not in ("s3", "s3a") or not bucket:
            raise AuditError("artifacts destination %r is not s3://<bucket>/<prefix> (the mlflow role's "
                             "--artifacts-destination)" % destination)
        self.destination = destination
        self.bucket = bucket
        self.prefix = _clean_path(path) or ""

    def key(self, relative: str) -> str:
        """The object key in the bucket of a path relative to the destination."""
        return "%s/%s" % (self.prefix, relative) if self.prefix else relative

    def remote(self, remote_bucket: str, relative: str = "") -> str:
        """An rclone path (``remote:bucket/prefix[/relative]``) under ``remote_bucket`` (``remote:bucket``)."""
        path = self.key(relative) if relative else self.prefix
        return "%s/%s" % (remote_bucket.rstrip("/"), path) if path else remote_bucket

    def relative(self, uri: str) -> Tuple[Optional[str], str]:
        """A location URI as a path under the destination, or None and why not."""
        scheme, authority, path = _split_uri(uri)
        if scheme == "mlflow-artifacts":
            cleaned = _clean_path(path)
            return (cleaned, "") if cleaned is not None else (None, "a path with '..'")
        if scheme in ("s3", "s3a"):
            return self._key_relative(authority, _clean_path(path))
        return None, "outside the artifact store (%s)" % (scheme + ":" if scheme else "no scheme")

    def _key_relative(self, bucket: str, key: Optional[str]) -> Tuple[Optional[str], str]:
        outside = "outside %s" % self.destination
        if bucket != self.bucket or key is None:
            return None, outside
        if not self.prefix or key == self.prefix:
            return ("" if key == self.prefix else key), ""
        if key.startswith(self.prefix + "/"):
            return key[len(self.prefix) + 1:], ""
        return None, outside


@dataclass(frozen=True)
class Owner:
    """A row whose location holds artifacts: kind (version, run, logged_model, trace) and identity."""

    kind: str
    id: str
    experiment_id: str = ""

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "id": self.id, "experiment_id": self.experiment_id}


@dataclass
class Version:
    name: str
    version: int
    source: str
    storage_location: str
    run_id: str
    status: str
    workspace: str = ""

    @property
    def uri(self) -> str:
        # What MLflow downloads a version from (its registry store's get_model_version_download_uri).
        return self.storage_location or self.source

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                "storage_location": self.storage_location, "run_id": self.run_id, "status": self.status,
                "workspace": self.workspace}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class Rows:
    """The registry's rows that name artifacts, as the dr/ playbooks read them (tasks/artifact_rows.yml): a mapping
    with lists ``versions``, ``runs``, ``logged_models`` and ``traces``."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if not isinstance(doc, Mapping):
            raise AuditError("the database rows are not a mapping of versions, runs, logged_models and traces")
        self.versions: List[Version] = []
        self.deleted_versions = 0
        for row in doc.get("versions") or []:
            if _text(row.get("current_stage")) == STAGE_DELETED:
                self.deleted_versions += 1
                continue
            self.versions.append(Version(_text(row.get("name")), int(row.get("version") or 0),
                                         _text(row.get("source")), _text(row.get("storage_location")),
                                         _text(row.get("run_id")), _text(row.get("status")),
                                         _text(row.get("workspace"))))
        self.runs: Dict[str, Tuple[str, str]] = {
            _text(row.get("run_id")): (_text(row.get("artifact_uri")), _text(row.get("experiment_id")))
            for row in doc.get("runs") or []}
        self.logged_models: Dict[str, Tuple[str, str]] = {
            _text(row.get("model_id")): (_text(row.get("artifact_location")), _text(row.get("experiment_id")))
            for row in doc.get("logged_models") or []}
        self.traces: List[Tuple[str, str]] = [(_text(row.get("trace_id")), _text(row.get("location")))
                                              for row in doc.get("traces") or []]
        self._by_version = {(v.name, v.version): v for v in self.versions}

    def resolve(self, uri: str, store: Store, depth: int = 0) -> Tuple[Optional[str], str]:
        """A location URI (as the registry keeps it) as a path under the artifact store, or None and why not."""
        if not uri:
            return None, "no location"
        if depth > MAX_RESOLVE_DEPTH:
            return None, "model URIs nested too deep"
        scheme, authority, path = _split_uri(uri)
        parts = (authority + path).strip("/").split("/")
        if scheme == "runs":
            run = self.runs.get(parts[0])
            if run is None:
                return None, "run %s has no row" % parts[0]
            return self._join(self.resolve(run[0], store, depth + 1), "/".join(parts[1:]))
        if scheme == "models":
            return self._resolve_model(uri, parts, store, depth)
        return store.relative(uri)

    def _resolve_model(self, uri: str, parts: List[str], store: Store, depth: int) -> Tuple[Optional[str], str]:
        """``models:/<logged model id>[/path]`` or ``models:/<name>/<version>[/path]``."""
        if parts[0] in self.logged_models:
            return self._join(self.resolve(self.logged_models[parts[0]][0], store, depth + 1), "/".join(parts[1:]))
        if parts[0].startswith("m-"):
            return None, "logged model %s has no row" % parts[0]
        other = self._by_version.get((parts[0], int(parts[1]))) if len(parts) >= 2 and parts[1].isdigit() else None
        if other is None:
            return None, "model URI %s names no version or logged model that has a row" % uri
        return self._join(self.resolve(other.uri, store, depth + 1), "/".join(parts[2:]))

    @staticmethod
    def _join(resolved: Tuple[Optional[str], str], rest: str) -> Tuple[Optional[str], str]:
        path, reason = resolved
        if path is None:
            return None, reason
        tail = _clean_path(rest)
        if tail is None:
            return None, "a path with '..'"
        return ("/".join(part for part in (path, tail) if part), "")

    def roots(self, store: Store) -> Tuple[Dict[str, Owner], List[Tuple[Version, Optional[str], str]]]:
        """Every location a row names, with its owner (a version's first: it is the one an operator asks about),
        and each version with its resolved location or why it has none."""
        roots: Dict[str, Owner] = {}
        versions = []
        for version in self.versions:
            location, reason = self.resolve(version.uri, store)
            versions.append((version, location, reason))
            if location is not None:
                roots.setdefault(location, Owner("version", "%s/%d" % (version.name, version.version)))
        for model_id, (uri, experiment) in sorted(self.logged_models.items()):
            location, _reason = store.relative(uri)
            if location is not None:
                roots.setdefault(location, Owner("logged_model", model_id, experiment))
        for run_id, (uri, experiment) in sorted(self.runs.items()):
            location, _reason = store.relative(uri)
            if location is not None:
                roots.setdefault(location, Owner("run", run_id, experiment))
        for trace_id, uri in self.traces:
            location, _reason = store.relative(uri)
            if location is not None:
                roots.setdefault(location, Owner("trace", trace_id))
        return roots, versions


def owner_of(path: str, roots: Mapping[str, Owner]) -> Optional[Owner]:
    """The owner of the deepest location a path lies in, or None: no row names it."""
    for folder in ancestors(path):
        if folder in roots:
            return roots[folder]
    return None


def layout_group(path: str) -> Tuple[str, str, str, str]:
    """Where MLflow wrote an object, from its path alone: (folder, kind, id, experiment id). Run artifacts are under
    ``<experiment>/<run id>/``, logged models' under ``<experiment>/models/<model id>/``, traces' under
    ``<experiment>/traces/<trace id>/``."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] in FOLDER_KINDS:
        return "/".join(parts[:3]), FOLDER_KINDS[parts[1]], parts[2], parts[0]
    if len(parts) >= 3 and re.match(r"^[0-9a-f]{32}$", parts[1]):
        return "/".join(parts[:2]), "run", parts[1], parts[0]
    if len(parts) >= 2:
        return parts[0], "other", "", parts[0]
    return "", "other", "", ""


# ---------------------------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Audit:
    store: Store
    rows: Rows
    source: Dict[str, Obj]
    target: Optional[float]
    roots: Dict[str, Owner] = field(default_factory=dict)
    checked: List[Tuple[Version, str]] = field(default_factory=list)
    missing: List[Tuple[Version, str]] = field(default_factory=list)
    unchecked: List[Tuple[Version, str]] = field(default_factory=list)
    orphans: List[str] = field(default_factory=list)
    older_unreferenced: List[str] = field(default_factory=list)
    newer_referenced: int = 0
    keys: Keys = field(default_factory=lambda: Keys([]))

    def version_fact(self, version: Version, location: str) -> Dict[str, Any]:
        fact = version.to_dict()
        fact.update({"location": location, "key_prefix": self.store.key(location)})
        return fact

    def groups(self, paths: List[str]) -> List[Dict[str, Any]]:
        grouped: Dict[Tuple[str, str, str, str], List[str]] = {}
        for path in paths:
            grouped.setdefault(layout_group(path), []).append(path)
        facts = []
        for (folder, kind, ident, experiment), members in sorted(grouped.items()):
            times = [self.source[path].mtime for path in members]
            whole = bool(folder) and len(self.keys.under(folder)) == len(members)
            facts.append({"prefix": folder, "key_prefix": self.store.key(folder) if folder else self.store.prefix,
                          "kind": kind, "id": ident, "experiment_id": experiment, "objects": len(members),
                          "bytes": sum(self.source[path].size for path in members), "oldest": utc_text(min(times)),
                          "newest": utc_text(max(times)), "whole_prefix": whole,
                          "keys": [self.store.key(path) for path in sorted(members)]})
        return facts


def compare(rows: Rows, store: Store, source: Dict[str, Obj], target: Optional[float]) -> Audit:
    audit = Audit(store, rows, source, target, keys=Keys(source))
    audit.roots, versions = rows.roots(store)
    for version, location, reason in versions:
        if location is None:
            audit.unchecked.append((version, reason))
            continue
        audit.checked.append((version, location))
        if not audit.keys.has_any(location):
            audit.missing.append((version, location))
    for path in audit.keys.paths:
        newer = target is None or source[path].mtime > target
        referenced = owner_of(path, audit.roots) is not None
        if not referenced:
            (audit.orphans if newer else audit.older_unreferenced).append(path)
        elif newer and target is not None:
            audit.newer_referenced += 1
    return audit


# ---------------------------------------------------------------------------------------------------------------
# The backup: what it holds of what the rows name and the bucket lacks


MIRROR = "mirror"


@dataclass
class Copy:
    """One copy of an object in the backup: in the mirror, or in a history folder (``origin`` is its stamp)."""

    origin: str
    size: int
    listed_time: float
    stamp_time: Optional[float] = None
    # The object's own time as rclone kept it (its upload time at the source); None until asked.
    mtime: Optional[float] = None

    @property
    def time(self) -> float:
        return self.mtime if self.mtime is not None else self.listed_time


def choose(copies: Sequence[Copy], target: Optional[float]) -> Tuple[Optional[Copy], str]:
    """The copy to give back: the newest one written at or before the target (all of them without a target); among
    equals the mirror's, then the earliest history folder's. None when every copy was written after the target."""
    usable = [copy for copy in copies if target is None or copy.time <= target]
    if not usable:
        return None, "only copies written after the target"
    usable.sort(key=lambda c: (-c.time, c.origin != MIRROR, c.stamp_time or 0.0))
    return usable[0], ""


@dataclass
class Backup:
    """The backup's listings: the mirror under the destination's prefix, and each history folder's."""

    mirror: Dict[str, Obj]
    history: Dict[str, Dict[str, Obj]]
    ignored_history: int = 0

    @classmethod
    def from_listings(cls, store: Store, mirror: Dict[str, Obj], history: Dict[str, Obj]) -> "Backup":
        """``history`` lists ``<stamp>/<key>`` under the history prefix; keys outside the destination's prefix and
        folders that are not a backup run's stamp are left out (counted)."""
        folders: Dict[str, Dict[str, Obj]] = {}
        ignored = 0
        for path, obj in history.items():
            stamp, _sep, key = path.partition("/")
            if parse_history_stamp(stamp) is None:
                ignored += 1
                continue
            if store.prefix:
                if not key.startswith(store.prefix + "/"):
                    continue
                key = key[len(store.prefix) + 1:]
            folders.setdefault(stamp, {})[key] = obj
        return cls(mirror, folders, ignored)

    def copies(self, path: str) -> List[Copy]:
        found = []
        if path in self.mirror:
            found.append(Copy(MIRROR, self.mirror[path].size, self.mirror[path].mtime))
        for stamp, listing in self.history.items():
            if path in listing:
                found.append(Copy(stamp, listing[path].size, listing[path].mtime, parse_history_stamp(stamp)))
        return found

    def paths(self) -> List[str]:
        every = set(self.mirror)
        for listing in self.history.values():
            every.update(listing)
        return sorted(every)


SCOPES = ("rows", "versions")


@dataclass
class Plan:
    """What the backup would give back: per object (path under the destination) its chosen copy and owner."""

    chosen: Dict[str, Copy] = field(default_factory=dict)
    owners: Dict[str, Owner] = field(default_factory=dict)
    newer_only: Dict[str, float] = field(default_factory=dict)

    def by_origin(self) -> Dict[str, List[str]]:
        grouped: Dict[str, List[str]] = {}
        for path, copy in sorted(self.chosen.items()):
            grouped.setdefault(copy.origin, []).append(path)
        return grouped

    def facts(self, store: Store) -> List[Dict[str, Any]]:
        return [{"key": store.key(path), "path": path, "origin": copy.origin, "size": copy.size,
                 "mtime": utc_text(copy.time), "owner": self.owners[path].to_dict()}
                for path, copy in sorted(self.chosen.items())]


def candidates(audit: Audit, backup: Backup, scope: str) -> Dict[str, List[Copy]]:
    """Objects in the backup that a row's location holds and the bucket lacks (with ``scope`` ``versions``: only
    under the locations of versions that have no object at all), with their copies."""
    if scope not in SCOPES:
        raise AuditError("scope %r is not one of %s" % (scope, ", ".join(SCOPES)))
    wanted = {location for _version, location in audit.missing}
    found: Dict[str, List[Copy]] = {}
    for path in backup.paths():
        if path in audit.source or owner_of(path, audit.roots) is None:
            continue
        if scope == "versions" and not any(folder in wanted for folder in ancestors(path)):
            continue
        found[path] = backup.copies(path)
    return found


def plan(audit: Audit, found: Dict[str, List[Copy]]) -> Plan:
    """The copy of each candidate to give back (copies' ``mtime`` asked for beforehand, see ``Auditor``)."""
    result = Plan()
    for path, copies in sorted(found.items()):
        chosen, _reason = choose(copies, audit.target)
        if chosen is None:
            result.newer_only[path] = min(copy.time for copy in copies)
            continue
        result.chosen[path] = chosen
        owner = owner_of(path, audit.roots)
        if owner is not None:
            result.owners[path] = owner
    return result


# ---------------------------------------------------------------------------------------------------------------
# rclone


class RcloneError(AuditError):
    pass


# rclone's exit status for "directory not found" (its documented exit codes).
RCLONE_DIRECTORY_NOT_FOUND = 3


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "no output"


class Rclone:
    """rclone as the artifact backup runs it (its ``--config`` and CA): listings and copies."""

    def __init__(self, argv: Sequence[str], run: Runner, workdir: Optional[str] = None) -> None:
        if not argv:
            raise AuditError("no rclone command (the artifact_backup role's endpoints publish rclone_argv)")
        self.argv = list(argv)
        self.run = run
        self.workdir = workdir
        self.calls: List[List[str]] = []

    def _call(self, args: List[str]) -> Tuple[int, str, str]:
        argv = self.argv + args
        self.calls.append(argv)
        return self.run(argv)

    def _with_list(self, paths: Iterable[str], call: Callable[[str], Tuple[int, str, str]]) -> Tuple[int, str, str]:
        with tempfile.TemporaryDirectory(prefix="mlflow-ha-artifacts-", dir=self.workdir) as directory:
            listing = os.path.join(directory, "files")
            with open(listing, "w", encoding="utf-8") as out:
                out.write("".join(path + "\n" for path in paths))
            return call(listing)

    def lsjson(self, remote: str, paths: Optional[Sequence[str]] = None, server_modtime: bool = True,
               exclude: Sequence[str] = (), missing_ok: bool = False) -> Dict[str, Obj]:
        """Every object under ``remote`` (only ``paths`` when given) with its size and time: the upload time with
        ``server_modtime`` (no request per object), else the modification time rclone keeps in the object's metadata
        (one request per object: only for a few). With ``missing_ok`` a folder that does not exist (rclone's exit
        status 3; S3 lists a missing prefix as empty, other backends refuse it) is empty."""
        args = ["lsjson", "-R", "--files-only", "--no-mimetype"] + (["--use-server-modtime"] if server_modtime else [])
        for pattern in exclude:
            args += ["--exclude", pattern]

        def call(listing: Optional[str]) -> Tuple[int, str, str]:
            return self._call(args + (["--files-from-raw", listing] if listing else []) + [remote])

        if paths is not None:
            if not paths:
                return {}
            status, out, err = self._with_list(paths, call)
        else:
            status, out, err = call(None)
        if status == RCLONE_DIRECTORY_NOT_FOUND and missing_ok:
            return {}
        if status != 0:
            raise RcloneError("rclone lsjson %s failed (exit %d): %s" % (remote, status, _tail(err)))
        try:
            return parse_lsjson(out)
        except (ValueError, KeyError, TypeError) as err_:
            raise RcloneError("rclone lsjson %s printed what cannot be read: %s" % (remote, err_)) from err_

    def copy(self, origin: str, dest: str, paths: Sequence[str], transfers: int) -> Tuple[int, str]:
        """``rclone copy`` of ``paths`` (relative to both) from ``origin`` to ``dest``: each file addressed by name
        (``--no-traverse``), and one that exists at ``dest`` is skipped whatever its content (``--ignore-existing``):
        nothing at ``dest`` is replaced or deleted."""

        def call(listing: str) -> Tuple[int, str, str]:
            return self._call(["copy", "--files-from-raw", listing, "--no-traverse", "--ignore-existing",
                                       "--transfers", str(transfers), "--stats-one-line", "-v", origin, dest])

        status, _out, err = self._with_list(paths, call)
        return status, err


# ---------------------------------------------------------------------------------------------------------------
# The report and the restore (what the modules call)


def _source_bucket_check(store: Store, source: str) -> None:
    _remote, _sep, path = source.partition(":")
    bucket = path.strip("/").split("/")[0]
    if bucket != store.bucket:
        raise AuditError("the artifact backup's source %s is not MLflow's bucket %s (%s): the report would compare "
                         "the rows with another bucket" % (source, store.bucket, store.destination))


class Auditor:
    """One comparison: the bucket listed, the rows resolved; the backup listed on demand."""

    def __init__(self, params: Mapping[str, Any], run: Runner, workdir: Optional[str] = None) -> None:
        self.params = params
        self.store = Store(params["artifacts_destination"])
        _source_bucket_check(self.store, params["source"])
        self.target = parse_target_time(params["target_time"]) if params.get("target_time") else None
        self.rows = Rows(params["rows"])
        self.rclone = Rclone(params["rclone"], run, workdir)
        self.audit: Optional[Audit] = None
        self.backup: Optional[Backup] = None

    def source_remote(self) -> str:
        return self.store.remote(self.params["source"])

    def compare(self) -> Audit:
        self.audit = compare(self.rows, self.store, self.rclone.lsjson(self.source_remote()), self.target)
        return self.audit

    def origin_remote(self, origin: str) -> str:
        target = self.params["target"]
        if origin == MIRROR:
            return self.store.remote(target)
        return self.store.remote("%s/%s/%s" % (target.rstrip("/"), self.params["history_prefix"], origin))

    def read_backup(self) -> Backup:
        target, history_prefix = self.params["target"], self.params["history_prefix"]
        if not target:
            raise AuditError("no backup target (the artifact_backup role's endpoints publish it)")
        # With an empty prefix the mirror is the whole bucket: its history folder is not part of it.
        exclude = [] if self.store.prefix else ["/%s/**" % history_prefix]
        mirror = self.rclone.lsjson(self.store.remote(target), exclude=exclude)
        # No backup run has set anything aside yet: no history folder.
        history = self.rclone.lsjson("%s/%s" % (target.rstrip("/"), history_prefix), missing_ok=True)
        self.backup = Backup.from_listings(self.store, mirror, history)
        return self.backup

    def plan(self, scope: str) -> Plan:
        """The copies to give back; each candidate's own time is asked of its copies (rclone's kept modification
        time, one request per object) so that the target time picks the right one."""
        if self.audit is None or self.backup is None:
            raise AuditError("plan before compare and read_backup")
        found = candidates(self.audit, self.backup, scope)
        by_origin: Dict[str, List[str]] = {}
        for path, copies in found.items():
            for copy in copies:
                by_origin.setdefault(copy.origin, []).append(path)
        for origin, paths in sorted(by_origin.items()):
            times = self.rclone.lsjson(self.origin_remote(origin), paths=sorted(paths), server_modtime=False)
            for path in paths:
                for copy in found[path]:
                    if copy.origin == origin and path in times:
                        copy.mtime = times[path].mtime
        return plan(self.audit, found)


def _named(lines: List[str], items: List[str], total: int) -> None:
    lines.extend("  " + item for item in items[:SUMMARY_NAMED])
    if total > SUMMARY_NAMED:
        lines.append("  ... and %d more (in the facts)" % (total - SUMMARY_NAMED))


def _group_line(group: Mapping[str, Any]) -> str:
    who = "%s %s" % (group["kind"].replace("_", " "), group["id"]) if group["id"] else "folder"
    return "%s %s (experiment %s): %d object(s), %s, %s .. %s%s" % (
        who, group["key_prefix"], group["experiment_id"] or "-", group["objects"], size_text(group["bytes"]),
        group["oldest"], group["newest"], "" if group["whole_prefix"] else "; the folder holds referenced objects too")


def audit_facts(audit: Audit, plan_: Optional[Plan], backup: Optional[Backup]) -> Dict[str, Any]:
    """The facts both modules return about the comparison (and the backup's copies when it was read)."""
    store = audit.store
    recoverable: Dict[str, List[str]] = {}
    if plan_ is not None:
        for path, copy in plan_.chosen.items():
            for folder in ancestors(path):
                recoverable.setdefault(folder, []).append(copy.origin)
    missing = []
    for version, location in audit.missing:
        fact = audit.version_fact(version, location)
        if plan_ is not None:
            origins = recoverable.get(location, [])
            fact.update({"backup_objects": len(origins), "backup_origins": sorted(set(origins))})
        missing.append(fact)
    orphans = audit.groups(audit.orphans)
    older = audit.groups(audit.older_unreferenced)
    facts: Dict[str, Any] = {
        "artifacts_destination": store.destination,
        "target_time": utc_text(audit.target),
        "missing_versions": missing,
        "unchecked_versions": [dict(version.to_dict(), reason=reason) for version, reason in audit.unchecked],
        "orphans": orphans,
        "orphan_keys": [store.key(path) for path in audit.orphans],
        "unreferenced_before_target": older,
        "counts": {
            "versions": len(audit.rows.versions), "deleted_versions": audit.rows.deleted_versions,
            "versions_checked": len(audit.checked), "missing_versions": len(audit.missing),
            "unchecked_versions": len(audit.unchecked), "runs": len(audit.rows.runs),
            "logged_models": len(audit.rows.logged_models), "traces": len(audit.rows.traces),
            "objects": len(audit.source), "bytes": sum(obj.size for obj in audit.source.values()),
            "orphan_objects": len(audit.orphans), "orphan_bytes": sum(audit.source[p].size for p in audit.orphans),
            "orphan_groups": len(orphans), "unreferenced_before_target_objects": len(audit.older_unreferenced),
            "newer_referenced_objects": audit.newer_referenced,
        },
    }
    if plan_ is not None and backup is not None:
        facts["restorable"] = plan_.facts(store)
        facts["only_newer_in_backup"] = [{"key": store.key(path), "path": path, "oldest_copy": utc_text(when)}
                                         for path, when in sorted(plan_.newer_only.items())]
        facts["counts"].update({"restorable_objects": len(plan_.chosen), "backup_objects": len(backup.mirror),
                                "backup_history_folders": len(backup.history)})
    return facts


def summary_lines(facts: Mapping[str, Any], backup_read: bool) -> List[str]:
    counts = facts["counts"]
    target = facts["target_time"]
    lines = ["%d model version(s), %d run(s), %d logged model(s), %d trace(s) compared with %d object(s) (%s) in %s%s."
             % (counts["versions"], counts["runs"], counts["logged_models"], counts["traces"], counts["objects"],
                size_text(counts["bytes"]), facts["artifacts_destination"],
                ", target %s" % target if target else ", no target time (orphans: every unreferenced object)")]
    lines.append("Model versions with no object under their location: %d" % counts["missing_versions"])
    _named(lines, ["%s version %s: nothing under %s (run %s)%s" % (
        v["name"], v["version"], v["key_prefix"], v["run_id"] or "-",
        ("; backup: %d object(s) from %s" % (v["backup_objects"], ", ".join(v["backup_origins"]))
         if v.get("backup_objects") else "; backup: nothing") if backup_read else "")
        for v in facts["missing_versions"]], counts["missing_versions"])
    lines.append("Orphans (objects %s that no row names): %d object(s), %s, in %d folder(s)" % (
        "newer than the target" if target else "of any age", counts["orphan_objects"],
        size_text(counts["orphan_bytes"]), counts["orphan_groups"]))
    _named(lines, [_group_line(group) for group in facts["orphans"]], counts["orphan_groups"])
    if target:
        lines.append("Unreferenced objects at or before the target (not orphans of this restore): %d"
                     % counts["unreferenced_before_target_objects"])
        _named(lines, [_group_line(group) for group in facts["unreferenced_before_target"]],
               len(facts["unreferenced_before_target"]))
    if counts["unchecked_versions"]:
        lines.append("Model versions not checked (their location is not in this bucket): %d"
                     % counts["unchecked_versions"])
        _named(lines, ["%s version %s: %s (%s)" % (v["name"], v["version"], v["storage_location"] or v["source"],
                                                   v["reason"]) for v in facts["unchecked_versions"]],
               counts["unchecked_versions"])
    if backup_read:
        lines.append("The backup can give back %d object(s) that rows name and the bucket lacks%s" % (
            counts["restorable_objects"], "; %d more exist there only in copies written after the target"
            % len(facts["only_newer_in_backup"]) if facts["only_newer_in_backup"] else ""))
    return lines


def report(params: Mapping[str, Any], run: Runner, workdir: Optional[str] = None) -> Dict[str, Any]:
    """The comparison's facts and summary; reads only."""
    auditor = Auditor(params, run, workdir)
    audit = auditor.compare()
    plan_ = None
    if params.get("backup", True):
        auditor.read_backup()
        plan_ = auditor.plan(params.get("scope") or "rows")
    facts = audit_facts(audit, plan_, auditor.backup)
    facts["summary"] = summary_lines(facts, plan_ is not None)
    facts["summary"].append("Nothing was changed or deleted.")
    return facts


def restore(params: Mapping[str, Any], run: Runner, check_mode: bool,
            workdir: Optional[str] = None) -> Tuple[Dict[str, Any], Optional[str]]:
    """Give back, from the backup, what the rows name and the bucket lacks; then list the bucket again for those
    objects. Returns the facts and the failure sentence (None when every planned object is there now)."""
    auditor = Auditor(params, run, workdir)
    audit = auditor.compare()
    backup = auditor.read_backup()
    plan_ = auditor.plan(params.get("scope") or "rows")
    facts = audit_facts(audit, plan_, backup)
    facts.update({"copies": [], "restored": [], "not_restored": [], "changed": False})
    lines = summary_lines(facts, True)
    not_found = [v for v in facts["missing_versions"] if not v.get("backup_objects")]
    facts["not_found"] = not_found
    if check_mode or not plan_.chosen:
        facts["missing_versions_after"] = facts["missing_versions"]
        lines.append("Check mode: nothing copied." if check_mode and plan_.chosen else "Nothing to copy.")
        facts["summary"] = lines
        return facts, None
    dest = auditor.source_remote()
    failures = []
    for origin, paths in sorted(plan_.by_origin().items()):
        remote = auditor.origin_remote(origin)
        status, err = auditor.rclone.copy(remote, dest, paths, int(params.get("transfers", 8)))
        facts["copies"].append({"origin": origin, "from": remote, "objects": len(paths), "exit": status})
        if status != 0:
            failures.append("rclone copy from %s failed (exit %d): %s" % (remote, status, _tail(err, 3)))
    planned = sorted(plan_.chosen)
    present = auditor.rclone.lsjson(dest, paths=planned)
    store = auditor.store
    facts["restored"] = [fact for fact in plan_.facts(store) if fact["path"] in present]
    facts["not_restored"] = [fact for fact in plan_.facts(store) if fact["path"] not in present]
    facts["changed"] = bool(facts["restored"])
    after = Keys(list(audit.source) + list(present))
    facts["missing_versions_after"] = [audit.version_fact(version, location) for version, location in audit.missing
                                       if not after.has_any(location)]
    lines.append("Copied back %d object(s) from %d origin(s); %d planned object(s) are still absent; model versions "
                 "still missing: %d." % (len(facts["restored"]), len(facts["copies"]), len(facts["not_restored"]),
                                         len(facts["missing_versions_after"])))
    _named(lines, ["%s from %s (%s %s)" % (f["key"], f["origin"], f["owner"]["kind"], f["owner"]["id"])
                   for f in facts["restored"]], len(facts["restored"]))
    facts["summary"] = lines
    if facts["not_restored"]:
        failures.append("%d planned object(s) are not in the bucket after the copy: %s" % (
            len(facts["not_restored"]), ", ".join(f["key"] for f in facts["not_restored"][:10])))
    return facts, "; ".join(failures) if failures else None


def argument_spec(**extra: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The options both modules share (doc fragment mlops.mlflow_ha.artifacts), plus ``extra``."""
    spec: Dict[str, Dict[str, Any]] = dict(
        rclone=dict(type="list", elements="str", required=True),
        source=dict(type="str", required=True),
        target=dict(type="str", default=""),
        history_prefix=dict(type="str", default="_history"),
        artifacts_destination=dict(type="str", required=True),
        rows=dict(type="dict", required=True),
        target_time=dict(type="str", default=""),
        scope=dict(type="str", default="rows", choices=list(SCOPES)),
    )
    spec.update(extra)
    return spec
