"""tools/registry_seed.py and tools/registry_queries.py (docs/performance.md): the pure parts. Both were run against
PostgreSQL 15 with MLflow 3.17.2's schema; here nothing connects."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import load_program

TOOLS = Path(__file__).resolve().parents[2] / "tools"
seed = load_program(TOOLS / "registry_seed.py")
queries = load_program(TOOLS / "registry_queries.py")


def test_the_uri_is_one_line_and_refusals_do_not_show_it():
    assert seed.read_uri("\npostgresql+psycopg2://u:secret@h:5432/mlflow\n\n") == (
        "postgresql+psycopg2://u:secret@h:5432/mlflow")
    with pytest.raises(seed.SeedError, match="got 2 line") as err:
        seed.read_uri("postgresql://u:secret@a/x\npostgresql://u:secret@b/x")
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(("uri", "libpq"), [
    ("postgresql+psycopg2://u:p@h:5432/mlflow?sslmode=verify-full", "postgresql://u:p@h:5432/mlflow?sslmode=verify-full"),
    ("postgresql+psycopg://u:p@h/mlflow", "postgresql://u:p@h/mlflow"),
    ("postgresql://u:p@h/mlflow", "postgresql://u:p@h/mlflow")])
def test_sqlalchemy_uris_become_libpq_uris(uri, libpq):
    assert seed.libpq_uri(uri) == libpq


def test_only_postgresql_is_seeded():
    with pytest.raises(seed.SeedError, match="'sqlite'"):
        seed.libpq_uri("sqlite:///mlflow.db")


def test_seed_keys_are_32_hex_digits_per_model_and_number():
    key = seed.seed_key("bench", 7)
    assert len(key) == 32 and int(key, 16) >= 0
    assert key == seed.seed_key("bench", 7) != seed.seed_key("bench", 8) != seed.seed_key("other", 7)
    assert queries.MISSING_KEY not in {seed.seed_key("bench", n) for n in range(1000)}


def test_copy_text_escapes_what_copy_would_misread():
    assert seed.copy_text([("a\tb", None, 3), ("back\\slash\nnew", "", "x")]) == (
        "a\\tb\t\\N\t3\nback\\\\slash\\nnew\t\tx\n")


def test_rows_for_versions_with_runs_tag_both_with_the_key():
    rows = seed.rows_for("bench", 11, 12, 4, "s3://b/seed/", ["idempotency_key", "mlflow_ha.idempotency_key"], 10_000)
    assert [r[:2] for r in rows["model_versions"]] == [("bench", 11), ("bench", 12)]
    assert [len(r) for r in rows["model_versions"]] == [len(seed.VERSION_COLUMNS)] * 2
    assert [len(r) for r in rows["runs"]] == [len(seed.RUN_COLUMNS)] * 2
    assert rows["model_version_tags"][:2] == [("idempotency_key", seed.seed_key("bench", 11), "bench", 11),
                                              ("mlflow_ha.idempotency_key", seed.seed_key("bench", 11), "bench", 11)]
    run_id = rows["runs"][0][0]
    assert rows["model_versions"][0][8] == run_id and rows["tags"][0] == ("idempotency_key",
                                                                          seed.seed_key("bench", 11), run_id)
    assert rows["model_versions"][0][2] < rows["model_versions"][1][2] == 10_000
    assert rows["model_versions"][0][7] == "s3://b/seed/%s/artifacts/model" % run_id
    assert [t[0] for t in rows["tags"][:4]] == ["idempotency_key", "mlflow_ha.idempotency_key", "mlflow.runName",
                                                "mlflow.user"]


def test_rows_for_versions_without_runs():
    rows = seed.rows_for("bench", 1, 3, None, "s3://b/seed", ["idempotency_key"], 10_000)
    assert rows["runs"] == rows["tags"] == [] and len(rows["model_versions"]) == 3
    assert rows["model_versions"][0][8] == ""


def test_nothing_to_add_adds_nothing():
    assert all(not v for v in seed.rows_for("bench", 51, 50, 1, "s3://b", ["k"], 1).values())


def test_a_schema_with_a_column_the_seed_does_not_know_is_refused():
    seed.check_columns("model_versions", ["name", "version"], seed.VERSION_COLUMNS)
    with pytest.raises(seed.SeedError, match=r"model_versions has NOT NULL column\(s\) workspace"):
        seed.check_columns("model_versions", ["name", "workspace"], seed.VERSION_COLUMNS)


def test_the_searches_are_written_as_the_clients_write_them():
    assert queries.version_filter("bench", "idempotency_key", "ab") == "name = 'bench' and tags.idempotency_key = 'ab'"
    assert queries.version_filter("bench", "mlflow_ha.idempotency_key", "ab") == (
        "name = 'bench' and tags.`mlflow_ha.idempotency_key` = 'ab'")
    assert queries.run_filter("mlflow_ha.idempotency_key", "ab") == "tags.`mlflow_ha.idempotency_key` = 'ab'"


def test_summary_in_milliseconds():
    assert queries.summary([5.0, 1.0, 3.0, 2.0, 4.0]) == {"n": 5, "min": 1.0, "p50": 3.0, "p90": 5.0, "max": 5.0,
                                                          "mean": 3.0}


def test_plan_facts_sum_the_server_time_and_pages_and_name_the_tag_reads():
    plans = [{"plan": ["Limit  (cost=1..2 rows=1 width=8) (actual time=0.1..0.2 rows=1 loops=1)",
                       "  Buffers: shared hit=120 read=4",
                       "  ->  Seq Scan on model_version_tags  (cost=0.00..324.00 rows=1 width=18)",
                       "        Buffers: shared hit=100",
                       "Planning Time: 0.2 ms", "Execution Time: 1.5 ms"]},
             {"plan": ["Index Scan using mlflow_ha_run_tags_idempotency_v1 on tags  (cost=0.00..8.02 rows=1)",
                       "  Buffers: shared hit=3", "Execution Time: 0.25 ms"]}]
    assert queries.plan_facts(plans) == {
        "sql_ms": 1.75, "pages": 127,
        "tag_reads": ["Seq Scan on model_version_tags", "Index Scan using mlflow_ha_run_tags_idempotency_v1 on tags"]}
