"""The scheduler tracer against the real kernel: its counts must equal the kernel's own
(/proc/PID/status), and its per-thread state must not leak when threads exit."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernelsight import schema
from kernelsight.bpfsupport import TRACEFS, ensure_tracefs
from kernelsight.collectors.sched import ProcSnapshot, SchedTracer, make_row, switch_state_masks
from kernelsight.config import Settings
from kernelsight.streams import Publisher

from conftest import need_root, running_pipeline

SLEEPS = 37

SLEEPER = textwrap.dedent(f"""
    import ctypes, time
    ctypes.CDLL(None).prctl(15, b"ks_sched37", 0, 0, 0)
    t = time.process_time()
    while time.process_time() - t < 0.3:  # CPU time spanning several intervals
        pass
    for _ in range({SLEEPS}):
        time.sleep(0.01)
""")

THREADS = 400
TASK_STORAGE = 29  # BPF_MAP_TYPE_TASK_STORAGE
SPAWNER = textwrap.dedent(f"""
    import threading, time
    tids = []
    def work():
        tids.append(threading.get_native_id())
        time.sleep(0.001)
    for _ in range({THREADS} // 50):
        ts = [threading.Thread(target=work) for _ in range(50)]
        for t in ts: t.start()
        for t in ts: t.join()
    print(" ".join(map(str, tids)))
""")


def cpu_ns(pid: int) -> int:
    """The kernel's CPU time of the task (sum_exec_runtime), /proc/PID/schedstat field 1."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def ctxt_switches(pid: int) -> tuple[int, int]:
    """(voluntary, nonvoluntary) from /proc/PID/status."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        vals[k] = v.strip()
    return int(vals["voluntary_ctxt_switches"]), int(vals["nonvoluntary_ctxt_switches"])


def stale_entries(col: SchedTracer) -> set[int]:
    """tids with an entry in the tracer's per-thread map but no thread in /proc."""
    return {t for t in col.thread_entries() if not os.path.exists(f"/proc/{t}")}


def test_switch_state_masks_from_print_fmt() -> None:
    ensure_tracefs()
    fmt = (TRACEFS / "events/sched/sched_switch/format").read_text()
    assert switch_state_masks(fmt) == (0x100, 0x30)  # 6.18: TASK_REPORT_MAX, X|Z
    old = ('print fmt: "prev_state=%s%s", REC->prev_state & (2048-1) ? __print_flags('
           'REC->prev_state & (2048-1), "|", { 1, "S"} , { 2, "D" }, { 4, "T" }, { 8, "t" }, '
           '{ 16, "Z" }, { 32, "X" }, { 64, "x" }) : "R", REC->prev_state & 2048 ? "+" : ""')
    assert switch_state_masks(old) == (2048, 0x30)
    assert switch_state_masks("garbage") == (0x100, 0x30)


def test_make_row_interval_arithmetic() -> None:
    before = ProcSnapshot("a", 10, 5, 9, 1_000_000, {40: 3})
    now = ProcSnapshot("b", 13, 6, 12, 5_000_000, {40: 3, 200: 4})
    row = make_row(7, "h", 42, now, before)
    assert row is not None and row.keys() == {"timestamp", "host",
                                              *schema.BY_NAME["sched_events"].column_names}
    assert (row["context_switches"], row["voluntary_switches"], row["involuntary_switches"],
            row["wakeups"]) == (4, 3, 1, 3)
    assert row["cpu_time_ms"] == 4.0 and row["avg_timeslice_us"] == 1000.0
    assert row["comm"] == "b" and row["pid"] == 42
    assert row["runq_latency_p50_us"] == row["runq_latency_max_us"] > 0  # only bucket 200
    assert make_row(7, "h", 42, now, now) is None  # no activity: no row


def test_voluntary_switches_match_proc(settings: Settings, tmp_path: Path) -> None:
    need_root()
    # Short intervals: the child's counts are spread over several rows that must add up.
    settings = settings.with_(interval=0.1)
    with running_pipeline(settings, ["sched"], tmp_path / "logs"):
        t0 = time.time_ns()
        child = subprocess.Popen([sys.executable, "-c", SLEEPER])
        # Wait for it to exit but do not reap it: the zombie's /proc/PID/status holds the
        # kernel's final counts, the last switch (into the zombie state) included.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        time.sleep(0.2)  # its final switch-out follows exit_notify by microseconds
        vol, invol = ctxt_switches(child.pid)
        cpu_ms = cpu_ns(child.pid) / 1e6
        assert child.wait() == 0
        t1 = time.time_ns()
        time.sleep(0.1)
    con = sqlite3.connect(settings.db_path)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM sched_events WHERE pid = ? ORDER BY timestamp",
                       (child.pid,)).fetchall()
    con.close()
    assert len(rows) >= 3, [dict(r) for r in rows]  # 37 x 10 ms over 0.1 s intervals
    assert vol >= SLEEPS
    assert sum(r["voluntary_switches"] for r in rows) == vol
    got_invol = sum(r["involuntary_switches"] for r in rows)
    assert abs(got_invol - invol) <= 2, (got_invol, invol)
    assert rows[-1]["comm"] == "ks_sched37"
    assert sum(r["wakeups"] for r in rows) >= SLEEPS
    got_cpu = sum(r["cpu_time_ms"] for r in rows)
    assert cpu_ms >= 300 and abs(got_cpu - cpu_ms) <= max(5.0, 0.02 * cpu_ms), (got_cpu, cpu_ms)
    for r in rows:
        assert r["context_switches"] == r["voluntary_switches"] + r["involuntary_switches"]
        assert 0 <= r["runq_latency_p50_us"] <= r["runq_latency_p95_us"] \
            <= r["runq_latency_max_us"] < 10_000_000
        assert t0 <= r["timestamp"] <= t1 + 5_000_000_000 and r["host"] == "testhost"


@pytest.mark.parametrize("raw", [True, False], ids=["raw_tracepoints", "regular_fallback"])
def test_thread_state_does_not_leak(settings: Settings, raw: bool) -> None:
    need_root()
    pub = Publisher(settings, "sched")
    col = SchedTracer(settings, pub)
    col.use_raw = raw
    col.start()
    try:
        # This kernel has BTF and raw tracepoints: the default is the raw program, whose
        # per-thread state is task-local storage (freed by the kernel with the task, so there
        # is no per-tid map to leak); the regular-tracepoint fallback keeps a per-tid hash.
        assert col.raw == raw
        if raw:
            from bcc import lib

            m = col.bpf.module
            assert lib.bpf_table_type_id(m, lib.bpf_table_id(m, b"tstate")) == TASK_STORAGE
        child = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE,
                                 text=True)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        tids = {int(t) for t in out.split()}
        assert len(tids) == THREADS
        time.sleep(0.1)
        snap = col.read()[child.pid]  # each thread slept once and was woken at least once
        assert snap.nvcsw >= THREADS and snap.wakeups >= THREADS, snap
        # Every entry must belong to a live thread: none for the child's 400 dead threads, nor
        # for any other thread on the machine that exited. (Read twice: a thread exiting right
        # now is gone from /proc a moment before its last switch-out deletes its entry.)
        first = stale_entries(col)
        time.sleep(0.2)
        entries = col.thread_entries()
        leaked = first & stale_entries(col)
        assert not leaked, sorted(leaked)[:10]
        assert not tids & {t for t in entries if not os.path.exists(f"/proc/{t}")}
        # The (reaped) child process: its final counts are read and published, then it must
        # be seen gone with no change at two more intervals before its keys are deleted.
        col.interval()
        assert child.pid in {int(k.value) for k in col.procs}
        assert child.pid in col.cumulative and not col.cumulative.pending_deletion(child.pid)
        col.interval()
        assert child.pid in {int(k.value) for k in col.procs}
        assert col.cumulative.pending_deletion(child.pid)
        col.interval()
        assert child.pid not in {int(k.value) for k in col.procs}
        assert child.pid not in {int(k.tgid) for k in col.hist}
        assert child.pid not in col.cumulative
    finally:
        col.stop()
        pub.close()
