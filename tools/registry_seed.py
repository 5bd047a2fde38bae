"""Grow one registered model to N model versions by writing MLflow's tables directly (COPY), for measuring how the
registry's searches behave with its size (docs/performance.md). Never point it at a registry users rely on: the rows
it writes are real versions and runs to MLflow.

    .cache/mlflow-venv/bin/python tools/registry_seed.py --model bench --versions 10000 < uri-file
    .cache/mlflow-venv/bin/python tools/registry_seed.py --uri-file /path/to/uri --model bench --versions 50000

The tracking store's URI (SQLAlchemy form, e.g. postgresql+psycopg2://mlflow:<password>@host:5432/mlflow) is read
from --uri-file or stdin, never from the command line. The schema must exist (`mlflow db upgrade`). Each version gets
the tag(s) --tag-key (default ``idempotency_key``, what tests/lab/registration_load.py writes) with the value
``seed_key(model, number)`` (32 hex digits, as the collection's keys), and, unless --no-runs, a finished run in the
experiment --experiment tagged the same way (plus mlflow.runName and mlflow.user, as MLflow tags every run), the
version's run, as a registration makes them. Versions
are added after the model's highest one until it has N (a second call with a larger N adds the difference). Prints
one JSON line: what was added and how long it took.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

DEFAULT_TAG_KEY = "idempotency_key"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"

# The columns written, per table. A NOT NULL column without a default that is missing here means MLflow's schema
# changed: the seed refuses (check_columns) rather than guess.
RUN_COLUMNS = ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
               "start_time", "end_time", "source_version", "lifecycle_stage", "artifact_uri", "experiment_id")
RUN_TAG_COLUMNS = ("key", "value", "run_uuid")
VERSION_COLUMNS = ("name", "version", "creation_time", "last_updated_time", "description", "user_id",
                   "current_stage", "source", "run_id", "status", "status_message", "run_link")
VERSION_TAG_COLUMNS = ("key", "value", "name", "version")
TABLES = {"runs": RUN_COLUMNS, "tags": RUN_TAG_COLUMNS, "model_versions": VERSION_COLUMNS,
          "model_version_tags": VERSION_TAG_COLUMNS}


class SeedError(Exception):
    """Something a human must fix (a message without the URI)."""


def read_uri(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise SeedError("expected one tracking-store URI, got %d line(s)" % len(lines))
    return lines[0]


def libpq_uri(uri: str) -> str:
    """The SQLAlchemy URI as libpq takes it: ``postgresql+psycopg2://`` (or ``+psycopg``) becomes ``postgresql://``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise SeedError("only PostgreSQL tracking stores are seeded (got a %r URI)" % scheme)
    return "postgresql://" + rest


def seed_key(model: str, number: int) -> str:
    """The idempotency key of seeded version ``number`` of ``model`` (tools/registry_queries.py finds it again)."""
    return hashlib.sha256(("mlflow_ha/seed/%s/%d" % (model, number)).encode("utf-8")).hexdigest()[:32]


def seed_run_id(model: str, number: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "mlflow_ha/seed/%s/%d" % (model, number)).hex


def check_columns(table: str, required: Iterable[str], written: Sequence[str]) -> None:
    """``required``: the table's NOT NULL columns without a default."""
    missing = sorted(set(required) - set(written))
    if missing:
        raise SeedError("MLflow's table %s has NOT NULL column(s) %s that the seed does not write: this MLflow's "
                        "schema is not the one the seed knows (3.17)" % (table, ", ".join(missing)))


def copy_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows in COPY's text format (tab-separated, \\N for NULL, backslash escapes)."""
    def field(value: Any) -> str:
        if value is None:
            return "\\N"
        return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return "".join("\t".join(field(v) for v in row) + "\n" for row in rows)


def rows_for(model: str, first: int, last: int, experiment_id: Optional[int], artifact_root: str,
             tag_keys: Sequence[str], now_ms: int) -> Dict[str, List[Tuple[Any, ...]]]:
    """The rows of versions ``first``..``last`` (and their runs when ``experiment_id`` is set), by table (pure)."""
    out: Dict[str, List[Tuple[Any, ...]]] = {table: [] for table in TABLES}
    for number in range(first, last + 1):
        key = seed_key(model, number)
        stamp = now_ms - (last - number)  # older versions were made earlier, one millisecond apart
        run_id = seed_run_id(model, number) if experiment_id is not None else None
        source = "%s/%s/artifacts/model" % (artifact_root.rstrip("/"), run_id or "seed-%d" % number)
        if run_id is not None:
            run_name = "seed-%s-%d" % (model, number)
            out["runs"].append((run_id, run_name, "LOCAL", "registry_seed", "", "seed", "FINISHED", stamp, stamp,
                                "", "active", source.rsplit("/", 1)[0], experiment_id))
            out["tags"].extend((tag, key, run_id) for tag in tag_keys)
            # The tags MLflow's create_run adds to every run: the run-tag table holds several rows per run.
            out["tags"].extend(((RUN_NAME_TAG, run_name, run_id), (USER_TAG, "seed", run_id)))
        out["model_versions"].append((model, number, stamp, stamp, "", "seed", "None", source, run_id or "",
                                      "READY", "", ""))
        out["model_version_tags"].extend((tag, key, model, number) for tag in tag_keys)
    return out


def required_columns(cursor: Any, table: str) -> List[str]:
    cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                   "AND table_name = %s AND is_nullable = 'NO' AND column_default IS NULL", (table,))
    return [row[0] for row in cursor.fetchall()]


def ensure_experiment(cursor: Any, name: str, artifact_root: str, now_ms: int) -> int:
    cursor.execute("SELECT experiment_id FROM experiments WHERE name = %s", (name,))
    row = cursor.fetchone()
    if row:
        return int(row[0])
    cursor.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, "
                   "last_update_time) VALUES (%s, %s, 'active', %s, %s) RETURNING experiment_id",
                   (name, artifact_root, now_ms, now_ms))
    return int(cursor.fetchone()[0])


def seed(connection: Any, model: str, versions: int, experiment: Optional[str], tag_keys: Sequence[str],
         artifact_root: str) -> Dict[str, Any]:
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    with connection.cursor() as cursor:
        for table, written in TABLES.items():
            if table in ("runs", "tags") and experiment is None:
                continue
            check_columns(table, required_columns(cursor, table), written)
        cursor.execute("INSERT INTO registered_models (name, creation_time, last_updated_time, description) "
                       "VALUES (%s, %s, %s, '') ON CONFLICT DO NOTHING", (model, now_ms, now_ms))
        cursor.execute("SELECT coalesce(max(version), 0) FROM model_versions WHERE name = %s", (model,))
        highest = int(cursor.fetchone()[0])
        experiment_id = ensure_experiment(cursor, experiment, artifact_root, now_ms) if experiment else None
        rows = rows_for(model, highest + 1, versions, experiment_id, artifact_root, tag_keys, now_ms)
        for table in ("runs", "tags", "model_versions", "model_version_tags"):  # referenced rows first
            if rows[table]:
                cursor.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(TABLES[table])),
                                   io.StringIO(copy_text(rows[table])))
        cursor.execute("UPDATE registered_models SET last_updated_time = %s WHERE name = %s", (now_ms, model))
    connection.commit()
    connection.autocommit = True
    with connection.cursor() as cursor:  # the planner's statistics as autovacuum would leave them after a while
        for table in TABLES:
            cursor.execute("ANALYZE %s" % table)
    return {"model": model, "versions": max(highest, versions), "added": len(rows["model_versions"]),
            "runs_added": len(rows["runs"]), "experiment_id": experiment_id, "tag_keys": list(tag_keys),
            "seconds": round(time.monotonic() - t0, 3)}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--uri-file", default="-", help="file with the tracking store's URI (default: stdin)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--versions", type=int, required=True, help="how many versions the model has afterwards")
    parser.add_argument("--experiment", default="registry-seed", help="experiment of the seeded runs")
    parser.add_argument("--no-runs", action="store_true", help="versions only, without runs")
    parser.add_argument("--tag-key", action="append", dest="tag_keys",
                        help="tag key holding the idempotency key (repeatable; default %s)" % DEFAULT_TAG_KEY)
    parser.add_argument("--artifact-root", default="s3://mlflow/seed")
    args = parser.parse_args(argv)
    if args.versions < 0:
        parser.error("--versions must be >= 0")
    args.tag_keys = args.tag_keys or [DEFAULT_TAG_KEY]
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    import psycopg2  # noqa: PLC0415 - the unit tests run without it (MLflow's virtualenv has it)

    try:
        text = sys.stdin.read() if args.uri_file == "-" else open(args.uri_file, encoding="utf-8").read()
        connection = psycopg2.connect(libpq_uri(read_uri(text)))
        try:
            report = seed(connection, args.model, args.versions, None if args.no_runs else args.experiment,
                          args.tag_keys, args.artifact_root)
        finally:
            connection.close()
    except (SeedError, OSError, psycopg2.Error) as err:
        print("registry_seed: %s" % str(err).strip(), file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
