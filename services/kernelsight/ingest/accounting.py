"""Accounting rows that say something new: a counter is stored again only when its value (or
detail) changed.

Why: every producer sends a cumulative snapshot of all its counters about once a second, and
the ingester its own; stored whole, that was ~40 rows a second (~25 MB an hour) on an idle
host, nearly all repeating the row before. Every reader takes, per (instance, event_type,
metric, reason), the largest value at or before a position (report: V(b) = MAX(value) over
snapshots at a position <= b; status and /metrics: MAX(value)). Counters are cumulative, so
a row equal to the key's previous row changes none of those answers, and leaving it out is
exact. A snapshot in which nothing changed has no event after the previous one either, so a
line's last stored position still bounds the same rows (report.py, "Positions")."""

from __future__ import annotations

Key = tuple[str, str, str, str]
Seen = tuple[int, str | None]


class ChangedOnly:
    """What the ingester has stored per counter key; ``changed()`` keeps the new rows and
    ``commit()`` records them once their transaction has committed (a rolled-back row is
    offered again)."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self.seen: dict[Key, Seen] = {}
        self.max_keys = max_keys  # past it, forget everything (rows are then stored again)

    def changed(self, rows: list[dict]) -> tuple[list[dict], dict[Key, Seen]]:
        """The rows to store, and the updates to ``commit()`` after they are stored."""
        if not rows:
            return rows, {}
        kept: list[dict] = []
        upd: dict[Key, Seen] = {}
        seen = self.seen
        for r in rows:
            key = (r["instance"], r["event_type"], r["metric"], r["reason"])
            v = (r["value"], r["detail"])
            if upd.get(key, seen.get(key)) == v:
                continue
            upd[key] = v
            kept.append(r)
        return kept, upd

    def commit(self, upd: dict[Key, Seen]) -> None:
        if len(self.seen) + len(upd) > self.max_keys:
            self.seen.clear()
        self.seen.update(upd)
