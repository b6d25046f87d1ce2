"""Several collectors in one process (collectors/host.py), as `run` starts them: each keeps its
own status, heartbeat and accounting, and one that cannot start does not stop the others.
Real processes, real Redis, real BPF."""

from __future__ import annotations

import shutil
import time

from sqlalchemy import text

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.db import open_readonly
from kernelsight.runner import Stack, collector_states
from kernelsight.streams import HEALTH_KEY

from conftest import need_root


def test_hosted_collectors_one_process_each_accounted(settings: Settings, tmp_path, rclient):
    need_root()
    # A copy of bpf/ in which the sched program does not compile: sched fails, alone.
    bpf = tmp_path / "bpf"
    shutil.copytree(settings.bpf_path, bpf)
    (bpf / "sched.bpf.c").write_text("#error broken on purpose by test_host\n")
    s = settings.with_(bpf_dir=str(bpf), interval=0.5)
    stack = Stack(s, tmp_path / "logs")
    assert stack.one_process
    try:
        stack.start_redis()
        stack.start_ingest()
        procs = stack.start_collectors(["scraper", "io", "sched"], timeout=90)
        states = {n: p.state for n, p in procs.items()}
        assert states == {"scraper": "started", "io": "started", "sched": "failed"}, {
            n: p.detail for n, p in procs.items()}
        assert len({p.popen.pid for p in procs.values()}) == 1  # one process for all
        assert "failed to compile" in procs["sched"].detail
        time.sleep(3)  # the others go on collecting
        assert procs["scraper"].popen.poll() is None
        for n in ("scraper", "io"):
            assert rclient.get(HEALTH_KEY.format(source=n)), n
        stack.stop_collectors()
        assert procs["scraper"].popen.returncode != 0  # one of them failed: non-zero exit
        st = collector_states(stack.settings.redis_url, ["scraper", "io", "sched"])
        assert {n: v["state"] for n, v in st.items()} == {
            "scraper": "stopped", "io": "stopped", "sched": "failed"}
        assert stack.drain_ingest() == 0
    finally:
        stack.close()
    eng = open_readonly(s.db_path)
    with eng.connect() as c:
        mem = c.execute(text("SELECT COUNT(*) FROM memory_metrics")).scalar()
        by_source = dict(c.execute(text(
            "SELECT source, COUNT(DISTINCT instance) FROM pipeline_accounting "
            "WHERE metric IN (:a, :b) GROUP BY source"),
            {"a": schema.STARTED, "b": schema.FAILED}).all())
        failed = c.execute(text("SELECT source, detail FROM pipeline_accounting "
                                "WHERE metric = :f"), {"f": schema.FAILED}).all()
    eng.dispose()
    assert mem >= 4  # 0.5 s interval for 3 s and more
    # Each collector is its own producer (instance) with its own lifecycle rows.
    assert by_source == {"scraper": 1, "io": 1, "sched": 1}, by_source
    assert [src for src, _ in failed] == ["sched"]
    assert "failed to compile" in failed[0][1]


COMPILE_TWICE = r"""
import sys
from bcc import BPF
from kernelsight.collectors.host import COMPILER_LIBS, release_compiler_pages

def compiler_rss_kb():
    kb, name = 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                name = head[5] if len(head) >= 6 else ""
            elif head[0] == "Rss:" and any(lib in name for lib in COMPILER_LIBS):
                kb += int(head[1])
    return kb

prog = 'TRACEPOINT_PROBE(raw_syscalls, sys_enter) { return 0; }'
b = BPF(text=prog)
before = compiler_rss_kb()
advised = release_compiler_pages()
after = compiler_rss_kb()
b2 = BPF(text=prog.replace("return 0", "return 1"))  # the compiler still works
again = compiler_rss_kb()
b.cleanup(); b2.cleanup()
print(before, advised, after, again)
"""


def test_compiler_pages_released_after_compiling():
    """After BCC's compile, LLVM's and clang's resident pages are given back
    (madvise(MADV_PAGEOUT)): most of their RSS goes, and a later compile still works (the
    pages fault back in). Run in a child: the suite's own process is not touched."""
    need_root()
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", COMPILE_TWICE], capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    before, advised, after, again = (int(x) for x in out)
    assert before > 30_000, out  # tens of MB of compiler code were resident
    assert advised > 0, out
    assert after < before / 4, out
    assert again > after, out  # the second compile faulted some of it back
