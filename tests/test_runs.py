"""Runs as records and reports of one run or window, through the real pipeline: real Redis,
the ingester as its own process, the real /proc scraper, a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from kernelsight import schema
from kernelsight.collectors.scraper import Scraper
from kernelsight.db import open_db
from kernelsight.report import build
from kernelsight.runner import Stack, run_collector
from kernelsight.runs import RunRecorder, resolve, wait_drained_until
from kernelsight.window import Selection, Window, ns_to_id

SCRAPER_TABLES = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                  "tcp_stats", "tcp_retransmit_stats")


class CrashingScraper(Scraper):
    """The real scraper, whose third scrape raises right after publishing (a bug in a
    collector)."""

    polls = 0

    def poll(self) -> None:
        super().poll()
        CrashingScraper.polls += 1
        if CrashingScraper.polls >= 3:
            raise RuntimeError("boom: a bug in poll")


def collect(settings, seconds: float | None, cls=None) -> int:
    """run_collector in a thread (it installs signal handlers only on the main thread)."""
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(run_collector(
        "scraper", settings, seconds, cls=cls)))
    t.start()
    t.join(60)
    assert not t.is_alive() and out, "collector did not finish"
    return out[0]


def stored_between(db: str, table: str, lo_ns: int, hi_ns: int) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table} WHERE timestamp BETWEEN ? AND ?",
                           (lo_ns, hi_ns)).fetchone()[0]
    finally:
        con.close()


def report(settings, sel: Selection | None = None, default_latest: bool = True):
    eng = open_db(settings.db_path, create=False)
    try:
        return build(eng, settings.db_path, None, ["scraper"],
                     resolve(eng, sel, default_latest=default_latest))
    finally:
        eng.dispose()


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


def test_old_run_and_new_run_reported_apart(settings, pipeline):
    """An older run whose collector crashed in poll(), then a clean run: each run's report
    has its own counts, duration and failures, and conserves exactly; the whole database is
    their sum."""
    CrashingScraper.polls = 0
    old = RunRecorder(settings, "test-old").begin()
    assert collect(settings, 30, CrashingScraper) == 1  # crashed: exit code 1, not 0
    old.end()
    time.sleep(1.5)  # a gap between the runs: rows of neither
    new = RunRecorder(settings, "stress").begin()
    assert collect(settings, 4) == 0
    new_end = new.end()
    assert wait_drained_until(settings.redis_url, ns_to_id(new_end), 30), "not stored in 30s"

    r_new = report(settings)  # default: the latest run
    assert r_new.window.run_id == new.run_id and r_new.window.kind == "stress"
    r_old = report(settings, Selection(run=old.run_id))
    r_all = report(settings, default_latest=False)
    assert r_all.window.whole

    # Failures belong to the run they happened in.
    assert "crashed in poll(): RuntimeError: boom" in r_old.failed["scraper"]
    assert not next(ok for name, ok, _ in r_old.criteria if name == "all collectors started")
    assert not r_new.failed and r_new.started == {"scraper": True}
    assert next(ok for name, ok, _ in r_new.criteria if name == "all collectors started")
    assert "scraper" in r_all.failed  # the whole file still shows the old failure

    # Durations are the runs' own spans, not the file's.
    assert r_new.duration_s == pytest.approx((new_end - new.start_ns) / 1e9)
    assert 3.5 <= r_new.duration_s <= 60  # generous: a loaded machine
    assert r_all.duration_s > r_new.duration_s + 1.5

    for t in SCRAPER_TABLES:
        # Exact conservation in each window and in the whole file.
        for rep in (r_new, r_old, r_all):
            assert rep.balance(t) == 0, (t, rep.window.describe(), rep.produced.get(t),
                                         rep.counts[t])
        assert r_new.counts[t] > 0 and r_old.counts[t] > 0, t
        # The run's rows are the rows sampled during it; the two runs make up the file.
        assert r_new.counts[t] == stored_between(settings.db_path, t, new.start_ns, new_end), t
        assert r_new.counts[t] + r_old.counts[t] == r_all.counts[t], t
    assert 2 <= r_new.counts["memory_metrics"] <= 6  # 1 a second; busy ticks are skipped


def test_since_until_windows(settings, pipeline):
    """--since/--until select rows by time; each window conserves exactly, the windows on
    either side of a boundary add up, and a window between runs is empty."""
    t0 = time.time_ns()
    assert collect(settings, 6) == 0
    t1 = time.time_ns()
    assert wait_drained_until(settings.redis_url, ns_to_id(t1), 30)
    mid = (t0 + t1) // 2
    eng = open_db(settings.db_path, create=False)
    try:
        first = build(eng, settings.db_path, None, ["scraper"], Window(t0, mid))
        second = build(eng, settings.db_path, None, ["scraper"], Window(mid, t1))
        both = build(eng, settings.db_path, None, ["scraper"], Window(t0, t1))
        since_only = build(eng, settings.db_path, None, ["scraper"], Window(mid, None))
        before = build(eng, settings.db_path, None, ["scraper"], Window(t0 - 10**10, t0 - 10**9))
    finally:
        eng.dispose()
    for t in SCRAPER_TABLES:
        for rep in (first, second, both, since_only, before):
            assert rep.balance(t) == 0, (t, rep.window.describe())
        assert first.counts[t] > 0 and second.counts[t] > 0, t
        assert first.counts[t] + second.counts[t] == both.counts[t], t
        assert since_only.counts[t] == second.counts[t], t
        assert before.counts[t] == 0 and before.produced.get(t, 0) == 0, t
    assert both.duration_s == pytest.approx((t1 - t0) / 1e9)
    # `query --demo` over the same window (epoch ns on the command line) counts by timestamp.
    q = subprocess.run([sys.executable, "-m", "kernelsight", "query", "--db", settings.db_path,
                        "--demo", "--since", str(t0), "--until", str(t1)],
                       capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, "COLUMNS": "200"})
    assert q.returncode == 0, q.stderr
    cells = {ln.split("│")[1].strip(): [c.strip().replace(",", "") for c in ln.split("│")[2:4]]
             for ln in q.stdout.splitlines() if ln.count("│") >= 4}
    for t in SCRAPER_TABLES:  # rows, and rows incl. rolled up (nothing deleted: the same)
        n = stored_between(settings.db_path, t, t0, t1)
        assert cells[t] == [str(n), str(n)] and n > 0, (t, q.stdout)
    assert both.started == {"scraper": True} and not before.started
    # The scraper samples once a second, first at once: ~3 samples in each half.
    assert 1 <= first.counts["memory_metrics"] <= 5
    assert 1 <= second.counts["memory_metrics"] <= 5


def test_run_record_latest_row_wins(settings, pipeline):
    """A run's end and verdict are later rows for the same run id; readers take the newest."""
    rec = RunRecorder(settings, "soak").begin()
    end = rec.end()
    rec.verdict("SUCCESS")
    rec.close()
    assert wait_drained_until(settings.redis_url, ns_to_id(time.time_ns()), 30)
    eng = open_db(settings.db_path, create=False)
    try:
        w = resolve(eng, Selection(run="latest"))
        with eng.connect() as c:
            n = c.exec_driver_sql("SELECT COUNT(*) FROM runs WHERE run_id = ?",
                                  (rec.run_id,)).scalar_one()
            verdict = c.exec_driver_sql(
                "SELECT verdict FROM runs WHERE run_id = ? ORDER BY stream_id DESC LIMIT 1",
                (rec.run_id,)).scalar_one()
    finally:
        eng.dispose()
    assert n == 3 and verdict == "SUCCESS"
    assert (w.run_id, w.kind, w.since_ns, w.until_ns) == ("soak" and rec.run_id, "soak",
                                                          rec.start_ns, end)
    assert not w.open_end
    assert schema.BY_NAME["runs"].core is False


def test_window_reached_by_retention(settings, pipeline):
    """Retention (the real maintenance pass) deletes an older run's rows: that run's window
    shows them as retention, the newer run's window is untouched and exact, and the whole
    database balances with retention counted."""
    from kernelsight.ingest.writer import WriteLock
    from kernelsight.maintenance.policy import MINUTE_NS, RetentionPolicy
    from kernelsight.maintenance.service import Maintenance

    old = RunRecorder(settings, "test-old").begin()
    assert collect(settings, 3) == 0
    old.end()
    boundary = (time.time_ns() // MINUTE_NS + 1) * MINUTE_NS  # the next minute
    time.sleep((boundary - time.time_ns()) / 1e9 + 0.5)
    new = RunRecorder(settings, "stress").begin()
    assert collect(settings, 3) == 0
    new_end = new.end()
    assert wait_drained_until(settings.redis_url, ns_to_id(new_end), 30)
    retention_s = 3600.0
    mt = Maintenance(settings.db_path, RetentionPolicy(retention_s, grace_s=0.0),
                     lambda: WriteLock(settings.db_path), settings.host)
    try:
        mt.rollup()
        deleted = mt.prune_time(boundary + int(retention_s * 1e9))
    finally:
        mt.stop()
    assert deleted > 0
    assert stored_between(settings.db_path, "memory_metrics", old.start_ns, old.end_ns) == 0

    r_old = report(settings, Selection(run=old.run_id))
    r_new = report(settings, Selection(run=new.run_id))
    r_all = report(settings, default_latest=False)
    for t in SCRAPER_TABLES:
        assert r_old.counts[t] == 0 and r_old.retention[t]["window"] == r_old.produced[t] > 0
        assert r_new.counts[t] > 0 and not r_new.retention.get(t), t
        assert sum(r_all.retention[t].values()) == r_old.produced[t], t
        for rep in (r_old, r_new, r_all):
            assert rep.balance(t) == 0, (t, rep.window.describe())
