"""A database written by schema version 3 (a real file: `kernelsight run --duration 3
--collectors scraper` by commit bf39afc, gzipped) is upgraded in place to version 4 by adding
the PSI and vmstat tables; nothing in it is lost, and readers say how to upgrade it."""

from __future__ import annotations

import gzip
import sqlite3

import pytest

from kernelsight import report, schema
from kernelsight.db import open_db, open_readonly
from kernelsight.exceptions import DatabaseError

from conftest import FIXTURES

V3 = FIXTURES / "db" / "schema-v3-scraper-3s.db.gz"
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
    assert after["version"] == str(schema.SCHEMA_VERSION) == "4"
    assert {n: after[n] for n in NEW} == dict.fromkeys(NEW, 0)
    assert {k: v for k, v in after.items() if k in before and k != "version"} == {
        k: v for k, v in before.items() if k != "version"}
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
    with pytest.raises(DatabaseError, match="version 2, this version needs 4; use a new"):
        open_db(db)
    with pytest.raises(DatabaseError, match="report on it with the version that wrote it"):
        open_readonly(db)
    assert db.exists()
