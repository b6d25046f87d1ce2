"""A Redis restart that keeps its data (AOF): entries the ingester already stored, acknowledged
and trimmed are not "lost" and not replayed; conservation stays exact."""

from __future__ import annotations

import random
import time
from dataclasses import replace

from sqlalchemy import text

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.ingest import Ingester
from kernelsight.loadgen import make_event
from kernelsight.redis_server import PrivateRedis
from kernelsight.streams import R_LOST_IN_REDIS, Publisher, connect

SYS = schema.BY_NAME["syscall_events"]


def drain(s: Settings) -> Ingester:
    ing = Ingester(s)
    ing.request_stop(drain=True)
    ing.run()
    return ing


def test_restart_with_aof_after_trim_counts_nothing_lost(tmp_path):
    rs = PrivateRedis(persist_dir=str(tmp_path / "redis")).start(persistent=True)
    rs2 = None
    try:
        s = Settings(redis_url=rs.url, db_path=str(tmp_path / "ks.db"), host="t")
        pub = Publisher(s, "test")
        rng = random.Random(2)
        n = 2000
        pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns()) for _ in range(n)])
        assert pub.flush(final=True)  # in Redis, and in the publisher's replay window
        ing = drain(replace(s, stream_retain=0))
        ing.trim()  # stored, acknowledged and trimmed before the publisher confirms
        assert connect(rs.url).xlen(SYS.stream_for("t")) == 0
        rs.stop()
        rs2 = PrivateRedis(password=rs.password, persist_dir=rs.dir,
                           socket_dir=rs.socket_dir).start(persistent=True)
        pub._next_confirm = 0.0  # the next flush confirms: it sees the new run_id
        pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns()) for _ in range(10)])
        pub.close()
        ing = drain(s)
        with ing.engine.connect() as c:
            total, distinct = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
        assert total == distinct == n + 10
        assert pub.counters.get((SYS.name, schema.DROPPED, R_LOST_IN_REDIS), 0) == 0
        assert pub.replayed == 0 and pub.counters.get(("", "replayed", ""), 0) == 0
    finally:
        if rs2:
            rs2.cleanup()
        rs.cleanup()
