"""Row counts over a time window that reaches past raw retention, for `report` and `query`.

Raw rows are complete from each table's first whole minute still held (retention deletes
oldest first, and never past the rollup point); before that, the per-minute rollups hold
``samples``, the number of raw rows each minute had. A window's count is the rollups'
samples for the minutes before that boundary plus the raw rows from it on. In the rollup
part a minute counts when it starts inside the window (minute resolution)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from kernelsight import schema
from kernelsight.maintenance.policy import MINUTE_NS


def raw_complete_from(conn: Connection, table: str) -> int | None:
    """The first minute from which ``table``'s raw rows are all still there (None: empty):
    the oldest row's own minute when retention took nothing of it (its raw rows number its
    rollup's samples, or it is not rolled up yet: deletes never pass the rollup), else the
    next one."""
    oldest = conn.execute(text(f"SELECT MIN(timestamp) FROM {table}")).scalar()
    if oldest is None:
        return None
    m = oldest // MINUTE_NS * MINUTE_NS
    rolled = conn.execute(text(f"SELECT SUM(samples) FROM {table}_1m WHERE timestamp = :m"),
                          {"m": m}).scalar()
    if rolled is None:
        return m
    raw = conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE timestamp >= :a AND "
                            "timestamp < :b"), {"a": m, "b": m + MINUTE_NS}).scalar_one()
    return m if raw >= rolled else m + MINUTE_NS


def rollup_counts(eng: Engine | Connection, since_ns: int, until_ns: int) -> dict[str, int]:
    """Rows per event table with since_ns <= timestamp < until_ns, through the rollups where
    retention has deleted the raw rows."""
    if isinstance(eng, Engine):
        with eng.connect() as conn:
            return rollup_counts(conn, since_ns, until_ns)
    conn = eng
    out: dict[str, int] = {}
    for et in schema.EVENT_TYPES:
        if not et.rollup:
            continue
        start = raw_complete_from(conn, et.name)
        boundary = until_ns if start is None else max(since_ns, min(start, until_ns))
        rolled = conn.execute(text(
            f"SELECT COALESCE(SUM(samples), 0) FROM {et.rollup} WHERE timestamp >= :a AND "
            "timestamp < :b"), {"a": since_ns, "b": boundary}).scalar_one()
        raw = conn.execute(text(
            f"SELECT COUNT(*) FROM {et.name} WHERE timestamp >= :a AND timestamp < :b"),
            {"a": boundary, "b": until_ns}).scalar_one()
        out[et.name] = int(rolled) + int(raw)
    return out
