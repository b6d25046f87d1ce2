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
    assert rclient.xlen(SYS.stream) == n + 1
    ing = drain(replace(settings, stream_retain=0))  # stored and acknowledged...
    ing.trim()  # ...and trimmed away before the producer retries
    assert rclient.xlen(SYS.stream) == 0
    time.sleep(0.3)  # past the publisher's retry backoff
    pub.close()  # the re-send of the same chunk
    ing = drain(settings)
    with ing.engine.connect() as c:
        total, distinct = c.execute(text(
            "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
    assert total == n + 1, f"{total - n - 1} stored twice"
    assert distinct == total
