"""Rows a SIGKILLed producer stored after its last accounting snapshot (report.py's module
docstring, "Produced after the last snapshot"): which stream positions they occupy, and how
many there are per event type."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from kernelsight import schema

INT64_MAX = 2**63 - 1
DEAD_SQL = """SELECT event_type, reason, entry_id FROM dead_letters WHERE timestamp >= :since"""
# Per producer instance with stream positions: its line, first and last snapshot positions,
# and its start mark (NULL for producers older than START_MARK). SQL valid on SQLite and
# PostgreSQL: every selected column grouped (an instance has one host and source), the mark a
# BIGINT (a packed stream id; PostgreSQL's INTEGER is 32-bit).
INSTANCES_SQL = f"""
SELECT instance, host, source, MIN(stream_id), MAX(stream_id),
  MAX(CASE WHEN event_type = '' AND metric = '{schema.START_MARK}'
      THEN CAST(detail AS BIGINT) END)
FROM pipeline_accounting WHERE stream_id IS NOT NULL GROUP BY instance, host, source"""
LATE_SQL = 'SELECT COUNT(*) FROM "{table}" WHERE host = :h AND stream_id > :lo AND stream_id <= :hi'


@dataclass(frozen=True)
class LateSpan:
    """Positions (after, end] of a line where an instance's rows would be stored after its last
    snapshot (at ``after``), up to just before the next instance's start (``end``)."""

    instance: str
    host: str
    source: str
    after: int
    end: int


def late_spans(c: Connection) -> list[LateSpan]:
    """One span per instance whose uncounted rows can be told apart (module docstring)."""
    lines: dict[tuple[str, str], list[tuple[str, int, int, int | None]]] = {}
    for inst, host, src, first, last, mark in c.execute(text(INSTANCES_SQL)):
        lines.setdefault((host, src), []).append(
            (inst, first if mark is None else min(mark, first), last, mark))
    spans = []
    for (host, src), insts in lines.items():
        for inst, _start, last, _mark in insts:
            if any(k != inst and s <= last < e for k, s, e, _ in insts):
                continue  # another instance was producing past its last snapshot
            later = [(s, m) for _, s, _, m in insts if s > last]
            if later:
                start, mark = min(later, key=lambda x: x[0])
                if mark is None:
                    continue  # its first snapshot is not where it began
                end = start - 1
            else:
                end = INT64_MAX
            if end > last:
                spans.append(LateSpan(inst, host, src, last, end))
    return spans


def max_le(pos: int | None, end: int, bound: int) -> int | None:
    """The line's last boundary position <= ``bound``, with ``end`` one more candidate."""
    if end > bound:
        return pos
    return end if pos is None else max(pos, end)


def late_rows(c: Connection, spans: list[LateSpan]) -> dict[str, int]:
    """Rows and dead letters in each span, per event type: produced by its instance, after
    its last snapshot (the implied final snapshot at the span's end lies in the window)."""
    out: dict[str, int] = {}
    if not spans:
        return out
    types = {et.name: et.source for et in schema.EVENT_TYPES}
    wanted = {sp.source for sp in spans}
    dead: dict[str, list[int]] = {}
    for et, _reason, entry_id in c.execute(text(DEAD_SQL), {"since": 0}):
        if types.get(et) in wanted:
            try:
                dead.setdefault(et, []).append(schema.stream_id_to_int(entry_id))
            except ValueError:
                continue
    for sp in spans:
        for et in schema.EVENT_TYPES:
            if et.source != sp.source:
                continue
            n = c.execute(text(LATE_SQL.format(table=et.name)),
                          {"h": sp.host, "lo": sp.after, "hi": sp.end}).scalar_one()
            n += sum(1 for pos in dead.get(et.name, ()) if sp.after < pos <= sp.end)
            if n:
                out[et.name] = out.get(et.name, 0) + n
    return out
