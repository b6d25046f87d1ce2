"""fs: create/stat/read/unlink batches of small files; bounded os.walk over /usr."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from kernelsight.stress.context import Ctx

NAME = "fs"
WALK_ROOT = "/usr"
WALK_PASS_MAX = 20000  # entries per os.walk pass before starting over
FS_BATCH = 200


def run(ctx: Ctx) -> None:
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
