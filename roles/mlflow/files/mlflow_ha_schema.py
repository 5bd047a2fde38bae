"""MLflow's database schemas against the installed MLflow: which Alembic migrations are pending, and applying them.

The mlflow role runs this file with the MLflow virtualenv's python (`python -c <this file's text> MODE`), the database
URIs on stdin: the tracking store's on the first line, the authentication store's on the second when basic auth is
on. No password is in an argument or in the environment. Arguments: MODE [--indexes SECONDS]. MODE:
  check                  report only;
  migrate                migrate every schema that is behind, as `mlflow db upgrade` and the basic-auth app's
                         `db upgrade` do (they are what runs), and report;
  migrate-unless-backup  as `migrate` when no pending migration touches data (every schema at its head, or empty: a
                         fresh install); else migrate nothing and report needs_backup, so that the caller backs the
                         database up and then runs `migrate`.
With --indexes SECONDS, once the tracking schema is at its head, the collection's own indexes (INDEXES: named
mlflow_ha_*, unknown to MLflow's migrations) are created when missing, built again when a cancelled build left them
invalid, and indexes named like them (MANAGED_NAME, on the same tables, backing no constraint) that this file no
longer defines are dropped; each statement CONCURRENTLY (writers go on)
and cancelled when it runs longer than SECONDS (a failure). In `check` mode they are only looked at.
The last line on stdout is the report, JSON:
  {"mlflow_version", "schemas": [{"schema", "current", "head", "pending", "empty"}], "pending": [names],
   "touches_data": a pending migration finds data, "backup_first": nothing was migrated for that, "migrated": [names],
   "indexes": [{"name", "table", "state"}], "indexes_changed": [names created, rebuilt or dropped]}
Alembic's own lines ("Running upgrade a -> b") go to stderr.

Pending means: the revision in the database's Alembic version table (alembic_version for tracking,
alembic_version_auth for authentication; none when the table is missing) is not the head of the installed MLflow's
migration scripts, read with Alembic's ScriptDirectory from MLflow's package directory, without importing MLflow
(which is most of the time a migration takes when nothing is pending). A revision the scripts do not know (a newer
MLflow migrated the database) is refused before anything is done, as MLflow itself would refuse to start on it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

MODES = ("check", "migrate", "migrate-unless-backup")


@dataclass(frozen=True)
class Schema:
    name: str
    version_table: str
    scripts: Tuple[str, ...]  # the migration scripts' directory, below MLflow's package directory


TRACKING = Schema("tracking", "alembic_version", ("store", "db_migrations"))
AUTH = Schema("auth", "alembic_version_auth", ("server", "auth", "db", "migrations"))


@dataclass(frozen=True)
class Index:
    """A partial index on a tag table's value, for the tag keys clients search by value (docs/performance.md)."""
    name: str
    table: str
    method: str
    keys: Tuple[str, ...]

    def create_sql(self) -> str:
        return ("CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s USING %s (value) WHERE key IN (%s)"
                % (self.name, self.table, self.method, ", ".join("'%s'" % key for key in self.keys)))


# The tag keys that hold an idempotency key: the collection's clients (plugins/module_utils/mlflow.py) and the
# official-client examples (tests/lab/registration_load.py). Without these indexes the search for one key reads
# every tag row with that key: its time grows with the registry (docs/performance.md has the measurements).
# A new definition gets a new name (_v2, ...): the old index is then dropped as stale.
IDEMPOTENCY_TAGS = ("mlflow_ha.idempotency_key", "idempotency_key")
INDEX_PREFIX = "mlflow_ha_"
# Which indexes are this file's to create and drop: named mlflow_ha_<...>_v<N>, on the tables it indexes, and backing
# no constraint. Other mlflow_ha_* relations in the database (the marker tables of the pg_replication_check and
# pg_write_probe modules, with their primary keys) are never touched.
MANAGED_NAME = r"^mlflow_ha_.*_v[0-9]+$"
MANAGED_TABLES = {"model_version_tags", "tags"}
INDEXES = (
    Index("mlflow_ha_model_version_tags_idempotency_v1", "model_version_tags", "hash", IDEMPOTENCY_TAGS),
    Index("mlflow_ha_run_tags_idempotency_v1", "tags", "hash", IDEMPOTENCY_TAGS),
)


class SchemaError(Exception):
    """A database this MLflow cannot migrate (a message for a human, without the URI)."""


def read_uris(text: str) -> List[Tuple[Schema, str]]:
    """The schemas to look at, from stdin: the tracking store's URI, then optionally the authentication store's."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not 1 <= len(lines) <= 2:
        raise SchemaError("expected the tracking store's URI and optionally the authentication store's on stdin, "
                          "got %d line(s)" % len(lines))
    return list(zip((TRACKING, AUTH), lines))


def status(schema: Schema, current: Optional[str], heads: Sequence[str], empty: bool, known: bool,
           version: str) -> Dict[str, Any]:
    """One schema's state (pure). ``known``: the scripts know ``current`` (or it is None)."""
    if len(heads) != 1:
        raise SchemaError("MLflow %s's %s migration scripts have %d heads (%s), expected one"
                          % (version, schema.name, len(heads), ", ".join(heads) or "none"))
    if current is not None and not known:
        raise SchemaError("the %s database is at revision %s, which MLflow %s does not know: a newer MLflow "
                          "migrated it; install that version again, or restore a backup taken before the migration"
                          % (schema.name, current, version))
    return {"schema": schema.name, "current": current, "head": heads[0], "pending": current != heads[0],
            "empty": bool(empty)}


def decide(mode: str, schemas: Sequence[Dict[str, Any]]) -> Tuple[List[str], bool]:
    """Which schemas to migrate now, and whether a backup must come first (pure)."""
    pending = [s["schema"] for s in schemas if s["pending"]]
    needs_backup = any(s["pending"] and not s["empty"] for s in schemas)
    if mode == "check" or (mode == "migrate-unless-backup" and needs_backup):
        return [], needs_backup
    return pending, needs_backup


def mlflow_dir() -> str:
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise SchemaError("MLflow is not installed in this python (%s)" % sys.executable)
    return next(iter(spec.submodule_search_locations))


def probe(schema: Schema, uri: str, version: str, deadline_seconds: float = 60.0) -> Dict[str, Any]:
    """The schema's state in the database at ``uri`` (connects; retries a refused connection until the deadline)."""
    # Imported here: the unit tests run without them (MLflow's virtualenv has them).
    import sqlalchemy  # noqa: PLC0415
    from alembic.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415
    from alembic.script.revision import RevisionError  # noqa: PLC0415
    from alembic.util import CommandError  # noqa: PLC0415

    scripts = ScriptDirectory(os.path.join(mlflow_dir(), *schema.scripts))
    engine = sqlalchemy.create_engine(uri)
    deadline = time.monotonic() + deadline_seconds
    try:
        while True:
            try:
                with engine.connect() as connection:
                    current = MigrationContext.configure(
                        connection, opts={"version_table": schema.version_table}).get_current_revision()
                    tables = sqlalchemy.inspect(connection).get_table_names()
                break
            except sqlalchemy.exc.OperationalError as err:
                if time.monotonic() >= deadline:
                    raise SchemaError("the %s database did not answer within %d s: %s"
                                      % (schema.name, deadline_seconds, str(err.orig).strip())) from None
                time.sleep(2)
    finally:
        engine.dispose()
    try:
        known = current is None or scripts.get_revision(current) is not None
    except (CommandError, RevisionError):  # "Can't locate revision identified by ..."
        known = False
    # As MLflow's own test of an empty database: Alembic's bookkeeping does not count.
    empty = all(name.startswith("alembic_") for name in tables)
    return status(schema, current, scripts.get_heads(), empty, known, version)


def migrate(schema: Schema, uri: str) -> None:
    """What `mlflow db upgrade <uri>` and `python -m mlflow.server.auth db upgrade --url <uri>` run."""
    if schema is TRACKING:
        from mlflow.db import commands as tracking  # noqa: PLC0415 - MLflow only when a migration runs
        tracking.main(["upgrade", uri], prog_name="mlflow db", standalone_mode=False)
    else:
        from mlflow.server.auth.db.cli import commands as auth  # noqa: PLC0415 - as above
        auth.main(["upgrade", "--url", uri], prog_name="mlflow.server.auth db", standalone_mode=False)


def plan_indexes(existing: Mapping[str, bool], wanted: Sequence[Index]) -> List[Tuple[str, str, Optional[Index]]]:
    """What to do (pure): ``existing`` maps the database's mlflow_ha_* index names to whether they are valid.
    Returns (name, state, index to create or None): state is present, created, rebuilt (an invalid one: dropped,
    then created) or dropped (ours, no longer defined); in that order of statements: drops first."""
    wanted_names = {index.name for index in wanted}
    plan: List[Tuple[str, str, Optional[Index]]] = [
        (name, "dropped", None) for name in sorted(existing) if name not in wanted_names]
    for index in wanted:
        if index.name not in existing:
            plan.append((index.name, "created", index))
        elif not existing[index.name]:
            plan.append((index.name, "rebuilt", index))
        else:
            plan.append((index.name, "present", None))
    return plan


CHECK_STATES = {"created": "missing", "rebuilt": "invalid", "dropped": "stale", "present": "present"}


class Deadline:
    """Cancels the statement running on ``dbapi_connection`` after ``seconds`` (a cancel request: it reaches the
    server through PgBouncer too, where a session's SET lock_timeout would not stay on one server connection)."""

    def __init__(self, dbapi_connection: Any, seconds: float) -> None:
        self.connection = dbapi_connection
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = False
        self.fired = False
        self.timer: Optional[threading.Timer] = None

    def _cancel(self) -> None:
        with self.lock:
            if self.running:
                self.fired = True
                self.connection.cancel()

    def __enter__(self) -> "Deadline":
        self.running, self.fired = True, False
        self.timer = threading.Timer(self.seconds, self._cancel)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.running = False
        if self.timer is not None:
            self.timer.cancel()


def ensure_indexes(uri: str, apply: bool, seconds: float, wanted: Sequence[Index] = INDEXES) -> List[Dict[str, Any]]:
    """Look at (``apply`` False) or bring about plan_indexes' plan in the tracking database at ``uri``."""
    import sqlalchemy  # noqa: PLC0415 - as in probe

    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")  # CONCURRENTLY refuses a transaction
    try:
        if engine.dialect.name != "postgresql":  # the definitions are PostgreSQL's (hash, CONCURRENTLY)
            return []
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT c.relname, i.indisvalid, i.indrelid::regclass::text FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relname ~ %(pattern)s "
                "AND i.indrelid::regclass::text = ANY(%(tables)s) "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
                {"pattern": MANAGED_NAME, "tables": sorted({index.table for index in wanted} | MANAGED_TABLES)}
            ).fetchall()
            plan = plan_indexes({name: bool(valid) for name, valid, _table in rows}, wanted)
            tables = {name: table for name, _valid, table in rows}
            tables.update({index.name: index.table for index in wanted})
            report = []
            for name, state, index in plan:
                report.append({"name": name, "table": tables.get(name), "state": state if apply
                               else CHECK_STATES[state]})
                if not apply or state == "present":
                    continue
                statements = [] if state == "created" else ["DROP INDEX CONCURRENTLY IF EXISTS %s" % name]
                statements += [index.create_sql()] if index is not None else []
                for statement in statements:
                    deadline = Deadline(connection.connection.dbapi_connection, seconds)
                    try:
                        with deadline:
                            connection.exec_driver_sql(statement)
                    except sqlalchemy.exc.DBAPIError as err:
                        why = ("cancelled after %g s (mlflow_db_index_timeout): a session holding a lock on %s, or "
                               "a table larger than the time allows; an invalid index it may leave is built again "
                               "on the next run" % (seconds, tables.get(name)) if deadline.fired
                               else str(err.orig).strip())
                        raise SchemaError("index %s: %s: %s" % (name, statement.split(" ON ")[0], why)) from None
    finally:
        engine.dispose()
    return report


def run(mode: str, stdin: str, version: str,
        probe_schema: Optional[Callable[[Schema, str, str], Dict[str, Any]]] = None,
        migrate_schema: Optional[Callable[[Schema, str], None]] = None,
        index_seconds: Optional[float] = None,
        indexes: Optional[Callable[[str, bool, float], List[Dict[str, Any]]]] = None) -> Dict[str, Any]:
    """``index_seconds``: manage the collection's indexes (see the module's text) with that deadline per statement."""
    probe_schema = probe_schema or probe
    migrate_schema = migrate_schema or migrate
    indexes = indexes or ensure_indexes
    uris = read_uris(stdin)
    schemas = [probe_schema(schema, uri, version) for schema, uri in uris]
    to_migrate, needs_backup = decide(mode, schemas)
    migrated: List[str] = []
    for schema, uri in uris:
        if schema.name in to_migrate:
            migrate_schema(schema, uri)
            migrated.append(schema.name)
    index_report: List[Dict[str, Any]] = []
    tracking_at_head = not schemas[0]["pending"] or TRACKING.name in migrated
    if index_seconds is not None and tracking_at_head:
        index_report = indexes(uris[0][1], mode != "check", index_seconds)
    return {"mlflow_version": version, "schemas": schemas, "pending": [s["schema"] for s in schemas if s["pending"]],
            "touches_data": needs_backup, "backup_first": mode == "migrate-unless-backup" and needs_backup,
            "migrated": migrated, "indexes": index_report,
            "indexes_changed": [i["name"] for i in index_report if i["state"] in ("created", "rebuilt", "dropped")]}


def parse_args(argv: Sequence[str]) -> Optional[Tuple[str, Optional[float]]]:
    """(mode, index deadline in seconds or None), or None when the arguments are not MODE [--indexes SECONDS]."""
    if len(argv) not in (1, 3) or argv[0] not in MODES:
        return None
    if len(argv) == 1:
        return argv[0], None
    try:
        seconds = float(argv[2])
    except ValueError:
        return None
    return (argv[0], seconds) if argv[1] == "--indexes" and seconds > 0 else None


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args is None:
        print("usage: python mlflow_ha_schema.py {%s} [--indexes SECONDS] < URIs" % "|".join(MODES), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    try:
        version = importlib.metadata.version("mlflow")
        report = run(args[0], sys.stdin.read(), version, index_seconds=args[1])
    except SchemaError as err:
        print("mlflow_ha_schema: %s" % err, file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
