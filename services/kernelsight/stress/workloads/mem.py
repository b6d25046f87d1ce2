"""mem: an anonymous mapping (--mem-mib, default 1 GiB) touched page by page, then re-touched
chunk by chunk after MADV_DONTNEED so minor page faults keep coming while RSS stays put."""

from __future__ import annotations

import mmap
import resource

from kernelsight.stress.context import Ctx, MiB, add

NAME = "mem"
CHUNK_BYTES = 64 * MiB  # re-touched (and handed back) this much at a time


def run(ctx: Ctx) -> None:
    """Allocate and touch every page, then keep re-touching 64 MiB chunks after handing them
    back with MADV_DONTNEED: each pass costs a fresh minor fault per page (what a page-fault
    tracer wants) while resident memory stays near the requested size."""
    size = int(ctx.params["mem_mib"]) * MiB
    page = mmap.PAGESIZE
    chunk = min(CHUNK_BYTES, size)
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
                add(ctx.res, "bytes_touched", n)
                add(ctx.res, "pages_touched", n // page)
            else:
                add(ctx.res, "passes")
                value = value % 255 + 1
    finally:
        m.close()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        ctx.res["minor_faults"] = ru.ru_minflt - flt0
        ctx.res["max_rss_bytes"] = ru.ru_maxrss * 1024
