"""Runs as records: each `kernelsight run`, stress test or soak writes a row to the ``runs``
table THROUGH THE PIPELINE (a Publisher, its stream, the ingester), like any event, so a run
record is stored exactly once and only where its events are stored.

A run's later state is a new row with the same ``run_id`` (its end, then its verdict); readers
take the newest row per run (highest ``stream_id``: one Publisher writes them in order).

Also here: resolving a user's ``--run``/``--since``/``--until`` against a database
(window.Selection -> window.Window), and waiting until the ingester has stored every entry up
to a stream position (the stress tests wait for their own window only, while continuous
collection goes on).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import redis
from sqlalchemy import Connection, Engine, text

from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError
from kernelsight.streams import Publisher
from kernelsight.window import LATEST, Selection, Window

log = logging.getLogger(__name__)

SOURCE = "runs"
EVENT_TYPE = "runs"
RUNNING = ""  # verdict while the run goes on

# The newest row per run id.
RUNS_SQL = """
SELECT r.run_id, r.kind, r.host, r.start_ns, r.end_ns, r.verdict FROM runs r
JOIN (SELECT run_id, MAX(stream_id) AS sid FROM runs GROUP BY run_id) m
  ON r.run_id = m.run_id AND r.stream_id = m.sid"""


def new_run_id(kind: str) -> str:
    """``<kind>-<UTC yyyymmddThhmmss>-<6 hex>``: sortable by eye, unique without a lookup."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


class RunRecorder:
    """Publishes one run's rows. ``begin()`` at the start, ``end()`` when the work stops,
    ``verdict()`` once known; ``close()`` flushes (counted like any producer's events)."""

    def __init__(self, settings: Settings, kind: str, run_id: str | None = None) -> None:
        self.kind = kind
        self.run_id = run_id or new_run_id(kind)
        self.pub = Publisher(settings, SOURCE)
        self.start_ns = 0
        self.end_ns = 0
        self.result = RUNNING

    def _row(self) -> dict:
        return {"timestamp": time.time_ns(), "host": self.pub.host, "run_id": self.run_id,
                "kind": self.kind, "start_ns": self.start_ns, "end_ns": self.end_ns,
                "verdict": self.result}

    def _send(self) -> None:
        self.pub.publish(EVENT_TYPE, [self._row()])
        self.pub.flush(final=True)

    def begin(self) -> RunRecorder:
        self.start_ns = time.time_ns()
        self._send()
        log.info("run %s (%s) started", self.run_id, self.kind)
        return self

    def end(self, end_ns: int | None = None) -> int:
        self.end_ns = end_ns or time.time_ns()
        self._send()
        return self.end_ns

    def verdict(self, verdict: str) -> None:
        self.result = verdict[:32]
        if not self.end_ns:
            self.end_ns = time.time_ns()
        self._send()

    def close(self) -> None:
        self.pub.close()

    @property
    def last_id(self) -> bytes:
        """The stream id of the newest row sent (wait_drained_until it to see it stored)."""
        return self.pub.last_id

    @property
    def window(self) -> Window:
        return Window(self.start_ns or None, self.end_ns or None, self.run_id, self.kind)


def list_runs(conn: Connection) -> list[dict]:
    """Every run, newest start first, each as its newest row says."""
    rows = conn.execute(text(RUNS_SQL + " ORDER BY r.start_ns DESC, r.run_id")).all()
    return [dict(zip(("run_id", "kind", "host", "start_ns", "end_ns", "verdict"), r,
                     strict=True)) for r in rows]


def find_run(conn: Connection, run: str) -> dict:
    """The newest row of run ``run`` (or of the latest-started run), or one-line ConfigError."""
    if run == LATEST:
        row = conn.execute(text(RUNS_SQL + " ORDER BY r.start_ns DESC LIMIT 1")).first()
        if row is None:
            raise ConfigError("--run latest: this database has no runs yet; give --since/"
                              "--until or no selection (the whole database)")
    else:
        row = conn.execute(text(RUNS_SQL + " WHERE r.run_id = :id"), {"id": run}).first()
        if row is None:
            raise ConfigError(f"--run {run}: no such run in this database; list them with "
                              "`kernelsight query --runs`")
    return dict(zip(("run_id", "kind", "host", "start_ns", "end_ns", "verdict"), row,
                    strict=True))


def resolve(eng: Engine, sel: Selection | None, default_latest: bool = False,
            now_ns: int | None = None) -> Window:
    """The window a selection means in this database. With nothing selected: the latest run
    when ``default_latest`` and the database has runs, else the whole database."""
    now = time.time_ns() if now_ns is None else now_ns
    sel = sel or Selection()
    with eng.connect() as c:
        if sel.empty:
            if default_latest and c.execute(text("SELECT 1 FROM runs LIMIT 1")).first():
                sel = Selection(run=LATEST)
            else:
                return Window()
        if sel.run is None:
            return Window(sel.since_ns, sel.until_ns)
        r = find_run(c, sel.run)
    open_end = not r["end_ns"]
    return Window(r["start_ns"], r["end_ns"] or now, r["run_id"], r["kind"], open_end)


def wait_drained_until(redis_url: str, upto_id: int | str | bytes, timeout: float) -> bool:
    """Poll ``ingest.drained_until`` until true (True) or ``timeout`` (False)."""
    from kernelsight.ingest import drained_until
    from kernelsight.streams import connect

    r = connect(redis_url)
    end = time.monotonic() + timeout
    try:
        while True:
            try:
                if drained_until(r, upto_id):
                    return True
            except redis.RedisError as e:
                log.warning("waiting for the ingester: %s", e)
            if time.monotonic() >= end:
                return False
            time.sleep(0.2)
    finally:
        r.close()
