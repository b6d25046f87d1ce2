"""A database written by schema version 3 (a real file: `kernelsight run --duration 3
--collectors scraper` by commit bf39afc, gzipped) is upgraded in place by adding the PSI and
vmstat tables and rebuilding the event tables; one written by version 4 (the same command by
commit ff938ed) by rebuilding its event tables with the (host, stream_id) key. Nothing in
either is lost, and readers say how to upgrade them."""

from __future__ import annotations

import gzip
import sqlite3

import pytest

from kernelsight import faultlatency, report, schema
from kernelsight.db import open_db, open_readonly
from kernelsight.exceptions import DatabaseError

from conftest import FIXTURES

V3 = FIXTURES / "db" / "schema-v3-scraper-3s.db.gz"
V4 = FIXTURES / "db" / "schema-v4-scraper-3s.db.gz"
UPGRADED = ("version", "pf_mark")  # what an upgrade changes besides adding tables
NEW = ("pressure_stats", "vmstat_stats", "pressure_stats_1m", "vmstat_stats_1m")


def v3_copy(tmp_path):
    db = tmp_path / "v3.db"
    db.write_bytes(gzip.decompress(V3.read_bytes()))
    return db


def contents(db) -> dict[str, int]:
    con = sqlite3.connect(db)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    out["version"] = con.execute(
        "SELECT value FROM schema_meta WHERE key = 'version'").fetchone()[0]
    # A writer of this version also records since when minor-fault latency is sampled
    # (faultlatency; "0" here: these files hold no page-fault rows).
    mark = con.execute("SELECT value FROM schema_meta WHERE key = ?",
                       (faultlatency.KEY,)).fetchone()
    out["schema_meta"] -= mark is not None
    out["pf_mark"] = mark[0] if mark else None
    con.close()
    return out


def test_v3_file_is_upgraded_additively(tmp_path):
    db = v3_copy(tmp_path)
    before = contents(db)
    assert before["version"] == "3" and not set(NEW) & set(before)
    assert before["memory_metrics"] >= 2 and before["runs"] >= 2  # real rows to keep
    with pytest.raises(DatabaseError, match="upgrades it in place"):
        open_readonly(db).dispose()
    assert contents(db) == before  # a reader changes nothing
    open_db(db).dispose()
    after = contents(db)
    assert after["version"] == str(schema.SCHEMA_VERSION) == "5"
    assert {n: after[n] for n in NEW} == dict.fromkeys(NEW, 0)
    assert {k: v for k, v in after.items() if k in before and k not in UPGRADED} == {
        k: v for k, v in before.items() if k not in UPGRADED}
    assert after["pf_mark"] == "0"
    open_db(db).dispose()  # again: a no-op
    assert contents(db) == after
    # Readers of this version now accept it, and the report lists the new types (empty).
    out = report.report_job(str(db))
    ev = out["json"]["event_types"]
    assert ev["memory_metrics"]["rows"] == before["memory_metrics"]
    assert ev["pressure_stats"]["rows"] == 0 and ev["vmstat_stats"]["rows"] == 0
    other = out["text"].split("Other Event Types")[1].split("Pipeline Accounting")[0]
    assert "pressure_stats" in other and "vmstat_stats" in other  # listed apart
    assert "memory_metrics" not in other and "/10 event types" in out["text"]


def test_other_versions_still_get_the_clear_error(tmp_path):
    db = v3_copy(tmp_path)
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_meta SET value = '2' WHERE key = 'version'")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="version 2, this version needs 5; use a new"):
        open_db(db)
    with pytest.raises(DatabaseError, match="report on it with the version that wrote it"):
        open_readonly(db)
    assert db.exists()


def rows(db, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    out = con.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall()
    con.close()
    return out


def table_sql(db, table: str) -> str:
    con = sqlite3.connect(db)
    out = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    con.close()
    return out


def test_v4_file_is_rebuilt_in_place_rows_and_ids_kept(tmp_path):
    db = tmp_path / "v4.db"
    db.write_bytes(gzip.decompress(V4.read_bytes()))
    before = contents(db)
    assert before["version"] == "4"
    assert before["memory_metrics"] >= 2 and before["network_interface_stats"] >= 10
    kept = {t: rows(db, t) for t in schema.TABLES}
    assert "UNIQUE (stream_id)" in table_sql(db, "memory_metrics")
    with pytest.raises(DatabaseError, match="upgrades it in place"):
        open_readonly(db).dispose()
    assert contents(db) == before
    open_db(db).dispose()
    after = contents(db)
    assert after["version"] == "5"
    assert {k: v for k, v in after.items() if k not in UPGRADED} == {
        k: v for k, v in before.items() if k not in UPGRADED}
    assert after["pf_mark"] == "0"
    for t in schema.TABLES:
        assert rows(db, t) == kept[t], t  # every row, with its id
        assert f"uq_{t}_host_stream_id" in table_sql(db, t)
    con = sqlite3.connect(db)
    idx = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_syscall_events_latency_desc", "ix_block_stats_device_name_timestamp",
            "ix_memory_metrics_timestamp"} <= idx
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    out = report.report_job(str(db))  # readers of this version accept it
    assert out["json"]["event_types"]["memory_metrics"]["rows"] == before["memory_metrics"]
    # the new key: the same stream id from another host is a new row, from the same a dup
    r = con.execute("SELECT stream_id, timestamp, host FROM memory_metrics LIMIT 1").fetchone()
    con.execute("INSERT OR IGNORE INTO memory_metrics (stream_id, timestamp, host) "
                "VALUES (?, ?, ?)", r)
    con.execute("INSERT OR IGNORE INTO memory_metrics (stream_id, timestamp, host) "
                "VALUES (?, ?, ?)", (r[0], r[1], r[2] + "-other"))
    con.commit()
    assert con.execute("SELECT COUNT(*) FROM memory_metrics").fetchone()[0] == \
        before["memory_metrics"] + 1
    con.close()
    open_db(db).dispose()  # again: a no-op
    assert all(f"uq_{t}_host_stream_id" in table_sql(db, t) for t in schema.TABLES)


def test_v4_rebuild_failure_leaves_the_file_unchanged(tmp_path):
    """A failing rebuild (here: the disk-full stand-in, a read-only file system is not
    available to root, so a table that cannot be copied) rolls back completely."""
    db = tmp_path / "v4.db"
    db.write_bytes(gzip.decompress(V4.read_bytes()))
    con = sqlite3.connect(db)
    # a leftover of the temporary name makes the rebuild's CREATE fail mid-way
    con.execute('CREATE TABLE "runs__v5" (x)')
    con.commit()
    con.close()
    before = contents(db)
    with pytest.raises(DatabaseError, match="left unchanged"):
        open_db(db)
    assert contents(db) == before


def test_processes_creating_the_schema_together_all_succeed(tmp_path):
    """Ingesters started at the same moment on a new file (`--workers`, two services): each
    opens it and none fails on "table ... already exists" (before the schema lock: 3 of 40
    opens failed, 4 processes at a time)."""
    import subprocess
    import sys

    for trial in range(5):
        db = tmp_path / f"race{trial}.db"
        code = f"from kernelsight.db import open_db; open_db({str(db)!r}).dispose()"
        ps = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
              for _ in range(4)]
        errs = [p.communicate(timeout=120)[1] for p in ps]
        assert all(p.returncode == 0 for p in ps), [e[-300:] for e in errs if e]
