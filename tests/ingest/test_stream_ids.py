"""Entry ids that do not fit the packed stream_id (ms < 2**44, seq < 2**19) become counted
dead letters: never a collision with the next millisecond, never a crash or a poison pill."""

from __future__ import annotations

import random
import time

from sqlalchemy import text

from kernelsight import schema
from kernelsight.db import table_counts
from kernelsight.ingest import Ingester, backlog
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, encode

H = "testhost"  # the settings fixture's host

SYS = schema.BY_NAME["syscall_events"]


def test_out_of_range_ids_are_dead_letters_not_duplicates_or_crashes(settings, rclient):
    rng = random.Random(3)
    ev = [encode(make_event(SYS, rng, "t", time.time_ns())) for _ in range(4)]
    rclient.xadd(SYS.stream_for(H), {FIELD: ev[0]}, id="1700000000000-5")
    rclient.xadd(SYS.stream_for(H), {FIELD: ev[1]}, id="1700000000000-524288")  # seq = 2**19
    rclient.xadd(SYS.stream_for(H), {FIELD: ev[2]}, id="1700000000001-0")  # 2**19 packs so
    rclient.xadd(SYS.stream_for(H), {FIELD: ev[3]}, id="17592186044416-0")  # ms = 2**44
    for attempt in range(2):  # a second run must not meet the same entries again
        ing = Ingester(settings)
        ing.request_stop(drain=True)
        st = ing.run()
        if attempt == 0:
            assert st.dead["bad_stream_id"] == 2 and sum(st.duplicates.values()) == 0
    with ing.engine.connect() as c:
        ids = sorted(c.execute(text("SELECT stream_id FROM syscall_events")).scalars())
        dead = sorted(c.execute(text("SELECT entry_id, reason FROM dead_letters")).all())
    assert ids == [1700000000000 << 19 | 5, 1700000000001 << 19]
    assert [d[0] for d in dead] == ["1700000000000-524288", "17592186044416-0"]
    assert all(d[1].startswith("bad_stream_id: ") for d in dead), dead
    assert table_counts(ing.engine)[SYS.name] == 2
    assert backlog(rclient) == 0
