"""`kernelsight copy-db` and the readers on PostgreSQL, through the real pipeline: real Redis,
the ingester as its own process, the real /proc scraper as its own process (one SIGKILLed
between two snapshots, so the report has rows produced after a last snapshot to attribute), a
real SQLite file, then a real PostgreSQL (the pg_url fixture) and back into a new SQLite file.

The report of the run and of the whole database is the same text from all three stores, apart
from the "Database:" line; copies are idempotent and complete."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text
from test_report_kill import pipeline, snapshots, spawn_scraper  # noqa: F401 - a fixture

from kernelsight import schema
from kernelsight.config import db_label
from kernelsight.runs import RunRecorder, wait_drained_until
from kernelsight.window import ns_to_id

TOTAL = re.compile(r"^total: ([\d,]+) rows in source, ([\d,]+) copied, ([\d,]+) already there",
                   re.MULTILINE)


def ks(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def copy_db(src: str, dst: str) -> tuple[int, int, int, str]:
    r = ks("copy-db", src, dst)
    assert r.returncode == 0, r.stdout + r.stderr
    m = TOTAL.search(r.stdout)
    assert m, r.stdout
    read, copied, there = (int(g.replace(",", "")) for g in m.groups())
    return read, copied, there, r.stdout


def counts(url_or_path: str) -> dict[str, int]:
    """Rows per table, straight from the store (not through the code under test)."""
    names = [*schema.TABLES, *(t.name for t in schema.ROLLUPS.values()), "rollup_state",
             "pipeline_accounting", "dead_letters"]
    if "://" in url_or_path:
        eng = create_engine(url_or_path)
        try:
            with eng.connect() as c:
                return {n: c.execute(text(f'SELECT COUNT(*) FROM "{n}"')).scalar_one()
                        for n in names}
        finally:
            eng.dispose()
    con = sqlite3.connect(f"file:{url_or_path}?mode=ro", uri=True)
    try:
        return {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def without_db_line(out: str) -> str:
    return "\n".join(line for line in out.splitlines() if not line.startswith("Database: "))


def report(db: str, *args: str) -> tuple[int, str]:
    r = ks("report", "--db", db, *args)
    assert r.returncode in (0, 1) and not r.stderr.strip(), r.stdout + r.stderr
    return r.returncode, r.stdout


def test_copy_sqlite_to_postgres_and_back_same_report(settings, pipeline, pg_url,  # noqa: F811
                                                       tmp_path):
    db = settings.db_path
    rec = RunRecorder(settings, "test-copy").begin()
    late_seen = False
    for i in range(4):  # until a killed instance left rows after its last snapshot
        p = spawn_scraper(settings, tmp_path / f"scraper-{i}.log")
        try:
            end = time.monotonic() + 90
            while (s := snapshots(db, p.pid)) is None or s[1] < 2:
                assert p.poll() is None, (tmp_path / f"scraper-{i}.log").read_text()[-2000:]
                assert time.monotonic() < end, "scraper stored no 2 snapshots in 90 s"
                time.sleep(0.1)
            time.sleep(0.5)  # between two snapshots (1 s apart)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        assert wait_drained_until(settings.redis_url, ns_to_id(time.time_ns()), 60)
        _, _, mark = snapshots(db, p.pid)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        late_seen = con.execute("SELECT COUNT(*) FROM memory_metrics WHERE stream_id > ?",
                                (mark,)).fetchone()[0] > 0
        con.close()
        if i >= 1 and late_seen:
            break
    rec.end()
    rec.close()
    assert wait_drained_until(settings.redis_url, ns_to_id(time.time_ns()), 60)
    assert pipeline.drain_ingest() == 0  # the ingester's own counters stop too

    # SQLite -> PostgreSQL: everything, then nothing twice.
    src = counts(db)
    read, copied, there, out = copy_db(db, pg_url)
    assert read == copied == sum(src.values()) and there == 0, out
    assert counts(pg_url) == src
    assert ":***@" in out and pg_url.split(":")[2].split("@")[0] not in out  # no password
    read, copied, there, _ = copy_db(db, pg_url)
    assert (copied, there) == (0, read)
    assert counts(pg_url) == src
    eng = create_engine(pg_url)
    with eng.connect() as c:  # rows in their day partitions, not in the DEFAULT one
        assert c.execute(text("SELECT COUNT(*) FROM memory_metrics_default")).scalar_one() == 0
        assert c.execute(text("SELECT COUNT(*) FROM memory_metrics_p" + time.strftime(
            "%Y%m%d", time.gmtime()))).scalar_one() > 0
    eng.dispose()

    # PostgreSQL -> a new SQLite file.
    back = str(tmp_path / "back.db")
    read, copied, there, _ = copy_db(pg_url, back)
    assert copied == sum(src.values()) and there == 0
    assert counts(back) == src

    # The same report from all three, for the run (default: the latest) and the whole file.
    # (A window's bounds are fixed here: an open end would be "now", which moves.)
    half = str(rec.start_ns + (rec.end_ns - rec.start_ns) // 2)
    windows = [(), ("--since", "0", "--until", str(time.time_ns())),
               ("--since", half, "--until", str(rec.end_ns))]
    for args in windows:
        rc, first = report(db, *args)
        assert "Covers: " in first and "nothing dropped without being counted" in first
        for other in (pg_url, back):
            rc2, out = report(other, *args)
            assert rc2 == rc
            assert without_db_line(out) == without_db_line(first), (args, other)
    _, whole = report(pg_url, "--since", "0", "--until", str(time.time_ns()))
    if late_seen:
        assert "produced after its last accounting snapshot" in whole
    assert "Database: postgresql+psycopg://ks:***@127.0.0.1:" in whole

    # query --runs and --demo: the same tables.
    for args in (("--runs",), ("--demo",), ("--demo", "--run", "latest")):
        outs = []
        for d in (db, pg_url):
            r = ks("query", *args, env={"KS_DB_PATH": d})
            assert r.returncode == 0, r.stderr
            assert db_label(d) in r.stdout.replace("\n", "")
            # From the first table on (its title names the database, wrapped to the table's
            # width); titles are padded to the table's width: trailing blanks aside.
            body = r.stdout[r.stdout.index("┏"):]
            outs.append("\n".join(line.rstrip() for line in body.splitlines()))
        assert outs[0] == outs[1], args


def test_copy_goes_on_where_it_stopped(settings, pipeline, pg_url):  # noqa: F811
    """A second copy after more collection copies exactly the new rows."""
    from test_runs import collect

    assert collect(settings, 2) == 0
    assert pipeline.drain_ingest() == 0
    first = counts(settings.db_path)
    copy_db(settings.db_path, pg_url)
    pipeline.start_ingest()
    assert collect(settings, 2) == 0
    assert pipeline.drain_ingest() == 0
    second = counts(settings.db_path)
    new = sum(second.values()) - sum(first.values())
    assert new > 0
    read, copied, there, _ = copy_db(settings.db_path, pg_url)
    assert (read, copied, there) == (sum(second.values()), new, sum(first.values()))
    assert counts(pg_url) == second


@pytest.mark.parametrize("case", ["same", "bad_url", "no_src"])
def test_copy_db_bad_input_one_line(tmp_path, case):
    db = str(tmp_path / "a.db")
    if case != "no_src":
        from kernelsight.db import open_db
        open_db(db).dispose()
    dst = {"same": db, "bad_url": "mysql://u:secret@h/db",
           "no_src": str(tmp_path / "b.db")}[case]
    r = ks("copy-db", db if case != "no_src" else str(tmp_path / "none.db"), dst)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "secret" not in r.stderr + r.stdout
    assert not (tmp_path / "b.db").exists()  # nothing created when the source is missing


def test_nul_in_text_refused_or_escaped_never_silent(tmp_path, pg_url):
    """PostgreSQL text cannot hold U+0000: an event row with one is refused and counted (exit
    1, one line), an accounting detail with one is stored with it written as \\x00."""
    from kernelsight.db import open_db
    from kernelsight.storage.rows import store_rows

    db = str(tmp_path / "nul.db")
    eng = open_db(db)
    base = {"pid": 1, "tid": 1, "cpu": 0, "uid": 0, "syscall_nr": 0, "syscall_name": "read",
            "latency_ns": 5, "ret_value": 0, "is_error": 0, "arg0": 3, "host": "h"}
    rows = [{**base, "stream_id": i, "timestamp": 1_800_000_000 * 10**9 + i,
             "comm": "evil\0name" if i == 2 else "ok"} for i in range(1, 4)]
    assert store_rows(eng, "syscall_events", rows) == (3, [])
    with eng.begin() as c:
        c.execute(schema.pipeline_accounting.insert().values(
            timestamp=1, host="h", instance="i", source="scraper", event_type="",
            metric="failed", reason="", value=1, detail="boom\0here", stream_id=5))
    eng.dispose()
    r = ks("copy-db", db, pg_url)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "U+0000" in r.stderr, r.stderr
    assert "refused (U+0000 in text): 1" in r.stdout and "written as \\x00: 1" in r.stdout
    pg = create_engine(pg_url)
    with pg.connect() as c:
        assert c.execute(text("SELECT comm FROM syscall_events ORDER BY stream_id")
                         ).scalars().all() == ["ok", "ok"]
        assert c.execute(text("SELECT detail FROM pipeline_accounting")).scalar_one() == \
            "boom\\x00here"
    pg.dispose()
    r = ks("copy-db", db, pg_url)  # again: nothing twice, the refused row refused again
    assert r.returncode != 0 and "refused (U+0000 in text): 1" in r.stdout
    assert "total: 4 rows in source, 0 copied, 3 already there" in r.stdout, r.stdout
