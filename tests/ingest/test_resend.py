"""A chunk re-sent after its reply was lost is stored once, even when the original was
already stored, acknowledged and trimmed from the stream before the re-send."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from urllib.parse import urlparse

import pytest
from sqlalchemy import text

from kernelsight import schema
from kernelsight.ingest import Ingester
from kernelsight.loadgen import make_event
from kernelsight.streams import Publisher

from .lossy_proxy import LossyProxy

H = "testhost"  # the settings fixture's host

SYS = schema.BY_NAME["syscall_events"]


@pytest.fixture
def proxy(redis_url, tmp_path):
    u = urlparse(redis_url)
    p = LossyProxy(u.path, str(tmp_path / "proxy.sock"))
    yield p, f"unix://:{u.password}@{p.path}?db=0"
    p.close()


def drain(settings) -> Ingester:
    ing = Ingester(settings)
    ing.request_stop(drain=True)
    ing.run()
    return ing


def test_lost_reply_resend_after_store_ack_trim_stores_once(settings, rclient, proxy):
    lossy, url = proxy
    pub = Publisher(replace(settings, redis_url=url), "test")
    rng = random.Random(5)
    pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns())])
    assert pub.flush(final=True)  # connected, first entries in
    n = 500
    pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns()) for _ in range(n)])
    lossy.lose_next_reply.set()
    assert not pub.flush()  # the chunk ran in Redis, its reply was lost: ambiguous
    assert lossy.lost == 1
    assert rclient.xlen(SYS.stream_for(H)) == n + 1
    ing = drain(replace(settings, stream_retain=0))  # stored and acknowledged...
    ing.trim()  # ...and trimmed away before the producer retries
    assert rclient.xlen(SYS.stream_for(H)) == 0
    time.sleep(0.3)  # past the publisher's retry backoff
    pub.close()  # the re-send of the same chunk
    ing = drain(settings)
    with ing.engine.connect() as c:
        total, distinct = c.execute(text(
            "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
    assert total == n + 1, f"{total - n - 1} stored twice"
    assert distinct == total


def test_chunk_run_by_redis_but_unconfirmed_at_close_is_not_counted_dropped(settings, rclient,
                                                                             proxy):
    """A chunk whose reply was lost is still in doubt when close() reaches its deadline (as
    when Redis stops with the producers: `docker compose restart`). Redis ran it: its entries
    are stored, so they must not also be counted dropped (unflushed_at_exit); the report then
    balances. It used to count them, and the window read stored beyond produced - dropped."""
    from kernelsight.report import build
    from kernelsight.streams import R_UNFLUSHED

    lossy, url = proxy
    pub = Publisher(replace(settings, redis_url=url), "test")
    rng = random.Random(6)
    pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns())])
    assert pub.flush(final=True)
    n = 300
    pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns()) for _ in range(n)])
    lossy.lose_next_reply.set()
    assert not pub.flush()  # ran in Redis, reply lost: in doubt
    assert rclient.xlen(SYS.stream_for(H)) == n + 1
    time.sleep(0.6)  # the proxy has cut that connection
    pub.close(deadline_s=0)  # the deadline is already past: no re-send, only the count
    assert pub.counters.get((SYS.name, schema.DROPPED, R_UNFLUSHED), 0) == 0
    ing = drain(settings)
    rep = build(ing.engine, settings.db_path)
    assert rep.counts[SYS.name] == rep.produced[SYS.name] == n + 1
    assert rep.balance(SYS.name) == 0, rep.dropped.get(SYS.name)
