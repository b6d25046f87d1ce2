"""`make stress` end to end, as the README's first command runs it (short duration)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psutil

from kernelsight import schema

from conftest import need_root

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = (
    "SELECT comm, syscall_name, latency_ns / 1000000.0 as latency_ms FROM syscall_events "
    "ORDER BY latency_ns DESC LIMIT 10;",
    "SELECT fault_type, COUNT(*) as count, AVG(latency_ns) / 1000.0 as avg_us FROM "
    "page_fault_events GROUP BY fault_type;",
    "SELECT datetime(timestamp/1000000000, 'unixepoch') as time, read_p95_us, write_p95_us "
    "FROM io_latency_stats ORDER BY timestamp DESC LIMIT 10;",
)


MARK = "KS_E2E_TEST_MARK"


def ours(mark: str) -> set[int]:
    """Processes started by this test's `make stress` (they inherit its environment's mark;
    other tests or users on the machine do not)."""
    out = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and p.environ().get(MARK) == mark:
                out.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def test_make_stress_20s():
    """`make stress` on a database that already holds an older run: the database is kept,
    the stress run is recorded, and the verdict and figures cover that run only."""
    need_root()
    db = ROOT / "data" / f"e2e-{os.getpid()}.db"  # a file of this test's own
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        f.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    old = subprocess.run([str(ROOT / ".venv/bin/kernelsight"), "run", "--collectors", "scraper",
                          "--duration", "3", "--interval", "1", "--db", str(db)],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert old.returncode == 0, old.stderr
    con = sqlite3.connect(db)
    old_rows = con.execute("SELECT COUNT(*) FROM memory_metrics").fetchone()[0]
    con.close()
    assert old_rows >= 3
    # Its own temp directory and a mark in the environment: what it leaves behind is found
    # without mistaking anything else running on the machine for it.
    tmp = Path(tempfile.mkdtemp(prefix="e2e-"))
    mark = uuid.uuid4().hex
    p = subprocess.run(["make", "stress", "TEST_DURATION=20", f"DB={db}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "TMPDIR": str(tmp), MARK: mark})
    out = p.stdout + p.stderr
    print(out[-6000:])
    try:
        _check(db, out, p.returncode, mark, tmp, old_rows)
    finally:
        for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            f.unlink(missing_ok=True)


def _check(db: Path, out: str, rc: int, mark: str, tmp: Path, old_rows: int) -> None:
    assert rc == 0, out[-4000:]
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "Captured: 10/10 event types" in out
    assert "SUCCESS" in out
    out = " ".join(out.split())  # rich wraps long lines
    assert "kept, this run is added to it" in out  # not deleted
    con = sqlite3.connect(db)
    (stress_id, verdict, start, end), = con.execute(
        "SELECT run_id, verdict, start_ns, end_ns FROM runs WHERE kind = 'stress' "
        "ORDER BY stream_id DESC LIMIT 1")
    assert verdict == "SUCCESS" and f"--run {stress_id}" in out
    assert con.execute("SELECT COUNT(DISTINCT run_id) FROM runs").fetchone()[0] == 2
    for et in schema.CORE_EVENT_TYPES:
        assert con.execute(f"SELECT COUNT(*) FROM {et.name}").fetchone()[0] > 0, et.name
    now = time.time()
    for q in RUNBOOK:
        rows = con.execute(q).fetchall()
        assert rows, q
    # Plausible units: slow syscalls >= 10 ms and below the run length; dates are today's.
    ms = [r[2] for r in con.execute(RUNBOOK[0])]
    assert all(10 <= m <= 600_000 for m in ms), ms
    newest = con.execute("SELECT MAX(timestamp) FROM io_latency_stats").fetchone()[0] / 1e9
    assert now - 600 <= newest <= now
    for fault_type, count, avg_us in con.execute(RUNBOOK[1]):
        assert fault_type in ("major", "minor") and count > 0 and 0 < avg_us < 1e6
    con.close()
    # produced = stored + counted drops for every type, from the JSON report of the latest
    # run (the default); its rows are the stress run's only, not the older run's.
    js = subprocess.run([str(ROOT / ".venv/bin/kernelsight"), "report", "--json", "--db",
                         str(db)], capture_output=True, check=False)
    rep = orjson.loads(js.stdout)
    assert rep["verdict"] == "SUCCESS" and js.returncode == 0
    assert rep["window"]["run_id"] == stress_id
    assert rep["duration_s"] == (end - start) / 1e9
    for name, t in rep["event_types"].items():
        assert t["produced"] == t["stored"] + sum(t["dropped"].values()) + sum(
            t["dead_letters"].values()), name
    con = sqlite3.connect(db)
    in_run = con.execute("SELECT COUNT(*) FROM memory_metrics WHERE timestamp BETWEEN ? AND ?",
                         (start, end)).fetchone()[0]
    total = con.execute("SELECT COUNT(*) FROM memory_metrics").fetchone()[0]
    con.close()
    assert rep["event_types"]["memory_metrics"]["stored"] == in_run == total - old_rows
    # Nothing left behind: no processes, no temp files, no stress work dir.
    time.sleep(1)
    assert not ours(mark), [psutil.Process(x).cmdline() for x in ours(mark)]
    leftover = list(tmp.iterdir())
    assert not leftover, leftover
    tmp.rmdir()
    assert not [f for f in (ROOT / "data").iterdir() if f.name.startswith("ks-stress")]
