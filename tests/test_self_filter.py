"""KernelSight never traces itself (issue 16 item 1): its own processes are filtered in the
kernel by every tracer, while other processes' events in the same run are recorded exactly."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis
from test_tracer_syscalls import NR_NANOSLEEP, SLEEPER, rows, run_child

from kernelsight import selfpids
from kernelsight.config import Settings

from conftest import need_root, running_pipeline

PID_TABLES = ("syscall_events", "syscall_wait_summaries", "page_fault_events",
              "page_fault_totals", "sched_events")


def test_registry_keeps_live_entries_and_prunes_the_rest(rclient: redis.Redis) -> None:
    """Entries are checked against /proc: a live pid with the recorded start time counts
    (with its descendants for a tree entry); an exited pid, a recycled pid (other start
    time) and another pid namespace's entry do not, and the dead ones are removed."""
    host = f"selftest-{os.getpid()}"
    key = selfpids.KEY.format(host=host)
    rclient.delete(key)
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "c = subprocess.Popen(['sleep', '30']); print(c.pid, flush=True); "
                               "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        assert parent.stdout
        grandchild = int(parent.stdout.readline())
        assert selfpids.register(rclient, host, parent.pid, tree=True)
        assert selfpids.register(rclient, host)  # this process, no tree
        entry = {"start": 1, "ns": selfpids.pid_namespace(), "tree": False}
        rclient.hset(key, str(os.getppid()), orjson.dumps(entry))  # start time mismatch
        rclient.hset(key, str(gone.pid), orjson.dumps(entry))  # exited
        other_ns = {"start": selfpids.proc_start(1), "ns": 12345, "tree": True}
        rclient.hset(key, "1", orjson.dumps(other_ns))  # pid 1 of another namespace
        got = selfpids.registered(rclient, host)
        assert got == {parent.pid, grandchild, os.getpid()}, got
        left = {int(k) for k in rclient.hkeys(key)}
        assert left == {parent.pid, os.getpid(), 1}, left
    finally:
        parent.kill()
        parent.wait()
        rclient.delete(key)


def ks_pids(stack) -> set[int]:
    pids = {p.popen.pid for p in stack.procs.values()}
    pids.add(stack.ingest.popen.pid)
    pids |= selfpids.descendants(stack.ingest.popen.pid)
    assert stack.redis is not None and stack.redis.proc is not None
    pids.add(stack.redis.proc.pid)
    return pids


def test_own_processes_produce_no_events(settings: Settings, tmp_path: Path) -> None:
    """All tracers, a private Redis, the ingester busy storing: no row of any per-process
    table belongs to a KernelSight process, while a known workload is recorded exactly."""
    need_root()
    # A private Redis (as `kernelsight run` starts), waits recorded one row each so that
    # every wait of our own processes would be a row if it were traced.
    settings = settings.with_(redis_url="", record_waits=True)
    names = ["scraper", "syscalls", "pagefaults", "io", "sched"]
    with running_pipeline(settings, names, tmp_path / "logs") as stack:
        ours = ks_pids(stack)
        t0 = time.time_ns()
        run_child(SLEEPER)
        t1 = time.time_ns()
        time.sleep(3)  # our processes keep waiting, polling, faulting and switching
        ours |= ks_pids(stack)
    con = sqlite3.connect(settings.db_path)
    try:
        found = {t: con.execute(
            f"SELECT pid, comm, COUNT(*) FROM {t} WHERE pid IN ({','.join(map(str, ours))}) "
            "GROUP BY pid, comm").fetchall() for t in PID_TABLES}
        totals = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in PID_TABLES}
        sleeper_pid = con.execute(
            "SELECT DISTINCT pid FROM syscall_events WHERE comm = 'ks_sleep23'").fetchall()
        sched = con.execute("SELECT COUNT(*) FROM sched_events WHERE pid = ?",
                            (sleeper_pid[0][0],)).fetchone()[0] if sleeper_pid else 0
    finally:
        con.close()
    assert all(not v for v in found.values()), found
    # the tables did receive other processes' events in the same run
    assert totals["syscall_events"] and totals["sched_events"] and totals[
        "page_fault_totals"], totals
    got = rows(settings.db_path, "ks_sleep23")
    assert len(got) == 23 and all(r["syscall_nr"] == NR_NANOSLEEP for r in got)
    assert all(t0 <= r["timestamp"] <= t1 for r in got)
    assert sched >= 1


class Rows:
    """A publisher stand-in that keeps what it is given (the kernel side is under test)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {}

    def publish(self, event_type: str, rows: list[dict]) -> None:
        self.rows.setdefault(event_type, []).extend(rows)

    def lost(self, event_type: str, reason: str, n: int) -> None:
        pass


def test_kernel_filters_the_tracers_own_process(settings: Settings) -> None:
    """The in-kernel check itself (not the publish-time backstop): once the filter has
    synced, the ring buffer carries no event of this process, and a child's are all there."""
    need_root()
    import ctypes
    import threading

    from kernelsight.collectors.syscalls import SyscallTracer

    seen: list[int] = []

    class Spy(SyscallTracer):
        def _on_event(self, ctx: object, data: object, size: int) -> None:
            seen.append(int(self._events.event(data).tgid))
            super()._on_event(ctx, data, size)

    tracer = Spy(settings.with_(redis_url="", record_waits=True), Rows())
    tracer.start()
    try:
        tracer.bpf.ring_buffer_consume()  # what came before the filter's first sync
        seen.clear()
        libc = ctypes.CDLL(None)

        def sleeps() -> None:
            for _ in range(5):
                libc.usleep(20_000)

        th = threading.Thread(target=sleeps)
        th.start()
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time\nfor _ in range(5): time.sleep(0.02)"])
        th.join()
        assert child.wait(30) == 0
        for _ in range(5):
            tracer.poll()
    finally:
        tracer.stop()
    assert os.getpid() not in seen
    assert seen.count(child.pid) >= 5


def test_a_restarted_process_is_registered_again(settings: Settings, rclient: redis.Redis,
                                                 tmp_path: Path) -> None:
    """The stack registers each child it starts; after a restart (as the ingest supervisor
    does) the registry holds the new pid and no longer the dead one."""
    from kernelsight.runner import Stack

    settings = settings.with_(host=f"restart-{os.getpid()}")
    stack = Stack(settings, tmp_path / "logs")
    try:
        stack.start_redis()
        first = stack.start_ingest().popen
        assert first.pid in selfpids.registered(rclient, settings.host)
        first.kill()
        first.wait()
        second = stack.start_ingest().popen
        got = selfpids.registered(rclient, settings.host)
        assert second.pid in got and first.pid not in got, got
    finally:
        stack.close()
        rclient.delete(selfpids.KEY.format(host=settings.host))
