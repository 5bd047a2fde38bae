"""The mlflow role's schema check and migration (roles/mlflow/files/mlflow_ha_schema.py): what is pending, when a
backup must come first, that only pending schemas are migrated, and what the role passes it. The database and MLflow
are fakes here; the file was run against SQLite and PostgreSQL 15 with MLflow 3.17.2 (docs/notes/pgbackrest-plan.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from fakes import load_program

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "mlflow"
schema = load_program(ROLE / "files" / "mlflow_ha_schema.py")

TRACKING_URI = "postgresql+psycopg2://mlflow:secret@10.0.0.40:5000/mlflow?sslmode=verify-full"
AUTH_URI = "postgresql+psycopg2://mlflow:secret@10.0.0.40:5000/mlflow_auth?sslmode=verify-full"


def state(name, current, head="h2", empty=False):
    return {"schema": name, "current": current, "head": head, "pending": current != head, "empty": empty}


class FakeDatabase:
    """The probe and the migration as the script calls them: states by schema name, migrations recorded."""

    def __init__(self, **states):
        self.states = states
        self.migrated = []
        self.probed = []

    def probe(self, which, uri, version):
        self.probed.append((which.name, uri))
        return self.states[which.name]

    def migrate(self, which, uri):
        self.migrated.append((which.name, uri))


def run(mode, database, stdin=TRACKING_URI + "\n" + AUTH_URI + "\n"):
    return schema.run(mode, stdin, "3.17.2", database.probe, database.migrate)


def test_the_uris_come_from_stdin_tracking_first():
    uris = schema.read_uris(TRACKING_URI + "\n\n" + AUTH_URI + "\n")
    assert [(s.name, s.version_table, uri) for s, uri in uris] == [
        ("tracking", "alembic_version", TRACKING_URI), ("auth", "alembic_version_auth", AUTH_URI)]
    assert [pair[0].name for pair in schema.read_uris(TRACKING_URI)] == ["tracking"]


@pytest.mark.parametrize("text", ["", "\n", "a\nb\nc\n"])
def test_anything_but_one_or_two_uris_is_refused_without_showing_them(text):
    with pytest.raises(schema.SchemaError, match="on stdin, got") as err:
        schema.read_uris(text)
    assert "secret" not in str(err.value)


def test_a_schema_at_its_head_is_not_pending():
    assert schema.status(schema.TRACKING, "h2", ["h2"], False, True, "3.17.2")["pending"] is False
    assert schema.status(schema.AUTH, None, ["h2"], True, True, "3.17.2") == state("auth", None, empty=True)


def test_a_revision_the_scripts_do_not_know_is_refused():
    with pytest.raises(schema.SchemaError, match=r"tracking database is at revision 0123456789ab, which MLflow "
                                                 r"3\.17\.2 does not know: a newer MLflow migrated it"):
        schema.status(schema.TRACKING, "0123456789ab", ["h2"], False, False, "3.17.2")


def test_scripts_with_several_heads_are_refused():
    with pytest.raises(schema.SchemaError, match="2 heads"):
        schema.status(schema.TRACKING, "h1", ["h2", "h3"], False, True, "3.17.2")


def test_nothing_pending_migrates_nothing_and_needs_no_backup():
    for mode in schema.MODES:
        database = FakeDatabase(tracking=state("tracking", "h2"), auth=state("auth", "h2"))
        report = run(mode, database)
        assert report["migrated"] == [] and report["pending"] == []
        assert report["touches_data"] is False and report["backup_first"] is False
        assert database.migrated == []


def test_migrate_applies_only_the_pending_schemas():
    database = FakeDatabase(tracking=state("tracking", "h1"), auth=state("auth", "h2"))
    report = run("migrate", database)
    assert database.migrated == [("tracking", TRACKING_URI)]
    assert report["migrated"] == ["tracking"] and report["touches_data"] is True and report["backup_first"] is False


def test_a_pending_migration_over_data_stops_for_a_backup():
    database = FakeDatabase(tracking=state("tracking", "h2"), auth=state("auth", "h1"))
    report = run("migrate-unless-backup", database)
    assert database.migrated == []
    assert report["backup_first"] is True and report["pending"] == ["auth"] and report["migrated"] == []


def test_a_fresh_install_is_migrated_at_once_without_a_backup():
    database = FakeDatabase(tracking=state("tracking", None, empty=True), auth=state("auth", None, empty=True))
    report = run("migrate-unless-backup", database)
    assert [pair[0] for pair in database.migrated] == ["tracking", "auth"]
    assert report["backup_first"] is False and report["touches_data"] is False


def test_one_schema_with_data_is_enough_to_back_up_first():
    # The authentication store of an old site without Alembic's table (MLflow < 3.6): not empty, revision None.
    database = FakeDatabase(tracking=state("tracking", None, empty=True), auth=state("auth", None))
    report = run("migrate-unless-backup", database)
    assert database.migrated == [] and report["backup_first"] is True


def test_check_migrates_nothing_but_says_what_a_migration_would_do():
    database = FakeDatabase(tracking=state("tracking", "h1"))
    report = run("check", database, stdin=TRACKING_URI)
    assert database.migrated == [] and report["touches_data"] is True and report["backup_first"] is False
    assert database.probed == [("tracking", TRACKING_URI)]


def test_main_prints_the_report_as_its_last_line(monkeypatch, capsys):
    database = FakeDatabase(tracking=state("tracking", "h2"))
    monkeypatch.setattr(schema, "probe", database.probe)
    monkeypatch.setattr(schema, "migrate", database.migrate)
    monkeypatch.setattr(schema.importlib.metadata, "version", lambda name: "3.17.2")
    monkeypatch.setattr(schema.sys, "stdin", type("Stdin", (), {"read": staticmethod(lambda: TRACKING_URI)})())
    assert schema.main(["check"]) == 0
    assert database.probed == [("tracking", TRACKING_URI)]
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["mlflow_version"] == "3.17.2" and report["pending"] == []


def test_main_refuses_an_unknown_mode(capsys):
    assert schema.main(["upgrade"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_main_reports_a_schema_error_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(schema.importlib.metadata, "version", lambda name: "3.17.2")
    monkeypatch.setattr(schema.sys, "stdin", type("Stdin", (), {"read": staticmethod(lambda: "")})())
    assert schema.main(["check"]) == 1
    assert capsys.readouterr().err.startswith("mlflow_ha_schema: expected the tracking store's URI")


# ---------------------------------------------------------------------------------------------------------------
# What the role runs


def tasks(name):
    return yaml.safe_load((ROLE / "tasks" / name).read_text())


def test_the_role_passes_the_uris_on_stdin_and_the_file_as_the_program():
    check = next(t for t in tasks("run.yml") if "_mlflow_schema_program" in json.dumps(t))
    command = check["ansible.builtin.command"]
    assert "_mlflow_migrate_mode" in command["argv"] and "-c" in command["argv"]
    assert "stdin" in command and check["no_log"] is True and check["run_once"] is True
    variables = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert "mlflow_ha_schema.py" in variables["_mlflow_schema_program"]
    assert "migrate-unless-backup" in variables["_mlflow_migrate_mode"]


def test_the_backup_comes_before_the_migration_that_follows_it():
    steps = tasks("backup_before_migration.yml")
    names = [json.dumps(step) for step in steps]
    backup = next(i for i, text in enumerate(names) if "backup_now" in text)
    migrate = next(i for i, text in enumerate(names) if "_mlflow_schema_program" in text)
    record = next(i for i, text in enumerate(names) if "mlflow_pre_migration_backup_log" in text)
    assert backup < record < migrate
    assert steps[migrate]["no_log"] is True


# ---------------------------------------------------------------------------------------------------------------
# The collection's indexes (docs/performance.md)


def index(name, table="model_version_tags"):
    return schema.Index(name, table, "hash", ("mlflow_ha.idempotency_key", "idempotency_key"))


def test_each_index_is_partial_on_the_idempotency_tags_and_built_concurrently():
    assert [i.name for i in schema.INDEXES] == ["mlflow_ha_model_version_tags_idempotency_v1",
                                                "mlflow_ha_run_tags_idempotency_v1"]
    assert {i.table for i in schema.INDEXES} == {"model_version_tags", "tags"}
    assert all(i.name.startswith(schema.INDEX_PREFIX) and len(i.name) <= 63 for i in schema.INDEXES)
    assert schema.INDEXES[0].create_sql() == (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS mlflow_ha_model_version_tags_idempotency_v1 ON model_version_tags "
        "USING hash (value) WHERE key IN ('mlflow_ha.idempotency_key', 'idempotency_key')")


def test_missing_indexes_are_created_and_valid_ones_left_alone():
    wanted = [index("mlflow_ha_a_v1"), index("mlflow_ha_b_v1", "tags")]
    assert schema.plan_indexes({}, wanted) == [("mlflow_ha_a_v1", "created", wanted[0]),
                                               ("mlflow_ha_b_v1", "created", wanted[1])]
    assert schema.plan_indexes({"mlflow_ha_a_v1": True, "mlflow_ha_b_v1": True}, wanted) == [
        ("mlflow_ha_a_v1", "present", None), ("mlflow_ha_b_v1", "present", None)]


def test_an_invalid_index_left_by_a_cancelled_build_is_built_again():
    wanted = [index("mlflow_ha_a_v1")]
    assert schema.plan_indexes({"mlflow_ha_a_v1": False}, wanted) == [("mlflow_ha_a_v1", "rebuilt", wanted[0])]


def test_an_index_of_ours_no_longer_defined_is_dropped_first():
    wanted = [index("mlflow_ha_a_v2")]
    assert schema.plan_indexes({"mlflow_ha_a_v1": True}, wanted) == [
        ("mlflow_ha_a_v1", "dropped", None), ("mlflow_ha_a_v2", "created", wanted[0])]


class FakeIndexes:
    def __init__(self, states):
        self.states = states
        self.calls = []

    def __call__(self, uri, apply, seconds):
        self.calls.append((uri, apply, seconds))
        return [{"name": name, "table": "t", "state": state} for name, state in self.states]


def test_indexes_follow_the_migration_and_only_what_changed_is_reported_changed():
    database = FakeDatabase(tracking=state("tracking", "h1"), auth=state("auth", "h2"))
    indexes = FakeIndexes([("mlflow_ha_a_v1", "created"), ("mlflow_ha_b_v1", "present")])
    report = schema.run("migrate", TRACKING_URI + "\n" + AUTH_URI, "3.17.2", database.probe, database.migrate,
                        index_seconds=300, indexes=indexes)
    assert database.migrated == [("tracking", TRACKING_URI)]
    assert indexes.calls == [(TRACKING_URI, True, 300)]
    assert report["indexes_changed"] == ["mlflow_ha_a_v1"] and len(report["indexes"]) == 2


def test_no_index_is_touched_without_the_option_or_before_the_backup():
    for index_seconds, mode, current in ((None, "migrate", "h1"), (300, "migrate-unless-backup", "h1")):
        database = FakeDatabase(tracking=state("tracking", current))
        indexes = FakeIndexes([("mlflow_ha_a_v1", "created")])
        report = schema.run(mode, TRACKING_URI, "3.17.2", database.probe, database.migrate,
                            index_seconds=index_seconds, indexes=indexes)
        assert indexes.calls == [] and report["indexes"] == [] and report["indexes_changed"] == []


def test_check_only_looks_at_the_indexes():
    database = FakeDatabase(tracking=state("tracking", "h2"))
    indexes = FakeIndexes([("mlflow_ha_a_v1", "missing")])
    report = schema.run("check", TRACKING_URI, "3.17.2", database.probe, database.migrate, index_seconds=60,
                        indexes=indexes)
    assert indexes.calls == [(TRACKING_URI, False, 60)] and report["indexes_changed"] == []
    assert schema.CHECK_STATES == {"created": "missing", "rebuilt": "invalid", "dropped": "stale",
                                   "present": "present"}


@pytest.mark.parametrize(("argv", "parsed"), [
    (["migrate"], ("migrate", None)), (["migrate", "--indexes", "300"], ("migrate", 300.0)),
    (["check", "--indexes", "0.5"], ("check", 0.5)), (["migrate", "--indexes", "0"], None),
    (["migrate", "--indexes", "soon"], None), (["migrate", "--index", "300"], None), (["migrate", "300"], None),
    (["upgrade", "--indexes", "300"], None)])
def test_the_arguments_are_a_mode_and_optionally_the_index_deadline(argv, parsed):
    assert schema.parse_args(argv) == parsed


class FakeConnection:
    def __init__(self):
        self.cancels = 0

    def cancel(self):
        self.cancels += 1


def test_the_deadline_cancels_only_a_statement_still_running():
    connection = FakeConnection()
    with schema.Deadline(connection, 0.01) as deadline:
        time.sleep(0.2)
    assert deadline.fired and connection.cancels == 1
    with schema.Deadline(connection, 0.01) as deadline:
        pass
    time.sleep(0.05)
    assert not deadline.fired and connection.cancels == 1


def test_both_migration_tasks_pass_the_index_switch_and_report_index_changes():
    variables = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["mlflow_db_indexes"] is True and defaults["mlflow_db_index_timeout"] > 0
    assert "'--indexes', mlflow_db_index_timeout" in variables["_mlflow_schema_index_args"]
    assert "indexes_changed" in variables["_mlflow_schema_changed"]
    for name in ("run.yml", "backup_before_migration.yml"):
        task = next(t for t in tasks(name) if "_mlflow_schema_program" in json.dumps(t))
        assert "_mlflow_schema_index_args" in task["ansible.builtin.command"]["argv"]
        assert "_mlflow_schema_changed" in task["changed_when"]
