"""Time the registry's idempotency-key searches at the registry's current size, as clients send them, and print JSON
(docs/performance.md). Run it with MLflow's python (.cache/mlflow-venv/bin/python).

    python tools/registry_queries.py --model bench < uri-file             # MLflow's SqlAlchemyStore, no server
    python tools/registry_queries.py --model bench --explain < uri-file   # and EXPLAIN ANALYZE of MLflow's SQL
    MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... \\
      python tools/registry_queries.py --model bench --tracking-uri https://vip   # the official client

The searches (each --repeat times after one warm-up call, a key that exists and one that does not):
  version_hit / version_miss  search_model_versions("name = '<model>' and tags.<tag> = '<key>'"): how
                              tests/lab/registration_load.py and the collection's clients find an earlier
                              registration after a failed create;
  run_hit / run_miss          search_runs([<experiment>], "tags.`<tag>` = '<key>'", order_by start_time ASC): how the
                              mlflow_model_version module finds its registration run again.
The existing key is the seeded one of the model's middle version (tools/registry_seed.py's seed_key). Without a
server the tracking store's URI (SQLAlchemy form) is read from --uri-file or stdin, never from the command line;
with --explain every SELECT MLflow sent for the hit searches is run again under EXPLAIN (ANALYZE, BUFFERS) and its
plan is in the JSON. Times are milliseconds per call: through the store that is MLflow's SQL and ORM; through a
server, add HTTP, TLS and the server's own work.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_seed import DEFAULT_TAG_KEY, read_uri, seed_key

MISSING_KEY = "0" * 32  # seed keys are SHA-256 prefixes: never this


def version_filter(model: str, tag: str, key: str) -> str:
    """The filter of the key search, as registration_load.py writes it (a dotted tag key goes in backticks)."""
    field = "`%s`" % tag if "." in tag else tag
    return "name = '%s' and tags.%s = '%s'" % (model, field, key)


def run_filter(tag: str, key: str) -> str:
    return "tags.`%s` = '%s'" % (tag, key)


def summary(samples_ms: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(samples_ms)
    return {"n": len(ordered), "min": round(ordered[0], 2), "p50": round(statistics.median(ordered), 2),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
            "max": round(ordered[-1], 2), "mean": round(statistics.fmean(ordered), 2)}


def timed(call: Callable[[], Any], repeat: int) -> Dict[str, Any]:
    result = call()  # warm-up: connections, caches, MLflow's lazy imports
    samples = []
    for _round in range(repeat):
        t0 = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - t0) * 1000)
    out = summary(samples)
    out["found"] = len(result)
    return out


class Recorder:
    """The statements MLflow sends while ``on`` (SQLAlchemy's before_cursor_execute)."""

    def __init__(self) -> None:
        self.on = False
        self.statements: List[tuple] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.on and statement.lstrip().upper().startswith("SELECT"):
            self.statements.append((statement, parameters))


def explain(engine: Any, statements: Sequence[tuple]) -> List[Dict[str, Any]]:
    plans = []
    with engine.connect() as connection:
        for statement, parameters in statements:
            rows = connection.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            plans.append({"sql": " ".join(statement.split()), "parameters": repr(parameters),
                          "plan": [row[0] for row in rows]})
    return plans


def plan_facts(plans: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """From EXPLAIN ANALYZE plans (pure): the statements' summed execution time in the server, the 8 kB pages they
    touched (shared buffers hit or read: the same on a busy machine as on an idle one), and how each read the tag
    tables (the plan lines naming model_version_tags or tags, without their costs)."""
    sql_ms = 0.0
    pages = 0
    tag_reads: List[str] = []
    for plan in plans:
        top = next((line for line in plan["plan"] if line.strip().startswith("Buffers:")), "")
        pages += sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", top))  # the top node's count is cumulative
        for line in plan["plan"]:
            text = line.strip().lstrip("-> ").strip()
            if text.startswith("Execution Time:"):
                sql_ms += float(text.split(":")[1].split()[0])
            elif "Scan" in text and re.search(r" on (model_version_tags|tags)\b", text):
                tag_reads.append(re.sub(r"\s+\(cost=.*$", "", text))
    return {"sql_ms": round(sql_ms, 3), "pages": pages, "tag_reads": tag_reads}


def with_store(args: argparse.Namespace, uri: str) -> Dict[str, Any]:
    import sqlalchemy  # noqa: PLC0415 - MLflow's virtualenv only
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore  # noqa: PLC0415
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore  # noqa: PLC0415

    registry = RegistryStore(uri)
    tracking = TrackingStore(uri, "s3://mlflow/seed")
    with registry.engine.connect() as connection:
        count = connection.execute(sqlalchemy.text("SELECT count(*), coalesce(max(version), 0) FROM model_versions "
                                                   "WHERE name = :n"), {"n": args.model}).one()
        experiment = connection.execute(sqlalchemy.text("SELECT experiment_id FROM experiments WHERE name = :n"),
                                        {"n": args.experiment}).scalar()
        indexes = [row[0] for row in connection.execute(sqlalchemy.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename IN ('model_version_tags', 'tags', 'model_versions', "
            "'runs') ORDER BY tablename, indexname"))]
    hit = seed_key(args.model, max(1, count[1] // 2))
    report: Dict[str, Any] = {"via": "store", "model": args.model, "versions": count[0],
                              "experiment_id": experiment, "tag_key": args.tag_key, "indexes": indexes,
                              "searches": {}}

    def versions(key: str) -> Callable[[], Any]:
        return lambda: registry.search_model_versions(version_filter(args.model, args.tag_key, key))

    def runs(key: str) -> Callable[[], Any]:
        return lambda: tracking.search_runs([str(experiment)], run_filter(args.tag_key, key), 1,
                                            order_by=["start_time ASC"])

    calls = {"version_hit": versions(hit), "version_miss": versions(MISSING_KEY)}
    if experiment is not None:
        calls.update(run_hit=runs(hit), run_miss=runs(MISSING_KEY))
    for name, call in calls.items():
        report["searches"][name] = timed(call, args.repeat)
    if args.explain:
        report["plans"] = {}
        for name, call in calls.items():
            store = registry if name.startswith("version") else tracking
            recorder = Recorder()
            sqlalchemy.event.listen(store.engine, "before_cursor_execute", recorder)
            recorder.on = True
            call()
            recorder.on = False
            sqlalchemy.event.remove(store.engine, "before_cursor_execute", recorder)
            plans = explain(store.engine, recorder.statements)
            report["searches"][name].update(plan_facts(plans))
            report["plans"][name] = plans
    return report


def with_client(args: argparse.Namespace) -> Dict[str, Any]:
    from mlflow import MlflowClient  # noqa: PLC0415 - MLflow's virtualenv only

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    middle = args.versions // 2 if args.versions else 1
    hit = seed_key(args.model, max(1, middle))
    report: Dict[str, Any] = {"via": "client", "tracking_uri": args.tracking_uri, "model": args.model,
                              "versions": args.versions, "tag_key": args.tag_key, "searches": {}}

    def versions(key: str) -> Callable[[], Any]:
        return lambda: client.search_model_versions(version_filter(args.model, args.tag_key, key))

    def runs(key: str) -> Callable[[], Any]:
        return lambda: client.search_runs([experiment.experiment_id], run_filter(args.tag_key, key),
                                          max_results=1, order_by=["start_time ASC"])

    calls = {"version_hit": versions(hit), "version_miss": versions(MISSING_KEY)}
    if experiment is not None:
        calls.update(run_hit=runs(hit), run_miss=runs(MISSING_KEY))
    for name, call in calls.items():
        report["searches"][name] = timed(call, args.repeat)
    return report


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--experiment", default="registry-seed")
    parser.add_argument("--tag-key", default=DEFAULT_TAG_KEY)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--uri-file", default="-", help="the tracking store's URI (default: stdin)")
    parser.add_argument("--tracking-uri", help="time through this server with the official client instead")
    parser.add_argument("--versions", type=int, default=0,
                        help="with --tracking-uri: how many versions the model has (to pick an existing key)")
    parser.add_argument("--explain", action="store_true", help="store only: EXPLAIN ANALYZE MLflow's SELECTs")
    parser.add_argument("--label", help="a free-form label copied into the JSON (e.g. 'before', 'after')")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    if args.tracking_uri:
        report = with_client(args)
    else:
        text = sys.stdin.read() if args.uri_file == "-" else Path(args.uri_file).read_text(encoding="utf-8")
        report = with_store(args, read_uri(text))
    report["label"] = args.label
    report["repeat"] = args.repeat
    print(json.dumps(report, indent=None if not args.explain else 1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
