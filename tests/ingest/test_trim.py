"""Stream trimming removes only what the ingest group has acknowledged, stream by stream."""

from __future__ import annotations

from kernelsight import schema
from kernelsight.ingest import Ingester
from kernelsight.ingest.retention import trim_acknowledged
from kernelsight.streams import FIELD

H = "testhost"  # the settings fixture's host

SYS = schema.BY_NAME["syscall_events"]
LOAD = schema.BY_NAME["load_metrics"]


def test_stream_without_group_is_not_trimmed_with_another_streams_bound(settings, rclient):
    for i in range(1, 301):
        rclient.xadd(SYS.stream_for(H), {FIELD: b"{}"}, id=f"1700000000000-{i}")
    Ingester(settings).ensure_groups()
    # The syscall stream's entries are delivered and acknowledged up to its last id.
    got = rclient.xreadgroup(schema.INGEST_GROUP, "c", {SYS.stream_for(H): ">"}, count=1000)
    rclient.xack(SYS.stream_for(H), schema.INGEST_GROUP, *[e[0] for e in got[0][1]])
    # load_metrics: entries no group has seen (its group was destroyed: e.g. created by hand).
    rclient.xgroup_destroy(LOAD.stream_for(H), schema.INGEST_GROUP)
    for i in range(1, 301):
        rclient.xadd(LOAD.stream_for(H), {FIELD: b"{}"}, id=f"1600000000000-{i}")
    trim_acknowledged(rclient, schema.INGEST_GROUP, 10,
                      [s.encode() for s in schema.host_streams(H)])
    assert rclient.xlen(LOAD.stream_for(H)) == 300  # nothing acknowledged there: nothing trimmed
    assert rclient.xlen(SYS.stream_for(H)) < 300  # acknowledged: trimmed (approximately)
