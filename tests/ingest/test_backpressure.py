"""Redis memory is bounded: the private redis-server runs with maxmemory + noeviction, and a
producer meeting maxmemory holds its events (bounded by count and by bytes, drops counted at
the source) and delivers them once there is room."""

from __future__ import annotations

import random
import time

import pytest

from kernelsight import defaults, schema
from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError
from kernelsight.loadgen import make_event
from kernelsight.redis_server import PrivateRedis
from kernelsight.streams import R_BUFFER_FULL, Publisher, connect

SYS = schema.BY_NAME["syscall_events"]


def rows(n: int) -> list[dict]:
    rng = random.Random(11)
    return [make_event(SYS, rng, "t", time.time_ns()) for _ in range(n)]


def test_private_redis_is_capped_and_producers_hold_back_at_maxmemory(monkeypatch):
    with PrivateRedis() as rs:
        r = connect(rs.url)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] in ("noeviction",
                                                                         b"noeviction")
        assert int(r.config_get("maxmemory")["maxmemory"]) == 1 << 30  # defaults: 1gb
        s = Settings(redis_url=rs.url, host="t", buffer_max=1000,
                     buffer_max_bytes=10_000_000)
        pub = Publisher(s, "test")
        r.config_set("maxmemory", 1)  # full
        pub.publish(SYS.name, rows(800))
        for _ in range(5):
            pub._retry_at = pub._held_until = 0.0
            assert not pub.flush()
        assert pub.oom_refusals >= 5 and pub.connected
        assert r.xlen(SYS.stream_for("t")) == 0 and len(pub._buf) >= 800  # held, nothing half-added
        pub.publish(SYS.name, rows(400))  # past the 1,000-event cap: counted drops
        dropped = pub.counters[(SYS.name, schema.DROPPED, R_BUFFER_FULL)]
        held = sum(1 for e in pub._buf if e[2])  # events (not accounting snapshots)
        assert dropped > 0 and dropped + held == 1200
        r.config_set("maxmemory", "1gb")  # the ingester freed memory
        pub.close()
        assert r.xlen(SYS.stream_for("t")) == held
        assert pub.counters[("", "redis_oom", "")] >= 5
    monkeypatch.setenv("KS_REDIS_MAXMEMORY", "1gb\nrequirepass x")
    with pytest.raises(ConfigError, match="KS_REDIS_MAXMEMORY"):
        PrivateRedis()
    assert defaults.REDIS_MAXMEMORY == "1gb"


def test_byte_cap_drops_are_counted(settings):
    pub = Publisher(Settings(redis_url="redis://127.0.0.1:1/0", host="t",
                             buffer_max=1_000_000, buffer_max_bytes=20_000), "test")
    pub.publish(SYS.name, rows(1000))  # ~250 bytes each: the byte cap binds first
    kept = len(pub._buf)
    assert 0 < kept < 200 and pub._buf_bytes >= 20_000
    assert pub.counters[(SYS.name, schema.DROPPED, R_BUFFER_FULL)] == 1000 - kept


def test_close_is_bounded_and_its_final_accounting_arrives(settings, rclient):
    """A long backlog at exit: close() stops at its deadline, counts the rest as
    unflushed_at_exit and still delivers the snapshot saying so (it used to push the whole
    backlog first, so a process stopped meanwhile never sent its final counts)."""
    import orjson

    from kernelsight.streams import FIELD, R_UNFLUSHED
    n = 150_000
    pub = Publisher(Settings(redis_url=settings.redis_url, host="t", buffer_max=n), "test")
    batch = rows(1000)
    for _ in range(n // 1000):
        pub.publish(SYS.name, batch)
    t = time.monotonic()
    pub.close(deadline_s=0.3)
    took = time.monotonic() - t
    sent = rclient.xlen(SYS.stream_for("t"))
    assert took < 2.0 and 0 < sent < n, (took, sent)
    last = rclient.xrevrange(schema.accounting_stream("t"), count=1)[0][1][FIELD]
    counters = {(et, m, r): v for et, m, r, v, _ in orjson.loads(last)["counters"]}
    assert counters[(SYS.name, schema.PRODUCED, "")] == n
    assert counters[(SYS.name, schema.DROPPED, R_UNFLUSHED)] == n - sent
