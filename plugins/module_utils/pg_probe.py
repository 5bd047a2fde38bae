# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A write probe for PostgreSQL failover: insert numbered rows through an endpoint (HAProxy's primary port)
as fast as an interval allows, record which commits were acknowledged and when writes failed, then check that
every acknowledged row is still there. The database driver comes in as a ``connect`` callable and time as a
``Clock``, so the logic is tested without a server."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import Clock

CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS {table} (run text NOT NULL, seq bigint NOT NULL, "
                "written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, seq))")
INSERT_ROW = "INSERT INTO {table} (run, seq) VALUES (%s, %s)"
SELECT_RUN = "SELECT seq FROM {table} WHERE run = %s"
# Bounded per statement, server side; a frozen server is detected by TCP keepalives on the connection.
STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '{ms}ms'"


@dataclass
class Outage:
    """Writes failed from ``start`` (the last acknowledged write before) to ``end`` (the first one after)."""

    start: float
    end: Optional[float] = None
    failed_attempts: int = 0
    first_error: str = ""

    def to_dict(self, origin: float) -> Dict[str, Any]:
        return {
            "start_offset": round(self.start - origin, 3),
            "end_offset": None if self.end is None else round(self.end - origin, 3),
            "seconds": None if self.end is None else round(self.end - self.start, 3),
            "failed_attempts": self.failed_attempts,
            "first_error": self.first_error,
        }


@dataclass
class ProbeResult:
    run: str
    started: float
    finished: float = 0.0
    attempts: int = 0
    acknowledged: List[int] = field(default_factory=list)
    failed: List[int] = field(default_factory=list)
    outages: List[Outage] = field(default_factory=list)
    lost: List[int] = field(default_factory=list)
    unacknowledged_present: List[int] = field(default_factory=list)
    verified: bool = False
    verify_error: str = ""

    def to_dict(self) -> Dict[str, Any]:
        finished = [o for o in self.outages if o.end is not None]
        return {
            "run": self.run,
            "seconds": round(self.finished - self.started, 3),
            "attempts": self.attempts,
            "acknowledged_count": len(self.acknowledged),
            "failed_count": len(self.failed),
            "outages": [o.to_dict(self.started) for o in self.outages],
            "longest_outage_seconds": max((o.end - o.start for o in finished), default=0.0),
            "recovered": bool(self.outages) and self.outages[-1].end is not None,
            "lost": self.lost,
            "lost_count": len(self.lost),
            "unacknowledged_present": self.unacknowledged_present,
            "verified": self.verified,
            "verify_error": self.verify_error,
        }


def short_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return "%s: %s" % (type(err).__name__, text[:200])


class WriteProbe:
    def __init__(self, connect: Callable[[], Any], table: str = "mlflow_ha_write_probe",
                 clock: Optional[Clock] = None, statement_timeout_ms: int = 3000, run: Optional[str] = None):
        self.connect = connect
        self.table = table
        self.clock = clock or Clock()
        self.statement_timeout_ms = statement_timeout_ms
        self.run_id = run or uuid.uuid4().hex
        self._conn = None

    def _connection(self):
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
            self._conn = None

    def _execute(self, sql: str, params: tuple = ()) -> List[tuple]:
        conn = self._connection()
        cur = conn.cursor()
        try:
            cur.execute(STATEMENT_TIMEOUT.format(ms=int(self.statement_timeout_ms)))
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            cur.close()

    def prepare(self, timeout: float) -> None:
        """Create the probe table, retrying until ``timeout``; raises the last error when it runs out."""
        deadline = self.clock.now() + timeout
        while True:
            try:
                self._execute(CREATE_TABLE.format(table=self.table))
                return
            except Exception:
                self._drop_connection()
                if self.clock.now() >= deadline:
                    raise
                self.clock.sleep(1.0)

    def run(self, duration: float, interval: float, expect_outage: bool = False, settle: float = 5.0,
            on_tick: Optional[Callable[[ProbeResult], None]] = None) -> ProbeResult:
        """Write for up to ``duration`` seconds. With ``expect_outage``, stop early once an outage has ended
        and writes have succeeded for ``settle`` seconds since; otherwise write for the whole duration."""
        result = ProbeResult(run=self.run_id, started=self.clock.now())
        last_ok = result.started
        seq = 0
        while True:
            now = self.clock.now()
            if now - result.started >= duration:
                break
            if expect_outage and result.outages and result.outages[-1].end is not None \
                    and now - result.outages[-1].end >= settle:
                break
            seq += 1
            result.attempts += 1
            try:
                self._execute(INSERT_ROW.format(table=self.table), (self.run_id, seq))
            except Exception as err:  # any driver error is a failed write, recorded with its text
                self._drop_connection()
                result.failed.append(seq)
                if not result.outages or result.outages[-1].end is not None:
                    result.outages.append(Outage(start=last_ok, first_error=short_error(err)))
                result.outages[-1].failed_attempts += 1
            else:
                last_ok = self.clock.now()
                result.acknowledged.append(seq)
                if result.outages and result.outages[-1].end is None:
                    result.outages[-1].end = last_ok
            if on_tick is not None:
                on_tick(result)
            self.clock.sleep(interval)
        result.finished = self.clock.now()
        return result

    def verify(self, result: ProbeResult, timeout: float) -> ProbeResult:
        """Read back this run's rows; every acknowledged one must be there."""
        deadline = self.clock.now() + timeout
        while True:
            try:
                rows = self._execute(SELECT_RUN.format(table=self.table), (self.run_id,))
                break
            except Exception as err:
                self._drop_connection()
                if self.clock.now() >= deadline:
                    result.verify_error = short_error(err)
                    return result
                self.clock.sleep(1.0)
        present = {int(r[0]) for r in rows}
        result.lost = sorted(set(result.acknowledged) - present)
        result.unacknowledged_present = sorted(set(result.failed) & present)
        result.verified = True
        self._drop_connection()
        return result
