"""Per-minute rollups: ``<table>_1m`` from the raw rows, before they age out.

netdata's tiers in SQLite: one row per (host, minute, key columns) with the statistics each
column's role asks for (schema.Col.role): min/avg/max of gauges, the last value of
cumulative counters (never a sum of them), sums of per-interval counts, the largest
per-interval percentile, and exact nearest-rank p50/p95/p99/max of per-event latencies.
Only closed minutes are written, by upsert, and ``rollup_state`` records how far each table
has got, so a rerun changes nothing and the pruner knows what it may delete."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from kernelsight import schema
from kernelsight.maintenance.policy import MINUTE_NS

PERCENTILES = (50, 95, 99)
STEP_MINUTES = 30  # at most this many minutes per read and per write transaction


class Rollup:
    """The SQL of one event type's rollup, generated from its columns' roles."""

    def __init__(self, et: schema.EventType) -> None:
        assert et.rollup
        self.et = et
        self.table = et.rollup
        self.keys = [c.name for c in et.columns if c.role == schema.KEY]
        self.cols = schema.rollup_columns(et)
        minute = f"timestamp / {MINUTE_NS} * {MINUTE_NS}"
        group = ", ".join(["host", "m", *self.keys])
        sel = ", ".join(["host", f"{minute} AS m", *self.keys])
        where = f"FROM {et.name} WHERE timestamp >= :lo AND timestamp < :hi"
        self.sel, self.where = sel, where  # for PgRollup's dialect-specific queries
        agg = []
        for name, st, c in self.cols:
            if st in ("min", "max", "avg") and c.role == schema.GAUGE:
                agg.append((name, f"{st.upper()}({c.name})"))
            elif st == schema.SUM:
                agg.append((name, f"SUM({c.name})"))
            elif st == schema.MAX:
                agg.append((name, f"MAX({c.name})"))
        self.agg_names = ["samples"] + [n for n, _ in agg]
        self.agg_sql = (f"SELECT {sel}, COUNT(*), {', '.join(e for _, e in agg) or 'NULL'} "
                        f"{where} GROUP BY {group}")
        if not agg:
            self.agg_names.append("_none")
        # The value at the minute's last sample: SQLite takes bare columns from the row that
        # holds the single MAX().
        last = [(n, c.name) for n, st, c in self.cols if st == "last"]
        self.last_names = [n for n, _ in last]
        self.last_sql = (f"SELECT {sel}, MAX(timestamp), {', '.join(c for _, c in last)} "
                         f"{where} GROUP BY {group}") if last else None
        self.lat_sql = []
        for c in et.columns:
            if c.role != schema.LATENCY:
                continue
            part = f"PARTITION BY host, {minute}{''.join(', ' + k for k in self.keys)}"
            ranks = ", ".join(f"MAX(CASE WHEN rn = (n * {p} + 99) / 100 THEN v END)"
                              for p in PERCENTILES)
            self.lat_sql.append((
                [schema.stat_name(c.name, f"p{p}") for p in PERCENTILES]
                + [schema.stat_name(c.name, "max")],
                f"SELECT {group}, {ranks}, MAX(v) FROM (SELECT {sel}, {c.name} AS v, "
                f"ROW_NUMBER() OVER ({part} ORDER BY {c.name}) AS rn, "
                f"COUNT(*) OVER ({part}) AS n {where}) AS ranked GROUP BY {group}"))
        # (The subquery's alias: PostgreSQL requires one, SQLite allows it; PgRollup uses
        # these queries as they are.)
        names = ["timestamp", "host", *self.keys, "samples", *(n for n, _, _ in self.cols)]
        self.names = names
        conflict = ", ".join(["host", "timestamp", *self.keys])
        upd = ", ".join(f"{n} = excluded.{n}" for n in names[2 + len(self.keys):])
        self.upsert_sql = (f"INSERT INTO {self.table} ({', '.join(names)}) VALUES "
                           f"({', '.join('?' * len(names))}) ON CONFLICT({conflict}) "
                           f"DO UPDATE SET {upd}")

    def compute(self, con: sqlite3.Connection, lo: int, hi: int) -> list[tuple]:
        """Rollup rows for raw rows with lo <= timestamp < hi (whole minutes)."""
        nk = 2 + len(self.keys)
        rows: dict[tuple, dict] = {}
        for r in con.execute(self.agg_sql, {"lo": lo, "hi": hi}):
            rows[tuple(r[:nk])] = dict(zip(self.agg_names, r[nk:], strict=True))
        if self.last_sql:
            for r in con.execute(self.last_sql, {"lo": lo, "hi": hi}):
                rows[tuple(r[:nk])].update(zip(self.last_names, r[nk + 1:], strict=True))
        for names, sql in self.lat_sql:
            for r in con.execute(sql, {"lo": lo, "hi": hi}):
                rows[tuple(r[:nk])].update(zip(names, r[nk:], strict=True))
        out = []
        for (host, m, *keys), vals in rows.items():
            out.append((m, host, *keys, *(vals.get(n) for n in self.names[nk:])))
        return out


ROLLUPS: dict[str, Rollup] = {et.name: Rollup(et) for et in schema.EVENT_TYPES if et.rollup}


def state(con: sqlite3.Connection) -> dict[str, int]:
    """table -> done_until_ns (every minute before it is rolled up)."""
    return dict(con.execute("SELECT table_name, done_until_ns FROM rollup_state"))


def steps(start: int, end: int) -> Iterator[tuple[int, int]]:
    step = STEP_MINUTES * MINUTE_NS
    while start < end:
        yield start, min(start + step, end)
        start += step
