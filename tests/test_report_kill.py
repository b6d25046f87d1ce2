"""Conservation after `kill -9` of a producer, through the real pipeline: real redis-server, the
ingester as its own process, the real /proc scraper as its own process (`kernelsight collect`),
SIGKILLed mid-stream and restarted, a real SQLite file.

A producer killed between two accounting snapshots leaves rows stored after its last snapshot
that no snapshot ever counts. The report counts them as produced by that instance ("produced
after its last snapshot") and shows them, so produced = stored + drops holds for every type. The
ground truth here is independent of the report: the rows of each killed instance's host stored
with an id above its last snapshot's mark and not after the moment it was killed."""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from kernelsight import schema
from kernelsight.db import open_db
from kernelsight.loadgen import make_event
from kernelsight.report import build, render, to_json
from kernelsight.runner import Stack
from kernelsight.runs import RunRecorder, resolve, wait_drained_until
from kernelsight.window import Selection, ns_to_id

SCRAPER_TABLES = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                  "tcp_stats", "tcp_retransmit_stats")
MAX_INSTANCES = 6


@pytest.fixture
def pipeline(settings, tmp_path):
    """The ingester as a real process on the test Redis."""
    stack = Stack(settings, tmp_path / "logs")
    stack.start_redis()
    stack.start_ingest()
    yield stack
    rc = stack.drain_ingest()
    stack.close()
    assert rc == 0, (tmp_path / "logs" / "ingest.log").read_text()[-3000:]


def spawn_scraper(settings, log: Path) -> subprocess.Popen:
    """`kernelsight collect` sampling every 0.1 s and sending at every poll (no linger: by
    default rows wait up to 1 s and mostly go with the next snapshot), so events flow between
    its snapshots (1 s)."""
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "KS_HOST": settings.host,
           "KS_INTERVAL": "0.1", "KS_PUBLISH_LINGER_S": "0", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kernelsight", "collect"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def query(db: str, sql: str, args: tuple = ()) -> list[tuple]:
    if not Path(db).exists():
        return []  # the ingester has not created it yet
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:  # its tables not created yet
        if "no such table" in str(e):
            return []
        raise
    finally:
        con.close()


def snapshots(db: str, pid: int) -> tuple[str, int, int] | None:
    """(instance, number of snapshots stored, its last snapshot's mark) of the scraper ``pid``."""
    rows = query(db, "SELECT instance, COUNT(DISTINCT stream_id), MAX(stream_id) FROM "
                 "pipeline_accounting WHERE instance LIKE ? GROUP BY instance",
                 (f"scraper@%:{pid}:%",))
    return rows[0] if rows else None


def late_rows(db: str, host: str, after: int, killed_ns: int) -> dict[str, int]:
    """Ground truth: rows stored above the instance's last mark, up to its death."""
    return {t: query(db, f'SELECT COUNT(*) FROM "{t}" WHERE host = ? AND stream_id > ? AND '
                     "stream_id <= ?", (host, after, ns_to_id(killed_ns)))[0][0]
            for t in SCRAPER_TABLES}


def test_sigkilled_producer_balances_and_its_late_rows_are_shown(settings, pipeline, tmp_path):
    db = settings.db_path
    rng = random.Random()
    rec = RunRecorder(settings, "test-kill").begin()
    late: list[dict[str, int]] = []  # per killed instance, in order
    for i in range(MAX_INSTANCES):
        p = spawn_scraper(settings, tmp_path / f"scraper-{i}.log")
        try:
            end = time.monotonic() + 90
            while (s := snapshots(db, p.pid)) is None or s[1] < 2:
                assert p.poll() is None, (tmp_path / f"scraper-{i}.log").read_text()[-2000:]
                assert time.monotonic() < end, "scraper stored no 2 snapshots in 90 s"
                time.sleep(0.1)
            time.sleep(rng.uniform(0.2, 1.0))  # somewhere between two snapshots
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        killed_ns = time.time_ns()
        assert p.returncode == -signal.SIGKILL
        assert wait_drained_until(settings.redis_url, ns_to_id(killed_ns), 60), "not stored"
        _, _, mark = snapshots(db, p.pid)
        late.append(late_rows(db, settings.host, mark, killed_ns))
        # Done once an instance that was followed by another one left late rows.
        if i >= 1 and any(sum(d.values()) for d in late[:-1]):
            break
    else:
        pytest.fail(f"no killed instance left rows after its last snapshot: {late}")
    run_end = rec.end()
    rec.close()
    assert wait_drained_until(settings.redis_url, ns_to_id(time.time_ns()), 60)

    eng = open_db(db, create=False)
    try:
        whole = build(eng, db, None, ["scraper"], resolve(eng, None))
        run = build(eng, db, None, ["scraper"], resolve(eng, Selection(run=rec.run_id)))
    finally:
        eng.dispose()
    assert whole.window.whole and run.window.run_id == rec.run_id
    assert run.window.until_ns == run_end

    for t in schema.TABLES:  # every type balances, in the whole file and in the run's window
        for rep in (whole, run):
            assert rep.balance(t) == 0, (t, rep.window.describe(), rep.produced.get(t),
                                         rep.counts[t], getattr(rep, "late", {}).get(t))
    for t in SCRAPER_TABLES:
        n = query(db, f'SELECT COUNT(*) FROM "{t}"')[0][0]
        assert whole.counts[t] == n > 0, t
        # Every killed instance's late rows, and only those, are "produced after its last
        # snapshot"; in the run's window, those of the instances followed by another one (the
        # last one's late rows lie after its last snapshot <= the window's end, on both sides).
        assert whole.late.get(t, 0) == sum(d[t] for d in late), (t, late)
        assert run.late.get(t, 0) == sum(d[t] for d in late[:-1]), (t, late)
        assert whole.produced[t] == whole.counts[t] and run.produced[t] == run.counts[t], t
    assert sum(run.late.values()) > 0

    # Shown as such, not hidden in "produced".
    buf = io.StringIO()
    render(whole, Console(file=buf, width=200, force_terminal=False, no_color=True))
    text = buf.getvalue()
    assert "produced after its last accounting snapshot" in text, text
    shown = [t for t in SCRAPER_TABLES if whole.late.get(t)]
    assert all(f"{t} {whole.late[t]:,}" in text for t in shown), text
    j = to_json(whole)
    for t in SCRAPER_TABLES:
        assert j["event_types"][t]["produced_after_last_snapshot"] == whole.late.get(t, 0)
        assert j["event_types"][t]["unaccounted"] == 0


def test_many_producer_instances_sum_without_overflow(settings, pipeline):
    """Every Publisher carries its start mark; twelve instances of one collector (restarts)
    must still sum in the report and in `status`/metrics' aggregation (the mark once rode in
    the counter's value, ~9.4e17 each, and twelve of them overflowed SQLite's SUM)."""
    from kernelsight.status import ACCOUNTING_BY_SOURCE_SQL
    from kernelsight.streams import Publisher

    et = schema.BY_NAME["memory_metrics"]
    rng = random.Random(3)
    for _ in range(12):
        pub = Publisher(settings, "scraper")
        pub.publish(et.name, [make_event(et, rng, settings.host, time.time_ns())
                              for _ in range(5)])
        pub.close()
    assert wait_drained_until(settings.redis_url, ns_to_id(time.time_ns()), 60)
    eng = open_db(settings.db_path, create=False)
    try:
        rep = build(eng, settings.db_path, None, ["scraper"], resolve(eng, None))
        with eng.connect() as c:
            by_source = c.exec_driver_sql(ACCOUNTING_BY_SOURCE_SQL).all()
            marks = c.exec_driver_sql(
                "SELECT COUNT(DISTINCT instance), COUNT(DISTINCT detail), MAX(value) FROM "
                "pipeline_accounting WHERE metric = ?", (schema.START_MARK,)).one()
    finally:
        eng.dispose()
    assert rep.produced[et.name] == rep.counts[et.name] == 60 and rep.balance(et.name) == 0
    assert schema.START_MARK not in rep.ingest
    assert ("scraper", et.name, schema.PRODUCED, "", 60) in [tuple(r) for r in by_source]
    assert tuple(marks) == (12, 12, 0)
