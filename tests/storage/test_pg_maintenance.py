"""Maintenance on a real PostgreSQL 15: the per-minute rollups equal SQLite's for the same
rows (every rolled-up type and statistic), time retention drops whole day partitions after
their rollups exist and deletes the rest of a partial day, counting retention_deleted
exactly; a late row is rolled up again before its day goes; the size cap drops oldest days."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kernelsight import schema
from kernelsight.db import open_db
from kernelsight.maintenance import RetentionPolicy
from kernelsight.maintenance.postgres import PgMaintenance
from kernelsight.storage import postgres

sys.path.insert(0, str(Path(__file__).parent.parent / "maintenance"))
from maint_helpers import MIN, NOW, SEC, events, insert, maintenance, new_db

DAY = postgres.DAY_NS


def pg_insert(url: str, table: str, rows: list[dict]) -> None:
    """Rows as the ingester stores them, day partitions created first (stream ids go on
    from the table's largest)."""
    et = schema.BY_NAME[table]
    cols = ("stream_id", "timestamp", "host", *et.column_names)
    eng = create_engine(url)
    postgres.Partitions().ensure(eng, table, [r["timestamp"] for r in rows])
    with eng.begin() as c:
        start = (c.execute(text(f"SELECT MAX(stream_id) FROM {table}")).scalar() or 0) + 1
        c.execute(text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                       f"({', '.join(':' + x for x in cols)})"),
                  [{"stream_id": start + i, "host": r.get("host", "h1"), **r}
                   for i, r in enumerate(rows)])
    eng.dispose()


def q(url: str, sql: str, **kw: object) -> list[tuple]:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(text(sql), kw).all()]
    finally:
        eng.dispose()


def parts_of(url: str, table: str) -> list[int]:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return sorted(postgres.partitions(c, table))
    finally:
        eng.dispose()


def pg_maint(url: str, clock: int = NOW, **policy: object) -> PgMaintenance:
    pol = RetentionPolicy(**{"retention_s": 300.0, "grace_s": 0.0, **policy})  # type: ignore
    return PgMaintenance(url, pol, host="h1", clock=lambda: clock)


def test_rollups_equal_sqlite_for_the_same_rows(pg_url, tmp_path):
    open_db(pg_url).dispose()
    db = new_db(tmp_path / "ks.db")
    rng = random.Random(7)
    t0 = NOW - 12 * MIN
    for et in schema.EVENT_TYPES:
        if not et.rollup:
            continue
        ts = sorted(t0 + rng.randrange(10 * MIN) for _ in range(300))
        rows = [r for i, host in enumerate(("h1", "h2"))
                for r in events(et.name, ts[i::2], seed=i + 3, host=host)]
        insert(db, et.name, rows)
        pg_insert(pg_url, et.name, rows)
    lite = maintenance(db, grace_s=0.0)
    pg = pg_maint(pg_url)
    try:
        assert lite.rollup() == pg.rollup() > 0
    finally:
        lite.stop()
        pg.stop()
    import sqlite3
    con = sqlite3.connect(db)
    for et in schema.EVENT_TYPES:
        if not et.rollup:
            continue
        names = [c.name for c in schema.ROLLUPS[et.name].columns if c.name != "id"]
        order = ", ".join(names[:3 + sum(c.role == schema.KEY for c in et.columns)])
        sql = f"SELECT {', '.join(names)} FROM {et.rollup} ORDER BY {order}"
        a = [tuple(r) for r in con.execute(sql).fetchall()]
        b = q(pg_url, sql)
        assert len(a) == len(b) > 0, et.name
        for ra, rb in zip(a, b, strict=True):
            for x, y, n in zip(ra, rb, names, strict=True):
                if isinstance(x, float) or isinstance(y, float):
                    assert x == pytest.approx(y, rel=1e-9), (et.name, n, ra, rb)
                else:
                    assert x == y, (et.name, n, ra, rb)
    con.close()


def test_time_retention_drops_day_partitions_with_rollups_kept(pg_url):
    open_db(pg_url).dispose()
    today = postgres.day_start(NOW)
    # rows on four days: three whole days back, and today before and after the cutoff
    ts = [today - d * DAY + h * 3600 * SEC for d in (3, 2, 1) for h in range(0, 24, 2)]
    ts += [NOW - 40 * MIN + i * SEC for i in range(0, 1200, 60)]  # 20 rows, 10 before cutoff
    pg_insert(pg_url, "memory_metrics", events("memory_metrics", ts))
    pg_insert(pg_url, "load_metrics", events("load_metrics", [NOW - 5 * SEC]))  # data "now"
    total = len(ts)
    mt = pg_maint(pg_url, retention_s=30 * 60.0)
    try:
        before = q(pg_url, "SELECT COUNT(*) FROM memory_metrics")[0][0]
        assert before == total
        out = mt.run_once()
        cutoff = NOW - 30 * MIN
        kept = sum(t >= cutoff for t in ts)
        assert q(pg_url, "SELECT COUNT(*) FROM memory_metrics")[0][0] == kept == 10
        assert out["deleted_time"] == total - kept  # (the load_metrics row is recent)
        assert mt.dropped_partitions == 3
        # the three old days are gone; tomorrow's is made ahead of the ingester's need
        assert parts_of(pg_url, "memory_metrics") == [today, today + DAY]
        # the accounting counts exactly what went, per table and reason
        acc = q(pg_url, "SELECT event_type, reason, value FROM pipeline_accounting WHERE "
                        "metric = 'retention_deleted'")
        assert acc == [("memory_metrics", "time", total - kept)]
        # every deleted row is still in the rollups' samples
        assert q(pg_url, "SELECT SUM(samples) FROM memory_metrics_1m WHERE timestamp < :c",
                 c=cutoff)[0][0] == total - kept
        # a second pass: nothing more
        assert mt.run_once()["deleted_time"] == 0
    finally:
        mt.stop()


def test_late_row_is_rolled_up_again_before_its_day_is_dropped(pg_url):
    open_db(pg_url).dispose()
    today = postgres.day_start(NOW)
    old = today - 2 * DAY + 3600 * SEC
    pg_insert(pg_url, "memory_metrics", events("memory_metrics", [old, old + SEC]))
    pg_insert(pg_url, "load_metrics", events("load_metrics", [NOW - 5 * SEC]))
    mt = pg_maint(pg_url, retention_s=3 * 86400.0)  # nothing old enough yet
    try:
        mt.run_once()
        assert q(pg_url, "SELECT samples FROM memory_metrics_1m")[0][0] == 2
        pg_insert(pg_url, "memory_metrics", events("memory_metrics", [old + 2 * SEC], seed=5))
        mt.policy = RetentionPolicy(86400.0, grace_s=0.0)
        mt.run_once()
        assert q(pg_url, "SELECT samples FROM memory_metrics_1m")[0][0] == 3
        assert mt.rerolled == 1 and mt.dropped_partitions == 1
        assert q(pg_url, "SELECT value FROM pipeline_accounting WHERE metric = "
                         "'retention_deleted'") == [(3,)]
    finally:
        mt.stop()


def test_size_cap_drops_oldest_whole_days_only(pg_url):
    open_db(pg_url).dispose()
    today = postgres.day_start(NOW)
    per_day = 3000
    for d in (3, 2, 1, 0):
        base = today - d * DAY
        pg_insert(pg_url, "syscall_events", events(
            "syscall_events", [base + i * 10 * SEC for i in range(per_day)
                               if base + i * 10 * SEC < NOW - MIN]))
    pg_insert(pg_url, "load_metrics", events("load_metrics", [NOW - 5 * SEC]))
    mt = pg_maint(pg_url, retention_s=30 * 86400.0)
    try:
        mt.rollup()
        used = mt.used_bytes()
        # a cap about one day below the size: at least the oldest day must go
        day_bytes = used / 4
        mt.policy = RetentionPolicy(30 * 86400.0, size_bytes=int(used - 1.0 * day_bytes),
                                    grace_s=0.0, low_water=1.0)
        total = q(pg_url, "SELECT COUNT(*) FROM syscall_events")[0][0]
        n = mt.enforce_size()
        left = q(pg_url, "SELECT COUNT(*) FROM syscall_events")[0][0]
        assert mt.dropped_partitions >= 1 and n == total - left > 0
        # oldest first, whole days only, today's kept
        parts = parts_of(pg_url, "syscall_events")
        days = [today - d * DAY for d in (3, 2, 1, 0)]
        assert parts == days[mt.dropped_partitions:] and parts[-1] == today
        assert left == q(pg_url, "SELECT COUNT(*) FROM syscall_events WHERE timestamp >= :d",
                         d=parts[0])[0][0]
        acc = q(pg_url, "SELECT reason, value FROM pipeline_accounting WHERE metric = "
                        "'retention_deleted'")
        assert acc == [("size", n)]
        # below the cap, or nothing left that may go for size (today's partition)
        assert mt.used_bytes() <= mt.policy.size_bytes or parts == [today]
    finally:
        mt.stop()
