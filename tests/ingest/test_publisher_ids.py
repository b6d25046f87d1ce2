"""Producers never create an entry id the ingester cannot pack: an id Redis refuses (another
producer is ahead) is replaced by the next packable id above the stream's top, inside the
same atomic chunk; a stream already past the packable range drops the event, counted."""

from __future__ import annotations

import random
import time

from kernelsight import schema, streamid
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, R_NO_ID_LEFT, Publisher

H = "testhost"  # the settings fixture's host

SYS = schema.BY_NAME["syscall_events"]
LOAD = schema.BY_NAME["load_metrics"]


def rows(et, n):
    rng = random.Random(7)
    return [make_event(et, rng, "t", time.time_ns()) for _ in range(n)]


def test_refused_ids_move_above_the_top_and_stay_packable(settings, rclient):
    # Another producer's clock is far ahead, and its last id used the largest seq we pack.
    rclient.xadd(SYS.stream_for(H), {FIELD: b"x"}, id=f"9999999999999-{streamid.SEQ_MAX}")
    # And one wrote a seq beyond it (Redis allows it; we cannot pack it).
    rclient.xadd(LOAD.stream_for(H), {FIELD: b"x"}, id="9999999999999-600000")
    pub = Publisher(settings, "test")
    pub.publish(SYS.name, rows(SYS, 300))
    pub.publish(LOAD.name, rows(LOAD, 5))
    pub.close()
    for st in (SYS.stream_for(H), LOAD.stream_for(H)):
        ids = [e[0] for e in rclient.xrange(st)][1:]
        assert len(ids) == (300 if st == SYS.stream_for(H) else 5)
        packed = [streamid.pack(i) for i in ids]  # raises if any is out of range
        assert packed == sorted(set(packed))
        assert streamid.parse(ids[0]) == (10_000_000_000_000, 0)
    # The publisher's own ids moved past the top too: the next events are not refused.
    pub2_ids = pub._ids.next()
    assert streamid.parse(pub2_ids) > (10_000_000_000_000, 0)


def test_stream_past_packable_range_drops_counted(settings, rclient):
    rclient.xadd(SYS.stream_for(H), {FIELD: b"x"}, id=f"{streamid.MS_MAX + 1}-0")
    pub = Publisher(settings, "test")
    pub.publish(SYS.name, rows(SYS, 10))
    pub.close()
    assert rclient.xlen(SYS.stream_for(H)) == 1
    assert pub.counters[(SYS.name, schema.DROPPED, R_NO_ID_LEFT)] == 10
