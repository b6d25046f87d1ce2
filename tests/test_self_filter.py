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
    time) and an entry of a pid namespace that does not exist do not, and the dead ones are
    removed."""
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
        # namespace 12345 does not exist and this test sees every namespace: pruned too
        assert left == {parent.pid, os.getpid()}, left
    finally:
        parent.kill()
        parent.wait()
        rclient.delete(key)


def test_entry_from_another_pid_namespace_maps_to_its_host_pid(rclient: redis.Redis) -> None:
    """A KernelSight process in its own pid namespace (a container without `pid: host`)
    registers its namespace's pid number; a tracer in the host's namespace filters the host
    pid of that very process (NSpid), with its descendants for a tree entry, and never the
    host process that happens to carry the same number. Once it exits, the entry is pruned."""
    need_root()
    host = f"selfns-{os.getpid()}"
    key = selfpids.KEY.format(host=host)
    rclient.delete(key)
    code = ("import os, subprocess, sys, time\n"
            "from kernelsight import selfpids\n"
            "from kernelsight.streams import connect\n"
            "r = connect(sys.argv[1], 2)\n"
            "assert selfpids.register(r, sys.argv[2], tree=True)\n"
            "c = subprocess.Popen(['sleep', '60'])\n"
            "print(os.getpid(), c.pid, flush=True)\n"
            "time.sleep(60)\n")
    redis_url = _url_of(rclient)
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          code, redis_url, host], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout
        line = p.stdout.readline().split()
        assert len(line) == 2, line
        ns_pid = int(line[0])
        assert ns_pid <= 3, ns_pid  # numbered inside its own namespace
        assert {int(k) for k in rclient.hkeys(key)} == {ns_pid}
        got = selfpids.registered(rclient, host)
        # the python process and its sleep, by their host pids: the descendants of the
        # unshare process, which is not ours (it did not register)
        kids = selfpids.descendants(p.pid)
        assert len(kids) == 2, kids  # python (pid 1 in its namespace) and its sleep
        py = [k for k in kids if selfpids.descendants(k)]
        assert len(py) == 1 and selfpids.pid_namespace(py[0]) != selfpids.pid_namespace()
        assert got == kids, (got, kids)  # by host pid; not host pid 1 (systemd/init)
        assert ns_pid not in got
        assert p.pid not in got
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()
    # the namespace's init is killed, then the kernel kills the rest: give it a moment
    deadline = time.monotonic() + 10
    while selfpids.registered(rclient, host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert selfpids.registered(rclient, host) == set()
    assert rclient.hlen(key) == 0  # the dead entry was pruned


def _url_of(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"unix://:{kw['password']}@{kw['path']}?db=0"


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


def test_tracers_in_one_process_share_one_watcher(settings: Settings,
                                                 rclient: redis.Redis) -> None:
    """Two loaded BPF objects (two hosted tracers) get one "ks-self-filter" thread between
    them; a process registered later reaches both maps within SYNC_S, its exit leaves both,
    and the thread ends with the last filter."""
    need_root()
    import threading

    from bcc import BPF

    from kernelsight import bpfsupport

    bpfsupport.ensure_headers()
    text = b'#include "ks_self.h"\nint noop(void *ctx) { return 0; }\n'
    objs = [BPF(text=text, cflags=[f"-I{settings.bpf_path}", "-DKS_SELF_SLOTS=4194304"])
            for _ in range(2)]
    host = settings.host
    rclient.delete(selfpids.KEY.format(host=host))
    filters = [selfpids.SelfFilter(b, settings.redis_url, host, interval_s=0.2).start()
               for b in objs]
    child = subprocess.Popen(["sleep", "30"])
    try:
        names = [t.name for t in threading.enumerate()]
        assert names.count("ks-self-filter") == 1, names
        for b in objs:
            assert b[b"ks_self"][os.getpid()].value == 1  # own process, at start
        selfpids.register(rclient, host, child.pid)

        def in_maps(on: int) -> bool:
            return all(b[b"ks_self"][child.pid].value == on for b in objs)

        deadline = time.monotonic() + 5
        while not in_maps(1):
            assert time.monotonic() < deadline, "registered pid not in both maps after 5 s"
            time.sleep(0.05)
        child.kill()
        child.wait()
        deadline = time.monotonic() + 5
        while not in_maps(0):
            assert time.monotonic() < deadline, "exited pid still filtered after 5 s"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
        for f in filters:
            f.stop()
        for b in objs:
            b.cleanup()
    assert "ks-self-filter" not in [t.name for t in threading.enumerate()]
