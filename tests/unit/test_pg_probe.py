"""The failover write probe, against a fake database whose availability follows a fake clock."""

from __future__ import annotations

import pytest
from fakes import FakeClock

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.pg_probe import WriteProbe


class DbDown(Exception):
    pass


class FakeDb:
    """Rows by (run, seq). ``down(t)`` says whether the server is unreachable at fake time t."""

    def __init__(self, clock: FakeClock, down=lambda t: False, commit_lost_reply=()):
        self.clock = clock
        self.down = down
        self.rows: set[tuple[str, int]] = set()
        self.commit_lost_reply = set(commit_lost_reply)  # seqs whose commit succeeds but whose reply is lost
        self.connects = 0

    def connect(self):
        if self.down(self.clock.now()):
            raise DbDown("could not connect to server: Connection refused")
        self.connects += 1
        return FakeConn(self)


class FakeConn:
    def __init__(self, db: FakeDb):
        self.db = db
        self.pending: list[tuple[str, int]] = []
        self.closed = False

    def cursor(self):
        return FakeCursor(self)

    def commit(self):
        if self.db.down(self.db.clock.now()):
            raise DbDown("server closed the connection unexpectedly")
        self.db.rows.update(self.pending)
        lost_reply = any(seq in self.db.commit_lost_reply for _r, seq in self.pending)
        self.pending = []
        if lost_reply:
            raise DbDown("connection reset while reading the commit reply")

    def close(self):
        self.closed = True


class FakeCursor:
    def __init__(self, conn: FakeConn):
        self.conn = conn
        self.description = None
        self._rows: list[tuple] = []

    def execute(self, sql, params=()):
        db = self.conn.db
        if db.down(db.clock.now()):
            raise DbDown("terminating connection due to administrator command")
        self.description = None
        if sql.startswith("INSERT"):
            self.conn.pending.append((params[0], params[1]))
        elif sql.startswith("SELECT"):
            self.description = [("seq",)]
            self._rows = [(seq,) for run, seq in db.rows if run == params[0]]

    def fetchall(self):
        return self._rows

    def close(self):
        pass


def probe(db, clock, **kw):
    return WriteProbe(db.connect, clock=clock, run="r1", **kw)


def test_steady_writes_are_all_acknowledged_and_found(clock):
    db = FakeDb(clock)
    p = probe(db, clock)
    p.prepare(timeout=5)
    result = p.verify(p.run(duration=2, interval=0.5), timeout=5)
    facts = result.to_dict()
    assert facts["attempts"] == 4 and facts["acknowledged_count"] == 4
    assert facts["outages"] == [] and facts["lost"] == [] and facts["verified"]
    assert db.connects == 1, "a healthy connection is reused"


def test_outage_is_measured_from_last_good_write_to_first_good_write(clock):
    start = clock.now()
    db = FakeDb(clock, down=lambda t: start + 2.0 <= t < start + 5.2)
    p = probe(db, clock)
    result = p.run(duration=60, interval=0.5, expect_outage=True, settle=2)
    facts = p.verify(result, timeout=5).to_dict()
    assert len(facts["outages"]) == 1
    outage = facts["outages"][0]
    assert outage["start_offset"] == pytest.approx(1.5)   # last acknowledged write before the outage
    assert outage["end_offset"] == pytest.approx(5.5)     # first acknowledged write after it
    assert outage["seconds"] == pytest.approx(4.0)
    assert outage["failed_attempts"] == 7
    assert "Connection refused" in outage["first_error"] or "administrator" in outage["first_error"]
    assert facts["recovered"] and facts["lost"] == []
    assert facts["seconds"] == pytest.approx(7.5), "stops settle seconds after recovery"


def test_without_expect_outage_runs_the_whole_duration(clock):
    db = FakeDb(clock)
    result = probe(db, clock).run(duration=3, interval=1)
    assert result.attempts == 3


def test_unrecovered_outage_is_reported(clock):
    start = clock.now()
    db = FakeDb(clock, down=lambda t: t >= start + 1)
    facts = probe(db, clock).run(duration=5, interval=0.5, expect_outage=True).to_dict()
    assert facts["outages"][0]["end_offset"] is None
    assert not facts["recovered"]


def test_lost_acknowledged_write_is_detected(clock):
    db = FakeDb(clock)
    p = probe(db, clock)
    result = p.run(duration=2, interval=0.5)
    db.rows.discard(("r1", 2))          # e.g. a failover to a replica that never received it
    facts = p.verify(result, timeout=5).to_dict()
    assert facts["lost"] == [2] and facts["lost_count"] == 1


def test_commit_with_lost_reply_is_not_counted_as_lost(clock):
    db = FakeDb(clock, commit_lost_reply={3})
    p = probe(db, clock)
    facts = p.verify(p.run(duration=3, interval=0.5), timeout=5).to_dict()
    assert facts["failed_count"] == 1
    assert facts["unacknowledged_present"] == [3]
    assert facts["lost"] == []


def test_verify_retries_until_the_database_answers(clock):
    start = clock.now()
    db = FakeDb(clock, down=lambda t: start + 1 <= t < start + 4)
    p = probe(db, clock)
    result = p.run(duration=1, interval=0.5)
    assert p.verify(result, timeout=10).verified


def test_verify_gives_up_with_the_error(clock):
    start = clock.now()
    db = FakeDb(clock, down=lambda t: t >= start + 1)
    p = probe(db, clock)
    result = p.run(duration=1, interval=0.5)
    facts = p.verify(result, timeout=3).to_dict()
    assert not facts["verified"]
    assert "DbDown" in facts["verify_error"]


def test_prepare_raises_after_timeout(clock):
    db = FakeDb(clock, down=lambda t: True)
    with pytest.raises(DbDown):
        probe(db, clock).prepare(timeout=3)
    assert clock.now() - 1000 >= 3
