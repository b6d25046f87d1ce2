"""PSI and vmstat end to end: the real scraper on this machine's /proc, through the private
Redis and a real ingester, into SQLite. Ground truth: a child maps an uncached file and
touches every page (major faults it counts itself with getrusage); the stored system-wide
pgmajfault must have grown by at least that between the samples around it, and every stored
counter lies between the test's own reads of /proc before and after."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from test_tracer_pagefaults import uncached_file

from kernelsight import procfs, report, schema
from kernelsight.db import open_db

from conftest import running_pipeline

FILE_BYTES = 8 << 20
CHILD = r"""
import json, mmap, os, resource, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)  # no readahead: one major fault per page
total = sum(m[off] for off in range(0, len(m), mmap.PAGESIZE))
ru = resource.getrusage(resource.RUSAGE_SELF)
os.write(1, json.dumps({"majflt": ru.ru_majflt, "minflt": ru.ru_minflt}).encode())
os._exit(0)
"""
# The scraper stamps a sample, then reads its files: a sample stamped this long before the
# workload started read /proc/vmstat before it too (the reads take about a millisecond).
READ_SLACK_NS = 300_000_000


def now_proc() -> tuple[dict[str, int], dict[str, dict]]:
    vm = procfs.parse_vmstat(Path("/proc/vmstat").read_text())
    psi = {r: procfs.parse_pressure(Path(f"/proc/pressure/{r}").read_text(), r)
           for r in procfs.PSI_RESOURCES}
    return vm, psi


def rows(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_sample_after(db: Path, ts: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if rows(db, "SELECT 1 FROM vmstat_stats WHERE timestamp > ? LIMIT 1", ts):
            return
        time.sleep(0.1)
    raise AssertionError(f"no vmstat_stats row stamped after {ts} within {timeout} s")


def test_psi_and_vmstat_reach_sqlite_and_agree_with_proc(settings, tmp_path):
    data = tmp_path / "mapped.bin"
    uncached_file(data, FILE_BYTES)
    s = settings.with_(interval=0.5)
    db = Path(s.db_path)
    open_db(db).dispose()  # as `kernelsight run` does before it starts anything
    vm0, psi0 = now_proc()
    t0 = time.time_ns()
    with running_pipeline(s, ["scraper"], tmp_path / "logs"):
        wait_sample_after(db, t0)
        time.sleep(READ_SLACK_NS / 1e9 + 0.3)  # so a sample lies well before the workload
        w0 = time.time_ns()
        child = subprocess.run([sys.executable, "-c", CHILD, str(data)], capture_output=True,
                               timeout=60, check=True)
        w1 = time.time_ns()
        got = json.loads(child.stdout)
        wait_sample_after(db, w1)
    t1 = time.time_ns()
    vm1, psi1 = now_proc()
    assert got["majflt"] >= 0.9 * FILE_BYTES // 4096, got  # the workload did fault

    # vmstat: every stored counter between the test's reads, never decreasing.
    cols = schema.BY_NAME["vmstat_stats"].column_names
    vms = [dict(zip(("timestamp", *cols), r, strict=True)) for r in rows(
        db, f"SELECT timestamp, {', '.join(cols)} FROM vmstat_stats ORDER BY timestamp")]
    assert len(vms) >= 3
    assert all(t0 <= v["timestamp"] <= t1 for v in vms)
    for c in cols:
        seq = [v[c] for v in vms]
        assert vm0[c] <= seq[0] and seq == sorted(seq) and seq[-1] <= vm1[c], c
    before = [v for v in vms if v["timestamp"] < w0 - READ_SLACK_NS][-1]
    after = next(v for v in vms if v["timestamp"] > w1)
    grew = after["pgmajfault_total"] - before["pgmajfault_total"]
    assert got["majflt"] <= grew <= vm1["pgmajfault_total"] - vm0["pgmajfault_total"], (
        got, grew)
    assert after["pgfault_total"] - before["pgfault_total"] >= got["majflt"] + got["minflt"]

    # PSI: one row per resource per sample, percentages in range, totals bracketed.
    cols = schema.BY_NAME["pressure_stats"].column_names
    psi = [dict(zip(("timestamp", *cols), r, strict=True)) for r in rows(
        db, f"SELECT timestamp, {', '.join(cols)} FROM pressure_stats ORDER BY timestamp")]
    by_res: dict[str, list[dict]] = {}
    for r in psi:
        by_res.setdefault(r["resource"], []).append(r)
    assert sorted(by_res) == ["cpu", "io", "memory"]
    assert len({len(v) for v in by_res.values()}) == 1 and len(by_res["cpu"]) == len(vms)
    for res, rs in by_res.items():
        for r in rs:
            assert all(0.0 <= r[c] <= 100.0 for c in cols if c.endswith("_pct")), r
        for c in ("some_total_us", "full_total_us"):
            seq = [r[c] for r in rs]
            assert psi0[res][c] <= seq[0] and seq == sorted(seq) and seq[-1] <= psi1[res][c]

    # Accounting: everything produced was stored, nothing unaccounted.
    ev = report.report_job(str(db))["json"]["event_types"]
    for t, n in (("vmstat_stats", len(vms)), ("pressure_stats", len(psi))):
        assert ev[t]["produced"] == ev[t]["stored"] == n and ev[t]["unaccounted"] == 0, ev[t]

    # `kernelsight analyze` shows them as signals; the major-fault rate integrates to the
    # counter's growth over the window, which holds the workload's faults.
    p = subprocess.run([sys.executable, "-m", "kernelsight", "analyze", "--db", str(db),
                        "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    sig = {x["name"]: x for x in json.loads(p.stdout)["signals"]}
    assert {f"psi.{r}.some_avg10_pct" for r in ("cpu", "memory", "io")} <= set(sig)
    assert {"psi.io.full_avg10_pct", "vmstat.pgscan_per_s", "vmstat.oom_kills"} <= set(sig)
    m = sig["vmstat.pgmajfault_per_s"]
    assert m["unit"] == "1/s" and m["rows"] == len(vms)
    area = round(sum(v or 0 for v in m["values"]) * m["step_ns"] / 1e9)
    assert got["majflt"] <= area == vms[-1]["pgmajfault_total"] - vms[0]["pgmajfault_total"]
