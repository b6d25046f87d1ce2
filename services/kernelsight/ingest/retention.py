"""Stream trimming: cap Redis streams to entries the ingest group has acknowledged.
(Database retention is a separate concern.)"""

from __future__ import annotations

import redis

from kernelsight.ingest.wire import ALL_STREAMS


def trim_acknowledged(r: redis.Redis, group: str, retain: int) -> None:
    """Cap streams without losing anything: only entries the group has acknowledged
    (older than every pending entry and not newer than the last delivered) are trimmed,
    and only once a stream holds more than ``retain`` entries."""
    groups = {}
    pipe = r.pipeline(transaction=False)
    for s in ALL_STREAMS:
        pipe.xlen(s)
    lens = pipe.execute()
    for s, n in zip(ALL_STREAMS, lens, strict=True):
        if n <= retain:
            continue
        for g in r.xinfo_groups(s):
            groups[g["name"]] = g
        g = groups.get(group.encode()) or groups.get(group)
        if not g:
            continue
        bound = g["last-delivered-id"]
        bound = bound.decode() if isinstance(bound, bytes) else bound
        pend = r.xpending(s, group)
        if pend and pend.get("pending"):
            bound = min(bound, pend["min"].decode() if isinstance(pend["min"], bytes)
                        else pend["min"], key=lambda x: tuple(map(int, x.split("-"))))
            r.xtrim(s, minid=bound, approximate=True)
        else:
            ms, seq = map(int, bound.split("-"))
            r.xtrim(s, minid=f"{ms}-{seq + 1}", approximate=True)
