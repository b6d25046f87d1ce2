"""Wait versus work: the one classification (pure) and its use by report and query on a real
SQLite database (rows inserted directly: the classification, not the tracer, is under test)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text

from kernelsight import report, schema, waits
from kernelsight.db import open_db, open_readonly


@pytest.mark.parametrize("name", ["futex", "wait4", "waitid", "epoll_wait", "epoll_pwait",
                                  "poll", "ppoll", "select", "pselect6", "nanosleep",
                                  "clock_nanosleep", "pause", "rt_sigtimedwait", "accept4",
                                  "recvfrom", "recvmsg"])
def test_blocking_waits(name):
    assert waits.classify(name) == waits.WAIT


@pytest.mark.parametrize("name", ["fsync", "fdatasync", "openat", "mmap", "execve",
                                  "pread64", "pwrite64", "write", "getdents64", "unlink"])
def test_service_time(name):
    assert waits.classify(name) == waits.SERVICE


def test_descriptor_kind_decides_reads_and_writes():
    for kind in (waits.FD_PIPE, waits.FD_SOCKET, waits.FD_TTY, waits.FD_EVENT):
        assert waits.classify("read", kind) == waits.WAIT
        assert waits.classify("write", kind) == waits.WAIT
    for kind in (waits.FD_FILE, waits.FD_BLOCK):
        assert waits.classify("read", kind) == waits.SERVICE
        assert waits.classify("pwrite64", kind) == waits.SERVICE
    # Unknown kind: stdin reads wait, other reads are file service, sends are sockets.
    assert waits.classify("read", fd=0) == waits.WAIT
    assert waits.classify("read", fd=3) == waits.SERVICE
    assert waits.classify("sendto") == waits.WAIT


def test_families():
    assert waits.family("fsync") == "sync"
    assert waits.family("pread64") == "read"
    assert waits.family("openat") == "open"
    assert waits.family("futex") == "wait"
    assert waits.family("recvfrom") == "net"
    assert waits.family("no_such_call") == "other"


def test_sql_condition_matches_classify(tmp_path):
    """service_sql() and classify() are one rule: compare them on every listed name."""
    names = sorted(waits.WAIT_NAMES | waits.FD_IO_NAMES | {"fsync", "openat", "ioctl"})
    eng = open_db(tmp_path / "w.db")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TEMP TABLE t (syscall_name TEXT, arg0 INT)")
        for n in names:
            for fd in (0, 5):
                c.execute(text("INSERT INTO t VALUES (:n, :fd)"), {"n": n, "fd": fd})
        got = set(c.execute(text(f"SELECT syscall_name, arg0 FROM t WHERE "
                                 f"{waits.service_sql()}")).all())
    eng.dispose()
    want = {(n, fd) for n in names for fd in (0, 5)
            if waits.classify(n, fd=fd) == waits.SERVICE}
    assert got == want


ROWS = [  # comm, pid, syscall, latency ms, arg0
    ("stress-ng", 100, "wait4", 59_960, 0), ("python3", 101, "futex", 59_786, 0),
    ("bash", 102, "read", 27_562, 0), ("jemalloc_bg_thd", 103, "futex", 10_001, 0),
    ("redis-server", 103, "fsync", 900, 7), ("python3", 4242, "fdatasync", 800, 9),
    ("find", 200, "read", 45, 4), ("cat", 201, "openat", 32, 3), ("dd", 202, "write", 28, 1),
]


@pytest.fixture
def db_with_waits(tmp_path):
    path = tmp_path / "ks.db"
    eng = open_db(path)
    et = schema.BY_NAME["syscall_events"]
    with eng.begin() as c:
        c.execute(schema.pipeline_accounting.insert(), [{
            "timestamp": 1, "host": "h", "instance": "ingest@h:4242:0123abcd",
            "source": "ingest", "event_type": "", "metric": "started", "reason": "",
            "value": 1}])
        c.execute(schema.TABLES[et.name].insert(), [{
            "timestamp": 10**18 + i, "host": "h", "pid": pid, "tid": pid, "cpu": 0, "uid": 0,
            "syscall_nr": 0, "syscall_name": name, "latency_ns": ms * 1_000_000,
            "ret_value": 0, "is_error": 0, "arg0": a0, "comm": comm}
            for i, (comm, pid, name, ms, a0) in enumerate(ROWS)])
    eng.dispose()
    return path


def test_report_samples_service_time_only(db_with_waits):
    eng = open_readonly(db_with_waits)
    rep = report.build(eng, str(db_with_waits))
    eng.dispose()
    assert [(c, s) for c, s, _ in rep.slow] == [("find", "read"), ("cat", "openat"),
                                                 ("dd", "write")]
    js = report.to_json(rep)
    assert {r["class"] for r in js["slow_syscalls"]} == {"service"}


def test_query_demo_hides_waits_and_own_processes(db_with_waits):
    out = subprocess.run([sys.executable, "-m", "kernelsight", "query", "--demo", "--db",
                          str(db_with_waits)], capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, check=True).stdout
    section = out.split("Slowest syscalls", 1)[1].split("┓", 1)[1].split("Recent memory", 1)[0]
    for shown in ("find", "cat", "dd", "openat", "service"):
        assert shown in section
    for hidden in ("wait4", "futex", "jemalloc", "redis-server", "fdatasync", "bash"):
        assert hidden not in section, hidden
