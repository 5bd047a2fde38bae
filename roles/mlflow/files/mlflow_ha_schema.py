"""MLflow's database schemas against the installed MLflow: which Alembic migrations are pending, and applying them.

The mlflow role runs this file with the MLflow virtualenv's python (`python -c <this file's text> MODE`), the database
URIs on stdin: the tracking store's on the first line, the authentication store's on the second when basic auth is
on. No password is in an argument or in the environment. MODE:
  check                  report only;
  migrate                migrate every schema that is behind, as `mlflow db upgrade` and the basic-auth app's
                         `db upgrade` do (they are what runs), and report;
  migrate-unless-backup  as `migrate` when no pending migration touches data (every schema at its head, or empty: a
                         fresh install); else migrate nothing and report needs_backup, so that the caller backs the
                         database up and then runs `migrate`.
The last line on stdout is the report, JSON:
  {"mlflow_version", "schemas": [{"schema", "current", "head", "pending", "empty"}], "pending": [names],
   "touches_data": a pending migration finds data, "backup_first": nothing was migrated for that, "migrated": [names]}
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
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

MODES = ("check", "migrate", "migrate-unless-backup")


@dataclass(frozen=True)
class Schema:
    name: str
    version_table: str
    scripts: Tuple[str, ...]  # the migration scripts' directory, below MLflow's package directory


TRACKING = Schema("tracking", "alembic_version", ("store", "db_migrations"))
AUTH = Schema("auth", "alembic_version_auth", ("server", "auth", "db", "migrations"))


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


def run(mode: str, stdin: str, version: str,
        probe_schema: Optional[Callable[[Schema, str, str], Dict[str, Any]]] = None,
        migrate_schema: Optional[Callable[[Schema, str], None]] = None) -> Dict[str, Any]:
    probe_schema = probe_schema or probe
    migrate_schema = migrate_schema or migrate
    uris = read_uris(stdin)
    schemas = [probe_schema(schema, uri, version) for schema, uri in uris]
    to_migrate, needs_backup = decide(mode, schemas)
    migrated: List[str] = []
    for schema, uri in uris:
        if schema.name in to_migrate:
            migrate_schema(schema, uri)
            migrated.append(schema.name)
    return {"mlflow_version": version, "schemas": schemas, "pending": [s["schema"] for s in schemas if s["pending"]],
            "touches_data": needs_backup, "backup_first": mode == "migrate-unless-backup" and needs_backup,
            "migrated": migrated}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in MODES:
        print("usage: python mlflow_ha_schema.py {%s} < URIs" % "|".join(MODES), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    try:
        version = importlib.metadata.version("mlflow")
        report = run(argv[0], sys.stdin.read(), version)
    except SchemaError as err:
        print("mlflow_ha_schema: %s" % err, file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
