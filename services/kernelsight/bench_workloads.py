"""What `kernelsight bench` runs its tracer overhead figures on: our real tracers polling in a
thread, the empty programs that give the floor, and the fault and switch workloads."""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Iterator

from kernelsight.config import Settings
from kernelsight.streams import Publisher


@contextlib.contextmanager
def running_tracer(cls, url: str) -> Iterator[None]:
    """The real tracer, polling in a thread and publishing to the bench's Redis."""
    s = Settings(redis_url=url, host="bench")
    pub = Publisher(s, cls.name)
    col = cls(s, pub)
    col.start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            col.poll()
            pub.flush()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        time.sleep(0.3)
        yield
    finally:
        stop.set()
        th.join(10)
        col.stop()
        pub.close()


EMPTY = {
    "syscalls": """
TRACEPOINT_PROBE(raw_syscalls, sys_enter) { return 0; }
TRACEPOINT_PROBE(raw_syscalls, sys_exit) { return 0; }
""",
    "pagefaults": """
TRACEPOINT_PROBE(exceptions, page_fault_user) { return 0; }
TRACEPOINT_PROBE(exceptions, page_fault_kernel) { return 0; }
int on_maj(struct bpf_perf_event_data *ctx) { return 0; }
int on_min(struct bpf_perf_event_data *ctx) { return 0; }
""",
    "sched": """
TRACEPOINT_PROBE(sched, sched_switch) { return 0; }
TRACEPOINT_PROBE(sched, sched_wakeup) { return 0; }
TRACEPOINT_PROBE(sched, sched_wakeup_new) { return 0; }
TRACEPOINT_PROBE(sched, sched_process_exit) { return 0; }
""",
}


def attach_empty(b, tracer: str) -> None:
    if tracer == "pagefaults":
        from bcc import PerfSWConfig, PerfType

        b.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.PAGE_FAULTS_MAJ,
                            fn_name="on_maj", sample_period=1)
        b.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.PAGE_FAULTS_MIN,
                            fn_name="on_min", sample_period=1)


FAULT_WORKLOAD = [sys.executable, "-c", """
import mmap
n = 512 << 20
page = mmap.PAGESIZE
ones = b"\\x01" * (n // page)
for _ in range(4):  # 4 x 131072 private anonymous 4 KiB faults
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    # One byte per page, by mmap's own C loop (an extended-slice assignment): nearly all of
    # the time is the faults themselves. (memset of every byte instead spends most of it on
    # memory bandwidth and evicts the tracer's per-CPU state from the caches: 1.65 there.)
    m[0:n:page] = ones
    m.close()
"""]
SCHED_WORKLOAD = [sys.executable, "-c", """
import os
os.sched_setaffinity(0, {0})  # both ends on one CPU: every round trip is two real switches
r1, w1 = os.pipe(); r2, w2 = os.pipe()
n = 100000
if os.fork() == 0:
    for _ in range(n):
        os.read(r1, 1); os.write(w2, b"x")
    os._exit(0)
for _ in range(n):
    os.write(w1, b"x"); os.read(r2, 1)
os.wait()
"""]


def sched_workload(quick: bool) -> list[str]:
    """stress-ng's switch stressor pinned to one CPU (two context switches per op, in C, so
    the tracer's share of the time is large enough to measure), else the Python ping-pong."""
    if shutil.which("stress-ng"):
        return ["stress-ng", "--switch", "1", "--switch-ops", "200000" if quick else "500000",
                "--taskset", "0", "--quiet"]
    return SCHED_WORKLOAD
