"""How far the ingest group is behind: entries not yet stored, and waiting for none."""

from __future__ import annotations

import time

import redis

from kernelsight import schema
from kernelsight.ingest.wire import ALL_STREAMS


def backlog(r: redis.Redis, group: str = schema.INGEST_GROUP) -> int:
    """Entries not yet stored: undelivered (group lag) plus delivered-but-unacked (pending)."""
    total = 0
    streams = set(ALL_STREAMS) | set(
        r.scan_iter(match=schema.STREAM_PREFIX.encode() + b"*", count=1000, _type="stream"))
    for s in sorted(streams):
        try:
            groups = r.xinfo_groups(s)
        except redis.ResponseError:
            continue  # no such stream yet
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                lag = g.get("lag")
                if lag is None:  # Redis cannot tell after some trims/deletes: count by id
                    last = g["last-delivered-id"]
                    lag = len(r.xrange(s, min=b"(" + last if isinstance(last, bytes)
                                       else "(" + last, count=100_000))
                total += int(lag) + int(g["pending"])
    return total


def wait_drained(redis_url: str, timeout: float = 60.0) -> bool:
    """Wait until the ingest group has stored everything in every stream."""
    from kernelsight.streams import connect as _connect

    r = _connect(redis_url)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if backlog(r) == 0:
            return True
        time.sleep(0.2)
    return False
