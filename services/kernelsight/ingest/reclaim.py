"""Recovery of stuck work: entries delivered but never acknowledged (our own, after a crash,
or a dead consumer's), and finding every host's streams (the registry, not SCAN)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from kernelsight import defaults
from kernelsight.streams import all_streams

if TYPE_CHECKING:
    from kernelsight.ingest.worker import Ingester


def discover(r: redis.Redis, group: str, own_host: str, known: list[bytes]) -> list[bytes]:
    """Every stream to read: each registered host's (plus this ingester's own host's), with
    any stream a producer registered that no event type owns (a misconfigured or newer
    producer), so its entries become counted dead letters rather than sitting unseen.
    Creates the group (from 0) on the streams not in ``known``; a stream whose group cannot
    be created now (Redis full) is left for a later discover."""
    seen = set(known)
    out = []
    for s in all_streams(r, [own_host]):
        if s not in seen:
            try:
                r.xgroup_create(s, group, id="0", mkstream=True)
            except redis.exceptions.OutOfMemoryError:
                if not has_group(r, s, group):
                    continue
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        out.append(s)
    return out


def has_group(r: redis.Redis, stream: bytes, group: str) -> bool:
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return False  # no such stream
    return any(g["name"] in (group, group.encode()) for g in groups)


def own_pending(ing: Ingester) -> None:
    """Entries delivered to this consumer name but never acked (a previous crash)."""
    while True:
        got = [(s, [e for e in es if e[1]]) for s, es in ing._read("0", None, 1000)]
        got = [(s, es) for s, es in got if es]
        if not got:
            return
        ing.stats.reclaimed += sum(len(es) for _, es in got)
        # Process now so the next "0" read moves on (they are acked after commit).
        ing._process(got)


def autoclaim(ing: Ingester) -> None:
    """Take over entries idle too long on other (dead) consumers of the group."""
    for s in ing.streams:
        start = "0-0"
        while True:
            res = ing.r.xautoclaim(s, ing.group, ing.consumer,
                                   min_idle_time=defaults.RECLAIM_IDLE_MS, start_id=start,
                                   count=1000)
            nxt, entries = res[0], res[1]
            entries = [e for e in entries if e and e[1]]
            if entries:
                ing.stats.reclaimed += len(entries)
                ing._process([(s, entries)])
            if nxt in (b"0-0", "0-0"):
                break
            start = nxt
