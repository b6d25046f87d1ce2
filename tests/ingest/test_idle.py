"""What the pipeline does when nothing happens (README "Idle cost"): counted in a real Redis's
own command statistics, not timed. An idle producer makes no confirmation round trip but keeps
its heartbeat; an idle ingester spaces its reads out yet still beats; the private Redis runs
its timers at defaults.REDIS_HZ."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

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


@contextlib.contextmanager
def running_ingester(settings, rclient) -> Iterator[Ingester]:
    """A real Ingester in a thread, once its first heartbeat is in Redis; drained at exit."""
    ing = Ingester(settings)
    t = threading.Thread(target=ing.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not rclient.get(HEALTH_KEY.format(source="ingest")):
            assert time.monotonic() < deadline, "no ingest heartbeat"
            time.sleep(0.1)
        yield ing
    finally:
        ing.request_stop(drain=True)
        t.join(30)
    assert not t.is_alive()


def test_idle_ingester_spaces_out_its_reads(settings, rclient):
    with running_ingester(settings, rclient) as ing:
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


def test_ingester_lingers_after_a_small_batch(settings, rclient):
    """A few entries a second from several producers, each on its own schedule: after a small
    batch the ingester reads again only ingest_linger_ms after its last read, so they go in
    about one batch a second; a batch at or above INGEST_LINGER_ROWS is followed by the next
    read at once."""
    assert settings.ingest_linger_ms == defaults.INGEST_LINGER_MS == 1000
    stream = schema.accounting_stream("testhost")  # "{}" is no snapshot: a dead letter each
    with running_ingester(settings, rclient) as ing:
        b0, c0 = ing.stats.batches, calls(rclient)
        for _ in range(20):  # 4 s, one entry every 0.2 s
            rclient.xadd(stream, {b"d": b"{}"})
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while ing.stats.dead.total() < 20:
            assert time.monotonic() < deadline, f"only {ing.stats.dead.total()} of 20 entries read"
            time.sleep(0.05)
        batches = ing.stats.batches - b0
        reads = delta(c0, calls(rclient), "xreadgroup")
        # Without the linger: a batch per entry (20) and about two reads each.
        assert batches <= 4 / (settings.ingest_linger_ms / 1000) + 2, batches
        assert reads <= 2 * (4 + 2), reads
        # A large batch: the next read goes at once, and the rest is read without a linger.
        c1, b1 = calls(rclient), ing.stats.batches
        ends: list[tuple[float, int]] = [(0.0, ing.stats.dead.total())]  # (when, entries read)
        batch = ing.events.batch
        ing.events.batch = lambda sec: (ends.append((time.monotonic(), ing.stats.dead.total())),
                                        batch(sec))[1]
        pipe = rclient.pipeline(transaction=False)
        for _ in range(3 * settings.batch_size):
            pipe.xadd(stream, {b"d": b"{}"})
        pipe.execute()
        deadline = time.monotonic() + 30
        while ing.stats.dead.total() < 20 + 3 * settings.batch_size:
            assert time.monotonic() < deadline, f"only {ing.stats.dead.total()} read"
            time.sleep(0.05)
        assert ing.stats.batches - b1 >= 3
        assert delta(c1, calls(rclient), "xreadgroup") >= 3
        # After a full batch the next comes at once: no linger (each takes a few ms).
        sizes = [b[1] - a[1] for a, b in itertools.pairwise(ends)]
        gaps = [(n, round(b[0] - a[0], 3)) for n, (a, b) in zip(
            sizes[:-1], itertools.pairwise(ends[1:]), strict=True)
            if n >= defaults.INGEST_LINGER_ROWS]
        assert gaps and max(g for _, g in gaps) < settings.ingest_linger_ms / 2000, gaps


def test_roundtrip_returns_error_replies_in_order(rclient):
    """client.roundtrip (the producers' per-second commands): replies in order, an error
    reply returned rather than raised, and the connection still in step for the next."""
    from kernelsight import resp
    from kernelsight.streams.client import info_field, roundtrip

    rclient.delete("rt:a", "rt:s")
    out = roundtrip(rclient, resp.command("SET", "rt:a", "x"), resp.command("INCR", "rt:a"),
                    resp.command("SADD", "rt:s", "m", "n"), resp.command("INFO", "server"))
    assert out[0] in (b"OK", "OK") and isinstance(out[1], redis.ResponseError)
    assert out[2] == 2
    assert info_field(out[3], b"run_id") == rclient.info("server")["run_id"]
    assert roundtrip(rclient, resp.command("GET", "rt:a")) == [b"x"]
    rclient.delete("rt:a", "rt:s")


def test_private_redis_timer_frequency():
    with PrivateRedis() as rs:
        r = redis.Redis.from_url(rs.url)
        assert r.config_get("hz") == {"hz": str(defaults.REDIS_HZ)}
        r.close()
