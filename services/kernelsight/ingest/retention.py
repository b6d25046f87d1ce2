"""Stream trimming: cap Redis streams to entries the ingest group has acknowledged.
(Database retention is a separate concern.)"""

from __future__ import annotations

import redis


def trim_acknowledged(r: redis.Redis, group: str, retain: int, streams: list[bytes]) -> None:
    """Cap streams without losing anything. A stream holding more than ``retain`` entries
    loses every entry the group has acknowledged: those below its oldest pending entry and
    not above its last-delivered id (XTRIM MINID ~, so Redis removes whole internal nodes
    only and up to about a hundred acknowledged entries may stay). A stream at or below
    ``retain`` entries, or without the group, is left alone."""
    pipe = r.pipeline(transaction=False)
    for s in streams:
        pipe.xlen(s)
    lens = pipe.execute()
    for s, n in zip(streams, lens, strict=True):
        if n <= retain:
            continue
        # This stream's own groups only: a stream without the group has nothing acknowledged.
        g = next((g for g in r.xinfo_groups(s) if g["name"] in (group, group.encode())), None)
        if g is None:
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
