"""The block I/O latency tracer against the real kernel, plus its percentile arithmetic."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsight import histogram, schema
from kernelsight.collectors.io import OpInterval, make_row
from kernelsight.config import Settings

from conftest import need_root, running_pipeline

BLOCK = 4096
READS = 101
SPAN = 1 << 30  # the reads are spread over 1 GiB, 2 MiB apart at least

# The child times each O_DIRECT pread() of the device in user space.
CHILD = r"""
import json, mmap, os, sys, time
dev, offsets = sys.argv[1], json.loads(sys.argv[2])
buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT needs
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
lat = []
for off in offsets:
    t = time.perf_counter_ns()
    n = os.preadv(fd, [buf], off)
    lat.append(time.perf_counter_ns() - t)
    assert n == 4096, n
os.write(1, json.dumps(lat).encode())
"""


def whole_disk(st_dev: int) -> str:
    """The name of the disk (not partition) holding a file: what the block tracepoints
    report. From sysfs, not hard-coded."""
    node = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}").resolve()
    if (node / "partition").exists():
        node = node.parent
    for line in (node / "uevent").read_text().splitlines():
        if line.startswith("DEVNAME="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no DEVNAME in {node}/uevent")


def disk_stat(dev: str) -> list[int]:
    """/sys/block/<dev>/stat: reads, ..., writes (4), ..., discards (11), ..., flushes (15)."""
    return [int(x) for x in Path(f"/sys/block/{dev}/stat").read_text().split()]


@contextlib.contextmanager
def loop_device(backing: Path, direct_io: bool) -> Iterator[str]:
    args = ["losetup", "-f", "--show", *(["--direct-io=on"] if direct_io else []),
            str(backing)]
    dev = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield Path(dev).name
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def io_rows(db_path: str, device: str) -> list[dict]:
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute(
        "SELECT * FROM io_latency_stats WHERE device = ? ORDER BY timestamp", (device,))]


def declared_losses(db_path: str) -> int:
    """Completions the tracer says it could not count (BPF recursion, map full)."""
    db = sqlite3.connect(db_path)
    rows = db.execute(
        "SELECT instance, reason, MAX(value) FROM pipeline_accounting WHERE event_type = "
        "'block_requests' AND metric = 'dropped' GROUP BY instance, reason").fetchall()
    return sum(r[2] for r in rows)


def test_o_direct_reads_latency_matches_user_space(settings: Settings, tmp_path: Path) -> None:
    """101 O_DIRECT 4 KiB reads at random, far-apart offsets. The device is a loop device
    (direct I/O) over a file on the root filesystem, so every read is a real read of the disk
    backing / as well, and the loop device carries only our reads: its counts must be exact.
    (The root disk itself cannot be opened here: the sandbox denies opening /dev/vda, and on a
    shared host other processes' reads would mix into its percentiles.)"""
    need_root()
    # One interval for the whole test: the tracer publishes the reads in one row at stop.
    settings = settings.with_(interval=60.0)
    backing = tmp_path / "backing.img"
    rng = random.Random(7)
    offsets = [b * BLOCK for b in rng.sample(range(0, SPAN // BLOCK, 512), READS)]
    with open(backing, "wb") as f:
        f.truncate(SPAN)
        for off in offsets:  # real data: holes and unwritten extents are not read from disk
            f.seek(off)
            f.write(os.urandom(BLOCK))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    root_disk = whole_disk(os.stat(backing).st_dev)
    rng.shuffle(offsets)
    with loop_device(backing, direct_io=True) as loop, \
            running_pipeline(settings, ["io"], tmp_path / "logs"):
        before = disk_stat(loop)
        t0 = time.time_ns()
        child = subprocess.run([sys.executable, "-c", CHILD, f"/dev/{loop}",
                                json.dumps(offsets)], capture_output=True, timeout=60,
                               check=True)
        after = disk_stat(loop)
    lat_us = sorted(x / 1000 for x in json.loads(child.stdout))
    kernel_reads = after[0] - before[0]

    rows = io_rows(settings.db_path, loop)
    reads = sum(r["read_count"] for r in rows)
    lost = declared_losses(settings.db_path)
    # Every read counted (unless the tracer itself declared it lost), nothing else.
    assert kernel_reads == READS, (before, after)
    assert READS - lost <= reads <= READS, (reads, lost)
    assert sum(r["read_bytes"] for r in rows) == reads * BLOCK
    assert sum(r["write_count"] for r in rows) == 0
    # The kernel's latency of a read (issue -> completion) is part of the latency measured
    # around the pread(), so each kernel order statistic is at most the same user-space one:
    # the k-th fastest read in the kernel <= the k-th fastest pread() (shifted by any reads the
    # tracer declared lost), + 1.6% as percentiles are bucket midpoints (max: 3.2%, a bucket's
    # upper bound). The rest of a pread() (syscall, bio setup, loop worker hand-off, wakeup)
    # is well under the device's share, so the p50 is also above half the fastest pread().
    # (Strictly within [fastest, slowest pread()] does not hold: p50 can be below the fastest
    # pread() when the reads all take about the same time.)
    assert len(rows) == 1, rows  # one interval (see the settings above): exact percentiles
    row = rows[0]
    for p in (50, 95, 99):
        k = -(-reads * p // 100) - 1 + (READS - reads)
        assert row[f"read_p{p}_us"] <= lat_us[k] * 1.016, (p, row, lat_us[k])
    assert row["read_max_us"] <= lat_us[-1] * 1.032, (row, lat_us[-1])
    assert row["read_p50_us"] >= 0.5 * lat_us[0], (row, lat_us[0])
    assert row["read_p50_us"] <= row["read_p95_us"] <= row["read_p99_us"]
    assert row["read_p99_us"] <= row["read_max_us"] * 1.016  # same bucket: midpoint vs exact
    # The loop device read the file with direct I/O: the disk backing / saw those reads too.
    root = [r for r in io_rows(settings.db_path, root_disk) if r["timestamp"] >= t0]
    assert sum(r["read_count"] for r in root) >= READS - lost, root
    assert sum(r["read_bytes"] for r in root) >= (READS - lost) * BLOCK, root


def test_discard_and_flush_are_not_writes(settings: Settings, tmp_path: Path) -> None:
    """Real O_DIRECT writes, a flush (fsync) and discards (blkdiscard) on a loop device over a
    tmpfs file (loop turns discards into hole punches): only the writes count."""
    need_root()
    backing = Path("/dev/shm") / f"ks-io-test-{os.getpid()}.img"
    backing.write_bytes(b"")
    os.truncate(backing, 16 << 20)
    writes = 8
    try:
        with loop_device(backing, direct_io=False) as loop, \
                running_pipeline(settings, ["io"], tmp_path / "logs"):
            before = disk_stat(loop)
            buf = mmap.mmap(-1, BLOCK)
            buf.write(os.urandom(BLOCK))
            fd = os.open(f"/dev/{loop}", os.O_WRONLY | os.O_DIRECT)
            try:
                for i in range(writes):
                    assert os.pwritev(fd, [buf], i * (1 << 20)) == BLOCK
                os.fsync(fd)
            finally:
                os.close(fd)
            subprocess.run(["blkdiscard", f"/dev/{loop}"], check=True, capture_output=True)
            after = disk_stat(loop)
    finally:
        backing.unlink()
    rows = io_rows(settings.db_path, loop)
    # The discards and the flush really reached the device ...
    assert after[11] > before[11], ("no discard completed", before, after)
    assert after[15] > before[15], ("no flush completed", before, after)
    # (diskstats also counts fsync's data-less REQ_PREFLUSH write as a write; the device
    # only ever sees it as a flush)
    assert after[4] - before[4] >= writes, (before, after)
    # ... and only the data writes are writes.
    lost = declared_losses(settings.db_path)
    wrote = sum(r["write_count"] for r in rows)
    assert writes - lost <= wrote <= writes, (rows, lost)
    assert sum(r["write_bytes"] for r in rows) == wrote * BLOCK


def test_percentiles_within_10_percent_of_exact() -> None:
    """What a row reports for a log-normal latency sample, computed from the log-linear
    histogram, against the exact order statistics."""
    rng = random.Random(42)
    for mu, sigma in ((11.0, 0.5), (13.0, 1.2), (9.0, 2.0)):  # ~60 us, ~440 us, ~8 us
        lat = sorted(max(1, int(rng.lognormvariate(mu, sigma))) for _ in range(20000))
        hist: dict[int, int] = {}
        for v in lat:
            b = histogram.bucket(v)
            hist[b] = hist.get(b, 0) + 1
        iv = OpInterval(count=len(lat), bytes=len(lat) * BLOCK, max_ns=lat[-1], hist=hist)
        row = make_row(1, "h", "vda", iv, OpInterval())
        for p in (50, 95, 99):
            exact = lat[-(-len(lat) * p // 100) - 1] / 1000
            got = row[f"read_p{p}_us"]
            assert abs(got - exact) <= 0.10 * exact, (mu, sigma, p, got, exact)
            assert abs(got - exact) <= 0.02 * exact, "log-linear buckets promise ~2%"
        assert row["read_max_us"] == lat[-1] / 1000
        assert row["read_count"] == len(lat) and row["write_count"] == 0
        assert row["write_p50_us"] == row["write_max_us"] == 0.0
        # A max that raced the interval switch is replaced by the top bucket's bound.
        stale = make_row(1, "h", "vda", OpInterval(len(lat), 0, lat[0], hist), OpInterval())
        assert stale["read_max_us"] == histogram.max_value(hist) / 1000


LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81  # linux/loop.h


@contextlib.contextmanager
def own_loop_number() -> Iterator[int]:
    """A new, high-numbered loop device that this test alone uses: `losetup -f` elsewhere
    (other tests running meanwhile) picks the lowest free one, never this. Removed at exit
    (it may be removed already)."""
    import errno
    import fcntl

    ctl = os.open("/dev/loop-control", os.O_RDWR)
    try:
        for n in range(1000 + os.getpid() % 1000, 3000):
            try:
                fcntl.ioctl(ctl, LOOP_CTL_ADD, n)
                break
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        try:
            yield n
        finally:
            with contextlib.suppress(OSError):
                fcntl.ioctl(ctl, LOOP_CTL_REMOVE, n)
    finally:
        os.close(ctl)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_tracepoints", "regular_fallback"])
def test_removed_device_is_published_then_forgotten(settings: Settings, raw: bool) -> None:
    """A device that goes away (a loop device detached and removed) keeps its kernel entries
    until its final counts were read, then they are deleted (the shared cumulative-map rule):
    every write it completed is published once, and nothing of it stays in the maps. Both
    programs: raw tracepoints (the default here) and the regular-tracepoint fallback."""
    need_root()
    import fcntl

    from kernelsight.collectors.io import STATS, IoLatency
    from kernelsight.streams import Publisher

    published: list[dict] = []

    class Recording(Publisher):
        def publish(self, event_type: str, rows) -> None:  # type: ignore[no-untyped-def]
            rows = list(rows)
            if event_type == STATS:
                published.extend(rows)
            super().publish(event_type, rows)

    backing = Path("/dev/shm") / f"ks-io-gone-{os.getpid()}.img"
    backing.write_bytes(b"")
    os.truncate(backing, 8 << 20)
    pub = Recording(settings, "io")
    col = IoLatency(settings, pub)
    col.use_raw = raw
    col.start()
    assert col.raw == raw  # this kernel has BTF and the one-argument block_rq_issue
    writes = 16
    try:
        with own_loop_number() as n:
            loop = f"loop{n}"
            subprocess.run(["losetup", f"/dev/{loop}", str(backing)], check=True)
            try:
                rdev = os.stat(f"/dev/{loop}").st_rdev
                dev = (os.major(rdev) << 20) | os.minor(rdev)  # the kernel's dev_t, as traced
                before = disk_stat(loop)
                buf = mmap.mmap(-1, BLOCK)
                buf.write(os.urandom(BLOCK))
                fd = os.open(f"/dev/{loop}", os.O_WRONLY | os.O_DIRECT)
                try:
                    for i in range(writes):
                        assert os.pwritev(fd, [buf], i * BLOCK) == BLOCK
                finally:
                    os.close(fd)
                assert disk_stat(loop)[4] - before[4] == writes
                col._interval()
                assert (dev, 1) in col.cumulative
            finally:
                subprocess.run(["losetup", "-d", f"/dev/{loop}"], check=False)
            ctl = os.open("/dev/loop-control", os.O_RDWR)
            try:
                fcntl.ioctl(ctl, LOOP_CTL_REMOVE, n)
            finally:
                os.close(ctl)
            assert not Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").exists()
        keys = lambda: {(int(k.dev), int(k.op)) for k in col.stats}  # noqa: E731
        col._interval()  # no change, gone once: kept
        assert (dev, 1) in keys()
        col._interval()  # no change, gone twice: deleted
        assert (dev, 1) not in keys() and (dev, 1) not in col.cumulative
        assert dev not in {int(k.dev) for k in col.hist}
    finally:
        col.stop()
        pub.close()
        backing.unlink()
    mine = [r for r in published if r["device"] == loop]
    lost = declared_losses_of(pub)
    assert writes - lost <= sum(r["write_count"] for r in mine) <= writes, (mine, lost)


def declared_losses_of(pub) -> int:  # type: ignore[no-untyped-def]
    """Block requests this publisher declared lost (BPF recursion, map full)."""
    return sum(n for (event_type, metric, _reason), n in pub.counters.items()
               if event_type == "block_requests" and metric == schema.DROPPED)


# O_DIRECT 4 KiB writes and reads at random block offsets of a device, from two threads,
# until a deadline; prints how many of each it did.
IO_CHILD = r"""
import json, mmap, os, random, sys, threading, time
dev, blocks, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
done = []
def worker(seed):
    rng = random.Random(seed)
    buf = mmap.mmap(-1, 4096)
    buf.write(os.urandom(4096))
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    n = [0, 0]
    written = []
    while time.monotonic() < end:
        if written and rng.random() < 0.5:
            assert os.preadv(fd, [buf], rng.choice(written)) == 4096
            n[0] += 1
        else:
            off = rng.randrange(blocks) * 4096
            assert os.pwritev(fd, [buf], off) == 4096
            written.append(off)
            n[1] += 1
    os.close(fd)
    done.append(n)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps([sum(n[0] for n in done), sum(n[1] for n in done)]))
"""
FAULT_CHILD = r"""
import mmap, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    m = mmap.mmap(-1, 8 << 20)
    for i in range(0, 8 << 20, 4096):
        m[i] = 1
    m.close()
"""
SYSCALL_CHILD = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(1000):
        os.getppid()
"""


@contextlib.contextmanager
def patient_pipeline(settings: Settings, names: list[str], log_dir: Path) -> Iterator[None]:
    """conftest.running_pipeline with 5 minutes for the collectors to start: four BCC
    compilations at nice 10 on a 2-vCPU host at load 30-40 took more than its 60 s."""
    from kernelsight.runner import Stack

    stack = Stack(settings, log_dir)
    try:
        stack.start_redis()
        stack.start_ingest()
        procs = stack.start_collectors(names, timeout=300.0)
        bad = {n: p.detail for n, p in procs.items() if p.state != "started"}
        assert not bad, bad
        yield
        stack.stop_collectors()
        assert stack.drain_ingest() == 0, (log_dir / "ingest.log").read_text()[-3000:]
    finally:
        stack.close()


def test_all_tracers_loaded_every_request_counted(settings: Settings, tmp_path: Path) -> None:
    """With all four tracers loaded and page faults and syscalls on every CPU, block
    completions arrive in interrupt context while the other tracers' programs run. The io
    tracer's count of completed requests must equal the kernel's (/sys/block/<dev>/stat reads
    + writes completed), with no bpf_recursion loss: raw tracepoints are not skipped for
    another program running on the CPU (regular tracepoints were: ~1.5% of requests under
    `make stress`, 87 of ~2,800 here)."""
    need_root()
    from kernelsight import collectors

    seconds = 4.0
    backing = tmp_path / "busy.img"  # on the root filesystem: real disk I/O, real interrupts
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    ncpu = os.cpu_count() or 1
    with loop_device(backing, direct_io=True) as loop:
        before = disk_stat(loop)  # idle device: nothing in flight when the tracers start
        with patient_pipeline(settings.with_(interval=1.0), list(collectors.TRACERS),
                              tmp_path / "logs"):
            others = [subprocess.Popen([sys.executable, "-c", code, str(seconds)])
                      for code in (FAULT_CHILD, SYSCALL_CHILD) for _ in range(ncpu)]
            io = subprocess.run([sys.executable, "-c", IO_CHILD, f"/dev/{loop}",
                                 str((64 << 20) // BLOCK), str(seconds)],
                                capture_output=True, timeout=120, check=True)
            assert all(p.wait(timeout=60) == 0 for p in others)
            time.sleep(0.2)
            after = disk_stat(loop)
    reads, writes = json.loads(io.stdout)
    kernel = (after[0] - before[0]) + (after[4] - before[4])
    rows = io_rows(settings.db_path, loop)
    traced = sum(r["read_count"] + r["write_count"] for r in rows)
    db = sqlite3.connect(settings.db_path)
    drops = db.execute(
        "SELECT reason, SUM(v) FROM (SELECT instance, reason, MAX(value) AS v FROM "
        "pipeline_accounting WHERE event_type = 'block_requests' AND metric = 'dropped' "
        "GROUP BY instance, reason) GROUP BY reason").fetchall()
    assert reads + writes >= 200, (reads, writes)  # the workload really ran
    assert kernel >= reads + writes, (kernel, reads, writes)
    print(f"io: {reads} reads + {writes} writes; kernel completed {kernel}, traced {traced}, "
          f"declared lost {drops}")
    lost = dict(drops)
    assert lost.get("bpf_recursion", 0) == 0 and lost.get("map_full", 0) == 0, drops
    # On this kernel a raw-tracepoint completion is, rarely (~1 in 2,000-5,000 under load), not
    # delivered, with no recursion miss counted; the next issue of that request finds it open
    # and counts it (completion_unseen, a machine-wide counter: other disks' count too).
    # Every request the kernel completed is a row or declared so; none is counted twice.
    missing = kernel - traced
    assert 0 <= missing <= lost.get("completion_unseen", 0), (
        f"child r/w {reads}/{writes}, kernel {after[0] - before[0]}/{after[4] - before[4]}, "
        f"traced {sum(r['read_count'] for r in rows)}/{sum(r['write_count'] for r in rows)}",
        drops)


@contextlib.contextmanager
def frozen_write(tmp_path: Path) -> Iterator[str]:
    """A write request held in flight on a loop device: the device's backing file is on our
    own ext4 (on a loop device too), frozen with fsfreeze, so the loop worker blocks until the
    thaw. Yields the device name; thawed (the write completes) and torn down at exit."""
    image, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    frozen = False
    writer = None
    try:
        backing = mnt / "backing.img"
        with open(backing, "wb") as f:
            f.truncate(8 << 20)
        with loop_device(backing, direct_io=False) as loop:
            subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
            frozen = True
            writer = subprocess.Popen(["dd", "if=/dev/zero", f"of=/dev/{loop}", "bs=4096",
                                       "count=1", "seek=7", "oflag=direct"],
                                      stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while Path(f"/sys/block/{loop}/inflight").read_text().split() != ["0", "1"]:
                assert time.monotonic() < deadline, "the write never got in flight"
                time.sleep(0.01)
            try:
                yield loop
            finally:
                subprocess.run(["fsfreeze", "-u", str(mnt)], check=False)
                frozen = False
                assert writer.wait(timeout=30) == 0
    finally:
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=False)
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_tracepoints", "regular_fallback"])
def test_request_in_flight_at_start_is_counted_unmatched(settings: Settings, tmp_path: Path,
                                                         raw: bool) -> None:
    """A write issued before the tracer started completes after: it has no issue time, so it
    is not a row, and it is counted as dropped block_requests, reason unmatched."""
    need_root()
    from kernelsight.collectors.io import REQUESTS, IoLatency
    from kernelsight.streams import Publisher

    published: list[dict] = []

    class Recording(Publisher):
        def publish(self, event_type: str, rows) -> None:  # type: ignore[no-untyped-def]
            rows = list(rows)
            published.extend(rows)
            super().publish(event_type, rows)

    pub = Recording(settings, "io")
    col = IoLatency(settings, pub)
    col.use_raw = raw
    try:
        with frozen_write(tmp_path) as loop:
            col.start()
            assert col.raw == raw
            before = disk_stat(loop)[4]
        assert disk_stat(loop)[4] == before + 1  # the held write completed after the thaw
        col._interval()
        unmatched = pub.counters.get((REQUESTS, schema.DROPPED, "unmatched"), 0)
        assert unmatched >= 1, pub.counters
        assert not [r for r in published if r["device"] == loop], published
    finally:
        col.stop()
        pub.close()
