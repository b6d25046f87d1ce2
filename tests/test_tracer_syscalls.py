"""The syscall tracer end to end: real kernel, real collector/ingester processes, real SQLite.

Children with distinctive names (prctl PR_SET_NAME) make known slow and fast syscalls through
libc's syscall(2), so the syscall numbers are exactly the ones asserted (x86_64 numbers)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kernelsight.collectors.syscalls import skip_jiffies, syscall_name
from kernelsight.config import Settings

from conftest import need_root, running_pipeline

NR_CLOCK_NANOSLEEP = 230
NR_NANOSLEEP = 35
NR_FUTEX = 202
ETIMEDOUT = 110

# A child helper: prctl(PR_SET_NAME), then raw syscalls via libc.syscall.
PRELUDE = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    class TS(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
    def name(n):
        assert libc.prctl(15, n.encode(), 0, 0, 0) == 0  # PR_SET_NAME
    def nanosleep(ns):
        ts = TS(0, ns)
        assert libc.syscall(35, ctypes.byref(ts), None) == 0
    def fast(n, fd):
        for _ in range(n):
            os.getpid()
            os.read(fd, 1)
""")

SLEEPER = PRELUDE + textwrap.dedent("""
    fd = os.open("/dev/zero", os.O_RDONLY)
    name("ks_sleep23")
    fast(500, fd)
    for _ in range(23):
        nanosleep(20_000_000)
        fast(50, fd)
    # Just over / well under the 10 ms threshold: the jiffies shortcut must keep the first.
    name("ks_edge")
    for _ in range(8):
        nanosleep(10_300_000)
        nanosleep(1_000_000)
""")

ARG0 = PRELUDE + textwrap.dedent("""
    name("ks_arg0")
    # clock_nanosleep's clockid is an int: the kernel uses the low 32 bits of the register
    # (1 = CLOCK_MONOTONIC), so a 64-bit value with the top bit set is arg0 of a real sleep.
    ts = TS(0, 25_000_000)
    r = libc.syscall(230, ctypes.c_uint64(0xFEDCBA9800000001), 0, ctypes.byref(ts), None)
    assert r == 0, ctypes.get_errno()
    # futex(FUTEX_WAIT_PRIVATE) on a word that holds the expected value: times out (error).
    word = ctypes.c_int(0)
    ts = TS(0, 20_000_000)
    r = libc.syscall(202, ctypes.byref(word), 128, 0, ctypes.byref(ts), None, 0)
    assert r == -1 and ctypes.get_errno() == 110, (r, ctypes.get_errno())
    print(ctypes.addressof(word))
""")


def run_child(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def rows(db: str, comm: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM syscall_events WHERE comm = ? ORDER BY timestamp",
                           (comm,)).fetchall()
    finally:
        con.close()


def test_skip_jiffies_is_conservative() -> None:
    # HZ=250 (4 ms ticks): a 10 ms threshold may only skip syscalls that crossed no tick.
    assert skip_jiffies(10_000_000, 250) == 0
    assert skip_jiffies(10_000_000, 1000) == 8
    assert skip_jiffies(10_000_000, 100) == -1
    assert skip_jiffies(1_000_000, 250) == -1
    assert skip_jiffies(10_000_000, None) == -1
    for hz in (100, 250, 300, 1000):
        tick = 1_000_000_000 // hz
        for thr in (0, 1_000_000, 10_000_000, 50_000_000):
            d = skip_jiffies(thr, hz)
            # d ticks observed => < (d + 2) ticks elapsed, which must stay below the threshold
            assert d < 0 or (d + 2) * tick <= thr


def test_syscall_names() -> None:
    assert syscall_name(NR_NANOSLEEP) == "nanosleep"
    assert syscall_name(NR_CLOCK_NANOSLEEP) == "clock_nanosleep"
    assert syscall_name(435) == "clone3"
    assert syscall_name(-1).startswith("[unknown")


def test_slow_syscalls_exact(settings: Settings, tmp_path: Path) -> None:
    need_root()
    settings = settings.with_(record_waits=True)  # nanosleeps are waits: one row each
    with running_pipeline(settings, ["syscalls"], tmp_path / "logs"):
        t0 = time.time_ns()
        run_child(SLEEPER)
        t1 = time.time_ns()
    got = rows(settings.db_path, "ks_sleep23")
    assert len(got) == 23, [(r["syscall_name"], r["latency_ns"]) for r in got]
    pids = {r["pid"] for r in got}
    assert len(pids) == 1
    for r in got:
        assert r["syscall_nr"] == NR_NANOSLEEP and r["syscall_name"] == "nanosleep"
        assert 20_000_000 <= r["latency_ns"] < 2_000_000_000
        assert t0 <= r["timestamp"] <= t1
        assert r["ret_value"] == 0 and r["is_error"] == 0
        assert r["tid"] == r["pid"] and r["host"] == "testhost"
        assert 0 <= r["cpu"] < 1024 and r["uid"] == 0
    edge = rows(settings.db_path, "ks_edge")
    assert len(edge) == 8, [(r["syscall_name"], r["latency_ns"]) for r in edge]
    assert all(r["syscall_name"] == "nanosleep" and r["latency_ns"] >= 10_300_000
               for r in edge)
    assert {r["pid"] for r in edge} == pids


def test_arg0_and_errors_round_trip(settings: Settings, tmp_path: Path) -> None:
    need_root()
    settings = settings.with_(record_waits=True)  # clock_nanosleep and futex are waits
    with running_pipeline(settings, ["syscalls"], tmp_path / "logs"):
        t0 = time.time_ns()
        addr = int(run_child(ARG0))
        t1 = time.time_ns()
    got = rows(settings.db_path, "ks_arg0")
    assert [r["syscall_nr"] for r in got] == [NR_CLOCK_NANOSLEEP, NR_FUTEX], [
        dict(r) for r in got]
    sleep, futex = got
    assert sleep["syscall_name"] == "clock_nanosleep"
    assert sleep["arg0"] == 0xFEDCBA9800000001 - 2**64
    assert sleep["arg0"] & 0xFFFFFFFFFFFFFFFF == 0xFEDCBA9800000001
    assert sleep["ret_value"] == 0 and sleep["is_error"] == 0
    assert sleep["latency_ns"] >= 25_000_000
    assert futex["syscall_name"] == "futex"
    assert futex["arg0"] == addr
    assert futex["ret_value"] == -ETIMEDOUT and futex["is_error"] == 1
    assert futex["latency_ns"] >= 20_000_000
    assert all(t0 <= r["timestamp"] <= t1 for r in got)


def test_ringbuf_overflow_is_counted(settings: Settings, tmp_path: Path) -> None:
    """A one-page ring buffer and no threshold: events are lost in the kernel, and every one
    is accounted for (stored + dropped == produced)."""
    need_root()
    settings = settings.with_(min_latency_ms=0.0, ringbuf_pages=1)
    with running_pipeline(settings, ["syscalls"], tmp_path / "logs"):
        subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=200000"],
                       check=True, capture_output=True, timeout=30)
        time.sleep(0.5)
    con = sqlite3.connect(settings.db_path)
    try:
        acc = con.execute(
            "SELECT metric, reason, SUM(v) FROM (SELECT instance, metric, reason, MAX(value) AS v"
            " FROM pipeline_accounting WHERE event_type = 'syscall_events'"
            " GROUP BY instance, metric, reason) GROUP BY metric, reason").fetchall()
        stored = con.execute("SELECT COUNT(*) FROM syscall_events").fetchone()[0]
        dead = con.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()
    counts = {(m, r): v for m, r, v in acc}
    produced = counts.get(("produced", ""), 0)
    dropped = sum(v for (m, _), v in counts.items() if m == "dropped")
    assert counts.get(("dropped", "ringbuf_full"), 0) > 0, counts
    assert dead == 0
    assert stored + dropped == produced, (stored, counts)


# Waits and service time in one known process: N nanosleeps (waits) and one mmap that
# populates 256 MiB (service time, well over 10 ms: the kernel zeroes every page).
MIXED = PRELUDE + textwrap.dedent("""
    import mmap
    name("ks_mixed")
    print(os.getpid(), flush=True)
    for _ in range(N):
        nanosleep(20_000_000)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    size = 256 << 20
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x8000  # MAP_POPULATE
    p = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    assert p not in (None, ctypes.c_void_p(-1).value)
""")
N_WAITS = 37
NR_MMAP = 9


def test_waits_summarised_exactly(settings: Settings, tmp_path: Path) -> None:
    """By default a known number of waits in a known process is one set of summary rows
    whose counts add up to exactly that number, with the right total latency; the slow
    service-time syscall is still one syscall_events row, and the runbook query works."""
    need_root()
    with running_pipeline(settings, ["syscalls"], tmp_path / "logs"):
        t0 = time.time_ns()
        pid = int(run_child(MIXED.replace("range(N)", f"range({N_WAITS})")))
        t1 = time.time_ns()
        time.sleep(1.5)  # one more interval: the last summaries are published
    con = sqlite3.connect(settings.db_path)
    try:
        summ = con.execute(
            "SELECT comm, syscall_nr, syscall_name, wait_count, latency_sum_ns, latency_max_ns,"
            " interval_ns, timestamp FROM syscall_wait_summaries WHERE pid = ?",
            (pid,)).fetchall()
        events = con.execute(
            "SELECT syscall_name, latency_ns, comm FROM syscall_events WHERE pid = ?",
            (pid,)).fetchall()
        runbook = con.execute(
            "SELECT comm, syscall_name, latency_ns / 1000000.0 as latency_ms FROM "
            "syscall_events ORDER BY latency_ns DESC LIMIT 10").fetchall()
    finally:
        con.close()
    sleeps = [r for r in summ if r[2] == "nanosleep"]
    assert {r[0] for r in sleeps} == {"ks_mixed"} and {r[1] for r in sleeps} == {NR_NANOSLEEP}
    count = sum(r[3] for r in sleeps)
    total = sum(r[4] for r in sleeps)
    assert count == N_WAITS, summ
    # each sleep lasts at least 20 ms; a loaded machine adds scheduling delay, bounded here
    assert N_WAITS * 20_000_000 <= total <= N_WAITS * 20_000_000 + N_WAITS * 30_000_000, total
    assert 20_000_000 <= max(r[5] for r in sleeps) <= 50_000_000 + 20_000_000
    assert all(r[6] > 0 for r in sleeps)
    assert all(t0 <= r[7] <= t1 + 2_000_000_000 for r in sleeps)
    assert [e for e in events if e[0] == "nanosleep"] == []  # waits are not rows any more
    mm = [e for e in events if e[0] == "mmap"]
    assert len(mm) == 1 and mm[0][1] >= 10_000_000 and mm[0][2] == "ks_mixed", events
    assert ("ks_mixed", "mmap") in {(r[0], r[1]) for r in runbook}


def test_untimed_syscalls_are_counted(settings: Settings, tmp_path: Path) -> None:
    """A thread already in a syscall when the tracer attaches is counted when it returns
    (in the accounting, reason untimed), not only logged."""
    need_root()
    child = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent("""
        name("ks_inflight")
        print("in", flush=True)
        ts = TS(4, 0)
        libc.syscall(35, ctypes.byref(ts), None)   # 4 s: spans the tracer's start
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout and child.stdout.readline() == "in\n"
        with running_pipeline(settings, ["syscalls"], tmp_path / "logs"):
            assert child.wait(30) == 0
            time.sleep(1.5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    con = sqlite3.connect(settings.db_path)
    try:
        acc = dict(con.execute(
            "SELECT reason, SUM(v) FROM (SELECT instance, reason, MAX(value) AS v FROM "
            "pipeline_accounting WHERE event_type = 'syscall_events' AND metric = 'dropped' "
            "GROUP BY instance, reason) GROUP BY reason").fetchall())
        rows = con.execute("SELECT COUNT(*) FROM syscall_wait_summaries WHERE comm = "
                           "'ks_inflight'").fetchone()[0]
    finally:
        con.close()
    assert acc.get("untimed", 0) >= 1, acc
    assert rows == 0  # its sleep's start was never seen: no latency is made up


def test_record_waits_from_the_environment() -> None:
    """`run` hands its children KS_RECORD_WAITS=False/True (str of the setting): the hosted
    collectors must read False as False (a non-empty string is truthy)."""
    from kernelsight.collectors.host import settings_from_env
    from kernelsight.exceptions import ConfigError

    assert settings_from_env({"KS_RECORD_WAITS": "False"}).record_waits is False
    assert settings_from_env({"KS_RECORD_WAITS": "True"}).record_waits is True
    assert settings_from_env({"KS_RECORD_WAITS": "1"}).record_waits is True
    assert settings_from_env({}).record_waits is False
    import pytest

    with pytest.raises(ConfigError, match="KS_RECORD_WAITS"):
        settings_from_env({"KS_RECORD_WAITS": "maybe"})
