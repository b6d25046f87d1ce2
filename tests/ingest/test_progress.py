"""drained_until against a real Redis: undelivered, pending and acknowledged entries."""

from __future__ import annotations

import time

import pytest

from kernelsight import schema, streamid
from kernelsight.ingest import Ingester, drained_until
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, encode

H = "testhost"  # the settings fixture's host

SYS = schema.BY_NAME["syscall_events"]
LOAD = schema.BY_NAME["load_metrics"]


def row(et: schema.EventType) -> bytes:
    import random
    return encode(make_event(et, random.Random(0), "testhost", time.time_ns()))


def test_drained_until_follows_delivery_and_ack(settings, rclient):
    base = 1_700_000_000_000
    assert drained_until(rclient, streamid.pack_parts(base, 5))  # nothing exists yet
    # A stream without the group: its entries up to the mark are not drained.
    rclient.xadd(SYS.stream_for(H), {FIELD: row(SYS)}, id=f"{base}-1")
    assert not drained_until(rclient, streamid.pack_parts(base, 1))
    assert drained_until(rclient, streamid.pack_parts(base, 0))  # the entry is above this mark
    rclient.xadd(LOAD.stream_for(H), {FIELD: row(LOAD)}, id=f"{base}-2")
    rclient.xadd(SYS.stream_for(H), {FIELD: row(SYS)}, id=f"{base + 5}-0")
    ing = Ingester(settings)
    ing.ensure_groups()
    mark = streamid.pack_parts(base, 2)
    assert not drained_until(rclient, mark)  # undelivered
    got = ing._read(">", None, 1)  # one entry per stream delivered, not acknowledged
    assert sum(len(es) for _, es in got) == 2
    assert not drained_until(rclient, mark)  # pending
    assert not drained_until(rclient, f"{base}-2")
    ing.request_stop(drain=True)
    ing.run()
    assert drained_until(rclient, mark)
    assert drained_until(rclient, f"{base}-2".encode())
    assert drained_until(rclient, base + 5)  # epoch ms: all of that millisecond
    rclient.xadd(SYS.stream_for(H), {FIELD: row(SYS)}, id=f"{base + 9}-3")
    assert drained_until(rclient, base + 8)
    assert not drained_until(rclient, base + 9)
    assert not drained_until(rclient, streamid.pack_parts(base + 9, 3))
    assert drained_until(rclient, streamid.pack_parts(base + 9, 2))
    with pytest.raises(ValueError):
        drained_until(rclient, -1)
