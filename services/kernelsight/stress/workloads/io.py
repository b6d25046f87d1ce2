"""io: small writes each followed by fdatasync/fsync, plus fsync'd file creations."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from kernelsight.stress.context import Ctx, MiB, merge

NAME = "io"


def run(ctx: Ctx) -> None:
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
    merge(ctx.res, parts)


def _io_writer(ctx: Ctx, i: int, res: dict[str, Any]) -> None:
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
