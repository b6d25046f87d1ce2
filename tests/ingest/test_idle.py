"""What the pipeline does when nothing happens (README "Idle cost"): counted in a real Redis's
own command statistics, not timed. An idle producer makes no confirmation round trip but keeps
its heartbeat; an idle ingester spaces its reads out yet still beats; the private Redis runs
its timers at defaults.REDIS_HZ."""

from __future__ import annotations

import threading
import time

import redis

from kernelsight import defaults, schema
from kernelsight.ingest import Ingester
from kernelsight.redis_server import PrivateRedis
from kernelsight.streams import HEALTH_KEY, Publisher


def calls(r: redis.Redis) -> dict[str, int]:
    """Calls per command so far; this INFO itself is counted in the next answer."""
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in r.info("commandstats").items()}


def delta(before: dict[str, int], after: dict[str, int], cmd: str) -> int:
    """Calls of ``cmd`` between two calls(), less calls()'s own INFO."""
    return after.get(cmd, 0) - before.get(cmd, 0) - (cmd == "info")


def test_idle_publisher_makes_no_confirm_round_trip(settings, rclient):
    pub = Publisher(settings, "idletest")
    pub.status("started")
    assert pub.flush()  # the first flush confirms (learns the server) and sends the snapshot
    c0 = calls(rclient)
    end = time.monotonic() + defaults.HEARTBEAT_S + 1.5
    while time.monotonic() < end:  # what run_collector does between polls
        assert pub.flush()
        time.sleep(0.05)
    # Nothing buffered, nothing awaiting acknowledgement: no INFO (the confirmation); the
    # heartbeat still goes (at least once in HEARTBEAT_S + 1.5 s).
    c1 = calls(rclient)
    assert delta(c0, c1, "info") == 0
    assert delta(c0, c1, "set") >= 1
    assert rclient.get(HEALTH_KEY.format(source="idletest"))
    # Something to send: confirmed again before it is sent.
    pub.publish("memory_metrics", [{"x": 1}])
    assert pub.flush()
    assert delta(c1, calls(rclient), "info") == 1
    pub.close()


def test_a_few_rows_linger_then_go_in_one_chunk(settings, rclient):
    """The collectors' runner publishes with a linger: rows published a few per poll go in
    one round trip once the oldest has waited linger_s; a full chunk and a final flush go at
    once; the heartbeat does not wait for the linger."""
    from kernelsight.streams import CHUNK_MAX

    pub = Publisher(settings, "lingertest", linger_s=0.6)
    pub.status("started")
    assert pub.flush(final=True)
    stream = schema.stream_key(settings.host, "memory_metrics")
    c0 = calls(rclient)
    t0 = time.monotonic()
    for i in range(5):  # five polls, a row each
        pub.publish("memory_metrics", [{"x": i}])
        assert not pub.flush()
        time.sleep(0.05)
    assert rclient.xlen(stream) == 0
    assert delta(c0, calls(rclient), "evalsha") == 0  # nothing sent yet, no round trip
    while time.monotonic() < t0 + 0.65:
        time.sleep(0.05)
    c1 = calls(rclient)
    assert pub.flush()
    assert rclient.xlen(stream) == 5 and delta(c1, calls(rclient), "evalsha") == 1
    pub.publish("memory_metrics", [{"x": i} for i in range(CHUNK_MAX)])  # a full chunk
    assert pub.flush() and rclient.xlen(stream) == 5 + CHUNK_MAX
    pub.publish("memory_metrics", [{"x": -1}])
    assert pub.flush(final=True) and rclient.xlen(stream) == 6 + CHUNK_MAX
    rclient.delete(HEALTH_KEY.format(source="lingertest"))
    pub.publish("memory_metrics", [{"x": -2}])  # lingering while the heartbeat falls due
    end = time.monotonic() + defaults.HEARTBEAT_S + 0.5
    while not rclient.get(HEALTH_KEY.format(source="lingertest")):
        assert time.monotonic() < end, "no heartbeat while rows lingered"
        pub.flush()
        time.sleep(0.05)
    pub.close()
    assert rclient.xlen(stream) == 7 + CHUNK_MAX


def test_idle_ingester_spaces_out_its_reads(settings, rclient):
    ing = Ingester(settings)
    t = threading.Thread(target=ing.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not rclient.get(HEALTH_KEY.format(source="ingest")):
            assert time.monotonic() < deadline, "no ingest heartbeat"
            time.sleep(0.1)
        time.sleep(1)
        c0 = calls(rclient)
        rclient.delete(HEALTH_KEY.format(source="ingest"))
        time.sleep(6)
        reads = delta(c0, calls(rclient), "xreadgroup")
        # batch_ms (200 ms) reads would be ~30 in 6 s; idle ones wait IDLE_BLOCK_MS each.
        assert reads <= 6 / (defaults.IDLE_BLOCK_MS / 1000) + 3, reads
        assert rclient.get(HEALTH_KEY.format(source="ingest"))  # still beating
        # An entry is read at once, however long the idle read waits.
        rclient.xadd(schema.accounting_stream("testhost"), {b"d": b"{}"})
        deadline = time.monotonic() + 10
        while not ing.stats.dead:
            assert time.monotonic() < deadline, "the entry was not read"
            time.sleep(0.05)
    finally:
        ing.request_stop(drain=True)
        t.join(30)
    assert not t.is_alive()


def test_private_redis_timer_frequency():
    with PrivateRedis() as rs:
        r = redis.Redis.from_url(rs.url)
        assert r.config_get("hz") == {"hz": str(defaults.REDIS_HZ)}
        r.close()
