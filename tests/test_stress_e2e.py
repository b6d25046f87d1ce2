"""`make stress` end to end, as the README's first command runs it (short duration)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
import time
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


def ours(since: float) -> set[int]:
    """KernelSight, stress and redis processes started after ``since``."""
    out = set()
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= since and p.pid != os.getpid() and any(
                k in cmd for k in ("kernelsight", "redis-server", "stress-ng")):
            out.add(p.pid)
    return out


def test_make_stress_20s():
    need_root()
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    t0 = time.time()
    p = subprocess.run(["make", "stress", "TEST_DURATION=20"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, check=False)
    out = p.stdout + p.stderr
    print(out[-6000:])
    assert p.returncode == 0, out[-4000:]
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "Captured: 10/10 event types" in out
    assert "SUCCESS" in out
    db = ROOT / "data" / "stress_test.db"
    con = sqlite3.connect(db)
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
    # produced = stored + counted drops for every type, from the JSON report.
    js = subprocess.run([str(ROOT / ".venv/bin/kernelsight"), "report", "--json", "--db",
                         str(db)], capture_output=True, check=False)
    rep = orjson.loads(js.stdout)
    assert rep["verdict"] == "SUCCESS" and js.returncode == 0
    for name, t in rep["event_types"].items():
        assert t["produced"] == t["stored"] + sum(t["dropped"].values()) + sum(
            t["dead_letters"].values()), name
    # Nothing left behind: no processes, no temp files, no stress work dir.
    time.sleep(1)
    assert not ours(t0), [psutil.Process(x).cmdline() for x in ours(t0)]
    leftover = {f for f in set(os.listdir(tempfile.gettempdir())) - tmp_before
                if f.startswith(("ks-", "tmp"))}
    assert not leftover, leftover
    assert not [f for f in (ROOT / "data").iterdir() if f.name.startswith("ks-stress")]
