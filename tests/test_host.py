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
