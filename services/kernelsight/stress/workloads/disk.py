"""disk: large sequential file writes (fsync'd, --disk-mib), read back after dropping the page
cache, once buffered and once with O_DIRECT, so reads really hit the block device."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
from pathlib import Path

from kernelsight.stress.context import Ctx, MiB

NAME = "disk"


def run(ctx: Ctx) -> None:
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


def _drop_cache(ctx: Ctx, path: Path) -> None:
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


def _read_file(ctx: Ctx, path: Path, start: int, end: int) -> int:
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


def _read_direct(ctx: Ctx, path: Path, buf: mmap.mmap, start: int, end: int) -> int:
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
