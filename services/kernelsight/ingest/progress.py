"""How far the ingest group is behind: entries not yet stored, and waiting for none."""

from __future__ import annotations

import time

import redis

from kernelsight import schema, streamid
from kernelsight.streams import all_streams


def backlog(r: redis.Redis, group: str = schema.INGEST_GROUP,
            streams: list[bytes] | None = None) -> int:
    """Entries not yet stored: undelivered (group lag) plus delivered-but-unacked (pending),
    over ``streams`` (default: every registered host's)."""
    total = 0
    for s in (all_streams(r) if streams is None else streams):
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


def _upper_bound(mark: int | str | bytes) -> tuple[str, tuple[int, int]]:
    """``mark`` as an XRANGE end and a comparable (ms, seq): a packed id, a plain epoch-ms
    integer (below 2**44: every id of that millisecond and before), or ``"<ms>-<seq>"``."""
    if isinstance(mark, int):
        if mark < 0:
            raise ValueError(f"negative stream id mark {mark}")
        if mark <= streamid.MS_MAX:
            return str(mark), (mark, 2**64 - 1)
        ms, seq = mark >> streamid.SEQ_BITS, mark & streamid.SEQ_MAX
        return f"{ms}-{seq}", (ms, seq)
    ms, seq = streamid.parse(mark)
    return f"{ms}-{seq}", (ms, seq)


def drained_until(r: redis.Redis, mark: int | str | bytes,
                  group: str = schema.INGEST_GROUP, streams: list[bytes] | None = None) -> bool:
    """True when, in every event and accounting stream (``streams``, default every registered
    host's), no entry with id <= ``mark`` is undelivered or pending for ``group``: everything
    produced up to ``mark`` is stored (or a counted dead letter). Entries trimmed from a
    stream were acknowledged first."""
    end, hi = _upper_bound(mark)
    gname = group.encode()
    streams = all_streams(r) if streams is None else streams
    if not streams:
        return True
    pipe = r.pipeline(transaction=False)
    for s in streams:
        pipe.xinfo_groups(s)
        pipe.xpending_range(s, group, min="-", max=end, count=1)
    res = pipe.execute(raise_on_error=False)
    todo: list[tuple[bytes, bytes]] = []
    for i, s in enumerate(streams):
        groups, pend = res[2 * i], res[2 * i + 1]
        if isinstance(groups, redis.ResponseError) and "no such key" in str(groups):
            continue  # the stream does not exist: nothing in it
        if isinstance(groups, Exception):
            raise groups
        g = next((g for g in groups if g["name"] in (gname, group)), None)
        if g is None:  # no group yet: drained only if nothing up to the mark exists
            todo.append((s, b"-"))
            continue
        if isinstance(pend, Exception):
            raise pend
        if pend:
            return False
        last = g["last-delivered-id"]
        last = last if isinstance(last, bytes) else str(last).encode()
        if streamid.parse(last) < hi:
            todo.append((s, b"(" + last))
    if not todo:
        return True
    pipe = r.pipeline(transaction=False)
    for s, start in todo:
        pipe.xrange(s, start, end, count=1)
    return not any(pipe.execute())
