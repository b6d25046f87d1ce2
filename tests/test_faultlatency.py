"""Minor-fault latency changed meaning on 2026-12-01 (faultlatency): a minor row's
latency_sum_ns now covers its sampled_events, before it covered its fault_count. A database
holding rows of both kinds must be read row by row the right way, in SQLite and PostgreSQL,
and after copy-db; a database only earlier versions wrote is read the old way throughout.

Rows are written here with the figures chosen so that each wrong reading gives another mean:
old minor row 100 faults x 2 us (1 sampled), new minor row 1,000 faults of which 10 timed at
3 us. Right: (200,000 + 30,000) ns / 110 = 2.09 us. All sampled: 20.9 us; all fault_count:
0.21 us."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, delete, insert, select

from kernelsight import faultlatency, report, schema
from kernelsight.copydb import copy
from kernelsight.db import open_db, open_readonly

HOST = "h1"
RIGHT_US = (100 * 2000 + 10 * 3000) / 110 / 1000


def _row(sid: int, ts: int, fault_type: str, count: int, lat_sum: int, sampled: int) -> dict:
    return {"stream_id": sid, "timestamp": ts, "host": HOST, "pid": 42, "comm": "w",
            "fault_type": fault_type, "fault_count": count, "latency_sum_ns": lat_sum,
            "latency_max_ns": lat_sum // max(sampled, 1), "sampled_events": sampled,
            "interval_ns": 1_000_000_000}


def _write(eng: Engine, *rows: dict) -> None:
    with eng.begin() as c:
        c.execute(insert(schema.TABLES["page_fault_totals"]), list(rows))


def _mark(eng: Engine) -> int:
    with eng.connect() as c:
        return faultlatency.sampled_from_ns(c, schema.schema_meta)


def _as_written_by_an_earlier_version(url: str) -> int:
    """A database of this schema version that only earlier writers opened: no mark, and an
    old-style minor row (every fault timed) and a major row. Returns that row's time."""
    eng = open_db(url)
    t_old = time.time_ns() - 10_000_000_000
    try:
        with eng.begin() as c:
            c.execute(delete(schema.schema_meta).where(
                schema.schema_meta.c.key == faultlatency.KEY))
        _write(eng, _row(1, t_old, "minor", 100, 100 * 2000, 1),
               _row(2, t_old, "major", 5, 5 * 400_000, 5))
        assert _mark(eng) == faultlatency.NEVER
    finally:
        eng.dispose()
    return t_old


def _minor(url: str) -> dict:
    return report.report_job(url)["json"]["page_faults"]["minor"]


def _upgrade_and_write_new_rows(url: str, t_old: int) -> int:
    eng = open_db(url)  # a writer of this version opens it: the mark is now
    try:
        mark = _mark(eng)
        assert t_old < mark <= time.time_ns()
        _write(eng, _row(3, time.time_ns(), "minor", 1000, 10 * 3000, 10))
        open_db(url).dispose()  # later opens keep the first mark
        assert _mark(eng) == mark
    finally:
        eng.dispose()
    return mark


def check_both_kinds(url: str) -> None:
    t_old = _as_written_by_an_earlier_version(url)
    # Before any writer of this version opened it, everything reads the old way.
    m = _minor(url)
    assert m["timed"] == 100 and m["avg_us"] == pytest.approx(2.0), m
    _upgrade_and_write_new_rows(url, t_old)
    m = _minor(url)
    assert m["count"] == 1100 and m["timed"] == 110 and m["sampled_events"] == 11, m
    assert m["avg_us"] == pytest.approx(RIGHT_US), m
    major = report.report_job(url)["json"]["page_faults"]["major"]
    assert major["timed"] == 5 and major["avg_us"] == pytest.approx(400.0), major


def test_sqlite_reads_rows_of_both_meanings(tmp_path):
    check_both_kinds(str(tmp_path / "ks.db"))


def test_new_database_is_sampled_from_the_start(tmp_path):
    eng = open_db(tmp_path / "ks.db")
    try:
        assert _mark(eng) == 0
        _write(eng, _row(1, time.time_ns() - 10**12, "minor", 1000, 10 * 3000, 10))
    finally:
        eng.dispose()
    m = _minor(str(tmp_path / "ks.db"))
    assert m["timed"] == 10 and m["avg_us"] == pytest.approx(3.0), m


def test_copy_db_carries_the_mark(tmp_path):
    src = str(tmp_path / "src.db")
    check_both_kinds(src)
    dst = str(tmp_path / "dst.db")  # created by this version: its own mark is 0
    s, d = open_readonly(src), open_db(dst)
    try:
        copy(s, d)
        assert _mark(d) == _mark(s) > 0
    finally:
        s.dispose()
        d.dispose()
    assert _minor(dst)["avg_us"] == pytest.approx(RIGHT_US)


def test_postgres_reads_rows_of_both_meanings(pg_url):
    check_both_kinds(pg_url)
    eng = open_readonly(pg_url)
    try:
        with eng.connect() as c:
            rows = c.execute(select(schema.schema_meta.c.key)).scalars().all()
    finally:
        eng.dispose()
    assert sorted(rows) == sorted(["version", faultlatency.KEY])


def test_copy_db_from_a_database_no_writer_of_this_version_opened(tmp_path):
    """SRC has no mark (all its rows old-style): DST reads SRC's rows the old way, yet its own
    later rows the new way (the mark moves just past SRC's newest minor row, not to 'never').
    A SRC without minor rows leaves DST's mark alone."""
    src, dst = str(tmp_path / "old.db"), str(tmp_path / "dst.db")
    t_old = _as_written_by_an_earlier_version(src)
    s, d = open_readonly(src), open_db(dst)
    try:
        copy(s, d)
        assert _mark(d) == t_old + 1
        _write(d, _row(9, time.time_ns(), "minor", 1000, 10 * 3000, 10))
    finally:
        s.dispose()
        d.dispose()
    m = _minor(dst)
    assert m["timed"] == 110 and m["avg_us"] == pytest.approx(RIGHT_US), m

    empty, dst2 = str(tmp_path / "empty.db"), str(tmp_path / "dst2.db")
    e = open_db(empty)
    with e.begin() as c:  # as an earlier version left it: no mark, no faults
        c.execute(delete(schema.schema_meta).where(schema.schema_meta.c.key == faultlatency.KEY))
    e.dispose()
    s, d = open_readonly(empty), open_db(dst2)
    try:
        copy(s, d)
        assert _mark(d) == 0
    finally:
        s.dispose()
        d.dispose()


def test_a_minor_row_without_a_sample_has_no_average(tmp_path):
    db = str(tmp_path / "ks.db")
    eng = open_db(db)
    try:
        _write(eng, _row(1, time.time_ns(), "minor", 500, 0, 0))
    finally:
        eng.dispose()
    out = report.report_job(db)
    m = out["json"]["page_faults"]["minor"]
    assert m["count"] == 500 and m["timed"] == 0 and m["avg_us"] is None, m
    assert "n/a" in out["text"]
