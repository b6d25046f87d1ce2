"""The page-fault tracer against the real kernel: its exact totals must equal what the kernel
tells the faulting process itself through getrusage()."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from kernelsight.config import Settings

from conftest import need_root, running_pipeline

PAGE = os.sysconf("SC_PAGE_SIZE")
ANON_BYTES = 64 << 20
FILE_BYTES = 32 << 20
KERNEL_BYTES = 1 << 20

# The child: started after the tracer, so the tracer sees every fault it takes. It writes one
# byte per page of a fresh anonymous mapping (minor faults; MADV_NOHUGEPAGE so it is one fault
# per 4 KiB page), reads one byte per page of a file whose pages are not cached (major faults;
# MADV_RANDOM so no readahead turns them into minor ones), read()s /dev/zero into a shared
# mapping of a second uncached file (the kernel takes those major faults on its behalf inside
# read(): exceptions:page_fault_kernel), then reports its own counters and exits at once.
# It uses nothing that faults through get_user_pages() (no MAP_POPULATE, no O_DIRECT): those
# faults count in getrusage but emit no perf event.
CHILD = r"""
import ctypes, json, mmap, os, resource, sys
path, anon_bytes, kpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
page = mmap.PAGESIZE
anon = mmap.mmap(-1, anon_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
anon.madvise(mmap.MADV_NOHUGEPAGE)
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
fmap = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
fmap.madvise(mmap.MADV_RANDOM)
kfd = os.open(kpath, os.O_RDWR)
kmap = mmap.mmap(kfd, os.fstat(kfd).st_size, flags=mmap.MAP_SHARED)
kmap.madvise(mmap.MADV_RANDOM)
zero = os.open("/dev/zero", os.O_RDONLY)
anon_lo = ctypes.addressof(ctypes.c_char.from_buffer(anon))
kmap_lo = ctypes.addressof(ctypes.c_char.from_buffer(kmap))
ranges = {"anon": [anon_lo, anon_lo + anon_bytes], "kernel": [kmap_lo, kmap_lo + len(kmap)]}
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split()
        if parts[-1] == path:
            ranges["file"] = [int(x, 16) for x in parts[0].split("-")]
for off in range(0, anon_bytes, page):
    anon[off] = 1
total = 0
for off in range(0, size, page):
    total += fmap[off]
# read() from /dev/zero into a shared mapping of another uncached file: the kernel's
# clear_user() takes the faults (kernel mode, writes), each one reading a page from disk.
assert os.readv(zero, [kmap]) == len(kmap)
ru = resource.getrusage(resource.RUSAGE_SELF)
out = json.dumps({"pid": os.getpid(), "majflt": ru.ru_majflt, "minflt": ru.ru_minflt,
                  "ranges": ranges})
os.write(1, out.encode())
os._exit(0)
"""


def uncached_file(path: Path, size: int) -> None:
    """A file on a disk filesystem whose pages are not in the page cache, so mapping reads of
    it are major faults. Only this file is evicted (fsync + POSIX_FADV_DONTNEED), not the
    whole host's page cache."""
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                        check=True)
    assert fs.stdout.strip() not in ("tmpfs", "ramfs"), f"{path} must be on a disk filesystem"


def test_totals_match_getrusage_and_every_major_is_an_event(settings: Settings,
                                                            tmp_path: Path) -> None:
    need_root()
    data = tmp_path / "mapped.bin"
    uncached_file(data, FILE_BYTES)
    kdata = tmp_path / "kernel-mapped.bin"
    uncached_file(kdata, KERNEL_BYTES)
    with running_pipeline(settings, ["pagefaults"], tmp_path / "logs"):
        child = subprocess.run([sys.executable, "-c", CHILD, str(data), str(ANON_BYTES),
                                str(kdata)],
                               capture_output=True, timeout=60, check=True)
        got = json.loads(child.stdout)
    pid, majflt, minflt = got["pid"], got["majflt"], got["minflt"]
    file_lo, file_hi = got["ranges"]["file"]
    anon_lo, anon_hi = got["ranges"]["anon"]
    kern_lo, kern_hi = got["ranges"]["kernel"]
    file_pages = FILE_BYTES // PAGE

    db = sqlite3.connect(settings.db_path)
    totals = dict(db.execute(
        "SELECT fault_type, SUM(fault_count) FROM page_fault_totals WHERE pid = ? "
        "GROUP BY fault_type", (pid,)).fetchall())
    sampled = dict(db.execute(
        "SELECT fault_type, SUM(sampled_events) FROM page_fault_totals WHERE pid = ? "
        "GROUP BY fault_type", (pid,)).fetchall())
    events = dict(db.execute(
        "SELECT fault_type, COUNT(*) FROM page_fault_events WHERE pid = ? GROUP BY fault_type",
        (pid,)).fetchall())
    major_file = db.execute(
        "SELECT COUNT(*), SUM(access_type = 'read' AND user_mode = 1), MIN(latency_ns) "
        "FROM page_fault_events WHERE pid = ? AND fault_type = 'major' "
        "AND address >= ? AND address < ?", (pid, file_lo, file_hi)).fetchone()
    kernel_mode = db.execute(
        "SELECT COUNT(*), SUM(access_type = 'write' AND user_mode = 0) FROM page_fault_events "
        "WHERE pid = ? AND fault_type = 'major' AND address >= ? AND address < ?",
        (pid, kern_lo, kern_hi)).fetchone()
    anon_events = db.execute(
        "SELECT COUNT(*), SUM(access_type = 'write' AND user_mode = 1 AND fault_type = 'minor')"
        " FROM page_fault_events WHERE pid = ? AND address >= ? AND address < ?",
        (pid, anon_lo, anon_hi)).fetchone()
    bad_latency = db.execute(
        "SELECT COUNT(*) FROM page_fault_events WHERE pid = ? AND fault_type = 'major' "
        "AND latency_ns <= 0", (pid,)).fetchone()[0]
    timed = "CASE fault_type WHEN 'major' THEN fault_count ELSE sampled_events END"
    max_ok = db.execute(
        f"SELECT COUNT(*), SUM(latency_max_ns * ({timed}) >= latency_sum_ns "
        "AND latency_max_ns <= latency_sum_ns) FROM page_fault_totals WHERE pid = ?",
        (pid,)).fetchone()
    lat_totals = dict(db.execute(
        "SELECT fault_type, SUM(latency_sum_ns) FROM page_fault_totals WHERE pid = ? "
        "GROUP BY fault_type", (pid,)).fetchall())
    lat_events = dict(db.execute(
        "SELECT fault_type, SUM(latency_ns) FROM page_fault_events WHERE pid = ? "
        "GROUP BY fault_type", (pid,)).fetchall())

    # The test is only meaningful if the file reads really were major faults.
    assert majflt >= 0.9 * file_pages, (majflt, file_pages)
    assert minflt >= ANON_BYTES // PAGE, minflt
    # Exact totals: every major fault the process took, no more, no less.
    assert totals.get("major") == majflt, (totals, got)
    # Minor: exact up to the few faults after getrusage() (os.write, exit) and execve's
    # argument pages (faulted in by get_user_pages: counted by getrusage, no perf event).
    assert abs(totals["minor"] - minflt) <= 0.01 * minflt, (totals, got)
    # Every major fault is an event, each with a measured latency; the file reads are reads
    # from user mode.
    assert events.get("major") == majflt, (events, got)
    assert bad_latency == 0
    assert major_file[0] == major_file[1] >= 0.9 * file_pages, major_file
    assert major_file[2] > 1000, "a major fault that read a page from disk took < 1 us?"
    # Faults the kernel took inside read() (exceptions:page_fault_kernel): kernel mode, writes.
    assert kernel_mode[0] == kernel_mode[1] >= 0.9 * KERNEL_BYTES // PAGE, kernel_mode
    # Minor events are a sample; the totals say exactly how many of them were stored.
    # (No event at all for a type means a sampled count of 0, not a missing row.)
    assert sampled.get("minor", 0) == events.get("minor", 0), (sampled, events)
    assert sampled.get("major", 0) == events.get("major", 0), (sampled, events)
    # The anonymous region was first touched by writes: any sampled event there says so (at
    # the default --minor-fault-rate 10/s for the whole host, often none falls there).
    assert anon_events[0] == (anon_events[1] or 0), anon_events
    # Per-interval max is consistent with the interval's sum and timed count.
    assert max_ok[0] == max_ok[1], max_ok
    # The latency in the totals is exactly that of the timed faults: every major fault (all
    # of them events here), and for minor faults the sampled ones, i.e. the minor events.
    assert lat_totals.get("major") == lat_events.get("major"), (lat_totals, lat_events)
    assert (lat_totals.get("minor") or 0) == (lat_events.get("minor") or 0), \
        (lat_totals, lat_events)


MINOR_CHILD = r"""
import json, mmap, os, resource
m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, 64 << 20, mmap.PAGESIZE):
    m[off] = 1
ru = resource.getrusage(resource.RUSAGE_SELF)
os.write(1, json.dumps({"pid": os.getpid(), "minflt": ru.ru_minflt}).encode())
os._exit(0)
"""


def test_minor_latency_is_exactly_that_of_the_sampled_faults(settings: Settings,
                                                             tmp_path: Path) -> None:
    """Since 2026-12-01 only the sampled minor faults read the clock at completion: the
    count stays exact (getrusage), and latency_sum_ns / latency_max_ns are exactly those of
    the stored minor events, so latency_sum_ns / sampled_events is their mean. At 20,000
    events/s a 16,384-fault burst is partly sampled: both kinds are in the same rows."""
    need_root()
    settings = dataclasses.replace(settings, minor_fault_rate=20_000)
    with running_pipeline(settings, ["pagefaults"], tmp_path / "logs"):
        got = json.loads(subprocess.run([sys.executable, "-c", MINOR_CHILD],
                                        capture_output=True, timeout=60, check=True).stdout)
    pid, minflt = got["pid"], got["minflt"]
    db = sqlite3.connect(settings.db_path)
    count, sampled, lat_sum, lat_max = db.execute(
        "SELECT SUM(fault_count), SUM(sampled_events), SUM(latency_sum_ns), "
        "MAX(latency_max_ns) FROM page_fault_totals WHERE pid = ? AND fault_type = 'minor'",
        (pid,)).fetchone()
    n_events, ev_sum, ev_max = db.execute(
        "SELECT COUNT(*), SUM(latency_ns), MAX(latency_ns) FROM page_fault_events "
        "WHERE pid = ? AND fault_type = 'minor'", (pid,)).fetchone()
    db.close()
    assert minflt >= (64 << 20) // PAGE
    assert abs(count - minflt) <= 0.01 * minflt, (count, minflt)  # every fault counted
    assert 100 <= sampled < count // 2, (sampled, count)  # a sample, not every fault
    assert sampled == n_events, (sampled, n_events)
    assert lat_sum == ev_sum and lat_max == ev_max, (lat_sum, ev_sum, lat_max, ev_max)
    assert 0 < lat_sum / sampled < 1e6  # a mean minor fault under a millisecond

    # The report divides by the timed faults (minor: sampled_events), not by fault_count.
    out = subprocess.run([sys.executable, "-m", "kernelsight", "report", "--db",
                          settings.db_path, "--json"], capture_output=True, timeout=120,
                         check=False)
    minor = json.loads(out.stdout)["page_faults"]["minor"]
    assert minor["timed"] >= sampled and minor["count"] >= count, minor


def test_preallocated_totals_fallback_counts_exactly(settings: Settings) -> None:
    """Kernels before 6.1 refuse perf_event programs that use a run-time allocated map; the
    tracer then reloads with the totals map preallocated. That refusal cannot be produced on
    this kernel, so only it is simulated (the first attach fails); the reloaded programs are
    real and must count a child's minor faults exactly as its getrusage does."""
    need_root()
    from kernelsight.collectors.pagefaults import PageFaults
    from kernelsight.exceptions import CollectorError
    from kernelsight.streams import Publisher

    pub = Publisher(settings, "pagefaults")
    col = PageFaults(settings, pub)
    real = col._attach_perf_events
    calls = []

    def refused_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise CollectorError("perf_event programs can only use preallocated hash map")
        real()

    col._attach_perf_events = refused_once  # type: ignore[method-assign]
    col.start()
    try:
        assert "preallocated totals" in col.start_map and len(calls) == 2
        child = subprocess.run([sys.executable, "-c", (
            "import mmap, resource, os, json\n"
            "m = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
            "m.madvise(mmap.MADV_NOHUGEPAGE)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for off in range(0, 16 << 20, mmap.PAGESIZE): m[off] = 1\n"
            "ru = resource.getrusage(resource.RUSAGE_SELF)\n"
            "os.write(1, json.dumps([os.getpid(), before, ru.ru_minflt]).encode())\n"
            "os._exit(0)\n")], capture_output=True, timeout=60, check=True)
        pid, before, after = json.loads(child.stdout)
        counted = sum(v.count for k, v in
                      ((k, c) for k, vs in col.totals.items() for c in vs)
                      if k.tgid == pid and k.major == 0)
        # All of the child's minor faults from exec to exit, as getrusage counts them: up to
        # the few after its last getrusage (exit) and execve's argument pages (faulted in by
        # get_user_pages: counted by getrusage, no perf event), as in the test above.
        assert after - before >= (16 << 20) // PAGE
        assert abs(counted - after) <= 0.01 * after, (counted, before, after)
    finally:
        col.stop()
        pub.close()


# A short-lived child for the exit race: it touches PAGES pages, says so, waits for one byte
# on stdin, touches PAGES more, reports its own fault counters and exits at once.
EXITING_CHILD = r"""
import json, mmap, os, resource, sys
pages = int(sys.argv[1])
size = pages * mmap.PAGESIZE
m = mmap.mmap(-1, 2 * size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, size, mmap.PAGESIZE):
    m[off] = 1
os.write(1, b"ready\n")
os.read(0, 1)
for off in range(size, 2 * size, mmap.PAGESIZE):
    m[off] = 1
ru = resource.getrusage(resource.RUSAGE_SELF)
os.write(1, json.dumps({"pid": os.getpid(), "minflt": ru.ru_minflt,
                        "majflt": ru.ru_majflt}).encode())
os._exit(0)
"""
EXIT_PAGES = 4096


def test_totals_of_a_process_exiting_mid_interval_are_published(settings: Settings,
                                                                tmp_path: Path) -> None:
    """A process that takes faults and exits after the tracer read the totals map but before
    it checked /proc: its last faults must still be published (they used to be deleted with
    its map entry, unread). The exit is placed in that window exactly: the Publisher is a real
    one whose publish() of the interval's totals - which comes after the map read and before
    the /proc check - first lets the child take its second batch of faults, exit and be
    reaped. The child's own getrusage() is the ground truth."""
    need_root()
    from kernelsight.collectors.pagefaults import TOTALS, PageFaults
    from kernelsight.runner import Stack
    from kernelsight.streams import Publisher

    class ExitWhilePublishing(Publisher):
        child: subprocess.Popen | None = None
        report: dict | None = None

        def publish(self, event_type: str, rows) -> None:  # type: ignore[no-untyped-def]
            rows = list(rows)
            c = self.child
            if (event_type == TOTALS and c is not None and self.report is None
                    and any(r["pid"] == c.pid for r in rows)):
                assert c.stdin is not None and c.stdout is not None
                c.stdin.write(b"x")
                c.stdin.flush()
                self.report = json.loads(c.stdout.read())
                assert c.wait(timeout=30) == 0
                assert not os.path.exists(f"/proc/{c.pid}")  # reaped: gone from /proc
            super().publish(event_type, rows)

    stack = Stack(settings, tmp_path / "logs")
    try:
        stack.start_redis()
        stack.start_ingest()
        pub = ExitWhilePublishing(settings, "pagefaults")
        col = PageFaults(settings, pub)
        col.start()
        try:
            child = subprocess.Popen([sys.executable, "-c", EXITING_CHILD, str(EXIT_PAGES)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            pub.child = child
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            col._interval()  # reads the first batch; the child exits while it is published
            assert pub.report is not None, "the child's first faults were not published"
            for _ in range(3):  # the intervals that follow, as the ticker would run them
                col._interval()
            # Published in full, then forgotten: its kernel entries are deleted, not leaked.
            assert child.pid not in {int(k.tgid) for k in col.totals}
            assert (child.pid, 0) not in col.cumulative
        finally:
            col.stop()
            pub.close()
        assert stack.drain_ingest() == 0
    finally:
        stack.close()
    got = pub.report
    db = sqlite3.connect(settings.db_path)
    totals = dict(db.execute(
        "SELECT fault_type, SUM(fault_count) FROM page_fault_totals WHERE pid = ? "
        "GROUP BY fault_type", (got["pid"],)).fetchall())
    db.close()
    assert got["minflt"] >= 2 * EXIT_PAGES, got
    # Every fault from fork to exit, as getrusage counts them, up to the few after its
    # getrusage() (os.write, exit) and execve's argument pages (faulted in by
    # get_user_pages: counted by getrusage, no perf event), as in the tests above.
    assert abs(totals.get("minor", 0) - got["minflt"]) <= 0.01 * got["minflt"], (totals, got)
    assert totals.get("major", 0) == got["majflt"], (totals, got)


# A page fault held in flight with userfaultfd: a thread touches a registered page and blocks
# in the kernel's fault handler (its fault-entry tracepoint has fired) until this process
# resolves it with UFFDIO_COPY. It says "blocked <page address>" and waits for a line on
# stdin before resolving, so the tracer can be started in between; then "done", and it waits
# for another line before exiting.
UFFD_CHILD = r"""
import ctypes, mmap, os, select, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
NR_USERFAULTFD = 323  # x86_64
uffd = libc.syscall(NR_USERFAULTFD, os.O_CLOEXEC)
assert uffd >= 0, ctypes.get_errno()
api = (ctypes.c_uint64 * 3)(0xAA, 0, 0)
assert libc.ioctl(uffd, ctypes.c_ulong(0xc018aa3f), api) == 0, ctypes.get_errno()
region = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
reg = (ctypes.c_uint64 * 4)(addr, mmap.PAGESIZE, 1, 0)  # UFFDIO_REGISTER_MODE_MISSING
assert libc.ioctl(uffd, ctypes.c_ulong(0xc020aa00), reg) == 0, ctypes.get_errno()
src = ctypes.create_string_buffer(b"\x07" * mmap.PAGESIZE, mmap.PAGESIZE)
copy = (ctypes.c_uint64 * 5)(addr, ctypes.addressof(src), mmap.PAGESIZE, 0, 0)
toucher = threading.Thread(target=ctypes.memset, args=(addr, 7, 1))  # GIL released
toucher.start()
select.select([uffd], [], [])  # the fault message: the toucher is blocked in the kernel
print("blocked", addr, flush=True)
sys.stdin.readline()
assert libc.ioctl(uffd, ctypes.c_ulong(0xc028aa03), copy) == 0, ctypes.get_errno()
toucher.join()
assert region[0] == 7
print("done", flush=True)
sys.stdin.readline()  # stays put while the test reads the tracer's totals
os._exit(0)
"""


def test_fault_in_flight_at_start_is_counted_not_timed(settings: Settings) -> None:
    """A fault whose entry fired before the tracer started completes after it: its latency
    is unknown, so it is neither in page_fault_totals (latency_sum_ns / fault_count stays the
    exact mean) nor an event, and it is counted as dropped page_fault_events, reason
    no_entry. (Before: an event and a totals count with latency 0, and only a log line.)
    Every minor fault is an event here (no sampling), so the child's events list exactly the
    faults its totals count."""
    need_root()
    from kernelsight import schema
    from kernelsight.collectors.pagefaults import EVENTS, TOTALS, PageFaults
    from kernelsight.streams import Publisher

    published: dict[str, list[dict]] = {EVENTS: [], TOTALS: []}

    class Recording(Publisher):
        def publish(self, event_type: str, rows) -> None:  # type: ignore[no-untyped-def]
            rows = list(rows)
            published[event_type].extend(rows)
            super().publish(event_type, rows)

    child = subprocess.Popen([sys.executable, "-c", UFFD_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    # Every minor fault on the host is an event at this rate: a 16 MiB ring (4096 pages, not
    # 256) holds the few seconds between start and poll even while other suites run (CI: 7,281
    # ringbuf_full drops with 256 pages).
    s = settings.with_(minor_fault_rate=10**7, ringbuf_pages=4096)
    pub = Recording(s, "pagefaults")
    col = PageFaults(s, pub)
    try:
        assert child.stdout and child.stdin
        word, addr = child.stdout.readline().split()
        assert word == "blocked", word
        col.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        col.poll()
        col._interval()
        child.stdin.write("exit\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        col.stop()
        pub.close()
        if child.poll() is None:
            child.kill()
    assert pub.counters.get((EVENTS, schema.DROPPED, "no_entry"), 0) >= 1, pub.counters
    assert pub.counters.get((EVENTS, schema.DROPPED, "ringbuf_full"), 0) == 0, pub.counters
    mine = [e for e in published[EVENTS] if e["pid"] == child.pid]
    page = int(addr)
    held = [e for e in mine if page <= e["address"] < page + PAGE]
    assert not held, held  # the held fault is no event ...
    assert all(e["latency_ns"] > 0 for e in mine), mine
    totals = [r for r in published[TOTALS] if r["pid"] == child.pid]
    # ... and not in the totals: they count exactly the child's events (all timed)
    assert sum(r["fault_count"] for r in totals) == len(mine) >= 1, (totals, mine)
    assert sum(r["sampled_events"] for r in totals) == len(mine)
