"""`kernelsight stress`: load the machine so every collector has something to see.

Seven workload categories run concurrently for a fixed time and stop by themselves:

    cpu   4 busy workers (stress-ng --cpu 4 when installed, else 4 forked Python loops)
    mem   an anonymous mapping (default 1 GiB) touched page by page, then re-touched chunk by
          chunk after MADV_DONTNEED so minor page faults keep coming while RSS stays put
    io    small writes each followed by fdatasync/fsync, plus fsync'd file creations
    disk  large sequential file writes (fsync'd), read back after dropping the page cache,
          once buffered and once with O_DIRECT, so reads really hit the block device
    fs    create/stat/read/unlink batches of small files; bounded os.walk over /usr
    net   an http.server and a raw TCP listener on 127.0.0.1 with client loops (loopback only)
    slow  syscalls that block 10-30 ms by design (nanosleep, poll, select, epoll_wait, futex,
          pipe read) so a syscall-latency tracer with a 10 ms threshold sees many rows

Why one process per category: the workloads must not share a GIL (the net clients would
starve the CPU loops and vice versa), and a process is the unit we can stop for certain.
Every worker is started by us with ``start_new_session=True``; we stop it by signalling the
process group whose id is the PID we hold, and only while that PID is still unreaped (so it
cannot have been reused). Workers also watch their own deadline and their parent, so they
end on time even if the driver is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from kernelsight import defaults
from kernelsight.exceptions import ConfigError

CATEGORIES = ("cpu", "mem", "io", "disk", "fs", "net", "slow")
ALIASES = {"memory": "mem", "network": "net", "sync": "io", "files": "fs", "syscalls": "slow"}
MIN_DURATION_S, MAX_DURATION_S = 1.0, 86400.0
CPU_WORKERS = 4
MiB = 1 << 20

TICK_S = 0.5  # on_tick period
FINISH_GRACE_S = 5.0  # after the deadline: workers finish their current operation
STOP_GRACE_S = 5.0  # after SIGTERM: workers report and exit, else SIGKILL
MEM_HEADROOM_MIB = 512  # --mem-mib must leave this much of MemAvailable free

# Loopback request pacing: bounded in time (the deadline) and in rate, hence in count.
HTTP_MAX_PER_S = 300
TCP_BURST = 50
TCP_BURST_EVERY_S = 0.1  # at most 500 short connections per second
WALK_ROOT = "/usr"
WALK_PASS_MAX = 20000  # entries per os.walk pass before starting over
FS_BATCH = 200


# ---------------------------------------------------------------------------------------------
# Validation (shared by the CLI and run_stress so both fail with the same single line).


def check_duration(value: float | str | None) -> float:
    """Seconds as a float in [1, 86400]; anything else is one ConfigError line."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError("--duration (or KS_DURATION) is required, e.g. --duration 60")
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--duration must be a number of seconds, got {value!r}") from None
    if not (MIN_DURATION_S <= d <= MAX_DURATION_S):  # also rejects NaN
        raise ConfigError(f"--duration must be between {MIN_DURATION_S:g} and "
                          f"{MAX_DURATION_S:g} seconds, got {value}")
    return d


def parse_only(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Category names in canonical order; None, '' or 'all' mean every category."""
    if value is None:
        return list(CATEGORIES)
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [ALIASES.get(s.strip().lower(), s.strip().lower()) for s in items if s.strip()]
    if not names or names == ["all"]:
        return list(CATEGORIES)
    bad = [n for n in names if n not in CATEGORIES]
    if bad:
        raise ConfigError(f"--only: unknown categor{'y' if len(bad) == 1 else 'ies'} "
                          f"{', '.join(bad)}; choose from {','.join(CATEGORIES)} or all")
    return [c for c in CATEGORIES if c in names]


def _int_setting(name: str, value: int | str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise ConfigError(f"--{name} must be between {lo} and {hi}, got {n}")
    return n


def _mem_available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 20  # unknown: do not block the run on it


def check_mem_mib(value: int | str) -> int:
    """MiB to allocate; refuse sizes that would push the machine into the OOM killer."""
    n = _int_setting("mem-mib", value, 1, 1 << 20)
    avail = _mem_available_mib()
    if n > avail - MEM_HEADROOM_MIB:
        raise ConfigError(f"--mem-mib {n} is more than this machine can spare "
                          f"({avail} MiB available, {MEM_HEADROOM_MIB} MiB kept free)")
    return n


# ---------------------------------------------------------------------------------------------
# Worker side: runs in a child process started by the driver.


@dataclass
class _Ctx:
    """What a workload needs: where to write, when to stop, and where to count."""

    deadline: float  # time.monotonic() value; CLOCK_MONOTONIC is system-wide on Linux
    workdir: Path
    parent: int
    params: dict[str, Any]
    res: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False  # set by the SIGTERM handler (a plain flag: no locks in handlers)
    _next_parent_check: float = 0.0

    def running(self) -> bool:
        """False once stopped, past the deadline, or orphaned (the driver died)."""
        if self.stopping:
            return False
        now = time.monotonic()
        if now >= self.deadline:
            return False
        if now >= self._next_parent_check:
            self._next_parent_check = now + 0.5
            if os.getppid() != self.parent:
                self.stopping = True
                return False
        return True

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def nap(self, seconds: float) -> None:
        """Sleep, but never past the deadline (a stop request waits at most ``seconds``)."""
        time.sleep(max(0.0, min(seconds, self.remaining())))


def _add(res: dict[str, Any], key: str, n: float = 1) -> None:
    res[key] = res.get(key, 0) + n


def _merge(into: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    for p in parts:
        for k, v in p.items():
            if k.startswith("max_"):
                into[k] = max(into.get(k, 0), v)
            else:
                _add(into, k, v)


# --- cpu ---


def _w_cpu(ctx: _Ctx) -> None:
    """CPU-bound workers; stress-ng when the driver found it (its bogo-ops are comparable
    across machines), else forked Python loops."""
    exe = ctx.params.get("stress_ng")
    ctx.res.update(workers=CPU_WORKERS, engine="stress-ng" if exe else "python", bogo_ops=0)
    if exe:
        _cpu_stress_ng(ctx, exe)
    else:
        _cpu_python(ctx)


def _cpu_stress_ng(ctx: _Ctx, exe: str) -> None:
    """stress-ng runs as our child in our process group, so the driver's group signal reaches
    its workers too; we also stop it ourselves when told to stop or orphaned."""
    yaml_path = ctx.workdir / "stress-ng.yaml"
    secs = max(1, math.ceil(ctx.remaining()))
    with open(ctx.workdir / "stress-ng.log", "wb") as log:
        p = subprocess.Popen(
            [exe, "--cpu", str(CPU_WORKERS), "--timeout", f"{secs}s", "--metrics-brief",
             "--yaml", str(yaml_path), "--temp-path", str(ctx.workdir)],
            cwd=ctx.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        # stress-ng's timeout is whole seconds: give it up to that second to end by itself.
        while p.poll() is None and (ctx.running() or
                                    (not ctx.stopping and time.monotonic() < ctx.deadline + 1.5)):
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # stress-ng stops its workers and writes metrics
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    ctx.res["bogo_ops"] = _stress_ng_bogo_ops(yaml_path)
    if p.returncode not in (0, -signal.SIGTERM):
        tail = (ctx.workdir / "stress-ng.log").read_text(errors="replace").strip()[-300:]
        ctx.res["error"] = f"stress-ng exited with {p.returncode}: {tail}"


def _stress_ng_bogo_ops(path: Path) -> int:
    """The cpu stressor's bogo-ops from stress-ng's --yaml file (no YAML library needed)."""
    try:
        for line in path.read_text().splitlines():
            key, _, val = line.strip().partition(":")
            if key == "bogo-ops":
                return int(float(val))
    except (OSError, ValueError):
        pass
    return 0


def _cpu_python(ctx: _Ctx) -> None:
    """Forked busy loops; counters live in a shared anonymous mapping so we read them even if
    a loop is killed. os.fork instead of multiprocessing: no helper processes or temp dirs."""
    shared = mmap.mmap(-1, 8 * (CPU_WORKERS + 1))  # [stop flag, counter 0..N-1]
    me = os.getpid()
    pids: list[int] = []
    try:
        for i in range(CPU_WORKERS):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child: never return into the worker's code
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    _busy(ctx.deadline, me, shared, i)
                finally:
                    os._exit(0)
            pids.append(pid)
        while any(_alive(p) for p in pids):
            if not ctx.running():
                struct.pack_into("q", shared, 0, 1)
            time.sleep(0.1)
    finally:
        struct.pack_into("q", shared, 0, 1)
        end = time.monotonic() + 3
        for pid in pids:
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # our unreaped child: the PID is still ours
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        ctx.res["bogo_ops"] = sum(struct.unpack_from("q", shared, 8 * (i + 1))[0]
                                  for i in range(CPU_WORKERS))
        shared.close()


def _alive(pid: int) -> bool:
    """True while our child ``pid`` has not exited (does not reap it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _busy(deadline: float, parent: int, shared: mmap.mmap, i: int) -> None:
    n = 0
    x = 1
    while True:
        for _ in range(20000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        n += 1
        struct.pack_into("q", shared, 8 * (i + 1), n)
        if (struct.unpack_from("q", shared, 0)[0] or time.monotonic() >= deadline
                or os.getppid() != parent):
            return


# --- mem ---


def _w_mem(ctx: _Ctx) -> None:
    """Allocate and touch every page, then keep re-touching 64 MiB chunks after handing them
    back with MADV_DONTNEED: each pass costs a fresh minor fault per page (what a page-fault
    tracer wants) while resident memory stays near the requested size."""
    size = int(ctx.params["mem_mib"]) * MiB
    page = mmap.PAGESIZE
    chunk = min(64 * MiB, size)
    flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ctx.res.update(allocated_bytes=size, bytes_touched=0, pages_touched=0, passes=0)
    try:
        value = 1
        while ctx.running():
            for off in range(0, size, chunk):
                if not ctx.running():
                    break
                n = min(chunk, size - off)
                if ctx.res["passes"]:
                    m.madvise(mmap.MADV_DONTNEED, off, n)
                m[off:off + n:page] = bytes([value]) * (n // page)  # one byte per page, in C
                _add(ctx.res, "bytes_touched", n)
                _add(ctx.res, "pages_touched", n // page)
            else:
                _add(ctx.res, "passes")
                value = value % 255 + 1
    finally:
        m.close()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        ctx.res["minor_faults"] = ru.ru_minflt - flt0
        ctx.res["max_rss_bytes"] = ru.ru_maxrss * 1024


# --- io ---


def _w_io(ctx: _Ctx) -> None:
    """Two writer threads (fsync releases the GIL): 4 KiB pwrite + fdatasync (every 8th an
    fsync), cycling over 8 MiB, and every 32nd write a new file made durable (file fsync +
    directory fsync), which forces journal commits. Sync calls >= 10 ms are counted."""
    parts = [dict[str, Any]() for _ in range(2)]
    threads = [threading.Thread(target=_io_writer, args=(ctx, i, parts[i]), daemon=True)
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _merge(ctx.res, parts)


def _io_writer(ctx: _Ctx, i: int, res: dict[str, Any]) -> None:
    span = 8 * MiB
    block = os.urandom(4096)
    path = ctx.workdir / f"io-{i}.dat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    dfd = os.open(ctx.workdir, os.O_RDONLY | os.O_DIRECTORY)
    res.update(writes=0, bytes_written=0, fsyncs=0, fdatasyncs=0, files_synced=0,
               slow_syncs_10ms=0, max_sync_ms=0.0)
    off = 0
    try:
        while ctx.running():
            os.pwrite(fd, block, off)
            off = (off + len(block)) % span
            res["writes"] += 1
            res["bytes_written"] += len(block)
            t = time.monotonic()
            if res["writes"] % 8 == 0:
                os.fsync(fd)
                res["fsyncs"] += 1
            else:
                os.fdatasync(fd)
                res["fdatasyncs"] += 1
            if res["writes"] % 32 == 0:
                meta = ctx.workdir / f"io-{i}-{res['writes']}.tmp"
                mfd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(mfd, block)
                    os.fsync(mfd)
                finally:
                    os.close(mfd)
                os.fsync(dfd)
                os.unlink(meta)
                os.fsync(dfd)
                res["files_synced"] += 1
                res["fsyncs"] += 3
                res["bytes_written"] += len(block)
            dt_ms = (time.monotonic() - t) * 1000
            if dt_ms >= 10:
                res["slow_syncs_10ms"] += 1
            res["max_sync_ms"] = round(max(res["max_sync_ms"], dt_ms), 1)
    finally:
        os.close(fd)
        os.close(dfd)
        with contextlib.suppress(OSError):
            os.unlink(path)


# --- disk ---


def _w_disk(ctx: _Ctx) -> None:
    """Write a large file sequentially (fdatasync every 32 MiB so a stop is prompt, fsync at
    the end), drop it from the page cache, read it back: half buffered, half with O_DIRECT.
    Cache dropping: as root, sync + /proc/sys/vm/drop_caches=1 (also makes the fs walk hit
    the disk); otherwise posix_fadvise(DONTNEED) on the file, which is enough for reads of
    our own clean pages."""
    want = int(ctx.params["disk_mib"]) * MiB
    free = shutil.disk_usage(ctx.workdir).free
    size = min(want, (free // 4) // MiB * MiB)  # never fill the file system
    ctx.res.update(file_bytes=size, files_written=0, bytes_written=0, fsyncs=0, cache_drops=0,
                   bytes_read=0, bytes_read_direct=0, direct_io=None,
                   drop_method="drop_caches" if os.geteuid() == 0 else "fadvise")
    if size < MiB:
        ctx.res["error"] = f"not enough free space in {ctx.workdir}"
        return
    path = ctx.workdir / "disk.dat"
    buf = os.urandom(MiB)
    aligned = mmap.mmap(-1, MiB)  # page-aligned buffer, as O_DIRECT requires
    try:
        while ctx.running():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            written = unsynced = 0
            try:
                while written < size and ctx.running():
                    n = os.write(fd, buf)
                    written += n
                    unsynced += n
                    ctx.res["bytes_written"] += n
                    if unsynced >= 32 * MiB:
                        os.fdatasync(fd)
                        ctx.res["fsyncs"] += 1
                        unsynced = 0
                os.fsync(fd)
                ctx.res["fsyncs"] += 1
            finally:
                os.close(fd)
            ctx.res["files_written"] += 1
            if not ctx.running():
                break
            _drop_cache(ctx, path)
            # First half buffered (readahead, page cache fills), second half O_DIRECT (one
            # block request per read, no cache); both come from the device after the drop.
            half = written if ctx.res["direct_io"] is False else written // 2 // MiB * MiB
            ctx.res["bytes_read"] += _read_file(ctx, path, 0, half)
            if ctx.running() and half < written:
                ctx.res["bytes_read_direct"] += _read_direct(ctx, path, aligned, half, written)
    finally:
        aligned.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def _drop_cache(ctx: _Ctx, path: Path) -> None:
    if ctx.res["drop_method"] == "drop_caches":
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            ctx.res["cache_drops"] += 1
            return
        except OSError:
            ctx.res["drop_method"] = "fadvise"  # e.g. read-only /proc/sys in a container
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        ctx.res["cache_drops"] += 1
    finally:
        os.close(fd)


def _read_file(ctx: _Ctx, path: Path, start: int, end: int) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        while start + total < end and ctx.running():
            n = len(os.pread(fd, min(MiB, end - start - total), start + total))
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    return total


def _read_direct(ctx: _Ctx, path: Path, buf: mmap.mmap, start: int, end: int) -> int:
    """O_DIRECT bypasses the page cache entirely (``start`` is MiB-aligned, as it needs);
    file systems without it (tmpfs) answer EINVAL, and we then stop trying."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        ctx.res["direct_io"] = False
        return 0
    total = 0
    try:
        while start + total < end and ctx.running():
            n = os.preadv(fd, [buf], start + total)
            if not n:
                break
            total += n
        ctx.res["direct_io"] = True
    except OSError:
        ctx.res["direct_io"] = False
    finally:
        os.close(fd)
    return total


# --- fs ---


def _w_fs(ctx: _Ctx) -> None:
    """Metadata churn: batches of small files in nested directories (create, stat, read,
    unlink, rmdir), interleaved with a bounded directory walk of /usr (getdents + lstat)."""
    payload = os.urandom(4096)
    walker = _walk_entries(WALK_ROOT)
    for k in ("files_created", "files_stat", "files_read", "files_deleted", "dirs_created",
              "bytes_written", "bytes_read", "walk_entries"):
        ctx.res[k] = 0
    batch = 0
    while ctx.running():
        d = ctx.workdir / f"batch-{batch}"
        batch += 1
        subs = [d / f"d{j}" for j in range(4)]
        for p in (d, *subs):
            os.mkdir(p)
            ctx.res["dirs_created"] += 1
        paths = [subs[i % 4] / f"f{i}.txt" for i in range(FS_BATCH)]
        try:
            for i, p in enumerate(paths):
                data = payload[: 256 + (i * 97) % 3840]
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                ctx.res["files_created"] += 1
                ctx.res["bytes_written"] += len(data)
            for p in paths:
                os.stat(p)
                ctx.res["files_stat"] += 1
            for p in paths:
                with open(p, "rb") as f:
                    ctx.res["bytes_read"] += len(f.read())
                ctx.res["files_read"] += 1
        finally:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    ctx.res["files_deleted"] += 1
            for p in (*subs, d):
                os.rmdir(p)
        for _ in range(2000):
            if next(walker, None) is None:
                break
            ctx.res["walk_entries"] += 1


def _walk_entries(root: str) -> Iterator[str]:
    """Endless walk of ``root`` (lstat on every file), starting over after about
    WALK_PASS_MAX entries; ends only if the tree is empty or missing, so callers never spin
    on nothing."""
    while True:
        n = 0
        for top, dirs, files in os.walk(root, onerror=lambda e: None):
            for name in files:
                with contextlib.suppress(OSError):
                    os.lstat(os.path.join(top, name))
                n += 1
                yield name
            for name in dirs:
                n += 1
                yield name
            if n >= WALK_PASS_MAX:
                break
        if n == 0:
            return


# --- net ---


def _w_net(ctx: _Ctx) -> None:
    """HTTP over loopback (http.server in a thread, urllib client with proxies disabled so
    nothing can leave the machine) plus bursts of short raw TCP connections to a second
    loopback listener. Both client loops are paced, so bounded in count as well as time."""
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    small = b"ok\n" * 32
    big = os.urandom(64 * 1024)
    served: dict[str, int] = {"server_requests": 0}
    served_lock = threading.Lock()  # handlers run on many threads

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with served_lock:
                served["server_requests"] += 1

        def do_GET(self) -> None:
            self._reply(big if self.path.startswith("/big") else small)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self._reply(str(len(self.rfile.read(n))).encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    lsock = socket.create_server(("127.0.0.1", 0), backlog=512)
    lsock.settimeout(0.2)
    done = threading.Event()
    hres: dict[str, Any] = {"http_requests": 0, "http_bytes": 0, "http_errors": 0}
    tres: dict[str, Any] = {"tcp_connections": 0, "tcp_bytes": 0, "tcp_errors": 0,
                            "tcp_accepted": 0}

    def acceptor() -> None:
        while not done.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with c:
                c.settimeout(1)
                with contextlib.suppress(OSError):
                    while c.recv(4096):
                        pass
            tres["tcp_accepted"] += 1

    def http_client() -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        i = 0
        t0 = time.monotonic()
        while ctx.running():
            i += 1
            try:
                if i % 10 == 0:
                    req = urllib.request.Request(f"{base}/upload", data=small * 8, method="POST")
                else:
                    req = urllib.request.Request(f"{base}/big" if i % 4 == 0 else f"{base}/")
                with opener.open(req, timeout=2) as r:
                    hres["http_bytes"] += len(r.read())
                hres["http_requests"] += 1
            except (urllib.error.URLError, OSError):
                hres["http_errors"] += 1
                ctx.nap(0.1)
            ahead = i / HTTP_MAX_PER_S - (time.monotonic() - t0)
            if ahead > 0:
                ctx.nap(ahead)

    def tcp_client() -> None:
        port = lsock.getsockname()[1]
        msg = b"x" * 512
        while ctx.running():
            t = time.monotonic()
            for _ in range(TCP_BURST):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(msg)
                    tres["tcp_connections"] += 1
                    tres["tcp_bytes"] += len(msg)
                except OSError:  # e.g. EADDRNOTAVAIL when ephemeral ports run out
                    tres["tcp_errors"] += 1
                    ctx.nap(0.5)
                    break
            ctx.nap(TCP_BURST_EVERY_S - (time.monotonic() - t))

    server = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    acc = threading.Thread(target=acceptor, daemon=True)
    clients = [threading.Thread(target=f, daemon=True) for f in (http_client, tcp_client)]
    try:
        server.start()
        acc.start()
        for t in clients:
            t.start()
        for t in clients:
            while t.is_alive():
                t.join(0.2)
    finally:
        done.set()
        if server.is_alive():
            httpd.shutdown()
        httpd.server_close()
        acc.join(1)
        lsock.close()
        ctx.res.update(hres, **tres, **served)


# --- slow ---


def _w_slow(ctx: _Ctx) -> None:
    """Syscalls that take 10-30 ms on purpose, one thread per kind, so a latency tracer has a
    steady stream of rows of known syscalls: clock_nanosleep, poll, pselect6, epoll_wait,
    futex (a lock acquire that times out) and read (a pipe that a partner fills after 15 ms).
    """
    r, w = os.pipe()
    idle_r, idle_w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    ep = select.epoll()
    ep.register(idle_r, select.EPOLLIN)
    held = threading.Lock()
    held.acquire()
    counts: dict[str, int] = {k: 0 for k in ("sleep", "poll", "select", "epoll", "futex",
                                            "pipe_read")}

    def loop(kind: str, op: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            while ctx.running():
                op()
                counts[kind] += 1
        return run

    def poll_once() -> None:
        p = select.poll()
        p.register(idle_r, select.POLLIN)
        p.poll(25)

    def writer() -> None:
        try:
            while ctx.running():
                time.sleep(0.015)
                os.write(w, b"x")
        finally:
            os.close(w)  # EOF ends the reader

    def reader() -> None:
        while os.read(r, 1):
            counts["pipe_read"] += 1

    threads = [
        threading.Thread(target=loop("sleep", lambda: time.sleep(0.02)), daemon=True),
        threading.Thread(target=loop("poll", poll_once), daemon=True),
        threading.Thread(target=loop("select", lambda: select.select([udp], [], [], 0.03)),
                         daemon=True),
        threading.Thread(target=loop("epoll", lambda: ep.poll(0.02)), daemon=True),
        threading.Thread(target=loop("futex", lambda: held.acquire(timeout=0.025)),
                         daemon=True),
        threading.Thread(target=writer, daemon=True),
        threading.Thread(target=reader, daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        ep.close()
        udp.close()
        for fd in (r, idle_r, idle_w):
            os.close(fd)
        ctx.res.update(counts, slow_calls=sum(counts.values()))


_WORKLOADS: dict[str, Callable[[_Ctx], None]] = {
    "cpu": _w_cpu, "mem": _w_mem, "io": _w_io, "disk": _w_disk, "fs": _w_fs, "net": _w_net,
    "slow": _w_slow,
}


def _worker_main() -> None:
    """Entry point of a worker process: argv = [category, params-json]. Prints one JSON line
    of counts on stdout, also after SIGTERM or a failure (with "error"), then exits."""
    category, raw = sys.argv[1], sys.argv[2]
    p = json.loads(raw)
    ctx = _Ctx(deadline=float(p["deadline"]), workdir=Path(p["workdir"]),
               parent=int(p["parent"]), params=p)

    def on_signal(*_: object) -> None:
        ctx.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    code = 0
    try:
        _WORKLOADS[category](ctx)
    except Exception as e:  # noqa: BLE001 - reported with the partial counts; traceback to log
        traceback.print_exc()
        ctx.res["error"] = f"{type(e).__name__}: {e}"
        code = 1
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx.res["seconds"] = round(time.monotonic() - t0, 3)
    ctx.res["cpu_seconds"] = round(ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime
                                   + ru_kids.ru_stime, 3)
    try:
        sys.stdout.write(json.dumps(ctx.res) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the driver is gone (SIGKILLed): nobody to report to
        os._exit(code)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# Driver side.


@dataclass
class _Worker:
    category: str
    popen: subprocess.Popen
    err_path: Path

    def exited(self) -> bool:
        """True once the process has exited; it stays unreaped so its PID stays ours."""
        return self.popen.returncode is not None or not _alive(self.popen.pid)

    def signal_group(self, sig: int) -> None:
        """Signal the worker's process group (its id is the worker's PID, it leads a session
        of its own). Only before reaping: until then the PID cannot belong to anyone else."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def reap(self) -> dict[str, Any]:
        """Kill any straggler in the group (the exited leader still pins the group id), reap,
        and return the worker's counts."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        out = self.popen.stdout.read() if self.popen.stdout else b""
        if self.popen.stdout:
            self.popen.stdout.close()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            res = json.loads(lines[-1]) if lines else {}
        except ValueError:
            res = {}
        if not res or self.popen.returncode not in (0, 1):
            try:
                err = self.err_path.read_text(errors="replace").strip().splitlines()
            except OSError:
                err = []
            why = err[-1] if err else f"exit code {self.popen.returncode}"
            res.setdefault("error", f"worker ended without a report: {why}"[:300])
        return res


def _default_base() -> Path:
    """Next to the database (KS_DB_PATH or the default) when that directory exists: the disk
    workloads should load the device the pipeline writes to. Else the temp directory."""
    db_dir = Path(os.environ.get("KS_DB_PATH") or defaults.DB_PATH).expanduser().parent
    if db_dir.is_dir() and os.access(db_dir, os.W_OK | os.X_OK):
        return db_dir
    return Path(tempfile.gettempdir())


def _ensure_dir(path: Path) -> list[Path]:
    """mkdir -p that returns what it created (deepest last) so we can remove exactly that."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError as e:
        _remove_dirs(created)
        raise ConfigError(f"--workdir {path}: cannot create it ({e.strerror})") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {path}: not a writable directory")
    return created


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def _spawn(category: str, tmp: Path, params: dict[str, Any]) -> _Worker:
    wdir = tmp / category
    wdir.mkdir()
    env = dict(os.environ)
    env["TMPDIR"] = str(wdir)  # anything a library puts in "temp" is removed with our tree
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (pkg_root, env.get("PYTHONPATH")) if x)
    err_path = tmp / f"{category}.err"
    with open(err_path, "wb") as err:
        p = subprocess.Popen(
            [sys.executable, "-c", "from kernelsight.stress import _worker_main; _worker_main()",
             category, json.dumps({**params, "workdir": str(wdir)})],
            cwd=wdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True)
    return _Worker(category, p, err_path)


def _stop_all(workers: list[_Worker], grace: float) -> None:
    """SIGTERM every live group, wait up to ``grace``, then SIGKILL what is left."""
    live = [w for w in workers if not w.exited()]
    for w in live:
        w.signal_group(signal.SIGTERM)
    end = time.monotonic() + grace
    while any(not w.exited() for w in live) and time.monotonic() < end:
        time.sleep(0.05)
    for w in live:
        if not w.exited():
            w.signal_group(signal.SIGKILL)


def run_stress(duration: float, workdir: str | None = None, only: list[str] | None = None,
               on_tick: Callable[[float], None] | None = None, mem_mib: int = 1024, *,
               disk_mib: int = 256, use_stress_ng: bool | None = None,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the selected workloads concurrently for ``duration`` seconds and return
    ``{category: {counts...}, "stress_ng": bool}``.

    ``on_tick(elapsed_s)`` is called about every 0.5 s from this thread (for progress bars).
    ``workdir``: parent of our private temp directory (created if missing; whatever we
    created is removed at the end); default next to the database. ``use_stress_ng``: None =
    use it if installed. ``stop``: set it (from any thread) to end early.

    Without ``stop``, and on the main thread, SIGTERM/SIGINT end the run early: everything is
    stopped and removed, the previous handlers are restored and the signal is raised again,
    so the caller sees it exactly as if we had not been there (default SIGTERM: exit;
    SIGINT: KeyboardInterrupt). An exception (including from on_tick) also cleans up first.
    """
    duration = check_duration(duration)
    cats = parse_only(only)
    mem_mib = (check_mem_mib(mem_mib) if "mem" in cats
               else _int_setting("mem-mib", mem_mib, 1, 1 << 20))
    disk_mib = _int_setting("disk-mib", disk_mib, 1, 1 << 20)
    exe = None
    if "cpu" in cats and use_stress_ng is not False:
        exe = shutil.which("stress-ng")
        if exe is None and use_stress_ng:
            raise ConfigError("stress-ng is not installed (apt-get install stress-ng), "
                              "or use the Python CPU workers")
    base = Path(workdir).expanduser() if workdir else _default_base()
    created = _ensure_dir(base.resolve())

    caught: list[int] = []
    old: dict[int, Any] = {}
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    stopped = (lambda: stop.is_set() or bool(caught)) if stop else (lambda: bool(caught))

    workers: list[_Worker] = []
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix="ks-stress-", dir=base.resolve()))
        start = time.monotonic()
        params = {"deadline": start + duration, "parent": os.getpid(), "mem_mib": mem_mib,
                  "disk_mib": disk_mib, "stress_ng": exe}
        for c in cats:
            workers.append(_spawn(c, tmp, params))
        _wait(workers, start, duration, stopped, on_tick)
        _stop_all(workers, STOP_GRACE_S)
        summary: dict[str, Any] = {w.category: w.reap() for w in workers}
        summary["stress_ng"] = exe is not None
    finally:
        _stop_all(workers, STOP_GRACE_S)  # no-op when all have exited
        for w in workers:
            if w.popen.returncode is None:
                w.signal_group(signal.SIGKILL)
                w.popen.wait()
            if w.popen.stdout:
                w.popen.stdout.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        for sig, h in old.items():
            signal.signal(sig, h)
    if caught and old:
        signal.raise_signal(caught[0])
    return summary


def _wait(workers: list[_Worker], start: float, duration: float, stopped: Callable[[], bool],
          on_tick: Callable[[float], None] | None) -> None:
    """Until the deadline (then up to FINISH_GRACE_S for workers to end by themselves), a
    stop request, or every worker exiting; calls on_tick every TICK_S."""
    deadline = start + duration
    next_tick = start
    while not stopped():
        now = time.monotonic()
        if on_tick and now >= next_tick:
            on_tick(min(now - start, duration))
            next_tick = now + TICK_S
        if all(w.exited() for w in workers) or now >= deadline + FINISH_GRACE_S:
            break
        time.sleep(0.05 if now >= deadline else min(0.1, max(0.01, deadline - now)))
    if on_tick:
        on_tick(min(time.monotonic() - start, duration))


# ---------------------------------------------------------------------------------------------
# CLI.

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_HUMAN_SKIP = {"seconds"}


def _fmt(key: str, v: Any) -> str:
    if "bytes" in key and isinstance(v, int) and not isinstance(v, bool):
        return f"{key.replace('bytes', 'mib')}={v / MiB:.1f}"
    if isinstance(v, float):
        return f"{key}={v:.2f}"
    return f"{key}={v}"


def format_summary(summary: dict[str, Any]) -> str:
    """One line per category: name, seconds, then its counts (bytes as MiB)."""
    lines = []
    for cat in CATEGORIES:
        res = summary.get(cat)
        if not isinstance(res, dict):
            continue
        parts = [_fmt(k, v) for k, v in res.items() if k not in _HUMAN_SKIP]
        lines.append(f"{cat:<5} {res.get('seconds', 0):6.1f}s  " + " ".join(parts))
    lines.append(f"stress-ng: {'yes' if summary.get('stress_ng') else 'no'}")
    return "\n".join(lines)


@click.command("stress", context_settings=CTX)
@click.option("--duration", envvar="KS_DURATION", show_envvar=True, default=None,
              metavar="SECONDS", help="Run for this long, 1..86400 (required).")
@click.option("--only", envvar="KS_STRESS_ONLY", show_envvar=True, default="all",
              metavar="LIST",
              help=f"Comma list of {','.join(CATEGORIES)} or 'all'.")
@click.option("--mem-mib", envvar="KS_STRESS_MEM_MIB", show_envvar=True, default="1024",
              metavar="MIB",
              help="MiB the memory workload allocates and keeps touching [default: 1024].")
@click.option("--disk-mib", envvar="KS_STRESS_DISK_MIB", show_envvar=True, default="256",
              metavar="MIB",
              help="Size of the file the disk workload writes and reads back [default: 256].")
@click.option("--workdir", envvar="KS_STRESS_WORKDIR", show_envvar=True, default=None,
              metavar="DIR",
              help="Parent of the private temp directory [default: the database's directory "
                   "if it exists, else $TMPDIR]. Everything created is removed at the end.")
@click.option("--engine", envvar="KS_STRESS_ENGINE", show_envvar=True, default="auto",
              metavar="auto|stress-ng|python",
              help="CPU workers: stress-ng if installed (auto), or force one [default: auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def command(duration: str | None, only: str, mem_mib: str, disk_mib: str, workdir: str | None,
            engine: str, as_json: bool) -> None:
    """Load CPU, memory, disk, file system, loopback network and syscall latency for
    DURATION seconds, then print what each workload did.

    All workloads stop by themselves; SIGTERM/SIGINT stop them early (exit 143/130). Nothing
    is left behind: no processes, files or listening ports. Network traffic stays on
    127.0.0.1. Run as root so the disk workload can drop the page cache.

    \b
    Examples:
      kernelsight stress --duration 60
      kernelsight stress --duration 30 --only cpu,mem --mem-mib 2048 --json
      KS_DURATION=10 kernelsight stress --only net,slow --engine python
    """
    d = check_duration(duration)
    cats = parse_only(only)
    eng = engine.strip().lower()
    if eng not in ("auto", "stress-ng", "python"):
        raise ConfigError(f"--engine must be auto, stress-ng or python, got {engine!r}")
    use_ng = {"auto": None, "stress-ng": True, "python": False}[eng]
    mem = check_mem_mib(mem_mib) if "mem" in cats else _int_setting("mem-mib", mem_mib, 1, 1 << 20)
    disk = _int_setting("disk-mib", disk_mib, 1, 1 << 20)

    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    tty = sys.stderr.isatty()

    def tick(elapsed: float) -> None:
        if tty:
            click.echo(f"\rstress: {elapsed:5.1f}/{d:g} s", err=True, nl=False)

    try:
        click.echo(f"stress: {','.join(cats)} for {d:g} s", err=True)
        summary = run_stress(d, workdir, cats, tick, mem, disk_mib=disk,
                             use_stress_ng=use_ng, stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if tty:
            click.echo("", err=True)
    if got:
        click.echo(f"stress: stopped early by {signal.Signals(got[0]).name}", err=True)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    errors = {c: r["error"] for c, r in summary.items() if isinstance(r, dict) and "error" in r}
    for c, e in errors.items():
        click.echo(f"stress: {c}: {e}", err=True)
    if got:
        sys.exit(128 + got[0])
    if errors:
        sys.exit(1)
