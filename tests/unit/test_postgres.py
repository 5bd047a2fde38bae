"""The replication check's database logic, against fake connections on a fake clock: no server, no sleeping."""

from __future__ import annotations

import pytest
from fakes import FakeDbError, FakePgConnection

from ansible_collections.mlops.mlflow_ha.plugins.module_utils import postgres
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.postgres import (
    STANDBYS_SQL,
    Endpoint,
    PostgresCheckError,
    ReplicationChecker,
    connection_kwargs,
    parse_endpoint,
    quote_table,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules import pg_replication_check

MARKER = "0b6c1c7e-5d2e-4d55-9c1a-4f0f6f2f4e61"
STANDBY_ROWS = [("pg2", "10.0.0.22", "streaming", "sync", 0, None),
                ("pg3", "10.0.0.23", "streaming", "async", 20971520, 0.25)]


class NeverTimer:
    """A commit guard that never fires (the commit returned in time)."""

    def __init__(self, interval, function):
        self.interval, self.function, self.daemon, self.cancelled = interval, function, False, False

    def start(self):
        pass

    def cancel(self):
        self.cancelled = True


class FiringTimer(NeverTimer):
    """A commit guard whose time is up at once: the commit outlasted it."""

    def start(self):
        self.function()


def primary_conn(clock, rows=None, fail_on=None):
    handlers = [
        ("CREATE TABLE IF NOT EXISTS", []),
        ("INSERT INTO", [("2030-01-01 10:00:00.123+00",)]),
        ("DELETE FROM", ([], 3)),
        ("FROM pg_stat_replication", list(STANDBY_ROWS if rows is None else rows)),
    ]
    if fail_on:
        handlers.insert(0, (fail_on, FakeDbError("permission denied for schema public")))
    return FakePgConnection(clock, handlers)


def replica_conn(clock, answers):
    """A replica whose marker SELECT answers from ``answers`` in turn (the last repeats)."""
    return replica_factory(clock, answers)()


def replica_factory(clock, answers):
    """Fresh connections to one replica (as after a reconnect), sharing one queue of SELECT answers."""
    queue = list(answers)

    def select(sql, params):
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return lambda: FakePgConnection(clock, [("SELECT 1 FROM", select)])


class Connector:
    """psycopg2.connect stand-in: per host:port a connection, or an error to raise; records every call."""

    def __init__(self, clock, by_endpoint):
        self.clock = clock
        self.by_endpoint = by_endpoint
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        self.clock.t += 0.005
        target = self.by_endpoint["%s:%d" % (kwargs["host"], kwargs["port"])]
        if callable(target) and not isinstance(target, FakePgConnection):
            target = target()
        if isinstance(target, BaseException):
            raise target
        return target


def checker(clock, connector, replicas=("10.0.0.22:5432", "10.0.0.23:5432"), timer=NeverTimer, **kw):
    return ReplicationChecker(parse_endpoint("10.0.0.100:5000"), [parse_endpoint(r) for r in replicas],
                              "checker", "pw", timeout=kw.pop("timeout", 10.0), poll_interval=0.5, connect=connector,
                              clock=clock, new_marker=lambda: MARKER, timer=timer, errors=(FakeDbError,), **kw)


class TestEndpoints:
    @pytest.mark.parametrize("value, expected", [
        ("10.0.0.22:5432", Endpoint("10.0.0.22", 5432)),
        ("pg2", Endpoint("pg2", 5432)),
        ("[fd00::22]:6432", Endpoint("fd00::22", 6432)),
        ({"host": "10.0.0.23", "port": "5433", "name": "pg3"}, Endpoint("10.0.0.23", 5433, "pg3")),
        ({"host": "10.0.0.23"}, Endpoint("10.0.0.23", 5432)),
    ])
    def test_parse(self, value, expected):
        assert parse_endpoint(value) == expected

    @pytest.mark.parametrize("value", ["", "a:b:c", {"port": 5432}, {"host": "x", "port": "five"}, 5432])
    def test_parse_errors(self, value):
        with pytest.raises(ValueError):
            parse_endpoint(value)

    def test_labels(self):
        assert Endpoint("10.0.0.1", 5000).label == "10.0.0.1:5000"
        assert Endpoint("fd00::1", 5000).label == "[fd00::1]:5000"
        assert Endpoint("10.0.0.1", 5000, "vip").label == "vip"

    def test_table_names_are_checked_then_quoted(self):
        assert quote_table("mlflow_ha_replication_check") == '"mlflow_ha_replication_check"'
        assert quote_table("ops.marker") == '"ops"."marker"'
        for bad in ('x"; DROP TABLE users; --', "Marker", "a.b.c", "", "1abc"):
            with pytest.raises(ValueError):
                quote_table(bad)


class TestConnectionParameters:
    def test_keepalives_timeouts_and_read_write_for_the_primary(self):
        kw = connection_kwargs(Endpoint("vip", 5000), "checker", "pw", "postgres", 1.2, read_write=True)
        assert kw["keepalives"] == 1 and kw["keepalives_idle"] == 5 and kw["keepalives_interval"] == 2
        assert kw["keepalives_count"] == 3 and kw["tcp_user_timeout"] == 11000
        assert kw["connect_timeout"] == 2, "libpq's minimum"
        assert kw["target_session_attrs"] == "read-write"
        assert kw["options"] == "-c statement_timeout=10000"
        expected = ("vip", 5000, "postgres", "checker", "pw")
        assert (kw["host"], kw["port"], kw["dbname"], kw["user"], kw["password"]) == expected

    def test_replicas_take_any_session_and_timeouts_round_up(self):
        kw = connection_kwargs(Endpoint("pg2", 5432), None, None, "app", 7.1)
        assert "target_session_attrs" not in kw and "user" not in kw and "password" not in kw
        assert kw["connect_timeout"] == 8


class TestCheck:
    def test_marker_written_in_one_transaction_and_seen_everywhere(self, clock):
        primary = primary_conn(clock)
        pg2 = replica_conn(clock, [[(1,)]])
        pg3 = replica_factory(clock, [FakeDbError('relation "mlflow_ha_replication_check" does not exist'), [],
                                      [(1,)]])
        connector = Connector(clock, {"10.0.0.100:5000": primary, "10.0.0.22:5432": pg2, "10.0.0.23:5432": pg3})
        result = checker(clock, connector).run()

        statements = [sql.split(" (")[0] for sql, _p in primary.executed]
        assert statements[:3] == ['CREATE TABLE IF NOT EXISTS "mlflow_ha_replication_check"',
                                  'INSERT INTO "mlflow_ha_replication_check"',
                                  'DELETE FROM "mlflow_ha_replication_check" WHERE written_at < now() - %s::interval']
        assert primary.executed[1][1] == (MARKER,)
        assert primary.executed[2][1] == ("1 day",)
        assert primary.commits == 1 and primary.closed
        assert result.marker == MARKER and result.written_at == "2030-01-01 10:00:00.123+00"
        assert result.deleted_markers == 3 and result.changed and not result.commit_cancelled

        r2, r3 = result.replicas
        assert (r2.replica, r2.visible, r2.polls, r2.last_error) == ("10.0.0.22:5432", True, 1, None)
        assert (r3.visible, r3.polls, r3.last_error) == (True, 3, None)
        assert 0 < r2.seconds_to_visible < r3.seconds_to_visible < 2
        assert result.failure(10.0) is None
        assert pg2.autocommit and pg2.closed

        assert [s.to_dict() for s in result.standbys] == [
            {"application_name": "pg2", "client_addr": "10.0.0.22", "state": "streaming", "sync_state": "sync",
             "replay_lag_bytes": 0, "replay_lag_seconds": None},
            {"application_name": "pg3", "client_addr": "10.0.0.23", "state": "streaming", "sync_state": "async",
             "replay_lag_bytes": 20971520, "replay_lag_seconds": 0.25}]
        assert any(sql == STANDBYS_SQL for sql, _p in primary.executed)

    def test_every_connection_has_keepalives_and_connect_timeout(self, clock):
        connector = Connector(clock, {"10.0.0.100:5000": primary_conn(clock),
                                      "10.0.0.22:5432": replica_conn(clock, [[(1,)]]),
                                      "10.0.0.23:5432": replica_conn(clock, [[(1,)]])})
        checker(clock, connector, connect_timeout=3).run()
        assert len(connector.calls) == 3
        for call in connector.calls:
            assert call["keepalives"] == 1 and call["connect_timeout"] == 3 and call["tcp_user_timeout"] > 0
        assert connector.calls[0]["target_session_attrs"] == "read-write"
        assert all("target_session_attrs" not in c for c in connector.calls[1:])

    def test_replicas_that_never_see_the_marker_are_named_with_their_last_error(self, clock):
        connector = Connector(clock, {
            "10.0.0.100:5000": primary_conn(clock),
            "10.0.0.22:5432": replica_conn(clock, [[]]),
            "10.0.0.23:5432": FakeDbError('connection to server at "10.0.0.23", port 5432 failed: Connection '
                                          'refused\n\tIs the server running on that host?'),
        })
        result = checker(clock, connector, timeout=5.0).run()
        assert [r.visible for r in result.replicas] == [False, False]
        assert result.replicas[1].last_error == ('connection to server at "10.0.0.23", port 5432 failed: Connection '
                                                 'refused Is the server running on that host?')
        failure = result.failure(5.0)
        assert failure.startswith("marker %s written on 10.0.0.100:5000 was not visible within 5.0 s on " % MARKER)
        assert "10.0.0.22:5432 (connected, row not there yet after " in failure
        assert "10.0.0.23:5432 (last error: connection to server" in failure
        assert clock.now() - 1000 < 6

    def test_a_broken_replica_connection_is_replaced(self, clock):
        first = replica_conn(clock, [FakeDbError("terminating connection due to administrator command")])
        second = replica_conn(clock, [[(1,)]])
        conns = [first, second]
        connector = Connector(clock, {"10.0.0.100:5000": primary_conn(clock),
                                      "10.0.0.22:5432": lambda: conns.pop(0)})
        result = checker(clock, connector, replicas=("10.0.0.22:5432",)).run()
        assert result.replicas[0].visible and result.replicas[0].polls == 2
        assert first.closed and second.closed

    def test_check_mode_writes_nothing_and_reports_standbys(self, clock):
        primary = primary_conn(clock)
        connector = Connector(clock, {"10.0.0.100:5000": primary})
        result = checker(clock, connector).run(check_mode=True)
        assert [sql for sql, _p in primary.executed] == [STANDBYS_SQL]
        assert primary.commits == 0 and not result.changed and result.marker is None
        assert result.replicas == [] and len(result.standbys) == 2
        assert result.failure(10.0) is None

    def test_primary_unreachable(self, clock):
        connector = Connector(clock, {"10.0.0.100:5000": FakeDbError("connection to server failed: timeout expired")})
        with pytest.raises(PostgresCheckError) as info:
            checker(clock, connector).run()
        assert str(info.value) == ("cannot connect to the primary 10.0.0.100:5000 (database postgres): connection "
                                   "to server failed: timeout expired")

    def test_write_refused(self, clock):
        primary = primary_conn(clock, fail_on="CREATE TABLE")
        connector = Connector(clock, {"10.0.0.100:5000": primary})
        with pytest.raises(PostgresCheckError, match=r'writing the marker into "mlflow_ha_replication_check" on '
                                                     r"the primary 10.0.0.100:5000 failed: permission denied"):
            checker(clock, connector).run()
        assert primary.commits == 0 and primary.closed

    def test_stuck_synchronous_commit_is_cancelled_and_reported(self, clock):
        primary = primary_conn(clock)
        connector = Connector(clock, {"10.0.0.100:5000": primary, "10.0.0.22:5432": replica_conn(clock, [[(1,)]])})
        result = checker(clock, connector, replicas=("10.0.0.22:5432",), timer=FiringTimer).run()
        assert primary.cancels == 1 and result.commit_cancelled
        assert result.replicas[0].visible
        assert result.failure(10.0).startswith("the commit on the primary 10.0.0.100:5000 still waited for "
                                               "synchronous standbys after 10.0 s and was cancelled")


def test_module_logic_returns_result_and_failure(clock, monkeypatch):
    connector = Connector(clock, {"10.0.0.100:5000": primary_conn(clock),
                                  "10.0.0.22:5432": replica_conn(clock, [[(1,)]])})
    params = dict(primary={"host": "10.0.0.100", "port": 5000, "name": "vip"}, replicas=["10.0.0.22:5432"],
                  login_user="checker", login_password="pw", database="postgres",
                  table="mlflow_ha_replication_check", timeout=5.0, poll_interval=0.5, connect_timeout=5.0)
    # The module builds its checker with the driver's error classes; the fakes raise their own.
    monkeypatch.setattr(postgres, "DB_ERRORS", (FakeDbError,))
    result, failure = pg_replication_check.replication_check(params, False, connect=connector, clock=clock)
    assert failure is None
    assert result["primary"] == "vip" and result["changed"] is True
    assert result["replicas"][0]["visible"] is True and result["standbys"][1]["replay_lag_bytes"] == 20971520
