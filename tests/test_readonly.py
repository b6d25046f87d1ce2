"""Readers never write: `report`, `query` and the rq job open SQLite read-only, so a foreign
file stays byte-identical and a database on a read-only mount can still be reported on."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsight.db import open_db

COMMANDS = {
    "report": ["report", "--db"],
    "query": ["query", "--demo", "--db"],
}


def ks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def snapshot(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def foreign(path: Path, wal: bool) -> None:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT)")
    con.execute("INSERT INTO accounts(owner) VALUES ('alice'), ('bob')")
    con.commit()
    con.close()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_reader_leaves_foreign_file_untouched(tmp_path, cmd, wal):
    db = tmp_path / "foreign.sqlite"
    foreign(db, wal)
    before = snapshot(tmp_path)
    res = ks(*COMMANDS[cmd], str(db))
    assert snapshot(tmp_path) == before, "the reader changed or created files"
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "not a KernelSight database" in err[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_reader_on_missing_or_directory(tmp_path, cmd):
    for target, what in ((tmp_path / "nope.db", "no database"), (tmp_path, "not a file")):
        res = ks(*COMMANDS[cmd], str(target))
        assert res.returncode == 4 and what in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def ro_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``tmp_path/rw`` and the same directory bind-mounted read-only at ``tmp_path/ro``."""
    if os.geteuid() != 0:
        pytest.fail("this test bind-mounts a directory: run it as root (CI and make test do)")
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(rw), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        yield rw, ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_reader_on_readonly_mount_after_writer_exit(ro_mount, cmd):
    """A KernelSight database whose writer exited cleanly (WAL mode, no -wal/-shm left), on a
    read-only mount like the reporter's: it is read, and nothing is written anywhere."""
    rw, ro = ro_mount
    open_db(rw / "ks.db").dispose()
    assert sorted(p.name for p in rw.iterdir()) == ["ks.db"]
    before = snapshot(rw)
    res = ks(*COMMANDS[cmd], str(ro / "ks.db"))
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == (1 if cmd == "report" else 0), res.stderr  # empty run: FAIL
    assert "syscall_events" in res.stdout
    assert snapshot(rw) == before


def test_reader_sees_live_writer(tmp_path):
    """While a writer holds the WAL open (its -wal has rows not yet checkpointed), the
    read-only report sees them and leaves the main file as it was."""
    db = tmp_path / "ks.db"
    eng = open_db(db)
    con = eng.raw_connection()
    try:
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("INSERT INTO memory_metrics(timestamp, host, mem_total_kb) "
                    "VALUES (1, 'h', 1)")
        con.commit()
        main_before = hashlib.sha256(db.read_bytes()).hexdigest()
        res = ks("report", "--db", str(db), "--json")
        assert res.returncode == 1, res.stderr
        assert json.loads(res.stdout)["event_types"]["memory_metrics"]["rows"] == 1
        assert hashlib.sha256(db.read_bytes()).hexdigest() == main_before
    finally:
        con.close()
        eng.dispose()


def test_reader_on_readonly_mount_sees_live_writer_and_its_restart(ro_mount):
    """The compose reporter's case: ./data mounted read-only, the ingester writing through the
    read-write path. Rows committed to the WAL (not checkpointed) are seen, after the writer
    exits cleanly (-wal removed: read immutable) and after a new writer starts and commits
    more (-wal back): every report sees every committed row, never an older state."""
    rw, ro = ro_mount

    def rows() -> int:
        res = ks("report", "--db", str(ro / "ks.db"), "--json")
        assert "Traceback" not in res.stderr, res.stderr
        return json.loads(res.stdout)["event_types"]["memory_metrics"]["rows"]

    def write(n: int) -> tuple:
        eng = open_db(rw / "ks.db")
        con = eng.raw_connection()
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.executemany("INSERT INTO memory_metrics(timestamp, host, mem_total_kb) "
                        "VALUES (?, 'h', 1)", [(i + 1,) for i in range(n)])
        con.commit()
        return eng, con

    eng, con = write(3)
    assert (rw / "ks.db-wal").stat().st_size > 0
    assert rows() == 3  # live writer, rows only in the WAL
    con.close()
    eng.dispose()
    assert not (rw / "ks.db-wal").exists()  # clean exit: checkpointed, -wal removed
    assert rows() == 3
    eng, con = write(4)  # the writer is back (docker compose up -d)
    try:
        assert rows() == 7
    finally:
        con.close()
        eng.dispose()
