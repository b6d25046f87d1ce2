"""`kernelsight trace NAME --stdout`: ad-hoc tracing without Redis, compared with ground truth
(workloads doing a known number of known syscalls in a known process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import need_root

KS = [str(Path(sys.executable).with_name("kernelsight"))]
NR_GETPPID = 110
NR_NANOSLEEP = 35

# Waits for a line on stdin, then makes N getppid and K 20 ms nanosleeps, then exits.
WORKLOAD = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    class TS(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
    assert libc.prctl(15, sys.argv[1].encode(), 0, 0, 0) == 0
    n, k = int(sys.argv[2]), int(sys.argv[3])
    sys.stdin.readline()
    for _ in range(n):
        libc.syscall(110)
    ts = TS(0, 20_000_000)
    for _ in range(k):
        assert libc.syscall(35, ctypes.byref(ts), None) == 0
""")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    return e  # no Redis anywhere: --stdout must not need it


def traced(args: list[str], comm: str, n: int, k: int) -> tuple[str, str, int]:
    """Start the workload (blocked), then the tracer with ``args``; once the tracer says it is
    tracing, release the workload; when it has exited, end the tracer with SIGINT."""
    work = subprocess.Popen([sys.executable, "-c", WORKLOAD, comm, str(n), str(k)],
                            stdin=subprocess.PIPE, text=True)
    args = [a.replace("{pid}", str(work.pid)) for a in args]
    tr = subprocess.Popen([*KS, "trace", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env())
    try:
        assert tr.stderr is not None and work.stdin is not None
        line = tr.stderr.readline()
        assert line.startswith("Tracing "), line + tr.stderr.read()
        work.stdin.write("go\n")
        work.stdin.close()
        assert work.wait(60) == 0
        tr.send_signal(signal.SIGINT)
        out, err = tr.communicate(timeout=60)
    finally:
        for p in (work, tr):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert tr.returncode == 0, err
    return out, line + err, work.pid


def test_count_mode_matches_ground_truth() -> None:
    """--count per syscall, filtered to the workload's pid in the kernel: exactly N getppid
    and K nanosleeps, with a latency sum of at least K x 20 ms."""
    need_root()
    n, k = 20_000, 5
    out, err, _ = traced(["syscalls", "--stdout", "--min-latency-ms", "0", "--count",
                          "--json", "--pid", "{pid}"], "ks_count", n, k)
    got = {r["syscall"]: r for r in map(json.loads, out.splitlines())}
    assert got["getppid"]["count"] == n, got
    assert got["nanosleep"]["count"] == k
    assert got["nanosleep"]["latency_sum_ns"] >= k * 20_000_000
    assert "lost" not in err, err


def test_count_table_like_syscount() -> None:
    """The table form: a header, then one line per syscall, most frequent first."""
    need_root()
    out, _, _ = traced(["syscalls", "--stdout", "--min-latency-ms", "0", "--count",
                        "--comm", "ks_table"], "ks_table", 3000, 0)
    lines = out.splitlines()
    assert lines[0].split() == ["SYSCALL", "COUNT", "TIME_MS"]
    rows = {ln.split()[0]: int(ln.split()[1]) for ln in lines[1:]}
    assert rows["getppid"] == 3000, rows
    assert lines[1].split()[0] == "getppid"  # the most frequent first


def test_slow_syscalls_json_filtered_by_comm() -> None:
    """Events as JSON lines, --comm filtered in the kernel: exactly the K nanosleeps of the
    workload (with --record-waits, one row each) and nothing from any other task."""
    need_root()
    k = 7
    out, _, pid = traced(["syscalls", "--stdout", "--json", "--record-waits", "--comm",
                          "ks_json"], "ks_json", 100, k)
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert rows, out
    assert {(r["event_type"], r["pid"], r["comm"]) for r in rows} == {
        ("syscall_events", pid, "ks_json")}, rows
    assert [r["syscall_nr"] for r in rows] == [NR_NANOSLEEP] * k
    assert all(r["latency_ns"] >= 20_000_000 for r in rows)


def test_waits_summarised_on_stdout() -> None:
    """Without --record-waits the K waits come as summary rows adding up to K."""
    need_root()
    k = 9
    out, _, pid = traced(["syscalls", "--stdout", "--json", "--pid", "{pid}"], "ks_sum",
                         10, k)
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert {r["event_type"] for r in rows} == {"syscall_wait_summaries"}, rows
    assert sum(r["wait_count"] for r in rows if r["syscall_name"] == "nanosleep") == k
    assert {r["pid"] for r in rows} == {pid}


def test_sched_table_filtered_by_pid() -> None:
    """Another tracer through the same path: sched rows for the workload's pid only."""
    need_root()
    out, _, pid = traced(["sched", "--stdout", "--pid", "{pid}", "--interval", "0.5"],
                         "ks_sched", 1000, 10)
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].split()[:2] == ["TIME", "PID"], lines
    pids = {int(ln.split()[1]) for ln in lines[1:]}
    assert pids == {pid}, lines


@pytest.mark.parametrize(("args", "words"), [
    (["io", "--stdout", "--pid", "1"], "per device"),
    (["syscalls", "--count"], "--stdout"),
    (["sched", "--stdout", "--count"], "--count counts syscalls"),
])
def test_bad_options_are_one_line(args: list[str], words: str) -> None:
    p = subprocess.run([*KS, "trace", *args], capture_output=True, text=True, env=env(),
                       timeout=60, check=False)
    assert p.returncode != 0
    assert words in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
